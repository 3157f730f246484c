//! `cagerun generate systemd`: the cage as a systemd user service (cage-spec's
//! `systemd_unit` writes it; this finds the absolute paths it names).

use std::path::PathBuf;

use anyhow::{Context, Result};
use cage_spec::systemd_unit::{self, UnitRequest};
use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum GenerateCommand {
    /// A systemd user unit that runs the cage (`up` in the foreground, `down` to stop, its
    /// cgroup delegated to cagerun); install it in ~/.config/systemd/user.
    Systemd(SystemdArgs),
}

#[derive(Args, Debug)]
pub struct SystemdArgs {
    /// The cage's config; the cage is the directory holding config/.
    #[arg(long, value_name = "FILE", default_value = "config/cage.toml")]
    config: PathBuf,
    /// Write the unit to FILE instead of printing it.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

pub fn run(cmd: GenerateCommand) -> Result<i32> {
    let GenerateCommand::Systemd(args) = cmd;
    let (paths, _) = cage_runtime::services::open(&args.config)?;
    let exe = cage_runtime::host::self_exe()?;
    let exe = std::fs::canonicalize(&exe).unwrap_or(exe);
    let unit = systemd_unit::render(&UnitRequest {
        exe: &exe,
        config: &paths.config,
        cage_dir: &paths.cage_dir,
        cage_id: &paths.id,
    })?;
    match args.output {
        None => print!("{unit}"),
        Some(file) => {
            std::fs::write(&file, unit).with_context(|| format!("writing {}", file.display()))?;
            let name = systemd_unit::unit_name(&paths.id);
            eprintln!(
                "cagerun: wrote {}; install it as ~/.config/systemd/user/{name}, then `systemctl --user daemon-reload && systemctl --user enable --now {name}`",
                file.display()
            );
        }
    }
    Ok(0)
}

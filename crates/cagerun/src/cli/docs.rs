//! `completion` and `man`: shell completion scripts (clap_complete) and roff manual pages
//! (clap_mangen), both generated from the same clap definition the binary parses with, so
//! they never drift from the verbs.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};

#[derive(Args, Debug)]
pub struct CompletionArgs {
    /// The shell to write a completion script for (to stdout).
    #[arg(value_enum)]
    shell: Shell,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

pub fn completion(args: CompletionArgs, cmd: clap::Command) -> Result<i32> {
    let shell = match args.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    // clap_complete offers hidden subcommands too (bash does): the internal verbs (holder,
    // monitor, init) are not for users, so they are left out of the command it sees.
    let mut visible = clap::Command::new("cagerun")
        .args(cmd.get_arguments().cloned())
        .subcommands(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    clap_complete::generate(shell, &mut visible, "cagerun", &mut std::io::stdout());
    Ok(0)
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Write one page per visible verb into DIR (cagerun.1, cagerun-up.1, ...) instead of
    /// printing one.
    #[arg(long, value_name = "DIR", conflicts_with = "verb")]
    out: Option<PathBuf>,
    /// The verb whose page to print (default: cagerun's own page).
    verb: Option<String>,
}

pub fn man(args: ManArgs, cmd: clap::Command) -> Result<i32> {
    let mut cmd = cmd.disable_help_subcommand(true);
    // Built, every subcommand knows its full name ("cagerun-up"), which is the page's.
    cmd.build();
    if let Some(dir) = args.out {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        clap_mangen::generate_to(cmd, &dir)
            .with_context(|| format!("writing manual pages into {}", dir.display()))?;
        return Ok(0);
    }
    let page = match &args.verb {
        None => cmd,
        Some(verb) => cmd
            .get_subcommands()
            .find(|s| !s.is_hide_set() && s.get_name() == verb)
            .cloned()
            .with_context(|| {
                format!("no verb {verb:?}: `cagerun --help` lists them (e.g. `cagerun man up`)")
            })?,
    };
    clap_mangen::Man::new(page).render(&mut std::io::stdout())?;
    Ok(0)
}

//! `cagerun runtime ARGS` and `cagerun-runc ARGS` (this binary under that name: engines take
//! one executable path): runc's command line, parsed with liboci-cli's argument shapes (the
//! ones youki uses), answered by [`cage_runtime::oci_runtime`].
//!
//! Output follows runc to the byte where engines read it: nothing on success except `state`,
//! `ps`, `features` and `--version`; on failure one line in `--log` (runc's format) and the
//! message on stderr, exit 1.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use cage_runtime::oci_runtime::errlog::{self, LogFormat};
use cage_runtime::oci_runtime::{self, CreateRequest, ExecRequest, Runtime};
use clap::{Args, Parser, Subcommand};
use liboci_cli::{Create, Delete, Exec, Features, Pause, Ps, Resume, Start, State, Update};

/// The name the binary answers to as an OCI runtime.
pub const RUNTIME_NAME: &str = "cagerun-runc";

#[derive(Parser, Debug)]
#[command(
    name = RUNTIME_NAME,
    disable_version_flag = true,
    about = "cagerun's runc-compatible OCI runtime (for containerd, Kubernetes RuntimeClasses and podman)"
)]
struct RuntimeCli {
    #[command(flatten)]
    global: liboci_cli::GlobalOpts,
    /// Accepted for runc compatibility; rootless is detected from the user namespace.
    #[arg(long, value_name = "true|false|auto", global = true)]
    rootless: Option<String>,
    /// Print the version (runc's three lines).
    #[arg(short = 'v', long)]
    version: bool,
    #[command(subcommand)]
    command: Option<Verb>,
}

#[derive(Subcommand, Debug)]
enum Verb {
    Create(Create),
    Start(Start),
    State(State),
    Kill(Kill),
    Delete(Delete),
    Exec(Box<Exec>),
    Ps(Ps),
    Pause(Pause),
    Resume(Resume),
    Features(Features),
    Update(Box<Update>),
}

/// Send a signal to the container's init (or, with --all, to all its processes).
#[derive(Args, Debug)]
struct Kill {
    #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
    container_id: String,
    /// A number, TERM or SIGTERM (runc's default: TERM).
    #[arg(default_value = "TERM")]
    signal: String,
    #[arg(short, long)]
    all: bool,
}

/// Is this process the runtime (invoked as `cagerun-runc`)?
pub fn invoked_as_runtime() -> bool {
    std::env::args_os()
        .next()
        .and_then(|a| Path::new(&a).file_name().map(|n| n == RUNTIME_NAME))
        .unwrap_or(false)
}

/// Parse `args` (argv[0] included), run the verb, report errors as runc does.
pub fn main(args: Vec<OsString>) -> ExitCode {
    let cli = match RuntimeCli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
    };
    let format = LogFormat::parse(cli.global.log_format.as_deref());
    let log = cli.global.log.clone();
    let result = match &format {
        Ok(_) => run(cli),
        Err(e) => Err(anyhow::anyhow!(e.clone())),
    };
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            let msg = format!("{e:#}");
            if let Some(log) = &log {
                let _ = errlog::append(log, format.clone().unwrap_or(LogFormat::Text), &msg);
            }
            eprintln!("{msg}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: RuntimeCli) -> Result<i32> {
    if cli.version {
        println!(
            "{RUNTIME_NAME} version {}\ncommit: cagerun {}\nspec: 1.0.2",
            env!("CARGO_PKG_VERSION"),
            env!("CARGO_PKG_VERSION")
        );
        return Ok(0);
    }
    let Some(command) = cli.command else {
        bail!("no command given: {RUNTIME_NAME} create|start|state|kill|delete|exec|ps|pause|resume|features|update (see --help)");
    };
    if cli.global.systemd_cgroup {
        bail!("the systemd cgroup driver is not supported by {RUNTIME_NAME}: use cgroupfs (containerd: SystemdCgroup = false in the runtime's options; podman: --cgroup-manager=cgroupfs)");
    }
    if let Verb::Features(_) = command {
        println!(
            "{}",
            serde_json::to_string_pretty(&oci_runtime::features())?
        );
        return Ok(0);
    }
    let runtime = Runtime::open(cli.global.root)?;
    match command {
        Verb::Create(a) => runtime.create(CreateRequest {
            id: a.container_id,
            bundle: absolute(&a.bundle)?,
            pid_file: a.pid_file.map(|p| absolute(&p)).transpose()?,
            console_socket: a.console_socket.map(|p| absolute(&p)).transpose()?,
            preserve_fds: a.preserve_fds,
            no_pivot: a.no_pivot,
        })?,
        Verb::Start(a) => runtime.start(&a.container_id)?,
        Verb::State(a) => {
            let state = runtime.state(&a.container_id)?;
            println!("{}", serde_json::to_string_pretty(&state)?);
        }
        Verb::Kill(a) => runtime.kill(&a.container_id, &a.signal, a.all)?,
        Verb::Delete(a) => runtime.delete(&a.container_id, a.force)?,
        Verb::Exec(a) => {
            let a = *a;
            if a.process.is_none() && a.command.is_empty() {
                bail!("exec needs a command or --process FILE");
            }
            return runtime.exec(ExecRequest {
                id: a.container_id,
                process: a.process.map(|p| absolute(&p)).transpose()?,
                command: a.command,
                env: a.env,
                cwd: a.cwd,
                user: a.user,
                additional_gids: a.additional_gids,
                capabilities: a.cap,
                no_new_privs: a.no_new_privs,
                console_socket: a.console_socket.map(|p| absolute(&p)).transpose()?,
                detach: a.detach,
                pid_file: a.pid_file.map(|p| absolute(&p)).transpose()?,
                preserve_fds: a.preserve_fds,
                ignore_paused: a.ignore_paused,
                sub_cgroup: a.cgroup,
            });
        }
        Verb::Ps(a) => {
            let pids = runtime.ps(&a.container_id)?;
            match a.format.as_str() {
                "json" => println!("{}", serde_json::to_string(&pids)?),
                "table" => print_ps_table(&pids, &a.ps_options)?,
                other => bail!("ps --format {other}: unknown format (use table or json)"),
            }
        }
        Verb::Pause(a) => runtime.pause(&a.container_id)?,
        Verb::Resume(a) => runtime.resume(&a.container_id)?,
        Verb::Update(a) => {
            let Some(source) = &a.resources else {
                bail!("update: give the new limits as JSON with --resources FILE (or - for stdin); the single-value flags are not supported");
            };
            let resources = oci_runtime::read_resources(source)?;
            runtime.update(&a.container_id, &resources)?;
        }
        Verb::Features(_) => unreachable!("answered above"),
    }
    Ok(0)
}

/// Paths are kept as given by engines, but a relative one is made absolute first: the
/// container's setup changes directory.
fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    Ok(std::env::current_dir()
        .context("the current directory")?
        .join(p))
}

/// runc's table: the host's `ps` (default `-ef`), its lines for the container's pids.
fn print_ps_table(pids: &[i32], options: &[String]) -> Result<()> {
    let options: Vec<String> = if options.is_empty() {
        vec!["-ef".into()]
    } else {
        options.to_vec()
    };
    let out = std::process::Command::new("ps")
        .args(&options)
        .output()
        .context("running ps")?;
    if !out.status.success() {
        bail!(
            "ps {}: {}",
            options.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return Ok(());
    };
    let Some(column) = header.split_whitespace().position(|c| c == "PID") else {
        bail!("ps {}: its output has no PID column", options.join(" "));
    };
    println!("{header}");
    for line in lines {
        let pid = line
            .split_whitespace()
            .nth(column)
            .and_then(|p| p.parse::<i32>().ok());
        if pid.is_some_and(|p| pids.contains(&p)) {
            println!("{line}");
        }
    }
    Ok(())
}

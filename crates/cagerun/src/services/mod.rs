//! The compose half of cagerun: `up`, `down`, `ps`, `logs`, `restart` for the services of a
//! cage's config/cage.toml.

pub mod broker;
pub mod cgroup;
pub mod control;
pub mod dotenv;
pub mod enter;
pub mod forward;
pub mod health;
pub mod holder_client;
pub mod setup;
pub mod state;
pub mod supervisor;
pub mod uplink;

use std::io::{BufRead, Read, Seek, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use state::CagePaths;

/// One service as `ps` shows it.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, Default)]
pub struct Status {
    pub service: String,
    pub state: String,
    pub pid: Option<i32>,
    /// Unix time of the last start.
    pub started: Option<u64>,
    pub restarts: u32,
    pub health: String,
    pub health_error: Option<String>,
    pub ports: Vec<String>,
    pub address: String,
    pub last_exit: Option<i32>,
    pub error: Option<String>,
}

pub fn self_exe() -> Result<PathBuf> {
    std::env::current_exe().context("finding the cagerun binary (/proc/self/exe)")
}

pub fn user_name(uid: u32) -> String {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    cage_spec::passwd::lookup_account(&passwd, &uid.to_string())
        .map(|a| a.0)
        .unwrap_or_else(|| uid.to_string())
}

#[derive(Args, Debug)]
pub struct CageArg {
    /// The cage's config; the cage is the directory holding config/.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "config/cage.toml",
        global = true
    )]
    config: PathBuf,
}

impl CageArg {
    fn paths(&self) -> Result<(CagePaths, cage_spec::cage::Cage)> {
        let cage = crate::bundle::load_cage(&self.config)?;
        let paths = CagePaths::new(&self.config, cage.name.as_deref())?;
        Ok((paths, cage))
    }
}

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Return once every service has started; the supervisor goes on in the background.
    #[arg(short = 'd', long)]
    detach: bool,
    /// With -d: return only once every service with a healthcheck is healthy (an error if
    /// one turns unhealthy or fails, or after --wait-timeout).
    #[arg(long, requires = "detach")]
    wait: bool,
    /// Seconds --wait waits.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    wait_timeout: u64,
    #[command(flatten)]
    cage: CageArg,
    #[command(flatten)]
    store: crate::image::StoreArg,
    /// Start with internet mode on: services with `internet = true` reach out through the
    /// cage's NAT uplink (`cagerun internet off` turns it off, live).
    #[arg(long)]
    internet: bool,
    /// (internal) a descriptor to write "ready" to.
    #[arg(long, hide = true)]
    ready_fd: Option<i32>,
    /// Only these services (and what they depend on).
    services: Vec<String>,
}

pub fn up(args: UpArgs) -> Result<i32> {
    // The first-run steps happen in the `up` the user started; the supervisor it detaches
    // (`--ready-fd`) finds them done.
    let first = args.ready_fd.is_none();
    let cage = if first {
        crate::bundle::load_cage_generating(&args.cage.config)?
    } else {
        crate::bundle::load_cage(&args.cage.config)?
    };
    let paths = CagePaths::new(&args.cage.config, cage.name.as_deref())?;
    if control::request(&paths, &control::Request::Ps).is_ok() {
        bail!(
            "cage {} is already up (`cagerun ps`, `cagerun down`)",
            paths.id
        );
    }
    if supervisor::clean_stale(&paths) {
        eprintln!(
            "cagerun: cleaned up what a previous supervisor of {} left",
            paths.id
        );
    }
    if first {
        let started: Vec<&cage_spec::cage::Service> =
            cage.services.iter().filter(|s| !s.on_demand).collect();
        setup::pull_images(&paths, &started, &args.store)?;
        setup::build_sandbox_images(&paths, &cage, &args.store)?;
        setup::pull_models(&paths, &cage)?;
        setup::run_once_jobs(&paths, &cage, &args.store)?;
    }
    if args.detach {
        detach(&args, &paths)?;
        if args.wait {
            wait_healthy(&paths, Duration::from_secs(args.wait_timeout))?;
        }
        if let Some(line) = &cage.dashboard {
            println!("{line}");
        }
        return Ok(0);
    }
    let dashboard = cage.dashboard.clone();
    let mut prepared = supervisor::prepare(&paths, cage, &args.services, &args.store)?;
    prepared.internet = args.internet;
    if let (Some(line), true) = (dashboard, first) {
        println!("{line}");
    }
    // SAFETY: the descriptor was handed to us by our parent (`up -d`) for this purpose.
    let ready = args.ready_fd.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(supervisor::run(paths, prepared, ready))?;
    Ok(0)
}

/// Until every service with a healthcheck is healthy; an error names the first service
/// that failed, exited or turned unhealthy (the cage stays up to be looked at).
fn wait_healthy(paths: &CagePaths, timeout: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let reply = control::request(paths, &control::Request::Ps)
            .context("the supervisor stopped while waiting for health (`cagerun logs`)")?;
        let list = reply.services.unwrap_or_default();
        let mut pending = Vec::new();
        for s in &list {
            if s.state == "failed" || s.health == "unhealthy" {
                bail!(
                    "{} is {}{}: see `cagerun logs {}` (the cage stays up; `cagerun down` stops it)",
                    s.service,
                    if s.state == "failed" { "failed" } else { "unhealthy" },
                    s.error
                        .as_ref()
                        .or(s.health_error.as_ref())
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default(),
                    s.service
                );
            }
            if s.health != "-" && s.health != "healthy" {
                pending.push(s.service.clone());
            }
        }
        if pending.is_empty() {
            eprintln!("cagerun: every service is healthy");
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "still not healthy after {}s: {} (`cagerun ps`, `cagerun logs`)",
                timeout.as_secs(),
                pending.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Start the supervisor in its own session, logging to .cagerun/logs/supervisor.log, and
/// wait until it says every service started (or why not).
fn detach(args: &UpArgs, paths: &CagePaths) -> Result<i32> {
    std::fs::create_dir_all(paths.logs())?;
    let log_path = paths.logs().join("supervisor.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let start = log.metadata()?.len();
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let mut cmd = std::process::Command::new(self_exe()?);
    cmd.arg("up")
        .arg("--config")
        .arg(&paths.config)
        .arg("--ready-fd")
        .arg("3")
        .args(args.internet.then_some("--internet"))
        .args(&args.services)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    holder_client::pass_fd_as_3(&mut cmd, &w);
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the supervisor")?;
    drop(w);
    let mut answer = String::new();
    std::fs::File::from(r).read_to_string(&mut answer).ok();
    if answer.starts_with("ready") {
        println!("cage {} is up (supervisor pid {})", paths.id, child.id());
        // Not waited for: it runs on; reaped by init when this process exits.
        return Ok(0);
    }
    let _ = child.wait();
    let mut f = std::fs::File::open(&log_path)?;
    f.seek(std::io::SeekFrom::Start(start))?;
    let mut out = String::new();
    f.read_to_string(&mut out)?;
    let last = out
        .lines()
        .rev()
        .find(|l| l.starts_with("cagerun: "))
        .map(|l| l.trim_start_matches("cagerun: ").to_string())
        .unwrap_or_else(|| format!("the supervisor failed: see {}", log_path.display()));
    bail!("{last}")
}

#[derive(Args, Debug)]
pub struct DownArgs {
    /// Also delete the cage's named volumes (.cagerun/volumes).
    #[arg(long)]
    volumes: bool,
    #[command(flatten)]
    cage: CageArg,
}

pub fn down(args: DownArgs) -> Result<i32> {
    let (paths, _) = args.cage.paths()?;
    let supervisor = state::Record::load(&paths).map(|r| r.supervisor);
    match control::request(&paths, &control::Request::Down) {
        Ok(_) => {
            // The supervisor answers once everything is stopped; down returns when the
            // supervisor itself is gone too (it holds the last namespace descriptors).
            for _ in 0..500 {
                if !paths.runtime.exists() && !supervisor.as_ref().is_some_and(|p| p.alive()) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            println!("cage {} is down", paths.id);
        }
        Err(_) => {
            if supervisor::clean_stale(&paths) {
                println!(
                    "cage {} was not running: cleaned up what its supervisor left",
                    paths.id
                );
            } else {
                println!("cage {} is not running", paths.id);
            }
        }
    }
    if args.volumes && paths.volumes().exists() {
        supervisor::remove_tree(&paths.volumes());
        println!("removed {}", paths.volumes().display());
    }
    // The once jobs (onboarding) wrote into those volumes: with them gone, they run again.
    let once = paths.cage_dir.join(".cagerun/once");
    if args.volumes && once.exists() {
        std::fs::remove_dir_all(&once).with_context(|| format!("removing {}", once.display()))?;
    }
    Ok(0)
}

#[derive(Args, Debug)]
pub struct PsArgs {
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    cage: CageArg,
}

fn uptime(started: Option<u64>) -> String {
    let Some(s) = started else { return "-".into() };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let d = now.saturating_sub(s);
    match d {
        0..60 => format!("{d}s"),
        60..3600 => format!("{}m{}s", d / 60, d % 60),
        _ => format!("{}h{}m", d / 3600, (d % 3600) / 60),
    }
}

pub fn ps(args: PsArgs) -> Result<i32> {
    let (paths, _) = args.cage.paths()?;
    let reply = control::request(&paths, &control::Request::Ps)
        .with_context(|| format!("cage {} is not up (`cagerun up -d`)", paths.id))?;
    let list = reply.services.unwrap_or_default();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(0);
    }
    println!(
        "{:<14} {:<28} {:>8} {:>8} {:>8} {:<10} PORTS",
        "SERVICE", "STATE", "PID", "UPTIME", "RESTARTS", "HEALTH"
    );
    for s in &list {
        let state = match s.last_exit {
            Some(c) if s.state == "exited" => format!("exited ({c})"),
            _ => s.state.clone(),
        };
        println!(
            "{:<14} {:<28} {:>8} {:>8} {:>8} {:<10} {}",
            s.service,
            state,
            s.pid.map(|p| p.to_string()).unwrap_or("-".into()),
            if s.state == "running" {
                uptime(s.started)
            } else {
                "-".into()
            },
            s.restarts,
            s.health,
            s.ports.join(", ")
        );
        if let Some(e) = &s.error {
            println!("  error: {e}");
        }
    }
    if let Some(cg) = reply.cgroup {
        println!("limits: cgroup {cg}");
    }
    Ok(0)
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Keep printing what the services write.
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines of each log.
    #[arg(long, value_name = "N")]
    tail: Option<usize>,
    #[command(flatten)]
    cage: CageArg,
    /// One service (default: all, each line prefixed with its name).
    service: Option<String>,
}

pub fn logs(args: LogsArgs) -> Result<i32> {
    let (paths, cage) = args.cage.paths()?;
    let names: Vec<String> = match &args.service {
        Some(s) => vec![crate::bundle::find_service(&cage, s, &paths.config)?
            .name
            .clone()],
        None => cage.services.iter().map(|s| s.name.clone()).collect(),
    };
    let prefix = args.service.is_none();
    let width = names.iter().map(|n| n.len()).max().unwrap_or(0);
    let mut out = std::io::stdout().lock();
    let mut readers = Vec::new();
    for n in &names {
        let path = paths.log(n);
        let Ok(f) = std::fs::File::open(&path) else {
            readers.push((n.clone(), None));
            continue;
        };
        let mut r = std::io::BufReader::new(f);
        let mut lines: Vec<String> = Vec::new();
        let mut line = String::new();
        while r.read_line(&mut line)? > 0 {
            lines.push(std::mem::take(&mut line));
        }
        let skip = args
            .tail
            .map(|t| lines.len().saturating_sub(t))
            .unwrap_or(0);
        for l in &lines[skip..] {
            if prefix {
                write!(out, "{n:<width$} | {l}")?;
            } else {
                write!(out, "{l}")?;
            }
        }
        readers.push((n.clone(), Some(r)));
    }
    out.flush()?;
    if !args.follow {
        return Ok(0);
    }
    loop {
        let mut any = false;
        for (n, r) in readers.iter_mut() {
            if r.is_none() {
                *r = std::fs::File::open(paths.log(n))
                    .ok()
                    .map(std::io::BufReader::new);
            }
            let Some(reader) = r else { continue };
            let mut line = String::new();
            while reader.read_line(&mut line)? > 0 {
                any = true;
                if prefix {
                    write!(out, "{n:<width$} | {line}")?;
                } else {
                    write!(out, "{line}")?;
                }
                line.clear();
            }
            // Rotated: start over on the new file.
            let pos = reader.stream_position()?;
            if std::fs::metadata(paths.log(n))
                .map(|m| m.len() < pos)
                .unwrap_or(false)
            {
                *r = None;
            }
        }
        out.flush()?;
        if !any {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[derive(Args, Debug)]
pub struct RestartArgs {
    #[command(flatten)]
    cage: CageArg,
    service: String,
}

pub fn restart(args: RestartArgs) -> Result<i32> {
    let (paths, _) = args.cage.paths()?;
    control::request(
        &paths,
        &control::Request::Restart {
            service: args.service.clone(),
        },
    )
    .with_context(|| format!("restarting {}", args.service))?;
    println!("restarting {}", args.service);
    Ok(0)
}

#[derive(Args, Debug)]
#[command(trailing_var_arg = true)]
pub struct RunArgs {
    #[command(flatten)]
    cage: CageArg,
    #[command(flatten)]
    store: crate::image::StoreArg,
    /// The job (a service with `on_demand` or `once`; any service works).
    service: String,
    /// Appended to the service's command.
    #[arg(allow_hyphen_values = true)]
    args: Vec<String>,
}

/// `cagerun run SVC -- ARGS`: one-shot, attached to this terminal, no network.
pub fn run(args: RunArgs) -> Result<i32> {
    let cage = crate::bundle::load_cage_generating(&args.cage.config)?;
    let paths = CagePaths::new(&args.cage.config, cage.name.as_deref())?;
    let service = crate::bundle::find_service(&cage, &args.service, &paths.config)?;
    setup::run_job(&paths, service, &args.args, &args.store, true)
}

#[derive(Args, Debug)]
#[command(trailing_var_arg = true)]
pub struct CliArgs {
    #[command(flatten)]
    cage: CageArg,
    #[command(flatten)]
    store: crate::image::StoreArg,
    /// OpenClaw CLI arguments (onboard, channels add ..., doctor).
    #[arg(allow_hyphen_values = true)]
    args: Vec<String>,
}

/// `cagerun cli -- ARGS`: `cagerun run cli -- ARGS` (the cage's `cli` job).
pub fn cli(args: CliArgs) -> Result<i32> {
    run(RunArgs {
        cage: args.cage,
        store: args.store,
        service: "cli".into(),
        args: args.args,
    })
}

#[derive(Args, Debug)]
pub struct InternetArgs {
    /// on | off (live, no restart); without it, say which it is.
    #[arg(value_parser = ["on", "off"])]
    state: Option<String>,
    #[command(flatten)]
    cage: CageArg,
}

/// `cagerun internet [on|off]`: services with `internet = true` get (or lose) their way out
/// through the cage's NAT uplink; live connections are cut when it goes off.
pub fn internet(args: InternetArgs) -> Result<i32> {
    let (paths, _) = args.cage.paths()?;
    let on = args.state.as_deref().map(|s| s == "on");
    let reply = control::request(&paths, &control::Request::Internet { on })
        .with_context(|| format!("cage {} is not up (`cagerun up`)", paths.id))?;
    let st = reply.internet.unwrap_or_default();
    if st.on {
        println!(
            "internet: on for {} (uplink: {}, gateway {}; the host itself is not reachable)",
            st.services.join(", "),
            st.uplink,
            st.gateway
        );
    } else {
        println!("internet: off");
    }
    Ok(0)
}

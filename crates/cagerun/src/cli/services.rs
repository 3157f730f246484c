//! The cage's verbs: `up`, `down`, `ps`, `logs`, `restart`, `run`, `cli`, `internet`, and
//! `exec SVC -- CMD` (into a running service).

use std::io::{BufRead, Seek, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use cage_runtime::services::{self, state::CagePaths, Down, UpOptions};
use clap::Args;

use super::image::StoreArg;

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
    pub fn config(&self) -> &std::path::Path {
        &self.config
    }
    pub(crate) fn paths(&self) -> Result<(CagePaths, cage_spec::cage::Cage)> {
        services::open(&self.config)
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
    store: StoreArg,
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

/// `up`'s messages, as the user sees them.
struct Printer;

impl services::UpReport for Printer {
    fn cleaned_stale(&self, cage: &str) {
        eprintln!("cagerun: cleaned up what a previous supervisor of {cage} left");
    }
    fn dashboard(&self, line: &str) {
        println!("{line}");
    }
    fn detached(&self, cage: &str, supervisor: u32) {
        println!("cage {cage} is up (supervisor pid {supervisor})");
    }
    fn healthy(&self) {
        eprintln!("cagerun: every service is healthy");
    }
}

pub fn up(args: UpArgs) -> Result<i32> {
    let opts = UpOptions {
        config: args.cage.config,
        detach: args.detach,
        wait: args.wait.then(|| Duration::from_secs(args.wait_timeout)),
        store: args.store.root(),
        internet: args.internet,
        ready_fd: args.ready_fd,
        services: args.services,
    };
    services::up(opts, &Printer)
}

#[derive(Args, Debug)]
pub struct DownArgs {
    /// Also delete the cage's named volumes (.cagerun/volumes).
    #[arg(long, conflicts_with = "name")]
    volumes: bool,
    #[command(flatten)]
    cage: CageArg,
    /// A running cage by its name (`cagerun ls`) instead of --config: works even when its
    /// directory was moved or deleted while it ran.
    name: Option<String>,
}

pub fn down(args: DownArgs) -> Result<i32> {
    let paths = match &args.name {
        Some(name) => services::listing::find(name)?,
        None => args.cage.paths()?.0,
    };
    match services::down(&paths)? {
        Down::Stopped => println!("cage {} is down", paths.id),
        Down::CleanedStale => println!(
            "cage {} was not running: cleaned up what its supervisor left",
            paths.id
        ),
        Down::NotRunning => println!("cage {} is not running", paths.id),
    }
    if args.volumes {
        if let Some(dir) = services::remove_volumes(&paths)? {
            println!("removed {}", dir.display());
        }
    }
    Ok(0)
}

#[derive(Args, Debug)]
pub struct PsArgs {
    /// Print the services as JSON (docs/json.md).
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
    let (list, cgroup) = services::ps(&paths)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(0);
    }
    println!(
        "{:<14} {:<28} {:>8} {:>8} {:>8} {:<10} PORTS",
        "SERVICE", "STATE", "PID", "UPTIME", "RESTARTS", "HEALTH"
    );
    for s in &list {
        let state = s.state.label(s.last_exit);
        println!(
            "{:<14} {:<28} {:>8} {:>8} {:>8} {:<10} {}",
            s.service,
            state,
            s.pid.map(|p| p.to_string()).unwrap_or("-".into()),
            if s.state.is_running() {
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
    if let Some(cg) = cgroup {
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
        Some(s) => vec![cage_runtime::config::find_service(&cage, s, &paths.config)?
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
    services::restart(&paths, &args.service)?;
    println!("restarting {}", args.service);
    Ok(0)
}

#[derive(Args, Debug)]
#[command(trailing_var_arg = true)]
pub struct RunArgs {
    #[command(flatten)]
    cage: CageArg,
    #[command(flatten)]
    store: StoreArg,
    /// The job (a service with `on_demand` or `once`; any service works).
    service: String,
    /// Appended to the service's command.
    #[arg(allow_hyphen_values = true)]
    args: Vec<String>,
}

/// `cagerun run SVC -- ARGS`: one-shot, attached to this terminal, no network.
pub fn run(args: RunArgs) -> Result<i32> {
    services::run_job(
        &args.cage.config,
        &args.service,
        &args.args,
        &args.store.root(),
    )
}

#[derive(Args, Debug)]
#[command(trailing_var_arg = true)]
pub struct CliArgs {
    #[command(flatten)]
    cage: CageArg,
    #[command(flatten)]
    store: StoreArg,
    /// OpenClaw CLI arguments (onboard, channels add ..., doctor).
    #[arg(allow_hyphen_values = true)]
    args: Vec<String>,
}

/// `cagerun cli -- ARGS`: `cagerun run cli -- ARGS` (the cage's `cli` job).
pub fn cli(args: CliArgs) -> Result<i32> {
    services::run_job(&args.cage.config, "cli", &args.args, &args.store.root())
}

#[derive(Args, Debug)]
pub struct InternetArgs {
    /// on | off (live, no restart) | allow SERVICE ENTRY | deny SERVICE ENTRY (edit a
    /// service's `internet = [...]` list, live); without it, say which it is.
    #[arg(value_parser = ["on", "off", "allow", "deny"])]
    state: Option<String>,
    /// allow/deny: the service whose list changes.
    service: Option<String>,
    /// allow/deny: `NAME`, `*.NAME`, `NAME:PORT`, `host:PORT` or `ADDR[:PORT]`.
    entry: Option<String>,
    /// Print the state as JSON (docs/json.md).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    cage: CageArg,
}

/// `cagerun internet [on|off]`: services with `internet = true` get (or lose) their way out
/// through the cage's NAT uplink, and list services (`internet = [...]`) theirs through the
/// egress proxy; live connections are cut when it goes off. `allow|deny SERVICE ENTRY` edit a
/// list, live.
pub fn internet(args: InternetArgs) -> Result<i32> {
    let (paths, _) = args.cage.paths()?;
    let st = match args.state.as_deref() {
        Some(verb @ ("allow" | "deny")) => {
            let (Some(service), Some(entry)) = (&args.service, &args.entry) else {
                anyhow::bail!("usage: cagerun internet {verb} SERVICE ENTRY (e.g. `cagerun internet {verb} gateway api.telegram.org`)");
            };
            services::egress_rule(&paths, service, entry, verb == "allow")?
        }
        state => {
            if args.service.is_some() {
                anyhow::bail!("`cagerun internet on|off` takes no service: it switches the whole cage (edit one list with `cagerun internet allow|deny SERVICE ENTRY`)");
            }
            services::internet(&paths, state.map(|s| s == "on"))?
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&st)?);
        return Ok(0);
    }
    if st.on {
        let how = if st.uplink.is_empty() {
            "by name only, through cagerun's egress proxy: `cagerun egress` shows every attempt"
                .to_string()
        } else {
            format!(
                "uplink: {}, gateway {}; the host itself is not reachable",
                st.uplink, st.gateway
            )
        };
        println!("internet: on for {} ({how})", st.services.join(", "));
    } else {
        println!("internet: off");
    }
    for (who, list) in &st.lists {
        let list = if list.is_empty() {
            "nothing".to_string()
        } else {
            list.join(", ")
        };
        println!("  {who} may reach: {list}");
    }
    Ok(0)
}

//! The compose half of cagerun: `up`, `down`, `ps`, `restart`, `internet`, `run` for the
//! services of a cage's config/cage.toml. Each verb takes typed options and returns what
//! happened; the binary prints it.

pub mod broker;
pub mod cgroup;
pub mod control;
pub mod egress;
pub mod enter;
pub mod forward;
pub mod health;
pub mod holder_client;
pub mod inspect;
pub mod listing;
pub mod setup;
pub mod sidecar;
pub mod state;
pub mod supervisor;
pub mod uplink;

use std::io::{Read, Seek};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cage_spec::cage::Cage;
use cage_spec::lifecycle::Health;

use crate::image::StoreRoot;
use state::CagePaths;

/// One service as `ps` shows it: what the control socket carries, so typed in [`crate::proto`].
pub use crate::proto::Status;

/// The cage of `config`: its paths and its parsed config.
pub fn open(config: &Path) -> Result<(CagePaths, Cage)> {
    let cage = crate::config::load_cage(config)?;
    let paths = CagePaths::new(config, cage.name.as_deref())?;
    Ok((paths, cage))
}

/// How `up` runs.
#[derive(Debug, Clone, Default)]
pub struct UpOptions {
    pub config: PathBuf,
    /// Return once every service has started; the supervisor goes on in the background.
    pub detach: bool,
    /// With `detach`: return only once every service with a healthcheck is healthy.
    pub wait: Option<Duration>,
    pub store: StoreRoot,
    /// Start with internet mode on.
    pub internet: bool,
    /// (internal) the descriptor a detaching `up` waits on for "ready".
    pub ready_fd: Option<i32>,
    /// Only these services (and what they depend on).
    pub services: Vec<String>,
}

/// What `up` says as it goes (the binary prints it).
pub trait UpReport {
    /// A previous supervisor's leftovers were cleaned up.
    fn cleaned_stale(&self, cage: &str);
    /// The cage's dashboard line (cage.toml `dashboard`), once it is up.
    fn dashboard(&self, line: &str);
    /// A detached supervisor started every service.
    fn detached(&self, cage: &str, supervisor: u32);
    /// With `wait`: every service with a healthcheck is healthy.
    fn healthy(&self);
}

pub fn up(opts: UpOptions, report: &dyn UpReport) -> Result<i32> {
    // The first-run steps happen in the `up` the user started; the supervisor it detaches
    // (`--ready-fd`) finds them done.
    let first = opts.ready_fd.is_none();
    let cage = if first {
        crate::config::load_cage_generating(&opts.config)?
    } else {
        crate::config::load_cage(&opts.config)?
    };
    let paths = CagePaths::new(&opts.config, cage.name.as_deref())?;
    if control::request(&paths, &control::Request::Ps).is_ok() {
        return Err(crate::Error::AlreadyUp {
            cage: paths.id.clone(),
        }
        .into());
    }
    if supervisor::clean_stale(&paths) {
        report.cleaned_stale(&paths.id);
    }
    if first {
        // A login shell's session scope is not ours to divide: a delegated scope first, so the
        // supervisor and everything it starts live in it.
        crate::systemd::ensure_delegated(&paths.id)?;
        let started: Vec<&cage_spec::cage::Service> =
            cage.services.iter().filter(|s| !s.on_demand).collect();
        setup::pull_images(&paths, &started, &opts.store)?;
        setup::build_sandbox_images(&paths, &cage, &opts.store)?;
        setup::pull_models(&paths, &cage)?;
        setup::run_once_jobs(&paths, &cage, &opts.store)?;
    }
    if opts.detach {
        let pid = detach(&opts, &paths)?;
        report.detached(&paths.id, pid);
        if let Some(timeout) = opts.wait {
            wait_healthy(&paths, timeout)?;
            report.healthy();
        }
        if let Some(line) = &cage.dashboard {
            report.dashboard(line);
        }
        return Ok(0);
    }
    let dashboard = cage.dashboard.clone();
    let mut prepared = supervisor::prepare(&paths, cage, &opts.services, &opts.store)?;
    prepared.internet = opts.internet;
    if let (Some(line), true) = (&dashboard, first) {
        report.dashboard(line);
    }
    // SAFETY: the descriptor was handed to us by our parent (`up -d`) for this purpose.
    let ready = opts.ready_fd.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(supervisor::run(paths, prepared, ready))?;
    Ok(0)
}

/// Until every service with a healthcheck is healthy; an error names the first service
/// that failed, exited or turned unhealthy (the cage stays up to be looked at).
///
/// Each of the supervisor's events (a health or state change) wakes the check at once; it
/// also runs every second regardless, and every 200 ms when no subscription could be had.
fn wait_healthy(paths: &CagePaths, timeout: Duration) -> Result<()> {
    let (woken, wake) = std::sync::mpsc::channel::<()>();
    let mut subscription = None;
    if let Ok(events) = control::subscribe(paths) {
        if let Ok(close) = events.closer() {
            let reader = std::thread::spawn(move || {
                for e in events {
                    if e.is_err() || woken.send(()).is_err() {
                        break;
                    }
                }
            });
            subscription = Some((close, reader));
        }
    }
    let every = if subscription.is_some() {
        Duration::from_secs(1)
    } else {
        Duration::from_millis(200)
    };
    let result = wait_healthy_woken(paths, timeout, || {
        // A closed subscription (the supervisor went) falls back to the plain interval.
        if let Err(std::sync::mpsc::RecvTimeoutError::Disconnected) = wake.recv_timeout(every) {
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    if let Some((close, reader)) = subscription {
        close();
        let _ = reader.join();
    }
    result
}

fn wait_healthy_woken(paths: &CagePaths, timeout: Duration, mut wait: impl FnMut()) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    let spinner = crate::progress::spinner("waiting for health");
    loop {
        let reply = control::request(paths, &control::Request::Ps)
            .context("the supervisor stopped while waiting for health (`cagerun logs`)")?;
        let list = reply.services.unwrap_or_default();
        let mut pending = Vec::new();
        for s in &list {
            if s.state.is_failed() || s.health == Health::Unhealthy {
                bail!(
                    "{} is {}{}: see `cagerun logs {}` (the cage stays up; `cagerun down` stops it)",
                    s.service,
                    if s.state.is_failed() { "failed" } else { "unhealthy" },
                    s.error
                        .as_ref()
                        .or(s.health_error.as_ref())
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default(),
                    s.service
                );
            }
            if s.health.is_pending() {
                pending.push(s.service.clone());
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        spinner.set_message(format!("waiting for health: {}", pending.join(", ")));
        if std::time::Instant::now() > deadline {
            bail!(
                "still not healthy after {}s: {} (`cagerun ps`, `cagerun logs`)",
                timeout.as_secs(),
                pending.join(", ")
            );
        }
        wait();
    }
}

/// Start the supervisor in its own session, logging to .cagerun/logs/supervisor.log, and
/// wait until it says every service started (or why not).
fn detach(opts: &UpOptions, paths: &CagePaths) -> Result<u32> {
    std::fs::create_dir_all(paths.logs())?;
    let log_path = paths.logs().join("supervisor.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let start = log.metadata()?.len();
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let mut cmd = std::process::Command::new(crate::host::self_exe()?);
    cmd.arg("up")
        .arg("--config")
        .arg(&paths.config)
        // The supervisor renders image services from the same store this `up` pulled into.
        .arg("--store")
        .arg(&opts.store.0)
        .arg("--ready-fd")
        .arg(crate::proto::fds::CONTROL.to_string())
        .args(opts.internet.then_some("--internet"))
        .args(&opts.services)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    crate::ipc::pass_fd_as_3(&mut cmd, &w);
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
        // Not waited for: it runs on; reaped by init when this process exits.
        return Ok(child.id());
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

/// What `down` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Down {
    /// The supervisor stopped every service and is gone.
    Stopped,
    /// No supervisor answered; what a previous one left was cleaned up.
    CleanedStale,
    NotRunning,
}

/// Stop the cage: SIGTERM, a grace period, SIGKILL; remove its network, cgroups and state.
pub fn down(paths: &CagePaths) -> Result<Down> {
    let supervisor = state::Record::load(paths).map(|r| r.supervisor);
    match control::request(paths, &control::Request::Down) {
        Ok(_) => {
            // The supervisor answers once everything is stopped; down returns when the
            // supervisor itself is gone too (it holds the last namespace descriptors).
            for _ in 0..500 {
                if !paths.runtime.exists() && !supervisor.as_ref().is_some_and(|p| p.alive()) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(Down::Stopped)
        }
        Err(_) if supervisor::clean_stale(paths) => Ok(Down::CleanedStale),
        Err(_) => Ok(Down::NotRunning),
    }
}

/// Delete the cage's named volumes; the `once` jobs (onboarding) wrote into them, so with
/// them gone they run again. The volumes directory when there was one.
pub fn remove_volumes(paths: &CagePaths) -> Result<Option<PathBuf>> {
    let removed = paths.volumes().exists().then(|| {
        crate::tree::remove(&paths.volumes());
        paths.volumes()
    });
    let once = paths.cage_dir.join(".cagerun/once");
    if once.exists() {
        std::fs::remove_dir_all(&once).with_context(|| format!("removing {}", once.display()))?;
    }
    Ok(removed)
}

/// The running cage's services as `ps` shows them, and its limits cgroup.
pub fn ps(paths: &CagePaths) -> Result<(Vec<Status>, Option<String>)> {
    let reply = control::request(paths, &control::Request::Ps)
        .map_err(|e| e.context(not_up(paths, "`cagerun up -d`")))?;
    Ok((reply.services.unwrap_or_default(), reply.cgroup))
}

/// Restart one service of a running cage.
pub fn restart(paths: &CagePaths, service: &str) -> Result<()> {
    control::request(
        paths,
        &control::Request::Restart {
            service: service.to_string(),
        },
    )
    .with_context(|| format!("restarting {service}"))?;
    Ok(())
}

/// `cagerun run SVC -- ARGS`: one-shot, attached to this terminal, no network.
pub fn run_job(config: &Path, service: &str, args: &[String], store: &StoreRoot) -> Result<i32> {
    let cage = crate::config::load_cage_generating(config)?;
    let paths = CagePaths::new(config, cage.name.as_deref())?;
    let service = crate::config::find_service(&cage, service, &paths.config)?;
    setup::run_job(&paths, service, args, store, true)
}

/// Internet mode, live: `Some(on)` switches it (cutting live connections when it goes
/// off), `None` asks.
pub fn internet(paths: &CagePaths, on: Option<bool>) -> Result<control::InternetStatus> {
    let reply = control::request(paths, &control::Request::Internet { on })
        .map_err(|e| e.context(not_up(paths, "`cagerun up`")))?;
    Ok(reply.internet.unwrap_or_default())
}

/// Add (`allow`) or remove an entry of a list service's `internet = [...]`, live.
pub fn egress_rule(
    paths: &CagePaths,
    service: &str,
    entry: &str,
    allow: bool,
) -> Result<control::InternetStatus> {
    let reply = control::request(
        paths,
        &control::Request::EgressRule {
            service: service.to_string(),
            entry: entry.to_string(),
            allow,
        },
    )
    .map_err(|e| e.context(not_up(paths, "`cagerun up`")))?;
    Ok(reply.internet.unwrap_or_default())
}

fn not_up(paths: &CagePaths, hint: &'static str) -> crate::Error {
    crate::Error::NotUp {
        cage: paths.id.clone(),
        hint,
    }
}

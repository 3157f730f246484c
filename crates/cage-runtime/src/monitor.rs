//! `cagerun monitor`: one per running container, like podman's conmon. Single-threaded (it
//! joins the cage's user namespace, and libcontainer forks with raw clone3); it starts the
//! container with libcontainer, holds its stdio, writes its log with rotation, forwards the
//! supervisor's stop request as SIGTERM then SIGKILL, and reports the exit status. Once the
//! container runs, the monitor gives back the memory starting it took ([`crate::resident`]):
//! conmon-sized from then on.
//!
//! Control socket at [`crate::proto::fds::CONTROL`] (SOCK_SEQPACKET): it reports
//! [`MonitorEvent`]s (started, exited, failed) and takes [`MonitorCommand`]s (stop). When the
//! supervisor disappears, the container is killed: a cage never keeps running unsupervised.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::ipc;
use crate::proto::{MonitorCommand, MonitorEvent};

#[derive(Debug, Clone)]
pub struct MonitorOptions {
    pub id: String,
    pub bundle: PathBuf,
    /// libcontainer's state directory.
    pub state_root: PathBuf,
    /// The holder, whose user namespace the container lives in.
    pub holder: i32,
    pub log: PathBuf,
    /// Rotate the log (to LOG.1) when it grows past this many bytes.
    pub log_max: u64,
}

/// When a stop's SIGTERM is checked, once, for having been dropped by a starting init.
const TERM_RETRY: Duration = Duration::from_millis(500);

pub fn run(args: MonitorOptions) -> Result<i32> {
    // SAFETY: the supervisor put our end of the control socket at fds::CONTROL.
    let ctl = unsafe { OwnedFd::from_raw_fd(crate::proto::fds::CONTROL) };
    let code = match supervise(&args, &ctl) {
        Ok(code) => code,
        Err(e) => {
            let _ = ipc::send(&ctl, &MonitorEvent::failed(&e), &[]);
            return Err(e);
        }
    };
    let _ = ipc::send(&ctl, &MonitorEvent::Exited { code }, &[]);
    Ok(code)
}

fn join_cage_userns(holder: i32) -> Result<()> {
    let userns = File::open(format!("/proc/{holder}/ns/user"))
        .context("opening the cage's user namespace (is the supervisor running?)")?;
    nix::sched::setns(userns.as_fd(), nix::sched::CloneFlags::CLONE_NEWUSER)
        .context("joining the cage's user namespace")?;
    // Root of the cage's namespace (a subordinate id on the host), so libcontainer may set up
    // what the container needs; the container's own user comes from the spec.
    nix::unistd::setgroups(&[]).context("setgroups in the cage's user namespace")?;
    nix::unistd::setresgid(0.into(), 0.into(), 0.into()).context("setgid 0 in the cage")?;
    nix::unistd::setresuid(0.into(), 0.into(), 0.into()).context("setuid 0 in the cage")?;
    Ok(())
}

fn supervise(args: &MonitorOptions, ctl: &OwnedFd) -> Result<i32> {
    // Orphaned container processes come to us, not to the host's init.
    nix::sys::prctl::set_child_subreaper(true).context("becoming a subreaper")?;
    // Opened as the caller, before becoming the cage's root: the log is the caller's file.
    let mut log = Log::open(&args.log, args.log_max)?;
    join_cage_userns(args.holder)?;
    let (log_r, log_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
    let devnull = File::open("/dev/null")?;
    let container = ContainerBuilder::new(args.id.clone(), SyscallType::default())
        .with_root_path(&args.state_root)
        .context("libcontainer state directory")?
        .with_stdin(OwnedFd::from(devnull))
        .with_stdout(log_w.try_clone()?)
        .with_stderr(log_w)
        .as_init(&args.bundle)
        .with_systemd(false)
        .with_detach(true)
        .build();
    let mut container = match container {
        Ok(c) => c,
        Err(e) => {
            let said = drain(&log_r, &mut log);
            anyhow::bail!("creating the container: {e}{said}");
        }
    };
    if let Err(e) = container.start() {
        let _ = container.delete(true);
        let said = drain(&log_r, &mut log);
        anyhow::bail!("starting the container: {e}{said}");
    }
    let pid = container
        .pid()
        .context("libcontainer did not report the container's pid")?;
    ipc::send(ctl, &MonitorEvent::Started { pid: pid.as_raw() }, &[])?;
    // From here on the monitor relays the log and waits: what creating and starting the
    // container touched (most of this binary's code) need not stay resident for as long as
    // the container runs. What the watch below uses comes back on its own.
    crate::resident::release_startup_pages();

    let code = watch(pid, &log_r, ctl, &mut log);
    let _ = container.delete(true);
    code
}

fn watch(pid: Pid, log_r: &OwnedFd, ctl: &OwnedFd, log: &mut Log) -> Result<i32> {
    let mut kill_at: Option<Instant> = None;
    let mut term_retry_at: Option<Instant> = None;
    let mut log_open = true;
    let mut ctl_open = true;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if let Some(code) = reap(pid)? {
            // Whatever is still buffered in the pipe belongs in the log.
            nix::fcntl::fcntl(
                log_r.as_raw_fd(),
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            )?;
            while let Ok(n) = nix::unistd::read(log_r.as_raw_fd(), &mut buf) {
                if n == 0 {
                    break;
                }
                log.write(&buf[..n]);
            }
            return Ok(code);
        }
        let timeout = match kill_at.into_iter().chain(term_retry_at).min() {
            Some(t) => t
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100)),
            None => Duration::from_millis(100),
        };
        let mut fds = Vec::new();
        if log_open {
            fds.push(PollFd::new(log_r.as_fd(), PollFlags::POLLIN));
        }
        if ctl_open {
            fds.push(PollFd::new(ctl.as_fd(), PollFlags::POLLIN));
        }
        let ms = timeout.as_millis() as u16;
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).context("poll"),
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        let mut i = 0;
        if log_open {
            if ready[i] {
                match nix::unistd::read(log_r.as_raw_fd(), &mut buf) {
                    Ok(0) => log_open = false,
                    Ok(n) => log.write(&buf[..n]),
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(_) => log_open = false,
                }
            }
            i += 1;
        }
        if ctl_open && ready[i] {
            match ipc::recv::<MonitorCommand>(ctl) {
                Ok(Some((MonitorCommand::Stop { grace_ms }, _))) => {
                    let _ = kill(pid, Signal::SIGTERM);
                    kill_at = Some(Instant::now() + Duration::from_millis(grace_ms));
                    term_retry_at = Some(Instant::now() + TERM_RETRY);
                }
                // A command that does not parse is ignored: only a closed (or broken) socket
                // means the supervisor is gone.
                Err(ipc::IpcError::Malformed { .. } | ipc::IpcError::TooLong { .. }) => {}
                _ => {
                    // The supervisor is gone: so is the cage.
                    ctl_open = false;
                    let _ = kill(pid, Signal::SIGKILL);
                }
            }
        }
        if kill_at.is_some_and(|t| Instant::now() >= t) {
            let _ = kill(pid, Signal::SIGKILL);
            kill_at = None;
        } else if term_retry_at.is_some_and(|t| Instant::now() >= t) {
            // A stop that came while the container's init was still starting: the kernel
            // drops a signal to a pid namespace's init that neither blocks nor handles it.
            // Sent again once only: an init waiting in sigwait (cagerun's own) shows SIGTERM
            // neither blocked nor caught while it waits, and forwards every copy to the
            // command (OpenClaw took a re-send on every log line for a second stop).
            term_retry_at = None;
            if term_was_dropped(pid) {
                let _ = kill(pid, Signal::SIGTERM);
            }
        }
    }
}

/// `pid` (the container's init) neither blocks, handles nor has pending SIGTERM: a SIGTERM
/// sent to it was dropped. (Read from /proc/PID/status; unreadable counts as not dropped.)
fn term_was_dropped(pid: Pid) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let mask = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    };
    let term = 1u64 << (Signal::SIGTERM as u64 - 1);
    match (
        mask("SigBlk:"),
        mask("SigCgt:"),
        mask("SigPnd:"),
        mask("ShdPnd:"),
    ) {
        (Some(blocked), Some(caught), Some(pending), Some(shared)) => {
            (blocked | caught | pending | shared) & term == 0
        }
        _ => false,
    }
}

/// What the container's side wrote before it failed (libcontainer's init reports its errors
/// there): into the log, and its last line for the error message.
fn drain(log_r: &OwnedFd, log: &mut Log) -> String {
    let _ = nix::fcntl::fcntl(
        log_r.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    );
    // All of it goes to the log as it comes; only a bounded tail is kept for the message
    // (the container's side may write without end).
    let mut tail = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = nix::unistd::read(log_r.as_raw_fd(), &mut buf) {
        if n == 0 {
            break;
        }
        log.write(&buf[..n]);
        tail.extend_from_slice(&buf[..n]);
        tail.drain(..tail.len().saturating_sub(crate::proto::MAX_ERROR_TEXT));
    }
    let text = String::from_utf8_lossy(&tail);
    match text.lines().rev().find(|l| !l.trim().is_empty()) {
        Some(l) => format!(" ({})", l.trim()),
        None => String::new(),
    }
}

/// The container's exit code (128+signal when killed), once it has exited; other children
/// (re-parented orphans) are reaped on the way.
fn reap(pid: Pid) -> Result<Option<i32>> {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(p, code)) if p == pid => return Ok(Some(code)),
            Ok(WaitStatus::Signaled(p, sig, _)) if p == pid => return Ok(Some(128 + sig as i32)),
            Ok(WaitStatus::StillAlive) => return Ok(None),
            Ok(_) => continue,
            Err(nix::errno::Errno::ECHILD) => return Ok(Some(255)),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("waitpid"),
        }
    }
}

/// The service's log: appended, rotated once to `.1` past its size limit.
pub(crate) struct Log {
    path: PathBuf,
    file: File,
    size: u64,
    max: u64,
}

impl Log {
    pub(crate) fn open(path: &Path, max: u64) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let size = file.metadata()?.len();
        Ok(Log {
            path: path.to_path_buf(),
            file,
            size,
            max,
        })
    }

    pub(crate) fn write(&mut self, data: &[u8]) {
        if self.size + data.len() as u64 > self.max && self.size > 0 {
            let mut rotated = self.path.clone().into_os_string();
            rotated.push(".1");
            if std::fs::rename(&self.path, &rotated).is_ok() {
                if let Ok(f) = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                {
                    self.file = f;
                    self.size = 0;
                }
            }
        }
        if self.file.write_all(data).is_ok() {
            self.size += data.len() as u64;
        }
    }
}

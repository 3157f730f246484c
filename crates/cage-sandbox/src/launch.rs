//! The parent side: clone the sandbox, write its id maps and cgroup, release it, then relay
//! the terminal, forward signals, enforce the timeout and return the exit status.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use crate::cgroups::{self, Leaf};
use crate::clone::{clone3, CloneArgs, CLONE_INTO_CGROUP};
use crate::error::{Result, SandboxError};
use crate::init::{child_main, ChildArgs, ChildFds, CommandCgroup};
use crate::plan::Plan;
use crate::steps::Steps;
use crate::{idmap, pty};

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Keep stdin attached (`-i`).
    pub interactive: bool,
    pub timeout: Option<Duration>,
    /// Park the sandbox before its command (see [`crate::park`]): this socket brings the
    /// command. Passed to pid 1 and closed in this process once the sandbox has it.
    pub park: Option<RawFd>,
    /// The caller exits right after [`run`] returns (`cagerun exec`): once the command and
    /// every process it started are gone, return at once and leave pid 1's namespace
    /// teardown (~0.5 ms: unmounting the root, an RCU grace period) to finish on its own;
    /// pid 1 is then reaped by whoever inherits it. Otherwise `run` waits for pid 1.
    pub caller_exits_after: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    /// pid 1 of the sandbox was killed by this signal (e.g. from outside).
    Signaled(i32),
    TimedOut,
}

impl Outcome {
    /// Shell convention: the exit code, or 128 + signal.
    pub fn code(self) -> i32 {
        match self {
            Outcome::Exited(c) => c,
            Outcome::Signaled(s) => 128 + s,
            Outcome::TimedOut => 124,
        }
    }
}

/// How limits were enforced, for `--verbose`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitMechanism {
    None,
    Cgroup(Vec<std::path::PathBuf>),
    Rlimits,
}

const FORWARDED: &[Signal] = &[
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| SandboxError::os("pipe", e))
}

/// Decide how memory and pids limits are enforced: a delegated cgroup parent (the leaf is
/// made after clone, while the child builds its root) or rlimits.
fn prepare_limits(
    plan: &Plan,
) -> (
    Option<cgroups::Parent>,
    Vec<crate::rlimits::Rlimit>,
    LimitMechanism,
) {
    if plan.memory_limit.is_none() && plan.pids_limit.is_none() {
        return (None, Vec::new(), LimitMechanism::None);
    }
    if let Some(parent) = cgroups::find_parent(nix::unistd::geteuid().as_raw()) {
        let dirs = parent.dirs.clone();
        return (Some(parent), Vec::new(), LimitMechanism::Cgroup(dirs));
    }
    // No delegated cgroup: per-process data size and a process count in the sandbox's
    // user namespace (RLIMIT_NPROC counts per user namespace since Linux 5.14).
    let mut rl = Vec::new();
    if let Some(m) = plan.memory_limit {
        rl.push((libc::RLIMIT_DATA, m, m));
    }
    if let Some(p) = plan.pids_limit {
        rl.push((libc::RLIMIT_NPROC, p, p));
    }
    (None, rl, LimitMechanism::Rlimits)
}

pub fn run(plan: &Plan, opts: &RunOptions) -> Result<Outcome> {
    let mut steps = Steps::start();
    // Maps that name any ids are written directly by a caller holding CAP_SETUID and
    // CAP_SETGID in its user namespace (root on the host, or a caller that entered a cage's
    // user namespace to share a service's network); anyone else goes through newuidmap.
    let privileged = crate::capabilities::may_map_any_ids();
    let (cgroup_parent, fallback_rlimits, mechanism) = prepare_limits(plan);
    match &mechanism {
        LimitMechanism::Cgroup(dirs) => tracing::info!("limits: cgroup {}", dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")),
        LimitMechanism::Rlimits => tracing::info!("limits: rlimits (RLIMIT_DATA, RLIMIT_NPROC): no delegated cgroup found; see `cagerun setup-cgroups`"),
        LimitMechanism::None => {}
    }
    // Rootless, only a process with our own uid may be moved into a cgroup on v1, and only
    // by one holding write access on v2: when the sandbox's user is another host id (a build
    // step's root is a subordinate id), pid 1 is put in the leaf before it takes that
    // identity (below).
    let becomes_other = !privileged
        && crate::plan::IdMap::outside_of(&plan.uid_map, plan.process.uid)
            .is_some_and(|host| host != nix::unistd::geteuid().as_raw());
    // Who is in the limits cgroup (the leaf). Normally the command alone: pid 1 lives in the
    // delegated tree's `pid1` group and starts the command into the leaf, so once the
    // command's processes are gone the leaf can be removed while pid 1 still tears the
    // namespaces down, and a caller that exits after needs not wait for that
    // (`RunOptions::caller_exits_after`). The leaf is made while the child builds its root,
    // and its descriptors go to pid 1 with the second release. On cgroup v2 each process is
    // born in its cgroup (clone3's CLONE_INTO_CGROUP): moving a process instead takes the
    // kernel's cgroup_threadgroup_rwsem for writing, which waits out an RCU grace period
    // (5-12 ms on an idle 2-vCPU machine, measured) unless `favordynmods` is on. v1 has no
    // such clone flag: there pid 1 is moved into its group while it builds its root, and
    // the command moves itself into the leaf by writing `cgroup.procs` before it runs
    // anything of its own.
    let command_joins = cgroup_parent.is_some() && !becomes_other;
    let mut leaf = None;
    let mut clone_into = None;
    let mut pid1_group = None;
    if let Some(parent) = &cgroup_parent {
        let unified = parent.layout == cgroups::Layout::Unified;
        if command_joins {
            let group = cgroups::pid1_group(parent)?;
            if unified {
                clone_into = Some(cgroups::open_dir(&group[0])?);
            }
            pid1_group = Some(group);
            steps.mark("pid 1's cgroup");
        } else if unified {
            // pid 1 is born in the leaf, as every process after it.
            let l = Leaf::create(parent, plan.memory_limit, plan.pids_limit)?;
            clone_into = Some(l.open_dir()?);
            leaf = Some(l);
            steps.mark("cgroup leaf");
        }
    }
    let terminal = if plan.process.terminal {
        Some(pty::open()?)
    } else {
        None
    };
    if let (Some(t), true) = (&terminal, privileged) {
        // The sandbox user re-opens the replica as /dev/console: it must own it.
        use crate::plan::IdMap;
        if let (Some(uid), Some(gid)) = (
            IdMap::outside_of(&plan.uid_map, plan.process.uid),
            IdMap::outside_of(&plan.gid_map, plan.process.gid),
        ) {
            nix::unistd::fchown(t.replica.as_raw_fd(), Some(uid.into()), Some(gid.into()))
                .map_err(|e| SandboxError::os("chown of the pty", e))?;
        }
    }
    // A socket, not a pipe: the second release carries the leaf's descriptors.
    let (sync_r, sync_w) = nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::SeqPacket,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| SandboxError::os("socketpair", e))?;
    let (err_r, err_w) = pipe()?;
    let (status_r, status_w) = pipe()?;

    // Signals we forward are queued for the signalfd from here on; the child resets its mask.
    let mut forwarded = SigSet::empty();
    for s in FORWARDED {
        forwarded.add(*s);
    }
    let mut old_mask = SigSet::empty();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&forwarded), Some(&mut old_mask))
        .map_err(|e| SandboxError::os("sigprocmask", e))?;
    let restore_mask = || {
        let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None);
    };

    // The network namespace is made beside the sandbox (see netns.rs), not by clone3.
    let net_channel = if plan.namespaces.net {
        Some(crate::netns::channel()?)
    } else {
        None
    };
    let mut pidfd: RawFd = -1;
    let mut args = CloneArgs {
        flags: (plan.namespaces.clone_flags & !(libc::CLONE_NEWNET as u64))
            | libc::CLONE_PIDFD as u64,
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    if let Some(dir) = &clone_into {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = dir.as_raw_fd() as u64;
    }
    // SAFETY: clone3 without CLONE_VM behaves like fork; this process is single-threaded.
    let clone = |args: &CloneArgs| unsafe { clone3(args) };
    let mut cloned = clone(&args);
    // Whether pid 1 is in its cgroup already, or (false) is put there after clone.
    let mut joined = clone_into.is_some() && cloned.is_ok();
    if let (Err(e), Some(_)) = (&cloned, &clone_into) {
        // A kernel before 5.7 (no CLONE_INTO_CGROUP) or a leaf it refuses: join by writing
        // cgroup.procs after clone, as on v1.
        tracing::debug!("clone3 into the cgroup: {e}");
        args.flags &= !CLONE_INTO_CGROUP;
        args.cgroup = 0;
        cloned = clone(&args);
        joined = false;
    }
    drop(clone_into);
    let rc = match cloned {
        Ok(pid) => pid,
        Err(e) => {
            restore_mask();
            return Err(SandboxError::Setup(match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::ENOSPC) | Some(libc::EUSERS) => format!(
                "cannot create the sandbox's namespaces: {e}; unprivileged user namespaces must be enabled (sysctl kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0); `cagerun doctor` checks this"
            ),
            _ => format!("clone3: {e}"),
        }));
        }
    };
    if rc == 0 {
        drop(sync_w);
        drop(err_r);
        child_main(ChildArgs {
            plan,
            fds: ChildFds {
                sync_read: sync_r.as_raw_fd(),
                err_write: err_w.as_raw_fd(),
                status_write: status_w.as_raw_fd(),
                net_receiver: net_channel.as_ref().map(|(_, r)| r.as_raw_fd()),
                tty: terminal.as_ref().map(|t| t.replica.as_raw_fd()),
                interactive: opts.interactive,
                park: opts.park,
            },
            privileged,
            fallback_rlimits,
        });
    }
    steps.mark("clone");
    if let Some(sock) = opts.park {
        // pid 1 holds the only copy now: the broker sees the socket close when it dies.
        // SAFETY: the caller handed this descriptor over for the sandbox.
        unsafe { libc::close(sock) };
    }
    let pid = Pid::from_raw(rc);
    // SAFETY: clone3 filled in a fresh descriptor.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    drop(sync_r);
    drop(err_w);
    drop(status_w);
    // First thing, so the slow part runs beside everything else: the network namespace
    // helper (it joins the user namespace, which needs no id map yet).
    let net_maker = match net_channel {
        Some((sender, receiver)) => {
            drop(receiver);
            let maker = crate::netns::spawn_maker(pid, &sender);
            // The helper answers the sandbox directly; without our copy of its end, a helper
            // that dies without answering becomes an error the sandbox reports.
            drop(sender);
            match maker {
                Ok(m) => Some(m),
                Err(e) => {
                    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                    let _ = waitpid(pid, None);
                    restore_mask();
                    return Err(e);
                }
            }
        }
        None => None,
    };
    let primary = terminal.map(|t| t.primary);

    let kill_and_reap = || {
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
    };
    // Each release is one message; the second one carries the command's cgroup where the
    // command alone goes there (see init's `CommandCgroup::receive`).
    let release = |cgroup: Option<&CommandCgroup>| {
        let (tag, fds) = match cgroup {
            Some(cg) => cg.message(),
            None => (b'g', Vec::new()),
        };
        let iov = [std::io::IoSlice::new(std::slice::from_ref(&tag))];
        let rights = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
        let cmsgs: &[_] = if fds.is_empty() { &[] } else { &rights };
        nix::sys::socket::sendmsg::<()>(
            sync_w.as_raw_fd(),
            &iov,
            cmsgs,
            nix::sys::socket::MsgFlags::empty(),
            None,
        )
        .map(drop)
        .map_err(|e| SandboxError::os("releasing the sandbox", e))
    };
    // Maps first (the child needs them to do anything), then the cgroups while the child
    // builds its root, then the second release.
    let mut command_cgroup = None;
    let mut join_cgroup = || match (&cgroup_parent, joined) {
        (Some(parent), _) if command_joins => {
            if !joined {
                cgroups::add(pid1_group.as_deref().unwrap_or_default(), pid.as_raw())?;
            }
            let l = Leaf::create(parent, plan.memory_limit, plan.pids_limit)?;
            let unified = parent.layout == cgroups::Layout::Unified;
            command_cgroup = Some(CommandCgroup {
                dir: if unified { Some(l.open_dir()?) } else { None },
                procs: l.open_procs()?,
            });
            leaf = Some(l);
            Ok(())
        }
        (Some(parent), false) => {
            let l = match leaf.take() {
                Some(l) => l,
                None => Leaf::create(parent, plan.memory_limit, plan.pids_limit)?,
            };
            let added = l.add(pid.as_raw());
            leaf = Some(l);
            added
        }
        _ => Ok(()),
    };
    // pid 1 of a sandbox whose user is another host id is moved before the first release,
    // after which it takes that identity (see `becomes_other`).
    let released = idmap::write_maps(pid.as_raw(), &plan.uid_map, &plan.gid_map, privileged)
        .map(|_| steps.mark("id maps"))
        .and_then(|_| if becomes_other { join_cgroup() } else { Ok(()) })
        .and_then(|_| release(None))
        .and_then(|_| if becomes_other { Ok(()) } else { join_cgroup() })
        .map(|_| steps.mark("cgroups"))
        .and_then(|_| release(command_cgroup.as_ref()));
    drop(command_cgroup);
    drop(sync_w);
    if let Some(maker) = net_maker {
        let _ = waitpid(maker, None);
    }
    steps.mark("released");
    if let Err(e) = released {
        kill_and_reap();
        restore_mask();
        // A sandbox that failed while building its root closed the sync pipe (EPIPE here):
        // its own message says why.
        let message = read_to_end(&err_r);
        if !message.is_empty() {
            return Err(SandboxError::Setup(
                String::from_utf8_lossy(&message).into_owned(),
            ));
        }
        return Err(e);
    }

    // The error pipe is read once the sandbox has ended, not at exec: one wake-up less on
    // the way (a setup error ends the sandbox with 125 right away, and its message waits in
    // the pipe).
    let ended = supervise(
        pid,
        &pidfd,
        &status_r,
        primary.as_ref(),
        &forwarded,
        opts,
        &mut steps,
    );
    restore_mask();
    if let Ok(Ended::Reported { alone, .. }) = ended {
        // Alone, pid 1 has no process left beside it, so the leaf is empty unless pid 1 is
        // in it; gone with it, a caller that exits after needs not wait for pid 1. Removed
        // here, not by pid 1 after its report (tried: the rmdir then ran on the CPU this
        // process was woken on, and `exec` was no faster, scripts/bench-ab 1.01-1.02x).
        let leaf_gone = alone && leaf.as_mut().is_none_or(Leaf::try_remove);
        if !(leaf_gone && opts.caller_exits_after) {
            let _ = waitpid(pid, None);
            steps.mark("pid 1 reaped");
        }
    }
    drop(leaf);
    steps.mark("leaf removed");
    steps.report();
    finish(ended, &err_r)
}

/// How the sandbox ended, as [`supervise`] saw it.
enum Ended {
    /// pid 1 reported the command's code and is on its way out, not yet reaped; `alone`:
    /// no other process was left in the sandbox.
    Reported { code: i32, alone: bool },
    /// pid 1 is reaped.
    Reaped(Outcome),
}

/// The outcome, or the sandbox's own setup error (it ended with 125 and its message waits
/// in the error pipe).
fn finish(ended: Result<Ended>, err_r: &OwnedFd) -> Result<Outcome> {
    let message = read_to_end(err_r);
    if !message.is_empty() {
        return Err(SandboxError::Setup(
            String::from_utf8_lossy(&message).into_owned(),
        ));
    }
    ended.map(|e| match e {
        Ended::Reported { code, .. } => Outcome::Exited(code),
        Ended::Reaped(outcome) => outcome,
    })
}

fn read_to_end(fd: &OwnedFd) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(nix::Error::EINTR) => continue,
            Err(_) => break,
        }
    }
    out
}

fn write_all(fd: RawFd, mut data: &[u8]) {
    while !data.is_empty() {
        // SAFETY: write of a live buffer.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n <= 0 {
            if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return;
        }
        data = &data[n as usize..];
    }
}

fn supervise(
    pid: Pid,
    pidfd: &OwnedFd,
    status: &OwnedFd,
    primary: Option<&OwnedFd>,
    forwarded: &SigSet,
    opts: &RunOptions,
    steps: &mut Steps,
) -> Result<Ended> {
    let sigfd = SignalFd::with_flags(forwarded, SfdFlags::SFD_CLOEXEC)
        .map_err(|e| SandboxError::os("signalfd", e))?;
    let deadline = opts.timeout.map(|t| Instant::now() + t);
    let _raw = match (primary, opts.interactive) {
        (Some(_), true) => pty::RawMode::enter(),
        _ => None,
    };
    let mut stdin_open = opts.interactive && primary.is_some();
    let mut buf = [0u8; 16384];
    loop {
        let timeout_ms: i32 = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                    let _ = waitpid(pid, None);
                    return Ok(Ended::Reaped(Outcome::TimedOut));
                }
                left.as_millis().min(i32::MAX as u128) as i32 + 1
            }
        };
        let mut fds = vec![
            libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sigfd.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: status.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        if let Some(p) = primary {
            fds.push(libc::pollfd {
                fd: p.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            if stdin_open {
                fds.push(libc::pollfd {
                    fd: 0,
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
        }
        // SAFETY: poll over a live vector.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n < 0 {
            continue; // EINTR
        }
        if fds[1].revents & libc::POLLIN != 0 {
            if let Ok(Some(info)) = sigfd.read_signal() {
                let sig = info.ssi_signo as i32;
                if sig == libc::SIGWINCH {
                    if let Some(p) = primary {
                        pty::copy_window_size(0, p);
                    }
                } else {
                    // SAFETY: signal our own child.
                    unsafe { libc::kill(pid.as_raw(), sig) };
                }
            }
        }
        if let Some(p) = primary {
            if fds[3].revents & libc::POLLIN != 0 {
                if let Ok(n) = nix::unistd::read(p.as_raw_fd(), &mut buf) {
                    write_all(1, &buf[..n]);
                }
            }
            if stdin_open && fds.len() > 4 && fds[4].revents & (libc::POLLIN | libc::POLLHUP) != 0 {
                match nix::unistd::read(0, &mut buf) {
                    Ok(0) | Err(_) => {
                        stdin_open = false;
                        write_all(p.as_raw_fd(), &[4]); // ^D: end of input on the terminal
                    }
                    Ok(n) => write_all(p.as_raw_fd(), &buf[..n]),
                }
            }
        }
        if fds[2].revents & libc::POLLIN != 0 {
            // pid 1 reported the command's code and is on its way out (see init's
            // `report_end`): the caller decides whether to wait for it.
            let mut report = [0u8; 8];
            if nix::unistd::read(status.as_raw_fd(), &mut report) == Ok(8) {
                steps.mark("command ran");
                if let Some(p) = primary {
                    drain(p);
                }
                let [c0, c1, c2, c3, alone, entered, ..] = report;
                match entered {
                    b'b' => tracing::info!(
                        "cgroup: the command was born in its leaf (CLONE_INTO_CGROUP)"
                    ),
                    b'm' => tracing::info!("cgroup: the command moved itself into its leaf"),
                    _ => {}
                }
                return Ok(Ended::Reported {
                    code: i32::from_ne_bytes([c0, c1, c2, c3]),
                    alone: alone == 1,
                });
            }
        }
        if fds[0].revents & libc::POLLIN != 0 {
            let status = waitpid(pid, None).map_err(|e| SandboxError::os("waitpid", e))?;
            if let Some(p) = primary {
                drain(p);
            }
            return Ok(Ended::Reaped(match status {
                WaitStatus::Exited(_, code) => Outcome::Exited(code),
                WaitStatus::Signaled(_, sig, _) => Outcome::Signaled(sig as i32),
                _ => Outcome::Exited(125),
            }));
        }
    }
}

/// Output still buffered in the pty after the command ended.
fn drain(primary: &OwnedFd) {
    let mut buf = [0u8; 16384];
    loop {
        let mut p = libc::pollfd {
            fd: primary.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd.
        if unsafe { libc::poll(&mut p, 1, 0) } <= 0 || p.revents & libc::POLLIN == 0 {
            return;
        }
        match nix::unistd::read(primary.as_raw_fd(), &mut buf) {
            Ok(n) if n > 0 => write_all(1, &buf[..n]),
            _ => return,
        }
    }
}

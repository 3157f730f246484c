//! The child side: everything between `clone3` and `execve`, in the order it must happen.
//! Read [`sandbox_main`] top to bottom to audit the sandbox.
//!
//! The cloned child becomes pid 1 of the sandbox: it builds the root, takes the sandbox
//! identity, forks the command, then only reaps zombies and forwards signals, and exits
//! with the command's status (which ends the pid namespace). The command drops every
//! privilege and installs seccomp last, right before `execve`.

use std::convert::Infallible;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sched::CloneFlags;
use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use seccompiler::BpfProgram;

use crate::error::{Result, SandboxError};
use crate::plan::Plan;
use crate::{fds, rlimits, rootfs};

pub struct ChildFds {
    pub sync_read: RawFd,
    pub err_write: RawFd,
    /// pid 1 writes the command's exit code here before it exits, so the parent wakes while
    /// the namespaces are still being torn down.
    pub status_write: RawFd,
    /// Where the network namespace arrives (see [`crate::netns`]), when the plan has one.
    pub net_receiver: Option<RawFd>,
    /// The pty replica (`-t`): becomes 0, 1, 2 and the controlling terminal.
    pub tty: Option<RawFd>,
    /// Keep the caller's stdin (`-i`); otherwise stdin is /dev/null.
    pub interactive: bool,
    /// A parked sandbox's socket (see [`crate::park`]): the command, its stdio and the go
    /// come from there.
    pub park: Option<RawFd>,
}

/// The sandbox's limits cgroup (its leaf), as descriptors the parent opened and sent with
/// the second release: pid 1 holds them until the command has started, never the command
/// (they are close-on-exec).
pub struct CommandCgroup {
    /// The leaf's directory on cgroup v2: the command is born there (CLONE_INTO_CGROUP).
    pub dir: Option<OwnedFd>,
    /// Each hierarchy's `cgroup.procs`: where the command is not born in the leaf (v1, or a
    /// kernel that refuses the clone flag), it moves itself in through these first.
    pub procs: Vec<OwnedFd>,
}

/// The most descriptors a release carries: v1's memory and pids `cgroup.procs`, or v2's
/// directory and `cgroup.procs`.
const MAX_CGROUP_FDS: usize = 2;

impl CommandCgroup {
    /// The second release's message: one byte (`d`: a v2 directory comes first, then
    /// `cgroup.procs`; `p`: only `cgroup.procs`) and the descriptors.
    pub fn message(&self) -> (u8, Vec<RawFd>) {
        use std::os::fd::AsRawFd;
        let tag = if self.dir.is_some() { b'd' } else { b'p' };
        let fds = self.dir.iter().chain(&self.procs);
        (tag, fds.map(AsRawFd::as_raw_fd).collect())
    }

    /// Wait for the second release and take the cgroup it carries: the command's, when it
    /// alone goes there and pid 1 stays out (see [`crate::launch::run`]); None when the parent
    /// sent none. A parent that failed or died sends nothing: then leave, as
    /// [`wait_for_parent`].
    fn receive(sock: RawFd) -> Result<Option<CommandCgroup>> {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        use std::os::fd::FromRawFd;
        let mut tag = [0u8; 1];
        let mut iov = [std::io::IoSliceMut::new(&mut tag)];
        let mut space = nix::cmsg_space!([RawFd; MAX_CGROUP_FDS]);
        let msg = match recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        {
            Ok(m) if m.bytes == 1 => m,
            _ => unsafe { libc::_exit(125) },
        };
        let mut fds = Vec::new();
        for c in msg
            .cmsgs()
            .map_err(|e| SandboxError::Setup(format!("the sandbox's cgroup: {e}")))?
        {
            if let ControlMessageOwned::ScmRights(got) = c {
                // SAFETY: descriptors the kernel just installed for us.
                fds.extend(
                    got.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
        let mut fds = fds.into_iter();
        let cgroup = match tag[0] {
            b'd' => Some(CommandCgroup {
                dir: fds.next(),
                procs: fds.collect(),
            }),
            b'p' => Some(CommandCgroup {
                dir: None,
                procs: fds.collect(),
            }),
            _ => None,
        };
        match &cgroup {
            Some(cg) if truncated || cg.procs.is_empty() => Err(SandboxError::Setup(
                "the sandbox's cgroup did not arrive whole".into(),
            )),
            _ => Ok(cgroup),
        }
    }
}

pub struct ChildArgs<'a> {
    pub plan: &'a Plan,
    pub fds: ChildFds,
    /// The caller is root on the host (may set groups; maps were written by a privileged parent).
    pub privileged: bool,
    /// rlimits that stand in for cgroup limits when no cgroup is delegated.
    pub fallback_rlimits: Vec<crate::rlimits::Rlimit>,
}

/// Sent over the error pipe: the parent prints it and exits 125.
fn report(fd: RawFd, msg: &str) {
    let bytes = msg.as_bytes();
    // SAFETY: a write of a live buffer.
    unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
}

/// Entry point after clone3 in the child. Never returns.
pub fn child_main(args: ChildArgs) -> ! {
    let err_fd = args.fds.err_write;
    let code = match sandbox_main(args) {
        Ok(code) => code,
        Err(e) => {
            report(err_fd, &e.to_string());
            125
        }
    };
    // SAFETY: leave without running the parent's atexit handlers or destructors twice.
    unsafe { libc::_exit(code) }
}

fn prctl(option: libc::c_int, arg: libc::c_ulong, what: &str) -> Result<()> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(option, arg, 0, 0, 0) } != 0 {
        return Err(SandboxError::Setup(format!(
            "{what}: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// One byte from the parent releases the next step; anything else means the parent failed
/// or died, and reports for itself.
fn wait_for_parent(sync_read: RawFd) {
    let mut go = [0u8; 1];
    // SAFETY: read into a stack buffer.
    if unsafe { libc::read(sync_read, go.as_mut_ptr().cast(), 1) } != 1 {
        unsafe { libc::_exit(125) };
    }
}

fn parent_is_gone(err_fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd: err_fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one pollfd on the stack.
    unsafe { libc::poll(&mut p, 1, 0) };
    p.revents & libc::POLLERR != 0
}

fn sandbox_main(args: ChildArgs) -> Result<i32> {
    let ChildArgs {
        plan,
        fds: f,
        privileged,
        fallback_rlimits,
    } = args;

    // 1. Die with the parent; keep no descriptor of the caller's but ours.
    prctl(
        libc::PR_SET_PDEATHSIG,
        libc::SIGKILL as libc::c_ulong,
        "PR_SET_PDEATHSIG",
    )?;
    let mut keep = vec![f.sync_read, f.err_write, f.status_write];
    keep.extend(f.net_receiver);
    keep.extend(f.tty);
    keep.extend(f.park);
    fds::close_all_except(&keep);
    setup_stdio(&f)?;

    // 2. What needs no id map, while the parent writes them: bind sources are opened with
    //    the caller's own host identity; we already hold every capability in the new
    //    namespaces, so the hostname can be set.
    let sources = open_sources(plan)?;
    let ready = match f.park {
        Some(_) => parked_sources(plan, &sources)?,
        None => crate::park::Ready::default(),
    };
    if let (true, Some(name)) = (plan.namespaces.uts, &plan.hostname) {
        nix::unistd::sethostname(name)
            .map_err(|e| SandboxError::Setup(format!("sethostname: {e}")))?;
    }
    // The command's seccomp programs, compiled here while the parent writes the maps rather
    // than before clone on everyone's way (the command borrows them: it shares our memory).
    let seccomp = match &plan.process.seccomp {
        Some(profile) => crate::seccomp::compile(profile)?,
        None => Vec::new(),
    };
    let seccomp = seccomp.as_slice();
    wait_for_parent(f.sync_read);

    // 3. The sandbox identity: as root on the host, files made during setup must be owned by
    //    a mapped id. Capabilities in the new user namespace are kept for setup.
    set_identity(plan, privileged)?;
    prctl(
        libc::PR_SET_PDEATHSIG,
        libc::SIGKILL as libc::c_ulong,
        "PR_SET_PDEATHSIG",
    )?;
    if parent_is_gone(f.err_write) {
        return Ok(125);
    }

    // 4. The filesystem; afterwards nothing of the host is reachable but what was bound.
    let console = match f.tty {
        Some(fd) => Some(
            std::fs::read_link(format!("/proc/self/fd/{fd}"))
                .map_err(|e| SandboxError::Setup(format!("pty name: {e}")))?,
        ),
        None => None,
    };
    let mut net_receiver = f.net_receiver;
    let mut join_net = || -> Result<()> {
        if let Some(fd) = net_receiver.take() {
            crate::netns::join(fd)?;
            unsafe { libc::close(fd) };
        }
        Ok(())
    };
    rootfs::build(plan, &sources, console.as_deref(), &mut join_net)?;
    join_net()?;
    for fd in sources.values() {
        unsafe { libc::close(*fd) };
    }

    // 5. Meanwhile the parent made our cgroup and moved us in, unless the command alone goes
    //    there (step 6): wait for that, then make it the root of our cgroup namespace.
    //    Limits apply from here on, before the command.
    let command_cgroup = CommandCgroup::receive(f.sync_read)?;
    unsafe { libc::close(f.sync_read) };
    if command_cgroup.is_none() {
        root_cgroup_namespace(plan)?;
    }
    rlimits::apply(&plan.process.rlimits)?;
    rlimits::apply(&fallback_rlimits)?;
    if let Some(mask) = plan.process.umask {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    }

    // 6. The command. A parked sandbox starts its command's process now, before its call:
    //    that process takes every step the plan alone decides, then waits for the call
    //    ([`parked_command`]); pid 1 sleeps meanwhile, as it does while any command starts.
    let all = SigSet::all();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&all), None)
        .map_err(|e| SandboxError::Setup(format!("sigprocmask: {e}")))?;
    // The command shares pid 1's memory until it execs, as posix_spawn does: no page tables
    // to copy and no copy-on-write faults on either side, and pid 1 sleeps meanwhile. The
    // child only borrows from pid 1 (never drops what pid 1 owns) and ends in execve or _exit.
    // Where the command alone is limited, it is born in the leaf (cgroup v2), or moves
    // itself in before anything else (v1, or a refused clone flag), and its cgroup namespace
    // is rooted there.
    let mut stack = vec![0u8; 256 << 10];
    let err_write = f.err_write;
    let writable = plan.writable_destinations();
    let setup = crate::process::ExecSetup {
        console: f.tty.is_some(),
        writable: &writable,
    };
    let command = |moves_itself: bool| -> ! {
        let e = enter_cgroup(plan, command_cgroup.as_ref(), moves_itself)
            .and_then(|()| match f.park {
                None => crate::process::exec(&plan.process, seccomp, &setup),
                Some(sock) => parked_command(sock, &ready, plan, seccomp, &setup),
            })
            .unwrap_err();
        report(err_write, &e.to_string());
        // SAFETY: leave without unwinding into pid 1's frames.
        unsafe { libc::_exit(125) }
    };
    let into = command_cgroup.as_ref().and_then(|cg| cg.dir.as_ref());
    let limited = command_cgroup.is_some();
    // SAFETY: the child borrows only and ends in execve or _exit; pid 1 resumes after that.
    let born = unsafe {
        crate::clone::spawn_sharing_memory(&mut stack, into.map(|fd| fd.as_fd()), &mut || {
            command(limited && into.is_none())
        })
    };
    // How the command entered its cgroup, for the parent's log (see `report_end`).
    let entered = match (&command_cgroup, &born, into) {
        (None, _, _) => b'-',
        (Some(_), Ok(_), Some(_)) => b'b',
        (Some(_), _, _) => b'm',
    };
    let child = match born {
        Ok(pid) => Pid::from_raw(pid),
        // Not born in the leaf (no clone3 with a stack on this architecture, a kernel
        // before 5.7, a refused cgroup): clone(2), and the command moves itself in.
        // SAFETY: CLONE_VM|CLONE_VFORK with a stack of its own, as above.
        Err(_) => unsafe {
            nix::sched::clone(
                Box::new(|| command(limited)),
                &mut stack,
                CloneFlags::CLONE_VM | CloneFlags::CLONE_VFORK,
                Some(libc::SIGCHLD),
            )
        }
        .map_err(|e| SandboxError::Setup(format!("starting the command: {e}")))?,
    };
    drop(command_cgroup);
    unsafe { libc::close(f.err_write) };
    if let Some(t) = f.tty {
        unsafe { libc::close(t) };
    }
    // pid 1 keeps no capability (it never execs, so its bounding set is moot).
    for set in [
        caps::CapSet::Effective,
        caps::CapSet::Permitted,
        caps::CapSet::Inheritable,
    ] {
        caps::clear(None, set)
            .map_err(|e| SandboxError::Setup(format!("dropping pid 1's capabilities: {e}")))?;
    }
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")?;
    prctl(libc::PR_SET_DUMPABLE, 0, "PR_SET_DUMPABLE")?;
    let code = reap_and_forward(child);
    // A parked sandbox's caller waits on the broker: its answer goes first. The report wakes
    // the engine, which (perf sched) could take this CPU for its cleanup before we sent it.
    if let Some(sock) = f.park {
        crate::park::send_code(sock, code);
    }
    report_end(f.status_write, code, entered);
    Ok(code)
}

/// Tell the parent how the command ended, before pid 1 exits (which tears the namespaces
/// down): 4 bytes of exit code; then 1 when no other process is left in the sandbox (every
/// process in it descends from pid 1, so none is when pid 1 has no child), else 0; then how
/// the command entered its cgroup (`b`: born there, `m`: moved itself, `-`: none of its own).
fn report_end(status_write: RawFd, code: i32, entered: u8) {
    let alone = loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => break false,
            Ok(_) => continue,
            Err(nix::Error::ECHILD) => break true,
            Err(_) => break false,
        }
    };
    let mut bytes = [0u8; 8];
    bytes[..4].copy_from_slice(&code.to_ne_bytes());
    bytes[4] = alone as u8;
    bytes[5] = entered;
    // SAFETY: a write of a live buffer.
    unsafe { libc::write(status_write, bytes.as_ptr().cast(), bytes.len()) };
}

/// The command's first step where it alone is limited (see [`CommandCgroup`]): move in,
/// unless born there, and root its cgroup namespace at the leaf.
fn enter_cgroup(plan: &Plan, cgroup: Option<&CommandCgroup>, moves_itself: bool) -> Result<()> {
    let Some(cg) = cgroup else { return Ok(()) };
    if moves_itself {
        for fd in &cg.procs {
            use std::os::fd::AsRawFd;
            // SAFETY: a write of a live buffer; "0" is the writer itself.
            if unsafe { libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) } != 1 {
                return Err(SandboxError::Setup(format!(
                    "joining the sandbox's cgroup: {}",
                    std::io::Error::last_os_error()
                )));
            }
        }
    }
    root_cgroup_namespace(plan)
}

/// A cgroup namespace of its own, where the plan asks for one: rooted at the caller's
/// cgroup, which becomes `/` in its view.
fn root_cgroup_namespace(plan: &Plan) -> Result<()> {
    if plan.namespaces.cgroup {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP)
            .map_err(|e| SandboxError::Setup(format!("unsharing the cgroup namespace: {e}")))?;
    }
    Ok(())
}

fn setup_stdio(f: &ChildFds) -> Result<()> {
    let dup_to_std = |fd: RawFd| -> Result<()> {
        for target in 0..3 {
            // SAFETY: dup2 of descriptors we own.
            if unsafe { libc::dup2(fd, target) } < 0 {
                return Err(SandboxError::Setup(format!(
                    "dup2: {}",
                    std::io::Error::last_os_error()
                )));
            }
        }
        Ok(())
    };
    if let Some(tty) = f.tty {
        dup_to_std(tty)?;
    } else if !f.interactive {
        let null = std::fs::File::open("/dev/null")
            .map_err(|e| SandboxError::Setup(format!("/dev/null: {e}")))?;
        use std::os::fd::IntoRawFd;
        let fd = null.into_raw_fd();
        unsafe {
            libc::dup2(fd, 0);
            libc::close(fd);
        }
    }
    Ok(())
}

/// O_PATH descriptors for every bind source and the rootfs, opened in our mount namespace
/// before the identity change (see [`rootfs::SourceFds`]). A source hostile code can write
/// is resolved beneath its root ([`crate::beneath`]); it is opened first, so a trusted bind
/// naming the same path gets the safely resolved descriptor too.
fn open_sources(plan: &Plan) -> Result<rootfs::SourceFds> {
    use std::os::fd::IntoRawFd;
    let mut map = rootfs::SourceFds::new();
    for m in &plan.mounts {
        let crate::mounts::MountKind::Bind {
            source,
            beneath: Some(root),
            ..
        } = &m.kind
        else {
            continue;
        };
        let root_fd = crate::beneath::open_root(root)?;
        let below = source.strip_prefix(root).unwrap_or(Path::new(""));
        // Named by the part below the root only: the caller that asked for it (a hostile
        // gateway) learns nothing of the host's layout from a refusal.
        let fd = crate::beneath::open_beneath(&root_fd, below, below)?;
        if let Some(old) = map.insert(source.clone(), fd.into_raw_fd()) {
            unsafe { libc::close(old) };
        }
    }
    let trusted = plan.mounts.iter().filter_map(|m| match &m.kind {
        crate::mounts::MountKind::Bind {
            source,
            beneath: None,
            ..
        } => Some(source.clone()),
        _ => None,
    });
    for path in trusted.chain(plan.root.clone()) {
        if map.contains_key(&path) {
            continue;
        }
        let fd = nix::fcntl::open(
            &path,
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| SandboxError::Setup(format!("bind source {}: {e}", path.display())))?;
        map.insert(path, fd);
    }
    Ok(map)
}

/// What a parked sandbox reports it binds from hostile roots (see [`crate::park::Ready`]).
fn parked_sources(plan: &Plan, sources: &rootfs::SourceFds) -> Result<crate::park::Ready> {
    let mut ready = crate::park::Ready::default();
    for m in &plan.mounts {
        if let crate::mounts::MountKind::Bind {
            source,
            beneath: Some(_),
            ..
        } = &m.kind
        {
            if let Some(fd) = sources.get(source) {
                ready.sources.push(crate::park::identity(*fd)?);
            }
        }
    }
    Ok(ready)
}

fn set_identity(plan: &Plan, privileged: bool) -> Result<()> {
    let fail = |what: &str, e: nix::Error| SandboxError::Setup(format!("{what}: {e}"));
    prctl(libc::PR_SET_KEEPCAPS, 1, "PR_SET_KEEPCAPS")?;
    if privileged {
        let groups: Vec<nix::unistd::Gid> = plan
            .process
            .additional_gids
            .iter()
            .map(|g| nix::unistd::Gid::from_raw(*g))
            .collect();
        nix::unistd::setgroups(&groups).map_err(|e| fail("setgroups", e))?;
    } else if !plan.process.additional_gids.is_empty() {
        return Err(SandboxError::Unsupported {
            field: "process.user.additionalGids when rootless".into(),
        });
    }
    let gid = nix::unistd::Gid::from_raw(plan.process.gid);
    let uid = nix::unistd::Uid::from_raw(plan.process.uid);
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| {
        fail(
            &format!("setresgid({}): is the gid mapped?", plan.process.gid),
            e,
        )
    })?;
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| {
        fail(
            &format!("setresuid({}): is the uid mapped?", plan.process.uid),
            e,
        )
    })?;
    Ok(())
}

/// Forward every signal to `command`, reap every child, return `command`'s exit code
/// (128+signal when killed). The caller has blocked all signals.
pub fn reap_and_forward(command: Pid) -> i32 {
    let all = SigSet::all();
    loop {
        let Ok(sig) = all.wait() else { continue };
        if sig == Signal::SIGCHLD {
            loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(pid, code)) if pid == command => return code,
                    Ok(WaitStatus::Signaled(pid, s, _)) if pid == command => return 128 + s as i32,
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => continue,
                }
            }
        } else {
            let _ = kill(command, sig);
        }
    }
}

/// A parked sandbox's command process (see [`crate::park`]): the steps the plan alone
/// decides, then the call (its command, environment, working directory and stdio), then the
/// rest, down the path every sandboxed process takes ([`crate::process`]).
fn parked_command(
    sock: RawFd,
    ready: &crate::park::Ready,
    plan: &Plan,
    seccomp: &[BpfProgram],
    setup: &crate::process::ExecSetup,
) -> Result<Infallible> {
    let prepared = crate::process::prepare(&plan.process, setup)?;
    // Copied before the call, not on its way (the plan's process carries the seccomp profile).
    let mut process = plan.process.clone();
    let (go, stdio) = crate::park::wait_for_go(sock, ready)?;
    // Two descriptors: stdout and stderr (stdin stays the /dev/null of step 1); three with -i.
    let first = 3 - stdio.len();
    for (target, fd) in (first..).zip(stdio.iter()) {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 of descriptors we own onto stdio.
        if unsafe { libc::dup2(fd.as_raw_fd(), target as RawFd) } < 0 {
            return Err(SandboxError::Setup(format!(
                "dup2: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    drop(stdio);
    process.args = go.args;
    process.env = go.env;
    process.cwd = go.cwd.into();
    crate::process::finish(prepared, &process, seccomp).inspect_err(|e| {
        // The caller reads the stderr it handed over, not the engine's: the same line
        // `cagerun exec` prints for a fresh sandbox goes there.
        let line = format!("cagerun: {}\n", SandboxError::Setup(e.to_string()));
        report(2, &line);
    })
}

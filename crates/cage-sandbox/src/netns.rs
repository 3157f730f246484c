//! The sandbox's network namespace, made beside the sandbox rather than in `clone3`.
//!
//! Creating a network namespace is the slowest single step of starting a sandbox (~0.25 ms
//! here, most of `clone3`). So the sandbox is cloned without one, and a short-lived helper
//! forked by the parent joins the sandbox's user namespace, creates the network namespace
//! (owned by that user namespace, as if `clone3` had made it), brings `lo` up and passes the
//! namespace to the sandbox over a socket, while the sandbox builds its root. The sandbox
//! joins it before anything that depends on it (sysfs) and before the command starts.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use nix::unistd::{fork, ForkResult, Pid};

use crate::error::{Result, SandboxError};
use crate::loopback;

/// (parent's end, sandbox's end)
pub fn channel() -> Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| SandboxError::os("socketpair for the network namespace", e))
}

/// Fork the helper that makes the network namespace for the sandbox `sandbox` (its user
/// namespace must be mapped already) and sends it over `sender`.
pub fn spawn_maker(sandbox: Pid, sender: &OwnedFd) -> Result<Pid> {
    // SAFETY: single-threaded; the child only makes syscalls and exits.
    match unsafe { fork() }.map_err(|e| SandboxError::os("fork for the network namespace", e))? {
        ForkResult::Parent { child } => Ok(child),
        ForkResult::Child => {
            // SAFETY: die with the parent; exit without running the parent's destructors.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
            let sent = make(sandbox).and_then(|net| {
                let fds = [net.as_raw_fd()];
                sendmsg::<()>(
                    sender.as_raw_fd(),
                    &[IoSlice::new(b"n")],
                    &[ControlMessage::ScmRights(&fds)],
                    MsgFlags::empty(),
                    None,
                )
                .map_err(|e| SandboxError::os("passing the network namespace", e))
            });
            let code = match sent {
                Ok(_) => 0,
                Err(e) => {
                    let msg = format!("e{e}");
                    let _ = sendmsg::<()>(
                        sender.as_raw_fd(),
                        &[IoSlice::new(msg.as_bytes())],
                        &[],
                        MsgFlags::empty(),
                        None,
                    );
                    1
                }
            };
            unsafe { libc::_exit(code) }
        }
    }
}

fn make(sandbox: Pid) -> Result<OwnedFd> {
    let open = |path: &str| {
        nix::fcntl::open(
            path,
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        // SAFETY: open returned a fresh descriptor.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .map_err(|e| SandboxError::os(format!("opening {path}"), e))
    };
    let userns = open(&format!("/proc/{sandbox}/ns/user"))?;
    nix::sched::setns(&userns, nix::sched::CloneFlags::CLONE_NEWUSER)
        .map_err(|e| SandboxError::os("joining the sandbox's user namespace", e))?;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| SandboxError::os("creating the network namespace", e))?;
    loopback::up()?;
    open("/proc/self/ns/net")
}

/// In the sandbox: receive the namespace and join it.
pub fn join(receiver: RawFd) -> Result<()> {
    let mut buf = [0u8; 512];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        receiver,
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| SandboxError::Setup(format!("receiving the network namespace: {e}")))?;
    let mut net = None;
    for c in msg
        .cmsgs()
        .map_err(|e| SandboxError::Setup(format!("receiving the network namespace: {e}")))?
    {
        if let ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: the kernel installed these descriptors for us.
            net = fds.first().map(|fd| unsafe { OwnedFd::from_raw_fd(*fd) });
        }
    }
    let len = msg.bytes;
    let Some(net) = net else {
        let text = String::from_utf8_lossy(&buf[..len]);
        return Err(SandboxError::Setup(match text.strip_prefix('e') {
            Some(why) => format!("setting up the network namespace: {why}"),
            None => "setting up the network namespace: the helper ended without an answer".into(),
        }));
    };
    nix::sched::setns(&net, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| SandboxError::Setup(format!("joining the network namespace: {e}")))
}

//! A parked sandbox: built up to the command and waiting for one (a broker's warm pool).
//!
//! The sandbox is made exactly as [`crate::launch::run`] makes any: namespaces, id maps, its
//! cgroup, the root, the identity. pid 1 then starts the command's process, which enters the
//! command's cgroup and takes the steps the plan alone decides ([`crate::process::prepare`]:
//! signal dispositions, a new session, the bounding set, the Landlock ruleset made but not
//! enforced), and waits on a SOCK_SEQPACKET socket (the park socket; the broker holds the
//! other end) with every signal blocked:
//!
//! 1. it sends [`Ready`]: the device and inode of every bind source pid 1 resolved beneath a
//!    hostile root, so the broker can check, when it hands the sandbox a command, that a
//!    fresh sandbox would bind the same directories now;
//! 2. the broker sends [`Go`]: the command's argv, environment and working directory, with
//!    its stdout and stderr as SCM_RIGHTS, and its stdin before them when the call keeps it
//!    (`-i`; otherwise the command keeps the /dev/null pid 1 opened, as a fresh one does);
//! 3. the process puts them on 0 (or 1), 1, 2 and finishes down the same path every sandboxed
//!    process takes ([`crate::process::finish`]: working directory, capabilities,
//!    no_new_privs, Landlock enforced, seccomp last, execve). What the call waits for is
//!    that alone: no clone, no signal resets, no ~40 bounding-set drops, no ruleset to build;
//! 4. when the command ends pid 1 sends its exit code (4 bytes), before the namespaces are
//!    torn down, so the broker can answer its caller at once.
//!
//! pid 1 sleeps in the command's clone (CLONE_VFORK) while the process waits: a broker that
//! closes the socket (an idle or evicted sandbox) ends the process, then pid 1, as before.
//!
//! Everything else a command gets (identity, mounts, limits, hostname, filter) was fixed when
//! the sandbox was made, from a spec the broker compares, field by field, with the spec a
//! fresh sandbox would get for the call. A parked sandbox runs one command, then ends.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use crate::error::{Result, SandboxError};

/// The largest [`Go`] message: argv and environment together, as Linux's own ARG_MAX-ish
/// bound (the broker bounds what a caller may send well below it).
pub const GO_MAX: usize = 2 << 20;
/// Bind sources reported in [`Ready`] (more than any sandbox has).
const READY_MAX: usize = 256;

/// What a fresh sandbox's command gets that a parked one learns only at its call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Go {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
}

/// The bind sources a parked sandbox holds: (st_dev, st_ino) of each source it resolved
/// beneath a hostile root, in the plan's mount order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ready {
    pub sources: Vec<(u64, u64)>,
}

fn os(what: &'static str) -> impl Fn(nix::Error) -> SandboxError {
    move |e| SandboxError::os(what, e)
}

fn malformed(what: &str) -> SandboxError {
    SandboxError::Setup(format!("park socket: malformed {what}"))
}

impl Go {
    /// `nargs:u32 nenv:u32` then each string NUL-terminated: args, env, cwd.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.args.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.env.len() as u32).to_le_bytes());
        for s in self.args.iter().chain(&self.env).chain([&self.cwd]) {
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Go> {
        let count = |at: usize| -> Result<usize> {
            bytes
                .get(at..at + 4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize)
                .ok_or_else(|| malformed("command"))
        };
        let (nargs, nenv) = (count(0)?, count(4)?);
        // Every string ends in its NUL, and nothing follows the last.
        let body = bytes
            .get(8..)
            .and_then(|b| b.strip_suffix(&[0]))
            .ok_or_else(|| malformed("command"))?;
        if body.iter().filter(|b| **b == 0).count() != nargs + nenv {
            return Err(malformed("command"));
        }
        let mut strings = body.split(|b| *b == 0);
        let mut take = |n: usize| -> Result<Vec<String>> {
            (0..n)
                .map(|_| {
                    strings
                        .next()
                        .and_then(|s| std::str::from_utf8(s).ok())
                        .map(str::to_owned)
                        .ok_or_else(|| malformed("command"))
                })
                .collect()
        };
        let args = take(nargs)?;
        let env = take(nenv)?;
        let cwd = take(1)?.remove(0);
        if args.is_empty() || args[0].is_empty() || !cwd.starts_with('/') {
            return Err(malformed(
                "command (no program, or a relative working directory)",
            ));
        }
        Ok(Go { args, env, cwd })
    }
}

impl Ready {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = b"R".to_vec();
        for (dev, ino) in &self.sources {
            out.extend_from_slice(&dev.to_le_bytes());
            out.extend_from_slice(&ino.to_le_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Ready> {
        let body = bytes.strip_prefix(b"R").ok_or_else(|| malformed("ready"))?;
        if body.len() % 16 != 0 || body.len() / 16 > READY_MAX {
            return Err(malformed("ready"));
        }
        let sources = body
            .chunks(16)
            .map(|c| {
                (
                    u64::from_le_bytes(c[..8].try_into().unwrap()),
                    u64::from_le_bytes(c[8..].try_into().unwrap()),
                )
            })
            .collect();
        Ok(Ready { sources })
    }
}

/// (st_dev, st_ino) of an open descriptor.
pub fn identity(fd: RawFd) -> Result<(u64, u64)> {
    // SAFETY: the caller's descriptor stays open for the call.
    let st = nix::sys::stat::fstat(fd).map_err(os("fstat of a bind source"))?;
    Ok((st.st_dev, st.st_ino))
}

/// What a fresh sandbox of `plan` would bind from hostile roots now, resolved the way pid 1
/// resolves them ([`crate::beneath`]), to compare with a parked sandbox's [`Ready`].
pub fn current_sources(plan: &crate::plan::Plan) -> Result<Ready> {
    let mut ready = Ready::default();
    for m in &plan.mounts {
        if let crate::mounts::MountKind::Bind {
            source,
            beneath: Some(root),
            ..
        } = &m.kind
        {
            let root_fd = crate::beneath::open_root(root)?;
            let below = source
                .strip_prefix(root)
                .unwrap_or(std::path::Path::new(""));
            let fd = crate::beneath::open_beneath(&root_fd, below, below)?;
            ready.sources.push(identity(fd.as_raw_fd())?);
        }
    }
    Ok(ready)
}

/// One message, whole (SOCK_SEQPACKET keeps boundaries; a truncated one is refused).
fn recv_message(sock: RawFd, max: usize, want_fds: &[usize]) -> Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; max];
    let mut cmsg = nix::cmsg_space!([RawFd; 3]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let (len, fds, truncated) = loop {
        match recvmsg::<()>(sock, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(msg) => {
                let mut fds = Vec::new();
                for c in msg.cmsgs().map_err(os("park socket"))? {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        // SAFETY: the kernel just installed these descriptors for us.
                        fds.extend(
                            raw.into_iter()
                                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                        );
                    }
                }
                let truncated = msg
                    .flags
                    .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
                break (msg.bytes, fds, truncated);
            }
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(SandboxError::os("park socket", e)),
        }
    };
    if len == 0 {
        return Err(SandboxError::Setup(
            "park socket: the broker went away".into(),
        ));
    }
    if truncated || !want_fds.contains(&fds.len()) {
        return Err(malformed("message"));
    }
    buf.truncate(len);
    Ok((buf, fds))
}

fn send_message(sock: RawFd, bytes: &[u8], fds: &[RawFd]) -> Result<()> {
    let iov = [std::io::IoSlice::new(bytes)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    loop {
        match sendmsg::<()>(sock, &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(_) => return Ok(()),
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(SandboxError::os("park socket", e)),
        }
    }
}

/// pid 1's side: say it is parked, then wait for its command and stdio: stdout and stderr,
/// and stdin first when the call keeps it (`-i`); otherwise the command keeps the /dev/null
/// pid 1 opened, as a fresh sandbox's does.
pub(crate) fn wait_for_go(sock: RawFd, ready: &Ready) -> Result<(Go, Vec<OwnedFd>)> {
    send_message(sock, &ready.encode(), &[])?;
    let (bytes, fds) = recv_message(sock, GO_MAX, &[2, 3])?;
    Ok((Go::decode(&bytes)?, fds))
}

/// pid 1's side: the command's exit code.
pub(crate) fn send_code(sock: RawFd, code: i32) {
    let _ = send_message(sock, &code.to_ne_bytes(), &[]);
}

/// The broker's side: wait until the sandbox is parked.
pub fn recv_ready(sock: &OwnedFd) -> Result<Ready> {
    let (bytes, _) = recv_message(sock.as_raw_fd(), 1 + 16 * READY_MAX, &[0])?;
    Ready::decode(&bytes)
}

/// The broker's side: hand the sandbox its command and stdio: `[stdin, stdout, stderr]`
/// for a call that keeps stdin (`-i`), `[stdout, stderr]` for one that does not.
pub fn send_go(sock: &OwnedFd, go: &Go, stdio: &[RawFd]) -> Result<()> {
    if !(2..=3).contains(&stdio.len()) {
        return Err(malformed("stdio"));
    }
    if go
        .args
        .iter()
        .chain(&go.env)
        .chain([&go.cwd])
        .any(|s| s.contains('\0'))
    {
        return Err(SandboxError::Setup(
            "a command, environment entry or directory holds a NUL byte".into(),
        ));
    }
    let bytes = go.encode();
    if bytes.len() > GO_MAX {
        return Err(SandboxError::Setup(format!(
            "the command and its environment are {} bytes, more than {GO_MAX}",
            bytes.len()
        )));
    }
    send_message(sock.as_raw_fd(), &bytes, stdio)
}

/// The broker's side: the command's exit code, or None when pid 1 went away without one
/// (killed: the engine's own exit status says how).
pub fn recv_code(sock: &OwnedFd) -> Option<i32> {
    let (bytes, _) = recv_message(sock.as_raw_fd(), 4, &[0]).ok()?;
    Some(i32::from_ne_bytes(bytes.try_into().ok()?))
}

/// A connected SOCK_SEQPACKET pair, close-on-exec: the broker's end and the sandbox's.
pub fn socket_pair() -> Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(os("socketpair"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_round_trips_and_refuses_what_is_not_a_command() {
        let go = Go {
            args: vec!["sh".into(), "-lc".into(), "echo ü".into()],
            env: vec!["A=1".into(), "PATH=/usr/bin".into()],
            cwd: "/workspace".into(),
        };
        assert_eq!(Go::decode(&go.encode()).unwrap(), go);
        let no_program = Go {
            args: vec![],
            ..go.clone()
        };
        assert!(Go::decode(&no_program.encode()).is_err());
        let relative = Go {
            cwd: "work".into(),
            ..go.clone()
        };
        assert!(Go::decode(&relative.encode()).is_err());
        let bytes = go.encode();
        assert!(Go::decode(&bytes[..bytes.len() - 3]).is_err(), "cut short");
        assert!(Go::decode(&bytes[..6]).is_err());
    }

    #[test]
    fn ready_round_trips_and_is_bounded() {
        let r = Ready {
            sources: vec![(1, 2), (u64::MAX, 7)],
        };
        assert_eq!(Ready::decode(&r.encode()).unwrap(), r);
        assert!(Ready::decode(b"R123").is_err());
        assert!(Ready::decode(b"X").is_err());
        let huge = Ready {
            sources: vec![(0, 0); READY_MAX + 1],
        };
        assert!(Ready::decode(&huge.encode()).is_err());
    }
}

//! The datagram channels between the engine's processes (supervisor ↔ holder, supervisor ↔
//! monitor, `docker` shim → broker): one typed [`Message`] per SOCK_SEQPACKET datagram,
//! encoded as JSON, with descriptors beside it (SCM_RIGHTS). The messages, and what each side
//! may say, are in [`crate::proto`]; this module only carries them, refusing a datagram over
//! the message type's bound and one that is not that type. It also puts descriptors where a
//! child finds them at exec ([`pass_fds`], numbered in [`crate::proto::fds`]).

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};

use crate::proto::Message;

/// Descriptors one datagram may carry (the shim's stdin, stdout and stderr); more is an error.
pub const MAX_FDS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    #[error("creating a socket pair")]
    Pair(#[source] nix::Error),
    #[error("encoding {what}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what} over {max} bytes")]
    TooLong { what: &'static str, max: usize },
    #[error("sending a message")]
    Send(#[source] nix::Error),
    #[error("receiving a message")]
    Recv(#[source] nix::Error),
    #[error("reading control messages")]
    ControlMessages(#[source] nix::Error),
    #[error("a message carried more descriptors than expected")]
    TooManyFds,
    /// The datagram is not the message the receiver expects (`got`: its start, lossily).
    #[error("expected {what}, got {got:?}: {error}")]
    Malformed {
        what: &'static str,
        got: String,
        error: serde_json::Error,
    },
}

/// A message and the descriptors that came with it; None when the peer is gone.
pub type Received<T> = Option<(T, Vec<OwnedFd>)>;

pub fn pair() -> Result<(OwnedFd, OwnedFd), IpcError> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(IpcError::Pair)
}

/// Send `msg` as one datagram, with `fds` attached (at most [`MAX_FDS`]).
pub fn send<T: Message>(sock: &impl AsFd, msg: &T, fds: &[BorrowedFd<'_>]) -> Result<(), IpcError> {
    let bytes = serde_json::to_vec(msg).map_err(|source| IpcError::Encode {
        what: T::WHAT,
        source,
    })?;
    if bytes.len() > T::MAX_BYTES {
        return Err(IpcError::TooLong {
            what: T::WHAT,
            max: T::MAX_BYTES,
        });
    }
    if fds.len() > MAX_FDS {
        return Err(IpcError::TooManyFds);
    }
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let iov = [IoSlice::new(&bytes)];
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &rights };
    sendmsg::<()>(
        sock.as_fd().as_raw_fd(),
        &iov,
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(IpcError::Send)?;
    Ok(())
}

/// The next message and the descriptors that came with it; None when the peer is gone. A
/// datagram over `T::MAX_BYTES` (SOCK_SEQPACKET would cut it) or that is not a `T` is an
/// error.
pub fn recv<T: Message>(sock: &impl AsFd) -> Result<Received<T>, IpcError> {
    let Some((bytes, fds)) = recv_datagram(sock, T::WHAT, T::MAX_BYTES)? else {
        return Ok(None);
    };
    match serde_json::from_slice(&bytes) {
        Ok(msg) => Ok(Some((msg, fds))),
        Err(error) => {
            let shown = &bytes[..bytes.len().min(120)];
            Err(IpcError::Malformed {
                what: T::WHAT,
                got: String::from_utf8_lossy(shown).into_owned(),
                error,
            })
        }
    }
}

/// One datagram of at most `max` bytes with up to [`MAX_FDS`] descriptors; None when the
/// peer is gone.
fn recv_datagram(
    sock: &impl AsFd,
    what: &'static str,
    max: usize,
) -> Result<Received<Vec<u8>>, IpcError> {
    // Sized to the datagram (peeked), not to `max`: a zeroed buffer of the largest message
    // (256 KiB for a shim's request) cost each tool call ~0.3 ms of page faults and memset in
    // the broker (perf, these 2 cores). One byte more than `max` tells a datagram too long.
    let waiting = peek_len(sock).map_err(IpcError::Recv)?;
    let mut buf = vec![0u8; waiting.min(max) + 1];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        sock.as_fd().as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(IpcError::Recv)?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(IpcError::ControlMessages)? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel just installed these descriptors for us.
            fds.extend(raw.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
        }
    }
    let n = msg.bytes;
    // The control buffer is rounded up to alignment, so one more may fit: counted too.
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) || fds.len() > MAX_FDS {
        return Err(IpcError::TooManyFds);
    }
    if n == 0 && fds.is_empty() {
        return Ok(None);
    }
    if n > max {
        return Err(IpcError::TooLong { what, max });
    }
    buf.truncate(n);
    Ok(Some((buf, fds)))
}

/// The length of the next datagram, waiting for one (0 when the peer is gone); it stays
/// queued.
fn peek_len(sock: &impl AsFd) -> nix::Result<usize> {
    // SAFETY: MSG_TRUNC with a null, empty buffer only reports the datagram's length.
    let n = unsafe {
        libc::recv(
            sock.as_fd().as_raw_fd(),
            std::ptr::null_mut(),
            0,
            libc::MSG_PEEK | libc::MSG_TRUNC,
        )
    };
    nix::errno::Errno::result(n).map(|n| n as usize)
}

/// Put `fd` at descriptor 3 ([`crate::proto::fds::CONTROL`]) of a child about to exec (and nothing else beyond stdio).
pub fn pass_fd_as_3(cmd: &mut Command, fd: &OwnedFd) {
    pass_fds(cmd, &[fd.as_raw_fd()]);
}

/// Put `fds` at descriptors 3, 4, ... of a child about to exec.
pub fn pass_fds(cmd: &mut Command, fds: &[i32]) {
    let fds = fds.to_vec();
    // SAFETY: dup/dup2 are async-signal-safe; nothing else runs between fork and exec. Each
    // source is first moved above the target range so no dup2 overwrites a later source.
    unsafe {
        cmd.pre_exec(move || {
            let mut high = Vec::new();
            for &fd in &fds {
                let h = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 64);
                if h < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                high.push(h);
            }
            for (i, h) in high.iter().enumerate() {
                if libc::dup2(*h, crate::proto::fds::CONTROL + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, AsRawFd};

    use super::*;
    use crate::proto::{HolderReply, MonitorCommand};

    #[test]
    fn a_closed_peer_is_none_not_an_error() {
        let (a, b) = pair().unwrap();
        send(&a, &MonitorCommand::Stop { grace_ms: 1 }, &[]).unwrap();
        drop(a);
        // What was sent before the close is still delivered, then the end.
        assert!(recv::<MonitorCommand>(&b).unwrap().is_some());
        assert!(recv::<MonitorCommand>(&b).unwrap().is_none());
        assert!(matches!(
            send(&b, &MonitorCommand::Stop { grace_ms: 1 }, &[]),
            Err(IpcError::Send(nix::errno::Errno::EPIPE))
        ));
    }

    #[test]
    fn more_descriptors_than_a_datagram_may_carry_are_refused() {
        let (a, b) = pair().unwrap();
        let (r, _w) = nix::unistd::pipe().unwrap();
        let four = [r.as_fd(), r.as_fd(), r.as_fd(), r.as_fd()];
        assert!(matches!(
            send(&a, &HolderReply::Ok, &four),
            Err(IpcError::TooManyFds)
        ));
        // Sent past ipc (as a hostile peer could): the receiver refuses it too.
        let raw = [r.as_raw_fd(); MAX_FDS + 1];
        sendmsg::<()>(
            a.as_raw_fd(),
            &[IoSlice::new(b"\"Ok\"")],
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        assert!(matches!(recv::<HolderReply>(&b), Err(IpcError::TooManyFds)));
    }
}

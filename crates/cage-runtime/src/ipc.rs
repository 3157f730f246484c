//! Messages between the supervisor and its single-threaded helpers: one short text message per
//! SOCK_SEQPACKET datagram, optionally with one file descriptor (SCM_RIGHTS).

use std::io::IoSlice;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{bail, Context, Result};
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};

pub fn pair() -> Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .context("creating a socket pair")
}

pub fn send(sock: &impl AsRawFd, text: &str, fd: Option<RawFd>) -> Result<()> {
    let iov = [IoSlice::new(text.as_bytes())];
    let fds;
    let cmsgs: &[ControlMessage] = match fd {
        Some(f) => {
            fds = [f];
            &[ControlMessage::ScmRights(&fds)]
        }
        None => &[],
    };
    sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
        .context("sending to a helper")?;
    Ok(())
}

/// The next message, or None when the peer is gone.
pub fn recv(sock: &impl AsRawFd) -> Result<Option<(String, Option<OwnedFd>)>> {
    Ok(recv_fds(sock, 4096)?.map(|(bytes, fds)| {
        let text = String::from_utf8(bytes).unwrap_or_default();
        (text, fds.into_iter().next())
    }))
}

/// Send a request and wait for its answer: `ok ...` (with an optional descriptor) or `err MSG`.
pub fn call(sock: &impl AsRawFd, request: &str) -> Result<(String, Option<OwnedFd>)> {
    send(sock, request, None)?;
    match recv(sock)? {
        Some((reply, fd)) => match reply.strip_prefix("ok") {
            Some(rest) => Ok((rest.trim().to_string(), fd)),
            None => bail!("{}", reply.strip_prefix("err ").unwrap_or(&reply)),
        },
        None => bail!("the network holder is gone"),
    }
}

/// One message with several descriptors (the docker shim's stdin, stdout and stderr).
pub fn send_fds(sock: &impl AsRawFd, bytes: &[u8], fds: &[RawFd]) -> Result<()> {
    let iov = [IoSlice::new(bytes)];
    let cmsgs = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsgs };
    sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
        .context("sending a message")?;
    Ok(())
}

/// The next message of at most `max` bytes with up to 3 descriptors; None when the peer is
/// gone. A longer message is an error (SOCK_SEQPACKET would cut it).
pub fn recv_fds(sock: &impl AsRawFd, max: usize) -> Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; max + 1];
    let mut cmsg = nix::cmsg_space!([RawFd; 3]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .context("receiving a message")?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().context("reading control messages")? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel just installed these descriptors for us.
            fds.extend(raw.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
        }
    }
    let n = msg.bytes;
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        bail!("a message carried more descriptors than expected");
    }
    if n == 0 && fds.is_empty() {
        return Ok(None);
    }
    if n > max {
        bail!("a message over {max} bytes");
    }
    buf.truncate(n);
    Ok(Some((buf, fds)))
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


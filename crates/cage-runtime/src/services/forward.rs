//! Published ports: the supervisor listens on the host address; each connection gets a socket
//! opened inside the service's network namespace by the holder (rootlesskit's builtin port
//! driver works this way), and the two are joined. Data moves by splice(2) through a pipe,
//! never through user space.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream};

use super::holder_client::Holder;

pub async fn serve(
    listener: TcpListener,
    holder: Arc<Holder>,
    netns_fd: Arc<std::sync::atomic::AtomicI32>,
    port: u16,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let holder = holder.clone();
        let ns = netns_fd.load(std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(async move {
            if ns < 0 {
                return;
            }
            let inner = tokio::task::spawn_blocking(move || holder.connect(ns, port)).await;
            let Ok(Ok(inner)) = inner else {
                return;
            };
            if let Err(e) = join(client, inner).await {
                tracing::debug!("forwarded connection ended: {e:#}");
            }
        });
    }
}

async fn join(client: TcpStream, inner: OwnedFd) -> Result<()> {
    let inner = TcpStream::from_std(std::net::TcpStream::from(inner))?;
    inner.writable().await?;
    if let Some(e) = inner.take_error()? {
        return Err(e).context("connecting inside the service");
    }
    client.set_nodelay(true).ok();
    inner.set_nodelay(true).ok();
    let (a, b) = (Arc::new(client), Arc::new(inner));
    let up = tokio::spawn(pump(a.clone(), b.clone()));
    let down = pump(b, a).await;
    let up = up.await?;
    up.and(down)
}

/// Move bytes from `from` to `to` with splice(2) until EOF, then shut down `to`'s write side.
async fn pump(from: Arc<TcpStream>, to: Arc<TcpStream>) -> Result<()> {
    let (pr, pw) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
    // SAFETY: F_SETPIPE_SZ/F_GETPIPE_SZ on our own pipe. The pipe's real size bounds every
    // splice into it, so an EAGAIN there always means "the socket is empty", never "the pipe
    // is full" (which would wait for a readiness edge that never comes).
    unsafe { libc::fcntl(pw.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
    let size = unsafe { libc::fcntl(pw.as_raw_fd(), libc::F_GETPIPE_SZ) };
    let chunk: usize = if size > 0 { size as usize } else { 65536 };
    let mut in_pipe = 0usize;
    let mut eof = false;
    loop {
        if !eof && in_pipe < chunk {
            let n = from
                .async_io(Interest::READABLE, || {
                    splice(from.as_raw_fd(), pw.as_raw_fd(), chunk - in_pipe)
                })
                .await;
            match n {
                Ok(0) => eof = true,
                Ok(n) => in_pipe += n,
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {}
                Err(e) => return Err(e.into()),
            }
        }
        while in_pipe > 0 {
            let n = to
                .async_io(Interest::WRITABLE, || {
                    splice(pr.as_raw_fd(), to.as_raw_fd(), in_pipe)
                })
                .await?;
            in_pipe -= n;
            if !eof {
                break;
            }
        }
        if eof && in_pipe == 0 {
            let _ = nix::sys::socket::shutdown(to.as_raw_fd(), nix::sys::socket::Shutdown::Write);
            return Ok(());
        }
    }
}

/// One non-blocking splice(2) of up to `len` bytes.
fn splice(from: std::os::fd::RawFd, to: std::os::fd::RawFd, len: usize) -> std::io::Result<usize> {
    let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
    // SAFETY: splice between descriptors the caller owns; no offsets.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            flags,
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

//! Published ports: the supervisor listens on the host address; each connection gets a socket
//! opened inside the service's network namespace by the holder (rootlesskit's builtin port
//! driver works this way), and the two are joined. Data moves by splice(2) through a pipe,
//! never through user space.
//!
//! Each direction of a connection is one thread doing blocking splices: socket → pipe (it
//! sleeps in the kernel until data comes), then pipe → socket until the pipe is empty. So a
//! read waits only for its socket (the tokio readiness loop this replaced could take EAGAIN
//! from a pipe out of buffer slots, not bytes, for "the socket is empty"), port traffic never
//! occupies the supervisor's runtime (control, broker, health checks), and a wake-up is 2
//! syscalls, not epoll plus 3 splices: per GB host → service ~700 context switches instead of
//! 800–2,700 (perf stat, one iperf3 stream, these 2 cores). Its CPU per GB did not move beyond
//! the noise (218–253 vs 226–294 ms; service → host 293–414 vs 284–373): that is the kernel's
//! TCP path of the second connection, which no user-space loop removes.
//!
//! No kernel path does better here. Rootless, nothing joins two TCP sockets in different
//! namespaces but splice (BPF sockmap needs CAP_BPF). Handing the service the host's socket
//! instead (the accepted connection, or the listener in place of its own, as bypass4netns
//! does with seccomp notifications) would drop the second connection, and is not done: a
//! TCP socket of the host's namespace in the service's hands can be disconnected
//! (`connect(AF_UNSPEC)`) and connected again, from the host's namespace, to the host's
//! 127.0.0.1 or beyond, and no filter sees which namespace an fd's socket belongs to. The
//! service (the gateway, the model server) is hostile; the cage's network is the boundary.
//! As root, nft DNAT from a 127.0.0.1 port needs route_localnet on a host veth, which makes
//! 127.0.0.0/8 routable from the cage (see cage-net `network::host_veth`), and a veth between
//! the host and the cage in every mode, not only with internet on; DESIGN.md's anchors
//! measured it no faster (13–19 Gbit/s against 16.6). One mechanism serves both modes.
//!
//! Bounded: the pipe is drained before the next read, so a direction holds at most one pipe
//! (1 MiB) of data beyond the sockets' own buffers; a stalled reader blocks its own thread
//! only; the number of live connections is capped by the descriptors the supervisor may open
//! ([`connection_limit`]): at the cap, new connections wait in the listen backlog.

use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::holder_client::Holder;

/// Descriptors one forwarded connection holds: two sockets and a pipe (two ends) per direction.
const FDS_PER_CONNECTION: u64 = 6;
/// Descriptors left for everything else the supervisor opens (logs, control, namespaces, its
/// children's pipes).
const FDS_RESERVED: u64 = 256;
/// However many descriptors there are: two threads per connection.
const MAX_CONNECTIONS: u64 = 1024;
/// The pipe's size (the most an unprivileged process may ask: /proc/sys/fs/pipe-max-size);
/// 64 KiB took ten times the splices and ~40% more CPU per byte.
const PIPE_SIZE: i32 = 1 << 20;
/// A forwarding thread only splices: a small stack.
const THREAD_STACK: usize = 128 * 1024;

/// How many forwarded connections may be open at once, across every published port: what the
/// supervisor's descriptor limit leaves (at least 16).
pub fn connection_limit() -> Arc<Semaphore> {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    let n = (soft.saturating_sub(FDS_RESERVED) / FDS_PER_CONNECTION).clamp(16, MAX_CONNECTIONS);
    Arc::new(Semaphore::new(n as usize))
}

/// Accept connections on `listener` and join each to `port` inside the service's namespace
/// (none while the service has no namespace: the connection is closed).
pub async fn serve(
    listener: TcpListener,
    holder: Arc<Holder>,
    netns_fd: Arc<std::sync::atomic::AtomicI32>,
    port: u16,
    limit: Arc<Semaphore>,
) {
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(e) => {
                // Out of descriptors or memory: wait instead of spinning on the error.
                tracing::debug!("accepting a forwarded connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let holder = holder.clone();
        let ns = netns_fd.load(std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(async move {
            if ns < 0 {
                return;
            }
            match connect(client, holder, ns, port).await {
                Ok((client, inner)) => {
                    if let Err(e) = relay(client, inner, Some(permit)) {
                        tracing::debug!("forwarding a connection: {e}");
                    }
                }
                Err(e) => tracing::debug!("forwarded connection not made: {e:#}"),
            }
        });
    }
}

/// The client and a socket connected to `port` inside the namespace, both blocking.
async fn connect(
    client: tokio::net::TcpStream,
    holder: Arc<Holder>,
    ns: i32,
    port: u16,
) -> anyhow::Result<(TcpStream, TcpStream)> {
    use anyhow::Context;
    let inner = tokio::task::spawn_blocking(move || holder.connect(ns, port)).await??;
    let inner = tokio::net::TcpStream::from_std(TcpStream::from(inner))?;
    inner.writable().await?;
    if let Some(e) = inner.take_error()? {
        return Err(e).context("connecting inside the service");
    }
    let (client, inner) = (client.into_std()?, inner.into_std()?);
    for s in [&client, &inner] {
        s.set_nonblocking(false)?;
        s.set_nodelay(true)?;
    }
    Ok((client, inner))
}

/// The two sockets of one connection, closed (and the connection's place given back) when
/// both directions are done.
struct Connection {
    sockets: [TcpStream; 2],
    _permit: Option<OwnedSemaphorePermit>,
}

/// Join two connected, blocking sockets: a thread per direction, until both have ended. A
/// direction ends at EOF (it passes the half-close on: shutdown of the other socket's write
/// side) or at an error (it shuts both sockets down, which ends the other direction too).
fn relay(a: TcpStream, b: TcpStream, permit: Option<OwnedSemaphorePermit>) -> std::io::Result<()> {
    let conn = Arc::new(Connection {
        sockets: [a, b],
        _permit: permit,
    });
    for reverse in [false, true] {
        let this = conn.clone();
        let spawned = std::thread::Builder::new()
            .name("cagerun-port".into())
            .stack_size(THREAD_STACK)
            .spawn(move || {
                // Signals go to the runtime's threads, never interrupt a splice here.
                let _ = nix::sys::signal::pthread_sigmask(
                    nix::sys::signal::SigmaskHow::SIG_BLOCK,
                    Some(&nix::sys::signal::SigSet::all()),
                    None,
                );
                let [a, b] = &this.sockets;
                let (from, to) = if reverse { (b, a) } else { (a, b) };
                if let Err(e) = pump(from, to) {
                    tracing::debug!("forwarded connection ended: {e}");
                    let _ = from.shutdown(Shutdown::Both);
                    let _ = to.shutdown(Shutdown::Both);
                }
            });
        if let Err(e) = spawned {
            // No thread for this direction: end the connection (a direction already running
            // wakes up and ends).
            for s in &conn.sockets {
                let _ = s.shutdown(Shutdown::Both);
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Move bytes from `from` to `to` until EOF, then shut down `to`'s write side. The pipe is
/// empty before every read, so a read waits only for the socket, and what one read took is
/// written out in full before the next.
fn pump(from: &TcpStream, to: &TcpStream) -> std::io::Result<()> {
    let (pr, pw) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: F_SETPIPE_SZ/F_GETPIPE_SZ on our own pipe; a refused size keeps the default.
    unsafe { libc::fcntl(pw.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
    let size = unsafe { libc::fcntl(pw.as_raw_fd(), libc::F_GETPIPE_SZ) };
    let chunk = usize::try_from(size).unwrap_or(0).max(4096);
    loop {
        let n = splice(from.as_raw_fd(), pw.as_raw_fd(), chunk)?;
        if n == 0 {
            let _ = to.shutdown(Shutdown::Write);
            return Ok(());
        }
        let mut left = n;
        while left > 0 {
            left -= splice(pr.as_raw_fd(), to.as_raw_fd(), left)?;
        }
    }
}

/// One blocking splice(2) of up to `len` bytes, retried when interrupted.
fn splice(from: RawFd, to: RawFd, len: usize) -> std::io::Result<usize> {
    loop {
        // SAFETY: splice between descriptors the caller holds open; no offsets.
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// (what the host's client holds, what the service holds): two real loopback
    /// connections joined by [`relay`], as a published port joins them.
    fn relayed() -> (TcpStream, TcpStream) {
        let pair = || {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let near = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (far, _) = l.accept().unwrap();
            (near, far)
        };
        let (client, accepted) = pair();
        let (inner, service) = pair();
        relay(accepted, inner, None).unwrap();
        for s in [&client, &service] {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        }
        (client, service)
    }

    fn read_all(s: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("EOF before the timeout");
        got
    }

    #[test]
    fn a_half_close_passes_either_way_and_the_other_direction_goes_on() {
        // The host's side closes first: the service reads to EOF, then still answers.
        let (mut client, mut service) = relayed();
        client.write_all(b"request").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_all(&mut service), b"request");
        service.write_all(b"answer").unwrap();
        drop(service);
        assert_eq!(read_all(&mut client), b"answer");

        // The service closes first: the client sees EOF and can still send.
        let (mut client, mut service) = relayed();
        service.write_all(b"bye").unwrap();
        service.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_all(&mut client), b"bye");
        client.write_all(b"after").unwrap();
        drop(client);
        assert_eq!(read_all(&mut service), b"after");
    }

    #[test]
    fn bulk_both_ways_at_once_arrives_whole() {
        let (client, service) = relayed();
        let data: Vec<u8> = (0..24 << 20).map(|i: u32| (i % 251) as u8).collect();
        // Each end reads while it writes: an end that wrote 24 MiB before reading would
        // wait on buffers the other end never drains (a deadlock of the test, not the relay,
        // once the kernel's socket buffers hold less than 24 MiB, as on a default tcp_rmem).
        let send = |mut s: TcpStream, data: Vec<u8>| {
            let mut reader = s.try_clone().unwrap();
            let read = std::thread::spawn(move || read_all(&mut reader));
            std::thread::spawn(move || {
                s.write_all(&data).unwrap();
                s.shutdown(Shutdown::Write).unwrap();
                read.join().unwrap()
            })
        };
        let (c, s) = (send(client, data.clone()), send(service, data.clone()));
        assert!(c.join().unwrap() == data, "service -> host arrived changed");
        assert!(s.join().unwrap() == data, "host -> service arrived changed");
    }

    #[test]
    fn a_reset_ends_both_directions() {
        let (mut client, service) = relayed();
        // SO_LINGER 0: close sends RST.
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt on our own socket with a linger struct.
        let rc = unsafe {
            libc::setsockopt(
                service.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &linger as *const libc::linger as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as u32,
            )
        };
        assert_eq!(rc, 0);
        drop(service);
        // The client's side ends (EOF or reset), and does not wait out the read timeout.
        let t = std::time::Instant::now();
        let mut buf = [0u8; 16];
        match client.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("{n} bytes from a reset connection"),
            Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}"),
        }
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_stalled_reader_stalls_only_its_own_connection() {
        let (mut stalled_client, _stalled_service) = relayed();
        stalled_client
            .set_write_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        // Fill everything between the client and the service that never reads.
        let chunk = vec![7u8; 1 << 20];
        let mut sent = 0usize;
        loop {
            match stalled_client.write(&chunk) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
            assert!(
                sent < 512 << 20,
                "a stalled reader took {sent} bytes: unbounded"
            );
        }
        // The probe is valid: the stalled connection is full.
        assert!(sent > 0);
        let (mut client, mut service) = relayed();
        client.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        service.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        service.write_all(b"pong").unwrap();
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"pong");
    }
}

//! Rootless internet mode's guard: the router namespace's `ip cagerun-guard` table in front of
//! slirp4netns ([`super::rules::slirp_guard`]), and a thread that keeps its set of host
//! addresses current as the host's addresses change (DHCP, a VPN, a new bridge).
//!
//! Setup is [`HostGuard::start`]; its teardown twin is dropping the guard, which stops the
//! thread. The table itself goes with the router namespace (the holder's).

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use super::nft::{self, NftError, Where};
use super::rules;
use crate::error::chain;
use crate::network::netlink::{self, AddressEvents};
use crate::network::netns::RouterNs;

/// Each variant says what was being done; its source, what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("watching the host's addresses")]
    Watch(#[source] crate::Error),
    #[error("listing the host's addresses")]
    List(#[source] crate::Error),
    #[error(transparent)]
    Nft(#[from] NftError),
    #[error("making the host guard's stop pipe")]
    Pipe(#[source] nix::Error),
    #[error("starting the host guard's thread")]
    Thread(#[source] std::io::Error),
}

/// The guard's table in the router namespace and the thread keeping it current. Dropping it
/// stops the thread.
pub struct HostGuard {
    stop: Option<OwnedFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HostGuard {
    /// The guard table in `router`, in front of the uplink `uplink`, listing the host's
    /// addresses as they are now; then a thread follows their changes.
    pub fn start(router: RouterNs, uplink: &str) -> Result<HostGuard, GuardError> {
        // Listen first, then read: a change between the two is not lost.
        let events = AddressEvents::open().map_err(GuardError::Watch)?;
        let host = netlink::local_addresses().map_err(GuardError::List)?;
        nft::apply(&rules::slirp_guard(uplink, &host), Where::router(&router))?;
        let (stop_r, stop_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(GuardError::Pipe)?;
        let thread = std::thread::Builder::new()
            .name("host-guard".into())
            .spawn(move || keep_current(router, events, stop_r, host))
            .map_err(GuardError::Thread)?;
        Ok(HostGuard {
            stop: Some(stop_w),
            thread: Some(thread),
        })
    }
}

impl Drop for HostGuard {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The host gained or lost an address: the guard's set follows. A failed update is retried
/// every second (the old list stays in force meanwhile). Returns when `stop` closes.
fn keep_current(
    router: RouterNs,
    events: AddressEvents,
    stop: OwnedFd,
    mut applied: Vec<(Ipv4Addr, u8)>,
) {
    let mut pending = false;
    loop {
        let timeout = pending.then_some(Duration::from_secs(1));
        match events.wait(stop.as_fd(), timeout) {
            Ok(None) => return,
            Ok(Some(changed)) if !changed && !pending => continue,
            Ok(Some(_)) => {}
            Err(e) => {
                tracing::error!("internet mode: watching the host's addresses: {e}");
                std::thread::sleep(Duration::from_secs(1));
                pending = true;
                continue;
            }
        }
        let now = match netlink::local_addresses() {
            Ok(now) => now,
            Err(e) => {
                tracing::error!("internet mode: listing the host's addresses: {e}");
                pending = true;
                continue;
            }
        };
        if now == applied && !pending {
            continue;
        }
        match nft::apply(&rules::slirp_guard_hosts(&now), Where::router(&router)) {
            Ok(()) => {
                tracing::info!("internet mode: the host's addresses changed; guard updated");
                applied = now;
                pending = false;
            }
            Err(e) => {
                tracing::error!("internet mode: updating the host guard: {}", chain(&e));
                pending = true;
            }
        }
    }
}

//! Network namespaces as file descriptors: nothing is bind-mounted, so a namespace lives
//! exactly as long as a process is in it or a descriptor names it, and nothing is left
//! behind when its holder dies.
//!
//! [`RouterNs`] is the other way in: the holder's user and network namespaces opened from
//! outside, for a tool that must run there as the namespace's root (`nft`, see
//! [`crate::firewall::nft::Where::Router`]).

use std::os::fd::{AsFd, OwnedFd};

use nix::sched::{setns, unshare, CloneFlags};

use crate::error::{sys, Error, Result};

/// The calling thread's current network namespace.
pub fn current() -> Result<OwnedFd> {
    std::fs::File::open("/proc/thread-self/ns/net")
        .map(OwnedFd::from)
        .map_err(|source| Error::Io {
            what: "opening /proc/thread-self/ns/net".into(),
            source,
        })
}

/// Move the calling thread into `ns`.
pub fn enter(ns: impl AsFd) -> Result<()> {
    setns(ns, CloneFlags::CLONE_NEWNET).map_err(sys("entering a network namespace"))
}

/// A fresh network namespace; the calling thread stays where it was.
pub fn create() -> Result<OwnedFd> {
    let here = current()?;
    unshare(CloneFlags::CLONE_NEWNET).map_err(sys("creating a network namespace"))?;
    let made = current();
    enter(&here)?;
    made
}

/// Run `work` inside `ns`, then come back (also when `work` fails).
pub fn within<T>(ns: impl AsFd, work: impl FnOnce() -> Result<T>) -> Result<T> {
    let here = current()?;
    enter(ns)?;
    let out = work();
    enter(&here)?;
    out
}

/// The cage's router namespace and the user namespace that owns it, opened from outside
/// through the holder process (which is in both).
#[derive(Debug)]
pub struct RouterNs {
    pub user: OwnedFd,
    pub net: OwnedFd,
}

impl RouterNs {
    /// The namespaces of the holder `pid`.
    pub fn of_holder(pid: i32) -> Result<RouterNs> {
        let open = |ns: &str| -> Result<OwnedFd> {
            std::fs::File::open(format!("/proc/{pid}/ns/{ns}"))
                .map(OwnedFd::from)
                .map_err(|source| Error::Io {
                    what: format!("opening the holder's {ns} namespace"),
                    source,
                })
        };
        Ok(RouterNs {
            user: open("user")?,
            net: open("net")?,
        })
    }
}

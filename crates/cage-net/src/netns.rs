//! Network namespaces as file descriptors: nothing is bind-mounted, so a namespace lives
//! exactly as long as a process is in it or a descriptor names it, and nothing is left
//! behind when its holder dies.

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

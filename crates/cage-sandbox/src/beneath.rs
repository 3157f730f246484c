//! Opening a path that hostile code can influence: beneath a directory descriptor, with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)`.
//!
//! The gateway writes its workspace and state volume, so any component below their roots
//! may be a symlink (absolute, relative with `..`, through `/proc/self/root`), planted now
//! or swapped in between the broker's judgement and the mount. The kernel resolves the
//! whole path as if `root` were `/`: `..` stops at it, absolute symlinks restart at it,
//! magic links and mount crossings are refused. The descriptor it returns is what gets
//! mounted; the path is never walked again.

use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{Mode, OFlags, ResolveFlags};

use crate::error::{Result, SandboxError};

/// An O_PATH descriptor of `root` (a path the caller trusts: the cage's own directory).
pub fn open_root(root: &Path) -> Result<OwnedFd> {
    rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| SandboxError::Setup(format!("the root of a bind source is unusable: {e}")))
}

/// An O_PATH descriptor of `path` (relative: plain names, or empty for the root itself)
/// resolved beneath `root`. A symlink anywhere on the way resolves inside `root`.
pub fn open_beneath(root: &OwnedFd, path: &Path, shown: &Path) -> Result<OwnedFd> {
    let path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    rustix::fs::openat2(
        root,
        path,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV,
    )
    .map_err(|e| {
        let hint = if e == rustix::io::Errno::NOSYS {
            " (openat2 needs Linux 5.6 or newer)"
        } else {
            ""
        };
        SandboxError::Setup(format!(
            "bind source {} (beneath its mount): {e}{hint}",
            shown.display()
        ))
    })
}

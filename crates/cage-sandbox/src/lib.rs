//! The fast per-command engine: runs an OCI runtime `Spec` in fresh namespaces in a few
//! milliseconds, without a daemon, as root or rootless.
//!
//! The parent ([`launch`]) clones one child into new namespaces, writes its id maps, makes
//! the limits cgroup, and waits. The child ([`init`]) builds the root ([`rootfs`]), becomes
//! pid 1 of the sandbox, and starts the command in the limits cgroup (pid 1 stays out of it,
//! so the parent returns when the command's processes are gone, not after pid 1's
//! namespace teardown). The command drops every privilege ([`capabilities`], no_new_privs,
//! [`landlock`], [`seccomp`] last) right before `execve`.
//!
//! [`plan::Plan`] lowers the `Spec` first and refuses any field this engine does not
//! implement, so nothing in a `Spec` is ever silently ignored.
//!
//! | kernel mechanism | module |
//! |---|---|
//! | clone3 / namespaces (user, mount, pid, net, ipc, uts, cgroup) | [`namespaces`], [`launch`], [`clone`] |
//! | uid/gid maps (newuidmap for ranges) | [`idmap`] |
//! | the root: pivot_root, mounts, masked paths | [`rootfs`], [`mounts`] |
//! | openat2(RESOLVE_IN_ROOT) binds of hostile-writable sources | [`beneath`] |
//! | capabilities, no_new_privs, setuid/setgid, exec | [`capabilities`], [`process`] |
//! | seccomp (the filter; syscall numbers) | [`seccomp`], [`syscalls`] |
//! | Landlock | [`landlock`] |
//! | cgroups v1/v2: the delegated subtree, the one writer of limits | [`cgroups`] |
//! | rlimits | [`rlimits`] |
//! | descriptors left to the command | [`fds`] |
//! | pid 1 of the sandbox (reaping, signals) | [`init`] |
//! | a fresh network namespace with lo up | [`netns`], [`loopback`] |
//! | a pseudo-terminal | [`pty`] |

pub mod beneath;
pub mod capabilities;
pub mod cgroups;
pub mod clone;
pub mod error;
pub mod fds;
pub mod idmap;
pub mod init;
pub mod landlock;
pub mod launch;
pub mod loopback;
pub mod mounts;
pub mod namespaces;
pub mod netns;
pub mod park;
pub mod plan;
pub mod process;
pub mod pty;
pub mod rlimits;
pub mod rootfs;
pub mod seccomp;
pub mod steps;
pub mod syscalls;

pub use error::SandboxError;
pub use launch::{run, Outcome, RunOptions};
pub use plan::Plan;

//! Namespaces: which `clone` flags a `Spec` asks for.
//!
//! All namespaces are created by one `clone3` so that every one of them is owned by the new
//! user namespace. The cgroup namespace is the exception: it is unshared by the child after
//! the parent has moved it into its cgroup, so that the sandbox sees that cgroup as its root.

use oci_spec::runtime::LinuxNamespaceType;

use crate::error::{Result, SandboxError};

/// The order the kernel must honour is inside `clone3`; this table only maps types to flags.
pub const ORDERED_NAMESPACES: &[(LinuxNamespaceType, libc::c_int)] = &[
    (LinuxNamespaceType::User, libc::CLONE_NEWUSER),
    (LinuxNamespaceType::Mount, libc::CLONE_NEWNS),
    (LinuxNamespaceType::Pid, libc::CLONE_NEWPID),
    (LinuxNamespaceType::Ipc, libc::CLONE_NEWIPC),
    (LinuxNamespaceType::Uts, libc::CLONE_NEWUTS),
    (LinuxNamespaceType::Network, libc::CLONE_NEWNET),
    (LinuxNamespaceType::Cgroup, libc::CLONE_NEWCGROUP),
];

#[derive(Debug, Clone, Copy, Default)]
pub struct NamespaceSet {
    /// Flags for `clone3` (everything but the cgroup namespace).
    pub clone_flags: u64,
    pub cgroup: bool,
    pub user: bool,
    pub mount: bool,
    pub pid: bool,
    pub net: bool,
    pub uts: bool,
}

pub fn from_spec(list: &[oci_spec::runtime::LinuxNamespace]) -> Result<NamespaceSet> {
    let mut set = NamespaceSet::default();
    for ns in list {
        if let Some(path) = ns.path() {
            return Err(SandboxError::Unsupported {
                field: format!("linux.namespaces[{:?}].path ({})", ns.typ(), path.display()),
            });
        }
        let flag = ORDERED_NAMESPACES
            .iter()
            .find(|(t, _)| *t == ns.typ())
            .map(|(_, f)| *f)
            .ok_or_else(|| SandboxError::Unsupported {
                field: format!("namespace type {:?}", ns.typ()),
            })?;
        match ns.typ() {
            LinuxNamespaceType::Cgroup => set.cgroup = true,
            t => {
                set.clone_flags |= flag as u64;
                set.user |= t == LinuxNamespaceType::User;
                set.mount |= t == LinuxNamespaceType::Mount;
                set.pid |= t == LinuxNamespaceType::Pid;
                set.net |= t == LinuxNamespaceType::Network;
                set.uts |= t == LinuxNamespaceType::Uts;
            }
        }
    }
    // This engine builds a fresh root and a pid 1 of its own; both need these namespaces.
    for (needed, name) in [(set.user, "user"), (set.mount, "mount"), (set.pid, "pid")] {
        if !needed {
            return Err(SandboxError::Unsupported {
                field: format!("running without a {name} namespace"),
            });
        }
    }
    Ok(set)
}

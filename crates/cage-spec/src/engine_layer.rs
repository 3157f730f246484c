//! What cagerun adds when another engine (containerd, podman, a Kubernetes RuntimeClass) runs
//! a bundle through `cagerun runtime`: the bundle is the engine's, so cagerun adds only what
//! the spec leaves room for and never loosens what it asks.
//!
//! - **Seccomp on exec.** libcontainer's exec rebuilds the process's Linux section from the
//!   namespaces alone and so drops the container's filter; runc applies it. The exec'd
//!   process gets the container's filter again. Installing a filter needs no_new_privs or
//!   CAP_SYS_ADMIN; an exec'd process with neither is given no_new_privs (a stricter process,
//!   never an unfiltered one): runc installs the filter before dropping capabilities, which
//!   libcontainer's exec path leaves no hook for.
//! - **Landlock under a read-only root.** A bundle that asks for a read-only root and
//!   no_new_privs gets a Landlock ruleset: read and execute everywhere, write only beneath
//!   the spec's mounts that are not read-only (`/dev`, `/proc`, volumes, `/etc/hosts`, ...).
//!   Without no_new_privs Landlock would need CAP_SYS_ADMIN or a change of the process's
//!   privileges, so it is left out; it is a second fence, best effort, on top of what the
//!   spec asks (a kernel or filter without Landlock keeps the read-only mounts). Only for a
//!   bundle with a seccomp filter: a Landlock domain may not mount, even in namespaces of its
//!   own, and an unfiltered (seccomp Unconfined) container is how a pod asks to make them (the
//!   broker sidecar's tool sandboxes); a filtered one (RuntimeDefault) may not anyway.
//! - **File descriptors.** Only 0–2 and `--preserve-fds` reach the container (libcontainer
//!   marks the rest close-on-exec): the engines' own pipes (conmon's sync and start pipes)
//!   never do.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Capability, Process, Spec};

/// cagerun's additions for one process of an engine's container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineLayer {
    /// Landlock: the only paths (and what lies beneath them) the process may write.
    pub landlock_writable: Option<Vec<PathBuf>>,
    /// Give the process no_new_privs (it needs it to install the container's filter).
    pub force_no_new_privileges: bool,
    /// Install the container's seccomp filter (exec'd processes: libcontainer drops it).
    pub reapply_seccomp: bool,
}

/// The container's first process (`create`): libcontainer applies the spec's own filter.
pub fn for_init(spec: &Spec) -> EngineLayer {
    let nnp = spec
        .process()
        .as_ref()
        .and_then(|p| p.no_new_privileges())
        .unwrap_or(false);
    EngineLayer {
        landlock_writable: landlock_writable(spec, nnp),
        force_no_new_privileges: false,
        reapply_seccomp: false,
    }
}

/// A process `exec`'d into the running container: `process` as the engine asked for it.
pub fn for_exec(spec: &Spec, process: &Process) -> EngineLayer {
    let filtered = spec
        .linux()
        .as_ref()
        .and_then(|l| l.seccomp().as_ref())
        .is_some();
    let asked_nnp = process.no_new_privileges().unwrap_or(false);
    let force_no_new_privileges = filtered && !asked_nnp && !has_sys_admin(process);
    let nnp = asked_nnp || force_no_new_privileges;
    EngineLayer {
        landlock_writable: landlock_writable(spec, nnp),
        force_no_new_privileges,
        reapply_seccomp: filtered,
    }
}

fn has_sys_admin(process: &Process) -> bool {
    process
        .capabilities()
        .as_ref()
        .and_then(|c| c.effective().as_ref())
        .is_some_and(|e| e.contains(&Capability::SysAdmin))
}

/// The writable mount destinations of a read-only-root bundle, for a process with
/// no_new_privs; `None` when Landlock is not added.
fn landlock_writable(spec: &Spec, no_new_privileges: bool) -> Option<Vec<PathBuf>> {
    let read_only_root = spec.root().as_ref().and_then(|r| r.readonly()) == Some(true);
    let filtered = spec
        .linux()
        .as_ref()
        .and_then(|l| l.seccomp().as_ref())
        .is_some();
    if !read_only_root || !no_new_privileges || !filtered {
        return None;
    }
    let mut writable: Vec<PathBuf> = spec
        .mounts()
        .iter()
        .flatten()
        .filter(|m| {
            !m.options()
                .iter()
                .flatten()
                .any(|o| o == "ro" || o == "rro")
        })
        .map(|m| m.destination().clone())
        .collect();
    writable.sort();
    writable.dedup();
    Some(writable)
}

/// Whether a rootless bundle must be rewritten before libcontainer reads it (runc makes the
/// same two allowances for rootless containers; libcontainer makes neither):
/// - no `cgroupsPath`: libcontainer would make a cgroup at the top of the host's hierarchy,
///   which only the host's root may write (podman's rootless containers are created by root
///   of its user namespace, with no path). runc then runs without a cgroup; the container goes
///   where the user's cgroups live instead (`cagerun setup-cgroups` on v1, systemd's
///   delegation on v2), and any limits the bundle asks apply there.
/// - device rules (`resources.devices`): the devices controller takes rules from the host's
///   root only (v1's files, v2's BPF programs). They are dropped, as runc drops them rootless:
///   a user namespace cannot create device nodes, so the container reaches only the nodes
///   bound into its /dev, each still under the host's permissions. On cgroup v1 libcontainer
///   writes its default device rules whenever it applies any resource, so there a bundle's
///   resources go entirely, and one that asks for a limit is refused
///   ([`RootlessLimitsOnV1`]) rather than run without it.
pub fn needs_rewrite_for_rootless(spec: &Spec, rootless: bool) -> bool {
    let linux = spec.linux().as_ref();
    let no_cgroup = linux.and_then(|l| l.cgroups_path().as_ref()).is_none();
    let resources = linux.and_then(|l| l.resources().as_ref()).is_some();
    rootless && (no_cgroup || resources)
}

/// A rootless bundle on cgroup v1 asks for limits that cannot be applied there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rootless on cgroup v1, the bundle's resource limits ({0}) cannot be applied (libcontainer sets device rules with every limit, and only the host's root may): run the container as root, on cgroup v2, or without limits")]
pub struct RootlessLimitsOnV1(pub String);

/// The engine's bundle rewritten for a rootless run ([`needs_rewrite_for_rootless`]), as
/// libcontainer reads it from another directory: its root and relative bind sources made
/// absolute against `bundle`, the cgroup `cgroups_path` when it had none, no device rules.
pub fn rewritten_for_rootless(
    spec: &Spec,
    bundle: &Path,
    cgroups_path: PathBuf,
    cgroup_v1: bool,
) -> Result<Spec, RootlessLimitsOnV1> {
    let mut spec = spec.clone();
    if let Some(root) = spec.root().clone() {
        let mut root = root;
        if root.path().is_relative() {
            root.set_path(bundle.join(root.path()));
        }
        spec.set_root(Some(root));
    }
    if let Some(mounts) = spec.mounts().clone() {
        let mounts = mounts
            .into_iter()
            .map(|mut m| {
                if let Some(src) = m.source().clone() {
                    let bind = m.typ().as_deref() == Some("bind")
                        || m.options()
                            .iter()
                            .flatten()
                            .any(|o| o == "bind" || o == "rbind");
                    if bind && src.is_relative() {
                        m.set_source(Some(bundle.join(src)));
                    }
                }
                m
            })
            .collect();
        spec.set_mounts(Some(mounts));
    }
    let mut linux = spec.linux().clone().unwrap_or_default();
    if linux.cgroups_path().is_none() {
        linux.set_cgroups_path(Some(cgroups_path));
    }
    if let Some(mut resources) = linux.resources().clone() {
        resources.set_devices(None);
        if cgroup_v1 {
            let asked = limits_asked(&resources);
            if !asked.is_empty() {
                return Err(RootlessLimitsOnV1(asked.join(", ")));
            }
            linux.set_resources(None);
        } else {
            linux.set_resources(Some(resources));
        }
    }
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// The limits a bundle's resources ask for (device rules aside).
fn limits_asked(r: &oci_spec::runtime::LinuxResources) -> Vec<String> {
    let mut asked = Vec::new();
    if r.memory()
        .as_ref()
        .is_some_and(|m| m.limit().is_some() || m.reservation().is_some() || m.swap().is_some())
    {
        asked.push("memory".to_string());
    }
    if r.pids().as_ref().is_some_and(|p| p.limit() > 0) {
        asked.push("pids".to_string());
    }
    if r.cpu()
        .as_ref()
        .is_some_and(|c| c.quota().is_some() || c.shares().is_some() || c.cpus().is_some())
    {
        asked.push("cpu".to_string());
    }
    if r.block_io().is_some() {
        asked.push("blockIO".to_string());
    }
    if r.hugepage_limits().as_ref().is_some_and(|h| !h.is_empty()) {
        asked.push("hugepageLimits".to_string());
    }
    asked
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxBuilder, LinuxCapabilitiesBuilder, LinuxSeccompBuilder, MountBuilder, ProcessBuilder,
        RootBuilder, SpecBuilder,
    };

    fn spec(readonly: bool, nnp: bool, seccomp: bool) -> Spec {
        let mounts = vec![
            MountBuilder::default()
                .destination("/proc")
                .typ("proc")
                .source("proc")
                .build()
                .unwrap(),
            MountBuilder::default()
                .destination("/sys")
                .typ("sysfs")
                .source("sysfs")
                .options(vec!["nosuid".into(), "ro".into()])
                .build()
                .unwrap(),
            MountBuilder::default()
                .destination("/etc/hosts")
                .typ("bind")
                .source("/x/hosts")
                .options(vec!["rbind".into(), "rw".into()])
                .build()
                .unwrap(),
        ];
        let mut linux = LinuxBuilder::default();
        if seccomp {
            linux = linux.seccomp(LinuxSeccompBuilder::default().build().unwrap());
        }
        SpecBuilder::default()
            .root(
                RootBuilder::default()
                    .path("rootfs")
                    .readonly(readonly)
                    .build()
                    .unwrap(),
            )
            .process(
                ProcessBuilder::default()
                    .no_new_privileges(nnp)
                    .build()
                    .unwrap(),
            )
            .mounts(mounts)
            .linux(linux.build().unwrap())
            .build()
            .unwrap()
    }

    #[test]
    fn read_only_root_with_no_new_privs_gets_landlock_on_writable_mounts_only() {
        let layer = for_init(&spec(true, true, true));
        assert_eq!(
            layer.landlock_writable,
            Some(vec![PathBuf::from("/etc/hosts"), PathBuf::from("/proc")])
        );
        assert!(!layer.reapply_seccomp && !layer.force_no_new_privileges);
    }

    #[test]
    fn no_landlock_without_read_only_root_no_new_privs_or_a_seccomp_filter() {
        assert_eq!(for_init(&spec(false, true, true)).landlock_writable, None);
        assert_eq!(for_init(&spec(true, false, true)).landlock_writable, None);
        // Unconfined: it may make namespaces, and mount in them (a Landlock domain may not).
        assert_eq!(for_init(&spec(true, true, false)).landlock_writable, None);
    }

    #[test]
    fn exec_gets_the_containers_filter_and_no_new_privs_when_it_cannot_install_it_otherwise() {
        let s = spec(false, false, true);
        let plain = ProcessBuilder::default()
            .no_new_privileges(false)
            .build()
            .unwrap();
        let layer = for_exec(&s, &plain);
        assert!(layer.reapply_seccomp);
        assert!(layer.force_no_new_privileges);

        let admin = ProcessBuilder::default()
            .no_new_privileges(false)
            .capabilities(
                LinuxCapabilitiesBuilder::default()
                    .effective(
                        [Capability::SysAdmin]
                            .into_iter()
                            .collect::<std::collections::HashSet<_>>(),
                    )
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let layer = for_exec(&s, &admin);
        assert!(layer.reapply_seccomp && !layer.force_no_new_privileges);

        let unfiltered = for_exec(&spec(false, false, false), &plain);
        assert!(!unfiltered.reapply_seccomp && !unfiltered.force_no_new_privileges);
    }

    #[test]
    fn rootless_without_a_cgroup_path_goes_to_the_delegated_subtree() {
        let s = spec(true, true, false);
        assert!(needs_rewrite_for_rootless(&s, true));
        assert!(!needs_rewrite_for_rootless(&s, false));
        let moved = rewritten_for_rootless(
            &s,
            Path::new("/b"),
            PathBuf::from("/cagerun/1001/runc-x"),
            true,
        )
        .unwrap();
        assert_eq!(
            moved.linux().as_ref().unwrap().cgroups_path().as_deref(),
            Some(Path::new("/cagerun/1001/runc-x"))
        );
        assert!(!needs_rewrite_for_rootless(&moved, true));
        assert_eq!(
            moved.root().as_ref().unwrap().path(),
            Path::new("/b/rootfs")
        );
        let hosts = moved.mounts().as_ref().unwrap()[2].source().clone();
        assert_eq!(
            hosts,
            Some(PathBuf::from("/x/hosts")),
            "absolute sources stay"
        );
    }

    #[test]
    fn rootless_resources_lose_device_rules_and_on_v1_refuse_limits() {
        use oci_spec::runtime::{
            LinuxDeviceCgroupBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
        };
        let devices = vec![LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .build()
            .unwrap()];
        let with = |pids: bool| {
            let mut s = spec(false, true, false);
            let mut r = LinuxResourcesBuilder::default().devices(devices.clone());
            if pids {
                r = r.pids(LinuxPidsBuilder::default().limit(64).build().unwrap());
            }
            let mut linux = s.linux().clone().unwrap();
            linux.set_cgroups_path(Some(PathBuf::from("/given")));
            linux.set_resources(Some(r.build().unwrap()));
            s.set_linux(Some(linux));
            s
        };
        let b = Path::new("/b");
        assert!(needs_rewrite_for_rootless(&with(false), true));
        let v2 = rewritten_for_rootless(&with(true), b, PathBuf::new(), false).unwrap();
        let r = v2.linux().as_ref().unwrap().resources().clone().unwrap();
        assert!(
            r.devices().is_none() && r.pids().is_some(),
            "v2 keeps the limits"
        );
        assert_eq!(
            v2.linux().as_ref().unwrap().cgroups_path().as_deref(),
            Some(Path::new("/given"))
        );
        let v1 = rewritten_for_rootless(&with(false), b, PathBuf::new(), true).unwrap();
        assert!(v1.linux().as_ref().unwrap().resources().is_none());
        assert_eq!(
            rewritten_for_rootless(&with(true), b, PathBuf::new(), true),
            Err(RootlessLimitsOnV1("pids".into()))
        );
    }

    #[test]
    fn a_forced_no_new_privs_also_brings_landlock_under_a_read_only_root() {
        let layer = for_exec(
            &spec(true, false, true),
            &ProcessBuilder::default()
                .no_new_privileges(false)
                .build()
                .unwrap(),
        );
        assert!(layer.force_no_new_privileges);
        assert!(layer.landlock_writable.is_some());
    }
}

//! A rendered sandbox [`Spec`] wired into a running cage, for the service engine
//! (libcontainer). The policy stays what [`crate::render_sandbox`] decided; this only says
//! *where*: the cage's user namespace instead of a private one (the monitor joins it before
//! libcontainer runs, so the spec names none), the service's network namespace by path, the
//! cgroup inside the cage's delegated subtree, the cage's /etc/hosts, and a real root
//! directory where the sandbox engine would have assembled one from annotations.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxNamespaceBuilder, LinuxNamespaceType, MountBuilder, RootBuilder, Spec,
};

use crate::{SpecError, FILE_ANNOTATION_PREFIX, SYMLINK_ANNOTATION_PREFIX};

/// Where cagerun's own init is bound inside a service: on the container's fresh /dev tmpfs,
/// so no image file is touched.
pub const INIT_PATH: &str = "/dev/.cagerun-init";

/// The init a service runs behind (as [`Wiring::init`]): cagerun's own binary, bound at
/// [`INIT_PATH`] and run as `init -- CMD`, when it can run there: always on a host-binds root
/// (the host's libraries are there), in an image only when the binary is static. Without
/// one the command is pid 1 itself.
pub fn init_for(
    root: &crate::cage::ServiceRoot,
    binary: PathBuf,
    binary_is_static: bool,
) -> Option<(PathBuf, String, Vec<String>)> {
    let usable = matches!(root, crate::cage::ServiceRoot::Host) || binary_is_static;
    usable.then(|| {
        (
            binary,
            INIT_PATH.to_string(),
            vec!["init".to_string(), "--".to_string()],
        )
    })
}

pub struct Wiring {
    /// A path that opens the service's network namespace (e.g. `/proc/PID/fd/N` of the holder).
    pub netns: PathBuf,
    /// Absolute cgroup path (relative to each hierarchy's root).
    pub cgroups_path: PathBuf,
    /// The cage's hosts file for this service, bound read-only at /etc/hosts.
    pub hosts_file: PathBuf,
    /// For a service with internet: its resolver file (the uplink's DNS), bound read-only at
    /// /etc/resolv.conf.
    pub resolv_file: Option<PathBuf>,
    /// Where a host-binds root is materialized, when the spec has no root directory.
    pub host_root_dir: PathBuf,
    /// An init to run as pid 1 in front of the command: (host binary, path inside, its
    /// arguments before the command). Bound read-only.
    pub init: Option<(PathBuf, String, Vec<String>)>,
    /// The sandbox broker's directory (its socket) and the shim binary, for a service with
    /// sandboxes: the directory is bound at `inside`, the shim at `inside/docker` and
    /// `inside/podman` ([`SHIM_NAMES`]), and `inside` goes first on PATH (OpenClaw finds
    /// `docker` or `podman` there).
    pub broker: Option<BrokerWiring>,
}

/// The names the broker's shim is bound under inside a service.
pub const SHIM_NAMES: [&str; 2] = ["docker", "podman"];

/// Where the broker's directory (its socket, the shim) appears inside a service with
/// sandboxes: on the container's own /dev, so no image file is touched. The shim finds its
/// socket there; `cagerun export kube` mounts the broker sidecar's directory there.
pub const SHIM_DIR: &str = "/dev/.cagerun";

/// Where a cage keeps its named volumes, relative to the cage's directory.
pub const VOLUMES_DIR: &str = ".cagerun/volumes";

pub struct BrokerWiring {
    pub dir: PathBuf,
    pub inside: String,
    pub shim: PathBuf,
}

/// What the caller must create in [`Wiring::host_root_dir`] before the engine starts: the
/// files and symlinks the sandbox engine would have made in its fresh root.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HostRoot {
    pub files: Vec<(String, String)>,
    pub symlinks: Vec<(String, String)>,
    /// Mount points to create: the destination, and a bind's source (a file source needs a
    /// file there, anything else a directory; the caller looks).
    pub mountpoints: Vec<(String, Option<PathBuf>)>,
}

/// A read-only bind (nosuid, nodev; noexec unless it is a binary to run).
fn ro_bind(
    source: &Path,
    destination: &str,
    executable: bool,
) -> Result<oci_spec::runtime::Mount, SpecError> {
    let mut options = vec!["bind", "ro", "nosuid", "nodev"];
    if !executable {
        options.push("noexec");
    }
    Ok(MountBuilder::default()
        .destination(destination)
        .typ("bind")
        .source(source)
        .options(options.into_iter().map(String::from).collect::<Vec<_>>())
        .build()?)
}

/// A one-shot job that shares a running service's network (`network = "service:NAME"`),
/// started by a process already inside the cage's user namespace and the service's network
/// namespace: the job's own user namespace nests in the cage's with the same ids (an
/// identity map over the cage's [`crate::sandbox::IMAGE_ID_SPAN`] ids, split where the
/// cage's map is: the job's files get the host ids the cage's processes have), and it has
/// no network namespace of its own, so it uses the service's without owning it: it cannot reconfigure that network, and it gets no sysfs
/// (only a network namespace's owner may mount one; a job needs none). It resolves names
/// as the service does: the service's hosts file, and its resolv.conf when it has one.
pub fn share_network(
    spec: &mut Spec,
    hosts_file: &Path,
    resolv_file: Option<&Path>,
) -> Result<(), SpecError> {
    let mut linux = spec.linux().clone().unwrap_or_default();
    let namespaces = linux
        .namespaces()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|ns| ns.typ() != LinuxNamespaceType::Network)
        .collect::<Vec<_>>();
    linux.set_namespaces(Some(namespaces));
    // Split where the cage's own map may be split (rootless, the service user is the
    // caller and the rest subordinate ids): a child's extent must lie within one of its
    // parent's.
    let identity = |split: u32| {
        [
            (0, split),
            (split, 1),
            (split + 1, crate::sandbox::IMAGE_ID_SPAN - split - 1),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(id, n)| {
            oci_spec::runtime::LinuxIdMappingBuilder::default()
                .container_id(id)
                .host_id(id)
                .size(n)
                .build()
        })
        .collect::<Result<Vec<_>, _>>()
    };
    let user = crate::sandbox::DEFAULT_USER;
    linux.set_uid_mappings(Some(identity(user.uid)?));
    linux.set_gid_mappings(Some(identity(user.gid)?));
    spec.set_linux(Some(linux));
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    mounts.retain(|m| {
        m.typ().as_deref() != Some("sysfs")
            && m.destination() != Path::new("/etc/hosts")
            && (resolv_file.is_none() || m.destination() != Path::new("/etc/resolv.conf"))
    });
    mounts.push(ro_bind(hosts_file, "/etc/hosts", false)?);
    let mut bound = vec!["/etc/hosts"];
    if let Some(resolv) = resolv_file {
        mounts.push(ro_bind(resolv, "/etc/resolv.conf", false)?);
        bound.push("/etc/resolv.conf");
    }
    spec.set_mounts(Some(mounts));
    // An assembled root writes these from annotations: the binds replace them.
    if let Some(mut annotations) = spec.annotations().clone() {
        annotations.retain(|k, _| {
            !bound
                .iter()
                .any(|f| k.strip_prefix(FILE_ANNOTATION_PREFIX) == Some(*f))
        });
        spec.set_annotations(Some(annotations));
    }
    Ok(())
}

pub fn wire_service(
    mut spec: Spec,
    wiring: &Wiring,
) -> Result<(Spec, Option<HostRoot>), SpecError> {
    let mut linux = spec.linux().clone().unwrap_or_default();
    let namespaces = linux
        .namespaces()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|ns| ns.typ() != LinuxNamespaceType::User)
        .map(|ns| {
            if ns.typ() == LinuxNamespaceType::Network {
                LinuxNamespaceBuilder::default()
                    .typ(LinuxNamespaceType::Network)
                    .path(wiring.netns.clone())
                    .build()
            } else {
                Ok(ns)
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    linux.set_namespaces(Some(namespaces));
    linux.set_uid_mappings(None);
    linux.set_gid_mappings(None);
    linux.set_cgroups_path(Some(wiring.cgroups_path.clone()));
    if let Some(mut res) = linux.resources().clone() {
        // The device cgroup is not what keeps devices out (no node exists but the minimal
        // set, and mknod needs a capability nobody has); writing it needs host root on v1.
        res.set_devices(None);
        linux.set_resources(Some(res));
    }
    spec.set_linux(Some(linux));

    let mut mounts = spec.mounts().clone().unwrap_or_default();
    mounts.retain(|m| m.destination() != Path::new("/etc/hosts"));
    if let Some(resolv) = &wiring.resolv_file {
        mounts.retain(|m| m.destination() != Path::new("/etc/resolv.conf"));
        mounts.push(ro_bind(resolv, "/etc/resolv.conf", false)?);
    }
    mounts.push(ro_bind(&wiring.hosts_file, "/etc/hosts", false)?);

    if let Some((binary, inside, init_args)) = &wiring.init {
        mounts.push(ro_bind(binary, inside, true)?);
        if let Some(mut process) = spec.process().clone() {
            let mut args = vec![inside.clone()];
            args.extend(init_args.iter().cloned());
            args.extend(process.args().clone().unwrap_or_default());
            process.set_args(Some(args));
            spec.set_process(Some(process));
        }
    }

    if let Some(b) = &wiring.broker {
        mounts.push(ro_bind(&b.dir, &b.inside, false)?);
        // OpenClaw's sandbox backend is `docker` or `podman`: the same shim answers to both.
        for name in SHIM_NAMES {
            mounts.push(ro_bind(&b.shim, &format!("{}/{name}", b.inside), true)?);
        }
        if let Some(mut process) = spec.process().clone() {
            let mut env = process.env().clone().unwrap_or_default();
            match env.iter_mut().find(|e| e.starts_with("PATH=")) {
                Some(path) => *path = format!("PATH={}:{}", b.inside, &path[5..]),
                None => env.push(format!(
                    "PATH={}:{}",
                    b.inside,
                    crate::sandbox::DEFAULT_PATH
                )),
            }
            process.set_env(Some(env));
            spec.set_process(Some(process));
        }
    }

    let mut host_root = None;
    if spec.root().is_none() {
        let mut hr = HostRoot::default();
        let mut annotations = spec.annotations().clone().unwrap_or_default();
        annotations.retain(|k, v| {
            if let Some(file) = k.strip_prefix(FILE_ANNOTATION_PREFIX) {
                if file != "/etc/hosts" {
                    hr.files.push((file.to_string(), v.clone()));
                }
                false
            } else if let Some(link) = k.strip_prefix(SYMLINK_ANNOTATION_PREFIX) {
                hr.symlinks.push((link.to_string(), v.clone()));
                false
            } else {
                true
            }
        });
        hr.files.push(("/etc/hosts".into(), String::new()));
        if wiring.resolv_file.is_some() {
            hr.files.retain(|(f, _)| f != "/etc/resolv.conf");
            hr.files.push(("/etc/resolv.conf".into(), String::new()));
        }
        hr.files.sort();
        hr.symlinks.sort();
        for m in &mounts {
            let dst = m.destination().to_string_lossy().into_owned();
            if !hr.files.iter().any(|(f, _)| *f == dst) {
                let src = m
                    .source()
                    .clone()
                    .filter(|_| m.typ().as_deref() == Some("bind"));
                hr.mountpoints.push((dst, src));
            }
        }
        spec.set_annotations(Some(annotations));
        spec.set_root(Some(
            RootBuilder::default()
                .path(wiring.host_root_dir.clone())
                .readonly(true)
                .build()?,
        ));
        host_root = Some(hr);
    }
    spec.set_mounts(Some(mounts));
    Ok((spec, host_root))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cage::ServiceRoot;

    #[test]
    fn a_host_root_service_always_runs_behind_cagerun_s_init() {
        let init = init_for(&ServiceRoot::Host, "/usr/bin/cagerun".into(), false);
        assert_eq!(
            init,
            Some((
                "/usr/bin/cagerun".into(),
                INIT_PATH.to_string(),
                vec!["init".to_string(), "--".to_string()]
            ))
        );
    }

    #[test]
    fn an_image_service_runs_behind_cagerun_s_init_only_when_the_binary_is_static() {
        let root = ServiceRoot::Image("example.org/app:1".into());
        assert_eq!(init_for(&root, "/usr/bin/cagerun".into(), false), None);
        assert!(init_for(&root, "/usr/bin/cagerun".into(), true).is_some());
    }
}

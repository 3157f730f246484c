//! The per-command sandbox policy: `cagerun exec` flags → validated request → OCI `Spec`.
//!
//! Defaults are the hardened ones. Flags pick the workspace and the rootfs and set limits;
//! none of them removes a protection: there is no flag for capabilities, for the host
//! network, or for switching seccomp, Landlock or a limit off.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use oci_spec::runtime::{
    LinuxBuilder, LinuxCapabilitiesBuilder, LinuxIdMappingBuilder, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount,
    MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec,
    SpecBuilder, UserBuilder,
};

use crate::passwd::{synthesized_group, synthesized_hosts, synthesized_passwd};
use crate::{
    seccomp, SpecError, BENEATH_ANNOTATION_PREFIX, FILE_ANNOTATION_PREFIX,
    SYMLINK_ANNOTATION_PREFIX,
};

pub const HOSTNAME: &str = "sandbox";
pub const WORKSPACE_DEST: &str = "/workspace";
pub const DEFAULT_USER: IdPair = IdPair {
    uid: 1000,
    gid: 1000,
};
pub const DEFAULT_MEMORY: u64 = 1 << 30;
pub const DEFAULT_PIDS: i64 = 256;
pub const DEFAULT_TMPFS_SIZE: u64 = 128 << 20;
pub const MIN_MEMORY: u64 = 8 << 20;
pub const MIN_TMPFS_SIZE: u64 = 1 << 20;
const SHM_SIZE: u64 = 64 << 20;
const NOFILE_LIMIT: u64 = 1024;
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Host directories and files that make up a `--rootfs host` root, bound read-only.
/// `/bin`, `/lib*`, `/sbin` are symlinks into /usr on merged-/usr hosts; binding them binds
/// their targets. Only what exists on the host is asked for (the caller filters).
/// Each is a mount (two syscalls), so the list is what programs need, not what /etc has:
/// the loader cache, TLS roots, alternatives links, time zone, name-service order, the
/// protocol and service tables.
pub const HOST_ROOTFS_BINDS: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc/alternatives",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/nsswitch.conf",
    "/etc/protocols",
    "/etc/services",
];

/// Paths masked like Docker masks them: files hidden behind /dev/null, dirs behind an empty
/// read-only tmpfs.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths re-bound read-only inside an otherwise read-write /proc.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

pub use crate::passwd::IdPair;

/// The ids of whoever runs cagerun, on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostIds {
    pub uid: u32,
    pub gid: u32,
}

/// A user's subordinate id ranges (/etc/subuid, /etc/subgid), used through newuidmap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubordinateIds {
    pub uid_base: u32,
    pub uid_count: u32,
    pub gid_base: u32,
    pub gid_count: u32,
}

/// Ids an image may use: 0..65535.
pub const IMAGE_ID_SPAN: u32 = 65536;

/// Root's map: every id of an image (0..65535) onto root's subordinate range, straight
/// (inside N is host id base+N), so nothing run as root ever has a real host id. The one
/// map of sandboxes, services and build steps when cagerun runs as root.
pub fn root_id_map(base: u32) -> Vec<(u32, u32, u32)> {
    vec![(0, base, IMAGE_ID_SPAN)]
}

/// "keep-id": the sandbox user's id maps to the caller, every other id of an image
/// (0..65535) to the caller's subordinate range in order — so a rootfs unpacked with its
/// ownership shows it inside (root's files are root's), and the sandbox user's files are the
/// caller's on the host. (inside, outside, count) lines.
pub fn keep_id_map(id: u32, caller: u32, base: u32, count: u32) -> Option<Vec<(u32, u32, u32)>> {
    if id >= IMAGE_ID_SPAN || count < IMAGE_ID_SPAN - 1 {
        return None;
    }
    let mut lines = Vec::new();
    if id > 0 {
        lines.push((0, base, id));
    }
    lines.push((id, caller, 1));
    if id < IMAGE_ID_SPAN - 1 {
        lines.push((id + 1, base + id, IMAGE_ID_SPAN - 1 - id));
    }
    Some(lines)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootfsSource {
    /// Assembled from read-only binds of the host's system directories ([`HOST_ROOTFS_BINDS`])
    /// that exist; those that are relative symlinks on the host (`/bin -> usr/bin`) are
    /// recreated as symlinks instead of bound.
    Host {
        existing_binds: Vec<PathBuf>,
        symlinks: Vec<(PathBuf, PathBuf)>,
    },
    /// An unpacked image tree, bound read-only.
    Dir(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetMode {
    /// A fresh network namespace with only `lo`, up.
    None,
}

#[derive(Debug, Clone)]
pub struct SandboxRequest {
    pub args: Vec<String>,
    /// Absolute, canonical host path, already checked to be a directory.
    pub workspace: Option<PathBuf>,
    pub rootfs: RootfsSource,
    pub net: NetMode,
    pub user: IdPair,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub memory: Option<u64>,
    pub pids: Option<i64>,
    pub tmpfs_size: Option<u64>,
    pub terminal: bool,
    /// Rootless, for a rootfs unpacked with its ownership: map the image's other ids
    /// through these ranges ([`keep_id_map`]). None: the sandbox user is the only id.
    pub subordinate: Option<SubordinateIds>,
    /// The host name inside (services are named after themselves); default `sandbox`.
    pub hostname: Option<String>,
    /// More mounts (a service's binds, volumes and tmpfs), after the workspace. A tmpfs at
    /// /tmp sizes the default /tmp instead.
    pub extra_mounts: Vec<ExtraMount>,
    /// CPU time as a number of CPUs (a CFS quota); only some engines implement it.
    pub cpus: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtraMount {
    /// An absolute host path (resolved by the caller) at `dst`; read-only unless `ro` is false.
    Bind {
        src: PathBuf,
        dst: String,
        ro: bool,
    },
    /// A host directory or file that hostile code can write (the gateway's workspace or state
    /// volume, as a sandbox bind source the broker mapped): `path` is resolved beneath `root`
    /// by the engine when it mounts it (openat2 RESOLVE_IN_ROOT, never a host path walk), so
    /// a symlink planted anywhere under `root` cannot lead out of it. `root` is the cage's
    /// own path (from cage.toml), out of the hostile side's reach.
    BindBeneath {
        root: PathBuf,
        path: PathBuf,
        dst: String,
        ro: bool,
    },
    Tmpfs {
        dst: String,
        size: u64,
    },
    /// A host device node at the same path (a bind: a user namespace cannot mknod), the one
    /// mount without `nodev`.
    Device {
        path: String,
    },
}

impl SandboxRequest {
    pub fn new(args: Vec<String>, rootfs: RootfsSource) -> Self {
        Self {
            args,
            workspace: None,
            rootfs,
            net: NetMode::None,
            user: DEFAULT_USER,
            env: Vec::new(),
            cwd: None,
            memory: None,
            pids: None,
            tmpfs_size: None,
            terminal: false,
            subordinate: None,
            hostname: None,
            extra_mounts: Vec::new(),
            cpus: None,
        }
    }
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, SpecError> {
    Ok(MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()?)
}

/// Render a validated request for the host ids of the caller. Rootless, the sandbox user is
/// the caller; as root it is the same unprivileged id on the host (never host root).
pub fn render_sandbox(req: &SandboxRequest, host: HostIds) -> Result<Spec, SpecError> {
    if req.args.is_empty() || req.args[0].is_empty() {
        return Err(SpecError::MissingCommand);
    }
    let cwd = req.cwd.clone().unwrap_or_else(|| {
        if req.workspace.is_some() {
            WORKSPACE_DEST.to_string()
        } else {
            "/".to_string()
        }
    });
    if !cwd.starts_with('/') {
        return Err(SpecError::RelativeCwd(cwd));
    }
    let memory = req.memory.unwrap_or(DEFAULT_MEMORY);
    if memory < MIN_MEMORY {
        return Err(SpecError::TooSmall {
            what: "--memory",
            value: memory,
            min: MIN_MEMORY,
        });
    }
    let pids = req.pids.unwrap_or(DEFAULT_PIDS);
    if pids < 1 {
        return Err(SpecError::TooSmall {
            what: "--pids",
            value: pids.max(0) as u64,
            min: 1,
        });
    }
    let tmp_override = req.extra_mounts.iter().find_map(|m| match m {
        ExtraMount::Tmpfs { dst, size } if dst.trim_end_matches('/') == "/tmp" => Some(*size),
        _ => None,
    });
    let tmpfs_size = tmp_override
        .or(req.tmpfs_size)
        .unwrap_or(DEFAULT_TMPFS_SIZE);
    if tmpfs_size < MIN_TMPFS_SIZE {
        return Err(SpecError::TooSmall {
            what: "--tmpfs-size",
            value: tmpfs_size,
            min: MIN_TMPFS_SIZE,
        });
    }
    // As root, every id of the sandbox lies in root's subordinate range (inside id N is
    // host id base+N): no real host uid or gid ever, so nothing the sandbox writes or any
    // `--user` it is given can carry a host identity (a setgid file of group `shadow`).
    let root_range = if host.uid == 0 {
        if req.user.uid == 0 || req.user.gid == 0 {
            return Err(SpecError::HostRootUser);
        }
        let sub = req.subordinate.ok_or(SpecError::RootNeedsSubordinate)?;
        if sub.uid_count < IMAGE_ID_SPAN || sub.gid_count < IMAGE_ID_SPAN {
            return Err(SpecError::RootNeedsSubordinate);
        }
        if req.user.uid >= IMAGE_ID_SPAN || req.user.gid >= IMAGE_ID_SPAN {
            return Err(SpecError::UserOutsideRange {
                uid: req.user.uid,
                gid: req.user.gid,
            });
        }
        Some(sub)
    } else {
        None
    };
    let host_side = match root_range {
        Some(sub) => HostIds {
            uid: sub.uid_base + req.user.uid,
            gid: sub.gid_base + req.user.gid,
        },
        None => host,
    };

    let hostname = req.hostname.as_deref().unwrap_or(HOSTNAME);
    let mut annotations = HashMap::new();
    let mut mounts = Vec::new();
    let root = match &req.rootfs {
        RootfsSource::Host {
            existing_binds,
            symlinks,
        } => {
            for (link, target) in symlinks {
                annotations.insert(
                    format!("{SYMLINK_ANNOTATION_PREFIX}{}", link.display()),
                    target.to_string_lossy().into_owned(),
                );
            }
            for path in existing_binds {
                let p = path.to_string_lossy();
                mounts.push(mount(&p, "bind", &p, &["bind", "ro", "nosuid", "nodev"])?);
            }
            for (file, text) in [
                ("/etc/passwd", synthesized_passwd(req.user)),
                ("/etc/group", synthesized_group(req.user)),
                ("/etc/hosts", synthesized_hosts(hostname)),
                ("/etc/hostname", format!("{hostname}\n")),
            ] {
                annotations.insert(format!("{FILE_ANNOTATION_PREFIX}{file}"), text);
            }
            // No root: the engine starts from an empty tmpfs and seals it read-only.
            None
        }
        RootfsSource::Dir(dir) => Some(RootBuilder::default().path(dir).readonly(true).build()?),
    };
    // /proc read-only as a whole (Docker leaves it writable and re-binds five paths
    // read-only): a command may not write /proc/self/oom_score_adj and friends either, and
    // the read-only paths below come for free.
    mounts.push(mount(
        "/proc",
        "proc",
        "proc",
        &["nosuid", "noexec", "nodev", "ro"],
    )?);
    mounts.push(mount(
        "/dev",
        "tmpfs",
        "tmpfs",
        &["nosuid", "noexec", "strictatime", "mode=755", "size=64k"],
    )?);
    mounts.push(mount(
        "/dev/pts",
        "devpts",
        "devpts",
        &[
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
        ],
    )?);
    let shm = format!("size={SHM_SIZE}");
    mounts.push(mount(
        "/dev/shm",
        "tmpfs",
        "shm",
        &["nosuid", "noexec", "nodev", "mode=1777", &shm],
    )?);

    let tmp = format!("size={tmpfs_size}");
    mounts.push(mount(
        "/tmp",
        "tmpfs",
        "tmpfs",
        &["nosuid", "nodev", "mode=1777", &tmp],
    )?);
    if let Some(ws) = &req.workspace {
        mounts.push(mount(
            WORKSPACE_DEST,
            "bind",
            &ws.to_string_lossy(),
            &["bind", "rw", "nosuid", "nodev"],
        )?);
    }
    let mut beneath = Vec::new();
    for m in &req.extra_mounts {
        match m {
            ExtraMount::Bind { src, dst, ro } => {
                let access = if *ro { "ro" } else { "rw" };
                mounts.push(mount(
                    dst,
                    "bind",
                    &src.to_string_lossy(),
                    &["bind", access, "nosuid", "nodev"],
                )?);
            }
            ExtraMount::BindBeneath {
                root,
                path,
                dst,
                ro,
            } => {
                if !root.is_absolute()
                    || path.is_absolute()
                    || path
                        .components()
                        .any(|c| !matches!(c, std::path::Component::Normal(_)))
                {
                    return Err(SpecError::BindBeneath {
                        root: root.clone(),
                        path: path.clone(),
                    });
                }
                let access = if *ro { "ro" } else { "rw" };
                mounts.push(mount(
                    dst,
                    "bind",
                    &root.join(path).to_string_lossy(),
                    &["bind", access, "nosuid", "nodev"],
                )?);
                beneath.push((dst.clone(), root.clone()));
            }
            ExtraMount::Device { path } => {
                mounts.push(mount(
                    path,
                    "bind",
                    path,
                    &["bind", "rw", "nosuid", "noexec"],
                )?);
            }
            ExtraMount::Tmpfs { dst, .. } if dst.trim_end_matches('/') == "/tmp" => {}
            ExtraMount::Tmpfs { dst, size } => {
                let size = format!("size={size}");
                mounts.push(mount(
                    dst,
                    "tmpfs",
                    "tmpfs",
                    &["nosuid", "nodev", "mode=1777", &size],
                )?);
            }
        }
    }
    for (dst, root) in beneath {
        if annotations
            .insert(
                format!("{BENEATH_ANNOTATION_PREFIX}{dst}"),
                root.to_string_lossy().into_owned(),
            )
            .is_some()
        {
            return Err(SpecError::DuplicateMount(dst));
        }
    }
    // Last: sysfs shows the mounting namespace's network devices, and the engine joins the
    // sandbox's network namespace (made beside it) as late as it can.
    mounts.push(mount(
        "/sys",
        "sysfs",
        "sysfs",
        &["nosuid", "noexec", "nodev", "ro"],
    )?);

    let mut env: Vec<String> = vec![
        format!("PATH={DEFAULT_PATH}"),
        "HOME=/tmp".into(),
        format!("HOSTNAME={hostname}"),
    ];
    if req.terminal {
        env.push("TERM=xterm".into());
    }
    for (k, v) in &req.env {
        env.retain(|e| e.split_once('=').map(|(ek, _)| ek) != Some(k.as_str()));
        env.push(format!("{k}={v}"));
    }

    let no_caps = HashSet::new();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(no_caps.clone())
        .effective(no_caps.clone())
        .inheritable(no_caps.clone())
        .permitted(no_caps.clone())
        .ambient(no_caps)
        .build()?;
    let rlimits = vec![
        PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitCore)
            .hard(0u64)
            .soft(0u64)
            .build()?,
        PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .hard(NOFILE_LIMIT)
            .soft(NOFILE_LIMIT)
            .build()?,
    ];
    let process = ProcessBuilder::default()
        .terminal(req.terminal)
        .user(
            UserBuilder::default()
                .uid(req.user.uid)
                .gid(req.user.gid)
                .build()?,
        )
        .args(req.args.clone())
        .env(env)
        .cwd(cwd)
        .capabilities(capabilities)
        .rlimits(rlimits)
        .no_new_privileges(true)
        .build()?;

    let namespaces = [
        LinuxNamespaceType::User,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Cgroup,
        LinuxNamespaceType::Network,
    ]
    .into_iter()
    .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
    .collect::<Result<Vec<_>, _>>()?;
    let memory_limit = i64::try_from(memory).unwrap_or(i64::MAX);
    let resources = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(memory_limit)
                .swap(memory_limit)
                .build()?,
        )
        .pids(LinuxPidsBuilder::default().limit(pids).build()?);
    let resources = match req.cpus {
        Some(cpus) => {
            const PERIOD: u64 = 100_000;
            resources.cpu(
                oci_spec::runtime::LinuxCpuBuilder::default()
                    .period(PERIOD)
                    .quota((cpus * PERIOD as f64).round().max(1000.0) as i64)
                    .build()?,
            )
        }
        None => resources,
    }
    .build()?;
    let id_lines = |id: u32, host_id: u32, sub: Option<(u32, u32)>| -> Vec<(u32, u32, u32)> {
        match (root_range, sub) {
            // Root's range, straight: inside N is base+N (host_id is base+id already).
            (Some(_), Some((base, _))) => root_id_map(base),
            _ => sub
                .and_then(|(base, count)| keep_id_map(id, host_id, base, count))
                .unwrap_or_else(|| vec![(id, host_id, 1)]),
        }
    };
    let sub = req.subordinate;
    let to_mappings = |lines: Vec<(u32, u32, u32)>| {
        lines
            .into_iter()
            .map(|(inside, outside, count)| {
                LinuxIdMappingBuilder::default()
                    .container_id(inside)
                    .host_id(outside)
                    .size(count)
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let uid_mappings = to_mappings(id_lines(
        req.user.uid,
        host_side.uid,
        sub.map(|s| (s.uid_base, s.uid_count)),
    ))?;
    let gid_mappings = to_mappings(id_lines(
        req.user.gid,
        host_side.gid,
        sub.map(|s| (s.gid_base, s.gid_count)),
    ))?;
    let linux = LinuxBuilder::default()
        .uid_mappings(uid_mappings)
        .gid_mappings(gid_mappings)
        .namespaces(namespaces)
        .resources(resources)
        .seccomp(seccomp::sandbox_profile()?)
        .masked_paths(
            MASKED_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .readonly_paths(
            READONLY_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .build()?;

    let mut spec = SpecBuilder::default()
        // The oldest version with every field used here: runtimes from 2020 on accept it.
        .version("1.0.2")
        .hostname(hostname)
        .mounts(mounts)
        .process(process)
        .linux(linux)
        .build()?;
    spec.set_root(root);
    spec.set_annotations((!annotations.is_empty()).then_some(annotations));
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_req() -> SandboxRequest {
        let mut r = SandboxRequest::new(
            vec!["true".into()],
            RootfsSource::Host {
                existing_binds: vec!["/usr".into()],
                symlinks: vec![("/bin".into(), "usr/bin".into())],
            },
        );
        r.workspace = Some("/home/u/ws".into());
        r
    }

    #[test]
    fn rootless_maps_the_sandbox_user_to_the_caller() {
        let spec = render_sandbox(&host_req(), HostIds { uid: 1234, gid: 99 }).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let m = &linux.uid_mappings().as_ref().unwrap()[0];
        assert_eq!((m.container_id(), m.host_id(), m.size()), (1000, 1234, 1));
        let g = &linux.gid_mappings().as_ref().unwrap()[0];
        assert_eq!((g.container_id(), g.host_id(), g.size()), (1000, 99, 1));
    }

    #[test]
    fn as_root_every_sandbox_id_is_one_of_roots_subordinate_ids() {
        let root = HostIds { uid: 0, gid: 0 };
        // Without root's range there is no sandbox as root: never a real host id.
        assert!(matches!(
            render_sandbox(&host_req(), root),
            Err(SpecError::RootNeedsSubordinate)
        ));
        let mut r = host_req();
        r.subordinate = Some(SubordinateIds {
            uid_base: 1_000_000,
            uid_count: 65536,
            gid_base: 2_000_000,
            gid_count: 65536,
        });
        let spec = render_sandbox(&r, root).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let lines = |m: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
            m.as_ref()
                .unwrap()
                .iter()
                .map(|m| (m.container_id(), m.host_id(), m.size()))
                .collect::<Vec<_>>()
        };
        assert_eq!(lines(linux.uid_mappings()), [(0, 1_000_000, 65536)]);
        assert_eq!(lines(linux.gid_mappings()), [(0, 2_000_000, 65536)]);
        // Any user the gateway names is inside that range, or refused.
        r.user = IdPair { uid: 1003, gid: 42 };
        assert!(render_sandbox(&r, root).is_ok());
        r.user = IdPair {
            uid: 70000,
            gid: 1000,
        };
        assert!(matches!(
            render_sandbox(&r, root),
            Err(SpecError::UserOutsideRange { .. })
        ));
        r.user = IdPair { uid: 0, gid: 0 };
        assert!(matches!(
            render_sandbox(&r, root),
            Err(SpecError::HostRootUser)
        ));
        // Rootless, inside-root is only the caller.
        assert!(render_sandbox(
            &r,
            HostIds {
                uid: 1000,
                gid: 1000
            }
        )
        .is_ok());
    }

    #[test]
    fn keep_id_maps_the_user_to_the_caller_and_the_rest_to_the_range() {
        assert_eq!(
            keep_id_map(1000, 1001, 100000, 65536).unwrap(),
            vec![(0, 100000, 1000), (1000, 1001, 1), (1001, 101000, 64535)]
        );
        assert_eq!(
            keep_id_map(0, 1001, 100000, 65536).unwrap(),
            vec![(0, 1001, 1), (1, 100000, 65535)]
        );
        assert!(
            keep_id_map(1000, 1001, 100000, 1000).is_none(),
            "a range too small for an image"
        );
        let mut r = host_req();
        r.subordinate = Some(SubordinateIds {
            uid_base: 100000,
            uid_count: 65536,
            gid_base: 200000,
            gid_count: 65536,
        });
        let spec = render_sandbox(
            &r,
            HostIds {
                uid: 1001,
                gid: 1001,
            },
        )
        .unwrap();
        let maps = spec
            .linux()
            .as_ref()
            .unwrap()
            .uid_mappings()
            .clone()
            .unwrap();
        assert_eq!(maps.len(), 3);
    }

    #[test]
    fn hardened_defaults() {
        let spec = render_sandbox(
            &host_req(),
            HostIds {
                uid: 1000,
                gid: 1000,
            },
        )
        .unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.no_new_privileges(), Some(true));
        let caps = p.capabilities().as_ref().unwrap();
        for set in [
            caps.bounding(),
            caps.effective(),
            caps.permitted(),
            caps.inheritable(),
            caps.ambient(),
        ] {
            assert!(set.as_ref().unwrap().is_empty());
        }
        let ns = spec
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap();
        assert_eq!(ns.len(), 7);
        let ws = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination().to_str() == Some("/workspace"))
            .unwrap();
        assert!(ws.options().as_ref().unwrap().contains(&"rw".to_string()));
        for m in spec.mounts().as_ref().unwrap() {
            let o = m.options().as_ref().unwrap();
            if m.typ().as_deref() == Some("bind") && m.destination().to_str() != Some("/workspace")
            {
                assert!(o.contains(&"ro".to_string()), "{m:?} must be read-only");
            }
            assert!(o.contains(&"nosuid".to_string()), "{m:?} must be nosuid");
        }
        assert_eq!(spec.hostname().as_deref(), Some(HOSTNAME));
    }

    #[test]
    fn bad_requests_are_refused() {
        let mut r = host_req();
        r.args.clear();
        assert!(matches!(
            render_sandbox(&r, HostIds { uid: 1, gid: 1 }),
            Err(SpecError::MissingCommand)
        ));
        let mut r = host_req();
        r.cwd = Some("rel".into());
        assert!(render_sandbox(&r, HostIds { uid: 1, gid: 1 }).is_err());
        let mut r = host_req();
        r.memory = Some(1024);
        assert!(render_sandbox(&r, HostIds { uid: 1, gid: 1 }).is_err());
    }

    #[test]
    fn user_env_overrides_defaults_once() {
        let mut r = host_req();
        r.env = vec![("PATH".into(), "/x".into())];
        let spec = render_sandbox(&r, HostIds { uid: 1, gid: 1 }).unwrap();
        let env = spec.process().as_ref().unwrap().env().as_ref().unwrap();
        assert_eq!(env.iter().filter(|e| e.starts_with("PATH=")).count(), 1);
        assert!(env.contains(&"PATH=/x".to_string()));
    }
}

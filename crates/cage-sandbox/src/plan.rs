//! Lowering a `Spec` into what this engine does, refusing every field it does not implement.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use caps::Capability;
use oci_spec::runtime::{PosixRlimitType, Spec};

use crate::error::{Result, SandboxError};
use crate::mounts::{is_supported_fs, parse_options, MountKind, MountStep};
use crate::namespaces::{self, NamespaceSet};

const FILE_ANNOTATION_PREFIX: &str = "run.cagerun.file:";
const SYMLINK_ANNOTATION_PREFIX: &str = "run.cagerun.symlink:";
const BENEATH_ANNOTATION_PREFIX: &str = "run.cagerun.beneath:";

#[derive(Debug, Clone, Copy)]
pub struct IdMap {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

impl IdMap {
    /// The host id `id` maps to through `maps`, if any line covers it.
    pub fn outside_of(maps: &[IdMap], id: u32) -> Option<u32> {
        maps.iter()
            .find(|m| id >= m.inside && id - m.inside < m.count)
            .map(|m| m.outside + (id - m.inside))
    }
}

/// The process half of a spec: who runs what, with which privileges and filter. The sandbox
/// engine starts it in namespaces it makes; `cagerun exec SVC` starts it in a running
/// service's.
#[derive(Debug, Clone)]
pub struct ProcessPlan {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub umask: Option<u32>,
    pub caps: CapSets,
    pub no_new_privileges: bool,
    pub rlimits: Vec<crate::rlimits::Rlimit>,
    pub terminal: bool,
    pub seccomp: Option<oci_spec::runtime::LinuxSeccomp>,
}

impl ProcessPlan {
    pub fn from_spec(spec: &Spec) -> Result<ProcessPlan> {
        let process = spec
            .process()
            .as_ref()
            .ok_or_else(|| unsupported("a spec without a process"))?;
        check_none(process.apparmor_profile(), "process.apparmorProfile")?;
        check_none(process.selinux_label(), "process.selinuxLabel")?;
        check_none(&process.oom_score_adj(), "process.oomScoreAdj")?;
        check_none(process.io_priority(), "process.ioPriority")?;
        check_none(process.scheduler(), "process.scheduler")?;
        check_none(process.exec_cpu_affinity(), "process.execCPUAffinity")?;
        check_none(process.command_line(), "process.commandLine")?;
        let args = process.args().clone().unwrap_or_default();
        if args.is_empty() {
            return Err(SandboxError::InvalidSpec("process.args is empty".into()));
        }
        let cwd = process.cwd().clone();
        if !cwd.is_absolute() {
            return Err(SandboxError::InvalidSpec(format!(
                "process.cwd {} is not absolute",
                cwd.display()
            )));
        }
        let c = process.capabilities().clone().unwrap_or_default();
        let caps = CapSets {
            bounding: caps_of(c.bounding())?,
            effective: caps_of(c.effective())?,
            inheritable: caps_of(c.inheritable())?,
            permitted: caps_of(c.permitted())?,
            ambient: caps_of(c.ambient())?,
        };
        let rlimits = process
            .rlimits()
            .iter()
            .flatten()
            .map(|r| Ok((rlimit_resource(r.typ())?, r.soft(), r.hard())))
            .collect::<Result<Vec<_>>>()?;
        Ok(ProcessPlan {
            args,
            env: process.env().clone().unwrap_or_default(),
            cwd,
            uid: process.user().uid(),
            gid: process.user().gid(),
            additional_gids: process.user().additional_gids().clone().unwrap_or_default(),
            umask: process.user().umask(),
            caps,
            no_new_privileges: process.no_new_privileges().unwrap_or(false),
            rlimits,
            terminal: process.terminal().unwrap_or(false),
            seccomp: spec.linux().as_ref().and_then(|l| l.seccomp().clone()),
        })
    }
}

#[derive(Debug, Clone)]
pub struct CapSets {
    pub bounding: HashSet<Capability>,
    pub effective: HashSet<Capability>,
    pub inheritable: HashSet<Capability>,
    pub permitted: HashSet<Capability>,
    pub ambient: HashSet<Capability>,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub namespaces: NamespaceSet,
    pub uid_map: Vec<IdMap>,
    pub gid_map: Vec<IdMap>,
    pub hostname: Option<String>,
    /// None: start from an empty root (tmpfs).
    pub root: Option<PathBuf>,
    pub root_readonly: bool,
    pub mounts: Vec<MountStep>,
    pub masked_paths: Vec<PathBuf>,
    pub readonly_paths: Vec<PathBuf>,
    /// Files written into the fresh root before it is sealed.
    pub files: Vec<(PathBuf, String)>,
    /// Symlinks made in the fresh root before the mounts: (link, target).
    pub symlinks: Vec<(PathBuf, PathBuf)>,
    pub memory_limit: Option<u64>,
    pub pids_limit: Option<u64>,
    /// Who runs what, with which privileges and filter.
    pub process: ProcessPlan,
}

fn unsupported(field: &str) -> SandboxError {
    SandboxError::Unsupported {
        field: field.to_string(),
    }
}

fn check_none<T>(value: &Option<T>, field: &str) -> Result<()> {
    match value {
        Some(_) => Err(unsupported(field)),
        None => Ok(()),
    }
}

fn caps_of(set: &Option<HashSet<oci_spec::runtime::Capability>>) -> Result<HashSet<Capability>> {
    let mut out = HashSet::new();
    for c in set.iter().flatten() {
        let name = format!("CAP_{}", c.to_string().trim_start_matches("CAP_"));
        let cap: Capability = name
            .parse()
            .map_err(|_| unsupported(&format!("capability {name}")))?;
        out.insert(cap);
    }
    Ok(out)
}

fn rlimit_resource(t: PosixRlimitType) -> Result<libc::__rlimit_resource_t> {
    Ok(match t {
        PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
    })
}

impl Plan {
    /// `base` resolves a relative `root.path` and relative bind sources (the bundle directory).
    pub fn from_spec(spec: &Spec, base: &Path) -> Result<Plan> {
        check_none(spec.hooks(), "hooks")?;
        check_none(spec.domainname(), "domainname")?;
        check_none(spec.solaris(), "solaris")?;
        check_none(spec.windows(), "windows")?;
        check_none(spec.vm(), "vm")?;
        let linux = spec
            .linux()
            .as_ref()
            .ok_or_else(|| unsupported("a spec without a linux section"))?;
        check_none(linux.sysctl(), "linux.sysctl")?;
        check_none(linux.cgroups_path(), "linux.cgroupsPath")?;
        check_none(linux.rootfs_propagation(), "linux.rootfsPropagation")?;
        check_none(linux.mount_label(), "linux.mountLabel")?;
        check_none(linux.intel_rdt(), "linux.intelRdt")?;
        check_none(linux.personality(), "linux.personality")?;
        check_none(linux.time_offsets(), "linux.timeOffsets")?;
        check_none(linux.net_devices(), "linux.netDevices")?;
        check_none(linux.memory_policy(), "linux.memoryPolicy")?;
        if linux.devices().as_ref().is_some_and(|d| !d.is_empty()) {
            return Err(unsupported(
                "linux.devices (only the default /dev nodes are provided)",
            ));
        }

        let namespaces = namespaces::from_spec(linux.namespaces().as_deref().unwrap_or(&[]))?;
        let to_map = |m: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| -> Vec<IdMap> {
            m.iter()
                .flatten()
                .map(|m| IdMap {
                    inside: m.container_id(),
                    outside: m.host_id(),
                    count: m.size(),
                })
                .collect()
        };
        let uid_map = to_map(linux.uid_mappings());
        let gid_map = to_map(linux.gid_mappings());
        if uid_map.is_empty() || gid_map.is_empty() {
            return Err(SandboxError::InvalidSpec(
                "a user namespace needs linux.uidMappings and linux.gidMappings".into(),
            ));
        }

        let (memory_limit, pids_limit) = match linux.resources() {
            None => (None, None),
            Some(r) => {
                check_none(r.cpu(), "linux.resources.cpu")?;
                check_none(r.block_io(), "linux.resources.blockIO")?;
                check_none(r.hugepage_limits(), "linux.resources.hugepageLimits")?;
                check_none(r.network(), "linux.resources.network")?;
                check_none(r.rdma(), "linux.resources.rdma")?;
                check_none(r.unified(), "linux.resources.unified")?;
                if r.devices().as_ref().is_some_and(|d| !d.is_empty()) {
                    return Err(unsupported("linux.resources.devices"));
                }
                let memory = match r.memory() {
                    None => None,
                    Some(m) => {
                        check_none(&m.reservation(), "linux.resources.memory.reservation")?;
                        check_none(&m.kernel(), "linux.resources.memory.kernel")?;
                        check_none(&m.kernel_tcp(), "linux.resources.memory.kernelTCP")?;
                        check_none(&m.swappiness(), "linux.resources.memory.swappiness")?;
                        check_none(
                            &m.disable_oom_killer(),
                            "linux.resources.memory.disableOOMKiller",
                        )?;
                        if let (Some(limit), Some(swap)) = (m.limit(), m.swap()) {
                            if swap != limit {
                                return Err(unsupported("linux.resources.memory.swap other than equal to limit (no swap)"));
                            }
                        }
                        m.limit().filter(|l| *l > 0).map(|l| l as u64)
                    }
                };
                let pids = r
                    .pids()
                    .as_ref()
                    .map(|p| p.limit())
                    .filter(|l| *l > 0)
                    .map(|l| l as u64);
                (memory, pids)
            }
        };

        let process = ProcessPlan::from_spec(spec)?;

        let root = match spec.root() {
            None => None,
            Some(r) => {
                let p = if r.path().is_absolute() {
                    r.path().clone()
                } else {
                    base.join(r.path())
                };
                Some(p)
            }
        };
        let root_readonly = spec
            .root()
            .as_ref()
            .map(|r| r.readonly().unwrap_or(false))
            .unwrap_or(true);

        let mut mounts = Vec::new();
        for m in spec.mounts().iter().flatten() {
            if m.uid_mappings().is_some() || m.gid_mappings().is_some() {
                return Err(unsupported("idmapped mounts (mounts[].uidMappings)"));
            }
            let dest = m.destination();
            if !dest.is_absolute()
                || dest
                    .components()
                    .any(|c| c == std::path::Component::ParentDir)
            {
                return Err(SandboxError::InvalidSpec(format!(
                    "mount destination {} must be absolute without '..'",
                    dest.display()
                )));
            }
            let options = m.options().clone().unwrap_or_default();
            let is_bind = m.typ().as_deref() == Some("bind")
                || options.iter().any(|o| o == "bind" || o == "rbind");
            let (flags, recursive, data) = parse_options(&options, is_bind)?;
            let kind = if is_bind {
                let src = m.source().clone().ok_or_else(|| {
                    SandboxError::InvalidSpec(format!(
                        "bind mount {} has no source",
                        dest.display()
                    ))
                })?;
                let src = if src.is_absolute() {
                    src
                } else {
                    base.join(src)
                };
                MountKind::Bind {
                    source: src,
                    recursive,
                    beneath: None,
                }
            } else {
                let fstype = m.typ().clone().unwrap_or_default();
                if !is_supported_fs(&fstype) {
                    return Err(unsupported(&format!(
                        "mount type {fstype:?} at {}",
                        dest.display()
                    )));
                }
                let source = m
                    .source()
                    .as_ref()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| fstype.clone());
                MountKind::Fs { fstype, source }
            };
            mounts.push(MountStep {
                destination: dest.clone(),
                kind,
                flags,
                data,
            });
        }

        let mut files = Vec::new();
        let mut symlinks = Vec::new();
        for (k, v) in spec.annotations().iter().flatten() {
            if let Some(path) = k.strip_prefix(FILE_ANNOTATION_PREFIX) {
                if root.is_some() {
                    return Err(unsupported(
                        "run.cagerun.file annotations with a root.path (they need a fresh root)",
                    ));
                }
                files.push((PathBuf::from(path), v.clone()));
            } else if let Some(link) = k.strip_prefix(SYMLINK_ANNOTATION_PREFIX) {
                if root.is_some() {
                    return Err(unsupported(
                        "run.cagerun.symlink annotations with a root.path (they need a fresh root)",
                    ));
                }
                symlinks.push((PathBuf::from(link), PathBuf::from(v)));
            } else if let Some(dest) = k.strip_prefix(BENEATH_ANNOTATION_PREFIX) {
                mark_beneath(&mut mounts, Path::new(dest), Path::new(v))?;
            } else if k.starts_with("run.cagerun.") {
                return Err(unsupported(&format!("annotation {k}")));
            }
        }
        files.sort();
        symlinks.sort();

        let to_paths =
            |v: &Option<Vec<String>>| v.iter().flatten().map(PathBuf::from).collect::<Vec<_>>();
        Ok(Plan {
            namespaces,
            uid_map,
            gid_map,
            hostname: spec.hostname().clone(),
            root,
            root_readonly,
            mounts,
            masked_paths: to_paths(linux.masked_paths()),
            readonly_paths: to_paths(linux.readonly_paths()),
            files,
            symlinks,
            process,
            memory_limit,
            pids_limit,
        })
    }

    /// Where the sandbox may write, as its mounts say: Landlock grants write access beneath
    /// these and read access everywhere else.
    pub fn writable_destinations(&self) -> Vec<PathBuf> {
        if self.root.is_some() && !self.root_readonly {
            return vec![PathBuf::from("/")];
        }
        self.mounts
            .iter()
            .filter(|m| !m.read_only())
            .map(|m| m.destination.clone())
            .collect()
    }
}

/// Where a process joining a running container may write, as the container's spec says
/// (a read-only root: its mounts without `ro`; a writable root: everywhere): the Landlock
/// layer of `cagerun exec SVC`, which has the spec but builds no [`Plan`].
pub fn writable_destinations_of(spec: &Spec) -> Vec<PathBuf> {
    let root_readonly = spec
        .root()
        .as_ref()
        .map(|r| r.readonly().unwrap_or(false))
        .unwrap_or(true);
    if !root_readonly {
        return vec![PathBuf::from("/")];
    }
    spec.mounts()
        .iter()
        .flatten()
        .filter(|m| !m.options().iter().flatten().any(|o| o == "ro"))
        .map(|m| m.destination().clone())
        .collect()
}

/// `run.cagerun.beneath:DEST` = ROOT: the one bind at DEST has its source below ROOT, and the
/// part below ROOT is resolved beneath it when the sandbox is made. A source that is not
/// lexically below ROOT (or has `..`), or no single bind at DEST, is an invalid spec.
fn mark_beneath(mounts: &mut [MountStep], dest: &Path, root: &Path) -> Result<()> {
    let invalid = |why: &str| {
        Err(SandboxError::InvalidSpec(format!(
            "annotation {BENEATH_ANNOTATION_PREFIX}{}: {why}",
            dest.display()
        )))
    };
    let mut at_dest = mounts.iter_mut().filter(|m| m.destination == dest);
    let (Some(m), None) = (at_dest.next(), at_dest.next()) else {
        return invalid("there must be exactly one mount at that destination");
    };
    let MountKind::Bind {
        source, beneath, ..
    } = &mut m.kind
    else {
        return invalid("the mount there is not a bind");
    };
    let plain = |p: &Path| {
        p.components().all(|c| {
            matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::RootDir
            )
        })
    };
    if !root.is_absolute() || !plain(root) || !plain(source) || !source.starts_with(root) {
        return invalid(&format!(
            "the source {} must lie below {} (absolute, without '..')",
            source.display(),
            root.display()
        ));
    }
    *beneath = Some(root.to_path_buf());
    Ok(())
}

//! The cage's cgroup: which directories a cage needs. One directory per cage inside the
//! subtree delegated to the user, in every hierarchy libcontainer joins (on cgroup v1 that is
//! every mounted controller, so `setup-cgroups` delegates `cagerun/<uid>` in all of them), one
//! per service below it (libcontainer joins and removes those), and `sandboxes-SVC` for the
//! tool sandboxes of a service. What is written into them (limits, controllers, cpusets) and
//! the delegated path are cage-sandbox's `cgroups`, the one writer.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cage_sandbox::cgroups::{self, CpuQuota, IfAbsent, Layout, Limits};

pub struct CageCgroup {
    /// The path libcontainer takes (`cgroupsPath`), relative to every hierarchy's root.
    pub relative: PathBuf,
    /// The directories made for the cage, one per hierarchy.
    pub dirs: Vec<PathBuf>,
}

/// Make the cage's directories. `owner`: the host uid/gid that is root in the cage's user
/// namespace, when it differs from the caller (as root) and must be able to write them.
pub fn prepare(cage_id: &str, owner: Option<(u32, u32)>) -> Result<CageCgroup> {
    let uid = nix::unistd::geteuid().as_raw();
    let name = crate::host::user_name(uid);
    match cgroups::detect() {
        Layout::V1 { .. } => {
            let rel = cgroups::delegated_v1(uid);
            let mut dirs = Vec::new();
            for h in cgroups::v1_hierarchies() {
                let parent = h.join(&rel);
                if !parent.is_dir() {
                    if uid == 0 {
                        std::fs::create_dir_all(&parent)
                            .with_context(|| format!("creating {}", parent.display()))?;
                        cgroups::fill_cpuset(parent.parent().unwrap_or(&h))?;
                        cgroups::fill_cpuset(&parent)?;
                    } else {
                        return Err(crate::Error::CgroupNotDelegatedV1 {
                            hierarchy: h.clone(),
                            subtree: rel.display().to_string(),
                            user: name,
                        }
                        .into());
                    }
                }
                let dir = parent.join(cage_id);
                if let Err(e) = std::fs::create_dir(&dir) {
                    if e.kind() != std::io::ErrorKind::AlreadyExists {
                        return Err(e).with_context(|| format!("creating {} (run `sudo cagerun setup-cgroups --user {name}` again?)", dir.display()));
                    }
                }
                cgroups::fill_cpuset(&dir)?;
                if let Some((u, g)) = owner {
                    for p in [dir.clone(), dir.join("cgroup.procs"), dir.join("tasks")] {
                        let _ = nix::unistd::chown(&p, Some(u.into()), Some(g.into()));
                    }
                }
                dirs.push(dir);
            }
            Ok(CageCgroup {
                relative: Path::new("/").join(rel).join(cage_id),
                dirs,
            })
        }
        Layout::Unified => {
            let parent = cgroups::find_parent(uid).ok_or(crate::Error::CgroupNotDelegatedV2 {
                parent_env: cgroups::PARENT_ENV,
            })?;
            let dir = parent.dirs[0].join(cage_id);
            if !dir.exists() {
                std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            cgroups::enable_controllers(&dir)?;
            if let Some((u, g)) = owner {
                for f in ["", "cgroup.procs", "cgroup.subtree_control"] {
                    let _ = nix::unistd::chown(&dir.join(f), Some(u.into()), Some(g.into()));
                }
            }
            let relative = Path::new("/").join(dir.strip_prefix(cgroups::ROOT)?);
            Ok(CageCgroup {
                relative,
                dirs: vec![dir],
            })
        }
        Layout::None => bail!(
            "no cgroup controllers are mounted under {}: services need cgroups for their limits",
            cgroups::ROOT
        ),
    }
}

/// Remove cgroup directories deepest first (service leftovers, then the cage's); each must
/// be empty of processes by now.
pub fn remove(dirs: &[PathBuf]) {
    cgroups::remove_tree(dirs);
}

/// A child cgroup `name` of the cage's in every hierarchy (made if missing; a v1 cpuset
/// gets its parent's cpus and mems), given to `owner` when one is named.
fn make_children(cage: &CageCgroup, name: &str, owner: Option<(u32, u32)>) -> Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for d in &cage.dirs {
        let dir = d.join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
        cgroups::fill_cpuset(&dir)?;
        if let Some((u, g)) = owner {
            for f in ["", "cgroup.procs", "tasks"] {
                let _ = nix::unistd::chown(&dir.join(f), Some(u.into()), Some(g.into()));
            }
        }
        dirs.push(dir);
    }
    Ok(dirs)
}

/// Make a service's cgroup under the cage's and write the spec's limits into it, before
/// libcontainer moves the container in. libcontainer would write them itself, but with any
/// resources it also writes the v1 device controller, which only host root may do; so the
/// spec it gets carries none, and these are the spec's own values, written once here:
/// memory (no swap on v2; v1's memory+swap is left as it is), pids, CPU quota.
pub fn prepare_service(
    cage: &CageCgroup,
    name: &str,
    resources: Option<&oci_spec::runtime::LinuxResources>,
    owner: Option<(u32, u32)>,
) -> Result<Vec<PathBuf>> {
    let dirs = make_children(cage, name, owner)?;
    let Some(res) = resources else {
        return Ok(dirs);
    };
    let limits = Limits {
        memory: res.memory().as_ref().and_then(|m| m.limit()),
        memsw_v1: false,
        pids: res.pids().as_ref().map(|p| p.limit()),
        cpu: res
            .cpu()
            .as_ref()
            .and_then(|c| match (c.quota(), c.period()) {
                (Some(quota), Some(period)) => Some(CpuQuota { quota, period }),
                _ => None,
            }),
    };
    cgroups::write_limits(&cgroups::detect(), &dirs, &limits, IfAbsent::Skip)?;
    Ok(dirs)
}

/// The cgroup every tool sandbox of `service` runs in: `sandboxes-<service>` inside the
/// cage's, limited to the service's sandbox totals (memory without swap on v2, pids), so what
/// the gateway starts counts against the cage and can never grow past its budget. Returns the
/// value the sandbox engine takes as its parent ([`cgroups::PARENT_ENV`]: absolute on v2,
/// relative to each hierarchy on v1). The directories lie inside the cage's, which `down`
/// removes with everything below them.
pub fn prepare_sandboxes(
    cage: &CageCgroup,
    service: &str,
    memory_total: u64,
    pids_total: i64,
) -> Result<String> {
    let name = format!("sandboxes-{service}");
    let dirs = make_children(cage, &name, None)?;
    let layout = cgroups::detect();
    let v2 = matches!(layout, Layout::Unified);
    if v2 {
        for d in &dirs {
            cgroups::enable_controllers(d)?;
        }
    }
    let limits = Limits {
        memory: Some(i64::try_from(memory_total).unwrap_or(i64::MAX)),
        memsw_v1: false,
        pids: Some(pids_total),
        cpu: None,
    };
    cgroups::write_limits(&layout, &dirs, &limits, IfAbsent::Skip)?;
    Ok(if v2 {
        dirs[0].to_string_lossy().into_owned()
    } else {
        cage.relative
            .join(&name)
            .strip_prefix("/")
            .unwrap_or(Path::new(&name))
            .to_string_lossy()
            .into_owned()
    })
}

/// The cgroup of a broker's sandboxes when it runs on its own (`cagerun broker`): a child
/// `broker-SERVICE-PID` of the caller's delegated parent (the one `cagerun exec` would use),
/// limited to the service's sandbox totals. None when no parent is available and writable (a
/// pod's container, usually): then each sandbox gets the sandbox engine's rlimits.
pub struct SidecarCgroup {
    /// The sandbox engine's parent ([`cgroups::PARENT_ENV`]: absolute on v2, relative to
    /// each hierarchy on v1).
    pub parent_env: String,
    /// Its directories, one per hierarchy, removed by [`remove`] once its sandboxes are gone.
    pub dirs: Vec<PathBuf>,
}

/// Make the directories of [`SidecarCgroup`] for `service`, or None (rlimits).
pub fn prepare_sidecar_sandboxes(
    service: &str,
    memory_total: u64,
    pids_total: i64,
) -> Result<Option<SidecarCgroup>> {
    let uid = nix::unistd::geteuid().as_raw();
    let Some(parent) = cgroups::find_parent(uid) else {
        return Ok(None);
    };
    let name = format!("broker-{service}-{}", std::process::id());
    let mut dirs = Vec::new();
    for d in &parent.dirs {
        let dir = d.join(&name);
        if let Err(e) = std::fs::create_dir(&dir) {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                cgroups::remove_tree(&dirs);
                return Err(e).with_context(|| format!("creating {}", dir.display()));
            }
        }
        dirs.push(dir);
    }
    let limits = Limits {
        memory: Some(i64::try_from(memory_total).unwrap_or(i64::MAX)),
        memsw_v1: false,
        pids: Some(pids_total),
        cpu: None,
    };
    let made = limit_sidecar_sandboxes(&parent.layout, &dirs, &limits);
    match made {
        Ok(parent_env) => Ok(Some(SidecarCgroup { parent_env, dirs })),
        Err(e) => {
            cgroups::remove_tree(&dirs);
            Err(e.context("limiting the broker's sandboxes to the service's totals"))
        }
    }
}

/// Write the totals into the broker's new directories; the sandbox engine's parent value.
fn limit_sidecar_sandboxes(layout: &Layout, dirs: &[PathBuf], limits: &Limits) -> Result<String> {
    match layout {
        Layout::Unified => {
            cgroups::enable_controllers(&dirs[0])?;
            cgroups::write_limits(layout, dirs, limits, IfAbsent::Fail)?;
            Ok(dirs[0].to_string_lossy().into_owned())
        }
        Layout::V1 { memory, .. } => {
            for d in dirs {
                cgroups::fill_cpuset(d)?;
            }
            cgroups::write_limits(layout, dirs, limits, IfAbsent::Fail)?;
            Ok(dirs[0].strip_prefix(memory)?.to_string_lossy().into_owned())
        }
        Layout::None => bail!("no cgroup hierarchy"),
    }
}

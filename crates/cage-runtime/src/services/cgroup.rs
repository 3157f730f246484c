//! The cage's cgroup: one directory per cage inside the subtree delegated to the user, in
//! every hierarchy libcontainer joins (on cgroup v1 that is every mounted controller, so
//! `setup-cgroups` delegates `cagerun/<uid>` in all of them), and one per service below it
//! (libcontainer makes and removes those).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cage_sandbox::cgroups::{self, Layout};

pub struct CageCgroup {
    /// The path libcontainer takes (`cgroupsPath`), relative to every hierarchy's root.
    pub relative: PathBuf,
    /// The directories made for the cage, one per hierarchy.
    pub dirs: Vec<PathBuf>,
}

/// The v1 hierarchies mounted here (real directories; `cpu` → `cpu,cpuacct` links skipped).
pub fn v1_hierarchies() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(cgroups::ROOT) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap_or_default().to_string_lossy();
            n != "unified" && n != "systemd" && p.join("cgroup.procs").exists()
        })
        .collect();
    dirs.sort();
    dirs
}

/// Copy a cpuset's cpus and mems from its parent: a new v1 cpuset is empty and takes no task.
pub fn fill_cpuset(dir: &Path) -> Result<()> {
    if !dir.join("cpuset.cpus").exists() {
        return Ok(());
    }
    for f in ["cpuset.cpus", "cpuset.mems"] {
        let cur = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        if cur.trim().is_empty() {
            let parent = dir.parent().context("cpuset without a parent")?;
            let v = std::fs::read_to_string(parent.join(f))?;
            std::fs::write(dir.join(f), v.trim())
                .with_context(|| format!("writing {}", dir.join(f).display()))?;
        }
    }
    Ok(())
}

/// Make the cage's directories. `owner`: the host uid/gid that is root in the cage's user
/// namespace, when it differs from the caller (as root) and must be able to write them.
pub fn prepare(cage_id: &str, owner: Option<(u32, u32)>) -> Result<CageCgroup> {
    let uid = nix::unistd::geteuid().as_raw();
    let name = crate::host::user_name(uid);
    match cgroups::detect() {
        Layout::V1 { .. } => {
            let rel = PathBuf::from(format!("cagerun/{uid}"));
            let mut dirs = Vec::new();
            for h in v1_hierarchies() {
                let parent = h.join(&rel);
                if !parent.is_dir() {
                    if uid == 0 {
                        std::fs::create_dir_all(&parent)
                            .with_context(|| format!("creating {}", parent.display()))?;
                        fill_cpuset(parent.parent().unwrap_or(&h))?;
                        fill_cpuset(&parent)?;
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
                fill_cpuset(&dir)?;
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
            std::fs::write(dir.join("cgroup.subtree_control"), "+memory +pids")
                .with_context(|| format!("enabling controllers in {}", dir.display()))?;
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
    for d in dirs {
        if let Ok(entries) = std::fs::read_dir(d) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    remove(&[e.path()]);
                }
            }
        }
        let _ = std::fs::remove_dir(d);
    }
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
        fill_cpuset(&dir)?;
        if let Some((u, g)) = owner {
            for f in ["", "cgroup.procs", "tasks"] {
                let _ = nix::unistd::chown(&dir.join(f), Some(u.into()), Some(g.into()));
            }
        }
        dirs.push(dir);
    }
    Ok(dirs)
}

/// Write `value` to `file` in each of `dirs` that has it (each hierarchy has its own files).
fn write_each(dirs: &[PathBuf], file: &str, value: &str) -> Result<()> {
    for dir in dirs {
        let p = dir.join(file);
        if p.exists() {
            std::fs::write(&p, value)
                .with_context(|| format!("writing {value} to {}", p.display()))?;
        }
    }
    Ok(())
}

/// A memory limit (without swap) and a pids limit, in the hierarchy's own words.
fn write_limits(dirs: &[PathBuf], memory: Option<i64>, pids: Option<i64>) -> Result<()> {
    let v2 = matches!(cgroups::detect(), Layout::Unified);
    if let Some(limit) = memory {
        if v2 {
            write_each(dirs, "memory.max", &limit.to_string())?;
            write_each(dirs, "memory.swap.max", "0")?;
        } else {
            write_each(dirs, "memory.limit_in_bytes", &limit.to_string())?;
        }
    }
    if let Some(p) = pids {
        write_each(dirs, "pids.max", &p.to_string())?;
    }
    Ok(())
}

/// Make a service's cgroup under the cage's and write the spec's limits into it, before
/// libcontainer moves the container in. libcontainer would write them itself, but with any
/// resources it also writes the v1 device controller, which only host root may do; so the
/// spec it gets carries none, and these are the spec's own values, written once here.
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
    write_limits(
        &dirs,
        res.memory().as_ref().and_then(|m| m.limit()),
        res.pids().as_ref().map(|p| p.limit()),
    )?;
    if let Some(cpu) = res.cpu() {
        if let (Some(q), Some(p)) = (cpu.quota(), cpu.period()) {
            if matches!(cgroups::detect(), Layout::Unified) {
                write_each(&dirs, "cpu.max", &format!("{q} {p}"))?;
            } else {
                write_each(&dirs, "cpu.cfs_period_us", &p.to_string())?;
                write_each(&dirs, "cpu.cfs_quota_us", &q.to_string())?;
            }
        }
    }
    Ok(dirs)
}

/// The cgroup every tool sandbox of `service` runs in: `sandboxes-<service>` inside the
/// cage's, limited to the service's sandbox totals (memory without swap, pids), so what the
/// gateway starts counts against the cage and can never grow past its budget. Returns the
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
    let v2 = matches!(cgroups::detect(), Layout::Unified);
    if v2 {
        write_each(&dirs, "cgroup.subtree_control", "+memory +pids")?;
    }
    write_limits(
        &dirs,
        Some(i64::try_from(memory_total).unwrap_or(i64::MAX)),
        Some(pids_total),
    )?;
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

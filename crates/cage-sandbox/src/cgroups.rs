//! cgroups: memory and pids limits for one sandbox, when a cgroup subtree is delegated to us.
//!
//! - cgroup v2: root uses `/sys/fs/cgroup/cagerun`; a user uses the nearest ancestor of its
//!   own cgroup that it owns and whose `cgroup.subtree_control` has `memory` and `pids`
//!   (systemd's `user@UID.service` delegation), or `$CAGERUN_CGROUP_PARENT`.
//! - cgroup v1 (and the hybrid layout): `<memory|pids mount>/cagerun/<uid>`, made once by
//!   root (`cagerun setup-cgroups --user NAME`), or `$CAGERUN_CGROUP_PARENT` (relative).
//!
//! Each sandbox gets a leaf `sbx-<pid>` that is removed when it ends; leaves of dead runs
//! are swept on the next. Without a delegated subtree the caller falls back to rlimits.

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use crate::error::{Result, SandboxError};

pub const ROOT: &str = "/sys/fs/cgroup";
pub const PARENT_ENV: &str = "CAGERUN_CGROUP_PARENT";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Pure cgroup v2 at /sys/fs/cgroup.
    Unified,
    /// v1 controllers mounted per hierarchy (legacy or hybrid).
    V1 {
        memory: PathBuf,
        pids: PathBuf,
    },
    None,
}

pub fn detect() -> Layout {
    if Path::new(ROOT).join("cgroup.controllers").exists() {
        return Layout::Unified;
    }
    let memory = Path::new(ROOT).join("memory");
    let pids = Path::new(ROOT).join("pids");
    if memory.join("memory.limit_in_bytes").exists() && pids.join("cgroup.procs").exists() {
        return Layout::V1 { memory, pids };
    }
    Layout::None
}

/// A delegated place to make leaves in: one dir for v2, one per controller for v1.
#[derive(Debug, Clone)]
pub struct Parent {
    pub layout: Layout,
    pub dirs: Vec<PathBuf>,
}

fn writable(dir: &Path) -> bool {
    nix::unistd::access(
        dir,
        nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
    )
    .is_ok()
        && nix::unistd::access(&dir.join("cgroup.procs"), nix::unistd::AccessFlags::W_OK).is_ok()
}

fn own_v2_cgroup() -> Option<PathBuf> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(Path::new(ROOT).join(rel.trim_start_matches('/')))
}

fn has_controllers(dir: &Path) -> bool {
    let text = fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    let words: Vec<&str> = text.split_whitespace().collect();
    words.contains(&"memory") && words.contains(&"pids")
}

/// Find the delegated parent for `uid`, or None (then: rlimits).
pub fn find_parent(uid: u32) -> Option<Parent> {
    let layout = detect();
    let env = std::env::var_os(PARENT_ENV).map(PathBuf::from);
    match &layout {
        Layout::None => None,
        Layout::Unified => {
            let dir = if let Some(p) = env {
                if p.is_absolute() {
                    p
                } else {
                    Path::new(ROOT).join(p)
                }
            } else if uid == 0 {
                let dir = Path::new(ROOT).join("cagerun");
                if !dir.exists() {
                    fs::create_dir(&dir).ok()?;
                }
                if !has_controllers(&dir) {
                    fs::write(dir.join("cgroup.subtree_control"), "+memory +pids").ok()?;
                }
                dir
            } else {
                let mut cur = own_v2_cgroup()?;
                loop {
                    let parent = cur.parent()?.to_path_buf();
                    if !parent.starts_with(ROOT) || parent == Path::new(ROOT) {
                        return None;
                    }
                    if has_controllers(&parent) && writable(&parent) {
                        break parent;
                    }
                    cur = parent;
                }
            };
            (has_controllers(&dir) && writable(&dir)).then(|| Parent {
                layout: layout.clone(),
                dirs: vec![dir],
            })
        }
        Layout::V1 { memory, pids } => {
            let rel = env.unwrap_or_else(|| PathBuf::from(format!("cagerun/{uid}")));
            let dirs = vec![memory.join(&rel), pids.join(&rel)];
            if uid == 0 {
                for d in &dirs {
                    fs::create_dir_all(d).ok()?;
                }
            }
            dirs.iter().all(|d| writable(d)).then(|| Parent {
                layout: layout.clone(),
                dirs,
            })
        }
    }
}

/// One sandbox's cgroup (a leaf in each hierarchy).
#[derive(Debug)]
pub struct Leaf {
    layout: Layout,
    dirs: Vec<PathBuf>,
}

fn write_file(path: &Path, value: &str, what: &'static str) -> Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|source| SandboxError::Cgroup {
            path: path.to_path_buf(),
            what,
            source,
        })
}

impl Leaf {
    pub fn create(parent: &Parent, memory: Option<u64>, pids: Option<u64>) -> Result<Leaf> {
        sweep(parent);
        let name = format!("sbx-{}", std::process::id());
        let dirs: Vec<PathBuf> = parent.dirs.iter().map(|d| d.join(&name)).collect();
        let leaf = Leaf {
            layout: parent.layout.clone(),
            dirs: Vec::new(),
        };
        let mut leaf = leaf;
        for d in &dirs {
            match fs::create_dir(d) {
                Ok(()) => leaf.dirs.push(d.clone()),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => leaf.dirs.push(d.clone()),
                Err(source) => {
                    return Err(SandboxError::Cgroup {
                        path: d.clone(),
                        what: "creating",
                        source,
                    })
                }
            }
        }
        match &leaf.layout {
            Layout::Unified => {
                let d = &leaf.dirs[0];
                if let Some(m) = memory {
                    write_file(&d.join("memory.max"), &m.to_string(), "setting memory.max")?;
                    if d.join("memory.swap.max").exists() {
                        write_file(&d.join("memory.swap.max"), "0", "setting memory.swap.max")?;
                    }
                }
                if let Some(p) = pids {
                    write_file(&d.join("pids.max"), &p.to_string(), "setting pids.max")?;
                }
            }
            Layout::V1 { .. } => {
                if let Some(m) = memory {
                    let d = &leaf.dirs[0];
                    write_file(
                        &d.join("memory.limit_in_bytes"),
                        &m.to_string(),
                        "setting memory.limit_in_bytes",
                    )?;
                    let memsw = d.join("memory.memsw.limit_in_bytes");
                    if memsw.exists() {
                        write_file(
                            &memsw,
                            &m.to_string(),
                            "setting memory.memsw.limit_in_bytes",
                        )?;
                    }
                }
                if let Some(p) = pids {
                    write_file(
                        &leaf.dirs[1].join("pids.max"),
                        &p.to_string(),
                        "setting pids.max",
                    )?;
                }
            }
            Layout::None => {}
        }
        Ok(leaf)
    }

    pub fn add(&self, pid: i32) -> Result<()> {
        for d in &self.dirs {
            write_file(&d.join("cgroup.procs"), &pid.to_string(), "joining")?;
        }
        Ok(())
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// How many times the memory limit was hit (v2 `memory.events` max, v1 failcnt).
    pub fn memory_pressure_events(&self) -> u64 {
        let read = |p: PathBuf| fs::read_to_string(p).unwrap_or_default();
        match &self.layout {
            Layout::Unified => read(self.dirs[0].join("memory.events"))
                .lines()
                .find_map(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|v| v.trim().parse().ok())
                })
                .unwrap_or(0),
            Layout::V1 { .. } => read(self.dirs[0].join("memory.failcnt"))
                .trim()
                .parse()
                .unwrap_or(0),
            Layout::None => 0,
        }
    }
}

impl Drop for Leaf {
    fn drop(&mut self) {
        for d in &self.dirs {
            // Processes of a dead pid namespace may take a moment to leave.
            for attempt in 0..200 {
                match fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == ErrorKind::NotFound => break,
                    Err(_) if attempt < 199 => {
                        std::thread::sleep(std::time::Duration::from_millis(1))
                    }
                    Err(e) => eprintln!(
                        "cagerun: warning: leaving cgroup {} behind: {e}",
                        d.display()
                    ),
                }
            }
        }
    }
}

/// Remove leaves whose cagerun process is gone (a run killed with SIGKILL cannot clean up).
fn sweep(parent: &Parent) {
    // Every hierarchy: a leaf removed from one but busy in another is found next time.
    let mut names = std::collections::BTreeSet::new();
    for d in &parent.dirs {
        for e in fs::read_dir(d).into_iter().flatten().flatten() {
            names.insert(e.file_name());
        }
    }
    for name in names {
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("sbx-"))
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if pid as u32 != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            for d in &parent.dirs {
                // Busy while the dead run's processes are still exiting: the next run retries.
                let _ = fs::remove_dir(d.join(&name));
            }
        }
    }
}

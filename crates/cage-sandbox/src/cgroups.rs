//! cgroups: the one place cagerun writes cgroup files (limits, the controllers a parent hands
//! down, a v1 cpuset's cpus and mems) and the one place that names the subtree delegated to a
//! user. The engine decides which directories a cage needs; this writes what goes in them.
//!
//! - **Delegated subtree** ([`delegated_v1`], [`root_v2`]):
//!   - cgroup v2: root uses `/sys/fs/cgroup/cagerun`; a user uses the nearest ancestor of its
//!     own cgroup that it owns and whose `cgroup.subtree_control` has `memory` and `pids`
//!     (systemd's `user@UID.service` delegation), or `$CAGERUN_CGROUP_PARENT`.
//!   - cgroup v1 (and the hybrid layout): `<hierarchy>/cagerun/<uid>` in every mounted
//!     hierarchy ([`v1_hierarchies`]), made once by root (`cagerun setup-cgroups --user
//!     NAME`), or `$CAGERUN_CGROUP_PARENT` (relative) for sandboxes.
//! - **Limits** ([`write_limits`], [`Limits`]): memory (v2 `memory.max` with
//!   `memory.swap.max` 0; v1 `memory.limit_in_bytes`, and `memory.memsw.limit_in_bytes` when
//!   asked), `pids.max`, CPU (v2 `cpu.max`; v1 `cpu.cfs_period_us`, `cpu.cfs_quota_us`).
//!   [`limit_files`] says which file gets which value, per layout.
//! - **Parents** ([`enable_controllers`]: v2 `cgroup.subtree_control` `+memory +pids`;
//!   [`fill_cpuset`]: a new v1 cpuset copies its parent's `cpuset.cpus` and `cpuset.mems`).
//! - **A delegated cgroup of one's own** ([`own_cgroup`], [`take_over`]): on v2, a unit with
//!   `Delegate=yes` (or the scope cagerun asks systemd for) that this process is alone in is
//!   made a parent: the process moves into a leaf, the cgroup hands its controllers down.
//! - **Sandboxes** ([`find_parent`], [`Leaf`]): each sandbox gets a leaf `sbx-<pid>` that is
//!   removed when it ends; leaves of dead runs are swept on the next. Without a delegated
//!   subtree the caller falls back to rlimits.

use std::fs;
use std::io::{ErrorKind, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::error::{Result, SandboxError};

pub const ROOT: &str = "/sys/fs/cgroup";
pub const PARENT_ENV: &str = "CAGERUN_CGROUP_PARENT";
/// The top of cagerun's subtree, in each hierarchy.
pub const SUBTREE: &str = "cagerun";

/// The subtree delegated to `uid` on cgroup v1, relative to each hierarchy: `cagerun/<uid>`.
pub fn delegated_v1(uid: u32) -> PathBuf {
    Path::new(SUBTREE).join(uid.to_string())
}

/// Root's parent on cgroup v2: `/sys/fs/cgroup/cagerun`.
pub fn root_v2() -> PathBuf {
    Path::new(ROOT).join(SUBTREE)
}

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

/// The v1 hierarchies mounted here (real directories; `cpu` → `cpu,cpuacct` links skipped),
/// sorted.
pub fn v1_hierarchies() -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(ROOT) else {
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

/// This process's cgroup on v2 (`/sys/fs/cgroup/...`), from /proc/self/cgroup.
pub fn own_v2_cgroup() -> Option<PathBuf> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(Path::new(ROOT).join(rel.trim_start_matches('/')))
}

fn has_controllers(dir: &Path) -> bool {
    let text = fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    let words: Vec<&str> = text.split_whitespace().collect();
    words.contains(&"memory") && words.contains(&"pids")
}

/// This process's own v2 cgroup as a place to divide: is it delegated to us (a unit with
/// `Delegate=yes`, or the scope cagerun asked systemd for)?
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnCgroup {
    pub path: PathBuf,
    /// It and its `cgroup.procs` and `cgroup.subtree_control` belong to `uid` and are writable.
    pub owned: bool,
    /// No process but this one is in it (its children would be left behind in the cgroup
    /// that gets controllers enabled, which v2 refuses).
    pub alone: bool,
    /// Its parent hands it the memory and pids controllers (`cgroup.controllers`).
    pub controllers: bool,
}

/// Look at this process's own v2 cgroup (None: not v2, or not found).
pub fn own_cgroup(uid: u32) -> Option<OwnCgroup> {
    use std::os::unix::fs::MetadataExt;
    let path = own_v2_cgroup()?;
    if path == Path::new(ROOT) {
        return None;
    }
    let mine = |p: &Path| fs::metadata(p).is_ok_and(|m| m.uid() == uid);
    let owned = mine(&path)
        && mine(&path.join("cgroup.procs"))
        && mine(&path.join("cgroup.subtree_control"))
        && writable(&path)
        && nix::unistd::access(
            &path.join("cgroup.subtree_control"),
            nix::unistd::AccessFlags::W_OK,
        )
        .is_ok();
    let me = std::process::id().to_string();
    let procs = fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default();
    let alone = procs.lines().all(|l| l.trim() == me) && procs.lines().any(|l| l.trim() == me);
    let available = fs::read_to_string(path.join("cgroup.controllers")).unwrap_or_default();
    let words: Vec<&str> = available.split_whitespace().collect();
    let controllers = words.contains(&"memory") && words.contains(&"pids");
    Some(OwnCgroup {
        path,
        owned,
        alone,
        controllers,
    })
}

/// Make a delegated cgroup `dir` this process is alone in a parent: move the process into
/// the leaf `dir/<leaf>` (v2 lets only a cgroup without processes hand controllers down), then
/// give `dir`'s children memory, pids and, where delegated, cpu. What the process starts
/// from now on starts in the leaf.
pub fn take_over(dir: &Path, leaf: &str) -> Result<()> {
    let leaf_dir = dir.join(leaf);
    match fs::create_dir(&leaf_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(SandboxError::Cgroup {
                path: leaf_dir,
                what: "creating",
                source,
            })
        }
    }
    write_file(
        &leaf_dir.join("cgroup.procs"),
        &std::process::id().to_string(),
        "moving this process into",
    )?;
    let available = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let mut enable = String::from("+memory +pids");
    if available.split_whitespace().any(|c| c == "cpu") {
        enable.push_str(" +cpu");
    }
    write_file(
        &dir.join("cgroup.subtree_control"),
        &enable,
        "enabling the memory, pids and cpu controllers",
    )
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
                let dir = root_v2();
                if !dir.exists() {
                    fs::create_dir(&dir).ok()?;
                }
                if !has_controllers(&dir) {
                    enable_controllers(&dir).ok()?;
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
            let rel = env.unwrap_or_else(|| delegated_v1(uid));
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

/// Where the sandboxes' pid 1s live under a delegated parent: beside the sandboxes'
/// leaves, with no limits of its own (pid 1 only reaps and forwards signals), made once and
/// kept. Not the caller's own cgroup: a sandbox reads pid 1's cgroup in /proc/1/cgroup,
/// relative to its own, and sees `/../pid1`, nothing of the host's tree.
pub const PID1_GROUP: &str = "pid1";

/// [`PID1_GROUP`] under `parent`, made if missing: each hierarchy's directory.
pub fn pid1_group(parent: &Parent) -> Result<Vec<PathBuf>> {
    parent
        .dirs
        .iter()
        .map(|d| {
            let dir = d.join(PID1_GROUP);
            match fs::create_dir(&dir) {
                Ok(()) => Ok(dir),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(dir),
                Err(source) => Err(SandboxError::Cgroup {
                    path: dir,
                    what: "creating",
                    source,
                }),
            }
        })
        .collect()
}

/// Move `pid` into the cgroup `dirs` name (one per hierarchy).
pub fn add(dirs: &[PathBuf], pid: i32) -> Result<()> {
    for d in dirs {
        write_file(&d.join("cgroup.procs"), &pid.to_string(), "joining")?;
    }
    Ok(())
}

/// A cgroup v2 directory, for clone3's CLONE_INTO_CGROUP.
pub fn open_dir(dir: &Path) -> Result<std::os::fd::OwnedFd> {
    fs::File::open(dir)
        .map(std::os::fd::OwnedFd::from)
        .map_err(|source| SandboxError::Cgroup {
            path: dir.to_path_buf(),
            what: "opening",
            source,
        })
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
        // A sandbox's memory is its memory: no swap on either layout.
        let limits = Limits {
            memory: memory.map(clamp),
            memsw_v1: true,
            pids: pids.map(clamp),
            cpu: None,
        };
        write_limits(&leaf.layout, &leaf.dirs, &limits, IfAbsent::Fail)?;
        Ok(leaf)
    }

    pub fn add(&self, pid: i32) -> Result<()> {
        add(&self.dirs, pid)
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The leaf's directory (cgroup v2: the one hierarchy), for clone3's CLONE_INTO_CGROUP.
    pub fn open_dir(&self) -> Result<std::os::fd::OwnedFd> {
        open_dir(&self.dirs[0])
    }

    /// Each hierarchy's `cgroup.procs`, open for writing: a process that writes `0` to them
    /// moves itself in. The write is checked against the credentials of this opener (the
    /// leaf's owner), so the sandbox's command may use them after taking its identity.
    pub fn open_procs(&self) -> Result<Vec<std::os::fd::OwnedFd>> {
        self.dirs
            .iter()
            .map(|d| {
                let path = d.join("cgroup.procs");
                fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map(std::os::fd::OwnedFd::from)
                    .map_err(|source| SandboxError::Cgroup {
                        path,
                        what: "opening",
                        source,
                    })
            })
            .collect()
    }

    /// Remove the leaf now if no process is in it (one try per hierarchy, no waiting);
    /// whether it is gone. What stays is left to [`Drop`], which waits for it.
    pub fn try_remove(&mut self) -> bool {
        self.dirs.retain(|d| match fs::remove_dir(d) {
            Ok(()) => false,
            Err(e) => e.kind() != ErrorKind::NotFound,
        });
        self.dirs.is_empty()
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

/// A limit as the kernel reads it (values past `i64::MAX` mean no limit, which it is).
fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Limits for one cgroup, written by [`write_limits`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of memory: v2 `memory.max` (and then `memory.swap.max` 0, where the kernel
    /// accounts swap); v1 `memory.limit_in_bytes`.
    pub memory: Option<i64>,
    /// v1: memory plus swap held at `memory` as well (`memory.memsw.limit_in_bytes`, where the
    /// kernel accounts swap). Sandboxes' leaves ask it; services' cgroups and the sandboxes'
    /// parent have never written it.
    pub memsw_v1: bool,
    /// Processes: `pids.max`.
    pub pids: Option<i64>,
    /// CFS bandwidth: v2 `cpu.max` "QUOTA PERIOD"; v1 `cpu.cfs_period_us`, `cpu.cfs_quota_us`.
    pub cpu: Option<CpuQuota>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuQuota {
    pub quota: i64,
    pub period: u64,
}

/// One file [`write_limits`] writes: its name, the value, and whether it is the limit itself
/// (which a cgroup of that controller always has) or a companion only some kernels have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitFile {
    pub name: &'static str,
    pub value: String,
    pub required: bool,
    what: &'static str,
}

/// A [`LimitFile`] named by a literal; errors say "setting NAME".
macro_rules! limit_file {
    ($name:literal, $value:expr, $required:expr) => {
        LimitFile {
            name: $name,
            value: $value,
            required: $required,
            what: concat!("setting ", $name),
        }
    };
}

/// The files `limits` puts on `layout`, in the order they are written (on v1 the memory limit
/// comes before memory+swap, which may not be below it; the period before the quota).
pub fn limit_files(layout: &Layout, limits: &Limits) -> Vec<LimitFile> {
    let mut out = Vec::new();
    match layout {
        Layout::Unified => {
            if let Some(m) = limits.memory {
                out.push(limit_file!("memory.max", m.to_string(), true));
                out.push(limit_file!("memory.swap.max", "0".into(), false));
            }
            if let Some(p) = limits.pids {
                out.push(limit_file!("pids.max", p.to_string(), true));
            }
            if let Some(c) = limits.cpu {
                out.push(limit_file!(
                    "cpu.max",
                    format!("{} {}", c.quota, c.period),
                    false
                ));
            }
        }
        Layout::V1 { .. } => {
            if let Some(m) = limits.memory {
                out.push(limit_file!("memory.limit_in_bytes", m.to_string(), true));
                if limits.memsw_v1 {
                    out.push(limit_file!(
                        "memory.memsw.limit_in_bytes",
                        m.to_string(),
                        false
                    ));
                }
            }
            if let Some(p) = limits.pids {
                out.push(limit_file!("pids.max", p.to_string(), true));
            }
            if let Some(c) = limits.cpu {
                out.push(limit_file!(
                    "cpu.cfs_period_us",
                    c.period.to_string(),
                    false
                ));
                out.push(limit_file!("cpu.cfs_quota_us", c.quota.to_string(), false));
            }
        }
        Layout::None => {}
    }
    out
}

/// What a limit file that none of the directories has means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfAbsent {
    /// An error, when it is the limit itself ([`LimitFile::required`]): the sandboxes' leaves.
    Fail,
    /// Nothing: the services' cgroups (each hierarchy has its own files; `cpu.max` only where
    /// the cpu controller is enabled).
    Skip,
}

/// Write `limits` into `dirs` (one per hierarchy on v1, one on v2): each file into every
/// directory that has it.
pub fn write_limits(
    layout: &Layout,
    dirs: &[PathBuf],
    limits: &Limits,
    if_absent: IfAbsent,
) -> Result<()> {
    for f in limit_files(layout, limits) {
        let mut written = false;
        for d in dirs {
            let path = d.join(f.name);
            if path.exists() {
                write_file(&path, &f.value, f.what)?;
                written = true;
            }
        }
        if !written && f.required && if_absent == IfAbsent::Fail {
            let path = dirs.first().map(|d| d.join(f.name)).unwrap_or_default();
            return Err(SandboxError::Cgroup {
                path,
                what: f.what,
                source: std::io::Error::from(ErrorKind::NotFound),
            });
        }
    }
    Ok(())
}

/// cgroup v2: let `dir`'s children have the memory and pids controllers.
pub fn enable_controllers(dir: &Path) -> Result<()> {
    write_file(
        &dir.join("cgroup.subtree_control"),
        "+memory +pids",
        "enabling the memory and pids controllers",
    )
}

/// cgroup v1: give a cpuset its parent's cpus and mems where it has none (a new cpuset is
/// empty and takes no task). Nothing where `dir` is not a cpuset.
pub fn fill_cpuset(dir: &Path) -> Result<()> {
    if !dir.join("cpuset.cpus").exists() {
        return Ok(());
    }
    for f in ["cpuset.cpus", "cpuset.mems"] {
        let cur = fs::read_to_string(dir.join(f)).unwrap_or_default();
        if cur.trim().is_empty() {
            let parent = dir.parent().ok_or_else(|| SandboxError::Cgroup {
                path: dir.to_path_buf(),
                what: "a cpuset without a parent",
                source: std::io::Error::from(ErrorKind::InvalidInput),
            })?;
            let v = fs::read_to_string(parent.join(f)).map_err(|source| SandboxError::Cgroup {
                path: parent.join(f),
                what: "reading the parent's cpuset",
                source,
            })?;
            write_file(&dir.join(f), v.trim(), "copying the parent's cpuset")?;
        }
    }
    Ok(())
}

/// The cgroup2 mount (pure v2 at [`ROOT`], or the hybrid layout's `unified`) and its
/// superblock options, as /proc/self/mountinfo gives them.
pub fn cgroup2_mount() -> Option<(PathBuf, Vec<String>)> {
    cgroup2_mount_in(&fs::read_to_string("/proc/self/mountinfo").ok()?)
}

fn cgroup2_mount_in(info: &str) -> Option<(PathBuf, Vec<String>)> {
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut r = right.split(' ');
        if r.next()? != "cgroup2" {
            return None;
        }
        let super_opts = r.nth(1)?;
        let point = left.split(' ').nth(4)?;
        Some((
            PathBuf::from(point),
            super_opts
                .split(',')
                .filter(|o| *o != "rw" && *o != "ro")
                .map(str::to_owned)
                .collect(),
        ))
    })
}

/// The flag that makes moving a process between cgroups cheap (Linux 6.0+, global).
pub const FAVOR_DYNMODS: &str = "favordynmods";

/// Turn on `favordynmods` on the cgroup2 superblock at `point`, keeping its other options
/// (a reconfiguration resets every flag it is not given). Without it, each move of a process
/// into a cgroup (`cgroup.procs`) waits for an RCU grace period; with it, forks and exits
/// take a slightly slower path instead. The flag is global to the kernel: it covers the v1
/// hierarchies too. Only the superblock changes (fspick + fsconfig), never the mount's flags.
pub fn favor_dynamic_moves(point: &Path, options: &[String]) -> Result<()> {
    use rustix::mount::{fsconfig_reconfigure, fsconfig_set_flag, fspick, FsPickFlags};
    let fail = |e: rustix::io::Errno| SandboxError::Cgroup {
        path: point.to_path_buf(),
        what: "reconfiguring (favordynmods)",
        source: e.into(),
    };
    let fs = fspick(rustix::fs::CWD, point, FsPickFlags::FSPICK_CLOEXEC).map_err(fail)?;
    for flag in options.iter().map(String::as_str).chain([FAVOR_DYNMODS]) {
        fsconfig_set_flag(fs.as_fd(), flag).map_err(fail)?;
    }
    fsconfig_reconfigure(fs.as_fd()).map_err(fail)
}

/// Remove cgroup directories deepest first (each one's children, then itself); each must be
/// empty of processes by now (one still busy gets 200 ms). What cannot be removed stays.
pub fn remove_tree(dirs: &[PathBuf]) {
    for d in dirs {
        if let Ok(entries) = fs::read_dir(d) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    remove_tree(&[e.path()]);
                }
            }
        }
        // A process killed a moment ago may still be leaving (EBUSY): give it a little time.
        for _ in 0..100 {
            match fs::remove_dir(d) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(2))
                }
                _ => break,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn v1() -> Layout {
        Layout::V1 {
            memory: PathBuf::from("/sys/fs/cgroup/memory"),
            pids: PathBuf::from("/sys/fs/cgroup/pids"),
        }
    }

    fn names(files: &[LimitFile]) -> Vec<(&str, &str, bool)> {
        files
            .iter()
            .map(|f| (f.name, f.value.as_str(), f.required))
            .collect()
    }

    #[test]
    fn the_cgroup2_mount_and_its_superblock_options() {
        let hybrid = "31 24 0:27 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,nosuid,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            cgroup2_mount_in(hybrid),
            Some((
                PathBuf::from("/sys/fs/cgroup/unified"),
                vec!["nsdelegate".to_string()]
            ))
        );
        let v2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n";
        assert_eq!(
            cgroup2_mount_in(v2).unwrap().1,
            ["nsdelegate", "memory_recursiveprot"]
        );
        assert_eq!(
            cgroup2_mount_in("36 31 0:32 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n"),
            None
        );
    }

    #[test]
    fn the_delegated_subtree() {
        assert_eq!(delegated_v1(1001), PathBuf::from("cagerun/1001"));
        assert_eq!(root_v2(), PathBuf::from("/sys/fs/cgroup/cagerun"));
    }

    #[test]
    fn limit_files_per_layout() {
        let all = Limits {
            memory: Some(1 << 30),
            memsw_v1: true,
            pids: Some(256),
            cpu: Some(CpuQuota {
                quota: 50_000,
                period: 100_000,
            }),
        };
        assert_eq!(
            names(&limit_files(&Layout::Unified, &all)),
            [
                ("memory.max", "1073741824", true),
                ("memory.swap.max", "0", false),
                ("pids.max", "256", true),
                ("cpu.max", "50000 100000", false),
            ]
        );
        assert_eq!(
            names(&limit_files(&v1(), &all)),
            [
                ("memory.limit_in_bytes", "1073741824", true),
                ("memory.memsw.limit_in_bytes", "1073741824", false),
                ("pids.max", "256", true),
                ("cpu.cfs_period_us", "100000", false),
                ("cpu.cfs_quota_us", "50000", false),
            ]
        );
        // Services' cgroups: no memsw on v1; v2 is the same either way.
        let services = Limits {
            memsw_v1: false,
            ..all.clone()
        };
        assert!(!names(&limit_files(&v1(), &services))
            .iter()
            .any(|f| f.0.contains("memsw")));
        assert_eq!(
            limit_files(&Layout::Unified, &services),
            limit_files(&Layout::Unified, &all)
        );
        // Only what is asked; nothing without controllers.
        let pids_only = Limits {
            pids: Some(8),
            ..Limits::default()
        };
        assert_eq!(
            names(&limit_files(&Layout::Unified, &pids_only)),
            [("pids.max", "8", true)]
        );
        assert!(limit_files(&Layout::None, &all).is_empty());
    }

    #[test]
    fn each_file_goes_where_it_is() {
        let base = std::env::temp_dir().join(format!("cage-sandbox-cg-{}", std::process::id()));
        let (memory, pids) = (base.join("memory"), base.join("pids"));
        fs::create_dir_all(&memory).unwrap();
        fs::create_dir_all(&pids).unwrap();
        for f in ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"] {
            fs::write(memory.join(f), "").unwrap();
        }
        fs::write(pids.join("pids.max"), "").unwrap();
        let dirs = [memory.clone(), pids.clone()];
        let limits = Limits {
            memory: Some(4096),
            memsw_v1: true,
            pids: Some(16),
            cpu: Some(CpuQuota {
                quota: 1,
                period: 2,
            }),
        };
        write_limits(&v1(), &dirs, &limits, IfAbsent::Fail).unwrap();
        let read = |p: PathBuf| fs::read_to_string(p).unwrap();
        assert_eq!(read(memory.join("memory.limit_in_bytes")), "4096");
        assert_eq!(read(memory.join("memory.memsw.limit_in_bytes")), "4096");
        assert_eq!(read(pids.join("pids.max")), "16");
        // Absent companions (cpu here) are skipped; nothing is created.
        assert!(!memory.join("cpu.cfs_quota_us").exists());
        assert!(!pids.join("memory.limit_in_bytes").exists());
        // The limit itself absent: an error for sandboxes, nothing for services.
        fs::remove_file(pids.join("pids.max")).unwrap();
        assert!(write_limits(&v1(), &dirs, &limits, IfAbsent::Fail).is_err());
        write_limits(&v1(), &dirs, &limits, IfAbsent::Skip).unwrap();
        remove_tree(std::slice::from_ref(&base));
        let _ = fs::remove_dir_all(&base);
    }

    #[test]
    fn a_cpuset_gets_its_parents_cpus_and_mems() {
        let base = std::env::temp_dir().join(format!("cage-sandbox-cs-{}", std::process::id()));
        let child = base.join("child");
        fs::create_dir_all(&child).unwrap();
        fs::write(base.join("cpuset.cpus"), "0-3\n").unwrap();
        fs::write(base.join("cpuset.mems"), "0\n").unwrap();
        fs::write(child.join("cpuset.cpus"), "\n").unwrap();
        fs::write(child.join("cpuset.mems"), "1").unwrap();
        fill_cpuset(&child).unwrap();
        assert_eq!(
            fs::read_to_string(child.join("cpuset.cpus")).unwrap(),
            "0-3"
        );
        // Not empty: kept.
        assert_eq!(fs::read_to_string(child.join("cpuset.mems")).unwrap(), "1");
        // Not a cpuset: nothing.
        fill_cpuset(&base.join("nothing")).unwrap();
        fs::remove_dir_all(&base).unwrap();
    }
}

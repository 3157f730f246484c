//! Where a running cage keeps its state, and how a cage is named: the runtime directory
//! (`$XDG_RUNTIME_DIR/cagerun/<cage>/`, `/run/cagerun/<cage>/` as root) holds the control
//! socket, the supervisor's pid, the rendered bundles, libcontainer's state and the hosts
//! files; `<cage dir>/.cagerun/` keeps what must outlive a run (logs, volumes).

use std::hash::{Hash, Hasher};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub struct CagePaths {
    /// `<name>-<hash of the cage's directory>`: two cages with the same directory name differ.
    pub id: String,
    pub cage_dir: PathBuf,
    pub config: PathBuf,
    pub runtime: PathBuf,
    pub seed: u64,
}

pub fn runtime_base() -> PathBuf {
    let uid = nix::unistd::geteuid().as_raw();
    if uid == 0 {
        return PathBuf::from("/run/cagerun");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("cagerun"),
        // No login session (su, cron): a private directory under /tmp.
        _ => std::env::temp_dir().join(format!("cagerun-{uid}")),
    }
}

fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(32)
        .collect();
    if s.is_empty() {
        "cage".into()
    } else {
        s
    }
}

impl CagePaths {
    pub fn new(config: &Path, name: Option<&str>) -> Result<Self> {
        let config = std::fs::canonicalize(config).with_context(|| {
            format!(
                "{} is missing (run cagerun in the cage's directory, or pass --config)",
                config.display()
            )
        })?;
        let cage_dir = crate::config::cage_dir(&config);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        cage_dir.hash(&mut h);
        let seed = h.finish();
        let base = name
            .map(str::to_string)
            .or_else(|| {
                cage_dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .unwrap_or_default();
        let id = format!("{}-{:08x}", sanitize(&base), seed as u32);
        let runtime = runtime_base().join(&id);
        Ok(CagePaths {
            id,
            cage_dir,
            config,
            runtime,
            seed,
        })
    }

    /// The paths of the running (or stale) cage `id` found in this user's runtime
    /// directory, from its record: no config is read, so this works after the cage's
    /// directory was moved or deleted.
    pub fn of_running(id: &str) -> Option<CagePaths> {
        let runtime = runtime_base().join(id);
        let record: Record =
            serde_json::from_str(&std::fs::read_to_string(runtime.join("record.json")).ok()?)
                .ok()?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        record.directory.hash(&mut h);
        Some(CagePaths {
            id: id.to_string(),
            cage_dir: record.directory,
            config: record.config,
            runtime,
            seed: h.finish(),
        })
    }

    /// The paths of cage `id` with nothing but its runtime directory known (a directory
    /// without a record).
    pub fn runtime_of(id: &str) -> CagePaths {
        CagePaths {
            id: id.to_string(),
            cage_dir: PathBuf::new(),
            config: PathBuf::new(),
            runtime: runtime_base().join(id),
            seed: 0,
        }
    }

    /// The ids of this user's cages that have a runtime directory (running, or stale).
    pub fn running_ids() -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(runtime_base())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        ids
    }

    pub fn control_socket(&self) -> PathBuf {
        self.runtime.join("control.sock")
    }
    pub fn containers(&self) -> PathBuf {
        self.runtime.join("containers")
    }
    pub fn service_dir(&self, svc: &str) -> PathBuf {
        self.runtime.join("services").join(svc)
    }
    pub fn logs(&self) -> PathBuf {
        self.cage_dir.join(".cagerun/logs")
    }
    pub fn log(&self, svc: &str) -> PathBuf {
        self.logs().join(format!("{svc}.log"))
    }
    /// Unpacked images of the cage's services (`rootfs/NAME`).
    pub fn rootfs(&self) -> PathBuf {
        self.cage_dir.join("rootfs")
    }
    pub fn volumes(&self) -> PathBuf {
        self.cage_dir.join(cage_spec::service::VOLUMES_DIR)
    }
    pub fn record(&self) -> PathBuf {
        self.runtime.join("record.json")
    }

    pub fn create_runtime(&self) -> Result<()> {
        let base = self.runtime.parent().unwrap_or(Path::new("/"));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(base)
            .with_context(|| format!("creating {}", base.display()))?;
        // As root, the cages' own roots (subordinate ids) must pass through to their
        // directory: search only, no listing.
        let mode = if nix::unistd::geteuid().is_root() {
            0o711
        } else {
            0o700
        };
        std::fs::set_permissions(base, std::fs::Permissions::from_mode(mode)).ok();
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&self.runtime)
            .with_context(|| format!("creating {}", self.runtime.display()))?;
        // Others must traverse to the hosts files and bundles only as the cage's own ids:
        // the directory is the caller's and private.
        std::fs::create_dir_all(self.logs())
            .with_context(|| format!("creating {}", self.logs().display()))?;
        Ok(())
    }

    /// Subnets of the other cages of this user that are running now.
    pub fn taken_subnets(&self) -> Vec<u8> {
        let Ok(dir) = std::fs::read_dir(runtime_base()) else {
            return Vec::new();
        };
        dir.flatten()
            .filter(|e| e.path() != self.runtime)
            .filter_map(|e| std::fs::read_to_string(e.path().join("record.json")).ok())
            .filter_map(|t| serde_json::from_str::<Record>(&t).ok())
            .filter(|r| r.supervisor.alive())
            .map(|r| r.subnet)
            .collect()
    }
}

/// Seconds since the epoch, now.
pub fn unix_now() -> u64 {
    unix_now_ms() / 1000
}

/// Milliseconds since the epoch, now.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// A process this cage started, named by pid and start time (so a reused pid is never
/// mistaken for ours).
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    pub start: u64,
}

impl Proc {
    pub fn of(pid: i32) -> Option<Proc> {
        stat(pid).map(|(_, start)| Proc { pid, start })
    }
    /// Running (a zombie, waiting for its parent to reap it, is not).
    pub fn alive(&self) -> bool {
        matches!(stat(self.pid), Some((state, start)) if start == self.start && state != 'Z')
    }
    pub fn kill(&self) {
        if self.alive() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Fields 3 (state) and 22 (start time, clock ticks after boot) of /proc/PID/stat.
fn stat(pid: i32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat[stat.rfind(')')? + 2..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.nth(18)?.parse().ok()?))
}

/// What a supervisor leaves on disk so that `down` (or the next `up`) can clean up after it
/// even when it was killed.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, Default)]
pub struct Record {
    pub supervisor: Proc,
    pub subnet: u8,
    pub holder: Option<Proc>,
    pub monitors: Vec<Proc>,
    pub containers: Vec<Proc>,
    /// Every cgroup directory made for the cage (removed deepest first).
    pub cgroups: Vec<PathBuf>,
    /// Internet mode's uplink: slirp4netns (rootless), or the host veth and nft table (root).
    #[serde(default)]
    pub uplink: Option<Proc>,
    /// The egress proxy (`internet = [...]` lists).
    #[serde(default)]
    pub egress: Option<Proc>,
    #[serde(default)]
    pub host_uplink: Option<(String, String)>,
    /// The cage's config and directory as they were at `up`: `ls` shows them, and `down
    /// NAME` finds the cage by its runtime directory alone (they may be gone since).
    #[serde(default)]
    pub config: PathBuf,
    #[serde(default)]
    pub directory: PathBuf,
    /// Unix time the supervisor started (0: an older cagerun's record).
    #[serde(default)]
    pub started: u64,
}

impl Record {
    pub fn save(&self, paths: &CagePaths) -> Result<()> {
        let tmp = paths.runtime.join(".record.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(self)?)?;
        std::fs::rename(&tmp, paths.record())?;
        Ok(())
    }
    pub fn load(paths: &CagePaths) -> Option<Record> {
        serde_json::from_str(&std::fs::read_to_string(paths.record()).ok()?).ok()
    }
}

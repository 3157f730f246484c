//! What the verbs print with `--json`, typed once. The field names are a promise to scripts
//! (docs/json.md lists them): add fields, never rename or remove one. `ps --json` prints
//! [`crate::proto::Status`] and `internet --json` [`crate::proto::InternetStatus`], the
//! control socket's own types, which keep their shape for the same reason.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::proto::Status;

/// One running cage of this user, as `ls` lists it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CageListing {
    /// The cage's id (`<name>-<hash>`): what `down NAME` takes.
    pub name: String,
    /// The cage's directory (holds config/), as it was when the cage went up.
    pub directory: PathBuf,
    /// False when the directory was moved or deleted while the cage runs.
    pub directory_exists: bool,
    pub supervisor_pid: i32,
    /// Unix time the supervisor started (None for a cage started by an older cagerun).
    pub started: Option<u64>,
    /// Seconds since `started`.
    pub uptime_secs: Option<u64>,
    /// The services the supervisor runs, in start order (empty if it did not answer).
    pub services: Vec<String>,
    /// How many of them run now.
    pub running: usize,
}

/// A cage found in the runtime directory whose supervisor is gone: not listed, reported.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StaleCage {
    pub name: String,
    pub directory: PathBuf,
}

/// One image in the store, as `images --json` prints it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ImageView {
    pub name: String,
    /// Where it came from (`oci:/path:tag`, `registry/name:tag`).
    pub source: String,
    /// The manifest's digest (`sha256:...`).
    pub digest: String,
    /// The image config's digest.
    pub config: String,
    pub layers: usize,
    /// Bytes of all its blobs.
    pub size: u64,
    /// Unix time it entered the store.
    pub created: u64,
}

/// A service's resolved settings and, while the cage runs, its live state: `inspect`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ServiceInspect {
    pub service: String,
    /// The cage's id.
    pub cage: String,
    pub root: RootView,
    /// argv as the service runs it (the image's command when cage.toml names none), without
    /// cagerun's init in front.
    pub command: Vec<String>,
    pub user: UserView,
    pub workdir: String,
    /// Names of the environment variables it gets (values are not shown: tokens live there).
    pub env: Vec<String>,
    pub mounts: Vec<MountView>,
    pub ports: Vec<PortView>,
    pub resources: ResourcesView,
    /// `internet = true`: it may use the cage's uplink while internet mode is on.
    pub internet: bool,
    /// `internet = [...]`: what it may reach by name while internet mode is on (as cage.toml
    /// says; `cagerun internet` shows the live list). None without a list.
    pub internet_list: Option<Vec<String>>,
    /// `no`, `on-failure` or `always`.
    pub restart: String,
    pub depends_on: Vec<String>,
    pub healthcheck: Option<HealthcheckView>,
    /// It has tool sandboxes (a `docker`/`podman` shim and a broker).
    pub sandboxes: bool,
    /// Live state; None when the cage is not up.
    pub state: Option<Status>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RootView {
    /// `image`, `rootfs` or `host`.
    pub kind: String,
    /// The image reference or the rootfs directory (empty for `host`).
    pub source: String,
    /// The directory it runs from (absent for `host`, whose root is assembled from binds).
    pub path: Option<PathBuf>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserView {
    pub uid: u32,
    pub gid: u32,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MountView {
    /// `bind`, `volume` or `tmpfs`.
    pub kind: String,
    /// The host path (a volume's directory; empty for tmpfs).
    pub source: PathBuf,
    pub destination: String,
    pub read_only: bool,
    /// A tmpfs's size in bytes.
    pub size: Option<u64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PortView {
    pub host_address: String,
    pub host_port: u16,
    pub container_port: u16,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ResourcesView {
    /// Bytes.
    pub memory: Option<i64>,
    pub pids: Option<i64>,
    pub cpus: Option<f64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct HealthcheckView {
    /// `http` or `command`.
    pub kind: String,
    /// `:PORT/PATH` or the command's argv joined by spaces.
    pub probe: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub retries: u32,
    pub start_period_ms: u64,
    pub start_interval_ms: u64,
}

/// A Unix time as RFC 3339 in UTC to the second (`2026-12-01T23:02:15Z`): docker's
/// `Created`, the OCI runtime's log lines.
pub fn rfc3339_utc(secs: i64) -> String {
    let (y, m, d, h, mi, sec) = civil_utc(secs);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{sec:02}Z")
}

/// A Unix time in UTC as (year, month, day, hour, minute, second), for the times views
/// print (docker's `Created`, the egress log's table).
pub fn civil_utc(secs: i64) -> (i64, i64, i64, i64, i64, i64) {
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

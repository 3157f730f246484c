//! `config/cage.toml`: the services of a cage, validated into a [`Cage`] with errors that
//! name the file, line and key and say what is allowed.
//!
//! Hardened defaults (read-only root, no capabilities, no_new_privs, the default seccomp
//! profile, masked paths) are not settings here: a service can only name an opt-out.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use crate::egress::{Internet, Rule};
use crate::size::parse_size;
use std::net::SocketAddrV4;

pub use crate::error::CageError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CageFile {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    services: BTreeMap<String, Spanned<ServiceFile>>,
    /// Secrets `up` creates in the cage's `.env` when missing (32 random bytes, hex).
    #[serde(default)]
    generate: Vec<String>,
    /// A line `up` prints once the cage is up (e.g. the dashboard URL with its token).
    dashboard: Option<String>,
    models: Option<Spanned<ModelsFile>>,
    /// Upstream resolvers of cagerun's egress resolver ("ADDR" or "ADDR:PORT"); default: the
    /// host's (its resolv.conf).
    #[serde(default)]
    dns: Vec<Spanned<String>>,
}

/// `internet = true | false | ["name", ...]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum InternetFile {
    Switch(bool),
    List(Vec<String>),
}

/// Ollama models `up` pulls into a named volume before any service starts (so the model
/// server itself never needs the internet).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelsFile {
    volume: String,
    #[serde(default)]
    pull: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceFile {
    image: Option<String>,
    rootfs: Option<String>,
    #[serde(default)]
    host: bool,
    command: Option<Vec<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    env_file: Option<String>,
    user: Option<String>,
    workdir: Option<String>,
    #[serde(default)]
    mounts: Vec<MountFile>,
    #[serde(default)]
    tmpfs: Vec<TmpfsFile>,
    #[serde(default)]
    volumes: Vec<Spanned<String>>,
    #[serde(default)]
    ports: Vec<Spanned<String>>,
    #[serde(default)]
    allow_lan: bool,
    internet: Option<Spanned<InternetFile>>,
    #[serde(default)]
    depends_on: Vec<Spanned<DependsFile>>,
    healthcheck: Option<Spanned<HealthFile>>,
    #[serde(default)]
    restart: Option<Spanned<String>>,
    resources: Option<Spanned<ResourcesFile>>,
    #[serde(default)]
    devices: Vec<Spanned<String>>,
    #[serde(default)]
    gpu: bool,
    #[serde(default)]
    once: bool,
    #[serde(default)]
    on_demand: bool,
    network: Option<Spanned<String>>,
    sandboxes: Option<Spanned<SandboxesFile>>,
}

/// `[services.NAME.sandboxes]`: the service may ask for tool sandboxes with the docker CLI
/// (a `docker` shim on its PATH talks to the supervisor's broker).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SandboxesFile {
    /// Image names the service may ask for → the tree each runs from: a directory (relative
    /// to the cage) or "host".
    images: BTreeMap<String, String>,
    memory: Option<String>,
    pids: Option<i64>,
    /// How many sandboxes may run at once (each exec is one).
    max: Option<u32>,
    /// What all of them may use together (a cgroup over them); default: the per-sandbox
    /// caps times `max`.
    memory_total: Option<String>,
    pids_total: Option<i64>,
    /// Sandboxes kept made and parked per started container (the broker's warm pool).
    pool: Option<u32>,
    /// What the sandboxes may reach (the same entries as a service's list); none unless
    /// listed.
    #[serde(default)]
    internet: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MountFile {
    src: String,
    dst: String,
    #[serde(default = "yes")]
    ro: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TmpfsFile {
    dst: String,
    size: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum DependsFile {
    Name(String),
    Detailed {
        service: String,
        #[serde(default)]
        healthy: bool,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthFile {
    http: Option<String>,
    command: Option<Vec<String>>,
    interval: Option<String>,
    timeout: Option<String>,
    retries: Option<u32>,
    start_period: Option<String>,
    start_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourcesFile {
    memory: Option<String>,
    pids: Option<i64>,
    cpus: Option<f64>,
}

/// Where a service's root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceRoot {
    Image(String),
    Rootfs(String),
    /// Read-only binds of the host's system directories (for natively installed binaries).
    Host,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub host_addr: std::net::IpAddr,
    pub host_port: u16,
    pub container_port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restart {
    No,
    OnFailure,
    Always,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthProbe {
    /// `GET` of this path on this port inside the service's network namespace.
    Http {
        port: u16,
        path: String,
    },
    Command(Vec<String>),
}

/// The default `start_interval` of an HTTP healthcheck (at most its `interval`).
pub const START_INTERVAL_HTTP_MS: u64 = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Healthcheck {
    pub probe: HealthProbe,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub retries: u32,
    pub start_period_ms: u64,
    /// The wait between probes while the service has not yet been healthy inside its start
    /// period: see [`Healthcheck::starting_interval`].
    pub start_interval_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    pub service: String,
    pub healthy: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    pub root: ServiceRoot,
    pub command: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub env_file: Option<String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub mounts: Vec<(String, String, bool)>,
    pub tmpfs: Vec<(String, u64)>,
    pub volumes: Vec<(String, String)>,
    pub ports: Vec<Port>,
    /// What it may reach outside the cage (nothing, anything, or a list: [`crate::egress`]).
    pub internet: Internet,
    pub depends_on: Vec<Dependency>,
    pub healthcheck: Option<Healthcheck>,
    pub restart: Restart,
    pub memory: Option<u64>,
    pub pids: Option<i64>,
    pub cpus: Option<f64>,
    /// Host device nodes passed in (paths under /dev, the same inside).
    pub devices: Vec<String>,
    /// Every GPU device node of the host (NVIDIA's and DRM's), resolved when the bundle is made.
    pub gpu: bool,
    /// A one-shot job `up` runs to completion before the services start, once per cage
    /// (until `down --volumes`): e.g. onboarding.
    pub once: bool,
    /// Never started by `up`; run one-shot by `cagerun run NAME -- ARGS` (e.g. a CLI).
    pub on_demand: bool,
    /// `network = "service:NAME"` (compose's `network_mode: service:`): this on_demand job
    /// runs in NAME's network namespace, seeing exactly what NAME sees (its egress rules
    /// included); otherwise a job has only its own loopback.
    pub network_of: Option<String>,
    /// Tool sandboxes this service may ask for through its `docker` shim.
    pub sandboxes: Option<Sandboxes>,
}

/// The broker's policy for one service's sandboxes; everything else about a sandbox
/// (network none, read-only root, no capabilities, seccomp) is not configurable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandboxes {
    /// (image name as the service asks for it, tree: a directory relative to the cage or "host")
    pub images: Vec<(String, String)>,
    /// Caps on what a `create` may ask for (and the values when it asks for none).
    pub memory: u64,
    pub pids: i64,
    /// Sandboxes running at once; an exec beyond it is refused in docker's words.
    pub max: u32,
    /// Memory and pids all of them may use together: the limits of the cgroup they all run
    /// in, inside the cage's.
    pub memory_total: u64,
    pub pids_total: i64,
    /// Sandboxes the broker keeps made and parked per started container, so a tool call
    /// finds its sandbox ready (each still runs one command; 0: every call makes its own).
    /// They count against `max` and the totals like running ones.
    pub pool: u32,
    /// What each sandbox may reach ([`crate::egress`]); empty: nothing but its own `lo`.
    pub internet: Vec<Rule>,
}

/// Sandboxes a service may run at once unless `[services.X.sandboxes] max` says otherwise,
/// and the most it may say.
pub const SANDBOXES_MAX_DEFAULT: u32 = 8;
pub const SANDBOXES_MAX_LIMIT: u32 = 64;
/// Parked sandboxes per started container unless `[services.X.sandboxes] pool` says
/// otherwise: OpenClaw creates one container per session and runs every tool command of the
/// session in it, so one parked sandbox serves each next call.
pub const SANDBOXES_POOL_DEFAULT: u32 = 1;

impl Service {
    /// A long-running service the supervisor starts (not a one-shot job).
    pub fn supervised(&self) -> bool {
        !self.once && !self.on_demand
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cage {
    pub name: Option<String>,
    /// In an order where every service comes after what it depends on.
    pub services: Vec<Service>,
    pub generate: Vec<String>,
    pub dashboard: Option<String>,
    /// (volume, model names) for `up` to pull.
    pub models: Option<(String, Vec<String>)>,
    /// Upstream resolvers for the egress resolver; empty: the host's.
    pub dns: Vec<SocketAddrV4>,
}

pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

/// Milliseconds of `500ms`, `5s`, `2m`, `1h`.
fn parse_duration(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3_600_000)
    } else {
        return None;
    };
    num.parse::<u64>().ok().and_then(|n| n.checked_mul(mult))
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `[HOST_ADDR:]HOST_PORT:CONTAINER_PORT`; the host address defaults to 127.0.0.1.
fn parse_port(s: &str) -> Result<(std::net::IpAddr, u16, u16), String> {
    let parts: Vec<&str> = s.rsplitn(3, ':').collect();
    let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0);
    let (addr, hp, cp) = match parts.as_slice() {
        [c, h] => ("127.0.0.1", *h, *c),
        [c, h, a] => (a.trim_start_matches('[').trim_end_matches(']'), *h, *c),
        _ => {
            return Err(
                "use \"[ADDRESS:]HOST_PORT:CONTAINER_PORT\", e.g. \"127.0.0.1:18789:18789\"".into(),
            )
        }
    };
    let addr: std::net::IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address"))?;
    match (port(hp), port(cp)) {
        (Some(h), Some(c)) => Ok((addr, h, c)),
        _ => Err("ports are numbers from 1 to 65535".into()),
    }
}

/// Parse and validate. `file` is how errors name the file.
pub fn parse_cage(file: &str, text: &str) -> Result<Cage, CageError> {
    let err = |span: Option<Range<usize>>, key: &str, message: String| CageError {
        file: file.to_string(),
        line: span.map(|s| line_of(text, s.start)).unwrap_or(1),
        key: key.to_string(),
        message,
    };
    let parsed: CageFile = toml::from_str(text).map_err(|e| {
        let msg = e.message().to_string();
        let msg = if msg.starts_with("unknown field") {
            format!("{msg} (a misspelt key? the allowed keys are listed)")
        } else {
            msg
        };
        err(e.span(), "", msg)
    })?;
    let names: Vec<String> = parsed.services.keys().cloned().collect();
    let mut services = Vec::new();
    for (name, spanned) in &parsed.services {
        let span = Some(spanned.span());
        let s = spanned.get_ref();
        let key = |k: &str| format!("services.{name}.{k}");
        if !valid_name(name) {
            return Err(err(span.clone(), &format!("services.{name}"), "service names are lowercase letters, digits and '-', starting with a letter (they are host names)".into()));
        }
        let root = match (&s.image, &s.rootfs, s.host) {
            (Some(i), None, false) => ServiceRoot::Image(i.clone()),
            (None, Some(r), false) => ServiceRoot::Rootfs(r.clone()),
            (None, None, true) => ServiceRoot::Host,
            (None, None, false) => return Err(err(span.clone(), &format!("services.{name}"), "say where the service's files come from: image = \"...\", rootfs = \"DIR\" or host = true".into())),
            _ => return Err(err(span.clone(), &format!("services.{name}"), "image, rootfs and host = true exclude each other: keep one".into())),
        };
        if matches!(root, ServiceRoot::Host) && s.command.as_ref().is_none_or(|c| c.is_empty()) {
            return Err(err(
                span.clone(),
                &key("command"),
                "a host = true service needs a command".into(),
            ));
        }
        if let Some(w) = &s.workdir {
            if !w.starts_with('/') {
                return Err(err(
                    span.clone(),
                    &key("workdir"),
                    format!("{w:?} is not absolute"),
                ));
            }
        }
        let mut ports = Vec::new();
        for p in &s.ports {
            let (addr, h, c) = parse_port(p.get_ref()).map_err(|m| {
                err(
                    Some(p.span()),
                    &key("ports"),
                    format!("{:?}: {m}", p.get_ref()),
                )
            })?;
            if !addr.is_loopback() && !s.allow_lan {
                return Err(err(
                    Some(p.span()),
                    &key("ports"),
                    format!("{:?} publishes on {addr}, which other machines can reach: use 127.0.0.1, or set allow_lan = true on purpose", p.get_ref()),
                ));
            }
            ports.push(Port {
                host_addr: addr,
                host_port: h,
                container_port: c,
            });
        }
        let mut volumes = Vec::new();
        for v in &s.volumes {
            match v.get_ref().split_once(':') {
                Some((vol, dst)) if valid_name(vol) && dst.starts_with('/') => {
                    volumes.push((vol.to_string(), dst.to_string()))
                }
                _ => {
                    return Err(err(
                        Some(v.span()),
                        &key("volumes"),
                        format!(
                            "{:?}: use \"NAME:/path\" (NAME in lowercase letters, digits, '-')",
                            v.get_ref()
                        ),
                    ))
                }
            }
        }
        let mut tmpfs = Vec::new();
        for t in &s.tmpfs {
            if !t.dst.starts_with('/') {
                return Err(err(
                    span.clone(),
                    &key("tmpfs"),
                    format!("{:?} is not absolute", t.dst),
                ));
            }
            let size = match &t.size {
                Some(sz) => {
                    parse_size(sz).map_err(|e| err(span.clone(), &key("tmpfs"), e.to_string()))?
                }
                None => 64 << 20,
            };
            tmpfs.push((t.dst.clone(), size));
        }
        let mut mounts = Vec::new();
        for m in &s.mounts {
            if !m.dst.starts_with('/') {
                return Err(err(
                    span.clone(),
                    &key("mounts"),
                    format!("dst {:?} is not absolute", m.dst),
                ));
            }
            mounts.push((m.src.clone(), m.dst.clone(), m.ro));
        }
        let mut depends_on = Vec::new();
        for d in &s.depends_on {
            let (svc, healthy) = match d.get_ref() {
                DependsFile::Name(n) => (n.clone(), false),
                DependsFile::Detailed { service, healthy } => (service.clone(), *healthy),
            };
            if !names.contains(&svc) {
                return Err(err(
                    Some(d.span()),
                    &key("depends_on"),
                    format!(
                        "no service {svc:?} in this cage (services: {})",
                        names.join(", ")
                    ),
                ));
            }
            depends_on.push(Dependency {
                service: svc,
                healthy,
            });
        }
        let sandboxes = match &s.sandboxes {
            None => None,
            Some(sb) => {
                let sp = Some(sb.span());
                let f = sb.get_ref();
                if s.once || s.on_demand {
                    return Err(err(
                        sp,
                        &key("sandboxes"),
                        "only a service (not a one-shot job) can have sandboxes".into(),
                    ));
                }
                if f.images.is_empty() {
                    return Err(err(sp, &key("sandboxes.images"), "name at least one image: { \"NAME:TAG\" = \"DIR\" } (DIR relative to the cage, or \"host\")".into()));
                }
                if let Some((n, _)) = f
                    .images
                    .iter()
                    .find(|(n, t)| n.is_empty() || n.contains(char::is_whitespace) || t.is_empty())
                {
                    return Err(err(
                        sp,
                        &key("sandboxes.images"),
                        format!("{n:?}: an image name and a directory (or \"host\")"),
                    ));
                }
                let memory = match &f.memory {
                    Some(m) => parse_size(m)
                        .map_err(|e| err(sp.clone(), &key("sandboxes.memory"), e.to_string()))?,
                    None => 1 << 30,
                };
                let pids = f.pids.unwrap_or(256);
                if pids <= 0 {
                    return Err(err(
                        sp,
                        &key("sandboxes.pids"),
                        format!("{pids}: a positive number"),
                    ));
                }
                let max = f.max.unwrap_or(SANDBOXES_MAX_DEFAULT);
                if max == 0 || max > SANDBOXES_MAX_LIMIT {
                    return Err(err(
                        sp,
                        &key("sandboxes.max"),
                        format!("{max}: between 1 and {SANDBOXES_MAX_LIMIT} sandboxes at once"),
                    ));
                }
                let memory_total = match &f.memory_total {
                    Some(m) => parse_size(m).map_err(|e| {
                        err(sp.clone(), &key("sandboxes.memory_total"), e.to_string())
                    })?,
                    None => memory.saturating_mul(u64::from(max)),
                };
                let pids_total = f.pids_total.unwrap_or(pids.saturating_mul(i64::from(max)));
                let pool = f.pool.unwrap_or(SANDBOXES_POOL_DEFAULT);
                if pool > max {
                    return Err(err(
                        sp,
                        &key("sandboxes.pool"),
                        format!("{pool}: at most max ({max}): parked sandboxes count against it"),
                    ));
                }
                if memory_total < memory || pids_total < pids {
                    return Err(err(
                        sp,
                        &key("sandboxes"),
                        format!("memory_total and pids_total must hold at least one sandbox ({memory} bytes, {pids} pids)"),
                    ));
                }
                Some(Sandboxes {
                    images: f
                        .images
                        .iter()
                        .map(|(a, b)| (a.clone(), b.clone()))
                        .collect(),
                    memory,
                    pids,
                    max,
                    memory_total,
                    pids_total,
                    pool,
                    internet: f
                        .internet
                        .iter()
                        .map(|e| e.parse::<Rule>())
                        .collect::<Result<_, _>>()
                        .map_err(|e| err(sp.clone(), &key("sandboxes.internet"), e.to_string()))?,
                })
            }
        };
        let restart = match s.restart.as_ref().map(|r| (r.get_ref().as_str(), r.span())) {
            None | Some(("no", _)) => Restart::No,
            Some(("on-failure", _)) => Restart::OnFailure,
            Some(("always", _)) => Restart::Always,
            Some((other, sp)) => {
                return Err(err(
                    Some(sp),
                    &key("restart"),
                    format!("{other:?}: allowed are \"no\", \"on-failure\", \"always\""),
                ))
            }
        };
        let healthcheck = match &s.healthcheck {
            None => None,
            Some(h) => {
                let hs = Some(h.span());
                let hc = h.get_ref();
                let probe = match (&hc.http, &hc.command) {
                    (Some(url), None) => {
                        let rest = url.strip_prefix(':').ok_or_else(|| {
                            err(
                                hs.clone(),
                                &key("healthcheck.http"),
                                format!("{url:?}: use \":PORT/path\", e.g. \":18789/healthz\""),
                            )
                        })?;
                        let (port, path) = rest
                            .split_once('/')
                            .map(|(p, q)| (p, format!("/{q}")))
                            .unwrap_or((rest, "/".into()));
                        let port =
                            port.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                                err(
                                    hs.clone(),
                                    &key("healthcheck.http"),
                                    format!("{url:?}: the port must be 1..65535"),
                                )
                            })?;
                        HealthProbe::Http { port, path }
                    }
                    (None, Some(c)) if !c.is_empty() => HealthProbe::Command(c.clone()),
                    _ => {
                        return Err(err(
                            hs,
                            &key("healthcheck"),
                            "give exactly one of http = \":PORT/path\" or command = [...]".into(),
                        ))
                    }
                };
                let dur = |v: &Option<String>, k: &str, default: u64| -> Result<u64, CageError> {
                    match v {
                        None => Ok(default),
                        Some(d) => parse_duration(d).ok_or_else(|| {
                            err(
                                hs.clone(),
                                &key(&format!("healthcheck.{k}")),
                                format!("{d:?}: use a duration like \"500ms\", \"5s\", \"2m\""),
                            )
                        }),
                    }
                };
                let interval_ms = dur(&hc.interval, "interval", 5_000)?;
                // An HTTP probe is a connect and a request: probing 10 times a second while
                // a service starts costs nothing it would feel, and `up --wait` learns of
                // its health within 100 ms. A command probe is a process in the container
                // (its pids, its CPU): it keeps the interval unless told otherwise.
                let start_default = match &probe {
                    HealthProbe::Http { .. } => interval_ms.min(START_INTERVAL_HTTP_MS),
                    HealthProbe::Command(_) => interval_ms,
                };
                let start_interval_ms = dur(&hc.start_interval, "start_interval", start_default)?;
                if interval_ms == 0 || start_interval_ms == 0 {
                    return Err(err(
                        hs.clone(),
                        &key("healthcheck"),
                        "interval and start_interval must be longer than 0".into(),
                    ));
                }
                Some(Healthcheck {
                    probe,
                    interval_ms,
                    timeout_ms: dur(&hc.timeout, "timeout", 2_000)?,
                    retries: hc.retries.unwrap_or(3),
                    start_period_ms: dur(&hc.start_period, "start_period", 0)?,
                    start_interval_ms,
                })
            }
        };
        let (memory, pids, cpus) = match &s.resources {
            None => (None, None, None),
            Some(r) => {
                let rs = Some(r.span());
                let rr = r.get_ref();
                let memory = rr
                    .memory
                    .as_deref()
                    .map(parse_size)
                    .transpose()
                    .map_err(|e| err(rs.clone(), &key("resources.memory"), e.to_string()))?;
                if rr.pids.is_some_and(|p| p < 1) {
                    return Err(err(rs, &key("resources.pids"), "at least 1".into()));
                }
                if rr.cpus.is_some_and(|c| !(c > 0.0 && c.is_finite())) {
                    return Err(err(
                        rs,
                        &key("resources.cpus"),
                        "a positive number of CPUs, e.g. 1.5".into(),
                    ));
                }
                (memory, rr.pids, rr.cpus)
            }
        };
        let mut devices = Vec::new();
        for d in &s.devices {
            let path = d.get_ref();
            let clean = path.starts_with("/dev/")
                && !path.split('/').any(|c| c == ".." || c == ".")
                && path.len() > 5;
            if !clean {
                return Err(err(
                    Some(d.span()),
                    &key("devices"),
                    format!("{path:?}: name a device node under /dev, e.g. \"/dev/fuse\""),
                ));
            }
            devices.push(path.clone());
        }
        services.push(Service {
            name: name.clone(),
            root,
            command: s.command.clone(),
            env: s.env.clone(),
            env_file: s.env_file.clone(),
            user: s.user.clone(),
            workdir: s.workdir.clone(),
            mounts,
            tmpfs,
            volumes,
            ports,
            internet: match s.internet.as_ref().map(|i| (i.get_ref(), i.span())) {
                None | Some((InternetFile::Switch(false), _)) => Internet::None,
                Some((InternetFile::Switch(true), _)) => Internet::Any,
                Some((InternetFile::List(list), span)) => Internet::Allow(
                    list.iter()
                        .map(|e| e.parse::<Rule>())
                        .collect::<Result<_, _>>()
                        .map_err(|e| {
                            err(Some(span.clone()), &key("internet"), e.to_string())
                        })?,
                ),
            },
            depends_on,
            healthcheck,
            restart,
            memory,
            pids,
            cpus,
            devices,
            gpu: s.gpu,
            once: s.once,
            on_demand: s.on_demand,
            network_of: match &s.network {
                None => None,
                Some(n) => match n.get_ref().strip_prefix("service:") {
                    Some(other) if !other.is_empty() => Some(other.to_string()),
                    _ => {
                        return Err(err(
                            Some(n.span()),
                            &key("network"),
                            format!("{:?}: the one network a job may share is a running service's, as \"service:NAME\"", n.get_ref()),
                        ))
                    }
                },
            },
            sandboxes,
        });
    }
    // One-shot jobs: no ports, health or restarts; the supervisor never waits on them.
    for s in &services {
        let span = parsed.services.get(&s.name).map(|x| x.span());
        let key = |k: &str| format!("services.{}.{k}", s.name);
        if s.once && s.on_demand {
            return Err(err(
                span,
                &key("once"),
                "once and on_demand exclude each other: keep one".into(),
            ));
        }
        if !s.supervised() {
            let what = if s.once { "once" } else { "on_demand" };
            if !s.ports.is_empty() || s.healthcheck.is_some() || s.restart != Restart::No {
                return Err(err(span, &key(what), "a one-shot job has no ports, healthcheck or restart: drop them, or make it a service".into()));
            }
        }
        if let Some(other) = &s.network_of {
            if !s.on_demand {
                return Err(err(span, &key("network"), format!("network = \"service:{other}\" is for on_demand jobs (run while {other} is up): make {} on_demand", s.name)));
            }
            if !services.iter().any(|x| x.name == *other && x.supervised()) {
                return Err(err(span, &key("network"), format!("{other:?} is not a service of this cage that `up` starts: name one of them")));
            }
        }
        for d in &s.depends_on {
            let dep = services.iter().find(|x| x.name == d.service);
            let dep_kind = dep.map(|x| (x.once, x.on_demand)).unwrap_or_default();
            if dep_kind.1 {
                return Err(err(
                    span,
                    &key("depends_on"),
                    format!(
                        "{} is on_demand: `up` never starts it, so nothing can wait for it",
                        d.service
                    ),
                ));
            }
            if s.once && dep.is_some_and(|x| x.supervised()) {
                return Err(err(span, &key("depends_on"), format!("a once job runs before the services start, so it cannot wait for the service {}", d.service)));
            }
            if dep_kind.0 && d.healthy {
                return Err(err(span, &key("depends_on"), format!("{} is a once job: it has no health, it has finished before anything starts (drop healthy)", d.service)));
            }
        }
    }
    for g in &parsed.generate {
        if !crate::interpolate::valid_var(g) {
            return Err(err(
                None,
                "generate",
                format!("{g:?} is not a variable name (letters, digits, '_')"),
            ));
        }
    }
    let models = match &parsed.models {
        None => None,
        Some(m) => {
            let mf = m.get_ref();
            if !valid_name(&mf.volume) {
                return Err(err(
                    Some(m.span()),
                    "models.volume",
                    format!(
                        "{:?}: a volume name (lowercase letters, digits, '-')",
                        mf.volume
                    ),
                ));
            }
            if mf
                .pull
                .iter()
                .any(|n| n.is_empty() || n.contains(char::is_whitespace))
            {
                return Err(err(
                    Some(m.span()),
                    "models.pull",
                    "model names like \"smollm2:135m\"".into(),
                ));
            }
            Some((mf.volume.clone(), mf.pull.clone()))
        }
    };
    // Two services may not publish the same host port.
    let mut seen: HashMap<(std::net::IpAddr, u16), &str> = HashMap::new();
    for s in &services {
        for p in &s.ports {
            if let Some(other) = seen.insert((p.host_addr, p.host_port), &s.name) {
                let span = parsed.services.get(&s.name).map(|x| x.span());
                return Err(err(
                    span.clone(),
                    &format!("services.{}.ports", s.name),
                    format!(
                        "{}:{} is already published by {other}",
                        p.host_addr, p.host_port
                    ),
                ));
            }
        }
    }
    let order = start_order(&services).map_err(|cycle| {
        let span = parsed.services.get(&cycle[0]).map(|x| x.span());
        err(
            span.clone(),
            &format!("services.{}.depends_on", cycle[0]),
            format!("dependency cycle: {}", cycle.join(" -> ")),
        )
    })?;
    let mut by_name: HashMap<String, Service> =
        services.into_iter().map(|s| (s.name.clone(), s)).collect();
    let mut dns = Vec::new();
    for d in &parsed.dns {
        let text = d.get_ref();
        let addr = text
            .parse::<SocketAddrV4>()
            .or_else(|_| {
                text.parse::<std::net::Ipv4Addr>()
                    .map(|a| SocketAddrV4::new(a, 53))
            })
            .map_err(|_| {
                err(
                    Some(d.span()),
                    "dns",
                    format!("{text:?}: an IPv4 resolver address, \"ADDR\" or \"ADDR:PORT\""),
                )
            })?;
        dns.push(addr);
    }
    Ok(Cage {
        dns,
        name: parsed.name,
        generate: parsed.generate,
        dashboard: parsed.dashboard,
        models,
        services: order
            .into_iter()
            .filter_map(|n| by_name.remove(&n))
            .collect(),
    })
}

/// Dependencies first; a cycle is returned as the names along it.
fn start_order(services: &[Service]) -> Result<Vec<String>, Vec<String>> {
    let deps: HashMap<&str, Vec<&str>> = services
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.depends_on.iter().map(|d| d.service.as_str()).collect(),
            )
        })
        .collect();
    let mut state: HashMap<&str, u8> = HashMap::new(); // 1 = on the path, 2 = done
    let mut order = Vec::new();
    fn visit<'a>(
        n: &'a str,
        deps: &HashMap<&'a str, Vec<&'a str>>,
        state: &mut HashMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
        order: &mut Vec<String>,
    ) -> Result<(), Vec<String>> {
        match state.get(n) {
            Some(2) => return Ok(()),
            Some(1) => {
                let start = path.iter().position(|p| *p == n).unwrap_or(0);
                let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
                cycle.push(n.to_string());
                return Err(cycle);
            }
            _ => {}
        }
        state.insert(n, 1);
        path.push(n);
        for d in deps.get(n).into_iter().flatten() {
            visit(d, deps, state, path, order)?;
        }
        path.pop();
        state.insert(n, 2);
        order.push(n.to_string());
        Ok(())
    }
    for s in services {
        visit(&s.name, &deps, &mut state, &mut Vec::new(), &mut order)?;
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "clawbot"

[services.ollama]
image = "docker.io/ollama/ollama:0.12.3"
volumes = ["models:/root/.ollama"]
healthcheck = { http = ":11434/api/version", interval = "2s", retries = 10 }
resources = { memory = "4g", pids = 512 }

[services.gateway]
host = true
command = ["node", "openclaw.mjs", "gateway", "run"]
ports = ["127.0.0.1:18789:18789"]
depends_on = [{ service = "ollama", healthy = true }]
restart = "on-failure"
tmpfs = [{ dst = "/tmp", size = "256m" }]
env = { OPENCLAW_CONFIG_READONLY = "1" }
"#;

    #[test]
    fn a_sandbox_pool_defaults_to_one_and_fits_within_max() {
        let cage = |extra: &str| {
            format!("[services.a]\nhost = true\ncommand = [\"x\"]\n[services.a.sandboxes]\nimages = {{ \"s:1\" = \"host\" }}\n{extra}")
        };
        let c = parse_cage("f", &cage("")).unwrap();
        assert_eq!(c.services[0].sandboxes.as_ref().unwrap().pool, 1);
        let c = parse_cage("f", &cage("pool = 0\n")).unwrap();
        assert_eq!(c.services[0].sandboxes.as_ref().unwrap().pool, 0);
        let e = bad(&cage("max = 2\npool = 3\n"));
        assert!(
            e.contains("sandboxes.pool") && e.contains("at most max (2)"),
            "{e}"
        );
    }

    fn bad(text: &str) -> String {
        parse_cage("config/cage.toml", text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_good_cage_parses_in_dependency_order() {
        let c = parse_cage("config/cage.toml", GOOD).unwrap();
        let names: Vec<&str> = c.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["ollama", "gateway"]);
        let gw = &c.services[1];
        assert_eq!(
            gw.ports[0],
            Port {
                host_addr: "127.0.0.1".parse().unwrap(),
                host_port: 18789,
                container_port: 18789
            }
        );
        assert_eq!(gw.restart, Restart::OnFailure);
        assert_eq!(gw.tmpfs, vec![("/tmp".to_string(), 256 << 20)]);
        assert!(gw.depends_on[0].healthy);
        let ol = &c.services[0];
        assert_eq!(
            ol.healthcheck.as_ref().unwrap().probe,
            HealthProbe::Http {
                port: 11434,
                path: "/api/version".into()
            }
        );
        assert_eq!(ol.memory, Some(4 << 30));
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let e = bad("[services.a]\nhost = true\ncommand = [\"x\"]\nprivileged = true\n");
        assert!(e.starts_with("config/cage.toml:4:"), "{e}");
        assert!(e.contains("privileged"), "{e}");
    }

    #[test]
    fn a_bad_port_says_the_format() {
        let e = bad("[services.a]\nhost = true\ncommand = [\"x\"]\nports = [\"18789\"]\n");
        assert!(
            e.contains("config/cage.toml:4: services.a.ports")
                && e.contains("HOST_PORT:CONTAINER_PORT"),
            "{e}"
        );
        let e =
            bad("[services.a]\nhost = true\ncommand = [\"x\"]\nports = [\"127.0.0.1:99999:1\"]\n");
        assert!(e.contains("1 to 65535"), "{e}");
    }

    #[test]
    fn all_interfaces_need_allow_lan() {
        let e = bad("[services.a]\nhost = true\ncommand = [\"x\"]\nports = [\"0.0.0.0:80:80\"]\n");
        assert!(e.contains("allow_lan = true") && e.contains(":4:"), "{e}");
        assert!(parse_cage("f", "[services.a]\nhost = true\ncommand = [\"x\"]\nallow_lan = true\nports = [\"0.0.0.0:80:80\"]\n").is_ok());
    }

    #[test]
    fn a_service_needs_exactly_one_source() {
        let e = bad("[services.a]\ncommand = [\"x\"]\n");
        assert!(e.contains("image = ") && e.contains(":1:"), "{e}");
        let e = bad("[services.a]\nimage = \"x\"\nhost = true\ncommand = [\"x\"]\n");
        assert!(e.contains("exclude each other"), "{e}");
    }

    #[test]
    fn dependencies_must_exist_and_not_cycle() {
        let e = bad("[services.a]\nhost = true\ncommand = [\"x\"]\ndepends_on = [\"ghost\"]\n");
        assert!(e.contains("no service \"ghost\""), "{e}");
        let e = bad("[services.a]\nhost = true\ncommand = [\"x\"]\ndepends_on = [\"b\"]\n[services.b]\nhost = true\ncommand = [\"x\"]\ndepends_on = [\"a\"]\n");
        assert!(e.contains("dependency cycle: a -> b -> a"), "{e}");
    }

    #[test]
    fn the_same_host_port_twice_is_refused() {
        let e = bad("[services.a]\nhost = true\ncommand = [\"x\"]\nports = [\"8080:80\"]\n[services.b]\nhost = true\ncommand = [\"x\"]\nports = [\"127.0.0.1:8080:81\"]\n");
        assert!(e.contains("already published by a"), "{e}");
    }

    #[test]
    fn restart_and_durations_say_what_is_allowed() {
        let e = bad("[services.a]\nhost = true\ncommand = [\"x\"]\nrestart = \"sometimes\"\n");
        assert!(
            e.contains("\"no\", \"on-failure\", \"always\"") && e.contains(":4:"),
            "{e}"
        );
        let e = bad("[services.a]\nhost = true\ncommand = [\"x\"]\nhealthcheck = { http = \":80/\", interval = \"soon\" }\n");
        assert!(e.contains("duration"), "{e}");
    }

    #[test]
    fn internet_is_a_switch_or_a_list() {
        use crate::egress::{Internet, Target};
        let svc =
            |v: &str| format!("[services.a]\nhost = true\ncommand = [\"x\"]\ninternet = {v}\n");
        let c = parse_cage("f", &svc("true")).unwrap();
        assert_eq!(c.services[0].internet, Internet::Any);
        let c = parse_cage("f", &svc("false")).unwrap();
        assert_eq!(c.services[0].internet, Internet::None);
        let c = parse_cage(
            "f",
            &svc("[\"api.telegram.org\", \"*.discord.com\", \"host:11434\"]"),
        )
        .unwrap();
        let rules = c.services[0].internet.rules().unwrap();
        assert_eq!(rules.len(), 3);
        assert_eq!(rules[2].target, Target::Host);
        let c = parse_cage("f", &svc("[]")).unwrap();
        assert_eq!(c.services[0].internet, Internet::Allow(vec![]));
        // A bad entry names the key, the line and the fix.
        let e = bad(&svc("[\"host\"]"));
        assert!(
            e.contains("services.a.internet") && e.contains(":4:") && e.contains("host:11434"),
            "{e}"
        );
        let e = bad(&svc("[\"a b\"]"));
        assert!(e.contains("not a DNS name"), "{e}");
        let e = bad(&svc("\"yes\""));
        assert!(e.contains(":4:"), "{e}");
        // Sandboxes: a list, and the top-level upstream resolvers.
        let c = parse_cage("f", "dns = [\"198.18.0.2\", \"127.0.0.1:5353\"]\n[services.a]\nhost = true\ncommand = [\"x\"]\n[services.a.sandboxes]\nimages = { \"s:1\" = \"host\" }\ninternet = [\"pypi.org\"]\n").unwrap();
        assert_eq!(c.dns.len(), 2);
        assert_eq!(c.dns[1].port(), 5353);
        assert_eq!(c.services[0].sandboxes.as_ref().unwrap().internet.len(), 1);
        let e = bad("dns = [\"resolver.example\"]\n[services.a]\nhost = true\ncommand = [\"x\"]\n");
        assert!(e.contains("\"ADDR:PORT\"") && e.contains(":1:"), "{e}");
    }

    #[test]
    fn a_job_may_share_the_network_of_a_service_and_nothing_else() {
        let base = "[services.gw]\nhost = true\ncommand = [\"x\"]\n[services.once]\nhost = true\ncommand = [\"y\"]\nonce = true\n";
        let job = |net: &str, kind: &str| {
            format!("{base}[services.cli]\nhost = true\ncommand = [\"z\"]\n{kind} = true\nnetwork = \"{net}\"\n")
        };
        let c = parse_cage("f", &job("service:gw", "on_demand")).unwrap();
        let cli = c.services.iter().find(|s| s.name == "cli").unwrap();
        assert_eq!(cli.network_of.as_deref(), Some("gw"));
        assert!(c
            .services
            .iter()
            .all(|s| s.name == "cli" || s.network_of.is_none()));
        for (net, kind, says) in [
            ("host", "on_demand", "service:NAME"),
            ("service:", "on_demand", "service:NAME"),
            ("service:nope", "on_demand", "not a service of this cage"),
            ("service:once", "on_demand", "not a service of this cage"),
            ("service:gw", "once", "for on_demand jobs"),
        ] {
            let e = bad(&job(net, kind));
            assert!(
                e.contains(says) && e.contains("services.cli.network"),
                "{net} {kind}: {e}"
            );
        }
    }

    #[test]
    fn jobs_are_one_shot_and_nothing_waits_for_an_on_demand_one() {
        let base = "[services.web]\nhost = true\ncommand = [\"x\"]\n";
        let c = parse_cage(
            "f",
            &format!("{base}depends_on = [\"setup\"]\n[services.setup]\nhost = true\ncommand = [\"y\"]\nonce = true\n[services.cli]\nhost = true\ncommand = [\"z\"]\non_demand = true\n"),
        )
        .unwrap();
        let supervised: Vec<&str> = c
            .services
            .iter()
            .filter(|s| s.supervised())
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(supervised, ["web"]);
        let e = bad(&format!("{base}depends_on = [\"cli\"]\n[services.cli]\nhost = true\ncommand = [\"z\"]\non_demand = true\n"));
        assert!(e.contains("on_demand"), "{e}");
        let e =
            bad("[services.j]\nhost = true\ncommand = [\"x\"]\nonce = true\nports = [\"1:1\"]\n");
        assert!(e.contains("one-shot"), "{e}");
        let e = bad(&format!("{base}[services.j]\nhost = true\ncommand = [\"x\"]\nonce = true\ndepends_on = [\"web\"]\n"));
        assert!(e.contains("before the services start"), "{e}");
    }

    #[test]
    fn models_and_generated_secrets_are_checked() {
        let c = parse_cage(
            "f",
            "generate = [\"TOKEN\"]\nmodels = { volume = \"ollama\", pull = [\"qwen3:8b\"] }\n",
        )
        .unwrap();
        assert_eq!(c.generate, ["TOKEN"]);
        assert_eq!(c.models, Some(("ollama".into(), vec!["qwen3:8b".into()])));
        assert!(bad("models = { volume = \"../x\" }\n").contains("models.volume"));
        assert!(bad("generate = [\"A-B\"]\n").contains("generate"));
    }
}

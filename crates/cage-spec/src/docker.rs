//! The docker CLI that OpenClaw's sandbox backend speaks (openclaw 2026.9.x,
//! `dist/docker-*.mjs`), parsed strictly, and the broker's judgement of a `create`.
//!
//! Groundwork for the sandbox broker (issue 6): pure parsing and policy, no I/O. The shim in
//! the gateway sends its argv; the broker parses it here, and a `create` becomes a
//! [`SandboxShape`] only if every flag is one the policy allows. The gateway is untrusted:
//! an unknown flag is refused, never ignored. Errors use docker's own wording, so OpenClaw's
//! messages about them make sense to the user.

use std::fmt;

/// One docker invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Create(Box<Create>),
    Start {
        containers: Vec<String>,
    },
    Exec(Exec),
    /// `inspect [--type container] [-f|--format TEMPLATE] NAME...`
    Inspect {
        format: Option<String>,
        kind: Option<String>,
        targets: Vec<String>,
    },
    /// `image inspect IMAGE`
    ImageInspect {
        image: String,
    },
    /// `rm [-f] NAME...`
    Remove {
        force: bool,
        containers: Vec<String>,
    },
    /// `version` / `info`: OpenClaw's availability probes.
    Version,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Create {
    pub name: Option<String>,
    pub init: bool,
    pub labels: Vec<(String, String)>,
    pub read_only: bool,
    pub tmpfs: Vec<String>,
    pub network: Option<String>,
    pub user: Option<String>,
    pub cap_drop: Vec<String>,
    pub cap_add: Vec<String>,
    pub security_opt: Vec<String>,
    pub dns: Vec<String>,
    pub add_host: Vec<String>,
    pub pids_limit: Option<i64>,
    pub memory: Option<String>,
    pub memory_swap: Option<String>,
    pub cpus: Option<String>,
    pub gpus: Option<String>,
    pub ulimits: Vec<String>,
    pub volumes: Vec<String>,
    pub workdir: Option<String>,
    pub env_files: Vec<String>,
    pub env: Vec<String>,
    pub privileged: bool,
    pub devices: Vec<String>,
    pub userns: Option<String>,
    pub image: String,
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exec {
    pub interactive: bool,
    pub tty: bool,
    pub workdir: Option<String>,
    pub env_files: Vec<String>,
    pub env: Vec<String>,
    pub user: Option<String>,
    pub container: String,
    pub command: Vec<String>,
}

/// A refusal, worded as docker words its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerError(pub String);

impl fmt::Display for DockerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DockerError {}

fn usage(msg: impl Into<String>) -> DockerError {
    DockerError(msg.into())
}

fn daemon(msg: impl Into<String>) -> DockerError {
    DockerError(format!("Error response from daemon: {}", msg.into()))
}

/// Flags as `--name value`, `--name=value`, or (short) `-n value`.
struct Args<'a> {
    rest: &'a [String],
}

impl<'a> Args<'a> {
    fn next_flag(&mut self) -> Option<(&'a str, Option<&'a str>)> {
        let first = self.rest.first()?;
        if !first.starts_with('-') || first == "-" {
            return None;
        }
        self.rest = &self.rest[1..];
        if first == "--" {
            return None;
        }
        Some(match first.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v)),
            _ => (first.as_str(), None),
        })
    }

    fn value(&mut self, flag: &str, inline: Option<&'a str>) -> Result<String, DockerError> {
        if let Some(v) = inline {
            return Ok(v.to_string());
        }
        let (v, rest) = self
            .rest
            .split_first()
            .ok_or_else(|| usage(format!("flag needs an argument: {flag}")))?;
        self.rest = rest;
        Ok(v.clone())
    }

    fn positional(&mut self) -> Vec<String> {
        let out = self.rest.to_vec();
        self.rest = &[];
        out
    }
}

fn unknown(flag: &str) -> DockerError {
    usage(format!("unknown flag: {flag}"))
}

/// Bounds on what the gateway may send the broker: it is hostile, so every input has a size.
/// Over a bound the call is refused in docker's words and nothing is recorded.
pub mod limits {
    /// Arguments in one call, and bytes in one argument (a `sh -c` script).
    pub const ARGS: usize = 1024;
    pub const ARG_BYTES: usize = 128 << 10;
    /// `--env-file`s in one call, and bytes in one (the shim sends their contents).
    pub const ENV_FILES: usize = 8;
    pub const ENV_FILE_BYTES: usize = 64 << 10;
    /// Per create: labels, `-e`s, volumes, tmpfs mounts.
    pub const LABELS: usize = 64;
    pub const ENV_VARS: usize = 1024;
    pub const VOLUMES: usize = 16;
    pub const TMPFS: usize = 16;
    /// A container name: docker's alphabet, at most this long (never a path component).
    pub const NAME_BYTES: usize = 128;
    /// Containers the broker keeps for one service (created and not removed).
    pub const CONTAINERS: usize = 64;
}

/// The call's size against [`limits`], before it is parsed: `env_file_sizes` are the
/// lengths of the env files' contents the caller sent.
pub fn check_bounds(argv: &[String], env_file_sizes: &[usize]) -> Result<(), DockerError> {
    if argv.len() > limits::ARGS {
        return Err(usage(format!(
            "docker: {} arguments: a cagerun sandbox call takes at most {}",
            argv.len(),
            limits::ARGS
        )));
    }
    if let Some(a) = argv.iter().find(|a| a.len() > limits::ARG_BYTES) {
        return Err(usage(format!(
            "docker: an argument of {} bytes: at most {} in a cagerun sandbox call",
            a.len(),
            limits::ARG_BYTES
        )));
    }
    if env_file_sizes.len() > limits::ENV_FILES {
        return Err(usage(format!(
            "docker: {} env files: at most {} in one call",
            env_file_sizes.len(),
            limits::ENV_FILES
        )));
    }
    if let Some(n) = env_file_sizes.iter().find(|n| **n > limits::ENV_FILE_BYTES) {
        return Err(usage(format!(
            "docker: an env file of {n} bytes: at most {} each",
            limits::ENV_FILE_BYTES
        )));
    }
    Ok(())
}

/// Docker's container name rule (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`), bounded: a name is a key,
/// never a path component.
fn check_name(name: &str) -> Result<(), DockerError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok
        || name.len() > limits::NAME_BYTES
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(daemon(format!(
            "Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed (at most {} characters in a cage)",
            limits::NAME_BYTES
        )));
    }
    Ok(())
}

pub fn parse(argv: &[String]) -> Result<Call, DockerError> {
    let (cmd, rest) = argv
        .split_first()
        .ok_or_else(|| usage("docker: a command is required"))?;
    let mut a = Args { rest };
    match cmd.as_str() {
        "create" => parse_create(&mut a).map(|c| Call::Create(Box::new(c))),
        "start" => {
            if let Some((f, _)) = a.next_flag() {
                return Err(unknown(f));
            }
            let containers = a.positional();
            if containers.is_empty() {
                return Err(usage("\"docker start\" requires at least 1 argument."));
            }
            Ok(Call::Start { containers })
        }
        "exec" => parse_exec(&mut a).map(Call::Exec),
        "inspect" => {
            let (mut format, mut kind) = (None, None);
            while let Some((f, v)) = a.next_flag() {
                match f {
                    "-f" | "--format" => format = Some(a.value(f, v)?),
                    "--type" => kind = Some(a.value(f, v)?),
                    _ => return Err(unknown(f)),
                }
            }
            let targets = a.positional();
            if targets.is_empty() {
                return Err(usage("\"docker inspect\" requires at least 1 argument."));
            }
            Ok(Call::Inspect {
                format,
                kind,
                targets,
            })
        }
        "image" => match a.rest.split_first() {
            Some((sub, rest)) if sub == "inspect" => {
                let mut a = Args { rest };
                if let Some((f, _)) = a.next_flag() {
                    return Err(unknown(f));
                }
                match a.positional().as_slice() {
                    [image] => Ok(Call::ImageInspect {
                        image: image.clone(),
                    }),
                    _ => Err(usage("\"docker image inspect\" takes one image here")),
                }
            }
            _ => Err(usage("docker image: only `inspect` is available in a cage")),
        },
        "rm" => {
            let mut force = false;
            while let Some((f, _)) = a.next_flag() {
                match f {
                    "-f" | "--force" => force = true,
                    _ => return Err(unknown(f)),
                }
            }
            let containers = a.positional();
            if containers.is_empty() {
                return Err(usage("\"docker rm\" requires at least 1 argument."));
            }
            Ok(Call::Remove { force, containers })
        }
        "version" | "info" => Ok(Call::Version),
        other => Err(usage(format!(
            "docker: '{other}' is not a docker command available in a cage"
        ))),
    }
}

fn parse_create(a: &mut Args) -> Result<Create, DockerError> {
    let mut c = Create::default();
    while let Some((f, v)) = a.next_flag() {
        match f {
            "--name" => c.name = Some(a.value(f, v)?),
            "--init" => c.init = true,
            "--label" | "-l" => {
                let l = a.value(f, v)?;
                let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
                c.labels.push((k.to_string(), v.to_string()));
            }
            "--read-only" => c.read_only = true,
            "--tmpfs" => c.tmpfs.push(a.value(f, v)?),
            "--network" | "--net" => c.network = Some(a.value(f, v)?),
            "--user" | "-u" => c.user = Some(a.value(f, v)?),
            "--cap-drop" => c.cap_drop.push(a.value(f, v)?),
            "--cap-add" => c.cap_add.push(a.value(f, v)?),
            "--security-opt" => c.security_opt.push(a.value(f, v)?),
            "--dns" => c.dns.push(a.value(f, v)?),
            "--add-host" => c.add_host.push(a.value(f, v)?),
            "--pids-limit" => {
                let s = a.value(f, v)?;
                c.pids_limit = Some(s.parse().map_err(|_| {
                    usage(format!(
                        "invalid argument \"{s}\" for \"--pids-limit\" flag"
                    ))
                })?);
            }
            "--memory" | "-m" => c.memory = Some(a.value(f, v)?),
            "--memory-swap" => c.memory_swap = Some(a.value(f, v)?),
            "--cpus" => c.cpus = Some(a.value(f, v)?),
            "--gpus" => c.gpus = Some(a.value(f, v)?),
            "--ulimit" => c.ulimits.push(a.value(f, v)?),
            "--volume" | "-v" => c.volumes.push(a.value(f, v)?),
            "--workdir" | "-w" => c.workdir = Some(a.value(f, v)?),
            "--env-file" => c.env_files.push(a.value(f, v)?),
            "--env" | "-e" => c.env.push(a.value(f, v)?),
            "--privileged" => c.privileged = true,
            "--device" => c.devices.push(a.value(f, v)?),
            "--userns" => c.userns = Some(a.value(f, v)?),
            _ => return Err(unknown(f)),
        }
    }
    let mut rest = a.positional();
    if rest.is_empty() {
        return Err(usage("\"docker create\" requires at least 1 argument."));
    }
    c.image = rest.remove(0);
    c.command = rest;
    if let Some(n) = &c.name {
        check_name(n)?;
    }
    for (what, n, max) in [
        ("labels", c.labels.len(), limits::LABELS),
        ("-e values", c.env.len(), limits::ENV_VARS),
        ("volumes", c.volumes.len(), limits::VOLUMES),
        ("tmpfs mounts", c.tmpfs.len(), limits::TMPFS),
        ("env files", c.env_files.len(), limits::ENV_FILES),
    ] {
        if n > max {
            return Err(daemon(format!(
                "{n} {what}: a cagerun sandbox takes at most {max}"
            )));
        }
    }
    Ok(c)
}

fn parse_exec(a: &mut Args) -> Result<Exec, DockerError> {
    let mut e = Exec::default();
    while let Some((f, v)) = a.next_flag() {
        match f {
            "-i" | "--interactive" => e.interactive = true,
            "-t" | "--tty" => e.tty = true,
            "-it" | "-ti" => {
                e.interactive = true;
                e.tty = true;
            }
            "-w" | "--workdir" => e.workdir = Some(a.value(f, v)?),
            "--env-file" => e.env_files.push(a.value(f, v)?),
            "-e" | "--env" => e.env.push(a.value(f, v)?),
            "-u" | "--user" => e.user = Some(a.value(f, v)?),
            _ => return Err(unknown(f)),
        }
    }
    let mut rest = a.positional();
    if rest.len() < 2 {
        return Err(usage("\"docker exec\" requires at least 2 arguments."));
    }
    e.container = rest.remove(0);
    e.command = rest;
    Ok(e)
}

/// A mount of the gateway: the path the gateway sees and the host path behind it. Every
/// mount of the gateway is listed: a writable bind is sandbox material, any other
/// (`read_only`: a read-only bind, a tmpfs, /proc) shadows what lies below it and is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayMount {
    pub inside: String,
    /// The host path behind a bind (empty for a kernel filesystem).
    pub host: String,
    pub read_only: bool,
}

/// The gateway's mounts as the broker maps sandbox binds through them. Which are writable
/// comes from the model the gateway was rendered from (`req`): its workspace, and its binds
/// the cage made writable (`ro = false` mounts and volumes). Every other destination of the
/// rendered `spec` (read-only binds, kernel filesystems, tmpfs) shadows what lies below it.
pub fn gateway_mounts(
    req: &crate::SandboxRequest,
    spec: &oci_spec::runtime::Spec,
) -> Vec<GatewayMount> {
    let mut writable: Vec<(String, String)> = Vec::new();
    if let Some(ws) = &req.workspace {
        writable.push((
            crate::sandbox::WORKSPACE_DEST.to_string(),
            ws.display().to_string(),
        ));
    }
    for m in &req.extra_mounts {
        if let crate::ExtraMount::Bind {
            src,
            dst,
            ro: false,
        } = m
        {
            writable.push((dst.clone(), src.display().to_string()));
        }
    }
    spec.mounts()
        .iter()
        .flatten()
        .filter_map(|m| {
            let inside = m.destination().to_str()?.to_string();
            let bind = m.typ().as_deref() == Some("bind");
            let host = if bind {
                m.source().as_ref()?.to_str()?.to_string()
            } else {
                String::new()
            };
            let read_only = !(bind && writable.iter().any(|(d, s)| *d == inside && *s == host));
            Some(GatewayMount {
                inside,
                host,
                read_only,
            })
        })
        .collect()
}

/// What the broker allows, from the cage (never from the gateway).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerPolicy {
    /// Image names the gateway may ask for, with the tree each runs from.
    pub images: Vec<(String, String)>,
    /// The gateway's own mounts: bind sources are gateway paths, mapped through these.
    pub gateway_mounts: Vec<GatewayMount>,
    pub max_memory: u64,
    pub max_pids: i64,
}

/// A bind the sandbox gets: where its source lies (a path beneath the host directory behind
/// a gateway mount), where it appears, and whether read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// The source as the gateway named it (what `inspect` reports back).
    pub source: String,
    /// The host directory behind the gateway mount the source lies in (the cage's own path).
    pub root: String,
    /// The rest of the source below `root`: plain names, resolved beneath `root` by the engine
    /// when the sandbox is made (the gateway may have made any of them a symlink). Empty for
    /// the mount's root itself.
    pub path: String,
    pub inside: String,
    pub read_only: bool,
}

/// A `create` the broker accepted: everything the sandbox engine needs from the gateway's
/// request. The hardening (network none, read-only root, no capabilities, seccomp,
/// no_new_privs) is not here: it is not the gateway's to choose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxShape {
    pub name: Option<String>,
    pub labels: Vec<(String, String)>,
    pub rootfs: String,
    pub binds: Vec<Bind>,
    pub tmpfs: Vec<String>,
    pub workdir: Option<String>,
    pub memory: u64,
    pub pids: i64,
    pub command: Vec<String>,
    /// `--user` as given (resolved against the image when a sandbox runs; never root).
    pub user: Option<String>,
    pub image: String,
    /// `-e` values of the create (its `--env-file` contents come from the shim).
    pub env: Vec<String>,
    pub env_files: Vec<String>,
}

/// An absolute path of plain names: no `.`, `..` or empty component (`//`), no NUL; one
/// trailing `/` is allowed, as docker allows it.
fn clean_path(p: &str) -> bool {
    let Some(rest) = p.strip_prefix('/') else {
        return false;
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    !p.contains('\0') && (rest.is_empty() || rest.split('/').all(|c| !matches!(c, "" | "." | "..")))
}

/// The components of a clean path (see [`clean_path`]).
fn components(p: &str) -> Vec<&str> {
    p.split('/').filter(|c| !c.is_empty()).collect()
}

/// The gateway mount a gateway path lies in (the innermost wins, compared component by
/// component) and the rest of the path below it: (host root, relative rest). Only a
/// writable bind is sandbox material: a source whose innermost mount is read-only or not a
/// bind (a read-only config over the workspace, the gateway's tmpfs) is refused, so a
/// mount nested in a writable one is never read through the writable one's host directory.
/// Nothing here touches the host: the rest is resolved beneath the root when a sandbox is
/// made.
fn map_source(policy: &BrokerPolicy, src: &str) -> Option<(String, String)> {
    if !clean_path(src) {
        return None;
    }
    let src = components(src);
    let (m, inside) = policy
        .gateway_mounts
        .iter()
        .map(|m| (m, components(&m.inside)))
        .filter(|(_, inside)| src.starts_with(inside))
        .max_by_key(|(_, inside)| inside.len())?;
    if m.read_only {
        return None;
    }
    Some((m.host.clone(), src[inside.len()..].join("/")))
}

/// The broker's judgement of a `create`: a shape to run, or docker's kind of refusal.
pub fn judge_create(c: &Create, policy: &BrokerPolicy) -> Result<SandboxShape, DockerError> {
    let refuse = |what: &str| {
        Err(daemon(format!(
            "{what} is not allowed in a cagerun sandbox (the cage's policy decides)"
        )))
    };
    if c.privileged {
        return refuse("--privileged");
    }
    if !c.cap_add.is_empty() {
        return refuse(&format!("--cap-add {}", c.cap_add.join(",")));
    }
    if !c.devices.is_empty() {
        return refuse(&format!("--device {}", c.devices.join(",")));
    }
    if let Some(g) = &c.gpus {
        return refuse(&format!("--gpus {g}"));
    }
    if c.network.as_deref().is_some_and(|n| n != "none") {
        return refuse(&format!(
            "--network {}",
            c.network.as_deref().unwrap_or_default()
        ));
    }
    if let Some(u) = &c.userns {
        return refuse(&format!("--userns {u}"));
    }
    if !c.dns.is_empty() || !c.add_host.is_empty() {
        return refuse("--dns/--add-host (sandboxes have no network)");
    }
    for opt in &c.security_opt {
        if opt != "no-new-privileges" && opt != "no-new-privileges:true" {
            return refuse(&format!("--security-opt {opt}"));
        }
    }
    if let Some(u) = &c.user {
        // Any spelling of uid 0 ("0", "00", "+0"); a name is resolved against the image
        // when a sandbox runs, and uid 0 is refused there too (`exec_request`).
        let uid = u.split(':').next().unwrap_or_default();
        if uid == "root" || uid.parse::<u32>() == Ok(0) {
            return refuse("--user root");
        }
    }
    let Some((_, rootfs)) = policy.images.iter().find(|(n, _)| *n == c.image) else {
        return Err(daemon(format!(
            "No such image: {} (the cage provides: {})",
            c.image,
            policy
                .images
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    let mut binds = Vec::new();
    for v in &c.volumes {
        let mut parts = v.splitn(3, ':');
        let (src, dst) = match (parts.next(), parts.next()) {
            (Some(s), Some(d)) if !s.is_empty() && !d.is_empty() => (s, d),
            _ => return Err(daemon(format!("invalid volume specification: '{v}'"))),
        };
        let opts: Vec<&str> = parts
            .next()
            .map(|o| o.split(',').collect())
            .unwrap_or_default();
        if let Some(bad) = opts
            .iter()
            .find(|o| !matches!(**o, "ro" | "rw" | "z" | "Z"))
        {
            return Err(daemon(format!(
                "invalid volume option {bad:?} in '{v}' (a sandbox allows ro, rw, z)"
            )));
        }
        if !clean_path(dst) {
            return Err(daemon(format!("invalid mount path: '{dst}'")));
        }
        let Some((root, path)) = map_source(policy, src) else {
            return Err(daemon(format!(
                "bind source {src} is outside the gateway's workspace and state: refused"
            )));
        };
        binds.push(Bind {
            source: src.to_string(),
            root,
            path,
            inside: dst.to_string(),
            read_only: opts.contains(&"ro"),
        });
    }
    let mut destinations: Vec<String> = binds.iter().map(|b| b.inside.clone()).collect();
    for t in &c.tmpfs {
        destinations.push(tmpfs_mount(t)?.0);
    }
    destinations.iter_mut().for_each(|d| {
        let trimmed = d.trim_end_matches('/').to_string();
        *d = trimmed;
    });
    destinations.sort();
    if let Some(w) = destinations.windows(2).find(|w| w[0] == w[1]) {
        return Err(daemon(format!("Duplicate mount point: {}", w[0])));
    }
    let memory = match &c.memory {
        None => policy.max_memory,
        Some(m) => crate::size::parse_size(m)
            .map_err(|_| {
                usage(format!(
                    "invalid argument \"{m}\" for \"-m, --memory\" flag"
                ))
            })?
            .min(policy.max_memory),
    };
    let pids = c
        .pids_limit
        .filter(|p| *p > 0)
        .unwrap_or(policy.max_pids)
        .min(policy.max_pids);
    Ok(SandboxShape {
        name: c.name.clone(),
        labels: c.labels.clone(),
        rootfs: rootfs.clone(),
        binds,
        tmpfs: c.tmpfs.clone(),
        workdir: c.workdir.clone(),
        memory,
        pids,
        command: c.command.clone(),
        user: c.user.clone(),
        image: c.image.clone(),
        env: c.env.clone(),
        env_files: c.env_files.clone(),
    })
}

/// Default size of a `--tmpfs` that names none (it counts toward the sandbox's memory).
pub const TMPFS_DEFAULT_SIZE: u64 = 64 << 20;

/// `--tmpfs DST[:OPTIONS]`: where, and its size. Options beyond size, mode and the flags
/// every sandbox mount has anyway are refused (`exec` included: tmpfs stays noexec-free
/// like docker's, but nothing else is the gateway's to choose).
pub fn tmpfs_mount(t: &str) -> Result<(String, u64), DockerError> {
    let (dst, opts) = t.split_once(':').unwrap_or((t, ""));
    if !clean_path(dst) || dst == "/" {
        return Err(daemon(format!("invalid tmpfs mount: '{t}'")));
    }
    let mut size = TMPFS_DEFAULT_SIZE;
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o.split_once('=') {
            Some(("size", v)) => {
                size = crate::size::parse_size(v)
                    .map_err(|_| daemon(format!("invalid tmpfs size in '{t}'")))?
            }
            Some(("mode", _)) => {}
            None if matches!(o, "rw" | "nosuid" | "nodev" | "noexec" | "exec") => {}
            _ => {
                return Err(daemon(format!(
                    "tmpfs option {o:?} in '{t}' is not allowed in a cagerun sandbox"
                )))
            }
        }
    }
    Ok((dst.to_string(), size))
}

/// What one `exec` of a created sandbox runs: the shape, the command, its environment
/// (the create's, then the exec's; later wins) and the user resolved against the image.
pub struct ExecPlan<'a> {
    pub shape: &'a SandboxShape,
    pub exec: &'a Exec,
    pub env: Vec<(String, String)>,
    pub rootfs: crate::RootfsSource,
    pub user: crate::sandbox::IdPair,
    pub hostname: String,
}

/// The sandbox request for one `exec`: a fresh sandbox of the created shape. The hardening
/// is the sandbox renderer's (network none, read-only root, no capabilities, seccomp).
pub fn exec_request(p: ExecPlan<'_>) -> Result<crate::SandboxRequest, DockerError> {
    if p.user.uid == 0 {
        return Err(daemon("--user root is not allowed in a cagerun sandbox"));
    }
    let mut req = crate::SandboxRequest::new(p.exec.command.clone(), p.rootfs);
    req.user = p.user;
    req.env = p.env;
    req.cwd = p.exec.workdir.clone().or_else(|| p.shape.workdir.clone());
    req.memory = Some(p.shape.memory);
    req.pids = Some(p.shape.pids);
    req.terminal = p.exec.tty;
    req.hostname = Some(p.hostname);
    for b in &p.shape.binds {
        req.extra_mounts
            .push(crate::sandbox::ExtraMount::BindBeneath {
                root: b.root.clone().into(),
                path: b.path.clone().into(),
                dst: b.inside.clone(),
                ro: b.read_only,
            });
    }
    for t in &p.shape.tmpfs {
        let (dst, size) = tmpfs_mount(t)?;
        req.extra_mounts
            .push(crate::sandbox::ExtraMount::Tmpfs { dst, size });
    }
    Ok(req)
}

/// The broker's `inspect` document of a created sandbox: the fields OpenClaw reads, in
/// docker's names. Mount sources are the gateway's paths, as it asked for them.
pub fn inspect_document(
    id: &str,
    shape: &SandboxShape,
    running: bool,
    env: &[(String, String)],
    created: &str,
) -> serde_json::Value {
    use serde_json::{json, Map, Value};
    let labels: Map<String, Value> = shape
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let tmpfs: Map<String, Value> = shape
        .tmpfs
        .iter()
        .map(|t| {
            let (dst, opts) = t.split_once(':').unwrap_or((t, ""));
            (dst.to_string(), Value::String(opts.to_string()))
        })
        .collect();
    let mounts: Vec<Value> = shape
        .binds
        .iter()
        .map(|b| {
            json!({
                "Type": "bind",
                "Source": b.source,
                "Destination": b.inside,
                "Mode": if b.read_only { "ro" } else { "" },
                "RW": !b.read_only,
                "Propagation": "rprivate",
            })
        })
        .collect();
    let name = shape.name.clone().unwrap_or_else(|| id[..12].to_string());
    json!({
        "Id": id,
        "ID": id,
        "Name": format!("/{name}"),
        "Created": created,
        "Image": shape.image,
        "State": {
            "Status": if running { "running" } else { "created" },
            "Running": running,
            "Paused": false,
            "ExitCode": 0,
        },
        "Config": {
            "Hostname": &id[..12],
            "User": shape.user.clone().unwrap_or_default(),
            "Env": env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            "Cmd": shape.command,
            "Image": shape.image,
            "WorkingDir": shape.workdir.clone().unwrap_or_default(),
            "Labels": labels,
        },
        "HostConfig": {
            "NetworkMode": "none",
            "ReadonlyRootfs": true,
            "Tmpfs": tmpfs,
            "Memory": shape.memory,
            "PidsLimit": shape.pids,
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
        },
        "Mounts": mounts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    /// What OpenClaw 2026.9.6 sends for a default sandbox (dist/docker-*.mjs,
    /// buildSandboxCreateArgs + createSandboxContainer).
    fn openclaw_create() -> Vec<String> {
        argv(&[
            "create",
            "--name",
            "openclaw-sbx-main-1a2b",
            "--init",
            "--label",
            "openclaw.sandbox=1",
            "--label",
            "openclaw.sessionKey=agent:main:x",
            "--label",
            "openclaw.createdAtMs=1764000000000",
            "--label",
            "openclaw.mountFormatVersion=4",
            "--read-only",
            "--tmpfs",
            "/tmp",
            "--tmpfs",
            "/var/tmp",
            "--tmpfs",
            "/run",
            "--network",
            "none",
            "--user",
            "1000:1000",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--pids-limit",
            "256",
            "--memory",
            "1g",
            "--workdir",
            "/workspace",
            "-v",
            "/workspace:/workspace:z",
            "-v",
            "/state/sandbox/skills/main:/workspace/.openclaw/sandbox-skills/skills:ro,z",
            "--env-file",
            "/tmp/openclaw-env-1/env",
            "openclaw-sandbox:bookworm-slim",
            "sleep",
            "infinity",
        ])
    }

    fn policy() -> BrokerPolicy {
        BrokerPolicy {
            images: vec![(
                "openclaw-sandbox:bookworm-slim".into(),
                "/cage/rootfs/openclaw-sandbox".into(),
            )],
            gateway_mounts: vec![
                GatewayMount {
                    inside: "/workspace".into(),
                    host: "/cage/workspace".into(),
                    read_only: false,
                },
                GatewayMount {
                    inside: "/state".into(),
                    host: "/cage/.cagerun/volumes/state".into(),
                    read_only: false,
                },
                GatewayMount {
                    inside: "/config".into(),
                    host: "/cage/config/openclaw".into(),
                    read_only: true,
                },
            ],
            max_memory: 1 << 30,
            max_pids: 256,
        }
    }

    #[test]
    fn openclaws_create_parses_and_is_accepted_with_mapped_binds() {
        let Call::Create(c) = parse(&openclaw_create()).unwrap() else {
            panic!()
        };
        assert!(c.init && c.read_only);
        assert_eq!(c.labels[0], ("openclaw.sandbox".into(), "1".into()));
        assert_eq!(c.image, "openclaw-sandbox:bookworm-slim");
        assert_eq!(c.command, ["sleep", "infinity"]);
        let s = judge_create(&c, &policy()).unwrap();
        assert_eq!(s.rootfs, "/cage/rootfs/openclaw-sandbox");
        assert_eq!(
            s.binds,
            [
                Bind {
                    source: "/workspace".into(),
                    root: "/cage/workspace".into(),
                    path: "".into(),
                    inside: "/workspace".into(),
                    read_only: false
                },
                Bind {
                    source: "/state/sandbox/skills/main".into(),
                    root: "/cage/.cagerun/volumes/state".into(),
                    path: "sandbox/skills/main".into(),
                    inside: "/workspace/.openclaw/sandbox-skills/skills".into(),
                    read_only: true
                },
            ]
        );
        assert_eq!((s.memory, s.pids), (1 << 30, 256));
    }

    #[test]
    fn the_other_calls_parse() {
        assert_eq!(
            parse(&argv(&["inspect", "-f", "{{.State.Running}}", "sbx"])).unwrap(),
            Call::Inspect {
                format: Some("{{.State.Running}}".into()),
                kind: None,
                targets: vec!["sbx".into()]
            }
        );
        assert_eq!(
            parse(&argv(&[
                "image",
                "inspect",
                "openclaw-sandbox:bookworm-slim"
            ]))
            .unwrap(),
            Call::ImageInspect {
                image: "openclaw-sandbox:bookworm-slim".into()
            }
        );
        let Call::Exec(e) = parse(&argv(&[
            "exec",
            "-i",
            "-w",
            "/workspace",
            "--env-file",
            "/tmp/e",
            "sbx",
            "sh",
            "-lc",
            "ls",
        ]))
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (e.interactive, e.workdir.as_deref(), e.container.as_str()),
            (true, Some("/workspace"), "sbx")
        );
        assert_eq!(e.command, ["sh", "-lc", "ls"]);
        assert_eq!(
            parse(&argv(&["rm", "-f", "sbx"])).unwrap(),
            Call::Remove {
                force: true,
                containers: vec!["sbx".into()]
            }
        );
        assert_eq!(
            parse(&argv(&["start", "sbx"])).unwrap(),
            Call::Start {
                containers: vec!["sbx".into()]
            }
        );
    }

    #[test]
    fn what_the_gateway_may_not_ask_for_is_refused_in_dockers_words() {
        let with = |extra: &[&str]| {
            let mut a = openclaw_create();
            let at = a.len() - 3;
            for (i, x) in extra.iter().enumerate() {
                a.insert(at + i, x.to_string());
            }
            let Call::Create(c) = parse(&a).unwrap() else {
                panic!()
            };
            judge_create(&c, &policy()).unwrap_err().to_string()
        };
        for (extra, says) in [
            (&["-v", "/etc:/x"][..], "bind source /etc is outside"),
            (
                &["-v", "/workspace/../etc:/x"],
                "bind source /workspace/../etc is outside",
            ),
            (&["--privileged"], "--privileged is not allowed"),
            (&["--network", "host"], "--network host is not allowed"),
            (
                &["--cap-add", "SYS_ADMIN"],
                "--cap-add SYS_ADMIN is not allowed",
            ),
            (
                &["--device", "/dev/fuse"],
                "--device /dev/fuse is not allowed",
            ),
            (
                &["--security-opt", "seccomp=unconfined"],
                "--security-opt seccomp=unconfined",
            ),
            (&["--user", "0:0"], "--user root"),
            (&["--gpus", "all"], "--gpus all"),
        ] {
            let e = with(extra);
            assert!(
                e.starts_with("Error response from daemon: ") && e.contains(says),
                "{extra:?}: {e}"
            );
        }
        let mut a = openclaw_create();
        let n = a.len();
        a[n - 3] = "debian:latest".into();
        let Call::Create(c) = parse(&a).unwrap() else {
            panic!()
        };
        assert!(judge_create(&c, &policy())
            .unwrap_err()
            .0
            .contains("No such image: debian:latest"));
        // A read-only gateway mount is not sandbox material, whatever the gateway asks; one
        // nested in a writable mount shadows it (however the path is spelled), while a
        // sibling name is the writable mount's.
        let mut nested = policy();
        nested.gateway_mounts.push(GatewayMount {
            inside: "/workspace/.git".into(),
            host: "/cage/git-ro".into(),
            read_only: true,
        });
        for (src, accepted) in [
            ("/config", false),
            ("/config/openclaw.json", false),
            ("/workspace/.git", false),
            ("/workspace//.git", false),
            ("/workspace/.git/", false),
            ("/workspace/./.git", false),
            ("/workspace/.gitx", true),
            ("/workspace/", true),
        ] {
            let mut a = openclaw_create();
            a.insert(a.len() - 3, "-v".into());
            a.insert(a.len() - 3, format!("{src}:/cfg:rw"));
            let Call::Create(c) = parse(&a).unwrap() else {
                panic!()
            };
            let judged = judge_create(&c, &nested);
            assert_eq!(judged.is_ok(), accepted, "{src}: {judged:?}");
            if let Ok(s) = judged {
                let b = s.binds.iter().find(|b| b.inside == "/cfg").unwrap();
                assert_eq!(b.root, "/cage/workspace");
                assert!(!b.path.contains(".git/") && b.path != ".git");
            }
        }
        // Unknown flags are refused, not skipped.
        let mut a = openclaw_create();
        a.insert(1, "--pid=host".into());
        assert_eq!(parse(&a).unwrap_err().0, "unknown flag: --pid");
        assert!(parse(&argv(&["run", "x"])).is_err());
    }

    fn rendered_gateway() -> (crate::SandboxRequest, oci_spec::runtime::Spec) {
        let mut req = crate::SandboxRequest::new(
            vec!["node".into()],
            crate::RootfsSource::Dir("/cage/rootfs/openclaw".into()),
        );
        req.workspace = Some("/cage/workspace".into());
        req.extra_mounts = vec![
            crate::ExtraMount::Bind {
                src: "/cage/config".into(),
                dst: "/config".into(),
                ro: true,
            },
            crate::ExtraMount::Bind {
                src: "/cage/.cagerun/volumes/state".into(),
                dst: "/state".into(),
                ro: false,
            },
        ];
        let spec = render_as_1000(&req);
        (req, spec)
    }

    fn render_as_1000(req: &crate::SandboxRequest) -> oci_spec::runtime::Spec {
        crate::render_sandbox(
            req,
            crate::HostIds {
                uid: 1000,
                gid: 1000,
            },
        )
        .unwrap()
    }

    fn mount<'a>(mounts: &'a [GatewayMount], inside: &str) -> &'a GatewayMount {
        mounts.iter().find(|m| m.inside == inside).unwrap()
    }

    #[test]
    fn the_gateway_s_workspace_and_volumes_are_writable_sandbox_material() {
        let (req, spec) = rendered_gateway();
        let mounts = gateway_mounts(&req, &spec);
        let ws = mount(&mounts, "/workspace");
        assert_eq!((ws.host.as_str(), ws.read_only), ("/cage/workspace", false));
        let state = mount(&mounts, "/state");
        assert_eq!(
            (state.host.as_str(), state.read_only),
            ("/cage/.cagerun/volumes/state", false)
        );
    }

    #[test]
    fn the_gateway_s_read_only_binds_and_kernel_filesystems_shadow() {
        let (req, spec) = rendered_gateway();
        let mounts = gateway_mounts(&req, &spec);
        let config = mount(&mounts, "/config");
        assert_eq!(
            (config.host.as_str(), config.read_only),
            ("/cage/config", true)
        );
        let proc = mount(&mounts, "/proc");
        assert_eq!((proc.host.as_str(), proc.read_only), ("", true));
        let tmp = mount(&mounts, "/tmp");
        assert!(tmp.read_only, "a tmpfs is no sandbox material");
    }

    #[test]
    fn a_writable_source_at_another_destination_is_not_writable_there() {
        let (mut req, _) = rendered_gateway();
        // The model says /state is writable; a spec mount of the same source elsewhere
        // (read-only in the model) stays read-only.
        req.extra_mounts.push(crate::ExtraMount::Bind {
            src: "/cage/.cagerun/volumes/state".into(),
            dst: "/state-ro".into(),
            ro: true,
        });
        let spec = render_as_1000(&req);
        let mounts = gateway_mounts(&req, &spec);
        assert!(mount(&mounts, "/state-ro").read_only);
        assert!(!mount(&mounts, "/state").read_only);
    }
}

/// `docker inspect --format TEMPLATE` for the Go templates OpenClaw uses, over the broker's
/// inspect document (docker's JSON field names): literal text, `{{.A.B}}`, `{{json .A}}`,
/// `{{index .A "key"}}`, `{{println .}}`, `{{range .A}}…{{end}}`, and `{{-`/`-}}` trimming.
/// Anything else is an error (a template the broker does not know is not guessed at).
pub fn render_template(template: &str, doc: &serde_json::Value) -> Result<String, DockerError> {
    let tokens = tokenize(template)?;
    let mut out = String::new();
    eval(&tokens, doc, &mut out)?;
    Ok(out)
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Text(String),
    Action(String),
}

fn template_error(msg: impl Into<String>) -> DockerError {
    DockerError(format!("template: {}", msg.into()))
}

fn tokenize(t: &str) -> Result<Vec<Token>, DockerError> {
    let mut tokens = Vec::new();
    let mut rest = t;
    while let Some(start) = rest.find("{{") {
        let mut text = rest[..start].to_string();
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| template_error("unclosed action"))?;
        let mut action = &after[..end];
        if let Some(a) = action.strip_prefix('-') {
            text = text.trim_end().to_string();
            action = a;
        }
        let trim_next = action.ends_with('-');
        if trim_next {
            action = &action[..action.len() - 1];
        }
        if !text.is_empty() {
            tokens.push(Token::Text(text));
        }
        tokens.push(Token::Action(action.trim().to_string()));
        rest = &after[end + 2..];
        if trim_next {
            rest = rest.trim_start();
        }
    }
    if !rest.is_empty() {
        tokens.push(Token::Text(rest.to_string()));
    }
    Ok(tokens)
}

fn words(action: &str) -> Result<Vec<String>, DockerError> {
    let mut out = Vec::new();
    let mut chars = action.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_whitespace() {
            continue;
        }
        let mut w = String::new();
        if c == '"' {
            w.push('"');
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => w.extend(chars.next()),
                    Some(x) => w.push(x),
                    None => return Err(template_error("unterminated quoted string")),
                }
            }
        } else {
            w.push(c);
            while let Some(&x) = chars.peek() {
                if x.is_whitespace() {
                    break;
                }
                w.push(x);
                chars.next();
            }
        }
        out.push(w);
    }
    Ok(out)
}

fn lookup<'a>(
    dot: &'a serde_json::Value,
    path: &str,
) -> Result<&'a serde_json::Value, DockerError> {
    static NULL: serde_json::Value = serde_json::Value::Null;
    if path == "." {
        return Ok(dot);
    }
    let fields = path
        .strip_prefix('.')
        .ok_or_else(|| template_error(format!("unsupported argument {path:?}")))?;
    let mut v = dot;
    for f in fields.split('.') {
        v = v.get(f).unwrap_or(&NULL);
    }
    Ok(v)
}

/// Go's default formatting of a value, as `{{.X}}` prints it.
fn go_format(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Null => "<no value>".into(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(go_format).collect::<Vec<_>>().join(" ")
        ),
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let items: Vec<String> = keys
                .iter()
                .map(|k| format!("{k}:{}", go_format(&m[*k])))
                .collect();
            format!("map[{}]", items.join(" "))
        }
    }
}

fn eval_action(action: &str, dot: &serde_json::Value) -> Result<String, DockerError> {
    let w = words(action)?;
    match w.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [path] if path.starts_with('.') => Ok(go_format(lookup(dot, path)?)),
        ["json", path] => {
            serde_json::to_string(lookup(dot, path)?).map_err(|e| template_error(e.to_string()))
        }
        ["index", path, key] if key.starts_with('"') => Ok(go_format(
            lookup(dot, path)?
                .get(&key[1..])
                .unwrap_or(&serde_json::Value::Null),
        )),
        ["println", args @ ..] | ["print", args @ ..] => {
            let parts = args
                .iter()
                .map(|a| lookup(dot, a).map(go_format))
                .collect::<Result<Vec<_>, _>>()?;
            let nl = if w[0] == "println" { "\n" } else { "" };
            Ok(format!("{}{nl}", parts.join(" ")))
        }
        _ => Err(template_error(format!(
            "unsupported action {{{{{action}}}}}"
        ))),
    }
}

fn eval(tokens: &[Token], dot: &serde_json::Value, out: &mut String) -> Result<(), DockerError> {
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            Token::Text(t) => out.push_str(t),
            Token::Action(a) if a.starts_with("range ") => {
                // The matching {{end}}, past nested ranges.
                let mut depth = 0;
                let mut j = i + 1;
                loop {
                    match tokens.get(j) {
                        None => return Err(template_error("range without end")),
                        Some(Token::Action(x)) if x.starts_with("range ") => depth += 1,
                        Some(Token::Action(x)) if x == "end" && depth == 0 => break,
                        Some(Token::Action(x)) if x == "end" => depth -= 1,
                        _ => {}
                    }
                    j += 1;
                }
                let over = lookup(dot, a["range ".len()..].trim())?;
                match over {
                    serde_json::Value::Array(items) => {
                        for item in items {
                            eval(&tokens[i + 1..j], item, out)?;
                        }
                    }
                    serde_json::Value::Object(m) => {
                        let mut keys: Vec<&String> = m.keys().collect();
                        keys.sort();
                        for k in keys {
                            eval(&tokens[i + 1..j], &m[k], out)?;
                        }
                    }
                    _ => {}
                }
                i = j;
            }
            Token::Action(a) if a == "end" => return Err(template_error("unexpected {{end}}")),
            Token::Action(a) => out.push_str(&eval_action(a, dot)?),
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod template_tests {
    use super::*;

    fn doc() -> serde_json::Value {
        serde_json::json!({
            "Id": "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "State": { "Running": true },
            "Config": {
                "Labels": { "openclaw.sandbox": "1", "openclaw.configHash": "abc" },
                "Env": ["LANG=C.UTF-8", "OPENCLAW_EXEC=1"]
            },
            "Mounts": [{ "Type": "bind", "Source": "/cage/workspace", "Destination": "/workspace", "RW": true }],
            "HostConfig": { "Tmpfs": { "/tmp": "" } }
        })
    }

    #[test]
    fn openclaws_formats_render_as_docker_renders_them() {
        let d = doc();
        assert_eq!(render_template("{{.State.Running}}", &d).unwrap(), "true");
        assert_eq!(render_template("{{.Id}}", &d).unwrap().len(), 64);
        assert_eq!(
            render_template("{{ index .Config.Labels \"openclaw.configHash\" }}", &d).unwrap(),
            "abc"
        );
        assert_eq!(
            render_template("{{ index .Config.Labels \"missing\" }}", &d).unwrap(),
            "<no value>"
        );
        assert_eq!(
            render_template("{{range .Config.Env}}{{println .}}{{end}}", &d).unwrap(),
            "LANG=C.UTF-8\nOPENCLAW_EXEC=1\n"
        );
        let out = render_template(
            "{\"Mounts\":{{json .Mounts}},\"Tmpfs\":{{json .HostConfig.Tmpfs}}}",
            &d,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["Mounts"][0]["Destination"], "/workspace");
        assert_eq!(v["Tmpfs"]["/tmp"], "");
        assert_eq!(
            render_template("a {{- .State.Running -}} b", &d).unwrap(),
            "atrueb"
        );
    }

    #[test]
    fn unknown_actions_are_errors_not_guesses() {
        let d = doc();
        assert!(render_template("{{.State.Running", &d).is_err());
        assert!(render_template("{{call .X}}", &d).is_err());
        assert!(render_template("{{range .Mounts}}x", &d).is_err());
    }
}

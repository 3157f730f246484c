//! `cagerun exec`: flags → `SandboxRequest` → OCI `Spec` (cage-spec) → fast engine.
//! This module only gathers input from the host (files, paths, ids); policy is in cage-spec.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cage_sandbox::{Plan, RunOptions};
use cage_spec::sandbox::{DEFAULT_USER, HOST_ROOTFS_BINDS};
use cage_spec::{envfile, passwd, render_sandbox, HostIds, RootfsSource, SandboxRequest};
use clap::Args;

#[derive(Args, Debug)]
#[command(trailing_var_arg = true)]
pub struct ExecArgs {
    /// Host directory mounted read-write at /workspace (the only writable host path).
    #[arg(long, value_name = "DIR")]
    workspace: Option<PathBuf>,
    /// `host` (read-only binds of the host's /usr, /lib, /etc/ssl, ...) or an image tree.
    #[arg(long, value_name = "host|DIR", default_value = "host")]
    rootfs: String,
    /// Run an OCI bundle (DIR/config.json) through the fast engine instead of flags.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["workspace", "user", "env", "env_file", "workdir", "memory", "pids", "tmpfs_size", "tty"])]
    bundle: Option<PathBuf>,
    /// Network: `none` (a fresh namespace with only lo).
    #[arg(long, value_name = "MODE", default_value = "none")]
    net: String,
    /// UID[:GID] or NAME[:GROUP] inside the sandbox (default 1000:1000).
    #[arg(long, short = 'u', value_name = "UID:GID")]
    user: Option<String>,
    /// Set an environment variable (repeatable). The host environment never leaks in.
    #[arg(long, short = 'e', value_name = "K=V")]
    env: Vec<String>,
    /// Read KEY=VALUE lines (docker's env-file format).
    #[arg(long, value_name = "FILE")]
    env_file: Vec<PathBuf>,
    /// Working directory inside the sandbox (default /workspace, or / without a workspace).
    #[arg(long = "workdir", short = 'w', value_name = "DIR")]
    workdir: Option<String>,
    /// Kill the whole sandbox after this many seconds (exit 124).
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    /// Memory limit, e.g. 512m (default 1g).
    #[arg(long, value_name = "SIZE")]
    memory: Option<String>,
    /// Maximum number of processes (default 256).
    #[arg(long, value_name = "N")]
    pids: Option<i64>,
    /// Size of the /tmp tmpfs (default 128m).
    #[arg(long, value_name = "SIZE")]
    tmpfs_size: Option<String>,
    /// Keep stdin attached (otherwise it is /dev/null).
    #[arg(short, long)]
    interactive: bool,
    /// Give the command a pseudo-terminal.
    #[arg(short, long)]
    tty: bool,
    /// The command and its arguments (after `--`).
    #[arg(value_name = "CMD")]
    command: Vec<String>,
}

fn host_ids() -> HostIds {
    HostIds {
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
    }
}

fn workspace_dir(path: &Path) -> Result<PathBuf> {
    let meta = std::fs::metadata(path).with_context(|| {
        format!(
            "workspace {} does not exist; create it or pass another --workspace",
            path.display()
        )
    })?;
    if !meta.is_dir() {
        bail!("workspace {} is not a directory", path.display());
    }
    std::fs::canonicalize(path).with_context(|| format!("resolving workspace {}", path.display()))
}

pub fn rootfs_source(arg: &str) -> Result<RootfsSource> {
    if arg == "host" {
        let mut existing_binds = Vec::new();
        let mut symlinks = Vec::new();
        for p in HOST_ROOTFS_BINDS.iter().map(PathBuf::from) {
            // One readlink answers both questions: does it exist, is it a link. A top-level
            // relative link into /usr (merged /usr) stays a link; others are bound.
            match std::fs::read_link(&p) {
                Ok(t)
                    if t.is_relative()
                        && p.parent() == Some(Path::new("/"))
                        && t.starts_with("usr") =>
                {
                    symlinks.push((p, t))
                }
                Ok(_) if p.exists() => existing_binds.push(p),
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => existing_binds.push(p),
                Err(_) => {}
            }
        }
        return Ok(RootfsSource::Host {
            existing_binds,
            symlinks,
        });
    }
    let dir = Path::new(arg);
    let meta = std::fs::metadata(dir).with_context(|| {
        format!("rootfs {arg} does not exist; pass `host` or an unpacked image directory")
    })?;
    if !meta.is_dir() {
        bail!("rootfs {arg} is not a directory");
    }
    Ok(RootfsSource::Dir(std::fs::canonicalize(dir)?))
}

fn read_optional(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

pub fn run(args: ExecArgs) -> Result<i32> {
    if args.net != "none" {
        bail!("--net {}: only `none` is available for sandboxes (internet mode comes with the gateway's `cagerun internet on`)", args.net);
    }
    let timeout = match args.timeout {
        Some(t) if !(t > 0.0 && t.is_finite()) => {
            bail!("--timeout {t}: give a positive number of seconds")
        }
        Some(t) => Some(Duration::from_secs_f64(t)),
        None => None,
    };
    let (spec, base) = match &args.bundle {
        Some(dir) => {
            if !args.command.is_empty() {
                bail!("--bundle runs the bundle's process.args; drop the command after `--`");
            }
            let config = dir.join("config.json");
            let spec = oci_spec::runtime::Spec::load(&config)
                .with_context(|| format!("reading OCI bundle config {}", config.display()))?;
            (spec, std::fs::canonicalize(dir)?)
        }
        None => (render_from_flags(&args)?, PathBuf::from("/")),
    };
    let plan = Plan::from_spec(&spec, &base)?;
    tracing::info!(
        "sandbox: {} mounts, uid {} → host {}",
        plan.mounts.len(),
        plan.process.uid,
        plan.uid_map[0].outside
    );
    let opts = RunOptions {
        interactive: args.interactive,
        timeout,
    };
    let outcome = cage_sandbox::run(&plan, &opts)?;
    if outcome == cage_sandbox::Outcome::TimedOut {
        eprintln!(
            "cagerun: timed out after {}s; killed the sandbox",
            args.timeout.unwrap_or_default()
        );
    }
    Ok(outcome.code())
}

/// Run a rendered spec (absolute paths) in the fast engine to its end: its exit code.
/// `interactive` keeps stdin attached.
pub fn run_spec(spec: &oci_spec::runtime::Spec, interactive: bool) -> Result<i32> {
    let plan = Plan::from_spec(spec, Path::new("/"))?;
    let opts = RunOptions {
        interactive,
        timeout: None,
    };
    Ok(cage_sandbox::run(&plan, &opts)?.code())
}

pub fn print_spec(args: ExecArgs) -> Result<()> {
    if args.bundle.is_some() {
        bail!("spec renders flags; a bundle already has its config.json");
    }
    let spec = render_from_flags(&args)?;
    println!("{}", serde_json::to_string_pretty(&spec)?);
    Ok(())
}

/// The /etc/passwd and /etc/group user names resolve against: the image's, or those a
/// host-binds root is given.
pub fn passwd_files(rootfs: &RootfsSource) -> (String, String) {
    match rootfs {
        RootfsSource::Dir(d) => (
            read_optional(&d.join("etc/passwd")),
            read_optional(&d.join("etc/group")),
        ),
        RootfsSource::Host { .. } => (
            passwd::synthesized_passwd(DEFAULT_USER),
            passwd::synthesized_group(DEFAULT_USER),
        ),
    }
}

/// Rootless, a rootfs unpacked with its image's ownership is run with the same mapping.
pub fn mapped_ownership(rootfs: &RootfsSource) -> Option<cage_spec::SubordinateIds> {
    if nix::unistd::geteuid().is_root() {
        // As root every sandbox runs on root's range (render_sandbox refuses without one).
        return crate::ids::root_range().ok();
    }
    let RootfsSource::Dir(dir) = rootfs else {
        return None;
    };
    let sub = crate::ids::subordinate()?;
    crate::ids::ownership_mapped(dir, &sub).then_some(sub)
}

fn render_from_flags(args: &ExecArgs) -> Result<oci_spec::runtime::Spec> {
    let rootfs = rootfs_source(&args.rootfs)?;
    let mut req = SandboxRequest::new(args.command.clone(), rootfs.clone());
    req.subordinate = mapped_ownership(&rootfs);
    if let Some(ws) = &args.workspace {
        req.workspace = Some(workspace_dir(ws)?);
    }
    if let Some(user) = &args.user {
        let (pw, gr) = passwd_files(&rootfs);
        req.user = passwd::resolve_user(user, &pw, &gr)?;
    }
    for file in &args.env_file {
        req.env.extend(read_env_file(file, "--env-file")?);
    }
    for e in &args.env {
        req.env.push(envfile::parse_env_arg(e)?);
    }
    req.cwd = args.workdir.clone();
    req.memory = args
        .memory
        .as_deref()
        .map(cage_spec::size::parse_size)
        .transpose()?;
    req.tmpfs_size = args
        .tmpfs_size
        .as_deref()
        .map(cage_spec::size::parse_size)
        .transpose()?;
    req.pids = args.pids;
    req.terminal = args.tty;
    Ok(render_sandbox(&req, host_ids())?)
}

/// The variables of an env file (`what` names it in errors: `--env-file`, `env_file`);
/// `${VAR}` references resolve against cagerun's own environment.
pub fn read_env_file(path: &Path, what: &str) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {what} {}", path.display()))?;
    Ok(envfile::parse_env_file(
        &path.display().to_string(),
        &text,
        |k| std::env::var(k).ok(),
    )?)
}

//! `cagerun exec` and `cagerun spec`: flags → `SandboxRequest` → OCI `Spec` (cage-spec) →
//! the fast engine. Host facts come from the engine's `host` module; policy is cage-spec's.
//! Shared by the full binary and the small front (see [`Route`]).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use cage_runtime::host;
use cage_runtime::sandbox::{Outcome, RunOptions};
use cage_spec::{envfile, passwd, render_sandbox, SandboxRequest};
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
    /// (internal, the sandbox broker) With --bundle: join the cage's user namespace and a
    /// network namespace of its (descriptors USER,NET inherited), instead of a fresh one.
    #[arg(long, value_name = "USER,NET", hide = true, requires = "bundle")]
    join_fds: Option<String>,
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

/// Where an `exec` goes, decided before anything starts. The full binary follows every
/// route; the small front (`src/bin/cagerun-front.rs`) follows [`Route::Sandbox`] itself and
/// hands the others to the full binary, so that it links neither D-Bus nor the services.
pub enum Route {
    /// A sandbox this process can start as it is.
    Sandbox(Job),
    /// A sandbox with limits, once the user's systemd has given this process a delegated
    /// scope over D-Bus (pure cgroup v2, from a cgroup that is not delegated).
    AfterScope(Job),
    /// The broker's: a bundle in a cage's user namespace and one of its network namespaces.
    InheritedNetwork {
        spec: oci_spec::runtime::Spec,
        user: i32,
        net: i32,
        interactive: bool,
    },
}

/// A sandbox, ready to start.
pub struct Job {
    spec: oci_spec::runtime::Spec,
    base: PathBuf,
    opts: RunOptions,
    timeout_secs: Option<f64>,
}

impl Job {
    pub fn run(self) -> Result<i32> {
        let outcome = cage_runtime::sandbox::run(&self.spec, &self.base, &self.opts)?;
        if outcome == Outcome::TimedOut {
            eprintln!(
                "cagerun: timed out after {}s; killed the sandbox",
                self.timeout_secs.unwrap_or_default()
            );
        }
        Ok(outcome.code())
    }
}

/// `cagerun exec`: every route.
pub fn run(args: ExecArgs) -> Result<i32> {
    match route(args)? {
        Route::Sandbox(job) => job.run(),
        Route::AfterScope(job) => {
            cage_runtime::systemd::ensure_delegated_for_sandbox()?;
            job.run()
        }
        Route::InheritedNetwork {
            spec,
            user,
            net,
            interactive,
        } => cage_runtime::services::enter::run_in_inherited_network(spec, user, net, interactive),
    }
}

/// Check the flags, render the spec (cage-spec decides) and find the route. Nothing has
/// started when this returns, except that a process alone in a cgroup delegated to it has
/// moved into its leaf (see `cage_runtime::systemd`).
pub fn route(args: ExecArgs) -> Result<Route> {
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
            cage_runtime::sandbox::load_bundle(dir)?
        }
        None => (render_from_flags(&args)?, PathBuf::from("/")),
    };
    if let Some(fds) = &args.join_fds {
        let parse = |s: Option<&str>| s.and_then(|n| n.trim().parse::<i32>().ok());
        let mut it = fds.split(',');
        let (Some(user), Some(net)) = (parse(it.next()), parse(it.next())) else {
            bail!("--join-fds USER,NET: two descriptor numbers");
        };
        return Ok(Route::InheritedNetwork {
            spec,
            user,
            net,
            interactive: args.interactive,
        });
    }
    let park = cage_runtime::sandbox::park_socket_from_env()?;
    if park.is_some() && (args.bundle.is_none() || timeout.is_some()) {
        bail!(
            "{}: only for a --bundle without --timeout (the broker's warm pool)",
            cage_runtime::sandbox::PARK_ENV
        );
    }
    let limited = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .is_some_and(|r| r.memory().is_some() || r.pids().is_some());
    let job = Job {
        spec,
        base,
        opts: RunOptions {
            interactive: args.interactive,
            timeout,
            park,
            // `cagerun exec` exits with the command's code right after the sandbox ends.
            caller_exits_after: true,
        },
        timeout_secs: args.timeout,
    };
    if limited && !cage_runtime::systemd::delegated_without_bus()? {
        return Ok(Route::AfterScope(job));
    }
    Ok(Route::Sandbox(job))
}

pub fn print_spec(args: ExecArgs) -> Result<()> {
    if args.bundle.is_some() {
        bail!("spec renders flags; a bundle already has its config.json");
    }
    let spec = render_from_flags(&args)?;
    println!("{}", serde_json::to_string_pretty(&spec)?);
    Ok(())
}

fn render_from_flags(args: &ExecArgs) -> Result<oci_spec::runtime::Spec> {
    let rootfs = host::rootfs_source(&args.rootfs)?;
    let mut req = SandboxRequest::new(args.command.clone(), rootfs.clone());
    req.subordinate = host::mapped_ownership(&rootfs);
    if let Some(ws) = &args.workspace {
        req.workspace = Some(host::workspace_dir(ws)?);
    }
    if let Some(user) = &args.user {
        let (pw, gr) = host::passwd_files(&rootfs);
        req.user = passwd::resolve_user(user, &pw, &gr)?;
    }
    for file in &args.env_file {
        req.env.extend(host::read_env_file(file, "--env-file")?);
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
    Ok(render_sandbox(&req, host::host_ids())?)
}

/// `exec [--config FILE] SVC -- CMD...`, told apart from the sandbox's `exec [FLAGS] --
/// CMD...` by the one bare word before `--`.
pub fn parse_enter(argv: &[String]) -> Option<(PathBuf, String, Vec<String>)> {
    if argv.get(1).map(String::as_str) != Some("exec") {
        return None;
    }
    let dash = argv.iter().position(|a| a == "--")?;
    let mut config = PathBuf::from("config/cage.toml");
    let mut words = Vec::new();
    let mut i = 2;
    while i < dash {
        let a = &argv[i];
        if a == "--config" && i + 1 < dash {
            config = PathBuf::from(&argv[i + 1]);
            i += 2;
            continue;
        }
        if let Some(v) = a.strip_prefix("--config=") {
            config = PathBuf::from(v);
        } else {
            words.push(a.clone());
        }
        i += 1;
    }
    match words.as_slice() {
        [svc] if !svc.starts_with('-') && dash + 1 < argv.len() => {
            Some((config, svc.clone(), argv[dash + 1..].to_vec()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn exec_with_one_bare_word_before_the_dash_dash_enters_that_service() {
        let parsed = parse_enter(&argv(&["cagerun", "exec", "gateway", "--", "ls", "-l"]));
        assert_eq!(
            parsed,
            Some((
                PathBuf::from("config/cage.toml"),
                "gateway".into(),
                argv(&["ls", "-l"])
            ))
        );
    }

    #[test]
    fn exec_enter_takes_the_config_in_both_spellings() {
        for words in [
            &[
                "cagerun",
                "exec",
                "--config",
                "c/cage.toml",
                "gw",
                "--",
                "id",
            ][..],
            &["cagerun", "exec", "--config=c/cage.toml", "gw", "--", "id"][..],
        ] {
            let (config, service, _) = parse_enter(&argv(words)).unwrap();
            assert_eq!(
                (config, service.as_str()),
                (PathBuf::from("c/cage.toml"), "gw")
            );
        }
    }

    #[test]
    fn exec_with_flags_only_is_the_sandbox_not_a_service() {
        assert_eq!(
            parse_enter(&argv(&["cagerun", "exec", "--workspace", "ws", "--", "id"])),
            None
        );
        assert_eq!(parse_enter(&argv(&["cagerun", "exec", "--", "id"])), None);
    }

    #[test]
    fn exec_enter_needs_a_command_and_only_the_exec_verb() {
        assert_eq!(parse_enter(&argv(&["cagerun", "exec", "gw", "--"])), None);
        assert_eq!(
            parse_enter(&argv(&["cagerun", "run", "gw", "--", "id"])),
            None
        );
    }
}

//! `cagerun exec SVC -- CMD`: one more process in a running service, as its own process
//! would be started: the service's user, environment, working directory, no capabilities,
//! no_new_privs, its rlimits and its seccomp filter (libcontainer's tenant path drops the
//! seccomp filter, so the joining is ours: setns into the container's namespaces, cgroup
//! first, then the service's process settings from its bundle, applied by cage-sandbox).
//!
//! Single-threaded by construction (the CLI path runs no runtime): setns into a user
//! namespace refuses a threaded caller.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use cage_sandbox::plan::ProcessPlan;
use nix::sched::{setns, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};

use super::{control, state::CagePaths};

/// Run `command` in the running `service` of the cage of `config`: its exit code.
pub fn run(config: PathBuf, service: String, command: Vec<String>) -> Result<i32> {
    let cage = crate::config::load_cage(&config)?;
    crate::config::find_service(&cage, &service, &config)?;
    let paths = CagePaths::new(&config, cage.name.as_deref())?;
    let pid = running_pid(&paths, &service)?;
    let bundle = paths.service_dir(&service).join("bundle/config.json");
    let spec = oci_spec::runtime::Spec::load(&bundle)
        .with_context(|| format!("reading {}", bundle.display()))?;
    let mut process = ProcessPlan::from_spec(&spec)?;
    process.args = command;
    let writable = cage_sandbox::plan::writable_destinations_of(&spec);

    // Everything is opened from the host's view before the first setns.
    let open = |ns: &str| {
        File::open(format!("/proc/{pid}/ns/{ns}"))
            .with_context(|| format!("opening {service}'s {ns} namespace"))
    };
    let order = [
        ("user", CloneFlags::CLONE_NEWUSER),
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ];
    let namespaces = order
        .iter()
        .map(|(n, f)| Ok((open(n)?, *f)))
        .collect::<Result<Vec<_>>>()?;
    join_cgroup(&spec)?;
    for (fd, flag) in &namespaces {
        setns(fd.as_fd(), *flag).with_context(|| format!("joining {service}'s namespaces"))?;
    }
    // The pid namespace takes effect for children: the command is one.
    // SAFETY: single-threaded; the child only sets its identity up and execs.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            let err = start(&process, &writable).unwrap_err();
            eprintln!("cagerun: exec in {service}: {err:#}");
            // SAFETY: leave the child without the parent's destructors.
            unsafe { libc::_exit(126) }
        }
        ForkResult::Parent { child } => loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e).context("waitpid"),
            }
        },
    }
}

/// The pid of the running `service`'s process, as the supervisor reports it.
fn running_pid(paths: &CagePaths, service: &str) -> Result<i32> {
    let reply = control::request(paths, &control::Request::Ps).map_err(|e| {
        e.context(crate::Error::NotUp {
            cage: paths.id.clone(),
            hint: "`cagerun up -d`",
        })
    })?;
    let status = reply
        .services
        .unwrap_or_default()
        .into_iter()
        .find(|s| s.service == service)
        .with_context(|| format!("{service} is not part of the running cage"))?;
    match (&status.state, status.pid) {
        (state, Some(pid)) if state.is_running() => Ok(pid),
        (state, _) => bail!("{service} is not running ({state}): `cagerun ps`"),
    }
}

/// A running service's user and network namespaces, opened from the host's view.
pub struct ServiceNetwork {
    service: String,
    user: File,
    net: File,
}

/// The namespaces of the running `service`, for a job that shares its network
/// (`network = "service:NAME"`).
pub fn network_of(paths: &CagePaths, service: &str) -> Result<ServiceNetwork> {
    let pid = running_pid(paths, service).with_context(|| {
        format!("a job that shares {service}'s network runs while {service} is up")
    })?;
    let open = |ns: &str| {
        File::open(format!("/proc/{pid}/ns/{ns}"))
            .with_context(|| format!("opening {service}'s {ns} namespace"))
    };
    Ok(ServiceNetwork {
        service: service.to_string(),
        user: open("user")?,
        net: open("net")?,
    })
}

/// [`run_in_network`] on namespaces inherited as descriptors `user` and `net` (the sandbox
/// broker's list sandboxes: it opened them, the engine runs in a process of its own).
pub fn run_in_inherited_network(
    spec: oci_spec::runtime::Spec,
    user: i32,
    net: i32,
    interactive: bool,
) -> Result<i32> {
    use std::os::fd::FromRawFd;
    for fd in [user, net] {
        if fd < 3 || nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_err() {
            anyhow::bail!("--join-fds: descriptor {fd} is not open");
        }
    }
    // SAFETY: the broker passed these descriptors open at these numbers; nothing else owns them.
    let (user, net) = unsafe { (File::from_raw_fd(user), File::from_raw_fd(net)) };
    run_in_network(
        spec,
        ServiceNetwork {
            service: "the sandbox".into(),
            user,
            net,
        },
        interactive,
    )
}

/// Run a one-shot job's spec (made by [`cage_spec::service::share_network`]: no network
/// namespace of its own, identity id maps) inside the service's network: its exit code.
///
/// A child process joins the job's limits cgroup while it is still the caller, then the
/// cage's user namespace (as root, as the job's user: host root has no id there, and a
/// user namespace can only be made by a mapped id) and the service's network namespace,
/// and runs the sandbox engine from there: the job's user namespace nests in the cage's,
/// and its network is the service's, which it does not own. This process stays the caller,
/// on the host, and removes the cgroup afterwards.
pub fn run_in_network(
    mut spec: oci_spec::runtime::Spec,
    network: ServiceNetwork,
    interactive: bool,
) -> Result<i32> {
    // The limits: a leaf the child joins before it leaves the host's view (the engine's
    // own leaf would be made by an id of the cage, which may not write the host's cgroups).
    let mut linux = spec.linux().clone().unwrap_or_default();
    let resources = linux.resources().clone();
    let memory = resources
        .as_ref()
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .and_then(|l| u64::try_from(l).ok());
    let pids = resources
        .as_ref()
        .and_then(|r| r.pids().as_ref())
        .and_then(|p| u64::try_from(p.limit()).ok());
    linux.set_resources(None);
    spec.set_linux(Some(linux));
    let leaf = match cage_sandbox::cgroups::find_parent(nix::unistd::geteuid().as_raw()) {
        Some(parent) if memory.is_some() || pids.is_some() => Some(
            cage_sandbox::cgroups::Leaf::create(&parent, memory, pids)
                .context("the job's limits cgroup")?,
        ),
        _ => {
            if memory.is_some() || pids.is_some() {
                tracing::warn!("no delegated cgroup: the job's memory and pids limits are not enforced (`cagerun setup-cgroups`)");
            }
            None
        }
    };
    let as_root = nix::unistd::geteuid().is_root();
    let job_ids = spec
        .process()
        .as_ref()
        .map(|p| (p.user().uid(), p.user().gid()))
        .unwrap_or_default();
    // SAFETY: single-threaded (the CLI path runs no runtime); the child joins namespaces,
    // runs the engine and exits without returning here.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            // SAFETY: die with the caller.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
            let run = || -> Result<i32> {
                if let Some(leaf) = &leaf {
                    leaf.add(std::process::id() as i32)?;
                }
                setns(network.user.as_fd(), CloneFlags::CLONE_NEWUSER)
                    .context("joining the cage's user namespace")?;
                if as_root {
                    // Host root has no id in the cage; the job's own user has. Becoming it
                    // here (not the cage's root) keeps the sandbox's capabilities for its
                    // setup: inside, the engine's switch to that user changes nothing.
                    let (uid, gid) = job_ids;
                    nix::unistd::setgroups(&[]).context("setgroups in the cage")?;
                    nix::unistd::setresgid(gid.into(), gid.into(), gid.into())
                        .context("setgid in the cage")?;
                    nix::unistd::setresuid(uid.into(), uid.into(), uid.into())
                        .context("setuid in the cage")?;
                    // The uid change made this process undumpable, which makes the /proc
                    // files of the sandbox it clones host root's: it could not write the
                    // sandbox's id maps. Nothing of the cage can name this process (it is in
                    // the host's pid namespace), so being dumpable opens nothing.
                    nix::sys::prctl::set_dumpable(true).context("PR_SET_DUMPABLE")?;
                }
                setns(network.net.as_fd(), CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("joining {}'s network", network.service))?;
                crate::sandbox::run_spec(&spec, interactive)
            };
            let code = run().unwrap_or_else(|e| {
                eprintln!("cagerun: {e:#}");
                i32::from(crate::error::EXIT_CAGERUN_ERROR)
            });
            // SAFETY: leave without the caller's destructors (the leaf is the caller's).
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            // The terminal's signals reach the child's process group too: its engine
            // forwards them to the job, and this process waits for the outcome.
            let ignore = nix::sys::signal::SigHandler::SigIgn;
            for sig in [
                nix::sys::signal::Signal::SIGINT,
                nix::sys::signal::Signal::SIGQUIT,
            ] {
                // SAFETY: SIG_IGN installs no handler code.
                unsafe { nix::sys::signal::signal(sig, ignore) }.ok();
            }
            let code = loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => break code,
                    Ok(WaitStatus::Signaled(_, sig, _)) => break 128 + sig as i32,
                    Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(e).context("waitpid"),
                }
            };
            drop(leaf);
            Ok(code)
        }
    }
}

/// Into the service's cgroup (its limits count this process too), in every hierarchy.
fn join_cgroup(spec: &oci_spec::runtime::Spec) -> Result<()> {
    let Some(rel) = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone()) else {
        return Ok(());
    };
    let rel = rel.strip_prefix("/").unwrap_or(&rel).to_path_buf();
    let mut dirs: Vec<PathBuf> = cage_sandbox::cgroups::v1_hierarchies()
        .into_iter()
        .map(|h| h.join(&rel))
        .collect();
    dirs.push(PathBuf::from(cage_sandbox::cgroups::ROOT).join(&rel));
    let me = std::process::id().to_string();
    for d in dirs.iter().filter(|d| d.join("cgroup.procs").exists()) {
        std::fs::write(d.join("cgroup.procs"), &me)
            .with_context(|| format!("joining the cgroup {}", d.display()))?;
    }
    Ok(())
}

/// In the child, inside every namespace: take the service's identity and limits, then become
/// its process the one way every sandboxed process does ([`cage_sandbox::process::exec`]:
/// session, capabilities, no_new_privs, Landlock, no descriptor beyond 0/1/2, seccomp last).
fn start(p: &ProcessPlan, writable: &[PathBuf]) -> Result<std::convert::Infallible> {
    nix::unistd::setgroups(
        &p.additional_gids
            .iter()
            .map(|g| nix::unistd::Gid::from_raw(*g))
            .collect::<Vec<_>>(),
    )
    .context("setgroups")?;
    let (uid, gid) = (
        nix::unistd::Uid::from_raw(p.uid),
        nix::unistd::Gid::from_raw(p.gid),
    );
    nix::unistd::setresgid(gid, gid, gid).context("setresgid")?;
    nix::unistd::setresuid(uid, uid, uid).context("setresuid")?;
    cage_sandbox::rlimits::apply(&p.rlimits)?;
    if let Some(m) = p.umask {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(m));
    }
    let filter = match &p.seccomp {
        Some(profile) => cage_sandbox::seccomp::compile(profile)?,
        None => Vec::new(),
    };
    // The capabilities from joining the user namespace survive the uid change (no uid was
    // the namespace's root): exec drops them all, the bounding set first.
    let setup = cage_sandbox::process::ExecSetup {
        console: false,
        writable,
    };
    Ok(cage_sandbox::process::exec(p, &filter, &setup)?)
}

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
    let reply = control::request(&paths, &control::Request::Ps).map_err(|e| {
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
    let pid = match (&status.state, status.pid) {
        (state, Some(pid)) if state.is_running() => pid,
        (state, _) => bail!("{service} is not running ({state}): `cagerun ps`"),
    };
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

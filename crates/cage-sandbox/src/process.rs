//! The one way a process becomes a sandboxed process, right before `execve`: fresh signal
//! state, a new session, the working directory, the capability sets, no_new_privs with the
//! Landlock layer, nothing inherited beyond 0/1/2, and the seccomp filter last.
//!
//! Both ways a process starts go through [`exec`]: the sandbox engine's command (after pid 1
//! took the identity and built the root, [`crate::init`]) and `cagerun exec SVC` / command
//! health checks (after joining a running service's namespaces and taking its identity). A
//! hardening step added here is present in both; none is written twice.

use std::convert::Infallible;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
use seccompiler::BpfProgram;

use crate::error::{Result, SandboxError};
use crate::plan::ProcessPlan;
use crate::{capabilities, fds, landlock};

/// What the caller did before: whether a terminal is to be made the controlling one
/// (`/dev/console` of the sandbox, reopened), and where Landlock allows writes.
pub struct ExecSetup<'a> {
    pub console: bool,
    pub writable: &'a [PathBuf],
}

fn setup_err(what: &str) -> impl Fn(nix::Error) -> SandboxError + '_ {
    move |e| SandboxError::Setup(format!("{what}: {e}"))
}

/// What [`prepare`] did ahead of the command: the Landlock ruleset, made but not enforced.
pub struct Prepared {
    landlock: Option<landlock::Ruleset>,
}

/// From here to `execve`, in this order: [`prepare`] then [`finish`]. The caller has taken
/// the identity (uid, gid, groups), the rlimits and the umask; on success this never returns.
pub fn exec(p: &ProcessPlan, seccomp: &[BpfProgram], setup: &ExecSetup) -> Result<Infallible> {
    let prepared = prepare(p, setup)?;
    finish(prepared, p, seccomp)
}

/// The steps that depend on the plan alone, not on the command, its environment, working
/// directory or stdio: a parked sandbox's command process takes them before its call comes
/// (see [`crate::park`]), then [`finish`] with what the call brings. Nothing here weakens
/// what the process may do, and nothing here is enforced before [`finish`] but the new
/// session and the bounding set, which only ever remove.
pub fn prepare(p: &ProcessPlan, setup: &ExecSetup) -> Result<Prepared> {
    // Signals: the command starts with default dispositions (std ignores SIGPIPE); the mask
    // is emptied in `finish`, so a parked process sleeps with every signal blocked.
    for sig in Signal::iterator() {
        if sig != Signal::SIGKILL && sig != Signal::SIGSTOP {
            // SAFETY: resetting dispositions before exec.
            unsafe { libc::signal(sig as libc::c_int, libc::SIG_DFL) };
        }
    }

    // A new session: no controlling terminal of the caller's, so TIOCSTI has no target.
    nix::unistd::setsid().map_err(setup_err("setsid"))?;
    if setup.console {
        // Re-open the terminal through the sandbox's /dev/console, then make it ours.
        let console = nix::fcntl::open(
            "/dev/console",
            nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(setup_err("opening /dev/console"))?;
        for target in 0..3 {
            unsafe { libc::dup2(console, target) };
        }
        unsafe { libc::close(console) };
        // SAFETY: make the pty replica (fd 0) our controlling terminal.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
            return Err(SandboxError::Setup(format!(
                "TIOCSCTTY: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    // The bounding set limits only what a later exec or capset may gain.
    capabilities::drop_bounding(&p.caps)?;
    let landlock = if p.no_new_privileges {
        Some(landlock::Ruleset::prepare(setup.writable)?)
    } else {
        None
    };
    Ok(Prepared { landlock })
}

/// The rest, with the command: working directory, capability sets, no_new_privs with the
/// Landlock layer, nothing inherited beyond 0/1/2, the seccomp filter last, `execve`.
pub fn finish(prepared: Prepared, p: &ProcessPlan, seccomp: &[BpfProgram]) -> Result<Infallible> {
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(setup_err("sigprocmask"))?;
    nix::unistd::chdir(&p.cwd).map_err(|e| {
        SandboxError::Setup(format!(
            "working directory {} is not usable in the sandbox: {e}",
            p.cwd.display()
        ))
    })?;

    capabilities::set(&p.caps)?;
    if p.no_new_privileges {
        prctl_no_new_privs()?;
        if let Some(ruleset) = prepared.landlock {
            ruleset.restrict()?;
        }
    }
    let program = resolve_command(p)?;
    let argv: Vec<CString> = p.args.iter().map(|a| cstring(a)).collect::<Result<_>>()?;
    let envp: Vec<CString> = p.env.iter().map(|e| cstring(e)).collect::<Result<_>>()?;
    // Nothing of the caller's beyond 0/1/2 reaches the command (the error pipe, if any,
    // closes at exec).
    fds::cloexec_from_3();

    crate::seccomp::install(seccomp)?;
    let e = nix::unistd::execve(&program, &argv, &envp).unwrap_err();
    Err(SandboxError::Setup(format!(
        "cannot execute {}: {e}",
        program.to_string_lossy()
    )))
}

fn prctl_no_new_privs() -> Result<()> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(SandboxError::Setup(format!(
            "PR_SET_NO_NEW_PRIVS: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

fn cstring(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| SandboxError::InvalidSpec(format!("{s:?} contains a NUL byte")))
}

/// `execvp`'s search, done here so "not found" is one clear error naming the PATH searched.
fn resolve_command(p: &ProcessPlan) -> Result<CString> {
    let name = &p.args[0];
    if name.contains('/') {
        if !Path::new(name).exists() {
            return Err(SandboxError::Setup(format!(
                "command not found in the sandbox: {name}"
            )));
        }
        return cstring(name);
    }
    let path = p
        .env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/bin:/usr/bin:/bin");
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = PathBuf::from(dir).join(name);
        let c = CString::new(candidate.as_os_str().as_bytes())
            .map_err(|_| SandboxError::InvalidSpec("NUL in PATH".into()))?;
        // SAFETY: access(2) on a valid C string.
        if candidate.is_file() && unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0 {
            return Ok(c);
        }
    }
    Err(SandboxError::Setup(format!(
        "command not found in the sandbox: {name} (searched PATH={path}); is it in the rootfs?"
    )))
}

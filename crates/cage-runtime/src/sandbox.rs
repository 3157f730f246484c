//! Running a rendered OCI spec in the fast sandbox engine (cage-sandbox) to its end.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cage_sandbox::Plan;
pub use cage_sandbox::{Outcome, RunOptions};

/// Run a rendered spec (absolute paths) in the fast engine to its end: its exit code.
/// `interactive` keeps stdin attached.
pub fn run_spec(spec: &oci_spec::runtime::Spec, interactive: bool) -> Result<i32> {
    let opts = RunOptions {
        interactive,
        timeout: None,
        park: None,
        caller_exits_after: false,
    };
    Ok(run(spec, Path::new("/"), &opts)?.code())
}

/// Run `spec`, whose relative paths are relative to `base` (a bundle's directory).
pub fn run(spec: &oci_spec::runtime::Spec, base: &Path, opts: &RunOptions) -> Result<Outcome> {
    let plan = Plan::from_spec(spec, base)?;
    tracing::info!(
        "sandbox: {} mounts, uid {} → host {}",
        plan.mounts.len(),
        plan.process.uid,
        plan.uid_map[0].outside
    );
    Ok(cage_sandbox::run(&plan, opts)?)
}

/// The broker's warm pool starts `cagerun exec --bundle B` with this variable naming the
/// descriptor of a parked sandbox's socket (cage-sandbox `park`). An environment variable,
/// not an argument: pid 1's command line is readable inside the sandbox, its environment is
/// not (pid 1 is not dumpable), so a parked sandbox's pid 1 reads like a fresh one's.
pub const PARK_ENV: &str = "CAGERUN_PARK_FD";

/// [`PARK_ENV`], taken out of this process's environment: only a socket is accepted.
pub fn park_socket_from_env() -> Result<Option<i32>> {
    let Some(value) = std::env::var_os(PARK_ENV) else {
        return Ok(None);
    };
    // Single-threaded here (the CLI before the engine starts).
    std::env::remove_var(PARK_ENV);
    let fd: i32 = value
        .to_str()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("{PARK_ENV}={value:?}: a descriptor number"))?;
    let st = nix::sys::stat::fstat(fd)
        .map_err(|e| anyhow::anyhow!("{PARK_ENV}={fd}: {e}: pass an open socket"))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        anyhow::bail!("{PARK_ENV}={fd}: not a socket");
    }
    Ok(Some(fd))
}

/// An OCI bundle's spec and its resolved directory.
pub fn load_bundle(dir: &Path) -> Result<(oci_spec::runtime::Spec, PathBuf)> {
    let config = dir.join("config.json");
    let spec = oci_spec::runtime::Spec::load(&config)
        .with_context(|| format!("reading OCI bundle config {}", config.display()))?;
    Ok((spec, std::fs::canonicalize(dir)?))
}

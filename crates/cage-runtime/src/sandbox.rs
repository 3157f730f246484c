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

/// `--park FD`: only a socket the broker passed; anything else is a caller's mistake.
pub fn check_park_socket(fd: i32) -> Result<()> {
    let st = nix::sys::stat::fstat(fd)
        .map_err(|e| anyhow::anyhow!("--park {fd}: {e}: pass an open socket"))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        anyhow::bail!("--park {fd}: not a socket");
    }
    Ok(())
}

/// An OCI bundle's spec and its resolved directory.
pub fn load_bundle(dir: &Path) -> Result<(oci_spec::runtime::Spec, PathBuf)> {
    let config = dir.join("config.json");
    let spec = oci_spec::runtime::Spec::load(&config)
        .with_context(|| format!("reading OCI bundle config {}", config.display()))?;
    Ok((spec, std::fs::canonicalize(dir)?))
}

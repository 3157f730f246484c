//! Landlock: a second, independent fence on the filesystem. Read and execute everywhere,
//! write only beneath the mounts the plan made writable (the workspace, /tmp, /dev/shm, ...)
//! and to the standard character devices; signals and abstract unix sockets scoped to the
//! sandbox. Best effort: a kernel without Landlock still has the mount-level protections.

use std::path::{Path, PathBuf};

use landlock::{
    path_beneath_rules, Access, AccessFs, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
    ABI,
};

use crate::error::{Result, SandboxError};

pub const DEVICE_FILES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/tty",
    "/dev/random",
    "/dev/urandom",
    "/dev/ptmx",
];

/// The paths of `paths` that no other path of the list contains.
fn outermost(paths: &[PathBuf]) -> Vec<PathBuf> {
    paths
        .iter()
        .filter(|p| !paths.iter().any(|q| q != *p && p.starts_with(q)))
        .cloned()
        .collect()
}

/// A sandbox's ruleset, made (its rules' paths opened) but not yet enforced: a parked
/// sandbox's command process makes it before its call comes (see [`crate::process::prepare`]).
pub struct Ruleset(landlock::RulesetCreated);

impl Ruleset {
    pub fn prepare(writable: &[PathBuf]) -> Result<Ruleset> {
        filesystem_rules(writable, true).map(Ruleset)
    }

    /// Returns whether the kernel enforced the ruleset fully, partly or not at all.
    pub fn restrict(self) -> Result<RulesetStatus> {
        let status = self.0.restrict_self().map_err(fail)?;
        Ok(status.ruleset)
    }
}

/// The filesystem half of [`Ruleset`] alone, enforced now, with signals and abstract sockets
/// left as they are: for another engine's container (`cagerun runtime`), whose init and
/// exec'd processes are separate Landlock domains that must still signal and reach each other.
pub fn restrict_writes(writable: &[PathBuf]) -> Result<RulesetStatus> {
    Ruleset(filesystem_rules(writable, false)?).restrict()
}

fn filesystem_rules(writable: &[PathBuf], scoped: bool) -> Result<landlock::RulesetCreated> {
    let abi = ABI::V6;
    let existing = |paths: Vec<&Path>| {
        paths
            .into_iter()
            .filter(|p| p.exists())
            .map(Path::to_path_buf)
            .collect::<Vec<_>>()
    };
    // A rule covers everything beneath it: nested paths would only cost a rule each.
    let writable = outermost(writable);
    let beneath_writable = |p: &Path| writable.iter().any(|w| p.starts_with(w));
    let devices = existing(
        DEVICE_FILES
            .iter()
            .map(Path::new)
            .filter(|p| !beneath_writable(p))
            .collect(),
    );
    let writable = existing(writable.iter().map(PathBuf::as_path).collect());
    fenced(abi, scoped)?
        .add_rules(path_beneath_rules(["/"], AccessFs::from_read(abi)))
        .map_err(fail)?
        .add_rules(path_beneath_rules(&devices, AccessFs::from_file(abi)))
        .map_err(fail)?
        .add_rules(path_beneath_rules(&writable, AccessFs::from_all(abi)))
        .map_err(fail)
}

/// No filesystem access at all from now on (no open, no exec, no write), signals and
/// abstract unix sockets scoped: for a process that already holds every descriptor it needs
/// (the egress proxy). Returns how fully the kernel enforced it.
pub fn no_filesystem() -> Result<RulesetStatus> {
    let status = fenced(ABI::V6, true)?.restrict_self().map_err(fail)?;
    Ok(status.ruleset)
}

fn fail(e: landlock::RulesetError) -> SandboxError {
    SandboxError::Setup(format!("landlock: {e}"))
}

/// A ruleset that handles every filesystem access (and, `scoped`, every scope) of `abi`,
/// with no rule yet: everything is denied until a rule allows it.
fn fenced(abi: ABI, scoped: bool) -> Result<landlock::RulesetCreated> {
    let ruleset = landlock::Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(fail)?;
    let ruleset = if scoped {
        ruleset.scope(Scope::from_all(abi)).map_err(fail)?
    } else {
        ruleset
    };
    ruleset.create().map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_paths_collapse_into_the_outer_rule() {
        let paths: Vec<PathBuf> = [
            "/dev",
            "/dev/shm",
            "/dev/pts",
            "/tmp",
            "/workspace",
            "/workspacex",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        let got = outermost(&paths);
        let want: Vec<PathBuf> = ["/dev", "/tmp", "/workspace", "/workspacex"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(got, want);
    }
}

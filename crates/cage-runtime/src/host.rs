//! What the host has, gathered for cage-spec to decide on: the caller's ids, which of the
//! host's system directories exist, passwd files, env files, the workspace, this binary.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cage_spec::sandbox::{DEFAULT_USER, HOST_ROOTFS_BINDS};
use cage_spec::{envfile, passwd, HostIds, RootfsSource};

use crate::ids;

/// The caller's effective ids.
pub fn host_ids() -> HostIds {
    HostIds {
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
    }
}

/// This binary, re-executed for the engine's own processes (holder, monitor, init, shim).
pub fn self_exe() -> Result<PathBuf> {
    std::env::current_exe().context("finding the cagerun binary (/proc/self/exe)")
}

/// Another cagerun binary installed beside this one: the first of `relative` (from this
/// binary's real directory) that is a file and not this binary itself (by device and inode).
/// Else what was looked at, for the caller's error. The front finds the full binary this
/// way, and the full binary the front ([`shim_exe`]).
pub fn binary_beside_self(relative: &[&str]) -> std::result::Result<PathBuf, String> {
    use std::os::unix::fs::MetadataExt;
    let me = std::env::current_exe().map_err(|e| format!("(this binary's path: {e})"))?;
    let mine = std::fs::metadata(&me).map(|m| (m.dev(), m.ino())).ok();
    let dir = me.parent().unwrap_or(Path::new("/"));
    let candidates: Vec<PathBuf> = relative.iter().map(|r| dir.join(r)).collect();
    for c in &candidates {
        if let Ok(m) = std::fs::metadata(c) {
            if m.is_file() && Some((m.dev(), m.ino())) != mine {
                return Ok(c.clone());
            }
        }
    }
    Err(candidates
        .iter()
        .map(|c| c.display().to_string())
        .collect::<Vec<_>>()
        .join(" or "))
}

/// The binary bound into services as their `docker` and `podman`: the small front installed
/// beside this binary (`bin/cagerun` for `libexec/cagerun/cagerun`; `cagerun-front` in
/// cargo's target directory), which starts in half the time at every tool call, else this
/// binary, which answers to those names too.
pub fn shim_exe() -> Result<PathBuf> {
    match binary_beside_self(&["../../bin/cagerun", "cagerun-front"]) {
        Ok(front) => Ok(front),
        Err(_) => self_exe(),
    }
}

/// The host's name for `uid` (the number when /etc/passwd has none).
pub fn user_name(uid: u32) -> String {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    cage_spec::passwd::lookup_account(&passwd, &uid.to_string())
        .map(|a| a.0)
        .unwrap_or_else(|| uid.to_string())
}

/// The workspace directory, which must exist: resolved once, by the user who names it.
pub fn workspace_dir(path: &Path) -> Result<PathBuf> {
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

/// `host` (the host's system directories, read-only) or an unpacked image directory.
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
        return ids::root_range().ok();
    }
    let RootfsSource::Dir(dir) = rootfs else {
        return None;
    };
    let sub = ids::subordinate()?;
    ids::ownership_mapped(dir, &sub).then_some(sub)
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

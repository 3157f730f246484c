//! `cagerun setup-cgroups --user NAME`: root delegates `<controller>/cagerun/<uid>` (cage-sandbox
//! `cgroups::delegated_v1`) in the cgroup v1 hierarchies (every mounted controller) to a user. On pure cgroup v2 nothing is needed
//! here: systemd delegates `user@UID.service` to each user.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cage_sandbox::cgroups::{self, Layout};

/// What `setup-cgroups` did.
#[derive(Debug)]
pub enum Delegation {
    /// cgroup v1: these directories now belong to the user.
    V1 { user: String, dirs: Vec<PathBuf> },
    /// cgroup v2: systemd delegates a subtree per user; nothing to do.
    Unified { user: String, uid: u32 },
}

/// Delegate `<controller>/cagerun/<uid>` in every v1 hierarchy to `user` (name or uid).
pub fn delegate(user: &str) -> Result<Delegation> {
    if !nix::unistd::geteuid().is_root() {
        bail!("setup-cgroups needs root: run it once with sudo");
    }
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    let (name, uid, gid) = cage_spec::passwd::lookup_account(&passwd, user)
        .with_context(|| format!("no such user {:?} in /etc/passwd", user))?;
    let (uid, gid) = (
        nix::unistd::Uid::from_raw(uid),
        nix::unistd::Gid::from_raw(gid),
    );
    match cgroups::detect() {
        Layout::V1 { .. } => {
            // Every mounted controller: libcontainer (services) joins all of them.
            let mut dirs = Vec::new();
            for h in cgroups::v1_hierarchies() {
                let dir = h.join(cgroups::delegated_v1(uid.as_raw()));
                let top = dir.parent().unwrap_or(&h).to_path_buf();
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                cgroups::fill_cpuset(&top)?;
                cgroups::fill_cpuset(&dir)?;
                for p in [dir.clone(), dir.join("cgroup.procs"), dir.join("tasks")] {
                    chown(&p, uid, gid)?;
                }
                dirs.push(dir);
            }
            Ok(Delegation::V1 { user: name, dirs })
        }
        Layout::Unified => Ok(Delegation::Unified {
            user: name,
            uid: uid.as_raw(),
        }),
        Layout::None => bail!(
            "no memory and pids cgroup controllers are mounted under {}",
            cgroups::ROOT
        ),
    }
}

fn chown(path: &Path, uid: nix::unistd::Uid, gid: nix::unistd::Gid) -> Result<()> {
    nix::unistd::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", path.display()))
}

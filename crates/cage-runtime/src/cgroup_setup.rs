//! `cagerun setup-cgroups --user NAME`: root delegates `<controller>/cagerun/<uid>` (cage-sandbox
//! `cgroups::delegated_v1`) in the cgroup v1 hierarchies (every mounted controller) to a user. On pure cgroup v2 nothing is needed
//! here: systemd delegates `user@UID.service` to each user.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cage_sandbox::cgroups::{self, Layout};

/// What `setup-cgroups` did.
#[derive(Debug)]
pub enum Delegation {
    /// cgroup v1: these directories now belong to the user; `favordynmods` says where the
    /// kernel's cheap cgroup moves were turned on (or were already), or why not.
    V1 {
        user: String,
        dirs: Vec<PathBuf>,
        favordynmods: Result<PathBuf, String>,
    },
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
            Ok(Delegation::V1 {
                user: name,
                dirs,
                favordynmods: favor_dynamic_moves(),
            })
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

/// On cgroup v1 every sandbox is moved into its cgroup by a write to `cgroup.procs` (v1 has
/// no CLONE_INTO_CGROUP), and the kernel makes that write wait out an RCU grace period unless
/// the global `favordynmods` is on: 5-12 ms per `cagerun exec` measured on an idle 2-vCPU
/// machine, 0.3 ms with it. v1 hierarchies cannot be remounted with it; the hybrid layout's
/// cgroup2 mount can, and the flag is global. Decision: the one-time root setup for v1 turns
/// it on, says so, and keeps every other option (the cost: forks and exits take the lock's
/// slower read path, a memory barrier). Not persistent: like the delegation, redo it after a
/// reboot.
fn favor_dynamic_moves() -> Result<PathBuf, String> {
    let Some((point, options)) = cgroups::cgroup2_mount() else {
        return Err("no cgroup2 mount (pure v1): each sandbox's cgroup join may wait out an RCU grace period".into());
    };
    if options.iter().any(|o| o == cgroups::FAVOR_DYNMODS) {
        return Ok(point);
    }
    cgroups::favor_dynamic_moves(&point, &options)
        .map(|()| point)
        .map_err(|e| format!("{e} (kernels before 6.0 lack it): each sandbox's cgroup join may wait out an RCU grace period"))
}

fn chown(path: &Path, uid: nix::unistd::Uid, gid: nix::unistd::Gid) -> Result<()> {
    nix::unistd::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", path.display()))
}

//! `cagerun setup-cgroups --user NAME`: root delegates `<controller>/cagerun/<uid>` in the
//! cgroup v1 hierarchies (every mounted controller) to a user. On pure cgroup v2 nothing is needed
//! here: systemd delegates `user@UID.service` to each user.

use std::path::Path;

use anyhow::{bail, Context, Result};
use cage_sandbox::cgroups::{self, Layout};
use clap::Args;

#[derive(Args, Debug)]
pub struct SetupArgs {
    /// The user (name or uid) whose sandboxes get cgroup limits.
    #[arg(long)]
    user: String,
}

pub fn run(args: SetupArgs) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("setup-cgroups needs root: run it once with sudo");
    }
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    let (name, uid, gid) = cage_spec::passwd::lookup_account(&passwd, &args.user)
        .with_context(|| format!("no such user {:?} in /etc/passwd", args.user))?;
    let (uid, gid) = (
        nix::unistd::Uid::from_raw(uid),
        nix::unistd::Gid::from_raw(gid),
    );
    match cgroups::detect() {
        Layout::V1 { .. } => {
            // Every mounted controller: libcontainer (services) joins all of them.
            for h in crate::services::cgroup::v1_hierarchies() {
                let top = h.join("cagerun");
                let dir = top.join(uid.to_string());
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                crate::services::cgroup::fill_cpuset(&top)?;
                crate::services::cgroup::fill_cpuset(&dir)?;
                for p in [dir.clone(), dir.join("cgroup.procs"), dir.join("tasks")] {
                    chown(&p, uid, gid)?;
                }
                println!("delegated {} to {name}", dir.display());
            }
            Ok(())
        }
        Layout::Unified => {
            println!(
                "cgroup v2: nothing to do here. Rootless sandboxes use the subtree systemd delegates to {} (user@{}.service); \
                 run cagerun inside it, e.g. `systemd-run --user --scope -p Delegate=yes cagerun exec ...`, or set CAGERUN_CGROUP_PARENT",
                name, uid
            );
            Ok(())
        }
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

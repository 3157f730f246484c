//! The caller's subordinate ids and a user namespace that uses them, for root filesystems
//! that keep their image's ownership (rootless, where /etc/subuid ranges and the uidmap
//! helpers exist).
//!
//! Mapping (cage-spec's keep-id): the default sandbox user 1000 is the caller; every other
//! image id 0..65535 is a subordinate id. So the image's root-owned files are root's inside
//! (and not the sandbox user's), and what the sandbox user writes is the caller's outside.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use cage_spec::sandbox::DEFAULT_USER;
use cage_spec::{keep_id_map, SubordinateIds};

/// The caller's ranges, when they are usable: rootless, newuidmap and newgidmap present, and
/// each range large enough for an image's ids.
pub fn subordinate() -> Option<SubordinateIds> {
    let uid = nix::unistd::geteuid().as_raw();
    if uid == 0 {
        return None;
    }
    for tool in ["newuidmap", "newgidmap"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            return None;
        }
    }
    let gid = nix::unistd::getegid().as_raw();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let name = cage_spec::passwd::lookup_account(&passwd, &uid.to_string())
        .map(|a| a.0)
        .unwrap_or_default();
    let (uid_base, uid_count) = cage_spec::passwd::subordinate_range(
        &std::fs::read_to_string("/etc/subuid").ok()?,
        &name,
        uid,
    )?;
    let (gid_base, gid_count) = cage_spec::passwd::subordinate_range(
        &std::fs::read_to_string("/etc/subgid").ok()?,
        &name,
        gid,
    )?;
    let sub = SubordinateIds {
        uid_base,
        uid_count,
        gid_base,
        gid_count,
    };
    keep_id_map(DEFAULT_USER.uid, uid, uid_base, uid_count)?;
    keep_id_map(DEFAULT_USER.gid, gid, gid_base, gid_count)?;
    Some(sub)
}

/// Root's own subordinate ranges (/etc/subuid, /etc/subgid), where sandboxes and services
/// run when cagerun runs as root: inside id N is host id base+N, never a real host id.
pub fn root_range() -> Result<SubordinateIds> {
    let range = |file: &str| {
        std::fs::read_to_string(file)
            .ok()
            .and_then(|t| cage_spec::passwd::subordinate_range(&t, "root", 0))
            .filter(|(_, count)| *count >= cage_spec::sandbox::IMAGE_ID_SPAN)
    };
    match (range("/etc/subuid"), range("/etc/subgid")) {
        (Some(u), Some(g)) => Ok(SubordinateIds {
            uid_base: u.0,
            uid_count: u.1,
            gid_base: g.0,
            gid_count: g.1,
        }),
        _ => bail!("{}", cage_spec::SpecError::RootNeedsSubordinate),
    }
}

/// A root filesystem unpacked with its image's ownership: its `/` belongs to the image's
/// root, which is a subordinate id.
pub fn ownership_mapped(rootfs: &Path, sub: &SubordinateIds) -> bool {
    std::fs::metadata(rootfs)
        .map(|m| m.uid() >= sub.uid_base && m.uid() < sub.uid_base + sub.uid_count)
        .unwrap_or(false)
}

fn set_map(tool: &str, pid: i32, lines: &[(u32, u32, u32)]) -> Result<()> {
    let mut cmd = std::process::Command::new(tool);
    cmd.arg(pid.to_string());
    for (i, o, c) in lines {
        cmd.args([i.to_string(), o.to_string(), c.to_string()]);
    }
    let out = cmd
        .output()
        .with_context(|| format!("running {tool} (package uidmap)"))?;
    if !out.status.success() {
        bail!("{tool}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Run `work` as root of a user namespace mapped with the keep-id map (in a child process;
/// the caller's process never changes namespace).
pub fn as_mapped_root(sub: &SubordinateIds, work: impl FnOnce() -> Result<()>) -> Result<()> {
    let (ready_r, ready_w) = nix::unistd::pipe()?;
    let (go_r, go_w) = nix::unistd::pipe()?;
    let (err_r, err_w) = nix::unistd::pipe()?;
    let uid = nix::unistd::geteuid().as_raw();
    let gid = nix::unistd::getegid().as_raw();
    let parent = nix::unistd::getpid();
    // SAFETY: the child runs `work` and exits; it never returns into the caller's frames.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => {
            drop((ready_r, go_w, err_r));
            let die_with_parent = || {
                // SAFETY: prctl with integer arguments.
                unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
            };
            die_with_parent();
            let result = (|| -> Result<()> {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER)
                    .context("unsharing a user namespace")?;
                nix::unistd::write(&ready_w, b"r")?;
                let mut go = [0u8; 1];
                if nix::unistd::read(go_r.as_raw_fd(), &mut go)? != 1 {
                    bail!("the id maps were not set");
                }
                nix::unistd::setresgid(0.into(), 0.into(), 0.into())
                    .context("becoming the namespace's root group")?;
                nix::unistd::setresuid(0.into(), 0.into(), 0.into())
                    .context("becoming the namespace's root")?;
                // A change of credentials clears the parent-death signal: set it again, so a
                // killed cagerun does not leave its helper unpacking on its own.
                die_with_parent();
                if nix::unistd::getppid() != parent {
                    bail!("cagerun ended");
                }
                work()
            })();
            let code = match result {
                Ok(()) => 0,
                Err(e) => {
                    let mut f = std::fs::File::from(err_w);
                    let _ = write!(f, "{e:#}");
                    1
                }
            };
            // SAFETY: leave without running the caller's destructors.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop((ready_w, go_r, err_w));
            let mut ready = [0u8; 1];
            let mapped = (|| -> Result<()> {
                if nix::unistd::read(ready_r.as_raw_fd(), &mut ready)? != 1 {
                    bail!("the helper ended before its namespace existed");
                }
                set_map(
                    "newuidmap",
                    child.as_raw(),
                    &keep_id_map(DEFAULT_USER.uid, uid, sub.uid_base, sub.uid_count).unwrap(),
                )?;
                set_map(
                    "newgidmap",
                    child.as_raw(),
                    &keep_id_map(DEFAULT_USER.gid, gid, sub.gid_base, sub.gid_count).unwrap(),
                )?;
                nix::unistd::write(&go_w, b"g")?;
                Ok(())
            })();
            drop(go_w);
            let status = nix::sys::wait::waitpid(child, None)?;
            mapped?;
            let mut msg = String::new();
            std::fs::File::from(err_r).read_to_string(&mut msg)?;
            match status {
                nix::sys::wait::WaitStatus::Exited(_, 0) => Ok(()),
                _ if !msg.is_empty() => bail!("{msg}"),
                other => bail!("the mapped helper failed: {other:?}"),
            }
        }
    }
}

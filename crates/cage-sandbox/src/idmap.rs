//! User namespace id maps, written by the parent into /proc/<child>/{uid_map,gid_map}, or
//! through newuidmap/newgidmap where a rootless map uses subordinate id ranges.
//!
//! Rootless, the kernel lets a process map only its own uid and gid, and only after
//! `setgroups` is denied in the child (otherwise dropping a supplementary group inside could
//! grant access on the host). As root the maps may name any id, and setgroups stays allowed
//! so the child can drop root's supplementary groups.

use std::io::Write;

use crate::error::{Result, SandboxError};
use crate::plan::IdMap;

fn write(pid: i32, file: &str, text: &str) -> Result<()> {
    let path = format!("/proc/{pid}/{file}");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| SandboxError::io(format!("writing {text:?} to {path}"), e))
}

fn render(maps: &[IdMap]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.inside, m.outside, m.count))
        .collect()
}

pub fn write_maps(pid: i32, uid_map: &[IdMap], gid_map: &[IdMap], privileged: bool) -> Result<()> {
    if !privileged && (uid_map.len() > 1 || gid_map.len() > 1) {
        // Subordinate ranges: only the setuid helpers may write those maps.
        via_helper("newuidmap", pid, uid_map)?;
        return via_helper("newgidmap", pid, gid_map);
    }
    if !privileged {
        write(pid, "setgroups", "deny")?;
    }
    write(pid, "uid_map", &render(uid_map))?;
    write(pid, "gid_map", &render(gid_map))
}

fn via_helper(tool: &str, pid: i32, maps: &[IdMap]) -> Result<()> {
    let mut cmd = std::process::Command::new(tool);
    cmd.arg(pid.to_string());
    for m in maps {
        cmd.args([
            m.inside.to_string(),
            m.outside.to_string(),
            m.count.to_string(),
        ]);
    }
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| SandboxError::io(format!("running {tool} (package uidmap)"), e))?;
    if !out.status.success() {
        return Err(SandboxError::Setup(format!(
            "{tool} refused the id map ({}); check the user's ranges in /etc/subuid and /etc/subgid",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

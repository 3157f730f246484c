//! `cagerun doctor`, `cagerun setup-cgroups`, `cagerun check`: the host and the config.

use std::path::Path;

use anyhow::Result;
use cage_runtime::cgroup_setup::Delegation;
use cage_runtime::doctor::Level;
use clap::Args;

pub fn doctor() -> Result<i32> {
    let report = cage_runtime::doctor::check()?;
    for f in &report.findings {
        let tag = match f.level {
            Level::Ok => "ok   ",
            Level::Warn => "warn ",
            Level::Fail => "FAIL ",
        };
        println!("{tag} {}: {}", f.what, f.detail);
    }
    Ok(if report.failed() { 1 } else { 0 })
}

#[derive(Args, Debug)]
pub struct SetupArgs {
    /// The user (name or uid) whose sandboxes get cgroup limits.
    #[arg(long)]
    user: String,
}

pub fn setup_cgroups(args: SetupArgs) -> Result<()> {
    match cage_runtime::cgroup_setup::delegate(&args.user)? {
        Delegation::V1 {
            user,
            dirs,
            favordynmods,
        } => {
            for dir in dirs {
                println!("delegated {} to {user}", dir.display());
            }
            match favordynmods {
                Ok(point) => println!(
                    "cheap cgroup moves: favordynmods on {} (global; undo with a remount without it)",
                    point.display()
                ),
                Err(why) => println!("cheap cgroup moves: not available: {why}"),
            }
        }
        Delegation::Unified { user, uid } => println!(
            "cgroup v2: nothing to do here. Rootless sandboxes use the subtree systemd delegates to {} (user@{}.service); \
             run cagerun inside it, e.g. `systemd-run --user --scope -p Delegate=yes cagerun exec ...`, or set CAGERUN_CGROUP_PARENT",
            user, uid
        ),
    }
    Ok(())
}

pub fn check(file: &Path) -> Result<i32> {
    let cage = cage_runtime::config::load_cage(file)?;
    let names: Vec<&str> = cage
        .services
        .iter()
        .filter(|s| s.supervised())
        .map(|s| s.name.as_str())
        .collect();
    println!(
        "{}: {} services, started in this order: {}",
        file.display(),
        names.len(),
        names.join(", ")
    );
    for s in cage.services.iter().filter(|s| !s.supervised()) {
        let when = if s.once {
            "once, before the services (first `up`)"
        } else {
            "on demand (`cagerun run`)"
        };
        println!("  job {}: {when}", s.name);
    }
    Ok(0)
}

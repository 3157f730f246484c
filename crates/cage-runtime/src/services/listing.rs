//! `ls` and `down NAME`: this user's cages, found by their runtime directories (each holds
//! the supervisor's record and control socket; see [`super::state`]), not by their configs,
//! so a cage whose directory was moved or deleted while it runs is still found and stopped.
//!
//! A runtime directory whose supervisor is gone is stale: `ls` does not list it (it is not
//! running) and changes nothing (it is safe in scripts and prompts); it reports it, and
//! `down NAME` cleans it up as `down` always did.

use anyhow::{bail, Result};

use super::control;
use super::state::{unix_now, CagePaths, Record};
use crate::views::{CageListing, StaleCage};

/// This user's running cages, and the stale ones.
pub fn list() -> (Vec<CageListing>, Vec<StaleCage>) {
    let mut running = Vec::new();
    let mut stale = Vec::new();
    for id in CagePaths::running_ids() {
        let Some(paths) = CagePaths::of_running(&id) else {
            // No record (yet): a supervisor starting this very moment, or leftovers of one
            // killed before it wrote any; a control socket that answers tells them apart.
            if control::request(&CagePaths::runtime_of(&id), &control::Request::Ps).is_err() {
                stale.push(StaleCage {
                    name: id,
                    directory: Default::default(),
                });
            }
            continue;
        };
        let record = Record::load(&paths).unwrap_or_default();
        if !record.supervisor.alive() {
            stale.push(StaleCage {
                name: id,
                directory: paths.cage_dir,
            });
            continue;
        }
        let services = control::request(&paths, &control::Request::Ps)
            .ok()
            .and_then(|r| r.services)
            .unwrap_or_default();
        let started = (record.started > 0).then_some(record.started);
        running.push(CageListing {
            name: id,
            directory_exists: paths.cage_dir.join("config").is_dir(),
            directory: paths.cage_dir,
            supervisor_pid: record.supervisor.pid,
            started,
            uptime_secs: started.map(|s| unix_now().saturating_sub(s)),
            running: services.iter().filter(|s| s.state.is_running()).count(),
            services: services.into_iter().map(|s| s.service).collect(),
        });
    }
    (running, stale)
}

/// The cage `name` names among this user's: its id exactly, or the name the id starts with
/// (`svc` for `svc-1a2b3c4d`) when only one cage has it.
pub fn find(name: &str) -> Result<CagePaths> {
    let ids = CagePaths::running_ids();
    let matches: Vec<&String> = if ids.iter().any(|i| i == name) {
        ids.iter().filter(|i| *i == name).collect()
    } else {
        ids.iter()
            .filter(|i| i.rsplit_once('-').is_some_and(|(base, _)| base == name))
            .collect()
    };
    match matches.as_slice() {
        [id] => Ok(CagePaths::of_running(id).unwrap_or_else(|| CagePaths::runtime_of(id))),
        [] => bail!("no cage named {name:?} is running for this user (`cagerun ls` lists them)"),
        many => bail!(
            "{name:?} names {} cages: {} (give the full name)",
            many.len(),
            many.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

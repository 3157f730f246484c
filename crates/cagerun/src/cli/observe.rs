//! Looking at running cages: `ls` (this user's cages), `inspect SVC` (a service's resolved
//! settings and live state), `events` (what happens to the services, as it happens).

use std::io::Write;

use anyhow::Result;
use cage_runtime::services::{self, control, inspect, listing};
use clap::Args;

use super::image::StoreArg;
use super::services::CageArg;

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Print the cages as JSON (docs/json.md).
    #[arg(long)]
    json: bool,
}

/// `3m12s`, `2h5m`: how long for `secs`.
pub fn duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{}s", secs / 60, secs % 60),
        _ => format!("{}h{}m", secs / 3600, (secs % 3600) / 60),
    }
}

pub fn ls(args: LsArgs) -> Result<i32> {
    let (cages, stale) = listing::list();
    for s in &stale {
        eprintln!(
            "cagerun: cage {} is not running (its supervisor is gone): `cagerun down {}` cleans up what it left",
            s.name, s.name
        );
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&cages)?);
        return Ok(0);
    }
    println!(
        "{:<28} {:<18} {:>8} DIRECTORY",
        "NAME", "SERVICES", "UPTIME"
    );
    for c in &cages {
        println!(
            "{:<28} {:<18} {:>8} {}{}",
            c.name,
            format!("{}/{} running", c.running, c.services.len()),
            c.uptime_secs.map(duration).unwrap_or("-".into()),
            c.directory.display(),
            if c.directory_exists { "" } else { " (gone)" }
        );
    }
    Ok(0)
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Print as JSON (docs/json.md).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    cage: CageArg,
    #[command(flatten)]
    store: StoreArg,
    /// The service.
    service: String,
}

pub fn inspect(args: InspectArgs) -> Result<i32> {
    let (paths, cage) = services::open(args.cage.config())?;
    let i = inspect::inspect(&paths, &cage, &args.service, &args.store.root())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&i)?);
        return Ok(0);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "service:   {} (cage {})", i.service, i.cage)?;
    let root = match &i.root.path {
        Some(p) => format!("{} {} ({})", i.root.kind, i.root.source, p.display()),
        None => i.root.kind.clone(),
    };
    writeln!(out, "root:      {root}")?;
    writeln!(out, "command:   {}", i.command.join(" "))?;
    writeln!(out, "user:      {}:{}", i.user.uid, i.user.gid)?;
    writeln!(out, "workdir:   {}", i.workdir)?;
    writeln!(out, "env:       {}", i.env.join(" "))?;
    for m in &i.mounts {
        let what = match m.kind.as_str() {
            "tmpfs" => format!("tmpfs ({} bytes)", m.size.unwrap_or(0)),
            kind => format!("{kind} {}", m.source.display()),
        };
        let ro = if m.read_only { " (read-only)" } else { "" };
        writeln!(out, "mount:     {} <- {what}{ro}", m.destination)?;
    }
    for p in &i.ports {
        writeln!(
            out,
            "port:      {}:{} -> {}",
            p.host_address, p.host_port, p.container_port
        )?;
    }
    let r = &i.resources;
    writeln!(
        out,
        "resources: memory {}, pids {}, cpus {}",
        r.memory.map(|m| m.to_string()).unwrap_or("-".into()),
        r.pids.map(|p| p.to_string()).unwrap_or("-".into()),
        r.cpus.map(|c| c.to_string()).unwrap_or("-".into()),
    )?;
    let internet = match (&i.internet_list, i.internet) {
        (Some(list), _) if list.is_empty() => "by name: nothing listed yet".to_string(),
        (Some(list), _) => format!("by name: {}", list.join(", ")),
        (None, true) => "yes".into(),
        (None, false) => "no".into(),
    };
    writeln!(out, "internet:  {internet}")?;
    writeln!(out, "restart:   {}", i.restart)?;
    if let Some(h) = &i.healthcheck {
        writeln!(
            out,
            "health:    {} {} every {} ms",
            h.kind, h.probe, h.interval_ms
        )?;
    }
    match &i.state {
        Some(s) => {
            let since = s
                .started
                .map(|t| duration(cage_runtime::services::state::unix_now().saturating_sub(t)));
            writeln!(
                out,
                "state:     {} pid {} up {} restarts {} health {}",
                s.state.label(s.last_exit),
                s.pid.map(|p| p.to_string()).unwrap_or("-".into()),
                since.unwrap_or("-".into()),
                s.restarts,
                s.health
            )?;
        }
        None => writeln!(out, "state:     not running (the cage is not up)")?,
    }
    Ok(0)
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// One JSON object per line (docs/json.md).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    cage: CageArg,
}

/// `HH:MM:SS.mmm` (UTC) of a unix time in milliseconds.
fn clock(ms: u64) -> String {
    let s = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60,
        ms % 1000
    )
}

/// Until the cage goes down (or Ctrl-C).
pub fn events(args: EventsArgs) -> Result<i32> {
    let (paths, _) = services::open(args.cage.config())?;
    let stream = control::subscribe(&paths).map_err(|e| {
        e.context(cage_runtime::Error::NotUp {
            cage: paths.id.clone(),
            hint: "`cagerun up -d`",
        })
    })?;
    eprintln!(
        "cagerun: subscribed to cage {} (until it goes down; Ctrl-C to stop)",
        paths.id
    );
    let mut out = std::io::stdout().lock();
    for event in stream {
        let e = event?;
        if args.json {
            writeln!(out, "{}", serde_json::to_string(&e)?)?;
        } else {
            use control::EventKind::*;
            let what = match &e.kind {
                Start { pid } => format!("start pid={pid}"),
                Exit { code } => format!("exit code={code}"),
                Failed { error } => format!("failed: {error}"),
                Restart { restarts } => format!("restart #{restarts}"),
                Health { health, previous } => format!("health {previous} -> {health}"),
                Dropped { count } => {
                    format!("({count} events dropped: this reader was too slow)")
                }
            };
            writeln!(out, "{} {} {what}", clock(e.time_ms), e.service)?;
        }
        out.flush()?;
    }
    Ok(0)
}

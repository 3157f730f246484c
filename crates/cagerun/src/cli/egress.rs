//! `cagerun egress [-f] [--json]`: the audit log of egress by name (every lookup and every
//! connection attempt of `internet = [...]` services and sandboxes, with its verdict).

use std::io::Write;
use std::time::Duration;

use anyhow::Result;
use cage_runtime::egress::{log_path, AuditReader};
use cage_runtime::egress::{Entry, Verdict};
use clap::Args;

use super::services::CageArg;

#[derive(Args, Debug)]
pub struct EgressArgs {
    /// Keep printing entries as they come.
    #[arg(short, long)]
    follow: bool,
    /// One JSON object per line (docs/json.md).
    #[arg(long)]
    json: bool,
    /// Only the last N entries (before following).
    #[arg(short = 'n', long)]
    tail: Option<usize>,
    #[command(flatten)]
    cage: CageArg,
}

pub fn egress(args: EgressArgs) -> Result<i32> {
    let (paths, _) = args.cage.paths()?;
    let path = log_path(&paths);
    if !path.exists() && !args.follow {
        eprintln!(
            "cagerun: no egress log yet ({}): only services and sandboxes with an `internet = [...]` list are logged",
            path.display()
        );
        return Ok(0);
    }
    let mut reader = AuditReader::open(&path);
    let mut first = reader.next_batch();
    if let Some(n) = args.tail {
        let skip = first.len().saturating_sub(n);
        first.drain(..skip);
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if !args.json {
        writeln!(
            out,
            "{:<23} {:<16} {:<5} {:<28} {:<15} {:>5} {:<6} {:>9} {:>9} {:>7}  REASON",
            "TIME",
            "SOURCE",
            "PROTO",
            "NAME",
            "ADDRESS",
            "PORT",
            "VERDICT",
            "SENT",
            "RECEIVED",
            "MS"
        )?;
    }
    print(&mut out, &first, args.json)?;
    out.flush()?;
    if args.follow {
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let batch = reader.next_batch();
            if print(&mut out, &batch, args.json).is_err() || out.flush().is_err() {
                break;
            }
        }
    }
    Ok(0)
}

fn print(out: &mut impl Write, entries: &[Entry], json: bool) -> std::io::Result<()> {
    for e in entries {
        if json {
            writeln!(out, "{}", serde_json::to_string(e).unwrap_or_default())?;
            continue;
        }
        writeln!(
            out,
            "{:<23} {:<16} {:<5} {:<28} {:<15} {:>5} {:<6} {:>9} {:>9} {:>7}  {}",
            time(e.time),
            e.source,
            e.proto,
            e.name.as_deref().unwrap_or("-"),
            e.address.as_deref().unwrap_or("-"),
            e.port.map(|p| p.to_string()).unwrap_or("-".into()),
            match e.verdict {
                Verdict::Allow => "allow",
                Verdict::Deny => "DENY",
            },
            e.sent,
            e.received,
            e.duration_ms,
            e.reason
        )?;
    }
    Ok(())
}

/// UTC, to the millisecond: `2026-12-01 19:23:36.123`.
fn time(t: f64) -> String {
    let ms = ((t - t.floor()) * 1000.0) as u32;
    let (y, m, d, h, mi, sec) = cage_runtime::views::civil_utc(t.floor() as i64);
    format!("{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{sec:02}.{ms:03}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_are_utc() {
        assert_eq!(super::time(0.0), "1970-01-01 00:00:00.000");
        assert_eq!(super::time(1_796_153_016.5), "2026-12-01 19:23:36.500");
    }
}

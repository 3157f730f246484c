//! The broker's warm pool seen from the host and from inside a sandbox.
//!
//! A parked sandbox is an engine process `cagerun exec --bundle RUNS/N` with CAGERUN_PARK_FD set (RUNS: the
//! service's `sandboxes-SERVICE` in the cage's runtime directory) and its pid 1, a clone of
//! the engine (same command line) that waits on the park socket for its command. Tests wait
//! for the pool with [`wait_parked`] instead of sleeping, and tell from inside whether a call
//! was handed to a parked sandbox with [`AGE_SH`]: a parked sandbox's pid 1 started long
//! before its command, a fresh one's a few milliseconds before.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::cage::Cage;

/// The cage's `pool` line for a service's `[services.X.sandboxes]`: every broker test runs
/// with the pool off (each call makes its sandbox) and with the default pool (calls are
/// handed to parked sandboxes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    Off,
    Default,
}

impl Pool {
    pub const BOTH: [Pool; 2] = [Pool::Off, Pool::Default];

    /// The line for cage.toml (the default pool is no line at all).
    pub fn toml(self) -> &'static str {
        match self {
            Pool::Off => "pool = 0",
            Pool::Default => "",
        }
    }
}

/// How long a test leaves a parked sandbox before handing it a call, so that [`AGE_SH`]
/// tells a parked sandbox from a fresh one.
pub const PAUSE: Duration = Duration::from_millis(600);
/// pid 1 older than this at the command's start: the call went to a parked sandbox (a fresh
/// sandbox starts its command milliseconds after its pid 1; the tests show it).
pub const PARKED_AGE: Duration = Duration::from_millis(500);

/// A shell line (no single quotes, so it fits in `sh -c '...'`) that prints
/// `pid1-age: TICKS`: how many clock ticks before this line the sandbox's pid 1 started
/// (`/proc/PID/stat` field 22; a `$(...)` subshell is a new process, started now).
pub const AGE_SH: &str =
    "t() { read -r s < $1; s=${s##*)}; set -- $s; echo ${20}; }; echo pid1-age: $(( $(t /proc/self/stat) - $(t /proc/1/stat) ))";

/// The age [`AGE_SH`] printed somewhere in `out`.
pub fn pid1_age(out: &str) -> Duration {
    let at = out
        .find("pid1-age:")
        .unwrap_or_else(|| panic!("no pid1-age in {out:?}"));
    let ticks: u64 = out[at + "pid1-age:".len()..]
        .split_whitespace()
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("a bad pid1-age in {out:?}"));
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// The call whose output is `out` ran in a parked sandbox (one [`PAUSE`] old at least).
pub fn assert_parked(out: &str, what: &str) {
    let age = pid1_age(out);
    assert!(
        age >= PARKED_AGE,
        "{what}: the call did not run in a parked sandbox (its pid 1 is {age:?} old): {out}"
    );
}

/// The call whose output is `out` ran in a sandbox made for it.
pub fn assert_fresh(out: &str, what: &str) {
    let age = pid1_age(out);
    assert!(
        age < PARKED_AGE,
        "{what}: the call ran in a sandbox older than itself ({age:?}): {out}"
    );
}

/// Where `service`'s broker writes its sandboxes' bundles.
pub fn runs_dir(cage: &Cage, service: &str) -> PathBuf {
    cage.runtime_dir().join(format!("sandboxes-{service}"))
}

/// One sandbox of a broker: its engine (`cagerun exec --bundle B`) and pid 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    pub engine: i32,
    pub init: Option<i32>,
    pub bundle: PathBuf,
    /// Made by the pool (CAGERUN_PARK_FD), whether or not it has been handed a command yet.
    pub pooled: bool,
    /// Parked: pid 1's one child is its own clone that has not exec'd yet (no command yet),
    /// waiting on the park socket.
    pub waiting: bool,
}

impl Sandbox {
    /// The bundle's hostname: its container id's first 12 characters (docker's).
    pub fn hostname(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.bundle.join("config.json")).ok()?;
        let spec: serde_json::Value = serde_json::from_str(&text).ok()?;
        spec["hostname"].as_str().map(str::to_owned)
    }

    /// Its engine and pid 1 have ended.
    pub fn gone(&self) -> bool {
        [Some(self.engine), self.init]
            .into_iter()
            .flatten()
            .all(|p| !alive(p))
    }
}

/// A process that exists and is no zombie.
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().map(|r| r.trim_start().to_owned()))
        .is_some_and(|rest| !rest.starts_with('Z'))
}

/// A process as the pool's checks see it.
struct Proc {
    pid: i32,
    ppid: i32,
    argv: Vec<String>,
    /// Its pid in its own pid namespace (the last NSpid): 1 for a sandbox's pid 1.
    inner_pid: Option<i32>,
}

/// Every live process (zombies left out).
fn processes() -> Vec<Proc> {
    let mut all = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let (Ok(stat), Ok(cmd)) = (
            std::fs::read_to_string(e.path().join("stat")),
            std::fs::read(e.path().join("cmdline")),
        ) else {
            continue;
        };
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        if fields.first() == Some(&"Z") {
            continue;
        }
        let Some(ppid) = fields.get(1).and_then(|p| p.parse().ok()) else {
            continue;
        };
        let argv = cmd
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let inner_pid = std::fs::read_to_string(e.path().join("status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("NSpid:"))
                    .and_then(|l| l.split_whitespace().last()?.parse().ok())
            });
        all.push(Proc {
            pid,
            ppid,
            argv,
            inner_pid,
        });
    }
    all
}

/// A parked sandbox's command process sits in recvmsg on its park socket (pid 1 reads a
/// pipe while the sandbox is being made). None when the kernel does not say (no ptrace
/// access, another arch).
fn in_recvmsg(pid: i32) -> Option<bool> {
    let recvmsg = match std::env::consts::ARCH {
        "x86_64" => "47",
        "aarch64" => "212",
        _ => return None,
    };
    let s = std::fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    Some(s.split_whitespace().next() == Some(recvmsg))
}

/// Every sandbox (parked, or running a call) whose bundle lies in `runs` and whose engine
/// still runs (a killed engine's pid 1, dying of PDEATHSIG, is no sandbox any more).
pub fn sandboxes_in(runs: &Path) -> Vec<Sandbox> {
    let procs = processes();
    let bundle_of = |p: &Proc| -> Option<PathBuf> {
        if p.argv.get(1).map(String::as_str) != Some("exec") {
            return None;
        }
        let at = p.argv.iter().position(|a| a == "--bundle")?;
        let b = PathBuf::from(p.argv.get(at + 1)?);
        b.starts_with(runs).then_some(b)
    };
    let mut found = Vec::new();
    for p in &procs {
        let Some(bundle) = bundle_of(p) else {
            continue;
        };
        // The engine is no sandbox's pid 1 and no child of a process of the same bundle
        // (pid 1 is the engine's clone; pid 1's command starts as a clone of pid 1).
        let same = |q: &Proc| bundle_of(q).as_ref() == Some(&bundle);
        if p.inner_pid == Some(1) || procs.iter().any(|q| q.pid == p.ppid && same(q)) {
            continue;
        }
        let init = procs
            .iter()
            .find(|q| q.ppid == p.pid && q.inner_pid == Some(1) && same(q))
            .map(|q| q.pid);
        // The pool hands the engine its socket in CAGERUN_PARK_FD (not on the command line,
        // which the sandbox can read); the tests run as root and read the environment.
        let pooled = std::fs::read(format!("/proc/{}/environ", p.pid)).is_ok_and(|env| {
            env.split(|b| *b == 0)
                .any(|v| v.starts_with(b"CAGERUN_PARK_FD="))
        });
        let waiting = pooled
            && init.is_some_and(|i| {
                let init_argv = procs.iter().find(|q| q.pid == i).map(|q| &q.argv);
                let children: Vec<&Proc> = procs.iter().filter(|q| q.ppid == i).collect();
                // Before its exec the command's process shares pid 1's memory, so its argv.
                matches!(children.as_slice(), [c] if Some(&c.argv) == init_argv
                    && in_recvmsg(c.pid) != Some(false))
            });
        found.push(Sandbox {
            engine: p.pid,
            init,
            bundle,
            pooled,
            waiting,
        });
    }
    found.sort_by_key(|s| s.engine);
    found
}

/// [`sandboxes_in`] the runs directory of `service`.
pub fn sandboxes(cage: &Cage, service: &str) -> Vec<Sandbox> {
    sandboxes_in(&runs_dir(cage, service))
}

/// The parked sandboxes of `service` (of one container: `hostname`, its id's first 12).
pub fn parked(cage: &Cage, service: &str, hostname: Option<&str>) -> Vec<Sandbox> {
    sandboxes(cage, service)
        .into_iter()
        .filter(|s| s.waiting)
        .filter(|s| hostname.is_none() || s.hostname().as_deref() == hostname)
        .collect()
}

/// Wait (15 s at most) until `service`'s broker has `n` sandboxes parked (for the container
/// whose id starts with `hostname`, when given); they are returned.
pub fn wait_parked(cage: &Cage, service: &str, hostname: Option<&str>, n: usize) -> Vec<Sandbox> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let p = parked(cage, service, hostname);
        if p.len() >= n {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "the pool of {service} never parked {n} sandbox(es) for {hostname:?}: {:?}",
            sandboxes(cage, service)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`wait_parked`] for one sandbox of a container, then [`PAUSE`]: the next call of the
/// container goes to it, and [`AGE_SH`] shows it. Returns the parked sandbox.
pub fn park_for(cage: &Cage, service: &str, container_id: &str) -> Sandbox {
    let hostname = &container_id[..12];
    let s = wait_parked(cage, service, Some(hostname), 1).remove(0);
    std::thread::sleep(PAUSE);
    s
}

/// Wait (10 s at most) until every sandbox in `list` has ended.
pub fn wait_ended(list: &[Sandbox], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !list.iter().all(Sandbox::gone) {
        assert!(Instant::now() < deadline, "{what}: still running: {list:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

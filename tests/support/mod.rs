//! Shared harness for the namespace tests.
//!
//! Every case runs in two modes: as root (inside a throwaway `unshare -m -u
//! --propagation private`, so a sandbox that fails to isolate cannot touch the host's mounts
//! or hostname) and rootless, as the unprivileged user `$CAGERUN_TEST_USER` (default
//! `cagetest`, created by `.ci/run`). Binaries are copied to a world-readable temp dir so the
//! test user can run them wherever the checkout lives.
#![allow(dead_code)]

pub mod cage;
pub mod engines;
pub mod pool;
pub mod registry;
pub mod world;

use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Root,
    Rootless { uid: u32, gid: u32 },
}

impl Mode {
    /// The host uid that owns what the sandbox user writes: rootless, the caller; as root,
    /// root's subordinate id base+1000 (a sandbox never has a real host id).
    pub fn sandbox_host_uid(self) -> u32 {
        match self {
            Mode::Root => root_subordinate_base("/etc/subuid") + 1000,
            Mode::Rootless { uid, .. } => uid,
        }
    }
    /// Who runs cagerun in this mode (root, or the test user).
    pub fn caller_ids(self) -> (u32, u32) {
        match self {
            Mode::Root => (0, 0),
            Mode::Rootless { uid, gid } => (uid, gid),
        }
    }
    pub fn sandbox_host_gid(self) -> u32 {
        match self {
            Mode::Root => root_subordinate_base("/etc/subgid") + 1000,
            Mode::Rootless { gid, .. } => gid,
        }
    }
}

/// The first id of root's subordinate range (`.ci/run` gives root one).
pub fn root_subordinate_base(file: &str) -> u32 {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("root:")?.split(':').next()?.parse().ok())
        .unwrap_or_else(|| panic!("root has no subordinate range in {file}: as root, sandboxes run under it (scripts/test adds one)"))
}

/// Every process link (its netns, or an open descriptor) that holds one of the network
/// namespaces `inodes`: "LINK (COMMAND LINE)".
pub fn holders_of_netns(inodes: &[u64]) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut held = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let mut links = vec![e.path().join("ns/net")];
        links.extend(
            std::fs::read_dir(e.path().join("fd"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|f| f.path()),
        );
        for l in links {
            if let Ok(m) = std::fs::metadata(&l) {
                if inodes.contains(&m.ino()) && m.dev() == cage::nsfs_dev() {
                    let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                    let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                    held.push(format!("{} ({cmd})", l.display()));
                }
            }
        }
    }
    held
}

/// The rest of the first line of `out` that starts with `key`, trimmed.
pub fn line_after<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key:?} in {out}"))
        .trim()
}

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

fn test_user() -> (u32, u32) {
    let name = std::env::var("CAGERUN_TEST_USER").unwrap_or_else(|_| "cagetest".into());
    let out = Command::new("id")
        .arg("-u")
        .arg(&name)
        .output()
        .expect("run id");
    let out_g = Command::new("id")
        .arg("-g")
        .arg(&name)
        .output()
        .expect("run id");
    assert!(
        out.status.success(),
        "test user {name:?} does not exist: the tests run every case as root and as this unprivileged user; \
         create it (`useradd -m {name}`) or run .ci/run, which does"
    );
    let p = |o: Output| {
        String::from_utf8(o.stdout)
            .unwrap()
            .trim()
            .parse::<u32>()
            .unwrap()
    };
    (p(out), p(out_g))
}

/// Root and rootless when run as root (the CI way); only rootless otherwise.
pub fn modes() -> Vec<Mode> {
    if is_root() {
        let (uid, gid) = test_user();
        vec![Mode::Root, Mode::Rootless { uid, gid }]
    } else {
        let uid = unsafe { libc::geteuid() };
        let gid = unsafe { libc::getegid() };
        eprintln!("note: not root, so only the rootless half of each test runs");
        vec![Mode::Rootless { uid, gid }]
    }
}

pub struct Bins {
    pub cagerun: PathBuf,
    pub probe: PathBuf,
}

pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        let cagerun = PathBuf::from(env!("CARGO_BIN_EXE_cagerun"));
        let probe = cagerun.with_file_name("cage-probe");
        assert!(probe.exists(), "{} is missing: build it with `cargo build -p cage-probe` (cargo test --workspace does)", probe.display());
        // Copies left by earlier test processes (a static is never dropped): theirs are
        // gone once their process is.
        for e in std::fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("cagerun-test-bin-") {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = std::env::temp_dir().join(format!("cagerun-test-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let copy = |src: &Path, name: &str| {
            let dst = dir.join(name);
            std::fs::copy(src, &dst).unwrap();
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).unwrap();
            dst
        };
        Bins { cagerun: copy(&cagerun, "cagerun"), probe: copy(&probe, "cage-probe") }
    })
}

/// The static cagerun (`CAGERUN_STATIC_BIN`; scripts/test builds it at target/static):
/// `needed_for` says in the error why this test needs it.
pub fn static_cagerun(needed_for: &str) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bin = std::env::var_os("CAGERUN_STATIC_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("target/static/libexec/cagerun/cagerun"));
    assert!(
        bin.exists(),
        "{} is missing: {needed_for}; build it with `PREFIX=target/static CAGERUN_PROFILE=dev scripts/install` (scripts/test does)",
        bin.display()
    );
    bin
}

/// A temp directory owned by whoever the sandbox user is on the host in `mode`; removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str, owner: Option<(u32, u32)>) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("cagerun-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        if let Some((u, g)) = owner {
            if is_root() {
                chown(&p, Some(u), Some(g)).unwrap();
            }
        }
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A workspace the sandbox user can write, with the probe inside at /workspace/cage-probe.
pub fn workspace(mode: Mode) -> TempDir {
    let ws = TempDir::new(
        "ws",
        Some((mode.sandbox_host_uid(), mode.sandbox_host_gid())),
    );
    let dst = ws.path().join("cage-probe");
    std::fs::copy(&bins().probe, &dst).unwrap();
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).unwrap();
    ws
}

/// `cagerun ARGS` as `mode` would run it (not yet spawned).
pub fn cagerun_cmd(mode: Mode, args: &[&str]) -> Command {
    cagerun_cmd_of(&bins().cagerun, mode, args)
}

/// [`cagerun_cmd`] with another cagerun binary (the static one image services need).
pub fn cagerun_cmd_of(bin: &Path, mode: Mode, args: &[&str]) -> Command {
    let mut cmd = match mode {
        Mode::Root => {
            let mut c = Command::new("unshare");
            c.args(["-m", "-u", "--propagation", "private", "--"])
                .arg(bin);
            c
        }
        Mode::Rootless { uid, gid } => {
            let mut c = Command::new(bin);
            if is_root() {
                c.uid(uid).gid(gid);
            }
            c
        }
    };
    cmd.args(args).current_dir("/").stdin(Stdio::null());
    cmd
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(mode: Mode, args: &[&str]) -> Run {
    run_cmd(mode, cagerun_cmd(mode, args), args)
}

/// Run a prepared `cagerun ARGS` command, logging what it said.
pub fn run_cmd(mode: Mode, mut cmd: Command, args: &[&str]) -> Run {
    let out = cmd.output().expect("spawn cagerun");
    let r = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!(
        "[{mode:?}] cagerun {args:?} -> {}\n  stdout: {}\n  stderr: {}",
        r.code,
        r.stdout.trim(),
        r.stderr.trim()
    );
    r
}

/// `cagerun exec --workspace WS [flags] -- sh -c SCRIPT`
pub fn sh(mode: Mode, ws: &TempDir, flags: &[&str], script: &str) -> Run {
    let wsp = ws.path().to_str().unwrap().to_string();
    let mut args = vec!["exec", "--workspace", wsp.as_str()];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--", "/bin/sh", "-c", script]);
    run(mode, &args)
}

/// Nothing a test started may outlive it: no process carrying `marker` on its command
/// line, no cgroup leaf of a dead cagerun, no mount naming `marker`.
/// Held while a test deliberately leaves something for the next run to clean (a SIGKILLed
/// cagerun's cgroup), so concurrent tests' leftover checks do not see it.
pub fn leftover_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn assert_no_leftovers(marker: &str) {
    let _guard = leftover_lock();
    assert_no_leftovers_locked(marker);
}

/// Wait (up to 5 s) until no process carries `marker`; fail naming them otherwise.
pub fn wait_until_gone(marker: &str) {
    for _ in 0..250 {
        if leftover_processes(marker).is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("still running: {:?}", leftover_processes(marker));
}

pub fn assert_no_leftovers_locked(marker: &str) {
    for _ in 0..50 {
        if leftover_processes(marker).is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let procs = leftover_processes(marker);
    assert!(procs.is_empty(), "processes left behind: {procs:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(marker),
        "mounts left behind naming {marker}"
    );
    let mut leaves = Vec::new();
    for base in [
        "/sys/fs/cgroup/memory/cagerun",
        "/sys/fs/cgroup/pids/cagerun",
        "/sys/fs/cgroup/cagerun",
    ] {
        for owner in std::fs::read_dir(base).into_iter().flatten().flatten() {
            for leaf in std::fs::read_dir(owner.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = leaf.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("sbx-") {
                    if !Path::new(&format!("/proc/{pid}")).exists() {
                        leaves.push(leaf.path());
                    }
                }
            }
        }
    }
    assert!(leaves.is_empty(), "cgroups left behind: {leaves:?}");
}

/// (host pid, command line) of every process other than this one whose command line names
/// `marker`.
pub fn processes_naming(marker: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(marker) {
                found.push((pid, cmd));
            }
        }
    }
    found
}

/// [`processes_naming`] as `PID: CMDLINE` lines (what a leftover report shows).
pub fn leftover_processes(marker: &str) -> Vec<String> {
    processes_naming(marker)
        .into_iter()
        .map(|(pid, cmd)| format!("{pid}: {cmd}"))
        .collect()
}

pub fn unique(tag: &str) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{tag}{}{}", std::process::id(), t % 1_000_000_000)
}

/// What a child writes (its stdout), collected by a thread as it comes, for a test that
/// watches a live process.
pub struct Stream {
    rx: std::sync::mpsc::Receiver<String>,
    /// Everything seen so far.
    pub seen: String,
}

impl Stream {
    pub fn of(mut from: impl std::io::Read + Send + 'static) -> Stream {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0
                    || tx
                        .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                        .is_err()
                {
                    break;
                }
            }
        });
        Stream {
            rx,
            seen: String::new(),
        }
    }

    /// Wait until `done(everything so far)` or `timeout`: whether it came.
    pub fn wait_for(&mut self, timeout: std::time::Duration, done: impl Fn(&str) -> bool) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while !done(&self.seen) {
            let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) else {
                return false;
            };
            match self
                .rx
                .recv_timeout(left.min(std::time::Duration::from_millis(200)))
            {
                Ok(s) => self.seen.push_str(&s),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return done(&self.seen),
            }
        }
        true
    }

    /// The rest, until the writer closes (or `timeout` passes).
    pub fn rest(&mut self, timeout: std::time::Duration) -> &str {
        let deadline = std::time::Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok(s) => self.seen.push_str(&s),
                Err(_) => break,
            }
        }
        &self.seen
    }
}

//! A cage directory for the services tests: make one, run `cagerun` on it as the mode's
//! user, and prove afterwards that it left nothing on the host.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::*;

/// A cage directory (config/cage.toml and what its services mount) owned by the caller.
pub struct Cage {
    pub mode: Mode,
    pub dir: TempDir,
    /// The cage's directory (holds config/): `dir`, or a directory inside it.
    pub root: PathBuf,
    pub marker: String,
    pub id: Option<String>,
    /// The cagerun binary this cage runs (default: the test build).
    pub bin: PathBuf,
}

/// One cage test at a time: the leftover check looks namespaces up by inode number, and
/// the kernel reuses a freed number for the next namespace anyone creates.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// SIGKILL to a process the test started (through cagerun).
pub fn sigkill(pid: i32) -> nix::Result<()> {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn chown_tree(p: &Path, ids: (u32, u32)) {
    if !is_root() {
        return;
    }
    let _ = std::os::unix::fs::lchown(p, Some(ids.0), Some(ids.1));
    if p.is_dir() {
        for e in std::fs::read_dir(p).unwrap().flatten() {
            chown_tree(&e.path(), ids);
        }
    }
}

impl Cage {
    /// `files`: (path relative to the cage, contents); `{MARKER}` in them is replaced.
    pub fn new(mode: Mode, tag: &str, files: &[(&str, &str)]) -> Cage {
        Cage::new_in(mode, tag, "", files)
    }

    /// The cage in `subdir` of a fresh temporary directory.
    pub fn new_in(mode: Mode, tag: &str, subdir: &str, files: &[(&str, &str)]) -> Cage {
        let marker = unique(tag);
        let dir = TempDir::new(tag, None);
        let root = dir.path().join(subdir);
        for (path, text) in files {
            let p = root.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, text.replace("{MARKER}", &marker)).unwrap();
        }
        chown_tree(dir.path(), mode.caller_ids());
        Cage {
            mode,
            dir,
            root,
            marker,
            id: None,
            bin: bins().cagerun.clone(),
        }
    }

    pub fn config(&self) -> String {
        self.root
            .join("config/cage.toml")
            .to_string_lossy()
            .into_owned()
    }

    /// `cagerun SUBCOMMAND --config FILE ARGS...` for this cage, not yet spawned.
    pub fn command(&self, args: &[&str]) -> Command {
        let config = self.config();
        // `SUBCOMMAND --config FILE ...`: before any `--` that starts a command.
        let mut all: Vec<&str> = vec![args[0], "--config", &config];
        all.extend_from_slice(&args[1..]);
        let mut cmd = cagerun_cmd_of(&self.bin, self.mode, &all);
        // Rootless runs like a user without a login session: state under /tmp/cagerun-UID.
        cmd.env_remove("XDG_RUNTIME_DIR");
        if let Mode::Rootless { uid, .. } = self.mode {
            cmd.env("HOME", home_of(uid));
        }
        cmd
    }

    pub fn cagerun(&self, args: &[&str]) -> Run {
        run_cmd(self.mode, self.command(args), args)
    }

    /// `cagerun exec SERVICE -- sh -c SCRIPT`: a script inside a running service.
    pub fn sh_in(&self, service: &str, script: &str) -> Run {
        self.cagerun(&["exec", service, "--", "sh", "-c", script])
    }

    /// `up -d`; returns the supervisor's pid.
    pub fn up(&mut self) -> i32 {
        let (_, pid) = self.up_with(&[]);
        pid
    }

    /// `up -d EXTRA...`, which must succeed; records the cage id and returns what up said
    /// and the supervisor's pid.
    pub fn up_with(&mut self, extra: &[&str]) -> (Run, i32) {
        let mut args = vec!["up", "-d"];
        args.extend_from_slice(extra);
        let r = self.cagerun(&args);
        if r.code != 0 {
            // A failed `--wait` leaves the cage up to be looked at: not after a test.
            let _ = self.cagerun(&["down"]);
        }
        assert_eq!(r.code, 0, "up failed: {}", r.stderr);
        let line = r.stdout.lines().find(|l| l.contains(" is up")).unwrap();
        // "cage ID is up (supervisor pid N)"
        let words: Vec<&str> = line.split_whitespace().collect();
        self.id = Some(words[1].to_string());
        let pid = words.last().unwrap().trim_end_matches(')').parse().unwrap();
        (r, pid)
    }

    pub fn id(&self) -> &str {
        self.id.as_deref().expect("up first")
    }

    pub fn ps(&self) -> Vec<serde_json::Value> {
        let r = self.cagerun(&["ps", "--json"]);
        assert_eq!(r.code, 0, "ps failed: {}", r.stderr);
        serde_json::from_str::<serde_json::Value>(&r.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    pub fn service(&self, name: &str) -> serde_json::Value {
        self.ps()
            .into_iter()
            .find(|s| s["service"] == name)
            .unwrap_or_else(|| panic!("no {name} in ps"))
    }

    /// Poll `ps` until `pred` holds for the service (10 s at most).
    pub fn wait_for(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.service(name);
            if pred(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "{name} never became {what}: {s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn logs(&self, name: &str) -> String {
        let r = self.cagerun(&["logs", name]);
        assert_eq!(r.code, 0);
        r.stdout
    }

    pub fn wait_for_log(&self, name: &str, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let l = self.logs(name);
            if l.contains(needle) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "{name} never logged {needle:?}: {l}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn runtime_dir(&self) -> PathBuf {
        let base = match self.mode {
            Mode::Root => PathBuf::from("/run/cagerun"),
            Mode::Rootless { uid, .. } => std::env::temp_dir().join(format!("cagerun-{uid}")),
        };
        base.join(self.id())
    }

    pub fn record(&self) -> serde_json::Value {
        let t = std::fs::read_to_string(self.runtime_dir().join("record.json")).unwrap();
        serde_json::from_str(&t).unwrap()
    }

    /// The network namespaces the cage uses now: the holder's (router) and each service's.
    pub fn netns_inodes(&self) -> Vec<u64> {
        let mut pids: Vec<i64> = self.ps().iter().filter_map(|s| s["pid"].as_i64()).collect();
        pids.push(self.record()["holder"]["pid"].as_i64().unwrap());
        let inodes: Vec<u64> = pids
            .iter()
            .map(|p| {
                std::fs::metadata(format!("/proc/{p}/ns/net"))
                    .unwrap()
                    .ino()
            })
            .collect();
        let host = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert!(
            !inodes.contains(&host),
            "a service shares the host's network"
        );
        inodes
    }

    pub fn down(&self) {
        let r = self.cagerun(&["down"]);
        assert_eq!(r.code, 0, "down failed: {}", r.stderr);
    }

    /// Nothing of the cage is left on the host.
    pub fn assert_gone(&self, netns: &[u64]) {
        let id = self.id().to_string();
        // The holder and monitors name the cage id, the containers the marker, the
        // supervisor the cage's config path.
        wait_until_gone(&id);
        wait_until_gone(&self.marker);
        wait_until_gone(&self.config());
        assert!(
            !self.runtime_dir().exists(),
            "runtime state left: {}",
            self.runtime_dir().display()
        );
        // The cage's cgroup directories, wherever the host delegates (v1: cagerun/UID in
        // each hierarchy; v2: under the user's systemd subtree).
        let left = find_dirs_named(Path::new("/sys/fs/cgroup"), &id, 10);
        assert!(left.is_empty(), "cgroups left: {left:?}");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(&self.marker),
            "mounts left naming the cage"
        );
        assert!(
            !mounts.contains(&*self.root.to_string_lossy()),
            "mounts left naming the cage"
        );
        let held = holders_of_netns(netns);
        assert!(held.is_empty(), "network namespaces left: {held:?}");
    }
}

pub fn find_dirs_named(dir: &Path, name: &str, depth: usize) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if depth == 0 {
        return found;
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            if e.file_name().to_string_lossy() == name {
                found.push(e.path());
            }
            found.extend(find_dirs_named(&e.path(), name, depth - 1));
        }
    }
    found
}

pub fn home_of(uid: u32) -> String {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 5 && f[2] == uid.to_string())
        .map(|f| f[5].to_string())
        .unwrap_or_else(|| "/tmp".into())
}

pub fn nsfs_dev() -> u64 {
    std::fs::metadata("/proc/self/ns/net").unwrap().dev()
}

impl Drop for Cage {
    fn drop(&mut self) {
        if self.id.is_some() {
            let _ = self.command(&["down"]).output();
        }
    }
}

/// A server on the host's 127.0.0.1 that nothing published: answers HOSTSECRET.
pub fn host_secret_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let mut c = c;
            let _ = c.write_all(b"HOSTSECRET");
        }
    });
    // The probe is valid: from the host it answers.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    assert_eq!(got, "HOSTSECRET");
    port
}

pub fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

//! `cagerun runtime` / `cagerun-runc` driven the way engines drive runc: bundles written here,
//! the verbs called one by one, what engines read back checked (pid file, state JSON, exit
//! codes, `--log` lines), and cagerun's layer on exec (the container's seccomp filter, which
//! libcontainer's exec alone drops). Root and rootless. The engines themselves (containerd,
//! CRI, podman) are in tests/oci_engines.rs.

#[path = "support/mod.rs"]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

/// A busybox tree, readable by the test user.
fn rootfs(dir: &Path) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for d in ["proc", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", bin.join("busybox"))
        .expect("busybox-static (scripts/test installs it)");
    for tool in [
        "sh", "sleep", "mkdir", "cat", "grep", "id", "touch", "hostname", "true",
    ] {
        std::os::unix::fs::symlink("busybox", bin.join(tool)).unwrap();
    }
}

struct Bundle {
    dir: TempDir,
    root: PathBuf,
    runtime: PathBuf,
    mode: Mode,
    cgroup: String,
}

/// The cgroup the container gets: a fresh one as root; rootless, one inside the subtree
/// `cagerun setup-cgroups` delegated to the test user (cgroup v1, as on CI's hosts).
fn cgroups_path(mode: Mode, id: &str) -> String {
    match mode {
        Mode::Root => format!("/cagerun-rt-test-{id}"),
        Mode::Rootless { uid, .. } => {
            assert!(
                Path::new("/sys/fs/cgroup/pids").is_dir(),
                "this rootless case uses the cgroup v1 subtree delegated by `cagerun setup-cgroups` (scripts/test runs it)"
            );
            format!("/cagerun/{uid}/rt-{id}")
        }
    }
}

impl Bundle {
    fn new(
        mode: Mode,
        id: &str,
        args: &[&str],
        extra: impl FnOnce(&mut serde_json::Value),
    ) -> Bundle {
        let owner = mode.caller_ids();
        let dir = TempDir::new("ocirt", Some(owner));
        rootfs(&dir.path().join("rootfs"));
        let root = dir.path().join("state");
        // The runtime as engines call it: a link named cagerun-runc.
        let runtime = dir.path().join("cagerun-runc");
        std::os::unix::fs::symlink(&bins().cagerun, &runtime).unwrap();
        let cgroup = cgroups_path(mode, id);
        let caps = json!(["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"]);
        let mut namespaces = vec![
            json!({"type": "pid"}),
            json!({"type": "ipc"}),
            json!({"type": "uts"}),
            json!({"type": "mount"}),
            json!({"type": "network"}),
        ];
        let mut linux = json!({
            "cgroupsPath": cgroup,
            "maskedPaths": ["/proc/kcore", "/proc/keys"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"],
        });
        if let Mode::Rootless { uid, gid } = mode {
            namespaces.push(json!({"type": "user"}));
            linux["uidMappings"] = json!([{"containerID": 0, "hostID": uid, "size": 1}]);
            linux["gidMappings"] = json!([{"containerID": 0, "hostID": gid, "size": 1}]);
        }
        linux["namespaces"] = json!(namespaces);
        let mut spec = json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": ["PATH=/bin", "TERM=xterm"],
                "cwd": "/",
                "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            },
            "root": {"path": "rootfs", "readonly": true},
            "hostname": "ocirt",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "size=8m"]},
            ],
            "linux": linux,
        });
        extra(&mut spec);
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::to_vec_pretty(&spec).unwrap(),
        )
        .unwrap();
        chown_tree(dir.path(), owner);
        Bundle {
            dir,
            root,
            runtime,
            mode,
            cgroup,
        }
    }

    /// `cagerun-runc --root STATE ARGS` as the mode's caller, in the bundle directory.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.runtime);
        c.arg("--root")
            .arg(&self.root)
            .args(args)
            .current_dir(self.dir.path());
        if let Mode::Rootless { uid, gid } = self.mode {
            c.uid(uid).gid(gid);
            c.env("XDG_RUNTIME_DIR", self.dir.path());
        }
        c.stdin(Stdio::null());
        c
    }

    /// Output to files, not pipes: a container's init keeps `create`'s stdio open.
    fn run(&self, args: &[&str]) -> Run {
        let out_file = self.dir.path().join("run.out");
        let err_file = self.dir.path().join("run.err");
        let status = self
            .cmd(args)
            .stdout(std::fs::File::create(&out_file).unwrap())
            .stderr(std::fs::File::create(&err_file).unwrap())
            .status()
            .expect("run cagerun-runc");
        let r = Run {
            code: status.code().unwrap_or(-1),
            stdout: std::fs::read_to_string(&out_file).unwrap(),
            stderr: std::fs::read_to_string(&err_file).unwrap(),
        };
        eprintln!(
            "[{:?}] cagerun-runc {args:?} -> {}\n{}{}",
            self.mode, r.code, r.stdout, r.stderr
        );
        r
    }

    fn state(&self, id: &str) -> serde_json::Value {
        let r = self.run(&["state", id]);
        assert_eq!(r.code, 0, "state: {}", r.stderr);
        assert!(r.stderr.is_empty(), "state writes JSON only: {}", r.stderr);
        serde_json::from_str(&r.stdout).expect("state is JSON")
    }

    fn wait_status(&self, id: &str, want: &str) {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.state(id);
            if s["status"] == want {
                return;
            }
            assert!(
                Instant::now() < end,
                "container {id} never reached {want}: {s}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Nothing of the container is left: no state, no cgroup.
    fn assert_gone(&self, id: &str) {
        assert!(!self.root.join(id).exists(), "state of {id} left behind");
        let rel = self.cgroup.trim_start_matches('/');
        for ctrl in ["pids", "memory", "cpu", "freezer", "unified"] {
            let d = Path::new("/sys/fs/cgroup").join(ctrl).join(rel);
            assert!(!d.exists(), "cgroup {} left behind", d.display());
        }
    }
}

/// A case that fails midway still ends its containers: every one left in the state
/// directory is force-deleted (the runtime kills its processes and removes its cgroup).
impl Drop for Bundle {
    fn drop(&mut self) {
        for e in std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
        {
            let id = e.file_name().to_string_lossy().into_owned();
            if !id.starts_with('.') {
                let _ = self.cmd(&["delete", "--force", &id]).output();
            }
        }
    }
}

fn chown_tree(dir: &Path, (uid, gid): (u32, u32)) {
    if !is_root() || uid == 0 {
        return;
    }
    let st = Command::new("chown")
        .args(["-R", "-h", &format!("{uid}:{gid}")])
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn lifecycle_as_engines_drive_it() {
    for mode in modes() {
        let id = unique("life");
        let b = Bundle::new(
            mode,
            &id,
            &[
                "sh",
                "-c",
                "echo started; trap 'echo got-term; exit 0' TERM; while :; do sleep 0.1; done",
            ],
            |_| {},
        );
        let pid_file = b.dir.path().join("init.pid");
        // create: returns with init waiting; the container's stdout is create's (engines
        // hand their pipes to the runtime), so read it from here.
        let mut create = b.cmd(&[
            "create",
            "--bundle",
            ".",
            "--pid-file",
            pid_file.to_str().unwrap(),
            &id,
        ]);
        // Init keeps create's stdio: stderr goes to a file, not a pipe read to its end.
        let err_file = b.dir.path().join("create.err");
        let mut child = create
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&err_file).unwrap())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let status = child.wait().unwrap();
        let err = std::fs::read_to_string(&err_file).unwrap();
        assert!(status.success(), "create failed: {err}");
        assert!(err.is_empty(), "create must be silent on success: {err}");
        let pid_text = std::fs::read_to_string(&pid_file).unwrap();
        assert!(
            pid_text.chars().all(|c| c.is_ascii_digit()) && !pid_text.is_empty(),
            "pid file must be digits only: {pid_text:?}"
        );
        let pid: i32 = pid_text.parse().unwrap();

        let s = b.state(&id);
        assert_eq!(s["status"], "created");
        assert_eq!(s["pid"], pid);
        assert_eq!(s["id"], id.as_str());
        assert_eq!(s["bundle"], b.dir.path().to_str().unwrap());
        assert_eq!(s["rootfs"], b.dir.path().join("rootfs").to_str().unwrap());

        assert_eq!(b.run(&["start", &id]).code, 0);
        let mut stream = Stream::of(out);
        assert!(
            stream.wait_for(Duration::from_secs(10), |s| s.contains("started")),
            "init never ran: {}",
            stream.rest(Duration::ZERO)
        );
        b.wait_status(&id, "running");

        let e = b.run(&["exec", &id, "sh", "-c", "hostname; exit 7"]);
        assert_eq!(e.code, 7, "exec returns the process's status");
        assert_eq!(e.stdout.trim(), "ocirt");

        let ps = b.run(&["ps", "--format", "json", &id]);
        assert!(
            ps.stderr.is_empty(),
            "ps --format json is read with stderr: {}",
            ps.stderr
        );
        let pids: Vec<i32> = serde_json::from_str(&ps.stdout).expect("ps JSON");
        assert!(pids.contains(&pid), "ps lists init {pid}: {pids:?}");

        assert_eq!(b.run(&["pause", &id]).code, 0);
        b.wait_status(&id, "paused");
        assert_eq!(b.run(&["resume", &id]).code, 0);
        b.wait_status(&id, "running");

        // kill without a signal is SIGTERM, as runc's.
        assert_eq!(b.run(&["kill", &id]).code, 0);
        assert!(
            stream.wait_for(Duration::from_secs(10), |s| s.contains("got-term")),
            "init never got SIGTERM"
        );
        b.wait_status(&id, "stopped");
        let k = b.run(&["kill", &id, "KILL"]);
        assert_ne!(k.code, 0);
        assert!(
            k.stderr.contains("container not running"),
            "containerd maps this phrase: {}",
            k.stderr
        );

        assert_eq!(b.run(&["delete", &id]).code, 0);
        let gone = b.run(&["state", &id]);
        assert_eq!(gone.code, 1);
        assert!(
            gone.stderr.contains("does not exist"),
            "engines map this phrase: {}",
            gone.stderr
        );
        assert_eq!(
            b.run(&["delete", "--force", &id]).code,
            0,
            "delete --force of a gone container succeeds"
        );
        b.assert_gone(&id);
    }
}

#[test]
fn a_failure_is_one_runc_line_in_the_log_and_success_writes_none() {
    for mode in modes() {
        let id = unique("fail");
        let b = Bundle::new(mode, &id, &["/no/such/program"], |_| {});
        let log = b.dir.path().join("log.json");
        let r = b.run(&[
            "--log",
            log.to_str().unwrap(),
            "--log-format",
            "json",
            "create",
            "--bundle",
            ".",
            &id,
        ]);
        assert_eq!(r.code, 1);
        assert!(r.stdout.is_empty(), "nothing on stdout: {}", r.stdout);
        let text = std::fs::read_to_string(&log).expect("the log holds the error");
        assert_eq!(
            text.lines().count(),
            1,
            "exactly one line (podman parses the file as one object): {text}"
        );
        let line: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON object");
        assert_eq!(
            line["level"], "error",
            "containerd wants exactly lowercase error"
        );
        assert!(
            line["msg"]
                .as_str()
                .unwrap()
                .contains("/no/such/program: no such file or directory"),
            "runc's phrase (podman maps it to exit 127): {line}"
        );
        let t = line["time"].as_str().unwrap();
        assert!(
            t.len() == 20 && t.ends_with('Z') && t.as_bytes()[10] == b'T',
            "RFC 3339 time: {t}"
        );
        assert_eq!(b.run(&["delete", "--force", &id]).code, 0);
        b.assert_gone(&id);

        let id = unique("ok");
        let b = Bundle::new(mode, &id, &["true"], |_| {});
        let log = b.dir.path().join("log.json");
        let l = log.to_str().unwrap();
        assert_eq!(
            b.run(&[
                "--log",
                l,
                "--log-format",
                "json",
                "create",
                "--bundle",
                ".",
                &id
            ])
            .code,
            0
        );
        assert_eq!(
            b.run(&["--log", l, "--log-format", "json", "start", &id])
                .code,
            0
        );
        b.wait_status(&id, "stopped");
        assert_eq!(
            b.run(&["--log", l, "--log-format", "json", "delete", &id])
                .code,
            0
        );
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(text.is_empty(), "success writes nothing to the log: {text}");
        b.assert_gone(&id);
    }
}

/// The container's filter refuses mkdir with EOPNOTSUPP (95): init and every exec'd process
/// (argv and an engine's process.json without noNewPrivileges) are refused; the same probe in
/// a twin container without the filter succeeds, so the probe is valid.
#[test]
fn exec_keeps_the_containers_seccomp_filter() {
    let probe = "mkdir /tmp/d$$ && echo MADE || echo REFUSED; grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status";
    for mode in modes() {
        for filtered in [false, true] {
            let id = unique(if filtered { "filt" } else { "nofilt" });
            let b = Bundle::new(mode, &id, &["sleep", "300"], |spec| {
                if filtered {
                    spec["linux"]["seccomp"] = json!({
                        "defaultAction": "SCMP_ACT_ALLOW",
                        "architectures": ["SCMP_ARCH_X86_64"],
                        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 95}]
                    });
                }
            });
            assert_eq!(b.run(&["create", "--bundle", ".", &id]).code, 0);
            assert_eq!(b.run(&["start", &id]).code, 0);
            b.wait_status(&id, "running");

            let argv = b.run(&["exec", &id, "sh", "-c", probe]);
            let process = b.dir.path().join("process.json");
            std::fs::write(
                &process,
                serde_json::to_vec(&json!({
                    "terminal": false, "user": {"uid": 0, "gid": 0},
                    "args": ["sh", "-c", probe], "env": ["PATH=/bin"], "cwd": "/",
                    "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]}
                }))
                .unwrap(),
            )
            .unwrap();
            chown_tree(b.dir.path(), mode.caller_ids());
            let engine = b.run(&["exec", "--process", process.to_str().unwrap(), &id]);
            for (how, r) in [("argv", &argv), ("process.json", &engine)] {
                assert_eq!(r.code, 0, "{how}: {}", r.stderr);
                if filtered {
                    assert!(
                        r.stdout.contains("REFUSED") && !r.stdout.contains("MADE"),
                        "{how}: the filter must hold in exec: {}",
                        r.stdout
                    );
                    assert!(
                        r.stderr.contains("Operation not supported"),
                        "{how}: refused by the filter's errno: {}",
                        r.stderr
                    );
                    assert!(r.stdout.contains("Seccomp:\t2"), "{how}: {}", r.stdout);
                    assert!(
                        r.stdout.contains("NoNewPrivs:\t1"),
                        "{how}: no_new_privs carries the filter: {}",
                        r.stdout
                    );
                } else {
                    assert!(
                        r.stdout.contains("MADE"),
                        "{how}: the probe works without the filter: {} {}",
                        r.stdout,
                        r.stderr
                    );
                }
            }
            assert_eq!(b.run(&["kill", &id, "KILL"]).code, 0);
            b.wait_status(&id, "stopped");
            assert_eq!(b.run(&["delete", &id]).code, 0);
            b.assert_gone(&id);
        }
    }
}

#[test]
fn answers_as_cagerun_runc_and_as_cagerun_runtime() {
    let dir = TempDir::new("ocirt-name", None);
    let link = dir.path().join("cagerun-runc");
    std::os::unix::fs::symlink(&bins().cagerun, &link).unwrap();
    let by_name = Command::new(&link).arg("--version").output().unwrap();
    let by_verb = Command::new(&bins().cagerun)
        .args(["runtime", "--version"])
        .output()
        .unwrap();
    assert!(by_name.status.success() && by_verb.status.success());
    assert_eq!(by_name.stdout, by_verb.stdout);
    let v = String::from_utf8_lossy(&by_name.stdout);
    assert!(
        v.starts_with("cagerun-runc version ") && v.contains("\nspec: "),
        "runc's three lines: {v}"
    );

    let f = Command::new(&link).arg("features").output().unwrap();
    let features: serde_json::Value = serde_json::from_slice(&f.stdout).expect("features JSON");
    assert_eq!(features["linux"]["cgroup"]["systemd"], false);
    assert_eq!(features["linux"]["seccomp"]["enabled"], true);

    let s = Command::new(&link)
        .args(["--root"])
        .arg(dir.path().join("state"))
        .args([
            "--systemd-cgroup",
            "create",
            "--bundle",
            "/nonexistent",
            "x",
        ])
        .output()
        .unwrap();
    assert_eq!(s.status.code(), Some(1));
    let err = String::from_utf8_lossy(&s.stderr);
    assert!(
        err.contains("systemd cgroup driver is not supported")
            && err.contains("SystemdCgroup = false"),
        "{err}"
    );
}

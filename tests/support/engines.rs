//! The container engines that call an OCI runtime by path (containerd through `ctr` and its CRI
//! plugin, podman through conmon), each started private to one test case: its own config,
//! socket, storage, state and runtime root under a temp dir, so nothing of the host's engines
//! (or another case's) is touched, and whatever a case leaves behind can be named and asserted.
//!
//! The runtime under test is `$CAGERUN_TEST_OCI_RUNTIME` when set (e.g. `/usr/sbin/runc`: the
//! same cases then prove each probe is valid), else a `cagerun-runc` symlink to this build's
//! cagerun (engines take one absolute path and no leading arguments, so cagerun answers as the
//! runtime when its argv[0] is named `cagerun-runc`).
use super::{is_root, leftover_processes, processes_naming, TempDir};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The OCI runtime the engines are told to run (an absolute path).
pub fn runtime() -> &'static Path {
    static RT: OnceLock<PathBuf> = OnceLock::new();
    RT.get_or_init(|| {
        if let Some(rt) = std::env::var_os("CAGERUN_TEST_OCI_RUNTIME") {
            let rt = PathBuf::from(rt);
            assert!(
                rt.is_absolute() && rt.exists(),
                "CAGERUN_TEST_OCI_RUNTIME={} must be an absolute path that exists",
                rt.display()
            );
            return rt;
        }
        // A world-readable copy (the rootless podman case runs it as the test user, who may
        // not reach the checkout), in the directory tests/support's `bins()` uses, which it
        // removes once this process is gone.
        let dir = std::env::temp_dir().join(format!("cagerun-test-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let copy = dir.join("cagerun-runtime");
        std::fs::copy(env!("CARGO_BIN_EXE_cagerun"), &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        let link = dir.join("cagerun-runc");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("cagerun-runtime", &link).unwrap();
        link
    })
}

/// Whether the runtime under test is cagerun (not a reference runtime such as runc).
pub fn runtime_is_cagerun() -> bool {
    runtime().file_name().is_some_and(|n| n == "cagerun-runc")
}

/// Engine cases one at a time: they share the host's cgroup parents (`k8s.io`), containerd's
/// `/run/containerd/{s,fifo}` and two cores; and a leftover check must see only its own case.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Root-only cases say so and return when the test runs unprivileged.
pub fn need_root(case: &str) -> bool {
    if !is_root() {
        eprintln!(
            "note: {case} needs root (containerd and its CRI plugin run as root here); skipped"
        );
        return false;
    }
    true
}

/// Fail clearly when an engine is not installed (scripts/test installs them).
pub fn need_tool(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()))
        .unwrap_or(false);
    assert!(found, "{tool} is not installed: scripts/test installs containerd, podman and conmon (apt-get install containerd podman conmon)");
}

/// A minimal root filesystem: static busybox and the applets the cases run, nothing else.
pub fn busybox_rootfs(dir: &Path) {
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "usr/local/bin"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::set_permissions(dir.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::copy("/bin/busybox", dir.join("bin/busybox"))
        .expect("copy /bin/busybox (package busybox-static, which scripts/test installs)");
    for applet in [
        "sh", "true", "false", "sleep", "cat", "id", "hostname", "touch", "grep", "echo", "ls",
        "mkdir", "env",
    ] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/:/bin/sh\nuser:x:1000:1000:user:/tmp:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(dir.join("etc/group"), "root:x:0:\nuser:x:1000:\n").unwrap();
}

/// A command's result, logged the same way for every engine call.
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn ok(self, what: &str) -> Ran {
        assert_eq!(
            self.code, 0,
            "{what} failed: {}\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

pub fn run_logged(mut cmd: Command, stdin: Option<&str>) -> Ran {
    use std::io::Write;
    let shown = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {shown}: {e}"));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out: Output = child.wait_with_output().unwrap();
    let r = Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!(
        "$ {shown}\n  -> {}\n  stdout: {}\n  stderr: {}",
        r.code,
        r.stdout.trim(),
        r.stderr.trim()
    );
    r
}

/// What the engines leave on the host outside their temp dir, as it was before a case: each
/// case must leave it as it found it.
pub struct HostBaseline {
    entries: Vec<String>,
}

/// Host directories engines write to whatever their config says (containerd's shim sockets
/// and ctr's fifos, the shim's exec process files, CNI's result cache, the runtimes' default
/// roots): their entries are compared before and after a case.
const WATCHED: &[&str] = &[
    "/run/containerd/s",
    "/run/containerd/fifo",
    "/run/containerd/runc",
    "/run/netns",
    "/var/lib/cni/results",
    "/run/runc",
    "/run/cagerun-runc",
    "/run/libpod",
    "/run/containers",
    "/etc/cni/net.d",
];

impl HostBaseline {
    pub fn take() -> HostBaseline {
        HostBaseline {
            entries: host_entries(),
        }
    }

    /// Entries that appeared since the baseline.
    pub fn new_entries(&self) -> Vec<String> {
        host_entries()
            .into_iter()
            .filter(|e| !self.entries.contains(e))
            .collect()
    }
}

fn host_entries() -> Vec<String> {
    let mut out = Vec::new();
    for dir in WATCHED {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            out.push(e.path().display().to_string());
        }
    }
    for e in std::fs::read_dir("/tmp").into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with("runc-process") {
            out.push(e.path().display().to_string());
        }
    }
    for line in std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
    {
        let mountpoint = line.split(' ').nth(4).unwrap_or("");
        if mountpoint.starts_with("/run/netns/") || mountpoint.starts_with("/run/containerd") {
            out.push(format!("mount {mountpoint}"));
        }
    }
    out.sort();
    out
}

/// Every cgroup dir `<hierarchy>/<parent>` on this host (each v1 controller, or the v2 root).
pub fn cgroup_dirs(parent: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        dirs.push(root.join(parent.trim_start_matches('/')));
    } else {
        for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
            dirs.push(e.path().join(parent.trim_start_matches('/')));
        }
    }
    dirs
}

/// The leftovers of one case: what the runtime and the engines had to remove and did not.
#[derive(Default)]
pub struct Leftovers(pub Vec<String>);

impl Leftovers {
    /// Processes whose command line names `marker` (the case's temp dir: containerd, shims,
    /// conmon, whatever runs from the rootfs).
    pub fn processes(&mut self, marker: &str) {
        for _ in 0..100 {
            if leftover_processes(marker).is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.0.extend(
            leftover_processes(marker)
                .into_iter()
                .map(|p| format!("process {p}")),
        );
    }

    /// Container processes the case saw (by pid, with the start time it had then).
    pub fn pids(&mut self, pids: &[(u32, String)]) {
        for (pid, start) in pids {
            if proc_start(*pid).as_ref() == Some(start) {
                self.0.push(format!("container process {pid} still runs"));
            }
        }
    }

    pub fn mounts(&mut self, marker: &str) {
        for line in std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
        {
            if line.contains(marker) {
                self.0.push(format!("mount {line}"));
            }
        }
    }

    /// The runtime's per-container cgroups under `parent` (`k8s.io`, a ctr namespace, a podman
    /// cgroup parent) must be gone. Then the parent itself and the engine's own empty dirs in
    /// it (conmon's), which engines leave by design (with runc too), are removed here: an rmdir
    /// failing means a process is still inside.
    pub fn cgroups(&mut self, parent: &str, ids: &[String], parent_existed: bool) {
        for dir in cgroup_dirs(parent) {
            for id in ids {
                if dir.join(id).exists() {
                    self.0.push(format!("cgroup {}", dir.join(id).display()));
                }
            }
            if !parent_existed && dir.exists() {
                for sub in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    if sub.path().is_dir() && !ids.iter().any(|id| sub.file_name() == id.as_str()) {
                        let _ = std::fs::remove_dir(sub.path());
                    }
                }
                if let Err(e) = std::fs::remove_dir(&dir) {
                    self.0
                        .push(format!("cgroup {} (not removable: {e})", dir.display()));
                }
            }
        }
    }

    /// A runtime root must hold no state for the case's containers.
    pub fn runtime_state(&mut self, root: &Path, ids: &[String]) {
        for id in ids {
            if root.join(id).exists() {
                self.0
                    .push(format!("runtime state {}", root.join(id).display()));
            }
        }
    }

    /// An empty dir an engine makes on every run whatever its config (podman's
    /// /run/containers/networks) is removed when the case made it.
    pub fn engine_dir(&mut self, baseline: &HostBaseline, dir: &str) {
        if !baseline.entries.iter().any(|e| e == dir) {
            let _ = std::fs::remove_dir(dir);
            if let Some(parent) = Path::new(dir).parent() {
                if !baseline
                    .entries
                    .iter()
                    .any(|e| Path::new(e).starts_with(parent))
                {
                    let _ = std::fs::remove_dir(parent);
                }
            }
        }
    }

    pub fn host(&mut self, baseline: &HostBaseline) {
        self.0.extend(
            baseline
                .new_entries()
                .into_iter()
                .map(|e| format!("host entry {e}")),
        );
    }

    pub fn assert_none(&self, case: &str) {
        assert!(
            self.0.is_empty(),
            "{case} left behind:\n  {}",
            self.0.join("\n  ")
        );
    }
}

/// A process's start time (field 22 of /proc/PID/stat): with the pid, it names one process.
pub fn proc_start(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    after_comm.split(' ').nth(19).map(str::to_string)
}

/// End a process we started (or that an engine we started started): SIGTERM, then SIGKILL.
pub fn end_process(pid: u32) {
    let Some(start) = proc_start(pid) else { return };
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if proc_start(pid).as_ref() != Some(&start) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if proc_start(pid).as_ref() == Some(&start) {
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

/// Pids of processes whose command line names `marker`.
pub fn pids_naming(marker: &str) -> Vec<u32> {
    processes_naming(marker)
        .into_iter()
        .map(|(pid, _)| pid as u32)
        .collect()
}

/// Unmount everything under `dir`, deepest first (what a failed case left mounted there).
pub fn unmount_under(dir: &Path) {
    let prefix = dir.display().to_string();
    let mut points: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    points.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in points {
        let c = std::ffi::CString::new(m).unwrap();
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// A private containerd: its own config, socket, root and state (and the shims' runtime root)
/// under a temp dir. Started by [`Containerd::start`], ended by pid by [`Containerd::stop`] or
/// on drop.
pub struct Containerd {
    pub dir: TempDir,
    child: Option<Child>,
}

impl Containerd {
    /// Start containerd with `extra` appended to its config (the CRI plugin's section, when a
    /// case needs it; without one the plugin is disabled).
    pub fn start(tag: &str, extra: impl FnOnce(&Path) -> String) -> Containerd {
        need_tool("containerd");
        need_tool("ctr");
        need_tool("containerd-shim-runc-v2");
        let dir = TempDir::new(tag, None);
        let d = dir.path().display().to_string();
        let extra = extra(dir.path());
        let disabled = if extra.contains("io.containerd.grpc.v1.cri") {
            ""
        } else {
            "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n"
        };
        // `opt` would default to /opt/containerd, and every address to /run/containerd.
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n{disabled}\
             [grpc]\n  address = \"{d}/containerd.sock\"\n\
             [ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n\
             [debug]\n  address = \"{d}/debug.sock\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n{extra}"
        );
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.path().join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let c = Containerd {
            dir,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = c.ctr_cmd("default", &["version"]).output().unwrap();
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not answer in 20 s:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// The runtime root the shims are told to use (`--runc-root` / the runtime's `Root`
    /// option); the shim adds the namespace.
    pub fn runtime_root(&self) -> PathBuf {
        self.dir.path().join("runtime-root")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    pub fn ctr_cmd(&self, ns: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(self.socket())
            .args(["--namespace", ns])
            .args(args);
        c
    }

    pub fn ctr(&self, ns: &str, args: &[&str]) -> Ran {
        run_logged(self.ctr_cmd(ns, args), None)
    }

    /// Remove every task and container left in `ns` (a case that failed midway).
    pub fn clean_namespace(&self, ns: &str) {
        let out = self
            .ctr_cmd(ns, &["containers", "list", "--quiet"])
            .output()
            .unwrap();
        for id in String::from_utf8_lossy(&out.stdout).lines() {
            let _ = self
                .ctr_cmd(ns, &["tasks", "kill", "--all", "--signal", "SIGKILL", id])
                .output();
            for _ in 0..50 {
                if self
                    .ctr_cmd(ns, &["tasks", "delete", id])
                    .output()
                    .unwrap()
                    .status
                    .success()
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.ctr_cmd(ns, &["containers", "delete", id]).output();
        }
    }

    /// End containerd by pid, then any shim it started that is still there (they outlive it by
    /// design), and unmount what a failed case left under the temp dir.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            end_process(child.id());
            let _ = child.wait();
        }
        let marker = self.socket().display().to_string();
        for pid in pids_naming(&marker) {
            end_process(pid);
        }
        unmount_under(self.dir.path());
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!(
                "containerd log (last lines):\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        self.stop();
    }
}

/// The CRI plugin's section of containerd's config: RuntimeClass handler `cagerun` runs the
/// runtime under test (cgroupfs: no systemd as PID 1 here), images from the native
/// snapshotter (what `ctr images import --snapshotter native` fills), the test's two shell CNI
/// plugins, and the pods' netns under containerd's state dir rather than /run/netns.
pub fn cri_config(dir: &Path, runtime: &Path, runtime_root: &Path) -> String {
    let d = dir.display();
    format!(
        r#"[plugins."io.containerd.grpc.v1.cri"]
  # The pause sandbox asks oomScoreAdj -998, which needs CAP_SYS_RESOURCE; root here lacks it
  # (then the runtime fails with a cryptic pipe EOF). true gives containerd's own value.
  restrict_oom_score_adj = true
  sandbox_image = "localhost/pause:test"
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.cagerun]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.cagerun.options]
        BinaryName = "{rt}"
        SystemdCgroup = false
        Root = "{root}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni-bin"
    conf_dir = "{d}/cni-conf"
"#,
        rt = runtime.display(),
        root = runtime_root.display(),
    )
}

/// The test's CNI plugins (a veth eth0 holding an address, and lo up: CRI needs both) and a
/// network list naming `network`, in the dirs [`cri_config`] names.
pub fn install_cni(dir: &Path, network: &str) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/support/cri");
    let bin = dir.join("cni-bin");
    let conf = dir.join("cni-conf");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&conf).unwrap();
    for plugin in ["loopback", "cage-veth"] {
        std::fs::copy(src.join(format!("cni-{plugin}")), bin.join(plugin)).unwrap();
        std::fs::set_permissions(bin.join(plugin), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(
        conf.join("10-cage.conflist"),
        format!(
            r#"{{"cniVersion":"0.4.0","name":"{network}","plugins":[{{"type":"cage-veth"}}]}}"#
        ),
    )
    .unwrap();
}

/// Build two images offline from `rootfs` (umoci, skopeo) and import them into the `k8s.io`
/// namespace: `localhost/bb:test` (the containers) and `localhost/pause:test` (the sandbox).
pub fn import_cri_images(ctrd: &Containerd, rootfs: &Path) {
    let work = ctrd.dir.path().join("images");
    std::fs::create_dir_all(&work).unwrap();
    let layout = work.join("layout");
    let l = layout.display().to_string();
    let steps: Vec<Vec<String>> = vec![
        vec!["umoci".into(), "init".into(), "--layout".into(), l.clone()],
        vec![
            "umoci".into(),
            "new".into(),
            "--image".into(),
            format!("{l}:bb"),
        ],
        vec![
            "umoci".into(),
            "insert".into(),
            "--image".into(),
            format!("{l}:bb"),
            rootfs.display().to_string(),
            "/".into(),
        ],
        vec![
            "umoci".into(),
            "config".into(),
            "--image".into(),
            format!("{l}:bb"),
            "--config.cmd".into(),
            "/bin/sh".into(),
            "--config.env".into(),
            "PATH=/bin".into(),
        ],
        vec![
            "umoci".into(),
            "config".into(),
            "--image".into(),
            format!("{l}:bb"),
            "--tag".into(),
            "pause".into(),
            "--config.cmd".into(),
            "/bin/sleep".into(),
            "--config.cmd".into(),
            "1000000".into(),
        ],
    ];
    for s in steps {
        let mut c = Command::new(&s[0]);
        c.args(&s[1..]);
        run_logged(c, None).ok(&s[..2].join(" "));
    }
    for (tag, name) in [
        ("bb", "localhost/bb:test"),
        ("pause", "localhost/pause:test"),
    ] {
        let tar = work.join(format!("{tag}.tar"));
        let mut c = Command::new("skopeo");
        c.args(["copy", "-q"])
            .arg(format!("oci:{l}:{tag}"))
            .arg(format!("docker-archive:{}:{name}", tar.display()));
        run_logged(c, None).ok("skopeo copy");
        ctrd.ctr(
            "k8s.io",
            &[
                "images",
                "import",
                "--snapshotter",
                "native",
                tar.to_str().unwrap(),
            ],
        )
        .ok("ctr images import");
    }
}

/// The CRI client: `tests/support/cri/cri.py` under the venv python scripts/test makes
/// (`$CAGERUN_CRI_PYTHON`).
pub struct Cri {
    python: PathBuf,
    socket: PathBuf,
}

impl Cri {
    pub fn new(socket: &Path) -> Cri {
        let python = std::env::var_os("CAGERUN_CRI_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
            panic!(
                "CAGERUN_CRI_PYTHON is not set: it names the python of the CRI client's venv; \
                 `bash tests/support/cri/install` makes it and prints the value (scripts/test exports it)"
            )
        });
        assert!(
            python.exists(),
            "CAGERUN_CRI_PYTHON={} does not exist: run `bash tests/support/cri/install`",
            python.display()
        );
        Cri {
            python,
            socket: socket.to_path_buf(),
        }
    }

    /// One CRI call: the request and the reply in proto3 JSON form.
    pub fn try_call(
        &self,
        method: &str,
        request: serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/support/cri/cri.py");
        let mut c = Command::new(&self.python);
        c.arg(script).arg(&self.socket).arg(method);
        let r = run_logged(c, Some(&request.to_string()));
        if r.code != 0 {
            return Err(r.stderr);
        }
        Ok(serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("{method} answered non-JSON ({e}): {}", r.stdout)))
    }

    pub fn call(&self, method: &str, request: serde_json::Value) -> serde_json::Value {
        self.try_call(method, request)
            .unwrap_or_else(|e| panic!("CRI {method} failed: {e}"))
    }

    /// Stop and remove every container and pod sandbox (also after a failed case: a failed
    /// RunPodSandbox leaves its name reserved until removed).
    pub fn remove_all(&self) {
        if let Ok(list) = self.try_call("ListContainers", serde_json::json!({})) {
            for c in list["containers"].as_array().into_iter().flatten() {
                let id = c["id"].clone();
                let _ = self.try_call(
                    "StopContainer",
                    serde_json::json!({"container_id": id, "timeout": 1}),
                );
                let _ = self.try_call("RemoveContainer", serde_json::json!({"container_id": id}));
            }
        }
        if let Ok(list) = self.try_call("ListPodSandbox", serde_json::json!({})) {
            for s in list["items"].as_array().into_iter().flatten() {
                let id = s["id"].clone();
                let _ = self.try_call("StopPodSandbox", serde_json::json!({"pod_sandbox_id": id}));
                let _ = self.try_call(
                    "RemovePodSandbox",
                    serde_json::json!({"pod_sandbox_id": id}),
                );
            }
        }
    }
}

/// ExecSync's reply: (exit code, stdout, stderr).
pub fn exec_sync_output(reply: &serde_json::Value) -> (i64, String, String) {
    use base64::Engine;
    let text = |k: &str| {
        let b = base64::engine::general_purpose::STANDARD
            .decode(reply[k].as_str().unwrap_or(""))
            .unwrap();
        String::from_utf8_lossy(&b).into_owned()
    };
    (
        reply["exit_code"].as_i64().unwrap_or(0),
        text("stdout"),
        text("stderr"),
    )
}

/// A private podman: its own storage, run root, tmp dir (the rootless pause process's pid
/// file lands there), network config dir and events file under a temp dir, cgroupfs, and the
/// runtime under test by path.
pub struct Podman {
    pub dir: TempDir,
    pub user: Option<(u32, u32)>,
    stopped: std::cell::Cell<bool>,
}

impl Podman {
    pub fn new(tag: &str, user: Option<(u32, u32)>) -> Podman {
        need_tool("podman");
        need_tool("conmon");
        let dir = TempDir::new(tag, user);
        if let Some((u, g)) = user {
            let xdg = dir.path().join("xdg");
            std::fs::create_dir_all(&xdg).unwrap();
            std::fs::set_permissions(&xdg, std::fs::Permissions::from_mode(0o700)).unwrap();
            std::os::unix::fs::chown(&xdg, Some(u), Some(g)).unwrap();
        }
        Podman {
            dir,
            user,
            stopped: Default::default(),
        }
    }

    /// The runtime's default root in this mode (podman never passes `--root`).
    pub fn runtime_default_root(&self) -> PathBuf {
        let name = runtime()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        match self.user {
            None => PathBuf::from("/run").join(name),
            Some(_) => self.dir.path().join("xdg").join(name),
        }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let d = self.dir.path();
        let mut c = Command::new("podman");
        // vfs: overlay would bind-mount the storage dir onto itself as root.
        c.arg("--root")
            .arg(d.join("storage"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .arg("--network-config-dir")
            .arg(d.join("net"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ])
            .arg("--runtime")
            .arg(runtime())
            .args(args)
            .current_dir("/")
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", d);
        if let Some((u, g)) = self.user {
            use std::os::unix::process::CommandExt;
            c.uid(u).gid(g).env("XDG_RUNTIME_DIR", d.join("xdg"));
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Ran {
        run_logged(self.cmd(args), None)
    }

    /// Remove every container, then end the rootless pause process (by its pid file) that
    /// keeps podman's user namespace.
    pub fn stop(&self) {
        if self.stopped.replace(true) {
            return;
        }
        let _ = self
            .cmd(&["rm", "--all", "--force", "--time", "0"])
            .output();
        for pidfile in [
            self.dir.path().join("tmp/pause.pid"),
            self.dir.path().join("xdg/libpod/tmp/pause.pid"),
        ] {
            if let Some(pid) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|p| p.trim().parse().ok())
            {
                end_process(pid);
            }
        }
        unmount_under(self.dir.path());
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        self.stop();
    }
}

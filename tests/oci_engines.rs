//! The engines that run cagerun as their OCI runtime, each driven the way its users drive it:
//! containerd through `ctr` (io.containerd.runc.v2 shim, `--runc-binary`), containerd's CRI
//! plugin with a RuntimeClass handler `cagerun` (what kubelet triggers for `runtimeClassName:
//! cagerun`), and podman with conmon (`--runtime`), as root and rootless.
//!
//! The runtime is `$CAGERUN_TEST_OCI_RUNTIME` when set (run the file with
//! `CAGERUN_TEST_OCI_RUNTIME=/usr/sbin/runc` to see every probe hold for the reference
//! runtime), else this build's cagerun behind a `cagerun-runc` symlink.
//!
//! containerd runs as root only: containerd rootless needs rootlesskit, which Debian 12's
//! containerd packaging does not set up, and a CRI node runs its containerd as root anyway.
//! Podman runs both as root and as `$CAGERUN_TEST_USER` (it runs the runtime as uid 0 inside
//! its own user namespace then).
//!
//! Each case starts its own engine (config, sockets, storage, state and runtime root in a temp
//! dir), ends it by pid and asserts nothing is left: no process, no mount, no cgroup of its
//! containers, no runtime state, no new entry in the host dirs engines write to regardless of
//! their config (`/run/containerd/{s,fifo,runc}`, `/run/netns`, `/var/lib/cni/results`,
//! `/run/runc`, `/run/cagerun-runc`, `/run/libpod`, `/etc/cni/net.d`, `/tmp/runc-process*`).
mod support;

use serde_json::json;
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::engines::*;
use support::{modes, static_cagerun, unique, Mode};

/// The containers a case made, so its leftover check can name what must be gone.
#[derive(Default)]
struct Seen {
    ids: RefCell<Vec<String>>,
    pids: RefCell<Vec<(u32, String)>>,
}

impl Seen {
    fn id(&self, name: &str) -> String {
        let id = unique(name);
        self.ids.borrow_mut().push(id.clone());
        id
    }
    fn add_id(&self, id: &str) {
        self.ids.borrow_mut().push(id.to_string());
    }
    fn pid(&self, pid: u32) {
        if let Some(start) = proc_start(pid) {
            self.pids.borrow_mut().push((pid, start));
        }
    }
}

/// Run `body` on a case's engine, then clean up whatever it left running and, when it passed,
/// assert that the cleanup found nothing to do beyond what the engines leave by design.
fn finish<T>(engine: T, body: impl FnOnce(&T), cleanup: impl FnOnce(T) -> Leftovers, case: &str) {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&engine)));
    let leftovers = cleanup(engine);
    if let Err(panic) = outcome {
        if !leftovers.0.is_empty() {
            eprintln!("{case} also left behind:\n  {}", leftovers.0.join("\n  "));
        }
        std::panic::resume_unwind(panic);
    }
    leftovers.assert_none(case);
}

// ---------------------------------------------------------------------------------------------
// containerd via ctr
// ---------------------------------------------------------------------------------------------

/// A private containerd, a busybox rootfs, a ctr namespace of its own (so its cgroups are
/// `/<ns>/<id>` and its runtime root `<runtime-root>/<ns>`, both the case's alone).
fn ctr_case(tag: &str, body: impl FnOnce(&Ctr)) {
    if !need_root(tag) {
        return;
    }
    let _serial = serial();
    let baseline = HostBaseline::take();
    let ctrd = Containerd::start(tag, |_| String::new());
    let rootfs = ctrd.dir.path().join("rootfs");
    busybox_rootfs(&rootfs);
    let ctr = Ctr {
        ctrd,
        ns: unique("cagerun-test-"),
        rootfs,
        seen: Seen::default(),
    };
    let marker = ctr.ctrd.dir.path().display().to_string();
    let dir = ctr.ctrd.dir.path().to_path_buf();
    finish(
        ctr,
        body,
        |ctr| {
            let Ctr {
                mut ctrd, ns, seen, ..
            } = ctr;
            ctrd.clean_namespace(&ns);
            ctrd.stop();
            let ids = seen.ids.borrow().clone();
            let mut l = Leftovers::default();
            l.processes(&marker);
            l.pids(&seen.pids.borrow());
            l.mounts(&marker);
            l.cgroups(&ns, &ids, false);
            l.runtime_state(&ctrd.runtime_root().join(&ns), &ids);
            drop(ctrd);
            if dir.exists() {
                l.0.push(format!("{} could not be removed", dir.display()));
            }
            l.host(&baseline);
            l
        },
        tag,
    );
}

struct Ctr {
    ctrd: Containerd,
    ns: String,
    rootfs: PathBuf,
    seen: Seen,
}

impl Ctr {
    /// `ctr run FLAGS --runtime io.containerd.runc.v2 --runc-binary RT --rootfs DIR ID ARGS`:
    /// no image, no snapshotter (`--rootfs` is a boolean flag: the dir is the first positional).
    /// The env has PATH, as images set it (ctr's own spec has none).
    fn run(&self, flags: &[&str], id: &str, args: &[&str]) -> Ran {
        let mut f = vec!["--env", "PATH=/bin"];
        f.extend_from_slice(flags);
        self.run_bare(&f, id, args)
    }

    /// [`Ctr::run`] with ctr's spec as it is.
    fn run_bare(&self, flags: &[&str], id: &str, args: &[&str]) -> Ran {
        let root = self.ctrd.runtime_root();
        let mut a: Vec<&str> = vec!["run"];
        a.extend_from_slice(flags);
        a.extend_from_slice(&["--runtime", "io.containerd.runc.v2", "--runc-binary"]);
        a.push(runtime().to_str().unwrap());
        a.extend_from_slice(&["--runc-root", root.to_str().unwrap(), "--rootfs"]);
        a.push(self.rootfs.to_str().unwrap());
        a.push(id);
        a.extend_from_slice(args);
        self.ctr(&a)
    }

    fn ctr(&self, args: &[&str]) -> Ran {
        self.ctrd.ctr(&self.ns, args)
    }

    /// The task's (pid, status) as `ctr task ls` shows it.
    fn task(&self, id: &str) -> (u32, String) {
        let ls = self.ctr(&["task", "ls"]).ok("ctr task ls");
        let line = ls
            .stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id));
        let f: Vec<&str> = line
            .unwrap_or_else(|| panic!("no task {id} in {}", ls.stdout))
            .split_whitespace()
            .collect();
        (f[1].parse().unwrap(), f[2].to_string())
    }

    fn wait_status(&self, id: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.task(id).1 != want {
            assert!(Instant::now() < deadline, "task {id} did not become {want}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The runtime's own view: `RT --root <runtime root>/<ns> state ID`.
    fn runtime_state(&self, id: &str) -> Ran {
        let mut c = Command::new(runtime());
        c.arg("--root")
            .arg(self.ctrd.runtime_root().join(&self.ns))
            .args(["state", id]);
        run_logged(c, None)
    }
}

/// Whether the cgroup `path` (relative to the hierarchy) is frozen (v1 freezer or v2).
fn frozen(path: &str) -> bool {
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if v2 {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{path}/cgroup.freeze"))
            .unwrap_or_default()
            .trim()
            == "1"
    } else {
        std::fs::read_to_string(format!("/sys/fs/cgroup/freezer/{path}/freezer.state"))
            .unwrap_or_default()
            .trim()
            == "FROZEN"
    }
}

fn state_json(r: &Ran) -> serde_json::Value {
    serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("state printed no JSON ({e}): {}", r.stdout))
}

#[test]
fn ctr_run_returns_the_output_and_exit_code_and_shows_runtime_errors() {
    ctr_case("ctr-run", |c| {
        let id = c.seen.id("run");
        let r = c.run(
            &["--rm"],
            &id,
            &["/bin/sh", "-c", "echo out-$((6*7)); exit 3"],
        );
        assert_eq!(r.code, 3, "the task's exit status is ctr's: {}", r.stderr);
        assert_eq!(
            r.stdout.trim(),
            "out-42",
            "the container's stdout reaches ctr"
        );

        // A command that does not exist: containerd reads the runtime's --log (one runc-style
        // JSON line) and shows its message; a log it cannot parse shows as "unable to retrieve
        // OCI runtime error" instead.
        let id = c.seen.id("broken");
        let r = c.run(&["--rm"], &id, &["/nonexistent-command"]);
        assert_ne!(r.code, 0);
        assert!(
            r.stderr.contains("OCI runtime create failed"),
            "{}",
            r.stderr
        );
        assert!(
            r.stderr.contains("/nonexistent-command")
                && !r.stderr.contains("unable to retrieve OCI runtime error"),
            "ctr must show the runtime's own message (from its --log): {}",
            r.stderr
        );
    });
}

/// ctr's default spec sets no environment; runc looks args[0] up in PATH only when it has no
/// slash, so an absolute command runs without one.
#[test]
fn ctr_runs_an_absolute_command_without_path_in_its_env() {
    ctr_case("ctr-nopath", |c| {
        let id = c.seen.id("nopath");
        let r = c.run_bare(&["--rm"], &id, &["/bin/sh", "-c", "echo ran; exit 0"]);
        assert_eq!((r.code, r.stdout.trim()), (0, "ran"), "{}", r.stderr);
    });
}

#[test]
fn ctr_task_exec_ps_pause_resume_kill_delete() {
    ctr_case("ctr-task", |c| {
        let id = c.seen.id("task");
        c.run(&["-d"], &id, &["/bin/sleep", "1000"])
            .ok("ctr run -d");
        let (pid, status) = c.task(&id);
        c.seen.pid(pid);
        assert_eq!(status, "RUNNING");
        let st = state_json(&c.runtime_state(&id).ok("runtime state"));
        assert_eq!(
            st["status"], "running",
            "the runtime sees the task running: {st}"
        );
        assert_eq!(st["pid"], pid, "the runtime's pid is the shim's: {st}");

        let r = c.ctr(&[
            "task",
            "exec",
            "--exec-id",
            "e1",
            &id,
            "/bin/sh",
            "-c",
            "echo exec-out; exit 5",
        ]);
        assert_eq!(
            (r.code, r.stdout.trim()),
            (5, "exec-out"),
            "exec's output and exit status: {}",
            r.stderr
        );

        let ps = c.ctr(&["task", "ps", &id]).ok("ctr task ps");
        assert!(
            ps.stdout
                .lines()
                .skip(1)
                .any(|l| l.split_whitespace().next() == Some(&pid.to_string())),
            "ctr task ps (the runtime's `ps --format json`) lists init {pid}: {}",
            ps.stdout
        );

        c.ctr(&["task", "pause", &id]).ok("ctr task pause");
        assert_eq!(c.task(&id).1, "PAUSED");
        assert_eq!(state_json(&c.runtime_state(&id))["status"], "paused");
        assert!(
            frozen(&format!("{}/{id}", c.ns)),
            "pause froze the container's cgroup"
        );
        c.ctr(&["task", "resume", &id]).ok("ctr task resume");
        assert_eq!(c.task(&id).1, "RUNNING");

        c.ctr(&["task", "kill", "--signal", "SIGKILL", &id])
            .ok("ctr task kill");
        c.wait_status(&id, "STOPPED");
        c.ctr(&["task", "delete", &id]).ok("ctr task delete");
        c.ctr(&["container", "delete", &id])
            .ok("ctr container delete");
        let r = c.runtime_state(&id);
        assert_ne!(r.code, 0, "deleted: the runtime no longer knows {id}");
    });
}

#[test]
fn ctr_exec_runs_under_the_containers_seccomp_filter() {
    ctr_case("ctr-seccomp", |c| {
        let seccomp = |id: &str, exec_id: &str, path: &str| {
            let r = c
                .ctr(&[
                    "task",
                    "exec",
                    "--exec-id",
                    exec_id,
                    id,
                    "/bin/grep",
                    "^Seccomp",
                    path,
                ])
                .ok("ctr task exec");
            r.stdout.trim().to_string()
        };
        // The probe: without --seccomp an exec'd process has no filter, so it tells the cases apart.
        let plain = c.seen.id("plain");
        c.run(&["-d"], &plain, &["/bin/sleep", "1000"])
            .ok("ctr run -d");
        c.seen.pid(c.task(&plain).0);
        assert!(seccomp(&plain, "p1", "/proc/self/status").starts_with("Seccomp:\t0"));

        let id = c.seen.id("seccomp");
        c.run(&["-d", "--seccomp"], &id, &["/bin/sleep", "1000"])
            .ok("ctr run -d --seccomp");
        c.seen.pid(c.task(&id).0);
        let init = seccomp(&id, "s1", "/proc/1/status");
        assert!(
            init.starts_with("Seccomp:\t2"),
            "init runs filtered: {init}"
        );
        // Seccomp_filters counts the filters: the exec'd process has the same ones as init
        // (runc applies the container's filter to exec; a runtime that forgets it weakens
        // every `kubectl exec`).
        let exec = seccomp(&id, "s2", "/proc/self/status");
        assert_eq!(
            exec, init,
            "an exec'd process carries init's seccomp filter"
        );
        for id in [&plain, &id] {
            c.ctr(&["task", "kill", "--signal", "SIGKILL", id])
                .ok("ctr task kill");
            c.wait_status(id, "STOPPED");
            c.ctr(&["task", "delete", id]).ok("ctr task delete");
            c.ctr(&["container", "delete", id])
                .ok("ctr container delete");
        }
    });
}

// ---------------------------------------------------------------------------------------------
// containerd's CRI plugin, RuntimeClass handler "cagerun"
// ---------------------------------------------------------------------------------------------

/// What kubelet adds to every container that CRI alone leaves out (kubelet's defaults).
const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

struct Pod {
    ctrd: Containerd,
    cri: Cri,
    config: serde_json::Value,
    id: String,
    seen: Seen,
}

impl Pod {
    /// A container in the pod running `sleep`, as uid 1000 with a read-only root; `security`
    /// is merged into its Linux security context, `extra` into its config.
    fn container(
        &self,
        name: &str,
        security: serde_json::Value,
        extra: serde_json::Value,
    ) -> String {
        let mut sc = json!({"run_as_user": {"value": 1000}, "readonly_rootfs": true});
        merge(&mut sc, security);
        let mut config = json!({
            "metadata": {"name": name},
            "image": {"image": "localhost/bb:test"},
            "command": ["/bin/sleep", "1000"],
            "log_path": format!("{name}.log"),
            "linux": {"security_context": sc},
        });
        merge(&mut config, extra);
        let reply = self.cri.call(
            "CreateContainer",
            json!({"pod_sandbox_id": self.id, "config": config, "sandbox_config": self.config}),
        );
        let cid = reply["container_id"].as_str().unwrap().to_string();
        self.seen.add_id(&cid);
        self.cri
            .call("StartContainer", json!({"container_id": cid}));
        cid
    }

    fn exec(&self, cid: &str, script: &str) -> (i64, String, String) {
        let reply = self.cri.call(
            "ExecSync",
            json!({"container_id": cid, "cmd": ["/bin/sh", "-c", script], "timeout": 60}),
        );
        exec_sync_output(&reply)
    }

    /// The runtime's view through containerd's runtime root for the k8s.io namespace.
    fn runtime_state(&self, id: &str) -> serde_json::Value {
        let mut c = Command::new(runtime());
        c.arg("--root")
            .arg(self.ctrd.runtime_root().join("k8s.io"))
            .args(["state", id]);
        state_json(&run_logged(c, None).ok("runtime state"))
    }

    fn remove_container(&self, cid: &str) {
        self.cri
            .call("StopContainer", json!({"container_id": cid, "timeout": 2}));
        self.cri
            .call("RemoveContainer", json!({"container_id": cid}));
    }
}

fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
    if let (Some(a), serde_json::Value::Object(b)) = (into.as_object_mut(), from) {
        for (k, v) in b {
            match a.get_mut(&k) {
                Some(old) if old.is_object() && v.is_object() => merge(old, v),
                _ => {
                    a.insert(k, v);
                }
            }
        }
    }
}

/// A private containerd with the CRI plugin and a running pod sandbox (hostname `cagepod`, a
/// pod network from the test's CNI plugins) through the `cagerun` handler; everything removed
/// through CRI afterwards, even when `body` failed, then the leftover checks.
fn cri_case(tag: &str, body: impl FnOnce(&Pod)) {
    if !need_root(tag) {
        return;
    }
    let _serial = serial();
    let baseline = HostBaseline::take();
    let k8s_cgroup_existed = cgroup_dirs("k8s.io").iter().any(|d| d.exists());
    let rt = runtime();
    let ctrd = Containerd::start(tag, |dir| cri_config(dir, rt, &dir.join("runtime-root")));
    let network = unique("cage-test-");
    install_cni(ctrd.dir.path(), &network);
    let rootfs = ctrd.dir.path().join("rootfs");
    busybox_rootfs(&rootfs);
    import_cri_images(&ctrd, &rootfs);
    let cri = Cri::new(&ctrd.socket());
    let logs = ctrd.dir.path().join("pod-logs");
    let config = json!({
        "metadata": {"name": unique("cagepod-"), "namespace": "default", "uid": unique("uid-")},
        "hostname": "cagepod",
        "log_directory": logs.display().to_string(),
        "linux": {"security_context": {"namespace_options": {"network": "POD"}}},
    });
    let marker = ctrd.dir.path().display().to_string();
    let dir = ctrd.dir.path().to_path_buf();
    let seen = Seen::default();
    let reply = cri.try_call(
        "RunPodSandbox",
        json!({"config": config, "runtime_handler": "cagerun"}),
    );
    let pod = match reply {
        Ok(r) => {
            let id = r["pod_sandbox_id"].as_str().unwrap().to_string();
            seen.add_id(&id);
            Pod {
                ctrd,
                cri,
                config,
                id,
                seen,
            }
        }
        Err(e) => {
            // The failed sandbox still reserves its name: remove it, and what the runtime's
            // failed create left (the k8s.io cgroup parent), before failing.
            cri.remove_all();
            let mut ctrd = ctrd;
            ctrd.stop();
            Leftovers::default().cgroups("k8s.io", &[], k8s_cgroup_existed);
            panic!("RunPodSandbox through the cagerun handler failed: {e}");
        }
    };
    finish(
        pod,
        |pod| {
            let sandbox = pod.runtime_state(&pod.id);
            assert_eq!(
                sandbox["status"], "running",
                "the pause sandbox runs through the handler's runtime: {sandbox}"
            );
            pod.seen.pid(sandbox["pid"].as_u64().unwrap() as u32);
            body(pod);
        },
        |pod| {
            let Pod {
                mut ctrd,
                cri,
                seen,
                ..
            } = pod;
            cri.remove_all();
            let left = cri
                .try_call("ListPodSandbox", json!({}))
                .unwrap_or_default();
            ctrd.stop();
            let ids = seen.ids.borrow().clone();
            let mut l = Leftovers::default();
            if left["items"].as_array().is_some_and(|a| !a.is_empty()) {
                l.0.push(format!("pod sandboxes: {left}"));
            }
            l.processes(&marker);
            l.pids(&seen.pids.borrow());
            l.mounts(&marker);
            l.cgroups("k8s.io", &ids, k8s_cgroup_existed);
            l.runtime_state(&ctrd.runtime_root().join("k8s.io"), &ids);
            drop(ctrd);
            if dir.exists() {
                l.0.push(format!("{} could not be removed", dir.display()));
            }
            l.host(&baseline);
            l
        },
        tag,
    );
}

#[test]
fn cri_runtime_class_runs_a_hardened_pod() {
    cri_case("cri-pod", |pod| {
        // What kubelet sends for a restricted pod: masked and read-only /proc paths and the
        // runtime's default seccomp profile.
        let cid = pod.container(
            "c1",
            json!({
                "masked_paths": MASKED_PATHS,
                "readonly_paths": READONLY_PATHS,
                "seccomp": {"profile_type": "RuntimeDefault"},
            }),
            json!({}),
        );
        let st = pod.runtime_state(&cid);
        assert_eq!(
            st["status"], "running",
            "the container runs through the handler's runtime: {st}"
        );
        pod.seen.pid(st["pid"].as_u64().unwrap() as u32);

        let (code, out, err) = pod.exec(
            &cid,
            "hostname; id -u; grep -E '^(CapEff|Seccomp):' /proc/self/status; \
             cat /proc/kcore | wc -c; touch /proc/sys/kernel/hostname; touch /probe",
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.first(), Some(&"cagepod"), "the pod's hostname: {out}");
        assert_eq!(lines.get(1), Some(&"1000"), "run_as_user: {out}");
        assert!(
            out.contains("CapEff:\t0000000000000000"),
            "a non-root user has no effective capabilities: {out}"
        );
        assert!(
            out.contains("Seccomp:\t2"),
            "RuntimeDefault seccomp applies to ExecSync's process: {out}"
        );
        assert!(
            out.contains("\n0\n"),
            "/proc/kcore is masked (reads empty): {out}"
        );
        assert!(
            err.contains("/proc/sys/kernel/hostname") && err.contains("Read-only file system"),
            "/proc/sys is read-only: {err}"
        );
        assert!(
            err.contains("/probe") && err.contains("Read-only file system"),
            "the root is read-only: {err}"
        );
        assert_ne!(code, 0);
        pod.remove_container(&cid);
    });
}

/// The static cagerun (scripts/test builds it), bind-mounted read-only into containers.
fn static_bin() -> PathBuf {
    static_cagerun("the tool-sandbox cases run a static cagerun inside a pod")
}

/// A cagerun tool sandbox made inside a CRI pod's container (the gateway's case when it runs
/// in Kubernetes). With what kubelet sends by default (masked /proc paths, RuntimeDefault
/// seccomp) it cannot be made: the default profile refuses unshare/clone of namespaces
/// without CAP_SYS_ADMIN, and the kernel refuses a fresh /proc in the sandbox's nested pid and
/// user namespace while the outer /proc has over-mounted paths (mount_too_revealing). With
/// `procMount: Unmasked` (masked_paths=[] readonly_paths=[]) and seccomp Unconfined it works.
#[test]
fn cri_pod_can_host_tool_sandboxes_only_unmasked_and_unconfined() {
    let bin = static_bin();
    cri_case("cri-sandbox", |pod| {
        let home = pod.ctrd.dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        std::os::unix::fs::chown(&home, Some(1000), Some(1000)).unwrap();
        // Not under /usr or another dir the sandbox binds from its root: a mount below one is a
        // locked child in the sandbox's user namespace, and the sandbox's non-recursive bind of
        // that dir then fails (EINVAL).
        let extra = json!({
            "mounts": [
                {"container_path": "/opt/cagerun/cagerun", "host_path": bin.display().to_string(), "readonly": true},
                {"container_path": "/home/user", "host_path": home.display().to_string()},
            ],
            "envs": [{"key": "HOME", "value": "/home/user"}, {"key": "XDG_RUNTIME_DIR", "value": "/home/user"}],
        });
        let probe = "echo uid=$(id -u) host=$(hostname) userns=$(readlink /proc/self/ns/user)";
        let sandbox_script = format!("/opt/cagerun/cagerun exec -- /bin/sh -c '{probe}' 2>&1");

        // Each of kubelet's two defaults stops it on its own.
        for (name, seccomp) in [("defaults", "RuntimeDefault"), ("masked", "Unconfined")] {
            let cid = pod.container(
                name,
                json!({
                    "masked_paths": MASKED_PATHS,
                    "readonly_paths": READONLY_PATHS,
                    "seccomp": {"profile_type": seccomp},
                }),
                extra.clone(),
            );
            pod.seen
                .pid(pod.runtime_state(&cid)["pid"].as_u64().unwrap() as u32);
            let (code, out, _) = pod.exec(&cid, &sandbox_script);
            eprintln!(
                "why a tool sandbox fails with masked /proc paths and seccomp {seccomp}: {out}"
            );
            assert_ne!(
                code, 0,
                "masked /proc, seccomp {seccomp}: the sandbox cannot be made: {out}"
            );
            assert!(!out.contains("uid="), "{out}");
            pod.remove_container(&cid);
        }

        let unmasked = pod.container(
            "unmasked",
            json!({
                "masked_paths": [],
                "readonly_paths": [],
                "seccomp": {"profile_type": "Unconfined"},
            }),
            extra,
        );
        pod.seen
            .pid(pod.runtime_state(&unmasked)["pid"].as_u64().unwrap() as u32);
        let (code, outer, _) = pod.exec(&unmasked, probe);
        assert_eq!(code, 0);
        assert!(
            outer.starts_with("uid=1000 host=cagepod "),
            "the pod container itself: {outer}"
        );
        let (code, inner, _) = pod.exec(&unmasked, &sandbox_script);
        assert_eq!(
            code, 0,
            "unmasked and unconfined, the sandbox is made: {inner}"
        );
        let inner = inner
            .lines()
            .find(|l| l.starts_with("uid="))
            .unwrap_or_else(|| panic!("{inner}"));
        let field = |s: &str, k: &str| {
            s.split_whitespace()
                .find_map(|f| f.strip_prefix(k))
                .unwrap_or_default()
                .to_string()
        };
        assert_ne!(
            field(inner, "host="),
            "cagepod",
            "the sandbox has its own hostname: {inner}"
        );
        assert_ne!(
            field(inner, "userns="),
            field(&outer, "userns="),
            "the sandbox has its own user namespace: {inner} vs {outer}"
        );
        pod.remove_container(&unmasked);
    });
}

/// The cage of the sidecar case: a gateway on the busybox image (so its rendered command runs
/// as it is) whose tool sandboxes run a busybox tree below the cage.
const SIDECAR_CAGE_TOML: &str = r#"
[services.gw]
image = "localhost/bb:test"
user = "1000"
command = ["/bin/sleep", "1000"]
mounts = [{ src = "workspace", dst = "/workspace", ro = false }]

[services.gw.sandboxes]
images = { "cage-sandbox:test" = "rootfs/sandbox" }
"#;

/// `cagerun export kube --runtime-class cagerun` of the cage at `config`: the `gw` pod spec.
fn rendered_pod(config: &Path) -> serde_json::Value {
    use serde::Deserialize;
    let mut c = Command::new(env!("CARGO_BIN_EXE_cagerun"));
    c.args(["export", "kube", "--runtime-class", "cagerun", "--config"])
        .arg(config);
    let yaml = run_logged(c, None).ok("cagerun export kube").stdout;
    for doc in serde_norway::Deserializer::from_str(&yaml) {
        let v = serde_json::Value::deserialize(doc).unwrap();
        if v["kind"] == "Deployment" && v["metadata"]["name"] == "gw" {
            return v["spec"]["template"]["spec"].clone();
        }
    }
    panic!("no Deployment gw in the export:\n{yaml}");
}

/// The CRI container config kubelet sends for a rendered container, for the fields the
/// hardening rests on: runAsUser → run_as_user, readOnlyRootFilesystem → readonly_rootfs,
/// allowPrivilegeEscalation false → no_new_privs, capabilities.drop → drop_capabilities,
/// seccompProfile → seccomp, procMount (Unmasked → no masked or read-only paths, else kubelet's
/// defaults), env, and volumeMounts at their mountPath and readOnly, each volume backed by the
/// host dir `volumes` names (kubelet's emptyDir or claim dir). Not mirrored: the image and
/// command (the caller's), resources, AppArmor (the host has none enabled), hostUsers (this
/// containerd has no CRI user namespaces; the pod's ids are the host's).
fn cri_mirror(
    rendered: &serde_json::Value,
    volumes: &[(&str, &Path)],
) -> (serde_json::Value, serde_json::Value) {
    let sc = &rendered["securityContext"];
    let unmasked = sc["procMount"] == "Unmasked";
    let security = json!({
        "run_as_user": {"value": sc["runAsUser"]},
        "readonly_rootfs": sc["readOnlyRootFilesystem"],
        "no_new_privs": sc["allowPrivilegeEscalation"] == false,
        "capabilities": {"drop_capabilities": sc["capabilities"]["drop"]},
        "seccomp": {"profile_type": sc["seccompProfile"]["type"]},
        "masked_paths": if unmasked { json!([]) } else { json!(MASKED_PATHS) },
        "readonly_paths": if unmasked { json!([]) } else { json!(READONLY_PATHS) },
    });
    let mounts: Vec<serde_json::Value> = rendered["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let name = m["name"].as_str().unwrap();
            let host = volumes
                .iter()
                .find(|(n, _)| *n == name)
                .unwrap_or_else(|| panic!("no host dir for the rendered volume {name}"))
                .1;
            json!({
                "container_path": m["mountPath"],
                "host_path": host.display().to_string(),
                "readonly": m["readOnly"] == true,
            })
        })
        .collect();
    let envs: Vec<serde_json::Value> = rendered["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| json!({"key": e["name"], "value": e["value"]}))
        .collect();
    (security, json!({"mounts": mounts, "envs": envs}))
}

/// A dir owned by the pod's uid, as kubelet makes an emptyDir or claim dir for fsGroup 1000.
fn pod_dir(path: &Path) -> &Path {
    std::fs::create_dir_all(path).unwrap();
    std::os::unix::fs::chown(path, Some(1000), Some(1000)).unwrap();
    path
}

/// OpenClaw's sandbox calls through the `docker` on the gateway's PATH (ExecSync in the
/// gateway container): the cagerun shim in the broker's emptyDir, served by the `broker`
/// sidecar, which makes each tool sandbox inside the pod. The pod is what `cagerun export
/// kube --runtime-class cagerun` renders for a cage with sandboxes, run through the `cagerun`
/// RuntimeClass handler: each container's CRI security context, env and mounts are derived
/// from the rendered container ([`cri_mirror`]) after asserting the fields it rests on.
#[test]
fn cri_pod_broker_sidecar_makes_tool_sandboxes_for_the_gateway() {
    let bin = static_bin();
    cri_case("cri-sidecar", |pod| {
        let base = pod.ctrd.dir.path();
        let cage = base.join("cage");
        std::fs::create_dir_all(cage.join("config")).unwrap();
        std::fs::write(cage.join("config/cage.toml"), SIDECAR_CAGE_TOML).unwrap();
        let workspace = pod_dir(&cage.join("workspace")).to_path_buf();
        busybox_rootfs(&cage.join("rootfs/sandbox"));
        let spec = rendered_pod(&cage.join("config/cage.toml"));
        let container = |name: &str| {
            spec["containers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == name)
                .unwrap_or_else(|| panic!("no container {name}: {spec}"))
                .clone()
        };
        let (gw, broker) = (container("gw"), container("broker"));

        // What the rendering says, which the CRI requests below carry over.
        let bsc = &broker["securityContext"];
        assert_eq!(bsc["runAsUser"], 1000, "{bsc}");
        assert_eq!(bsc["procMount"], "Unmasked", "{bsc}");
        assert_eq!(bsc["seccompProfile"]["type"], "Unconfined", "{bsc}");
        assert_eq!(bsc["allowPrivilegeEscalation"], false, "{bsc}");
        assert_eq!(bsc["capabilities"]["drop"], json!(["ALL"]), "{bsc}");
        assert_eq!(bsc["readOnlyRootFilesystem"], true, "{bsc}");
        assert_eq!(
            broker["command"],
            json!([
                "cagerun",
                "broker",
                "--config",
                "/cage/config/cage.toml",
                "--service",
                "gw",
                "--dir",
                "/run/cagerun-broker"
            ])
        );
        let gsc = &gw["securityContext"];
        assert_eq!(gsc["runAsUser"], 1000, "{gsc}");
        assert!(gsc.get("procMount").is_none(), "{gsc}");
        assert_eq!(gsc["seccompProfile"]["type"], "RuntimeDefault", "{gsc}");
        assert_eq!(gsc["readOnlyRootFilesystem"], true, "{gsc}");
        assert_eq!(gw["command"], json!(["/bin/sleep", "1000"]));
        let path = gw["env"]
            .as_array()
            .and_then(|e| e.iter().find(|v| v["name"] == "PATH"))
            .map(|v| v["value"].as_str().unwrap().to_string())
            .unwrap_or_default();
        assert!(path.starts_with("/dev/.cagerun:"), "{path}");
        let mount_of = |c: &serde_json::Value, volume: &str| -> (String, bool) {
            let m = c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["name"] == volume)
                .unwrap_or_else(|| panic!("{} mounts no {volume}", c["name"]));
            (
                m["mountPath"].as_str().unwrap().into(),
                m["readOnly"] == true,
            )
        };
        assert_eq!(
            mount_of(&broker, "broker-dir"),
            ("/run/cagerun-broker".into(), false)
        );
        assert_eq!(mount_of(&gw, "broker-dir"), ("/dev/.cagerun".into(), true));
        assert_eq!(
            mount_of(&broker, "broker-cage"),
            ("/cage/config".into(), true)
        );
        assert_eq!(mount_of(&broker, "broker-tmp").0, "/tmp");
        assert_eq!(
            mount_of(&broker, "pvc-workspace"),
            ("/cage/workspace".into(), false)
        );
        assert_eq!(mount_of(&gw, "pvc-workspace"), ("/workspace".into(), false));

        // The pod's volumes as host dirs: the shared emptyDir, each container's /tmp, the
        // workspace claim, the cage.toml ConfigMap.
        let shared = pod_dir(&base.join("broker-dir")).to_path_buf();
        let broker_tmp = pod_dir(&base.join("broker-tmp")).to_path_buf();
        let gw_tmp = pod_dir(&base.join("gw-tmp")).to_path_buf();
        let config = cage.join("config");
        let volumes: Vec<(&str, &Path)> = vec![
            ("broker-dir", &shared),
            ("broker-cage", &config),
            ("broker-tmp", &broker_tmp),
            ("tmpfs-tmp", &gw_tmp),
            ("pvc-workspace", &workspace),
        ];

        let (security, mut extra) = cri_mirror(&gw, &volumes);
        merge(&mut extra, json!({"command": gw["command"]}));
        let gateway = pod.container("gw", security, extra);
        pod.seen
            .pid(pod.runtime_state(&gateway)["pid"].as_u64().unwrap() as u32);

        // The broker image's content: the static cagerun on PATH (at a path of its own: a bind
        // below a dir the sandbox binds would be a locked mount there) and the sandbox tree
        // where cage.toml names it below /cage.
        let (security, mut image_content) = cri_mirror(&broker, &volumes);
        let cagerun = "/opt/cagerun/cagerun";
        let tree = cage.join("rootfs/sandbox").display().to_string();
        let mut command = broker["command"].as_array().unwrap().clone();
        command[0] = json!(cagerun);
        image_content["mounts"].as_array_mut().unwrap().extend([
            json!({"container_path": cagerun, "host_path": bin.display().to_string(), "readonly": true}),
            json!({"container_path": "/cage/rootfs/sandbox", "host_path": tree, "readonly": true}),
        ]);
        merge(&mut image_content, json!({"command": command}));
        // Kubelet restarts a sidecar as the same name with the next attempt.
        let start_broker = |attempt: u32| {
            let mut extra = image_content.clone();
            merge(
                &mut extra,
                json!({"metadata": {"attempt": attempt}, "log_path": format!("broker-{attempt}.log")}),
            );
            let cid = pod.container("broker", security.clone(), extra);
            pod.seen
                .pid(pod.runtime_state(&cid)["pid"].as_u64().unwrap() as u32);
            let log = base.join("pod-logs").join(format!("broker-{attempt}.log"));
            let deadline = Instant::now() + Duration::from_secs(30);
            while !std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("serving")
            {
                assert!(
                    Instant::now() < deadline,
                    "the broker never served: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            assert!(shared.join("docker.sock").exists());
            cid
        };
        let stop_broker = |cid: &str| {
            pod.cri
                .call("StopContainer", json!({"container_id": cid, "timeout": 10}));
            let st = pod
                .cri
                .call("ContainerStatus", json!({"container_id": cid}));
            assert_eq!(
                st["status"]["exit_code"].as_i64().unwrap_or(0),
                0,
                "SIGTERM ends the broker cleanly: {st}"
            );
            assert!(
                !shared.join("docker.sock").exists(),
                "the stopped broker removed its socket"
            );
            // Its private bundle dir (in its /tmp: no XDG_RUNTIME_DIR) went with it.
            let private = broker_tmp.join("cagerun-1000");
            let left: Vec<_> = std::fs::read_dir(&private)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .collect();
            assert!(left.is_empty(), "the broker left {left:?}");
        };

        let name = unique("sbx-");
        let create = format!(
            "docker create --name {name} --label openclaw.sandbox=1 --read-only --tmpfs /tmp \
             --network none --user 1000:1000 --cap-drop ALL --security-opt no-new-privileges \
             --pids-limit 256 --memory 1g --workdir /workspace -v /workspace:/workspace:z \
             cage-sandbox:test sleep infinity"
        );

        // The probe is valid: with the shim in place and no broker serving, the same call
        // fails with the shim's error (the sandbox is the broker's doing, not the gateway's).
        let first = start_broker(0);
        stop_broker(&first);
        pod.cri
            .call("RemoveContainer", json!({"container_id": first}));
        let (code, out, err) = pod.exec(&gateway, &create);
        assert_ne!(code, 0, "{out}");
        assert!(err.contains("Cannot connect to the Docker daemon"), "{err}");
        assert!(!workspace.join("from-sandbox").exists());

        let broker_cid = start_broker(1);
        let (code, out, err) = pod.exec(&gateway, &create);
        assert_eq!(code, 0, "docker create: {out}{err}");
        let id = out.trim().to_string();
        assert!(
            id.len() == 64 && id.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')),
            "docker's id: {id}"
        );
        let (code, _, err) = pod.exec(&gateway, &format!("docker start {name}"));
        assert_eq!(code, 0, "docker start: {err}");
        let (code, out, err) = pod.exec(
            &gateway,
            &format!("docker inspect --format '{{{{.Id}}}}' {name}"),
        );
        assert_eq!(
            (code, out.trim()),
            (0, id.as_str()),
            "docker inspect: {err}"
        );
        let script = r#"id -u; hostname; grep -E "NoNewPrivs|Seccomp|CapEff" /proc/self/status; echo hi > /workspace/from-sandbox"#;
        let (code, out, err) =
            pod.exec(&gateway, &format!("docker exec -i {id} sh -lc '{script}'"));
        assert_eq!(code, 0, "docker exec: {out}{err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.first(), Some(&"1000"), "the policy's user: {out}");
        assert_eq!(
            lines.get(1),
            Some(&&id[..12]),
            "the sandbox's own hostname: {out}"
        );
        assert_eq!(support::line_after(&out, "NoNewPrivs:"), "1", "{out}");
        assert_eq!(
            support::line_after(&out, "Seccomp:"),
            "2",
            "cagerun's filter: {out}"
        );
        assert_eq!(
            support::line_after(&out, "CapEff:"),
            "0000000000000000",
            "{out}"
        );
        let written = workspace.join("from-sandbox");
        assert_eq!(std::fs::read_to_string(&written).unwrap(), "hi\n");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&written).unwrap().uid(), 1000);

        let (code, _, err) = pod.exec(&gateway, &format!("docker rm -f {id}"));
        assert_eq!(code, 0, "docker rm -f: {err}");
        let (code, _, _) = pod.exec(&gateway, &format!("docker inspect {name}"));
        assert_ne!(code, 0, "{name} is gone");
        stop_broker(&broker_cid);
        pod.remove_container(&broker_cid);
        pod.remove_container(&gateway);
    });
}

// ---------------------------------------------------------------------------------------------
// podman (conmon), root and rootless
// ---------------------------------------------------------------------------------------------

/// podman's flags for every container here: no network (the cases need none; CNI would write
/// host state), and rlimits at or below the hard limits (root here lacks CAP_SYS_RESOURCE, and
/// podman's defaults raise NOFILE and NPROC). 2048, not 1024: podman 4.3 drops a 1024 limit
/// and keeps its raised default (measured).
const PODMAN_FLAGS: &[&str] = &[
    "--network",
    "none",
    "--ulimit",
    "nofile=2048:2048",
    "--ulimit",
    "nproc=2048:2048",
];

fn podman_case(mode: Mode, body: impl FnOnce(&Podman, &Seen, &[&str])) {
    let tag = match mode {
        Mode::Root => "podman-root",
        Mode::Rootless { .. } => "podman-user",
    };
    let _serial = serial();
    let baseline = HostBaseline::take();
    let user = match mode {
        Mode::Root => None,
        Mode::Rootless { uid, gid } => Some((uid, gid)),
    };
    let podman = Podman::new(tag, user);
    let rootfs = podman.dir.path().join("rootfs");
    busybox_rootfs(&rootfs);
    if let Some((uid, gid)) = user {
        // A rootless user's --rootfs is their own: podman adds /etc/mtab and mount targets.
        let mut c = Command::new("chown");
        c.arg("-hR").arg(format!("{uid}:{gid}")).arg(&rootfs);
        run_logged(c, None).ok("chown the rootfs");
    }
    // Rootless podman on cgroup v1 makes no cgroups; as root, a parent of the case's own.
    let parent = unique("cagerun-test-");
    let mut flags: Vec<String> = PODMAN_FLAGS.iter().map(|s| s.to_string()).collect();
    if user.is_none() {
        flags.push(format!("--cgroup-parent=/{parent}"));
    }
    let seen = Seen::default();
    let marker = podman.dir.path().display().to_string();
    let dir = podman.dir.path().to_path_buf();
    let rootfs_arg = rootfs.display().to_string();
    finish(
        (podman, seen),
        |(podman, seen)| {
            let mut f: Vec<&str> = flags.iter().map(String::as_str).collect();
            f.push("--rootfs");
            f.push(&rootfs_arg);
            body(podman, seen, &f)
        },
        |(podman, seen)| {
            podman.stop();
            let ids = seen.ids.borrow().clone();
            let mut l = Leftovers::default();
            l.processes(&marker);
            l.pids(&seen.pids.borrow());
            l.mounts(&marker);
            let libpod: Vec<String> = ids.iter().map(|i| format!("libpod-{i}")).collect();
            l.cgroups(&parent, &libpod, false);
            l.runtime_state(&podman.runtime_default_root(), &ids);
            drop(podman);
            l.engine_dir(&baseline, "/run/containers/networks");
            if dir.exists() {
                l.0.push(format!("{} could not be removed", dir.display()));
            }
            l.host(&baseline);
            l
        },
        tag,
    );
}

/// The container id podman wrote to a `--cidfile` (its runtime's container id too).
fn cid(podman: &Podman, name: &str) -> String {
    std::fs::read_to_string(podman.dir.path().join(name))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn podman_runs_and_execs_through_the_runtime() {
    for mode in modes() {
        podman_case(mode, |p, seen, run_flags| {
            let cidfile = p.dir.path().join("run.cid").display().to_string();
            let mut a = vec!["run", "--rm", "--cidfile", &cidfile];
            a.extend_from_slice(run_flags);
            a.extend_from_slice(&["/bin/sh", "-c", "echo out-$((6*7)); exit 3"]);
            let r = p.run(&a);
            seen.add_id(&cid(p, "run.cid"));
            assert_eq!(
                (r.code, r.stdout.trim()),
                (3, "out-42"),
                "[{mode:?}] output and exit status: {}",
                r.stderr
            );

            // A shell as init that ends on SIGTERM: `podman stop` goes through the runtime's kill.
            let cidfile = p.dir.path().join("d.cid").display().to_string();
            let mut a = vec!["run", "-d", "--name", "d", "--cidfile", &cidfile];
            a.extend_from_slice(run_flags);
            a.extend_from_slice(&["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait"]);
            p.run(&a).ok("podman run -d");
            let id = cid(p, "d.cid");
            seen.add_id(&id);
            let pid = p
                .run(&["inspect", "--format", "{{.State.Pid}}", "d"])
                .ok("podman inspect");
            seen.pid(pid.stdout.trim().parse().unwrap());
            assert!(
                p.runtime_default_root().join(&id).exists(),
                "podman passes no --root: the runtime keeps its state in its default root {}",
                p.runtime_default_root().display()
            );
            let r = p.run(&["exec", "d", "/bin/sh", "-c", "echo exec-out; exit 4"]);
            assert_eq!(
                (r.code, r.stdout.trim()),
                (4, "exec-out"),
                "[{mode:?}] exec: {}",
                r.stderr
            );
            let started = Instant::now();
            p.run(&["stop", "--time", "10", "d"]).ok("podman stop");
            assert!(
                started.elapsed() < Duration::from_secs(8),
                "SIGTERM reached init (no SIGKILL after the timeout)"
            );
            let r = p
                .run(&["inspect", "--format", "{{.State.ExitCode}}", "d"])
                .ok("podman inspect");
            assert_eq!(r.stdout.trim(), "0");
            p.run(&["rm", "d"]).ok("podman rm");
        });
    }
}

#[test]
fn podman_shows_the_runtimes_json_error() {
    for mode in modes() {
        podman_case(mode, |p, seen, run_flags| {
            // podman passes --log-format=json --log only to runtimes it lists; its own
            // containers.conf lists runc but not cagerun-runc.
            let conf = p.dir.path().join("containers.conf");
            std::fs::write(
                &conf,
                "[engine]\nruntime_supports_json = [\"crun\", \"runc\", \"cagerun-runc\"]\n",
            )
            .unwrap();
            let cidfile = p.dir.path().join("e.cid").display().to_string();
            let mut a = vec!["run", "--rm", "--cidfile", &cidfile];
            a.extend_from_slice(run_flags);
            a.push("/nonexistent-command");
            let mut cmd = p.cmd(&a);
            cmd.env("CONTAINERS_CONF", &conf);
            let r = run_logged(cmd, None);
            if let Ok(id) = std::fs::read_to_string(p.dir.path().join("e.cid")) {
                seen.add_id(id.trim());
            }
            // podman maps "no such file or directory" / "executable file not found" to 127.
            assert_eq!(
                r.code, 127,
                "[{mode:?}] a missing command is podman's 127: {}",
                r.stderr
            );
            assert!(
                r.stderr.contains("/nonexistent-command"),
                "[{mode:?}] podman shows the runtime's message: {}",
                r.stderr
            );
        });
    }
}

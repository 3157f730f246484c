//! `cagerun broker`: a service's sandbox broker on its own (a Kubernetes pod's sidecar), as
//! root and rootless. The shim in its directory, driven the way OpenClaw's sandbox backend
//! drives `docker`, gets a fresh hardened sandbox per exec under the cage's policy; refusals
//! are docker's words; SIGTERM takes every sandbox down and the socket with it; bad input is
//! refused before anything is made in the directory.
//!
//! The gateway's own tree is deliberately absent (an image never pulled here): in a pod it is
//! the gateway container's, and the broker's policy comes from cage.toml alone.

#[path = "support/mod.rs"]
mod support;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::cage::{chown_tree, serial};
use support::*;

const IMAGE: &str = "openclaw-sandbox:bookworm-slim";

/// A gateway whose image tree is not on this machine, with sandboxes on the host's tree.
const CAGE_TOML: &str = r#"
[services.gw]
image = "ghcr.io/openclaw/openclaw:2026.9.6"
user = "1000"
command = ["node", "openclaw.mjs", "gateway", "run"]
mounts = [{ src = "workspace", dst = "/workspace", ro = false }]
tmpfs = [{ dst = "/tmp", size = "64m" }]

[services.gw.sandboxes]
images = { "openclaw-sandbox:bookworm-slim" = "host" }
"#;

/// A temp cage (config/cage.toml, workspace/ writable by the sandbox user) and an empty
/// shared directory `shared/`, all the caller's.
struct SidecarCage {
    mode: Mode,
    dir: TempDir,
}

impl SidecarCage {
    fn new(mode: Mode, toml: &str) -> SidecarCage {
        let dir = TempDir::new("bsc", None);
        let p = dir.path();
        std::fs::create_dir_all(p.join("config")).unwrap();
        std::fs::write(p.join("config/cage.toml"), toml).unwrap();
        std::fs::create_dir_all(p.join("workspace")).unwrap();
        std::fs::create_dir_all(p.join("shared")).unwrap();
        chown_tree(p, mode.caller_ids());
        if is_root() {
            std::os::unix::fs::chown(
                p.join("workspace"),
                Some(mode.sandbox_host_uid()),
                Some(mode.sandbox_host_gid()),
            )
            .unwrap();
        }
        SidecarCage { mode, dir }
    }
    fn config(&self) -> PathBuf {
        self.dir.path().join("config/cage.toml")
    }
    fn shared(&self) -> PathBuf {
        self.dir.path().join("shared")
    }
    fn socket(&self) -> PathBuf {
        self.shared().join("docker.sock")
    }
    fn broker_cmd(&self, service: &str, dir: &Path) -> Command {
        let config = self.config();
        cagerun_cmd(
            self.mode,
            &[
                "broker",
                "--config",
                config.to_str().unwrap(),
                "--service",
                service,
                "--dir",
                dir.to_str().unwrap(),
                "-v",
            ],
        )
    }
    /// `cagerun broker` for `gw` on `shared/`, refused: (exit code, stderr).
    fn refused(&self, service: &str, dir: &Path) -> (i32, String) {
        let out = self.broker_cmd(service, dir).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("[{:?}] broker -> {:?}: {stderr}", self.mode, out.status);
        (out.status.code().unwrap_or(-1), stderr)
    }
    /// The shim in `shared/` (the copy the broker put there), as the caller, with the socket
    /// override (no /dev/.cagerun outside a pod).
    fn docker_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.shared().join("docker"));
        cmd.args(args)
            .env("CAGERUN_BROKER_SOCKET", self.socket())
            .current_dir("/")
            .stdin(Stdio::null());
        if let Mode::Rootless { uid, gid } = self.mode {
            if is_root() {
                cmd.uid(uid).gid(gid);
            }
        }
        cmd
    }
    fn docker(&self, args: &[&str]) -> Run {
        let out = self.docker_cmd(args).output().unwrap();
        let r = Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        eprintln!(
            "[{:?}] docker {args:?} -> {}\n  stdout: {}\n  stderr: {}",
            self.mode,
            r.code,
            r.stdout.trim(),
            r.stderr.trim()
        );
        r
    }
    fn shared_is_empty(&self) -> bool {
        std::fs::read_dir(self.shared()).unwrap().next().is_none()
    }
}

/// Host pids of processes whose command line names `tag` and passes `what` (not the test
/// itself).
fn pids_naming(tag: &str, what: impl Fn(&str) -> bool) -> Vec<i32> {
    processes_naming(tag)
        .into_iter()
        .filter(|(_, cmd)| what(cmd))
        .map(|(pid, _)| pid)
        .collect()
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// What a sandbox (or the host, for the probe) says of itself.
const FACTS: &str = r#"echo "uid: $(id -u)"; echo "host: $(hostname)"; grep -E "^(NoNewPrivs|Seccomp|CapEff):" /proc/self/status"#;

#[test]
fn the_sidecar_serves_openclaws_calls_and_stops_clean_on_sigterm() {
    let _serial = serial();
    for mode in modes() {
        let cage = SidecarCage::new(mode, CAGE_TOML);
        let marker = unique("bsc");
        // The service writes DIR too: links planted at the broker's names must be replaced,
        // never followed. The probe is valid: a chmod or a write by name follows them.
        use std::os::unix::fs::PermissionsExt;
        let victim = cage.dir.path().join("victim");
        std::fs::write(&victim, "mine\n").unwrap();
        for name in ["docker.sock", "docker"] {
            std::os::unix::fs::symlink(&victim, cage.shared().join(name)).unwrap();
        }
        std::fs::set_permissions(
            cage.shared().join("docker.sock"),
            PermissionsExt::from_mode(0o640),
        )
        .unwrap();
        assert_eq!(
            std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let (uid, gid) = mode.caller_ids();
        for p in [
            victim.clone(),
            cage.shared().join("docker.sock"),
            cage.shared().join("docker"),
        ] {
            std::os::unix::fs::lchown(&p, Some(uid), Some(gid)).unwrap();
        }
        let mut broker = cage
            .broker_cmd("gw", &cage.shared())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut log = Stream::of(broker.stderr.take().unwrap());
        let serving = log.wait_for(Duration::from_secs(20), |s| s.contains("serving"));
        assert!(
            serving && cage.socket().exists(),
            "the broker never served: {}",
            log.rest(Duration::from_secs(1))
        );
        // It said which limits its sandboxes get.
        assert!(log.seen.contains("sandbox limits: "), "{}", log.seen);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "mine\n");
        assert_eq!(
            std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777,
            0o640
        );
        use std::os::unix::fs::FileTypeExt;
        let sock = std::fs::symlink_metadata(cage.socket()).unwrap();
        assert!(sock.file_type().is_socket());
        assert_eq!(sock.permissions().mode() & 0o777, 0o666);
        // The shim is a 0755 copy of cagerun, the socket connectable by the service's user.
        for name in ["docker", "podman"] {
            let m = std::fs::symlink_metadata(cage.shared().join(name)).unwrap();
            assert!(m.file_type().is_file(), "{name}");
            assert_eq!(m.permissions().mode() & 0o7777, 0o755, "{name}");
            assert_eq!(m.len(), std::fs::metadata(&bins().cagerun).unwrap().len());
        }

        // The probe is valid: the caller itself has none of the sandbox's facts.
        let host = Command::new("sh").args(["-c", FACTS]).output().unwrap();
        let host = String::from_utf8_lossy(&host.stdout).into_owned();
        assert_eq!(line_after(&host, "Seccomp:"), "0", "{host}");

        // OpenClaw's calls (buildSandboxCreateArgs, then start, inspect, exec, rm).
        let name = format!("sbx-{marker}");
        let create = [
            "create",
            "--name",
            &name,
            "--label",
            "openclaw.sandbox=1",
            "--read-only",
            "--tmpfs",
            "/tmp",
            "--network",
            "none",
            "--user",
            "1000:1000",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--pids-limit",
            "256",
            "--memory",
            "1g",
            "--workdir",
            "/workspace",
            "-v",
            "/workspace:/workspace:z",
            IMAGE,
            "sleep",
            "infinity",
        ];
        let r = cage.docker(&create);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let id = r.stdout.trim().to_string();
        assert!(
            id.len() == 64 && id.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')),
            "docker's id: {id}"
        );
        assert_eq!(cage.docker(&["start", &name]).code, 0);
        let r = cage.docker(&["inspect", "--format", "{{.Id}}", &name]);
        assert_eq!((r.code, r.stdout.trim()), (0, id.as_str()));

        let script = format!("{FACTS}; echo tool-output > /workspace/written");
        let r = cage.docker(&["exec", "-i", &id, "sh", "-lc", &script]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let out = &r.stdout;
        assert_eq!(line_after(out, "uid:"), "1000", "the policy's user");
        assert_eq!(line_after(out, "host:"), &id[..12], "its own host name");
        assert_ne!(line_after(&host, "host:"), &id[..12]);
        assert_eq!(line_after(out, "NoNewPrivs:"), "1");
        assert_eq!(line_after(out, "Seccomp:"), "2");
        assert_eq!(line_after(out, "CapEff:"), "0000000000000000");
        // The bind went through the cage's workspace, written as the sandbox user.
        let written = cage.dir.path().join("workspace/written");
        assert_eq!(std::fs::read_to_string(&written).unwrap(), "tool-output\n");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(&written).unwrap().uid(),
            mode.sandbox_host_uid()
        );

        // Beyond the policy: refused in docker's words, nothing recorded.
        for (extra, says) in [
            (&["--privileged"][..], "--privileged is not allowed"),
            (&["-v", "/etc:/x"][..], "bind source /etc is outside"),
        ] {
            let bad = format!("bad-{marker}");
            let mut argv = vec!["create", "--name", bad.as_str()];
            argv.extend_from_slice(extra);
            argv.extend_from_slice(&[IMAGE, "sleep", "infinity"]);
            let r = cage.docker(&argv);
            assert_eq!(r.code, 125, "{}", r.stderr);
            assert!(
                r.stderr.contains("Error response from daemon") && r.stderr.contains(says),
                "{}",
                r.stderr
            );
            assert_ne!(
                cage.docker(&["inspect", &bad]).code,
                0,
                "{bad} was recorded"
            );
        }
        let r = cage.docker(&["rm", "-f", &id]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_ne!(cage.docker(&["inspect", &name]).code, 0);

        // A sandbox still running when SIGTERM comes.
        let tag = format!("{marker}-sleeping");
        let long = format!("long-{marker}");
        let mut argv = create.to_vec();
        argv[2] = long.as_str();
        assert_eq!(cage.docker(&argv).code, 0);
        assert_eq!(cage.docker(&["start", &long]).code, 0);
        let sleeper = format!("sleep 600; : {tag}");
        let mut shim = cage
            .docker_cmd(&["exec", &long, "sh", "-c", &sleeper])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let is_sandbox_shell = |c: &str| c.starts_with("sh -c sleep 600");
        let mut sandbox = Vec::new();
        for _ in 0..500 {
            sandbox = pids_naming(&tag, is_sandbox_shell);
            if !sandbox.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!sandbox.is_empty(), "the sandbox never ran");

        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(broker.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = wait_exit(&mut broker, Duration::from_secs(20)).expect("the broker exits");
        let log = log.rest(Duration::from_secs(2)).to_string();
        assert_eq!(status.code(), Some(0), "{log}");
        // One line per call with -v.
        assert!(log.contains("docker create"), "{log}");
        for pid in &sandbox {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "sandbox {pid} outlived the broker"
            );
        }
        assert!(!cage.socket().exists(), "the socket is left");
        let shim_status = wait_exit(&mut shim, Duration::from_secs(10)).expect("the shim ends");
        assert_ne!(shim_status.code(), Some(0));
        // Its private bundles and cgroup went with it.
        let own = format!("broker-gw-{}", broker.id());
        let base = match mode {
            Mode::Root => PathBuf::from("/run/cagerun"),
            Mode::Rootless { uid, .. } => std::env::temp_dir().join(format!("cagerun-{uid}")),
        };
        assert!(
            !base.join(&own).exists(),
            "{} is left",
            base.join(&own).display()
        );
        for h in ["memory", "pids"] {
            let (uid, _) = mode.caller_ids();
            let cg = Path::new("/sys/fs/cgroup")
                .join(h)
                .join(format!("cagerun/{uid}/{own}"));
            assert!(!cg.exists(), "{} is left", cg.display());
        }
        assert_no_leftovers(&marker);
    }
}

#[test]
fn bad_input_is_refused_before_anything_is_made() {
    let _serial = serial();
    for mode in modes() {
        // A service without sandboxes.
        let cage = SidecarCage::new(
            mode,
            "[services.gw]\nhost = true\ncommand = [\"sleep\", \"1\"]\n",
        );
        let (code, err) = cage.refused("gw", &cage.shared());
        assert_ne!(code, 0);
        assert!(err.contains("has no [services.gw.sandboxes]"), "{err}");
        assert!(cage.shared_is_empty());

        // A sandbox image tree that is missing.
        let cage = SidecarCage::new(
            mode,
            &CAGE_TOML.replace("\"host\"", "\"rootfs/openclaw-sandbox\""),
        );
        let (code, err) = cage.refused("gw", &cage.shared());
        assert_ne!(code, 0);
        assert!(
            err.contains("sandbox image openclaw-sandbox:bookworm-slim")
                && err.contains("is missing"),
            "{err}"
        );
        assert!(cage.shared_is_empty());

        // Sandboxes with internet: there is no router here, and it is never widened.
        let cage = SidecarCage::new(mode, &format!("{CAGE_TOML}internet = [\"pypi.org\"]\n"));
        let (code, err) = cage.refused("gw", &cage.shared());
        assert_ne!(code, 0);
        assert!(
            err.contains("internet") && err.contains("keep only lo"),
            "{err}"
        );
        assert!(cage.shared_is_empty());

        // A directory the broker cannot write (root writes anything: rootless only).
        if let Mode::Rootless { .. } = mode {
            let cage = SidecarCage::new(mode, CAGE_TOML);
            let theirs = TempDir::new("bsc-ro", None);
            if !is_root() {
                std::fs::set_permissions(
                    theirs.path(),
                    std::os::unix::fs::PermissionsExt::from_mode(0o555),
                )
                .unwrap();
            }
            let (code, err) = cage.refused("gw", theirs.path());
            assert_ne!(code, 0);
            assert!(err.contains("cannot write"), "{err}");
            assert!(std::fs::read_dir(theirs.path()).unwrap().next().is_none());
        }
    }
}

//! The escape suite: each attack is first shown to work outside the sandbox (as root in a
//! throwaway mount+UTS namespace, or as the test user where that is the point), so the probe
//! is known to be valid, then shown to fail inside, as root and rootless. Probes are in
//! crates/cage-probe; their side effects are harmless and undone.

#[path = "support/mod.rs"]
mod support;

use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use support::*;

#[derive(Clone, Copy, PartialEq)]
enum Outside {
    /// Root in `unshare -m -u --propagation private`: the strongest position, contained.
    Root,
    /// The unprivileged test user (for setuid).
    TestUser,
}

/// Host-side targets an attack aims at; created per case, removed after.
struct Targets {
    canary_dir: TempDir,
    canary: PathBuf,
    tcp: std::net::TcpListener,
    _abstract_listener: std::os::unix::net::UnixListener,
    abstract_name: String,
    unix_path: PathBuf,
    _unix_listener: std::os::unix::net::UnixListener,
}

impl Targets {
    fn new(owner: (u32, u32)) -> Targets {
        let canary_dir = TempDir::new("canary", Some(owner));
        let canary = canary_dir.path().join("canary");
        std::fs::write(&canary, "original").unwrap();
        if is_root() {
            std::os::unix::fs::chown(&canary, Some(owner.0), Some(owner.1)).unwrap();
        }
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        use std::os::linux::net::SocketAddrExt;
        let abstract_name = unique("cagerun-test-abstract-");
        let addr =
            std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes()).unwrap();
        let abs = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
        let unix_path = canary_dir.path().join("sock");
        let ul = std::os::unix::net::UnixListener::bind(&unix_path).unwrap();
        std::fs::set_permissions(&unix_path, std::fs::Permissions::from_mode(0o777)).unwrap();
        Targets {
            canary_dir,
            canary,
            tcp,
            _abstract_listener: abs,
            abstract_name,
            unix_path,
            _unix_listener: ul,
        }
    }

    fn expand(&self, ws: &std::path::Path, arg: &str) -> String {
        arg.replace("{canary}", self.canary.to_str().unwrap())
            .replace("{canary_dir}", self.canary_dir.path().to_str().unwrap())
            .replace("{tcp}", &self.tcp.local_addr().unwrap().to_string())
            .replace("{abstract}", &self.abstract_name)
            .replace("{unix}", self.unix_path.to_str().unwrap())
            .replace("{ws}", ws.to_str().unwrap())
    }
}

struct Attack {
    inside: &'static [&'static str],
    outside: &'static [&'static str],
    flags: &'static [&'static str],
    outside_as: Outside,
    /// Give the probe a controlling terminal on its stdin (TIOCSTI).
    with_tty: bool,
    /// Hand the probe an inherited descriptor of the canary directory at fd 7.
    with_leaked_fd: bool,
}

const fn attack(inside: &'static [&'static str]) -> Attack {
    Attack {
        inside,
        outside: inside,
        flags: &[],
        outside_as: Outside::Root,
        with_tty: false,
        with_leaked_fd: false,
    }
}

fn setup_cmd(cmd: &mut Command, a: &Attack, leaked: Option<i32>) -> Option<std::os::fd::OwnedFd> {
    let mut replica_keep = None;
    if a.with_tty {
        let pty = nix::pty::openpty(None, None).unwrap();
        let replica = pty.slave.as_raw_fd();
        unsafe {
            cmd.pre_exec(move || {
                libc::setsid();
                libc::ioctl(replica, libc::TIOCSCTTY, 0);
                libc::dup2(replica, 0);
                Ok(())
            });
        }
        replica_keep = Some(pty.master);
        std::mem::forget(pty.slave);
    }
    if let Some(fd) = leaked {
        unsafe {
            cmd.pre_exec(move || {
                // dup2 onto itself keeps FD_CLOEXEC: clear it explicitly.
                libc::dup2(fd, 7);
                libc::fcntl(7, libc::F_SETFD, 0);
                Ok(())
            });
        }
    }
    replica_keep
}

/// The Unix owner of the canary and workspace in the outside run.
fn outside_owner() -> (u32, u32) {
    match modes()[0] {
        Mode::Root => (1000, 1000),
        m => (m.sandbox_host_uid(), m.sandbox_host_gid()),
    }
}

/// The probe is valid: outside any sandbox (as root in a throwaway mount+UTS namespace, or
/// as the test user) the attack works.
fn assert_works_outside(a: &Attack) {
    let owner = outside_owner();
    let t = Targets::new(owner);
    let ws = TempDir::new("outside-ws", Some(owner));
    std::os::unix::fs::symlink(&t.canary, ws.path().join("link")).unwrap();
    let leaked = a
        .with_leaked_fd
        .then(|| std::fs::File::open(t.canary_dir.path()).unwrap());
    let args: Vec<String> = a.outside.iter().map(|s| t.expand(ws.path(), s)).collect();
    if a.outside_as == Outside::TestUser {
        make_suid_probe(ws.path());
    }
    let mut cmd = match (a.outside_as, is_root()) {
        (Outside::Root, true) => {
            let mut c = Command::new("unshare");
            c.args(["-m", "-u", "--propagation", "private", "--"])
                .arg(&bins().probe);
            c
        }
        (Outside::Root, false) => {
            let mut c = Command::new("unshare");
            c.args(["-U", "-r", "-m", "-u", "--propagation", "private", "--"])
                .arg(&bins().probe);
            c
        }
        (Outside::TestUser, _) => {
            let probe = ws.path().join("suid-probe");
            assert!(probe.exists(), "setuid probe missing");
            let mut c = Command::new(probe);
            let m = modes();
            let Mode::Rootless { uid, gid } = m[m.len() - 1] else {
                unreachable!()
            };
            c.uid(uid).gid(gid);
            c
        }
    };
    cmd.args(&args).stdin(Stdio::null());
    let _keep = setup_cmd(&mut cmd, a, leaked.as_ref().map(|f| f.as_raw_fd()));
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("WORKS"),
        "the probe must work outside the sandbox, or it proves nothing: {args:?} -> {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Outside effects on the canary are undone by recreating it for the inside runs.
}

fn assert_attack(a: Attack) {
    // 1. Outside: the probe works.
    assert_works_outside(&a);
    // 2. Inside: it fails, in every mode, and the host is unchanged.
    let host_name = nix::unistd::gethostname().unwrap();
    for mode in modes() {
        let t = Targets::new((mode.sandbox_host_uid(), mode.sandbox_host_gid()));
        let ws = workspace(mode);
        std::os::unix::fs::symlink(&t.canary, ws.path().join("link")).unwrap();
        if a.outside_as == Outside::TestUser {
            make_suid_probe(ws.path());
        }
        let leaked = a
            .with_leaked_fd
            .then(|| std::fs::File::open(t.canary_dir.path()).unwrap());
        let wsp = ws.path().to_str().unwrap().to_string();
        let probe = if a.outside_as == Outside::TestUser {
            "/workspace/suid-probe"
        } else {
            "/workspace/cage-probe"
        };
        let mut args: Vec<String> = vec!["exec".into(), "--workspace".into(), wsp.clone()];
        args.extend(a.flags.iter().map(|s| s.to_string()));
        args.push("--".into());
        args.push(probe.into());
        args.extend(a.inside.iter().map(|s| t.expand(ws.path(), s)));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = cagerun_cmd(mode, &argv);
        let _keep = setup_cmd(&mut cmd, &a, leaked.as_ref().map(|f| f.as_raw_fd()));
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        eprintln!(
            "[{mode:?}] {argv:?} -> {:?} {stdout} {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            out.status.code(),
            Some(1),
            "the probe ran and reported a refusal (not a setup error): {stdout}"
        );
        assert!(stdout.starts_with("BLOCKED"), "{stdout}");
        assert_eq!(
            std::fs::read_to_string(&t.canary).unwrap(),
            "original",
            "host canary unchanged"
        );
        assert_eq!(
            nix::unistd::gethostname().unwrap(),
            host_name,
            "host hostname unchanged"
        );
        assert_no_leftovers(&wsp);
    }
}

/// A root-owned setuid copy of the probe: it reports euid 0 when the kernel honours setuid.
fn make_suid_probe(dir: &std::path::Path) {
    assert!(is_root(), "the setuid case needs root to make a setuid-root probe; run the tests as root (.ci/run does)");
    let dst = dir.join("suid-probe");
    std::fs::copy(&bins().probe, &dst).unwrap();
    std::os::unix::fs::chown(&dst, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o4755)).unwrap();
}

macro_rules! attacks {
    ($($name:ident => $attack:expr;)*) => {
        $(#[test] fn $name() { assert_attack($attack); })*

        /// Every attack above by its test's name: the pooled run goes through them too.
        fn all_attacks() -> Vec<(&'static str, Attack)> {
            vec![$((stringify!($name), $attack)),*]
        }
    };
}

attacks! {
    mount_a_filesystem => attack(&["mount", "/tmp"]);
    unshare_a_user_namespace => attack(&["unshare-user"]);
    unshare_a_mount_namespace => attack(&["unshare-mount"]);
    clone_into_a_new_user_namespace => attack(&["clone-newuser"]);
    clone_into_a_new_network_namespace => attack(&["clone-newnet"]);
    clone3_with_namespace_flags => attack(&["clone3-newns"]);
    setns_into_a_namespace => attack(&["setns"]);
    ptrace_a_process => attack(&["ptrace"]);
    read_another_process_memory => attack(&["process-vm-readv"]);
    kcmp_another_process => attack(&["kcmp"]);
    raw_ip_socket => attack(&["raw-socket"]);
    packet_socket => attack(&["packet-socket"]);
    netlink_audit_socket => attack(&["netlink-audit"]);
    connect_to_a_host_loopback_server => attack(&["connect-tcp", "{tcp}"]);
    connect_to_a_host_abstract_unix_socket => attack(&["connect-abstract", "{abstract}"]);
    connect_to_a_host_unix_socket_file => attack(&["connect-unix", "{unix}"]);
    write_a_host_file_outside_the_workspace => attack(&["write", "{canary}", "pwned"]);
    write_through_a_symlink_out_of_the_workspace => Attack { inside: &["write", "/workspace/link", "pwned"], outside: &["write", "{ws}/link", "pwned"], ..attack(&[]) };
    hardlink_a_host_file_into_the_workspace => Attack { inside: &["hardlink", "/etc/ssl/openssl.cnf", "/workspace/hl"], outside: &["hardlink", "{canary}", "{ws}/hl"], ..attack(&[]) };
    reach_the_host_root_through_proc_pid_root => attack(&["proc-root", "{canary}"]);
    use_an_inherited_descriptor => Attack { with_leaked_fd: true, ..attack(&["fd-escape", "canary"]) };
    inject_keystrokes_with_tiocsti => Attack { with_tty: true, ..attack(&["tiocsti"]) };
    inject_keystrokes_with_tiocsti_high_bits => Attack { with_tty: true, ..attack(&["tiocsti-highbits"]) };
    gain_root_through_a_setuid_binary => Attack { outside_as: Outside::TestUser, ..attack(&["euid"]) };
    fork_bomb => Attack { flags: &["--pids", "64"], outside: &["fork-bomb", "300"], ..attack(&["fork-bomb", "300"]) };
    fill_tmp => Attack { flags: &["--tmpfs-size", "16m"], outside: &["fill", "{canary_dir}", "64"], ..attack(&["fill", "/tmp", "64"]) };
    make_a_device_node => Attack { outside: &["mknod", "{canary_dir}/mem"], ..attack(&["mknod", "/workspace/mem"]) };
    read_a_host_block_device => attack(&["block-device"]);
    write_proc_sys => attack(&["proc-sys-hostname"]);
    set_the_hostname => attack(&["sethostname"]);
    chroot => attack(&["chroot"]);
    move_into_the_root_cgroup => attack(&["cgroup-escape"]);
    load_a_bpf_program => attack(&["bpf"]);
    open_a_perf_event => attack(&["perf"]);
    create_a_userfaultfd => attack(&["userfaultfd"]);
    use_the_kernel_keyring => attack(&["keyctl"]);
    set_up_io_uring => attack(&["io-uring"]);
    change_personality => attack(&["personality"]);
    open_a_file_by_handle_shocker => attack(&["open-by-handle"]);
    reboot_the_machine => attack(&["reboot"]);
    turn_swap_off => attack(&["swapoff"]);
    set_the_clock => attack(&["clock-settime"]);
    switch_on_process_accounting => attack(&["acct"]);
    pivot_root => attack(&["pivot-root"]);
}

/// The `docker create` flags that give a broker sandbox what an attack's `cagerun exec`
/// flags give a fresh one.
fn create_flags(exec_flags: &[&str]) -> String {
    match exec_flags {
        [] => String::new(),
        ["--pids", n] => format!("--pids-limit {n}"),
        ["--tmpfs-size", size] => format!("--tmpfs /tmp:size={size}"),
        other => panic!("no docker create flags for {other:?}: add them here"),
    }
}

/// The same attacks from a tool sandbox the broker had parked (the warm pool): each probe
/// runs through `docker exec` in a gateway service, in a sandbox parked before the call
/// (its pid 1 is older than the call: support::pool), after the same outside run proves
/// the probe. Left out: the terminal attacks (a call with `-t` never gets a parked sandbox)
/// and the inherited descriptor (the shim hands the broker 0/1/2 only).
#[test]
fn the_attacks_fail_in_a_parked_tool_sandbox_too() {
    use support::cage::*;
    use support::pool::{self, AGE_SH};
    let _serial = serial();
    let attacks: Vec<(&str, Attack)> = all_attacks()
        .into_iter()
        .filter(|(_, a)| !a.with_tty && !a.with_leaked_fd)
        .collect();
    for (_, a) in &attacks {
        assert_works_outside(a);
    }
    let toml = r#"
[services.gw]
host = true
command = ["sleep", "100000"]
env = { CAGE_MARKER = "{MARKER}" }
mounts = [{ src = "workspace", dst = "/workspace", ro = false }]

[services.gw.sandboxes]
images = { "sb" = "host" }
"#;
    let host_name = nix::unistd::gethostname().unwrap();
    for mode in modes() {
        let mut cage = Cage::new(
            mode,
            "escpool",
            &[("config/cage.toml", toml), ("workspace/.keep", "")],
        );
        let ws = cage.root.join("workspace");
        std::fs::copy(&bins().probe, ws.join("cage-probe")).unwrap();
        std::fs::set_permissions(
            ws.join("cage-probe"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        chown_tree(&ws, (mode.sandbox_host_uid(), mode.sandbox_host_gid()));
        if attacks
            .iter()
            .any(|(_, a)| a.outside_as == Outside::TestUser)
        {
            make_suid_probe(&ws);
        }
        cage.up();
        let netns = cage.netns_inodes();
        // One container per set of flags, made when an attack first needs it.
        let mut containers: Vec<(String, String)> = Vec::new();
        for (name, a) in &attacks {
            let flags = create_flags(a.flags);
            let id = match containers.iter().find(|(f, _)| *f == flags) {
                Some((_, id)) => id.clone(),
                None => {
                    let c = format!("c{}", containers.len());
                    let r = cage.sh_in(
                        "gw",
                        &format!(
                            "docker create --name {c} --read-only --network none --user 1000:1000 \
                             --cap-drop ALL --security-opt no-new-privileges --workdir /workspace \
                             -v /workspace:/workspace:z {flags} sb sleep infinity >/dev/null && \
                             docker start {c} >/dev/null && docker inspect -f '{{{{.Id}}}}' {c}"
                        ),
                    );
                    assert_eq!(r.code, 0, "{}", r.stderr);
                    containers.push((flags.clone(), r.stdout.trim().to_string()));
                    r.stdout.trim().to_string()
                }
            };
            let t = Targets::new((mode.sandbox_host_uid(), mode.sandbox_host_gid()));
            let _ = std::fs::remove_file(ws.join("link"));
            std::os::unix::fs::symlink(&t.canary, ws.join("link")).unwrap();
            let probe = if a.outside_as == Outside::TestUser {
                "/workspace/suid-probe"
            } else {
                "/workspace/cage-probe"
            };
            let args: Vec<String> = a
                .inside
                .iter()
                .map(|s| format!("\"{}\"", t.expand(&ws, s)))
                .collect();
            pool::park_for(&cage, "gw", &id);
            let r = cage.sh_in(
                "gw",
                &format!(
                    "docker exec {} sh -c '{AGE_SH} >&2; exec \"$0\" \"$@\"' {probe} {}",
                    &id[..12],
                    args.join(" ")
                ),
            );
            pool::assert_parked(&r.stderr, name);
            assert_eq!(
                r.code, 1,
                "{name}: the probe ran and reported a refusal (not a setup error): {} {}",
                r.stdout, r.stderr
            );
            assert!(r.stdout.starts_with("BLOCKED"), "{name}: {}", r.stdout);
            assert_eq!(
                std::fs::read_to_string(&t.canary).unwrap(),
                "original",
                "{name}: host canary unchanged"
            );
            assert_eq!(nix::unistd::gethostname().unwrap(), host_name, "{name}");
        }
        let _ = std::fs::remove_file(ws.join("link"));
        cage.down();
        cage.assert_gone(&netns);
    }
}

/// `cagerun exec SVC` and command health checks become a process the one way the sandbox's
/// (cage.toml interpolates `$$` to `$`. A shell lists its own descriptors with nothing open
/// of its own: no pipe being set up, no descriptor saved for a redirection, no exec of the
/// last command, hence `sh -c 'ls /proc/$$/fd; true'` with the redirection outside it.)
/// command does: the Landlock layer (its signal scope: no signal to the service's own
/// processes outside the layer) and no descriptor beyond 0/1/2 of the caller's.
#[test]
fn exec_into_a_service_and_health_checks_get_landlock_and_only_fds_0_to_2() {
    use std::os::fd::IntoRawFd;
    use support::cage::*;
    let _serial = serial();
    let toml = r#"
[services.svc]
host = true
env = { M = "{MARKER}" }
volumes = ["state:/state"]
command = ["sh", "-c", "echo $$$$ > /state/pid; sh -c 'kill -0 $PPID && echo own-can-signal' > /state/own; sleep 100000"]
healthcheck = { command = ["sh", "-c", "sh -c 'ls /proc/$$$$/fd; true' > /state/hc-fds; kill -0 $(cat /state/pid) 2>/dev/null; echo $? > /state/hc-kill"], interval = "200ms", timeout = "5s", retries = 3 }
"#;
    for mode in modes() {
        let mut cage = Cage::new(mode, "enter", &[("config/cage.toml", toml)]);
        cage.up();
        let netns = cage.netns_inodes();
        let state = cage.root.join(".cagerun/volumes/state");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !(state.join("own").exists() && state.join("hc-kill").exists()) {
            assert!(
                std::time::Instant::now() < deadline,
                "the service or its check never ran"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        // The probe is valid: a process of the service without the layer signals its parent.
        assert_eq!(
            std::fs::read_to_string(state.join("own")).unwrap().trim(),
            "own-can-signal"
        );
        // A host descriptor at fd 5 reaches a plain process (the probe), not the exec.
        let leaked = std::fs::File::open("/").unwrap().into_raw_fd();
        let fd5 = |cmd: &mut Command| {
            // SAFETY: dup2 in the child before exec; fd 5 inherits (no CLOEXEC).
            unsafe {
                cmd.pre_exec(move || {
                    if libc::dup2(leaked, 5) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        };
        let mut plain = Command::new("sh");
        plain.args(["-c", "ls /proc/$$/fd | tr '\\n' ' '"]);
        fd5(&mut plain);
        let out = plain.output().unwrap();
        assert!(String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .any(|f| f == "5"));
        let mut exec = cage.command(&[
            "exec",
            "svc",
            "--",
            "sh",
            "-c",
            "ls /proc/$$/fd; kill -0 $(cat /state/pid) 2>/dev/null; echo \"kill: $?\"",
        ]);
        fd5(&mut exec);
        let out = exec.output().unwrap();
        unsafe { libc::close(leaked) };
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let fds: Vec<&str> = text.lines().filter(|l| !l.starts_with("kill:")).collect();
        assert_eq!(fds, ["0", "1", "2"], "exec SVC: {text}");
        assert!(
            text.contains("kill: 1"),
            "exec SVC signalled the service through the layer: {text}"
        );
        // The health check, run by the supervisor: the same.
        let hc: Vec<String> = std::fs::read_to_string(state.join("hc-fds"))
            .unwrap()
            .split_whitespace()
            .map(String::from)
            .collect();
        assert_eq!(hc, ["0", "1", "2"], "health check descriptors");
        assert_eq!(
            std::fs::read_to_string(state.join("hc-kill"))
                .unwrap()
                .trim(),
            "1"
        );
        let r = cage.cagerun(&["down", "--volumes"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        cage.assert_gone(&netns);
    }
}

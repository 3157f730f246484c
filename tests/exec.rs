//! `cagerun exec`: each property of the sandbox, observed from inside and checked from the
//! host, as root and rootless (see support/mod.rs).

#[path = "support/mod.rs"]
mod support;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::Duration;

use support::*;

fn field<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
        .unwrap_or_else(|| panic!("{key} missing in {text}"))
}

#[test]
fn runs_as_unprivileged_mapped_user_never_host_root() {
    for mode in modes() {
        let ws = workspace(mode);
        let r = sh(
            mode,
            &ws,
            &[],
            "id -u; id -g; cat /proc/self/uid_map; cat /proc/self/gid_map",
        );
        assert_eq!(r.code, 0);
        let lines: Vec<Vec<&str>> = r
            .stdout
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(lines[0], ["1000"]);
        assert_eq!(lines[1], ["1000"]);
        // Rootless: one id mapped, to the caller. As root: every id onto root's subordinate
        // range, straight (the user 1000 is base+1000), never a real host id.
        let (uid_line, gid_line) = match mode {
            Mode::Root => (
                [
                    "0".to_string(),
                    (mode.sandbox_host_uid() - 1000).to_string(),
                    "65536".into(),
                ],
                [
                    "0".to_string(),
                    (mode.sandbox_host_gid() - 1000).to_string(),
                    "65536".into(),
                ],
            ),
            Mode::Rootless { .. } => (
                [
                    "1000".to_string(),
                    mode.sandbox_host_uid().to_string(),
                    "1".into(),
                ],
                [
                    "1000".to_string(),
                    mode.sandbox_host_gid().to_string(),
                    "1".into(),
                ],
            ),
        };
        assert_eq!(lines[2], uid_line);
        assert_eq!(lines[3], gid_line);
        assert_ne!(mode.sandbox_host_uid(), 0);
        // The write lands on the host owned by that id.
        let r = sh(mode, &ws, &[], "echo hi > /workspace/owned");
        assert_eq!(r.code, 0);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(ws.path().join("owned")).unwrap().uid(),
            mode.sandbox_host_uid()
        );
    }
}

#[test]
fn every_capability_set_is_empty_with_no_new_privs_and_seccomp() {
    for mode in modes() {
        let ws = workspace(mode);
        let r = sh(mode, &ws, &[], "cat /proc/self/status");
        assert_eq!(r.code, 0);
        for key in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
            assert_eq!(field(&r.stdout, key), "0000000000000000", "{key}");
        }
        assert_eq!(field(&r.stdout, "NoNewPrivs:"), "1");
        assert_eq!(
            field(&r.stdout, "Seccomp:"),
            "2",
            "a seccomp filter is installed"
        );
    }
}

#[test]
fn hostname_is_sandbox_and_the_hosts_is_untouched() {
    let host = nix::unistd::gethostname().unwrap();
    for mode in modes() {
        let ws = workspace(mode);
        let r = sh(mode, &ws, &[], "cat /proc/sys/kernel/hostname");
        assert_eq!(r.stdout.trim(), "sandbox");
        assert_eq!(nix::unistd::gethostname().unwrap(), host);
    }
}

#[test]
fn network_namespace_has_only_lo_and_it_is_up() {
    for mode in modes() {
        let ws = workspace(mode);
        let r = sh(
            mode,
            &ws,
            &[],
            "ls /sys/class/net; cat /sys/class/net/lo/flags",
        );
        assert_eq!(r.code, 0);
        let lines: Vec<&str> = r.stdout.lines().collect();
        assert_eq!(lines[0], "lo", "only lo: {lines:?}");
        let flags = u32::from_str_radix(lines[1].trim_start_matches("0x"), 16).unwrap();
        assert_eq!(flags & 1, 1, "lo is up");
    }
}

#[test]
fn pid_namespace_with_an_init_that_reaps_orphans() {
    for mode in modes() {
        let ws = workspace(mode);
        // The command is pid 2 (pid 1 is cagerun's init); an orphaned child is reparented to
        // init and reaped: no zombie remains.
        let r = sh(
            mode,
            &ws,
            &[],
            "echo $$; (sleep 0.2 &) ; sleep 0.6; for p in /proc/[0-9]*; do grep -h '^State' $p/status; done | grep -c Z || true; ls -d /proc/[0-9]* | wc -l",
        );
        assert_eq!(r.code, 0);
        let lines: Vec<&str> = r.stdout.lines().collect();
        assert_eq!(lines[0], "2");
        assert_eq!(lines[1], "0", "no zombies");
        assert!(
            lines[2].parse::<u32>().unwrap() <= 4,
            "only the sandbox's processes are visible"
        );
    }
}

#[test]
fn mounts_root_readonly_workspace_rw_tmp_sized_proc_sys_readonly() {
    for mode in modes() {
        let ws = workspace(mode);
        let r = sh(
            mode,
            &ws,
            &["--tmpfs-size", "16m"],
            "cat /proc/self/mountinfo",
        );
        assert_eq!(r.code, 0);
        let opts = |mp: &str| -> String {
            r.stdout
                .lines()
                .rfind(|l| l.split_whitespace().nth(4) == Some(mp))
                .unwrap_or_else(|| panic!("{mp} not mounted:\n{}", r.stdout))
                .to_string()
        };
        let per_mount = |line: &str| line.split_whitespace().nth(5).unwrap().to_string();
        assert!(
            per_mount(&opts("/")).split(',').any(|o| o == "ro"),
            "root read-only"
        );
        // /etc/ssl only where the host has it (a minimal host has no CA bundle).
        let host_binds = ["/usr", "/etc/ssl"]
            .into_iter()
            .filter(|p| std::path::Path::new(p).exists());
        for p in host_binds {
            let o = per_mount(&opts(p));
            for want in ["ro", "nosuid", "nodev"] {
                assert!(o.split(',').any(|x| x == want), "{p} {want}: {o}");
            }
        }
        let w = per_mount(&opts("/workspace"));
        assert!(
            w.split(',').any(|x| x == "rw") && w.contains("nosuid"),
            "/workspace rw nosuid: {w}"
        );
        let tmp = opts("/tmp");
        assert!(
            tmp.contains("tmpfs") && tmp.contains("size=16384k"),
            "/tmp sized tmpfs: {tmp}"
        );
        // /proc is mounted read-only as a whole, /proc/sys with it.
        assert!(per_mount(&opts("/proc")).split(',').any(|x| x == "ro"));
        assert!(per_mount(&opts("/sys")).split(',').any(|x| x == "ro"));
        // Masked as Docker masks them.
        let r = sh(
            mode,
            &ws,
            &[],
            "wc -c < /proc/keys; wc -c < /proc/timer_list; ls /sys/firmware | wc -l",
        );
        assert_eq!(
            r.stdout.split_whitespace().collect::<Vec<_>>(),
            ["0", "0", "0"]
        );
    }
}

#[test]
fn only_the_workspace_is_writable_and_tmp_is_ephemeral() {
    for mode in modes() {
        let ws = workspace(mode);
        let r = sh(
            mode,
            &ws,
            &[],
            "for p in /x /etc/x /usr/x /proc/sys/kernel/x /sys/x /var/x; do (echo x > $p) 2>/dev/null && echo WROTE $p; done; \
             echo data > /workspace/out; echo t > /tmp/t; echo s > /dev/shm/s; echo done",
        );
        assert_eq!(r.code, 0);
        assert!(!r.stdout.contains("WROTE"), "{}", r.stdout);
        assert_eq!(
            std::fs::read_to_string(ws.path().join("out")).unwrap(),
            "data\n"
        );
        let r = sh(mode, &ws, &[], "ls -A /tmp | wc -w; ls -A /dev/shm | wc -w");
        assert_eq!(
            r.stdout.split_whitespace().collect::<Vec<_>>(),
            ["0", "0"],
            "a second sandbox starts with an empty /tmp and /dev/shm"
        );
    }
}

#[test]
fn exit_status_is_passed_through_with_128_plus_signal() {
    for mode in modes() {
        let ws = workspace(mode);
        assert_eq!(sh(mode, &ws, &[], "exit 7").code, 7);
        assert_eq!(sh(mode, &ws, &[], "kill -TERM $$").code, 143);
        assert_eq!(sh(mode, &ws, &[], "true").code, 0);
    }
}

#[test]
fn timeout_kills_the_whole_pid_namespace() {
    for mode in modes() {
        let ws = workspace(mode);
        let marker = unique("991");
        let script = format!("sleep {marker} & sleep {marker}");
        let start = std::time::Instant::now();
        let r = sh(mode, &ws, &["--timeout", "1"], &script);
        assert_eq!(r.code, 124, "timeout exit code");
        assert!(r.stderr.contains("timed out"));
        assert!(start.elapsed() < Duration::from_secs(30));
        assert_no_leftovers(&marker);
    }
}

#[test]
fn the_sandbox_dies_with_its_parent() {
    for mode in modes() {
        let ws = workspace(mode);
        let marker = unique("992");
        let wsp = ws.path().to_str().unwrap().to_string();
        let script = format!("sleep {marker} & sleep {marker}");
        let mut child = cagerun_cmd(
            mode,
            &["exec", "--workspace", &wsp, "--", "/bin/sh", "-c", &script],
        )
        .spawn()
        .unwrap();
        // The probe is valid: the sandbox's processes exist before the kill (waited for:
        // under emulation, in the VM tests, a sandbox may take a while to start).
        let running = || {
            std::fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter(|e| {
                    std::fs::read(e.path().join("cmdline"))
                        .map(|c| String::from_utf8_lossy(&c).contains(&marker))
                        .unwrap_or(false)
                })
                .count()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while running() < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let before = running();
        assert!(before >= 2, "sandbox processes running: {before}");
        // Kill cagerun itself (`unshare` without --fork execs it: same pid in both modes).
        let target = child.id() as i32;
        assert_eq!(comm(target), "cagerun");
        let _guard = leftover_lock();
        unsafe { libc::kill(target, libc::SIGKILL) };
        let _ = child.wait();
        // The sandbox dies with it ...
        wait_until_gone(&marker);
        // ... and a killed cagerun cannot remove its cgroup: the next run sweeps it.
        assert_eq!(sh(mode, &ws, &[], "true").code, 0);
        assert_no_leftovers_locked(&marker);
    }
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn signals_are_forwarded_to_the_command() {
    for mode in modes() {
        let ws = workspace(mode);
        let wsp = ws.path().to_str().unwrap().to_string();
        let mut child = cagerun_cmd(
            mode,
            &[
                "exec",
                "--workspace",
                &wsp,
                "--",
                "/bin/sh",
                "-c",
                "trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 0.05; done",
            ],
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
        // Signal only once the trap is set (a fixed sleep raced slow machines: VMs under TCG).
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
        assert_eq!(first.trim(), "ready");
        let target = child.id() as i32;
        assert_eq!(comm(target), "cagerun", "the signal goes to cagerun itself");
        unsafe { libc::kill(target, libc::SIGTERM) };
        let status = child.wait().unwrap();
        let mut out = String::new();
        stdout.read_to_string(&mut out).unwrap();
        assert!(out.contains("got-term"), "{out}");
        assert_eq!(status.code(), Some(3));
    }
}

#[test]
fn no_descriptor_beyond_stdio_is_inherited() {
    for mode in modes() {
        let ws = workspace(mode);
        let wsp = ws.path().to_str().unwrap().to_string();
        // A descriptor open in the caller without CLOEXEC, at 7.
        let leak = std::fs::File::open("/").unwrap();
        use std::os::fd::AsRawFd;
        let raw = leak.as_raw_fd();
        let mut cmd = cagerun_cmd(
            mode,
            &[
                "exec",
                "--workspace",
                &wsp,
                "--",
                "/workspace/cage-probe",
                "list-fds",
            ],
        );
        unsafe {
            cmd.pre_exec(move || {
                // dup2 onto itself keeps FD_CLOEXEC: clear it explicitly.
                if libc::dup2(raw, 7) < 0 || libc::fcntl(7, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        // The probe is valid: run directly the same way, it sees the descriptor at 7.
        let mut outside = std::process::Command::new(&bins().probe);
        outside.arg("list-fds");
        unsafe {
            outside.pre_exec(move || {
                if libc::dup2(raw, 7) < 0 || libc::fcntl(7, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let seen = String::from_utf8_lossy(&outside.output().unwrap().stdout).into_owned();
        assert!(
            seen.split_whitespace().any(|f| f == "7"),
            "outside, fd 7 is inherited: {seen}"
        );
        let out = cmd.output().unwrap();
        let fds: Vec<u32> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(|s| s.parse().unwrap())
            .collect();
        // 0, 1, 2, and the one read_dir opened to list them.
        assert_eq!(fds.iter().filter(|fd| **fd >= 3).count(), 1, "{fds:?}");
    }
}

#[test]
fn tty_flag_gives_a_private_pseudo_terminal() {
    for mode in modes() {
        let ws = workspace(mode);
        let r = sh(mode, &ws, &["-t"], "tty; test -t 0 && echo is-a-tty");
        assert_eq!(r.code, 0);
        assert!(r.stdout.contains("/dev/console"), "{}", r.stdout);
        assert!(r.stdout.contains("is-a-tty"));
        let r = sh(mode, &ws, &[], "test -t 0 || echo no-tty");
        assert!(r.stdout.contains("no-tty"));
    }
}

#[test]
fn pids_and_memory_limits_hold_through_the_reported_mechanism() {
    for mode in modes() {
        let ws = workspace(mode);
        let r = sh(
            mode,
            &ws,
            &["--pids", "32", "-v"],
            "/workspace/cage-probe fork-bomb 100",
        );
        assert_eq!(r.code, 1, "fork bomb stopped: {}", r.stdout);
        assert!(r.stdout.starts_with("BLOCKED"));
        let r = sh(
            mode,
            &ws,
            &["--memory", "64m", "-v"],
            "/workspace/cage-probe alloc 256",
        );
        assert_ne!(r.code, 0, "256 MiB must not fit in 64m: {}", r.stdout);
        assert!(!r.stdout.starts_with("WORKS"));
        // .ci/run delegates a cgroup subtree to the test user, so both modes use cgroups
        // there; the VM variant without delegation (tests/vm/run v1) expects the rlimit path
        // and says so with CAGERUN_TEST_EXPECT_LIMITS=rlimits.
        let expected = std::env::var("CAGERUN_TEST_EXPECT_LIMITS").unwrap_or("cgroup".into());
        assert!(
            r.stderr.contains(&format!("limits: {expected}")),
            "expected {expected} limits (for cgroups run `cagerun setup-cgroups --user` as root): {}",
            r.stderr
        );
        // And the probe is valid: with room it allocates.
        let r = sh(
            mode,
            &ws,
            &["--memory", "512m"],
            "/workspace/cage-probe alloc 128",
        );
        assert_eq!(r.code, 0, "{}", r.stdout);
        assert_no_leftovers("cage-probe alloc");
    }
}

/// The cgroup a process's limits come from, as the host sees it: the pids hierarchy on v1,
/// the one hierarchy on v2.
fn limits_cgroup(pid: i32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let line = text
        .lines()
        .find(|l| l.contains(":pids:"))
        .or_else(|| text.lines().find(|l| l.starts_with("0::")))
        .unwrap_or("");
    line.splitn(3, ':').nth(2).unwrap_or("").to_string()
}

/// Only the command, and what it starts, is in the sandbox's limits cgroup: pid 1 lives in
/// the delegated tree's `pid1` group. So once the command's processes are gone cagerun
/// removes the leaf and returns without waiting out pid 1's namespace teardown; a sandbox
/// that leaves a process behind still waits for pid 1, which ends that process first.
/// Inside, neither cgroup names anything of the host's tree.
#[test]
fn the_command_alone_is_limited_and_cagerun_returns_once_its_processes_are_gone() {
    if std::env::var("CAGERUN_TEST_EXPECT_LIMITS").is_ok_and(|l| l != "cgroup") {
        return; // no delegated cgroup here (tests/vm/run v1): rlimits are checked above
    }
    for mode in modes() {
        let ws = workspace(mode);
        let wsp = ws.path().to_str().unwrap().to_string();
        let marker = unique("cgleaf");
        let script = format!(
            "for p in self 1; do grep :pids: /proc/$p/cgroup || grep ^0:: /proc/$p/cgroup; done; \
             echo ready; while [ ! -e /workspace/go ]; do sleep 0.02; done # {marker}"
        );
        let mut child = cagerun_cmd(
            mode,
            // A timeout: a failed assertion below leaves no sandbox waiting for `go`.
            &[
                "exec",
                "--workspace",
                &wsp,
                "--pids",
                "64",
                "--timeout",
                "60",
                "-v",
                "--",
                "/bin/sh",
                "-c",
                &script,
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut inside = String::new();
        for _ in 0..3 {
            std::io::BufRead::read_line(&mut stdout, &mut inside).unwrap();
        }
        assert!(inside.ends_with("ready\n"), "{inside}");
        // From the host: the command is in the leaf of this cagerun (sbx-PID), with the
        // limit; pid 1 (the command's parent) is in `pid1` beside it.
        let cagerun = child.id() as i32;
        let procs = processes_naming(&marker);
        let command = procs
            .iter()
            .map(|(pid, _)| *pid)
            .find(|pid| comm(*pid) == "sh")
            .unwrap_or_else(|| panic!("the command among {procs:?}"));
        let leaf = limits_cgroup(command);
        assert!(
            leaf.ends_with(&format!("/sbx-{cagerun}")),
            "command in {leaf}"
        );
        let status = std::fs::read_to_string(format!("/proc/{command}/status")).unwrap();
        let pid1: i32 = field(&status, "PPid:").parse().unwrap();
        let pid1_cgroup = limits_cgroup(pid1);
        assert!(pid1_cgroup.ends_with("/pid1"), "pid 1 in {pid1_cgroup}");
        assert_eq!(
            std::path::Path::new(&pid1_cgroup).parent(),
            std::path::Path::new(&leaf).parent(),
            "pid 1's group is beside the leaf"
        );
        let base = if std::path::Path::new("/sys/fs/cgroup/pids").is_dir() {
            "/sys/fs/cgroup/pids"
        } else {
            "/sys/fs/cgroup"
        };
        let max = std::fs::read_to_string(format!("{base}{leaf}/pids.max")).unwrap();
        assert_eq!(max.trim(), "64");
        // Inside: the command's cgroup is the root of its view, and pid 1's is named by
        // its place beside it; the probe reads pid 1's real cgroup (it names `pid1`).
        let lines: Vec<&str> = inside.lines().collect();
        assert!(lines[0].ends_with(":/"), "own cgroup inside: {inside}");
        assert!(
            lines[1].ends_with(":/../pid1"),
            "pid 1's cgroup inside: {inside}"
        );
        std::fs::write(ws.path().join("go"), "").unwrap();
        let status = child.wait().unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert_eq!(status.code(), Some(0), "{err}");
        // Nothing was left beside pid 1: the leaf went at once, pid 1 was not waited for.
        let timing = err
            .lines()
            .find(|l| l.contains("timing (ms)"))
            .unwrap_or("");
        assert!(
            timing.contains("leaf removed") && !timing.contains("pid 1 reaped"),
            "{err}"
        );
        // On v2 it is born there (no move, which would wait out an RCU grace period); v1
        // has no such clone flag, so there it moves itself.
        let how = if std::path::Path::new("/sys/fs/cgroup/pids").is_dir() {
            "moved itself into its leaf"
        } else {
            "was born in its leaf (CLONE_INTO_CGROUP)"
        };
        assert!(err.contains(&format!("cgroup: the command {how}")), "{err}");
        assert_no_leftovers(&marker);

        // A process left behind: cagerun waits for pid 1, which kills it, so when cagerun
        // returns nothing of the sandbox runs. (The name is put together inside so that
        // only the orphan's command line carries it.)
        let n = unique("");
        let orphan = format!("orphan{n}");
        let r = sh(
            mode,
            &ws,
            &["-v"],
            &format!("cp /bin/sleep /tmp/orp${{x}}han{n}; /tmp/orp${{x}}han{n} 30 & sleep 0.2; kill -0 $! && echo left"),
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(r.stdout.trim(), "left");
        assert!(r.stderr.contains("pid 1 reaped"), "{}", r.stderr);
        assert!(
            leftover_processes(&orphan).is_empty(),
            "running after cagerun returned: {:?}",
            leftover_processes(&orphan)
        );
        assert_no_leftovers(&orphan);
    }
}

#[test]
fn environment_is_explicit_and_the_hosts_never_leaks() {
    for mode in modes() {
        let ws = workspace(mode);
        let envf = ws.path().join("env.list");
        std::fs::write(&envf, "# c\nFROM_FILE=1\nOVER=file\n").unwrap();
        let wsp = ws.path().to_str().unwrap().to_string();
        let ef = envf.to_str().unwrap().to_string();
        let out = cagerun_cmd(
            mode,
            &[
                "exec",
                "--workspace",
                &wsp,
                "--env-file",
                &ef,
                "-e",
                "OVER=flag",
                "-w",
                "/tmp",
                "--",
                "/bin/sh",
                "-c",
                "env; pwd",
            ],
        )
        .env("CAGERUN_TEST_SECRET", "leak")
        .output()
        .unwrap();
        let s = String::from_utf8_lossy(&out.stdout);
        assert!(
            s.contains("FROM_FILE=1") && s.contains("OVER=flag") && !s.contains("OVER=file"),
            "{s}"
        );
        assert!(
            !s.contains("CAGERUN_TEST_SECRET"),
            "host environment leaked: {s}"
        );
        assert!(s.lines().any(|l| l == "/tmp"));
    }
}

#[test]
fn bad_input_is_one_line_and_exit_125() {
    let ws_mode = modes()[0];
    let ws = workspace(ws_mode);
    let file = ws.path().join("cage-probe");
    let wsp = ws.path().to_str().unwrap().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["exec", "--"], "no command"),
        (
            vec!["exec", "--workspace", "/nonexistent-cagerun", "--", "true"],
            "does not exist",
        ),
        (
            vec!["exec", "--workspace", file.to_str().unwrap(), "--", "true"],
            "not a directory",
        ),
        (
            vec!["exec", "--user", "ghost", "--", "true"],
            "unknown user",
        ),
        (
            vec!["exec", "--memory", "lots", "--", "true"],
            "invalid size",
        ),
        (vec!["exec", "--net", "host", "--", "true"], "only `none`"),
        (
            vec!["exec", "--rootfs", "/nonexistent-cagerun", "--", "true"],
            "rootfs",
        ),
        (
            vec!["exec", "--workspace", &wsp, "--", "no-such-command-cagerun"],
            "command not found in the sandbox",
        ),
        (
            vec!["exec", "-w", "/nonexistent", "--", "true"],
            "working directory",
        ),
    ];
    for mode in modes() {
        for (args, want) in &cases {
            let r = run(mode, args);
            assert_eq!(r.code, 125, "{args:?}");
            assert_eq!(r.stderr.trim().lines().count(), 1, "one line: {}", r.stderr);
            assert!(r.stderr.contains(want), "{args:?}: {}", r.stderr);
        }
    }
}

#[test]
fn a_directory_rootfs_is_bound_read_only() {
    for mode in modes() {
        // A tiny root: dash and the libraries it needs, copied from the host.
        let root = TempDir::new("rootfs", None);
        for f in [
            "/usr/bin/dash",
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/ld-linux-x86-64.so.2",
        ] {
            let dst = root.path().join(f.trim_start_matches('/'));
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            std::fs::copy(f, &dst).unwrap();
        }
        let r = run(mode, &["exec", "--rootfs", root.path().to_str().unwrap(), "--", "/usr/bin/dash", "-c", "echo inside; (echo x > /usr/bin/x) 2>/dev/null || echo ro; test -e /etc/passwd || echo own-root"]);
        assert_eq!(r.code, 0);
        assert_eq!(
            r.stdout.lines().collect::<Vec<_>>(),
            ["inside", "ro", "own-root"]
        );
        assert!(!root.path().join("usr/bin/x").exists());
    }
}

#[test]
fn a_bundle_runs_through_the_same_engine_and_unknown_fields_are_refused() {
    for mode in modes() {
        let ws = workspace(mode);
        let wsp = ws.path().to_str().unwrap().to_string();
        let r = run(
            mode,
            &[
                "spec",
                "--workspace",
                &wsp,
                "--",
                "/bin/sh",
                "-c",
                "id -u; cat /proc/sys/kernel/hostname; grep Seccomp: /proc/self/status",
            ],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        let bundle = TempDir::new("bundle", None);
        std::fs::write(bundle.path().join("config.json"), &r.stdout).unwrap();
        let b = bundle.path().to_str().unwrap().to_string();
        let from_bundle = run(mode, &["exec", "--bundle", &b]);
        let from_flags = sh(
            mode,
            &ws,
            &[],
            "id -u; cat /proc/sys/kernel/hostname; grep Seccomp: /proc/self/status",
        );
        assert_eq!(from_bundle.code, 0);
        assert_eq!(
            from_bundle.stdout, from_flags.stdout,
            "both paths observe the same facts"
        );

        let mut spec: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        spec["linux"]["sysctl"] = serde_json::json!({"net.ipv4.ip_forward": "1"});
        std::fs::write(bundle.path().join("config.json"), spec.to_string()).unwrap();
        let refused = run(mode, &["exec", "--bundle", &b]);
        assert_eq!(refused.code, 125);
        assert!(
            refused.stderr.contains("linux.sysctl"),
            "{}",
            refused.stderr
        );
    }
}

#[test]
fn a_hundred_concurrent_sandboxes_all_succeed() {
    for mode in modes() {
        let ws = workspace(mode);
        let wsp = ws.path().to_str().unwrap().to_string();
        let children: Vec<_> = (0..100)
            .map(|i| {
                cagerun_cmd(
                    mode,
                    &[
                        "exec",
                        "--workspace",
                        &wsp,
                        "--",
                        "/bin/sh",
                        "-c",
                        &format!("echo {i} > /workspace/c{i}"),
                    ],
                )
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
            })
            .collect();
        let failures: Vec<String> = children
            .into_iter()
            .filter_map(|c| {
                let out = c.wait_with_output().unwrap();
                (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned())
            })
            .collect();
        assert!(
            failures.is_empty(),
            "{} failures: {:?}",
            failures.len(),
            failures.first()
        );
        assert_eq!(
            (0..100)
                .filter(|i| ws.path().join(format!("c{i}")).exists())
                .count(),
            100
        );
        assert_no_leftovers(&wsp);
    }
}

#[test]
fn doctor_checks_the_mechanisms_sandboxes_need() {
    for mode in modes() {
        let r = run(mode, &["doctor"]);
        assert_eq!(r.code, 0, "{}", r.stdout);
        for line in [
            "ok    user namespaces",
            "ok    seccomp",
            "ok    landlock",
            "ok    egress",
        ] {
            assert!(r.stdout.contains(line), "{line}: {}", r.stdout);
        }
    }
}

#[test]
fn stdin_is_attached_only_with_dash_i() {
    use std::io::Write;
    for mode in modes() {
        let ws = workspace(mode);
        let wsp = ws.path().to_str().unwrap().to_string();
        for (flag, want) in [(Some("-i"), "from-host\n"), (None, "")] {
            let mut args = vec!["exec", "--workspace", wsp.as_str()];
            args.extend(flag);
            args.extend(["--", "/bin/cat"]);
            let mut child = cagerun_cmd(mode, &args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(b"from-host\n")
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), want, "{flag:?}");
        }
    }
}

/// On cgroup v1 (this project's CI hosts have the hybrid layout) every sandbox is moved into
/// its cgroup by a write to `cgroup.procs`, which waits out an RCU grace period unless the
/// kernel's global `favordynmods` is on: `setup-cgroups` turns it on through the cgroup2
/// mount and keeps that mount's other options. (How long a move takes is measured by
/// scripts/bench, never asserted here.)
#[test]
fn setup_cgroups_makes_cgroup_moves_cheap_on_v1_and_keeps_the_mounts_options() {
    let mountinfo = || std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let cgroup2 = |info: &str| {
        info.lines().find(|l| l.contains(" - cgroup2 ")).map(|l| {
            let super_opts = l.rsplit(' ').next().unwrap().to_string();
            let mount_opts = l.split(' ').nth(5).unwrap().to_string();
            (super_opts, mount_opts)
        })
    };
    if !std::path::Path::new("/sys/fs/cgroup/memory").is_dir() {
        // Pure v2: sandboxes are born in their cgroup (CLONE_INTO_CGROUP); nothing to set.
        return;
    }
    let (before_super, before_mount) = cgroup2(&mountinfo())
        .expect("the hybrid layout has a cgroup2 mount (/sys/fs/cgroup/unified)");
    let user = std::env::var("CAGERUN_TEST_USER").unwrap_or("cagetest".into());
    if !is_root() {
        // A user (tests/vm/run v1's suite runs as one): the command is root's, and it says
        // so and changes nothing. scripts/test runs this test as root on the host.
        let out = std::process::Command::new(&bins().cagerun)
            .args(["setup-cgroups", "--user", &user])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "setup-cgroups ran as a user");
        assert!(
            stderr.contains("needs root") && stderr.contains("sudo"),
            "{stderr}"
        );
        assert_eq!(
            cgroup2(&mountinfo()).unwrap(),
            (before_super, before_mount),
            "a refused setup-cgroups changed the cgroup2 mount"
        );
        return;
    }
    let out = std::process::Command::new(&bins().cagerun)
        .args(["setup-cgroups", "--user", &user])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("cheap cgroup moves: favordynmods on "),
        "{stdout}"
    );
    let (after_super, after_mount) = cgroup2(&mountinfo()).unwrap();
    assert!(
        after_super.split(',').any(|o| o == "favordynmods"),
        "{after_super}"
    );
    for opt in before_super.split(',').filter(|o| *o != "favordynmods") {
        assert!(
            after_super.split(',').any(|o| o == opt),
            "{opt} kept: {after_super}"
        );
    }
    assert_eq!(
        after_mount, before_mount,
        "the mount's own flags are untouched"
    );
}

/// The installed layout (scripts/install) in a temp dir: bin/cagerun is the front,
/// libexec/cagerun/cagerun the full binary (left out with `full: false`).
fn installed_layout(full: bool) -> (TempDir, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("layout", None);
    let place = |src: &std::path::Path, rel: &str| {
        let dst = dir.path().join(rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        for d in dst
            .ancestors()
            .skip(1)
            .take_while(|d| d.starts_with(dir.path()))
        {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::copy(src, &dst).unwrap();
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).unwrap();
        dst
    };
    let front = place(
        std::path::Path::new(env!("CARGO_BIN_EXE_cagerun-front")),
        "bin/cagerun",
    );
    if full {
        place(&bins().cagerun, "libexec/cagerun/cagerun");
    }
    (dir, front)
}

#[test]
fn the_front_runs_a_sandbox_and_the_shim_itself_and_hands_every_other_verb_to_the_full_binary() {
    let marker = unique("front");
    for mode in modes() {
        // Alone, the front still runs sandboxes (so it did not hand them over), with the
        // command's exit code and output; any other verb names what is missing and the fix.
        let (alone, front) = installed_layout(false);
        let script = format!("echo {marker} $(id -u); exit 3");
        let r = run_cmd(
            mode,
            cagerun_cmd_of(&front, mode, &["exec", "--", "/bin/sh", "-c", &script]),
            &["exec"],
        );
        assert_eq!(r.code, 3, "{}", r.stderr);
        assert_eq!(r.stdout.trim(), format!("{marker} 1000"));
        for verb in [&["--version"][..], &["ps"], &["exec", "gw", "--", "id"]] {
            let r = run_cmd(mode, cagerun_cmd_of(&front, mode, verb), verb);
            assert_eq!(r.code, 125, "{verb:?}: {}", r.stderr);
            assert!(
                r.stderr.contains("libexec/cagerun/cagerun")
                    && r.stderr.contains("scripts/install"),
                "{verb:?}: {}",
                r.stderr
            );
        }
        // It is the services' `docker` shim too, on its own (the supervisor binds it).
        let docker = alone.path().join("bin/docker");
        std::os::unix::fs::symlink("cagerun", &docker).unwrap();
        let mut cmd = cagerun_cmd_of(&docker, mode, &["ps"]);
        cmd.env("CAGERUN_BROKER_SOCKET", alone.path().join("no.sock"));
        let r = run_cmd(mode, cmd, &["docker", "ps"]);
        assert_eq!(r.code, 1, "{}", r.stderr);
        assert!(
            r.stderr.contains("Cannot connect to the Docker daemon"),
            "{}",
            r.stderr
        );
        drop(alone);

        // Beside the full binary, what the front does not take is answered by the full one,
        // word for word: its version, a service's `exec` (no cage here), a bad flag, help,
        // and a run with CAGERUN_LOG (the front links no EnvFilter).
        let (_layout, front) = installed_layout(true);
        for args in [
            &["--version"][..],
            &["exec", "gw", "--", "id"],
            &["exec", "--bogus", "--", "true"],
            &["exec", "--help"],
        ] {
            let by_front = run_cmd(mode, cagerun_cmd_of(&front, mode, args), args);
            let by_full = run(mode, args);
            assert_eq!(
                (
                    by_front.code,
                    by_front.stdout.replace("cagerun-front", "cagerun")
                ),
                (by_full.code, by_full.stdout.clone()),
                "{args:?}"
            );
            assert_eq!(
                by_front.stderr.lines().count(),
                by_full.stderr.lines().count(),
                "{args:?}: {} vs {}",
                by_front.stderr,
                by_full.stderr
            );
        }
        let mut cmd = cagerun_cmd_of(&front, mode, &["exec", "--", "/bin/true"]);
        cmd.env("CAGERUN_LOG", "info");
        let r = run_cmd(mode, cmd, &["exec"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(r.stderr.contains("timing (ms)"), "{}", r.stderr);
    }
    assert_no_leftovers(&marker);
}

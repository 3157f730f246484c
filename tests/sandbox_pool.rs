//! The broker's warm pool, as root and rootless: a tool call is handed to a sandbox parked
//! before its command, and nothing tells it from a sandbox made for the call.
//!
//! Each case drives the docker calls OpenClaw makes through the shim in a gateway service.
//! "Parked" is seen from the host (support::pool: `cagerun exec --bundle ...` engines with
//! CAGERUN_PARK_FD whose pid 1 has started the command's process, waiting on the park socket)
//! and from inside (the age of pid 1 when the command starts: long for a parked sandbox,
//! milliseconds for a fresh one, which a twin service with `pool = 0` shows each time).

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::cage::*;
use support::pool::{self, AGE_SH};
use support::*;

const IMAGE: &str = "openclaw-sandbox:bookworm-slim";

/// A cage of gateway services (`host`, the same workspace), each with sandboxes and the
/// given lines in its `[services.NAME.sandboxes]` (e.g. its pool).
fn pool_cage(mode: Mode, tag: &str, services: &[(&str, &str)]) -> Cage {
    let mut toml = String::new();
    for (name, lines) in services {
        toml.push_str(&format!(
            "[services.{name}]\nhost = true\ncommand = [\"sleep\", \"100000\"]\n\
             env = {{ CAGE_MARKER = \"{{MARKER}}\" }}\n\
             mounts = [{{ src = \"workspace\", dst = \"/workspace\", ro = false }}]\n\n\
             [services.{name}.sandboxes]\nimages = {{ \"{IMAGE}\" = \"host\" }}\n{lines}\n\n"
        ));
    }
    let cage = Cage::new(
        mode,
        tag,
        &[("config/cage.toml", toml.as_str()), ("workspace/.keep", "")],
    );
    // The sandbox user writes the workspace, as in a real cage.
    std::os::unix::fs::chown(
        cage.root.join("workspace"),
        Some(mode.sandbox_host_uid()),
        Some(mode.sandbox_host_gid()),
    )
    .unwrap();
    cage
}

/// A file in the cage's workspace (the sandboxes see it at /workspace/NAME).
fn put(cage: &Cage, name: &str, text: &str) {
    let p = cage.root.join("workspace").join(name);
    std::fs::write(&p, text).unwrap();
    chown_tree(
        &p,
        (cage.mode.sandbox_host_uid(), cage.mode.sandbox_host_gid()),
    );
}

/// OpenClaw's create (buildSandboxCreateArgs) of container `name` with `extra` flags, and
/// its start, in `service`: returns the container's id.
fn start(cage: &Cage, service: &str, name: &str, extra: &str) -> String {
    let r = cage.sh_in(
        service,
        &format!(
            "set -e\nprintf 'LANG=C.UTF-8\\nSBX_VAR=from-create\\n' > /tmp/sbx.env\n\
             docker create --name {name} --init --label openclaw.sandbox=1 \
             --read-only --tmpfs /tmp --tmpfs /var/tmp --tmpfs /run --network none \
             --user 1000:1000 --cap-drop ALL --security-opt no-new-privileges --pids-limit 256 \
             --memory 1g --workdir /workspace -v /workspace:/workspace:z \
             --env-file /tmp/sbx.env {extra} {IMAGE} sleep infinity >/dev/null\n\
             docker start {name} >/dev/null\n\
             docker inspect -f '{{{{.Id}}}}' {name}"
        ),
    );
    assert_eq!(r.code, 0, "create {name} in {service}: {}", r.stderr);
    let id = r.stdout.trim().to_string();
    assert_eq!(id.len(), 64, "{}", r.stdout);
    id
}

/// `docker exec ARGS` in the gateway `service`, as its shell would run it.
fn docker_exec(cage: &Cage, service: &str, args: &str) -> Run {
    cage.sh_in(service, &format!("docker exec {args}"))
}

/// Lines of `a` missing from `b` and of `b` missing from `a`, for a readable failure.
fn diff(a: &str, b: &str) -> String {
    let (la, lb): (BTreeSet<&str>, BTreeSet<&str>) = (a.lines().collect(), b.lines().collect());
    let only = |x: &BTreeSet<&str>, y: &BTreeSet<&str>| {
        x.difference(y).cloned().collect::<Vec<_>>().join("\n    ")
    };
    format!(
        "only pooled:\n    {}\nonly fresh:\n    {}",
        only(&la, &lb),
        only(&lb, &la)
    )
}

#[test]
fn a_call_is_handed_to_a_parked_sandbox_which_serves_it_once() {
    let _serial = serial();
    for mode in modes() {
        let mut cage = pool_cage(mode, "pool1", &[("gw", ""), ("gw0", "pool = 0")]);
        cage.up();
        let netns = cage.netns_inodes();
        let id = start(&cage, "gw", "c1", "");
        start(&cage, "gw0", "c0", "");
        let first = pool::park_for(&cage, "gw", &id);
        assert!(first.pooled && first.init.is_some(), "{first:?}");
        assert_eq!(
            pool::parked(&cage, "gw", None).len(),
            1,
            "pool = 1 (the default) per started container"
        );
        // The probe is valid: with pool = 0 a call's pid 1 is as young as its command, and
        // that broker never parks anything.
        assert!(pool::sandboxes(&cage, "gw0").is_empty());
        let fresh = docker_exec(&cage, "gw0", &format!("c0 sh -c '{AGE_SH}'"));
        assert_eq!(fresh.code, 0, "{}", fresh.stderr);
        pool::assert_fresh(&fresh.stdout, "pool = 0");
        // With the pool, after `start` and a pause, the call finds its sandbox long made.
        let r = docker_exec(&cage, "gw", &format!("c1 sh -c '{AGE_SH}; hostname'"));
        assert_eq!(r.code, 0, "{}", r.stderr);
        pool::assert_parked(&r.stdout, "the first call");
        assert!(r.stdout.contains(&id[..12]), "{}", r.stdout);
        // It served one call and ended; the pool made another, which serves the next.
        pool::wait_ended(std::slice::from_ref(&first), "the used parked sandbox");
        // The pool's reaper removes the bundle after it reaps the engine: a moment later.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while first.bundle.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(!first.bundle.exists(), "its bundle is removed");
        let second = pool::park_for(&cage, "gw", &id);
        assert_ne!(second.engine, first.engine);
        let r = docker_exec(&cage, "gw", &format!("c1 sh -c '{AGE_SH}'"));
        pool::assert_parked(&r.stdout, "the second call");
        pool::wait_ended(std::slice::from_ref(&second), "the second parked sandbox");
        // The twin's container never had one.
        let r = docker_exec(&cage, "gw0", &format!("c0 sh -c '{AGE_SH}'"));
        pool::assert_fresh(&r.stdout, "pool = 0, again");
        assert!(pool::sandboxes(&cage, "gw0").is_empty());
        cage.down();
        cage.assert_gone(&netns);
    }
}

/// What a tool command can see of its sandbox, one `== SECTION` each; run as
/// `sh /workspace/identity.sh`. Times are left out of listings (a parked sandbox's tmpfs is
/// older), and mounts are shown without their ids: mount point, options, type, fs options.
const IDENTITY_SH: &str = r#"
echo "== id"; id; id -G; id -Gn
echo "== hostname"; hostname; cat /proc/sys/kernel/hostname
echo "== status"
grep -E '^(Umask|Uid|Gid|Groups|Cap[A-Za-z]+|NoNewPrivs|Seccomp|Seccomp_filters|SigBlk|SigIgn|Cpus_allowed_list|Mems_allowed_list|Speculation_Store_Bypass|SpeculationIndirectBranch):' /proc/self/status
echo "== mounts"
while read -r id parent dev root point opts rest; do
  set -- $rest; while [ "$1" != "-" ]; do shift; done; shift
  echo "$point $opts $1 $3"
done < /proc/self/mountinfo
echo "== ulimit"; ulimit -a
echo "== cgroup"; cat /proc/self/cgroup
echo "== umask"; umask
echo "== cwd"; pwd
echo "== env"; env | sort
echo "== ls /"; ls -la --time-style=+ /
echo "== ls /tmp"; ls -la --time-style=+ /tmp
echo "== ls /dev"; ls -la --time-style=+ /dev
echo "== fds"; ls -l --time-style=+ /proc/self/fd
echo "== stdin"; stat -L -c '%F %t:%T' /proc/self/fd/0; readlink /proc/self/fd/0
echo "== oom"; cat /proc/self/oom_score_adj
echo "== net"; cut -d: -f1 /proc/net/dev
echo "== pids"; ls -d /proc/[0-9]*
echo "== sysctl"; cat /proc/sys/kernel/ngroups_max /proc/sys/user/max_user_namespaces
echo "== end"
"#;

/// `out` with what must differ between two sandboxes made apart replaced: the container's
/// name (the id's first 12), kernel object numbers (`pipe:[N]`), the link count of /proc
/// (the host's number of processes), and column alignment (`ls` pads every line of a
/// listing to the widest link count, so /proc's count crossing 100 on a busy host moved
/// them all: CI saw it).
fn normalise(out: &str, ids: &[&str]) -> String {
    let mut s: String = out
        .lines()
        .filter(|l| !l.starts_with("pid1-age:"))
        .map(|l| {
            l.split(' ')
                .filter(|w| !w.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .map(|l| match l.strip_prefix("dr-xr-xr-x ") {
            Some(rest) if l.ends_with(" proc") => {
                format!("dr-xr-xr-x N{}", &rest[rest.find(' ').unwrap_or(0)..])
            }
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    for id in ids {
        s = s.replace(&id[..12], "<container>");
    }
    // pipe:[12345] -> pipe:[N]
    let mut norm = String::new();
    let mut rest = s.as_str();
    while let Some(at) = rest.find(":[") {
        norm.push_str(&rest[..at + 2]);
        rest = &rest[at + 2..];
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits > 0 && rest[digits..].starts_with(']') {
            norm.push('N');
            rest = &rest[digits..];
        }
    }
    norm.push_str(rest);
    norm
}

#[test]
fn a_parked_sandbox_looks_like_a_fresh_one_from_inside() {
    let _serial = serial();
    // Every difference, so that one run shows them all.
    let mut differences = Vec::new();
    for mode in modes() {
        // The twin: the same service and create, with pool = 0.
        let mut cage = pool_cage(mode, "pool2", &[("gw", ""), ("gw0", "pool = 0")]);
        cage.up();
        let netns = cage.netns_inodes();
        put(&cage, "identity.sh", &format!("{AGE_SH}\n{IDENTITY_SH}"));
        let id = start(&cage, "gw", "c1", "");
        let id0 = start(&cage, "gw0", "c1", "");
        for (how, args) in [
            ("without -i", "c1 sh /workspace/identity.sh"),
            ("with -i", "-i c1 sh /workspace/identity.sh"),
        ] {
            pool::park_for(&cage, "gw", &id);
            let pipe = if how == "with -i" { "echo in |" } else { "" };
            let pooled = cage.sh_in("gw", &format!("{pipe} docker exec {args}"));
            let fresh = cage.sh_in("gw0", &format!("{pipe} docker exec {args}"));
            assert_eq!(
                (pooled.code, fresh.code),
                (0, 0),
                "{how}: {}\n{}",
                pooled.stderr,
                fresh.stderr
            );
            pool::assert_parked(&pooled.stdout, how);
            pool::assert_fresh(&fresh.stdout, how);
            let (p, f) = (
                normalise(&pooled.stdout, &[&id, &id0]),
                normalise(&fresh.stdout, &[&id, &id0]),
            );
            // The probe is valid: it saw the sandbox (its name, its user, no capabilities,
            // the workspace mount, its stdin).
            let section = |out: &str, name: &str| -> Vec<String> {
                out.split(&format!("== {name}\n"))
                    .nth(1)
                    .unwrap_or_else(|| panic!("no {name} in {out}"))
                    .lines()
                    .take_while(|l| !l.starts_with("== "))
                    .map(String::from)
                    .collect()
            };
            for out in [&p, &f] {
                assert_eq!(section(out, "hostname"), ["<container>", "<container>"]);
                assert!(section(out, "id")[0].starts_with("uid=1000("), "{out}");
                let status = section(out, "status");
                assert!(
                    status.contains(&"CapEff:\t0000000000000000".into()),
                    "{out}"
                );
                assert!(status.contains(&"NoNewPrivs:\t1".into()), "{out}");
                assert!(status.contains(&"Seccomp:\t2".into()), "{out}");
                let mounts = section(out, "mounts");
                assert!(mounts.iter().any(|l| l.starts_with("/workspace ")), "{out}");
                let stdin = section(out, "stdin");
                match how {
                    // /dev/null: character device 1:3.
                    "without -i" => assert_eq!(stdin[0], "character special file 1:3"),
                    _ => assert_eq!(stdin[0], "fifo 0:0"),
                }
            }
            if p != f {
                differences.push(format!("[{mode:?}] {how}:\n{}", diff(&p, &f)));
            }
        }
        // A command that does not exist: the same code and the same words.
        pool::park_for(&cage, "gw", &id);
        let pooled = docker_exec(&cage, "gw", "c1 nosuchcmd");
        pool::wait_parked(&cage, "gw", Some(&id[..12]), 1);
        let fresh = docker_exec(&cage, "gw0", "c1 nosuchcmd");
        assert_ne!(fresh.code, 0, "the probe is valid: it fails fresh");
        let (p, f) = (
            (pooled.code, normalise(&pooled.stderr, &[&id, &id0])),
            (fresh.code, normalise(&fresh.stderr, &[&id, &id0])),
        );
        if p != f {
            differences.push(format!(
                "[{mode:?}] a missing command: pooled {p:?}, fresh {f:?}"
            ));
        }
        cage.down();
        cage.assert_gone(&netns);
    }
    assert!(
        differences.is_empty(),
        "a parked sandbox differs from a fresh one:\n{}",
        differences.join("\n")
    );
}

/// What call 1 leaves in its sandbox (TAG names its background process on the host).
const LEAVE_SH: &str = r#"
echo secret > /tmp/x
echo secret > /dev/shm/y
echo 'export LEAKED=from-call-1' > /tmp/env.sh
. /tmp/env.sh
setsid sh -c 'sleep 1000; : TAG' > /dev/null 2>&1 < /dev/null &
python3 -c 'import socket; socket.socket(socket.AF_UNIX).bind("/tmp/sock")'
sleep 0.2
. /workspace/check.sh
"#;

/// What a call sees of those things.
const CHECK_SH: &str = r#"
if [ -e /tmp/x ]; then echo "tmp: seen"; else echo "tmp: none"; fi
if [ -e /dev/shm/y ]; then echo "shm: seen"; else echo "shm: none"; fi
if [ -e /tmp/env.sh ]; then echo "env-file: seen"; else echo "env-file: none"; fi
if [ -S /tmp/sock ]; then echo "sock: seen"; else echo "sock: none"; fi
echo "var: ${LEAKED:-none}"
seen=none
for p in /proc/[0-9]*; do
  case "$(tr '\0' ' ' < $p/cmdline 2>/dev/null)" in *": TAG"*) seen=seen ;; esac
done
echo "process: $seen"
# Processes of another session than this command's (pid 1 aside): none of a fresh call's.
sid() { read -r s < $1 || return 1; s=${s##*)}; set -- $s; echo $4; }
mine=$(sid /proc/$$/stat); others=0
for p in /proc/[0-9]*; do
  [ "${p#/proc/}" = 1 ] && continue
  s=$(sid $p/stat 2>/dev/null) || continue
  [ "$s" != "$mine" ] && others=$((others + 1))
done
echo "others: $others"
"#;

#[test]
fn nothing_one_call_leaves_is_visible_to_the_next() {
    let _serial = serial();
    for mode in modes() {
        // pool = 2: call 2's sandbox was parked before call 1 ran, beside it.
        let mut cage = pool_cage(mode, "pool3", &[("gw", "pool = 2")]);
        cage.up();
        let netns = cage.netns_inodes();
        let tag = format!("{}-left", cage.marker);
        put(
            &cage,
            "leave.sh",
            &format!("{AGE_SH}\n{}", LEAVE_SH.replace("TAG", &tag)),
        );
        put(&cage, "check.sh", &CHECK_SH.replace("TAG", &tag));
        let id = start(&cage, "gw", "c1", "");
        let both = pool::wait_parked(&cage, "gw", Some(&id[..12]), 2);
        std::thread::sleep(pool::PAUSE);
        // Call 1 leaves things; the probe is valid: within the call, the checks see each.
        let one = docker_exec(&cage, "gw", "c1 sh /workspace/leave.sh");
        assert_eq!(one.code, 0, "{}", one.stderr);
        pool::assert_parked(&one.stdout, "call 1");
        for (what, seen) in [
            ("others:", "2"),
            ("tmp:", "seen"),
            ("shm:", "seen"),
            ("env-file:", "seen"),
            ("sock:", "seen"),
            ("var:", "from-call-1"),
            ("process:", "seen"),
        ] {
            assert_eq!(
                line_after(&one.stdout, what),
                seen,
                "call 1 {what} {}",
                one.stdout
            );
        }
        // Its background process ended with its sandbox.
        wait_until_gone(&tag);
        // Call 2 goes to the other sandbox parked before call 1 ran, and sees none of it.
        let two = docker_exec(
            &cage,
            "gw",
            &format!("c1 sh -c '{AGE_SH}; . /workspace/check.sh'"),
        );
        assert_eq!(two.code, 0, "{}", two.stderr);
        pool::assert_parked(&two.stdout, "call 2");
        for what in ["tmp:", "shm:", "env-file:", "sock:", "var:", "process:"] {
            assert_eq!(
                line_after(&two.stdout, what),
                "none",
                "call 2 {what} {}",
                two.stdout
            );
        }
        // Only its own processes (call 1 saw its background `sh` and `sleep`).
        assert_eq!(line_after(&two.stdout, "others:"), "0", "{}", two.stdout);
        pool::wait_ended(&both, "both parked sandboxes served a call");
        cage.down();
        cage.assert_gone(&netns);
    }
}

#[test]
fn parked_sandboxes_hold_slots_of_max_and_rm_and_down_end_them() {
    let _serial = serial();
    for mode in modes() {
        let mut cage = pool_cage(mode, "pool4", &[("gw", "max = 2\npool = 1")]);
        cage.up();
        let netns = cage.netns_inodes();
        let runs = pool::runs_dir(&cage, "gw");
        // `docker rm -f` ends the container's parked sandbox and removes its bundle.
        let id = start(&cage, "gw", "c1", "");
        let parked = pool::wait_parked(&cage, "gw", Some(&id[..12]), 1);
        let r = cage.sh_in("gw", "docker rm -f c1");
        assert_eq!(r.code, 0, "{}", r.stderr);
        pool::wait_ended(&parked, "rm -f");
        assert!(!parked[0].bundle.exists(), "its bundle is left");

        // Sampled all along: never more than max sandboxes, parked and running together.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = {
            let (stop, runs) = (stop.clone(), runs.clone());
            std::thread::spawn(move || {
                let mut most = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    most = most.max(pool::sandboxes_in(&runs).len());
                    std::thread::sleep(Duration::from_millis(5));
                }
                most
            })
        };
        let ids: Vec<String> = ["c2", "c3", "c4"]
            .iter()
            .map(|n| start(&cage, "gw", n, ""))
            .collect();
        let two = pool::wait_parked(&cage, "gw", None, 2);
        // A third would have to fit; give the pool time to try.
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(pool::parked(&cage, "gw", None).len(), 2);
        let hosts: BTreeSet<String> = two.iter().filter_map(|s| s.hostname()).collect();
        let without = ids
            .iter()
            .zip(["c2", "c3", "c4"])
            .find(|(id, _)| !hosts.contains(&id[..12]))
            .map(|(_, n)| n)
            .expect("a container without a parked sandbox");
        // A call in the container that has none still runs: a parked sandbox gives way.
        let r = docker_exec(
            &cage,
            "gw",
            &format!("{without} sh -c '{AGE_SH}; echo ran'"),
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(r.stdout.contains("ran"));
        pool::assert_fresh(&r.stdout, "a container without a parked sandbox");
        // Three calls at once, two slots: each of them runs or is refused in docker's
        // words, and the sampler never sees three.
        let r = cage.sh_in(
            "gw",
            "for c in c2 c3 c4; do (docker exec $c sh -c 'sleep 1; echo ran' || echo refused) & done; wait",
        );
        assert!(r.stdout.contains("ran"), "{}\n{}", r.stdout, r.stderr);
        let refused = r.stdout.matches("refused").count();
        assert!(refused <= 1, "{}\n{}", r.stdout, r.stderr);
        if refused == 1 {
            assert!(r.stderr.contains("sandbox budget is spent"), "{}", r.stderr);
        }
        pool::wait_parked(&cage, "gw", None, 2);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let most = sampler.join().unwrap();
        assert!(most <= 2, "{most} sandboxes at once with max = 2");
        assert!(most == 2, "the probe is valid: the sampler saw {most}");

        // `down` ends every parked sandbox and leaves nothing.
        let all = pool::sandboxes(&cage, "gw");
        cage.down();
        pool::wait_ended(&all, "down");
        assert!(!runs.exists(), "bundles left in {}", runs.display());
        cage.assert_gone(&netns);
    }
}

#[test]
fn a_bind_source_replaced_after_parking_is_bound_as_it_is_now() {
    let _serial = serial();
    for mode in modes() {
        let mut cage = pool_cage(mode, "pool5", &[("gw", "")]);
        cage.up();
        let netns = cage.netns_inodes();
        let ws = cage.root.join("workspace");
        std::fs::create_dir(ws.join("sub")).unwrap();
        std::fs::write(ws.join("sub/f"), "old\n").unwrap();
        std::fs::write(ws.join("sub/only-old"), "").unwrap();
        chown_tree(
            &ws.join("sub"),
            (mode.sandbox_host_uid(), mode.sandbox_host_gid()),
        );
        let id = start(&cage, "gw", "c5", "-v /workspace/sub:/data");
        let stale = pool::park_for(&cage, "gw", &id);
        // The probe is valid: the parked sandbox holds the old directory at /data.
        let init = stale.init.unwrap();
        let held = std::fs::read_to_string(format!("/proc/{init}/root/data/f"));
        assert_eq!(
            held.ok().as_deref(),
            Some("old\n"),
            "the parked sandbox's /data"
        );
        // The gateway moves the directory away and makes a new one in its place.
        let r = cage.sh_in(
            "gw",
            "mv /workspace/sub /workspace/old && mkdir /workspace/sub && echo new > /workspace/sub/f",
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(std::fs::metadata(format!("/proc/{init}/root/data/only-old")).is_ok());
        let r = docker_exec(
            &cage,
            "gw",
            &format!("c5 sh -c '{AGE_SH}; cat /data/f; ls /data'"),
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(
            r.stdout.contains("new") && !r.stdout.contains("old"),
            "{}",
            r.stdout
        );
        // The stale sandbox was ended, not used: the call made its own.
        pool::assert_fresh(&r.stdout, "after the source changed");
        pool::wait_ended(std::slice::from_ref(&stale), "the stale parked sandbox");
        // The next parked sandbox holds the new directory and serves the next call.
        pool::park_for(&cage, "gw", &id);
        let r = docker_exec(&cage, "gw", &format!("c5 sh -c '{AGE_SH}; cat /data/f'"));
        pool::assert_parked(&r.stdout, "parked after the change");
        assert!(r.stdout.ends_with("new\n"), "{}", r.stdout);
        cage.down();
        cage.assert_gone(&netns);
    }
}

#[test]
fn parked_sandboxes_die_with_the_supervisor() {
    let _serial = serial();
    for mode in modes() {
        let mut cage = pool_cage(mode, "pool6", &[("gw", "")]);
        let supervisor = cage.up();
        let netns = cage.netns_inodes();
        let a = start(&cage, "gw", "c1", "");
        let b = start(&cage, "gw", "c2", "");
        let mut parked = pool::wait_parked(&cage, "gw", Some(&a[..12]), 1);
        parked.extend(pool::wait_parked(&cage, "gw", Some(&b[..12]), 1));
        assert!(parked.iter().all(|s| s.init.is_some()), "{parked:?}");
        // A killed supervisor leaves its cage's cgroups for `down`: keep other tests' leftover
        // checks from seeing them meanwhile.
        let _lock = leftover_lock();
        sigkill(supervisor).unwrap();
        pool::wait_ended(&parked, "the supervisor was killed");
        let r = cage.cagerun(&["down"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        cage.assert_gone(&netns);
    }
}

#[test]
fn down_with_parked_sandboxes_leaves_no_cgroup_behind() {
    let _serial = serial();
    for mode in modes() {
        // Eight parked sandboxes (two containers, pool = 4) when `down` comes.
        let mut cage = pool_cage(mode, "pool7", &[("gw", "pool = 4")]);
        cage.up();
        let netns = cage.netns_inodes();
        for name in ["c1", "c2"] {
            let id = start(&cage, "gw", name, "");
            pool::wait_parked(&cage, "gw", Some(&id[..12]), 4);
        }
        let parked = pool::parked(&cage, "gw", None);
        assert_eq!(parked.len(), 8, "{parked:?}");
        // The probe is valid: each parked sandbox has a cgroup of its own in the cage's.
        let leaves: Vec<std::path::PathBuf> =
            find_dirs_named(std::path::Path::new("/sys/fs/cgroup"), cage.id(), 10)
                .iter()
                .flat_map(|d| {
                    std::fs::read_dir(d.join("sandboxes-gw"))
                        .into_iter()
                        .flatten()
                })
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("sbx-"))
                .collect();
        assert!(leaves.len() >= 8, "{leaves:?}");
        cage.down();
        pool::wait_ended(&parked, "down");
        let left: Vec<_> = leaves.iter().filter(|l| l.exists()).collect();
        assert!(
            left.is_empty(),
            "down left parked sandboxes' cgroups: {left:?}"
        );
        cage.assert_gone(&netns);
    }
}

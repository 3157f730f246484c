//! Tool sandboxes through the docker shim and the supervisor's broker, as root and rootless:
//! a service with `[services.X.sandboxes]` runs the docker CLI calls OpenClaw's sandbox
//! backend makes (argv as OpenClaw 2026.9.6 builds them); every `exec` is a fresh sandbox;
//! whatever the service asks beyond the cage's policy is refused in docker's words and starts
//! nothing. The real OpenClaw gateway drives the same shim in tests/stack.rs.

#[path = "support/mod.rs"]
mod support;

use support::cage::*;
use support::*;

const GATEWAY_TOML: &str = r#"
[services.gw]
host = true
command = ["sleep", "100000"]
env = { CAGE_MARKER = "{MARKER}" }
mounts = [
  { src = "workspace", dst = "/workspace", ro = false },
  { src = "skills", dst = "/skills" },
]

[services.gw.sandboxes]
images = { "openclaw-sandbox:bookworm-slim" = "host" }
"#;

/// OpenClaw's create (buildSandboxCreateArgs) with `extra` flags before the image.
fn create_argv(name: &str, extra: &str, image: &str) -> String {
    format!(
        "docker create --name {name} --init --label openclaw.sandbox=1 \
         --label openclaw.sessionKey=agent:main:main --label openclaw.mountFormatVersion=4 \
         --read-only --tmpfs /tmp --tmpfs /var/tmp --tmpfs /run --network none \
         --user 1000:1000 --cap-drop ALL --security-opt no-new-privileges --pids-limit 256 \
         --memory 1g --workdir /workspace -v /workspace:/workspace:z \
         --env-file /tmp/sbx.env {extra} {image} sleep infinity"
    )
}

fn gateway(cage: &Cage, script: &str) -> Run {
    cage.sh_in("gw", script)
}

fn new_cage(mode: Mode) -> Cage {
    let cage = Cage::new(
        mode,
        "sbx",
        &[
            ("config/cage.toml", GATEWAY_TOML),
            ("workspace/.keep", ""),
            ("skills/SKILL.md", "a skill\n"),
        ],
    );
    // The sandbox user writes the workspace (as it would in a real cage, where it is the
    // user's own directory).
    let ws = cage.root.join("workspace");
    std::os::unix::fs::chown(
        &ws,
        Some(mode.sandbox_host_uid()),
        Some(mode.sandbox_host_gid()),
    )
    .unwrap();
    cage
}

#[test]
fn every_tool_command_runs_in_a_fresh_sandbox_with_the_shims_stdio() {
    let _serial = serial();
    for mode in modes() {
        let mut cage = new_cage(mode);
        cage.up();
        let netns = cage.netns_inodes();
        // The probe is valid: the gateway itself has a name, the cage network and its own
        // view; a sandbox must differ in each.
        let r = gateway(
            &cage,
            "hostname; grep -c : /proc/net/dev; command -v docker",
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        let mut l = r.stdout.lines();
        assert_eq!(l.next(), Some("gw"));
        let gw_ifaces: usize = l.next().unwrap().parse().unwrap();
        assert!(
            gw_ifaces >= 2,
            "the gateway has lo and its veth: {}",
            r.stdout
        );
        assert_eq!(l.next(), Some("/dev/.cagerun/docker"), "{}", r.stdout);

        let script = format!(
            r#"set -e
printf 'LANG=C.UTF-8\nSBX_VAR=from-create\n' > /tmp/sbx.env
docker image inspect openclaw-sandbox:bookworm-slim >/dev/null
echo "created: $({create})"
docker start sbx-main >/dev/null
echo "id: $(docker inspect --format '{{{{.Id}}}}' sbx-main)"
echo "running: $(docker inspect -f '{{{{.State.Running}}}}' sbx-main)"
echo "label: $(docker inspect -f '{{{{ index .Config.Labels "openclaw.sandbox" }}}}' sbx-main)"
echo "mounts: $(docker inspect --format '{{{{json .Mounts}}}}' sbx-main)"
printf 'SBX_EXEC=from-exec\n' > /tmp/exec.env
docker exec -i -w /workspace --env-file /tmp/exec.env sbx-main /bin/sh -lc \
  'echo "host: $(hostname)"; echo "uid: $(id -u)"; grep CapEff /proc/self/status; echo "ifaces: $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d " " | tr "\n" " ")"; echo "env: $SBX_VAR $SBX_EXEC"; echo "pwd: $(pwd)"; echo tool-output > /workspace/written; echo first > /tmp/left-behind' </dev/null
echo "fresh: $(docker exec sbx-main sh -c 'cat /tmp/left-behind 2>/dev/null || echo none')"
echo "stdin: $(echo piped-in | docker exec -i sbx-main sh -c 'cat')"
echo "etc-write: $(docker exec sbx-main sh -c 'touch /etc/x 2>/dev/null && echo wrote || echo refused')"
docker rm -f sbx-main >/dev/null
docker inspect sbx-main >/dev/null 2>&1 && echo still-there || echo "removed: yes"
"#,
            create = create_argv("sbx-main", "", "openclaw-sandbox:bookworm-slim")
        );
        let r = gateway(&cage, &script);
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        let out = &r.stdout;
        let id = line_after(out, "id:");
        assert!(
            id.len() == 64 && id.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')),
            "docker's full id: {id}"
        );
        assert_eq!(line_after(out, "created:"), id);
        assert_eq!(line_after(out, "running:"), "true");
        assert_eq!(line_after(out, "label:"), "1");
        // inspect reports the bind as the gateway asked for it.
        assert!(
            line_after(out, "mounts:").contains(r#""Source":"/workspace""#),
            "{out}"
        );
        // The command ran in a sandbox: its own host name (docker's: the id's first 12),
        // user 1000, no capabilities, no network but lo, the create's and the exec's env.
        assert_eq!(line_after(out, "host:"), &id[..12]);
        assert_eq!(line_after(out, "uid:"), "1000");
        assert_eq!(line_after(out, "CapEff:"), "0000000000000000");
        assert_eq!(line_after(out, "ifaces:"), "lo");
        assert_eq!(line_after(out, "env:"), "from-create from-exec");
        assert_eq!(line_after(out, "pwd:"), "/workspace");
        // Each exec is a fresh sandbox: the first one's /tmp is gone.
        assert_eq!(line_after(out, "fresh:"), "none", "{out}");
        assert_eq!(line_after(out, "stdin:"), "piped-in");
        assert_eq!(line_after(out, "etc-write:"), "refused");
        assert_eq!(line_after(out, "removed:"), "yes");
        // The workspace write reached the host's workspace, as the sandbox user.
        let written = cage.root.join("workspace/written");
        assert_eq!(std::fs::read_to_string(&written).unwrap(), "tool-output\n");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(&written).unwrap().uid(),
            mode.sandbox_host_uid()
        );

        // A shim that is killed (OpenClaw's timeout) takes its sandbox with it.
        let r = gateway(
            &cage,
            &format!(
                "printf 'A=1\\n' > /tmp/sbx.env; {} >/dev/null && docker start sbx-kill",
                create_argv("sbx-kill", "", "openclaw-sandbox:bookworm-slim")
            ),
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        let tag = format!("{}-sandbox", cage.marker);
        let script = format!("docker exec sbx-kill sh -c 'sleep 600; : {tag}'");
        // Its stdio is /dev/null, not the test's own (which may be a file when the output is
        // redirected: the broker takes only a pipe, a socket, a terminal or /dev/null).
        let mut entering = cage
            .command(&["exec", "gw", "--", "sh", "-c", &script])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // The probe is valid: the sandbox's own shell (not only the shim) runs.
        let sandbox_shell = |cmd: &str| cmd.starts_with("sh -c sleep 600");
        let mut shim = None;
        for _ in 0..250 {
            let procs = processes_naming(&tag);
            shim = procs
                .iter()
                .find(|(_, c)| c.starts_with("docker exec"))
                .map(|(p, _)| *p);
            if shim.is_some() && procs.iter().any(|(_, c)| sandbox_shell(c)) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(
            processes_naming(&tag).iter().any(|(_, c)| sandbox_shell(c)),
            "the sandbox never ran: {:?}",
            processes_naming(&tag)
        );
        // The shim is a process this test started (through `cagerun exec gw`).
        sigkill(shim.expect("the shim runs")).unwrap();
        wait_until_gone(&tag);
        let _ = entering.wait();
        cage.down();
        cage.assert_gone(&netns);
    }
}

#[test]
fn the_broker_refuses_what_the_gateway_may_not_ask_for_and_starts_nothing() {
    let _serial = serial();
    let image = "openclaw-sandbox:bookworm-slim";
    let refusals: &[(&str, &str, &str)] = &[
        ("host /etc", "-v /etc:/x", image),
        ("privileged", "--privileged", image),
        ("host network", "--network host", image),
        ("a capability", "--cap-add SYS_ADMIN", image),
        ("a device", "--device /dev/kvm", image),
        // Gateway paths outside its writable mounts: its read-only skills, its /tmp, a
        // climb out of the workspace.
        ("outside the workspace", "-v /opt:/workspace/opt", image),
        ("the gateway's own tmp", "-v /tmp:/workspace/t", image),
        ("a climb out", "-v /workspace/../etc:/workspace/e", image),
        (
            "a read-only gateway mount",
            "-v /skills:/workspace/s",
            image,
        ),
        ("an unknown flag", "--pid host", image),
        ("an image not in the cage", "", "docker.io/library/alpine:3"),
    ];
    for mode in modes() {
        let mut cage = new_cage(mode);
        cage.up();
        let netns = cage.netns_inodes();
        for (what, flags, img) in refusals {
            let r = gateway(
                &cage,
                &format!(
                    "printf 'A=1\\n' > /tmp/sbx.env; {}; echo \"code: $?\"; docker inspect sbx-bad >/dev/null 2>&1 && echo exists || echo 'exists: no'",
                    create_argv("sbx-bad", flags, img)
                ),
            );
            let code = line_after(&r.stdout, "code:");
            assert_eq!(code, "125", "{what}: {}\n{}", r.stdout, r.stderr);
            let err = r.stderr.lines().next().unwrap_or_default();
            assert!(
                err.starts_with("Error response from daemon:") || err.starts_with("unknown flag:"),
                "{what}: a docker-style error, got {err:?}"
            );
            assert_eq!(line_after(&r.stdout, "exists:"), "no", "{what}");
            // Nothing was started for it.
            let runs = cage.runtime_dir().join("sandboxes-gw");
            assert_eq!(std::fs::read_dir(&runs).unwrap().count(), 0, "{what}");
        }
        // The probe was valid: the same create without the refused part is accepted.
        let r = gateway(
            &cage,
            &format!(
                "printf 'A=1\\n' > /tmp/sbx.env; {} >/dev/null && docker start sbx-bad && docker exec sbx-bad sh -c 'ls /workspace/.keep'",
                create_argv("sbx-bad", "-v /workspace:/workspace/again", image)
            ),
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(r.stdout.contains("/workspace/.keep"), "{}", r.stdout);
        // An exec cannot ask for root either.
        let r = gateway(&cage, "docker exec -u 0 sbx-bad id -u");
        assert_ne!(r.code, 0);
        assert!(!r.stdout.contains('0'), "{}", r.stdout);
        cage.down();
        cage.assert_gone(&netns);
    }
}

#[test]
fn a_gateway_root_that_says_it_is_a_container_is_refused_before_anything_starts() {
    let _serial = serial();
    for mode in modes() {
        for marker in [".dockerenv", "run/.containerenv"] {
            let cage = Cage::new(
                mode,
                "sbxenv",
                &[
                    (
                        "config/cage.toml",
                        "[services.gw]\nrootfs = \"tree\"\ncommand = [\"/bin/sh\"]\nenv = { M = \"{MARKER}\" }\n\n[services.gw.sandboxes]\nimages = { \"sb:1\" = \"host\" }\n",
                    ),
                    (&format!("tree/{marker}"), ""),
                    ("tree/bin/.keep", ""),
                ],
            );
            let r = cage.cagerun(&["up", "-d"]);
            assert_eq!(r.code, 125, "{}", r.stdout);
            assert!(
                r.stderr.contains(&format!("/{marker}")) && r.stderr.contains("inspect itself"),
                "{}",
                r.stderr
            );
            // Nothing started, nothing left running.
            let ps = cage.cagerun(&["ps"]);
            assert!(
                ps.code == 125 && ps.stderr.contains("is not up"),
                "the cage must not be up: {}",
                ps.stdout
            );
            wait_until_gone(&cage.marker);
        }
    }
}

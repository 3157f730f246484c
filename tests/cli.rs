//! What users of docker compose and podman expect of the CLI: shell completions and manual
//! pages, `ls` and `down NAME` (also after the cage's directory moved), `--json` on `ps`,
//! `images`, `internet` and `inspect`, the shim answering to `podman`, and `events`. The
//! cage tests run as root and rootless (see support/mod.rs) and end by proving the cage left
//! nothing.

#[path = "support/mod.rs"]
mod support;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::cage::*;
use support::*;

/// The built binary, run as the test's own user (completion and man touch no namespace).
fn cagerun_here(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cagerun"))
        .args(args)
        .output()
        .expect("run cagerun")
}

/// The verbs `cagerun --help` lists (the visible ones), without `help`.
fn visible_verbs() -> Vec<String> {
    let out = cagerun_here(&["--help"]);
    let text = String::from_utf8(out.stdout).unwrap();
    let commands = text.split("Commands:").nth(1).expect("a Commands: section");
    // Up to the blank line after the list; a verb's line starts with two spaces and its
    // name (a wrapped description is indented further).
    let verbs: Vec<String> = commands
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l[2..].starts_with(' '))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|v| v != "help")
        .collect();
    assert!(verbs.len() > 20, "{verbs:?} from {text}");
    verbs
}

#[test]
fn the_bash_completion_is_valid_and_completes_verbs() {
    let out = cagerun_here(&["completion", "bash"]);
    assert!(out.status.success());
    let dir = TempDir::new("completion", None);
    let script = dir.path().join("cagerun.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    // Valid bash.
    let n = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        n.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&n.stderr)
    );
    // Sourced, it completes `cagerun u` to `up` and `cagerun ev` to `events`, and offers
    // no hidden verb.
    let complete = |words: &str| {
        let probe = format!(
            r#"source {}; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}}-1)); COMP_LINE="{words}"; COMP_POINT=${{#COMP_LINE}}; _cagerun cagerun "${{COMP_WORDS[-1]}}" "${{COMP_WORDS[-2]}}"; printf '%s\n' "${{COMPREPLY[@]}}""#,
            script.display()
        );
        let r = Command::new("bash").arg("-c").arg(&probe).output().unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        String::from_utf8(r.stdout).unwrap()
    };
    assert_eq!(complete("cagerun u").trim(), "up");
    assert_eq!(complete("cagerun ev").trim(), "events");
    let all = complete("cagerun ''");
    for v in ["up", "down", "ls", "inspect", "events", "completion", "man"] {
        assert!(all.lines().any(|l| l == v), "{v} not offered: {all}");
    }
    for hidden in ["holder", "monitor", "init"] {
        assert!(!all.lines().any(|l| l == hidden), "{hidden} offered: {all}");
    }
    // The flags of a verb: `cagerun ls --` offers --json.
    assert!(complete("cagerun ls --").lines().any(|l| l == "--json"));
    // zsh and fish scripts name cagerun's verbs too.
    let zsh = String::from_utf8(cagerun_here(&["completion", "zsh"]).stdout).unwrap();
    assert!(zsh.starts_with("#compdef cagerun"), "{zsh:.100}");
    assert!(zsh.contains("'events:"), "zsh lacks events");
    let fish = String::from_utf8(cagerun_here(&["completion", "fish"]).stdout).unwrap();
    assert!(fish.contains("complete -c cagerun"), "{fish:.200}");
    assert!(fish.contains("-a \"inspect\""), "fish lacks inspect");
    // A shell it does not know is an error naming the choices.
    let bad = cagerun_here(&["completion", "tcsh"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("bash, zsh, fish"));
}

#[test]
fn man_writes_a_page_per_visible_verb_that_man_renders() {
    let dir = TempDir::new("man", None);
    let out = dir.path().join("man1");
    let r = cagerun_here(&["man", "--out", out.to_str().unwrap()]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(out.join("cagerun.1").is_file());
    for verb in visible_verbs() {
        let page = out.join(format!("cagerun-{verb}.1"));
        let text = std::fs::read_to_string(&page)
            .unwrap_or_else(|_| panic!("no page for {verb}: {}", page.display()));
        assert!(text.contains(".TH cagerun-"), "{verb}: {text:.200}");
    }
    for hidden in ["holder", "monitor", "init", "help"] {
        assert!(
            !out.join(format!("cagerun-{hidden}.1")).exists(),
            "{hidden}"
        );
    }
    // man renders one (groff underneath): the page's name line and a flag of the verb.
    let rendered = Command::new("man")
        .args(["-l", "-P", "cat"])
        .arg(out.join("cagerun-down.1"))
        .env("MANWIDTH", "100")
        .output()
        .expect("man (scripts/test installs man-db and groff-base)");
    assert!(rendered.status.success());
    let text = String::from_utf8_lossy(&rendered.stdout);
    assert!(text.contains("cagerun-down"), "{text}");
    assert!(text.contains("--volumes"), "{text}");
    // `man VERB` prints the same page to stdout; an unknown verb is one error, 125.
    let one = cagerun_here(&["man", "down"]);
    assert_eq!(
        String::from_utf8(one.stdout).unwrap(),
        std::fs::read_to_string(out.join("cagerun-down.1")).unwrap()
    );
    let bad = cagerun_here(&["man", "nosuchverb"]);
    assert_eq!(bad.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no verb \"nosuchverb\""));
}

/// `cagerun ARGS` as the cage's user, in the cage's environment, without `--config`.
fn plain(cage: &Cage, args: &[&str]) -> Run {
    let mut cmd = cagerun_cmd(cage.mode, args);
    cmd.env_remove("XDG_RUNTIME_DIR");
    if let Mode::Rootless { uid, .. } = cage.mode {
        cmd.env("HOME", home_of(uid));
    }
    run_cmd(cage.mode, cmd, args)
}

fn ls_json(cage: &Cage) -> (Vec<Value>, String) {
    let r = plain(cage, &["ls", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    (v.as_array().unwrap().clone(), r.stderr)
}

fn listed<'a>(list: &'a [Value], id: &str) -> Option<&'a Value> {
    list.iter().find(|c| c["name"] == id)
}

const SLEEPERS: &str = r#"
[services.a]
host = true
command = ["sh", "-c", "sleep 1000", "{MARKER}"]

[services.b]
host = true
command = ["sh", "-c", "sleep 1000", "{MARKER}"]
depends_on = ["a"]
"#;

#[test]
fn ls_lists_running_cages_and_down_name_stops_one_whose_directory_moved() {
    let _serial = serial();
    for mode in modes() {
        let mut cage = Cage::new_in(mode, "ls", "lscage", &[("config/cage.toml", SLEEPERS)]);
        let sup = cage.up();
        cage.wait_for("b", "running", |s| s["state"] == "running");
        let netns = cage.netns_inodes();
        let id = cage.id().to_string();
        let dir = std::fs::canonicalize(&cage.root).unwrap();

        // Text: a line for the cage with its services and directory.
        let r = plain(&cage, &["ls"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(r.stdout.starts_with("NAME"), "{}", r.stdout);
        let line = r
            .stdout
            .lines()
            .find(|l| l.starts_with(&id))
            .unwrap_or_else(|| panic!("{id} not listed: {}", r.stdout));
        assert!(line.contains("2/2 running"), "{line}");
        assert!(line.ends_with(&*dir.to_string_lossy()), "{line}");
        // JSON: the same, typed.
        let (list, _) = ls_json(&cage);
        let c = listed(&list, &id).expect("listed");
        assert_eq!(c["directory"], dir.to_string_lossy().as_ref());
        assert_eq!(c["directory_exists"], true);
        assert_eq!(c["services"], serde_json::json!(["a", "b"]));
        assert_eq!(c["running"], 2);
        assert_eq!(c["supervisor_pid"], sup);
        assert!(c["uptime_secs"].as_u64().unwrap() < 120, "{c}");
        assert!(c["started"].as_u64().unwrap() > 1_700_000_000, "{c}");

        // The cage's directory moves away while it runs: ls says so, `down NAME` stops it.
        let moved = cage.dir.path().join("moved");
        std::fs::rename(&cage.root, &moved).unwrap();
        assert!(
            cage.cagerun(&["down"]).code != 0,
            "the probe is valid: down by config cannot find it now"
        );
        let (list, _) = ls_json(&cage);
        assert_eq!(listed(&list, &id).unwrap()["directory_exists"], false);
        assert!(plain(&cage, &["ls"]).stdout.contains("(gone)"));
        let r = plain(&cage, &["down", &id]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(
            r.stdout.contains(&format!("cage {id} is down")),
            "{}",
            r.stdout
        );
        let (list, _) = ls_json(&cage);
        assert!(listed(&list, &id).is_none(), "still listed after down");
        cage.assert_gone(&netns);
        assert_no_leftovers(&cage.marker);

        // A cage whose supervisor was killed is not listed but reported; `down NAME` (by
        // the name without its hash) cleans it up.
        cage.root = moved;
        let sup = cage.up();
        cage.wait_for("b", "running", |s| s["state"] == "running");
        let netns = cage.netns_inodes();
        let id = cage.id().to_string();
        assert!(id.starts_with("moved-"), "{id}");
        sigkill(sup).unwrap();
        wait_until_gone(&format!("up --config {}", cage.config()));
        let (list, stderr) = ls_json(&cage);
        assert!(listed(&list, &id).is_none(), "a stale cage is listed");
        assert!(
            stderr.contains(&format!("cage {id} is not running"))
                && stderr.contains(&format!("cagerun down {id}")),
            "{stderr}"
        );
        let r = plain(&cage, &["down", "moved"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(r.stdout.contains("cleaned up"), "{}", r.stdout);
        cage.assert_gone(&netns);
        // Nothing names it any more: `down` of an unknown name is one error, 125.
        let r = plain(&cage, &["down", &id]);
        assert_eq!(r.code, 125);
        assert!(
            r.stderr.contains("no cage named") && r.stderr.contains("cagerun ls"),
            "{}",
            r.stderr
        );
        cage.id = None;
        assert_no_leftovers(&cage.marker);
    }
}

fn inspect_toml(port: u16) -> String {
    format!(
        r#"
[services.web]
host = true
command = ["python3", "-c", "import functools, http.server as h; h.ThreadingHTTPServer(('0.0.0.0', 8000), functools.partial(h.SimpleHTTPRequestHandler, directory='/srv')).serve_forever()", "{{MARKER}}"]
mounts = [{{ src = "www", dst = "/srv" }}, {{ src = "data", dst = "/data", ro = false }}]
tmpfs = [{{ dst = "/scratch", size = "16m" }}]
ports = ["127.0.0.1:{port}:8000"]
resources = {{ memory = "256m", pids = 64 }}
env = {{ SECRET_TOKEN = "do-not-print" }}
internet = true
restart = "on-failure"
healthcheck = {{ http = ":8000/ok.txt", interval = "200ms", timeout = "2s", retries = 1 }}
"#
    )
}

fn json_of(r: &Run) -> Value {
    assert_eq!(r.code, 0, "{}", r.stderr);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

#[test]
fn inspect_ps_and_internet_speak_json_with_their_documented_fields() {
    let _serial = serial();
    for mode in modes() {
        let port = free_port();
        let mut cage = Cage::new(
            mode,
            "inspect",
            &[
                ("config/cage.toml", &inspect_toml(port)),
                ("www/ok.txt", "OK\n"),
                ("data/.keep", ""),
            ],
        );
        let dir = std::fs::canonicalize(&cage.root).unwrap();
        // Before up: the resolved settings, no state.
        let i = json_of(&cage.cagerun(&["inspect", "--json", "web"]));
        assert!(i["state"].is_null(), "{i}");
        cage.up();
        let netns = cage.netns_inodes();
        cage.wait_for("web", "healthy", |s| s["health"] == "healthy");
        let i = json_of(&cage.cagerun(&["inspect", "--json", "web"]));
        assert_eq!(i["service"], "web");
        assert_eq!(i["cage"], cage.id());
        assert_eq!(i["root"]["kind"], "host");
        assert_eq!(i["command"][0], "python3");
        assert_eq!(i["command"][1], "-c");
        assert_eq!(i["command"][3], cage.marker.as_str());
        assert_eq!(i["user"], serde_json::json!({"uid": 1000, "gid": 1000}));
        let mounts = i["mounts"].as_array().unwrap();
        let m = |dst: &str| {
            mounts
                .iter()
                .find(|m| m["destination"] == dst)
                .unwrap_or_else(|| panic!("no {dst} in {mounts:?}"))
                .clone()
        };
        assert_eq!(m("/srv")["kind"], "bind");
        assert_eq!(
            m("/srv")["source"],
            dir.join("www").to_string_lossy().as_ref()
        );
        assert_eq!(m("/srv")["read_only"], true);
        assert_eq!(m("/data")["read_only"], false);
        assert_eq!(m("/scratch")["kind"], "tmpfs");
        assert_eq!(m("/scratch")["size"], 16 << 20);
        assert_eq!(
            i["ports"],
            serde_json::json!([{"host_address": "127.0.0.1", "host_port": port, "container_port": 8000}])
        );
        assert_eq!(i["resources"]["memory"], 256 << 20);
        assert_eq!(i["resources"]["pids"], 64);
        assert_eq!(i["internet"], true);
        assert_eq!(i["restart"], "on-failure");
        assert_eq!(i["healthcheck"]["kind"], "http");
        assert_eq!(i["healthcheck"]["probe"], ":8000/ok.txt");
        assert_eq!(i["sandboxes"], false);
        // Environment names only: a token's value is not printed.
        assert!(i["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "SECRET_TOKEN"));
        assert!(!i.to_string().contains("do-not-print"));
        // Live state, as the supervisor has it.
        let st = &i["state"];
        let ps = cage.service("web");
        assert_eq!(st["state"], "running");
        assert_eq!(st["pid"], ps["pid"]);
        assert!(st["pid"].as_i64().unwrap() > 1);
        assert_eq!(st["health"], "healthy");
        assert_eq!(st["restarts"], 0);
        assert!(st["started"].as_u64().unwrap() > 1_700_000_000);
        // The text form says the same in lines.
        let t = cage.cagerun(&["inspect", "web"]);
        assert_eq!(t.code, 0);
        assert!(t.stdout.contains("root:      host"), "{}", t.stdout);
        assert!(t.stdout.contains("/srv <- bind"), "{}", t.stdout);
        assert!(t.stdout.contains("state:     running"), "{}", t.stdout);
        // ps --json: every documented field is there.
        let ps = cage.ps();
        for field in [
            "service",
            "state",
            "pid",
            "started",
            "restarts",
            "health",
            "health_error",
            "ports",
            "address",
            "last_exit",
            "error",
        ] {
            assert!(ps[0].get(field).is_some(), "ps lacks {field}: {}", ps[0]);
        }
        // internet --json: off, and which services it would open.
        let net = json_of(&cage.cagerun(&["internet", "--json"]));
        assert_eq!(net["on"], false);
        assert_eq!(net["services"], serde_json::json!(["web"]));
        // An unknown service is one error naming the cage's services.
        let r = cage.cagerun(&["inspect", "nope"]);
        assert_eq!(r.code, 125);
        assert!(r.stderr.contains("web"), "{}", r.stderr);
        cage.down();
        cage.assert_gone(&netns);
    }
}

#[test]
fn images_json_lists_what_the_store_holds() {
    for mode in modes() {
        let work = TempDir::new("images", Some(mode.caller_ids()));
        let out = Command::new("sh")
            .arg("-ec")
            .arg(
                r#"R=--rootless; [ "$(id -u)" = 0 ] && R=
                umoci init --layout L
                umoci new --image L:t
                umoci unpack $R --image L:t B >/dev/null
                echo hi > B/rootfs/hello
                umoci repack --image L:t B
                chmod -R a+rX L"#,
            )
            .current_dir(work.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "umoci: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        chown_tree(work.path(), mode.caller_ids());
        let store = work.path().join("store");
        let rootfs = work.path().join("rootfs");
        let src = format!("oci:{}:t", work.path().join("L").display());
        let (s, rf) = (store.to_str().unwrap(), rootfs.to_str().unwrap());
        let r = run(mode, &["images", "--json", "--store", s]);
        assert_eq!(json_of(&r), serde_json::json!([]));
        let r = run(
            mode,
            &[
                "image",
                "import",
                &src,
                "--name",
                "tiny",
                "--store",
                s,
                "--rootfs-dir",
                rf,
            ],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        let list = json_of(&run(mode, &["images", "--json", "--store", s]));
        let img = &list[0];
        assert_eq!(img["name"], "tiny");
        assert_eq!(img["source"], src);
        assert!(img["digest"].as_str().unwrap().starts_with("sha256:"));
        assert!(img["config"].as_str().unwrap().starts_with("sha256:"));
        assert_eq!(img["layers"], 1);
        assert!(img["size"].as_u64().unwrap() > 0);
        assert!(img["created"].as_u64().unwrap() > 1_700_000_000);
        let _ = run(mode, &["image", "rm-rootfs", "tiny", "--rootfs-dir", rf]);
    }
}

const GATEWAY_TOML: &str = r#"
[services.gw]
host = true
command = ["sleep", "100000"]
env = { CAGE_MARKER = "{MARKER}" }
mounts = [{ src = "workspace", dst = "/workspace", ro = false }]

[services.gw.sandboxes]
images = { "openclaw-sandbox:bookworm-slim" = "host" }
"#;

#[test]
fn the_shim_answers_to_podman_as_it_does_to_docker() {
    let _serial = serial();
    for mode in modes() {
        let mut cage = Cage::new(
            mode,
            "podman",
            &[("config/cage.toml", GATEWAY_TOML), ("workspace/.keep", "")],
        );
        std::os::unix::fs::chown(
            cage.root.join("workspace"),
            Some(mode.sandbox_host_uid()),
            Some(mode.sandbox_host_gid()),
        )
        .unwrap();
        cage.up();
        let netns = cage.netns_inodes();
        // OpenClaw's podman backend's calls, through `podman` on the gateway's PATH.
        let script = r#"set -e
echo "which: $(command -v podman)"
printf 'A=from-env-file\n' > /tmp/sbx.env
podman image inspect openclaw-sandbox:bookworm-slim >/dev/null
echo "created: $(podman create --name sbx-pod --read-only --tmpfs /tmp --network none \
  --user 1000:1000 --cap-drop ALL --security-opt no-new-privileges --pids-limit 256 \
  --memory 1g --workdir /workspace -v /workspace:/workspace:z --env-file /tmp/sbx.env \
  openclaw-sandbox:bookworm-slim sleep infinity)"
podman start sbx-pod >/dev/null
echo "id: $(podman inspect --format '{{.Id}}' sbx-pod)"
podman exec -i -w /workspace sbx-pod sh -c 'echo "uid: $(id -u)"; echo "host: $(hostname)"; echo "env: $A"; echo "ifaces: $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d " " | tr "\n" " ")"; echo pod > /workspace/by-podman'
echo "docker-sees: $(docker inspect --format '{{.Id}}' sbx-pod)"
podman rm -f sbx-pod >/dev/null
podman inspect sbx-pod >/dev/null 2>&1 && echo still-there || echo "removed: yes"
"#;
        let r = cage.sh_in("gw", script);
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        let out = &r.stdout;
        assert_eq!(line_after(out, "which:"), "/dev/.cagerun/podman");
        let id = line_after(out, "id:");
        assert!(
            id.len() == 64 && id.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')),
            "{id}"
        );
        assert_eq!(line_after(out, "created:"), id);
        // The exec ran in a sandbox the broker made: user 1000, its own host name, no
        // network but lo, the env file the shim read.
        assert_eq!(line_after(out, "uid:"), "1000");
        assert_eq!(line_after(out, "host:"), &id[..12]);
        assert_eq!(line_after(out, "env:"), "from-env-file");
        assert_eq!(line_after(out, "ifaces:"), "lo");
        // One broker behind both names: docker sees what podman made.
        assert_eq!(line_after(out, "docker-sees:"), id);
        assert_eq!(line_after(out, "removed:"), "yes");
        assert_eq!(
            std::fs::read_to_string(cage.root.join("workspace/by-podman")).unwrap(),
            "pod\n"
        );
        // The broker's policy holds for podman as for docker: a host network is refused
        // and starts nothing.
        let r = cage.sh_in(
            "gw",
            "podman create --name bad --network host openclaw-sandbox:bookworm-slim sleep 1; echo \"code: $?\"; podman inspect bad >/dev/null 2>&1 && echo made || echo none",
        );
        assert_eq!(line_after(&r.stdout, "code:"), "125", "{}", r.stderr);
        assert_eq!(r.stdout.lines().last(), Some("none"), "{}", r.stdout);
        cage.down();
        cage.assert_gone(&netns);
    }
}

/// `cagerun events --json` for `cage`, its lines arriving on the returned channel once it
/// said it subscribed.
fn subscribe(cage: &Cage) -> (std::process::Child, mpsc::Receiver<Value>) {
    let mut child = cage
        .command(&["events", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufReader::new(stderr).lines();
    let first = lines.next().expect("events said nothing").unwrap();
    assert!(first.contains("subscribed"), "{first}");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let v: Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}"));
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Events until one matches `pred` (10 s at most); all of them, that one last.
fn until(rx: &mpsc::Receiver<Value>, what: &str, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(v) => {
                let hit = pred(&v);
                seen.push(v);
                if hit {
                    return seen;
                }
            }
            Err(_) => panic!("no {what} event; saw {seen:?}"),
        }
    }
}

#[test]
fn events_stream_exits_starts_restarts_and_health_changes() {
    let _serial = serial();
    for mode in modes() {
        let port = free_port();
        let mut cage = Cage::new(
            mode,
            "events",
            &[
                ("config/cage.toml", &inspect_toml(port)),
                ("www/ok.txt", "OK\n"),
                ("data/.keep", ""),
            ],
        );
        cage.up();
        let netns = cage.netns_inodes();
        let first = cage.wait_for("web", "healthy", |s| s["health"] == "healthy");
        let (mut child, rx) = subscribe(&cage);
        // A restart: the old container's exit, the restart, the new one's start.
        assert_eq!(cage.cagerun(&["restart", "web"]).code, 0);
        let seen = until(&rx, "start", |e| e["event"] == "start");
        // (A health probe may fail while the server stops: those events are not counted.)
        let seen: Vec<Value> = seen
            .into_iter()
            .filter(|e| e["event"] != "health")
            .collect();
        let kinds: Vec<&str> = seen.iter().filter_map(|e| e["event"].as_str()).collect();
        assert_eq!(kinds, ["exit", "restart", "start"], "{seen:?}");
        assert!(seen.iter().all(|e| e["service"] == "web"));
        assert!(seen[0]["code"].is_i64(), "{:?}", seen[0]);
        assert_eq!(seen[1]["restarts"], 1);
        let pid = seen[2]["pid"].as_i64().unwrap();
        assert_ne!(pid, first["pid"].as_i64().unwrap());
        assert_eq!(cage.service("web")["pid"], pid);
        assert!(seen[0]["time_ms"].as_u64().unwrap() > 1_700_000_000_000);
        // The restarted service's health: starting, then healthy again.
        until(&rx, "healthy", |e| {
            e["event"] == "health" && e["health"] == "healthy"
        });
        // Its check fails: unhealthy; it passes again: healthy.
        let ok = cage.root.join("www/ok.txt");
        std::fs::remove_file(&ok).unwrap();
        let e = until(&rx, "unhealthy", |e| e["event"] == "health")
            .pop()
            .unwrap();
        assert_eq!(e["health"], "unhealthy", "{e}");
        assert_eq!(e["previous"], "healthy", "{e}");
        std::fs::write(&ok, "OK\n").unwrap();
        let e = until(&rx, "healthy", |e| e["event"] == "health")
            .pop()
            .unwrap();
        assert_eq!(
            (e["health"].as_str(), e["previous"].as_str()),
            (Some("healthy"), Some("unhealthy"))
        );
        // A subscriber that never reads does not hold the supervisor up: it still answers
        // and restarts while one sits on its socket.
        let mut stuck = cage
            .command(&["events", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..3 {
            assert_eq!(cage.cagerun(&["restart", "web"]).code, 0);
            until(&rx, "start", |e| e["event"] == "start");
            // Healthy before the next restart: a SIGTERM in the first milliseconds of a
            // start, before cagerun init blocks signals, is dropped by the kernel (pid 1
            // without a handler) and the stop waits out the grace period.
            until(&rx, "healthy", |e| {
                e["event"] == "health" && e["health"] == "healthy"
            });
        }
        assert_eq!(cage.service("web")["restarts"], 4);
        // The stream ends when the cage goes down.
        cage.down();
        let status = child.wait().unwrap();
        assert!(status.success(), "events ended {status}");
        let _ = stuck.kill();
        let _ = stuck.wait();
        cage.assert_gone(&netns);
    }
}

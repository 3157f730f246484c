//! The default cage as users run it (issue 14): config/cage.toml's image services (onboard,
//! gateway, cli, the model) pulled from a real registry by `cagerun up -d --wait`, as root
//! and rootless. Only the image names and the model service are swapped, by a small
//! override of the shipped file's text (every replacement must match, so the test follows
//! config/cage.toml as it changes): llama.cpp's llama-server with SmolLM2 plays Ollama under
//! its name, and a scripted model (tests/stack/scripted_model.py) drives a tool call.
//!
//! The images come from tests/assets/images (debootstrap + umoci, cached by content hash)
//! and are pushed with skopeo to Debian's docker-registry on 127.0.0.1. The gateway's
//! `docker` shim is the cagerun binary itself, which must be static to run inside an image:
//! scripts/test builds one (`CAGERUN_PROFILE=dev scripts/install`) and names it in
//! $CAGERUN_STATIC_BIN.

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::cage::*;
use support::registry::Registry;
use support::*;

const OPENCLAW: &str = "ghcr.io/openclaw/openclaw:2026.9.6";

fn image_layout() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new("bash")
        .arg(repo.join("tests/assets/images"))
        .output()
        .expect("run tests/assets/images");
    assert!(
        out.status.success(),
        "tests/assets/images failed (as root, with debootstrap and umoci; scripts/test installs them): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    PathBuf::from(
        text.lines()
            .find_map(|l| l.strip_prefix("LAYOUT="))
            .expect("tests/assets/images printed no LAYOUT"),
    )
}

/// The static cagerun (scripts/test builds it); copied where the test user can run it.
fn static_bin() -> PathBuf {
    let bin = static_cagerun("image services run the shim from a static cagerun");
    let copy = bins().cagerun.with_file_name("cagerun-static");
    std::fs::copy(&bin, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    copy
}

/// `text` with `from` replaced by `to`, which must occur.
fn swap(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "config/cage.toml no longer has {from:?}: update the override"
    );
    text.replace(from, to)
}

/// config/cage.toml with the image names pointing at `registry` and the model service
/// swapped: the override, and nothing else.
fn default_cage_override(registry: &str) -> String {
    let shipped = include_str!("../config/cage.toml");
    let text = swap(
        shipped,
        OPENCLAW,
        &format!("{registry}/openclaw/openclaw:2026.9.6"),
    );
    // Ollama's model registry is not reachable offline: no `models` pull.
    let models = text
        .lines()
        .find(|l| l.starts_with("models = "))
        .expect("config/cage.toml has a models line")
        .to_string();
    let text = swap(&text, &format!("{models}\n"), "");
    let start = text.find("[services.ollama]").expect("the ollama service");
    let end = start
        + text[start..]
            .find("\n# OpenClaw")
            .expect("the section after ollama");
    let model = format!(
        r#"[services.ollama]
image = "{registry}/cagerun-test/llama:1"
command = ["/opt/llama/llama-server", "-m", "/models/SmolLM2-135M-Instruct.Q4_1.gguf", "--host", "0.0.0.0", "--port", "11434", "-c", "4096", "-np", "1", "-t", "2", "--alias", "smollm2"]
healthcheck = {{ http = ":11434/health", interval = "500ms", start_period = "60s" }}
resources = {{ memory = "1g" }}

[services.scripted]
image = "{registry}/cagerun-test/llama:1"
command = ["python3", "/app/scripted_model.py", "8000"]
mounts = [{{ src = "app", dst = "/app" }}]
env = {{ SCRIPTED_COMMAND = "echo host=$(hostname) uid=$(id -u); grep CapEff /proc/self/status; echo from-the-sandbox > /workspace/tool-call.txt" }}
healthcheck = {{ http = ":8000/health", interval = "500ms" }}
"#
    );
    format!("{}{model}{}", &text[..start], &text[end..])
}

/// The tool sandboxes' image, as `up` builds it from config/sandbox-image.toml: the shipped
/// recipe's apt steps need a mirror, so the base is the registry's Debian and the one step
/// that needs no network stays.
fn sandbox_recipe(registry: &str) -> String {
    let shipped = include_str!("../config/sandbox-image.toml");
    let useradd = shipped
        .lines()
        .find(|l| l.contains("useradd"))
        .expect("the recipe adds the sandbox user")
        .trim()
        .trim_end_matches(',');
    let text = swap(
        shipped,
        "docker.io/library/debian:bookworm-slim",
        &format!("{registry}/cagerun-test/debian:bookworm"),
    );
    let start = text.find("run = [").unwrap();
    format!("{}run = [{useradd}]\n", &text[..start])
}

fn http(port: u16, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, out.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

/// `openclaw agent` inside the gateway, from the image's own layout (/app).
fn agent_turn(cage: &Cage, agent: &str, session: &str, message: &str) -> Run {
    cage.cagerun(&[
        "exec",
        "gateway",
        "--",
        "node",
        "/app/openclaw.mjs",
        "agent",
        "--agent",
        agent,
        "--session-id",
        session,
        "--message",
        message,
        "--json",
    ])
}

#[test]
fn the_default_cage_runs_from_registry_images_root_and_rootless() {
    let _serial = serial();
    let layout = image_layout();
    let bin = static_bin();
    let registry = Registry::start();
    registry.push(&layout, "openclaw", "openclaw/openclaw:2026.9.6");
    registry.push(&layout, "llama", "cagerun-test/llama:1");
    registry.push(&layout, "base", "cagerun-test/debian:bookworm");
    let reg = registry.address();

    for mode in modes() {
        let port = free_port();
        let mut cage = Cage::new(
            mode,
            "stackimg",
            &[
                ("config/cage.toml", &default_cage_override(&reg)),
                ("config/sandbox-image.toml", &sandbox_recipe(&reg)),
                (
                    "config/openclaw/openclaw.json",
                    &include_str!("stack/openclaw.json")
                        .replace("http://model:8080/v1", "http://ollama:11434/v1"),
                ),
                (
                    ".env",
                    &format!("GATEWAY_PORT={port}\nOLLAMA_MODEL=smollm2\n"),
                ),
                ("workspace/.keep", ""),
                (
                    "app/scripted_model.py",
                    include_str!("stack/scripted_model.py"),
                ),
            ],
        );
        cage.bin = bin.clone();
        // The service user (1000 inside) writes the config directory and the workspace: as
        // root it is root's subordinate id base+1000 on the host, rootless the caller.
        let svc_ids = (mode.sandbox_host_uid(), mode.sandbox_host_gid());
        for p in [
            "config/openclaw",
            "config/openclaw/openclaw.json",
            "workspace",
        ] {
            chown_tree(&cage.root.join(p), svc_ids);
        }
        std::fs::set_permissions(
            cage.root.join(".env"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let store = TempDir::new("stackimg-store", Some(mode.caller_ids()));
        let store_arg = store.path().join("store");
        let store_arg = store_arg.to_str().unwrap();

        // Cold: pulls, the sandbox image built from its recipe, onboarding, health.
        let started = Instant::now();
        let (r, _) = cage.up_with(&["--wait", "--store", store_arg]);
        let cold = started.elapsed();
        eprintln!("[{mode:?}] image stack: cold up {cold:.1?}");
        for pulled in [
            format!("pulling {reg}/cagerun-test/llama:1 for ollama"),
            format!("pulling {reg}/openclaw/openclaw:2026.9.6 for onboard"),
        ] {
            assert!(r.stderr.contains(&pulled), "{pulled}: {}", r.stderr);
        }
        assert!(
            r.stderr.contains("building the sandbox image"),
            "{}",
            r.stderr
        );
        assert!(r.stderr.contains("running onboard"), "{}", r.stderr);
        let (code, body) = http(port, "/healthz");
        assert_eq!(
            code, 200,
            "the gateway is healthy on 127.0.0.1:{port}: {body}"
        );

        // Inside the gateway the image's files keep their owners: /app is root's, the
        // home of `node` is node's (uid 1000), as in the upstream image; the root is
        // read-only.
        let r = cage.sh_in(
            "gateway",
            "stat -c '%n %u:%g' /app /app/openclaw.mjs /home/node /etc/passwd; id -u; touch /app/x 2>&1",
        );
        for owned in [
            "/app 0:0",
            "/app/openclaw.mjs 0:0",
            "/etc/passwd 0:0",
            "/home/node 1000:1000",
        ] {
            assert!(r.stdout.contains(owned), "{owned}: {}", r.stdout);
        }
        assert!(
            r.stdout.lines().any(|l| l == "1000"),
            "the gateway runs as node: {}",
            r.stdout
        );
        assert!(r.stdout.contains("Read-only file system"), "{}", r.stdout);

        // An agent turn to the model, then a tool call through the shim and the broker.
        let turn = agent_turn(&cage, "main", "cagerun-images", "Say hello in one word.");
        assert_eq!(turn.code, 0, "{}\n{}", turn.stdout, turn.stderr);
        let reply: serde_json::Value = serde_json::from_str(&turn.stdout).expect("agent --json");
        assert_eq!(reply["status"], "ok", "{}", turn.stdout);
        assert!(
            turn.stdout.contains("\"winnerModel\": \"smollm2\""),
            "{}",
            turn.stdout
        );
        let turn = agent_turn(&cage, "tools", "cagerun-images-tools", "run the probe");
        assert_eq!(turn.code, 0, "{}\n{}", turn.stdout, turn.stderr);
        let text = serde_json::from_str::<serde_json::Value>(&turn.stdout).unwrap()["result"]
            ["payloads"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(text.contains("uid=1000"), "{text}");
        assert!(text.contains("CapEff:\t0000000000000000"), "{text}");
        assert_eq!(
            std::fs::read_to_string(cage.root.join("workspace/tool-call.txt")).unwrap(),
            "from-the-sandbox\n"
        );
        let made = std::fs::metadata(cage.root.join("workspace/tool-call.txt")).unwrap();
        assert_eq!(
            (made.uid(), made.gid()),
            svc_ids,
            "the tool's file is the service user's"
        );

        // The CLI one-shot shares the gateway's network: it reaches the gateway.
        let r = cage.cagerun(&["cli", "--store", store_arg, "--", "health", "--json"]);
        assert_eq!(r.code, 0, "cli health: {}\n{}", r.stdout, r.stderr);
        assert!(
            r.stdout.contains("\"ok\": true") || r.stdout.contains("\"ok\":true"),
            "{}",
            r.stdout
        );
        let r = cage.cagerun(&[
            "cli",
            "--store",
            store_arg,
            "--",
            "doctor",
            "--non-interactive",
        ]);
        assert_eq!(r.code, 0, "cli doctor: {}\n{}", r.stdout, r.stderr);

        let netns = cage.netns_inodes();
        cage.down();
        cage.assert_gone(&netns);

        // Warm: everything is there; no pull, no build, no onboarding.
        let started = Instant::now();
        let (r, _) = cage.up_with(&["--wait", "--store", store_arg]);
        let warm = started.elapsed();
        assert!(!r.stderr.contains("pulling"), "{}", r.stderr);
        assert!(!r.stderr.contains("building"), "{}", r.stderr);
        assert!(!r.stderr.contains("running onboard"), "{}", r.stderr);
        assert_eq!(http(port, "/healthz").0, 200);
        eprintln!("[{mode:?}] image stack: cold up {cold:.1?}, warm up {warm:.1?}");

        let netns = cage.netns_inodes();
        let r = cage.cagerun(&["down", "--volumes"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        cage.assert_gone(&netns);
        cage.id = None;
    }
}

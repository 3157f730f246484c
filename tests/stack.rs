//! The Clawbot stack end to end with real parts (issue 5): `cagerun up` runs OpenClaw from
//! npm as the gateway and llama.cpp's llama-server with SmolLM2 as the model service
//! (tests/stack/cage.toml), first run and second run, as root and rootless.
//!
//! The assets come from tests/assets/install (cached by version; `scripts/test` runs it
//! first, and this test runs it again to learn the paths).

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::cage::*;
use support::*;

struct Assets {
    node: PathBuf,
    openclaw: PathBuf,
    llama_server: PathBuf,
    gguf: PathBuf,
}

fn assets() -> Assets {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new("bash")
        .arg(repo.join("tests/assets/install"))
        .output()
        .expect("run tests/assets/install");
    assert!(
        out.status.success(),
        "tests/assets/install failed (it needs python3-venv, cmake, g++; scripts/test installs them): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let get = |k: &str| {
        let v = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("tests/assets/install printed no {k}"));
        PathBuf::from(v)
    };
    Assets {
        node: get("NODE"),
        openclaw: get("OPENCLAW"),
        llama_server: get("LLAMA_SERVER"),
        gguf: get("SMOLLM2_GGUF"),
    }
}

/// A raw HTTP/1.0 request to the host's 127.0.0.1:port: (status, body).
fn http(port: u16, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    http_body(
        port,
        method,
        path,
        token,
        if method == "POST" { "{}" } else { "" },
    )
}

fn http_body(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the gateway");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

fn token_of(env_file: &Path) -> String {
    std::fs::read_to_string(env_file)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("OPENCLAW_GATEWAY_TOKEN="))
        .expect("no token in .env")
        .to_string()
}

/// `openclaw agent` run inside the gateway (its CLI talks to the gateway over its own
/// 127.0.0.1, so the client has no route off this machine either).
fn agent_turn(cage: &Cage, agent: &str, session: &str, message: &str) -> Run {
    cage.cagerun(&[
        "exec",
        "gateway",
        "--",
        "/opt/node/bin/node",
        "/opt/openclaw/node_modules/openclaw/openclaw.mjs",
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

/// Some file under `dir` contains `needle` (OpenClaw keeps sessions in SQLite files).
fn mentions(dir: &Path, needle: &str) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let p = e.path();
            if p.is_dir() {
                mentions(&p, needle)
            } else {
                std::fs::read(&p)
                    .map(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
                    .unwrap_or(false)
            }
        })
}

fn chown_to(p: &Path, ids: (u32, u32)) {
    if is_root() {
        std::os::unix::fs::chown(p, Some(ids.0), Some(ids.1)).unwrap();
    }
}

#[test]
fn clawbot_stack_up_serves_an_agent_turn_stays_caged_and_comes_back_the_same() {
    let _serial = serial();
    let a = assets();
    for mode in modes() {
        let port = free_port();
        let dir = |p: &Path| p.parent().unwrap().display().to_string();
        let env = format!(
            "LLAMA_BIN={}\nNODE_DIR={}\nOPENCLAW_DIR={}\nMODEL_DIR={}\nGATEWAY_PORT={port}\n",
            dir(&a.llama_server),
            a.node.parent().unwrap().parent().unwrap().display(),
            a.openclaw.parent().unwrap().parent().unwrap().display(),
            dir(&a.gguf),
        );
        let mut cage = Cage::new(
            mode,
            "stack",
            &[
                ("config/cage.toml", include_str!("stack/cage.toml")),
                (
                    "config/openclaw/openclaw.json",
                    include_str!("stack/openclaw.json"),
                ),
                (".env", &env),
                ("workspace/.keep", ""),
                (
                    "app/scripted_model.py",
                    include_str!("stack/scripted_model.py"),
                ),
            ],
        );
        // As root the service user 1000 is host uid 1000: onboarding writes config/ and
        // the agent writes workspace/.
        let svc_ids = (mode.sandbox_host_uid(), mode.sandbox_host_gid());
        for p in [
            "config/openclaw",
            "config/openclaw/openclaw.json",
            "workspace",
        ] {
            chown_to(&cage.root.join(p), svc_ids);
        }
        let env_file = cage.root.join(".env");
        std::fs::set_permissions(&env_file, std::fs::Permissions::from_mode(0o644)).unwrap();

        // First run: token, onboarding, model, gateway, health, dashboard line.
        let started = Instant::now();
        let (r, _) = cage.up_with(&["--wait"]);
        eprintln!("[{mode:?}] first up took {:?}", started.elapsed());
        assert!(
            r.stderr.contains("generated OPENCLAW_GATEWAY_TOKEN"),
            "{}",
            r.stderr
        );
        assert!(r.stderr.contains("running onboard"), "{}", r.stderr);
        let token = token_of(&env_file);
        assert!(
            token.len() == 64 && token.chars().all(|c| c.is_ascii_hexdigit()),
            "the token is 32 random bytes in hex: {token:?}"
        );
        let mode_bits = std::fs::metadata(&env_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode_bits, 0o600, ".env holds the token: 0600");
        let said = format!("{}{}", r.stdout, r.stderr);
        assert_eq!(
            said.matches(&token).count(),
            1,
            "the token is printed only in the dashboard line"
        );
        assert!(
            r.stdout
                .contains(&format!("http://127.0.0.1:{port}/#token={token}")),
            "{}",
            r.stdout
        );

        // The gateway answers on 127.0.0.1 and wants the token.
        let (code, body) = http(port, "GET", "/healthz", None);
        assert_eq!(code, 200, "/healthz: {body}");
        assert!(body.contains("\"ok\":true"), "{body}");
        let (code, _) = http(port, "POST", "/tools/invoke", None);
        assert_eq!(code, 401, "no token must be refused");
        let (code, _) = http(port, "POST", "/tools/invoke", Some(&"0".repeat(64)));
        assert_eq!(code, 401, "a wrong token must be refused");
        let (code, _) = http(port, "POST", "/tools/invoke", Some(&token));
        assert_ne!(
            code, 401,
            "the right token is accepted (the probe is valid)"
        );

        // An agent turn through the gateway to the model, and back.
        let turn = agent_turn(&cage, "main", "cagerun-test", "Say hello in one word.");
        let (code, out) = (turn.code, turn.stdout);
        assert_eq!(code, 0, "openclaw agent failed: {out}");
        let reply: serde_json::Value = serde_json::from_str(&out).expect("agent --json output");
        assert_eq!(reply["status"], "ok", "{out}");
        let text = out
            .split("\"finalAssistantVisibleText\": ")
            .nth(1)
            .and_then(|t| t.split('\n').next())
            .unwrap_or("");
        assert!(text.len() > 4, "the model's answer is in the reply: {out}");
        assert!(out.contains("\"winnerModel\": \"smollm2\""), "{out}");

        // A tool call of the `tools` agent (sandbox mode "all"): OpenClaw's exec tool runs the
        // command through its docker sandbox backend, i.e. `docker` on its PATH = cagerun's
        // shim → the broker → a fresh sandbox; the output comes back into the agent's reply.
        let r = agent_turn(&cage, "tools", "cagerun-sandbox-test", "run the probe");
        assert_eq!(
            r.code, 0,
            "the tools agent's turn: {}\n{}",
            r.stdout, r.stderr
        );
        let reply: serde_json::Value =
            serde_json::from_str(&r.stdout).expect("agent --json output");
        assert_eq!(reply["status"], "ok", "{}", r.stdout);
        let text = reply["result"]["payloads"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let host = text
            .split("host=")
            .nth(1)
            .map(|h| {
                h.chars()
                    .take_while(|c| c.is_ascii_hexdigit())
                    .collect::<String>()
            })
            .unwrap_or_default();
        assert_eq!(
            host.len(),
            12,
            "the sandbox's host name (docker's: the id's first 12): {text}"
        );
        assert!(text.contains("uid=1000"), "{text}");
        assert!(text.contains("CapEff:\t0000000000000000"), "{text}");
        assert!(
            text.contains("ifaces=lo") && !text.contains("ifaces=lo e"),
            "only lo: {text}"
        );
        assert_eq!(
            std::fs::read_to_string(cage.root.join("workspace/tool-call.txt")).unwrap(),
            "from-the-sandbox\n"
        );

        // The gateway's `docker` is cagerun's shim, and its broker answers for the image the
        // cage provides (tests/sandboxes.rs drives the whole create/exec/rm cycle).
        let r = cage.cagerun(&[
            "exec",
            "gateway",
            "--",
            "sh",
            "-c",
            "command -v docker; docker image inspect openclaw-sandbox:bookworm-slim >/dev/null && echo image-ok",
        ]);
        assert_eq!(
            r.stdout.lines().collect::<Vec<_>>(),
            ["/dev/.cagerun/docker", "image-ok"],
            "{}",
            r.stderr
        );

        // Inside the gateway: the root and the config are read-only (a tmpfs is writable:
        // the probe works); the model answers by name; the host's 127.0.0.1 does not.
        let secret = host_secret_server();
        let probe = format!(
            "echo > /tmp/probe && echo tmp-writable; \
             touch /usr/probe 2>&1; (echo x >> /config/openclaw.json) 2>&1; touch /config/new 2>&1; \
             curl -s -m 5 http://model:8080/health; echo; \
             curl -s -m 3 http://127.0.0.1:{secret}/ || echo host-loopback-unreachable"
        );
        let r = cage.cagerun(&["exec", "gateway", "--", "/bin/sh", "-c", &probe]);
        assert!(r.stdout.contains("tmp-writable"), "{}", r.stdout);
        assert!(
            r.stdout
                .contains("touch: cannot touch '/usr/probe': Read-only file system"),
            "{}",
            r.stdout
        );
        assert!(
            r.stdout
                .contains("/config/openclaw.json: Read-only file system"),
            "{}",
            r.stdout
        );
        assert!(
            r.stdout.contains("/config/new': Read-only file system"),
            "{}",
            r.stdout
        );
        assert!(
            r.stdout.contains("{\"status\":\"ok\"}"),
            "model by name: {}",
            r.stdout
        );
        assert!(
            r.stdout.contains("host-loopback-unreachable"),
            "{}",
            r.stdout
        );
        assert!(!r.stdout.contains("HOSTSECRET"), "{}", r.stdout);

        // The model server is not reachable from the host: it publishes no port, and the
        // host has no interface on the cage's subnet (the bridge lives in the cage's own
        // namespace). No packet is sent to the cage address from here: off 127/8 it would
        // leave this machine by the default route.
        let ps = cage.ps();
        let model = ps.iter().find(|s| s["service"] == "model").unwrap();
        assert!(model["ports"].as_array().unwrap().is_empty());
        let addr = model["address"].as_str().unwrap().to_string();
        let subnet = &addr[..addr.rfind('.').unwrap() + 1];
        let host_addrs = Command::new("ip").args(["-o", "addr"]).output().unwrap();
        let host_addrs = String::from_utf8_lossy(&host_addrs.stdout);
        assert!(
            !host_addrs.contains(&format!(" {subnet}")),
            "the host has an address on the cage subnet {subnet}0/24: {host_addrs}"
        );
        if TcpStream::connect(("127.0.0.1", 8080)).is_ok() {
            // Something of the host's own may listen on 8080: it must not be our model.
            assert!(!http(8080, "GET", "/v1/models", None).1.contains("smollm2"));
        }

        // down leaves nothing; the processes we saw are gone.
        let pids: Vec<i64> = ps.iter().filter_map(|s| s["pid"].as_i64()).collect();
        let netns = cage.netns_inodes();
        cage.down();
        cage.assert_gone(&netns);
        for p in &pids {
            assert!(
                !Path::new(&format!("/proc/{p}")).exists(),
                "pid {p} outlived down"
            );
        }
        let state = cage.root.join(".cagerun/volumes/state");
        assert!(
            mentions(&state, "cagerun-test"),
            "the state volume holds the session after down"
        );

        // Second run: the same token, no onboarding, the same state (the session is there).
        let started = Instant::now();
        let (r, _) = cage.up_with(&["--wait"]);
        eprintln!("[{mode:?}] second up took {:?}", started.elapsed());
        assert!(!r.stderr.contains("generated"), "{}", r.stderr);
        assert!(!r.stderr.contains("running onboard"), "{}", r.stderr);
        assert_eq!(token_of(&env_file), token, "the token is reused");
        assert_eq!(http(port, "GET", "/healthz", None).0, 200);
        assert!(
            mentions(&state, "cagerun-test"),
            "the agent session of the first run is in the state volume after the second up"
        );

        // The CLI one-shot: a writable config, never a service.
        let r = cage.cagerun(&[
            "cli",
            "--",
            "config",
            "set",
            "agents.defaults.timeoutSeconds",
            "600",
        ]);
        assert_eq!(r.code, 0, "cli failed: {}", r.stderr);
        let cfg = std::fs::read_to_string(cage.root.join("config/openclaw/openclaw.json")).unwrap();
        assert!(cfg.contains("\"timeoutSeconds\": 600"), "{cfg}");
        assert!(cage.ps().iter().all(|s| s["service"] != "cli"));

        let netns = cage.netns_inodes();
        let r = cage.cagerun(&["down", "--volumes"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        cage.assert_gone(&netns);
        assert!(!state.exists(), "down --volumes removes the state");
        assert!(
            !cage.root.join(".cagerun/once").exists(),
            "and the onboarding mark"
        );
        cage.id = None;
    }
}

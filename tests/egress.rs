//! Egress by name (`internet = ["allowed.test", "host:PORT"]`), as root and rootless: a
//! service with a list reaches exactly the names on it, through cagerun's resolver (fake
//! addresses in 240.0.0.0/4, NXDOMAIN for the rest without asking upstream) and its proxy
//! (the name decided by the fake address and the TLS SNI or HTTP Host, the connection made by
//! cagerun to the address it resolved itself). Every attack below is first shown to work from
//! the host (or against an allowed target), then refused from the cage: a denied name, a
//! denied SNI on the world's address, another SNI on an allowed name's fake address (the
//! shared-CDN case), raw addresses, DNS over UDP to the world, QUIC-like UDP, a name that
//! would carry data out through the world's DNS server, another port of the host. The model
//! service and a sandbox without a list reach nothing; the listed sandbox reaches its name
//! only. Live `internet deny|allow` works without a restart (and deny cuts a live
//! connection), `cagerun egress --json` records each attempt with its verdict, and `down`
//! leaves nothing. The "internet" is tests/support/world.rs's world namespace with dnsmasq,
//! TLS/HTTP servers and a UDP recorder in it; packets only go to the world, to the host's
//! loopback listeners this test starts, or to the cage.

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::cage::*;
use support::world::{self, World};
use support::*;

const CAGE_TOML: &str = r#"
dns = ["{WORLD}"]

[services.gw]
host = true
command = ["sleep", "100000"]
internet = ["allowed.test", "host:{PORT_A}"]
env = { CAGE_MARKER = "{MARKER}" }
mounts = [{ src = "workspace", dst = "/workspace", ro = false }]

[services.gw.sandboxes]
images = { "sb:1" = "host" }
internet = ["allowed.test"]

[services.tools]
host = true
command = ["sleep", "100000"]
internet = ["allowed.test"]
mounts = [{ src = "workspace", dst = "/workspace", ro = false }]

[services.tools.sandboxes]
images = { "sb:1" = "host" }

[services.model]
host = true
command = ["sleep", "100000"]

# Anything, through the NAT uplink (slirp4netns rootless, the veth as root): lists and the
# uplink side by side in one cage.
[services.nat]
host = true
command = ["sleep", "100000"]
internet = true
"#;

fn tls(host: &str, sni: &str) -> Value {
    json!({"k": "tls", "host": host, "port": 443, "sni": sni})
}
fn http(host: &str, port: u16, hosthdr: &str) -> Value {
    json!({"k": "http", "host": host, "port": port, "hosthdr": hosthdr})
}
/// A DNS query (type A unless `qtype`) to the resolver in /etc/resolv.conf.
fn dns(name: &str) -> Value {
    json!({"k": "dns", "name": name})
}
fn dns_type(name: &str, qtype: &str) -> Value {
    json!({"k": "dns", "name": name, "type": qtype})
}
fn dns_at(name: &str, server: &str) -> Value {
    json!({"k": "dns", "name": name, "server": server})
}
fn tcp(host: &str, port: u16) -> Value {
    json!({"k": "tcp", "host": host, "port": port})
}
fn udp(host: &str, port: u16, data: &str) -> Value {
    json!({"k": "udp", "host": host, "port": port, "data": hex(data)})
}
/// A DNS query for `name` sent straight to `host:53`, not waited on.
fn dns_udp(name: &str, host: &str) -> Value {
    json!({"k": "dnsudp", "name": name, "host": host})
}
fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}
/// Unix time in seconds (the audit log's clock).
fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}
fn ok(v: &Value) -> bool {
    v["ok"] == true
}

/// The probes inside a running service (`cagerun exec SVC -- python3 -c PROBE CA SPEC...`).
fn in_service(cage: &Cage, svc: &str, ca: &str, specs: &[Value]) -> Vec<Value> {
    let argv = world::probe_argv(ca, specs);
    let mut args = vec!["exec", svc, "--"];
    args.extend(argv.iter().map(|s| s.as_str()));
    let r = cage.cagerun(&args);
    world::parse_probes(&r.stdout, specs)
}

/// The probes inside tool sandbox `name` of `svc` (through the service's docker shim).
fn in_sandbox(cage: &Cage, svc: &str, name: &str, ca: &str, specs: &[Value]) -> Vec<Value> {
    let argv = world::probe_argv(ca, specs);
    let mut args = vec!["exec", svc, "--", "docker", "exec", name];
    args.extend(argv.iter().map(|s| s.as_str()));
    let r = cage.cagerun(&args);
    world::parse_probes(&r.stdout, specs)
}

/// A tool sandbox the way OpenClaw makes one: `--network none` (the broker decides the
/// network from cage.toml, not from the flag); returns its id.
fn make_sandbox(cage: &Cage, svc: &str, name: &str) -> String {
    let r = cage.sh_in(
        svc,
        &format!("docker create --name {name} --network none -v /workspace:/workspace sb:1 sleep infinity >/dev/null && docker start {name} >/dev/null && docker inspect --format '{{{{.Id}}}}' {name}"),
    );
    assert_eq!(r.code, 0, "a sandbox of {svc}: {}", r.stderr);
    let id = r.stdout.trim().to_string();
    assert_eq!(id.len(), 64, "{id}");
    id
}

/// Each spec's outcome is refused (not `ok`).
fn assert_refused(mode: Mode, who: &str, specs: &[Value], got: &[Value]) {
    let through: Vec<_> = specs.iter().zip(got).filter(|(_, g)| ok(g)).collect();
    assert!(
        through.is_empty(),
        "[{mode:?}] {who} got through: {through:#?}"
    );
}

/// Each spec's outcome is `ok`.
fn assert_through(mode: Mode, who: &str, specs: &[Value], got: &[Value]) {
    let refused: Vec<_> = specs.iter().zip(got).filter(|(_, g)| !ok(g)).collect();
    assert!(
        refused.is_empty(),
        "[{mode:?}] {who} was refused: {refused:#?}"
    );
}

/// A plain HTTP server on the host's 127.0.0.1 answering `body` to every request; its port.
fn host_http(body: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut c = c;
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = c.write_all(
                    format!(
                        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            });
        }
    });
    port
}

/// The one address a name got from the service's resolver: a fake one, in 240.0.0.0/4.
fn fake_address(mode: Mode, got: &Value) -> String {
    let answers = got["answers"].as_array().cloned().unwrap_or_default();
    assert_eq!(answers.len(), 1, "[{mode:?}] {got}");
    let a: Ipv4Addr = answers[0].as_str().unwrap().parse().unwrap();
    assert!(a.octets()[0] >= 240, "[{mode:?}] not a fake address: {a}");
    a.to_string()
}

/// What `cagerun egress --json` says now, every line checked against the contract's shape.
fn audit(cage: &Cage) -> Vec<Value> {
    let r = cage.cagerun(&["egress", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let entries: Vec<Value> = r
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    for e in &entries {
        assert!(e["time"].is_f64() || e["time"].is_u64(), "{e}");
        let source = e["source"].as_str().unwrap_or_else(|| panic!("{e}"));
        assert!(!source.is_empty(), "{e}");
        assert!(
            ["dns", "tcp", "udp", "icmp", "other"].contains(&e["proto"].as_str().unwrap_or("")),
            "{e}"
        );
        for k in ["name", "address", "upstream"] {
            assert!(e[k].is_null() || e[k].is_string(), "{k}: {e}");
        }
        assert!(e["port"].is_null() || e["port"].is_u64(), "{e}");
        assert!(
            ["allow", "deny"].contains(&e["verdict"].as_str().unwrap_or("")),
            "{e}"
        );
        assert!(e["reason"].is_string(), "{e}");
        for k in ["sent", "received", "duration_ms"] {
            assert!(e[k].is_u64(), "{k}: {e}");
        }
        if e["proto"] == "dns" {
            assert!(e["port"].is_null(), "{e}");
            assert!(e["name"].is_string(), "{e}");
        }
    }
    entries
}

/// One audit entry the test expects: fields that must be equal (a `source` of "gw/" means
/// one of gw's sandboxes, given by `sandbox`).
struct Want {
    source: String,
    sandbox: Option<(String, String)>,
    fields: Value,
}

fn want(source: &str, fields: Value) -> Want {
    Want {
        source: source.to_string(),
        sandbox: None,
        fields,
    }
}

fn matches(w: &Want, e: &Value) -> bool {
    let source = e["source"].as_str().unwrap_or("");
    let source_ok = match &w.sandbox {
        None => source == w.source,
        // "gw/<sandbox id>": the id, a docker-style short id, or the name.
        Some((id, name)) => source.strip_prefix(&w.source).is_some_and(|s| {
            s == id.as_str() || s == name.as_str() || (s.len() >= 12 && id.starts_with(s))
        }),
    };
    source_ok
        && w.fields
            .as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| &e[k] == v)
}

fn assert_audited(mode: Mode, entries: &[Value], wants: &[Want]) {
    let missing: Vec<String> = wants
        .iter()
        .filter(|w| !entries.iter().any(|e| matches(w, e)))
        .map(|w| format!("{} {:?} {}", w.source, w.sandbox, w.fields))
        .collect();
    assert!(
        missing.is_empty(),
        "[{mode:?}] not in `cagerun egress --json`: {missing:#?}\nentries: {entries:#?}"
    );
}

/// Every process the supervisor started, directly or not (by /proc's parent links).
fn descendants(pid: i32) -> Vec<(i32, String)> {
    let mut parent = std::collections::HashMap::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "PID (COMM) STATE PPID ...": COMM may hold spaces and parentheses.
        let Some(after) = stat.rsplit_once(") ") else {
            continue;
        };
        if let Some(ppid) = after.1.split_whitespace().nth(1) {
            parent.insert(p, ppid.parse::<i32>().unwrap_or(0));
        }
    }
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (c, pp) in &parent {
            if *pp == p {
                frontier.push(*c);
                let cmd = std::fs::read(format!("/proc/{c}/cmdline")).unwrap_or_default();
                found.push((*c, String::from_utf8_lossy(&cmd).replace('\0', " ")));
            }
        }
    }
    found
}

fn nft_tables() -> std::collections::BTreeSet<String> {
    let out = std::process::Command::new("/usr/sbin/nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .collect()
}

/// The world is made on the host: root only, so this fails (never skips) without it.
fn world() -> World {
    assert!(
        is_root(),
        "the egress tests build a world network namespace on the host and need root: run them as root (scripts/test does)"
    );
    let mut w = World::new();
    w.start_egress();
    w
}

/// The world's servers alone, from the host: what every test below relies on.
#[test]
fn the_world_servers_answer_the_host() {
    let _serial = serial();
    let w = world();
    let a = w.addr.to_string();
    let r = w.probe_from_host(&[
        dns_at("allowed.test", &a),
        dns_at("secret-data-host.denied.test", &a),
        tls(&a, "allowed.test"),
        tls(&a, "wildcard.wild.test"),
        tls(&a, "other.test"),
        json!({"k": "tls", "host": a, "port": 443, "sni": "allowed.test", "path": "/bytes/1000"}),
    ]);
    assert_eq!(r[0]["answers"], json!([a]), "{r:?}");
    assert_eq!(r[1]["answers"], json!([a]), "{r:?}");
    assert!(ok(&r[2]) && ok(&r[3]), "{r:?}");
    // The certificate is checked: a name it does not carry fails.
    assert!(!ok(&r[4]), "{r:?}");
    assert!(
        r[4]["error"]
            .as_str()
            .unwrap()
            .contains("CERTIFICATE_VERIFY_FAILED"),
        "{r:?}"
    );
    assert_eq!(r[5]["body"].as_str().map(|b| b.len()), Some(1000), "{r:?}");
    w.sync_dns_log();
    assert!(w.dns_asked("secret-data-host.denied.test"));
    assert!(!w.dns_asked("never-asked.test"));
    w.sync_events();
    let events = w.events();
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("handshake 443 ") && e.ends_with("sni=wildcard.wild.test")),
        "{events:?}"
    );
    // The live-connection probe ticks until it is cut.
    let mut stream = std::process::Command::new("python3")
        .args([
            "-u",
            "-c",
            world::EGRESS_PROBE,
            &w.egress().ca_pem,
            "stream",
            &a,
            "443",
            "allowed.test",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stream.stdout.take().unwrap()));
    let first: Vec<String> = lines.by_ref().take(3).map(|l| l.unwrap()).collect();
    assert_eq!(first, ["ok 0", "ok 1", "ok 2"]);
    let _ = stream.kill();
    let _ = stream.wait();
    // The test user reads the CA (the rootless half and scripts/bench-egress need it).
    let mode = std::fs::metadata(&w.egress().ca_file).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o004,
        0o004
    );
    w.close();
}

#[test]
fn egress_by_name_allows_only_the_listed_names_and_records_each_attempt() {
    let _serial = serial();
    for mode in modes() {
        let w = world();
        let ca = w.egress().ca_pem.clone();
        let world_addr = w.addr.to_string();
        let wa = world_addr.as_str();
        let u = unique("e");
        let port_a = host_http("HOSTA");
        let port_b = host_http("HOSTB");
        let (pa, pb) = (port_a.to_string(), port_b.to_string());
        let toml = CAGE_TOML.replace("{WORLD}", wa).replace("{PORT_A}", &pa);
        let mut cage = Cage::new(
            mode,
            "egress",
            &[("config/cage.toml", &toml), ("workspace/.keep", "")],
        );

        // The probes are valid: from the host, every target below answers.
        let udp_leak = format!("udp-leak-{u}.allowed.test");
        let host_specs = [
            tls(wa, "allowed.test"),
            tls(wa, "denied.test"),
            tls(wa, "cdn-other.test"),
            http(wa, 80, "allowed.test"),
            tcp(wa, world::BANNER_PORT),
            dns_at(&format!("secret-host-{u}.denied.test"), wa),
            http("127.0.0.1", port_a, &format!("127.0.0.1:{pa}")),
            http("127.0.0.1", port_b, &format!("127.0.0.1:{pb}")),
        ];
        let r = w.probe_from_host(&host_specs);
        assert_through(mode, "the host", &host_specs, &r);
        assert_eq!(r[6]["body"], "HOSTA");
        assert_eq!(r[7]["body"], "HOSTB");
        w.probe_from_host(&[
            dns_udp(&format!("udp-host-{u}.allowed.test"), wa),
            udp(wa, 443, &format!("quic-host-{u}")),
        ]);
        w.sync_dns_log();
        assert!(w.dns_asked(&format!("udp-host-{u}.allowed.test")));
        w.sync_events();
        assert!(
            w.events()
                .iter()
                .any(|e| e.ends_with(&hex(&format!("quic-host-{u}")))),
            "{:?}",
            w.events()
        );

        // Up, internet off: the list is inactive, nothing gets out.
        let (_, supervisor) = cage.up_with(&[]);
        let netns = cage.netns_inodes();
        let off = [
            tls("allowed.test", "allowed.test"),
            tcp(wa, world::BANNER_PORT),
        ];
        let r = in_service(&cage, "gw", &ca, &off);
        assert_refused(mode, "gw with internet off", &off, &r);
        let r = cage.cagerun(&["internet", "on"]);
        assert_eq!(r.code, 0, "{}", r.stderr);

        // The `internet = true` service reaches the world's raw address through the uplink,
        // which gw (a list without it) may not: both ways out at once.
        let raw = [tcp(wa, world::BANNER_PORT)];
        let r = in_service(&cage, "nat", &ca, &raw);
        assert_through(mode, "nat (internet = true) through the uplink", &raw, &r);
        let r = in_service(&cage, "gw", &ca, &raw);
        assert_refused(mode, "gw's raw address while nat's uplink runs", &raw, &r);

        // The proxy that parses the services' bytes holds no privilege: no_new_privs, and as
        // root the user nobody (not root).
        let proxy = cage.record()["egress"]["pid"]
            .as_i64()
            .expect("egress proxy recorded");
        let status = std::fs::read_to_string(format!("/proc/{proxy}/status")).unwrap();
        assert!(status.contains("NoNewPrivs:\t1"), "{status}");
        let uid_line = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .unwrap()
            .to_string();
        match mode {
            Mode::Root => assert!(
                uid_line.split_whitespace().skip(1).all(|u| u == "65534"),
                "{uid_line}"
            ),
            Mode::Rootless { uid, .. } => assert!(
                uid_line
                    .split_whitespace()
                    .skip(1)
                    .all(|u| u == uid.to_string()),
                "{uid_line}"
            ),
        }

        // gw's resolver is cagerun's, on the cage's router.
        let resolv = cage.sh_in("gw", "cat /etc/resolv.conf").stdout;
        let servers: Vec<&str> = resolv
            .lines()
            .filter_map(|l| l.trim().strip_prefix("nameserver "))
            .map(|a| a.trim())
            .collect();
        assert!(
            servers.len() == 1 && servers[0].starts_with("10.89.") && servers[0].ends_with(".1"),
            "[{mode:?}] gw's resolv.conf: {resolv}"
        );
        let router = servers[0].to_string();

        // Allowed: allowed.test over TLS and HTTP, by name; one stable fake address; empty
        // AAAA and HTTPS answers (no ECH keys, no IPv6 way around).
        let allowed = [
            dns("allowed.test"),
            tls("allowed.test", "allowed.test"),
            http("allowed.test", 80, "allowed.test"),
            dns("allowed.test"),
            dns_type("allowed.test", "AAAA"),
            dns_type("allowed.test", "HTTPS"),
            json!({"k": "resolve", "name": "allowed.test"}),
        ];
        let r = in_service(&cage, "gw", &ca, &allowed);
        assert_through(mode, "gw to allowed.test", &allowed[..4], &r[..4]);
        let fake = fake_address(mode, &r[0]);
        assert_eq!(
            r[3]["answers"],
            json!([fake]),
            "[{mode:?}] a stable fake address"
        );
        assert_eq!(r[6]["addrs"], json!([fake]), "[{mode:?}] {:?}", r[6]);
        assert_eq!(r[1]["body"]["sni"], "allowed.test");
        assert_eq!(r[2]["body"]["host"], "allowed.test");
        assert_eq!(r[2]["body"]["port"], 80);
        for (i, t) in [(4, "AAAA"), (5, "HTTPS")] {
            assert_eq!(
                (r[i]["rcode"].as_i64(), r[i]["count"].as_i64()),
                (Some(0), Some(0)),
                "[{mode:?}] {t} of allowed.test: {:?}",
                r[i]
            );
        }
        // cagerun asked the configured upstream (the world's dnsmasq) about it.
        w.sync_dns_log();
        assert!(w.dns_asked("allowed.test"), "{:?}", w.dns_queries());

        // host:PORT_A: the host's loopback, that one port, by the docker/podman names.
        let host_ok = [
            http(
                "host.docker.internal",
                port_a,
                &format!("host.docker.internal:{pa}"),
            ),
            http(
                "host.containers.internal",
                port_a,
                &format!("host.containers.internal:{pa}"),
            ),
        ];
        let r = in_service(&cage, "gw", &ca, &host_ok);
        assert_through(mode, "gw to host:PORT_A", &host_ok, &r);
        assert_eq!(r[0]["body"], "HOSTA");
        assert_eq!(r[1]["body"], "HOSTA");

        // The attacks, all refused, and none reaches the world's servers.
        let events_before = w.events().len();
        let secret = format!("secret-data-{u}.denied.test");
        let attacks = [
            // 0: a name not on the list: NXDOMAIN, never asked upstream.
            dns("denied.test"),
            json!({"k": "resolve", "name": "denied.test"}),
            // 2: the world's address with a denied SNI (raw IP and wrong name).
            tls(wa, "denied.test"),
            // 3: allowed.test's fake address with another name the world serves (shared CDN).
            tls(&fake, "cdn-other.test"),
            http(&fake, 80, "cdn-other.test"),
            // 5: raw addresses, even with the allowed name.
            tls(wa, "allowed.test"),
            http(wa, 80, "allowed.test"),
            tcp(wa, world::BANNER_PORT),
            // 8: exfiltration through the world's DNS server.
            dns(&secret),
            dns_type(&secret, "TXT"),
            // 10: the host's other port, and host:PORT_A by the router's address.
            http(
                "host.docker.internal",
                port_b,
                &format!("host.docker.internal:{pb}"),
            ),
            http(&router, port_a, &format!("{router}:{pa}")),
            // 12: the world's DNS server over plain UDP, and QUIC-like UDP.
            dns_udp(&udp_leak, wa),
            udp(wa, 443, &format!("quic-gw-{u}")),
            // 14: allowed.test on a port the list does not give.
            json!({"k": "tls", "host": "allowed.test", "port": world::ECHO_PORT, "sni": "allowed.test"}),
        ];
        let r = in_service(&cage, "gw", &ca, &attacks);
        // The UDP sends themselves succeed (nothing answers them): judged by the world below.
        assert_refused(mode, "gw", &attacks[..12], &r[..12]);
        assert_refused(mode, "gw", &attacks[14..], &r[14..]);
        for i in [0, 8, 9] {
            assert_eq!(
                r[i]["rcode"], 3,
                "[{mode:?}] NXDOMAIN: {:?} {:?}",
                attacks[i], r[i]
            );
        }
        w.sync_dns_log();
        for name in ["denied.test", secret.as_str(), udp_leak.as_str()] {
            assert!(
                !w.dns_asked(name),
                "[{mode:?}] the world's DNS server saw {name}: {:?}",
                w.dns_queries()
            );
        }
        w.sync_events();
        let new: Vec<String> = w.events()[events_before..]
            .iter()
            .filter(|e| !e.starts_with(&format!("udp 443 {} ", w.host_addr)))
            .cloned()
            .collect();
        assert!(
            new.is_empty(),
            "[{mode:?}] refused attempts reached the world: {new:?}"
        );

        // The model service (no list) reaches nothing: no resolver answer, no TCP.
        let nothing = [
            dns_at("allowed.test", &router),
            dns("allowed.test"),
            tls(&fake, "allowed.test"),
            tls(wa, "allowed.test"),
            tcp(wa, world::BANNER_PORT),
            http(
                "host.docker.internal",
                port_a,
                &format!("host.docker.internal:{pa}"),
            ),
        ];
        let r = in_service(&cage, "model", &ca, &nothing);
        assert_refused(mode, "model", &nothing, &r);
        for a in &r[..2] {
            assert!(
                a["answers"].as_array().is_none_or(|x| x.is_empty()),
                "[{mode:?}] model: {a}"
            );
        }

        // tools has a list, its sandboxes none: tools reaches allowed.test, its sandbox nothing.
        let r = in_service(&cage, "tools", &ca, &[tls("allowed.test", "allowed.test")]);
        assert!(ok(&r[0]), "[{mode:?}] tools: {r:?}");
        make_sandbox(&cage, "tools", "t");
        let r = in_sandbox(&cage, "tools", "t", &ca, &nothing);
        assert_refused(mode, "tools' sandbox (no list)", &nothing, &r);

        // gw's sandbox (listed allowed.test): that name only.
        let sandbox_id = make_sandbox(&cage, "gw", "s");
        let sandbox_specs = [
            tls("allowed.test", "allowed.test"),
            dns("denied.test"),
            tls(&fake, "cdn-other.test"),
            tcp(wa, world::BANNER_PORT),
            http(
                "host.docker.internal",
                port_a,
                &format!("host.docker.internal:{pa}"),
            ),
            udp(wa, 443, &format!("quic-sandbox-{u}")),
        ];
        let r = in_sandbox(&cage, "gw", "s", &ca, &sandbox_specs);
        assert!(ok(&r[0]), "[{mode:?}] gw's sandbox to allowed.test: {r:?}");
        assert_eq!(r[1]["rcode"], 3, "[{mode:?}] {r:?}");
        assert_refused(mode, "gw's sandbox", &sandbox_specs[1..5], &r[1..5]);
        let sandbox_resolv = cage
            .cagerun(&[
                "exec",
                "gw",
                "--",
                "docker",
                "exec",
                "s",
                "cat",
                "/etc/resolv.conf",
            ])
            .stdout;
        // Its resolver is cagerun's too (a cage router's address).
        let sandbox_servers: Vec<&str> = sandbox_resolv
            .lines()
            .filter_map(|l| l.trim().strip_prefix("nameserver "))
            .collect();
        assert!(
            sandbox_servers.len() == 1
                && sandbox_servers[0].trim().starts_with("10.89.")
                && sandbox_servers[0].trim().ends_with(".1"),
            "[{mode:?}] the sandbox's resolv.conf: {sandbox_resolv}"
        );
        w.sync_events();
        assert!(
            !w.events()
                .iter()
                .any(|e| e.contains(&hex(&format!("quic-sandbox-{u}")))
                    || e.contains(&hex(&format!("quic-gw-{u}")))),
            "[{mode:?}] UDP reached the world: {:?}",
            w.events()
        );

        // Live edits, no restart: deny cuts a live connection and the name; allow restores it.
        let mut args: Vec<String> = [
            "exec",
            "gw",
            "--",
            "python3",
            "-u",
            "-c",
            world::EGRESS_PROBE,
            ca.as_str(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(["stream", "allowed.test", "443", "allowed.test"].map(String::from));
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let mut live = cage
            .command(&args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = Stream::of(live.stdout.take().unwrap());
        out.wait_for(Duration::from_secs(20), |s| s.contains("ok 3"));
        let seen = out.seen.clone();
        if !seen.contains("ok 3") {
            // Whether the resolver still answers tells a lost lookup from a dead path.
            let again = in_service(&cage, "gw", &ca, &[dns("allowed.test")]);
            let log = audit(&cage);
            let tail: Vec<String> = log[log.len().saturating_sub(16)..]
                .iter()
                .map(|e| e.to_string())
                .collect();
            panic!(
                "[{mode:?}] the live connection works first: {seen}\nthe lookup again: {again:?}\nlast entries:\n{}",
                tail.join("\n")
            );
        }
        let r = cage.cagerun(&["internet", "deny", "gw", "allowed.test"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let status = live.wait().unwrap();
        let seen = out.rest(Duration::from_secs(2)).to_string();
        assert!(status.success(), "{seen}");
        assert!(
            seen.contains("cut:"),
            "[{mode:?}] deny cut the live connection: {seen}"
        );
        assert!(!seen.contains("done"), "{seen}");
        let denied_now = [
            dns("allowed.test"),
            tls("allowed.test", "allowed.test"),
            tls(&fake, "allowed.test"),
        ];
        let r = in_service(&cage, "gw", &ca, &denied_now);
        assert_refused(mode, "gw after deny", &denied_now, &r);
        assert_eq!(r[0]["rcode"], 3, "[{mode:?}] {r:?}");
        let r = cage.cagerun(&["internet", "allow", "gw", "allowed.test"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let r = in_service(
            &cage,
            "gw",
            &ca,
            &[dns("allowed.test"), tls("allowed.test", "allowed.test")],
        );
        assert!(ok(&r[1]), "[{mode:?}] allowed again: {r:?}");
        assert_eq!(
            r[0]["answers"],
            json!([fake]),
            "[{mode:?}] the same fake address"
        );
        let r = cage.cagerun(&["internet", "allow", "gw", "cdn-other.test"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let r = in_service(
            &cage,
            "gw",
            &ca,
            &[
                dns("cdn-other.test"),
                tls("cdn-other.test", "cdn-other.test"),
            ],
        );
        assert!(ok(&r[1]), "[{mode:?}] cdn-other.test once allowed: {r:?}");
        let other_fake = fake_address(mode, &r[0]);
        assert_ne!(other_fake, fake, "[{mode:?}] two names, one fake address");
        // Both allowed, the names still must match their addresses.
        let crossed = [
            tls(&fake, "cdn-other.test"),
            tls(&other_fake, "allowed.test"),
        ];
        let r = in_service(&cage, "gw", &ca, &crossed);
        assert_refused(mode, "gw, crossed names", &crossed, &r);
        // A wildcard: any subdomain, not the domain itself.
        let r = cage.cagerun(&["internet", "allow", "gw", "*.wild.test"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let wild = [
            tls("a.wild.test", "a.wild.test"),
            dns("a.wild.test"),
            dns("wild.test"),
        ];
        let r = in_service(&cage, "gw", &ca, &wild);
        assert!(ok(&r[0]), "[{mode:?}] *.wild.test: {r:?}");
        fake_address(mode, &r[1]);
        assert_eq!(
            r[2]["rcode"], 3,
            "[{mode:?}] *.wild.test opened wild.test: {r:?}"
        );
        w.sync_dns_log();
        assert!(!w.dns_asked("wild.test"), "{:?}", w.dns_queries());
        // An address entry opens that address and port, whatever the protocol (the world's
        // banner speaks first: no name to wait for); deny closes it again.
        let before_address_entry = now();
        let entry = format!("{wa}:{}", world::BANNER_PORT);
        let r = cage.cagerun(&["internet", "allow", "gw", &entry]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let r = in_service(
            &cage,
            "gw",
            &ca,
            &[tcp(wa, world::BANNER_PORT), tcp(wa, world::ECHO_PORT)],
        );
        assert_eq!(r[0]["banner"], "WORLD", "[{mode:?}] {entry} allowed: {r:?}");
        assert!(
            !ok(&r[1]),
            "[{mode:?}] another port of a listed address: {r:?}"
        );
        let r = cage.cagerun(&["internet", "deny", "gw", &entry]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let r = in_service(&cage, "gw", &ca, &[tcp(wa, world::BANNER_PORT)]);
        assert!(!ok(&r[0]), "[{mode:?}] {entry} denied again: {r:?}");
        assert_eq!(
            cage.record()["supervisor"]["pid"].as_i64(),
            Some(supervisor as i64)
        );
        assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(supervisor), None).is_ok());

        // The audit log: one entry per attempt, with its verdict.
        let entries = audit(&cage);
        let d = |name: &str, verdict: &str| {
            want(
                "gw",
                json!({"proto": "dns", "name": name, "verdict": verdict}),
            )
        };
        let t = |f: Value| want("gw", f);
        let mut wants = vec![
            d("allowed.test", "allow"),
            d("denied.test", "deny"),
            d(&secret, "deny"),
            d("cdn-other.test", "allow"),
            t(
                json!({"proto": "tcp", "name": "allowed.test", "port": 443, "upstream": wa, "verdict": "allow"}),
            ),
            t(
                json!({"proto": "tcp", "name": "allowed.test", "port": 80, "upstream": wa, "verdict": "allow"}),
            ),
            t(
                json!({"proto": "tcp", "name": "cdn-other.test", "port": 443, "upstream": wa, "verdict": "allow"}),
            ),
            t(json!({"proto": "tcp", "address": wa, "port": 443, "verdict": "deny"})),
            t(json!({"proto": "tcp", "address": wa, "port": 80, "verdict": "deny"})),
            t(
                json!({"proto": "tcp", "address": wa, "port": world::BANNER_PORT, "verdict": "deny"}),
            ),
            t(json!({"proto": "tcp", "address": fake, "port": 443, "verdict": "deny"})),
            t(json!({"proto": "tcp", "address": fake, "port": 80, "verdict": "deny"})),
            t(json!({"proto": "tcp", "port": world::ECHO_PORT, "verdict": "deny"})),
            t(
                // The host's fake address stands for all its names: logged as `host`.
                json!({"proto": "tcp", "name": "host", "port": port_a, "upstream": "127.0.0.1", "verdict": "allow"}),
            ),
            t(json!({"proto": "tcp", "port": port_b, "verdict": "deny"})),
            t(json!({"proto": "udp", "address": wa, "port": 53, "verdict": "deny"})),
            t(json!({"proto": "udp", "address": wa, "port": 443, "verdict": "deny"})),
            t(
                json!({"proto": "tcp", "name": "a.wild.test", "port": 443, "upstream": wa, "verdict": "allow"}),
            ),
            d("wild.test", "deny"),
            t(
                json!({"proto": "tcp", "address": wa, "port": world::BANNER_PORT, "upstream": wa, "verdict": "allow"}),
            ),
        ];
        for fields in [
            json!({"proto": "dns", "name": "allowed.test", "verdict": "allow"}),
            json!({"proto": "tcp", "name": "allowed.test", "port": 443, "upstream": wa, "verdict": "allow"}),
            json!({"proto": "dns", "name": "denied.test", "verdict": "deny"}),
            json!({"proto": "tcp", "address": wa, "port": world::BANNER_PORT, "verdict": "deny"}),
        ] {
            wants.push(Want {
                source: "gw/".into(),
                sandbox: Some((sandbox_id.clone(), "s".into())),
                fields,
            });
        }
        assert_audited(mode, &entries, &wants);
        // Nothing denied is recorded as allowed, and allowed connections carried bytes.
        for e in &entries {
            let name = e["name"].as_str().unwrap_or("");
            let raw_banner = e["port"] == world::BANNER_PORT
                && e["time"].as_f64().unwrap_or(0.0) < before_address_entry;
            if name == "denied.test" || name == secret || raw_banner {
                assert_eq!(e["verdict"], "deny", "[{mode:?}] {e}");
            }
            // (A banner server speaks first: its client may send nothing.)
            if e["proto"] == "tcp" && e["verdict"] == "allow" {
                assert!(e["received"].as_u64() > Some(0), "{e}");
            }
            if e["source"] == "model"
                || e["source"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("tools/"))
            {
                assert_eq!(e["verdict"], "deny", "[{mode:?}] {e}");
            }
        }

        // `egress -f` follows: a new attempt shows up while it runs.
        let mut follow = cage
            .command(&["egress", "--json", "-f"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut fout = Stream::of(follow.stdout.take().unwrap());
        std::thread::sleep(Duration::from_millis(500));
        let late = format!("follow-{u}.denied.test");
        in_service(&cage, "gw", &ca, &[dns(&late)]);
        fout.wait_for(Duration::from_secs(10), |s| s.contains(&late));
        let followed = fout.seen.clone();
        let _ = follow.kill();
        let _ = follow.wait();
        assert!(followed.contains(&late), "[{mode:?}] egress -f: {followed}");

        // Internet off: the list is inactive again.
        let r = cage.cagerun(&["internet", "off"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let r = in_service(&cage, "gw", &ca, &off);
        assert_refused(mode, "gw after internet off", &off, &r);

        // `down` leaves nothing: no process the supervisor started (the resolver, the proxy),
        // no nft table, no namespace.
        let procs = descendants(supervisor);
        let rec = cage.record();
        cage.down();
        let deadline = Instant::now() + Duration::from_secs(5);
        let alive = || {
            procs
                .iter()
                .filter(|(p, cmd)| {
                    std::fs::read(format!("/proc/{p}/cmdline"))
                        .is_ok_and(|c| String::from_utf8_lossy(&c).replace('\0', " ") == *cmd)
                })
                .cloned()
                .collect::<Vec<_>>()
        };
        // `down` returns once the supervisor answered; it exits a moment later.
        let supervisor_alive =
            || nix::sys::signal::kill(nix::unistd::Pid::from_raw(supervisor), None).is_ok();
        while (!alive().is_empty() || supervisor_alive()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(alive().is_empty(), "[{mode:?}] left running: {:?}", alive());
        assert!(!supervisor_alive(), "the supervisor is still running");
        // The host's tables are named after the cage ("cagerun-ID", '-' as '_').
        let id = cage.id().to_string();
        let left: Vec<String> = nft_tables()
            .into_iter()
            .filter(|t| t.contains(&id) || t.contains(&id.replace('-', "_")))
            .collect();
        assert!(left.is_empty(), "[{mode:?}] nft tables left: {left:?}");
        if let Some(table) = rec["host_uplink"][1].as_str() {
            assert!(
                !nft_tables()
                    .iter()
                    .any(|t| t.ends_with(&format!(" {table}"))),
                "{table} left"
            );
        }
        if let Some(veth) = rec["host_uplink"][0].as_str() {
            assert!(
                !std::path::Path::new(&format!("/sys/class/net/{veth}")).exists(),
                "{veth} left"
            );
        }
        cage.assert_gone(&netns);
        w.close();
    }
}

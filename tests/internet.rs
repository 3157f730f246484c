//! Internet mode, as root and rootless: a service with `internet = true` reaches out through
//! the cage's NAT uplink only while internet is on (`up --internet`, `cagerun internet
//! on|off`, live); a service without it and every tool sandbox never do; off cuts a live
//! connection; `down` leaves no uplink process, veth or nft table. The "internet" here is a
//! server on the host's 127.0.0.1, reached through the uplink's host-loopback address (tests
//! never send packets anywhere else).

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use support::cage::*;
use support::*;

const CAGE_TOML: &str = r#"
[services.gw]
host = true
command = ["sleep", "100000"]
internet = true
env = { CAGE_MARKER = "{MARKER}" }
mounts = [{ src = "workspace", dst = "/workspace", ro = false }]

[services.gw.sandboxes]
images = { "sb:1" = "host" }

[services.model]
host = true
command = ["sleep", "100000"]
"#;

/// A one-line TCP probe run inside a service: "connected:<what the server said>" or
/// "failed:<error>".
fn probe(addr: &str, port: u16) -> String {
    format!(
        "python3 -c \"import socket\ntry:\n s=socket.create_connection(('{addr}',{port}),timeout=3); print('connected:'+s.recv(64).decode())\nexcept Exception as e: print('failed:'+type(e).__name__)\""
    )
}

fn in_service(cage: &Cage, svc: &str, script: &str) -> String {
    let r = cage.cagerun(&["exec", svc, "--", "sh", "-c", script]);
    r.stdout.trim().to_string()
}

/// A host 127.0.0.1 echo server: every line comes back.
fn echo_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut c = c;
                let mut buf = [0u8; 256];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

#[test]
fn internet_mode_is_live_only_for_internet_services_and_leaves_nothing() {
    let _serial = serial();
    for mode in modes() {
        let secret = host_secret_server();
        let echo = echo_server();
        let mut cage = Cage::new(
            mode,
            "inet",
            &[("config/cage.toml", CAGE_TOML), ("workspace/.keep", "")],
        );

        // Off by default: the service has no way out.
        let (up, supervisor) = cage.up_with(&[]);
        assert_eq!(up.code, 0);
        let netns = cage.netns_inodes();
        assert_eq!(cage.cagerun(&["internet"]).stdout.trim(), "internet: off");
        let r = cage.cagerun(&["internet", "on"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        // "internet: on for gw (uplink: KIND; the host's 127.0.0.1 is ADDR inside)"
        let host = r
            .stdout
            .split("127.0.0.1 is ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or_else(|| panic!("{}", r.stdout))
            .to_string();
        let expected_uplink = match mode {
            Mode::Root => "veth + nft masquerade",
            Mode::Rootless { .. } => "slirp4netns",
        };
        assert!(r.stdout.contains(expected_uplink), "{}", r.stdout);
        assert!(r.stdout.starts_with("internet: on for gw "), "{}", r.stdout);
        // On: the internet service reaches the host server through the uplink...
        assert_eq!(
            in_service(&cage, "gw", &probe(&host, secret)),
            "connected:HOSTSECRET"
        );
        // Its resolver is the uplink's (slirp4netns's DNS, or the host's upstream servers as
        // root), never a loopback address it could not reach.
        let resolv = in_service(&cage, "gw", "cat /etc/resolv.conf");
        assert!(resolv.starts_with("nameserver "), "{resolv}");
        assert!(!resolv.contains("nameserver 127."), "{resolv}");
        if let Mode::Rootless { .. } = mode {
            assert_eq!(resolv, "nameserver 10.0.2.3");
        }
        // ...the other service does not (no route), nor does a tool sandbox (only lo).
        assert!(in_service(&cage, "model", &probe(&host, secret)).starts_with("failed:"));
        let sandbox = in_service(
            &cage,
            "gw",
            &format!(
                "docker create --name s --network none -v /workspace:/workspace sb:1 sleep infinity >/dev/null && docker start s >/dev/null && docker exec s sh -c '{}'",
                probe(&host, secret).replace('\'', "'\\''")
            ),
        );
        assert!(
            sandbox.starts_with("failed:"),
            "a sandbox got out: {sandbox}"
        );

        // A live connection, then internet off: it is cut, and new ones fail.
        let client = format!(
            "python3 -u -c \"import socket,time\ns=socket.create_connection(('{host}',{echo}),timeout=3)\nfor i in range(100):\n try:\n  s.sendall(b'ping'); d=s.recv(16)\n  if not d: print('cut:eof'); break\n  print('ok', i)\n except Exception as e: print('cut:'+type(e).__name__); break\n time.sleep(0.1)\""
        );
        let mut live = cage
            .command(&["exec", "gw", "--", "sh", "-c", &client])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = live.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut all = String::new();
            let mut buf = [0u8; 256];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                all.push_str(&String::from_utf8_lossy(&buf[..n]));
                let _ = tx.send(all.clone());
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = String::new();
        while !seen.contains("ok 2") && Instant::now() < deadline {
            if let Ok(s) = rx.recv_timeout(Duration::from_millis(200)) {
                seen = s;
            }
        }
        assert!(
            seen.contains("ok 2"),
            "the live connection works first: {seen}"
        );
        let r = cage.cagerun(&["internet", "off"]);
        assert_eq!(r.stdout.trim(), "internet: off", "{}", r.stderr);
        let status = live.wait().unwrap();
        while let Ok(s) = rx.recv_timeout(Duration::from_millis(500)) {
            seen = s;
        }
        assert!(status.success(), "{seen}");
        assert!(
            seen.contains("cut:"),
            "internet off cut the live connection: {seen}"
        );
        assert!(!seen.contains("ok 99"), "{seen}");
        assert!(in_service(&cage, "gw", &probe(&host, secret)).starts_with("failed:"));

        // Off and on again, live: no restart (the same supervisor).
        let r = cage.cagerun(&["internet", "on"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(
            in_service(&cage, "gw", &probe(&host, secret)),
            "connected:HOSTSECRET"
        );
        assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(supervisor), None).is_ok());

        // What internet mode made is recorded, and `down` removes it.
        let rec = cage.record();
        let uplink_pid = rec["uplink"]["pid"].as_i64();
        let host_uplink = rec["host_uplink"].clone();
        match mode {
            Mode::Root => {
                let (veth, table) = (
                    host_uplink[0].as_str().unwrap().to_string(),
                    host_uplink[1].as_str().unwrap().to_string(),
                );
                assert!(std::path::Path::new(&format!("/sys/class/net/{veth}")).exists());
                assert!(nft_tables().contains(&table));
                cage.down();
                assert!(!std::path::Path::new(&format!("/sys/class/net/{veth}")).exists());
                assert!(!nft_tables().contains(&table), "{table} left");
            }
            Mode::Rootless { .. } => {
                let pid = uplink_pid.expect("slirp4netns recorded") as i32;
                assert!(std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                    .unwrap()
                    .contains("slirp4netns"));
                cage.down();
                let gone = Instant::now() + Duration::from_secs(5);
                while std::path::Path::new(&format!("/proc/{pid}")).exists()
                    && Instant::now() < gone
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                assert!(
                    !std::path::Path::new(&format!("/proc/{pid}")).exists(),
                    "slirp4netns left"
                );
            }
        }
        cage.assert_gone(&netns);

        // `up --internet` starts with it on.
        cage.up_with(&["--internet"]);
        let netns = cage.netns_inodes();
        assert!(cage
            .cagerun(&["internet"])
            .stdout
            .starts_with("internet: on"));
        assert_eq!(
            in_service(&cage, "gw", &probe(&host, secret)),
            "connected:HOSTSECRET"
        );
        cage.down();
        cage.assert_gone(&netns);
    }
}

#[test]
fn internet_on_without_an_internet_service_is_a_clear_error() {
    let _serial = serial();
    for mode in modes() {
        let mut cage = Cage::new(
            mode,
            "noinet",
            &[(
                "config/cage.toml",
                "[services.a]\nhost = true\ncommand = [\"sleep\", \"100000\"]\nenv = { M = \"{MARKER}\" }\n",
            )],
        );
        cage.up();
        let netns = cage.netns_inodes();
        let r = cage.cagerun(&["internet", "on"]);
        assert_eq!(r.code, 125, "{}", r.stdout);
        assert!(r.stderr.contains("internet = true"), "{}", r.stderr);
        assert_eq!(cage.cagerun(&["internet"]).stdout.trim(), "internet: off");
        cage.down();
        cage.assert_gone(&netns);
    }
}

fn nft_tables() -> String {
    let out = std::process::Command::new("/usr/sbin/nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

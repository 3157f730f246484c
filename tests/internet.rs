//! Internet mode, as root and rootless: a service with `internet = true` reaches out through
//! the cage's NAT uplink only while internet is on (`up --internet`, `cagerun internet
//! on|off`, live); a service without it and every tool sandbox never do; off cuts a live
//! connection; `down` leaves no uplink process, veth or nft table. The "internet" is a world
//! network namespace the test makes (tests/support/world.rs: a veth from the host, a server
//! in 198.18.0.0/15). And internet means the internet: the host's loopback and the host's
//! own addresses are never reachable from a cage, with internet on or off. Packets only ever
//! go to the world or to the host itself.

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use support::cage::*;
use support::world::{self, World};
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

/// slirp4netns's gateway: the host's 127.0.0.1 unless `--disable-host-loopback`.
const SLIRP_HOST: &str = "10.0.2.2";

/// A one-line TCP probe run inside a service: "connected:<what the server said>" or
/// "failed:<error>".
fn probe(addr: &str, port: u16) -> String {
    format!(
        "python3 -c \"import socket\ntry:\n s=socket.create_connection(('{addr}',{port}),timeout=3); print('connected:'+s.recv(64).decode())\nexcept Exception as e: print('failed:'+type(e).__name__)\""
    )
}

/// Several TCP probes at once inside a service (2 s each, in parallel: a dropped SYN costs
/// its timeout once): "ADDR:PORT connected:<banner>" or "ADDR:PORT failed:<error>" per target.
const PROBES: &str = r#"
import socket, sys, threading
out = {}
def probe(t):
    h, p = t.rsplit(':', 1)
    try:
        s = socket.create_connection((h, int(p)), timeout=2)
        s.settimeout(2)
        out[t] = 'connected:' + s.recv(64).decode()
    except Exception as e:
        out[t] = 'failed:' + type(e).__name__
ts = [threading.Thread(target=probe, args=(t,)) for t in sys.argv[1:]]
for t in ts: t.start()
for t in ts: t.join()
for t in sys.argv[1:]: print(t, out[t])
"#;

fn in_service(cage: &Cage, svc: &str, script: &str) -> String {
    let r = cage.cagerun(&["exec", svc, "--", "sh", "-c", script]);
    r.stdout.trim().to_string()
}

/// Each target's outcome from inside `svc`, in order.
fn probe_all(cage: &Cage, svc: &str, targets: &[String]) -> Vec<(String, String)> {
    let mut args = vec!["exec", svc, "--", "python3", "-c", PROBES];
    args.extend(targets.iter().map(|t| t.as_str()));
    let r = cage.cagerun(&args);
    let got: Vec<(String, String)> = r
        .stdout
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(t, o)| (t.to_string(), o.to_string()))
        .collect();
    assert_eq!(got.len(), targets.len(), "{}\n{}", r.stdout, r.stderr);
    got
}

/// None of `targets` answers `svc`.
fn assert_unreachable(cage: &Cage, svc: &str, targets: &[String], when: &str) {
    let reached: Vec<_> = probe_all(cage, svc, targets)
        .into_iter()
        .filter(|(_, o)| !o.starts_with("failed:"))
        .collect();
    assert!(
        reached.is_empty(),
        "[{:?}] {svc} reached the host ({when}): {reached:?}",
        cage.mode
    );
}

/// A server on the host answering `banner` on every connection, bound to `addr` (port 0:
/// any free one); returns its port.
fn banner_server(addr: Ipv4Addr, port: u16, banner: &'static str) -> u16 {
    let l = TcpListener::bind((addr, port)).unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let mut c = c;
            let _ = c.write_all(banner.as_bytes());
        }
    });
    port
}

/// The probe is valid: from the host, `addr:port` answers `banner`.
fn assert_answers(addr: Ipv4Addr, port: u16, banner: &str) {
    let mut s = TcpStream::connect_timeout(&(addr, port).into(), Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("the host cannot reach its own {addr}:{port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    assert_eq!(got, banner, "{addr}:{port}");
}

/// The host's own non-loopback addresses an attacker would aim at, with the world's host end
/// among them; without other cages' and other worlds' links (they may vanish mid-test, and a
/// probe to a vanished address would leave the host).
fn host_addresses(w: &World) -> Vec<Ipv4Addr> {
    let mut found: Vec<Ipv4Addr> = world::host_interface_addresses()
        .into_iter()
        .filter(|(dev, a)| {
            !a.is_loopback()
                && (dev == &w.host_if || !(dev.starts_with("cagerun") || dev.starts_with("cgw")))
        })
        .map(|(_, a)| a)
        .collect();
    found.sort();
    found.dedup();
    assert!(found.contains(&w.host_addr), "{found:?}");
    found
}

/// As root, the uplink veth's host end and its address (from the cage's record).
fn uplink_veth(cage: &Cage) -> (String, String, Ipv4Addr) {
    let rec = cage.record();
    let veth = rec["host_uplink"][0].as_str().unwrap().to_string();
    let table = rec["host_uplink"][1].as_str().unwrap().to_string();
    let addr = world::host_interface_addresses()
        .into_iter()
        .find(|(dev, _)| *dev == veth)
        .map(|(_, a)| a)
        .unwrap_or_else(|| panic!("{veth} has no address"));
    (veth, table, addr)
}

#[test]
fn internet_mode_is_live_only_for_internet_services_and_leaves_nothing() {
    let _serial = serial();
    for mode in modes() {
        let Some(w) = world_or_skip() else { return };
        let world = w.addr.to_string();
        let banner = world::BANNER_PORT;
        let echo = world::ECHO_PORT;
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
        assert!(in_service(&cage, "gw", &probe(&world, banner)).starts_with("failed:"));
        let r = cage.cagerun(&["internet", "on"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let expected_uplink = match mode {
            Mode::Root => "veth + nft masquerade",
            Mode::Rootless { .. } => "slirp4netns",
        };
        assert!(r.stdout.contains(expected_uplink), "{}", r.stdout);
        assert!(r.stdout.starts_with("internet: on for gw "), "{}", r.stdout);
        // On: the internet service reaches the world through the uplink...
        assert_eq!(
            in_service(&cage, "gw", &probe(&world, banner)),
            "connected:WORLD"
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
        assert!(in_service(&cage, "model", &probe(&world, banner)).starts_with("failed:"));
        let sandbox = in_service(
            &cage,
            "gw",
            &format!(
                "docker create --name s --network none -v /workspace:/workspace sb:1 sleep infinity >/dev/null && docker start s >/dev/null && docker exec s sh -c '{}'",
                probe(&world, banner).replace('\'', "'\\''")
            ),
        );
        assert!(
            sandbox.starts_with("failed:"),
            "a sandbox got out: {sandbox}"
        );

        // A live connection, then internet off: it is cut, and new ones fail.
        let client = format!(
            "python3 -u -c \"import socket,time\ns=socket.create_connection(('{world}',{echo}),timeout=3)\nfor i in range(100):\n try:\n  s.sendall(b'ping'); d=s.recv(16)\n  if not d: print('cut:eof'); break\n  print('ok', i)\n except Exception as e: print('cut:'+type(e).__name__); break\n time.sleep(0.1)\""
        );
        let mut live = cage
            .command(&["exec", "gw", "--", "sh", "-c", &client])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = Stream::of(live.stdout.take().unwrap());
        let worked = out.wait_for(Duration::from_secs(20), |s| s.contains("ok 2"));
        assert!(worked, "the live connection works first: {}", out.seen);
        let r = cage.cagerun(&["internet", "off"]);
        assert_eq!(r.stdout.trim(), "internet: off", "{}", r.stderr);
        let status = live.wait().unwrap();
        let seen = out.rest(Duration::from_secs(2)).to_string();
        assert!(status.success(), "{seen}");
        assert!(
            seen.contains("cut:"),
            "internet off cut the live connection: {seen}"
        );
        assert!(!seen.contains("ok 99"), "{seen}");
        assert!(in_service(&cage, "gw", &probe(&world, banner)).starts_with("failed:"));

        // Off and on again, live: no restart (the same supervisor).
        let r = cage.cagerun(&["internet", "on"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(
            in_service(&cage, "gw", &probe(&world, banner)),
            "connected:WORLD"
        );
        assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(supervisor), None).is_ok());

        // What internet mode made is recorded, and `down` removes it.
        let rec = cage.record();
        match mode {
            Mode::Root => {
                let veth = rec["host_uplink"][0].as_str().unwrap();
                let table = rec["host_uplink"][1].as_str().unwrap();
                assert!(std::path::Path::new(&format!("/sys/class/net/{veth}")).exists());
                assert!(nft_tables().contains(table));
            }
            Mode::Rootless { .. } => {
                let pid = rec["uplink"]["pid"].as_i64().expect("slirp4netns recorded");
                assert!(std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                    .unwrap()
                    .contains("slirp4netns"));
            }
        }
        cage.down();
        assert_uplink_gone(&rec);
        cage.assert_gone(&netns);

        // `up --internet` starts with it on.
        cage.up_with(&["--internet"]);
        let netns = cage.netns_inodes();
        assert!(cage
            .cagerun(&["internet"])
            .stdout
            .starts_with("internet: on"));
        assert_eq!(
            in_service(&cage, "gw", &probe(&world, banner)),
            "connected:WORLD"
        );
        let rec = cage.record();
        cage.down();
        cage.assert_gone(&netns);
        assert_uplink_gone(&rec);
        w.close();
    }
}

/// The hole this closes: with internet on, the gateway reached every listener on the host's
/// loopback (slirp4netns's 10.0.2.2, or the uplink veth's host end DNAT-ed to 127.0.0.1 as
/// root) and every host address. Now none of them answers, on or off, while the world does.
#[test]
fn the_host_is_unreachable_from_the_cage_with_internet_on_or_off() {
    let _serial = serial();
    for mode in modes() {
        let Some(mut w) = world_or_skip() else { return };
        let world_target = format!("{}:{}", w.addr, world::BANNER_PORT);
        // Servers only the host should reach: one on its loopback, one on every address.
        let loopback = host_secret_server();
        let any = banner_server(Ipv4Addr::UNSPECIFIED, 0, "HOSTANY");
        let addrs = host_addresses(&w);
        for a in &addrs {
            assert_answers(*a, any, "HOSTANY");
        }
        let mut targets: Vec<String> = addrs.iter().map(|a| format!("{a}:{any}")).collect();
        if let Mode::Rootless { .. } = mode {
            // slirp4netns's alias for the host's loopback.
            targets.push(format!("{SLIRP_HOST}:{loopback}"));
            targets.push(format!("{SLIRP_HOST}:{any}"));
        }
        let mut cage = Cage::new(
            mode,
            "hostgap",
            &[("config/cage.toml", CAGE_TOML), ("workspace/.keep", "")],
        );
        cage.up_with(&[]);
        let netns = cage.netns_inodes();
        assert!(cage.record()["host_uplink"].is_null());

        // Never on: nothing.
        assert_unreachable(&cage, "gw", &targets, "internet never on");

        // On: the world answers, the host does not; neither does it to the other service.
        let r = cage.cagerun(&["internet", "on"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let uplink = if let Mode::Root = mode {
            let (veth, table, uplink_host) = uplink_veth(&cage);
            // A listener on the uplink's own host end, and the DNAT way to 127.0.0.1.
            let on_uplink = banner_server(uplink_host, 0, "UPLINKHOST");
            assert_answers(uplink_host, on_uplink, "UPLINKHOST");
            assert_answers(uplink_host, any, "HOSTANY");
            targets.push(format!("{uplink_host}:{loopback}"));
            targets.push(format!("{uplink_host}:{any}"));
            targets.push(format!("{uplink_host}:{on_uplink}"));
            Some((veth, table, uplink_host))
        } else {
            None
        };
        let mut all = targets.clone();
        all.push(world_target.clone());
        let got = probe_all(&cage, "gw", &all);
        assert_eq!(
            got.last().unwrap().1,
            "connected:WORLD",
            "the world is reachable (the rules do not just break everything): {got:?}"
        );
        let reached: Vec<_> = got[..targets.len()]
            .iter()
            .filter(|(_, o)| !o.starts_with("failed:"))
            .collect();
        assert!(
            reached.is_empty(),
            "[{mode:?}] gw reached the host: {reached:?}"
        );
        assert_unreachable(&cage, "model", &targets, "internet on, no internet service");
        if let Some((veth, table, uplink_host)) = uplink {
            // 127.0.0.1 through the veth is a martian the host drops (no route_localnet, no
            // DNAT), whatever reaches the veth.
            let sysctl =
                std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{veth}/route_localnet"))
                    .unwrap();
            assert_eq!(sysctl.trim(), "0");
            let router = Ipv4Addr::from(u32::from(uplink_host) + 1).to_string();
            let route = std::process::Command::new("ip")
                .args(["route", "get", "127.0.0.1", "from", &router, "iif", &veth])
                .output()
                .unwrap();
            assert!(
                !route.status.success(),
                "the host routes 127.0.0.1 from the uplink: {}",
                String::from_utf8_lossy(&route.stdout)
            );
            let rules = std::process::Command::new("nft")
                .args(["list", "table", "ip", &table])
                .output()
                .unwrap();
            let rules = String::from_utf8_lossy(&rules.stdout);
            assert!(!rules.contains("dnat"), "{rules}");
            assert!(rules.contains("hook input"), "{rules}");
        }

        // An address the host gains while the cage runs is the host's too (rootless, the
        // guard follows the host's addresses).
        let late = w.add_host_address();
        assert_answers(late, any, "HOSTANY");
        std::thread::sleep(Duration::from_millis(300));
        let late_target = vec![format!("{late}:{any}"), world_target.clone()];
        let got = probe_all(&cage, "gw", &late_target);
        assert!(got[0].1.starts_with("failed:"), "[{mode:?}] {got:?}");
        assert_eq!(got[1].1, "connected:WORLD", "{got:?}");
        targets.push(late_target[0].clone());

        // Off again: nothing.
        let r = cage.cagerun(&["internet", "off"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_unreachable(&cage, "gw", &targets, "internet off");

        let rec = cage.record();
        cage.down();
        cage.assert_gone(&netns);
        assert_uplink_gone(&rec);
        w.close();
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

/// What internet mode made, by the cage's record (taken before `down`), is gone: as root the
/// uplink veth and the host's nft table, rootless the slirp4netns process.
fn assert_uplink_gone(rec: &serde_json::Value) {
    let host_uplink = &rec["host_uplink"];
    if let (Some(veth), Some(table)) = (host_uplink[0].as_str(), host_uplink[1].as_str()) {
        assert!(
            !std::path::Path::new(&format!("/sys/class/net/{veth}")).exists(),
            "{veth} left"
        );
        assert!(!nft_tables().contains(table), "{table} left");
    }
    if let Some(pid) = rec["uplink"]["pid"].as_i64() {
        let proc = format!("/proc/{pid}");
        let gone = Instant::now() + Duration::from_secs(5);
        while std::path::Path::new(&proc).exists() && Instant::now() < gone {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!std::path::Path::new(&proc).exists(), "slirp4netns left");
    }
}

/// The world is made on the host (a veth in its namespace): root only, so these tests fail
/// (never skip) without it; `.ci/run` runs them as root.
fn world_or_skip() -> Option<World> {
    assert!(
        is_root(),
        "the internet tests build a world network namespace on the host and need root: run them as root (scripts/test does)"
    );
    Some(World::new())
}

fn nft_tables() -> String {
    let out = std::process::Command::new("/usr/sbin/nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

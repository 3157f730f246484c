//! A stand-in for the internet, for the internet-mode tests: a network namespace the test
//! makes (held by the server process itself, `unshare -n`: no bind mount, it dies with the
//! process), a veth pair from the host into it with addresses in 198.18.0.0/15 (the
//! benchmarking range, RFC 2544: nothing real lives there), and a server inside it. The
//! host's connected route reaches it; a cage reaches it only through its NAT uplink. Dropping
//! a `World` removes all of it, also when a test fails; [`World::close`] also proves nothing
//! is left. Packets go to the world or to the host itself, never anywhere else.

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The world server's ports (inside its own namespace, so fixed): one says `WORLD` and
/// closes, the other echoes what it reads.
pub const BANNER_PORT: u16 = 8080;
pub const ECHO_PORT: u16 = 7007;

const SERVER: &str = r#"
import socket, sys, threading
def listen(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('0.0.0.0', port))
    s.listen(64)
    return s
def banner(s):
    while True:
        c, _ = s.accept()
        try:
            c.sendall(b'WORLD')
        except OSError:
            pass
        c.close()
def echo_one(c):
    try:
        while True:
            d = c.recv(256)
            if not d:
                break
            c.sendall(d)
    except OSError:
        pass
    c.close()
def echo(s):
    while True:
        c, _ = s.accept()
        threading.Thread(target=echo_one, args=(c,), daemon=True).start()
b, e = listen(BANNER), listen(ECHO)
threading.Thread(target=banner, args=(b,), daemon=True).start()
threading.Thread(target=echo, args=(e,), daemon=True).start()
print('ready', flush=True)
sys.stdin.read()
"#;

pub struct World {
    /// The egress servers ([`World::start_egress`]): DNS, TLS, HTTP, UDP.
    pub egress: Option<EgressServers>,
    /// The veth's end in the host's namespace.
    pub host_if: String,
    /// The host's address on it (a host address like any other: a cage must not reach it).
    pub host_addr: Ipv4Addr,
    /// The world server's address.
    pub addr: Ipv4Addr,
    /// Addresses added to the host later ([`World::add_host_address`]), on `host_if`.
    extra: Vec<Ipv4Addr>,
    server: Option<Child>,
    pid: i32,
    netns_ino: u64,
}

fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ip")
}

fn ip_ok(args: &[&str]) {
    let out = ip(args);
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The host's IPv4 addresses with the interface each is on (`ip -4 -o addr`).
pub fn host_interface_addresses() -> Vec<(String, Ipv4Addr)> {
    let out = ip(&["-4", "-o", "addr", "show"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            // "4: eth0    inet 192.0.2.2/24 brd ... scope global eth0"
            let w: Vec<&str> = l.split_whitespace().collect();
            let at = w.iter().position(|x| *x == "inet")?;
            let addr = w.get(at + 1)?.split('/').next()?.parse().ok()?;
            Some((w.get(1)?.trim_end_matches(':').to_string(), addr))
        })
        .collect()
}

impl World {
    /// Make the namespace, the veth, the server, and prove the host reaches the server.
    pub fn new() -> World {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let pid = std::process::id();
        let taken: Vec<Ipv4Addr> = host_interface_addresses().iter().map(|a| a.1).collect();
        // A /30 of 198.18.0.0/16 no address of the host is in (another test run's world).
        let (host_if, base) = loop {
            let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            assert!(n < 1000, "no free 198.18.x.y/30 for a world");
            let third = ((pid + n / 64) % 254 + 1) as u8;
            let fourth = ((n % 64) * 4) as u8;
            let base = Ipv4Addr::new(198, 18, third, fourth);
            let name = format!("cgw{}x{n}", pid % 100_000);
            let clash = taken
                .iter()
                .any(|a| a.octets()[..3] == base.octets()[..3] && a.octets()[3] & !3 == fourth);
            if !clash && !Path::new(&format!("/sys/class/net/{name}")).exists() {
                break (name, base);
            }
        };
        let o = base.octets();
        let host_addr = Ipv4Addr::new(o[0], o[1], o[2], o[3] + 1);
        let addr = Ipv4Addr::new(o[0], o[1], o[2], o[3] + 2);
        let script = SERVER
            .replace("BANNER", &BANNER_PORT.to_string())
            .replace("ECHO)", &format!("{ECHO_PORT})"));
        // The server is the namespace's only process: it ends when the test closes its stdin
        // or dies, and the namespace (with the veth) goes with it.
        let mut server = Command::new("unshare")
            .args(["-n", "--", "python3", "-u", "-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the world server");
        let child_pid = server.id() as i32;
        let mut world = World {
            egress: None,
            host_if,
            host_addr,
            addr,
            extra: Vec::new(),
            server: None,
            pid: child_pid,
            netns_ino: 0,
        };
        let mut line = String::new();
        BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        world.server = Some(server);
        assert_eq!(line.trim(), "ready", "the world server did not start");
        world.netns_ino = std::fs::metadata(format!("/proc/{child_pid}/ns/net"))
            .unwrap()
            .ino();
        assert_ne!(
            world.netns_ino,
            std::fs::metadata("/proc/self/ns/net").unwrap().ino()
        );
        let pid_s = child_pid.to_string();
        ip_ok(&[
            "link",
            "add",
            &world.host_if,
            "type",
            "veth",
            "peer",
            "name",
            "w0",
            "netns",
            &pid_s,
        ]);
        ip_ok(&[
            "addr",
            "add",
            &format!("{host_addr}/30"),
            "dev",
            &world.host_if,
        ]);
        ip_ok(&["link", "set", &world.host_if, "up"]);
        let inside = Command::new("nsenter")
            .args(["-t", &pid_s, "-n", "sh", "-c"])
            .arg(format!(
                "ip addr add {addr}/30 dev w0 && ip link set w0 up && ip link set lo up && ip route add default via {host_addr}"
            ))
            .output()
            .expect("run nsenter");
        assert!(
            inside.status.success(),
            "configuring the world: {}",
            String::from_utf8_lossy(&inside.stderr)
        );
        // The probe is valid: from the host, the world answers.
        assert_eq!(
            world.fetch(addr, BANNER_PORT).as_deref(),
            Some("WORLD"),
            "the host does not reach the world server"
        );
        world
    }

    /// What a server at `addr:port` says to the host (None: no connection).
    pub fn fetch(&self, addr: Ipv4Addr, port: u16) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let to = SocketAddr::from((addr, port));
            match TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
                Ok(mut s) => {
                    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    let mut got = String::new();
                    let _ = s.read_to_string(&mut got);
                    return Some(got);
                }
                // The veth's carrier may take a moment to come up.
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(_) => return None,
            }
        }
    }

    /// A further address of the host (a /32 in 198.19.0.0/16 on the host's end), added now:
    /// a host address that appears while a cage runs. Removed with the world.
    pub fn add_host_address(&mut self) -> Ipv4Addr {
        let o = self.host_addr.octets();
        let a = Ipv4Addr::new(198, 19, o[2], o[3]);
        ip_ok(&["addr", "add", &format!("{a}/32"), "dev", &self.host_if]);
        self.extra.push(a);
        a
    }

    fn teardown(&mut self) {
        // The helpers first: they hold the namespace too.
        self.egress = None;
        if let Some(mut s) = self.server.take() {
            drop(s.stdin.take());
            let _ = s.kill();
            let _ = s.wait();
        }
        // Gone with the namespace already; deleting it here covers a namespace some other
        // process still held.
        let _ = ip(&["link", "del", &self.host_if]);
    }

    /// Remove the world and prove nothing of it is left: no veth, no server, no process or
    /// descriptor holding its namespace, none of its addresses on the host.
    pub fn close(mut self) {
        self.teardown();
        let link = format!("/sys/class/net/{}", self.host_if);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Path::new(&link).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!Path::new(&link).exists(), "{} left", self.host_if);
        assert!(
            !Path::new(&format!("/proc/{}", self.pid)).exists(),
            "the world server is still running"
        );
        let left: Vec<Ipv4Addr> = host_interface_addresses()
            .into_iter()
            .map(|a| a.1)
            .filter(|a| *a == self.host_addr || self.extra.contains(a))
            .collect();
        assert!(
            left.is_empty(),
            "world addresses left on the host: {left:?}"
        );
        let held = super::holders_of_netns(&[self.netns_ino]);
        assert!(held.is_empty(), "the world's namespace is held: {held:?}");
    }
}

/// The egress tests' world servers (tests/support/egress_world.py): TLS on 443 and HTTP on
/// 80 answering with the SNI / Host / path they saw, a UDP recorder on 443; each connection and
/// datagram goes to an event log.
pub const EGRESS_WORLD: &str = include_str!("egress_world.py");
/// The probes run from the host and inside services (tests/support/egress_probe.py).
pub const EGRESS_PROBE: &str = include_str!("egress_probe.py");
/// The names the world's DNS server knows (each with its subdomains), all at the world's
/// address; the server certificate carries each of them (and `*.wild.test`).
pub const WORLD_NAMES: &[&str] = &["allowed.test", "denied.test", "cdn-other.test", "wild.test"];

/// A process inside the world's network namespace (`nsenter -t PID -n`, the host's other
/// namespaces): killed when dropped (its stdin closed first).
pub struct Inside {
    child: Child,
    pub pid: u32,
}

impl Inside {
    /// Its stdout, to read a readiness line from.
    pub fn stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }
    /// Still running?
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What [`World::start_egress`] runs in the world, and where it writes.
pub struct EgressServers {
    /// A directory everyone can read (0755): the CA, the server's certificate and key (0600).
    pub dir: std::path::PathBuf,
    /// The test CA that signed the server's certificate (0644: the test user reads it too).
    pub ca_file: std::path::PathBuf,
    pub ca_pem: String,
    /// The TLS/HTTP/UDP servers' event log.
    pub events: std::path::PathBuf,
    /// dnsmasq's query log.
    pub dns_log: std::path::PathBuf,
    procs: Vec<Inside>,
}

impl Drop for EgressServers {
    fn drop(&mut self) {
        self.procs.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run_ok(cmd: &mut Command, what: &str) {
    let out = cmd.stdin(Stdio::null()).output().expect(what);
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed CA and one server certificate whose SANs are `names` (`*.x.test` allowed),
/// made with openssl in `dir`: (ca.pem 0644, server.pem, server.key 0600).
pub fn make_tls(
    dir: &Path,
    names: &[&str],
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run_ok(
        Command::new("openssl")
            .args(["req", "-x509"])
            .args(ec)
            .args(["-keyout", "ca.key", "-out", "ca.pem", "-days", "2"])
            .args(["-subj", "/CN=cagerun test CA"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .current_dir(dir),
        "openssl: the test CA",
    );
    let sans: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
    std::fs::write(
        dir.join("server.ext"),
        format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\nsubjectAltName={}\n",
            sans.join(",")
        ),
    )
    .unwrap();
    run_ok(
        Command::new("openssl")
            .arg("req")
            .args(ec)
            .args(["-keyout", "server.key", "-out", "server.csr"])
            .args(["-subj", &format!("/CN={}", names[0])])
            .current_dir(dir),
        "openssl: the server's request",
    );
    run_ok(
        Command::new("openssl")
            .args([
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
            ])
            .args(["-CAcreateserial", "-out", "server.pem", "-days", "2"])
            .args(["-extfile", "server.ext"])
            .current_dir(dir),
        "openssl: the server's certificate",
    );
    let ca = dir.join("ca.pem");
    std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o644)).unwrap();
    for key in ["ca.key", "server.key"] {
        std::fs::set_permissions(dir.join(key), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    (ca, dir.join("server.pem"), dir.join("server.key"))
}

/// The probes' answers, one JSON object per spec (tests/support/egress_probe.py), from a
/// finished `python3 -c EGRESS_PROBE CA SPEC...` and its stdout.
pub fn parse_probes(stdout: &str, specs: &[serde_json::Value]) -> Vec<serde_json::Value> {
    let got: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(got.len(), specs.len(), "probes {specs:?} said: {stdout}");
    got
}

/// `python3 -c EGRESS_PROBE CA SPEC...` as an argv.
pub fn probe_argv(ca_pem: &str, specs: &[serde_json::Value]) -> Vec<String> {
    let mut argv = vec![
        "python3".to_string(),
        "-c".to_string(),
        EGRESS_PROBE.to_string(),
        ca_pem.to_string(),
    ];
    argv.extend(specs.iter().map(|s| s.to_string()));
    argv
}

impl World {
    /// Run `argv` inside the world's network namespace (the host's filesystem and users),
    /// stdin and stdout piped, stderr dropped; killed when the [`Inside`] is dropped (drop it
    /// before [`World::close`], which proves the namespace is gone).
    pub fn spawn_inside(&self, argv: &[&str]) -> Inside {
        let child = Command::new("nsenter")
            .args(["-t", &self.pid.to_string(), "-n", "--"])
            .args(argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("nsenter {argv:?}: {e}"));
        let pid = child.id();
        Inside { child, pid }
    }

    /// Start the egress servers on the world's address and prove each from the host: dnsmasq
    /// on :53 answering [`WORLD_NAMES`] (and their subdomains) with the world's address and
    /// every other name NXDOMAIN, logging every query; TLS on :443 with a certificate of a
    /// fresh test CA; HTTP on :80; a UDP recorder on :443.
    pub fn start_egress(&mut self) -> &EgressServers {
        use std::os::unix::fs::PermissionsExt;
        assert!(self.egress.is_none(), "egress servers started twice");
        let have = |tool: &str, arg: &str| {
            Command::new(tool)
                .arg(arg)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        assert!(
            have("dnsmasq", "--version") && have("openssl", "version"),
            "the egress world needs dnsmasq and openssl: apt-get install dnsmasq-base openssl (scripts/test does)"
        );
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("cagerun-test-world-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut servers = EgressServers {
            ca_file: dir.join("ca.pem"),
            ca_pem: String::new(),
            events: dir.join("events"),
            dns_log: dir.join("dns.log"),
            dir: dir.clone(),
            procs: Vec::new(),
        };
        let mut sans: Vec<&str> = WORLD_NAMES.to_vec();
        sans.push("*.wild.test");
        let (ca, cert, key) = make_tls(&dir, &sans);
        servers.ca_pem = std::fs::read_to_string(&ca).unwrap();
        let addr = self.addr.to_string();
        std::fs::write(&servers.events, "").unwrap();
        let mut web = self.spawn_inside(&[
            "python3",
            "-u",
            "-c",
            EGRESS_WORLD,
            &addr,
            cert.to_str().unwrap(),
            key.to_str().unwrap(),
            servers.events.to_str().unwrap(),
        ]);
        let mut line = String::new();
        BufReader::new(web.stdout().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            "ready",
            "the world's web servers did not start"
        );
        servers.procs.push(web);
        let mut dns: Vec<String> = [
            "dnsmasq",
            "--no-daemon",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--port=53",
            "--log-queries",
            "--user=root",
            "--pid-file=",
            // Every name not below is NXDOMAIN (as the internet answers an unknown name).
            "--address=/#/",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        dns.push(format!("--listen-address={addr}"));
        dns.push(format!("--log-facility={}", servers.dns_log.display()));
        for name in WORLD_NAMES {
            // The name and its subdomains; the name itself also as a host record, so AAAA
            // is an empty answer (NODATA) as for a real IPv4-only name, not NXDOMAIN.
            dns.push(format!("--address=/{name}/{addr}"));
            dns.push(format!("--host-record={name},{addr}"));
        }
        let dns: Vec<&str> = dns.iter().map(|s| s.as_str()).collect();
        servers.procs.push(self.spawn_inside(&dns));
        self.egress = Some(servers);

        // Each server answers the host (the probes are valid).
        let w = addr.as_str();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let r = self.probe_from_host(&[
                serde_json::json!({"k": "dns", "name": "allowed.test", "server": w, "timeout": 1}),
            ]);
            if r[0]["answers"] == serde_json::json!([w]) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the world's dnsmasq does not answer: {r:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let specs = [
            serde_json::json!({"k": "dns", "name": "probe-host.denied.test", "server": w}),
            serde_json::json!({"k": "dns", "name": "cdn-other.test", "server": w}),
            serde_json::json!({"k": "dns", "name": "allowed.test", "server": w, "type": "AAAA"}),
            serde_json::json!({"k": "dns", "name": "unknown-name.test", "server": w}),
            serde_json::json!({"k": "tls", "host": w, "port": 443, "sni": "allowed.test"}),
            serde_json::json!({"k": "tls", "host": w, "port": 443, "sni": "denied.test"}),
            serde_json::json!({"k": "tls", "host": w, "port": 443, "sni": "cdn-other.test"}),
            serde_json::json!({"k": "http", "host": w, "port": 80, "hosthdr": "allowed.test"}),
            serde_json::json!({"k": "udp", "host": w, "port": 443, "data": "5157494331"}),
        ];
        let r = self.probe_from_host(&specs);
        assert_eq!(r[0]["answers"], serde_json::json!([w]), "{r:?}");
        assert_eq!(r[1]["answers"], serde_json::json!([w]), "{r:?}");
        assert_eq!(
            (r[2]["rcode"].as_i64(), r[2]["count"].as_i64()),
            (Some(0), Some(0)),
            "AAAA: {r:?}"
        );
        assert_eq!(r[3]["rcode"], 3, "an unknown name is NXDOMAIN: {r:?}");
        for (i, sni) in [
            (4, "allowed.test"),
            (5, "denied.test"),
            (6, "cdn-other.test"),
        ] {
            assert_eq!(r[i]["ok"], true, "TLS for {sni} from the host: {r:?}");
            assert_eq!(r[i]["body"]["sni"], sni, "{r:?}");
            assert_eq!(r[i]["body"]["host"], sni, "{r:?}");
        }
        assert_eq!(
            r[7]["body"]["host"], "allowed.test",
            "HTTP from the host: {r:?}"
        );
        assert_eq!(r[7]["body"]["port"], 80, "{r:?}");
        self.wait_event(&format!("udp 443 {} 5 5157494331", self.host_addr));
        assert!(
            self.dns_asked("probe-host.denied.test"),
            "{:?}",
            self.dns_queries()
        );
        self.egress.as_ref().unwrap()
    }

    pub fn egress(&self) -> &EgressServers {
        self.egress.as_ref().expect("start_egress first")
    }

    /// Run the probes on the host (as root, in its namespace).
    pub fn probe_from_host(&self, specs: &[serde_json::Value]) -> Vec<serde_json::Value> {
        let ca = self
            .egress
            .as_ref()
            .map(|e| e.ca_pem.as_str())
            .unwrap_or("");
        let argv = probe_argv(ca, specs);
        let out = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .output()
            .expect("run the probes");
        parse_probes(&String::from_utf8_lossy(&out.stdout), specs)
    }

    /// The queries dnsmasq got, in order: (type, name), names as asked (lowercased).
    pub fn dns_queries(&self) -> Vec<(String, String)> {
        let log = std::fs::read_to_string(&self.egress().dns_log).unwrap_or_default();
        log.lines()
            .filter_map(|l| {
                // "Dec  1 19:29:23 dnsmasq[27866]: query[A] allowed.test from 198.18.250.1"
                let rest = &l[l.find(": query[")? + 8..];
                let (qtype, rest) = rest.split_once("] ")?;
                let name = rest.split_whitespace().next()?;
                Some((qtype.to_string(), name.to_lowercase()))
            })
            .collect()
    }

    /// dnsmasq was asked `name` (any type).
    pub fn dns_asked(&self, name: &str) -> bool {
        let name = name.to_lowercase();
        self.dns_queries().iter().any(|(_, n)| *n == name)
    }

    /// Everything dnsmasq was asked before now has reached its log: a fresh query from the
    /// host is logged after them (dnsmasq logs in arrival order).
    pub fn sync_dns_log(&self) {
        let mark = format!("sync-{}.allowed.test", super::unique("m"));
        let w = self.addr.to_string();
        self.probe_from_host(&[serde_json::json!({"k": "dns", "name": mark, "server": w})]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.dns_asked(&mark) {
            assert!(Instant::now() < deadline, "dnsmasq never logged {mark}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The TLS/HTTP/UDP servers' events so far ("accept 443 PEER", "handshake 443 PEER
    /// sni=N", "request PORT PEER sni=N host=H path=P", "udp PORT PEER LEN HEX", ...).
    pub fn events(&self) -> Vec<String> {
        std::fs::read_to_string(&self.egress().events)
            .unwrap_or_default()
            .lines()
            .map(|l| l.to_string())
            .collect()
    }

    /// Wait (5 s at most) for an event line equal to `line`.
    pub fn wait_event(&self, line: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.events().iter().any(|e| e == line) {
            assert!(
                Instant::now() < deadline,
                "the world never logged {line:?}: {:?}",
                self.events()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything sent to the world's servers before now is in their event log: a UDP
    /// datagram from the host is logged after it.
    pub fn sync_events(&self) {
        let mark = super::unique("s").into_bytes();
        let hex: String = mark.iter().map(|b| format!("{b:02x}")).collect();
        let w = self.addr.to_string();
        self.probe_from_host(&[
            serde_json::json!({"k": "udp", "host": w, "port": 443, "data": hex}),
        ]);
        let shown: String = hex.chars().take(64).collect();
        self.wait_event(&format!(
            "udp 443 {} {} {shown}",
            self.host_addr,
            mark.len()
        ));
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.teardown();
    }
}

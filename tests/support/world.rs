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

impl Drop for World {
    fn drop(&mut self) {
        self.teardown();
    }
}

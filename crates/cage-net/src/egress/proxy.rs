//! The egress resolver and proxy at work: threads over the three sockets the router namespace
//! gave ([`Sockets`]), deciding with [`cage_spec::egress`], connecting from the caller's own
//! network namespace (the host's), and reporting every attempt as an [`Entry`].
//!
//! - DNS (UDP, the router's port 53): [`super::dns`]; allowed names are looked up upstream
//!   by a worker (at most [`MAX_LOOKUPS`] at once) and answered with their fake address.
//! - TCP (everything a list service sends out, redirected by the router's table): the
//!   original destination (`SO_ORIGINAL_DST`), the first bytes ([`super::sniff`]), the policy,
//!   an upstream address resolved here and re-checked now, then bytes spliced both ways
//!   (kernel to kernel). At most [`MAX_CONNECTIONS`] at once.
//! - NFLOG: what the router dropped (UDP, ICMP), one entry per flow per [`FLOW_QUIET`].
//!
//! [`Proxy::update`] swaps the policy and cuts every live connection the new one refuses.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use cage_spec::egress::{
    self, Destination, EgressPolicy, FakeAddresses, Lookup, Rule, Shown, HOST_FAKE,
};

use super::dns::{self, Answer, Resolved};
use super::nflog;
use super::sniff::{self, Sniff, MAX_SNIFF};
use super::{Entry, Verdict};

pub const MAX_LOOKUPS: usize = 64;
pub const MAX_CONNECTIONS: usize = 1024;
pub const FLOW_QUIET: Duration = Duration::from_secs(10);
/// How long a client on a web port may take to show its TLS ClientHello or request line.
const SHOW_TIMEOUT: Duration = Duration::from_secs(10);
/// On an explicit `NAME:PORT`, how long to wait for first bytes before deciding by the name
/// alone (a protocol where the server speaks first).
const QUIET_CLIENT: Duration = Duration::from_millis(300);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);
/// The TTL of fake answers (the address never changes; the upstream one is looked up again
/// by the proxy when its own TTL runs out).
const FAKE_TTL: u32 = 60;

/// The sockets the router namespace gave: its DNS port, its proxy port, its NFLOG group.
pub struct Sockets {
    pub dns: UdpSocket,
    pub tcp: TcpListener,
    pub nflog: OwnedFd,
}

pub struct ProxyRequest {
    pub sockets: Sockets,
    /// Where allowed names are looked up.
    pub upstream_dns: Vec<SocketAddrV4>,
    pub policy: EgressPolicy,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Dest {
    Name(String),
    Host,
    Address(Ipv4Addr),
}

impl Dest {
    fn as_destination(&self) -> Destination<'_> {
        match self {
            Dest::Name(n) => Destination::Name(n),
            Dest::Host => Destination::Host,
            Dest::Address(a) => Destination::Address(*a),
        }
    }
}

struct LiveConn {
    source: Ipv4Addr,
    dest: Dest,
    port: u16,
    client: OwnedFd,
    upstream: Option<OwnedFd>,
}

struct Shared {
    policy: RwLock<EgressPolicy>,
    fakes: Mutex<FakeAddresses>,
    resolved: Mutex<HashMap<String, (Vec<Ipv4Addr>, Instant)>>,
    upstream_dns: Vec<SocketAddrV4>,
    listener: SocketAddrV4,
    live: Mutex<HashMap<u64, LiveConn>>,
    next_id: AtomicU64,
    lookups: AtomicUsize,
    connections: AtomicUsize,
    flows: Mutex<HashMap<(u8, Ipv4Addr, Ipv4Addr, u16), Instant>>,
    audit: Mutex<mpsc::Sender<Entry>>,
}

/// The running proxy; its threads end with the process.
pub struct Proxy {
    shared: Arc<Shared>,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

impl Shared {
    fn log(&self, e: Entry) {
        let _ = self.audit.lock().unwrap().send(e);
    }

    /// The source's name and rules, or why it has none.
    fn rules_of(&self, src: Ipv4Addr) -> Result<(String, Vec<Rule>), (String, &'static str)> {
        let p = self.policy.read().unwrap();
        match p.source(src) {
            None => Err((src.to_string(), "not an egress source")),
            Some(s) if !p.on => Err((s.name.clone(), "internet off")),
            Some(s) => Ok((s.name.clone(), s.rules.clone())),
        }
    }

    /// The upstream addresses of `name` while its cached answer lasts.
    fn cached(&self, name: &str) -> Option<Vec<Ipv4Addr>> {
        let cache = self.resolved.lock().unwrap();
        let (addrs, until) = cache.get(name)?;
        (Instant::now() < *until).then(|| addrs.clone())
    }

    /// The answer to an A lookup of the allowed `name` whose upstream addresses are
    /// `resolved`, and the reason the log gives.
    fn name_answer(
        &self,
        name: &str,
        resolved: Result<Option<Vec<Ipv4Addr>>, String>,
    ) -> (Answer, String) {
        match resolved {
            Ok(Some(_)) => match self.fakes.lock().unwrap().assign(name) {
                Some(fake) => (Answer::A(fake, FAKE_TTL), format!("fake address {fake}")),
                None => (Answer::ServFail, "fake address pool spent".into()),
            },
            Ok(None) => (Answer::NxDomain, "upstream: no such name".into()),
            Err(why) => (Answer::ServFail, why),
        }
    }

    /// Send the answer to `raw` and log it.
    fn answer_lookup(
        &self,
        sock: &UdpSocket,
        from: SocketAddrV4,
        raw: &[u8],
        e: Entry,
        (a, reason): (Answer, String),
    ) {
        if let Some(r) = dns::reply(raw, a) {
            let _ = sock.send_to(&r, from);
        }
        self.log(Entry {
            reason,
            address: match a {
                Answer::A(f, _) => Some(f.to_string()),
                _ => None,
            },
            ..e
        });
    }

    /// The upstream addresses of `name` (cached for their TTL, 5 s to 5 min).
    fn resolve(&self, name: &str) -> Result<Option<Vec<Ipv4Addr>>, String> {
        if let Some(addrs) = self.cached(name) {
            return Ok(Some(addrs));
        }
        match dns::lookup_a(&self.upstream_dns, name, LOOKUP_TIMEOUT) {
            Ok(Resolved::Addresses(addrs, ttl)) => {
                let ttl = Duration::from_secs(u64::from(ttl.clamp(5, 300)));
                let mut cache = self.resolved.lock().unwrap();
                if cache.len() > 4096 {
                    let t = Instant::now();
                    cache.retain(|_, (_, until)| *until > t);
                    if cache.len() > 4096 {
                        // Only a cache: a lookup again is the price.
                        cache.clear();
                    }
                }
                cache.insert(name.to_string(), (addrs.clone(), Instant::now() + ttl));
                Ok(Some(addrs))
            }
            Ok(Resolved::NoSuchName) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl Proxy {
    /// Start the resolver, proxy and drop-log threads.
    pub fn start(req: ProxyRequest, audit: mpsc::Sender<Entry>) -> std::io::Result<Proxy> {
        let listener = match req.sockets.tcp.local_addr()? {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => {
                return Err(std::io::Error::other("the proxy listens on IPv4"));
            }
        };
        let shared = Arc::new(Shared {
            policy: RwLock::new(req.policy),
            fakes: Mutex::new(FakeAddresses::default()),
            resolved: Mutex::new(HashMap::new()),
            upstream_dns: req.upstream_dns,
            listener,
            live: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            lookups: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            flows: Mutex::new(HashMap::new()),
            audit: Mutex::new(audit),
        });
        let Sockets { dns, tcp, nflog } = req.sockets;
        let s = shared.clone();
        std::thread::Builder::new()
            .name("egress-dns".into())
            .spawn(move || serve_dns(s, dns))?;
        let s = shared.clone();
        std::thread::Builder::new()
            .name("egress-tcp".into())
            .spawn(move || serve_tcp(s, tcp))?;
        let s = shared.clone();
        std::thread::Builder::new()
            .name("egress-drops".into())
            .spawn(move || serve_drops(s, nflog))?;
        Ok(Proxy { shared })
    }

    /// A new policy, live: connections it no longer allows are cut.
    pub fn update(&self, policy: EgressPolicy) {
        *self.shared.policy.write().unwrap() = policy;
        let live = self.shared.live.lock().unwrap();
        for c in live.values() {
            let keep = match self.shared.rules_of(c.source) {
                Ok((_, rules)) => {
                    egress::connection(&rules, c.dest.as_destination(), c.port).is_ok()
                }
                Err(_) => false,
            };
            if !keep {
                let _ = nix::sys::socket::shutdown(
                    c.client.as_raw_fd(),
                    nix::sys::socket::Shutdown::Both,
                );
                if let Some(u) = &c.upstream {
                    let _ =
                        nix::sys::socket::shutdown(u.as_raw_fd(), nix::sys::socket::Shutdown::Both);
                }
            }
        }
    }
}

fn serve_dns(s: Arc<Shared>, sock: UdpSocket) {
    let sock = Arc::new(sock);
    let mut buf = vec![0u8; dns::MAX_QUERY + 1];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let SocketAddr::V4(from) = from else { continue };
        let raw = buf[..n].to_vec();
        let Some(q) = dns::parse_query(&raw) else {
            continue;
        };
        let entry = |source: String, verdict, reason: String| Entry {
            time: now(),
            source,
            proto: "dns".into(),
            name: Some(q.name.clone()),
            address: None,
            upstream: None,
            port: None,
            verdict,
            reason,
            qtype: Some(q.type_name()),
            ..Default::default()
        };
        let answer = |a: Answer| {
            if let Some(r) = dns::reply(&raw, a) {
                let _ = sock.send_to(&r, from);
            }
        };
        let (source, rules) = match s.rules_of(*from.ip()) {
            Ok(v) => v,
            Err((source, why)) => {
                answer(Answer::NxDomain);
                s.log(entry(source, Verdict::Deny, why.into()));
                continue;
            }
        };
        let Some(name) = egress::normalize_name(&q.name) else {
            answer(Answer::NxDomain);
            s.log(entry(source, Verdict::Deny, "not a DNS name".into()));
            continue;
        };
        match egress::lookup(&rules, &name) {
            Lookup::Refuse => {
                answer(Answer::NxDomain);
                s.log(entry(
                    source,
                    Verdict::Deny,
                    "name not allowed (not asked upstream)".into(),
                ));
            }
            Lookup::Host if q.is_a() => {
                answer(Answer::A(HOST_FAKE, FAKE_TTL));
                s.log(Entry {
                    address: Some(HOST_FAKE.to_string()),
                    ..entry(
                        source,
                        Verdict::Allow,
                        "the host's loopback (host:PORT)".into(),
                    )
                });
            }
            Lookup::Host | Lookup::Name if !q.is_a() => {
                answer(Answer::Empty);
                s.log(entry(
                    source,
                    Verdict::Allow,
                    "IPv4 (A) only: empty answer".into(),
                ));
            }
            Lookup::Host | Lookup::Name => {
                let e = entry(source.clone(), Verdict::Allow, String::new());
                // Answered from the cache at once: only a lookup upstream needs a worker.
                if let Some(addrs) = s.cached(&name) {
                    s.answer_lookup(&sock, from, &raw, e, s.name_answer(&name, Ok(Some(addrs))));
                    continue;
                }
                if s.lookups.fetch_add(1, Ordering::SeqCst) >= MAX_LOOKUPS {
                    s.lookups.fetch_sub(1, Ordering::SeqCst);
                    answer(Answer::ServFail);
                    s.log(entry(
                        source,
                        Verdict::Deny,
                        "too many lookups at once".into(),
                    ));
                    continue;
                }
                let (s2, sock2) = (s.clone(), sock.clone());
                let spawned = std::thread::Builder::new()
                    .name("egress-lookup".into())
                    .spawn(move || {
                        let a = s2.name_answer(&name, s2.resolve(&name));
                        s2.answer_lookup(&sock2, from, &raw, e, a);
                        s2.lookups.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    s.lookups.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
    }
}

fn serve_tcp(s: Arc<Shared>, listener: TcpListener) {
    for client in listener.incoming() {
        let client = match client {
            Ok(c) => c,
            Err(_) => {
                // Out of descriptors (or any other accept failure): back off instead of
                // spinning on an error that will repeat.
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if s.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            s.connections.fetch_sub(1, Ordering::SeqCst);
            if let Ok(SocketAddr::V4(peer)) = client.peer_addr() {
                let source = s
                    .policy
                    .read()
                    .unwrap()
                    .source(*peer.ip())
                    .map(|x| x.name.clone())
                    .unwrap_or(peer.ip().to_string());
                s.log(Entry {
                    time: now(),
                    source,
                    proto: "tcp".into(),
                    verdict: Verdict::Deny,
                    reason: format!("too many connections at once ({MAX_CONNECTIONS})"),
                    ..Default::default()
                });
            }
            continue;
        }
        let s2 = s.clone();
        let spawned = std::thread::Builder::new()
            .name("egress-conn".into())
            .spawn(move || {
                connection(&s2, client);
                s2.connections.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            s.connections.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// The destination the client dialled, before the router's redirect.
fn original_destination(c: &TcpStream) -> Option<SocketAddrV4> {
    nix::sys::socket::getsockopt(&c.as_fd(), nix::sys::socket::sockopt::OriginalDst)
        .ok()
        .map(|a| {
            SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )
        })
}

fn host_addresses() -> Vec<Ipv4Addr> {
    nix::ifaddrs::getifaddrs()
        .map(|it| {
            it.filter_map(|i| i.address?.as_sockaddr_in().map(|a| a.ip()))
                .collect()
        })
        .unwrap_or_default()
}

fn connection(s: &Arc<Shared>, client: TcpStream) {
    let started = Instant::now();
    let SocketAddr::V4(peer) = client
        .peer_addr()
        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
    else {
        return;
    };
    let source_ip = *peer.ip();
    let Some(dst) = original_destination(&client) else {
        return;
    };
    let port = dst.port();
    let mut entry = Entry {
        time: now(),
        source: source_ip.to_string(),
        proto: "tcp".into(),
        address: Some(dst.ip().to_string()),
        port: Some(port),
        verdict: Verdict::Deny,
        ..Default::default()
    };
    let deny = |mut e: Entry, why: &str| {
        // A reset, not an orderly close: the client learns at once that nothing is there.
        let _ = nix::sys::socket::setsockopt(
            &client,
            nix::sys::socket::sockopt::Linger,
            &libc::linger {
                l_onoff: 1,
                l_linger: 0,
            },
        );
        e.reason = why.to_string();
        e.duration_ms = started.elapsed().as_millis() as u64;
        s.log(e);
    };
    let (source, rules) = match s.rules_of(source_ip) {
        Ok(v) => v,
        Err((name, why)) => {
            entry.source = name;
            return deny(entry, why);
        }
    };
    entry.source = source;
    if dst == s.listener {
        return deny(entry, "a direct connection to the proxy");
    }
    let dest = if *dst.ip() == HOST_FAKE {
        entry.name = Some("host".into());
        Dest::Host
    } else if FakeAddresses::is_fake(*dst.ip()) {
        match s.fakes.lock().unwrap().name_of(*dst.ip()) {
            Some(n) => Dest::Name(n.to_string()),
            None => return deny(entry, "a fake address no lookup gave"),
        }
    } else {
        Dest::Address(*dst.ip())
    };
    if let Dest::Name(n) = &dest {
        entry.name = Some(n.clone());
    }
    if let Err(why) = egress::connection(&rules, dest.as_destination(), port) {
        return deny(entry, why);
    }
    // The first bytes: the name they claim must be the name looked up.
    let mut first = Vec::new();
    if let Dest::Name(name) = &dest {
        let must = egress::name_must_show(&rules, name, port);
        let shown = read_first(
            &client,
            &mut first,
            if must { SHOW_TIMEOUT } else { QUIET_CLIENT },
        );
        if let Err(why) = egress::shown_name(name, &shown, must) {
            let claimed = match &shown {
                Shown::Tls(Some(n)) | Shown::Http(Some(n)) => format!(" ({n})"),
                _ => String::new(),
            };
            return deny(entry, &format!("{why}{claimed}"));
        }
    }
    // The upstream address: resolved here, checked now.
    let host = host_addresses();
    let candidates: Vec<Ipv4Addr> = match &dest {
        Dest::Host => vec![Ipv4Addr::LOCALHOST],
        Dest::Address(a) => vec![*a],
        Dest::Name(n) => match s.resolve(n) {
            Ok(Some(a)) => a,
            Ok(None) => return deny(entry, "upstream: no such name"),
            Err(why) => return deny(entry, &why),
        },
    };
    let mut refused = None;
    let upstream_addr = candidates.iter().copied().find(|a| match dest {
        Dest::Host => true,
        _ => match egress::upstream(&rules, *a, port, &host) {
            Ok(()) => true,
            Err(why) => {
                refused = Some(why);
                false
            }
        },
    });
    let Some(upstream_addr) = upstream_addr else {
        entry.upstream = candidates.first().map(|a| a.to_string());
        return deny(entry, refused.unwrap_or("no upstream address"));
    };
    entry.upstream = Some(upstream_addr.to_string());
    let upstream = match TcpStream::connect_timeout(
        &SocketAddr::from(SocketAddrV4::new(upstream_addr, port)),
        CONNECT_TIMEOUT,
    ) {
        Ok(u) => u,
        Err(e) => {
            entry.verdict = Verdict::Allow;
            return deny(entry, &format!("allowed; upstream connect failed: {e}"));
        }
    };
    let _ = client.set_read_timeout(None);
    let _ = upstream.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let id = s.next_id.fetch_add(1, Ordering::SeqCst);
    let dup = |t: &TcpStream| t.as_fd().try_clone_to_owned().ok();
    if let Some(c) = dup(&client) {
        s.live.lock().unwrap().insert(
            id,
            LiveConn {
                source: source_ip,
                dest: dest.clone(),
                port,
                client: c,
                upstream: dup(&upstream),
            },
        );
    }
    // A policy change between the decision and the registration above is caught here.
    let still = s
        .rules_of(source_ip)
        .map(|(_, r)| egress::connection(&r, dest.as_destination(), port).is_ok())
        .unwrap_or(false);
    let (sent, received) = if still {
        relay(&client, &upstream, &first)
    } else {
        (0, 0)
    };
    s.live.lock().unwrap().remove(&id);
    entry.verdict = Verdict::Allow;
    entry.reason = if still {
        "allowed".into()
    } else {
        "allowed, then cut".into()
    };
    entry.sent = sent;
    entry.received = received;
    entry.duration_ms = started.elapsed().as_millis() as u64;
    s.log(entry);
}

/// Read until the first bytes show TLS or HTTP (or not), within `wait` and [`MAX_SNIFF`].
fn read_first(c: &TcpStream, buf: &mut Vec<u8>, wait: Duration) -> Shown {
    let deadline = Instant::now() + wait;
    let mut chunk = vec![0u8; MAX_SNIFF];
    loop {
        if let Sniff::Shown(s) = sniff::sniff(buf) {
            return s;
        }
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return if buf.is_empty() {
                Shown::Other
            } else {
                partial(buf)
            };
        };
        let _ = c.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        // Whatever has arrived, up to the bound (all of it is forwarded afterwards): one
        // read for a ClientHello or a request head that came in one segment.
        let want = MAX_SNIFF.saturating_sub(buf.len()).clamp(1, chunk.len());
        match (&*c).read(&mut chunk[..want]) {
            Ok(0) => return partial(buf),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => {
                return if buf.is_empty() {
                    Shown::Other
                } else {
                    partial(buf)
                }
            }
        }
        if buf.len() >= MAX_SNIFF {
            return partial(buf);
        }
    }
}

/// What an incomplete start looks like: a TLS record or a request cut short names nothing.
fn partial(buf: &[u8]) -> Shown {
    match buf.first() {
        Some(0x16) => Shown::Tls(None),
        Some(b) if b.is_ascii_uppercase() => Shown::Http(None),
        _ => Shown::Other,
    }
}

/// Both directions until each side is done: (bytes client→upstream, upstream→client).
fn relay(client: &TcpStream, upstream: &TcpStream, first: &[u8]) -> (u64, u64) {
    if !first.is_empty() && (&*upstream).write_all(first).is_err() {
        return (0, 0);
    }
    std::thread::scope(|sc| {
        let back = sc.spawn(|| pump(upstream, client));
        let sent = pump(client, upstream) + first.len() as u64;
        (sent, back.join().unwrap_or(0))
    })
}

/// One direction, through a pipe with splice(2): the bytes never enter this process.
fn pump(from: &TcpStream, to: &TcpStream) -> u64 {
    use nix::fcntl::{splice, SpliceFFlags};
    let Ok((pr, pw)) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) else {
        return 0;
    };
    let _ = nix::fcntl::fcntl(pw.as_raw_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
    let flags = SpliceFFlags::SPLICE_F_MOVE;
    let mut total = 0u64;
    'outer: loop {
        let n = match splice(from.as_fd(), None, pw.as_fd(), None, 1 << 20, flags) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut left = n;
        while left > 0 {
            match splice(pr.as_fd(), None, to.as_fd(), None, left, flags) {
                Ok(0) | Err(_) => {
                    let _ = from.shutdown(Shutdown::Both);
                    break 'outer;
                }
                Ok(m) => left -= m,
            }
        }
        total += n as u64;
    }
    let _ = to.shutdown(Shutdown::Write);
    total
}

fn serve_drops(s: Arc<Shared>, sock: OwnedFd) {
    let mut buf = vec![0u8; 65536];
    loop {
        let n = match nix::sys::socket::recv(
            sock.as_raw_fd(),
            &mut buf,
            nix::sys::socket::MsgFlags::empty(),
        ) {
            Ok(n) => n,
            // ENOBUFS: the kernel dropped log messages under load; go on.
            Err(nix::errno::Errno::ENOBUFS) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        };
        for d in nflog::packets(&buf[..n]) {
            let key = (d.protocol, d.src, d.dst, d.dport);
            {
                let mut flows = s.flows.lock().unwrap();
                let t = Instant::now();
                if flows
                    .get(&key)
                    .is_some_and(|seen| t.duration_since(*seen) < FLOW_QUIET)
                {
                    continue;
                }
                if flows.len() > 4096 {
                    flows.retain(|_, seen| t.duration_since(*seen) < FLOW_QUIET);
                }
                flows.insert(key, t);
            }
            let source = {
                let p = s.policy.read().unwrap();
                p.source(d.src)
                    .map(|x| x.name.clone())
                    .unwrap_or(d.src.to_string())
            };
            let name = s.fakes.lock().unwrap().name_of(d.dst).map(str::to_string);
            s.log(Entry {
                time: now(),
                source,
                proto: d.protocol_name().into(),
                name,
                address: Some(d.dst.to_string()),
                port: (d.dport != 0).then_some(d.dport),
                verdict: Verdict::Deny,
                reason: format!(
                    "{} is never forwarded (only TCP, by name)",
                    d.protocol_name()
                ),
                ..Default::default()
            });
        }
    }
}

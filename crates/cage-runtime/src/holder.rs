//! `cagerun holder`: the cage's one user namespace and its router network namespace.
//!
//! Single-threaded on purpose (unshare(CLONE_NEWUSER) refuses a threaded caller). It lives as
//! long as its control socket ([`crate::proto::fds::CONTROL`]) is open: when the supervisor
//! goes, it goes, and every network namespace it holds by descriptor goes with it once no
//! container is inside — no bind mount, nothing left on the host.
//!
//! It starts with [`HolderEvent::Unshared`], waits for [`SupervisorToHolder::Mapped`], makes
//! the router and says [`HolderEvent::Ready`]; then it answers each [`HolderRequest`] with one
//! [`HolderReply`]: a service network namespace with a veth into the bridge (its descriptor
//! attached, its fd number its name in later requests), a socket connecting inside one, the
//! set of addresses that may use the uplink, the router's end of the uplink veth the
//! supervisor moved in (as root).
//!
//! [`HolderEvent::Unshared`]: crate::proto::HolderEvent::Unshared
//! [`HolderEvent::Ready`]: crate::proto::HolderEvent::Ready
//! [`SupervisorToHolder::Mapped`]: crate::proto::SupervisorToHolder::Mapped
//! [`HolderRequest`]: crate::proto::HolderRequest
//! [`HolderReply`]: crate::proto::HolderReply

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cage_net::network::{netlink::Netlink, netns};
use cage_net::topology;
use nix::sched::{unshare, CloneFlags};
use nix::sys::socket::{connect, socket, SockFlag, SockType, SockaddrIn};

use crate::ipc;
use crate::proto::{HolderEvent, HolderReply, HolderRequest, SupervisorToHolder};

#[derive(Debug, Clone)]
pub struct HolderOptions {
    /// The cage subnet's third octet (10.89.N.0/24).
    pub subnet: u8,
    /// The cage's id (only so that `ps` on the host says whose holder this is).
    pub cage: Option<String>,
    /// Some service may get internet: the router forwards, and its nft table starts empty
    /// (internet off) until [`HolderRequest::Internet`].
    pub internet: bool,
}

pub fn run(args: HolderOptions) -> Result<()> {
    // SAFETY: the supervisor put our end of the control socket at fds::CONTROL.
    let ctl = unsafe { OwnedFd::from_raw_fd(crate::proto::fds::CONTROL) };
    unshare(CloneFlags::CLONE_NEWUSER).context("creating the cage's user namespace")?;
    ipc::send(&ctl, &HolderEvent::Unshared, &[])?;
    match ipc::recv::<SupervisorToHolder>(&ctl)? {
        Some((SupervisorToHolder::Mapped, _)) => {}
        None => return Ok(()),
    }
    unshare(CloneFlags::CLONE_NEWNET).context("creating the router network namespace")?;
    let router = netns::current()?;
    let nl = Netlink::open()?;
    nl.set_up(nl.index("lo")?)?;
    let bridge = nl.add_bridge(topology::BRIDGE)?;
    nl.set_mtu(bridge, topology::MTU)?;
    nl.set_mac(bridge, topology::bridge_mac(args.subnet))?;
    nl.add_address(
        bridge,
        IpAddr::V4(topology::router_address(args.subnet)),
        topology::PREFIX,
    )?;
    nl.set_up(bridge)?;
    if args.internet {
        // This namespace's own sysctl: the host's forwarding is untouched.
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .context("enabling forwarding in the router namespace")?;
        nft(&cage_net::firewall::rules::router_table(
            topology::UPLINK_IFACE,
        ))?;
    }
    ipc::send(&ctl, &HolderEvent::Ready, &[])?;

    let mut held: HashMap<i32, OwnedFd> = HashMap::new();
    // The holder mostly waits: what making the router and the services' networks touched
    // need not stay resident for the cage's whole life. Given back once the requests that
    // set things up have gone quiet (connections inside a service are the steady state).
    let mut release_at = Some(Instant::now() + SETUP_QUIET);
    loop {
        if let Some(at) = release_at {
            if !readable_before(&ctl, at)? {
                crate::resident::release_startup_pages();
                release_at = None;
                continue;
            }
        }
        let request = match ipc::recv::<HolderRequest>(&ctl) {
            Ok(Some((request, _))) => request,
            Ok(None) => break,
            // One bad request is answered; the holder goes on.
            Err(e @ (ipc::IpcError::Malformed { .. } | ipc::IpcError::TooLong { .. })) => {
                ipc::send(&ctl, &HolderReply::error(&e.into()), &[])?;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if !matches!(request, HolderRequest::Connect { .. }) {
            release_at = Some(Instant::now() + SETUP_QUIET);
        }
        let outcome: Result<(HolderReply, Vec<OwnedFd>)> = match request {
            HolderRequest::AddService {
                slot,
                address,
                route,
            } => add_service(&nl, &router, bridge, slot, address, route, args.subnet).and_then(
                |ns| {
                    let netns = ns.as_raw_fd();
                    let copy = ns.try_clone()?;
                    held.insert(netns, ns);
                    Ok((HolderReply::Netns { netns }, vec![copy]))
                },
            ),
            HolderRequest::Connect { netns, port } => match held.get(&netns) {
                Some(ns) => connect_inside(ns, port).map(|s| (HolderReply::Socket, vec![s])),
                None => Err(anyhow::anyhow!("connect: no such namespace or bad port")),
            },
            HolderRequest::Internet { allowed } => Ok(allowed)
                .and_then(|a| nft(&cage_net::firewall::rules::router_internet(&a)))
                .map(|_| (HolderReply::Ok, Vec::new())),
            HolderRequest::Uplink {
                link,
                address,
                prefix,
                gateway,
            } => {
                uplink(&nl, &link, address, prefix, gateway).map(|_| (HolderReply::Ok, Vec::new()))
            }
            HolderRequest::Egress => {
                egress_sockets(args.subnet).map(|fds| (HolderReply::EgressSockets, fds))
            }
            HolderRequest::EgressSources { addresses } => {
                nft(&cage_net::firewall::rules::egress_sources(&addresses))
                    .map(|_| (HolderReply::Ok, Vec::new()))
            }
            HolderRequest::Drop { netns } => {
                held.remove(&netns);
                Ok((HolderReply::Ok, Vec::new()))
            }
        };
        let (reply, fd) = outcome.unwrap_or_else(|e| (HolderReply::error(&e), Vec::new()));
        let attached: Vec<_> = fd.iter().map(|f| f.as_fd()).collect();
        ipc::send(&ctl, &reply, &attached)?;
    }
    Ok(())
}

/// How long set-up requests (a service's network, the uplink, internet on or off) must have
/// stopped before the holder gives back the memory they touched.
const SETUP_QUIET: Duration = Duration::from_millis(500);

/// Whether `ctl` has something to read before `at` (false once `at` has passed).
fn readable_before(ctl: &OwnedFd, at: Instant) -> Result<bool> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    loop {
        let left = at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let ms = PollTimeout::try_from(left.as_millis().max(1) as i32).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(ctl.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => return Ok(true),
            Err(e) => return Err(e).context("waiting for the supervisor's requests"),
        }
    }
}

/// Apply an nft document in this (the router's) namespace, as its uid 0.
fn nft(rules: &cage_net::firewall::Nftables<'_>) -> Result<()> {
    use cage_net::firewall::nft::{apply, Where};
    apply(rules, Where::CallerAsNamespaceRoot).context("in the router namespace")
}

/// Egress by name: the router's egress table, then (in this namespace, as its root) the
/// resolver's UDP socket on the router's port 53, the proxy's listener and the NFLOG socket
/// of what the table drops. The egress proxy uses them from the host's namespace.
fn egress_sockets(subnet: u8) -> Result<Vec<OwnedFd>> {
    use cage_net::egress::nflog;
    nft(&cage_net::firewall::rules::egress_table(
        subnet,
        topology::EGRESS_PROXY_PORT,
        nflog::GROUP,
    ))?;
    let router = topology::router_address(subnet);
    let dns = std::net::UdpSocket::bind(SocketAddrV4::new(router, topology::EGRESS_DNS_PORT))
        .context("the egress resolver's socket (router port 53)")?;
    let tcp = std::net::TcpListener::bind(SocketAddrV4::new(router, topology::EGRESS_PROXY_PORT))
        .context("the egress proxy's listener")?;
    let log = nflog::open().context(
        "the egress log of dropped packets (nfnetlink_log; `modprobe nfnetlink_log` as root if the kernel has it as a module)",
    )?;
    Ok(vec![dns.into(), tcp.into(), log])
}

/// The router's end of a veth the supervisor moved in (as root): address and default route.
fn uplink(nl: &Netlink, name: &str, addr: Ipv4Addr, prefix: u8, gateway: Ipv4Addr) -> Result<()> {
    let link = nl.index(name)?;
    nl.rename(link, topology::UPLINK_IFACE)?;
    nl.add_address(link, IpAddr::V4(addr), prefix)?;
    nl.set_up(link)?;
    nl.add_default_route(gateway)?;
    Ok(())
}

fn add_service(
    nl: &Netlink,
    router: &OwnedFd,
    bridge: u32,
    slot: usize,
    addr: Ipv4Addr,
    route: bool,
    subnet: u8,
) -> Result<OwnedFd> {
    let ns = netns::create()?;
    let (outer, peer) = nl.add_veth(&topology::router_veth(slot), &topology::peer_veth(slot))?;
    let setup = || -> Result<()> {
        nl.set_mtu(outer, topology::MTU)?;
        nl.set_mtu(peer, topology::MTU)?;
        nl.move_to(peer, ns.as_fd())?;
        nl.attach_to_bridge(outer, bridge)?;
        nl.set_up(outer)?;
        netns::within(&ns, || {
            let inner = Netlink::open()?;
            inner.set_up(inner.index("lo")?)?;
            let eth = inner.index(&topology::peer_veth(slot))?;
            inner.rename(eth, topology::SERVICE_IFACE)?;
            inner.add_address(eth, IpAddr::V4(addr), topology::PREFIX)?;
            inner.set_up(eth)?;
            if route {
                // An internet service routes through the router; whether anything passes
                // is the router's nft set (internet on/off), not this route.
                inner.add_default_route(topology::router_address(subnet))?;
            }
            Ok(())
        })?;
        Ok(())
    };
    if let Err(e) = setup() {
        let _ = nl.delete(outer);
        return Err(e);
    }
    netns::enter(router)?;
    Ok(ns)
}

fn connect_inside(ns: &OwnedFd, port: u16) -> Result<OwnedFd> {
    let sock = netns::within(ns, || {
        socket(
            nix::sys::socket::AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|source| cage_net::Error::Sys {
            what: "socket".into(),
            source,
        })
    })?;
    let to = SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    match connect(sock.as_raw_fd(), &to) {
        Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => Ok(sock),
        Err(e) => Err(e).context("connecting inside the service"),
    }
}

//! `cagerun holder`: the cage's one user namespace and its router network namespace.
//!
//! Single-threaded on purpose (unshare(CLONE_NEWUSER) refuses a threaded caller). It lives as
//! long as its control socket (fd 3) is open: when the supervisor goes, it goes, and every
//! network namespace it holds by descriptor goes with it once no container is inside — no
//! bind mount, nothing left on the host.
//!
//! Requests (one per datagram): `add SLOT ADDR` → a service network namespace with a veth into
//! the bridge, answered `ok FD` with the namespace's descriptor attached (FD names it in later
//! requests); `connect FD PORT` →
//! a TCP socket connecting to 127.0.0.1:PORT inside it (non-blocking, in progress), passed back;
//! `drop FD`; `internet ADDR...` → exactly these service addresses may use the uplink (none:
//! internet off); `uplink NAME ADDR PREFIX GATEWAY` → the uplink veth the supervisor moved in, renamed, its address and default route
//! the supervisor moved in (as root).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use anyhow::{bail, Context, Result};
use cage_net::{netlink::Netlink, netns, topology};
use nix::sched::{unshare, CloneFlags};
use nix::sys::socket::{connect, socket, SockFlag, SockType, SockaddrIn};

use crate::ipc;

#[derive(Debug, Clone)]
pub struct HolderOptions {
    /// The cage subnet's third octet (10.89.N.0/24).
    pub subnet: u8,
    /// The cage's id (only so that `ps` on the host says whose holder this is).
    pub cage: Option<String>,
    /// Some service may get internet: the router forwards, and its nft table starts empty
    /// (internet off) until `internet ADDR...`.
    pub internet: bool,
}

pub fn run(args: HolderOptions) -> Result<()> {
    // SAFETY: the supervisor put our end of the control socket at fd 3.
    let ctl = unsafe { OwnedFd::from_raw_fd(crate::proto::fds::CONTROL) };
    unshare(CloneFlags::CLONE_NEWUSER).context("creating the cage's user namespace")?;
    ipc::send(&ctl, "unshared", None)?;
    match ipc::recv(&ctl)? {
        Some((m, _)) if m == "mapped" => {}
        Some((m, _)) => bail!("holder: the supervisor says {m}"),
        None => return Ok(()),
    }
    unshare(CloneFlags::CLONE_NEWNET).context("creating the router network namespace")?;
    let router = netns::current()?;
    let nl = Netlink::open()?;
    nl.set_up(nl.index("lo")?)?;
    let bridge = nl.add_bridge(topology::BRIDGE)?;
    nl.set_mtu(bridge, topology::MTU)?;
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
        nft(&cage_net::nft::router_table(topology::UPLINK_IFACE))?;
    }
    ipc::send(&ctl, "ready", None)?;

    let mut held: HashMap<i32, OwnedFd> = HashMap::new();
    while let Some((request, _)) = ipc::recv(&ctl)? {
        let words: Vec<&str> = request.split_whitespace().collect();
        let outcome = match words.as_slice() {
            ["add", slot, addr, route @ ..] => add_service(
                &nl,
                &router,
                bridge,
                slot,
                addr,
                route == ["route"],
                args.subnet,
            )
            .and_then(|ns| {
                let fd = ns.as_raw_fd();
                let copy = ns.try_clone()?;
                held.insert(fd, ns);
                Ok((format!("ok {fd}"), Some(copy)))
            }),
            ["connect", fd, port] => match (
                fd.parse::<i32>().ok().and_then(|f| held.get(&f)),
                port.parse::<u16>(),
            ) {
                (Some(ns), Ok(port)) => {
                    connect_inside(ns, port).map(|s| ("ok".to_string(), Some(s)))
                }
                _ => Err(anyhow::anyhow!("connect: no such namespace or bad port")),
            },
            ["internet", addrs @ ..] => addrs
                .iter()
                .map(|a| a.parse::<Ipv4Addr>().context("bad address"))
                .collect::<Result<Vec<_>>>()
                .and_then(|a| nft(&cage_net::nft::router_internet(&a)))
                .map(|_| ("ok".to_string(), None)),
            ["uplink", name, addr, prefix, gateway] => {
                uplink(&nl, name, addr, prefix, gateway).map(|_| ("ok".to_string(), None))
            }
            ["drop", fd] => {
                fd.parse::<i32>().ok().and_then(|f| held.remove(&f));
                Ok(("ok".to_string(), None))
            }
            _ => Err(anyhow::anyhow!("unknown request {request:?}")),
        };
        match outcome {
            Ok((reply, fd)) => ipc::send(&ctl, &reply, fd.as_ref().map(|f| f.as_raw_fd()))?,
            Err(e) => ipc::send(&ctl, &format!("err {e:#}"), None)?,
        }
    }
    Ok(())
}

/// Run an nft script in this (the router's) namespace.
fn nft(rules: &nftables::schema::Nftables<'_>) -> Result<()> {
    crate::services::uplink::run_nft_as(rules, true).context("in the router namespace")
}

/// The router's end of a veth the supervisor moved in (as root): address and default route.
fn uplink(nl: &Netlink, name: &str, addr: &str, prefix: &str, gateway: &str) -> Result<()> {
    let addr: Ipv4Addr = addr.parse().context("bad address")?;
    let prefix: u8 = prefix.parse().context("bad prefix")?;
    let gateway: Ipv4Addr = gateway.parse().context("bad gateway")?;
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
    slot: &str,
    addr: &str,
    route: bool,
    subnet: u8,
) -> Result<OwnedFd> {
    let slot: usize = slot.parse().context("bad slot")?;
    let addr: Ipv4Addr = addr.parse().context("bad address")?;
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

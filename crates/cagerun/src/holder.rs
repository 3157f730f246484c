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
//! `drop FD`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use anyhow::{bail, Context, Result};
use cage_net::{netlink::Netlink, netns, topology};
use clap::Args;
use nix::sched::{unshare, CloneFlags};
use nix::sys::socket::{connect, socket, SockFlag, SockType, SockaddrIn};

use crate::ipc;

#[derive(Args, Debug)]
pub struct HolderArgs {
    /// The cage subnet's third octet (10.89.N.0/24).
    #[arg(long)]
    subnet: u8,
    /// The cage's id (only so that `ps` on the host says whose holder this is).
    #[arg(long)]
    cage: Option<String>,
}

pub const CONTROL_FD: i32 = 3;

pub fn run(args: HolderArgs) -> Result<()> {
    // SAFETY: the supervisor put our end of the control socket at fd 3.
    let ctl = unsafe { OwnedFd::from_raw_fd(CONTROL_FD) };
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
    nl.add_address(
        bridge,
        IpAddr::V4(topology::router_address(args.subnet)),
        topology::PREFIX,
    )?;
    nl.set_up(bridge)?;
    ipc::send(&ctl, "ready", None)?;

    let mut held: HashMap<i32, OwnedFd> = HashMap::new();
    while let Some((request, _)) = ipc::recv(&ctl)? {
        let words: Vec<&str> = request.split_whitespace().collect();
        let outcome = match words.as_slice() {
            ["add", slot, addr] => add_service(&nl, &router, bridge, slot, addr).and_then(|ns| {
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

fn add_service(
    nl: &Netlink,
    router: &OwnedFd,
    bridge: u32,
    slot: &str,
    addr: &str,
) -> Result<OwnedFd> {
    let slot: usize = slot.parse().context("bad slot")?;
    let addr: Ipv4Addr = addr.parse().context("bad address")?;
    let ns = netns::create()?;
    let (outer, peer) = nl.add_veth(&topology::router_veth(slot), &topology::peer_veth(slot))?;
    let setup = || -> Result<()> {
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

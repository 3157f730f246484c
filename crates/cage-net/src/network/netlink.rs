//! rtnetlink, blocking: each [`Netlink`] is a socket opened in the calling thread's network
//! namespace at the time of [`Netlink::open`], and keeps talking to that namespace wherever
//! the thread goes afterwards. A current-thread runtime drives it, so no thread is started
//! (the holder that uses this must stay single-threaded to own a user namespace).

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

use futures_util::TryStreamExt;
use rtnetlink::{LinkBridge, LinkUnspec, LinkVeth};

use crate::error::{Error, Result};

pub struct Netlink {
    rt: tokio::runtime::Runtime,
    handle: rtnetlink::Handle,
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let what = what.into();
    move |source| Error::Netlink { what, source }
}

impl Netlink {
    pub fn open() -> Result<Self> {
        let io = |what: &str| {
            let what = what.to_string();
            move |source| Error::Io { what, source }
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(io("starting the netlink runtime"))?;
        let handle = rt.block_on(async {
            let (conn, handle, _) =
                rtnetlink::new_connection().map_err(io("opening a netlink socket"))?;
            tokio::spawn(conn);
            Ok::<_, Error>(handle)
        })?;
        Ok(Netlink { rt, handle })
    }

    pub fn index(&self, name: &str) -> Result<u32> {
        self.rt.block_on(async {
            let mut links = self
                .handle
                .link()
                .get()
                .match_name(name.to_string())
                .execute();
            match links.try_next().await {
                Ok(Some(link)) => Ok(link.header.index),
                Ok(None) => Err(Error::NoSuchLink(name.into())),
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {
                    Err(Error::NoSuchLink(name.into()))
                }
                Err(e) => Err(nl(format!("looking up {name}"))(e)),
            }
        })
    }

    fn set(&self, what: String, msg: rtnetlink::packet_route::link::LinkMessage) -> Result<()> {
        self.rt
            .block_on(self.handle.link().set(msg).execute())
            .map_err(nl(what))
    }

    pub fn set_up(&self, index: u32) -> Result<()> {
        self.set(
            format!("bringing link {index} up"),
            LinkUnspec::new_with_index(index).up().build(),
        )
    }

    pub fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        self.set(
            format!("setting link {index}'s MTU to {mtu}"),
            LinkUnspec::new_with_index(index).mtu(mtu).build(),
        )
    }

    /// Set a link's hardware address.
    pub fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<()> {
        self.set(
            format!("setting link {index}'s address"),
            LinkUnspec::new_with_index(index)
                .address(mac.to_vec())
                .build(),
        )
    }

    pub fn rename(&self, index: u32, name: &str) -> Result<()> {
        self.set(
            format!("renaming link {index} to {name}"),
            LinkUnspec::new_with_index(index).name(name).build(),
        )
    }

    pub fn attach_to_bridge(&self, index: u32, bridge: u32) -> Result<()> {
        self.set(
            format!("attaching link {index} to bridge {bridge}"),
            LinkUnspec::new_with_index(index).controller(bridge).build(),
        )
    }

    pub fn move_to(&self, index: u32, netns: BorrowedFd<'_>) -> Result<()> {
        self.set(
            format!("moving link {index} into another network namespace"),
            LinkUnspec::new_with_index(index)
                .setns_by_fd(netns.as_raw_fd())
                .build(),
        )
    }

    pub fn add_bridge(&self, name: &str) -> Result<u32> {
        self.rt
            .block_on(
                self.handle
                    .link()
                    .add(LinkBridge::new(name).build())
                    .execute(),
            )
            .map_err(nl(format!("creating bridge {name}")))?;
        self.index(name)
    }

    /// A veth pair; returns both indexes.
    pub fn add_veth(&self, name: &str, peer: &str) -> Result<(u32, u32)> {
        self.rt
            .block_on(
                self.handle
                    .link()
                    .add(LinkVeth::new(name, peer).build())
                    .execute(),
            )
            .map_err(nl(format!("creating veth {name}/{peer}")))?;
        Ok((self.index(name)?, self.index(peer)?))
    }

    pub fn delete(&self, index: u32) -> Result<()> {
        self.rt
            .block_on(self.handle.link().del(index).execute())
            .map_err(nl(format!("deleting link {index}")))
    }

    pub fn add_address(&self, index: u32, addr: IpAddr, prefix: u8) -> Result<()> {
        self.rt
            .block_on(self.handle.address().add(index, addr, prefix).execute())
            .map_err(nl(format!("adding {addr}/{prefix} to link {index}")))
    }

    /// The default route of this namespace, via `gateway`.
    pub fn add_default_route(&self, gateway: std::net::Ipv4Addr) -> Result<()> {
        let route = rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .gateway(gateway)
            .build();
        self.rt
            .block_on(self.handle.route().add(route).execute())
            .map_err(nl(format!("adding the default route via {gateway}")))
    }

    /// Every IPv4 destination this namespace delivers to itself, as `(address, prefix)`: the
    /// `local` and `broadcast` routes of its local table (each interface address, the
    /// broadcast addresses, 127.0.0.0/8, and any `ip route add local` block).
    pub fn local_addresses(&self) -> Result<Vec<(Ipv4Addr, u8)>> {
        use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteType};
        const RT_TABLE_LOCAL: u32 = 255;
        self.rt.block_on(async {
            let mut routes = self
                .handle
                .route()
                .get(rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().build())
                .execute();
            let mut found = Vec::new();
            while let Some(r) = routes
                .try_next()
                .await
                .map_err(nl("listing the local routing table"))?
            {
                let table = r
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        RouteAttribute::Table(t) => Some(*t),
                        _ => None,
                    })
                    .unwrap_or(r.header.table as u32);
                if table != RT_TABLE_LOCAL
                    || !matches!(r.header.kind, RouteType::Local | RouteType::Broadcast)
                {
                    continue;
                }
                let dst = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => Some(*d),
                    _ => None,
                });
                found.push((
                    dst.unwrap_or(Ipv4Addr::UNSPECIFIED),
                    r.header.destination_prefix_length,
                ));
            }
            Ok(found)
        })
    }
}

/// Every IPv4 destination the caller's network namespace delivers to itself
/// ([`Netlink::local_addresses`]), sorted, each once. Read in a thread of its own: the
/// netlink client runs its own runtime, which an async caller's thread may not start.
pub fn local_addresses() -> Result<Vec<(Ipv4Addr, u8)>> {
    let mut found = std::thread::spawn(|| Netlink::open().and_then(|nl| nl.local_addresses()))
        .join()
        .map_err(|_| Error::Panicked("listing the host's addresses".into()))??;
    found.sort();
    found.dedup();
    Ok(found)
}

/// A netlink socket told about IPv4 address and route changes in the namespace it was opened
/// in (the kernel's RTMGRP_IPV4_IFADDR and RTMGRP_IPV4_ROUTE groups): [`AddressEvents::wait`]
/// says whether any came. Plain and blocking: no runtime, usable from any thread.
pub struct AddressEvents {
    fd: OwnedFd,
}

impl AddressEvents {
    pub fn open() -> Result<Self> {
        const RTMGRP_IPV4_IFADDR: u32 = 0x10;
        const RTMGRP_IPV4_ROUTE: u32 = 0x40;
        // SAFETY: plain syscalls on a descriptor this function owns.
        unsafe {
            let raw = libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_ROUTE,
            );
            if raw < 0 {
                return Err(Error::Io {
                    what: "opening a netlink socket".into(),
                    source: std::io::Error::last_os_error(),
                });
            }
            let fd = OwnedFd::from_raw_fd(raw);
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as u16;
            addr.nl_groups = RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE;
            if libc::bind(
                raw,
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            ) < 0
            {
                return Err(Error::Io {
                    what: "subscribing to address changes".into(),
                    source: std::io::Error::last_os_error(),
                });
            }
            Ok(AddressEvents { fd })
        }
    }

    /// Wait up to `timeout` (None: for ever) for a change, or for `stop` to become readable
    /// (its other end closed). Ok(Some(true)): something changed (pending messages are
    /// drained; an overflowed queue counts as a change); Ok(Some(false)): the time ran out;
    /// Ok(None): stop.
    pub fn wait(&self, stop: impl AsFd, timeout: Option<Duration>) -> Result<Option<bool>> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let timeout = match timeout {
            None => PollTimeout::NONE,
            Some(t) => PollTimeout::try_from(t).unwrap_or(PollTimeout::MAX),
        };
        let mut fds = [
            PollFd::new(self.fd.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok(Some(false)),
            Err(e) => return Err(crate::error::sys("waiting for address changes")(e)),
        }
        if fds[1].any().unwrap_or(true) {
            return Ok(None);
        }
        if !fds[0].any().unwrap_or(false) {
            return Ok(Some(false));
        }
        let mut buf = [0u8; 8192];
        loop {
            // SAFETY: reading into a buffer we own, on our own descriptor.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n == 0 {
                break;
            }
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => break,
                    Some(libc::ENOBUFS) | Some(libc::EINTR) => continue,
                    _ => {
                        return Err(Error::Io {
                            what: "reading address changes".into(),
                            source: e,
                        })
                    }
                }
            }
        }
        Ok(Some(true))
    }
}

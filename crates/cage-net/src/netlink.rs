//! rtnetlink, blocking: each [`Netlink`] is a socket opened in the calling thread's network
//! namespace at the time of [`Netlink::open`], and keeps talking to that namespace wherever
//! the thread goes afterwards. A current-thread runtime drives it, so no thread is started
//! (the holder that uses this must stay single-threaded to own a user namespace).

use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

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
}

//! Internet mode as root: a veth pair from the host's network namespace into the cage's router
//! namespace, and the cage's nft table in the host's namespace ([`crate::firewall::rules::host_table`]).
//!
//! [`setup`] makes the host's side: the pair (the host's end `cagerunN` with 10.88.N.1/30, the
//! peer moved into the router namespace under a temporary name), the host end's sysctls, the
//! host table, the link up, and the host's IPv4 forwarding. The router's end (its name
//! `uplink`, 10.88.N.2, the default route) is the holder's to configure, inside. [`teardown`]
//! is its twin: it removes whatever of the host's side is there, so it also cleans up after a
//! supervisor that was killed.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::BorrowedFd;

use crate::firewall::nft::{self, NftError, Where};
use crate::firewall::rules;
use crate::network::netlink::Netlink;
use crate::topology;

/// What the host's side of a cage's uplink veth is.
#[derive(Debug, Clone)]
pub struct HostVethRequest<'a> {
    /// The host's end, in the host's namespace (`cagerunN`: cages side by side differ).
    pub host_veth: String,
    /// The router's end, named so until the holder renames it inside.
    pub peer: String,
    /// The host end's address, the router's gateway.
    pub host_address: Ipv4Addr,
    /// The router end's address: what the host table masquerades.
    pub router_address: Ipv4Addr,
    pub prefix: u8,
    pub mtu: u32,
    /// The cage's nft table in the host's namespace.
    pub table: String,
    /// The router namespace the peer moves into.
    pub router_netns: BorrowedFd<'a>,
}

impl<'a> HostVethRequest<'a> {
    /// The cage `cage_id` on subnet `subnet` ([`topology`]'s names and addresses).
    pub fn for_cage(subnet: u8, cage_id: &str, router_netns: BorrowedFd<'a>) -> Self {
        let host_veth = topology::uplink_host_veth(subnet);
        HostVethRequest {
            peer: format!("{host_veth}u"),
            host_veth,
            host_address: topology::uplink_host_address(subnet),
            router_address: topology::uplink_router_address(subnet),
            prefix: topology::UPLINK_PREFIX,
            mtu: topology::MTU,
            table: rules::host_table_name(cage_id),
            router_netns,
        }
    }
}

/// What [`setup`] made in the host's namespace, which [`teardown`] removes (and what the
/// cage's state records, so a later `up` or `down` can remove it too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostVeth {
    pub host_veth: String,
    pub table: String,
}

/// Each variant says what was being done; its source, what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum HostVethError {
    #[error(transparent)]
    Link(#[from] crate::Error),
    #[error("writing {path}")]
    Sysctl {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Nft(#[from] NftError),
    #[error("enabling IPv4 forwarding on the host")]
    Forwarding(#[source] std::io::Error),
}

/// Make the host's side of the uplink (see the module's page). Leftovers of a cage killed on
/// this subnet are removed first; on failure, whatever this made is removed again.
pub fn setup(req: &HostVethRequest<'_>) -> Result<HostVeth, HostVethError> {
    teardown(&req.host_veth, &req.table);
    if let Err(e) = make(req) {
        teardown(&req.host_veth, &req.table);
        return Err(e);
    }
    Ok(HostVeth {
        host_veth: req.host_veth.clone(),
        table: req.table.clone(),
    })
}

fn make(req: &HostVethRequest<'_>) -> Result<(), HostVethError> {
    let nl = Netlink::open()?;
    let (host, peer) = nl.add_veth(&req.host_veth, &req.peer)?;
    nl.set_mtu(host, req.mtu)?;
    nl.set_mtu(peer, req.mtu)?;
    nl.move_to(peer, req.router_netns)?;
    nl.add_address(host, IpAddr::V4(req.host_address), req.prefix)?;
    // The host's end must lead nowhere on the host: no route_localnet (127.0.0.0/8 from the
    // veth stays a martian, whatever the host's default says) and no IPv6 (the tables are
    // IPv4; a link-local address would be a second way in).
    let conf = |family: &str, key: &str, value: &str| {
        let path = format!("/proc/sys/net/{family}/conf/{}/{key}", req.host_veth);
        std::fs::write(&path, value).map_err(|source| HostVethError::Sysctl { path, source })
    };
    conf("ipv4", "route_localnet", "0")?;
    let _ = conf("ipv6", "disable_ipv6", "1");
    // The host table before the link is up: nothing passes unfiltered.
    nft::apply(
        &rules::host_table(&req.table, &req.host_veth, req.router_address),
        Where::Caller,
    )?;
    nl.set_up(host)?;
    // Forwarding is the host's switch (as docker and podman set it); it stays on after
    // teardown.
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(HostVethError::Forwarding)?;
    Ok(())
}

/// Remove the host's end of the veth (its peer goes with it) and the cage's host table, each
/// only if there.
pub fn teardown(host_veth: &str, table: &str) {
    if let Ok(nl) = Netlink::open() {
        if let Ok(i) = nl.index(host_veth) {
            let _ = nl.delete(i);
        }
    }
    // Absent already (never made, or removed): nft says so, and that is fine.
    let _ = nft::apply(&rules::delete_table(table), Where::Caller);
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn a_cage_on_subnet_7() {
        let ns = std::fs::File::open("/proc/self/ns/net").unwrap();
        let req = HostVethRequest::for_cage(7, "clawbot-1a2b", ns.as_fd());
        assert_eq!(req.host_veth, "cagerun7");
        assert_eq!(req.peer, "cagerun7u");
        assert_eq!(req.host_address, Ipv4Addr::new(10, 88, 7, 1));
        assert_eq!(req.router_address, Ipv4Addr::new(10, 88, 7, 2));
        assert_eq!(req.prefix, 30);
        assert_eq!(req.table, "cagerun-clawbot_1a2b");
    }
}

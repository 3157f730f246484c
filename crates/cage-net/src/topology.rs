//! Names and addresses: which subnet a cage uses, which address each service gets, what its
//! interfaces are called. Pure decisions, no syscalls.

use std::net::Ipv4Addr;

use crate::error::{Error, Result};

/// The bridge in the router namespace, and the address the router has on it.
pub const BRIDGE: &str = "cage0";
/// The service's side of its veth, inside its own namespace.
pub const SERVICE_IFACE: &str = "eth0";
pub const PREFIX: u8 = 24;
/// The MTU of every link in the cage (bridge, veths; slirp4netns's tap too). A user-mode
/// uplink handles a packet at a time: 64 KiB segments instead of 1500-byte ones are several
/// times its throughput (DESIGN.md: slirp4netns 0.8 Gbit/s at 1500, 2.9 at 65520), and the
/// veths themselves are faster with fewer, larger packets.
pub const MTU: u32 = 65520;

/// The bridge's hardware address: fixed (locally administered, the subnet in it). A bridge
/// left to choose takes the lowest address of its ports and changes it as ports come and go:
/// when a tool sandbox's port came and went, the services' ARP entries for the router pointed
/// at an address nobody had, and their lookups and connections to the router vanished until
/// the entries expired.
pub fn bridge_mac(subnet: u8) -> [u8; 6] {
    [0x02, 0x63, 0x61, 0x67, subnet, 0x01]
}

/// A /24 in 10.89.0.0/16 (podman's default range for user networks is 10.89.x as well).
/// `seed` spreads cages (a hash of the cage's directory); `taken` are the third octets
/// running cages already use, so two cages side by side never share one.
pub fn pick_subnet(seed: u64, taken: &[u8]) -> Option<u8> {
    let start = (seed % 254) as u8 + 1;
    (0..254u16)
        .map(|i| ((start as u16 - 1 + i) % 254) as u8 + 1)
        .find(|o| !taken.contains(o))
}

pub fn router_address(subnet: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 89, subnet, 1)
}

/// The address of the service in slot `slot` (0-based, in cage.toml order).
pub fn service_address(subnet: u8, slot: usize) -> Result<Ipv4Addr> {
    let host = slot + 2;
    if host > 254 {
        return Err(Error::SubnetFull);
    }
    Ok(Ipv4Addr::new(10, 89, subnet, host as u8))
}

/// Slots (addresses .130–.254) of tool sandboxes with an `internet = [...]` list: each gets a
/// network namespace on the bridge whose only way anywhere is the router (its resolver and
/// egress proxy); the router's bridge table keeps them from every other port.
pub const SANDBOX_SLOTS: std::ops::RangeInclusive<usize> = 128..=252;

/// The router-side veth name of slot `slot`: short (IFNAMSIZ is 16) and unique in the
/// router namespace, which is the cage's own. A sandbox's starts with [`SANDBOX_VETH_PREFIX`].
pub fn router_veth(slot: usize) -> String {
    if SANDBOX_SLOTS.contains(&slot) {
        format!("{SANDBOX_VETH_PREFIX}{slot}")
    } else {
        format!("ve{slot}")
    }
}
pub const SANDBOX_VETH_PREFIX: &str = "vs";

/// The name a fresh veth peer has before it moves and becomes [`SERVICE_IFACE`].
pub fn peer_veth(slot: usize) -> String {
    format!("vp{slot}")
}

/// The router's interface out of the cage (slirp4netns's tap rootless, a veth to the host
/// as root), inside the router namespace.
pub const UPLINK_IFACE: &str = "uplink";

/// As root, the uplink veth's /30 in 10.88.0.0/16: the host's end (.1), the router's (.2).
/// One per cage subnet, so two cages never share one.
pub fn uplink_host_address(subnet: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 88, subnet, 1)
}
pub fn uplink_router_address(subnet: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 88, subnet, 2)
}
pub const UPLINK_PREFIX: u8 = 30;

/// The host-side name of a cage's uplink veth as root (in the host's namespace: it carries
/// the subnet so cages side by side differ).
pub fn uplink_host_veth(subnet: u8) -> String {
    format!("cagerun{subnet}")
}

/// The egress proxy's port on the router address (where the router's table redirects the TCP
/// of services with an `internet = [...]` list); their resolver is the router's port 53.
pub const EGRESS_PROXY_PORT: u16 = 15001;
pub const EGRESS_DNS_PORT: u16 = 53;

/// slirp4netns's fixed addresses: its gateway (which is also the host's loopback) and DNS.
pub const SLIRP_HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
pub const SLIRP_DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_skip_taken_and_wrap() {
        assert_eq!(pick_subnet(0, &[]), Some(1));
        assert_eq!(pick_subnet(0, &[1, 2]), Some(3));
        assert_eq!(pick_subnet(253, &[254]), Some(1));
        let all: Vec<u8> = (1..=254).collect();
        assert_eq!(pick_subnet(7, &all), None);
    }

    #[test]
    fn addresses() {
        assert_eq!(router_address(5), Ipv4Addr::new(10, 89, 5, 1));
        assert_eq!(service_address(5, 0).unwrap(), Ipv4Addr::new(10, 89, 5, 2));
        assert!(service_address(5, 253).is_err());
    }
}

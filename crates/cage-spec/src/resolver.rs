//! The resolver file (`/etc/resolv.conf`) of a service with internet: which nameservers it is
//! told, by uplink.
//!
//! - slirp4netns (rootless): its DNS (the one port of its network the guard lets through;
//!   slirp4netns forwards it to the host's resolver).
//! - the host veth (as root): the host's nameservers, reached through the NAT like any server,
//!   from systemd-resolved's upstream list when /etc/resolv.conf names only local ones (its
//!   stub 127.0.0.53, or a resolver on one of the host's own addresses): the host is
//!   unreachable from the cage, so a local resolver is never written. At most three.
//!
//! Without internet mode, lookups fail like every other packet. Pure: cage-net reads the
//! host's files and addresses and passes them in.

use std::net::Ipv4Addr;

/// Which uplink the cage has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// slirp4netns, whose DNS forwarder is at this address.
    Slirp4netns {
        dns: Ipv4Addr,
    },
    HostVeth,
}

/// A resolver file naming one server: slirp4netns's DNS, or cagerun's egress resolver on
/// the router for `internet = [...]` services and sandboxes.
pub fn only(server: Ipv4Addr) -> String {
    format!("nameserver {server}\n")
}

/// The host's resolver files, in the order they are asked.
pub const HOST_FILES: [&str; 2] = ["/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"];

/// The resolver file for a service reaching out `via`, from what the caller read: the
/// host's local addresses and `read`'s contents of each of [`HOST_FILES`].
pub fn resolv_conf(via: Via, local: &[(Ipv4Addr, u8)], read: impl Fn(&str) -> String) -> String {
    if let Via::Slirp4netns { dns } = via {
        return only(dns);
    }
    let is_local = |ip: Ipv4Addr| {
        ip.is_loopback()
            || ip.is_unspecified()
            || local.iter().any(|&(a, len)| contains((a, len), ip))
    };
    let servers = |path: &str| -> Vec<String> {
        read(path)
            .lines()
            .filter_map(|l| l.strip_prefix("nameserver"))
            .map(|a| a.trim().to_string())
            .filter(|a| a.parse::<Ipv4Addr>().is_ok_and(|ip| !is_local(ip)))
            .collect()
    };
    let mut list = Vec::new();
    for path in HOST_FILES {
        list = servers(path);
        if !list.is_empty() {
            break;
        }
    }
    list.iter()
        .take(3)
        .map(|a| format!("nameserver {a}\n"))
        .collect()
}

fn contains((net, len): (Ipv4Addr, u8), ip: Ipv4Addr) -> bool {
    let mask = u32::MAX.checked_shl(32 - len.min(32) as u32).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(etc: &'static str, systemd: &'static str) -> impl Fn(&str) -> String {
        move |p| match p {
            "/etc/resolv.conf" => etc.to_string(),
            "/run/systemd/resolve/resolv.conf" => systemd.to_string(),
            _ => String::new(),
        }
    }

    #[test]
    fn rootless_asks_slirp4netns() {
        assert_eq!(
            resolv_conf(
                Via::Slirp4netns {
                    dns: Ipv4Addr::new(10, 0, 2, 3)
                },
                &[],
                files("nameserver 1.1.1.1\n", "")
            ),
            "nameserver 10.0.2.3\n"
        );
    }

    #[test]
    fn as_root_never_a_local_resolver() {
        let local = [(Ipv4Addr::new(192, 168, 1, 10), 32)];
        // The stub and a resolver on the host's own address are skipped; IPv6 too.
        let etc = "nameserver 127.0.0.53\nnameserver 192.168.1.10\nnameserver ::1\n";
        assert_eq!(
            resolv_conf(Via::HostVeth, &local, files(etc, "nameserver 9.9.9.9\n")),
            "nameserver 9.9.9.9\n"
        );
        let etc = "search lan\nnameserver 8.8.8.8\nnameserver 1.1.1.1\nnameserver 8.8.4.4\nnameserver 9.9.9.9\n";
        assert_eq!(
            resolv_conf(Via::HostVeth, &local, files(etc, "nameserver 4.4.4.4\n")),
            "nameserver 8.8.8.8\nnameserver 1.1.1.1\nnameserver 8.8.4.4\n"
        );
        assert_eq!(resolv_conf(Via::HostVeth, &local, files("", "")), "");
    }
}

//! nftables rules for internet mode, rendered as `nft -f` scripts (pure text; the callers run
//! `nft` in the namespace the rules belong to). Written as scripts rather than through the
//! `nftables` crate's JSON: it would still run the same binary, and a script reads as what
//! it does.
//!
//! Two tables:
//! - **router** (`ip cagerun` in the cage's router namespace, present for the cage's whole
//!   life): routed traffic to and from the uplink is allowed only for the addresses in the set
//!   `internet`, masqueraded to the uplink's address. Empty set = internet off: new and live
//!   TCP connections are answered with a reset, anything else rejected. Traffic between
//!   services on the bridge is never routed, so these rules do not see it.
//! - **host** (as root only, `ip cagerun-<CAGE>` in the host's namespace, removed on `down`):
//!   what leaves the uplink veth is masqueraded out of the host, replies come back, and the
//!   host's end of the veth leads to the host's own 127.0.0.1 (like slirp4netns's 10.0.2.2).

use std::net::Ipv4Addr;

pub const ROUTER_TABLE: &str = "cagerun";

/// The router namespace's table (created once, when the cage's network is made).
pub fn router_table(uplink: &str) -> String {
    format!(
        r#"table ip {ROUTER_TABLE} {{
  set internet {{ type ipv4_addr; }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    oifname "{uplink}" ip saddr @internet accept
    iifname "{uplink}" ip daddr @internet ct state established,related accept
    oifname "{uplink}" meta l4proto tcp reject with tcp reset
    oifname "{uplink}" reject
    iifname "{uplink}" drop
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "{uplink}" ip saddr @internet masquerade
  }}
}}
"#
    )
}

/// Internet on for exactly these service addresses (the set is replaced, not extended).
pub fn router_internet(addresses: &[Ipv4Addr]) -> String {
    let mut s = format!("flush set ip {ROUTER_TABLE} internet\n");
    if !addresses.is_empty() {
        let list: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
        s.push_str(&format!(
            "add element ip {ROUTER_TABLE} internet {{ {} }}\n",
            list.join(", ")
        ));
    }
    s
}

/// The host's table of a cage (as root).
pub fn host_table_name(cage_id: &str) -> String {
    // nft names: letters, digits, '-', '_' (a cage id is name-hash).
    let clean: String = cage_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("cagerun-{clean}")
}

pub fn host_table(
    name: &str,
    host_veth: &str,
    host_addr: Ipv4Addr,
    router_addr: Ipv4Addr,
) -> String {
    format!(
        r#"table ip {name} {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname "{host_veth}" ip daddr {host_addr} dnat to 127.0.0.1
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname "{host_veth}" ip saddr {router_addr} accept
    oifname "{host_veth}" ct state established,related accept
    iifname "{host_veth}" drop
    oifname "{host_veth}" drop
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {router_addr} oifname != "{host_veth}" masquerade
  }}
}}
"#
    )
}

pub fn delete_table(name: &str) -> String {
    format!("delete table ip {name}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internet_is_a_set_of_addresses_replaced_whole() {
        assert!(router_table("uplink").contains("oifname \"uplink\" ip saddr @internet accept"));
        let on = router_internet(&[Ipv4Addr::new(10, 89, 3, 3), Ipv4Addr::new(10, 89, 3, 5)]);
        assert_eq!(
            on,
            "flush set ip cagerun internet\nadd element ip cagerun internet { 10.89.3.3, 10.89.3.5 }\n"
        );
        assert_eq!(router_internet(&[]), "flush set ip cagerun internet\n");
        assert_eq!(host_table_name("clawbot-1a2b"), "cagerun-clawbot_1a2b");
    }
}

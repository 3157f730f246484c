//! nftables tables for internet mode, built with the `nftables` crate (its typed model of
//! nft's JSON API) and rendered as the JSON `nft -j` reads. Pure: [`super::nft::apply`] runs
//! `nft` in the namespace the rules belong to (the holder as uid 0 of the cage's user
//! namespace, which the crate's own runner cannot do).
//!
//! Internet means the internet: the host itself (its loopback and every address it has) is
//! never reachable from a cage service, with or without internet mode. Reaching one host port
//! on purpose would be an explicit grant (a `host:PORT` egress rule) that does not exist yet.
//!
//! Three tables:
//! - **router** (`ip cagerun` in the cage's router namespace, present for the cage's whole
//!   life): routed traffic to and from the uplink is allowed only for the addresses in the set
//!   `internet`, masqueraded to the uplink's address. Empty set = internet off: new and live
//!   TCP connections are answered with a reset, anything else rejected. Traffic between
//!   services on the bridge is never routed, so these rules do not see it.
//! - **guard** (rootless only, `ip cagerun-guard` in the router namespace, made when
//!   slirp4netns starts): slirp4netns connects from the host's own network stack, so whatever
//!   it is asked to reach that is the host, the host answers. Rejected before anything is
//!   forwarded to it: slirp4netns's own network 10.0.2.0/24 (10.0.2.2 is the host's loopback
//!   unless `--disable-host-loopback`; 10.0.2.3 on any port is the host's resolver address on
//!   that port) except DNS to 10.0.2.3:53, and the set `host`: every address the host has
//!   (its local routing table, kept current by the caller) plus 0.0.0.0/8, 127.0.0.0/8,
//!   multicast and the limited broadcast.
//! - **host** (as root only, `ip cagerun-<CAGE>` in the host's namespace, removed on `down`):
//!   what leaves the uplink veth is masqueraded out of the host, replies come back; nothing
//!   arriving on the veth is delivered to the host itself (the input hook: only replies to
//!   connections the host opened pass), so neither the veth's host end nor any other host
//!   address answers the cage. No DNAT, no route_localnet: 127.0.0.0/8 from the veth is a
//!   martian the kernel drops.

use std::borrow::Cow;
use std::net::Ipv4Addr;

use nftables::batch::Batch;
use std::collections::HashSet;

use nftables::expr::{
    Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, CT,
};
use nftables::schema::{
    Chain, Element, FlushObject, NfCmd, NfListObject, Nftables, Rule, Set, SetFlag, SetTypeValue,
    Table,
};
use nftables::stmt::{JumpTarget, Match, Operator, Reject, RejectType, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use crate::topology;

pub const ROUTER_TABLE: &str = "cagerun";
const SET: &str = "internet";
/// The rootless guard's table in the router namespace, and its set of host addresses.
pub const GUARD_TABLE: &str = "cagerun-guard";
const HOST_SET: &str = "host";
// nft's named priorities: filter 0, srcnat 100. The guard runs before the router's filter
// (a reject is final whatever another chain says; the order only fixes which one answers).
const PRIO_FILTER: i32 = 0;
const PRIO_GUARD: i32 = -10;
const PRIO_SRCNAT: i32 = 100;
// Before conntrack's NAT (dstnat -100): what is dropped is never redirected.
const PRIO_RAW_FILTER: i32 = -150;
const PRIO_DSTNAT: i32 = -100;
/// The router's bridge table that keeps tool sandboxes' ports apart ([`egress_table`]).
pub const SANDBOX_BRIDGE_TABLE: &str = "cagerun-sandboxes";
/// The router's egress table and its set of sources ([`egress_table`]).
pub const EGRESS_TABLE: &str = "cagerun-egress";
const EGRESS_SET: &str = "egress";

/// slirp4netns's network (its defaults: 10.0.2.2 the host, 10.0.2.3 the resolver).
pub const SLIRP_NETWORK: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 0, 2, 0), 24);
/// Destinations that are the host (or every host on a link) whatever its interfaces are:
/// "this host" 0.0.0.0/8 (connect() to 0.0.0.0 reaches the local host), loopback, multicast
/// (looped back to the host's own listeners) and the limited broadcast.
pub const ALWAYS_HOST: [(Ipv4Addr, u8); 4] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    (Ipv4Addr::new(255, 255, 255, 255), 32),
];

/// The document `nft -j` reads.
pub fn to_json(n: &Nftables<'_>) -> String {
    serde_json::to_string(n).expect("nftables documents serialize")
}

fn text(v: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(v.into()))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn ip(field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed("ip"),
            field: Cow::Borrowed(field),
        },
    )))
}

fn matches(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

/// `PROTO dport PORT` (`tcp` or `udp`).
fn dport(proto: &'static str, port: u16) -> Statement<'static> {
    matches(
        Expression::Named(NamedExpression::Payload(Payload::PayloadField(
            PayloadField {
                protocol: Cow::Borrowed(proto),
                field: Cow::Borrowed("dport"),
            },
        ))),
        Operator::EQ,
        Expression::Number(u32::from(port)),
    )
}

fn oif(name: &str) -> Statement<'static> {
    matches(meta(MetaKey::Oifname), Operator::EQ, text(name))
}

fn iif(name: &str) -> Statement<'static> {
    matches(meta(MetaKey::Iifname), Operator::EQ, text(name))
}

fn established() -> Statement<'static> {
    matches(
        Expression::Named(NamedExpression::CT(CT {
            key: Cow::Borrowed("state"),
            family: None,
            dir: None,
        })),
        Operator::IN,
        Expression::List(vec![text("established"), text("related")]),
    )
}

fn table(name: &str) -> NfListObject<'static> {
    NfListObject::Table(Table {
        family: NfFamily::IP,
        name: Cow::Owned(name.to_string()),
        handle: None,
    })
}

fn base_chain(
    table: &str,
    name: &str,
    kind: NfChainType,
    hook: NfHook,
    prio: i32,
) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family: NfFamily::IP,
        table: Cow::Owned(table.to_string()),
        name: Cow::Owned(name.to_string()),
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..Default::default()
    })
}

fn rule(table: &str, chain: &str, expr: Vec<Statement<'static>>) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: NfFamily::IP,
        table: Cow::Owned(table.to_string()),
        chain: Cow::Owned(chain.to_string()),
        expr: Cow::Owned(expr),
        ..Default::default()
    })
}

fn internet_set() -> Set<'static> {
    Set {
        family: NfFamily::IP,
        table: Cow::Borrowed(ROUTER_TABLE),
        name: Cow::Borrowed(SET),
        set_type: SetTypeValue::Single(nftables::schema::SetType::Ipv4Addr),
        ..Default::default()
    }
}

/// The router namespace's table (created once, when the cage's network is made).
pub fn router_table(uplink: &str) -> Nftables<'static> {
    let t = ROUTER_TABLE;
    let in_set = |field| matches(ip(field), Operator::EQ, text(format!("@{SET}")));
    let mut b = Batch::new();
    b.add(table(t));
    b.add(NfListObject::Set(Box::new(internet_set())));
    b.add(base_chain(
        t,
        "forward",
        NfChainType::Filter,
        NfHook::Forward,
        PRIO_FILTER,
    ));
    b.add(rule(
        t,
        "forward",
        vec![oif(uplink), in_set("saddr"), Statement::Accept(None)],
    ));
    b.add(rule(
        t,
        "forward",
        vec![
            iif(uplink),
            in_set("daddr"),
            established(),
            Statement::Accept(None),
        ],
    ));
    b.add(rule(
        t,
        "forward",
        vec![
            oif(uplink),
            matches(meta(MetaKey::L4proto), Operator::EQ, text("tcp")),
            Statement::Reject(Some(Reject::new(Some(RejectType::TCPReset), None))),
        ],
    ));
    b.add(rule(
        t,
        "forward",
        vec![oif(uplink), Statement::Reject(None)],
    ));
    b.add(rule(t, "forward", vec![iif(uplink), Statement::Drop(None)]));
    b.add(base_chain(
        t,
        "postrouting",
        NfChainType::NAT,
        NfHook::Postrouting,
        PRIO_SRCNAT,
    ));
    b.add(rule(
        t,
        "postrouting",
        vec![oif(uplink), in_set("saddr"), Statement::Masquerade(None)],
    ));
    b.to_nftables()
}

/// Internet on for exactly these service addresses (the set is replaced, not extended).
pub fn router_internet(addresses: &[Ipv4Addr]) -> Nftables<'static> {
    let mut b = Batch::new();
    b.add_cmd(NfCmd::Flush(FlushObject::Set(Box::new(internet_set()))));
    if !addresses.is_empty() {
        b.add(NfListObject::Element(Element {
            family: NfFamily::IP,
            table: Cow::Borrowed(ROUTER_TABLE),
            name: Cow::Borrowed(SET),
            elem: Cow::Owned(addresses.iter().map(|a| text(a.to_string())).collect()),
        }));
    }
    b.to_nftables()
}

/// The router namespace's egress table (when some service or sandbox has an `internet = [...]`
/// list), beside [`ROUTER_TABLE`]: for the sources in its set `egress`, from the bridge, to
/// anything outside the cage's subnet,
/// - TCP is redirected to the proxy's port on the router (it reads the original destination
///   with `SO_ORIGINAL_DST`);
/// - everything else is logged to NFLOG group `log_group` (the proxy writes the audit entry)
///   and dropped, before any routing decision: UDP (QUIC, DNS to outside resolvers), ICMP.
///
/// Only the sources in the set may reach the router's resolver (UDP 53) and proxy ports; their
/// DNS to the router is the one thing they send that stays in the cage. Whether the internet is
/// on is the proxy's decision, not this table's: a source stays in the set while internet is
/// off, so its attempts are still refused by name and logged.
pub fn egress_table(subnet: u8, proxy_port: u16, log_group: u16) -> Nftables<'static> {
    let t = EGRESS_TABLE;
    let router = topology::router_address(subnet);
    let outside = || {
        matches(
            ip("daddr"),
            Operator::NEQ,
            prefix(Ipv4Addr::new(10, 89, subnet, 0), topology::PREFIX),
        )
    };
    let in_set = || matches(ip("saddr"), Operator::EQ, text(format!("@{EGRESS_SET}")));
    let not_in_set = || matches(ip("saddr"), Operator::NEQ, text(format!("@{EGRESS_SET}")));
    let l4 = |op, proto: &str| matches(meta(MetaKey::L4proto), op, text(proto));
    let mut b = Batch::new();
    b.add(table(t));
    b.add(NfListObject::Set(Box::new(Set {
        family: NfFamily::IP,
        table: Cow::Borrowed(EGRESS_TABLE),
        name: Cow::Borrowed(EGRESS_SET),
        set_type: SetTypeValue::Single(nftables::schema::SetType::Ipv4Addr),
        ..Default::default()
    })));
    b.add(base_chain(
        t,
        "drops",
        NfChainType::Filter,
        NfHook::Prerouting,
        PRIO_RAW_FILTER,
    ));
    b.add(rule(
        t,
        "drops",
        vec![
            iif(topology::BRIDGE),
            in_set(),
            outside(),
            l4(Operator::NEQ, "tcp"),
            Statement::Log(Some(nftables::stmt::Log {
                prefix: None,
                group: Some(u32::from(log_group)),
                snaplen: None,
                queue_threshold: None,
                level: None,
                flags: None,
            })),
            Statement::Drop(None),
        ],
    ));
    b.add(base_chain(
        t,
        "redirect",
        NfChainType::NAT,
        NfHook::Prerouting,
        PRIO_DSTNAT,
    ));
    b.add(rule(
        t,
        "redirect",
        vec![
            iif(topology::BRIDGE),
            in_set(),
            outside(),
            l4(Operator::EQ, "tcp"),
            Statement::Redirect(Some(nftables::stmt::NAT {
                addr: None,
                family: None,
                port: Some(Expression::Number(proxy_port as u32)),
                flags: None,
            })),
        ],
    ));
    // Tool sandboxes' ports on the bridge reach the router (its own address is delivered
    // locally, not forwarded) and no other port: no service, no other sandbox.
    let br = SANDBOX_BRIDGE_TABLE;
    b.add(NfListObject::Table(Table {
        family: NfFamily::Bridge,
        name: Cow::Borrowed(br),
        handle: None,
    }));
    b.add(NfListObject::Chain(Chain {
        family: NfFamily::Bridge,
        table: Cow::Borrowed(br),
        name: Cow::Borrowed("forward"),
        _type: Some(NfChainType::Filter),
        hook: Some(NfHook::Forward),
        prio: Some(PRIO_FILTER),
        policy: Some(NfChainPolicy::Accept),
        ..Default::default()
    }));
    let sandbox_ports = format!("{}*", topology::SANDBOX_VETH_PREFIX);
    for key in [MetaKey::Iifname, MetaKey::Oifname] {
        b.add(NfListObject::Rule(Rule {
            family: NfFamily::Bridge,
            table: Cow::Borrowed(br),
            chain: Cow::Borrowed("forward"),
            expr: Cow::Owned(vec![
                matches(meta(key), Operator::EQ, text(sandbox_ports.clone())),
                Statement::Drop(None),
            ]),
            ..Default::default()
        }));
    }
    b.add(base_chain(
        t,
        "input",
        NfChainType::Filter,
        NfHook::Input,
        PRIO_FILTER,
    ));
    for (proto, port) in [("udp", 53), ("tcp", 53), ("tcp", proxy_port)] {
        b.add(rule(
            t,
            "input",
            vec![
                iif(topology::BRIDGE),
                matches(ip("daddr"), Operator::EQ, text(router.to_string())),
                dport(proto, port),
                not_in_set(),
                Statement::Drop(None),
            ],
        ));
    }
    b.to_nftables()
}

/// Exactly these addresses are egress sources (the set is replaced, not extended).
pub fn egress_sources(addresses: &[Ipv4Addr]) -> Nftables<'static> {
    let set = Set {
        family: NfFamily::IP,
        table: Cow::Borrowed(EGRESS_TABLE),
        name: Cow::Borrowed(EGRESS_SET),
        set_type: SetTypeValue::Single(nftables::schema::SetType::Ipv4Addr),
        ..Default::default()
    };
    let mut b = Batch::new();
    b.add_cmd(NfCmd::Flush(FlushObject::Set(Box::new(set))));
    if !addresses.is_empty() {
        b.add(NfListObject::Element(Element {
            family: NfFamily::IP,
            table: Cow::Borrowed(EGRESS_TABLE),
            name: Cow::Borrowed(EGRESS_SET),
            elem: Cow::Owned(addresses.iter().map(|a| text(a.to_string())).collect()),
        }));
    }
    b.to_nftables()
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

/// As root: masquerade what the cage sends out of the host; deliver nothing new from the
/// veth to the host itself. Its teardown twin is [`delete_table`].
pub fn host_table(name: &str, host_veth: &str, router_addr: Ipv4Addr) -> Nftables<'static> {
    let is = |field, a: Ipv4Addr| matches(ip(field), Operator::EQ, text(a.to_string()));
    let mut b = Batch::new();
    b.add(table(name));
    // Input sees exactly the packets addressed to the host (any of its addresses, the veth's
    // own end included). From the cage only replies to what the host opened pass: new
    // connections to a host listener, loopback-bound or not, are dropped.
    b.add(base_chain(
        name,
        "input",
        NfChainType::Filter,
        NfHook::Input,
        PRIO_FILTER,
    ));
    b.add(rule(
        name,
        "input",
        vec![iif(host_veth), established(), Statement::Accept(None)],
    ));
    b.add(rule(
        name,
        "input",
        vec![iif(host_veth), Statement::Drop(None)],
    ));
    b.add(base_chain(
        name,
        "forward",
        NfChainType::Filter,
        NfHook::Forward,
        PRIO_FILTER,
    ));
    b.add(rule(
        name,
        "forward",
        vec![
            iif(host_veth),
            is("saddr", router_addr),
            Statement::Accept(None),
        ],
    ));
    b.add(rule(
        name,
        "forward",
        vec![oif(host_veth), established(), Statement::Accept(None)],
    ));
    b.add(rule(
        name,
        "forward",
        vec![iif(host_veth), Statement::Drop(None)],
    ));
    b.add(rule(
        name,
        "forward",
        vec![oif(host_veth), Statement::Drop(None)],
    ));
    b.add(base_chain(
        name,
        "postrouting",
        NfChainType::NAT,
        NfHook::Postrouting,
        PRIO_SRCNAT,
    ));
    b.add(rule(
        name,
        "postrouting",
        vec![
            is("saddr", router_addr),
            matches(meta(MetaKey::Oifname), Operator::NEQ, text(host_veth)),
            Statement::Masquerade(None),
        ],
    ));
    b.to_nftables()
}

fn prefix(addr: Ipv4Addr, len: u8) -> Expression<'static> {
    if len >= 32 {
        return text(addr.to_string());
    }
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(text(addr.to_string())),
        len: len as u32,
    }))
}

fn mask(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - len.min(32) as u32).unwrap_or(0)
}

/// `(address, prefix)` blocks, with [`ALWAYS_HOST`], as nft set elements: masked to their
/// prefix, any inside another left out (an interval set refuses overlapping elements), sorted.
fn host_elements(host: &[(Ipv4Addr, u8)]) -> Vec<Expression<'static>> {
    let mut blocks: Vec<(u32, u8)> = ALWAYS_HOST
        .iter()
        .chain(host)
        .map(|&(a, len)| (u32::from(a) & mask(len), len.min(32)))
        .collect();
    // Widest first: a block is only compared with the wider or equal ones kept before it.
    blocks.sort_by_key(|&(a, len)| (len, a));
    let mut kept: Vec<(u32, u8)> = Vec::new();
    for (a, len) in blocks {
        if !kept.iter().any(|&(k, klen)| a & mask(klen) == k) {
            kept.push((a, len));
        }
    }
    kept.sort();
    kept.into_iter()
        .map(|(a, len)| prefix(Ipv4Addr::from(a), len))
        .collect()
}

fn host_set() -> Set<'static> {
    Set {
        family: NfFamily::IP,
        table: Cow::Borrowed(GUARD_TABLE),
        name: Cow::Borrowed(HOST_SET),
        set_type: SetTypeValue::Single(nftables::schema::SetType::Ipv4Addr),
        flags: Some(HashSet::from([SetFlag::Interval])),
        ..Default::default()
    }
}

fn host_set_elements(host: &[(Ipv4Addr, u8)]) -> NfListObject<'static> {
    NfListObject::Element(Element {
        family: NfFamily::IP,
        table: Cow::Borrowed(GUARD_TABLE),
        name: Cow::Borrowed(HOST_SET),
        elem: Cow::Owned(host_elements(host)),
    })
}

/// Rootless: the router namespace's guard in front of slirp4netns (see the module's page).
/// `host`: the host's local addresses as `(address, prefix)` blocks. The table goes with the
/// router namespace (the holder's), so it needs no teardown of its own.
pub fn slirp_guard(uplink: &str, host: &[(Ipv4Addr, u8)]) -> Nftables<'static> {
    let t = GUARD_TABLE;
    let to = |a: Expression<'static>| matches(ip("daddr"), Operator::EQ, a);
    let mut b = Batch::new();
    b.add(table(t));
    b.add(NfListObject::Set(Box::new(host_set())));
    b.add(host_set_elements(host));
    // Refused at once (a TCP reset, ICMP otherwise), like internet off: no timeouts.
    b.add(NfListObject::Chain(Chain {
        family: NfFamily::IP,
        table: Cow::Borrowed(t),
        name: Cow::Borrowed("refuse"),
        ..Default::default()
    }));
    b.add(rule(
        t,
        "refuse",
        vec![
            matches(meta(MetaKey::L4proto), Operator::EQ, text("tcp")),
            Statement::Reject(Some(Reject::new(Some(RejectType::TCPReset), None))),
        ],
    ));
    b.add(rule(t, "refuse", vec![Statement::Reject(None)]));
    let refuse = || {
        Statement::Jump(JumpTarget {
            target: Cow::Borrowed("refuse"),
        })
    };
    b.add(base_chain(
        t,
        "forward",
        NfChainType::Filter,
        NfHook::Forward,
        PRIO_GUARD,
    ));
    for proto in ["udp", "tcp"] {
        b.add(rule(
            t,
            "forward",
            vec![
                oif(uplink),
                to(text(topology::SLIRP_DNS.to_string())),
                dport(proto, 53),
                Statement::Accept(None),
            ],
        ));
    }
    b.add(rule(
        t,
        "forward",
        vec![
            oif(uplink),
            to(prefix(SLIRP_NETWORK.0, SLIRP_NETWORK.1)),
            refuse(),
        ],
    ));
    b.add(rule(
        t,
        "forward",
        vec![oif(uplink), to(text(format!("@{HOST_SET}"))), refuse()],
    ));
    b.to_nftables()
}

/// Rootless: the guard's host addresses replaced whole (the host's addresses changed).
pub fn slirp_guard_hosts(host: &[(Ipv4Addr, u8)]) -> Nftables<'static> {
    let mut b = Batch::new();
    b.add_cmd(NfCmd::Flush(FlushObject::Set(Box::new(host_set()))));
    b.add(host_set_elements(host));
    b.to_nftables()
}

pub fn delete_table(name: &str) -> Nftables<'static> {
    let mut b = Batch::new();
    b.delete(table(name));
    b.to_nftables()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internet_is_a_set_of_addresses_replaced_whole() {
        let router = to_json(&router_table("uplink"));
        assert!(
            router.contains(r#""name":"internet","type":"ipv4_addr""#),
            "{router}"
        );
        assert!(router.contains(r#""right":"@internet""#), "{router}");
        assert!(
            router.contains(r#""reject":{"type":"tcp reset"}"#),
            "{router}"
        );
        let on = to_json(&router_internet(&[
            Ipv4Addr::new(10, 89, 3, 3),
            Ipv4Addr::new(10, 89, 3, 5),
        ]));
        assert!(on.starts_with(r#"{"nftables":[{"flush":{"set":"#), "{on}");
        assert!(on.contains(r#""elem":["10.89.3.3","10.89.3.5"]"#), "{on}");
        assert!(!to_json(&router_internet(&[])).contains("elem"));
        assert_eq!(host_table_name("clawbot-1a2b"), "cagerun-clawbot_1a2b");
        let host = to_json(&host_table(
            "cagerun-x",
            "cagerun7",
            Ipv4Addr::new(10, 88, 7, 2),
        ));
        // Nothing leads to the host's loopback, and the veth delivers nothing new to the host.
        assert!(!host.contains("dnat"), "{host}");
        assert!(
            host.contains(r#""chain":"input","expr":[{"match":{"left":{"meta":{"key":"iifname"}},"right":"cagerun7","op":"=="}},{"drop":null}]"#),
            "{host}"
        );
    }

    #[test]
    fn the_rootless_guard_refuses_the_host_and_lets_dns_through() {
        let guard = to_json(&slirp_guard(
            "uplink",
            &[
                (Ipv4Addr::new(192, 0, 2, 2), 32),
                (Ipv4Addr::new(127, 0, 0, 1), 32),
                (Ipv4Addr::new(192, 0, 2, 255), 32),
                (Ipv4Addr::new(198, 18, 7, 9), 30),
            ],
        ));
        assert!(
            guard.contains(r#""name":"host","type":"ipv4_addr","flags":["interval"]"#),
            "{guard}"
        );
        // Masked, any inside another left out (127.0.0.1 is in 127.0.0.0/8), sorted.
        assert!(
            guard.contains(r#""elem":[{"prefix":{"addr":"0.0.0.0","len":8}},{"prefix":{"addr":"127.0.0.0","len":8}},"192.0.2.2","192.0.2.255",{"prefix":{"addr":"198.18.7.8","len":30}},{"prefix":{"addr":"224.0.0.0","len":4}},"255.255.255.255"]"#),
            "{guard}"
        );
        assert!(
            guard.contains(r#""right":"10.0.2.3","op":"=="}},{"match":{"left":{"payload":{"protocol":"udp","field":"dport"}},"right":53,"op":"=="}},{"accept":null}"#),
            "{guard}"
        );
        assert!(
            guard
                .contains(r#"{"prefix":{"addr":"10.0.2.0","len":24}},"op":"=="}},{"jump":{"target":"refuse"}}"#),
            "{guard}"
        );
        assert!(
            guard.contains(r#""right":"@host","op":"=="}},{"jump":{"target":"refuse"}}"#),
            "{guard}"
        );
        assert!(
            guard.contains(r#""chain":"refuse","expr":[{"match":{"left":{"meta":{"key":"l4proto"}},"right":"tcp","op":"=="}},{"reject":{"type":"tcp reset"}}]"#),
            "{guard}"
        );
        let again = to_json(&slirp_guard_hosts(&[]));
        assert!(
            again.starts_with(r#"{"nftables":[{"flush":{"set":"#),
            "{again}"
        );
        assert!(again.contains(r#""127.0.0.0","len":8"#), "{again}");
    }
}

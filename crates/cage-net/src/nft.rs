//! nftables rules for internet mode, built with the `nftables` crate (its typed model of
//! nft's JSON API) and rendered as the JSON `nft -j -f -` reads. Pure: the callers run `nft`
//! in the namespace the rules belong to (the holder as uid 0 of the cage's user namespace,
//! which the crate's own runner cannot do).
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

use std::borrow::Cow;
use std::net::Ipv4Addr;

use nftables::batch::Batch;
use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, CT};
use nftables::schema::{
    Chain, Element, FlushObject, NfCmd, NfListObject, Nftables, Rule, Set, SetTypeValue, Table,
};
use nftables::stmt::{Match, Operator, Reject, RejectType, Statement, NAT};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

pub const ROUTER_TABLE: &str = "cagerun";
const SET: &str = "internet";
// nft's named priorities: filter 0, dstnat -100, srcnat 100.
const PRIO_FILTER: i32 = 0;
const PRIO_DSTNAT: i32 = -100;
const PRIO_SRCNAT: i32 = 100;

/// The script for `nft -j -f -`.
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
) -> Nftables<'static> {
    let is = |field, a: Ipv4Addr| matches(ip(field), Operator::EQ, text(a.to_string()));
    let mut b = Batch::new();
    b.add(table(name));
    b.add(base_chain(
        name,
        "prerouting",
        NfChainType::NAT,
        NfHook::Prerouting,
        PRIO_DSTNAT,
    ));
    b.add(rule(
        name,
        "prerouting",
        vec![
            iif(host_veth),
            is("daddr", host_addr),
            Statement::DNAT(Some(NAT {
                addr: Some(text("127.0.0.1")),
                family: None,
                port: None,
                flags: None,
            })),
        ],
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
            Ipv4Addr::new(10, 88, 7, 1),
            Ipv4Addr::new(10, 88, 7, 2),
        ));
        assert!(host.contains(r#""dnat":{"addr":"127.0.0.1"}"#), "{host}");
    }
}

//! Egress by name: what a service (or its tool sandboxes) may reach on the internet, and every
//! decision cagerun's egress resolver and proxy make about it. Pure: cage-net's resolver and
//! proxy ask these functions and act on the answer.
//!
//! What users write (`internet = [...]` in cage.toml, `cagerun internet allow|deny`):
//!
//! | entry | allows |
//! |---|---|
//! | `api.telegram.org` | that name, ports 80 and 443 |
//! | `*.discord.com` | every name below discord.com (not discord.com itself), ports 80 and 443 |
//! | `web.whatsapp.com:443` | that name, that port only |
//! | `host:11434` | that one port of the host's loopback, by the names in [`HOST_NAMES`] |
//! | `10.0.0.5:8080` / `10.0.0.5` | that address (ports 80 and 443 without a port) |
//!
//! Decisions (DESIGN.md, "Egress by name"):
//! - A lookup is answered only for an allowed name, and never forwarded otherwise (no DNS
//!   exfiltration). Allowed names get a fake address ([`FAKE_NET`]), stable for the cage's
//!   life and never given to another name, so a connection says which name it is for.
//! - A connection is decided on the name: the fake address's, which the TLS SNI or HTTP Host
//!   must equal (no fronting another name on a shared CDN address), then connected by cagerun
//!   to an address it resolved itself. Raw addresses are refused unless listed by address.
//! - The upstream address is checked at connect time: loopback, private, link-local
//!   (169.254.169.254), shared (100.64/10), multicast and reserved ranges and the host's own
//!   addresses are refused unless listed by address (DNS rebinding cannot open them).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Ports a rule without one allows: HTTP and HTTPS.
pub const DEFAULT_PORTS: [u16; 2] = [80, 443];

/// The names that mean "the host" for a `host:PORT` rule (Docker's, podman's, ours).
pub const HOST_NAMES: [&str; 3] = [
    "host.docker.internal",
    "host.containers.internal",
    "host.cagerun.internal",
];

/// Where fake addresses come from: 240.0.0.0/4 (reserved, "future use"): no real host lives
/// there, so a fake address never shadows one a user could list.
pub const FAKE_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(240, 0, 0, 0), 4);

/// What a service may reach.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Internet {
    /// Nothing (the default).
    #[default]
    None,
    /// Anything (`internet = true`): NAT through the uplink.
    Any,
    /// Only what the rules allow, through cagerun's resolver and proxy.
    Allow(Vec<Rule>),
}

impl Internet {
    pub fn is_any(&self) -> bool {
        matches!(self, Internet::Any)
    }
    pub fn rules(&self) -> Option<&[Rule]> {
        match self {
            Internet::Allow(r) => Some(r),
            _ => None,
        }
    }
    /// Some way out at all (NAT or a list, even an empty one that `allow` can fill).
    pub fn any_way_out(&self) -> bool {
        !matches!(self, Internet::None)
    }
}

/// One allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rule {
    pub target: Target,
    /// None: [`DEFAULT_PORTS`].
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Target {
    /// One name (lowercase, no trailing dot).
    Name(String),
    /// `*.SUFFIX`: every name strictly below SUFFIX.
    Below(String),
    /// A literal address.
    Address(Ipv4Addr),
    /// The host's loopback (`host:PORT`).
    Host,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("`{0}`: empty entry")]
    Empty(String),
    #[error("`{0}`: bad port (1-65535)")]
    Port(String),
    #[error(
        "`{0}`: `host` needs a port (`host:11434`): it opens one port of the host, never all of it"
    )]
    HostWithoutPort(String),
    #[error("`{0}`: not a DNS name, `*.name`, `host:PORT` or an IPv4 address (IPv6 is not routed out of a cage)")]
    NotAName(String),
    #[error("`{0}`: a wildcard is only allowed as the whole first label (`*.example.com`)")]
    Wildcard(String),
}

impl FromStr for Rule {
    type Err = RuleError;
    fn from_str(s: &str) -> Result<Rule, RuleError> {
        let text = s.trim();
        if text.is_empty() {
            return Err(RuleError::Empty(s.into()));
        }
        let (host, port) = match text.rsplit_once(':') {
            Some((h, p)) => {
                let port: u16 = p.parse().map_err(|_| RuleError::Port(s.into()))?;
                if port == 0 {
                    return Err(RuleError::Port(s.into()));
                }
                (h, Some(port))
            }
            None => (text, None),
        };
        let target = if host.eq_ignore_ascii_case("host") {
            if port.is_none() {
                return Err(RuleError::HostWithoutPort(s.into()));
            }
            Target::Host
        } else if let Ok(a) = host.parse::<Ipv4Addr>() {
            Target::Address(a)
        } else if let Some(rest) = host.strip_prefix("*.") {
            Target::Below(normalize_name(rest).ok_or_else(|| RuleError::NotAName(s.into()))?)
        } else if host.contains('*') {
            return Err(RuleError::Wildcard(s.into()));
        } else {
            Target::Name(normalize_name(host).ok_or_else(|| RuleError::NotAName(s.into()))?)
        };
        Ok(Rule { target, port })
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Target::Name(n) => write!(f, "{n}")?,
            Target::Below(n) => write!(f, "*.{n}")?,
            Target::Address(a) => write!(f, "{a}")?,
            Target::Host => write!(f, "host")?,
        }
        match self.port {
            Some(p) => write!(f, ":{p}"),
            None => Ok(()),
        }
    }
}

/// A DNS name as compared here: lowercase, without the trailing dot; None when it is not one
/// (labels of letters, digits, `-` and `_`, 1–63 bytes each, 253 in all, not all-numeric
/// like an address).
pub fn normalize_name(name: &str) -> Option<String> {
    let n = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if n.is_empty() || n.len() > 253 || n.parse::<Ipv4Addr>().is_ok() {
        return None;
    }
    let ok = n.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    ok.then_some(n)
}

impl Rule {
    fn allows_port(&self, port: u16) -> bool {
        match self.port {
            Some(p) => p == port,
            None => DEFAULT_PORTS.contains(&port),
        }
    }
    fn names(&self, name: &str) -> bool {
        match &self.target {
            Target::Name(n) => n == name,
            Target::Below(suffix) => name
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            Target::Host => HOST_NAMES.contains(&name),
            Target::Address(_) => false,
        }
    }
}

/// What the resolver does with a lookup of `name` (already normalized) from a source with
/// `rules`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// An allowed name: resolve it upstream, answer with its fake address.
    Name,
    /// A name of the host (`host:PORT` rule): answer with the host's fake address.
    Host,
    /// Answer NXDOMAIN, ask nobody.
    Refuse,
}

pub fn lookup(rules: &[Rule], name: &str) -> Lookup {
    if HOST_NAMES.contains(&name) {
        if rules.iter().any(|r| r.target == Target::Host) {
            return Lookup::Host;
        }
        return Lookup::Refuse;
    }
    if rules.iter().any(|r| r.names(name)) {
        Lookup::Name
    } else {
        Lookup::Refuse
    }
}

/// Where a connection goes, as the proxy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination<'a> {
    /// A fake address: the name it was given to.
    Name(&'a str),
    /// The host's fake address.
    Host,
    /// Any other address: a raw IP the service dialled itself.
    Address(Ipv4Addr),
}

/// Why something was refused: a short text for the audit log.
pub type Reason = &'static str;

/// May a connection to `dest` port `port` be made at all (before the first bytes are seen)?
pub fn connection(rules: &[Rule], dest: Destination<'_>, port: u16) -> Result<(), Reason> {
    let allowed = match dest {
        Destination::Name(n) => rules.iter().any(|r| r.names(n) && r.allows_port(port)),
        Destination::Host => rules
            .iter()
            .any(|r| r.target == Target::Host && r.port == Some(port)),
        Destination::Address(a) => address_listed(rules, a, port),
    };
    if allowed {
        return Ok(());
    }
    match dest {
        Destination::Address(_) => Err("address not listed (raw IP)"),
        Destination::Name(n) if rules.iter().any(|r| r.names(n)) => Err("port not allowed"),
        Destination::Host => Err("host port not listed"),
        Destination::Name(_) => Err("name not allowed"),
    }
}

fn address_listed(rules: &[Rule], a: Ipv4Addr, port: u16) -> bool {
    rules
        .iter()
        .any(|r| r.target == Target::Address(a) && r.allows_port(port))
}

/// Must the proxy see the first bytes (TLS SNI or HTTP Host equal to `name`) before
/// connecting? Yes on the default ports of a name rule: there a client that sends neither is
/// refused. An explicit `NAME:PORT` may carry any protocol: checked when it is TLS or HTTP.
pub fn name_must_show(rules: &[Rule], name: &str, port: u16) -> bool {
    !rules
        .iter()
        .any(|r| r.names(name) && r.port == Some(port) && !DEFAULT_PORTS.contains(&port))
}

/// What the first bytes of a connection claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shown {
    Tls(Option<String>),
    Http(Option<String>),
    /// Neither TLS nor HTTP (or the client said nothing yet).
    Other,
}

/// The name check on the first bytes of a connection to `name`.
pub fn shown_name(name: &str, shown: &Shown, must_show: bool) -> Result<(), Reason> {
    let claimed = match shown {
        Shown::Tls(Some(n)) | Shown::Http(Some(n)) => n,
        Shown::Tls(None) => return Err("TLS without SNI"),
        Shown::Http(None) => return Err("HTTP without Host"),
        Shown::Other if must_show => return Err("neither TLS nor HTTP on a web port"),
        Shown::Other => return Ok(()),
    };
    let claimed = claimed.split(':').next().unwrap_or_default();
    match normalize_name(claimed) {
        Some(c) if c == name => Ok(()),
        _ => Err("SNI/Host differs from the name looked up"),
    }
}

/// Is `addr` (an upstream address cagerun resolved or was given) one a cage may reach?
/// `host` are the host's own addresses now.
pub fn upstream(
    rules: &[Rule],
    addr: Ipv4Addr,
    port: u16,
    host: &[Ipv4Addr],
) -> Result<(), Reason> {
    if address_listed(rules, addr, port) {
        return Ok(());
    }
    if host.contains(&addr) {
        return Err("upstream is an address of the host");
    }
    match special(addr) {
        Some(r) => Err(r),
        None => Ok(()),
    }
}

/// The ranges that are never the internet (RFC 6890's special-purpose registry, those that
/// matter), each with why: the egress proxy refuses them upstream, and `cagerun export kube`
/// takes them out of an `internet = true` service's 0.0.0.0/0.
pub const NOT_INTERNET: [(Ipv4Addr, u8, Reason); 10] = [
    (Ipv4Addr::new(127, 0, 0, 0), 8, "upstream is loopback"),
    (
        Ipv4Addr::new(0, 0, 0, 0),
        8,
        "upstream is \"this host\" (0/8)",
    ),
    (
        Ipv4Addr::new(10, 0, 0, 0),
        8,
        "upstream is a private address",
    ),
    (
        Ipv4Addr::new(172, 16, 0, 0),
        12,
        "upstream is a private address",
    ),
    (
        Ipv4Addr::new(192, 168, 0, 0),
        16,
        "upstream is a private address",
    ),
    (
        Ipv4Addr::new(169, 254, 0, 0),
        16,
        "upstream is link-local (cloud metadata)",
    ),
    (
        Ipv4Addr::new(100, 64, 0, 0),
        10,
        "upstream is shared address space (100.64/10)",
    ),
    (
        Ipv4Addr::new(192, 0, 0, 0),
        24,
        "upstream is IETF protocol space (192.0.0/24)",
    ),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "upstream is multicast"),
    (
        Ipv4Addr::new(240, 0, 0, 0),
        4,
        "upstream is reserved (240/4) or broadcast",
    ),
];

/// Why `a` is not the internet ([`NOT_INTERNET`]): None for a global unicast address.
pub fn special(a: Ipv4Addr) -> Option<Reason> {
    NOT_INTERNET.iter().find_map(|(net, len, reason)| {
        let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
        (u32::from(a) & mask == u32::from(*net) & mask).then_some(*reason)
    })
}

/// The fake address pool: name → address, stable and never reused for the cage's life.
#[derive(Debug, Default)]
pub struct FakeAddresses {
    by_name: std::collections::HashMap<String, Ipv4Addr>,
    by_addr: std::collections::HashMap<Ipv4Addr, String>,
    next: u32,
}

/// Names one cage may have fake addresses for (of 2^28 in [`FAKE_NET`]).
pub const MAX_FAKE_NAMES: u32 = 1 << 16;

/// The host's own fake address (for [`HOST_NAMES`]): the first of the pool, never given to a
/// name ([`FakeAddresses::assign`] starts after it).
pub const HOST_FAKE: Ipv4Addr = Ipv4Addr::new(240, 0, 0, 1);

impl FakeAddresses {
    /// The address of `name` (given now if it has none). None once [`MAX_FAKE_NAMES`] names
    /// have one: refusing beats reusing, and a wildcard entry must not let a service grow
    /// the map without bound (a.wild.test, b.wild.test, ...).
    pub fn assign(&mut self, name: &str) -> Option<Ipv4Addr> {
        if let Some(a) = self.by_name.get(name) {
            return Some(*a);
        }
        let base = u32::from(FAKE_NET.0) + 2;
        if self.next >= MAX_FAKE_NAMES {
            return None;
        }
        let a = Ipv4Addr::from(base + self.next);
        self.next += 1;
        self.by_name.insert(name.to_string(), a);
        self.by_addr.insert(a, name.to_string());
        Some(a)
    }
    pub fn name_of(&self, a: Ipv4Addr) -> Option<&str> {
        self.by_addr.get(&a).map(String::as_str)
    }
    pub fn is_fake(a: Ipv4Addr) -> bool {
        u32::from(a) >> (32 - FAKE_NET.1) == u32::from(FAKE_NET.0) >> (32 - FAKE_NET.1)
    }
}

/// The live policy the supervisor hands the egress proxy: the switch, and who may reach what.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EgressPolicy {
    /// Internet mode: off refuses everything (and cuts live connections).
    pub on: bool,
    pub sources: Vec<Source>,
}

/// One service or tool sandbox, known by its address in the cage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    pub address: Ipv4Addr,
    /// `SERVICE` or `SERVICE/SANDBOX-ID`: the name in the audit log.
    pub name: String,
    pub rules: Vec<Rule>,
}

impl EgressPolicy {
    pub fn source(&self, a: Ipv4Addr) -> Option<&Source> {
        self.sources.iter().find(|s| s.address == a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(list: &[&str]) -> Vec<Rule> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn entries_parse_and_print() {
        for s in [
            "api.telegram.org",
            "*.discord.com",
            "web.whatsapp.com:443",
            "host:11434",
            "10.0.0.5:8080",
            "10.0.0.5",
        ] {
            assert_eq!(s.parse::<Rule>().unwrap().to_string(), s);
        }
        assert_eq!(
            "API.Telegram.org.".parse::<Rule>().unwrap().to_string(),
            "api.telegram.org"
        );
        assert!(matches!(
            "host".parse::<Rule>(),
            Err(RuleError::HostWithoutPort(_))
        ));
        assert!(matches!("a.b:0".parse::<Rule>(), Err(RuleError::Port(_))));
        assert!(matches!(
            "a.b:99999".parse::<Rule>(),
            Err(RuleError::Port(_))
        ));
        assert!(matches!(
            "a*.b".parse::<Rule>(),
            Err(RuleError::Wildcard(_))
        ));
        assert!("[::1]:80".parse::<Rule>().is_err());
        assert!(matches!(
            "bad name".parse::<Rule>(),
            Err(RuleError::NotAName(_))
        ));
        assert!(matches!("".parse::<Rule>(), Err(RuleError::Empty(_))));
    }

    #[test]
    fn lookups_answer_only_allowed_names() {
        let r = rules(&["allowed.test", "*.wild.test", "host:11434"]);
        assert_eq!(lookup(&r, "allowed.test"), Lookup::Name);
        assert_eq!(lookup(&r, "a.wild.test"), Lookup::Name);
        assert_eq!(lookup(&r, "a.b.wild.test"), Lookup::Name);
        assert_eq!(lookup(&r, "wild.test"), Lookup::Refuse);
        assert_eq!(lookup(&r, "xwild.test"), Lookup::Refuse);
        assert_eq!(lookup(&r, "secret-data.denied.test"), Lookup::Refuse);
        assert_eq!(lookup(&r, "sub.allowed.test"), Lookup::Refuse);
        assert_eq!(lookup(&r, "host.docker.internal"), Lookup::Host);
        assert_eq!(
            lookup(&rules(&["allowed.test"]), "host.docker.internal"),
            Lookup::Refuse
        );
    }

    #[test]
    fn connections_by_name_port_and_address() {
        let r = rules(&[
            "allowed.test",
            "mail.test:587",
            "host:11434",
            "198.51.100.7:8080",
        ]);
        assert_eq!(
            connection(&r, Destination::Name("allowed.test"), 443),
            Ok(())
        );
        assert_eq!(
            connection(&r, Destination::Name("allowed.test"), 80),
            Ok(())
        );
        assert!(connection(&r, Destination::Name("allowed.test"), 22).is_err());
        assert!(connection(&r, Destination::Name("mail.test"), 443).is_err());
        assert_eq!(connection(&r, Destination::Name("mail.test"), 587), Ok(()));
        assert_eq!(connection(&r, Destination::Host, 11434), Ok(()));
        assert!(connection(&r, Destination::Host, 22).is_err());
        assert!(connection(
            &r,
            Destination::Address("198.51.100.7".parse().unwrap()),
            443
        )
        .is_err());
        assert_eq!(
            connection(
                &r,
                Destination::Address("198.51.100.7".parse().unwrap()),
                8080
            ),
            Ok(())
        );
        assert!(connection(
            &r,
            Destination::Address("198.51.100.8".parse().unwrap()),
            8080
        )
        .is_err());
        assert!(name_must_show(&r, "allowed.test", 443));
        assert!(!name_must_show(&r, "mail.test", 587));
    }

    #[test]
    fn the_first_bytes_must_name_the_same_name() {
        let tls = |n: &str| Shown::Tls(Some(n.into()));
        assert_eq!(
            shown_name("allowed.test", &tls("allowed.test"), true),
            Ok(())
        );
        assert_eq!(
            shown_name("allowed.test", &tls("Allowed.Test."), true),
            Ok(())
        );
        assert!(shown_name("allowed.test", &tls("cdn-other.test"), true).is_err());
        assert!(shown_name("allowed.test", &Shown::Tls(None), true).is_err());
        assert_eq!(
            shown_name(
                "allowed.test",
                &Shown::Http(Some("allowed.test:80".into())),
                true
            ),
            Ok(())
        );
        assert!(shown_name("allowed.test", &Shown::Http(None), true).is_err());
        assert!(shown_name("allowed.test", &Shown::Other, true).is_err());
        assert_eq!(shown_name("mail.test", &Shown::Other, false), Ok(()));
    }

    #[test]
    fn upstream_addresses_are_rechecked() {
        let r = rules(&["allowed.test", "10.0.0.5:8080"]);
        let host = ["192.0.2.10".parse().unwrap()];
        let ok = |a: &str, p| upstream(&r, a.parse().unwrap(), p, &host);
        assert_eq!(ok("198.18.0.2", 443), Ok(()));
        assert_eq!(ok("93.184.216.34", 443), Ok(()));
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.2",
            "192.0.2.10",
        ] {
            assert!(ok(bad, 443).is_err(), "{bad}");
        }
        assert_eq!(ok("10.0.0.5", 8080), Ok(()));
        assert!(ok("10.0.0.5", 443).is_err());
    }

    #[test]
    fn fake_addresses_are_stable_and_never_reused() {
        let mut f = FakeAddresses::default();
        let a = f.assign("a.test").unwrap();
        let b = f.assign("b.test").unwrap();
        assert_ne!(a, b);
        assert_ne!(a, HOST_FAKE);
        assert_eq!(f.assign("a.test"), Some(a));
        assert_eq!(f.name_of(b), Some("b.test"));
        assert!(FakeAddresses::is_fake(a) && FakeAddresses::is_fake(HOST_FAKE));
        assert!(!FakeAddresses::is_fake("198.18.0.2".parse().unwrap()));
    }
}

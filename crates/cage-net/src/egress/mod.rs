//! Egress by name: cagerun's resolver and proxy for services (and tool sandboxes) with an
//! `internet = [...]` list. The router namespace's table sends their DNS to the router's port
//! 53, redirects all their TCP to the proxy's port and logs (NFLOG) then drops everything
//! else; the sockets on those ports are made inside the router namespace and handed to the
//! proxy, which runs in the host's network namespace: it connects from the host's own stack,
//! to addresses it resolved itself, after `cage_spec::egress` said yes. Nothing a service
//! does inside its own namespace changes a decision.
//!
//! | part | module |
//! |---|---|
//! | DNS queries, answers, upstream lookups | [`dns`] |
//! | TLS SNI / HTTP Host from a connection's first bytes (pure) | [`sniff`] |
//! | the router's dropped packets (nfnetlink_log) | [`nflog`] |
//! | the threads that serve all of it | [`proxy`] |

pub mod dns;
pub mod nflog;
pub mod proxy;
pub mod sniff;

use serde::{Deserialize, Serialize};

/// The decision on one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    #[default]
    Deny,
}

/// One line of the audit log (`cagerun egress --json`): a lookup, a connection (logged when it
/// ends or is refused), or a dropped flow.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Unix time, seconds, when the attempt began.
    pub time: f64,
    /// `SERVICE` or `SERVICE/SANDBOX` (an address when it is neither).
    pub source: String,
    /// `dns`, `tcp`, `udp`, `icmp` or `other`.
    pub proto: String,
    /// The name asked for (a lookup) or the name a fake address stands for.
    pub name: Option<String>,
    /// The address the service used (a fake one, or a raw address); for an answered lookup,
    /// the fake address given.
    pub address: Option<String>,
    /// The address cagerun connected to.
    pub upstream: Option<String>,
    pub port: Option<u16>,
    /// A lookup's record type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qtype: Option<String>,
    pub verdict: Verdict,
    pub reason: String,
    /// Bytes from the service to upstream.
    pub sent: u64,
    /// Bytes from upstream to the service.
    pub received: u64,
    pub duration_ms: u64,
}

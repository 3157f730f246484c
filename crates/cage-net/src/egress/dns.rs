//! DNS messages for the egress resolver (the `simple-dns` crate's model): a query read from a
//! service, the answer built for it, and the lookup cagerun makes upstream for an allowed
//! name. Only A records ever leave as answers: AAAA, HTTPS and SVCB are answered empty (no
//! IPv6 route out, and no ECH configuration that would hide the real name from the proxy).

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use simple_dns::rdata::{RData, A};
use simple_dns::{Name, Packet, PacketFlag, Question, ResourceRecord, CLASS, QTYPE, RCODE, TYPE};

/// The largest query read (a name is at most 255 bytes; EDNS padding aside, queries are small).
pub const MAX_QUERY: usize = 1232;

/// A query: its one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    /// As asked (lowercase, no trailing dot); not yet checked to be a valid name.
    pub name: String,
    pub qtype: u16,
}

impl Query {
    pub fn is_a(&self) -> bool {
        self.qtype == u16::from(TYPE::A)
    }
    /// The record types asked for (for the log).
    pub fn type_name(&self) -> String {
        match QTYPE::try_from(self.qtype) {
            Ok(QTYPE::TYPE(t)) => format!("{t:?}"),
            Ok(q) => format!("{q:?}"),
            Err(_) => format!("TYPE{}", self.qtype),
        }
    }
}

/// A standard query with exactly one question, or None (dropped unanswered).
pub fn parse_query(buf: &[u8]) -> Option<Query> {
    if buf.len() > MAX_QUERY {
        return None;
    }
    let p = Packet::parse(buf).ok()?;
    if p.has_flags(PacketFlag::RESPONSE) || p.questions.len() != 1 {
        return None;
    }
    let q = &p.questions[0];
    Some(Query {
        id: p.id(),
        name: q.qname.to_string().to_ascii_lowercase(),
        qtype: q.qtype.into(),
    })
}

/// What the resolver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// One A record.
    A(Ipv4Addr, u32),
    /// NOERROR, no records (the name exists; nothing of this type).
    Empty,
    NxDomain,
    ServFail,
}

/// The reply to `query` (the raw bytes it came in, whose question is echoed).
pub fn reply(query: &[u8], answer: Answer) -> Option<Vec<u8>> {
    let asked = Packet::parse(query).ok()?;
    let q = asked.questions.first()?;
    let mut p = Packet::new_reply(asked.id());
    p.set_flags(PacketFlag::RECURSION_AVAILABLE);
    if asked.has_flags(PacketFlag::RECURSION_DESIRED) {
        p.set_flags(PacketFlag::RECURSION_DESIRED);
    }
    p.questions
        .push(Question::new(q.qname.clone(), q.qtype, q.qclass, false));
    match answer {
        Answer::A(addr, ttl) => p.answers.push(ResourceRecord::new(
            q.qname.clone(),
            CLASS::IN,
            ttl,
            RData::A(A {
                address: u32::from(addr),
            }),
        )),
        Answer::Empty => {}
        Answer::NxDomain => *p.rcode_mut() = RCODE::NameError,
        Answer::ServFail => *p.rcode_mut() = RCODE::ServerFailure,
    }
    p.build_bytes_vec().ok()
}

/// What an upstream resolver said about a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// Its IPv4 addresses (CNAMEs followed by the resolver) and the smallest TTL.
    Addresses(Vec<Ipv4Addr>, u32),
    /// NXDOMAIN, or no A record.
    NoSuchName,
}

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("no upstream resolver answered {name} within {secs} s ({tried} tried)")]
    NoAnswer {
        name: String,
        secs: u64,
        tried: usize,
    },
    #[error("{name}: upstream answered {rcode:?}")]
    Failed { name: String, rcode: RCODE },
    #[error("{name}: not a name to ask for")]
    BadName { name: String },
    #[error("upstream lookup socket: {0}")]
    Io(#[from] std::io::Error),
}

/// Ask `servers` in turn (each up to `timeout`) for the A records of `name`.
pub fn lookup_a(
    servers: &[SocketAddrV4],
    name: &str,
    timeout: Duration,
) -> Result<Resolved, LookupError> {
    let id = random_id();
    let mut q = Packet::new_query(id);
    q.set_flags(PacketFlag::RECURSION_DESIRED);
    let qname = Name::new(name).map_err(|_| LookupError::BadName { name: name.into() })?;
    q.questions.push(Question::new(
        qname,
        TYPE::A.into(),
        CLASS::IN.into(),
        false,
    ));
    let bytes = q
        .build_bytes_vec()
        .map_err(|_| LookupError::BadName { name: name.into() })?;
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    let mut buf = vec![0u8; 4096];
    for server in servers {
        if sock.send_to(&bytes, server).is_err() {
            continue;
        }
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
            let (n, from) = match sock.recv_from(&mut buf) {
                Ok(v) => v,
                Err(_) => break,
            };
            if from != std::net::SocketAddr::V4(*server) {
                continue;
            }
            let Ok(p) = Packet::parse(&buf[..n]) else {
                continue;
            };
            if p.id() != id || !p.has_flags(PacketFlag::RESPONSE) {
                continue;
            }
            return match p.rcode() {
                RCODE::NoError => {
                    let mut ttl = u32::MAX;
                    let addrs: Vec<Ipv4Addr> = p
                        .answers
                        .iter()
                        .filter_map(|rr| match &rr.rdata {
                            RData::A(a) => {
                                ttl = ttl.min(rr.ttl);
                                Some(Ipv4Addr::from(a.address))
                            }
                            _ => None,
                        })
                        .collect();
                    if addrs.is_empty() {
                        Ok(Resolved::NoSuchName)
                    } else {
                        Ok(Resolved::Addresses(addrs, ttl))
                    }
                }
                RCODE::NameError => Ok(Resolved::NoSuchName),
                rcode => Err(LookupError::Failed {
                    name: name.into(),
                    rcode,
                }),
            };
        }
    }
    Err(LookupError::NoAnswer {
        name: name.into(),
        secs: timeout.as_secs(),
        tried: servers.len(),
    })
}

/// A query id nobody on the path can guess (with the kernel's random source port).
fn random_id() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish() as u16
}

/// The host's resolvers, from its resolv.conf text (the egress resolver runs in the host's
/// network namespace, so a local stub like 127.0.0.53 is fine).
pub fn host_resolvers(resolv_conf: &str) -> Vec<SocketAddrV4> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
        .map(|a| SocketAddrV4::new(a, 53))
        .take(3)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, t: TYPE) -> Vec<u8> {
        let mut q = Packet::new_query(7);
        q.set_flags(PacketFlag::RECURSION_DESIRED);
        q.questions.push(Question::new(
            Name::new(name).unwrap(),
            t.into(),
            CLASS::IN.into(),
            false,
        ));
        q.build_bytes_vec().unwrap()
    }

    #[test]
    fn queries_and_replies() {
        let raw = query("Allowed.Test", TYPE::A);
        let q = parse_query(&raw).unwrap();
        assert_eq!(q.name, "allowed.test");
        assert!(q.is_a());
        let r = reply(&raw, Answer::A(Ipv4Addr::new(240, 0, 0, 2), 60)).unwrap();
        let p = Packet::parse(&r).unwrap();
        assert_eq!(p.id(), 7);
        assert!(p.has_flags(PacketFlag::RESPONSE));
        assert!(
            matches!(p.answers[0].rdata, RData::A(A { address }) if address == u32::from(Ipv4Addr::new(240,0,0,2)))
        );
        let r = reply(&raw, Answer::NxDomain).unwrap();
        assert_eq!(Packet::parse(&r).unwrap().rcode(), RCODE::NameError);
        let q = parse_query(&query("a.test", TYPE::HTTPS)).unwrap();
        assert_eq!(q.type_name(), "HTTPS");
        // A reply is not a query; garbage is nothing.
        assert!(parse_query(&r).is_none());
        assert!(parse_query(b"\x00\x01garbage").is_none());
    }

    #[test]
    fn host_resolvers_from_resolv_conf() {
        assert_eq!(
            host_resolvers("search x\nnameserver 127.0.0.53\nnameserver ::1\nnameserver 9.9.9.9\n"),
            vec![
                SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 53), 53),
                SocketAddrV4::new(Ipv4Addr::new(9, 9, 9, 9), 53)
            ]
        );
    }
}

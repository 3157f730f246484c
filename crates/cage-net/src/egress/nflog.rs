//! NFLOG: the packets the router's egress table drops (UDP, ICMP, anything not TCP) reach
//! the egress proxy as netlink messages, so each refused flow has an entry in the audit log.
//! [`open`] makes the socket (in the router namespace, as its root: nfnetlink wants
//! CAP_NET_ADMIN there); [`packets`] reads what one `recv` brought, bounded.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::error::{Error, Result};

/// The group the router's table logs to (`log group N`).
pub const GROUP: u16 = 7;
/// Bytes of each packet copied: the IPv4 header (up to 60) and the ports after it.
const COPY: u32 = 64;

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;
const NFULA_PAYLOAD: u16 = 9;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;

fn sys(what: &str, e: nix::errno::Errno) -> Error {
    Error::Sys {
        what: what.into(),
        source: e,
    }
}

fn config_message(seq: u32, group: u16, attr_type: u16, payload: &[u8]) -> Vec<u8> {
    let attr_len = 4 + payload.len();
    let mut body = vec![libc::AF_UNSPEC as u8, 0];
    body.extend_from_slice(&group.to_be_bytes());
    body.extend_from_slice(&(attr_len as u16).to_ne_bytes());
    body.extend_from_slice(&attr_type.to_ne_bytes());
    body.extend_from_slice(payload);
    while body.len() % 4 != 0 {
        body.push(0);
    }
    let mut m = Vec::with_capacity(16 + body.len());
    m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG).to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&body);
    m
}

/// A netlink socket bound to [`GROUP`] in the caller's network namespace, copying the first
/// bytes of each logged packet. Blocking.
pub fn open() -> Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_NETFILTER,
        )
    };
    if fd < 0 {
        return Err(sys(
            "netlink (nfnetlink_log) socket",
            nix::errno::Errno::last(),
        ));
    }
    // SAFETY: fd is a fresh descriptor we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut mode = COPY.to_be_bytes().to_vec();
    mode.push(NFULNL_COPY_PACKET);
    mode.push(0);
    for (seq, (t, p)) in [
        (NFULA_CFG_CMD, vec![NFULNL_CFG_CMD_BIND, 0, 0, 0]),
        (NFULA_CFG_MODE, mode),
    ]
    .into_iter()
    .enumerate()
    {
        // CMD is a u8 padded to 4 by netlink's alignment; MODE is {u32 range, u8 mode, u8 pad}.
        let p = if t == NFULA_CFG_CMD { &p[..1] } else { &p[..] };
        let m = config_message(seq as u32 + 1, GROUP, t, p);
        nix::sys::socket::send(sock.as_raw_fd(), &m, nix::sys::socket::MsgFlags::empty())
            .map_err(|e| sys("nfnetlink_log config", e))?;
        let mut ack = [0u8; 256];
        let n = nix::sys::socket::recv(
            sock.as_raw_fd(),
            &mut ack,
            nix::sys::socket::MsgFlags::empty(),
        )
        .map_err(|e| sys("nfnetlink_log config ack", e))?;
        if n >= 20 && u16::from_ne_bytes([ack[4], ack[5]]) == NLMSG_ERROR {
            let code = i32::from_ne_bytes([ack[16], ack[17], ack[18], ack[19]]);
            if code != 0 {
                return Err(sys(
                    "binding the egress log group (nfnetlink_log)",
                    nix::errno::Errno::from_raw(-code),
                ));
            }
        }
    }
    Ok(sock)
}

/// One dropped packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub protocol: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// For UDP and TCP; 0 otherwise.
    pub dport: u16,
}

impl Dropped {
    pub fn protocol_name(&self) -> &'static str {
        match self.protocol {
            1 => "icmp",
            6 => "tcp",
            17 => "udp",
            _ => "other",
        }
    }
}

/// The packets in what one `recv` returned (netlink messages back to back).
pub fn packets(mut buf: &[u8]) -> Vec<Dropped> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < 16 || len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        if kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET && len >= 20 {
            if let Some(d) = payload(&buf[20..len]).and_then(ipv4) {
                out.push(d);
            }
        }
        let next = (len + 3) & !3;
        if next >= buf.len() {
            break;
        }
        buf = &buf[next..];
    }
    out
}

fn payload(mut attrs: &[u8]) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == NFULA_PAYLOAD {
            return Some(&attrs[4..len]);
        }
        let next = (len + 3) & !3;
        if next >= attrs.len() {
            return None;
        }
        attrs = &attrs[next..];
    }
    None
}

fn ipv4(p: &[u8]) -> Option<Dropped> {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return None;
    }
    let ihl = (p[0] & 0xf) as usize * 4;
    let protocol = p[9];
    let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
    let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    let dport = match protocol {
        6 | 17 if p.len() >= ihl + 4 => u16::from_be_bytes([p[ihl + 2], p[ihl + 3]]),
        _ => 0,
    };
    Some(Dropped {
        protocol,
        src,
        dst,
        dport,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logged_udp_packet() {
        // nlmsghdr + nfgenmsg + one NFULA_PAYLOAD attribute holding IPv4 + UDP headers.
        let mut ip = vec![
            0x45, 0, 0, 29, 0, 0, 0, 0, 64, 17, 0, 0, 10, 89, 7, 2, 198, 18, 0, 2,
        ];
        ip.extend_from_slice(&[0xc3, 0x50, 0, 53, 0, 9, 0, 0, b'x']);
        let mut attr = ((4 + ip.len()) as u16).to_ne_bytes().to_vec();
        attr.extend_from_slice(&NFULA_PAYLOAD.to_ne_bytes());
        attr.extend_from_slice(&ip);
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let mut m = ((20 + attr.len()) as u32).to_ne_bytes().to_vec();
        m.extend_from_slice(&(NFNL_SUBSYS_ULOG << 8).to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&[2, 0, 0, 7]);
        m.extend_from_slice(&attr);
        let two = [m.clone(), m].concat();
        let got = packets(&two);
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0],
            Dropped {
                protocol: 17,
                src: Ipv4Addr::new(10, 89, 7, 2),
                dst: Ipv4Addr::new(198, 18, 0, 2),
                dport: 53
            }
        );
        assert!(packets(&[1, 2, 3]).is_empty());
    }
}

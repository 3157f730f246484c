//! The first bytes of a connection: the name a TLS ClientHello (SNI) or an HTTP/1 request
//! (Host) claims. Pure and bounded: at most [`MAX_SNIFF`] bytes are ever looked at.

use cage_spec::egress::Shown;
use tls_parser::{
    parse_tls_extensions, parse_tls_plaintext, SNIType, TlsExtension, TlsMessage,
    TlsMessageHandshake,
};

/// A ClientHello fits one TLS record (16 KiB + its 5-byte header); request headers beyond
/// that are not HTTP a proxy owes patience to.
pub const MAX_SNIFF: usize = 16384 + 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniff {
    /// Read more (at least this many bytes in all), then ask again.
    Need(usize),
    Shown(Shown),
}

pub fn sniff(buf: &[u8]) -> Sniff {
    if buf.is_empty() {
        return Sniff::Need(1);
    }
    if buf[0] == 0x16 {
        return tls(buf);
    }
    if buf[0].is_ascii_uppercase() {
        return http(buf);
    }
    Sniff::Shown(Shown::Other)
}

fn tls(buf: &[u8]) -> Sniff {
    if buf.len() < 5 {
        return Sniff::Need(5);
    }
    if buf[1] != 3 {
        return Sniff::Shown(Shown::Other);
    }
    let len = 5 + u16::from_be_bytes([buf[3], buf[4]]) as usize;
    if len > MAX_SNIFF {
        return Sniff::Shown(Shown::Tls(None));
    }
    if buf.len() < len {
        return Sniff::Need(len);
    }
    let Ok((_, record)) = parse_tls_plaintext(&buf[..len]) else {
        return Sniff::Shown(Shown::Tls(None));
    };
    for m in record.msg {
        if let TlsMessage::Handshake(TlsMessageHandshake::ClientHello(ch)) = m {
            let Some(ext) = ch.ext else {
                return Sniff::Shown(Shown::Tls(None));
            };
            let Ok((_, exts)) = parse_tls_extensions(ext) else {
                return Sniff::Shown(Shown::Tls(None));
            };
            for e in exts {
                if let TlsExtension::SNI(names) = e {
                    let name = names
                        .iter()
                        .find(|(t, _)| *t == SNIType::HostName)
                        .and_then(|(_, n)| std::str::from_utf8(n).ok())
                        .map(str::to_string);
                    return Sniff::Shown(Shown::Tls(name));
                }
            }
            return Sniff::Shown(Shown::Tls(None));
        }
    }
    Sniff::Shown(Shown::Tls(None))
}

fn http(buf: &[u8]) -> Sniff {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {
            let host = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("host"))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .map(|h| h.trim().to_string());
            Sniff::Shown(Shown::Http(host))
        }
        Ok(httparse::Status::Partial) if buf.len() < MAX_SNIFF => Sniff::Need(buf.len() + 1),
        Ok(httparse::Status::Partial) => Sniff::Shown(Shown::Http(None)),
        Err(_) => Sniff::Shown(Shown::Other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal TLS 1.2 ClientHello with an SNI extension for `name`.
    pub fn client_hello(name: &str) -> Vec<u8> {
        let n = name.as_bytes();
        let mut sni = Vec::new();
        sni.extend_from_slice(&((n.len() + 3) as u16).to_be_bytes());
        sni.push(0);
        sni.extend_from_slice(&(n.len() as u16).to_be_bytes());
        sni.extend_from_slice(n);
        let mut ext = vec![0, 0];
        ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
        ext.extend_from_slice(&sni);
        let mut body = vec![3, 3];
        body.extend_from_slice(&[0u8; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![1];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn tls_sni() {
        let ch = client_hello("allowed.test");
        assert_eq!(
            sniff(&ch),
            Sniff::Shown(Shown::Tls(Some("allowed.test".into())))
        );
        assert_eq!(sniff(&ch[..3]), Sniff::Need(5));
        assert_eq!(sniff(&ch[..10]), Sniff::Need(ch.len()));
    }

    #[test]
    fn http_host() {
        let req = b"GET / HTTP/1.1\r\nHost: allowed.test\r\nAccept: */*\r\n\r\n";
        assert_eq!(
            sniff(req),
            Sniff::Shown(Shown::Http(Some("allowed.test".into())))
        );
        assert!(matches!(sniff(&req[..20]), Sniff::Need(_)));
        assert_eq!(
            sniff(b"GET / HTTP/1.0\r\n\r\n"),
            Sniff::Shown(Shown::Http(None))
        );
        assert_eq!(sniff(b"\x00\x01binary"), Sniff::Shown(Shown::Other));
        assert_eq!(sniff(b"SSH-2.0-OpenSSH\r\n"), Sniff::Shown(Shown::Other));
    }
}

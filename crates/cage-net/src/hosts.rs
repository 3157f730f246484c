//! The /etc/hosts every service sees: itself on loopback, every service of the cage by name.

use std::net::Ipv4Addr;

pub fn render(own: &str, services: &[(String, Ipv4Addr)]) -> String {
    let mut out =
        format!("127.0.0.1\tlocalhost {own}\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for (name, addr) in services {
        if name != own {
            out.push_str(&format!("{addr}\t{name}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_the_others() {
        let s = [
            ("web".to_string(), "10.89.1.2".parse().unwrap()),
            ("db".to_string(), "10.89.1.3".parse().unwrap()),
        ];
        let h = super::render("web", &s);
        assert!(h.contains("127.0.0.1\tlocalhost web\n"));
        assert!(h.contains("10.89.1.3\tdb\n"));
        assert!(!h.contains("10.89.1.2"));
    }
}

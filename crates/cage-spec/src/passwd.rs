//! `--user` resolution against a rootfs's /etc/passwd and /etc/group, and the synthesized
//! files for a host-assembled root.

use crate::SpecError;

/// A user and group id inside a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdPair {
    pub uid: u32,
    pub gid: u32,
}

/// Resolve `UID[:GID]`, `NAME[:GROUP]`. Names are looked up in the given file contents (the
/// rootfs's, not the host's). A bare UID takes the GID of the same number, like docker.
pub fn resolve_user(input: &str, passwd: &str, group: &str) -> Result<IdPair, SpecError> {
    let (user, grp) = match input.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (input, None),
    };
    if user.is_empty() || grp == Some("") {
        return Err(SpecError::InvalidUser {
            input: input.to_string(),
        });
    }
    let (uid, primary_gid) = match user.parse::<u32>() {
        Ok(uid) => (uid, None),
        Err(_) => {
            let entry = passwd
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 4 && f[0] == user)
                .ok_or_else(|| SpecError::UnknownUser {
                    name: user.to_string(),
                })?;
            let uid = entry[2].parse().map_err(|_| SpecError::UnknownUser {
                name: user.to_string(),
            })?;
            (uid, entry[3].parse::<u32>().ok())
        }
    };
    let gid = match grp {
        None => primary_gid.unwrap_or(uid),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 3 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| SpecError::UnknownGroup {
                    name: g.to_string(),
                })?,
        },
    };
    Ok(IdPair { uid, gid })
}

/// An /etc/passwd entry by name or uid: (name, uid, gid). cagerun is linked statically,
/// so it reads the file instead of asking NSS.
pub fn lookup_account(passwd: &str, name_or_uid: &str) -> Option<(String, u32, u32)> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 || (f[0] != name_or_uid && f[2] != name_or_uid) {
            return None;
        }
        Some((f[0].to_string(), f[2].parse().ok()?, f[3].parse().ok()?))
    })
}

/// The first range of /etc/subuid (or /etc/subgid) text that belongs to `name` or `id`:
/// (start, count).
pub fn subordinate_range(text: &str, name: &str, id: u32) -> Option<(u32, u32)> {
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.trim().split(':').collect();
        if f.len() != 3 || (f[0] != name && f[0].parse::<u32>().ok() != Some(id)) {
            return None;
        }
        Some((f[1].parse().ok()?, f[2].parse().ok()?))
    })
}

/// The /etc/passwd of a host-assembled root: root, the sandbox user, nobody. Nothing of the
/// host's user list leaks in.
pub fn synthesized_passwd(user: IdPair) -> String {
    let mut s = String::from("root:x:0:0:root:/root:/usr/sbin/nologin\n");
    if user.uid != 0 && user.uid != 65534 {
        s += &format!("sandbox:x:{}:{}:sandbox:/tmp:/bin/sh\n", user.uid, user.gid);
    }
    s += "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
    s
}

pub fn synthesized_group(user: IdPair) -> String {
    let mut s = String::from("root:x:0:\n");
    if user.gid != 0 && user.gid != 65534 {
        s += &format!("sandbox:x:{}:\n", user.gid);
    }
    s += "nogroup:x:65534:\n";
    s
}

pub fn synthesized_hosts(hostname: &str) -> String {
    format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnode:x:1000:1001::/home/node:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nstaff:x:50:\n";

    #[test]
    fn numeric_and_named() {
        assert_eq!(
            resolve_user("1000", "", "").unwrap(),
            IdPair {
                uid: 1000,
                gid: 1000
            }
        );
        assert_eq!(
            resolve_user("1000:5", "", "").unwrap(),
            IdPair { uid: 1000, gid: 5 }
        );
        assert_eq!(
            resolve_user("node", PASSWD, GROUP).unwrap(),
            IdPair {
                uid: 1000,
                gid: 1001
            }
        );
        assert_eq!(
            resolve_user("node:staff", PASSWD, GROUP).unwrap(),
            IdPair { uid: 1000, gid: 50 }
        );
    }

    #[test]
    fn subordinate_ranges_by_name_or_uid() {
        let text = "alice:100000:65536\n1001:300000:65536\nbroken\n";
        assert_eq!(
            subordinate_range(text, "alice", 1000),
            Some((100000, 65536))
        );
        assert_eq!(subordinate_range(text, "bob", 1001), Some((300000, 65536)));
        assert_eq!(subordinate_range(text, "carol", 1002), None);
    }

    #[test]
    fn accounts_by_name_or_uid() {
        assert_eq!(
            lookup_account(PASSWD, "node"),
            Some(("node".into(), 1000, 1001))
        );
        assert_eq!(
            lookup_account(PASSWD, "1000"),
            Some(("node".into(), 1000, 1001))
        );
        assert_eq!(lookup_account(PASSWD, "ghost"), None);
    }

    #[test]
    fn unknown_names_are_named_in_the_error() {
        let e = resolve_user("ghost", PASSWD, GROUP)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ghost"), "{e}");
        let e = resolve_user("1000:ghosts", PASSWD, GROUP)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ghosts"), "{e}");
        assert!(resolve_user(":1", PASSWD, GROUP).is_err());
        assert!(resolve_user("1:", PASSWD, GROUP).is_err());
    }
}

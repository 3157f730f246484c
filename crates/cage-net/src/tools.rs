//! The host tools cage-net runs (`nft`, `slirp4netns`), found on PATH or in the usual system
//! directories (a user's PATH often lacks /usr/sbin). `cagerun doctor` asks the same lookup.

use std::path::{Path, PathBuf};

/// Where `name` is: the first directory of PATH, then of /usr/bin, /usr/sbin, /sbin, /bin,
/// that has a file of that name.
pub fn find(name: &str) -> Option<PathBuf> {
    find_in(&std::env::var("PATH").unwrap_or_default(), name)
}

fn find_in(path: &str, name: &str) -> Option<PathBuf> {
    path.split(':')
        .chain(["/usr/bin", "/usr/sbin", "/sbin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    #[test]
    fn path_first_then_the_system_directories() {
        let dir = std::env::temp_dir().join(format!("cage-net-tools-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("sh"), "").unwrap();
        let path = format!("/nonexistent:{}", dir.display());
        assert_eq!(super::find_in(&path, "sh"), Some(dir.join("sh")));
        // Not on PATH: the system directories (every host has a /bin/sh or /usr/bin/sh).
        assert!(super::find_in("", "sh").is_some());
        assert_eq!(super::find_in(&path, "no-such-tool-here"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

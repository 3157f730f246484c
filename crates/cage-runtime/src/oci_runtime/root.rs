//! Where `cagerun runtime` keeps container state when the engine passes no `--root`
//! (podman never does; runtime-tools neither). It must come out the same for every call on one
//! container, whatever environment the engine gives that call (podman runs `state` with only
//! `XDG_RUNTIME_DIR`, `delete` without PATH or HOME), so it depends on the ids and
//! `XDG_RUNTIME_DIR` alone — runc's rule, under cagerun's own name.

use std::ffi::OsStr;
use std::path::PathBuf;

/// The directory name under `/run` or `$XDG_RUNTIME_DIR`.
pub const DIR_NAME: &str = "cagerun-runc";

/// `/run/cagerun-runc` for root of the host; otherwise `$XDG_RUNTIME_DIR/cagerun-runc`
/// (rootless podman runs the runtime as root of its user namespace with the user's
/// XDG_RUNTIME_DIR), and `/tmp/cagerun-runc-UID` when that is not set.
pub fn default_root(
    euid: u32,
    initial_user_namespace: bool,
    xdg_runtime_dir: Option<&OsStr>,
    user: Option<&OsStr>,
) -> PathBuf {
    let xdg = xdg_runtime_dir.filter(|d| !d.is_empty());
    // As runc: root of a user namespace with USER=root is treated as the host's root.
    let honour_xdg = euid != 0 || (!initial_user_namespace && user != Some(OsStr::new("root")));
    match (euid == 0 && initial_user_namespace, honour_xdg, xdg) {
        (true, _, _) => PathBuf::from("/run").join(DIR_NAME),
        (false, true, Some(dir)) => PathBuf::from(dir).join(DIR_NAME),
        (false, _, _) if euid == 0 => PathBuf::from("/run").join(DIR_NAME),
        _ => PathBuf::from(format!("/tmp/{DIR_NAME}-{euid}")),
    }
}

/// Whether this process's user namespace is the host's (its uid map is the identity of all
/// ids). `uid_map` is `/proc/self/uid_map`'s text.
pub fn is_initial_user_namespace(uid_map: &str) -> bool {
    let fields: Vec<&str> = uid_map.split_whitespace().collect();
    fields == ["0", "0", "4294967295"]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_root_uses_run() {
        assert_eq!(
            default_root(0, true, Some(OsStr::new("/run/user/0")), None),
            PathBuf::from("/run/cagerun-runc")
        );
    }

    #[test]
    fn rootless_podman_root_of_a_user_namespace_uses_xdg() {
        assert_eq!(
            default_root(0, false, Some(OsStr::new("/run/user/1001")), None),
            PathBuf::from("/run/user/1001/cagerun-runc")
        );
        assert_eq!(
            default_root(1001, true, Some(OsStr::new("/run/user/1001")), None),
            PathBuf::from("/run/user/1001/cagerun-runc")
        );
    }

    #[test]
    fn without_xdg_a_user_gets_a_private_tmp_dir() {
        assert_eq!(
            default_root(1001, true, None, None),
            PathBuf::from("/tmp/cagerun-runc-1001")
        );
        assert_eq!(
            default_root(0, false, Some(OsStr::new("/x")), Some(OsStr::new("root"))),
            PathBuf::from("/run/cagerun-runc")
        );
    }

    #[test]
    fn identity_map_is_the_initial_namespace() {
        assert!(is_initial_user_namespace(
            "         0          0 4294967295\n"
        ));
        assert!(!is_initial_user_namespace("0 1001 1\n1 100000 65536\n"));
    }
}

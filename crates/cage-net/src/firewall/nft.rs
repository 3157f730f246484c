//! The `nft` tool, run with one JSON document (one batch: nft applies all of it or none).
//!
//! The `nftables` crate has a runner of its own, but it cannot run nft as another user or in
//! other namespaces, which the cage needs: its router namespace belongs to the cage's user
//! namespace, where only that namespace's uid 0 may change the rules. So [`apply`] starts
//! `nft -j DOCUMENT` itself, [`Where`] the request says. The document goes as an argument,
//! not on stdin (`-f -`): with `-j`, nft opens `/dev/stdin` by name, which a process that
//! changed its uid may not reopen.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::process::Command;

use nftables::schema::Nftables;

use super::rules::to_json;
use crate::network::netns::RouterNs;

/// The tool's name (found by [`crate::tools::find`]).
pub const NFT: &str = "nft";

/// Where, and as whom, nft runs.
#[derive(Debug, Clone, Copy)]
pub enum Where<'a> {
    /// In the caller's namespaces, as the caller (root's table in the host's namespace).
    Caller,
    /// In the caller's network namespace, as uid and gid 0 of the caller's user namespace
    /// (the holder is the cage's user 1000 there, and exec would drop its capabilities).
    CallerAsNamespaceRoot,
    /// In the cage's router namespace, from outside it: the child joins `user`, then `net`,
    /// and becomes uid and gid 0 there (the holder's own way in).
    Router {
        user: BorrowedFd<'a>,
        net: BorrowedFd<'a>,
    },
}

impl<'a> Where<'a> {
    /// The router namespace opened through the holder.
    pub fn router(ns: &'a RouterNs) -> Where<'a> {
        Where::Router {
            user: ns.user.as_fd(),
            net: ns.net.as_fd(),
        }
    }

    /// How an error names the run.
    fn what(&self) -> &'static str {
        match self {
            Where::Caller | Where::CallerAsNamespaceRoot => "nft",
            Where::Router { .. } => "nft in the router namespace",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("internet mode needs nft: apt-get install nftables")]
    Missing,
    #[error("running {what}")]
    Spawn {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// nft refused the document; its own words.
    #[error("{what}: {stderr}")]
    Refused { what: &'static str, stderr: String },
}

/// The nft binary: PATH, then the system directories.
pub fn binary() -> Option<PathBuf> {
    crate::tools::find(NFT)
}

/// Apply `rules` with nft, run [`Where`] `at` says; nft's stderr is the error.
pub fn apply(rules: &Nftables<'_>, at: Where<'_>) -> Result<(), NftError> {
    let bin = binary().ok_or(NftError::Missing)?;
    let out = command(&bin, rules, at)
        .output()
        .map_err(|source| NftError::Spawn {
            what: at.what(),
            source,
        })?;
    if !out.status.success() {
        return Err(NftError::Refused {
            what: at.what(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// `BIN -j DOCUMENT`, stdin closed, with the identity and namespaces of `at`.
fn command(bin: &Path, rules: &Nftables<'_>, at: Where<'_>) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(bin);
    match at {
        Where::Caller => {}
        Where::CallerAsNamespaceRoot => {
            cmd.uid(0).gid(0);
        }
        Where::Router { user, net } => {
            let (user, net) = (user.as_raw_fd(), net.as_raw_fd());
            // SAFETY: only async-signal-safe syscalls between fork and exec; the descriptors
            // are borrowed for the whole of `apply`, so they are open when the child runs.
            unsafe {
                cmd.pre_exec(move || {
                    let check = |r: libc::c_int| {
                        if r < 0 {
                            Err(std::io::Error::last_os_error())
                        } else {
                            Ok(())
                        }
                    };
                    check(libc::setns(user, libc::CLONE_NEWUSER))?;
                    check(libc::setns(net, libc::CLONE_NEWNET))?;
                    check(libc::setresgid(0, 0, 0))?;
                    check(libc::setresuid(0, 0, 0))
                });
            }
        }
    }
    cmd.arg("-j")
        .arg(to_json(rules))
        .stdin(std::process::Stdio::null());
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_one_argument_after_j() {
        let rules = super::super::rules::delete_table("cagerun-x");
        let cmd = command(Path::new("/usr/sbin/nft"), &rules, Where::Caller);
        assert_eq!(cmd.get_program(), "/usr/sbin/nft");
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
        assert_eq!(args.len(), 2, "{args:?}");
        assert_eq!(args[0], "-j");
        assert_eq!(args[1], to_json(&rules));
        assert!(args[1].contains(r#""delete":{"table":"#), "{}", args[1]);
    }

    #[test]
    fn errors_name_where_nft_ran() {
        assert_eq!(Where::Caller.what(), "nft");
        assert_eq!(Where::CallerAsNamespaceRoot.what(), "nft");
        let fd = std::fs::File::open("/proc/self/ns/net").unwrap();
        let at = Where::Router {
            user: fd.as_fd(),
            net: fd.as_fd(),
        };
        assert_eq!(at.what(), "nft in the router namespace");
        let e = NftError::Refused {
            what: at.what(),
            stderr: "Error: No such file or directory".into(),
        };
        assert_eq!(
            e.to_string(),
            "nft in the router namespace: Error: No such file or directory"
        );
    }
}

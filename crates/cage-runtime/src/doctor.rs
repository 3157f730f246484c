//! `cagerun doctor`: what on this host helps or stops sandboxes, each check by trying the
//! mechanism itself where it can, with the fix next to each problem.

use anyhow::Result;
use cage_sandbox::cgroups;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

/// One check: what, how it came out, and the detail (with the fix for a problem).
#[derive(Debug, Clone)]
pub struct Finding {
    pub level: Level,
    pub what: String,
    pub detail: String,
}

/// Every check, in order.
#[derive(Debug, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    fn push(&mut self, level: Level, what: &str, detail: impl AsRef<str>) {
        self.findings.push(Finding {
            level,
            what: what.to_string(),
            detail: detail.as_ref().to_string(),
        });
    }
    fn ok(&mut self, what: &str, detail: impl AsRef<str>) {
        self.push(Level::Ok, what, detail)
    }
    fn warn(&mut self, what: &str, detail: impl AsRef<str>) {
        self.push(Level::Warn, what, detail)
    }
    fn fail(&mut self, what: &str, detail: impl AsRef<str>) {
        self.push(Level::Fail, what, detail)
    }
    /// Some check failed: sandboxes cannot run here as things are.
    pub fn failed(&self) -> bool {
        self.findings.iter().any(|f| f.level == Level::Fail)
    }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Try to create a user namespace in a throwaway child.
fn userns_works() -> Result<(), String> {
    // SAFETY: the child only calls unshare and _exit.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error().to_string()),
        0 => {
            let rc = unsafe {
                libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWNET)
            };
            unsafe {
                libc::_exit(if rc == 0 {
                    0
                } else {
                    std::io::Error::last_os_error().raw_os_error().unwrap_or(1)
                })
            }
        }
        pid => {
            let mut status = 0;
            unsafe { libc::waitpid(pid, &mut status, 0) };
            match libc::WEXITSTATUS(status) {
                0 => Ok(()),
                e => Err(std::io::Error::from_raw_os_error(e).to_string()),
            }
        }
    }
}

/// Egress by name's kernel parts, tried for real in a throwaway child: a user and network
/// namespace of its own (as its root), the router's egress table in it (nft redirect, log to
/// NFLOG, a bridge table) and the NFLOG socket the proxy reads. `Err` names what failed.
fn egress_works() -> Result<(), String> {
    let (r, w) = nix::unistd::pipe().map_err(|e| e.to_string())?;
    let uid = nix::unistd::geteuid().as_raw();
    let gid = nix::unistd::getegid().as_raw();
    // SAFETY: the child runs the check, writes one line and exits without returning here.
    match unsafe { nix::unistd::fork() } {
        Err(e) => Err(e.to_string()),
        Ok(nix::unistd::ForkResult::Child) => {
            drop(r);
            let run = || -> Result<(), String> {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER)
                    .map_err(|e| format!("user namespace: {e}"))?;
                std::fs::write("/proc/self/setgroups", "deny").map_err(|e| e.to_string())?;
                std::fs::write("/proc/self/uid_map", format!("0 {uid} 1"))
                    .map_err(|e| e.to_string())?;
                std::fs::write("/proc/self/gid_map", format!("0 {gid} 1"))
                    .map_err(|e| e.to_string())?;
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("network namespace: {e}"))?;
                cage_net::firewall::nft::apply(
                    &cage_net::firewall::rules::egress_table(
                        1,
                        cage_net::topology::EGRESS_PROXY_PORT,
                        cage_net::egress::nflog::GROUP,
                    ),
                    cage_net::firewall::nft::Where::CallerAsNamespaceRoot,
                )
                .map_err(|e| format!("the egress table: {e}"))?;
                cage_net::egress::nflog::open().map_err(|e| e.to_string())?;
                Ok(())
            };
            let line = match run() {
                Ok(()) => "ok".to_string(),
                Err(e) => e,
            };
            let _ = nix::unistd::write(&w, line.as_bytes());
            // SAFETY: leave without running the parent's destructors.
            unsafe { libc::_exit(0) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(w);
            let mut said = String::new();
            let _ = std::io::Read::read_to_string(&mut std::fs::File::from(r), &mut said);
            let _ = nix::sys::wait::waitpid(child, None);
            match said.as_str() {
                "ok" => Ok(()),
                "" => Err("the check's child said nothing".into()),
                why => Err(why.to_string()),
            }
        }
    }
}

/// Run every check on this host.
pub fn check() -> Result<Report> {
    let mut r = Report::default();
    let uid = nix::unistd::geteuid().as_raw();
    let uts = nix::sys::utsname::uname()?;
    r.ok("kernel", uts.release().to_string_lossy());
    r.ok(
        "mode",
        if uid == 0 {
            "root (the sandbox user maps to an unprivileged host id)".into()
        } else {
            format!("rootless (uid {uid})")
        },
    );

    match userns_works() {
        Ok(()) => r.ok(
            "user namespaces",
            "a user, mount and network namespace can be created",
        ),
        Err(e) => {
            let hint = match read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() {
                Some("0") => "sysctl -w kernel.unprivileged_userns_clone=1",
                _ => "check user.max_user_namespaces (sysctl) and AppArmor's apparmor_restrict_unprivileged_userns",
            };
            r.fail("user namespaces", format!("{e}; fix: {hint}"));
        }
    }

    // SAFETY: a query.
    let seccomp = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) };
    if seccomp >= 0 {
        r.ok("seccomp", "filters are available");
    } else {
        r.fail(
            "seccomp",
            "the kernel has no seccomp filter support (CONFIG_SECCOMP_FILTER)",
        );
    }

    // SAFETY: landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION) asks the ABI.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    };
    if abi > 0 {
        r.ok(
            "landlock",
            format!("ABI {abi}: a second fence on file writes"),
        );
    } else {
        r.warn("landlock", "not available: sandboxes rely on read-only mounts alone (enable the landlock LSM for a second layer)");
    }

    match cgroups::detect() {
        cgroups::Layout::None => r.warn(
            "cgroups",
            "no memory and pids controllers: limits fall back to rlimits",
        ),
        layout => {
            let kind = if layout == cgroups::Layout::Unified {
                "v2"
            } else {
                "v1/hybrid"
            };
            match cgroups::find_parent(uid) {
                Some(p) => r.ok("limits", format!("cgroup {kind}: {}", p.dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "))),
                None if kind == "v2" && crate::systemd::user_bus_address().is_some() => r.ok(
                    "limits",
                    "cgroup v2, not delegated here (a login session): `exec` asks the user's systemd for a delegated scope over D-Bus",
                ),
                None if kind == "v2" => r.warn(
                    "limits",
                    "cgroup v2 without a delegated subtree and no user bus to ask systemd for one: rlimits; log in through pam_systemd, or run under `systemd-run --user --scope -p Delegate=yes`, or set CAGERUN_CGROUP_PARENT",
                ),
                None => r.warn("limits", format!("cgroup {kind} not delegated to uid {uid}: rlimits; fix: sudo cagerun setup-cgroups --user {}", crate::host::user_name(uid))),
            }
            // v1 moves each sandbox into its cgroup by a write that waits out an RCU grace
            // period unless favordynmods is on (v2 starts it there with CLONE_INTO_CGROUP).
            if kind != "v2" {
                match cgroups::cgroup2_mount() {
                    Some((_, opts)) if opts.iter().any(|o| o == cgroups::FAVOR_DYNMODS) => {
                        r.ok("cgroup moves", "favordynmods: a sandbox joins its cgroup at once")
                    }
                    _ => r.warn("cgroup moves", "favordynmods is off: each `cagerun exec` waits 5-12 ms for the kernel to move its sandbox into its cgroup; fix: sudo cagerun setup-cgroups --user NAME (Linux 6.0+ with a cgroup2 mount)"),
                }
            }
        }
    }

    if uid != 0 {
        match crate::ids::subordinate() {
            Some(sub) => r.ok("subordinate ids", format!("uids {}+{}, gids {}+{}: images keep their ownership", sub.uid_base, sub.uid_count, sub.gid_base, sub.gid_count)),
            None => r.warn(
                "subordinate ids",
                format!("none usable (need newuidmap/newgidmap from package uidmap and ranges of 65536 in /etc/subuid, /etc/subgid): image files will all be yours; fix: sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 $(id -un {uid})"),
            ),
        }
    }
    services(&mut r, uid);
    // Networking for services: which uplinks and firewall tools this host has.
    // The same lookup internet mode uses (PATH, then the system directories).
    let on_path = |tool: &str| cage_net::tools::find(tool).is_some();
    // Internet mode's uplink: as root a veth to the host; rootless slirp4netns (chosen over
    // pasta by measurement: Debian 12's pasta tap path stalls), which opens /dev/net/tun.
    if uid == 0 {
        r.ok(
            "uplink",
            "internet mode uses a veth to the host and a cagerun nft table",
        );
    } else if !on_path(cage_net::network::slirp4netns::SLIRP4NETNS) {
        r.warn("uplink", "slirp4netns is missing: `cagerun internet on` cannot work rootless; fix: sudo apt-get install slirp4netns");
    } else if nix::unistd::access(
        "/dev/net/tun",
        nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK,
    )
    .is_err()
    {
        r.warn("uplink", "slirp4netns cannot open /dev/net/tun as you: `cagerun internet on` fails; fix: sudo chmod 0666 /dev/net/tun (Debian's default)");
    } else {
        r.ok("uplink", "internet mode uses slirp4netns");
    }
    if on_path(cage_net::firewall::nft::NFT) {
        r.ok("nftables", "nft is available");
    } else {
        r.warn(
            "nftables",
            "nft is missing (package nftables): internet mode needs it",
        );
    }
    if on_path(cage_net::firewall::nft::NFT) {
        match egress_works() {
            Ok(()) => r.ok(
                "egress",
                "internet = [...] lists work here (nft redirect and log, NFLOG, in a namespace of this user's)",
            ),
            Err(why) => r.warn(
                "egress",
                format!("internet = [...] lists cannot work here: {why}; fix: as root, `modprobe nft_redir nft_log nfnetlink_log` (the kernel's NFT_REDIR, NFT_LOG, NETFILTER_NETLINK_LOG)"),
            ),
        }
    }
    let legacy = read("/proc/sys/dev/tty/legacy_tiocsti");
    if legacy.as_deref() == Some("1") {
        r.ok(
            "TIOCSTI",
            "allowed by this kernel; sandboxes block it with seccomp and a new session",
        );
    }
    Ok(r)
}

/// What `cagerun up` needs beyond sandboxes (warnings: sandboxes work without it): the cage's user namespace maps 65536 ids
/// (subordinate ids; as root, root's own range), and libcontainer joins every cgroup v1
/// hierarchy, so each needs the delegated `cagerun/<uid>`.
fn services(r: &mut Report, uid: u32) {
    let name = crate::host::user_name(uid);
    if uid == 0 {
        // The same check `up` and sandboxes as root make.
        if crate::ids::root_range().is_ok() {
            r.ok(
                "services ids",
                "root's subordinate range holds the cages' ids",
            );
        } else {
            r.warn("services ids", "as root, services run under root's subordinate ids and root has none; fix: usermod --add-subuids 1000000-1065535 --add-subgids 1000000-1065535 root");
        }
    } else if crate::ids::subordinate().is_none() {
        r.warn("services ids", format!("`cagerun up` needs newuidmap/newgidmap and 65536 subordinate ids; fix: sudo apt install uidmap && sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {name}"));
    } else {
        r.ok(
            "services ids",
            "subordinate ids and newuidmap/newgidmap are there",
        );
    }
    match cgroups::detect() {
        cgroups::Layout::V1 { .. } => {
            let subtree = cgroups::delegated_v1(uid);
            let missing: Vec<String> = cgroups::v1_hierarchies()
                .into_iter()
                .filter(|h| uid != 0 && !h.join(&subtree).is_dir())
                .map(|h| h.file_name().unwrap_or_default().to_string_lossy().into_owned())
                .collect();
            if missing.is_empty() {
                r.ok("services cgroups", "v1: every hierarchy has the cage subtree (limits by cgroup)");
            } else {
                r.warn("services cgroups", format!("v1 hierarchies without {}: {}; `cagerun up` needs them; fix: sudo cagerun setup-cgroups --user {name}", subtree.display(), missing.join(", ")));
            }
        }
        cgroups::Layout::Unified => match cgroups::find_parent(uid) {
            Some(p) => r.ok("services cgroups", format!("v2: cages go under {}", p.dirs[0].display())),
            None if crate::systemd::user_bus_address().is_some() => r.ok("services cgroups", "v2, not delegated here (a login session): `up` asks the user's systemd for a delegated scope over D-Bus"),
            None => r.warn("services cgroups", "v2 without a delegated subtree and no user bus to ask systemd for one; fix: log in through pam_systemd or `sudo loginctl enable-linger USER`, or run `systemd-run --user --scope -p Delegate=yes cagerun up`, or set CAGERUN_CGROUP_PARENT"),
        },
        cgroups::Layout::None => r.warn("services cgroups", "no cgroup controllers mounted: services need them"),
    }
}

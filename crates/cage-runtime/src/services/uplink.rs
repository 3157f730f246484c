//! The cage's way out, for internet mode: attached to the router namespace the holder owns.
//!
//! - Rootless: slirp4netns (a user-mode TCP/IP stack) with its tap `uplink` in the router
//!   namespace. Chosen over pasta by measurement (DESIGN.md: Debian 12's pasta tap path
//!   stalls; slirp4netns 1.2 is steady). It exits when the supervisor does (`--exit-fd`).
//! - As root: a veth pair, the host's end `cagerunN` (10.88.N.1/30), the router's `uplink`
//!   (10.88.N.2), and a cagerun-owned nft table in the host's namespace that masquerades what
//!   leaves it; removed by `down` (and by the next `up` after a killed supervisor).
//!
//! Internet means the internet: the host itself is never reachable through the uplink, with
//! or without internet mode — not its loopback (a published port of another cage, a model
//! server, an admin panel), not any address it has (the uplink's host end, its LAN and public
//! addresses). Rootless, slirp4netns runs with `--disable-host-loopback` and no port handler
//! (no API socket), and because it connects from the host's own stack, the router's guard
//! table (cage-net `nft`) rejects every host address before slirp4netns sees it; a thread
//! keeps that list current as the host's addresses change. As root, no DNAT and no
//! route_localnet lead anywhere, and the host table's input hook drops whatever the veth
//! brings for the host itself. Reaching one host port on purpose would be an explicit grant
//! (a future `host:PORT` egress rule); today it is refused. Which service may use the uplink
//! at all is the router's nft set, switched by `cagerun internet on|off`.

use std::io::Read;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cage_net::{netlink::AddressEvents, nft, topology};

use super::holder_client::Holder;
use super::state::Proc;

pub enum Uplink {
    Slirp {
        child: std::process::Child,
        /// Closing it (the supervisor ending) ends slirp4netns.
        _exit: OwnedFd,
        /// Keeps the router's list of host addresses current while slirp4netns runs.
        _guard: HostGuard,
    },
    Veth {
        host_veth: String,
        table: String,
    },
}

impl Uplink {
    /// The uplink's gateway inside the cage (slirp4netns's 10.0.2.2, the veth's host end as
    /// root): the way out, which leads to nothing on the host itself.
    pub fn gateway(&self, subnet: u8) -> Ipv4Addr {
        match self {
            Uplink::Slirp { .. } => topology::SLIRP_HOST,
            Uplink::Veth { .. } => topology::uplink_host_address(subnet),
        }
    }
    pub fn kind(&self) -> &'static str {
        match self {
            Uplink::Slirp { .. } => "slirp4netns",
            Uplink::Veth { .. } => "veth + nft masquerade",
        }
    }
    pub fn pid(&self) -> Option<Proc> {
        match self {
            Uplink::Slirp { child, .. } => Proc::of(child.id() as i32),
            Uplink::Veth { .. } => None,
        }
    }

    pub fn stop(self) {
        match self {
            Uplink::Slirp { mut child, .. } => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Uplink::Veth { host_veth, table } => remove_host_side(&host_veth, &table),
        }
    }
}

/// The resolver file of an internet service. Rootless: slirp4netns's DNS (10.0.2.3:53, the
/// one port of its network the guard lets through; slirp4netns forwards it to the host's
/// resolver). As root: the host's nameservers, reached through the NAT like any server, from
/// systemd-resolved's upstream list when /etc/resolv.conf names only local ones (its stub
/// 127.0.0.53, or a resolver on one of the host's own addresses): the host is unreachable
/// from the cage, so a local resolver is never written. Without internet mode, lookups fail
/// like every other packet.
pub fn resolv_conf() -> String {
    if !nix::unistd::geteuid().is_root() {
        return format!("nameserver {}\n", topology::SLIRP_DNS);
    }
    let local = host_addresses().unwrap_or_default();
    let is_local = |ip: Ipv4Addr| {
        ip.is_loopback()
            || ip.is_unspecified()
            || local.iter().any(|&(a, len)| contains((a, len), ip))
    };
    let servers = |path: &str| -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("nameserver"))
            .map(|a| a.trim().to_string())
            .filter(|a| a.parse::<Ipv4Addr>().is_ok_and(|ip| !is_local(ip)))
            .collect()
    };
    let mut list = servers("/etc/resolv.conf");
    if list.is_empty() {
        list = servers("/run/systemd/resolve/resolv.conf");
    }
    list.iter()
        .take(3)
        .map(|a| format!("nameserver {a}\n"))
        .collect()
}

fn contains((net, len): (Ipv4Addr, u8), ip: Ipv4Addr) -> bool {
    let mask = u32::MAX.checked_shl(32 - len.min(32) as u32).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

/// The host's local addresses (its local routing table), read in a thread of its own: the
/// netlink client runs its own runtime, which an async caller's thread may not start.
fn host_addresses() -> Result<Vec<(Ipv4Addr, u8)>> {
    let mut found = std::thread::spawn(|| {
        cage_net::netlink::Netlink::open().and_then(|nl| nl.local_addresses())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("listing the host's addresses panicked"))??;
    found.sort();
    found.dedup();
    Ok(found)
}

/// A tool on PATH or in the usual system directories (a user's PATH often lacks /usr/sbin).
pub fn find_binary(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/bin", "/usr/sbin", "/sbin", "/bin"])
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

/// Rootless: slirp4netns in the holder's namespaces, configured (address, route) and guarded
/// (the router rejects the host's addresses) when this returns.
pub fn start_slirp(holder_pid: i32) -> Result<Uplink> {
    let bin = find_binary("slirp4netns")
        .context("internet mode rootless needs slirp4netns: apt-get install slirp4netns")?;
    // Close-on-exec: only slirp4netns gets them (at 3 and 4), no later child of ours.
    let (exit_r, exit_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let mut cmd = std::process::Command::new(bin);
    cmd.args([
        "--configure",
        &format!("--mtu={}", topology::MTU),
        // 10.0.2.2 would be the host's 127.0.0.1.
        "--disable-host-loopback",
        "--exit-fd=3",
        "--ready-fd=4",
        &format!("--userns-path=/proc/{holder_pid}/ns/user"),
        "--netns-type=path",
        &format!("/proc/{holder_pid}/ns/net"),
        topology::UPLINK_IFACE,
    ])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped());
    crate::ipc::pass_fds(&mut cmd, &[exit_r.as_raw_fd(), ready_w.as_raw_fd()]);
    let mut child = cmd.spawn().context("starting slirp4netns")?;
    drop(exit_r);
    drop(ready_w);
    // "1" on the ready fd once the tap is configured; EOF if it died.
    let mut ready = std::fs::File::from(ready_r);
    let mut buf = [0u8; 1];
    let got = ready.read(&mut buf).unwrap_or(0);
    if got == 0 {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let _ = child.kill();
        let _ = child.wait();
        if err.contains("/dev/net/tun") {
            bail!("slirp4netns cannot open /dev/net/tun ({}): rootless internet mode needs it usable by you, as Debian installs it: sudo chmod 0666 /dev/net/tun", err.trim());
        }
        bail!("slirp4netns did not start: {}", err.trim());
    }
    // Nothing is routed to the uplink before the router's `internet` set names a service,
    // which happens after this returns: the guard is in place first, or there is no uplink.
    match HostGuard::start(holder_pid) {
        Ok(guard) => Ok(Uplink::Slirp {
            child,
            _exit: exit_w,
            _guard: guard,
        }),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e.context("guarding the host's addresses from the cage (rootless internet mode)"))
        }
    }
}

/// The router namespace of a cage, entered as its uid 0 (the holder's user namespace).
struct RouterNs {
    user: OwnedFd,
    net: OwnedFd,
}

impl RouterNs {
    fn of(holder_pid: i32) -> Result<RouterNs> {
        let open = |ns: &str| -> Result<OwnedFd> {
            Ok(std::fs::File::open(format!("/proc/{holder_pid}/ns/{ns}"))
                .with_context(|| format!("opening the holder's {ns} namespace"))?
                .into())
        };
        Ok(RouterNs {
            user: open("user")?,
            net: open("net")?,
        })
    }

    /// `nft -j JSON` run inside, as uid 0 of the cage's user namespace (the holder's own way,
    /// from the outside: the child joins the user namespace, then the network one).
    fn nft(&self, rules: &nftables::schema::Nftables<'_>) -> Result<()> {
        use std::os::unix::process::CommandExt;
        let (user, net) = (self.user.as_raw_fd(), self.net.as_raw_fd());
        nft_in(
            rules,
            "nft in the router namespace",
            |cmd: &mut std::process::Command| {
                // SAFETY: only async-signal-safe syscalls between fork and exec.
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
            },
        )
    }
}

/// Rootless: the router's guard table and the thread that keeps its host addresses current.
/// Dropping it stops the thread (the table goes with the router namespace).
pub struct HostGuard {
    stop: Option<OwnedFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HostGuard {
    fn start(holder_pid: i32) -> Result<HostGuard> {
        let ns = RouterNs::of(holder_pid)?;
        // Listen first, then read: a change between the two is not lost.
        let events = AddressEvents::open().context("watching the host's addresses")?;
        let host = host_addresses().context("listing the host's addresses")?;
        ns.nft(&nft::slirp_guard(topology::UPLINK_IFACE, &host))?;
        let (stop_r, stop_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let thread = std::thread::Builder::new()
            .name("host-guard".into())
            .spawn(move || keep_guard_current(ns, events, stop_r, host))
            .context("starting the host guard's thread")?;
        Ok(HostGuard {
            stop: Some(stop_w),
            thread: Some(thread),
        })
    }
}

impl Drop for HostGuard {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The host gained or lost an address (DHCP, a VPN, a new bridge): the guard's set follows.
/// A failed update is retried every second (the old list stays in force meanwhile).
fn keep_guard_current(
    ns: RouterNs,
    events: AddressEvents,
    stop: OwnedFd,
    mut applied: Vec<(Ipv4Addr, u8)>,
) {
    let mut pending = false;
    loop {
        let timeout = pending.then_some(Duration::from_secs(1));
        match events.wait(&stop, timeout) {
            Ok(None) => return,
            Ok(Some(changed)) if !changed && !pending => continue,
            Ok(Some(_)) => {}
            Err(e) => {
                tracing::error!("internet mode: watching the host's addresses: {e:#}");
                std::thread::sleep(Duration::from_secs(1));
                pending = true;
                continue;
            }
        }
        let now = match host_addresses() {
            Ok(now) => now,
            Err(e) => {
                tracing::error!("internet mode: listing the host's addresses: {e:#}");
                pending = true;
                continue;
            }
        };
        if now == applied && !pending {
            continue;
        }
        match ns.nft(&nft::slirp_guard_hosts(&now)) {
            Ok(()) => {
                tracing::info!("internet mode: the host's addresses changed; guard updated");
                applied = now;
                pending = false;
            }
            Err(e) => {
                tracing::error!("internet mode: updating the host guard: {e:#}");
                pending = true;
            }
        }
    }
}

/// As root: the veth pair and the host's nft table.
pub fn start_veth(holder: &Holder, subnet: u8, cage_id: &str) -> Result<Uplink> {
    let host_veth = topology::uplink_host_veth(subnet);
    let table = nft::host_table_name(cage_id);
    let temp_peer = format!("{host_veth}u");
    let host_addr = topology::uplink_host_address(subnet);
    let router_addr = topology::uplink_router_address(subnet);
    // Leftovers of a cage killed on this subnet before its `down`.
    remove_host_side(&host_veth, &table);
    let made = (|| -> Result<()> {
        let nl = cage_net::netlink::Netlink::open()?;
        let (host, peer) = nl.add_veth(&host_veth, &temp_peer)?;
        nl.set_mtu(host, topology::MTU)?;
        nl.set_mtu(peer, topology::MTU)?;
        let router_ns = std::fs::File::open(format!("/proc/{}/ns/net", holder.pid()))
            .context("opening the router namespace")?;
        nl.move_to(peer, std::os::fd::AsFd::as_fd(&router_ns))?;
        nl.add_address(
            host,
            std::net::IpAddr::V4(host_addr),
            topology::UPLINK_PREFIX,
        )?;
        // The host's end must lead nowhere on the host: no route_localnet (127.0.0.0/8 from
        // the veth stays a martian, whatever the host's default says) and no IPv6 (the
        // tables are IPv4; a link-local address would be a second way in).
        let conf = |family: &str, key: &str, value: &str| {
            std::fs::write(
                format!("/proc/sys/net/{family}/conf/{host_veth}/{key}"),
                value,
            )
        };
        conf("ipv4", "route_localnet", "0")?;
        let _ = conf("ipv6", "disable_ipv6", "1");
        // The host table before the link is up: nothing passes unfiltered.
        run_nft(&nft::host_table(&table, &host_veth, router_addr))?;
        nl.set_up(host)?;
        // Forwarding is the host's switch (as docker and podman set it); it stays on after
        // `down`.
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .context("enabling IPv4 forwarding on the host")?;
        holder.configure_uplink(&temp_peer, router_addr, topology::UPLINK_PREFIX, host_addr)?;
        Ok(())
    })();
    if let Err(e) = made {
        remove_host_side(&host_veth, &table);
        return Err(e);
    }
    Ok(Uplink::Veth { host_veth, table })
}

/// Remove what `start_veth` made in the host's namespace (each part only if there).
pub fn remove_host_side(host_veth: &str, table: &str) {
    if let Ok(nl) = cage_net::netlink::Netlink::open() {
        if let Ok(i) = nl.index(host_veth) {
            let _ = nl.delete(i);
        }
    }
    // Absent already (never made, or removed): nft says so, and that is fine.
    let _ = run_nft(&nft::delete_table(table));
}

fn nft_binary() -> Option<std::path::PathBuf> {
    find_binary("nft")
}

fn run_nft(rules: &nftables::schema::Nftables<'_>) -> Result<()> {
    run_nft_as(rules, false)
}

/// `nft -j JSON` with `rules` (the `nftables` crate's helper runs nft too, but cannot run it
/// as another user). The document goes as an argument: with `-j`, nft opens `/dev/stdin` by
/// name, which a process that changed its uid may not reopen. `as_ns_root`: run it as uid 0
/// of the caller's user namespace (the holder is the cage's user 1000 there, and exec would
/// drop its capabilities).
pub fn run_nft_as(rules: &nftables::schema::Nftables<'_>, as_ns_root: bool) -> Result<()> {
    use std::os::unix::process::CommandExt;
    nft_in(rules, "nft", |cmd: &mut std::process::Command| {
        if as_ns_root {
            cmd.uid(0).gid(0);
        }
    })
}

/// `nft -j DOCUMENT` with what `setup` adds to the command (the identity or namespaces it
/// runs in); its stderr is the error, prefixed with `what`.
fn nft_in(
    rules: &nftables::schema::Nftables<'_>,
    what: &str,
    setup: impl FnOnce(&mut std::process::Command),
) -> Result<()> {
    let bin = nft_binary().context("internet mode needs nft: apt-get install nftables")?;
    let mut cmd = std::process::Command::new(bin);
    setup(&mut cmd);
    let out = cmd
        .arg("-j")
        .arg(nft::to_json(rules))
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

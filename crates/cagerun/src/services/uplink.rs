//! The cage's way out, for internet mode: attached to the router namespace the holder owns.
//!
//! - Rootless: slirp4netns (a user-mode TCP/IP stack) with its tap `uplink` in the router
//!   namespace. Chosen over pasta by measurement (DESIGN.md: Debian 12's pasta tap path
//!   stalls; slirp4netns 1.2 is steady). It exits when the supervisor does (`--exit-fd`).
//! - As root: a veth pair, the host's end `cagerunN` (10.88.N.1/30), the router's `uplink`
//!   (10.88.N.2), and a cagerun-owned nft table in the host's namespace that masquerades what
//!   leaves it; removed by `down` (and by the next `up` after a killed supervisor).
//!
//! Either way the uplink's gateway address leads to the host's own 127.0.0.1 (slirp4netns's
//! 10.0.2.2; the veth's host end, DNAT-ed): that is how a cage in internet mode reaches a
//! proxy or a test server on the host's loopback. Which service may use the uplink at all is
//! the router's nft set (cage-net `nft`), switched by `cagerun internet on|off`.

use std::io::Read;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

use anyhow::{bail, Context, Result};
use cage_net::{nft, topology};

use super::holder_client::Holder;
use super::state::Proc;

pub enum Uplink {
    Slirp {
        child: std::process::Child,
        /// Closing it (the supervisor ending) ends slirp4netns.
        _exit: OwnedFd,
    },
    Veth {
        host_veth: String,
        table: String,
    },
}

impl Uplink {
    /// The address inside the cage that reaches the host's 127.0.0.1.
    pub fn host_loopback(&self, subnet: u8) -> Ipv4Addr {
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

/// The resolver file of an internet service. Rootless: slirp4netns's DNS (it forwards to
/// the host's resolvers). As root: the host's nameservers, from systemd-resolved's upstream
/// list when /etc/resolv.conf names only its local stub (a loopback address the cage cannot
/// use), reached through the NAT like any server. Without internet mode, lookups fail like
/// every other packet.
pub fn resolv_conf() -> String {
    if !nix::unistd::geteuid().is_root() {
        return format!("nameserver {}\n", topology::SLIRP_DNS);
    }
    let servers = |path: &str| -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("nameserver"))
            .map(|a| a.trim().to_string())
            .filter(|a| {
                a.parse::<std::net::Ipv4Addr>()
                    .is_ok_and(|ip| !ip.is_loopback())
            })
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

/// Rootless: slirp4netns in the holder's namespaces, configured (address, route) when this
/// returns.
pub fn start_slirp(holder_pid: i32) -> Result<Uplink> {
    let bin = find_binary("slirp4netns")
        .context("internet mode rootless needs slirp4netns: apt-get install slirp4netns")?;
    let (exit_r, exit_w) = nix::unistd::pipe()?;
    let (ready_r, ready_w) = nix::unistd::pipe()?;
    let mut cmd = std::process::Command::new(bin);
    cmd.args([
        "--configure",
        &format!("--mtu={}", topology::MTU),
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
    super::holder_client::pass_fds(&mut cmd, &[exit_r.as_raw_fd(), ready_w.as_raw_fd()]);
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
    Ok(Uplink::Slirp {
        child,
        _exit: exit_w,
    })
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
        nl.set_up(host)?;
        // route_localnet on this veth only: the DNAT to 127.0.0.1 needs it. Forwarding is
        // the host's switch (as docker and podman set it); it stays on after `down`.
        std::fs::write(
            format!("/proc/sys/net/ipv4/conf/{host_veth}/route_localnet"),
            "1",
        )?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .context("enabling IPv4 forwarding on the host")?;
        run_nft(&nft::host_table(&table, &host_veth, host_addr, router_addr))?;
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
    let bin = nft_binary().context("internet mode needs nft: apt-get install nftables")?;
    let mut cmd = std::process::Command::new(bin);
    if as_ns_root {
        cmd.uid(0).gid(0);
    }
    let out = cmd
        .arg("-j")
        .arg(nft::to_json(rules))
        .stdin(std::process::Stdio::null())
        .output()
        .context("running nft")?;
    if !out.status.success() {
        bail!("nft: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

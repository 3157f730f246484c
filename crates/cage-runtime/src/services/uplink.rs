//! The cage's way out, for internet mode: attached to the router namespace the holder owns.
//! This module orchestrates; the mechanisms are cage-net's.
//!
//! - Rootless: slirp4netns (cage-net `network::slirp4netns`), spawned here as the supervisor's
//!   own child with its tap `uplink` in the router namespace; it exits when the supervisor
//!   does (`--exit-fd`). The router's guard table (cage-net `firewall::guard`) is in place
//!   before this returns.
//! - As root: a veth pair, the host's end `cagerunN` (10.88.N.1/30), the router's `uplink`
//!   (10.88.N.2), and a cagerun-owned nft table in the host's namespace that masquerades what
//!   leaves it (cage-net `network::host_veth`, setup and teardown); the holder configures the
//!   router's end. Removed by `down` (and by the next `up` after a killed supervisor).
//!
//! Internet means the internet: the host itself is never reachable through the uplink, with
//! or without internet mode — not its loopback (a published port of another cage, a model
//! server, an admin panel), not any address it has (the uplink's host end, its LAN and public
//! addresses). Rootless, slirp4netns runs with `--disable-host-loopback` and no port handler
//! (no API socket), and because it connects from the host's own stack, the router's guard
//! table rejects every host address before slirp4netns sees it; a thread keeps that list
//! current as the host's addresses change. As root, no DNAT and no route_localnet lead
//! anywhere, and the host table's input hook drops whatever the veth brings for the host
//! itself. Reaching one host port on purpose would be an explicit grant (a future `host:PORT`
//! egress rule); today it is refused. Which service may use the uplink at all is the router's
//! nft set, switched by `cagerun internet on|off`.

use std::io::Read;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use anyhow::{Context, Result};
use cage_net::firewall::guard::HostGuard;
use cage_net::network::{host_veth, netns::RouterNs, resolv, slirp4netns};
use cage_net::topology;

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

/// The resolver file of an internet service, by the uplink this process would start
/// (cage-net `network::resolv`).
pub fn resolv_conf() -> String {
    resolv::resolv_conf(if nix::unistd::geteuid().is_root() {
        resolv::Via::HostVeth
    } else {
        resolv::Via::Slirp4netns
    })
}

/// Rootless: slirp4netns in the holder's namespaces, configured (address, route) and guarded
/// (the router rejects the host's addresses) when this returns.
pub fn start_slirp(holder_pid: i32) -> Result<Uplink> {
    let bin = slirp4netns::binary()?;
    // Close-on-exec: only slirp4netns gets them (at 3 and 4), no later child of ours.
    let (exit_r, exit_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let mut cmd = std::process::Command::new(bin);
    cmd.args(slirp4netns::SlirpRequest::for_holder(holder_pid, 3, 4).args())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    crate::ipc::pass_fds(&mut cmd, &[exit_r.as_raw_fd(), ready_w.as_raw_fd()]);
    let mut child = cmd.spawn().context("starting slirp4netns")?;
    drop(exit_r);
    drop(ready_w);
    if !slirp4netns::wait_ready(ready_r) {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let _ = child.kill();
        let _ = child.wait();
        return Err(slirp4netns::did_not_start(&err).into());
    }
    // Nothing is routed to the uplink before the router's `internet` set names a service,
    // which happens after this returns: the guard is in place first, or there is no uplink.
    let guard = RouterNs::of_holder(holder_pid)
        .map_err(anyhow::Error::from)
        .and_then(|ns| Ok(HostGuard::start(ns, topology::UPLINK_IFACE)?));
    match guard {
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

/// As root: the host's side of the veth (cage-net), then the router's end (the holder).
pub fn start_veth(holder: &Holder, subnet: u8, cage_id: &str) -> Result<Uplink> {
    let router_ns = std::fs::File::open(format!("/proc/{}/ns/net", holder.pid()))
        .context("opening the router namespace")?;
    let req = host_veth::HostVethRequest::for_cage(subnet, cage_id, router_ns.as_fd());
    let made = host_veth::setup(&req)?;
    if let Err(e) =
        holder.configure_uplink(&req.peer, req.router_address, req.prefix, req.host_address)
    {
        host_veth::teardown(&made.host_veth, &made.table);
        return Err(e);
    }
    Ok(Uplink::Veth {
        host_veth: made.host_veth,
        table: made.table,
    })
}

/// Remove what `start_veth` made in the host's namespace (each part only if there).
pub fn remove_host_side(host_veth: &str, table: &str) {
    host_veth::teardown(host_veth, table);
}

//! The supervisor's side of the holder: spawn it, give its user namespace the cage's id
//! maps, and ask it for service namespaces and sockets inside them.

use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use cage_sandbox::plan::IdMap;

use crate::ipc;

pub struct Holder {
    pub child: Child,
    sock: Mutex<OwnedFd>,
}

pub fn spawn(
    cage: &str,
    subnet: u8,
    internet: bool,
    uid_map: &[IdMap],
    gid_map: &[IdMap],
) -> Result<Arc<Holder>> {
    let (ours, theirs) = ipc::pair()?;
    let mut cmd = Command::new(crate::host::self_exe()?);
    cmd.args(["holder", "--subnet", &subnet.to_string(), "--cage", cage])
        .stdin(Stdio::null());
    if internet {
        cmd.arg("--internet");
    }
    ipc::pass_fd_as_3(&mut cmd, &theirs);
    let child = cmd.spawn().context("starting the network holder")?;
    drop(theirs);
    let holder = Holder {
        child,
        sock: Mutex::new(ours),
    };
    let sock = holder.sock.lock().unwrap();
    match ipc::recv(&*sock)? {
        Some((m, _)) if m == "unshared" => {}
        other => bail!("the network holder did not start: {other:?}"),
    }
    let privileged = nix::unistd::geteuid().is_root();
    cage_sandbox::idmap::write_maps(holder.child.id() as i32, uid_map, gid_map, privileged)
        .context(
            "mapping the cage's user namespace (newuidmap/newgidmap and /etc/subuid, /etc/subgid)",
        )?;
    ipc::send(&*sock, "mapped", None)?;
    match ipc::recv(&*sock)? {
        Some((m, _)) if m == "ready" => {}
        Some((m, _)) => bail!("the network holder failed: {m}"),
        None => bail!("the network holder failed (see above)"),
    }
    drop(sock);
    Ok(Arc::new(holder))
}

impl Holder {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn call(&self, req: &str) -> Result<(String, Option<OwnedFd>)> {
        let sock = self.sock.lock().unwrap();
        ipc::call(&*sock, req)
    }

    /// A service network namespace: the holder's name for it, and a descriptor of it (which
    /// monitors pass to libcontainer as `/proc/self/fd/N`: opening another process's fd
    /// link would need ptrace rights over the holder).
    pub fn add_service(
        &self,
        slot: usize,
        addr: std::net::Ipv4Addr,
        internet: bool,
    ) -> Result<(i32, OwnedFd)> {
        let route = if internet { " route" } else { "" };
        let (name, fd) = self.call(&format!("add {slot} {addr}{route}"))?;
        Ok((
            name.parse().context("holder answered no name")?,
            fd.context("holder passed no namespace")?,
        ))
    }

    /// A socket connecting (non-blocking) to 127.0.0.1:port inside the namespace.
    pub fn connect(&self, netns_fd: i32, port: u16) -> Result<OwnedFd> {
        let (_, fd) = self.call(&format!("connect {netns_fd} {port}"))?;
        fd.context("holder passed no socket")
    }

    /// Exactly these service addresses may use the uplink (empty: internet off).
    pub fn set_internet(&self, addrs: &[std::net::Ipv4Addr]) -> Result<()> {
        let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        self.call(&format!("internet {}", list.join(" ")))?;
        Ok(())
    }

    /// Configure the router's end of the uplink veth (as root).
    pub fn configure_uplink(
        &self,
        name: &str,
        addr: std::net::Ipv4Addr,
        prefix: u8,
        gateway: std::net::Ipv4Addr,
    ) -> Result<()> {
        self.call(&format!("uplink {name} {addr} {prefix} {gateway}"))?;
        Ok(())
    }
}

//! The supervisor's side of the holder: spawn it, give its user namespace the cage's id
//! maps, and ask it for service namespaces and sockets inside them. What is said is typed in
//! [`crate::proto`]: [`HolderEvent`] and [`SupervisorToHolder`] while it starts, then one
//! [`HolderReply`] to each [`HolderRequest`].

use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use cage_sandbox::plan::IdMap;

use crate::ipc;
use crate::proto::{HolderEvent, HolderReply, HolderRequest, SupervisorToHolder};

/// The holder answered a request with a reply that does not fit it.
#[derive(Debug, thiserror::Error)]
#[error("the network holder answered {received:?} to {request:?}")]
pub struct UnexpectedReply {
    pub request: HolderRequest,
    pub received: HolderReply,
}

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
    match ipc::recv::<HolderEvent>(&*sock)? {
        Some((HolderEvent::Unshared, _)) => {}
        Some((other, _)) => bail!("the network holder did not start: it said {other:?}"),
        None => bail!("the network holder did not start: None"),
    }
    let privileged = nix::unistd::geteuid().is_root();
    cage_sandbox::idmap::write_maps(holder.child.id() as i32, uid_map, gid_map, privileged)
        .context(
            "mapping the cage's user namespace (newuidmap/newgidmap and /etc/subuid, /etc/subgid)",
        )?;
    ipc::send(&*sock, &SupervisorToHolder::Mapped, &[])?;
    match ipc::recv::<HolderEvent>(&*sock)? {
        Some((HolderEvent::Ready, _)) => {}
        Some((other, _)) => bail!("the network holder failed: it said {other:?}"),
        None => bail!("the network holder failed (see above)"),
    }
    drop(sock);
    Ok(Arc::new(holder))
}

impl Holder {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Send a request and wait for its answer; [`HolderReply::Error`] is an error here, with
    /// the holder's text.
    fn call(&self, req: &HolderRequest) -> Result<(HolderReply, Option<OwnedFd>)> {
        let (reply, fds) = self.call_fds(req)?;
        Ok((reply, fds.into_iter().next()))
    }

    fn call_fds(&self, req: &HolderRequest) -> Result<(HolderReply, Vec<OwnedFd>)> {
        let sock = self.sock.lock().unwrap();
        ipc::send(&*sock, req, &[])?;
        match ipc::recv::<HolderReply>(&*sock)? {
            Some((HolderReply::Error(why), _)) => bail!("{why}"),
            Some((reply, fds)) => Ok((reply, fds)),
            None => bail!("the network holder is gone"),
        }
    }

    /// Egress by name: the router's egress table and the proxy's sockets inside the router
    /// namespace (resolver, listener, dropped-packet log).
    pub fn egress(&self) -> Result<cage_net::egress::proxy::Sockets> {
        let req = HolderRequest::Egress;
        match self.call_fds(&req)? {
            (HolderReply::EgressSockets, fds) if fds.len() == 3 => {
                let mut it = fds.into_iter();
                let (dns, tcp, nflog) =
                    (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
                Ok(cage_net::egress::proxy::Sockets {
                    dns: dns.into(),
                    tcp: tcp.into(),
                    nflog,
                })
            }
            (received, _) => Err(UnexpectedReply {
                request: req,
                received,
            }
            .into()),
        }
    }

    /// Forget a namespace the holder made (it goes once no process is inside).
    pub fn drop_netns(&self, netns: i32) -> Result<()> {
        self.call_ok(HolderRequest::Drop { netns })
    }

    /// Exactly these addresses are egress sources.
    pub fn set_egress_sources(&self, addrs: &[std::net::Ipv4Addr]) -> Result<()> {
        self.call_ok(HolderRequest::EgressSources {
            addresses: addrs.to_vec(),
        })
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
        let req = HolderRequest::AddService {
            slot,
            address: addr,
            route: internet,
        };
        match self.call(&req)? {
            (HolderReply::Netns { netns }, fd) => {
                Ok((netns, fd.context("holder passed no namespace")?))
            }
            (received, _) => Err(UnexpectedReply {
                request: req,
                received,
            }
            .into()),
        }
    }

    /// A socket connecting (non-blocking) to 127.0.0.1:port inside the namespace.
    pub fn connect(&self, netns_fd: i32, port: u16) -> Result<OwnedFd> {
        let req = HolderRequest::Connect {
            netns: netns_fd,
            port,
        };
        match self.call(&req)? {
            (HolderReply::Socket, fd) => fd.context("holder passed no socket"),
            (received, _) => Err(UnexpectedReply {
                request: req,
                received,
            }
            .into()),
        }
    }

    /// Exactly these service addresses may use the uplink (empty: internet off).
    pub fn set_internet(&self, addrs: &[std::net::Ipv4Addr]) -> Result<()> {
        self.call_ok(HolderRequest::Internet {
            allowed: addrs.to_vec(),
        })
    }

    /// Configure the router's end of the uplink veth (as root).
    pub fn configure_uplink(
        &self,
        name: &str,
        addr: std::net::Ipv4Addr,
        prefix: u8,
        gateway: std::net::Ipv4Addr,
    ) -> Result<()> {
        self.call_ok(HolderRequest::Uplink {
            link: name.to_string(),
            address: addr,
            prefix,
            gateway,
        })
    }

    /// A request answered [`HolderReply::Ok`].
    fn call_ok(&self, req: HolderRequest) -> Result<()> {
        match self.call(&req)? {
            (HolderReply::Ok, _) => Ok(()),
            (received, _) => Err(UnexpectedReply {
                request: req,
                received,
            }
            .into()),
        }
    }
}

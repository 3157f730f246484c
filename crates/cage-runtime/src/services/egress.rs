//! Egress by name, the supervisor's side: the live lists (each list service's from cage.toml,
//! edited by `cagerun internet allow|deny`; each list sandbox's while it exists), the policy
//! the egress proxy enforces ([`crate::egress`]), the router's set of sources, and a network
//! namespace on the bridge for each tool sandbox with a list.
//!
//! Decisions:
//! - One switch: `internet on|off` turns lists on and off with `internet = true`. A list
//!   source stays in the router's set while internet is off, so the proxy refuses (and logs)
//!   its attempts by name instead of them vanishing.
//! - Live edits last until `down` (cage.toml is the user's file; `up` starts from it).
//! - A list sandbox's identity in the audit log is `SERVICE/CONTAINER-ID` (the docker
//!   container OpenClaw created): every exec of it shares one network namespace and address,
//!   made at `create` and removed at `rm` (or `down`).

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use cage_net::topology;
use cage_spec::egress::{EgressPolicy, Rule, Source};

use super::holder_client::Holder;
use crate::egress::EgressProxy;

pub struct EgressControl {
    holder: Arc<Holder>,
    subnet: u8,
    on: AtomicBool,
    lists: Mutex<Lists>,
    proxy: Mutex<Option<Arc<EgressProxy>>>,
}

#[derive(Default)]
struct Lists {
    /// service → (address, rules)
    services: BTreeMap<String, (Ipv4Addr, Vec<Rule>)>,
    /// slot → (SERVICE/ID, rules)
    sandboxes: BTreeMap<usize, (String, Vec<Rule>)>,
    /// The sandboxes' lists from cage.toml, by service.
    sandbox_lists: BTreeMap<String, Vec<Rule>>,
}

/// A list sandbox's network: its own namespace on the bridge (held by the holder), and what
/// an exec needs to join it. Dropping the last handle forgets it: its source, its namespace
/// (which goes with its veth once no process is inside), its files, its slot — whether the
/// container was removed, the cage went down, or an exec still running held it a moment
/// longer.
pub struct SandboxNet {
    control: Arc<EgressControl>,
    slot: usize,
    holder_name: i32,
    pub netns: OwnedFd,
    /// The cage's user namespace (the network namespace's owner), which a sandbox joins first.
    pub user: File,
    pub hosts: PathBuf,
    pub resolv: PathBuf,
}

impl Drop for SandboxNet {
    fn drop(&mut self) {
        let c = &self.control;
        c.lists.lock().unwrap().sandboxes.remove(&self.slot);
        let _ = c.push_policy();
        let _ = c.push_sources();
        let _ = c.holder.drop_netns(self.holder_name);
        if let Some(dir) = self.hosts.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl EgressControl {
    pub fn new(
        holder: Arc<Holder>,
        subnet: u8,
        services: Vec<(String, Ipv4Addr, Vec<Rule>)>,
        sandbox_lists: BTreeMap<String, Vec<Rule>>,
    ) -> EgressControl {
        EgressControl {
            holder,
            subnet,
            on: AtomicBool::new(false),
            lists: Mutex::new(Lists {
                services: services.into_iter().map(|(n, a, r)| (n, (a, r))).collect(),
                sandboxes: BTreeMap::new(),
                sandbox_lists,
            }),
            proxy: Mutex::new(None),
        }
    }

    /// Some service or sandbox has a list: the proxy is needed.
    pub fn wanted(&self) -> bool {
        let l = self.lists.lock().unwrap();
        !l.services.is_empty() || !l.sandbox_lists.is_empty()
    }

    /// The router's egress table and sockets, the proxy on them, the set of sources: the
    /// proxy's pid.
    pub fn start(&self, upstream_dns: &[SocketAddrV4], log: &Path) -> Result<i32> {
        let sockets = self.holder.egress()?;
        let proxy = EgressProxy::spawn(sockets, upstream_dns, &self.policy(), log)?;
        let pid = proxy.pid();
        *self.proxy.lock().unwrap() = Some(Arc::new(proxy));
        self.push_sources()?;
        Ok(pid)
    }

    pub fn stop(&self) {
        if let Some(p) = self.proxy.lock().unwrap().take() {
            p.stop();
        }
    }

    /// Internet mode (lists and `true` alike).
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::SeqCst)
    }

    pub fn set_on(&self, on: bool) -> Result<()> {
        self.on.store(on, Ordering::SeqCst);
        self.push_policy()
    }

    /// The policy the proxy enforces now.
    pub fn policy(&self) -> EgressPolicy {
        let l = self.lists.lock().unwrap();
        let mut sources: Vec<Source> = l
            .services
            .iter()
            .map(|(name, (address, rules))| Source {
                address: *address,
                name: name.clone(),
                rules: rules.clone(),
            })
            .collect();
        sources.extend(l.sandboxes.iter().filter_map(|(slot, (name, rules))| {
            Some(Source {
                address: topology::service_address(self.subnet, *slot).ok()?,
                name: name.clone(),
                rules: rules.clone(),
            })
        }));
        EgressPolicy {
            on: self.on.load(Ordering::SeqCst),
            sources,
        }
    }

    /// The live lists as `internet` shows them (`SERVICE/sandboxes` for a service's tool
    /// sandboxes).
    pub fn lists(&self) -> BTreeMap<String, Vec<String>> {
        let l = self.lists.lock().unwrap();
        let text = |r: &[Rule]| r.iter().map(|r| r.to_string()).collect::<Vec<_>>();
        let mut out: BTreeMap<String, Vec<String>> = l
            .services
            .iter()
            .map(|(n, (_, r))| (n.clone(), text(r)))
            .collect();
        for (svc, r) in &l.sandbox_lists {
            out.insert(format!("{svc}/sandboxes"), text(r));
        }
        out
    }

    fn push_policy(&self) -> Result<()> {
        let proxy = self.proxy.lock().unwrap().clone();
        match proxy {
            Some(p) => p.update(&self.policy()),
            None => Ok(()),
        }
    }

    fn push_sources(&self) -> Result<()> {
        let addrs: Vec<Ipv4Addr> = self.policy().sources.iter().map(|s| s.address).collect();
        self.holder.set_egress_sources(&addrs)
    }

    /// `cagerun internet allow|deny SERVICE ENTRY` on a list service, live (a denied
    /// entry's live connections are cut by the proxy).
    pub fn edit(&self, service: &str, rule: Rule, allow: bool) -> Result<()> {
        {
            let mut l = self.lists.lock().unwrap();
            let Some((_, list)) = l.services.get_mut(service) else {
                bail!("service {service} has no `internet = [...]` list");
            };
            if allow {
                if !list.contains(&rule) {
                    list.push(rule);
                }
            } else if let Some(at) = list.iter().position(|r| *r == rule) {
                list.remove(at);
            } else {
                bail!("{rule} is not in {service}'s list (see `cagerun internet`)");
            }
        }
        self.push_policy()
    }

    /// A network namespace on the bridge for the list sandbox `SERVICE/ID`, registered as an
    /// egress source with `rules`.
    pub fn attach_sandbox(
        self: &Arc<Self>,
        service: &str,
        id: &str,
        rules: &[Rule],
    ) -> Result<SandboxNet> {
        let short = &id[..id.len().min(12)];
        let slot = {
            let mut l = self.lists.lock().unwrap();
            let Some(slot) = topology::SANDBOX_SLOTS
                .clone()
                .find(|s| !l.sandboxes.contains_key(s))
            else {
                bail!(
                    "every address for sandboxes with internet is taken ({} at once)",
                    topology::SANDBOX_SLOTS.count()
                );
            };
            l.sandboxes
                .insert(slot, (format!("{service}/{short}"), rules.to_vec()));
            slot
        };
        let made = (|| -> Result<(File, PathBuf)> {
            let user = File::open(format!("/proc/{}/ns/user", self.holder.pid()))
                .context("opening the cage's user namespace")?;
            Ok((user, crate::tree::fresh_temp_dir("sandbox")?))
        })();
        let netns = made.and_then(|(user, dir)| {
            let address = topology::service_address(self.subnet, slot)?;
            match self.holder.add_service(slot, address, true) {
                Ok(ns) => Ok((user, dir, ns)),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    Err(e)
                }
            }
        });
        let (user, dir, (holder_name, netns)) = match netns {
            Ok(v) => v,
            Err(e) => {
                self.lists.lock().unwrap().sandboxes.remove(&slot);
                return Err(e);
            }
        };
        // From here on, dropping `net` undoes all of it.
        let net = SandboxNet {
            control: self.clone(),
            slot,
            holder_name,
            netns,
            user,
            hosts: dir.join("hosts"),
            resolv: dir.join("resolv.conf"),
        };
        std::fs::write(&net.hosts, cage_net::hosts::render(short, &[]))?;
        std::fs::write(
            &net.resolv,
            cage_spec::resolver::only(topology::router_address(self.subnet)),
        )?;
        self.push_sources()?;
        self.push_policy()?;
        Ok(net)
    }
}

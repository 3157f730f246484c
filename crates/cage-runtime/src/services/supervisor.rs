//! `cagerun up`: the cage's supervisor. Async (tokio) for what is many and slow — published
//! ports, health probes, the control socket, restart timers — and never in a namespace
//! itself: the holder owns the user and network namespaces, a monitor per container runs
//! libcontainer. Everything it starts is recorded (pid + start time) in the runtime
//! directory, so `down` can clean up after a supervisor that was killed.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cage_net::topology;
use cage_sandbox::plan::IdMap;
use cage_spec::cage::{Cage, HealthProbe, Service};
use cage_spec::egress::Internet;
use cage_spec::lifecycle::{self, Health, LifecycleError, Next, RunEnd, ServiceState};
use cage_spec::service::{wire_service, BrokerWiring, HostRoot, Wiring};
use tokio::sync::{mpsc, Notify};

use super::cgroup::{self, CageCgroup};
use super::holder_client::{self, Holder};
use super::state::{unix_now, CagePaths, Proc, Record};
use super::{control, forward, health, Status};
use crate::ipc;
use crate::proto::{InternetStatus, MonitorCommand, MonitorEvent};

pub use cage_spec::lifecycle::STOP_GRACE_MS;
/// What a monitor is told to stop its container.
const STOP: MonitorCommand = MonitorCommand::Stop {
    grace_ms: STOP_GRACE_MS,
};

pub struct Supervisor {
    pub paths: CagePaths,
    pub status: Mutex<BTreeMap<String, Status>>,
    pub stopping: AtomicBool,
    pub stop: Notify,
    record: Mutex<Record>,
    services: BTreeMap<String, Arc<Svc>>,
    order: Vec<String>,
    holder: Arc<Holder>,
    cgroup: CageCgroup,
    /// The host ids of the cage's root, when they are not the caller's (as root).
    owner: Option<(u32, u32)>,
    brokers: Mutex<Vec<Arc<super::broker::Broker>>>,
    subnet: u8,
    /// Internet mode's uplink, once it was first needed (whether internet is on is `egress`'s).
    uplink: Mutex<Option<super::uplink::Uplink>>,
    /// Egress by name: the live lists and the proxy that enforces them (when any list exists).
    egress: Arc<super::egress::EgressControl>,
    /// Starts, exits, restarts and health changes, for `events` subscribers (bounded; see
    /// [`control`]).
    events: tokio::sync::broadcast::Sender<control::Event>,
}

struct Svc {
    service: Service,
    slot: usize,
    bundle: PathBuf,
    netns_fd: Arc<AtomicI32>,
    netns: Mutex<Option<Arc<OwnedFd>>>,
    monitor_ctl: Mutex<Option<Arc<OwnedFd>>>,
    restart_now: AtomicBool,
    wake: Notify,
    resources: Mutex<Option<oci_spec::runtime::LinuxResources>>,
}

/// Maps of the cage's user namespace: the service user 1000 is the caller (as root: root's
/// subordinate id base+1000, as sandboxes do), every other id 0..65535 a subordinate id.
struct CageMaps {
    uid: Vec<IdMap>,
    gid: Vec<IdMap>,
    /// The host ids of the cage's root.
    root: (u32, u32),
}

fn cage_maps() -> Result<CageMaps> {
    let uid = nix::unistd::geteuid().as_raw();
    let gid = nix::unistd::getegid().as_raw();
    let conv = |m: Vec<(u32, u32, u32)>| {
        m.into_iter()
            .map(|(inside, outside, count)| IdMap {
                inside,
                outside,
                count,
            })
            .collect::<Vec<_>>()
    };
    let (umap, gmap) = if uid == 0 {
        // As root the whole cage lies in root's range, straight (inside N is base+N; the
        // service user 1000 is base+1000): no real host id, as its sandboxes.
        let sub = crate::ids::root_range()?;
        (
            conv(cage_spec::root_id_map(sub.uid_base)),
            conv(cage_spec::root_id_map(sub.gid_base)),
        )
    } else {
        let sub = crate::ids::subordinate().ok_or_else(|| crate::Error::NoSubordinateIds {
            user: crate::host::user_name(uid),
        })?;
        let map = |inside: u32, caller: u32, base: u32, count: u32, what: &str| {
            cage_spec::keep_id_map(inside, caller, base, count)
                .map(conv)
                .with_context(|| format!("the subordinate {what} range is smaller than 65536"))
        };
        let user = cage_spec::sandbox::DEFAULT_USER;
        (
            map(user.uid, uid, sub.uid_base, sub.uid_count, "uid")?,
            map(user.gid, gid, sub.gid_base, sub.gid_count, "gid")?,
        )
    };
    let root_of = |maps: &[IdMap]| {
        maps.iter()
            .find(|m| m.inside == 0)
            .map(|m| m.outside)
            .unwrap_or(0)
    };
    let root = (root_of(&umap), root_of(&gmap));
    Ok(CageMaps {
        uid: umap,
        gid: gmap,
        root,
    })
}

/// The init this service runs behind (cage-spec decides; this binary's being static is the
/// host fact it needs).
fn init_for(service: &Service) -> Result<Option<(PathBuf, String, Vec<String>)>> {
    let exe = crate::host::self_exe()?;
    let is_static = crate::init::self_is_static(&exe);
    Ok(cage_spec::service::init_for(&service.root, exe, is_static))
}

/// lchown every entry of a tree (a materialized host root: small, made by us).
fn give_tree(path: &Path, owner: (u32, u32)) -> Result<()> {
    nix::unistd::fchownat(
        None,
        path,
        Some(nix::unistd::Uid::from_raw(owner.0)),
        Some(nix::unistd::Gid::from_raw(owner.1)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    if std::fs::symlink_metadata(path)?.is_dir() {
        for entry in std::fs::read_dir(path)? {
            give_tree(&entry?.path(), owner)?;
        }
    }
    Ok(())
}

/// Make the host-binds root the sandbox engine would have assembled in a tmpfs.
fn materialize_host_root(dir: &Path, hr: &HostRoot) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let at = |p: &str| dir.join(p.trim_start_matches('/'));
    for (link, target) in &hr.symlinks {
        if let Some(parent) = at(link).parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::os::unix::fs::symlink(target, at(link))?;
    }
    for (dst, src) in &hr.mountpoints {
        let p = at(dst);
        if p.symlink_metadata().is_ok() {
            continue;
        }
        if src.as_ref().is_some_and(|s| s.is_file()) {
            std::fs::create_dir_all(p.parent().unwrap_or(dir))?;
            std::fs::write(&p, b"")?;
        } else {
            std::fs::create_dir_all(&p)?;
        }
    }
    for (file, text) in &hr.files {
        let p = at(file);
        std::fs::create_dir_all(p.parent().unwrap_or(dir))?;
        std::fs::write(&p, text)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

/// Everything `up` checks and renders before it starts anything.
pub struct Prepared {
    pub cage: Cage,
    pub specs: BTreeMap<String, oci_spec::runtime::Spec>,
    /// (service, the bound host listener, the service's port)
    pub listeners: Vec<(String, std::net::TcpListener, u16)>,
    /// The sandbox brokers' policies, one per service with sandboxes.
    pub brokers: Vec<super::broker::Setup>,
    /// Internet mode on from the start (`up --internet`).
    pub internet: bool,
}

pub fn prepare(
    paths: &CagePaths,
    cage: Cage,
    only: &[String],
    store: &crate::image::StoreRoot,
) -> Result<Prepared> {
    // The services asked for and what they depend on, in start order, without the one-shot
    // jobs (cage-spec decides; see `select_services`).
    let mut cage = cage;
    cage.services = lifecycle::select_services(&cage, only).map_err(|e| match e {
        LifecycleError::UnknownService { name, services } => anyhow::anyhow!(
            "no service {name:?} in {} (services: {})",
            paths.config.display(),
            services.join(", ")
        ),
        e => e.into(),
    })?;
    let needs_store = cage
        .services
        .iter()
        .any(|s| matches!(s.root, cage_spec::cage::ServiceRoot::Image(_)));
    let store = if needs_store {
        Some(store.open()?)
    } else {
        None
    };
    let rootfs_dir = paths.rootfs();
    let mut specs = BTreeMap::new();
    let mut requests = BTreeMap::new();
    for s in &cage.services {
        let request = crate::bundle::service_request(
            &paths.config,
            &rootfs_dir,
            store.as_ref(),
            s,
            &[],
            None,
        )
        .with_context(|| format!("service {}", s.name))?;
        let spec = cage_spec::render_sandbox(&request, crate::host::host_ids())
            .with_context(|| format!("service {}", s.name))?;
        specs.insert(s.name.clone(), spec);
        requests.insert(s.name.clone(), request);
    }
    let mut brokers = Vec::new();
    let cage_dir = crate::config::cage_dir(&paths.config);
    for s in &cage.services {
        if let Some(b) = super::broker::setup(&cage_dir, s, &requests[&s.name], &specs[&s.name])? {
            let shim = crate::host::shim_exe()?;
            if !matches!(s.root, cage_spec::cage::ServiceRoot::Host)
                && !crate::init::self_is_static(&shim)
            {
                bail!("service {}: its docker shim is the cagerun binary {}, which must be static to run in an image (scripts/install builds one)", s.name, shim.display());
            }
            brokers.push(b);
        }
    }
    // Ports last: a port in use is reported before anything starts, and nothing is left.
    let mut listeners = Vec::new();
    for s in &cage.services {
        for p in &s.ports {
            let addr = std::net::SocketAddr::new(p.host_addr, p.host_port);
            let l = std::net::TcpListener::bind(addr).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AddrInUse {
                    anyhow::Error::new(crate::Error::PortInUse {
                        service: s.name.clone(),
                        addr,
                        config: paths.config.clone(),
                    })
                } else {
                    anyhow::anyhow!("service {}: cannot listen on {addr}: {e}", s.name)
                }
            })?;
            l.set_nonblocking(true)?;
            listeners.push((s.name.clone(), l, p.container_port));
        }
    }
    Ok(Prepared {
        cage,
        specs,
        listeners,
        brokers,
        internet: false,
    })
}

/// The cage's user namespace (the holder), its cgroup and its runtime directories, each
/// written to `record` as it is made (so a failure leaves what to clean up).
async fn start_cage(
    paths: &CagePaths,
    record: &mut Record,
    subnet: u8,
    any_internet: bool,
) -> Result<(CageCgroup, Arc<Holder>, Option<(u32, u32)>)> {
    let CageMaps {
        uid: umap,
        gid: gmap,
        root: owner,
    } = cage_maps()?;
    let is_root = nix::unistd::geteuid().is_root();
    let cg = cgroup::prepare(&paths.id, is_root.then_some(owner))?;
    record.cgroups = cg.dirs.clone();
    record.save(paths)?;
    std::fs::create_dir_all(paths.containers())?;
    if is_root {
        // The monitors act as the cage's root, a subordinate id: let it reach its state.
        for d in [paths.runtime.clone(), paths.containers()] {
            nix::unistd::chown(&d, Some(owner.0.into()), Some(owner.1.into()))?;
        }
    }
    let cage_id = paths.id.clone();
    let holder = tokio::task::spawn_blocking(move || {
        holder_client::spawn(&cage_id, subnet, any_internet, &umap, &gmap)
    })
    .await??;
    record.holder = Proc::of(holder.pid());
    record.save(paths)?;
    Ok((cg, holder, is_root.then_some(owner)))
}

/// Each service's bookkeeping and its first status (`created`), with its hosts file.
#[allow(clippy::type_complexity)]
fn new_services(
    cage: &Cage,
    paths: &CagePaths,
    subnet: u8,
) -> Result<(BTreeMap<String, Arc<Svc>>, BTreeMap<String, Status>)> {
    let mut services = BTreeMap::new();
    let mut status = BTreeMap::new();
    let mut hosts = Vec::new();
    let all: Vec<&Service> = cage.services.iter().collect();
    for (slot, s) in all.iter().enumerate() {
        hosts.push((s.name.clone(), topology::service_address(subnet, slot)?));
    }
    for (slot, s) in all.iter().enumerate() {
        let dir = paths.service_dir(&s.name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("hosts"), cage_net::hosts::render(&s.name, &hosts))?;
        services.insert(
            s.name.clone(),
            Arc::new(Svc {
                service: (*s).clone(),
                slot,
                bundle: dir.join("bundle"),
                netns_fd: Arc::new(AtomicI32::new(-1)),
                netns: Mutex::new(None),
                monitor_ctl: Mutex::new(None),
                restart_now: AtomicBool::new(false),
                wake: Notify::new(),
                resources: Mutex::new(None),
            }),
        );
        status.insert(
            s.name.clone(),
            Status {
                service: s.name.clone(),
                state: ServiceState::Created,
                address: hosts[slot].1.to_string(),
                ports: s
                    .ports
                    .iter()
                    .map(|p| format!("{}:{}->{}", p.host_addr, p.host_port, p.container_port))
                    .collect(),
                health: Health::initial(s.healthcheck.is_some()),
                ..Default::default()
            },
        );
    }
    Ok((services, status))
}

/// Networks and bundles for every service (and the brokers of those with sandboxes), before
/// the first one starts.
async fn wire_services(
    sup: &Arc<Supervisor>,
    brokers: Vec<super::broker::Setup>,
    specs: &BTreeMap<String, oci_spec::runtime::Spec>,
) -> Result<()> {
    // One resolver file for every service with internet (it reads the host's files and
    // addresses once).
    let resolv = sup
        .order
        .iter()
        .any(|n| sup.services[n].service.internet.is_any())
        .then(super::uplink::resolv_conf);
    // A list service's resolver is cagerun's, on the router.
    let egress_resolv = cage_spec::resolver::only(topology::router_address(sup.subnet));
    for mut b in brokers {
        b.cgroup_parent = Some(cgroup::prepare_sandboxes(
            &sup.cgroup,
            &b.service,
            b.memory_total,
            b.pids_total,
        )?);
        let places = super::broker::supervisor_places(&sup.paths.runtime, &b.service)?;
        let broker = super::broker::Broker::start(
            b,
            places,
            crate::host::self_exe()?,
            Some(sup.egress.clone()),
        )?;
        sup.brokers.lock().unwrap().push(broker);
    }
    for name in &sup.order {
        let svc = &sup.services[name];
        let addr = topology::service_address(sup.subnet, svc.slot)?;
        let h = sup.holder.clone();
        let slot = svc.slot;
        let internet = svc.service.internet.any_way_out();
        let (fd, ns) =
            tokio::task::spawn_blocking(move || h.add_service(slot, addr, internet)).await??;
        svc.netns_fd.store(fd, Ordering::Relaxed);
        *svc.netns.lock().unwrap() = Some(Arc::new(ns));
        let dir = sup.paths.service_dir(name);
        let (mut spec, host_root) = wire_service(
            specs[name].clone(),
            &Wiring {
                netns: PathBuf::from(format!("/proc/self/fd/{}", crate::proto::fds::NETNS)),
                cgroups_path: sup.cgroup.relative.join(name),
                hosts_file: dir.join("hosts"),
                resolv_file: match (&resolv, &svc.service.internet) {
                    (Some(text), Internet::Any) => {
                        let f = dir.join("resolv.conf");
                        std::fs::write(&f, text)?;
                        Some(f)
                    }
                    (_, Internet::Allow(_)) => {
                        let f = dir.join("resolv.conf");
                        std::fs::write(&f, &egress_resolv)?;
                        Some(f)
                    }
                    _ => None,
                },
                host_root_dir: dir.join("root"),
                init: init_for(&svc.service)?,
                broker: svc.service.sandboxes.as_ref().map(|_| BrokerWiring {
                    dir: super::broker::service_dir(&sup.paths.runtime, name),
                    inside: crate::shim::BROKER_DIR.to_string(),
                    shim: crate::host::shim_exe().unwrap_or_default(),
                }),
            },
        )?;
        if let Some(hr) = host_root {
            materialize_host_root(&dir.join("root"), &hr)
                .with_context(|| format!("service {name}: building its root"))?;
            if let Some(owner) = sup.owner {
                // As root, the root the service sees belongs to its own root (not to an
                // unmapped host root showing as nobody: programs that check the
                // ownership of their paths' ancestry, like OpenClaw's temp dirs, refuse
                // that).
                give_tree(&dir.join("root"), owner)
                    .with_context(|| format!("service {name}: owning its root"))?;
            }
        }
        if let Some(mut linux) = spec.linux().clone() {
            *svc.resources.lock().unwrap() = linux.resources().clone();
            linux.set_resources(None);
            spec.set_linux(Some(linux));
        }
        crate::bundle::write_config(&svc.bundle, &spec)?;
    }
    Ok(())
}

pub async fn run(paths: CagePaths, prepared: Prepared, ready: Option<OwnedFd>) -> Result<()> {
    let Prepared {
        cage,
        specs,
        listeners,
        brokers,
        internet: internet_at_start,
    } = prepared;
    paths.create_runtime()?;
    let mut record = Record {
        supervisor: Proc::of(std::process::id() as i32).context("reading our own start time")?,
        config: paths.config.clone(),
        directory: paths.cage_dir.clone(),
        started: unix_now(),
        ..Default::default()
    };
    let subnet = topology::pick_subnet(paths.seed, &paths.taken_subnets())
        .context("no free cage subnet (254 cages running?)")?;
    record.subnet = subnet;
    record.save(&paths)?;

    let any_internet = cage.services.iter().any(|s| s.internet.is_any());
    let upstream_dns = if cage.dns.is_empty() {
        cage_net::egress::dns::host_resolvers(
            &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        )
    } else {
        cage.dns.clone()
    };
    let (cg, holder, owner) = match start_cage(&paths, &mut record, subnet, any_internet).await {
        Ok(v) => v,
        Err(e) => {
            cleanup_runtime(&paths, &record);
            return Err(e);
        }
    };

    let (services, status) = new_services(&cage, &paths, subnet)?;
    let sup = Arc::new(Supervisor {
        paths,
        status: Mutex::new(status),
        stopping: AtomicBool::new(false),
        stop: Notify::new(),
        record: Mutex::new(record),
        order: cage.services.iter().map(|s| s.name.clone()).collect(),
        services,
        holder: holder.clone(),
        cgroup: cg,
        owner,
        brokers: Mutex::new(Vec::new()),
        subnet,
        uplink: Mutex::new(None),
        egress: Arc::new(super::egress::EgressControl::new(
            holder.clone(),
            subnet,
            cage.services
                .iter()
                .enumerate()
                .filter_map(|(slot, s)| {
                    Some((
                        s.name.clone(),
                        topology::service_address(subnet, slot).ok()?,
                        s.internet.rules()?.to_vec(),
                    ))
                })
                .collect(),
            cage.services
                .iter()
                .filter_map(|s| {
                    let sb = s.sandboxes.as_ref()?;
                    (!sb.internet.is_empty()).then(|| (s.name.clone(), sb.internet.clone()))
                })
                .collect(),
        )),
        events: tokio::sync::broadcast::channel(control::EVENT_BUFFER).0,
    });

    // Networks and bundles for every service before the first one starts.
    if let Err(e) = wire_services(&sup, brokers, &specs).await {
        sup.teardown().await;
        return Err(e);
    }
    if sup.egress.wanted() {
        if let Err(e) = sup.start_egress(upstream_dns).await {
            sup.teardown().await;
            return Err(e.context("starting the egress proxy (internet = [...] lists)"));
        }
    }

    if internet_at_start {
        if let Err(e) = sup.set_internet(true).await {
            sup.teardown().await;
            return Err(e);
        }
    }
    let control = control::serve(&sup.paths.control_socket(), sup.clone())?;
    let connections = forward::connection_limit();
    for (name, l, port) in listeners {
        let l = tokio::net::TcpListener::from_std(l)?;
        let ns = sup.services[&name].netns_fd.clone();
        tokio::spawn(forward::serve(
            l,
            sup.holder.clone(),
            ns,
            port,
            connections.clone(),
        ));
    }
    let mut tasks = Vec::new();
    let (first_tx, mut first_rx) = mpsc::unbounded_channel::<(String, Settled)>();
    for name in sup.order.clone() {
        tasks.push(tokio::spawn(run_service(
            sup.clone(),
            name,
            first_tx.clone(),
        )));
    }
    drop(first_tx);

    // Ready once every service has started once (or waits for a dependency's health); the
    // first failure to start ends the cage, leaving nothing.
    let mut started = 0;
    let mut failure = None;
    let mut signals = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut interrupts = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    while started < sup.order.len() {
        tokio::select! {
            m = first_rx.recv() => match m {
                Some((name, Settled::Started(pid))) => {
                    started += 1;
                    eprintln!("cagerun: {name} started (pid {pid})");
                }
                Some((name, Settled::Waiting(what))) => {
                    started += 1;
                    eprintln!("cagerun: {name} is {what}");
                }
                Some((name, Settled::Failed(e))) => { failure = Some(format!("service {name} did not start: {e}")); break; }
                None => break,
            },
            _ = signals.recv() => { failure = Some("stopped before every service started".into()); break; }
            _ = interrupts.recv() => { failure = Some("interrupted before every service started".into()); break; }
        }
    }
    if let Some(f) = failure {
        sup.teardown().await;
        for t in tasks {
            let _ = t.await;
        }
        control.abort();
        return Err(anyhow::anyhow!(f));
    }
    if let Some(fd) = ready {
        let _ = nix::unistd::write(&fd, b"ready\n");
    }
    eprintln!(
        "cagerun: cage {} is up (cagerun ps; cagerun down)",
        sup.paths.id
    );
    // Setting the cage up (bundles, networks, images) ran most of this binary once; serving
    // it needs far less of it resident.
    crate::resident::release_startup_pages();
    tokio::select! {
        _ = sup.stop.notified() => {}
        _ = signals.recv() => {}
        _ = interrupts.recv() => {}
    }
    sup.teardown().await;
    for t in tasks {
        let _ = t.await;
    }
    control.abort();
    Ok(())
}

fn cleanup_runtime(paths: &CagePaths, record: &Record) {
    cgroup::remove(&record.cgroups);
    crate::tree::remove(&paths.runtime);
}

impl Supervisor {
    fn set(&self, name: &str, f: impl FnOnce(&mut Status)) {
        if let Some(s) = self.status.lock().unwrap().get_mut(name) {
            f(s);
        }
    }

    /// Tell the subscribers, if any; never waits for them.
    fn publish(&self, service: &str, kind: control::EventKind) {
        let _ = self.events.send(control::Event {
            time_ms: super::state::unix_now_ms(),
            service: service.to_string(),
            kind,
        });
    }

    fn status_of(&self, name: &str) -> Option<Status> {
        self.status.lock().unwrap().get(name).cloned()
    }

    fn state_of(&self, name: &str) -> Option<(ServiceState, Health)> {
        let st = self.status.lock().unwrap();
        st.get(name).map(|s| (s.state.clone(), s.health))
    }

    fn remember(&self, f: impl FnOnce(&mut Record)) {
        let mut r = self.record.lock().unwrap();
        f(&mut r);
        let _ = r.save(&self.paths);
    }

    pub fn restart(&self, name: &str) -> Result<()> {
        let svc = self
            .services
            .get(name)
            .with_context(|| format!("no service {name:?} in this cage"))?;
        svc.restart_now.store(true, Ordering::SeqCst);
        let ctl = svc.monitor_ctl.lock().unwrap().clone();
        match ctl {
            Some(c) => ipc::send(&*c, &STOP, &[])?,
            None => svc.wake.notify_one(),
        }
        Ok(())
    }

    /// Stop every service (dependants first), then the network, the cgroups, the state.
    /// Every service's status, in the cage's start order.
    pub fn statuses(&self) -> Vec<super::Status> {
        let st = self.status.lock().unwrap();
        self.order
            .iter()
            .filter_map(|n| st.get(n).cloned())
            .collect()
    }

    /// Services with some way out (anything, or a list).
    fn internet_services(&self) -> Vec<(String, std::net::Ipv4Addr)> {
        self.services_where(|i| i.any_way_out())
    }

    fn services_where(&self, f: impl Fn(&Internet) -> bool) -> Vec<(String, std::net::Ipv4Addr)> {
        self.order
            .iter()
            .filter(|n| f(&self.services[*n].service.internet))
            .filter_map(|n| {
                topology::service_address(self.subnet, self.services[n].slot)
                    .ok()
                    .map(|a| (n.clone(), a))
            })
            .collect()
    }

    /// Internet mode on or off, live. On starts the uplink the first time; off empties the
    /// router's set, which resets live connections (the uplink stays until `down`).
    pub async fn set_internet(self: &Arc<Self>, on: bool) -> Result<()> {
        let services = self.internet_services();
        let has_sandbox_lists = self.egress.wanted();
        if on && services.is_empty() && !has_sandbox_lists {
            bail!("no service of this cage has `internet = true` or an `internet = [...]` list (cage.toml): internet mode would change nothing");
        }
        // The NAT uplink is only for `internet = true`; lists go through the egress proxy.
        let nat = self.services_where(|i| i.is_any());
        if on && !nat.is_empty() && self.uplink.lock().unwrap().is_none() {
            let sup = self.clone();
            let uplink = tokio::task::spawn_blocking(move || {
                if nix::unistd::geteuid().is_root() {
                    super::uplink::start_veth(&sup.holder, sup.subnet, &sup.paths.id)
                } else {
                    super::uplink::start_slirp(sup.holder.pid())
                }
            })
            .await??;
            self.remember(|r| {
                r.uplink = uplink.pid();
                if let super::uplink::Uplink::Veth { host_veth, table } = &uplink {
                    r.host_uplink = Some((host_veth.clone(), table.clone()));
                }
            });
            *self.uplink.lock().unwrap() = Some(uplink);
        }
        let addrs: Vec<std::net::Ipv4Addr> = if on {
            nat.iter().map(|(_, a)| *a).collect()
        } else {
            Vec::new()
        };
        if !nat.is_empty() {
            let h = self.holder.clone();
            tokio::task::spawn_blocking(move || h.set_internet(&addrs)).await??;
        }
        let egress = self.egress.clone();
        tokio::task::spawn_blocking(move || egress.set_on(on)).await??;
        tracing::info!("internet {}", if on { "on" } else { "off" });
        Ok(())
    }

    pub fn internet_status(&self) -> InternetStatus {
        let uplink = self.uplink.lock().unwrap();
        InternetStatus {
            on: self.egress.is_on(),
            services: self
                .internet_services()
                .into_iter()
                .map(|(n, _)| n)
                .collect(),
            uplink: uplink
                .as_ref()
                .map(|u| u.kind().to_string())
                .unwrap_or_default(),
            gateway: uplink
                .as_ref()
                .map(|u| u.gateway(self.subnet).to_string())
                .unwrap_or_default(),
            lists: self.egress.lists(),
        }
    }

    /// The egress proxy on the router namespace's sockets, and the router's set of sources.
    async fn start_egress(
        self: &Arc<Self>,
        upstream_dns: Vec<std::net::SocketAddrV4>,
    ) -> Result<()> {
        let egress = self.egress.clone();
        let log = crate::egress::log_path(&self.paths);
        let pid = tokio::task::spawn_blocking(move || egress.start(&upstream_dns, &log)).await??;
        self.remember(|r| r.egress = Proc::of(pid));
        Ok(())
    }

    /// `cagerun internet allow|deny SERVICE ENTRY`: edit a list service's live list.
    pub fn edit_egress(&self, service: &str, entry: &str, allow: bool) -> Result<()> {
        let Some(svc) = self.services.get(service) else {
            bail!("no service {service:?} in this cage");
        };
        match &svc.service.internet {
            Internet::Allow(_) => {}
            Internet::Any => bail!("service {service} has `internet = true`: it may already reach anything when internet is on (a list replaces `true` in cage.toml)"),
            Internet::None => bail!("service {service} has no `internet = [...]` list in cage.toml: without one it has no resolver or route to the proxy (add `internet = []` and restart the cage)"),
        }
        let rule: cage_spec::egress::Rule = entry.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
        self.egress.edit(service, rule, allow)?;
        tracing::info!(
            "egress: {} {entry} for {service}",
            if allow { "allow" } else { "deny" }
        );
        Ok(())
    }

    pub fn cgroup_path(&self) -> String {
        self.cgroup.relative.display().to_string()
    }

    pub async fn teardown(&self) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        // Dependants before what they depend on; services on one level stop together
        // (cage-spec decides the levels; see `stop_levels`).
        let levels = lifecycle::stop_levels(self.order.iter().map(|n| &self.services[n].service));
        for names in &levels {
            for name in names {
                let svc = &self.services[name];
                svc.wake.notify_one();
                let ctl = svc.monitor_ctl.lock().unwrap().clone();
                if let Some(c) = ctl {
                    let _ = ipc::send(&*c, &STOP, &[]);
                }
            }
            let deadline = Instant::now() + lifecycle::STOP_WAIT;
            while names
                .iter()
                .any(|n| self.services[n].monitor_ctl.lock().unwrap().is_some())
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        for b in self.brokers.lock().unwrap().iter() {
            b.shutdown();
        }
        let uplink = self.uplink.lock().unwrap().take();
        if let Some(u) = uplink {
            let _ = tokio::task::spawn_blocking(move || u.stop()).await;
        }
        let egress = self.egress.clone();
        let _ = tokio::task::spawn_blocking(move || egress.stop()).await;
        let rec = self.record.lock().unwrap().clone();
        for p in rec.containers.iter().chain(rec.monitors.iter()) {
            p.kill();
        }
        if let Some(h) = &rec.holder {
            h.kill();
            // Reap it: our child.
            let pid = nix::unistd::Pid::from_raw(h.pid);
            let _ = tokio::task::spawn_blocking(move || nix::sys::wait::waitpid(pid, None)).await;
        }
        cgroup::remove(&self.cgroup.dirs);
        crate::tree::remove(&self.paths.runtime);
    }
}

/// What a service reports the first time it settles, for `up` to know when the cage is up.
pub enum Settled {
    Started(i32),
    /// Waiting for a dependency to become healthy (which may take long, or never happen).
    Waiting(String),
    Failed(String),
}

type FirstTx = mpsc::UnboundedSender<(String, Settled)>;

async fn wait_for_dependencies(sup: &Supervisor, svc: &Svc, first: &mut Option<FirstTx>) {
    for dep in &svc.service.depends_on {
        let mut said = false;
        loop {
            if sup.stopping.load(Ordering::SeqCst) {
                return;
            }
            let status = sup.state_of(&dep.service);
            if lifecycle::dependency_met(dep, status.as_ref().map(|(s, h)| (s, *h))) {
                break;
            }
            if !said {
                let waiting = ServiceState::waiting_for(dep);
                let what = waiting.to_string();
                sup.set(&svc.service.name, |s| s.state = waiting);
                if dep.condition().counts_as_settled() {
                    if let Some(tx) = first.take() {
                        let _ = tx.send((svc.service.name.clone(), Settled::Waiting(what)));
                    }
                }
                said = true;
            }
            tokio::time::sleep(lifecycle::DEPENDENCY_POLL).await;
        }
    }
}

/// A service its policy does not restart stays down until `cagerun restart` (true) or
/// `down` (false).
async fn wait_for_restart_request(sup: &Supervisor, svc: &Svc) -> bool {
    loop {
        if svc.restart_now.swap(false, Ordering::SeqCst) {
            return true;
        }
        if sup.stopping.load(Ordering::SeqCst) {
            return false;
        }
        svc.wake.notified().await;
    }
}

async fn run_service(sup: Arc<Supervisor>, name: String, first: FirstTx) {
    let svc = sup.services[&name].clone();
    let mut first = Some(first);
    let mut backoff = lifecycle::Backoff::new();
    loop {
        wait_for_dependencies(&sup, &svc, &mut first).await;
        if sup.stopping.load(Ordering::SeqCst) {
            break;
        }
        sup.set(&name, |s| s.state = ServiceState::Starting);
        let end = match run_once(&sup, &svc, &mut first).await {
            Ok((code, ran)) => {
                let mut health = None;
                sup.set(&name, |s| {
                    s.state = ServiceState::Exited;
                    s.pid = None;
                    s.last_exit = Some(code);
                    let previous = s.health;
                    s.health = s.health.after_exit();
                    health = (s.health != previous).then_some((s.health, previous));
                });
                sup.publish(&name, control::EventKind::Exit { code });
                if let Some((health, previous)) = health {
                    sup.publish(&name, control::EventKind::Health { health, previous });
                }
                RunEnd::Exited { code, ran }
            }
            Err(e) => {
                sup.set(&name, |s| {
                    s.state = ServiceState::Failed;
                    s.error = Some(format!("{e:#}"));
                });
                sup.publish(
                    &name,
                    control::EventKind::Failed {
                        error: format!("{e:#}"),
                    },
                );
                if let Some(tx) = first.take() {
                    let _ = tx.send((name.clone(), Settled::Failed(format!("{e:#}"))));
                    break;
                }
                RunEnd::StartFailed
            }
        };
        // cage-spec decides what follows (a failed first start was reported above).
        let next = lifecycle::after_run(
            &svc.service.restart,
            end,
            false,
            sup.stopping.load(Ordering::SeqCst),
            || svc.restart_now.swap(false, Ordering::SeqCst),
        );
        match next {
            Next::Stop | Next::GiveUp => break,
            Next::AwaitRequest => {
                if wait_for_restart_request(&sup, &svc).await {
                    backoff.reset();
                    let restarts = sup.status_of(&name).map_or(0, |s| s.restarts);
                    sup.publish(&name, control::EventKind::Restart { restarts });
                    continue;
                }
                break;
            }
            Next::Restart => {}
        }
        let delay = backoff.next(end.ran());
        sup.set(&name, |s| s.state = ServiceState::restarting(delay));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = svc.wake.notified() => {}
        }
        if sup.stopping.load(Ordering::SeqCst) {
            break;
        }
        let mut restarts = 0;
        sup.set(&name, |s| {
            s.restarts += 1;
            restarts = s.restarts;
        });
        sup.publish(&name, control::EventKind::Restart { restarts });
    }
    if sup.stopping.load(Ordering::SeqCst) {
        sup.set(&name, |s| s.state = ServiceState::Stopped);
    }
}

/// Start the container once and wait for it to end: (exit code, how long it ran).
async fn run_once(
    sup: &Arc<Supervisor>,
    svc: &Arc<Svc>,
    first: &mut Option<FirstTx>,
) -> Result<(i32, Duration)> {
    let name = &svc.service.name;
    let resources = svc.resources.lock().unwrap().clone();
    cgroup::prepare_service(&sup.cgroup, name, resources.as_ref(), sup.owner)
        .with_context(|| format!("setting up the cgroup of {name}"))?;
    let (ours, theirs) = ipc::pair()?;
    let mut cmd = Command::new(crate::host::self_exe()?);
    cmd.arg("monitor")
        .arg("--id")
        .arg(format!("{}-{}", sup.paths.id, name))
        .arg("--bundle")
        .arg(&svc.bundle)
        .arg("--state-root")
        .arg(sup.paths.containers())
        .arg("--holder")
        .arg(sup.holder.pid().to_string())
        .arg("--log")
        .arg(sup.paths.log(name))
        .stdin(Stdio::null());
    let netns = svc
        .netns
        .lock()
        .unwrap()
        .clone()
        .context("the service has no network namespace")?;
    crate::ipc::pass_fds(&mut cmd, &[theirs.as_raw_fd(), netns.as_raw_fd()]);
    let mut child = cmd.spawn().context("starting the container monitor")?;
    drop(theirs);
    let monitor = Proc::of(child.id() as i32);
    if let Some(m) = &monitor {
        sup.remember(|r| r.monitors.push(m.clone()));
    }
    let ours = Arc::new(ours);
    // The monitor's messages, read on a thread of their own (blocking datagram reads).
    let (tx, mut rx) = mpsc::unbounded_channel::<MonitorEvent>();
    let reader = ours.clone();
    std::thread::spawn(move || {
        while let Ok(Some((m, _))) = ipc::recv::<MonitorEvent>(&*reader) {
            if tx.send(m).is_err() {
                break;
            }
        }
    });
    let begun = Instant::now();
    let mut container: Option<Proc> = None;
    let mut health_task: Option<tokio::task::JoinHandle<()>> = None;
    let mut code = None;
    let mut failure = None;
    while let Some(m) = rx.recv().await {
        if let MonitorEvent::Started { pid } = m {
            container = Proc::of(pid);
            if let Some(c) = &container {
                sup.remember(|r| r.containers.push(c.clone()));
            }
            *svc.monitor_ctl.lock().unwrap() = Some(ours.clone());
            let now = unix_now();
            sup.set(name, |s| {
                s.state = ServiceState::Running;
                s.pid = Some(pid);
                s.started = Some(now);
                s.error = None;
            });
            sup.publish(name, control::EventKind::Start { pid });
            if let Some(tx) = first.take() {
                let _ = tx.send((name.clone(), Settled::Started(pid)));
            }
            if sup.stopping.load(Ordering::SeqCst) {
                let _ = ipc::send(&*ours, &STOP, &[]);
            }
            if let Some(h) = svc.service.healthcheck.clone() {
                health_task = Some(tokio::spawn(watch_health(sup.clone(), svc.clone(), h)));
            }
        } else if let MonitorEvent::Exited { code: c } = m {
            code = Some(c);
        } else if let MonitorEvent::Failed { error } = m {
            failure = Some(error);
        }
    }
    if let Some(h) = health_task {
        h.abort();
    }
    *svc.monitor_ctl.lock().unwrap() = None;
    let status = tokio::task::spawn_blocking(move || child.wait()).await??;
    sup.remember(|r| {
        r.monitors.retain(|p| Some(p) != monitor.as_ref());
        r.containers.retain(|p| Some(p) != container.as_ref());
    });
    if let Some(f) = failure {
        bail!("{f}");
    }
    match code {
        Some(c) => Ok((c, begun.elapsed())),
        None => bail!("the container monitor ended without a report ({status})"),
    }
}

async fn watch_health(sup: Arc<Supervisor>, svc: Arc<Svc>, h: cage_spec::cage::Healthcheck) {
    let begun = Instant::now();
    let mut watch = lifecycle::HealthWatch::new();
    loop {
        let probed = Instant::now();
        let r = probe(&sup, &svc, &h).await;
        tracing::debug!(
            "{}: probe after {:?} took {:?}: {:?}",
            svc.service.name,
            probed - begun,
            probed.elapsed(),
            r.as_ref().map_err(|e| format!("{e:#}"))
        );
        // cage-spec decides what a probe's result does to the health shown, and the pace.
        let mut change = None;
        sup.set(&svc.service.name, |s| {
            let previous = s.health;
            s.health = watch.observe(s.health, r.is_ok(), begun.elapsed(), &h);
            s.health_error = r.as_ref().err().map(|e| format!("{e:#}"));
            if s.health != previous {
                change = Some(control::EventKind::Health {
                    health: s.health,
                    previous,
                });
            }
        });
        if let Some(kind) = change {
            sup.publish(&svc.service.name, kind);
        }
        tokio::time::sleep(watch.next_probe_in(begun.elapsed(), &h)).await;
    }
}

async fn probe(sup: &Supervisor, svc: &Svc, h: &cage_spec::cage::Healthcheck) -> Result<()> {
    match &h.probe {
        HealthProbe::Http { port, path } => {
            let ns = svc.netns_fd.load(Ordering::Relaxed);
            health::http_probe(sup.holder.clone(), ns, *port, path, h.timeout()).await
        }
        HealthProbe::Command(command) => {
            health::command_probe(&sup.paths.config, &svc.service.name, command, h.timeout()).await
        }
    }
}

/// Used by `down` on a cage whose supervisor is gone.
pub fn clean_stale(paths: &CagePaths) -> bool {
    let Some(rec) = Record::load(paths) else {
        if paths.runtime.exists() {
            crate::tree::remove(&paths.runtime);
            return true;
        }
        return false;
    };
    for p in rec.containers.iter().chain(rec.monitors.iter()) {
        p.kill();
    }
    if let Some(h) = &rec.holder {
        h.kill();
    }
    if let Some(u) = &rec.uplink {
        u.kill();
    }
    if let Some(p) = &rec.egress {
        p.kill();
    }
    if let Some((veth, table)) = &rec.host_uplink {
        super::uplink::remove_host_side(veth, table);
    }
    // Killed processes leave their cgroups a moment later.
    let deadline = Instant::now() + Duration::from_secs(5);
    while rec
        .containers
        .iter()
        .chain(rec.monitors.iter())
        .chain(rec.holder.iter())
        .any(|p| p.alive())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(50));
    cgroup::remove(&rec.cgroups);
    crate::tree::remove(&paths.runtime);
    true
}

impl control::Answer for Supervisor {
    fn subscribe(&self) -> Result<tokio::sync::broadcast::Receiver<control::Event>, String> {
        if self.events.receiver_count() >= control::MAX_SUBSCRIBERS {
            return Err(format!(
                "{} event subscribers already: end one (`cagerun events`) first",
                control::MAX_SUBSCRIBERS
            ));
        }
        Ok(self.events.subscribe())
    }

    async fn answer(self: Arc<Self>, request: control::Request) -> control::Reply {
        use control::{refused, Reply, Request};
        let ok = Reply {
            ok: true,
            ..Default::default()
        };
        match request {
            Request::Ps => Reply {
                services: Some(self.statuses()),
                cgroup: Some(self.cgroup_path()),
                ..ok
            },
            Request::Internet { on } => {
                let result = match on {
                    Some(on) => self.set_internet(on).await,
                    None => Ok(()),
                };
                match result {
                    Ok(()) => Reply {
                        internet: Some(self.internet_status()),
                        ..ok
                    },
                    Err(e) => refused(format!("{e:#}")),
                }
            }
            Request::EgressRule {
                service,
                entry,
                allow,
            } => match self.edit_egress(&service, &entry, allow) {
                Ok(()) => Reply {
                    internet: Some(self.internet_status()),
                    ..ok
                },
                Err(e) => refused(format!("{e:#}")),
            },
            Request::Restart { service } => match self.restart(&service) {
                Ok(()) => ok,
                Err(e) => refused(format!("{e:#}")),
            },
            // The control socket streams these itself (see `subscribe`).
            Request::Events => refused("events are a subscription"),
            Request::Down => {
                self.teardown().await;
                self.stop.notify_one();
                ok
            }
        }
    }
}

//! The sandbox broker: answers the docker CLI calls a service's `docker` shim forwards
//! (OpenClaw's sandbox backend), with a policy the cage owns.
//!
//! The service is untrusted. Parsing and judging are cage-spec's (`docker` module): an unknown
//! flag, a bind outside the service's writable mounts, `--privileged`, another network, a
//! capability, a device, an image the cage does not provide are refused in docker's words
//! and start nothing. A `create` only records the judged shape; every `exec` runs a *fresh*
//! sandbox of that shape in the fast engine (`cagerun exec --bundle`), with the shim's own
//! stdin/stdout/stderr, so nothing but the bound workspace outlives a tool command. `rm`
//! kills what still runs and forgets the record.
//!
//! One thread per connection (a tool call): it starts the sandbox, waits for it, and kills it
//! by pid if the shim goes away first. The sandbox process has PDEATHSIG set to that thread's
//! exit, so a supervisor that dies takes its sandboxes with it.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::TrySendError;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cage_spec::docker::{self, BrokerPolicy, Call, DockerError, SandboxShape};
use cage_spec::sandbox::DEFAULT_USER;
use cage_spec::{passwd, HostIds, RootfsSource};

mod pool;

use pool::Slot;

use crate::ipc::IpcError;
use crate::proto::{ShimReply, ShimRequest as Request};
use crate::shim::SOCKET_NAME;

/// Everything `up` resolves for one service's sandboxes before anything starts.
#[derive(Clone, Debug)]
pub struct Setup {
    pub service: String,
    pub policy: BrokerPolicy,
    /// image name → the tree its sandboxes run from
    pub roots: HashMap<String, RootfsSource>,
    /// Sandboxes running at once (`[services.X.sandboxes] max`).
    pub max_running: usize,
    /// Their totals (`memory_total`, `pids_total`): the limits of the cgroup they all run in.
    pub memory_total: u64,
    pub pids_total: i64,
    /// Sandboxes kept parked per started container ([`pool`]).
    pub pool: usize,
    /// That cgroup, once the supervisor made it inside the cage's (the sandbox engine's
    /// parent, `CAGERUN_CGROUP_PARENT`).
    pub cgroup_parent: Option<String>,
    /// What each sandbox may reach (`[services.X.sandboxes] internet`); empty: only its `lo`.
    pub internet: Vec<cage_spec::egress::Rule>,
}

/// The broker's policy for a service: its images (resolved now, so a missing tree is an error
/// before `up` starts anything) and the service's *writable* binds, through which bind
/// sources are mapped (its read-only binds, e.g. config or the host's /usr, are not sandbox
/// material).
pub fn setup(
    cage_dir: &Path,
    service: &cage_spec::cage::Service,
    request: &cage_spec::SandboxRequest,
    spec: &oci_spec::runtime::Spec,
) -> Result<Option<Setup>> {
    let Some(sb) = &service.sandboxes else {
        return Ok(None);
    };
    let mut roots = HashMap::new();
    let mut images = Vec::new();
    for (name, tree) in &sb.images {
        let root = if tree == "host" {
            crate::host::rootfs_source("host")?
        } else {
            let dir = cage_dir.join(tree);
            let dir = std::fs::canonicalize(&dir).with_context(|| {
                format!(
                    "service {}: sandbox image {name}: {} is missing (build it: `cagerun build`, or pull it)",
                    service.name,
                    dir.display()
                )
            })?;
            if !dir.join("bin/sh").exists() && !dir.join("usr/bin/sh").exists() {
                bail!(
                    "service {}: sandbox image {name}: {} has no /bin/sh (OpenClaw runs every tool command with sh)",
                    service.name,
                    dir.display()
                );
            }
            RootfsSource::Dir(dir)
        };
        images.push((name.clone(), tree.clone()));
        roots.insert(name.clone(), root);
    }
    // Every mount of the service: its writable binds (as the model made them) are what
    // sandbox binds map through; the rest shadow whatever lies below them and are refused
    // (cage-spec decides; see `gateway_mounts` and `map_source`).
    let gateway_mounts = cage_spec::docker::gateway_mounts(request, spec);
    if let Some(root) = spec.root().as_ref().map(|r| r.path()) {
        for marker in [".dockerenv", "run/.containerenv"] {
            if root.join(marker).exists() {
                bail!("service {}: its rootfs has /{marker}: OpenClaw would try to inspect itself through docker; remove the file from the image", service.name);
            }
        }
    }
    Ok(Some(Setup {
        service: service.name.clone(),
        policy: BrokerPolicy {
            images,
            gateway_mounts,
            max_memory: sb.memory,
            max_pids: sb.pids,
        },
        max_running: sb.max as usize,
        memory_total: sb.memory_total,
        pids_total: sb.pids_total,
        pool: sb.pool as usize,
        cgroup_parent: None,
        roots,
        internet: sb.internet.clone(),
    }))
}

struct Container {
    id: String,
    shape: SandboxShape,
    /// The create's environment (its env files as the shim read them, then its `-e`).
    env: Vec<(String, String)>,
    running: bool,
    created: String,
    /// Pids of the `cagerun exec` processes running for it (started by this broker).
    running_execs: Vec<i32>,
    /// Its network, when the service's sandboxes have an `internet = [...]` list.
    net: Option<Arc<super::egress::SandboxNet>>,
}

impl Container {
    /// SIGKILL the `cagerun exec` processes of its running sandboxes (each takes its sandbox
    /// with it).
    fn kill_running(&self) {
        for pid in &self.running_execs {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

pub struct Broker {
    setup: Setup,
    /// The cage's egress control, when the sandboxes have a list.
    egress: Option<Arc<super::egress::EgressControl>>,
    exe: PathBuf,
    /// Bundles of running sandboxes (outside anything the service can see).
    runs: PathBuf,
    containers: Mutex<Vec<Container>>,
    next_run: AtomicU64,
    /// Sandboxes running now (the budget's count).
    running: Arc<AtomicUsize>,
    /// Calls being served now (each holds a thread and the shim's descriptors).
    connections: Arc<AtomicUsize>,
    /// The warm pool ([`pool`]): parked sandboxes, and the thread that makes and reaps them.
    pool: pool::Pool,
}

/// Calls served at once; one more is answered "busy" and closed at once. A tool command
/// holds its call for as long as it runs, so this is well above any sandbox budget.
const MAX_CONNECTIONS: usize = 128;
/// A caller that connects and sends nothing is dropped after this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a call thread with nothing to do waits for the next call before it ends.
const CALL_THREAD_IDLE: Duration = Duration::from_secs(30);
/// How long the broker waits to write its answer to a caller's stdout/stderr (a full pipe
/// or a FIFO nobody reads must not hold a thread, let alone the container table).
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// The directory bound into the service at [`crate::shim::BROKER_DIR`]: the socket, and an
/// empty file per name the shim binary is bound onto (`docker`, `podman`).
pub fn service_dir(runtime: &Path, service: &str) -> PathBuf {
    runtime.join(format!("broker-{service}"))
}

/// Where a broker listens and where it writes its sandboxes' bundles.
#[derive(Clone, Debug)]
pub struct Places {
    /// The directory of its socket ([`SOCKET_NAME`]). The service may write in it: the
    /// broker only ever (re)creates its socket there.
    pub socket_dir: PathBuf,
    /// The bundles of running sandboxes: a directory the service cannot reach.
    pub runs: PathBuf,
}

/// The places of a broker under `up`'s supervisor: [`service_dir`] (0755, with the empty
/// files the shim is bound onto) and `sandboxes-SERVICE` in the cage's runtime directory.
pub fn supervisor_places(runtime: &Path, service: &str) -> Result<Places> {
    use std::os::unix::fs::PermissionsExt;
    let dir = service_dir(runtime, service);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for name in crate::shim::NAMES {
        std::fs::write(dir.join(name), b"")?;
    }
    // The service's user (a subordinate or mapped id) must be able to reach the socket; the
    // directory is reachable only inside that service and under the 0700 runtime dir.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(Places {
        socket_dir: dir,
        runs: runtime.join(format!("sandboxes-{service}")),
    })
}

impl Broker {
    /// Listen on `places.socket_dir/docker.sock` and serve on a thread of its own.
    pub fn start(
        setup: Setup,
        places: Places,
        exe: PathBuf,
        egress: Option<Arc<super::egress::EgressControl>>,
    ) -> Result<Arc<Broker>> {
        let listener = listen_in(&places.socket_dir)?;
        let runs = places.runs;
        std::fs::create_dir_all(&runs).with_context(|| format!("creating {}", runs.display()))?;
        let egress = egress.filter(|_| !setup.internet.is_empty());
        let broker = Arc::new(Broker {
            setup,
            egress,
            exe,
            runs,
            containers: Mutex::new(Vec::new()),
            next_run: AtomicU64::new(0),
            connections: Arc::new(AtomicUsize::new(0)),
            running: Arc::new(AtomicUsize::new(0)),
            pool: pool::Pool::default(),
        });
        if broker.setup.pool > 0 {
            pool::Pool::start(broker.clone())?;
        }
        let b = broker.clone();
        // Call threads are kept for the next call: creating one in this multi-threaded
        // process cost ~0.2 ms on each call's way (perf, these 2 cores).
        let (handoff, waiting) = std::sync::mpsc::sync_channel::<(UnixStream, Slot)>(0);
        let waiting = Arc::new(Mutex::new(waiting));
        std::thread::Builder::new()
            .name("broker".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    let conn = match conn {
                        Ok(c) => c,
                        Err(e) => {
                            // Out of descriptors (or any other accept failure): back off
                            // instead of spinning on an error that will repeat.
                            tracing::warn!("broker: accepting a call: {e}");
                            std::thread::sleep(Duration::from_millis(100));
                            continue;
                        }
                    };
                    let Some(slot) = Slot::take(&b.connections, MAX_CONNECTIONS) else {
                        let _ = crate::ipc::send(
                            &conn,
                            &ShimReply::Refused(format!("the sandbox broker is busy ({MAX_CONNECTIONS} calls in progress); try again")),
                            &[],
                        );
                        continue;
                    };
                    // A call thread that is waiting for work takes it (the channel has no
                    // room: try_send succeeds only while one waits), else a new one does.
                    let incoming = match handoff.try_send((conn, slot)) {
                        Ok(()) => continue,
                        Err(TrySendError::Full(i) | TrySendError::Disconnected(i)) => i,
                    };
                    let b2 = b.clone();
                    let waiting = waiting.clone();
                    let spawned = std::thread::Builder::new()
                        .name("broker-call".into())
                        .spawn(move || {
                            let mut next = Some(incoming);
                            while let Some((conn, slot)) = next.take() {
                                b2.serve(conn);
                                drop(slot);
                                next = waiting.lock().unwrap().recv_timeout(CALL_THREAD_IDLE).ok();
                            }
                        });
                    if spawned.is_err() {
                        // The closure (and its slot) went with the failed spawn.
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            })?;
        Ok(broker)
    }

    /// Kill every sandbox still running (the cage is going down).
    pub fn shutdown(&self) {
        // Their networks go with them (the last handle of each).
        let gone: Vec<Container> = std::mem::take(&mut *self.containers.lock().unwrap());
        for c in gone {
            c.kill_running();
        }
        // The pool's thread ends its parked sandboxes and reaps what it holds, then exits.
        self.pool.stop();
    }

    /// Sandboxes started and not yet reaped (a call between its budget slot and its
    /// sandbox's end counts).
    pub fn sandboxes_running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    fn serve(&self, conn: std::os::unix::net::UnixStream) {
        let _ = conn.set_read_timeout(Some(REQUEST_TIMEOUT));
        let (req, mut fds) = match crate::ipc::recv::<Request>(&conn) {
            Ok(Some((req, fds))) => (Some(req), fds),
            Err(IpcError::Malformed { .. }) => (None, Vec::new()),
            Ok(None) | Err(_) => return,
        };
        let _ = conn.set_read_timeout(None);
        let mut after = None;
        let code = match (req, fds.len()) {
            (Some(req), 3) => {
                let stderr = fds.pop().unwrap();
                let stdout = fds.pop().unwrap();
                let stdin = fds.pop().unwrap();
                let io = Io {
                    stdin,
                    stdout,
                    stderr,
                };
                match io.check() {
                    Ok(()) => self.call(&req, io, &conn, &mut after),
                    Err(why) => {
                        let _ = crate::ipc::send(&conn, &ShimReply::Refused(why), &[]);
                        return;
                    }
                }
            }
            _ => 125,
        };
        let _ = crate::ipc::send(&conn, &ShimReply::Exit { code }, &[]);
        if let Some(after) = after {
            after.run();
        }
    }

    /// Serve one call; `after`: what is left once it is answered (a parked sandbox's end).
    fn call(
        &self,
        req: &Request,
        io: Io,
        conn: &std::os::unix::net::UnixStream,
        after: &mut Option<pool::AfterCall>,
    ) -> i32 {
        let file_sizes: Vec<usize> = req.files.values().map(String::len).collect();
        if let Err(e) = docker::check_bounds(&req.argv, &file_sizes) {
            return io.fail(&e, 125);
        }
        let call = match docker::parse(&req.argv) {
            Ok(c) => c,
            Err(e) => return io.fail(&e, 125),
        };
        tracing::info!(service = %self.setup.service, "docker {}", summary(&req.argv));
        // Each arm decides under the container table's lock and answers after it is
        // released: a caller's descriptor may block, the table must not.
        let answer: Result<String, (DockerError, i32)> = match call {
            Call::Version => Ok(format!(
                "cagerun sandbox broker {} (docker CLI subset for OpenClaw)\n",
                env!("CARGO_PKG_VERSION")
            )),
            Call::ImageInspect { image } => match self.setup.roots.get(&image) {
                Some(_) => {
                    // A stable id for the name: docker shows a digest; nothing here reads it.
                    let id = cage_image::digest::Digest::of(image.as_bytes());
                    Ok(format!(
                        "{}\n",
                        serde_json::json!([{"Id": id.to_string(), "RepoTags": [image]}])
                    ))
                }
                None => Err((
                    DockerError(format!(
                        "Error response from daemon: No such image: {image}"
                    )),
                    1,
                )),
            },
            Call::Create(c) => self.create(req, &c),
            Call::Start { containers: names } => {
                let mut containers = self.containers.lock().unwrap();
                let mut out = String::new();
                let mut result = Ok(());
                let mut started = Vec::new();
                for n in &names {
                    match find(&mut containers, n) {
                        Some(c) => {
                            c.running = true;
                            started.push(c.id.clone());
                            out.push_str(&format!("{n}\n"));
                        }
                        None => {
                            result = Err((no_such_container(n), 1));
                            break;
                        }
                    }
                }
                drop(containers);
                // Its first call finds a sandbox parked.
                for id in started {
                    self.pool.send(pool::Job::Fill(id));
                }
                io.out(&out);
                result.map(|()| String::new())
            }
            Call::Inspect {
                format, targets, ..
            } => {
                let mut containers = self.containers.lock().unwrap();
                let mut docs = Vec::new();
                let mut missing = None;
                for t in &targets {
                    match find(&mut containers, t) {
                        Some(c) => docs.push(docker::inspect_document(
                            &c.id, &c.shape, c.running, &c.env, &c.created,
                        )),
                        None => {
                            missing = Some(t.clone());
                            break;
                        }
                    }
                }
                drop(containers);
                match (missing, format) {
                    (Some(t), _) => Err((DockerError(format!("Error: No such object: {t}")), 1)),
                    (None, None) => Ok(format!(
                        "{}\n",
                        serde_json::to_string_pretty(&docs).unwrap_or_default()
                    )),
                    (None, Some(f)) => docs
                        .iter()
                        .map(|d| docker::render_template(&f, d).map(|s| format!("{s}\n")))
                        .collect::<Result<String, _>>()
                        .map_err(|e| (e, 1)),
                }
            }
            Call::Remove {
                containers: names, ..
            } => {
                let mut containers = self.containers.lock().unwrap();
                let mut out = String::new();
                let mut result = Ok(());
                // Dropped after the table's lock: a container's network is released then.
                let mut gone = Vec::new();
                for n in &names {
                    let Some(i) = containers
                        .iter()
                        .position(|c| c.id == *n || c.shape.name.as_deref() == Some(n))
                    else {
                        result = Err((no_such_container(n), 1));
                        break;
                    };
                    let c = containers.remove(i);
                    c.kill_running();
                    self.pool.drop_parked(&c.id);
                    gone.push(c);
                    out.push_str(&format!("{n}\n"));
                }
                drop(containers);
                // Its network goes with it (or with an exec still ending).
                drop(gone);
                io.out(&out);
                result.map(|()| String::new())
            }
            Call::Exec(e) => return self.exec(req, &e, io, conn, after),
        };
        match answer {
            Ok(text) => {
                io.out(&text);
                0
            }
            Err((e, code)) => io.fail(&e, code),
        }
    }

    /// `create`: judge it, record it, answer its id. Over the container bound, a name in
    /// use, or a refusal: nothing is recorded.
    fn create(&self, req: &Request, c: &docker::Create) -> Result<String, (DockerError, i32)> {
        let shape = docker::judge_create(c, &self.setup.policy).map_err(|e| (e, 125))?;
        let mut env = Vec::new();
        add_env(&mut env, req, &shape.env_files, &shape.env).map_err(|e| (e, 125))?;
        let mut containers = self.containers.lock().unwrap();
        if containers.len() >= docker::limits::CONTAINERS {
            return Err((
                DockerError(format!(
                    "Error response from daemon: a cagerun cage keeps at most {} sandbox containers: remove some (docker rm -f)",
                    docker::limits::CONTAINERS
                )),
                125,
            ));
        }
        if let Some(n) = &shape.name {
            if containers.iter().any(|c| c.shape.name.as_ref() == Some(n)) {
                return Err((DockerError(format!("Error response from daemon: Conflict. The container name \"/{n}\" is already in use")), 125));
            }
        }
        let id = random_id();
        // Its network (a list sandbox): a namespace on the cage's bridge whose only way out
        // is the egress proxy, known in the audit log as SERVICE/ID.
        let net = match &self.egress {
            Some(egress) => Some(Arc::new(
                egress
                    .attach_sandbox(&self.setup.service, &id, &self.setup.internet)
                    .map_err(|e| {
                        (
                            DockerError(format!("Error response from daemon: {e:#}")),
                            125,
                        )
                    })?,
            )),
            None => None,
        };
        containers.push(Container {
            id: id.clone(),
            shape,
            env,
            running: false,
            created: crate::views::rfc3339_utc(super::state::unix_now() as i64),
            running_execs: Vec::new(),
            net,
        });
        Ok(format!("{id}\n"))
    }

    /// One tool command: a fresh sandbox of the container's shape, to its end.
    fn exec(
        &self,
        req: &Request,
        e: &docker::Exec,
        io: Io,
        conn: &std::os::unix::net::UnixStream,
        after: &mut Option<pool::AfterCall>,
    ) -> i32 {
        let found = {
            let mut containers = self.containers.lock().unwrap();
            match find(&mut containers, &e.container) {
                Some(c) if c.running => {
                    Ok((c.id.clone(), c.shape.clone(), c.env.clone(), c.net.clone()))
                }
                Some(c) => Err(DockerError(format!(
                    "Error response from daemon: container {} is not running",
                    c.id
                ))),
                None => Err(no_such_container(&e.container)),
            }
        };
        let (id, shape, env, net) = match found {
            Ok(f) => f,
            Err(err) => return io.fail(&err, 1),
        };
        // A parked sandbox of the same spec, if the pool has one (never with a terminal,
        // which the engine opens before the sandbox, or a network of the container's own).
        if !e.tty && net.is_none() && self.setup.pool > 0 {
            let mut call_env = env.clone();
            if add_env(&mut call_env, req, &e.env_files, &e.env).is_ok() {
                if let Ok(spec) = self.render(&shape, e, call_env, &id) {
                    if let pool::Served::Ran(code, then) =
                        self.pool
                            .serve(self, &id, spec, e.interactive, io.fds(), conn)
                    {
                        // The pool tops the container up once the used sandbox is reaped:
                        // after the call, not beside it (on a small machine a sandbox being
                        // made would slow the command down).
                        *after = Some(then);
                        return code;
                    }
                }
            }
        }
        // The sandbox budget: a slot is taken before anything starts and given back when
        // the sandbox has ended. Parked sandboxes hold slots too: one gives way to a call.
        let max = self.setup.max_running;
        let slot = self.pool.slot_for_call(&self.running, max);
        let Some(slot) = slot else {
            return io.fail(
                &DockerError(format!(
                    "Error response from daemon: the cage's sandbox budget is spent ({max} sandboxes running, `[services.{}.sandboxes] max`): try again when one has ended",
                    self.setup.service
                )),
                125,
            );
        };
        let code = self.exec_within_budget(req, e, io, conn, (id.clone(), shape, env), net);
        // The slot is given back before the pool is asked to refill, or the refill finds
        // the budget still spent by this very call.
        drop(slot);
        self.pool.send(pool::Job::Fill(id));
        code
    }

    fn exec_within_budget(
        &self,
        req: &Request,
        e: &docker::Exec,
        io: Io,
        conn: &std::os::unix::net::UnixStream,
        (id, shape, mut env): (String, SandboxShape, Vec<(String, String)>),
        net: Option<Arc<super::egress::SandboxNet>>,
    ) -> i32 {
        if let Err(err) = add_env(&mut env, req, &e.env_files, &e.env) {
            return io.fail(&err, 125);
        }
        let mut spec = match self.render(&shape, e, env, &id) {
            Ok(s) => s,
            Err(err) => return io.fail(&err, 126),
        };
        if let Some(net) = &net {
            // Joins the sandbox's namespace (made by the cage) instead of a fresh one.
            if let Err(err) =
                cage_spec::service::share_network(&mut spec, &net.hosts, Some(&net.resolv))
            {
                return io.fail(
                    &DockerError(format!("Error response from daemon: {err}")),
                    126,
                );
            }
        }
        let run = self
            .runs
            .join(self.next_run.fetch_add(1, Ordering::Relaxed).to_string());
        if let Err(err) = crate::bundle::write_config(&run, &spec) {
            return io.fail(
                &DockerError(format!("Error response from daemon: {err:#}")),
                126,
            );
        }
        let result = self.run_sandbox(&run, e.interactive, io, conn, &id, net.as_deref());
        crate::tree::remove(&run);
        result
    }

    fn render(
        &self,
        shape: &SandboxShape,
        e: &docker::Exec,
        env: Vec<(String, String)>,
        id: &str,
    ) -> Result<oci_spec::runtime::Spec, DockerError> {
        let rootfs = self.setup.roots.get(&shape.image).cloned().ok_or_else(|| {
            DockerError(format!(
                "Error response from daemon: No such image: {}",
                shape.image
            ))
        })?;
        let (pw, gr) = crate::host::passwd_files(&rootfs);
        let user = match e.user.as_ref().or(shape.user.as_ref()) {
            Some(u) => passwd::resolve_user(u, &pw, &gr)
                .map_err(|err| DockerError(format!("Error response from daemon: {err}")))?,
            None => DEFAULT_USER,
        };
        let subordinate = crate::host::mapped_ownership(&rootfs);
        let mut req = docker::exec_request(docker::ExecPlan {
            shape,
            exec: e,
            env,
            rootfs,
            user,
            hostname: id[..12].to_string(),
        })?;
        req.subordinate = subordinate;
        let host = HostIds {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        };
        cage_spec::render_sandbox(&req, host)
            .map_err(|err| DockerError(format!("Error response from daemon: {err}")))
    }

    /// `cagerun exec --bundle` for one sandbox, as every sandbox of the broker starts: fresh
    /// for a call, or parked by the pool.
    fn sandbox_command(
        &self,
        bundle: &Path,
        interactive: bool,
        net: Option<&super::egress::SandboxNet>,
    ) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.exe);
        cmd.arg("exec").arg("--bundle").arg(bundle);
        if let Some(net) = net {
            // At 3 and 4 in the child only (ipc::pass_fds); closed here when `cmd` goes.
            cmd.args(["--join-fds", "3,4"]);
            crate::ipc::pass_fds(&mut cmd, &[net.user.as_raw_fd(), net.netns.as_raw_fd()]);
        }
        if interactive {
            cmd.arg("-i");
        }
        cmd.env_remove("CAGERUN_LOG")
            .env_remove(cage_sandbox::cgroups::PARENT_ENV);
        if let Some(parent) = &self.setup.cgroup_parent {
            // Inside the cage's cgroup, under the service's sandbox totals.
            cmd.env(cage_sandbox::cgroups::PARENT_ENV, parent);
        }
        // SAFETY: prctl is async-signal-safe. The sandbox dies with the thread that starts
        // it (a call's, or the pool's: both the supervisor's), so a supervisor that dies
        // cannot leave it behind.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    fn run_sandbox(
        &self,
        bundle: &Path,
        interactive: bool,
        io: Io,
        conn: &std::os::unix::net::UnixStream,
        id: &str,
        net: Option<&super::egress::SandboxNet>,
    ) -> i32 {
        let mut cmd = self.sandbox_command(bundle, interactive, net);
        cmd.stdin(std::process::Stdio::from(io.stdin))
            .stdout(std::process::Stdio::from(io.stdout))
            .stderr(std::process::Stdio::from(io.stderr));
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(err) => {
                tracing::warn!("starting a sandbox: {err}");
                return 126;
            }
        };
        let pid = child.id() as i32;
        {
            let mut containers = self.containers.lock().unwrap();
            match find(&mut containers, id) {
                Some(c) => c.running_execs.push(pid),
                None => {
                    // Removed while we started it.
                    let _ = child.kill();
                }
            }
        }
        let code = wait_or_hangup(&mut child, conn);
        let mut containers = self.containers.lock().unwrap();
        if let Some(c) = find(&mut containers, id) {
            c.running_execs.retain(|p| *p != pid);
        }
        code
    }
}

/// What the warm pool asks of the broker: it renders and starts, the pool keeps and hands
/// over.
impl pool::Host for Broker {
    fn pool(&self) -> &pool::Pool {
        &self.pool
    }

    fn pool_size(&self) -> usize {
        self.setup.pool
    }

    fn budget(&self) -> (&Arc<AtomicUsize>, usize) {
        (&self.running, self.setup.max_running)
    }

    fn poolable(&self, container: &str) -> bool {
        let mut containers = self.containers.lock().unwrap();
        find(&mut containers, container).is_some_and(|c| c.running && c.net.is_none())
    }

    fn exists(&self, container: &str) -> bool {
        find(&mut self.containers.lock().unwrap(), container).is_some()
    }

    fn start_parked(&self, container: &str) -> Result<pool::Started> {
        let (id, shape, env) = {
            let mut containers = self.containers.lock().unwrap();
            let c = find(&mut containers, container).context("the container is gone")?;
            (c.id.clone(), c.shape.clone(), c.env.clone())
        };
        // Nothing of a call is known yet: a placeholder command, the container's own env
        // (a call's spec is compared with this one less argv, env and cwd).
        let placeholder = docker::Exec {
            interactive: true,
            tty: false,
            workdir: None,
            env_files: Vec::new(),
            env: Vec::new(),
            user: None,
            container: id.clone(),
            command: vec!["true".into()],
        };
        let spec = self
            .render(&shape, &placeholder, env, &id)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let run = self
            .runs
            .join(self.next_run.fetch_add(1, Ordering::Relaxed).to_string());
        crate::bundle::write_config(&run, &spec)?;
        let (ours, theirs) = cage_sandbox::park::socket_pair()?;
        let stderr = std::fs::File::create(run.join("stderr"))?;
        let mut cmd = self.sandbox_command(&run, false, None);
        cmd.env(
            crate::sandbox::PARK_ENV,
            crate::proto::fds::CONTROL.to_string(),
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr);
        crate::ipc::pass_fds(&mut cmd, &[theirs.as_raw_fd()]);
        let child = cmd.spawn();
        drop(theirs);
        match child {
            Ok(child) => Ok(pool::Started {
                spec,
                child,
                sock: ours,
                run,
            }),
            Err(e) => {
                crate::tree::remove(&run);
                Err(e).context("starting a parked sandbox")
            }
        }
    }

    fn track(&self, container: &str, pid: i32, running: bool) -> bool {
        let mut containers = self.containers.lock().unwrap();
        match find(&mut containers, container) {
            Some(c) if running => {
                c.running_execs.push(pid);
                true
            }
            Some(c) => {
                c.running_execs.retain(|p| *p != pid);
                true
            }
            None => false,
        }
    }
}

/// The shim's three descriptors.
struct Io {
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

impl Io {
    /// The shim's stdio must be what a process's stdio is: a pipe, a unix socket, a
    /// terminal, or /dev/null. Anything else (a directory, a regular file, an O_PATH
    /// descriptor, another kind of socket) would hand the sandbox a way into the gateway's
    /// filesystem or network, so the call is refused before anything is recorded.
    fn check(&self) -> Result<(), String> {
        for (name, fd) in [
            ("stdin", &self.stdin),
            ("stdout", &self.stdout),
            ("stderr", &self.stderr),
        ] {
            stdio_kind(fd).map_err(|what| {
                format!("docker: {name} is {what}: a cagerun sandbox takes a pipe, a unix socket, a terminal or /dev/null")
            })?;
        }
        Ok(())
    }
    fn fds(&self) -> [i32; 3] {
        [
            self.stdin.as_raw_fd(),
            self.stdout.as_raw_fd(),
            self.stderr.as_raw_fd(),
        ]
    }
    fn out(&self, text: &str) {
        write_bounded(&self.stdout, text.as_bytes());
    }
    fn fail(&self, e: &DockerError, code: i32) -> i32 {
        write_bounded(&self.stderr, format!("{e}\n").as_bytes());
        code
    }
}

/// What a stdio descriptor is, or why it is refused.
fn stdio_kind(fd: &OwnedFd) -> Result<(), String> {
    use nix::sys::socket::{getsockopt, sockopt};
    use nix::sys::stat::{fstat, SFlag};
    // O_PATH descriptors have no I/O: refuse them whatever they name.
    let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)
        .map_err(|e| format!("unreadable ({e})"))?;
    if flags & libc::O_PATH != 0 {
        return Err("an O_PATH descriptor".into());
    }
    let st = fstat(fd.as_raw_fd()).map_err(|e| format!("unreadable ({e})"))?;
    let kind = SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT);
    if kind == SFlag::S_IFIFO {
        return Ok(());
    }
    if kind == SFlag::S_IFSOCK {
        let mut domain: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt into a c_int of the size we pass.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_DOMAIN,
                (&mut domain as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        let unix = rc == 0 && domain == libc::AF_UNIX;
        let listening = getsockopt(fd, sockopt::AcceptConn).unwrap_or(true);
        return match (unix, listening) {
            (true, false) => Ok(()),
            (true, true) => Err("a listening socket".into()),
            (false, _) => Err("a socket that is not a unix socket".into()),
        };
    }
    if kind == SFlag::S_IFCHR {
        let dev_null = libc::makedev(1, 3);
        if st.st_rdev == dev_null || nix::unistd::isatty(fd.as_raw_fd()).unwrap_or(false) {
            return Ok(());
        }
        return Err("a device that is not a terminal".into());
    }
    Err(match kind {
        SFlag::S_IFDIR => "a directory".into(),
        SFlag::S_IFREG => "a regular file".into(),
        _ => "not a pipe, socket or terminal".into(),
    })
}

/// Write all of `bytes` to a caller's descriptor within [`WRITE_TIMEOUT`], or give up: the
/// descriptor is made non-blocking for the write (and restored after), so a pipe nobody
/// reads costs this thread two seconds, never forever.
fn write_bounded(fd: &OwnedFd, bytes: &[u8]) {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    if bytes.is_empty() {
        return;
    }
    let Ok(old) = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL) else {
        return;
    };
    let old = OFlag::from_bits_truncate(old);
    let _ = fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(old | OFlag::O_NONBLOCK));
    let deadline = std::time::Instant::now() + WRITE_TIMEOUT;
    let mut rest = bytes;
    while !rest.is_empty() {
        match nix::unistd::write(fd, rest) {
            Ok(n) => rest = &rest[n..],
            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    tracing::warn!("broker: a caller's descriptor stayed full; answer dropped");
                    break;
                }
                let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
                let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
                let _ = poll(&mut fds, PollTimeout::from(ms));
            }
            Err(_) => break,
        }
    }
    let _ = fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(old));
}

fn find<'a>(containers: &'a mut [Container], key: &str) -> Option<&'a mut Container> {
    // docker resolves a name, a full id, or a unique id prefix.
    if let Some(i) = containers
        .iter()
        .position(|c| c.shape.name.as_deref() == Some(key) || c.id == key)
    {
        return containers.get_mut(i);
    }
    let matches: Vec<usize> = containers
        .iter()
        .enumerate()
        .filter(|(_, c)| key.len() >= 4 && c.id.starts_with(key))
        .map(|(i, _)| i)
        .collect();
    match matches.as_slice() {
        [i] => containers.get_mut(*i),
        _ => None,
    }
}

fn no_such_container(n: &str) -> DockerError {
    DockerError(format!(
        "Error response from daemon: No such container: {n}"
    ))
}

/// Append a call's environment: its `--env-file`s (as the shim read them), then its `-e`s.
fn add_env(
    env: &mut Vec<(String, String)>,
    req: &Request,
    files: &[String],
    vars: &[String],
) -> Result<(), DockerError> {
    for path in files {
        let text = req
            .files
            .get(path)
            .ok_or_else(|| DockerError(format!("open {path}: no such file or directory")))?;
        // A bare KEY would take its value from the caller's environment: that is the
        // service's, which the broker does not have (and must not substitute its own).
        env.extend(
            cage_spec::envfile::parse_env_file(path, text, |_| None)
                .map_err(|e| DockerError(format!("invalid env file {path}: {e}")))?,
        );
    }
    for kv in vars {
        env.push(
            cage_spec::envfile::parse_env_arg(kv)
                .map_err(|e| DockerError(format!("invalid env: {e}")))?,
        );
    }
    Ok(())
}

/// The call without its values (env files' contents are never logged).
fn summary(argv: &[String]) -> String {
    argv.iter().take(3).cloned().collect::<Vec<_>>().join(" ")
}

/// The sandbox's exit code; or, if the shim goes away first (OpenClaw's timeout killed it),
/// kill the sandbox and answer 137. Waits on a pidfd and the connection together (no
/// polling interval: a tool call's latency is the sandbox's own).
fn wait_or_hangup(child: &mut std::process::Child, conn: &std::os::unix::net::UnixStream) -> i32 {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::FromRawFd;
    use std::os::unix::process::ExitStatusExt;
    let code = |status: std::process::ExitStatus| {
        status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
    };
    // SAFETY: pidfd_open returns a new descriptor (or -1); the child is ours and unreaped.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) } as i32;
    if raw < 0 {
        // Kernels before 5.3: no pidfd; wait without watching the shim.
        return child.wait().map(code).unwrap_or(125);
    }
    // SAFETY: just opened, owned here.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw) };
    loop {
        let mut fds = [
            PollFd::new(pidfd.as_fd(), PollFlags::POLLIN),
            PollFd::new(conn.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return child.wait().map(code).unwrap_or(125),
        }
        if fds[0].revents().is_some_and(|r| !r.is_empty()) {
            return child.wait().map(code).unwrap_or(125);
        }
        // The shim sends nothing after its request: anything readable is its end closing.
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            let _ = child.kill();
            let _ = child.wait();
            return 137;
        }
    }
}

/// A fresh socket at `dir/docker.sock`, connectable by any user that reaches `dir`. The
/// service may write in `dir` (and may be racing us): whatever is at the name is unlinked
/// (never followed), and the mode is set on what the name holds after the bind only when it
/// is a socket of ours, through a descriptor that does not follow a planted symlink.
fn listen_in(dir: &Path) -> Result<UnixListener> {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::{fstat, Mode, SFlag};
    use std::os::fd::FromRawFd;
    let dir_fd = nix::fcntl::open(
        dir,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("opening {}", dir.display()))?;
    // SAFETY: just opened, owned here.
    let dir_fd = unsafe { OwnedFd::from_raw_fd(dir_fd) };
    match nix::unistd::unlinkat(
        Some(dir_fd.as_raw_fd()),
        SOCKET_NAME,
        nix::unistd::UnlinkatFlags::NoRemoveDir,
    ) {
        Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => bail!("removing {}: {e}", dir.join(SOCKET_NAME).display()),
    }
    let sock = dir.join(SOCKET_NAME);
    let listener = seqpacket_listener(&sock)?;
    let placed = openat(
        Some(dir_fd.as_raw_fd()),
        SOCKET_NAME,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("opening {}", sock.display()))?;
    // SAFETY: just opened, owned here.
    let placed = unsafe { OwnedFd::from_raw_fd(placed) };
    let st = fstat(placed.as_raw_fd())?;
    if SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT) != SFlag::S_IFSOCK
        || st.st_uid != nix::unistd::geteuid().as_raw()
    {
        bail!("{} was replaced while the broker made it", sock.display());
    }
    // chmod through the O_PATH descriptor's /proc link (fchmod refuses O_PATH).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        format!("/proc/self/fd/{}", placed.as_raw_fd()),
        std::fs::Permissions::from_mode(0o666),
    )
    .with_context(|| format!("making {} connectable", sock.display()))?;
    Ok(listener)
}

fn seqpacket_listener(path: &Path) -> Result<UnixListener> {
    use nix::sys::socket::{
        bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
    };
    let s = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(s.as_raw_fd(), &UnixAddr::new(path)?)
        .with_context(|| format!("binding {}", path.display()))?;
    listen(&s, Backlog::new(64)?)?;
    Ok(UnixListener::from(s))
}

fn random_id() -> String {
    let mut bytes = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

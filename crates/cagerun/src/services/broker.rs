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
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use cage_spec::docker::{self, BrokerPolicy, Call, DockerError, GatewayMount, SandboxShape};
use cage_spec::sandbox::DEFAULT_USER;
use cage_spec::{passwd, HostIds, RootfsSource};

use crate::shim::{Request, MAX_REQUEST, SOCKET_NAME};

/// Everything `up` resolves for one service's sandboxes before anything starts.
#[derive(Clone, Debug)]
pub struct Setup {
    pub service: String,
    pub policy: BrokerPolicy,
    /// image name → the tree its sandboxes run from
    pub roots: HashMap<String, RootfsSource>,
}

/// The broker's policy for a service: its images (resolved now, so a missing tree is an error
/// before `up` starts anything) and the service's *writable* binds, through which bind
/// sources are mapped (its read-only binds, e.g. config or the host's /usr, are not sandbox
/// material).
pub fn setup(
    cage_dir: &Path,
    service: &cage_spec::cage::Service,
    spec: &oci_spec::runtime::Spec,
) -> Result<Option<Setup>> {
    let Some(sb) = &service.sandboxes else {
        return Ok(None);
    };
    let mut roots = HashMap::new();
    let mut images = Vec::new();
    for (name, tree) in &sb.images {
        let root = if tree == "host" {
            crate::exec::rootfs_source("host")?
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
    let gateway_mounts = spec
        .mounts()
        .iter()
        .flatten()
        .filter(|m| m.typ().as_deref() == Some("bind"))
        .filter(|m| {
            !m.options()
                .iter()
                .flatten()
                .any(|o| o == "ro" || o == "rbind-ro")
        })
        .filter_map(|m| {
            Some(GatewayMount {
                inside: m.destination().to_str()?.to_string(),
                host: m.source().as_ref()?.to_str()?.to_string(),
                read_only: false,
            })
        })
        .collect();
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
        roots,
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
    exe: PathBuf,
    /// Bundles of running sandboxes (outside anything the service can see).
    runs: PathBuf,
    containers: Mutex<Vec<Container>>,
    next_run: AtomicU64,
}

/// The directory bound into the service at [`crate::shim::BROKER_DIR`]: the socket, and an
/// empty file the shim binary is bound onto.
pub fn service_dir(runtime: &Path, service: &str) -> PathBuf {
    runtime.join(format!("broker-{service}"))
}

impl Broker {
    /// Listen on `dir/docker.sock` and serve on a thread of its own.
    pub fn start(setup: Setup, runtime: &Path, exe: PathBuf) -> Result<Arc<Broker>> {
        let dir = service_dir(runtime, &setup.service);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("docker"), b"")?;
        let sock = dir.join(SOCKET_NAME);
        let _ = std::fs::remove_file(&sock);
        let listener = seqpacket_listener(&sock)?;
        // The service's user (a subordinate or mapped id) must be able to connect; the
        // directory is reachable only inside that service and under the 0700 runtime dir.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        let runs = runtime.join(format!("sandboxes-{}", setup.service));
        std::fs::create_dir_all(&runs)?;
        let broker = Arc::new(Broker {
            setup,
            exe,
            runs,
            containers: Mutex::new(Vec::new()),
            next_run: AtomicU64::new(0),
        });
        let b = broker.clone();
        std::thread::Builder::new()
            .name("broker".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { continue };
                    let b = b.clone();
                    let _ = std::thread::Builder::new()
                        .name("broker-call".into())
                        .spawn(move || b.serve(conn));
                }
            })?;
        Ok(broker)
    }

    /// Kill every sandbox still running (the cage is going down).
    pub fn shutdown(&self) {
        for c in self.containers.lock().unwrap().iter() {
            c.kill_running();
        }
    }

    fn serve(&self, conn: std::os::unix::net::UnixStream) {
        let Ok(Some((body, mut fds))) = crate::ipc::recv_fds(&conn, MAX_REQUEST) else {
            return;
        };
        let code = match (serde_json::from_slice::<Request>(&body), fds.len()) {
            (Ok(req), 3) => {
                let stderr = fds.pop().unwrap();
                let stdout = fds.pop().unwrap();
                let stdin = fds.pop().unwrap();
                let io = Io {
                    stdin,
                    stdout,
                    stderr,
                };
                self.call(&req, io, &conn)
            }
            _ => 125,
        };
        let _ = crate::ipc::send_fds(&conn, format!("exit {code}").as_bytes(), &[]);
    }

    fn call(&self, req: &Request, io: Io, conn: &std::os::unix::net::UnixStream) -> i32 {
        let call = match docker::parse(&req.argv) {
            Ok(c) => c,
            Err(e) => return io.fail(&e, 125),
        };
        tracing::info!(service = %self.setup.service, "docker {}", summary(&req.argv));
        match call {
            Call::Version => {
                io.out(&format!(
                    "cagerun sandbox broker {} (docker CLI subset for OpenClaw)\n",
                    env!("CARGO_PKG_VERSION")
                ));
                0
            }
            Call::ImageInspect { image } => match self.setup.roots.get(&image) {
                Some(_) => {
                    // A stable id for the name: docker shows a digest; nothing here reads it.
                    let id = cage_image::digest::Digest::of(image.as_bytes());
                    io.out(&format!(
                        "{}\n",
                        serde_json::json!([{"Id": id.to_string(), "RepoTags": [image]}])
                    ));
                    0
                }
                None => io.fail(
                    &DockerError(format!(
                        "Error response from daemon: No such image: {image}"
                    )),
                    1,
                ),
            },
            Call::Create(c) => {
                let shape = match docker::judge_create(&c, &self.setup.policy) {
                    Ok(s) => s,
                    Err(e) => return io.fail(&e, 125),
                };
                let mut env = Vec::new();
                if let Err(e) = add_env(&mut env, req, &shape.env_files, &shape.env) {
                    return io.fail(&e, 125);
                }
                let mut containers = self.containers.lock().unwrap();
                if let Some(n) = &shape.name {
                    if containers.iter().any(|c| c.shape.name.as_ref() == Some(n)) {
                        return io.fail(&DockerError(format!("Error response from daemon: Conflict. The container name \"/{n}\" is already in use")), 125);
                    }
                }
                let id = random_id();
                io.out(&format!("{id}\n"));
                containers.push(Container {
                    id,
                    shape,
                    env,
                    running: false,
                    created: now_rfc3339(),
                    running_execs: Vec::new(),
                });
                0
            }
            Call::Start { containers: names } => {
                let mut containers = self.containers.lock().unwrap();
                for n in &names {
                    match find(&mut containers, n) {
                        Some(c) => {
                            c.running = true;
                            io.out(&format!("{n}\n"));
                        }
                        None => return io.fail(&no_such_container(n), 1),
                    }
                }
                0
            }
            Call::Inspect {
                format, targets, ..
            } => {
                let mut containers = self.containers.lock().unwrap();
                let mut docs = Vec::new();
                for t in &targets {
                    match find(&mut containers, t) {
                        Some(c) => docs.push(docker::inspect_document(
                            &c.id, &c.shape, c.running, &c.env, &c.created,
                        )),
                        None => {
                            return io.fail(&DockerError(format!("Error: No such object: {t}")), 1)
                        }
                    }
                }
                drop(containers);
                match format {
                    None => {
                        io.out(&format!(
                            "{}\n",
                            serde_json::to_string_pretty(&docs).unwrap_or_default()
                        ));
                    }
                    Some(f) => {
                        for d in &docs {
                            match docker::render_template(&f, d) {
                                Ok(s) => io.out(&format!("{s}\n")),
                                Err(e) => return io.fail(&e, 1),
                            }
                        }
                    }
                }
                0
            }
            Call::Remove {
                containers: names, ..
            } => {
                let mut containers = self.containers.lock().unwrap();
                for n in &names {
                    let Some(i) = containers
                        .iter()
                        .position(|c| c.id == *n || c.shape.name.as_deref() == Some(n))
                    else {
                        return io.fail(&no_such_container(n), 1);
                    };
                    containers.remove(i).kill_running();
                    io.out(&format!("{n}\n"));
                }
                0
            }
            Call::Exec(e) => self.exec(req, &e, io, conn),
        }
    }

    /// One tool command: a fresh sandbox of the container's shape, to its end.
    fn exec(
        &self,
        req: &Request,
        e: &docker::Exec,
        io: Io,
        conn: &std::os::unix::net::UnixStream,
    ) -> i32 {
        let (id, shape, mut env) = {
            let mut containers = self.containers.lock().unwrap();
            match find(&mut containers, &e.container) {
                Some(c) if c.running => (c.id.clone(), c.shape.clone(), c.env.clone()),
                Some(c) => {
                    return io.fail(
                        &DockerError(format!(
                            "Error response from daemon: container {} is not running",
                            c.id
                        )),
                        1,
                    )
                }
                None => return io.fail(&no_such_container(&e.container), 1),
            }
        };
        if let Err(err) = add_env(&mut env, req, &e.env_files, &e.env) {
            return io.fail(&err, 125);
        }
        let spec = match self.render(&shape, e, env, &id) {
            Ok(s) => s,
            Err(err) => return io.fail(&err, 126),
        };
        let run = self
            .runs
            .join(self.next_run.fetch_add(1, Ordering::Relaxed).to_string());
        if let Err(err) = crate::bundle::write_config(&run, &spec) {
            return io.fail(
                &DockerError(format!("Error response from daemon: {err:#}")),
                126,
            );
        }
        let result = self.run_sandbox(&run, e.interactive, io, conn, &id);
        crate::services::supervisor::remove_tree(&run);
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
        let (pw, gr) = crate::exec::passwd_files(&rootfs);
        let user = match e.user.as_ref().or(shape.user.as_ref()) {
            Some(u) => passwd::resolve_user(u, &pw, &gr)
                .map_err(|err| DockerError(format!("Error response from daemon: {err}")))?,
            None => DEFAULT_USER,
        };
        let subordinate = crate::exec::mapped_ownership(&rootfs);
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

    fn run_sandbox(
        &self,
        bundle: &Path,
        interactive: bool,
        io: Io,
        conn: &std::os::unix::net::UnixStream,
        id: &str,
    ) -> i32 {
        let mut cmd = std::process::Command::new(&self.exe);
        cmd.arg("exec").arg("--bundle").arg(bundle);
        if interactive {
            cmd.arg("-i");
        }
        cmd.stdin(std::process::Stdio::from(io.stdin))
            .stdout(std::process::Stdio::from(io.stdout))
            .stderr(std::process::Stdio::from(io.stderr))
            .env_remove("CAGERUN_LOG");
        // SAFETY: prctl is async-signal-safe. The sandbox dies with this thread (the
        // supervisor's), so a supervisor that dies cannot leave it behind.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
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

/// The shim's three descriptors.
struct Io {
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

impl Io {
    fn out(&self, text: &str) {
        let _ = nix::unistd::write(&self.stdout, text.as_bytes());
    }
    fn fail(&self, e: &DockerError, code: i32) -> i32 {
        let _ = nix::unistd::write(&self.stderr, format!("{e}\n").as_bytes());
        code
    }
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

fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

//! The broker's warm pool: sandboxes made ahead of a call and parked before their command
//! (cage-sandbox `park`), so a tool call costs a message, not a sandbox start.
//!
//! - **Made like any sandbox.** A parked sandbox is `cagerun exec --bundle B` with its socket
//!   at descriptor 3 (`CAGERUN_PARK_FD`), the
//!   spec rendered by [`Broker::render`] for the container with a placeholder command, under
//!   the same cgroup and budget as a call's. Nothing of a call is known when it is made.
//! - **Used once, only where a fresh one would be the same.** A call takes one only when the
//!   spec a fresh sandbox would get, less the command, environment and working directory
//!   (what the go message carries), equals the parked one's field by field; and when every
//!   bind it resolved beneath the service's (hostile) directories is still the directory a
//!   fresh sandbox would resolve now (device and inode). Otherwise, or for a terminal (`-t`)
//!   or a sandbox with a network of its own, the call makes a fresh one. A used sandbox ends
//!   with its command; the pool makes another in the background.
//! - **Bounded.** [`Setup::pool`] per started container; each parked sandbox holds a slot of
//!   `max` and lives in the sandboxes' cgroup, so memory and pids count against the cage. A
//!   call that finds no slot free evicts a parked sandbox first. One that stays unused for
//!   [`IDLE`] is ended and not replaced until the container's next call.
//! - **Dies with the supervisor.** One thread makes them all and they have PDEATHSIG bound
//!   to it; it ends (and they with it) at [`Broker::shutdown`] or when the process dies.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cage_sandbox::park;
use cage_spec::docker::{self, SandboxShape};

use super::{find, Broker, Slot};

/// A parked sandbox unused this long is ended (and not replaced until its container's next
/// call).
pub const IDLE: Duration = Duration::from_secs(60);
/// How long a sandbox may take to park before the pool gives up on it.
const PARK_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) struct Parked {
    container: String,
    /// Its spec without the command, environment and working directory ([`key`]).
    key: oci_spec::runtime::Spec,
    child: Child,
    sock: OwnedFd,
    ready: park::Ready,
    run: PathBuf,
    born: Instant,
    slot: Slot,
}

/// A sandbox that is done (ended after its call, evicted, idle): reaped and its bundle
/// removed on the pool's thread.
pub(super) struct Done {
    child: Child,
    run: PathBuf,
    _slot: Slot,
}

pub(super) enum Job {
    /// Top up the pool of this container.
    Fill(String),
    Reap(Done),
    Stop,
}

/// What a parked sandbox and a call must agree on: the whole spec but the process's args,
/// env and cwd, which the go message brings (compared with `==`, every field).
fn key(spec: &oci_spec::runtime::Spec) -> oci_spec::runtime::Spec {
    let mut key = spec.clone();
    if let Some(p) = key.process_mut().as_mut() {
        p.set_args(None);
        p.set_env(None);
        p.set_cwd(PathBuf::from("/"));
    }
    key
}

impl Parked {
    /// End it gracefully: closing its socket makes its pid 1 give up (no command), and the
    /// engine's process then removes the sandbox's cgroup and exits, as after any run. A
    /// SIGKILL would leave that cgroup to the next sweep.
    fn end(self) -> Done {
        drop(self.sock);
        Done {
            child: self.child,
            run: self.run,
            _slot: self.slot,
        }
    }
}

/// How long an ended sandbox's engine gets to clean up before it is killed.
const END_GRACE: Duration = Duration::from_secs(2);

impl Done {
    fn finish(mut self) {
        let deadline = Instant::now() + END_GRACE;
        loop {
            match self.child.try_wait() {
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                _ => break,
            }
        }
        crate::tree::remove(&self.run);
    }
}

/// A call served by a parked sandbox: it ran, or it could not be handed over (the call then
/// runs a fresh sandbox, with its stdio untouched).
pub(super) enum Served {
    Ran(i32),
    NotTaken,
}

impl Broker {
    pub(super) fn pool_thread(self: Arc<Broker>, jobs: Receiver<Job>) {
        loop {
            match jobs.recv_timeout(Duration::from_secs(1)) {
                Ok(Job::Fill(container)) => self.fill(&container),
                Ok(Job::Reap(done)) => done.finish(),
                Ok(Job::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
            self.shrink();
        }
        let all: Vec<Parked> = std::mem::take(&mut *self.parked.lock().unwrap());
        for p in all {
            p.end().finish();
        }
    }

    pub(super) fn send_job(&self, job: Job) {
        if let Some(tx) = self.jobs.lock().unwrap().as_ref() {
            let _ = tx.send(job);
        }
    }

    /// End parked sandboxes unused for [`IDLE`].
    fn shrink(&self) {
        let old: Vec<Parked> = {
            let mut parked = self.parked.lock().unwrap();
            let (old, keep) = std::mem::take(&mut *parked)
                .into_iter()
                .partition(|p| p.born.elapsed() >= IDLE);
            *parked = keep;
            old
        };
        for p in old {
            tracing::debug!(container = %p.container, "pool: an idle parked sandbox ends");
            p.end().finish();
        }
    }

    /// End the parked sandboxes of a removed container.
    pub(super) fn drop_parked(&self, container: &str) {
        let gone: Vec<Parked> = {
            let mut parked = self.parked.lock().unwrap();
            let (gone, keep) = std::mem::take(&mut *parked)
                .into_iter()
                .partition(|p| p.container == container);
            *parked = keep;
            gone
        };
        for p in gone {
            self.send_job(Job::Reap(p.end()));
        }
    }

    /// Free a slot for a call by ending a parked sandbox (the oldest), now.
    pub(super) fn evict_one(&self) -> bool {
        let victim = {
            let mut parked = self.parked.lock().unwrap();
            let oldest = parked
                .iter()
                .enumerate()
                .min_by_key(|(_, p)| p.born)
                .map(|(i, _)| i);
            oldest.map(|i| parked.remove(i))
        };
        match victim {
            Some(p) => {
                p.end().finish();
                true
            }
            None => false,
        }
    }

    /// Make parked sandboxes for `container` up to the pool's size, within the budget.
    fn fill(&self, container: &str) {
        loop {
            let shape = {
                let mut containers = self.containers.lock().unwrap();
                match find(&mut containers, container) {
                    Some(c) if c.running && c.net.is_none() => {
                        Some((c.shape.clone(), c.env.clone()))
                    }
                    _ => None,
                }
            };
            let Some((shape, env)) = shape else { return };
            let have = self
                .parked
                .lock()
                .unwrap()
                .iter()
                .filter(|p| p.container == container)
                .count();
            if have >= self.setup.pool {
                return;
            }
            let Some(slot) = Slot::take(&self.running, self.setup.max_running) else {
                return;
            };
            match self.park_one(container, &shape, env, slot) {
                Ok(p) => {
                    // The container may have been removed meanwhile.
                    let mut containers = self.containers.lock().unwrap();
                    if find(&mut containers, container).is_some() {
                        self.parked.lock().unwrap().push(p);
                    } else {
                        drop(containers);
                        p.end().finish();
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(service = %self.setup.service, "pool: a parked sandbox did not start, calls make their own: {e:#}");
                    return;
                }
            }
        }
    }

    fn park_one(
        &self,
        container: &str,
        shape: &SandboxShape,
        env: Vec<(String, String)>,
        slot: Slot,
    ) -> anyhow::Result<Parked> {
        use anyhow::Context;
        let placeholder = docker::Exec {
            interactive: true,
            tty: false,
            workdir: None,
            env_files: Vec::new(),
            env: Vec::new(),
            user: None,
            container: container.to_string(),
            command: vec!["true".into()],
        };
        let id = {
            let mut containers = self.containers.lock().unwrap();
            find(&mut containers, container)
                .map(|c| c.id.clone())
                .context("the container is gone")?
        };
        let spec = self
            .render(shape, &placeholder, env, &id)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let run = self
            .runs
            .join(self.next_run.fetch_add(1, Ordering::Relaxed).to_string());
        crate::bundle::write_config(&run, &spec)?;
        let (ours, theirs) = park::socket_pair()?;
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
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                crate::tree::remove(&run);
                return Err(e).context("starting a parked sandbox");
            }
        };
        let _ = nix::sys::socket::setsockopt(
            &ours,
            nix::sys::socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(PARK_TIMEOUT.as_secs() as i64, 0),
        );
        let ready = park::recv_ready(&ours);
        let _ = nix::sys::socket::setsockopt(
            &ours,
            nix::sys::socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(0, 0),
        );
        match ready {
            Ok(ready) => Ok(Parked {
                container: container.to_string(),
                key: key(&spec),
                child,
                sock: ours,
                ready,
                run,
                born: Instant::now(),
                slot,
            }),
            Err(e) => {
                let _ = child.kill();
                let status = child.wait();
                let said = std::fs::read(run.join("stderr"))
                    .map(|b| String::from_utf8_lossy(&b[..b.len().min(4096)]).into_owned())
                    .unwrap_or_default();
                crate::tree::remove(&run);
                Err(anyhow::anyhow!(
                    "{e} ({status:?}){}",
                    if said.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", said.trim())
                    }
                ))
            }
        }
    }

    /// Serve a call with a parked sandbox of `container` whose spec matches `spec` (the one
    /// a fresh sandbox would run), if there is one.
    pub(super) fn serve_parked(
        &self,
        container: &str,
        spec: &oci_spec::runtime::Spec,
        interactive: bool,
        io: &super::Io,
        conn: &std::os::unix::net::UnixStream,
    ) -> Served {
        if self.setup.pool == 0 {
            return Served::NotTaken;
        }
        let wanted = key(spec);
        let taken = {
            let mut parked = self.parked.lock().unwrap();
            parked
                .iter()
                .position(|p| p.container == container && p.key == wanted)
                .map(|i| parked.remove(i))
        };
        let Some(mut p) = taken else {
            return Served::NotTaken;
        };
        // The binds a fresh sandbox would resolve now, beneath the same hostile roots.
        let now = cage_sandbox::Plan::from_spec(spec, std::path::Path::new("/"))
            .ok()
            .and_then(|plan| park::current_sources(&plan).ok());
        if now.as_ref() != Some(&p.ready) {
            tracing::debug!(%container, "pool: a bind source changed since the sandbox parked; a fresh one runs");
            self.send_job(Job::Reap(p.end()));
            return Served::NotTaken;
        }
        let process = spec.process().as_ref();
        let go = park::Go {
            args: process.and_then(|p| p.args().clone()).unwrap_or_default(),
            env: process.and_then(|p| p.env().clone()).unwrap_or_default(),
            cwd: process
                .map(|p| p.cwd().to_string_lossy().into_owned())
                .unwrap_or_else(|| "/".into()),
        };
        // Without -i a fresh sandbox's stdin is the /dev/null its pid 1 opened: a parked one
        // keeps its own the same way (the call's stdin is not passed).
        let stdio: Vec<i32> = if interactive {
            vec![
                io.stdin.as_raw_fd(),
                io.stdout.as_raw_fd(),
                io.stderr.as_raw_fd(),
            ]
        } else {
            vec![io.stdout.as_raw_fd(), io.stderr.as_raw_fd()]
        };
        if let Err(e) = park::send_go(&p.sock, &go, &stdio) {
            tracing::debug!(%container, "pool: handing over: {e}; a fresh one runs");
            self.send_job(Job::Reap(p.end()));
            return Served::NotTaken;
        }
        let pid = p.child.id() as i32;
        {
            let mut containers = self.containers.lock().unwrap();
            match find(&mut containers, container) {
                Some(c) => c.running_execs.push(pid),
                None => {
                    let _ = p.child.kill();
                }
            }
        }
        let code = wait_code_or_hangup(&mut p, conn);
        {
            let mut containers = self.containers.lock().unwrap();
            if let Some(c) = find(&mut containers, container) {
                c.running_execs.retain(|x| *x != pid);
            }
        }
        // The sandbox's namespaces come down after the answer, on the pool's thread; its
        // slot is held until it is reaped.
        self.send_job(Job::Reap(Done {
            child: p.child,
            run: p.run,
            _slot: p.slot,
        }));
        Served::Ran(code)
    }
}

/// The command's exit code as pid 1 reports it (before the sandbox is torn down); or the
/// engine's own status when pid 1 ended without one; or 137 after killing it when the shim
/// goes away first (OpenClaw's timeout), as for a fresh sandbox.
fn wait_code_or_hangup(p: &mut Parked, conn: &std::os::unix::net::UnixStream) -> i32 {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::unix::process::ExitStatusExt;
    loop {
        let mut fds = [
            PollFd::new(p.sock.as_fd(), PollFlags::POLLIN),
            PollFd::new(conn.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
        if fds[0].revents().is_some_and(|r| !r.is_empty()) {
            if let Some(code) = park::recv_code(&p.sock) {
                return code;
            }
            break;
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            let _ = p.child.kill();
            let _ = p.child.wait();
            return 137;
        }
    }
    p.child
        .wait()
        .map(|s| s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)))
        .unwrap_or(125)
}

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
//! - **Bounded.** `[sandboxes] pool` per started container; each parked sandbox holds a slot of
//!   `max` and lives in the sandboxes' cgroup, so memory and pids count against the cage. A
//!   call that finds no slot free evicts a parked sandbox first. One that stays unused for
//!   [`IDLE`] is ended and not replaced until the container's next call.
//! - **Dies with the supervisor.** One thread makes them all and they have PDEATHSIG bound
//!   to it; it ends (and they with it) at [`Pool::stop`] or when the process dies.
//!
//! The pool knows nothing of containers or specs beyond what its [`Host`] (the broker) says:
//! the broker renders and starts, the pool keeps, matches, hands over and ends.

use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cage_sandbox::park;

/// A parked sandbox unused this long is ended (and not replaced until its container's next
/// call).
pub const IDLE: Duration = Duration::from_secs(60);
/// How long a sandbox may take to park before the pool gives up on it.
const PARK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an ended sandbox's engine gets to clean up before it is killed.
const END_GRACE: Duration = Duration::from_secs(2);

/// One of a bounded number of places (calls being served, sandboxes running): taken with
/// [`Slot::take`] when fewer than `max` are taken, given back when dropped, whatever path
/// the holder leaves by.
pub struct Slot(Arc<AtomicUsize>);

impl Slot {
    pub fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        if count.fetch_add(1, Ordering::SeqCst) >= max {
            count.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Slot(count.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A sandbox engine started parked by the [`Host`]: its spec, process, socket, bundle.
pub struct Started {
    pub spec: oci_spec::runtime::Spec,
    pub child: Child,
    pub sock: OwnedFd,
    pub run: PathBuf,
}

/// What the pool asks of the broker.
pub trait Host: Send + Sync + 'static {
    fn pool(&self) -> &Pool;
    /// Parked sandboxes per started container.
    fn pool_size(&self) -> usize;
    /// The sandbox budget: the count of slots taken and `max`.
    fn budget(&self) -> (&Arc<AtomicUsize>, usize);
    /// `container` is started and its calls may go to parked sandboxes.
    fn poolable(&self, container: &str) -> bool;
    /// `container` still exists.
    fn exists(&self, container: &str) -> bool;
    /// Render `container`'s sandbox with a placeholder command, write its bundle and start its
    /// engine parked, with the other end of the returned socket.
    fn start_parked(&self, container: &str) -> anyhow::Result<Started>;
    /// Count (or stop counting) an engine as one of `container`'s running sandboxes (`rm`
    /// kills them). False when the container is gone.
    fn track(&self, container: &str, pid: i32, running: bool) -> bool;
}

pub struct Parked {
    container: String,
    /// Its spec without the command, environment and working directory ([`into_key`]).
    key: oci_spec::runtime::Spec,
    /// Its plan, made once when it parks, for the binds to check again at a call: a call's
    /// spec equals [`Self::key`] beyond the command, so its binds are these.
    plan: cage_sandbox::Plan,
    child: Child,
    sock: OwnedFd,
    ready: park::Ready,
    run: PathBuf,
    born: Instant,
    slot: Slot,
}

/// A sandbox that is done (ended after its call, evicted, idle): reaped and its bundle
/// removed off the call's path.
pub struct Done {
    child: Child,
    run: PathBuf,
    _slot: Slot,
}

pub enum Job {
    /// Top up the pool of this container.
    Fill(String),
    Stop,
}

/// What a parked sandbox and a call must agree on: the whole spec but the process's args,
/// env and cwd, which the go message brings (compared with `==`, every field). `spec` becomes
/// that key; what was taken out is returned.
fn into_key(spec: &mut oci_spec::runtime::Spec) -> park::Go {
    let mut go = park::Go {
        args: Vec::new(),
        env: Vec::new(),
        cwd: "/".into(),
    };
    if let Some(p) = spec.process_mut().as_mut() {
        go.args = p.args().clone().unwrap_or_default();
        go.env = p.env_mut().take().unwrap_or_default();
        go.cwd = p.cwd().to_string_lossy().into_owned();
        p.set_args(None);
        p.set_cwd(PathBuf::from("/"));
    }
    go
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

impl Done {
    /// Reap it on a thread of its own: its slot comes back as soon as it is gone, not after
    /// whatever the pool's thread is doing (making a sandbox may take a while under load).
    fn finish_soon(self) {
        let spawned = std::thread::Builder::new()
            .name("broker-reap".into())
            .spawn(move || self.finish());
        if let Err(e) = spawned {
            tracing::warn!("pool: reaping a sandbox: {e}");
        }
    }

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
pub enum Served {
    /// The call's code, and what is left to do once it is answered.
    Ran(i32, AfterCall),
    NotTaken,
}

/// After a call a parked sandbox served: reap it, then top its container up. Run by the
/// call's own thread once the shim has its answer: on the way to the answer a thread more
/// cost ~0.1 ms (perf, these 2 cores), and a sandbox being made beside the command would
/// slow it down on a small machine.
pub struct AfterCall {
    done: Done,
    jobs: Option<Sender<Job>>,
    container: String,
}

impl AfterCall {
    pub fn run(self) {
        self.done.finish();
        if let Some(tx) = self.jobs {
            let _ = tx.send(Job::Fill(self.container));
        }
    }
}

/// The parked sandboxes, and the thread that makes and reaps them.
#[derive(Default)]
pub struct Pool {
    parked: Mutex<Vec<Parked>>,
    /// Sandboxes being made now (each holds a slot it cannot give back until it parks).
    making: AtomicUsize,
    jobs: Mutex<Option<Sender<Job>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Pool {
    /// Start the pool's thread for `host`.
    pub fn start(host: Arc<dyn Host>) -> std::io::Result<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        *host.pool().jobs.lock().unwrap() = Some(tx);
        let h = host.clone();
        let handle = std::thread::Builder::new()
            .name("broker-pool".into())
            .spawn(move || thread_main(h, rx))?;
        *host.pool().thread.lock().unwrap() = Some(handle);
        Ok(())
    }

    pub fn send(&self, job: Job) {
        if let Some(tx) = self.jobs.lock().unwrap().as_ref() {
            let _ = tx.send(job);
        }
    }

    /// End every parked sandbox and the thread (it reaps what it holds first).
    pub fn stop(&self) {
        self.send(Job::Stop);
        self.jobs.lock().unwrap().take();
        if let Some(t) = self.thread.lock().unwrap().take() {
            let _ = t.join();
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
    pub fn drop_parked(&self, container: &str) {
        let gone: Vec<Parked> = {
            let mut parked = self.parked.lock().unwrap();
            let (gone, keep) = std::mem::take(&mut *parked)
                .into_iter()
                .partition(|p| p.container == container);
            *parked = keep;
            gone
        };
        // Synchronously: `docker rm -f` answers once the container's sandboxes are gone.
        for p in gone {
            p.end().finish();
        }
    }

    /// A slot for a call: a free one; else one a parked sandbox gives up (the oldest is
    /// ended); else, while sandboxes are being made, the first of them that parks gives way
    /// (the pool never costs a call its place), waiting at most [`PARK_TIMEOUT`].
    pub fn slot_for_call(&self, count: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        let deadline = Instant::now() + PARK_TIMEOUT;
        loop {
            if let Some(slot) = Slot::take(count, max) {
                return Some(slot);
            }
            if self.evict_one() {
                continue;
            }
            if self.making.load(Ordering::SeqCst) == 0 || Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Free a slot for a call by ending a parked sandbox (the oldest), now.
    pub fn evict_one(&self) -> bool {
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
    fn fill(&self, host: &dyn Host, container: &str) {
        loop {
            if !host.poolable(container) {
                return;
            }
            let have = self
                .parked
                .lock()
                .unwrap()
                .iter()
                .filter(|p| p.container == container)
                .count();
            if have >= host.pool_size() {
                return;
            }
            let (count, max) = host.budget();
            let Some(slot) = Slot::take(count, max) else {
                return;
            };
            self.making.fetch_add(1, Ordering::SeqCst);
            let made = park_one(host, container, slot);
            self.making.fetch_sub(1, Ordering::SeqCst);
            match made {
                Ok(p) => {
                    // The container may have been removed meanwhile.
                    if host.exists(container) {
                        self.parked.lock().unwrap().push(p);
                    } else {
                        p.end().finish();
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        "pool: a parked sandbox did not start, calls make their own: {e:#}"
                    );
                    return;
                }
            }
        }
    }

    /// Serve a call with a parked sandbox of `container` whose spec matches `spec` (the one
    /// a fresh sandbox would run), if there is one. `stdio`: the call's stdin, stdout, stderr.
    pub fn serve(
        &self,
        host: &dyn Host,
        container: &str,
        mut spec: oci_spec::runtime::Spec,
        interactive: bool,
        stdio: [RawFd; 3],
        conn: &std::os::unix::net::UnixStream,
    ) -> Served {
        // Compared in place, not copied: the spec carries the seccomp profile (hundreds of
        // names).
        let go = into_key(&mut spec);
        let taken = {
            let mut parked = self.parked.lock().unwrap();
            parked
                .iter()
                .position(|p| p.container == container && p.key == spec)
                .map(|i| parked.remove(i))
        };
        let Some(mut p) = taken else {
            return Served::NotTaken;
        };
        // The binds a fresh sandbox would resolve now, beneath the same hostile roots.
        let now = park::current_sources(&p.plan).ok();
        if now.as_ref() != Some(&p.ready) {
            tracing::debug!(%container, "pool: a bind source changed since the sandbox parked; a fresh one runs");
            p.end().finish_soon();
            return Served::NotTaken;
        }
        // Without -i a fresh sandbox's stdin is the /dev/null its pid 1 opened: a parked one
        // keeps its own the same way (the call's stdin is not passed).
        let [stdin, stdout, stderr] = stdio;
        let passed: Vec<RawFd> = if interactive {
            vec![stdin, stdout, stderr]
        } else {
            vec![stdout, stderr]
        };
        if let Err(e) = park::send_go(&p.sock, &go, &passed) {
            tracing::debug!(%container, "pool: handing over: {e}; a fresh one runs");
            p.end().finish_soon();
            return Served::NotTaken;
        }
        let pid = p.child.id() as i32;
        if !host.track(container, pid, true) {
            // Removed while we handed it over.
            let _ = p.child.kill();
        }
        let code = wait_code_or_hangup(&mut p, conn);
        host.track(container, pid, false);
        // The sandbox's namespaces come down after the answer; its slot is held until it is
        // reaped.
        // Its slot comes back when it is reaped: the container's refill is asked for then,
        // or it would find the budget still spent by this very sandbox.
        let after = AfterCall {
            done: Done {
                child: p.child,
                run: p.run,
                _slot: p.slot,
            },
            jobs: self.jobs.lock().unwrap().clone(),
            container: container.to_string(),
        };
        Served::Ran(code, after)
    }
}

fn thread_main(host: Arc<dyn Host>, jobs: Receiver<Job>) {
    let pool = host.pool();
    loop {
        match jobs.recv_timeout(Duration::from_secs(1)) {
            Ok(Job::Fill(container)) => pool.fill(&*host, &container),
            Ok(Job::Stop) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {}
        }
        pool.shrink();
    }
    let all: Vec<Parked> = std::mem::take(&mut *pool.parked.lock().unwrap());
    for p in all {
        p.end().finish();
    }
}

/// Start one parked sandbox and wait until it says it is parked.
fn park_one(host: &dyn Host, container: &str, slot: Slot) -> anyhow::Result<Parked> {
    let Started {
        mut spec,
        mut child,
        sock,
        run,
    } = host.start_parked(container)?;
    let _ = nix::sys::socket::setsockopt(
        &sock,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(PARK_TIMEOUT.as_secs() as i64, 0),
    );
    let ready = park::recv_ready(&sock);
    let _ = nix::sys::socket::setsockopt(
        &sock,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(0, 0),
    );
    // The plan for the binds' check at a call (`Parked::plan`), from the spec the engine made
    // its own plan from: this fails only where that did.
    let ready = ready.and_then(|ready| {
        cage_sandbox::Plan::from_spec(&spec, std::path::Path::new("/")).map(|plan| (ready, plan))
    });
    into_key(&mut spec);
    match ready {
        Ok((ready, plan)) => Ok(Parked {
            container: container.to_string(),
            key: spec,
            plan,
            child,
            sock,
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

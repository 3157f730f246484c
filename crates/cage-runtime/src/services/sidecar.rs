//! `cagerun broker`: one service's sandbox broker on its own, beside the service instead of
//! under `up`'s supervisor — a Kubernetes pod's sidecar, where OpenClaw's tool sandboxes are
//! made inside the pod.
//!
//! The policy is `up`'s: cage.toml → the validated model → the service's request and spec →
//! [`broker::setup`]. What differs is only what `up` would have around it: no cage user
//! namespace (each sandbox is a `cagerun exec --bundle`, rootless when this process is not
//! root), no router (so no `internet` for sandboxes: refused, never widened), and a cgroup
//! only if the caller has a writable one (else the sandbox engine's rlimits).
//!
//! DIR is shared with the service (in a pod the gateway mounts it at `/dev/.cagerun`), which
//! is hostile and can write it: the broker writes its shim copies there by temp name and
//! rename (never following what is there), re-creates its socket itself, and otherwise only
//! accepts on that socket. Its sandboxes' bundles live in a private directory.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::fcntl::{openat, OFlag};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::stat::Mode;

use super::broker::{self, Broker, Places};
use super::state::CagePaths;
use crate::config::{find_service, load_cage};
use crate::image::StoreRoot;
use crate::shim::{NAMES, SOCKET_NAME};

/// What `cagerun broker` was asked.
#[derive(Debug, Clone)]
pub struct SidecarOptions {
    pub config: PathBuf,
    pub service: String,
    /// The directory shared with the service: its socket and the shim's copies.
    pub dir: PathBuf,
    /// Where images live, for a service whose image tree is on this machine.
    pub store: StoreRoot,
}

/// How long sandboxes killed at shutdown get to be reaped before the broker exits anyway.
const REAP_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve until SIGTERM or SIGINT; then kill every sandbox started, remove the socket, 0.
pub fn run(opts: SidecarOptions) -> Result<i32> {
    let setup = load(&opts)?;
    check_dir(&opts.dir)?;
    // Blocked before any thread exists, so every thread inherits the mask and the signal
    // waits for `wait` below (a sandbox's `cagerun exec` gets a clean mask: std resets it).
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    stop.thread_block().context("blocking SIGTERM and SIGINT")?;

    let exe = crate::host::self_exe()?;
    if !crate::init::self_is_static(&exe) {
        eprintln!("cagerun broker: warning: this cagerun is not a static binary: the service's container can run its copy as `docker` only if it has the same libraries (scripts/install builds a static one)");
    }
    let (setup, cgroup) = with_limits(setup)?;
    let runs = private_dir(&setup.service)?;
    let served = serve(&opts.dir, setup, runs.clone(), exe);
    let broker = match served {
        Ok(b) => b,
        Err(e) => {
            crate::tree::remove(&runs);
            if let Some(cg) = &cgroup {
                super::cgroup::remove(&cg.dirs);
            }
            return Err(e);
        }
    };

    // Serving needs far less of this binary resident than starting did.
    crate::resident::release_startup_pages();
    let sig = stop.wait().context("waiting for SIGTERM")?;
    tracing::info!("broker: {sig:?}: stopping its sandboxes");
    // No new call first, then nothing left running.
    remove_socket(&opts.dir);
    broker.shutdown();
    let deadline = Instant::now() + REAP_TIMEOUT;
    while broker.sandboxes_running() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let left = broker.sandboxes_running();
    crate::tree::remove(&runs);
    if let Some(cg) = &cgroup {
        super::cgroup::remove(&cg.dirs);
    }
    if left > 0 {
        bail!("{left} sandboxes were still being reaped after {REAP_TIMEOUT:?}");
    }
    Ok(0)
}

/// The service's broker setup, as `up` makes it; refused before anything is made when the
/// service has no sandboxes, its sandboxes want the internet, or an image tree is missing.
fn load(opts: &SidecarOptions) -> Result<broker::Setup> {
    let paths = CagePaths::new(&opts.config, None)?;
    let cage = load_cage(&paths.config)?;
    let service = find_service(&cage, &opts.service, &paths.config)?;
    let Some(sb) = &service.sandboxes else {
        bail!(
            "service {} has no [services.{}.sandboxes] in {}: there are no sandboxes to broker",
            service.name,
            service.name,
            paths.config.display()
        );
    };
    if !sb.internet.is_empty() {
        bail!(
            "service {}: its sandboxes have `internet` in {}, which `cagerun broker` cannot give (there is no cage router beside a pod's service): remove it, and its sandboxes keep only lo",
            service.name,
            paths.config.display()
        );
    }
    let (request, root_here) = crate::bundle::broker_request(
        &paths.config,
        &paths.rootfs(),
        || opts.store.open(),
        service,
    )
    .with_context(|| format!("service {}", service.name))?;
    if !root_here {
        tracing::info!(
            "broker: service {}'s own tree is not here (its container's): its mounts come from {}",
            service.name,
            paths.config.display()
        );
    }
    let spec = cage_spec::render_sandbox(&request, crate::host::host_ids())
        .with_context(|| format!("service {}", service.name))?;
    let setup = broker::setup(&paths.cage_dir, service, &request, &spec)?
        .context("the service has no sandboxes")?;
    Ok(setup)
}

/// DIR must be a directory this process can write (it is created when missing).
fn check_dir(dir: &Path) -> Result<()> {
    use nix::unistd::{access, AccessFlags};
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    access(dir, AccessFlags::W_OK | AccessFlags::X_OK).map_err(|e| {
        anyhow::anyhow!(
            "cannot write {} ({e}): the broker puts its socket and the docker shim there",
            dir.display()
        )
    })
}

/// The cgroup the sandboxes share when one is available, said on stderr either way.
fn with_limits(
    mut setup: broker::Setup,
) -> Result<(broker::Setup, Option<super::cgroup::SidecarCgroup>)> {
    let cg = super::cgroup::prepare_sidecar_sandboxes(
        &setup.service,
        setup.memory_total,
        setup.pids_total,
    )?;
    match &cg {
        Some(cg) => {
            eprintln!(
                "cagerun broker: sandbox limits: cgroup {} (all sandboxes together: memory {} bytes, {} pids; each: its own cgroup below)",
                cg.dirs[0].display(),
                setup.memory_total,
                setup.pids_total
            );
            setup.cgroup_parent = Some(cg.parent_env.clone());
        }
        None => eprintln!(
            "cagerun broker: sandbox limits: rlimits per sandbox (no writable cgroup here; the totals of [services.{}.sandboxes] are not enforced, `max` still is)",
            setup.service
        ),
    }
    Ok((setup, cg))
}

/// A new 0700 directory of this process's for the sandboxes' bundles (their env holds the
/// service's env files' contents).
fn private_dir(service: &str) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = super::state::runtime_base();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&base)
        .with_context(|| format!("creating {}", base.display()))?;
    let dir = base.join(format!("broker-{service}-{}", std::process::id()));
    crate::tree::remove(&dir);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Put the shim in DIR, then listen there.
fn serve(dir: &Path, setup: broker::Setup, runs: PathBuf, exe: PathBuf) -> Result<Arc<Broker>> {
    let dir_fd = open_dir(dir)?;
    place_shim(&dir_fd, dir)?;
    let service = setup.service.clone();
    let broker = Broker::start(
        setup,
        Places {
            socket_dir: dir.to_path_buf(),
            runs,
        },
        exe,
        None,
    )?;
    eprintln!(
        "cagerun broker: service {service}: serving {} (the shim: {} and {})",
        dir.join(SOCKET_NAME).display(),
        dir.join(NAMES[0]).display(),
        dir.join(NAMES[1]).display()
    );
    Ok(broker)
}

fn open_dir(dir: &Path) -> Result<OwnedFd> {
    let fd = nix::fcntl::open(
        dir,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("opening {}", dir.display()))?;
    // SAFETY: just opened, owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// DIR/docker and DIR/podman: copies of this binary (0755), each written under a fresh temp
/// name (O_EXCL|O_NOFOLLOW: nothing planted is followed) and renamed over the name (which
/// replaces whatever the service left there, never writes into it).
fn place_shim(dir_fd: &OwnedFd, dir: &Path) -> Result<()> {
    use std::io::Write;
    let binary = std::fs::read("/proc/self/exe").context("reading this cagerun binary")?;
    for name in NAMES {
        let tmp = format!(".{name}.{}.tmp", std::process::id());
        let _ = nix::unistd::unlinkat(
            Some(dir_fd.as_raw_fd()),
            tmp.as_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
        let fd = openat(
            Some(dir_fd.as_raw_fd()),
            tmp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o755),
        )
        .with_context(|| format!("creating {}", dir.join(&tmp).display()))?;
        // SAFETY: just opened, owned here.
        let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
        file.write_all(&binary)
            .and_then(|()| {
                use std::os::unix::fs::PermissionsExt;
                // The umask may have taken bits off at creation.
                file.set_permissions(std::fs::Permissions::from_mode(0o755))
            })
            .with_context(|| format!("writing {}", dir.join(&tmp).display()))?;
        drop(file);
        nix::fcntl::renameat(
            Some(dir_fd.as_raw_fd()),
            tmp.as_str(),
            Some(dir_fd.as_raw_fd()),
            name,
        )
        .with_context(|| format!("placing {}", dir.join(name).display()))?;
    }
    Ok(())
}

/// Unlink the socket's name (whatever the service may have put there instead).
fn remove_socket(dir: &Path) {
    if let Ok(fd) = open_dir(dir) {
        let _ = nix::unistd::unlinkat(
            Some(fd.as_raw_fd()),
            SOCKET_NAME,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
    }
}

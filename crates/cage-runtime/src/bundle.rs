//! `cagerun bundle`: cagerun's hardened policy + an image (or a service of the cage's
//! config/cage.toml) → a standard OCI bundle (`config.json` whose root is the unpacked
//! image), which any OCI runtime (runc, crun, youki) and both of cagerun's engines run.
//!
//! Every choice (command, user, env, binds, volumes, GPU nodes and libraries, resources) is
//! cage-spec's (`compose`, then `render_sandbox`); this module looks at the host for it: the
//! image's config, the rootfs's passwd files, which mount sources and volumes exist and what
//! they resolve to, the host's GPU nodes and driver libraries, and makes the volume
//! directories a service needs.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cage_image::records;
use cage_spec::cage::{Service, ServiceRoot};
use cage_spec::compose::{self, ImageDefaults, ServiceFacts};
use cage_spec::{render_sandbox, RootfsSource, SandboxRequest};

use crate::config::{cage_dir, find_service, load_cage};
use crate::host;

/// What the image's config says about its process.
fn image_defaults(store: &cage_image::store::Store, name: &str) -> Result<ImageDefaults> {
    let rec = records::load(store, name)?;
    let digest = cage_image::Digest::parse(&rec.config)?;
    let config =
        oci_spec::image::ImageConfiguration::from_reader(&store.read_verified(&digest)?[..])
            .with_context(|| format!("reading the config of {name}"))?;
    let c = config.config().clone().unwrap_or_default();
    let mut command = c.entrypoint().clone().unwrap_or_default();
    command.extend(c.cmd().clone().unwrap_or_default());
    Ok(ImageDefaults {
        command,
        env: c
            .env()
            .clone()
            .unwrap_or_default()
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.into(), v.into()))
            .collect(),
        cwd: c.working_dir().clone().filter(|w| !w.is_empty()),
        user: c.user().clone().filter(|u| !u.is_empty()),
    })
}

/// What `cagerun bundle` writes a bundle for.
#[derive(Debug, Clone)]
pub enum BundleSource {
    /// An image in the store, unpacked under the rootfs directory.
    Image(String),
    /// A service of the cage whose config is `config`.
    Service { name: String, config: PathBuf },
}

/// A bundle to write: its source, where images' trees are, where it goes (default
/// bundles/NAME), and overrides of the command and user.
#[derive(Debug, Clone)]
pub struct BundleRequest {
    pub source: BundleSource,
    pub rootfs_dir: PathBuf,
    pub out: Option<PathBuf>,
    pub user: Option<String>,
    pub command: Vec<String>,
}

/// Write the bundle; its directory.
pub fn write(store: &cage_image::store::Store, args: &BundleRequest) -> Result<PathBuf> {
    let (name, mut spec) = match &args.source {
        BundleSource::Image(image) => {
            let rootfs = args.rootfs_dir.join(image);
            let rootfs = std::fs::canonicalize(&rootfs).with_context(|| {
                format!(
                    "{} is missing: pull or import the image first",
                    rootfs.display()
                )
            })?;
            let facts = facts(RootfsSource::Dir(rootfs), image_defaults(store, image)?);
            let req =
                compose::service_request(image, None, &args.command, args.user.as_deref(), &facts)?;
            (image.clone(), render_sandbox(&req, host::host_ids())?)
        }
        BundleSource::Service { name: svc, config } => {
            let cage = load_cage(config)?;
            let service = find_service(&cage, svc, config)?;
            let spec = render_service(
                config,
                &args.rootfs_dir,
                Some(store),
                service,
                &args.command,
                args.user.as_deref(),
            )?;
            (svc.clone(), spec)
        }
    };
    if nix::unistd::geteuid().is_root() {
        compose::map_container_root_to_nobody(&mut spec)?;
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("bundles").join(&name));
    write_config(&out, &spec)?;
    Ok(out)
}

/// `config.json` in `dir`, written whole or not at all.
pub fn write_config(dir: &Path, spec: &oci_spec::runtime::Spec) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // root.path is the rootfs's absolute, resolved path (no `rootfs` symlink in the bundle:
    // runc refuses a symlinked root), so the rootfs stays where the image was unpacked.
    let tmp = dir.join(".config.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(spec)?)?;
    std::fs::rename(&tmp, dir.join("config.json"))?;
    Ok(())
}

/// The facts of a root with no service around it.
fn facts(rootfs: RootfsSource, image: ImageDefaults) -> ServiceFacts {
    let (passwd, group) = host::passwd_files(&rootfs);
    ServiceFacts {
        subordinate: host::mapped_ownership(&rootfs),
        rootfs,
        image,
        passwd,
        group,
        env_file: Vec::new(),
        mount_sources: Vec::new(),
        volume_dirs: Vec::new(),
        gpu_nodes: Vec::new(),
        gpu_libraries: Vec::new(),
    }
}

/// The hardened spec of one service of a cage (image or rootfs or host binds, plus the
/// service's own settings); `command` and `user`, when given, override the service's.
pub fn render_service(
    config: &Path,
    rootfs_dir: &Path,
    store: Option<&cage_image::store::Store>,
    service: &Service,
    command: &[String],
    user: Option<&str>,
) -> Result<oci_spec::runtime::Spec> {
    let req = service_request(config, rootfs_dir, store, service, command, user)?;
    Ok(render_sandbox(&req, host::host_ids())?)
}

/// The request cage-spec makes of one service (what [`render_service`] renders).
pub fn service_request(
    config: &Path,
    rootfs_dir: &Path,
    store: Option<&cage_image::store::Store>,
    service: &Service,
    command: &[String],
    user: Option<&str>,
) -> Result<SandboxRequest> {
    let root = service_root(config, rootfs_dir, store, service)?;
    request_on_root(config, service, root, command, user)
}

/// The tree a service runs from and what its image's config says.
fn service_root(
    config: &Path,
    rootfs_dir: &Path,
    store: Option<&cage_image::store::Store>,
    service: &Service,
) -> Result<(RootfsSource, ImageDefaults)> {
    let cage = cage_dir(config);
    Ok(match &service.root {
        ServiceRoot::Image(reference) => {
            let image = crate::image::default_name(reference);
            let dir = rootfs_dir.join(&image);
            let dir = std::fs::canonicalize(&dir).with_context(|| {
                format!(
                    "service {}: {} is missing: `cagerun pull {reference}` first",
                    service.name,
                    dir.display()
                )
            })?;
            let store = store.context("no image store")?;
            (RootfsSource::Dir(dir), image_defaults(store, &image)?)
        }
        ServiceRoot::Rootfs(dir) => {
            let dir = cage.join(dir);
            (
                RootfsSource::Dir(std::fs::canonicalize(&dir).with_context(|| {
                    format!(
                        "service {}: rootfs {} is missing",
                        service.name,
                        dir.display()
                    )
                })?),
                ImageDefaults::default(),
            )
        }
        ServiceRoot::Host => (host::rootfs_source("host")?, ImageDefaults::default()),
    })
}

/// Where a service's own tree is on this machine (None: the host's, always here).
fn root_path(config: &Path, rootfs_dir: &Path, service: &Service) -> Option<PathBuf> {
    match &service.root {
        ServiceRoot::Image(reference) => {
            Some(rootfs_dir.join(crate::image::default_name(reference)))
        }
        ServiceRoot::Rootfs(dir) => Some(cage_dir(config).join(dir)),
        ServiceRoot::Host => None,
    }
}

/// The request of `service` as its sandbox broker sees it from beside the service rather
/// than from its supervisor (`cagerun broker`, a pod's sidecar): [`service_request`] when
/// the service's tree is on this machine; when it is not (in a pod the gateway's image is
/// its own container's), the same request on that absent tree with no image defaults. What
/// the broker takes from it (the service's mounts, volumes and tmpfs, through which sandbox
/// binds are mapped) comes from cage.toml and the cage's directories, never from the tree.
/// The second value says whether the tree was here.
pub fn broker_request(
    config: &Path,
    rootfs_dir: &Path,
    store: impl FnOnce() -> Result<cage_image::store::Store>,
    service: &Service,
) -> Result<(SandboxRequest, bool)> {
    match root_path(config, rootfs_dir, service) {
        Some(tree) if !tree.exists() => {
            let root = (RootfsSource::Dir(tree), ImageDefaults::default());
            Ok((request_on_root(config, service, root, &[], None)?, false))
        }
        _ => {
            let store = match service.root {
                ServiceRoot::Image(_) => Some(store()?),
                _ => None,
            };
            let root = service_root(config, rootfs_dir, store.as_ref(), service)?;
            Ok((request_on_root(config, service, root, &[], None)?, true))
        }
    }
}

/// The request of `service` running from `root` (what [`service_request`] makes once the
/// root is found).
fn request_on_root(
    config: &Path,
    service: &Service,
    (rootfs, image): (RootfsSource, ImageDefaults),
    command: &[String],
    user: Option<&str>,
) -> Result<SandboxRequest> {
    let cage = cage_dir(config);
    let mut facts = facts(rootfs, image);
    // The command is checked first, as it always was: a service without one is refused
    // before anything is made for it.
    compose::command(&service.name, command, Some(service), &facts.image)?;
    let owner = compose::user(
        user,
        Some(service),
        &facts.image,
        &facts.passwd,
        &facts.group,
    )?;
    if let Some(f) = &service.env_file {
        facts.env_file = host::read_env_file(&cage.join(f), "env_file")?;
    }
    for (src, _, _) in &service.mounts {
        facts.mount_sources.push(
            std::fs::canonicalize(cage.join(src)).with_context(|| {
                format!("service {}: mount source {src} is missing", service.name)
            })?,
        );
    }
    for (vol, _) in &service.volumes {
        facts.volume_dirs.push(volume_dir(&cage, vol, owner)?);
    }
    if service.gpu {
        facts.gpu_nodes = gpu_device_nodes();
        facts.gpu_libraries = gpu_driver_libraries()
            .iter()
            .map(std::fs::canonicalize)
            .collect::<std::io::Result<_>>()?;
    }
    for path in compose::devices(service, &facts.gpu_nodes)? {
        let t = std::fs::metadata(&path)
            .with_context(|| {
                format!(
                    "service {}: device {path} is missing on this host",
                    service.name
                )
            })?
            .file_type();
        if !(t.is_char_device() || t.is_block_device()) {
            bail!("service {}: {path} is not a device node", service.name);
        }
    }
    Ok(compose::service_request(
        &service.name,
        Some(service),
        command,
        user,
        &facts,
    )?)
}

/// A named volume's directory under the cage, made on first use (as root, owned by the
/// service user's id in root's range: a new, empty directory of ours, nothing to follow).
fn volume_dir(cage: &Path, volume: &str, user: cage_spec::IdPair) -> Result<PathBuf> {
    let dir = cage.join(cage_spec::service::VOLUMES_DIR).join(volume);
    if !dir.exists() {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating volume {}", dir.display()))?;
        if nix::unistd::geteuid().is_root() {
            let (uid, gid) = compose::volume_owner(user, &crate::ids::root_range()?);
            nix::unistd::chown(&dir, Some(uid.into()), Some(gid.into()))
                .with_context(|| format!("giving volume {} to the service user", dir.display()))?;
        }
    }
    Ok(std::fs::canonicalize(&dir)?)
}

/// The host's GPU device nodes (cage-spec says which names count), sorted.
fn gpu_device_nodes() -> Vec<String> {
    let mut nodes = Vec::new();
    for dir in compose::GPU_NODE_DIRS {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if compose::is_gpu_node(dir, &name) && !e.file_type().is_ok_and(|t| t.is_dir()) {
                nodes.push(format!("{dir}/{name}"));
            }
        }
    }
    nodes.sort();
    nodes
}

/// The host's NVIDIA driver libraries by the names programs load (each `.so.N` link and the
/// file it names), from the first library directory that has any.
fn gpu_driver_libraries() -> Vec<PathBuf> {
    let mut libs = Vec::new();
    for dir in compose::GPU_LIBRARY_DIRS {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if compose::is_gpu_driver_library(&name) && e.path().exists() {
                libs.push(e.path());
            }
        }
        if !libs.is_empty() {
            break;
        }
    }
    libs.sort();
    libs
}

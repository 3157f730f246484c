//! `cagerun bundle`: cagerun's hardened policy + an image (or a service of the cage's
//! config/cage.toml) → a standard OCI bundle (`config.json` whose root is the unpacked
//! image), which any OCI runtime (runc, crun, youki) and both of cagerun's engines run. The
//! policy is cage-spec's, the same as `cagerun exec`'s; the image config gives the process
//! defaults (Entrypoint, Cmd, Env, WorkingDir, User), the service overrides them.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cage_image::records;
use cage_spec::cage::{Service, ServiceRoot};

use crate::config::{cage_dir, find_service, load_cage};
use cage_spec::sandbox::DEFAULT_USER;
use cage_spec::{passwd, render_sandbox, ExtraMount, HostIds, RootfsSource, SandboxRequest};

/// What the image says about its process.
#[derive(Default)]
struct Defaults {
    command: Vec<String>,
    env: Vec<(String, String)>,
    cwd: Option<String>,
    user: Option<String>,
}

fn image_defaults(store: &cage_image::store::Store, name: &str) -> Result<Defaults> {
    let rec = records::load(store, name)?;
    let digest = cage_image::Digest::parse(&rec.config)?;
    let config =
        oci_spec::image::ImageConfiguration::from_reader(&store.read_verified(&digest)?[..])
            .with_context(|| format!("reading the config of {name}"))?;
    let c = config.config().clone().unwrap_or_default();
    let mut command = c.entrypoint().clone().unwrap_or_default();
    command.extend(c.cmd().clone().unwrap_or_default());
    Ok(Defaults {
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
            let defaults = image_defaults(store, image)?;
            let source = Source {
                name: image,
                rootfs: RootfsSource::Dir(rootfs),
                defaults,
                service: None,
                cage: Path::new("."),
            };
            (
                image.clone(),
                source.render(&args.command, args.user.as_deref())?,
            )
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
    if nix::unistd::geteuid().is_root() && !root_user(&spec) {
        // runc and crun need the container's root mapped to something (they chown to it);
        // as root the bundle maps it to the host's nobody, which owns nothing that matters
        // and which nothing in the sandbox can become (no capabilities, no_new_privs).
        map_container_root_to_nobody(&mut spec)?;
    }

    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("bundles").join(&name));
    write_config(&out, &spec)?;
    Ok(out)
}

fn root_user(spec: &oci_spec::runtime::Spec) -> bool {
    spec.process().as_ref().is_some_and(|p| p.user().uid() == 0)
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
    let cage = cage_dir(config);
    let (rootfs, defaults) = match &service.root {
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
                Defaults::default(),
            )
        }
        ServiceRoot::Host => (crate::host::rootfs_source("host")?, Defaults::default()),
    };
    Source {
        name: &service.name,
        rootfs,
        defaults,
        service: Some(service),
        cage: &cage,
    }
    .render(command, user)
}

/// Everything a bundle is made of, before the policy renders it.
struct Source<'a> {
    name: &'a str,
    rootfs: RootfsSource,
    defaults: Defaults,
    service: Option<&'a Service>,
    cage: &'a Path,
}

impl Source<'_> {
    fn render(&self, command: &[String], user: Option<&str>) -> Result<oci_spec::runtime::Spec> {
        let (name, rootfs, defaults, service) =
            (self.name, &self.rootfs, &self.defaults, self.service);
        let command = if !command.is_empty() {
            command.to_vec()
        } else if let Some(c) = service.and_then(|s| s.command.clone()) {
            c
        } else {
            defaults.command.clone()
        };
        if command.is_empty() {
            bail!("{name} has no command: give one after `--`");
        }
        let mut req = SandboxRequest::new(command, rootfs.clone());
        req.env = defaults.env.clone();
        req.cwd = defaults.cwd.clone();
        let (pw, gr) = crate::host::passwd_files(rootfs);
        let chosen = user
            .map(str::to_string)
            .or_else(|| service.and_then(|s| s.user.clone()))
            .or(defaults.user.clone());
        req.user = match chosen {
            Some(u) => passwd::resolve_user(&u, &pw, &gr)?,
            None => DEFAULT_USER,
        };
        if req.user.uid == 0 && user.is_none() {
            // The image asks for root; a cage never runs it as root.
            req.user = DEFAULT_USER;
        }
        if let Some(s) = service {
            apply_service(&mut req, s, self.cage)?;
        }
        req.subordinate = crate::host::mapped_ownership(rootfs);
        let host = HostIds {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        };
        Ok(render_sandbox(&req, host)?)
    }
}

/// The service's own settings on top of the image's.
fn apply_service(req: &mut SandboxRequest, s: &Service, cage: &Path) -> Result<()> {
    req.hostname = Some(s.name.clone());
    if let Some(w) = &s.workdir {
        req.cwd = Some(w.clone());
    }
    if let Some(f) = &s.env_file {
        req.env
            .extend(crate::host::read_env_file(&cage.join(f), "env_file")?);
    }
    req.env
        .extend(s.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    for (src, dst, ro) in &s.mounts {
        let src = std::fs::canonicalize(cage.join(src))
            .with_context(|| format!("service {}: mount source {src} is missing", s.name))?;
        req.extra_mounts.push(ExtraMount::Bind {
            src,
            dst: dst.clone(),
            ro: *ro,
        });
    }
    for (vol, dst) in &s.volumes {
        let dir = cage.join(".cagerun/volumes").join(vol);
        if !dir.exists() {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating volume {}", dir.display()))?;
            if nix::unistd::geteuid().is_root() {
                // As root the service user is root's subordinate id base+uid: the volume is
                // theirs (a new, empty directory of ours: nothing below it to follow).
                let sub = crate::ids::root_range()?;
                let (uid, gid) = (sub.uid_base + req.user.uid, sub.gid_base + req.user.gid);
                nix::unistd::chown(&dir, Some(uid.into()), Some(gid.into())).with_context(
                    || format!("giving volume {} to the service user", dir.display()),
                )?;
            }
        }
        req.extra_mounts.push(ExtraMount::Bind {
            src: std::fs::canonicalize(&dir)?,
            dst: dst.clone(),
            ro: false,
        });
    }
    let mut devices = s.devices.clone();
    if s.gpu {
        let gpus = gpu_device_nodes();
        if gpus.is_empty() {
            bail!("service {}: gpu = true, but this host has no GPU device nodes (/dev/nvidia*, /dev/dri/*): install the driver, or drop gpu", s.name);
        }
        devices.extend(gpus);
        // The driver's user-space half must match the host's kernel module: bind the host's
        // libraries (read-only) where NVIDIA's images look (/usr/local/nvidia/lib64).
        let libs = gpu_driver_libraries();
        if !libs.is_empty() {
            for lib in &libs {
                let name = lib
                    .file_name()
                    .expect("a library has a name")
                    .to_string_lossy();
                req.extra_mounts.push(ExtraMount::Bind {
                    src: std::fs::canonicalize(lib)?,
                    dst: format!("{NVIDIA_LIB_DIR}/{name}"),
                    ro: true,
                });
            }
            match req.env.iter_mut().find(|(k, _)| k == "LD_LIBRARY_PATH") {
                Some((_, v)) if v.split(':').any(|d| d == NVIDIA_LIB_DIR) => {}
                Some((_, v)) => *v = format!("{NVIDIA_LIB_DIR}:{v}"),
                None => req
                    .env
                    .push(("LD_LIBRARY_PATH".into(), NVIDIA_LIB_DIR.into())),
            }
        }
    }
    for path in devices {
        use std::os::unix::fs::FileTypeExt;
        let t = std::fs::metadata(&path)
            .with_context(|| format!("service {}: device {path} is missing on this host", s.name))?
            .file_type();
        if !(t.is_char_device() || t.is_block_device()) {
            bail!("service {}: {path} is not a device node", s.name);
        }
        req.extra_mounts.push(ExtraMount::Device { path });
    }
    for (dst, size) in &s.tmpfs {
        req.extra_mounts.push(ExtraMount::Tmpfs {
            dst: dst.clone(),
            size: *size,
        });
    }
    req.memory = s.memory.or(req.memory);
    req.pids = s.pids.or(req.pids);
    req.cpus = s.cpus;
    Ok(())
}

/// The host's GPU device nodes: NVIDIA's (/dev/nvidia*, /dev/nvidia-caps/*) and DRM's.
fn gpu_device_nodes() -> Vec<String> {
    let mut nodes = Vec::new();
    for (dir, prefix) in [
        ("/dev", "nvidia"),
        ("/dev/nvidia-caps", ""),
        ("/dev/dri", ""),
    ] {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix) && !e.file_type().is_ok_and(|t| t.is_dir()) {
                nodes.push(format!("{dir}/{name}"));
            }
        }
    }
    nodes.sort();
    nodes
}

const NVIDIA_LIB_DIR: &str = "/usr/local/nvidia/lib64";

/// The host's NVIDIA driver libraries (libcuda, libnvidia-*), by the names programs load
/// (each `.so.N` link and the file it names), from the usual library directories.
fn gpu_driver_libraries() -> Vec<PathBuf> {
    let mut libs = Vec::new();
    for dir in [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
    ] {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let driver = name.starts_with("libcuda.so")
                || name.starts_with("libnvidia-")
                || name.starts_with("libcudadebugger.so");
            if driver && name.contains(".so") && e.path().exists() {
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

fn map_container_root_to_nobody(spec: &mut oci_spec::runtime::Spec) -> Result<()> {
    use oci_spec::runtime::LinuxIdMappingBuilder;
    const NOBODY: u32 = 65534;
    let Some(linux) = spec.linux().clone() else {
        return Ok(());
    };
    let mut linux = linux;
    let add = |maps: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| -> Result<Vec<oci_spec::runtime::LinuxIdMapping>> {
        let mut maps = maps.clone().unwrap_or_default();
        if !maps.iter().any(|m| m.container_id() == 0) && !maps.iter().any(|m| m.host_id() <= NOBODY && NOBODY < m.host_id() + m.size()) {
            maps.push(LinuxIdMappingBuilder::default().container_id(0u32).host_id(NOBODY).size(1u32).build()?);
        }
        Ok(maps)
    };
    let uids = add(linux.uid_mappings())?;
    let gids = add(linux.gid_mappings())?;
    linux.set_uid_mappings(Some(uids));
    linux.set_gid_mappings(Some(gids));
    spec.set_linux(Some(linux));
    Ok(())
}

//! `cagerun image import`, `cagerun images`, `cagerun rmi`: images in the store, root
//! filesystems under the cage's `rootfs/`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use cage_image::layout::{import_oci_layout, unpack_image};
use cage_image::records::{self, ImageRecord};
use cage_image::store::Store;
use cage_image::unpack::UnpackOptions;
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct StoreArg {
    /// The image store (default: $XDG_DATA_HOME/cagerun, else ~/.local/share/cagerun).
    #[arg(long, value_name = "DIR", global = true)]
    store: Option<PathBuf>,
}

impl StoreArg {
    pub fn open(&self) -> Result<Store> {
        let root = self.store.clone().unwrap_or_else(Store::default_root);
        Ok(Store::open(&root)?)
    }
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Remove ROOTFS_DIR/NAME (as root of the mapped user namespace when the image kept its
    /// ownership through subordinate ids, which the caller alone may not delete).
    RmRootfs {
        name: String,
        #[arg(long, value_name = "DIR", default_value = "rootfs")]
        rootfs_dir: PathBuf,
    },
    /// Import an image from disk (air-gapped hosts) and unpack it to ROOTFS_DIR/NAME.
    Import {
        /// `oci:DIR[:TAG]` (an OCI image layout, as umoci and skopeo write) or
        /// `docker-archive:FILE[:TAG]` (as `docker save` writes).
        source: String,
        /// The image's name in the store and its directory under --rootfs-dir.
        #[arg(long)]
        name: String,
        /// Where root filesystems go (the cage's rootfs/).
        #[arg(long, value_name = "DIR", default_value = "rootfs")]
        rootfs_dir: PathBuf,
        #[command(flatten)]
        store: StoreArg,
    },
}

/// `oci:DIR[:TAG]` or `docker-archive:FILE[:TAG]` → (kind, path, tag). A last `:` part
/// that contains no `/` is the tag.
fn parse_source(source: &str) -> Result<(&'static str, PathBuf, Option<String>)> {
    let (kind, rest) = if let Some(r) = source.strip_prefix("oci:") {
        ("oci", r)
    } else if let Some(r) = source.strip_prefix("docker-archive:") {
        ("docker-archive", r)
    } else {
        bail!("unknown image source {source:?}: use oci:DIR[:TAG] or docker-archive:FILE[:TAG]");
    };
    Ok(match rest.rsplit_once(':') {
        Some((path, tag)) if !tag.contains('/') && !tag.is_empty() => {
            (kind, PathBuf::from(path), Some(tag.to_string()))
        }
        _ => (kind, PathBuf::from(rest), None),
    })
}

/// Unpack with the image's ownership where we can: as root shifted onto root's subordinate
/// range (image id N is host id base+N), rootless as root of a user namespace over the caller's
/// subordinate ids; otherwise every file is the caller's.
pub(crate) fn unpack(
    store: &Store,
    image: &cage_image::layout::Image,
    target: &std::path::Path,
) -> Result<()> {
    let root = nix::unistd::geteuid().is_root();
    // The parent is the cage's, made by the caller (not by a mapped helper).
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let chowned = UnpackOptions {
        chown: true,
        ..Default::default()
    };
    match (root, crate::ids::subordinate()) {
        // As root, the image's ids land in root's subordinate range (image id N is host id
        // base+N), where its sandboxes and services run: inside they are what the image says,
        // and no file of it carries a real host id. Without a range: the image's own ids.
        (true, _) => {
            let shifted = UnpackOptions {
                id_offset: crate::ids::root_range()
                    .map(|sub| (sub.uid_base, sub.gid_base))
                    .unwrap_or_default(),
                ..chowned
            };
            unpack_image(store, image, target, &shifted).map(drop)?
        }
        (false, Some(sub)) => crate::ids::as_mapped_root(&sub, || {
            unpack_image(store, image, target, &chowned)?;
            Ok(())
        })?,
        (false, None) => unpack_image(store, image, target, &UnpackOptions::default()).map(drop)?,
    }
    Ok(())
}

/// Unpack an image that is in the store into `target` and record it under `name`; `source`
/// is what it came from (a canonical reference or an import source).
fn unpack_and_record(
    store: &Store,
    name: &str,
    source: &str,
    image: &cage_image::layout::Image,
    target: &std::path::Path,
) -> Result<ImageRecord> {
    unpack(store, image, target)
        .with_context(|| format!("unpacking {source} into {}", target.display()))?;
    let rec = ImageRecord::new(store, name, source, image)?;
    records::save(store, &rec)?;
    Ok(rec)
}

/// The store name of an image reference when `pull` gets no --name: the repository's last
/// part, without tag or digest.
pub fn default_name(reference: &str) -> String {
    let repo = reference.split('@').next().unwrap_or(reference);
    let last = repo.rsplit('/').next().unwrap_or(repo);
    last.split(':').next().unwrap_or(last).to_ascii_lowercase()
}

pub fn run(cmd: ImageCommand) -> Result<()> {
    match cmd {
        ImageCommand::RmRootfs { name, rootfs_dir } => {
            records::validate_name(&name)?;
            let target = rootfs_dir.join(&name);
            if !target.exists() {
                bail!("{} does not exist", target.display());
            }
            let remove = || -> Result<()> {
                cage_image::layout::make_writable_and_remove(&target)
                    .with_context(|| format!("removing {}", target.display()))
            };
            match crate::ids::subordinate().filter(|s| crate::ids::ownership_mapped(&target, s)) {
                Some(sub) => crate::ids::as_mapped_root(&sub, remove)?,
                None => remove()?,
            }
            println!("removed {}", target.display());
            Ok(())
        }
        ImageCommand::Import {
            source,
            name,
            rootfs_dir,
            store,
        } => {
            records::validate_name(&name)?;
            let store = store.open()?;
            let (kind, path, tag) = parse_source(&source)?;
            let image = match kind {
                "oci" => import_oci_layout(&store, &path, tag.as_deref()),
                _ => cage_image::archive::import_docker_archive(&store, &path, tag.as_deref()),
            }
            .with_context(|| format!("importing {source}"))?;
            let target = rootfs_dir.join(&name);
            let rec = unpack_and_record(&store, &name, &source, &image, &target)?;
            println!(
                "{name}: {} ({} layers, {}) → {}",
                rec.manifest,
                rec.layers.len(),
                human(rec.size),
                target.display()
            );
            Ok(())
        }
    }
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// e.g. docker.io/ollama/ollama:0.12.3, ghcr.io/org/img:tag, localhost:5000/x:tag
    image: String,
    /// The name in the store and under --rootfs-dir (default: the repository's last part).
    #[arg(long)]
    name: Option<String>,
    /// Speak plain HTTP to this registry (host[:port]); this machine's own registries
    /// (localhost, 127.0.0.0/8) always are.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    insecure: Vec<String>,
    /// Where root filesystems go (the cage's rootfs/).
    #[arg(long, value_name = "DIR", default_value = "rootfs")]
    rootfs_dir: PathBuf,
    #[command(flatten)]
    store: StoreArg,
}

/// Progress bars on a terminal, a line per blob otherwise.
struct Progress {
    multi: indicatif::MultiProgress,
    bars: std::sync::Mutex<std::collections::HashMap<String, indicatif::ProgressBar>>,
    tty: bool,
}

impl cage_image::registry::PullProgress for Progress {
    fn blob_started(&self, d: &cage_image::Digest, size: u64, resumed_at: u64) {
        let short = d.hex()[..12].to_string();
        if !self.tty {
            if resumed_at == size {
                eprintln!("{short}: already in the store");
            } else if resumed_at > 0 {
                eprintln!(
                    "{short}: resuming at {} of {}",
                    human(resumed_at),
                    human(size)
                );
            } else {
                eprintln!("{short}: downloading {}", human(size));
            }
            return;
        }
        let bar = self.multi.add(indicatif::ProgressBar::new(size));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(short);
        bar.set_position(resumed_at);
        self.bars.lock().unwrap().insert(d.to_string(), bar);
    }
    fn blob_advanced(&self, d: &cage_image::Digest, bytes: u64) {
        if let Some(b) = self.bars.lock().unwrap().get(&d.to_string()) {
            b.inc(bytes);
        }
    }
    fn blob_done(&self, d: &cage_image::Digest) {
        match self.bars.lock().unwrap().remove(&d.to_string()) {
            Some(b) => b.finish(),
            None if !self.tty => eprintln!("{}: done", &d.hex()[..12]),
            None => {}
        }
    }
}

/// Bars on a terminal, a line per blob otherwise.
pub fn progress() -> std::sync::Arc<dyn cage_image::registry::PullProgress> {
    std::sync::Arc::new(Progress {
        multi: indicatif::MultiProgress::new(),
        bars: Default::default(),
        tty: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    })
}

/// A hidden sibling of `target` for work in progress (`.NAME.WHAT-PID`): built there, then
/// renamed into place.
pub(crate) fn beside(target: &std::path::Path, what: &str) -> std::path::PathBuf {
    target.with_file_name(format!(
        ".{}.{what}-{}",
        target.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ))
}

/// Pull `reference` (with progress) and unpack it to `target` (a service's rootfs).
pub fn pull_to(store: &Store, reference: &str, target: &std::path::Path) -> Result<()> {
    let name = default_name(reference);
    let (canonical, image) = cage_image::registry::pull(
        store,
        reference,
        &cage_image::registry::PullOptions::default(),
        progress(),
    )
    .with_context(|| format!("pulling {reference}"))?;
    // Unpacked beside the target and renamed into place: an interrupted unpack never
    // leaves a tree that a later `up` would take for a finished one.
    let partial = beside(target, "partial");
    let unpacked = unpack_and_record(store, &name, &canonical, &image, &partial).and_then(|_| {
        std::fs::rename(&partial, target)
            .with_context(|| format!("moving {} into place", target.display()))
    });
    if unpacked.is_err() && partial.exists() {
        crate::services::supervisor::remove_tree(&partial);
    }
    unpacked
}

pub fn pull(args: PullArgs) -> Result<()> {
    let store = args.store.open()?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| default_name(&args.image));
    records::validate_name(&name)?;
    let target = args.rootfs_dir.join(&name);
    if target.exists() {
        bail!(
            "{} already exists; remove it or pull with another --name",
            target.display()
        );
    }
    let progress = progress();
    let opts = cage_image::registry::PullOptions {
        insecure_registries: args.insecure.clone(),
        ..Default::default()
    };
    let (canonical, image) = cage_image::registry::pull(&store, &args.image, &opts, progress)
        .with_context(|| format!("pulling {}", args.image))?;
    let rec = unpack_and_record(&store, &name, &canonical, &image, &target)?;
    println!(
        "{name}: {canonical} {} ({} layers, {}) → {}",
        rec.manifest,
        rec.layers.len(),
        human(rec.size),
        target.display()
    );
    Ok(())
}

pub fn list(store: StoreArg) -> Result<()> {
    let store = store.open()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    println!(
        "{:<24} {:<19} {:>10} {:>12}",
        "NAME", "DIGEST", "SIZE", "CREATED"
    );
    for r in records::list(&store)? {
        let short = r
            .manifest
            .trim_start_matches("sha256:")
            .get(..12)
            .unwrap_or("")
            .to_string();
        println!(
            "{:<24} sha256:{short} {:>10} {:>12}",
            r.name,
            human(r.size),
            age(now.saturating_sub(r.created))
        );
    }
    Ok(())
}

pub fn remove(name: &str, store: StoreArg) -> Result<()> {
    let store = store.open()?;
    let freed = records::remove(&store, name)?;
    println!("removed {name}; freed {} of unused blobs (root filesystems under rootfs/ are the cage's: remove them yourself)", human(freed));
    Ok(())
}

pub fn human(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

fn age(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

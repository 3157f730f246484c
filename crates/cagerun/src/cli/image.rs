//! `cagerun pull`, `cagerun image import|rm-rootfs`, `cagerun images`, `cagerun rmi`.

use std::path::PathBuf;

use anyhow::Result;
use cage_runtime::image::{self, Store, StoreRoot};
use cage_runtime::progress::human;
use cage_runtime::views::ImageView;
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct StoreArg {
    /// The image store (default: $XDG_DATA_HOME/cagerun, else ~/.local/share/cagerun).
    #[arg(long, value_name = "DIR", global = true)]
    store: Option<PathBuf>,
}

impl StoreArg {
    pub fn root(&self) -> StoreRoot {
        self.store.clone().map(StoreRoot).unwrap_or_default()
    }
    pub fn open(&self) -> Result<Store> {
        self.root().open()
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

pub fn run(cmd: ImageCommand) -> Result<()> {
    match cmd {
        ImageCommand::RmRootfs { name, rootfs_dir } => {
            let target = image::remove_rootfs(&rootfs_dir, &name)?;
            println!("removed {}", target.display());
        }
        ImageCommand::Import {
            source,
            name,
            rootfs_dir,
            store,
        } => {
            let (rec, target) = image::import(&store.open()?, &source, &name, &rootfs_dir)?;
            for layer in &rec.skipped_layers {
                eprintln!(
                    "cagerun: {name}: left out the non-distributable layer {layer}: its content does not travel with the image"
                );
            }
            println!(
                "{name}: {} ({} layers, {}) → {}",
                rec.manifest,
                rec.layers.len(),
                human(rec.size),
                target.display()
            );
        }
    }
    Ok(())
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

pub fn pull(args: PullArgs) -> Result<()> {
    let store = args.store.open()?;
    let (canonical, rec, target) = image::pull(
        &store,
        &args.image,
        args.name.as_deref(),
        &args.insecure,
        &args.rootfs_dir,
    )?;
    println!(
        "{}: {canonical} {} ({} layers, {}) → {}",
        rec.name,
        rec.manifest,
        rec.layers.len(),
        human(rec.size),
        target.display()
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct ImagesArgs {
    /// Print the images as JSON (docs/json.md).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: StoreArg,
}

pub fn list(args: ImagesArgs) -> Result<()> {
    let store = args.store.open()?;
    if args.json {
        let list: Vec<ImageView> = image::list(&store)?
            .into_iter()
            .map(|r| ImageView {
                name: r.name,
                source: r.source,
                digest: r.manifest,
                config: r.config,
                layers: r.layers.len(),
                size: r.size,
                created: r.created,
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    println!(
        "{:<24} {:<19} {:>10} {:>12}",
        "NAME", "DIGEST", "SIZE", "CREATED"
    );
    for r in image::list(&store)? {
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
    let freed = image::remove(&store, name)?;
    println!("removed {name}; freed {} of unused blobs (root filesystems under rootfs/ are the cage's: remove them yourself)", human(freed));
    Ok(())
}

fn age(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

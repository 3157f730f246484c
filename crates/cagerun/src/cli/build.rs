//! `cagerun build RECIPE` and `cagerun bundle`.

use std::path::PathBuf;

use anyhow::Result;
use cage_runtime::bundle::{BundleRequest, BundleSource};
use clap::Args;

use super::image::StoreArg;

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// The recipe: name, from (a base image), run = [shell steps].
    #[arg(default_value = "config/sandbox-image.toml")]
    recipe: PathBuf,
    /// Where the tree goes: ROOTFS_DIR/NAME (the cage's rootfs/).
    #[arg(long, value_name = "DIR", default_value = "rootfs")]
    rootfs_dir: PathBuf,
    /// Speak plain HTTP to this registry (this machine's own always are).
    #[arg(long = "insecure-registry", value_name = "HOST")]
    insecure: Vec<String>,
    #[command(flatten)]
    store: StoreArg,
}

pub fn build(args: BuildArgs) -> Result<i32> {
    let store = args.store.open()?;
    let built = cage_runtime::build::build(&args.recipe, &args.rootfs_dir, &args.insecure, &store)?;
    println!("{built}");
    Ok(0)
}

#[derive(Args, Debug)]
#[command(trailing_var_arg = true)]
pub struct BundleArgs {
    /// An image in the store (`cagerun images`).
    #[arg(long, required_unless_present = "service", conflicts_with = "service")]
    image: Option<String>,
    /// A service of the cage's config (its image, command, env, mounts, volumes, tmpfs,
    /// resources); the cage is the directory holding config/.
    #[arg(long)]
    service: Option<String>,
    /// The cage config, with --service.
    #[arg(long, value_name = "FILE", default_value = "config/cage.toml")]
    config: PathBuf,
    /// Where images' root filesystems are (ROOTFS_DIR/NAME).
    #[arg(long, value_name = "DIR", default_value = "rootfs")]
    rootfs_dir: PathBuf,
    /// The bundle directory (default: bundles/NAME).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// UID[:GID] or NAME[:GROUP] (default: the service's or image's user; 1000 for root).
    #[arg(long, short = 'u')]
    user: Option<String>,
    #[command(flatten)]
    store: StoreArg,
    /// The command, instead of the service's or the image's.
    #[arg(value_name = "CMD")]
    command: Vec<String>,
}

pub fn bundle(args: BundleArgs) -> Result<()> {
    let store = args.store.open()?;
    let source = match (args.image, args.service) {
        (Some(image), _) => BundleSource::Image(image),
        (None, Some(name)) => BundleSource::Service {
            name,
            config: args.config,
        },
        (None, None) => anyhow::bail!("name an --image or a --service"),
    };
    let out = cage_runtime::bundle::write(
        &store,
        &BundleRequest {
            source,
            rootfs_dir: args.rootfs_dir,
            out: args.out,
            user: args.user,
            command: args.command,
        },
    )?;
    println!("{}", out.display());
    Ok(())
}

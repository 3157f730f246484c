//! `cagerun broker`: one service's sandbox broker on its own (a Kubernetes pod's sidecar),
//! serving DIR/docker.sock with the cage's policy until SIGTERM.

use std::path::PathBuf;

use anyhow::Result;
use cage_runtime::services::sidecar::{self, SidecarOptions};
use clap::Args;

use super::image::StoreArg;

#[derive(Args, Debug)]
pub struct BrokerArgs {
    /// The cage's config; the cage is the directory holding config/ (its workspace, volumes
    /// and sandbox image trees are looked for where the cage names them).
    #[arg(long, value_name = "FILE", default_value = "config/cage.toml")]
    config: PathBuf,
    /// The service whose `[services.NAME.sandboxes]` this broker serves.
    #[arg(long, value_name = "NAME")]
    service: String,
    /// The directory shared with the service (mounted there at /dev/.cagerun, first on its
    /// PATH): the broker writes docker.sock and the shim (docker, podman) into it.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    #[command(flatten)]
    store: StoreArg,
}

pub fn run(args: BrokerArgs) -> Result<i32> {
    sidecar::run(SidecarOptions {
        config: args.config,
        service: args.service,
        dir: args.dir,
        store: args.store.root(),
    })
}

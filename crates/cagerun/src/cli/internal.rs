//! The hidden verbs the engine re-executes this binary for: `holder`, `monitor`, `init`.
//! The engine writes their arguments when it spawns them (`services::holder_client`,
//! `services::supervisor`); they are parsed here into the engine's typed options.

use std::path::PathBuf;

use clap::Args;

#[derive(Args, Debug)]
pub struct HolderArgs {
    /// The cage subnet's third octet (10.89.N.0/24).
    #[arg(long)]
    subnet: u8,
    /// The cage's id (only so that `ps` on the host says whose holder this is).
    #[arg(long)]
    cage: Option<String>,
    /// Some service may get internet: the router forwards, and its nft table starts empty
    /// (internet off) until the supervisor names who may use the uplink.
    #[arg(long)]
    internet: bool,
}

impl From<HolderArgs> for cage_runtime::holder::HolderOptions {
    fn from(a: HolderArgs) -> Self {
        Self {
            subnet: a.subnet,
            cage: a.cage,
            internet: a.internet,
        }
    }
}

#[derive(Args, Debug)]
pub struct MonitorArgs {
    #[arg(long)]
    id: String,
    #[arg(long)]
    bundle: PathBuf,
    /// libcontainer's state directory.
    #[arg(long)]
    state_root: PathBuf,
    /// The holder, whose user namespace the container lives in.
    #[arg(long)]
    holder: i32,
    #[arg(long)]
    log: PathBuf,
    /// Rotate the log (to LOG.1) when it grows past this many bytes.
    #[arg(long, default_value_t = 8 << 20)]
    log_max: u64,
}

impl From<MonitorArgs> for cage_runtime::monitor::MonitorOptions {
    fn from(a: MonitorArgs) -> Self {
        Self {
            id: a.id,
            bundle: a.bundle,
            state_root: a.state_root,
            holder: a.holder,
            log: a.log,
            log_max: a.log_max,
        }
    }
}

#[derive(Args, Debug)]
pub struct EgressProxyArgs {
    /// An upstream resolver (ADDR:PORT) allowed names are looked up at; repeated.
    #[arg(long = "dns")]
    dns: Vec<std::net::SocketAddrV4>,
}

impl From<EgressProxyArgs> for cage_runtime::egress::EgressOptions {
    fn from(a: EgressProxyArgs) -> Self {
        Self {
            upstream_dns: a.dns,
        }
    }
}

//! cagerun: a rootless, daemonless runtime for the OpenClaw gateway, its model server, and a
//! throwaway sandbox for every command an agent runs.
//!
//! This binary parses arguments (`cli/`, one module per verb group), calls the engine
//! (`cage_runtime`) and prints; exit codes come from one place, [`cage_runtime::error`].

mod cli;

use std::process::ExitCode;

use cagerun::exit;
use clap::{CommandFactory, Parser, Subcommand};

use cli::{
    broker, build, docs, egress, exec, generate, host, image, internal, login, model, observe,
    runtime, services,
};

#[derive(Parser)]
#[command(
    name = "cagerun",
    version,
    about = "Rootless sandboxes and services for the OpenClaw agent stack"
)]
struct Cli {
    /// Say what cagerun does (which limits mechanism, which mounts); CAGERUN_LOG=debug for more.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one command in a throwaway sandbox: no network, read-only system, only the
    /// workspace writable, no privileges.
    Exec(exec::ExecArgs),
    /// Print the OCI runtime spec `exec` would run with these flags (a bundle's config.json).
    Spec(exec::ExecArgs),
    /// Pull an image from a registry into the store and unpack it to ROOTFS_DIR/NAME.
    Pull(image::PullArgs),
    /// Check credentials against a registry and file them for pulls of its private images.
    Login(login::LoginArgs),
    /// Remove a registry's credentials filed by `cagerun login`.
    Logout(login::LogoutArgs),
    /// Ollama models: pull (Ollama's registry protocol), ls, rm — in Ollama's own layout.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Build an image tree from a recipe (a base image and RUN steps, run as root of a
    /// user namespace with the host's network): e.g. the agent's sandbox image.
    Build(build::BuildArgs),
    /// Write an OCI bundle (config.json + rootfs) for an image, with cagerun's policy.
    Bundle(build::BundleArgs),
    /// Images: import from disk (air-gapped hosts).
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// List the images in the store (name, digest, size, age).
    Images(image::ImagesArgs),
    /// Remove an image from the store and delete the blobs no other image uses.
    Rmi {
        name: String,
        #[command(flatten)]
        store: image::StoreArg,
    },
    /// Check a cage's config/cage.toml (services, ports, dependencies) and say what is wrong.
    Check {
        /// The file (default: config/cage.toml).
        #[arg(default_value = "config/cage.toml")]
        file: std::path::PathBuf,
    },
    /// What on this host helps or stops sandboxes (user namespaces, seccomp, Landlock,
    /// cgroup delegation), with the fix for each problem.
    Doctor,
    /// (root) Delegate a cgroup v1 subtree to a user, so their sandboxes get memory and pids
    /// limits through cgroups instead of rlimits. Once per boot.
    SetupCgroups(host::SetupArgs),
    /// Start the cage's services (config/cage.toml) under a supervisor; foreground unless -d.
    Up(services::UpArgs),
    /// Stop the cage (or the running cage NAME): SIGTERM, a grace period, SIGKILL; remove its
    /// network, cgroups and state.
    Down(services::DownArgs),
    /// This user's running cages: name, services, uptime, directory.
    Ls(observe::LsArgs),
    /// One service's resolved settings (root, command, user, mounts, ports, resources) and
    /// live state.
    Inspect(observe::InspectArgs),
    /// Stream a running cage's service starts, exits, restarts and health changes.
    Events(observe::EventsArgs),
    /// The cage's services: state, pid, uptime, restarts, health, ports.
    Ps(services::PsArgs),
    /// What the cage's services wrote (stdout and stderr).
    Logs(services::LogsArgs),
    /// Restart one service of a running cage.
    Restart(services::RestartArgs),
    /// Internet mode, live: `on` gives services with `internet = true` a way out through the
    /// cage's NAT uplink and list services their names, `off` takes it away (and cuts live
    /// connections); `allow|deny SERVICE ENTRY` edit a list.
    Internet(services::InternetArgs),
    /// The egress audit log: every lookup and connection of `internet = [...]` services and
    /// sandboxes, with its verdict, bytes and duration.
    Egress(egress::EgressArgs),
    /// Run a one-shot job of the cage (an `on_demand` or `once` service) with ARGS appended
    /// to its command: attached to this terminal, in the sandbox engine, no network.
    Run(services::RunArgs),
    /// One-shot OpenClaw CLI (onboard, channels add, doctor) with a writable config:
    /// `cagerun run cli -- ARGS`.
    Cli(services::CliArgs),
    /// Print a shell completion script (bash, zsh, fish).
    Completion(docs::CompletionArgs),
    /// Print a manual page (roff), or write them all with --out DIR.
    Man(docs::ManArgs),
    /// The OCI runtime containerd, Kubernetes (a RuntimeClass) and podman call, runc's
    /// command line (create, start, state, kill, delete, exec, ps, pause, resume, features,
    /// update); the binary also answers to the name `cagerun-runc` for engines that take one
    /// executable path.
    Runtime {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Serve one service's tool sandboxes on its own (a Kubernetes pod's sidecar): the
    /// docker shim's socket and the shim itself in DIR, until SIGTERM.
    Broker(broker::BrokerArgs),
    /// Write files that run the cage under another manager: `generate systemd` (a user unit).
    #[command(subcommand)]
    Generate(generate::GenerateCommand),
    /// The cage for another platform: `export kube` (Kubernetes manifests, same policy).
    #[command(subcommand)]
    Export(cli::export::ExportCommand),
    /// (internal) The cage's user and network namespace holder.
    #[command(hide = true)]
    Holder(internal::HolderArgs),
    /// (internal) The egress resolver and proxy of `internet = [...]` lists.
    #[command(hide = true)]
    EgressProxy(internal::EgressProxyArgs),
    /// (internal) pid 1 of a service container: forwards signals, reaps orphans.
    #[command(hide = true)]
    Init {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// (internal) Runs one container with libcontainer and watches it.
    #[command(hide = true)]
    Monitor(internal::MonitorArgs),
}

fn main() -> ExitCode {
    // Inside a service with sandboxes, this binary is also its `docker` and `podman` (the
    // broker's shim).
    if cage_runtime::shim::invoked_as_shim() {
        return ExitCode::from(cage_runtime::shim::main().clamp(0, 255) as u8);
    }
    // The OCI runtime of containerd and podman, which run one executable path.
    if runtime::invoked_as_runtime() {
        return runtime::main(std::env::args_os().collect());
    }
    // `cagerun exec SVC -- CMD` (into a running service) beside `cagerun exec [FLAGS] -- CMD`.
    let argv: Vec<String> = std::env::args().collect();
    if let Some((config, service, command)) = exec::parse_enter(&argv) {
        return exit(cage_runtime::services::enter::run(config, service, command));
    }
    let cli = Cli::parse();
    match std::env::var("CAGERUN_LOG") {
        Ok(spec) => cagerun::log_filtered(&spec),
        Err(_) if cli.verbose => cagerun::log_verbose(),
        Err(_) => {}
    }

    let result = match cli.command {
        Command::Exec(args) => exec::run(args),
        Command::Spec(args) => exec::print_spec(args).map(|()| 0),
        Command::SetupCgroups(args) => host::setup_cgroups(args).map(|()| 0),
        Command::Doctor => host::doctor(),
        Command::Check { file } => host::check(&file),
        Command::Image(cmd) => image::run(cmd).map(|()| 0),
        Command::Pull(args) => image::pull(args).map(|()| 0),
        Command::Login(args) => login::login(args).map(|()| 0),
        Command::Logout(args) => login::logout(args).map(|()| 0),
        Command::Bundle(args) => build::bundle(args).map(|()| 0),
        Command::Build(args) => build::build(args),
        Command::Model(cmd) => model::run(cmd).map(|()| 0),
        Command::Images(args) => image::list(args).map(|()| 0),
        Command::Rmi { name, store } => image::remove(&name, store).map(|()| 0),
        Command::Up(args) => services::up(args),
        Command::Down(args) => services::down(args),
        Command::Ps(args) => services::ps(args),
        Command::Ls(args) => observe::ls(args),
        Command::Inspect(args) => observe::inspect(args),
        Command::Events(args) => observe::events(args),
        Command::Completion(args) => docs::completion(args, Cli::command()),
        Command::Man(args) => docs::man(args, Cli::command()),
        Command::Logs(args) => services::logs(args),
        Command::Restart(args) => services::restart(args),
        Command::Internet(args) => services::internet(args),
        Command::Egress(args) => egress::egress(args),
        Command::Run(args) => services::run(args),
        Command::Cli(args) => services::cli(args),
        Command::Generate(cmd) => generate::run(cmd),
        Command::Runtime { args } => {
            let argv = std::iter::once(runtime::RUNTIME_NAME.into()).chain(args);
            return runtime::main(argv.collect());
        }
        Command::Broker(args) => broker::run(args),
        Command::Export(cmd) => cli::export::run(cmd),
        Command::Holder(args) => cage_runtime::holder::run(args.into()).map(|()| 0),
        Command::EgressProxy(args) => cage_runtime::egress::run(args.into()).map(|()| 0),
        Command::Monitor(args) => cage_runtime::monitor::run(args.into()),
        Command::Init { command } => cage_runtime::init::run(command),
    };
    exit(result)
}

//! cage-runtime: cagerun's engine. The `cagerun` binary parses arguments and prints; this
//! library does: it runs a cage's services under a supervisor, one sandbox per tool call
//! through the broker, and keeps the cage's state on disk. Policy is cage-spec's (the engine
//! asks, never re-decides); the kernel work is cage-sandbox's (namespaces, mounts, seccomp),
//! cage-net's (veth, bridge, nftables) and cage-image's (store, layers), each driven by a
//! typed request.
//!
//! Processes, as `ps` shows them:
//! - the **supervisor** ([`services::supervisor`]): one per cage; starts, watches, restarts
//!   and stops the services, forwards published ports ([`services::forward`]), probes health
//!   ([`services::health`]), answers the control socket ([`services::control`]);
//! - the **holder** ([`holder`]): holds the cage's user namespace and its router network
//!   namespace, makes each service's network namespace and veth;
//! - a **monitor** per container ([`monitor`]), like podman's conmon: runs it with
//!   libcontainer, keeps its log, reports its exit;
//! - [`init`]: pid 1 inside a service container;
//! - the **broker** ([`services::broker`]) inside the supervisor and the `docker` **shim**
//!   ([`shim`]) inside a service: the agent's tool calls become fresh sandboxes.
//!
//! On disk: [`services::state`] (the cage's runtime directory and record), [`config`] (the
//! cage.toml and its `.env`), [`credentials`] (registry logins), [`image`] and [`build`]
//! (root filesystems), [`bundle`] (OCI bundles). On pure cgroup v2, [`systemd`] gets `up`
//! and `exec` a delegated cgroup (a transient scope over D-Bus) where they start from one
//! they cannot divide. Messages between the processes are typed in [`proto`]; the errors users hit are
//! typed in [`error`].

pub mod build;
pub mod bundle;
pub mod cgroup_setup;
pub mod config;
pub mod credentials;
pub mod doctor;
mod dotenv;
pub mod egress;
pub mod error;
pub mod holder;
pub mod host;
pub mod ids;
pub mod image;
pub mod init;
pub mod ipc;
pub mod models;
pub mod monitor;
pub mod oci_runtime;
pub mod progress;
pub mod proto;
pub mod resident;
pub mod sandbox;
pub mod services;
pub mod shim;
pub mod systemd;
pub mod tree;
pub mod views;

pub use error::Error;

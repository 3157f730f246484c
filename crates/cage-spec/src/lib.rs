//! The cage policy model.
//!
//! What a user asks for (`cagerun exec` flags today, `cage.toml` later) is validated here
//! into a [`sandbox::SandboxRequest`] and rendered into an OCI runtime [`oci_spec::runtime::Spec`].
//! Every hardening default is written once, in this crate; the engines only consume the `Spec`.
//!
//! Pure: no syscalls, no file I/O. Callers read files and pass their contents in (enforced
//! by `clippy.toml`'s disallowed methods).
//!
//! | decision | module |
//! |---|---|
//! | a sandbox request → OCI `Spec` (namespaces, mounts, ids, limits, hardening) | [`sandbox`] |
//! | the seccomp allow-list | [`seccomp`] |
//! | a cage service → a request (command, user, env, binds, volumes, GPU, resources) | [`compose`] |
//! | a rendered service wired into its cage (netns, cgroup, hosts, init, broker) | [`service`] |
//! | a service's life: states, health, dependencies, restarts and backoff, stop order | [`lifecycle`] |
//! | the resolver file of a service with internet | [`resolver`] |
//! | egress by name: allowlists, the resolver's and the proxy's decisions | [`egress`] |
//! | what cagerun adds to another engine's bundle (`cagerun runtime`) | [`engine_layer`] |
//! | cage.toml, `${VAR}`, `.env` files | [`cage`], [`interpolate`], [`envfile`] |
//! | build recipes and the build step's policy | [`build`] |
//! | the docker CLI OpenClaw sends, judged for the broker | [`docker`] |
//! | users and groups in a rootfs | [`passwd`] |
//! | a cage as a systemd user service (`cagerun generate systemd`) | [`systemd_unit`] |
//! | sizes, annotations, errors | [`size`], [`annotations`], [`error`] |

pub mod annotations;
pub mod build;
pub mod cage;
pub mod compose;
pub mod docker;
pub mod egress;
pub mod engine_layer;
pub mod envfile;
pub mod error;
pub mod interpolate;
pub mod lifecycle;
pub mod passwd;
pub mod resolver;
pub mod sandbox;
pub mod seccomp;
pub mod service;
pub mod size;
pub mod systemd_unit;

pub use annotations::{
    BENEATH_ANNOTATION_PREFIX, FILE_ANNOTATION_PREFIX, SYMLINK_ANNOTATION_PREFIX,
};
pub use error::SpecError;
pub use sandbox::{
    keep_id_map, render_sandbox, root_id_map, ExtraMount, HostIds, IdPair, NetMode, RootfsSource,
    SandboxRequest, SubordinateIds,
};

//! The cage policy model.
//!
//! What a user asks for (`cagerun exec` flags today, `cage.toml` later) is validated here
//! into a [`sandbox::SandboxRequest`] and rendered into an OCI runtime [`oci_spec::runtime::Spec`].
//! Every hardening default is written once, in this crate; the engines only consume the `Spec`.
//!
//! Pure: no syscalls, no file I/O. Callers read files and pass their contents in.

pub mod annotations;
pub mod build;
pub mod cage;
pub mod compose;
pub mod docker;
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

pub use annotations::{
    BENEATH_ANNOTATION_PREFIX, FILE_ANNOTATION_PREFIX, SYMLINK_ANNOTATION_PREFIX,
};
pub use error::SpecError;
pub use sandbox::{
    keep_id_map, render_sandbox, root_id_map, ExtraMount, HostIds, IdPair, NetMode, RootfsSource,
    SandboxRequest, SubordinateIds,
};

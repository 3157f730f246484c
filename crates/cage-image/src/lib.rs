//! OCI images for cagerun, without Docker and without root.
//!
//! - [`auth`]: registry credentials files (auth.json, Docker's config.json) and
//!   `WWW-Authenticate` challenges, parsed and edited in memory.
//! - [`digest`]: `sha256:<hex>` digests and verification while reading.
//! - [`store`]: a content-addressed blob store; nothing enters it unverified, partial
//!   downloads resume.
//! - [`layout`]: OCI image layouts on disk (`oci:DIR[:tag]`): index → manifest → config and
//!   layers.
//! - [`unpack`]: applying layers to a root filesystem as an unprivileged user, with
//!   whiteouts, and with no way for an entry to write outside the target; `sparse`
//!   writes the sparse files of a layer; `targuard` refuses oversized tar metadata entries
//!   before the tar reader buffers them.

pub mod archive;
pub mod auth;
pub mod compression;
pub mod digest;
pub mod error;
pub mod layout;
pub mod models;
pub mod records;
pub mod registry;
mod sparse;
pub mod store;
mod targuard;
pub mod unpack;

pub use digest::Digest;
pub use error::ImageError;

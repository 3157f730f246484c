//! nftables: every table cagerun makes, and the one way `nft` is run.
//!
//! - [`rules`]: the tables as typed documents (the `nftables` crate's schema), pure: the
//!   router's `cagerun` (which services may use the uplink), rootless `cagerun-guard` (the host
//!   is never reachable through slirp4netns), root's `cagerun-<CAGE>` in the host's namespace
//!   (masquerade out, nothing in to the host).
//! - [`nft`]: runs `nft -j` with one document, as the caller, as its namespace's root, or
//!   inside the router namespace by descriptor.
//! - [`guard`]: the rootless guard's table and the thread keeping its host addresses current
//!   ([`guard::HostGuard::start`]; dropping it is the teardown).
//!
//! Setup and teardown twins: the router table lives and dies with the router namespace; the
//! guard with its [`guard::HostGuard`] and the namespace; the host table is made and removed
//! by [`crate::network::host_veth`] ([`rules::host_table`] / [`rules::delete_table`]).

pub mod guard;
pub mod nft;
pub mod rules;

/// An nft document ([`rules`] builds them, [`nft::apply`] applies them), so callers need not
/// name the `nftables` crate.
pub use nftables::schema::Nftables;

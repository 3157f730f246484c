//! Links, addresses, routes and namespaces: the kernel's network objects a cage is made of.
//!
//! - [`netns`]: network namespaces held by descriptor (create, enter, run within), and the
//!   router namespace opened from outside through the holder.
//! - [`netlink`]: rtnetlink verbs (veth, bridge, MTU, addresses, routes, the local table) and
//!   the host's address changes.
//! - [`host_veth`]: as root, the uplink veth between the host and the router namespace, with
//!   its host table: [`host_veth::setup`] / [`host_veth::teardown`].
//! - [`slirp4netns`]: rootless, the user-mode uplink's arguments and answers (the engine runs
//!   it as its own child).
//! - [`resolv`]: which nameservers a service with internet is told, by uplink.

pub mod host_veth;
pub mod netlink;
pub mod netns;
pub mod resolv;
pub mod slirp4netns;

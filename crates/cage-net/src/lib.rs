//! The cage's private network: one router network namespace with a bridge, one network
//! namespace per service with a veth into it, addresses from the cage's subnet, a hosts file
//! naming the services. Everything lives in namespaces the cage owns; only internet mode as
//! root adds to the host's network (a veth and an nft table, removed on `down`).
//!
//! Each module does exactly what a typed request says; deciding when is the engine's.
//!
//! | kernel / tool mechanism | module |
//! |---|---|
//! | network namespaces (by descriptor; the router's, from outside) | [`network::netns`] |
//! | rtnetlink: links, veth, bridge, addresses, routes, address changes | [`network::netlink`] |
//! | the root uplink: host veth + host nft table (setup / teardown) | [`network::host_veth`] |
//! | the rootless uplink: slirp4netns's arguments and answers | [`network::slirp4netns`] |
//! | a service's resolv.conf, by uplink | [`network::resolv`] |
//! | nftables tables (typed documents, pure) | [`firewall::rules`] |
//! | running `nft -j` (as the caller, as namespace root, in the router namespace) | [`firewall::nft`] |
//! | the rootless host guard kept current | [`firewall::guard`] |
//! | the host tools' lookup (`nft`, `slirp4netns`) | [`tools`] |
//! | egress by name: the resolver and proxy of `internet = [...]` services | [`egress`] |
//! | names and addresses (pure) | [`topology`] |
//! | /etc/hosts (pure) | [`hosts`] |

pub mod egress;
pub mod error;
pub mod firewall;
pub mod hosts;
pub mod network;
pub mod tools;
pub mod topology;

pub use error::{Error, Result};

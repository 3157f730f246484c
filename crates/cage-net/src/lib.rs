//! The cage's private network: one router network namespace with a bridge, one network
//! namespace per service with a veth into it, addresses from the cage's subnet, a hosts file
//! naming the services. Everything lives in namespaces the cage owns; only internet mode as
//! root adds to the host's network (a veth and an nft table, removed on `down`).
//!
//! `netlink` talks rtnetlink in the calling thread's current namespace, `netns` creates and
//! enters namespaces, `topology` decides names and addresses (no syscalls), `hosts` renders
//! /etc/hosts and `nft` internet mode's rules (both write nothing).

pub mod error;
pub mod hosts;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod topology;

pub use error::{Error, Result};

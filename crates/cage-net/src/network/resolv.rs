//! The resolver file of a service with internet, as cage-spec's `resolver` decides it from
//! the host's resolver files and addresses, which this module reads.

use cage_spec::resolver::{self, HOST_FILES};

use crate::topology;

/// Which uplink the cage has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Slirp4netns,
    HostVeth,
}

/// The resolver file for a service reaching out `via` (reads the host's files and addresses).
pub fn resolv_conf(via: Via) -> String {
    let (via, local) = match via {
        Via::Slirp4netns => (
            resolver::Via::Slirp4netns {
                dns: topology::SLIRP_DNS,
            },
            Vec::new(),
        ),
        Via::HostVeth => (
            resolver::Via::HostVeth,
            super::netlink::local_addresses().unwrap_or_default(),
        ),
    };
    resolver::resolv_conf(via, &local, |path| {
        debug_assert!(HOST_FILES.contains(&path));
        std::fs::read_to_string(path).unwrap_or_default()
    })
}

//! Pod networking, as Kata does it: moatd creates the pod's network
//! namespace, the CNI plugins plumb it (a veth `eth0` with the pod's IP),
//! and a TAP device in the same namespace is joined to `eth0` by tc
//! redirect both ways. moat-vmm backs the guest NIC with the TAP, and the
//! guest takes `eth0`'s MAC and IP, so the pod's traffic reaches the guest
//! unchanged. [`capability_args`] maps the pod's CRI fields (hostPorts,
//! bandwidth, DNS) to the CNI capability arguments plugins ask for.

pub mod capability_args;
pub mod cni;
pub mod netns;
pub mod tap;

pub use cni::{CniError, CniNetwork, CniResult};

/// The pod's interface the CNI plugins create in its network namespace.
pub const POD_IFNAME: &str = "eth0";
pub use netns::NetNs;

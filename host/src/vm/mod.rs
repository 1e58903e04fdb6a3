//! The pod's microVM as moatd sees it: a `moat-vmm` process started in the
//! pod's network namespace, its control socket, and its agent.
//!
//! - [`launch`]: spawning the VMM and waiting for its agent.
//! - [`control`]: the VMM's line-delimited JSON control API.
//! - [`cgroup`]: the cgroup each VMM runs in, under the pod's parent.
//! - [`volumes`]: the pod's volumes, shared live over virtio-fs by its virtiofsd.

pub mod cgroup;
pub mod control;
pub mod launch;
pub mod volumes;

pub use control::ControlClient;
pub use launch::{VmHandle, VmPaths, VmSpec};

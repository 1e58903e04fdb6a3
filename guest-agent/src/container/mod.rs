//! The container engine: OCI spec → plan (in the agent), and the init stage
//! that carries the plan out in a re-executed, single-threaded copy of the
//! agent binary (namespaces, rootfs, pivot_root, capabilities, seccomp,
//! credentials, exec). Split like youki's libcontainer, one job per module.

pub mod capabilities;
pub mod init;
pub mod launch;
pub mod namespaces;
pub mod oci_runtime;
pub mod rootfs;
pub mod seccomp;
pub mod spec;
pub mod sync;

//! Pod sandboxes: each one a microVM with its own network namespace, or,
//! with an `oci` handler, a native pod on the host (`native.rs`: its agent).
//!
//! - [`record`]: what is stored about a sandbox (survives moatd restarts).
//! - [`sizing`]: the VM size from the pod's resources.
//! - [`manager`]: the records, status, list, and recovery at start; the
//!   verbs beside it: `run.rs`, `stop.rs` (stop and remove), `validate.rs`.
//! - [`locks`]: the one lock per pod that pod and container operations share.
//! - [`port_forward`]: a connection to a port on the pod's localhost.
//! - [`names`]: a pod's name held by one sandbox until it is removed.

pub mod locks;
pub mod manager;
pub mod names;
pub(crate) mod native;
pub mod port_forward;
pub mod record;
mod run;
pub mod sizing;
mod stop;
mod validate;

pub use locks::PodLocks;
pub use manager::{PodError, Pods};
pub use record::{SandboxRecord, SandboxState};
pub use validate::VM_PRIVILEGED;

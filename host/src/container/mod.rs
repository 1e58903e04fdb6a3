//! Containers inside pod VMs.
//!
//! - [`record`]: what is stored about a container (survives moatd restarts).
//! - [`spec`]: CRI container config + image config → OCI runtime spec.
//! - [`seccomp`]: the seccomp profile CRI asks for, as an OCI profile:
//!   Docker-format profiles and RuntimeDefault's allow-list tables.
//! - [`mounts`]: host paths a container mounts, copied into the guest.
//! - [`io`]: process output into CRI logs or ExecSync answers.
//! - [`manager`]: the core the verbs share (records, per-pod lock, agent
//!   channels, open logs); then one file per CRI verb: [`create`],
//!   [`start`], [`stop`], [`remove`], [`exec`] (a process started for an
//!   exec), [`exec_sync`], [`update`],
//!   [`log_reopen`], [`stats`] (ContainerStats and process counts); and
//!   [`monitor`] (a running container's output and exit), [`pod_hooks`]
//!   (its pod stops or goes), [`recover`] (after a restart, reconciled
//!   with the guest and the VMM), [`slots`] (the VM's image slots).

mod create;
mod devices;
pub mod exec;
mod exec_sync;
pub mod io;
mod log_reopen;
pub mod manager;
mod monitor;
pub mod mounts;
mod pod_hooks;
pub mod record;
mod recover;
mod remove;
pub mod seccomp;
mod slots;
pub mod spec;
mod start;
mod stats;
mod stop;
#[cfg(test)]
mod tests;
mod update;

pub use exec::{Attached, ExecOptions, ExecProcess};
pub use exec_sync::EXEC_SYNC_OUTPUT_CAP;
pub use manager::Containers;
pub use record::{ContainerRecord, ContainerState};
pub use stats::Usage;

use crate::store::StoreError;

/// Why a container operation failed; maps onto gRPC codes.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// Bad request (InvalidArgument); names the field.
    #[error("{0}")]
    Invalid(String),
    /// No such container (NotFound).
    #[error("container {0:?} not found")]
    NotFound(String),
    /// A container by that name exists (AlreadyExists).
    #[error("{0}")]
    Exists(String),
    /// Cannot be done in the current state (FailedPrecondition).
    #[error("{0}")]
    Precondition(String),
    /// Out of a per-pod resource (ResourceExhausted).
    #[error("{0}")]
    Exhausted(String),
    /// Took too long (DeadlineExceeded).
    #[error("{0}")]
    Timeout(String),
    /// The operation failed (Internal).
    #[error("{0}")]
    Failed(String),
    /// The operation failed on an error of its own (Internal); keeps it.
    #[error("{what}")]
    Caused {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: crate::Cause,
    },
    /// The state store failed (Internal).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The pod's agent could not be reached (Internal).
    #[error(transparent)]
    Agent(#[from] crate::agent::AgentError),
}

impl ContainerError {
    /// Wraps an error while doing `what` (for `map_err`).
    pub fn caused<E: Into<crate::Cause>>(what: impl Into<String>) -> impl FnOnce(E) -> Self {
        let what = what.into();
        move |e| Self::Caused {
            what,
            source: e.into(),
        }
    }

    /// An agent error, keeping its meaning: the guest's InvalidArgument
    /// (e.g. a spec it refuses) stays InvalidArgument.
    pub fn from_agent(what: &str, s: tonic::Status) -> Self {
        let msg = format!("{what}: {}", s.message());
        match s.code() {
            tonic::Code::InvalidArgument => Self::Invalid(msg),
            tonic::Code::NotFound => Self::Failed(msg),
            tonic::Code::FailedPrecondition => Self::Precondition(msg),
            tonic::Code::DeadlineExceeded => Self::Timeout(msg),
            _ => Self::Failed(msg),
        }
    }
}

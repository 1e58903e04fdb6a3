//! Containers inside pod VMs.
//!
//! - [`record`]: what is stored about a container (survives moatd restarts).
//! - [`spec`]: CRI container config + image config → OCI runtime spec.
//! - [`seccomp`]: the seccomp profile CRI asks for, as an OCI profile.
//! - [`mounts`]: host paths a container mounts, copied into the guest.
//! - [`io`]: process output into CRI logs or ExecSync answers.
//! - [`manager`]: create, start, stop, remove, exec, update, stats, recovery.

pub mod io;
pub mod manager;
pub mod mounts;
pub mod record;
pub mod seccomp;
pub mod spec;

pub use manager::Containers;
pub use record::{ContainerRecord, ContainerState};

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
    /// The state store failed (Internal).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ContainerError {
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

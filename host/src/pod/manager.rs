//! The pod sandboxes' shared core: the records in the state store, the pod
//! CIDRs, refresh from the VM and recovery after a restart (records let a
//! restarted moatd find running VMs again and clean up what a crash left
//! half-made). The verbs live beside it: `run.rs` (RunPodSandbox),
//! `stop.rs` (StopPodSandbox, RemovePodSandbox), `validate.rs` (request
//! checks).

use super::locks::PodLocks;
use super::record::{SandboxRecord, SandboxState};
use crate::agent::AgentPool;
use crate::config::Config;
use crate::network::CniNetwork;
use crate::store::{Store, StoreError, RUNTIME, SANDBOXES};
use std::path::PathBuf;

/// The key of the pod CIDRs in the runtime table.
const POD_CIDRS: &str = "pod_cidrs";

/// Why a sandbox operation failed; maps onto gRPC codes.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// Bad request (InvalidArgument); names the field.
    #[error("{0}")]
    Invalid(String),
    /// No such sandbox (NotFound).
    #[error("pod sandbox {0:?} not found")]
    NotFound(String),
    /// Cannot be done now (FailedPrecondition).
    #[error("{0}")]
    Precondition(String),
    /// Setting the sandbox up failed (Internal).
    #[error("{0}")]
    Failed(String),
    /// Setting the sandbox up failed on an error of its own (Internal);
    /// keeps it.
    #[error("{what}")]
    Caused {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: crate::Cause,
    },
    /// The VM booted but its agent never answered (Internal).
    #[error("{0}")]
    BootTimeout(String),
    /// The guest reset before its agent answered (Internal).
    #[error("{0}")]
    BootCrash(String),
    /// The state store failed (Internal).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another sandbox holds the pod's name (AlreadyExists).
    #[error("pod sandbox name {name:?} is reserved for {holder}")]
    NameTaken {
        /// The name (pod name, namespace, uid, attempt).
        name: String,
        /// The sandbox holding it.
        holder: String,
    },
}

pub(super) fn failed(e: impl std::fmt::Display) -> PodError {
    PodError::Failed(e.to_string())
}

/// Wraps an error while doing `what` (for `map_err`).
pub(super) fn caused<E: Into<crate::Cause>>(what: &str) -> impl FnOnce(E) -> PodError + '_ {
    move |e| PodError::Caused {
        what: what.to_string(),
        source: e.into(),
    }
}

/// The TAP joined to the interface the CNI plugins create in the pod
/// namespace.
pub(super) const POD_TAP: &str = "tap0";

/// All pod sandboxes of this moatd.
pub struct Pods {
    pub(super) config: Config,
    pub(super) store: Store,
    pub(super) cni: Option<CniNetwork>,
    /// Serializes changes to one sandbox, shared with its containers.
    pub(super) locks: PodLocks,
    /// Channels to the pods' agents, shared with the containers.
    pub(super) agents: AgentPool,
    /// Names of the sandboxes being created.
    pub(super) reserved: super::names::Reserved,
    /// Held while a new sandbox picks its VMM's uid and is recorded, so two
    /// never pick the same one.
    pub(super) uid_pick: std::sync::Mutex<()>,
}

impl Pods {
    /// The sandbox manager; `cni` is None when no network is configured.
    pub fn new(
        config: Config,
        store: Store,
        cni: Option<CniNetwork>,
        locks: PodLocks,
        agents: AgentPool,
    ) -> Self {
        Self {
            config,
            store,
            cni,
            locks,
            agents,
            reserved: Default::default(),
            uid_pick: Default::default(),
        }
    }

    /// The CNI network, if one is configured.
    pub fn network(&self) -> Option<&CniNetwork> {
        self.cni.as_ref()
    }

    pub(super) fn netns_dir(&self) -> PathBuf {
        self.config.run_dir.join("netns")
    }

    /// Every sandbox record.
    pub fn list(&self) -> Result<Vec<SandboxRecord>, PodError> {
        Ok(self.store.values(SANDBOXES)?)
    }

    /// One sandbox by its full id. Prefixes are not resolved: a CRI client
    /// resolves them (as crictl does) so that a short id never removes
    /// another pod.
    pub fn get(&self, id: &str) -> Result<SandboxRecord, PodError> {
        if id.is_empty() {
            return Err(PodError::Invalid("pod_sandbox_id: required".into()));
        }
        self.store
            .get(SANDBOXES, id)?
            .ok_or_else(|| PodError::NotFound(id.to_string()))
    }

    /// Records the node's pod CIDRs kubelet sends (UpdateRuntimeConfig's
    /// `pod_cidr`), for the CNI `ipRanges` capability of later pods.
    pub fn set_pod_cidr(&self, pod_cidr: &str) -> Result<(), PodError> {
        let cidrs = crate::network::capability_args::parse_pod_cidrs(pod_cidr).map_err(|e| {
            PodError::Invalid(format!("runtime_config.network_config.pod_cidr: {e}"))
        })?;
        self.store.put(RUNTIME, POD_CIDRS, &cidrs)?;
        Ok(())
    }

    /// The node's pod CIDRs, as kubelet last sent them (none until it does).
    pub fn pod_cidrs(&self) -> Result<Vec<String>, PodError> {
        Ok(self.store.get(RUNTIME, POD_CIDRS)?.unwrap_or_default())
    }

    /// Refreshes a record's state from its VM (a dead VM makes it NotReady).
    pub fn refresh(&self, mut rec: SandboxRecord) -> Result<SandboxRecord, PodError> {
        if rec.state == SandboxState::Ready && !rec.vm.is_some_and(|vm| vm.is_alive()) {
            rec.state = SandboxState::NotReady;
            rec.exit_reason = Some(format!(
                "the pod VM stopped: {}",
                crate::vm::launch::tail(&rec.vm_paths.vmm_log(), 1)
            ));
            rec.vm = None;
            self.store.put(SANDBOXES, &rec.id, &rec)?;
        }
        Ok(rec)
    }

    /// At start: keeps sandboxes whose VM still runs, marks dead ones
    /// NotReady, and releases what half-created ones took.
    pub async fn recover(&self) -> Result<(), PodError> {
        for rec in self.list()? {
            match rec.state {
                SandboxState::Creating => {
                    tracing::warn!(id = %rec.id, "cleaning up a sandbox left half-created");
                    let mut rec = rec;
                    self.tear_down(&mut rec).await;
                    let _ = std::fs::remove_dir_all(&rec.vm_paths.dir);
                    self.store.delete(SANDBOXES, &rec.id)?;
                }
                SandboxState::Ready => {
                    let rec = self.refresh(rec)?;
                    tracing::info!(id = %rec.id, state = ?rec.state, "recovered pod sandbox");
                }
                SandboxState::NotReady => {}
            }
        }
        Ok(())
    }
}

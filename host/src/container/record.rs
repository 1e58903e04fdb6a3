//! The stored form of a container.

use moat_proto::cri::{ContainerConfig, LinuxContainerResources};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Lifecycle of a container as CRI sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    /// Created in the guest, its process waits for StartContainer.
    Created,
    /// Its process runs.
    Running,
    /// Its process ended (or the pod's VM did).
    Exited,
}

/// Everything moatd keeps about one container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// Container id (64 hex digits).
    pub id: String,
    /// The pod sandbox it belongs to.
    pub sandbox_id: String,
    /// The container's config as kubelet sent it.
    pub config: ContainerConfig,
    /// The image as the request named it.
    pub image_ref: String,
    /// The resolved image id (config digest).
    pub image_id: String,
    /// The image's first repo digest (what ContainerStatus.image_ref shows).
    pub image_digest: String,
    /// The virtio-blk slot of the pod VM holding the image.
    pub slot: u32,
    /// The slots holding its block devices (CRI `devices`), its own.
    #[serde(default)]
    pub device_slots: Vec<u32>,
    /// The OCI spec sent to the agent (exec processes start from its process).
    pub spec: oci_spec::runtime::Spec,
    /// The CRI log file, if kubelet asked for one.
    pub log_path: Option<PathBuf>,
    /// State.
    pub state: ContainerState,
    /// Timestamps, ns since the epoch (0: not yet).
    pub created_at: i64,
    /// When its process started.
    pub started_at: i64,
    /// When its process ended.
    pub finished_at: i64,
    /// Exit code (128 + signal when killed).
    pub exit_code: i32,
    /// "Completed", "Error", "OOMKilled", or empty while it runs.
    pub reason: String,
    /// More about how it ended.
    pub message: String,
    /// Guest pid of its process.
    pub pid: u32,
    /// The current resources (after UpdateContainerResources).
    pub resources: Option<LinuxContainerResources>,
}

impl ContainerRecord {
    /// Every slot of the pod VM the container uses: its image's and its
    /// devices'.
    pub fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        std::iter::once(self.slot).chain(self.device_slots.iter().copied())
    }

    /// The container's name in its pod.
    pub fn name(&self) -> String {
        self.config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default()
    }
}

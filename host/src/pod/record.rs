//! The stored form of a pod sandbox.

use crate::network::CniResult;
use crate::vm::{VmHandle, VmPaths};
use moat_proto::cri::PodSandboxConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Lifecycle of a sandbox as CRI sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxState {
    /// Being created; a record left in this state by a crash is cleaned up at start.
    Creating,
    /// The VM runs and its agent answered.
    Ready,
    /// Stopped, failed, or its VM died.
    NotReady,
}

/// Everything moatd keeps about one sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// Sandbox id (64 hex digits).
    pub id: String,
    /// The pod's config as kubelet sent it.
    pub config: PodSandboxConfig,
    /// The runtime handler used.
    pub runtime_handler: String,
    /// Its kind when the pod was made: where the containers run.
    #[serde(default)]
    pub kind: crate::config::HandlerKind,
    /// State.
    pub state: SandboxState,
    /// Creation time, ns since the epoch.
    pub created_at: i64,
    /// The pod network namespace, unless the pod uses the host network.
    pub netns: Option<PathBuf>,
    /// The CNI result (kept for DEL).
    pub cni: Option<CniResult>,
    /// The pod IPs (first is the primary).
    pub ips: Vec<String>,
    /// The pod's directory: the VM's files, or a native pod's agent's.
    pub vm_paths: VmPaths,
    /// The pod's own process while it runs: the VMM, or a native pod's
    /// agent.
    pub vm: Option<VmHandle>,
    /// A pod VM's virtiofsd while it runs (see [`crate::vm::volumes`]).
    #[serde(default)]
    pub fs_daemon: Option<VmHandle>,
    /// The VMM's cgroup, relative to the hierarchy's root (`None` where
    /// moatd has no cgroup v2 hierarchy to write); see [`crate::vm::cgroup`].
    #[serde(default)]
    pub vmm_cgroup: Option<PathBuf>,
    /// The VMM's own uid and gid (`None` when VMMs are not jailed).
    #[serde(default)]
    pub vmm_uid: Option<u32>,
    /// VM size.
    pub vcpus: u8,
    /// VM memory.
    pub memory_mib: u64,
    /// Why the sandbox stopped, if it did on its own.
    pub exit_reason: Option<String>,
    /// What the agent set up for the pod inside the guest.
    #[serde(default)]
    pub guest: GuestSandbox,
}

/// The pod's guest-side files and namespaces, as CreateSandbox answered:
/// containers bind-mount the files and join the namespaces.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GuestSandbox {
    /// Namespace kind ("ipc", "uts", "pid") → guest path.
    pub namespace_paths: std::collections::BTreeMap<String, String>,
    /// The pod's /etc/hosts in the guest.
    pub hosts_path: String,
    /// The pod's /etc/resolv.conf in the guest.
    pub resolv_conf_path: String,
    /// The pod's /etc/hostname in the guest.
    pub hostname_path: String,
}

impl SandboxRecord {
    /// The pod's metadata (validated present at creation).
    pub fn metadata(&self) -> moat_proto::cri::PodSandboxMetadata {
        self.config.metadata.clone().unwrap_or_default()
    }
}

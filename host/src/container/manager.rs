//! The core every container verb shares: the records in the state store,
//! the per-pod lock, the cached agent channels of each pod VM and the open
//! CRI logs. The verbs themselves live one per file beside this one
//! (`create.rs`, `start.rs`, `stop.rs`, ...), as containerd cuts its CRI
//! server.

use super::record::{ContainerRecord, ContainerState};
use super::ContainerError;
use crate::agent::AgentPool;
use crate::config::Config;
use crate::cri::events::EventBus;
use crate::logs::cri_log::CriLogWriter;
use crate::pod::{PodLocks, SandboxRecord, SandboxState};
use crate::store::{Store, CONTAINERS};
use moat_proto::agent::agent_client::AgentClient;
use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;
use tonic::transport::Channel;

pub(super) fn agent_err(what: &str) -> impl Fn(tonic::Status) -> ContainerError + '_ {
    move |s| ContainerError::from_agent(what, s)
}

/// A running container's output as it is read, for attached clients: a
/// client that falls behind loses the oldest chunks (the log keeps them)
/// instead of growing moatd's memory or slowing the container.
pub type AttachFeed = tokio::sync::broadcast::Sender<(moat_proto::agent::OutputStream, Vec<u8>)>;

/// Chunks an attached client may fall behind by.
pub(super) const ATTACH_BACKLOG: usize = 256;

/// A log file shared by a container's output pumps and ReopenContainerLog.
pub(super) type SharedLog = Arc<StdMutex<CriLogWriter>>;

/// What all clones of [`Containers`] share.
pub(super) struct Inner {
    pub(super) store: Store,
    pub(super) events: EventBus,
    /// Channels to the agents of the pod VMs.
    pub(super) agents: AgentPool,
    /// Open logs of running containers.
    pub(super) logs: StdMutex<HashMap<String, SharedLog>>,
    /// Output of running containers for attached clients.
    pub(super) attached: StdMutex<HashMap<String, AttachFeed>>,
    /// Serializes slot allocation and lifecycle changes within one pod,
    /// and against the pod's own stop and removal.
    pub(super) pod_locks: PodLocks,
    /// Last CPU sample per container, for usage_nano_cores.
    pub(super) cpu_samples: StdMutex<HashMap<String, (i64, u64)>>,
    /// Each container's last stats answer from the guest, and when it came.
    pub(super) last_stats: StdMutex<
        HashMap<
            String,
            (
                std::time::Instant,
                moat_proto::agent::ContainerStatsResponse,
            ),
        >,
    >,
}

/// All containers of this moatd.
#[derive(Clone)]
pub struct Containers {
    pub(super) inner: Arc<Inner>,
    /// The runtime handlers by name (a pod's VM slots, what its
    /// containers may ask for).
    pub(super) handlers: HashMap<String, crate::config::RuntimeHandler>,
}

impl Containers {
    /// The container manager over the state store.
    pub fn new(
        config: &Config,
        store: Store,
        events: EventBus,
        pod_locks: PodLocks,
        agents: AgentPool,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                events,
                agents,
                logs: StdMutex::new(HashMap::new()),
                attached: StdMutex::new(HashMap::new()),
                pod_locks,
                cpu_samples: StdMutex::new(HashMap::new()),
                last_stats: StdMutex::new(HashMap::new()),
            }),
            handlers: config
                .runtime_handlers
                .iter()
                .map(|(k, h)| (k.clone(), h.clone()))
                .collect(),
        }
    }

    /// The agent of a pod's VM, for calls that answer at once.
    pub async fn agent(&self, sb: &SandboxRecord) -> Result<AgentClient<Channel>, ContainerError> {
        Ok(self.inner.agents.calls(sb).await?)
    }

    /// Every container record.
    pub fn list(&self) -> Result<Vec<ContainerRecord>, ContainerError> {
        Ok(self.inner.store.values(CONTAINERS)?)
    }

    /// One container by its full id (prefixes are the client's to
    /// resolve, as for pods).
    pub fn get(&self, id: &str) -> Result<ContainerRecord, ContainerError> {
        if id.is_empty() {
            return Err(ContainerError::Invalid("container_id: required".into()));
        }
        self.inner
            .store
            .get(CONTAINERS, id)?
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))
    }

    pub(super) fn put(&self, rec: &ContainerRecord) -> Result<(), ContainerError> {
        Ok(self.inner.store.put(CONTAINERS, &rec.id, rec)?)
    }

    /// Brings a record in line with its pod: a container of a pod whose VM
    /// is gone has exited.
    pub fn refresh(
        &self,
        mut rec: ContainerRecord,
        sandbox: Option<&SandboxRecord>,
    ) -> Result<ContainerRecord, ContainerError> {
        let vm_alive = sandbox
            .is_some_and(|s| s.state == SandboxState::Ready && s.vm.is_some_and(|v| v.is_alive()));
        if rec.state != ContainerState::Exited && !vm_alive {
            mark_exited(&mut rec, 255, "Error", "the pod VM stopped");
            self.put(&rec)?;
        }
        Ok(rec)
    }

    /// Waits until the monitor records the container's exit.
    pub(super) async fn wait_exited(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<bool, ContainerError> {
        let seen = async {
            loop {
                match self.inner.store.get::<ContainerRecord>(CONTAINERS, id)? {
                    Some(r) if r.state != ContainerState::Exited => {}
                    _ => return Ok(true),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        // tokio saturates a timeout too long to represent.
        tokio::time::timeout(timeout, seen)
            .await
            .unwrap_or(Ok(false))
    }
}

/// Records how a container ended.
pub(super) fn mark_exited(rec: &mut ContainerRecord, code: i32, reason: &str, message: &str) {
    rec.state = ContainerState::Exited;
    rec.finished_at = crate::clock::now_ns();
    rec.exit_code = code;
    rec.reason = reason.to_string();
    rec.message = message.to_string();
}

/// Sets (or with None drops) the open log of a container.
pub(super) fn set_log(inner: &Inner, id: &str, log: Option<SharedLog>) {
    if let Ok(mut logs) = inner.logs.lock() {
        match log {
            Some(l) => {
                logs.insert(id.to_string(), l);
            }
            None => {
                logs.remove(id);
            }
        }
    }
}

//! GetContainerEvents: a broadcast of lifecycle events. Sandboxes report as
//! CONTAINER_* events with the sandbox id, as containerd's evented PLEG does.

use moat_proto::cri::{ContainerEventResponse, ContainerEventType, PodSandboxStatus};
use tokio::sync::broadcast;

/// Events not yet read by a slow subscriber beyond this are dropped for it.
const BACKLOG: usize = 1024;

/// Fan-out of lifecycle events to every GetContainerEvents stream; clones
/// publish to the same subscribers.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<ContainerEventResponse>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    /// A bus with no subscribers.
    pub fn new() -> Self {
        Self {
            tx: broadcast::channel(BACKLOG).0,
        }
    }

    /// A new subscriber.
    pub fn subscribe(&self) -> broadcast::Receiver<ContainerEventResponse> {
        self.tx.subscribe()
    }

    /// Publishes an event (no-op without subscribers).
    pub fn publish(&self, id: &str, kind: ContainerEventType, sandbox: Option<PodSandboxStatus>) {
        let _ = self.tx.send(ContainerEventResponse {
            container_id: id.to_string(),
            container_event_type: kind as i32,
            created_at: crate::clock::now_ns(),
            pod_sandbox_status: sandbox,
            containers_statuses: Vec::new(),
        });
    }
}

//! What happens to a pod's containers when the pod stops or is removed.

use super::manager::{mark_exited, set_log, Containers};
use super::record::{ContainerRecord, ContainerState};
use super::ContainerError;
use crate::pod::SandboxRecord;
use crate::store::CONTAINERS;
use moat_proto::agent::SignalProcessRequest;
use moat_proto::cri::ContainerEventType;
use std::time::Duration;

impl Containers {
    /// Called before a pod's VM is stopped: its containers are killed and
    /// recorded as exited, and its agent channel dropped.
    pub async fn pod_stopping(&self, sb: &SandboxRecord) -> Result<(), ContainerError> {
        let _pod = self.inner.pod_locks.lock(&sb.id).await;
        let running: Vec<ContainerRecord> = self
            .list()?
            .into_iter()
            .filter(|r| r.sandbox_id == sb.id && r.state != ContainerState::Exited)
            .collect();
        let vm_alive = sb.vm.is_some_and(|v| v.is_alive());
        for rec in running {
            if vm_alive && rec.state == ContainerState::Running {
                if let Ok(mut agent) = self.agent(sb).await {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        agent.signal_process(SignalProcessRequest {
                            container_id: rec.id.clone(),
                            exec_id: String::new(),
                            signal: libc::SIGKILL as u32,
                            all: true,
                        }),
                    )
                    .await;
                    let _ = self.wait_exited(&rec.id, Duration::from_secs(3)).await;
                }
            }
            if let Some(mut r) = self
                .inner
                .store
                .get::<ContainerRecord>(CONTAINERS, &rec.id)?
            {
                if r.state != ContainerState::Exited {
                    mark_exited(&mut r, 137, "Error", "the pod sandbox was stopped");
                    self.put(&r)?;
                    self.inner.events.publish(
                        &r.id,
                        ContainerEventType::ContainerStoppedEvent,
                        None,
                    );
                }
            }
            set_log(&self.inner, &rec.id, None);
        }
        self.inner.agents.forget(&sb.id);
        Ok(())
    }

    /// Called when a pod is removed: forgets its containers.
    pub fn pod_removed(&self, sandbox_id: &str) -> Result<(), ContainerError> {
        for rec in self
            .list()?
            .into_iter()
            .filter(|r| r.sandbox_id == sandbox_id)
        {
            set_log(&self.inner, &rec.id, None);
            self.inner.store.delete(CONTAINERS, &rec.id)?;
            self.inner
                .events
                .publish(&rec.id, ContainerEventType::ContainerDeletedEvent, None);
        }
        self.inner.agents.forget(sandbox_id);
        Ok(())
    }
}

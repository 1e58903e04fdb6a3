//! RemoveContainer: the guest container, its slots and its record.

use super::manager::{set_log, Containers};
use super::record::ContainerState;
use super::slots;
use super::ContainerError;
use crate::config::HandlerKind;
use crate::crash_point;
use crate::pod::SandboxRecord;
use crate::store::CONTAINERS;
use crate::vm::ControlClient;
use moat_proto::agent::agent_client::AgentClient;
use moat_proto::agent::RemoveContainerRequest;
use moat_proto::cri::ContainerEventType;
use std::time::Duration;
use tonic::transport::Channel;

/// Has the guest kill and remove container `id`; one it does not know is
/// removed already.
pub(super) async fn remove_in_guest(
    agent: &mut AgentClient<Channel>,
    id: &str,
) -> Result<(), ContainerError> {
    match agent
        .remove_container(RemoveContainerRequest {
            container_id: id.to_string(),
            timeout_ms: 0,
        })
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
        Err(s) => Err(ContainerError::from_agent("agent RemoveContainer", s)),
    }
}

impl Containers {
    /// RemoveContainer: kills it if it runs, removes it from the guest,
    /// detaches its block volumes and its image slot when no other
    /// container uses it, and
    /// forgets it. Unknown ids succeed.
    pub async fn remove(&self, id: &str, sb: Option<&SandboxRecord>) -> Result<(), ContainerError> {
        let rec = match self.get(id) {
            Ok(r) => r,
            Err(ContainerError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let rec = self.refresh(rec, sb)?;
        if rec.state != ContainerState::Exited {
            self.stop(&rec.id, sb, Duration::ZERO, libc::SIGKILL as u32)
                .await?;
        }
        let _pod = self.inner.pod_locks.lock(&rec.sandbox_id).await;
        let vm_alive = sb.is_some_and(|s| s.vm.is_some_and(|v| v.is_alive()));
        if let (true, Some(sb)) = (vm_alive, sb) {
            let mut agent = self.agent(sb).await?;
            remove_in_guest(&mut agent, &rec.id).await?;
            crash_point::here(crash_point::REMOVE_CONTAINER_IN_GUEST);
            let shared = self
                .list()?
                .iter()
                .any(|r| r.sandbox_id == rec.sandbox_id && r.id != rec.id && r.slot == rec.slot);
            let control = ControlClient::new(&sb.vm_paths.api());
            let vm = sb.kind == HandlerKind::Microvm;
            for &s in rec
                .device_slots
                .iter()
                .chain((!shared).then_some(&rec.slot))
                .filter(|_| vm)
            {
                slots::detach(&control, s).await?;
                crash_point::here(crash_point::REMOVE_CONTAINER_DETACHED);
            }
        }
        // Its volumes leave the pod's share (the guest's container, which
        // bound them, is gone).
        if let Some(sb) = sb.filter(|s| s.kind == HandlerKind::Microvm) {
            crate::vm::volumes::unbind_container(&sb.vm_paths, &rec.id);
        }
        set_log(&self.inner, &rec.id, None);
        if let Ok(mut s) = self.inner.cpu_samples.lock() {
            s.remove(&rec.id);
        }
        if let Ok(mut s) = self.inner.last_stats.lock() {
            s.remove(&rec.id);
        }
        self.inner.store.delete(CONTAINERS, &rec.id)?;
        tracing::info!(id = %rec.id, "container removed");
        self.inner
            .events
            .publish(&rec.id, ContainerEventType::ContainerDeletedEvent, None);
        Ok(())
    }
}

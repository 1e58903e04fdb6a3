//! Containers after a moatd restart: records brought in line with their
//! pods, monitors restarted, and each running pod VM reconciled with the
//! records (a crash between a guest or VMM change and its record leaves a
//! guest container or an attached slot no record names).

use super::manager::{set_log, Containers};
use super::monitor::monitor;
use super::record::{ContainerRecord, ContainerState};
use super::slots;
use super::ContainerError;
use crate::logs::cri_log::CriLogWriter;
use crate::pod::{SandboxRecord, SandboxState};
use crate::store::CONTAINERS;
use crate::vm::ControlClient;
use moat_proto::agent::ListContainersRequest;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

/// How long reconciling one pod VM may take at start.
const RECONCILE: Duration = Duration::from_secs(20);

impl Containers {
    /// At start: containers of running pods get their monitors back; those
    /// of stopped or vanished pods are recorded as exited or forgotten;
    /// running pod VMs lose what no record names.
    pub async fn recover(&self, sandboxes: &[SandboxRecord]) -> Result<(), ContainerError> {
        for rec in self.list()? {
            let Some(sb) = sandboxes.iter().find(|s| s.id == rec.sandbox_id) else {
                tracing::warn!(id = %rec.id, "forgetting a container whose pod is gone");
                self.inner.store.delete(CONTAINERS, &rec.id)?;
                continue;
            };
            let rec = self.refresh(rec, Some(sb))?;
            if rec.state == ContainerState::Running {
                let log = match &rec.log_path {
                    Some(p) => CriLogWriter::open(p)
                        .ok()
                        .map(|w| Arc::new(StdMutex::new(w))),
                    None => None,
                };
                if let Some(l) = &log {
                    set_log(&self.inner, &rec.id, Some(l.clone()));
                }
                tracing::info!(id = %rec.id, "watching a running container again");
                tokio::spawn(monitor(self.inner.clone(), rec, sb.clone(), log));
            }
        }
        let records = self.list()?;
        let running = sandboxes
            .iter()
            .filter(|s| s.state == SandboxState::Ready && s.vm.is_some_and(|v| v.is_alive()));
        futures_util::future::join_all(running.map(|sb| async {
            let done = tokio::time::timeout(RECONCILE, self.reconcile(sb, &records)).await;
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(pod = %sb.id, "reconciling the pod VM: {}", crate::chain(&e));
                }
                Err(_) => tracing::warn!(pod = %sb.id, "reconciling the pod VM: no answer"),
            }
        }))
        .await;
        Ok(())
    }

    /// Removes the guest containers and detaches the slots of `sb`'s VM
    /// that no record names.
    async fn reconcile(
        &self,
        sb: &SandboxRecord,
        records: &[ContainerRecord],
    ) -> Result<(), ContainerError> {
        let mine: Vec<&ContainerRecord> =
            records.iter().filter(|r| r.sandbox_id == sb.id).collect();
        let mut agent = self.agent(sb).await?;
        let listed = agent
            .list_containers(ListContainersRequest {})
            .await
            .map_err(|s| ContainerError::from_agent("agent ListContainers", s))?
            .into_inner();
        for c in listed.containers {
            if mine.iter().any(|r| r.id == c.container_id) {
                continue;
            }
            tracing::warn!(pod = %sb.id, id = %c.container_id, "removing a guest container no record names");
            super::remove::remove_in_guest(&mut agent, &c.container_id).await?;
        }
        if sb.kind != crate::config::HandlerKind::Microvm {
            return Ok(());
        }
        let control = ControlClient::new(&sb.vm_paths.api());
        for (slot, path) in slots::attached(&control).await? {
            if mine.iter().any(|r| r.slots().any(|s| s == slot)) {
                continue;
            }
            tracing::warn!(pod = %sb.id, slot, path = %path.display(), "detaching a drive no record names");
            slots::detach(&control, slot).await?;
        }
        Ok(())
    }
}

//! StartContainer: runs the created container and hands it to its monitor.

use super::manager::{agent_err, mark_exited, set_log, Containers};
use super::monitor::monitor;
use super::record::ContainerState;
use super::ContainerError;
use crate::agent::AGENT_CALL;
use crate::logs::cri_log::CriLogWriter;
use crate::pod::SandboxRecord;
use moat_proto::cri::ContainerEventType;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Instant;

impl Containers {
    /// StartContainer.
    pub async fn start(&self, id: &str, sb: &SandboxRecord) -> Result<(), ContainerError> {
        let started = Instant::now();
        let mut rec = self.get(id)?;
        let _pod = self.inner.pod_locks.lock(&rec.sandbox_id).await;
        rec = self.get(&rec.id)?;
        if rec.state != ContainerState::Created {
            return Err(ContainerError::Precondition(format!(
                "container {} is {:?}, not created",
                rec.id, rec.state
            )));
        }
        let log = match &rec.log_path {
            Some(p) => Some(Arc::new(StdMutex::new(CriLogWriter::open(p).map_err(
                ContainerError::caused(format!("opening the log {}", p.display())),
            )?))),
            None => None,
        };
        let mut agent = self.agent(sb).await?;
        let res = tokio::time::timeout(
            AGENT_CALL,
            agent.start_container(moat_proto::agent::StartContainerRequest {
                container_id: rec.id.clone(),
            }),
        )
        .await
        .map_err(|_| ContainerError::Failed("agent StartContainer timed out".into()))
        .and_then(|r| r.map_err(agent_err("agent StartContainer")));
        if let Err(e) = res {
            mark_exited(&mut rec, 128, "StartError", &e.to_string());
            self.put(&rec)?;
            return Err(e);
        }
        rec.state = ContainerState::Running;
        rec.started_at = crate::clock::now_ns();
        self.put(&rec)?;
        if let Some(log) = &log {
            set_log(&self.inner, &rec.id, Some(log.clone()));
        }
        tracing::info!(id = %rec.id, ms = started.elapsed().as_millis() as u64,
            since_create_ms = (rec.started_at - rec.created_at) / 1_000_000, "container started");
        self.inner
            .events
            .publish(&rec.id, ContainerEventType::ContainerStartedEvent, None);
        tokio::spawn(monitor(self.inner.clone(), rec, sb.clone(), log));
        Ok(())
    }
}

//! StopContainer: the stop signal, a grace period, then SIGKILL.

use super::manager::{mark_exited, Containers};
use super::record::ContainerState;
use super::ContainerError;
use crate::pod::SandboxRecord;
use moat_proto::agent::{RemoveContainerRequest, SignalProcessRequest, WaitProcessRequest};
use moat_proto::cri::ContainerEventType;
use std::time::Duration;

impl Containers {
    /// StopContainer: the image's stop signal (SIGTERM by default), then
    /// SIGKILL to every process of the container after `timeout` seconds.
    /// Stopping a stopped container succeeds.
    pub async fn stop(
        &self,
        id: &str,
        sb: Option<&SandboxRecord>,
        timeout: Duration,
        stop_signal: u32,
    ) -> Result<(), ContainerError> {
        let rec = self.get(id)?;
        let rec = self.refresh(rec, sb)?;
        let Some(sb) = sb else { return Ok(()) };
        match rec.state {
            ContainerState::Exited => return Ok(()),
            ContainerState::Created => {
                let mut rec = rec;
                let mut agent = self.agent(sb).await?;
                let _ = agent
                    .remove_container(RemoveContainerRequest {
                        container_id: rec.id.clone(),
                        timeout_ms: 0,
                    })
                    .await;
                mark_exited(&mut rec, 137, "Error", "stopped before it was started");
                self.put(&rec)?;
                self.inner
                    .events
                    .publish(&rec.id, ContainerEventType::ContainerStoppedEvent, None);
                return Ok(());
            }
            ContainerState::Running => {}
        }
        let mut agent = self.agent(sb).await?;
        if !timeout.is_zero() {
            let sent = agent
                .signal_process(SignalProcessRequest {
                    container_id: rec.id.clone(),
                    exec_id: String::new(),
                    signal: stop_signal,
                    all: false,
                })
                .await;
            if sent.is_ok() && self.wait_exited(&rec.id, timeout).await? {
                return Ok(());
            }
        }
        let _ = agent
            .signal_process(SignalProcessRequest {
                container_id: rec.id.clone(),
                exec_id: String::new(),
                signal: libc::SIGKILL as u32,
                all: true,
            })
            .await;
        if self.wait_exited(&rec.id, SEEN_BY_MONITOR).await? {
            return Ok(());
        }
        // The exit monitor has not recorded it (its output may still be
        // draining, or its channel broke): ask the agent directly.
        match tokio::time::timeout(
            ASK_AGENT,
            agent.wait_process(WaitProcessRequest {
                container_id: rec.id.clone(),
                exec_id: String::new(),
            }),
        )
        .await
        {
            Ok(Ok(w)) => {
                tracing::warn!(id = %rec.id, "stop: exit recorded from the agent, not the monitor");
                super::monitor::record_exit(&self.inner, &rec.id, Ok(w.into_inner()));
                Ok(())
            }
            Ok(Err(s)) => Err(ContainerError::from_agent(
                &format!("container {}: waiting for it after SIGKILL", rec.id),
                s,
            )),
            Err(_) => Err(ContainerError::Failed(format!(
                "container {} did not exit within {} s of SIGKILL",
                rec.id,
                (SEEN_BY_MONITOR + ASK_AGENT).as_secs()
            ))),
        }
    }
}

/// How long StopContainer waits for the exit monitor to record the exit
/// after SIGKILL.
const SEEN_BY_MONITOR: Duration = Duration::from_secs(10);

/// How long it then waits for the agent to report the exit itself.
const ASK_AGENT: Duration = Duration::from_secs(20);

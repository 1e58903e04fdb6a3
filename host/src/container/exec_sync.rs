//! ExecSync: a command in a running container, its output returned whole.

use super::io::{copy_output, OutputCap};
use super::manager::{agent_err, Containers};
use super::record::ContainerState;
use super::ContainerError;
use crate::pod::SandboxRecord;
use moat_proto::agent::{OutputStream, SignalProcessRequest, WaitProcessRequest};
use std::time::Duration;

/// Most output ExecSync returns per stream; the rest is dropped.
pub const EXEC_SYNC_OUTPUT_CAP: usize = 16 << 20;

impl Containers {
    /// ExecSync: runs `cmd` in the container and returns its exit code and
    /// output (each stream capped at [`EXEC_SYNC_OUTPUT_CAP`]); past
    /// `timeout` (if non-zero) the process is killed and DeadlineExceeded
    /// returned.
    pub async fn exec_sync(
        &self,
        id: &str,
        sb: &SandboxRecord,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<(i32, Vec<u8>, Vec<u8>), ContainerError> {
        if cmd.is_empty() {
            return Err(ContainerError::Invalid("cmd: required".into()));
        }
        let rec = self.refresh(self.get(id)?, Some(sb))?;
        if rec.state != ContainerState::Running {
            return Err(ContainerError::Precondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        let mut process = rec.spec.process().clone().unwrap_or_default();
        process
            .set_args(Some(cmd.clone()))
            .set_terminal(Some(false));
        let process = serde_json::to_vec(&process)
            .map_err(ContainerError::caused("encoding the exec process"))?;
        let exec_id = format!(
            "sync-{}",
            &crate::ids::new_id().map_err(ContainerError::caused("reading /dev/urandom"))?[..16]
        );
        let mut agent = self.agent(sb).await?;
        agent
            .exec_process(moat_proto::agent::ExecProcessRequest {
                container_id: rec.id.clone(),
                exec_id: exec_id.clone(),
                process,
                stdin: false,
            })
            .await
            .map_err(agent_err("agent ExecProcess"))?;
        let streams = self.inner.agents.waits(sb).await?;
        let out = copy_output(
            streams.clone(),
            rec.id.clone(),
            exec_id.clone(),
            OutputStream::Stdout,
            OutputCap::new(EXEC_SYNC_OUTPUT_CAP),
        );
        let err = copy_output(
            streams.clone(),
            rec.id.clone(),
            exec_id.clone(),
            OutputStream::Stderr,
            OutputCap::new(EXEC_SYNC_OUTPUT_CAP),
        );
        let mut waiter = streams;
        let run = async {
            let (o, e, w) = tokio::join!(
                out,
                err,
                waiter.wait_process(WaitProcessRequest {
                    container_id: rec.id.clone(),
                    exec_id: exec_id.clone(),
                })
            );
            let w = w.map_err(agent_err("agent WaitProcess"))?.into_inner();
            Ok::<_, ContainerError>((w.exit_code, o.into_bytes(), e.into_bytes()))
        };
        if timeout.is_zero() {
            return run.await;
        }
        match tokio::time::timeout(timeout, run).await {
            Ok(r) => r,
            Err(_) => {
                let _ = agent
                    .signal_process(SignalProcessRequest {
                        container_id: rec.id.clone(),
                        exec_id,
                        signal: libc::SIGKILL as u32,
                        all: false,
                    })
                    .await;
                Err(ContainerError::Timeout(format!(
                    "command {cmd:?} timed out after {} s",
                    timeout.as_secs()
                )))
            }
        }
    }
}

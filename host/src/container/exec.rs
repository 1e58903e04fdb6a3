//! A process started in a running container for an exec (ExecSync, or a
//! streaming exec session), and the agent calls that drive it: its output
//! streams, stdin, terminal size, exit and kill.

use super::manager::{agent_err, Containers};
use super::record::ContainerState;
use super::ContainerError;
use crate::pod::SandboxRecord;
use moat_proto::agent::agent_client::AgentClient;
use moat_proto::agent::{
    CloseStdinRequest, ExecProcessRequest, OutputChunk, OutputStream, ReadOutputRequest,
    ResizeTtyRequest, SignalProcessRequest, WaitProcessRequest, WaitProcessResponse,
    WriteStdinRequest,
};
use tonic::transport::Channel;
use tonic::Status;

/// How to start an exec process.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// The command and its arguments.
    pub cmd: Vec<String>,
    /// Run it on a terminal (stdout and stderr are then one stream).
    pub tty: bool,
    /// Keep its stdin open for the caller to write.
    pub stdin: bool,
}

/// A process running for an exec, in the guest.
pub struct ExecProcess {
    /// The container it runs in.
    pub container_id: String,
    /// Its id in the guest.
    pub exec_id: String,
    /// Agent channel for calls that answer at once.
    calls: AgentClient<Channel>,
    /// Agent channel for output streams and the wait.
    waits: AgentClient<Channel>,
}

impl Containers {
    /// Starts `opts.cmd` in the running container `id`, as the container's
    /// own process runs (its user, capabilities, seccomp, cgroup,
    /// namespaces), with the command's arguments and terminal setting.
    pub async fn exec_start(
        &self,
        id: &str,
        sb: &SandboxRecord,
        opts: &ExecOptions,
    ) -> Result<ExecProcess, ContainerError> {
        if opts.cmd.is_empty() {
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
            .set_args(Some(opts.cmd.clone()))
            .set_terminal(Some(opts.tty));
        let process = serde_json::to_vec(&process)
            .map_err(ContainerError::caused("encoding the exec process"))?;
        let exec_id = format!(
            "exec-{}",
            &crate::ids::new_id().map_err(ContainerError::caused("reading /dev/urandom"))?[..16]
        );
        let mut calls = self.agent(sb).await?;
        calls
            .exec_process(ExecProcessRequest {
                container_id: rec.id.clone(),
                exec_id: exec_id.clone(),
                process,
                stdin: opts.stdin,
            })
            .await
            .map_err(agent_err("agent ExecProcess"))?;
        let waits = self.inner.agents.waits(sb).await?;
        Ok(ExecProcess {
            container_id: rec.id,
            exec_id,
            calls,
            waits,
        })
    }
}

/// A client attached to a running container's main process.
pub struct Attached {
    /// Its stdin, terminal and exit (exec id "").
    pub process: ExecProcess,
    /// Its output as the monitor reads it.
    pub output: tokio::sync::broadcast::Receiver<(OutputStream, Vec<u8>)>,
    /// Whether it has a terminal.
    pub tty: bool,
    /// Whether its stdin is open for writing.
    pub stdin: bool,
    /// Its stdin closes when the first attached client leaves.
    pub stdin_once: bool,
}

impl Containers {
    /// Attaches to the main process of the running container `id`.
    pub async fn attach(&self, id: &str, sb: &SandboxRecord) -> Result<Attached, ContainerError> {
        let rec = self.refresh(self.get(id)?, Some(sb))?;
        if rec.state != ContainerState::Running {
            return Err(ContainerError::Precondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        let output = self
            .inner
            .attached
            .lock()
            .ok()
            .and_then(|a| a.get(&rec.id).map(|f| f.subscribe()))
            .ok_or_else(|| {
                ContainerError::Precondition(format!("container {} is not running", rec.id))
            })?;
        let process = ExecProcess {
            container_id: rec.id.clone(),
            exec_id: String::new(),
            calls: self.agent(sb).await?,
            waits: self.inner.agents.waits(sb).await?,
        };
        Ok(Attached {
            process,
            output,
            tty: rec.config.tty,
            stdin: rec.config.stdin,
            stdin_once: rec.config.stdin_once,
        })
    }
}

impl ExecProcess {
    /// One of its output streams, until it ends.
    pub async fn output(
        &self,
        stream: OutputStream,
    ) -> Result<tonic::Streaming<OutputChunk>, Status> {
        Ok(self
            .waits
            .clone()
            .read_output(ReadOutputRequest {
                container_id: self.container_id.clone(),
                exec_id: self.exec_id.clone(),
                stream: stream as i32,
            })
            .await?
            .into_inner())
    }

    /// Writes to its stdin.
    pub async fn write_stdin(&self, data: Vec<u8>) -> Result<(), Status> {
        self.calls
            .clone()
            .write_stdin(WriteStdinRequest {
                container_id: self.container_id.clone(),
                exec_id: self.exec_id.clone(),
                data,
            })
            .await
            .map(|_| ())
    }

    /// Closes its stdin (EOF; on a terminal, ^D).
    pub async fn close_stdin(&self) -> Result<(), Status> {
        self.calls
            .clone()
            .close_stdin(CloseStdinRequest {
                container_id: self.container_id.clone(),
                exec_id: self.exec_id.clone(),
            })
            .await
            .map(|_| ())
    }

    /// Sets its terminal's size.
    pub async fn resize(&self, cols: u16, rows: u16) -> Result<(), Status> {
        self.calls
            .clone()
            .resize_tty(ResizeTtyRequest {
                container_id: self.container_id.clone(),
                exec_id: self.exec_id.clone(),
                rows: rows.into(),
                cols: cols.into(),
            })
            .await
            .map(|_| ())
    }

    /// Waits until it ends.
    pub async fn wait(&self) -> Result<WaitProcessResponse, Status> {
        Ok(self
            .waits
            .clone()
            .wait_process(WaitProcessRequest {
                container_id: self.container_id.clone(),
                exec_id: self.exec_id.clone(),
            })
            .await?
            .into_inner())
    }

    /// Sends it SIGKILL (gone already is fine).
    pub async fn kill(&self) {
        let _ = self
            .calls
            .clone()
            .signal_process(SignalProcessRequest {
                container_id: self.container_id.clone(),
                exec_id: self.exec_id.clone(),
                signal: libc::SIGKILL as u32,
                all: false,
            })
            .await;
    }
}

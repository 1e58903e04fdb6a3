//! ExecSync: a command in a running container, its output returned whole.

use super::exec::ExecOptions;
use super::io::OutputCap;
use super::ContainerError;
use crate::pod::SandboxRecord;
use moat_proto::agent::OutputStream;
use std::time::Duration;

/// Most output ExecSync returns per stream; the rest is dropped.
pub const EXEC_SYNC_OUTPUT_CAP: usize = 16 << 20;

impl super::Containers {
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
        let opts = ExecOptions {
            cmd,
            tty: false,
            stdin: false,
        };
        let p = self.exec_start(id, sb, &opts).await?;
        let collect = |stream| {
            let p = &p;
            async move {
                let mut cap = OutputCap::new(EXEC_SYNC_OUTPUT_CAP);
                if let Ok(mut s) = p.output(stream).await {
                    while let Ok(Some(chunk)) = s.message().await {
                        cap.push(&chunk.data);
                    }
                }
                cap
            }
        };
        let run = async {
            let (o, e, w) = tokio::join!(
                collect(OutputStream::Stdout),
                collect(OutputStream::Stderr),
                p.wait()
            );
            let w = w.map_err(|s| ContainerError::from_agent("agent WaitProcess", s))?;
            Ok::<_, ContainerError>((w.exit_code, o.into_bytes(), e.into_bytes()))
        };
        if timeout.is_zero() {
            return run.await;
        }
        match tokio::time::timeout(timeout, run).await {
            Ok(r) => r,
            Err(_) => {
                p.kill().await;
                Err(ContainerError::Timeout(format!(
                    "command {:?} timed out after {} s",
                    opts.cmd,
                    timeout.as_secs()
                )))
            }
        }
    }
}

//! Client of moat-vmm's control socket: one JSON request per line, one
//! `{"ok":…}` answer per line (see `vmm/README.md`).

use moat_vmm::api::Request;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Longest answer line accepted from the VMM.
const MAX_ANSWER: u64 = 1 << 20;

/// Talks to one VMM's control socket (a connection per request).
#[derive(Debug, Clone)]
pub struct ControlClient {
    path: PathBuf,
    timeout: Duration,
}

impl ControlClient {
    /// A client for the socket at `path`.
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            timeout: Duration::from_secs(30),
        }
    }

    /// Sends `req` and returns the `result` of a successful answer.
    pub async fn call(&self, req: &Request) -> anyhow::Result<serde_json::Value> {
        let fut = async {
            let mut stream = UnixStream::connect(&self.path).await?;
            let mut line = serde_json::to_vec(req)?;
            line.push(b'\n');
            stream.write_all(&line).await?;
            let mut answer = String::new();
            let mut reader = BufReader::new(stream).take(MAX_ANSWER);
            reader.read_line(&mut answer).await?;
            let v: serde_json::Value = serde_json::from_str(answer.trim())
                .map_err(|e| anyhow::anyhow!("unreadable answer {answer:?}: {e}"))?;
            if v["ok"] == true {
                Ok(v["result"].clone())
            } else {
                anyhow::bail!("{}", v["error"].as_str().unwrap_or("request failed"))
            }
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| {
                anyhow::anyhow!("VMM control socket {} did not answer", self.path.display())
            })?
            .map_err(|e: anyhow::Error| e.context(format!("VMM control {}", self.path.display())))
    }
}

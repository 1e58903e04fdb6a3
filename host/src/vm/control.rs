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
        self.call_with_file(req, None).await
    }

    /// Like [`ControlClient::call`], passing `file` along with the request
    /// (SCM_RIGHTS), for a request that uses it (`attach_drive`).
    pub async fn call_with_file(
        &self,
        req: &Request,
        file: Option<&std::fs::File>,
    ) -> anyhow::Result<serde_json::Value> {
        let fut = async {
            let mut stream = UnixStream::connect(&self.path).await?;
            let mut line = serde_json::to_vec(req)?;
            line.push(b'\n');
            let sent = match file {
                Some(f) => send_with_file(&stream, &line, f).await?,
                None => 0,
            };
            stream.write_all(&line[sent..]).await?;
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

/// Sends `bytes` with `file` attached (SCM_RIGHTS) in one message; returns
/// how many bytes went (the rest follows as plain writes).
async fn send_with_file(
    stream: &UnixStream,
    bytes: &[u8],
    file: &std::fs::File,
) -> std::io::Result<usize> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::os::fd::AsRawFd;
    let fds = [file.as_raw_fd()];
    loop {
        stream.writable().await?;
        let sent = stream.try_io(tokio::io::Interest::WRITABLE, || {
            let iov = [std::io::IoSlice::new(bytes)];
            let cmsg = [ControlMessage::ScmRights(&fds)];
            sendmsg::<()>(
                stream.as_raw_fd(),
                &iov,
                &cmsg,
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .map_err(std::io::Error::from)
        });
        match sent {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

//! Host side of the hybrid vsock that moat-vmm serves: connect to the VM's
//! Unix socket, send `CONNECT <port>\n`, read `OK <host_port>\n`, then the
//! stream carries the guest connection's bytes.

use std::path::Path;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Why a hybrid vsock connection failed.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The VMM's socket could not be reached.
    #[error("connecting to {path}: {source}")]
    Connect {
        /// The Unix socket path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The handshake failed or was answered with something other than `OK`.
    #[error("vsock handshake for port {port}: {reason}")]
    Handshake {
        /// Guest port asked for.
        port: u32,
        /// What went wrong.
        reason: String,
    },
}

/// Longest handshake reply accepted; the VMM is trusted less than nothing.
const MAX_REPLY: usize = 64;

/// How long the guest may take to accept a connection. moat-vmm forwards
/// CONNECT to the guest and keeps the request until the guest answers, so a
/// stuck guest would otherwise hold the caller forever.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens a stream to guest vsock `port` through the VMM socket at `uds`.
pub async fn connect(uds: &Path, port: u32) -> Result<UnixStream, VsockError> {
    let stream = UnixStream::connect(uds)
        .await
        .map_err(|source| VsockError::Connect {
            path: uds.display().to_string(),
            source,
        })?;
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(stream, port))
        .await
        .map_err(|_| VsockError::Handshake {
            port,
            reason: format!(
                "no reply within {} s (the guest did not answer)",
                HANDSHAKE_TIMEOUT.as_secs()
            ),
        })?
}

async fn handshake(mut stream: UnixStream, port: u32) -> Result<UnixStream, VsockError> {
    let fail = |reason: String| VsockError::Handshake { port, reason };
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(|e| fail(format!("sending CONNECT: {e}")))?;
    // Read the reply one byte at a time so no guest bytes after the newline
    // are consumed into a buffer that would be dropped.
    let mut reply = Vec::with_capacity(16);
    let mut reader = BufReader::with_capacity(1, &mut stream);
    loop {
        let buf = reader
            .fill_buf()
            .await
            .map_err(|e| fail(format!("reading reply: {e}")))?;
        let Some(&b) = buf.first() else {
            return Err(fail(
                "connection closed before the reply (is the guest listening?)".into(),
            ));
        };
        reader.consume(1);
        if b == b'\n' {
            break;
        }
        reply.push(b);
        if reply.len() > MAX_REPLY {
            return Err(fail("reply too long".into()));
        }
    }
    let reply = String::from_utf8_lossy(&reply);
    match reply.strip_prefix("OK ") {
        Some(p) if p.trim().parse::<u32>().is_ok() => Ok(stream),
        _ => Err(fail(format!("unexpected reply {reply:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn fake_vmm(reply: &'static [u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 12];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"CONNECT 1024");
            s.write_all(reply).await.unwrap();
        });
        (dir, path)
    }

    #[tokio::test]
    async fn accepts_ok_and_keeps_following_bytes() {
        let (_d, path) = fake_vmm(b"OK 1073741824\nhello");
        let mut s = connect(&path, 1024).await.unwrap();
        let mut rest = [0u8; 5];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"hello");
    }

    #[tokio::test]
    async fn rejects_bad_replies() {
        for reply in [&b"NO\n"[..], b"", b"OK abc\n"] {
            let reply: &'static [u8] = Box::leak(reply.to_vec().into_boxed_slice());
            let (_d, path) = fake_vmm(reply);
            let err = connect(&path, 1024).await.unwrap_err();
            assert!(
                matches!(err, VsockError::Handshake { port: 1024, .. }),
                "{err}"
            );
        }
    }

    #[tokio::test]
    async fn missing_socket_is_a_connect_error() {
        let err = connect(Path::new("/nonexistent/v.sock"), 1)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/v.sock"));
    }
}

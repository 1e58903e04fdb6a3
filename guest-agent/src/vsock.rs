//! AF_VSOCK connections as a tonic transport.

use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_vsock::{VsockAddr, VsockListener, VsockStream, VMADDR_CID_ANY};

/// One accepted vsock connection, usable by tonic's server.
pub struct VsockConn(VsockStream);

impl tonic::transport::server::Connected for VsockConn {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for VsockConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for VsockConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Listens on `port` for connections from any CID and yields them.
pub fn incoming(
    port: u32,
) -> std::io::Result<impl futures_util::Stream<Item = std::io::Result<VsockConn>>> {
    let listener = VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, port))?;
    Ok(futures_util::stream::unfold(
        listener,
        |listener| async move {
            let conn = listener.accept().await.map(|(s, _)| VsockConn(s));
            Some((conn, listener))
        },
    ))
}

/// Tells the host the agent serves: connects to the host (CID 2) on
/// [`moat_proto::AGENT_READY_VSOCK_PORT`] and writes `READY <version>\n`.
/// Best effort: with no host listener the VMM resets the connection.
pub async fn announce_ready() {
    use tokio::io::AsyncWriteExt;
    const HOST_CID: u32 = 2;
    let attempt = async {
        let mut s =
            VsockStream::connect(VsockAddr::new(HOST_CID, moat_proto::AGENT_READY_VSOCK_PORT))
                .await?;
        s.write_all(format!("READY {}\n", env!("CARGO_PKG_VERSION")).as_bytes())
            .await?;
        s.shutdown(std::net::Shutdown::Write)?;
        Ok::<_, std::io::Error>(())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), attempt).await {
        Ok(Ok(())) => tracing::debug!("readiness announced to the host"),
        Ok(Err(e)) => tracing::debug!("no host listener for the readiness notice: {e}"),
        Err(_) => tracing::debug!("readiness notice timed out"),
    }
}

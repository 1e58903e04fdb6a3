//! An accepted CRI connection behind the shim: a task pumps the client's
//! bytes through [`forward_client`] into one end of an in-memory pipe and
//! tonic's answers back, and tonic is handed the other end.

use super::forward_client;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::net::UnixStream;
use tonic::transport::server::{Connected, UdsConnectInfo};

/// The duplex buffer between the shim and tonic, each way.
const PIPE_BUFFER: usize = 64 * 1024;

/// An accepted CRI connection as tonic sees it: the shim's end of a pipe
/// whose other end rewrites the client's bytes (see the
/// [`authority`](super) module doc).
pub struct ShimmedStream {
    io: DuplexStream,
    info: UdsConnectInfo,
}

/// Puts the shim in front of an accepted connection: spawns the task that
/// pumps bytes both ways and returns the stream to hand to tonic.
pub fn accept(client: UnixStream) -> ShimmedStream {
    let info = client.connect_info();
    let (server_end, shim_end) = tokio::io::duplex(PIPE_BUFFER);
    tokio::spawn(pump(client, shim_end));
    ShimmedStream {
        io: server_end,
        info,
    }
}

async fn pump(client: UnixStream, shim: DuplexStream) {
    let (client_r, mut client_w) = client.into_split();
    let (mut shim_r, shim_w) = tokio::io::split(shim);
    let to_server = forward_client(client_r, shim_w);
    let to_client = async {
        tokio::io::copy(&mut shim_r, &mut client_w).await?;
        client_w.shutdown().await
    };
    tokio::pin!(to_server, to_client);
    tokio::select! {
        r = &mut to_server => match r {
            // The client finished sending; let the server finish answering.
            Ok(()) => {
                if let Err(e) = to_client.await {
                    tracing::debug!("CRI connection: writing to the client: {e}");
                }
            }
            // Dropping both ends closes the client's socket and tonic's
            // connection.
            Err(e) => tracing::warn!("closing CRI connection: {e}"),
        },
        r = &mut to_client => {
            if let Err(e) = r {
                tracing::debug!("CRI connection: writing to the client: {e}");
            }
        }
    }
}

impl AsyncRead for ShimmedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for ShimmedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl Connected for ShimmedStream {
    type ConnectInfo = UdsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

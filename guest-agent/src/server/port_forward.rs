//! Port forwarding: each call is one TCP connection to a port on the pod's
//! localhost (the guest's network namespace is the pod's), so a server
//! bound only to 127.0.0.1 in the pod is reachable.

use super::validate::invalid;
use super::R;
use futures_util::Stream;
use moat_proto::agent::{PortForwardInput, PortForwardOutput};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tonic::{Response, Status, Streaming};

/// The stream type of PortForward.
pub type PortForwardStream = Pin<Box<dyn Stream<Item = Result<PortForwardOutput, Status>> + Send>>;

/// Largest chunk read from the pod's socket per message.
const CHUNK: usize = 64 << 10;

/// Chunks queued toward the host before reading the socket waits.
const QUEUE: usize = 4;

/// How long connecting may take.
const CONNECT: Duration = Duration::from_secs(10);

pub(super) async fn port_forward(mut input: Streaming<PortForwardInput>) -> R<PortForwardStream> {
    let first = input
        .message()
        .await?
        .ok_or_else(|| invalid("port: the first message must name it"))?;
    let port = u16::try_from(first.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| invalid(format!("port: {} is not 1..=65535", first.port)))?;
    let conn = connect(port).await?;
    let (mut rd, mut wr) = conn.into_split();
    // Host to pod, until the host ends its side (then the socket's write
    // side is shut) or the call breaks.
    tokio::spawn(async move {
        let mut pending = Some(first.data);
        loop {
            let data = match pending.take() {
                Some(d) => d,
                None => match input.message().await {
                    Ok(Some(m)) => m.data,
                    Ok(None) => break,
                    Err(_) => return,
                },
            };
            if !data.is_empty() && wr.write_all(&data).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    });
    // Pod to host, until the pod closes its side or the host goes away.
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(async move {
        if tx.send(Ok(PortForwardOutput::default())).await.is_err() {
            return;
        }
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = tokio::select! {
                r = rd.read(&mut buf) => r,
                () = tx.closed() => return,
            };
            let item = match n {
                Ok(0) => return,
                Ok(n) => Ok(PortForwardOutput {
                    data: buf[..n].to_vec(),
                }),
                Err(e) => Err(Status::aborted(format!("reading port {port}: {e}"))),
            };
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                return;
            }
        }
    });
    Ok(Response::new(Box::pin(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    )))
}

/// Connects to `port` on 127.0.0.1, else on ::1 (a server may listen on
/// either "localhost").
async fn connect(port: u16) -> Result<TcpStream, Status> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    let attempt = |a: SocketAddr| async move {
        tokio::time::timeout(CONNECT, TcpStream::connect(a))
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    };
    match attempt(v4).await {
        Ok(s) => Ok(s),
        Err(e4) => match attempt(v6).await {
            Ok(s) => Ok(s),
            Err(_) => Err(Status::unavailable(format!(
                "connecting to localhost:{port} in the pod: {e4}"
            ))),
        },
    }
}

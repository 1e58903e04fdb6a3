//! Port-forward over SPDY/3.1 (`portforward.k8s.io`), as kubelet serves
//! it: for each forwarded connection the client opens a data and an error
//! stream with the same `requestID` and the pod `port`; once both are
//! open moatd connects to the port and carries the data stream both ways.
//! A failure is written on the error stream and ends that connection only.
//! Clients too old to send `requestID` get kubelet's fallback (the error
//! stream's id; the data stream's id minus 2).
//!
//! The connection's reader waits while a connection's queue toward the
//! pod is full (TCP's flow control then slows the client): memory stays
//! bounded, at the cost of one slow pod connection slowing the others of
//! the same session.

use super::conn::{self, FrameReader};
use super::frame::{self, Frame, HeaderCodec, FLAG_FIN};
use super::STREAM_CREATION;
use crate::pod::SandboxRecord;
use crate::streaming::port_forward::{forward, parse_port, ClientEnd, QUEUE};
use crate::streaming::StreamingServer;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Most connections (complete or half-opened) one session holds at once.
pub const MAX_CONNECTIONS: usize = 128;

/// SPDY's REFUSED_STREAM status.
const REFUSED_STREAM: u32 = 3;
/// SPDY's PROTOCOL_ERROR status.
const PROTOCOL_ERROR: u32 = 1;

/// A connection whose two streams are not both open yet.
#[derive(Default)]
struct HalfOpen {
    data: Option<u32>,
    error: Option<u32>,
    port: Option<Result<u16, String>>,
    since: Option<Instant>,
}

/// Serves port-forward streams on an upgraded connection to pod `sb`
/// until the client goes away.
pub async fn serve<S>(io: S, server: Arc<StreamingServer>, sb: SandboxRecord)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (rd, wr) = tokio::io::split(io);
    let (raw_tx, writer) = conn::writer(wr);
    let mut frames = FrameReader::new(rd);
    let mut codec = HeaderCodec::new();
    let mut half_open: HashMap<String, HalfOpen> = HashMap::new();
    // Open connections: the client's data stream → bytes toward the pod.
    let mut to_pod: HashMap<u32, mpsc::Sender<Vec<u8>>> = HashMap::new();
    // Open connections by data stream, to stop one the client resets.
    let mut running: HashMap<u32, tokio::task::AbortHandle> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut last_stream = 0;
    loop {
        while tasks.try_join_next().is_some() {}
        running.retain(|_, t| !t.is_finished());
        let idle = half_open.is_empty() && tasks.is_empty();
        let next = if idle {
            match tokio::time::timeout(server.idle, frames.next(&mut codec)).await {
                Ok(n) => n,
                Err(_) => break,
            }
        } else {
            frames.next(&mut codec).await
        };
        let frame = match next {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!("streaming: SPDY port-forward: {e}");
                break;
            }
        };
        match frame {
            Frame::SynStream {
                stream, headers, ..
            } => {
                last_stream = stream;
                let header = |k: &str| {
                    headers
                        .iter()
                        .find(|(n, _)| n == k)
                        .map(|(_, v)| v.as_str())
                };
                let kind = header("streamtype");
                if !matches!(kind, Some("data" | "error")) {
                    let _ = raw_tx.send(frame::rst_stream(stream, PROTOCOL_ERROR)).await;
                    continue;
                }
                expire(&mut half_open, &raw_tx).await;
                if half_open.len() + tasks.len() >= MAX_CONNECTIONS {
                    let _ = raw_tx.send(frame::rst_stream(stream, REFUSED_STREAM)).await;
                    continue;
                }
                let _ = raw_tx.send(frame::syn_reply(&mut codec, stream, &[])).await;
                let is_data = kind == Some("data");
                let request = header("requestid").map_or_else(
                    || {
                        let id = if is_data {
                            stream.wrapping_sub(2)
                        } else {
                            stream
                        };
                        id.to_string()
                    },
                    str::to_string,
                );
                let entry = half_open.entry(request.clone()).or_default();
                entry.since.get_or_insert_with(Instant::now);
                if is_data {
                    entry.data = Some(stream);
                    entry.port = Some(header("port").map_or_else(
                        || Err("the data stream has no port header".to_string()),
                        parse_port,
                    ));
                } else {
                    entry.error = Some(stream);
                }
                let (Some(data), Some(error)) = (entry.data, entry.error) else {
                    continue;
                };
                let port = entry.port.take().unwrap_or_else(|| Err("no port".into()));
                half_open.remove(&request);
                let (tx, from_client) = mpsc::channel(QUEUE);
                to_pod.insert(data, tx);
                let task = tasks.spawn(connection(
                    server.clone(),
                    sb.clone(),
                    port,
                    (data, error),
                    from_client,
                    raw_tx.clone(),
                ));
                running.insert(data, task);
            }
            Frame::Data {
                stream,
                flags,
                data,
            } => {
                if let Some(tx) = to_pod.get(&stream) {
                    if !data.is_empty() && tx.send(data).await.is_err() {
                        to_pod.remove(&stream);
                    }
                }
                if flags & FLAG_FIN != 0 {
                    // The client ended its side of this connection.
                    to_pod.remove(&stream);
                }
            }
            Frame::RstStream { stream, .. } => {
                // The client gave up this connection: stop it at once.
                to_pod.remove(&stream);
                if let Some(t) = running.remove(&stream) {
                    t.abort();
                }
            }
            Frame::Ping(id) => {
                let _ = raw_tx.send(frame::ping(id)).await;
            }
            Frame::GoAway { .. } => break,
            Frame::SynReply { .. } | Frame::Other(_) => {}
        }
    }
    // The client is gone: end every connection of the session.
    to_pod.clear();
    tasks.shutdown().await;
    let _ = raw_tx.send(frame::go_away(last_stream)).await;
    let _ = raw_tx.send(Vec::new()).await;
    drop(raw_tx);
    let _ = writer.await;
}

/// Drops half-opened connections older than the stream-creation timeout,
/// telling the client on their error stream (as kubelet does).
async fn expire(half_open: &mut HashMap<String, HalfOpen>, raw_tx: &mpsc::Sender<Vec<u8>>) {
    let old: Vec<String> = half_open
        .iter()
        .filter(|(_, h)| h.since.is_some_and(|t| t.elapsed() > STREAM_CREATION))
        .map(|(k, _)| k.clone())
        .collect();
    for k in old {
        let Some(h) = half_open.remove(&k) else {
            continue;
        };
        if let Some(e) = h.error {
            let msg = format!("timed out waiting for the data stream of request {k}");
            let _ = conn::send_data(raw_tx, e, msg.as_bytes()).await;
            let _ = raw_tx.send(frame::data(e, FLAG_FIN, &[])).await;
        }
        if let Some(d) = h.data {
            let _ = raw_tx.send(frame::data(d, FLAG_FIN, &[])).await;
        }
    }
}

/// Carries one forwarded connection: the pod's bytes on the data stream,
/// then FIN on it; a failure on the error stream, then FIN on that.
async fn connection(
    server: Arc<StreamingServer>,
    sb: SandboxRecord,
    port: Result<u16, String>,
    (data, error): (u32, u32),
    from_client: mpsc::Receiver<Vec<u8>>,
    raw_tx: mpsc::Sender<Vec<u8>>,
) {
    let (to_client, mut to_rx) = mpsc::channel::<Vec<u8>>(QUEUE);
    let pump = {
        let raw_tx = raw_tx.clone();
        tokio::spawn(async move {
            while let Some(d) = to_rx.recv().await {
                if !conn::send_data(&raw_tx, data, &d).await {
                    return;
                }
            }
        })
    };
    let result = match port {
        Ok(port) => {
            let end = ClientEnd {
                from_client,
                to_client,
            };
            forward(&server, &sb, port, end).await
        }
        Err(e) => {
            drop(to_client);
            Err(e)
        }
    };
    let _ = pump.await;
    let _ = raw_tx.send(frame::data(data, FLAG_FIN, &[])).await;
    if let Err(e) = result {
        tracing::info!("streaming: {e}");
        let _ = conn::send_data(&raw_tx, error, e.as_bytes()).await;
    }
    let _ = raw_tx.send(frame::data(error, FLAG_FIN, &[])).await;
}

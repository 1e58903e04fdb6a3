//! Port-forward sessions: each forwarded connection is a pair of streams
//! (data, error) to one port on the pod's localhost. [`forward`] carries one
//! connection between the client's data stream and the pod, whatever
//! carries the streams; [`websocket_session`] runs kubelet's WebSocket
//! form (a channel pair per port named in the URL); the SPDY form is in
//! [`super::spdy::port_forward`].

use super::channels::{self, Channels, Incoming};
use super::StreamingServer;
use crate::pod::SandboxRecord;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Chunks queued per direction per connection.
pub const QUEUE: usize = 4;

/// Most ports one WebSocket session forwards (base64 framing numbers
/// channels with one digit: two per port).
pub const MAX_WEBSOCKET_PORTS: usize = 5;

/// The ports a port-forward URL's query names (`?port=80&port=8080`).
pub fn query_ports(query: Option<&str>) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == "port" {
            ports.push(parse_port(v)?);
        }
    }
    Ok(ports)
}

/// A port number from a header or query (1 to 65535).
pub fn parse_port(s: &str) -> Result<u16, String> {
    s.trim()
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("invalid port {s:?}: must be 1 to 65535"))
}

/// The client's side of one forwarded connection.
pub struct ClientEnd {
    /// Bytes from the client; closed when the client ends its side.
    pub from_client: mpsc::Receiver<Vec<u8>>,
    /// Bytes for the client; dropped when the pod ended its side.
    pub to_client: mpsc::Sender<Vec<u8>>,
}

/// Carries one connection between the client and `port` in pod `sb` until
/// the pod ends its side, the client goes away, or nothing moves either way
/// for the idle timeout. The error is what the client's error stream gets.
pub async fn forward(
    server: &StreamingServer,
    sb: &SandboxRecord,
    port: u16,
    end: ClientEnd,
) -> Result<(), String> {
    let ClientEnd {
        mut from_client,
        to_client,
    } = end;
    let failure =
        |e: &dyn std::fmt::Display| format!("error forwarding port {port} to pod {}: {e}", sb.id);
    let conn = server
        .pods
        .connect_port(sb, port)
        .await
        .map_err(|e| failure(&crate::chain(&e)))?;
    let mut from_pod = conn.from_pod;
    let to_pod = conn.to_pod;
    let active = Arc::new(AtomicBool::new(false));
    // Client to pod; its end shuts the pod connection's write side.
    let upstream = {
        let active = active.clone();
        channels::AbortOnDrop(tokio::spawn(async move {
            while let Some(d) = from_client.recv().await {
                active.store(true, Ordering::Relaxed);
                if to_pod.send(d).await.is_err() {
                    return;
                }
            }
        }))
    };
    // Pod to client, until the pod ends its side.
    loop {
        let m = tokio::select! {
            m = tokio::time::timeout(server.idle, from_pod.message()) => m,
            () = to_client.closed() => return Ok(()),
        };
        match m {
            Ok(Ok(Some(o))) => {
                if !o.data.is_empty() && to_client.send(o.data).await.is_err() {
                    return Ok(());
                }
            }
            Ok(Ok(None)) => break,
            Ok(Err(s)) => return Err(failure(&s.message())),
            Err(_) if active.swap(false, Ordering::Relaxed) => {}
            Err(_) => return Err(failure(&"idle timeout")),
        }
    }
    // The pod closed its side: let what the client already sent reach it.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while !upstream.0.is_finished() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    Ok(())
}

/// Runs kubelet's WebSocket port-forward on `ch`: for the i-th port,
/// channel 2i carries data and 2i+1 errors; each starts with the port
/// (two bytes, little-endian). One connection per port; the session ends
/// when all have.
pub async fn websocket_session(
    server: Arc<StreamingServer>,
    ch: Channels,
    sb: SandboxRecord,
    ports: Vec<u16>,
) {
    let Channels {
        out,
        mut input,
        version,
        done,
        reader,
    } = ch;
    let mut senders = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let Ok(data_ch) = u8::try_from(2 * i) else {
            break;
        };
        let error_ch = data_ch + 1;
        for c in [data_ch, error_ch] {
            let _ = out.send((c, port.to_le_bytes().to_vec())).await;
        }
        let (from_tx, from_client) = mpsc::channel(QUEUE);
        let (to_client, mut to_rx) = mpsc::channel::<Vec<u8>>(QUEUE);
        senders.push(Some(from_tx));
        let (server, sb, out) = (server.clone(), sb.clone(), out.clone());
        tasks.spawn(async move {
            let pump = {
                let out = out.clone();
                tokio::spawn(async move {
                    while let Some(d) = to_rx.recv().await {
                        if out.send((data_ch, d)).await.is_err() {
                            return;
                        }
                    }
                })
            };
            let r = forward(
                &server,
                &sb,
                port,
                ClientEnd {
                    from_client,
                    to_client,
                },
            )
            .await;
            let _ = pump.await;
            if let Err(e) = r {
                tracing::info!("streaming: {e}");
                let _ = out.send((error_ch, e.into_bytes())).await;
            }
        });
    }
    loop {
        tokio::select! {
            m = input.recv() => match m {
                Some(Incoming::Data(c, d)) if c % 2 == 0 => {
                    if let Some(Some(tx)) = senders.get(usize::from(c / 2)) {
                        let _ = tx.send(d).await;
                    }
                }
                Some(Incoming::CloseChannel(c)) => {
                    if let Some(s) = senders.get_mut(usize::from(c / 2)) {
                        s.take();
                    }
                }
                Some(Incoming::Data(..) | Incoming::Nothing) => {}
                Some(Incoming::End) | None => {
                    // The client is gone: its side of every connection ends.
                    senders.clear();
                    while tasks.join_next().await.is_some() {}
                    break;
                }
            },
            r = tasks.join_next() => if r.is_none() { break },
        }
    }
    channels::finish(out, version, done, reader, None).await;
}

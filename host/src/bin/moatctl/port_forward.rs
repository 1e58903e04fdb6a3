//! `moatctl port-forward POD [LOCAL:]REMOTE...`, as kubectl and crictl do
//! it: one SPDY/3.1 session (`portforward.k8s.io`) on the URL PortForward
//! answers; each local connection opens a data and an error stream with
//! its own request id; either side ending its half is passed on.

use moat_proto::cri::runtime_service_client::RuntimeServiceClient;
use moat_proto::cri::PortForwardRequest;
use moatd::streaming::spdy::conn::{self, FrameReader};
use moatd::streaming::spdy::frame::{self, Frame, HeaderCodec, FLAG_FIN};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tonic::transport::Channel;

/// One `[LOCAL:]REMOTE` pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortPair {
    /// Local port (0: any free one).
    pub local: u16,
    /// The pod's port.
    pub remote: u16,
}

/// Parses `[LOCAL:]REMOTE` (a lone port means the same port locally).
pub fn parse_pair(s: &str) -> Result<PortPair, String> {
    let port = |p: &str| p.parse::<u16>().map_err(|e| format!("{s:?}: {e}"));
    let (local, remote) = match s.split_once(':') {
        Some((l, r)) => (if l.is_empty() { 0 } else { port(l)? }, port(r)?),
        None => (port(s)?, port(s)?),
    };
    if remote == 0 {
        return Err(format!("{s:?}: the pod port must be 1 to 65535"));
    }
    Ok(PortPair { local, remote })
}

/// Streams of the session by id, and where their frames go.
type Routes = Arc<Mutex<HashMap<u32, mpsc::Sender<Frame>>>>;

/// The session's shared state: its frame writer and the next stream.
struct Session {
    raw: mpsc::Sender<Vec<u8>>,
    /// The header encoder and the next stream id (SYN_STREAMs must leave
    /// in id order, so both are taken together).
    opener: tokio::sync::Mutex<(HeaderCodec, u32, u64)>,
    routes: Routes,
}

/// Forwards each pair until moatd ends the session or this is interrupted.
pub async fn run(
    rt: &mut RuntimeServiceClient<Channel>,
    pod: String,
    pairs: Vec<PortPair>,
) -> anyhow::Result<()> {
    let url = rt
        .port_forward(PortForwardRequest {
            pod_sandbox_id: pod,
            port: pairs.iter().map(|p| i32::from(p.remote)).collect(),
        })
        .await?
        .into_inner()
        .url;
    let io = moatd::streaming::spdy::client::upgrade(&url, "portforward.k8s.io").await?;
    let (rd, wr) = io.into_split();
    let (raw, writer) = conn::writer(wr);
    let session = Arc::new(Session {
        raw,
        opener: tokio::sync::Mutex::new((HeaderCodec::new(), 1, 0)),
        routes: Arc::default(),
    });
    for p in pairs {
        let listener = TcpListener::bind(("127.0.0.1", p.local)).await?;
        println!("Forwarding from {} -> {}", listener.local_addr()?, p.remote);
        let session = session.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(connection(session.clone(), tcp, p.remote));
            }
        });
    }
    let reader = tokio::spawn(read_frames(FrameReader::new(rd), session.clone()));
    tokio::select! {
        _ = reader => eprintln!("moatd ended the port-forward session"),
        _ = tokio::signal::ctrl_c() => {}
    }
    let _ = session.raw.send(frame::go_away(0)).await;
    let _ = session.raw.send(Vec::new()).await;
    drop(session);
    let _ = writer.await;
    Ok(())
}

/// Routes the server's frames to the connections their streams belong to.
async fn read_frames(mut frames: FrameReader<tokio::net::tcp::OwnedReadHalf>, s: Arc<Session>) {
    let mut codec = HeaderCodec::new();
    while let Ok(Some(f)) = frames.next(&mut codec).await {
        let stream = match &f {
            Frame::Data { stream, .. } | Frame::RstStream { stream, .. } => *stream,
            Frame::Ping(id) => {
                let _ = s.raw.send(frame::ping(*id)).await;
                continue;
            }
            Frame::GoAway { .. } => return,
            _ => continue,
        };
        let route = s.routes.lock().ok().and_then(|r| r.get(&stream).cloned());
        if let Some(tx) = route {
            let _ = tx.send(f).await;
        }
    }
}

/// Opens a stream of `kind` for request `request` to `port`.
async fn open(s: &Session, kind: &str, port: u16, request: u64) -> (u32, mpsc::Receiver<Frame>) {
    let (tx, rx) = mpsc::channel(16);
    let mut opener = s.opener.lock().await;
    let (codec, next, _) = &mut *opener;
    let id = *next;
    *next += 2;
    if let Ok(mut r) = s.routes.lock() {
        r.insert(id, tx);
    }
    let (port, request) = (port.to_string(), request.to_string());
    let headers = [
        ("streamType", kind),
        ("port", port.as_str()),
        ("requestID", request.as_str()),
    ];
    let _ = s.raw.send(frame::syn_stream(codec, id, 0, &headers)).await;
    (id, rx)
}

/// Carries one local connection over a data/error stream pair.
async fn connection(s: Arc<Session>, tcp: TcpStream, port: u16) {
    let request = {
        let mut o = s.opener.lock().await;
        o.2 += 1;
        o.2
    };
    let (error, mut error_rx) = open(&s, "error", port, request).await;
    let (data, mut data_rx) = open(&s, "data", port, request).await;
    let (mut rd, mut wr) = tcp.into_split();
    let up = {
        let raw = s.raw.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 << 10];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if !conn::send_data(&raw, data, &buf[..n]).await {
                            return;
                        }
                    }
                }
            }
            let _ = raw.send(frame::data(data, FLAG_FIN, &[])).await;
        })
    };
    // The pod's bytes until its side ends; then shut the local write side.
    // A local client that went away resets the data stream: moatd stops
    // that connection, and its frames stop here.
    while let Some(f) = data_rx.recv().await {
        match f {
            Frame::Data { flags, data: d, .. } => {
                if wr.write_all(&d).await.is_err() {
                    if let Ok(mut r) = s.routes.lock() {
                        r.remove(&data);
                    }
                    drop(data_rx);
                    let _ = s.raw.send(frame::rst_stream(data, CANCEL)).await;
                    up.abort();
                    return forget(&s, data, error);
                }
                if flags & FLAG_FIN != 0 {
                    break;
                }
            }
            _ => break,
        }
    }
    let _ = wr.shutdown().await;
    let mut message = Vec::new();
    while let Some(Frame::Data { flags, data, .. }) = error_rx.recv().await {
        message.extend_from_slice(&data);
        if flags & FLAG_FIN != 0 {
            break;
        }
    }
    if !message.is_empty() {
        eprintln!("error: {}", String::from_utf8_lossy(&message));
    }
    up.abort();
    forget(&s, data, error);
}

/// SPDY's CANCEL status.
const CANCEL: u32 = 5;

/// Drops the routes of a connection's streams.
fn forget(s: &Session, data: u32, error: u32) {
    if let Ok(mut r) = s.routes.lock() {
        r.remove(&data);
        r.remove(&error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_pairs_parse_as_kubectl_takes_them() {
        assert_eq!(
            parse_pair("8080:80").unwrap(),
            PortPair {
                local: 8080,
                remote: 80
            }
        );
        assert_eq!(parse_pair(":80").unwrap().local, 0);
        assert_eq!(
            parse_pair("53").unwrap(),
            PortPair {
                local: 53,
                remote: 53
            }
        );
        assert!(parse_pair("1:0").is_err());
        assert!(parse_pair("x:80").is_err());
        assert!(parse_pair("70000").is_err());
    }
}

//! Remote commands over SPDY/3.1, as kubelet's streaming server serves
//! them to kubectl (through the API server) and crictl: the client upgrades
//! with `Upgrade: SPDY/3.1` and `X-Stream-Protocol-Version` (v4 to v2 of
//! `channel.k8s.io`), then opens one stream per channel, each naming its
//! `streamType` (stdin, stdout, stderr, error, resize). Like Kubernetes'
//! `spdystream`, the session uses no SPDY flow control (TCP's is enough).
//!
//! - [`frame`]: the frames and header compression.
//! - [`conn`]: reading frames and writing them, for every session.
//! - [`client`]: the client's upgrade (moatctl).
//! - [`port_forward`]: port-forward sessions (`portforward.k8s.io`).

pub mod client;
pub mod conn;
pub mod frame;
pub mod port_forward;

use super::channels::{
    AbortOnDrop, Channels, Incoming, ERROR, QUEUE, RESIZE, STDERR, STDIN, STDOUT,
};
use frame::{Frame, HeaderCodec, FLAG_FIN};
use http::{header, HeaderMap, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Remote-command protocol versions over SPDY, best first.
pub const REMOTE_COMMAND: &[(&str, u8)] = &[
    ("v4.channel.k8s.io", 4),
    ("v3.channel.k8s.io", 3),
    ("v2.channel.k8s.io", 2),
    ("channel.k8s.io", 1),
];

/// The request header listing the client's protocol versions.
const PROTOCOL_HEADER: &str = "x-stream-protocol-version";

/// How long the client has to open its streams after the upgrade.
pub(super) const STREAM_CREATION: Duration = Duration::from_secs(30);

/// True when `headers` ask for a SPDY/3.1 upgrade.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("SPDY/3.1"))
}

/// The port-forward protocol over SPDY (one version).
pub const PORT_FORWARD: &[(&str, u8)] = &[("portforward.k8s.io", 1)];

/// The first of the `supported` versions the client lists, in the client's
/// order (Kubernetes' `httpstream.Handshake`).
pub fn negotiate(
    headers: &HeaderMap,
    supported: &[(&'static str, u8)],
) -> Result<(&'static str, u8), String> {
    let offered: Vec<&str> = headers
        .get_all(PROTOCOL_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    offered
        .iter()
        .find_map(|o| supported.iter().find(|(n, _)| n == o).copied())
        .ok_or_else(|| {
            format!(
                "unable to upgrade: no common protocol version in {offered:?}; supports {:?}",
                supported.iter().map(|(n, _)| *n).collect::<Vec<_>>()
            )
        })
}

/// The `101 Switching Protocols` answer.
pub fn accept(protocol: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(
        header::CONNECTION,
        http::HeaderValue::from_static("Upgrade"),
    );
    h.insert(header::UPGRADE, http::HeaderValue::from_static("SPDY/3.1"));
    if let Ok(v) = http::HeaderValue::from_str(protocol) {
        h.insert(PROTOCOL_HEADER, v);
    }
    r
}

/// Which channels the client must open before the session starts.
#[derive(Debug, Clone, Copy)]
pub struct Expected {
    /// stdin.
    pub stdin: bool,
    /// stdout.
    pub stdout: bool,
    /// stderr.
    pub stderr: bool,
    /// resize (a terminal, from version 3 on).
    pub resize: bool,
}

impl Expected {
    fn channels(self) -> Vec<u8> {
        let mut c = vec![ERROR];
        for (want, ch) in [
            (self.stdin, STDIN),
            (self.stdout, STDOUT),
            (self.stderr, STDERR),
            (self.resize, RESIZE),
        ] {
            if want {
                c.push(ch);
            }
        }
        c
    }
}

fn channel_of(stream_type: &str) -> Option<u8> {
    Some(match stream_type {
        "stdin" => STDIN,
        "stdout" => STDOUT,
        "stderr" => STDERR,
        "error" => ERROR,
        "resize" => RESIZE,
        _ => return None,
    })
}

/// Streams the client opened, by channel.
type StreamMap = Arc<Mutex<HashMap<u8, u32>>>;

/// Carries a session's channels over an upgraded SPDY connection, once the
/// client has opened the streams `expected` names.
pub async fn carry<S>(io: S, version: u8, expected: Expected) -> Result<Channels, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (rd, wr) = tokio::io::split(io);
    let (raw_tx, writer) = conn::writer(wr);
    let streams: StreamMap = Arc::default();
    let (ready_tx, mut ready_rx) = watch::channel(false);
    let (in_tx, input) = mpsc::channel::<Incoming>(QUEUE);
    let reader = {
        let streams = streams.clone();
        let raw_tx = raw_tx.clone();
        let want = expected.channels();
        tokio::spawn(async move {
            let mut codec = HeaderCodec::new();
            let mut frames = conn::FrameReader::new(rd);
            let mut resize = Vec::new();
            loop {
                let frame = match frames.next(&mut codec).await {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!("streaming: SPDY: {e}");
                        break;
                    }
                };
                let channel_of_stream = |id: u32| {
                    streams
                        .lock()
                        .ok()
                        .and_then(|m| m.iter().find(|(_, s)| **s == id).map(|(c, _)| *c))
                };
                match frame {
                    Frame::SynStream {
                        stream, headers, ..
                    } => {
                        let ty = headers
                            .iter()
                            .find(|(k, _)| k == "streamtype")
                            .map(|(_, v)| v.as_str());
                        let Some(ch) = ty.and_then(channel_of) else {
                            let _ = raw_tx.send(frame::rst_stream(stream, 1)).await;
                            continue;
                        };
                        let _ = raw_tx.send(frame::syn_reply(&mut codec, stream, &[])).await;
                        let all = streams.lock().map(|mut m| {
                            m.insert(ch, stream);
                            want.iter().all(|c| m.contains_key(c))
                        });
                        if all.unwrap_or(false) {
                            let _ = ready_tx.send(true);
                        }
                    }
                    Frame::Data {
                        stream,
                        flags,
                        data,
                    } => match channel_of_stream(stream) {
                        Some(STDIN) => {
                            if !data.is_empty() {
                                let _ = in_tx.send(Incoming::Data(STDIN, data)).await;
                            }
                            if flags & FLAG_FIN != 0 {
                                let _ = in_tx.send(Incoming::CloseChannel(STDIN)).await;
                            }
                        }
                        Some(RESIZE) => {
                            resize.extend_from_slice(&data);
                            for size in take_json_objects(&mut resize) {
                                let _ = in_tx.send(Incoming::Data(RESIZE, size)).await;
                            }
                        }
                        _ => {}
                    },
                    Frame::RstStream { stream, .. } => {
                        if channel_of_stream(stream) == Some(STDIN) {
                            let _ = in_tx.send(Incoming::CloseChannel(STDIN)).await;
                        }
                    }
                    Frame::Ping(id) => {
                        let _ = raw_tx.send(frame::ping(id)).await;
                    }
                    Frame::GoAway { .. } => break,
                    Frame::SynReply { .. } | Frame::Other(_) => {}
                }
            }
            let _ = in_tx.send(Incoming::End).await;
        })
    };
    let opened = tokio::time::timeout(STREAM_CREATION, ready_rx.wait_for(|r| *r)).await;
    if !matches!(opened, Ok(Ok(_))) {
        reader.abort();
        return Err("the client did not open its streams in time".into());
    }
    let (out, mut out_rx) = mpsc::channel::<(u8, Vec<u8>)>(QUEUE);
    // Maps channel data to DATA frames; at the end, FIN on every stream
    // moatd writes, then GOAWAY.
    let done = tokio::spawn(async move {
        let stream_of = |ch: u8| streams.lock().ok().and_then(|m| m.get(&ch).copied());
        while let Some((ch, data)) = out_rx.recv().await {
            let Some(id) = stream_of(ch) else { continue };
            if !conn::send_data(&raw_tx, id, &data).await {
                return;
            }
        }
        for ch in [STDOUT, STDERR, ERROR] {
            if let Some(id) = stream_of(ch) {
                let _ = raw_tx.send(frame::data(id, FLAG_FIN, &[])).await;
            }
        }
        let last = stream_of(ERROR).unwrap_or(0);
        let _ = raw_tx.send(frame::go_away(last)).await;
        let _ = raw_tx.send(Vec::new()).await;
        let _ = writer.await;
    });
    Ok(Channels {
        out,
        input,
        version,
        done,
        reader: AbortOnDrop(reader),
    })
}

/// Splits the complete JSON objects off the front of `buf` (a client
/// writes terminal sizes as a stream of objects, which DATA frames may cut
/// anywhere).
fn take_json_objects(buf: &mut Vec<u8>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut consumed = 0;
    let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<serde_json::Value>();
    while let Some(Ok(v)) = it.next() {
        out.push(v.to_string().into_bytes());
        consumed = it.byte_offset();
    }
    buf.drain(..consumed);
    if buf.len() > 4096 {
        buf.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn negotiation_follows_the_clients_order() {
        let mut h = HeaderMap::new();
        h.append(PROTOCOL_HEADER, "v5.channel.k8s.io".parse().unwrap());
        h.append(PROTOCOL_HEADER, "v3.channel.k8s.io".parse().unwrap());
        h.append(PROTOCOL_HEADER, "v4.channel.k8s.io".parse().unwrap());
        assert_eq!(
            negotiate(&h, REMOTE_COMMAND).unwrap(),
            ("v3.channel.k8s.io", 3)
        );
        assert!(negotiate(&HeaderMap::new(), REMOTE_COMMAND).is_err());
        assert!(negotiate(&h, PORT_FORWARD).is_err());
    }

    #[test]
    fn resize_objects_are_found_across_frames() {
        let mut b = br#"{"Width":80,"Height":24}{"Width":1"#.to_vec();
        assert_eq!(
            take_json_objects(&mut b),
            vec![br#"{"Height":24,"Width":80}"#.to_vec()]
        );
        b.extend_from_slice(br#"00,"Height":30}"#);
        assert_eq!(
            take_json_objects(&mut b),
            vec![br#"{"Height":30,"Width":100}"#.to_vec()]
        );
        assert!(b.is_empty());
    }

    /// Plays a spdystream client against `carry` over an in-memory pipe.
    #[tokio::test]
    async fn a_session_over_spdy_streams() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let expected = Expected {
            stdin: true,
            stdout: true,
            stderr: false,
            resize: false,
        };
        let session = tokio::spawn(carry(server, 4, expected));
        let (mut crd, mut cwr) = tokio::io::split(client);
        let mut codec = HeaderCodec::new();
        for (id, ty) in [(1, "error"), (3, "stdin"), (5, "stdout")] {
            let f = frame::syn_stream(&mut codec, id, 0, &[("streamType", ty)]);
            cwr.write_all(&f).await.unwrap();
        }
        let mut ch = session.await.unwrap().unwrap();
        cwr.write_all(&frame::data(3, 0, b"hi")).await.unwrap();
        cwr.write_all(&frame::data(3, FLAG_FIN, b"")).await.unwrap();
        assert_eq!(
            ch.input.recv().await,
            Some(Incoming::Data(STDIN, b"hi".to_vec()))
        );
        assert_eq!(ch.input.recv().await, Some(Incoming::CloseChannel(STDIN)));
        ch.out.send((STDOUT, b"out".to_vec())).await.unwrap();
        ch.out.send((ERROR, b"{}".to_vec())).await.unwrap();
        drop(ch.out);
        ch.done.await.unwrap();
        let mut all = Vec::new();
        crd.read_to_end(&mut all).await.unwrap();
        let mut frames = Vec::new();
        let mut rest = all.as_slice();
        while let Some((f, n)) = frame::parse(rest, &mut codec).unwrap() {
            frames.push(f);
            rest = &rest[n..];
        }
        let replies = frames
            .iter()
            .filter(|f| matches!(f, Frame::SynReply { .. }))
            .count();
        assert_eq!(replies, 3);
        let data: Vec<(u32, u8, &[u8])> = frames
            .iter()
            .filter_map(|f| match f {
                Frame::Data {
                    stream,
                    flags,
                    data,
                } => Some((*stream, *flags, data.as_slice())),
                _ => None,
            })
            .collect();
        assert_eq!(
            data,
            vec![
                (5, 0, &b"out"[..]),
                (1, 0, &b"{}"[..]),
                (5, FLAG_FIN, &b""[..]),
                (1, FLAG_FIN, &b""[..])
            ]
        );
        assert!(matches!(
            frames.last(),
            Some(Frame::GoAway { last_stream: 1, .. })
        ));
    }
}

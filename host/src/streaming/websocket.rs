//! Kubernetes' channel protocols over WebSocket (`channel.k8s.io`, its
//! base64 form, and the `v4.` and `v5.` versions remote commands use):
//! choosing one, completing the upgrade, and one channel byte (or digit,
//! base64) before each message. Version 5 adds a close signal
//! (`255, channel`) so a client can end stdin and keep reading.

use super::channels::{AbortOnDrop, Channels, Incoming, QUEUE};
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderMap, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Bytes;
use tokio_tungstenite::tungstenite::Message;

/// A channel protocol moatd speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelProtocol {
    /// Its `Sec-WebSocket-Protocol` name ("" when the client named none).
    pub name: &'static str,
    /// Remote-command protocol version (1 to 5): how the end is told.
    pub version: u8,
    /// Text messages: a channel digit and base64 data.
    pub base64: bool,
}

/// The protocols of exec and attach, best first.
pub const REMOTE_COMMAND: &[ChannelProtocol] = &[
    ChannelProtocol {
        name: "v5.channel.k8s.io",
        version: 5,
        base64: false,
    },
    ChannelProtocol {
        name: "v4.channel.k8s.io",
        version: 4,
        base64: false,
    },
    ChannelProtocol {
        name: "v4.base64.channel.k8s.io",
        version: 4,
        base64: true,
    },
    ChannelProtocol {
        name: "channel.k8s.io",
        version: 1,
        base64: false,
    },
    ChannelProtocol {
        name: "base64.channel.k8s.io",
        version: 1,
        base64: true,
    },
];

/// The protocols of port-forward (kubelet's), best first.
pub const PORT_FORWARD: &[ChannelProtocol] = &[
    ChannelProtocol {
        name: "v4.channel.k8s.io",
        version: 4,
        base64: false,
    },
    ChannelProtocol {
        name: "v4.base64.channel.k8s.io",
        version: 4,
        base64: true,
    },
];

/// The v5 message that closes a channel: this byte, then the channel.
const STREAM_CLOSE: u8 = 255;

/// Largest message accepted from a client.
pub const MAX_MESSAGE: usize = 1 << 20;

/// True when `headers` ask for a WebSocket upgrade.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has(header::CONNECTION, "upgrade") && has(header::UPGRADE, "websocket")
}

/// The first protocol the client offers that moatd speaks, in the
/// client's order (as Kubernetes chooses); a client that offers none gets
/// the binary version 1 protocol.
pub fn negotiate(
    headers: &HeaderMap,
    supported: &[ChannelProtocol],
) -> Result<ChannelProtocol, String> {
    let offered: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if offered.is_empty() {
        return Ok(ChannelProtocol {
            name: "",
            version: 1,
            base64: false,
        });
    }
    offered
        .iter()
        .find_map(|o| supported.iter().find(|s| s.name == *o).copied())
        .ok_or_else(|| {
            let names: Vec<&str> = supported.iter().map(|s| s.name).collect();
            format!("requested protocol(s) are not supported: {offered:?}; supports {names:?}")
        })
}

/// The `101 Switching Protocols` answer to a WebSocket upgrade request.
pub fn accept(
    headers: &HeaderMap,
    protocol: &ChannelProtocol,
) -> Result<Response<Full<Bytes>>, String> {
    let version = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok());
    if version != Some("13") {
        return Err("Sec-WebSocket-Version: must be 13".into());
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or("Sec-WebSocket-Key: required")?;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut r = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept);
    if !protocol.name.is_empty() {
        r = r.header(header::SEC_WEBSOCKET_PROTOCOL, protocol.name);
    }
    r.body(Full::new(Bytes::new())).map_err(|e| e.to_string())
}

/// One message of `data` on `channel`.
pub fn encode(p: &ChannelProtocol, channel: u8, data: &[u8]) -> Message {
    if p.base64 {
        let mut s = String::with_capacity(1 + data.len().div_ceil(3) * 4);
        s.push(char::from(b'0' + channel));
        base64::engine::general_purpose::STANDARD.encode_string(data, &mut s);
        Message::Text(s.into())
    } else {
        let mut v = Vec::with_capacity(1 + data.len());
        v.push(channel);
        v.extend_from_slice(data);
        Message::Binary(v.into())
    }
}

/// Carries a session's channels over `ws`; the client first gets an empty
/// message on channel `hello`, if any.
pub fn carry<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    proto: ChannelProtocol,
    hello: Option<u8>,
) -> Channels
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let (out, mut out_rx) = tokio::sync::mpsc::channel::<(u8, Vec<u8>)>(QUEUE);
    let (in_tx, input) = tokio::sync::mpsc::channel::<Incoming>(QUEUE);
    let done = tokio::spawn(async move {
        if let Some(h) = hello {
            if sink.send(encode(&proto, h, &[])).await.is_err() {
                return;
            }
        }
        while let Some((channel, data)) = out_rx.recv().await {
            if sink.send(encode(&proto, channel, &data)).await.is_err() {
                return;
            }
        }
        let _ = sink.send(Message::Close(None)).await;
        let _ = sink.close().await;
    });
    let reader = tokio::spawn(async move {
        loop {
            let incoming = match stream.next().await {
                Some(Ok(m)) => match decode(&proto, m) {
                    Ok(i) => i,
                    Err(e) => {
                        tracing::debug!("streaming: ignoring a client message: {e}");
                        continue;
                    }
                },
                _ => Incoming::End,
            };
            let end = incoming == Incoming::End;
            if in_tx.send(incoming).await.is_err() || end {
                return;
            }
        }
    });
    Channels {
        out,
        input,
        version: proto.version,
        done,
        reader: AbortOnDrop(reader),
    }
}

/// Decodes a client message.
pub fn decode(p: &ChannelProtocol, msg: Message) -> Result<Incoming, String> {
    let data: Vec<u8> = match msg {
        Message::Binary(b) => b.into(),
        Message::Text(t) => t.as_bytes().to_vec(),
        Message::Close(_) => return Ok(Incoming::End),
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return Ok(Incoming::Nothing),
    };
    let Some((&first, rest)) = data.split_first() else {
        return Ok(Incoming::Nothing);
    };
    if p.version >= 5 && first == STREAM_CLOSE {
        return match rest {
            [channel] => Ok(Incoming::CloseChannel(*channel)),
            _ => Err("a close signal names exactly one channel".into()),
        };
    }
    if p.base64 {
        let channel = first
            .checked_sub(b'0')
            .filter(|c| *c <= 9)
            .ok_or("a base64 message must start with a channel digit")?;
        let data = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|e| format!("channel {channel}: bad base64: {e}"))?;
        return Ok(Incoming::Data(channel, data));
    }
    Ok(Incoming::Data(first, rest.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn negotiation_follows_the_clients_order() {
        let h = headers(&[(
            "sec-websocket-protocol",
            "v4.channel.k8s.io, v5.channel.k8s.io",
        )]);
        assert_eq!(negotiate(&h, REMOTE_COMMAND).unwrap().version, 4);
        let h = headers(&[
            ("sec-websocket-protocol", "bogus"),
            ("sec-websocket-protocol", "v4.base64.channel.k8s.io"),
        ]);
        let p = negotiate(&h, REMOTE_COMMAND).unwrap();
        assert!(p.base64 && p.version == 4);
        assert_eq!(
            negotiate(&HeaderMap::new(), REMOTE_COMMAND).unwrap().name,
            ""
        );
        let h = headers(&[("sec-websocket-protocol", "SPDY/3.1")]);
        assert!(negotiate(&h, REMOTE_COMMAND).is_err());
    }

    #[test]
    fn the_upgrade_answer_carries_the_accept_key_and_protocol() {
        let h = headers(&[
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        let r = accept(&h, &REMOTE_COMMAND[0]).unwrap();
        assert_eq!(r.status(), StatusCode::SWITCHING_PROTOCOLS);
        // RFC 6455's own example.
        assert_eq!(
            r.headers()[header::SEC_WEBSOCKET_ACCEPT],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(
            r.headers()[header::SEC_WEBSOCKET_PROTOCOL],
            "v5.channel.k8s.io"
        );
        assert!(accept(
            &headers(&[("sec-websocket-version", "13")]),
            &REMOTE_COMMAND[0]
        )
        .is_err());
    }

    #[test]
    fn binary_and_base64_framing_round_trip() {
        for p in REMOTE_COMMAND {
            let m = encode(p, 2, b"hello\x00\xff");
            assert_eq!(
                decode(p, m).unwrap(),
                Incoming::Data(2, b"hello\x00\xff".to_vec())
            );
        }
        let b64 = REMOTE_COMMAND[2];
        assert_eq!(encode(&b64, 1, b"hi"), Message::Text("1aGk=".into()));
        assert!(decode(&b64, Message::Text("x!!".into())).is_err());
    }

    #[test]
    fn v5_closes_a_channel_and_earlier_versions_do_not() {
        let v5 = REMOTE_COMMAND[0];
        let close = Message::Binary(vec![255, 0].into());
        assert_eq!(
            decode(&v5, close.clone()).unwrap(),
            Incoming::CloseChannel(0)
        );
        assert_eq!(
            decode(&REMOTE_COMMAND[1], close).unwrap(),
            Incoming::Data(255, vec![0])
        );
        assert!(decode(&v5, Message::Binary(vec![255].into())).is_err());
        assert_eq!(
            decode(&v5, Message::Binary(Vec::new().into())).unwrap(),
            Incoming::Nothing
        );
    }
}

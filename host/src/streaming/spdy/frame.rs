//! SPDY/3.1 framing (draft-mbelshe-httpbis-spdy-00 and the SPDY/3.1
//! changes), the part of it Kubernetes' `spdystream` speaks: SYN_STREAM,
//! SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE
//! and DATA frames, with header blocks compressed by one zlib stream per
//! direction primed with SPDY's dictionary.
//!
//! No maintained Rust crate implements SPDY (the protocol was retired in
//! 2016), so this module does, with its own tests.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use std::sync::OnceLock;

/// SPDY version spoken.
pub const VERSION: u16 = 3;

/// Control frame types.
pub mod kind {
    /// Opens a stream.
    pub const SYN_STREAM: u16 = 1;
    /// Accepts a stream.
    pub const SYN_REPLY: u16 = 2;
    /// Aborts a stream.
    pub const RST_STREAM: u16 = 3;
    /// Session settings.
    pub const SETTINGS: u16 = 4;
    /// Liveness check.
    pub const PING: u16 = 6;
    /// The session ends.
    pub const GOAWAY: u16 = 7;
    /// More headers for a stream.
    pub const HEADERS: u16 = 8;
    /// Flow-control credit.
    pub const WINDOW_UPDATE: u16 = 9;
}

/// FLAG_FIN: the sender's side of the stream ends with this frame.
pub const FLAG_FIN: u8 = 0x01;

/// Largest frame payload accepted (the length field allows 16 MiB).
pub const MAX_PAYLOAD: usize = 1 << 20;

/// Largest decompressed header block accepted.
const MAX_HEADER_BLOCK: usize = 64 << 10;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// A frame larger than [`MAX_PAYLOAD`].
    #[error("frame of {0} bytes is larger than allowed")]
    TooLarge(usize),
    /// A control frame of another SPDY version.
    #[error("SPDY version {0} is not supported")]
    Version(u16),
    /// A control frame whose payload is too short for its type.
    #[error("malformed {0} frame")]
    Malformed(&'static str),
    /// A header block that does not decompress or parse.
    #[error("bad header block: {0}")]
    Headers(String),
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Data for a stream.
    Data {
        /// The stream.
        stream: u32,
        /// Flags (FIN).
        flags: u8,
        /// Payload.
        data: Vec<u8>,
    },
    /// SYN_STREAM: the peer opens a stream with these headers.
    SynStream {
        /// The new stream.
        stream: u32,
        /// Flags (FIN, UNIDIRECTIONAL).
        flags: u8,
        /// Its headers, names lower-case.
        headers: Vec<(String, String)>,
    },
    /// SYN_REPLY: the answer to a SYN_STREAM.
    SynReply {
        /// The stream.
        stream: u32,
        /// Flags (FIN).
        flags: u8,
        /// Headers.
        headers: Vec<(String, String)>,
    },
    /// RST_STREAM.
    RstStream {
        /// The stream.
        stream: u32,
        /// Status code.
        status: u32,
    },
    /// PING (answered by echoing it).
    Ping(u32),
    /// GOAWAY.
    GoAway {
        /// The last stream the sender handled.
        last_stream: u32,
        /// Status code.
        status: u32,
    },
    /// A control frame acted on by no one (SETTINGS, HEADERS,
    /// WINDOW_UPDATE, unknown types): read and dropped.
    Other(u16),
}

/// The SPDY/3 header compression dictionary (section 2.6.10.1): the
/// length-prefixed names, then a text tail.
pub fn dictionary() -> &'static [u8] {
    static DICT: OnceLock<Vec<u8>> = OnceLock::new();
    DICT.get_or_init(|| {
        const WORDS: &[&str] = &[
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TAIL: &str = concat!(
            "100101201202205206300302303304305306307402405406407408409410411412413414415416417",
            "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently",
            "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error",
            "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct ",
            "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,",
            "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
            "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8",
            "charset=iso-8859-1,utf-,*,enq=0.",
        );
        let mut d = Vec::with_capacity(1423);
        for w in WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(TAIL.as_bytes());
        d
    })
}

/// The header-block compression state of one session (one zlib stream
/// each way).
pub struct HeaderCodec {
    deflate: Compress,
    inflate: Decompress,
    inflate_primed: bool,
}

impl Default for HeaderCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderCodec {
    /// Fresh zlib streams.
    pub fn new() -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        // Setting a dictionary on a fresh deflate stream cannot fail.
        let _ = deflate.set_dictionary(dictionary());
        Self {
            deflate,
            inflate: Decompress::new(true),
            inflate_primed: false,
        }
    }

    /// Encodes and compresses a header block.
    pub fn encode(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (k, v) in headers {
            raw.extend_from_slice(&(k.len() as u32).to_be_bytes());
            raw.extend_from_slice(k.as_bytes());
            raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = raw.as_slice();
        loop {
            out.reserve(256);
            let before = self.deflate.total_in();
            let _ = self
                .deflate
                .compress_vec(input, &mut out, FlushCompress::Sync);
            let used = usize::try_from(self.deflate.total_in() - before).unwrap_or(input.len());
            input = &input[used.min(input.len())..];
            if input.is_empty() && out.len() < out.capacity() {
                return out;
            }
        }
    }

    /// Decompresses and parses a header block (names lower-cased; a value
    /// holding NULs is several values).
    pub fn decode(&mut self, block: &[u8]) -> Result<Vec<(String, String)>, FrameError> {
        let bad = |m: &str| FrameError::Headers(m.to_string());
        let mut raw = Vec::with_capacity(block.len() * 4);
        let mut input = block;
        loop {
            if raw.len() >= MAX_HEADER_BLOCK {
                return Err(bad("larger than allowed"));
            }
            raw.reserve(4096);
            let (was_in, was_out) = (self.inflate.total_in(), self.inflate.total_out());
            let status = self
                .inflate
                .decompress_vec(input, &mut raw, FlushDecompress::Sync);
            let used = usize::try_from(self.inflate.total_in() - was_in).unwrap_or(input.len());
            input = &input[used.min(input.len())..];
            let produced = self.inflate.total_out() != was_out;
            match status {
                Ok(Status::StreamEnd) => break,
                Ok(_) if input.is_empty() && !produced => break,
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() && !self.inflate_primed => {
                    self.inflate
                        .set_dictionary(dictionary())
                        .map_err(|e| FrameError::Headers(e.to_string()))?;
                    self.inflate_primed = true;
                }
                Err(e) => return Err(FrameError::Headers(e.to_string())),
            }
        }
        let mut r = Reader(&raw);
        let n = r.u32().ok_or_else(|| bad("no count"))?;
        let mut headers = Vec::new();
        for _ in 0..n {
            let name = r.string().ok_or_else(|| bad("truncated name"))?;
            let value = r.string().ok_or_else(|| bad("truncated value"))?;
            for v in value.split('\0') {
                headers.push((name.to_ascii_lowercase(), v.to_string()));
            }
        }
        Ok(headers)
    }
}

/// Reads big-endian fields off a byte slice.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u32(&mut self) -> Option<u32> {
        let (head, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_be_bytes(*head))
    }

    fn string(&mut self) -> Option<String> {
        let len = usize::try_from(self.u32()?).ok()?;
        if len > self.0.len() {
            return None;
        }
        let (s, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(String::from_utf8_lossy(s).into_owned())
    }
}

/// Splits the next whole frame off `buf`: None while it is incomplete.
pub fn parse(buf: &[u8], codec: &mut HeaderCodec) -> Result<Option<(Frame, usize)>, FrameError> {
    let Some(head) = buf.first_chunk::<8>() else {
        return Ok(None);
    };
    let len =
        usize::try_from(u32::from_be_bytes([0, head[5], head[6], head[7]])).unwrap_or(usize::MAX);
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(len));
    }
    let total = 8 + len;
    if buf.len() < total {
        return Ok(None);
    }
    let flags = head[4];
    let p = &buf[8..total];
    let word = |i: usize| -> Option<u32> {
        p.get(i..i + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let id = |w: u32| w & 0x7fff_ffff;
    if head[0] & 0x80 == 0 {
        let stream = id(u32::from_be_bytes([head[0], head[1], head[2], head[3]]));
        let frame = Frame::Data {
            stream,
            flags,
            data: p.to_vec(),
        };
        return Ok(Some((frame, total)));
    }
    let version = u16::from_be_bytes([head[0], head[1]]) & 0x7fff;
    if version != VERSION {
        return Err(FrameError::Version(version));
    }
    let typ = u16::from_be_bytes([head[2], head[3]]);
    let frame = match typ {
        kind::SYN_STREAM => {
            let stream = word(0).ok_or(FrameError::Malformed("SYN_STREAM"))?;
            let block = p.get(10..).ok_or(FrameError::Malformed("SYN_STREAM"))?;
            Frame::SynStream {
                stream: id(stream),
                flags,
                headers: codec.decode(block)?,
            }
        }
        kind::SYN_REPLY => {
            let stream = word(0).ok_or(FrameError::Malformed("SYN_REPLY"))?;
            let block = p.get(4..).ok_or(FrameError::Malformed("SYN_REPLY"))?;
            Frame::SynReply {
                stream: id(stream),
                flags,
                headers: codec.decode(block)?,
            }
        }
        kind::RST_STREAM => Frame::RstStream {
            stream: id(word(0).ok_or(FrameError::Malformed("RST_STREAM"))?),
            status: word(4).ok_or(FrameError::Malformed("RST_STREAM"))?,
        },
        kind::PING => Frame::Ping(word(0).ok_or(FrameError::Malformed("PING"))?),
        kind::GOAWAY => Frame::GoAway {
            last_stream: id(word(0).ok_or(FrameError::Malformed("GOAWAY"))?),
            status: word(4).unwrap_or(0),
        },
        kind::HEADERS => {
            // Decoded to keep the zlib stream in step, then dropped.
            let block = p.get(4..).ok_or(FrameError::Malformed("HEADERS"))?;
            codec.decode(block)?;
            Frame::Other(typ)
        }
        other => Frame::Other(other),
    };
    Ok(Some((frame, total)))
}

fn control(typ: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    f.extend_from_slice(&typ.to_be_bytes());
    let len = (payload.len() as u32).to_be_bytes();
    f.extend_from_slice(&[flags, len[1], len[2], len[3]]);
    f.extend_from_slice(payload);
    f
}

/// A DATA frame (`data` at most [`MAX_PAYLOAD`]; longer data is sent as
/// several frames by the caller).
pub fn data(stream: u32, flags: u8, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + data.len());
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    let len = (data.len() as u32).to_be_bytes();
    f.extend_from_slice(&[flags, len[1], len[2], len[3]]);
    f.extend_from_slice(data);
    f
}

/// A SYN_REPLY accepting `stream`.
pub fn syn_reply(codec: &mut HeaderCodec, stream: u32, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut p = (stream & 0x7fff_ffff).to_be_bytes().to_vec();
    p.extend(codec.encode(headers));
    control(kind::SYN_REPLY, 0, &p)
}

/// A SYN_STREAM (used by tests, which play the client).
pub fn syn_stream(
    codec: &mut HeaderCodec,
    stream: u32,
    flags: u8,
    headers: &[(&str, &str)],
) -> Vec<u8> {
    let mut p = (stream & 0x7fff_ffff).to_be_bytes().to_vec();
    p.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    p.extend(codec.encode(headers));
    control(kind::SYN_STREAM, flags, &p)
}

/// RST_STREAM.
pub fn rst_stream(stream: u32, status: u32) -> Vec<u8> {
    let mut p = (stream & 0x7fff_ffff).to_be_bytes().to_vec();
    p.extend_from_slice(&status.to_be_bytes());
    control(kind::RST_STREAM, 0, &p)
}

/// PING.
pub fn ping(id: u32) -> Vec<u8> {
    control(kind::PING, 0, &id.to_be_bytes())
}

/// GOAWAY with status OK.
pub fn go_away(last_stream: u32) -> Vec<u8> {
    let mut p = (last_stream & 0x7fff_ffff).to_be_bytes().to_vec();
    p.extend_from_slice(&0u32.to_be_bytes());
    control(kind::GOAWAY, 0, &p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_the_specs() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(&d[..11], b"\0\0\0\x07options");
        assert!(d.ends_with(b",*,enq=0."));
    }

    #[test]
    fn header_blocks_round_trip_across_one_zlib_stream_each_way() {
        let (mut client, mut server) = (HeaderCodec::new(), HeaderCodec::new());
        for i in 0..3 {
            let f = syn_stream(
                &mut client,
                2 * i + 1,
                0,
                &[("streamType", "stdout"), ("x", "a\0b")],
            );
            let (frame, used) = parse(&f, &mut server).unwrap().unwrap();
            assert_eq!(used, f.len());
            assert_eq!(
                frame,
                Frame::SynStream {
                    stream: 2 * i + 1,
                    flags: 0,
                    headers: vec![
                        ("streamtype".into(), "stdout".into()),
                        ("x".into(), "a".into()),
                        ("x".into(), "b".into())
                    ],
                }
            );
        }
    }

    #[test]
    fn frames_parse_only_when_whole() {
        let mut c = HeaderCodec::new();
        let f = data(5, FLAG_FIN, b"hello");
        assert_eq!(parse(&f[..7], &mut c).unwrap(), None);
        assert_eq!(parse(&f[..12], &mut c).unwrap(), None);
        let (frame, n) = parse(&f, &mut c).unwrap().unwrap();
        assert_eq!(n, 13);
        assert_eq!(
            frame,
            Frame::Data {
                stream: 5,
                flags: FLAG_FIN,
                data: b"hello".to_vec()
            }
        );
        assert_eq!(parse(&ping(7), &mut c).unwrap().unwrap().0, Frame::Ping(7));
        assert_eq!(
            parse(&go_away(9), &mut c).unwrap().unwrap().0,
            Frame::GoAway {
                last_stream: 9,
                status: 0
            }
        );
        assert_eq!(
            parse(&rst_stream(3, 5), &mut c).unwrap().unwrap().0,
            Frame::RstStream {
                stream: 3,
                status: 5
            }
        );
    }

    #[test]
    fn hostile_frames_are_errors() {
        let mut c = HeaderCodec::new();
        let mut huge = data(1, 0, b"");
        huge[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
        assert!(matches!(parse(&huge, &mut c), Err(FrameError::TooLarge(_))));
        let mut v2 = ping(1);
        v2[1] = 2;
        assert_eq!(parse(&v2, &mut c), Err(FrameError::Version(2)));
        let short = control(kind::RST_STREAM, 0, &[0, 0, 0, 1]);
        assert!(matches!(
            parse(&short, &mut c),
            Err(FrameError::Malformed(_))
        ));
        let garbage = control(
            kind::SYN_STREAM,
            0,
            &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3],
        );
        assert!(matches!(
            parse(&garbage, &mut c),
            Err(FrameError::Headers(_))
        ));
    }
}

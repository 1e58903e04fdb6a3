//! Accepts any HTTP/2 `:authority` on the CRI socket.
//!
//! Many gRPC clients send the Unix socket's path (or an empty string) as the
//! `:authority` of their requests: grpc-go in crictl/critest 1.26 and older
//! kubelets, Python grpcio, grpc-java. The `h2` crate under tonic parses
//! `:authority` as an [`http::uri::Authority`] and resets every such stream
//! with `PROTOCOL_ERROR` (hyperium/h2 PR #487, open; h2 0.4.20, the newest
//! release, has no switch for it). containerd and CRI-O accept anything, so
//! moatd must too.
//!
//! This module sits between each accepted connection and tonic. It reads the
//! client→server byte stream frame by frame (RFC 9113 §4.1): every frame but
//! HEADERS/CONTINUATION passes through untouched. A header block (HEADERS
//! plus its CONTINUATIONs, honouring the PADDED and PRIORITY flags) is
//! decoded with an HPACK decoder that tracks the client's dynamic table; an
//! `:authority` that is not a valid `http::uri::Authority` is replaced by
//! `localhost` (valid ones pass untouched), and the block is re-encoded with
//! literals that never insert into the dynamic table, so tonic's decoder
//! table stays empty and always agrees with what we send. The block goes out
//! again as HEADERS + CONTINUATION frames of at most 16384 bytes (the
//! smallest `SETTINGS_MAX_FRAME_SIZE`, h2's default). Server→client bytes are
//! copied unchanged.
//!
//! HPACK comes from `loona-hpack`: the maintained continuation (bearcove,
//! as used by the loona HTTP/2 server) of the `hpack` crate, whose 0.3 has
//! not been released since 2016; `httlib-hpack` is a 0.1 single-author crate,
//! and h2's own codec is private. loona-hpack's decoder bounds integers,
//! checks indices, string lengths and Huffman padding and returns errors for
//! all of them; its one assert (`set_max_table_size`) is not used here,
//! client size updates are bounded by `set_max_allowed_table_size`.
//!
//! A client that sends malformed input (no preface, an HPACK error, a header
//! block over [`MAX_HEADER_BLOCK`] bytes or decoding to more than
//! [`MAX_DECODED_HEADERS`], CONTINUATION out of place, bad padding) has its
//! connection closed with a log line; nothing here panics on network input.

use loona_hpack::encoder::encode_integer_into;
use loona_hpack::Decoder;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::net::UnixStream;
use tonic::transport::server::{Connected, UdsConnectInfo};

/// The largest encoded header block (HEADERS + CONTINUATION payloads) moatd
/// buffers for one request; a client sending more is disconnected.
pub const MAX_HEADER_BLOCK: usize = 1 << 20;

/// The largest total of decoded header names and values of one block
/// (dynamic-table references could otherwise expand a small block a
/// thousandfold).
pub const MAX_DECODED_HEADERS: usize = 1 << 20;

/// What an `:authority` that h2 would reject is replaced with.
pub const FALLBACK_AUTHORITY: &[u8] = b"localhost";

/// The HTTP/2 client connection preface.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Frame payloads written are at most this big (SETTINGS_MAX_FRAME_SIZE's
/// initial value, which tonic keeps).
const MAX_FRAME_PAYLOAD: usize = 16_384;
/// The dynamic table size the server allows the client's encoder
/// (SETTINGS_HEADER_TABLE_SIZE; h2's default, which tonic keeps).
const HEADER_TABLE_SIZE: usize = 4096;
/// The duplex buffer between the shim and tonic, each way.
const PIPE_BUFFER: usize = 64 * 1024;

const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// Why a client's connection was closed.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// Reading from the client or writing to the server failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The first 24 bytes were not the HTTP/2 preface.
    #[error("not an HTTP/2 connection (no client preface)")]
    Preface,
    /// A header block was larger than [`MAX_HEADER_BLOCK`].
    #[error("header block of stream {0} exceeds {MAX_HEADER_BLOCK} bytes")]
    HeaderBlockTooLarge(u32),
    /// Another frame came between HEADERS and its last CONTINUATION.
    #[error("frame type {kind:#x} on stream {got} inside the header block of stream {stream}")]
    Interleaved {
        /// The stream whose header block was open.
        stream: u32,
        /// The offending frame's type.
        kind: u8,
        /// The offending frame's stream.
        got: u32,
    },
    /// CONTINUATION without an open header block.
    #[error("CONTINUATION on stream {0} without a header block")]
    StrayContinuation(u32),
    /// A HEADERS frame's padding or priority fields overran its payload.
    #[error("HEADERS frame on stream {0}: padding or priority longer than the frame")]
    BadPadding(u32),
    /// The header block could not be decoded.
    #[error("header block of stream {stream}: {source}")]
    Block {
        /// The stream.
        stream: u32,
        /// What was wrong.
        source: BlockError,
    },
}

/// Why a header block could not be rewritten.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// HPACK decoding failed (the connection's HPACK state is lost with it).
    #[error("HPACK: {0}")]
    Hpack(loona_hpack::decoder::DecoderError),
    /// The decoded headers were larger than [`MAX_DECODED_HEADERS`].
    #[error("decoded headers exceed {MAX_DECODED_HEADERS} bytes")]
    TooLarge,
    /// Encoding failed (writing to memory; not expected).
    #[error("encoding: {0}")]
    Encode(#[from] std::io::Error),
}

/// A rewritten header block.
#[derive(Debug)]
pub struct Rewritten {
    /// The block, HPACK-encoded without dynamic-table use.
    pub block: Vec<u8>,
    /// The `:authority` the client sent, if any.
    pub authority: Option<Vec<u8>>,
    /// Whether that authority was replaced with [`FALLBACK_AUTHORITY`].
    pub replaced: bool,
}

/// Rewrites the header blocks of one connection, in order, keeping the
/// client's HPACK dynamic table.
pub struct BlockRewriter {
    decoder: Decoder<'static>,
}

impl Default for BlockRewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl BlockRewriter {
    /// A rewriter for a new connection (empty dynamic table of 4096 bytes).
    pub fn new() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        Self { decoder }
    }

    /// Decodes `block` (a complete header block), replaces an `:authority`
    /// h2 would reject, and encodes it again without the dynamic table.
    pub fn rewrite(&mut self, block: &[u8]) -> Result<Rewritten, BlockError> {
        let mut headers: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut total = 0usize;
        let mut too_large = false;
        self.decoder
            .decode_with_cb(block, |name, value| {
                total = total.saturating_add(name.len() + value.len());
                if total > MAX_DECODED_HEADERS {
                    too_large = true;
                } else {
                    headers.push((name.into_owned(), value.into_owned()));
                }
            })
            .map_err(BlockError::Hpack)?;
        if too_large {
            return Err(BlockError::TooLarge);
        }
        let mut authority = None;
        let mut replaced = false;
        for (name, value) in headers.iter_mut() {
            if name.as_slice() == b":authority" {
                authority = Some(value.clone());
                if http::uri::Authority::try_from(value.as_slice()).is_err() {
                    *value = FALLBACK_AUTHORITY.to_vec();
                    replaced = true;
                }
            }
        }
        let mut out = Vec::with_capacity(block.len() + 64);
        for (name, value) in &headers {
            // Literal Header Field without Indexing — New Name (RFC 7541
            // §6.2.2): no dynamic-table insertion, no Huffman coding.
            out.push(0x00);
            encode_integer_into(name.len(), 7, 0, &mut out)?;
            out.extend_from_slice(name);
            encode_integer_into(value.len(), 7, 0, &mut out)?;
            out.extend_from_slice(value);
        }
        Ok(Rewritten {
            block: out,
            authority,
            replaced,
        })
    }
}

/// One frame header (RFC 9113 §4.1).
struct FrameHeader {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

impl FrameHeader {
    fn parse(b: &[u8; 9]) -> Self {
        Self {
            len: (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    fn encode(len: usize, kind: u8, flags: u8, stream: u32) -> [u8; 9] {
        let s = stream.to_be_bytes();
        [
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            flags,
            s[0],
            s[1],
            s[2],
            s[3],
        ]
    }
}

/// Fills `buf`; `Ok(false)` if the stream ended before its first byte.
async fn read_full_or_eof<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
) -> std::io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        let n = r.read(&mut buf[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(false);
            }
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    Ok(true)
}

async fn read_payload<R: AsyncRead + Unpin>(r: &mut R, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Splits a HEADERS payload into (priority fields, header block fragment).
fn headers_fragment(
    h: &FrameHeader,
    payload: &[u8],
) -> Result<(Option<[u8; 5]>, Vec<u8>), ShimError> {
    let bad = || ShimError::BadPadding(h.stream);
    let mut start = 0;
    let mut pad = 0;
    if h.flags & FLAG_PADDED != 0 {
        pad = usize::from(*payload.first().ok_or_else(bad)?);
        start = 1;
    }
    let mut priority = None;
    if h.flags & FLAG_PRIORITY != 0 {
        let p: [u8; 5] = payload
            .get(start..start + 5)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(bad)?;
        priority = Some(p);
        start += 5;
    }
    let end = payload.len().checked_sub(pad).ok_or_else(bad)?;
    let fragment = payload.get(start..end).ok_or_else(bad)?;
    Ok((priority, fragment.to_vec()))
}

/// Writes `block` as one HEADERS frame and as many CONTINUATION frames as
/// needed, each payload at most [`MAX_FRAME_PAYLOAD`] bytes.
async fn write_header_block<W: AsyncWrite + Unpin>(
    w: &mut W,
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    block: &[u8],
) -> std::io::Result<()> {
    let prio_len = priority.map_or(0, |p| p.len());
    let first_len = block.len().min(MAX_FRAME_PAYLOAD - prio_len);
    let (first, mut rest) = block.split_at(first_len);
    let mut flags = 0;
    if end_stream {
        flags |= FLAG_END_STREAM;
    }
    if priority.is_some() {
        flags |= FLAG_PRIORITY;
    }
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    let mut frame = Vec::with_capacity(9 + prio_len + first.len());
    frame.extend_from_slice(&FrameHeader::encode(
        prio_len + first.len(),
        FRAME_HEADERS,
        flags,
        stream,
    ));
    if let Some(p) = priority {
        frame.extend_from_slice(&p);
    }
    frame.extend_from_slice(first);
    w.write_all(&frame).await?;
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME_PAYLOAD));
        rest = tail;
        let flags = if rest.is_empty() { FLAG_END_HEADERS } else { 0 };
        w.write_all(&FrameHeader::encode(
            chunk.len(),
            FRAME_CONTINUATION,
            flags,
            stream,
        ))
        .await?;
        w.write_all(chunk).await?;
    }
    Ok(())
}

/// Copies a client's HTTP/2 byte stream from `r` to `w`, rewriting header
/// blocks (see the module doc). Returns `Ok` when the client ends its side
/// at a frame boundary (having shut `w` down), an error on malformed input.
pub async fn forward_client<R, W>(mut r: R, mut w: W) -> Result<(), ShimError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut preface = [0u8; 24];
    if !read_full_or_eof(&mut r, &mut preface).await? {
        w.shutdown().await?;
        return Ok(());
    }
    if &preface != PREFACE {
        return Err(ShimError::Preface);
    }
    w.write_all(&preface).await?;
    let mut rewriter = BlockRewriter::new();
    let mut first_block = true;
    loop {
        let mut hb = [0u8; 9];
        if !read_full_or_eof(&mut r, &mut hb).await? {
            break;
        }
        let h = FrameHeader::parse(&hb);
        match h.kind {
            FRAME_HEADERS => {
                if h.len > MAX_HEADER_BLOCK {
                    return Err(ShimError::HeaderBlockTooLarge(h.stream));
                }
                let payload = read_payload(&mut r, h.len).await?;
                let (priority, mut block) = headers_fragment(&h, &payload)?;
                drop(payload);
                let mut end_headers = h.flags & FLAG_END_HEADERS != 0;
                while !end_headers {
                    let mut cb = [0u8; 9];
                    r.read_exact(&mut cb).await?;
                    let c = FrameHeader::parse(&cb);
                    if c.kind != FRAME_CONTINUATION || c.stream != h.stream {
                        return Err(ShimError::Interleaved {
                            stream: h.stream,
                            kind: c.kind,
                            got: c.stream,
                        });
                    }
                    if block.len() + c.len > MAX_HEADER_BLOCK {
                        return Err(ShimError::HeaderBlockTooLarge(h.stream));
                    }
                    block.extend_from_slice(&read_payload(&mut r, c.len).await?);
                    end_headers = c.flags & FLAG_END_HEADERS != 0;
                }
                let out = rewriter
                    .rewrite(&block)
                    .map_err(|source| ShimError::Block {
                        stream: h.stream,
                        source,
                    })?;
                if first_block || out.replaced {
                    tracing::debug!(
                        stream = h.stream,
                        authority = ?out.authority.as_deref().map(String::from_utf8_lossy),
                        replaced = out.replaced,
                        "CRI client :authority"
                    );
                    first_block = false;
                }
                write_header_block(
                    &mut w,
                    h.stream,
                    h.flags & FLAG_END_STREAM != 0,
                    priority,
                    &out.block,
                )
                .await?;
            }
            FRAME_CONTINUATION => return Err(ShimError::StrayContinuation(h.stream)),
            _ => {
                w.write_all(&hb).await?;
                let copied = tokio::io::copy(&mut (&mut r).take(h.len as u64), &mut w).await?;
                if copied != h.len as u64 {
                    return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
                }
            }
        }
    }
    w.shutdown().await?;
    Ok(())
}

/// An accepted CRI connection as tonic sees it: the shim's end of a pipe
/// whose other end rewrites the client's bytes (see the module doc).
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

#[cfg(test)]
mod tests {
    use super::*;
    use loona_hpack::Encoder;

    type Headers = Vec<(Vec<u8>, Vec<u8>)>;

    fn request(authority: &str) -> Headers {
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/runtime.v1.RuntimeService/Version"),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
    }

    fn encode(enc: &mut Encoder<'_>, headers: &Headers) -> Vec<u8> {
        enc.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])))
    }

    fn authority_of(headers: &Headers) -> Option<&[u8]> {
        headers
            .iter()
            .find(|(n, _)| n.as_slice() == b":authority")
            .map(|(_, v)| v.as_slice())
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = FrameHeader::encode(payload.len(), kind, flags, stream).to_vec();
        f.extend_from_slice(payload);
        f
    }

    /// Splits `bytes` (after the preface) into frames.
    fn frames(bytes: &[u8]) -> Vec<(FrameHeader, Vec<u8>)> {
        assert_eq!(&bytes[..24], PREFACE);
        let mut rest = &bytes[24..];
        let mut out = Vec::new();
        while !rest.is_empty() {
            let h = FrameHeader::parse(rest[..9].try_into().unwrap());
            let payload = rest[9..9 + h.len].to_vec();
            rest = &rest[9 + h.len..];
            out.push((h, payload));
        }
        out
    }

    async fn run(input: Vec<u8>) -> Result<Vec<u8>, ShimError> {
        let mut out = Vec::new();
        forward_client(input.as_slice(), &mut out).await?;
        Ok(out)
    }

    fn connection(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut v = PREFACE.to_vec();
        for f in frames {
            v.extend_from_slice(f);
        }
        v
    }

    /// Decodes the rewritten header blocks in `out`, each with a fresh
    /// decoder: the shim's output must never need a dynamic table.
    fn blocks(out: &[u8]) -> Vec<(u32, u8, Headers)> {
        let mut result = Vec::new();
        let mut open: Option<(u32, u8, Vec<u8>)> = None;
        for (h, payload) in frames(out) {
            assert!(h.len <= MAX_FRAME_PAYLOAD);
            match h.kind {
                FRAME_HEADERS => {
                    assert!(open.is_none());
                    assert_eq!(h.flags & FLAG_PADDED, 0);
                    let skip = if h.flags & FLAG_PRIORITY != 0 { 5 } else { 0 };
                    open = Some((h.stream, h.flags, payload[skip..].to_vec()));
                }
                FRAME_CONTINUATION => {
                    let o = open.as_mut().expect("CONTINUATION after HEADERS");
                    assert_eq!(o.0, h.stream);
                    o.2.extend_from_slice(&payload);
                }
                _ => {
                    assert!(open.is_none());
                    continue;
                }
            }
            if h.flags & FLAG_END_HEADERS != 0 {
                let (stream, flags, block) = open.take().unwrap();
                let headers = Decoder::new().decode(&block).expect("decodable alone");
                result.push((stream, flags, headers));
            }
        }
        assert!(open.is_none(), "unterminated header block");
        result
    }

    #[test]
    fn path_and_empty_authorities_become_localhost_valid_ones_stay() {
        for (sent, want) in [
            ("/run/moat/moat.sock", "localhost"),
            ("", "localhost"),
            ("unix:///run/moat/moat.sock", "localhost"),
            // What grpcio 1.85 sends for unix:/run/moat/moat.sock.
            ("run%2Fmoat%2Fmoat.sock", "localhost"),
            ("localhost", "localhost"),
            ("moat.sock", "moat.sock"),
            ("127.0.0.1:10010", "127.0.0.1:10010"),
            ("[::1]:80", "[::1]:80"),
        ] {
            let mut rw = BlockRewriter::new();
            let input = request(sent);
            let out = rw.rewrite(&encode(&mut Encoder::new(), &input)).unwrap();
            let decoded = Decoder::new().decode(&out.block).unwrap();
            assert_eq!(authority_of(&decoded), Some(want.as_bytes()), "{sent:?}");
            assert_eq!(out.replaced, sent != want, "{sent:?}");
            assert_eq!(out.authority.as_deref(), Some(sent.as_bytes()));
            // Everything else is untouched and in order.
            let mut expected = input.clone();
            expected[3].1 = want.as_bytes().to_vec();
            assert_eq!(decoded, expected);
        }
    }

    #[test]
    fn no_authority_is_left_alone() {
        let mut headers = request("x");
        headers.remove(3);
        let out = BlockRewriter::new()
            .rewrite(&encode(&mut Encoder::new(), &headers))
            .unwrap();
        assert_eq!(out.authority, None);
        assert_eq!(Decoder::new().decode(&out.block).unwrap(), headers);
    }

    /// An HPACK string literal, no Huffman coding.
    fn lit(out: &mut Vec<u8>, s: &[u8]) {
        encode_integer_into(s.len(), 7, 0, out).unwrap();
        out.extend_from_slice(s);
    }

    #[tokio::test]
    async fn dynamic_table_references_decode_across_requests() {
        // A client that indexes its headers (as grpc-go and grpcio do): its
        // second request refers to the path authority through the dynamic
        // table.
        let mut first = vec![0x83, 0x86]; // :method POST, :scheme http
        first.push(0x40 | 4); // :path, incremental indexing
        lit(&mut first, b"/runtime.v1.RuntimeService/Version");
        first.push(0x40 | 1); // :authority, incremental indexing
        lit(&mut first, b"/tmp/moat.sock");
        first.push(0x40 | 31); // content-type, incremental indexing
        lit(&mut first, b"application/grpc");
        first.push(0x40); // new name, incremental indexing
        lit(&mut first, b"te");
        lit(&mut first, b"trailers");
        // Table now: 62 te, 63 content-type, 64 :authority, 65 :path.
        let mut second = vec![0x83, 0x86, 0x40 | 4];
        lit(&mut second, b"/runtime.v1.RuntimeService/Status");
        // Table now: 62 :path (Status), 63 te, 64 content-type, 65 :authority.
        second.extend_from_slice(&[0x80 | 65, 0x80 | 64, 0x80 | 63]);
        let data = frame(0x0, FLAG_END_STREAM, 1, &[0, 0, 0, 0, 0]);
        let input = connection(&[
            frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &first),
            data.clone(),
            frame(
                FRAME_HEADERS,
                FLAG_END_HEADERS | FLAG_END_STREAM,
                3,
                &second,
            ),
        ]);
        let out = run(input).await.unwrap();
        let b = blocks(&out);
        assert_eq!(b.len(), 2);
        assert_eq!((b[0].0, b[1].0), (1, 3));
        assert_eq!(b[0].1 & FLAG_END_STREAM, 0);
        assert_ne!(b[1].1 & FLAG_END_STREAM, 0);
        let mut want = request("localhost");
        assert_eq!(b[0].2, want);
        want[2].1 = b"/runtime.v1.RuntimeService/Status".to_vec();
        assert_eq!(b[1].2, want);
        // The DATA frame passed through byte for byte, in its place.
        assert_eq!(frames(&out)[1].1, &data[9..]);
        assert_eq!(frames(&out)[1].0.flags, FLAG_END_STREAM);
    }

    #[tokio::test]
    async fn continuation_padding_and_priority_are_honoured() {
        let headers = request("/run/moat/moat.sock");
        let block = encode(&mut Encoder::new(), &headers);
        let (a, rest) = block.split_at(10);
        let (b, c) = rest.split_at(20);
        // HEADERS: PADDED (pad length 7) + PRIORITY, first 10 bytes.
        let mut payload = vec![7u8];
        let prio = [0x80, 0, 0, 0, 0x10];
        payload.extend_from_slice(&prio);
        payload.extend_from_slice(a);
        payload.extend_from_slice(&[0u8; 7]);
        let settings = frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]);
        let input = connection(&[
            settings.clone(),
            frame(FRAME_HEADERS, FLAG_PADDED | FLAG_PRIORITY, 5, &payload),
            frame(FRAME_CONTINUATION, 0, 5, b),
            frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 5, c),
        ]);
        let out = run(input).await.unwrap();
        let f = frames(&out);
        assert_eq!(frame(f[0].0.kind, f[0].0.flags, 0, &f[0].1), settings);
        assert_eq!(f[1].0.kind, FRAME_HEADERS);
        assert_eq!(f[1].0.flags, FLAG_PRIORITY | FLAG_END_HEADERS);
        assert_eq!(f[1].1[..5], prio);
        let b = blocks(&out);
        let mut want = headers.clone();
        want[3].1 = b"localhost".to_vec();
        assert_eq!(b, vec![(5, FLAG_PRIORITY | FLAG_END_HEADERS, want)]);
    }

    #[tokio::test]
    async fn big_blocks_are_split_into_frames_of_at_most_16k() {
        let mut headers = request("");
        headers.push((b"x-big".to_vec(), vec![b'a'; 40_000]));
        let block = encode(&mut Encoder::new(), &headers);
        let mut input = vec![frame(FRAME_HEADERS, 0, 1, &block[..16_000])];
        for chunk in block[16_000..].chunks(16_000) {
            input.push(frame(FRAME_CONTINUATION, 0, 1, chunk));
        }
        let last = input.len() - 1;
        input[last][4] = FLAG_END_HEADERS;
        let out = run(connection(&input)).await.unwrap();
        let f = frames(&out);
        assert_eq!(f.len(), 3);
        assert_eq!(f[0].0.len, MAX_FRAME_PAYLOAD);
        assert_eq!(f[2].0.kind, FRAME_CONTINUATION);
        headers[3].1 = b"localhost".to_vec();
        assert_eq!(blocks(&out)[0].2, headers);
    }

    #[tokio::test]
    async fn clean_end_and_empty_connection() {
        assert_eq!(run(Vec::new()).await.unwrap(), Vec::<u8>::new());
        assert_eq!(run(PREFACE.to_vec()).await.unwrap(), PREFACE.to_vec());
    }

    #[tokio::test]
    async fn garbage_is_rejected_cleanly() {
        let ok = encode(&mut Encoder::new(), &request("/x"));
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("HTTP/1.1", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
            ("truncated preface", PREFACE[..10].to_vec()),
            (
                "truncated frame header",
                connection(&[frame(0x4, 0, 0, &[])[..5].to_vec()]),
            ),
            (
                "truncated payload",
                connection(&[frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &ok)[..20].to_vec()]),
            ),
            (
                "truncated DATA",
                connection(&[frame(0x0, 0, 1, &[1, 2, 3, 4])[..11].to_vec()]),
            ),
            (
                "index out of the table",
                connection(&[frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &[0x80 | 70])]),
            ),
            (
                "bad integer",
                connection(&[frame(
                    FRAME_HEADERS,
                    FLAG_END_HEADERS,
                    1,
                    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                )]),
            ),
            (
                "string longer than the block",
                connection(&[frame(
                    FRAME_HEADERS,
                    FLAG_END_HEADERS,
                    1,
                    &[0x00, 0x7f, 0x80, 0x01, b'a'],
                )]),
            ),
            (
                "bad Huffman padding",
                connection(&[frame(
                    FRAME_HEADERS,
                    FLAG_END_HEADERS,
                    1,
                    &[0x00, 0x81, 0x00, 0x00],
                )]),
            ),
            (
                "table size above the server's",
                connection(&[frame(
                    FRAME_HEADERS,
                    FLAG_END_HEADERS,
                    1,
                    &[0x3f, 0xe1, 0x7f, 0x82],
                )]),
            ),
            (
                "padding longer than the frame",
                connection(&[frame(
                    FRAME_HEADERS,
                    FLAG_END_HEADERS | FLAG_PADDED,
                    1,
                    &[200, 0x82],
                )]),
            ),
            (
                "priority without room",
                connection(&[frame(
                    FRAME_HEADERS,
                    FLAG_END_HEADERS | FLAG_PRIORITY,
                    1,
                    &[0, 0],
                )]),
            ),
            (
                "stray CONTINUATION",
                connection(&[frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 1, &ok)]),
            ),
            (
                "DATA inside a header block",
                connection(&[frame(FRAME_HEADERS, 0, 1, &ok[..4]), frame(0x0, 0, 1, &[])]),
            ),
            (
                "CONTINUATION of another stream",
                connection(&[
                    frame(FRAME_HEADERS, 0, 1, &ok[..4]),
                    frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 3, &ok[4..]),
                ]),
            ),
            (
                "header block never ends",
                connection(&[frame(FRAME_HEADERS, 0, 1, &ok[..4])]),
            ),
        ];
        for (what, input) in cases {
            let r = run(input).await;
            assert!(r.is_err(), "{what}: accepted");
        }
    }

    #[tokio::test]
    async fn oversized_header_blocks_are_refused() {
        // Endless CONTINUATIONs: refused once past the bound, not buffered.
        let mut input = vec![frame(FRAME_HEADERS, 0, 1, &[0x82])];
        let chunk = frame(FRAME_CONTINUATION, 0, 1, &vec![0x82; 16_384]);
        for _ in 0..(MAX_HEADER_BLOCK / 16_384 + 2) {
            input.push(chunk.clone());
        }
        let r = run(connection(&input)).await;
        assert!(matches!(r, Err(ShimError::HeaderBlockTooLarge(1))), "{r:?}");
        // A single HEADERS frame announcing more than the bound.
        let mut big = FrameHeader::encode(MAX_HEADER_BLOCK + 1, FRAME_HEADERS, 0, 1).to_vec();
        big.extend_from_slice(&[0; 64]);
        let r = run(connection(&[big])).await;
        assert!(matches!(r, Err(ShimError::HeaderBlockTooLarge(1))), "{r:?}");
        // A small block expanding through the dynamic table: one 4000-byte
        // entry referenced 1000 times.
        let mut enc = Encoder::new();
        let mut block = encode(&mut enc, &vec![(b"x".to_vec(), vec![b'v'; 4000])]);
        block.extend(std::iter::repeat_n(0x80 | 62, 1000));
        let r = run(connection(&[frame(
            FRAME_HEADERS,
            FLAG_END_HEADERS,
            1,
            &block,
        )]))
        .await;
        assert!(
            matches!(
                r,
                Err(ShimError::Block {
                    source: BlockError::TooLarge,
                    ..
                })
            ),
            "{r:?}"
        );
    }
}

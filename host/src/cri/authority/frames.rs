//! The client→server byte stream, frame by frame (RFC 9113 §4.1): the
//! preface checked, HEADERS + CONTINUATION gathered into one header block
//! (honouring PADDED and PRIORITY) and written again after the rewrite,
//! every other frame copied through untouched.

use super::{BlockRewriter, ShimError, MAX_HEADER_BLOCK};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The HTTP/2 client connection preface.
pub(super) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Frame payloads written are at most this big (SETTINGS_MAX_FRAME_SIZE's
/// initial value, which tonic keeps).
pub(super) const MAX_FRAME_PAYLOAD: usize = 16_384;

pub(super) const FRAME_HEADERS: u8 = 0x1;
pub(super) const FRAME_CONTINUATION: u8 = 0x9;
pub(super) const FLAG_END_STREAM: u8 = 0x1;
pub(super) const FLAG_END_HEADERS: u8 = 0x4;
pub(super) const FLAG_PADDED: u8 = 0x8;
pub(super) const FLAG_PRIORITY: u8 = 0x20;

/// One frame header (RFC 9113 §4.1).
pub(super) struct FrameHeader {
    pub(super) len: usize,
    pub(super) kind: u8,
    pub(super) flags: u8,
    pub(super) stream: u32,
}

impl FrameHeader {
    pub(super) fn parse(b: &[u8; 9]) -> Self {
        Self {
            len: (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    pub(super) fn encode(len: usize, kind: u8, flags: u8, stream: u32) -> [u8; 9] {
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
/// blocks (see the [`authority`](super) module doc). Returns `Ok` when the
/// client ends its side at a frame boundary (having shut `w` down), an error
/// on malformed input.
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

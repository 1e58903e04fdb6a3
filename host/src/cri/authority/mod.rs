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
//!
//! Files: this one holds the limits and the error a connection is closed
//! with; `frames.rs` reads the client's frames and writes rewritten header
//! blocks ([`forward_client`]); `headers.rs` decodes, fixes and re-encodes
//! one header block ([`BlockRewriter`]); `connection.rs` puts the shim
//! between an accepted socket and tonic ([`accept`], [`ShimmedStream`]).

mod connection;
mod frames;
mod headers;
#[cfg(test)]
mod tests;

pub use connection::{accept, ShimmedStream};
pub use frames::forward_client;
pub use headers::{BlockError, BlockRewriter, Rewritten};

/// The largest encoded header block (HEADERS + CONTINUATION payloads) moatd
/// buffers for one request; a client sending more is disconnected.
pub const MAX_HEADER_BLOCK: usize = 1 << 20;

/// The largest total of decoded header names and values of one block
/// (dynamic-table references could otherwise expand a small block a
/// thousandfold).
pub const MAX_DECODED_HEADERS: usize = 1 << 20;

/// What an `:authority` that h2 would reject is replaced with.
pub const FALLBACK_AUTHORITY: &[u8] = b"localhost";

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

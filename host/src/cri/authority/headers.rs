//! One header block rewritten: HPACK-decoded with the client's dynamic
//! table, an `:authority` h2 would reject replaced, and re-encoded with
//! literals that never touch the dynamic table.

use super::{FALLBACK_AUTHORITY, MAX_DECODED_HEADERS};
use loona_hpack::encoder::encode_integer_into;
use loona_hpack::Decoder;

/// The dynamic table size the server allows the client's encoder
/// (SETTINGS_HEADER_TABLE_SIZE; h2's default, which tonic keeps).
const HEADER_TABLE_SIZE: usize = 4096;

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

//! Tests of the `:authority` shim: block rewriting, frame handling and
//! malformed input.

use super::frames::{
    FrameHeader, FLAG_END_HEADERS, FLAG_END_STREAM, FLAG_PADDED, FLAG_PRIORITY, FRAME_CONTINUATION,
    FRAME_HEADERS, MAX_FRAME_PAYLOAD, PREFACE,
};
use super::*;
use loona_hpack::encoder::encode_integer_into;
use loona_hpack::{Decoder, Encoder};

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

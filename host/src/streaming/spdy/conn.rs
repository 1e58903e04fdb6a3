//! The two halves of an upgraded SPDY connection that every session
//! shares: a reader turning bytes into frames, and a writer task sending
//! encoded frames in order.

use super::super::channels::QUEUE;
use super::frame::{self, Frame, FrameError, HeaderCodec};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Reads frames off a connection.
pub struct FrameReader<R> {
    rd: R,
    buf: Vec<u8>,
    chunk: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Reads from `rd`.
    pub fn new(rd: R) -> Self {
        Self {
            rd,
            buf: Vec::new(),
            chunk: vec![0u8; 64 << 10],
        }
    }

    /// The next frame; `Ok(None)` when the connection ended.
    pub async fn next(&mut self, codec: &mut HeaderCodec) -> Result<Option<Frame>, FrameError> {
        loop {
            if let Some((f, used)) = frame::parse(&self.buf, codec)? {
                self.buf.drain(..used);
                return Ok(Some(f));
            }
            match self.rd.read(&mut self.chunk).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(n) => self.buf.extend_from_slice(&self.chunk[..n]),
            }
        }
    }
}

/// Starts the task that writes encoded frames to `wr` in order; an empty
/// frame (or every sender gone) flushes and shuts the connection.
pub fn writer<W>(mut wr: W) -> (mpsc::Sender<Vec<u8>>, JoinHandle<()>)
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(QUEUE);
    let task = tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if f.is_empty() {
                break;
            }
            if wr.write_all(&f).await.is_err() {
                return;
            }
        }
        let _ = wr.flush().await;
        let _ = wr.shutdown().await;
    });
    (tx, task)
}

/// Largest DATA frame sent.
const MAX_DATA: usize = 32 << 10;

/// Queues `data` for stream `id` in DATA frames; false once the writer
/// is gone.
pub async fn send_data(tx: &mpsc::Sender<Vec<u8>>, id: u32, data: &[u8]) -> bool {
    for part in data.chunks(MAX_DATA) {
        if tx.send(frame::data(id, 0, part)).await.is_err() {
            return false;
        }
    }
    true
}

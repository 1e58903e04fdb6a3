//! A remote-command session's numbered channels (0 stdin, 1 stdout,
//! 2 stderr, 3 error, 4 resize), whatever carries them: WebSocket messages
//! or SPDY streams. The carrier turns the client's traffic into
//! [`Incoming`] and the session's `(channel, bytes)` into its own frames.

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The client's stdin.
pub const STDIN: u8 = 0;
/// The command's stdout.
pub const STDOUT: u8 = 1;
/// The command's stderr.
pub const STDERR: u8 = 2;
/// How the command ended.
pub const ERROR: u8 = 3;
/// Terminal size changes from the client.
pub const RESIZE: u8 = 4;

/// Messages queued for the client before the session waits for it.
pub const QUEUE: usize = 16;

/// What the client sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// Data for a channel (a resize channel message is one JSON object).
    Data(u8, Vec<u8>),
    /// The client closed its side of a channel.
    CloseChannel(u8),
    /// The client ends the session (or its connection broke).
    End,
    /// Nothing to act on.
    Nothing,
}

/// A session's view of its connection.
pub struct Channels {
    /// To the client; dropping it flushes what is queued and ends the
    /// connection.
    pub out: mpsc::Sender<(u8, Vec<u8>)>,
    /// From the client.
    pub input: mpsc::Receiver<Incoming>,
    /// Remote-command protocol version (how the end is told).
    pub version: u8,
    /// Finishes once everything queued was written and the connection ended.
    pub done: JoinHandle<()>,
    /// The carrier's reading task, stopped with the session.
    pub reader: AbortOnDrop,
}

/// A task stopped when this is dropped.
pub struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Ends a session: tells how its command ended (when anyone is left to
/// tell), lets the carrier write what is queued and close the connection,
/// and stops the carrier's reader.
pub async fn finish(
    out: mpsc::Sender<(u8, Vec<u8>)>,
    version: u8,
    done: JoinHandle<()>,
    reader: AbortOnDrop,
    outcome: Option<super::status::Outcome>,
) {
    if let Some(m) = outcome.and_then(|o| super::status::status_message(&o, version)) {
        let _ = out.send((ERROR, m)).await;
    }
    drop(out);
    let _ = done.await;
    // Let the client finish its side of the close (a WebSocket client
    // answers moatd's Close; over TLS an early drop would cut it off).
    let mut reader = reader;
    let _ = tokio::time::timeout(CLOSE_GRACE, &mut reader.0).await;
}

/// How long a session's connection waits for the client's side of the
/// close once everything was sent.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

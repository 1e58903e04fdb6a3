//! Process output from the guest: streamed into a container's CRI log, or
//! collected (capped) for ExecSync.

use crate::logs::cri_log::{CriLogWriter, Stream};
use moat_proto::agent::agent_client::AgentClient;
use moat_proto::agent::{OutputStream, ReadOutputRequest};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::Channel;

/// Gets an agent channel for a pump (None once the VM is gone).
pub type AgentSource = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = Option<AgentClient<Channel>>> + Send>> + Send + Sync,
>;

/// Output collected up to a limit; bytes past it are counted, not kept.
#[derive(Debug, Default)]
pub struct OutputCap {
    data: Vec<u8>,
    limit: usize,
    dropped: u64,
}

impl OutputCap {
    /// An empty buffer keeping at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            data: Vec::new(),
            limit,
            dropped: 0,
        }
    }

    /// Appends what fits.
    pub fn push(&mut self, chunk: &[u8]) {
        let room = self.limit.saturating_sub(self.data.len());
        let take = room.min(chunk.len());
        self.data.extend_from_slice(&chunk[..take]);
        self.dropped += (chunk.len() - take) as u64;
    }

    /// Bytes that did not fit.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The kept bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.data
    }
}

/// Copies a container's `stream` into its log (if it has one) and to its
/// attached clients until EOF. A broken channel is re-opened (the agent
/// lets a new reader take over) while the VM lives.
pub async fn pump_output(
    source: AgentSource,
    container_id: String,
    stream: OutputStream,
    log: Option<Arc<Mutex<CriLogWriter>>>,
    feed: super::manager::AttachFeed,
) {
    let which = match stream {
        OutputStream::Stderr => Stream::Stderr,
        _ => Stream::Stdout,
    };
    let mut failures = 0u32;
    loop {
        let Some(mut agent) = source().await else {
            return;
        };
        let resp = agent
            .read_output(ReadOutputRequest {
                container_id: container_id.clone(),
                exec_id: String::new(),
                stream: stream as i32,
            })
            .await;
        let mut s = match resp {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound => return,
            Err(_) => {
                failures += 1;
                if failures > 30 {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            match s.message().await {
                Ok(Some(chunk)) => {
                    if let Some(Ok(mut w)) = log.as_ref().map(|l| l.lock()) {
                        if let Err(e) = w.write(which, &chunk.data) {
                            tracing::warn!(id = %container_id, "writing the container log: {e}");
                        }
                    }
                    // No one attached is fine.
                    let _ = feed.send((stream, chunk.data));
                }
                Ok(None) => return,
                Err(_) => break,
            }
        }
        failures += 1;
        if failures > 30 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_keeps_the_head_and_counts_the_rest() {
        let mut c = OutputCap::new(5);
        c.push(b"abc");
        c.push(b"defgh");
        c.push(b"ij");
        assert_eq!(c.dropped(), 5);
        assert_eq!(c.into_bytes(), b"abcde");
    }
}

//! An attach session: the output of a running container's main process
//! (as its monitor reads it; the CRI log keeps receiving it) sent on
//! channels 1 and 2, the client's stdin and terminal size passed to the
//! process. The session ends when the process exits or the client leaves;
//! with `stdin_once` the process's stdin closes when the first client
//! leaves.

use super::channels::{self, Channels, Incoming, RESIZE, STDERR, STDIN, STDOUT};
use super::exec::terminal_size;
use super::status::Outcome;
use super::StreamingServer;
use crate::container::Attached;
use moat_proto::agent::OutputStream;
use moat_proto::cri::AttachRequest;
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;

/// Runs one attach session on a connection's channels.
pub async fn session(server: Arc<StreamingServer>, ch: Channels, req: AttachRequest) {
    let Channels {
        out,
        mut input,
        version,
        done,
        reader,
    } = ch;
    let outcome = match server.start_attach(&req).await {
        Err(e) => Some(Outcome::Error(crate::chain(&e))),
        Ok(mut a) => {
            let mut client_gone = false;
            loop {
                tokio::select! {
                    o = a.output.recv() => match o {
                        Ok((stream, data)) => {
                            let channel = match stream {
                                OutputStream::Stderr if req.stderr => STDERR,
                                OutputStream::Stdout if req.stdout => STDOUT,
                                _ => continue,
                            };
                            if out.send((channel, data)).await.is_err() {
                                client_gone = true;
                                break;
                            }
                        }
                        // A slow client skips what it missed.
                        Err(RecvError::Lagged(n)) => {
                            tracing::debug!(container = %req.container_id, "attach client missed {n} chunks");
                        }
                        Err(RecvError::Closed) => break,
                    },
                    m = tokio::time::timeout(server.idle, input.recv()) => {
                        let Ok(Some(m)) = m else {
                            client_gone = true;
                            break;
                        };
                        match m {
                            Incoming::Data(STDIN, data) if req.stdin && a.stdin && !data.is_empty() => {
                                let _ = a.process.write_stdin(data).await;
                            }
                            Incoming::CloseChannel(STDIN) if req.stdin && a.stdin_once => {
                                let _ = a.process.close_stdin().await;
                            }
                            Incoming::Data(RESIZE, data) if a.tty => {
                                if let Some((w, h)) = terminal_size(&data) {
                                    let _ = a.process.resize(w, h).await;
                                }
                            }
                            Incoming::End => {
                                client_gone = true;
                                break;
                            }
                            _ => {}
                        }
                    }
                }
            }
            if a.stdin_once && req.stdin {
                let _ = a.process.close_stdin().await;
            }
            (!client_gone).then_some(Outcome::Exited(0))
        }
    };
    channels::finish(out, version, done, reader, outcome).await;
}

impl StreamingServer {
    /// Attaches to the main process of the request's container.
    async fn start_attach(
        &self,
        req: &AttachRequest,
    ) -> Result<Attached, crate::container::ContainerError> {
        let sb = self.pod_of(&req.container_id)?;
        self.containers.attach(&req.container_id, &sb).await
    }
}

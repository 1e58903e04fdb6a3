//! An exec session: the command started in the container, its stdout and
//! stderr sent on channels 1 and 2, the client's stdin (channel 0) and
//! terminal size (channel 4) passed on, and its end told on channel 3,
//! over whichever carrier the client chose. A client that goes away
//! closes the command's stdin; a command still running after a grace
//! period is killed.

use super::channels::{self, Channels, Incoming, RESIZE, STDERR, STDIN, STDOUT};
use super::status::Outcome;
use super::StreamingServer;
use crate::container::{ContainerError, ExecOptions, ExecProcess};
use moat_proto::agent::OutputStream;
use moat_proto::cri::ExecRequest;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a command whose client went away may run on after its stdin
/// closed.
const GRACE: Duration = Duration::from_secs(10);

/// How long output may still arrive after the command exited (a child it
/// left behind can hold its pipes open).
const DRAIN: Duration = Duration::from_secs(10);

/// Runs one exec session on a connection's channels.
pub async fn session(server: Arc<StreamingServer>, ch: Channels, req: ExecRequest) {
    let Channels {
        out,
        mut input,
        version,
        done,
        reader,
    } = ch;
    let outcome = match server.start_exec(&req).await {
        Ok(p) => run(Arc::new(p), &req, &out, &mut input, server.idle).await,
        Err(e) => not_started(e, &req, &out).await,
    };
    channels::finish(out, version, done, reader, outcome).await;
}

/// A command that could not start: told as runc-based runtimes tell it (the
/// reason on stderr, exit code 127 for a missing program, 126 for one that
/// cannot be run); other failures as an error status.
async fn not_started(
    e: ContainerError,
    req: &ExecRequest,
    tx: &mpsc::Sender<(u8, Vec<u8>)>,
) -> Option<Outcome> {
    let msg = crate::chain(&e);
    let code = match &e {
        ContainerError::Precondition(m) if m.contains("exec failed") => {
            if m.contains("No such file") || m.contains("not found") {
                127
            } else {
                126
            }
        }
        _ => return Some(Outcome::Error(msg)),
    };
    let channel = if req.tty { STDOUT } else { STDERR };
    if req.stderr || (req.tty && req.stdout) {
        let _ = tx.send((channel, format!("{msg}\n").into_bytes())).await;
    }
    Some(Outcome::Exited(code))
}

/// Drives a started command until it ends (Some) or its client goes away
/// (None: nobody is left to tell).
async fn run(
    p: Arc<ExecProcess>,
    req: &ExecRequest,
    tx: &mpsc::Sender<(u8, Vec<u8>)>,
    input: &mut mpsc::Receiver<Incoming>,
    idle: Duration,
) -> Option<Outcome> {
    let mut pumps = vec![tokio::spawn(pump(
        p.clone(),
        OutputStream::Stdout,
        req.stdout.then_some(STDOUT),
        tx.clone(),
    ))];
    if !req.tty {
        pumps.push(tokio::spawn(pump(
            p.clone(),
            OutputStream::Stderr,
            req.stderr.then_some(STDERR),
            tx.clone(),
        )));
    }
    let wait = p.wait();
    tokio::pin!(wait);
    let ended = loop {
        tokio::select! {
            w = &mut wait => break Some(w),
            m = tokio::time::timeout(idle, input.recv()) => {
                // Idle too long, or the carrier is gone: so is the client.
                let Ok(Some(m)) = m else { break None };
                match m {
                    Incoming::Data(STDIN, data) if req.stdin && !data.is_empty() => {
                        let _ = p.write_stdin(data).await;
                    }
                    Incoming::CloseChannel(STDIN) if req.stdin => {
                        let _ = p.close_stdin().await;
                    }
                    Incoming::Data(RESIZE, data) if req.tty => {
                        if let Some((w, h)) = terminal_size(&data) {
                            let _ = p.resize(w, h).await;
                        }
                    }
                    Incoming::End => break None,
                    _ => {}
                }
            }
        }
    };
    let Some(ended) = ended else {
        client_gone(&p, req).await;
        for pump in pumps {
            pump.abort();
        }
        return None;
    };
    let _ = tokio::time::timeout(DRAIN, futures_util::future::join_all(pumps)).await;
    Some(match ended {
        Ok(w) => Outcome::Exited(w.exit_code),
        Err(s) => Outcome::Error(s.message().to_string()),
    })
}

/// The client went away: EOF on the command's stdin, then SIGKILL if it is
/// still running after [`GRACE`].
async fn client_gone(p: &ExecProcess, req: &ExecRequest) {
    if req.stdin {
        let _ = p.close_stdin().await;
    }
    if tokio::time::timeout(GRACE, p.wait()).await.is_err() {
        tracing::info!(exec = %p.exec_id, "exec client gone; killing the command");
        p.kill().await;
    }
}

/// Copies one output stream of the command to `channel` (or drops it when
/// the client did not ask for it, so the command never blocks on it).
async fn pump(
    p: Arc<ExecProcess>,
    stream: OutputStream,
    channel: Option<u8>,
    tx: mpsc::Sender<(u8, Vec<u8>)>,
) {
    let Ok(mut s) = p.output(stream).await else {
        return;
    };
    while let Ok(Some(chunk)) = s.message().await {
        if let Some(c) = channel {
            if tx.send((c, chunk.data)).await.is_err() {
                return;
            }
        }
    }
}

/// The `{"Width":W,"Height":H}` a client sends on the resize channel.
pub(super) fn terminal_size(data: &[u8]) -> Option<(u16, u16)> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Size {
        width: u16,
        height: u16,
    }
    let s: Size = serde_json::from_slice(data).ok()?;
    Some((s.width, s.height))
}

impl StreamingServer {
    /// Starts the command of an exec request in its container.
    async fn start_exec(&self, req: &ExecRequest) -> Result<ExecProcess, ContainerError> {
        let sb = self.pod_of(&req.container_id)?;
        self.containers
            .exec_start(
                &req.container_id,
                &sb,
                &ExecOptions {
                    cmd: req.cmd.clone(),
                    tty: req.tty,
                    stdin: req.stdin,
                },
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_sizes_parse_as_kubectl_sends_them() {
        assert_eq!(
            terminal_size(br#"{"Width":80,"Height":24}"#),
            Some((80, 24))
        );
        assert_eq!(terminal_size(b"80x24"), None);
        assert_eq!(terminal_size(br#"{"Width":-1,"Height":24}"#), None);
    }
}

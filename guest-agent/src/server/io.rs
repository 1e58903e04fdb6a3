//! Process stdio over gRPC: output streaming, stdin, terminal size.

use super::validate::{self, invalid};
use super::R;
use crate::state::State;
use futures_util::Stream;
use moat_proto::agent::*;
use std::pin::Pin;
use tonic::{Response, Status};

/// The stream type of ReadOutput.
pub type OutputStream = Pin<Box<dyn Stream<Item = Result<OutputChunk, Status>> + Send>>;

pub(super) async fn read_output(state: &State, req: ReadOutputRequest) -> R<OutputStream> {
    let (_c, p) = validate::process(state, &req.container_id, &req.exec_id).await?;
    let out = match moat_proto::agent::OutputStream::try_from(req.stream) {
        Ok(moat_proto::agent::OutputStream::Stdout) => p.io.stdout.clone(),
        Ok(moat_proto::agent::OutputStream::Stderr) => p.io.stderr.clone().ok_or_else(|| {
            Status::failed_precondition("stream: a terminal has no separate stderr")
        })?,
        Err(_) => return Err(invalid("stream: must be STDOUT or STDERR")),
    };
    let guard = out
        .try_lock_owned()
        .map_err(|_| Status::failed_precondition("stream: already being read by another caller"))?;
    // The receiver stays locked while the host reads; when the host goes
    // away the stream is dropped and the lock released for a new reader.
    let stream = futures_util::stream::unfold(guard, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok(OutputChunk { data: chunk }), rx))
    });
    Ok(Response::new(Box::pin(stream)))
}

/// Largest stdin write accepted per call.
const MAX_STDIN: usize = 1 << 20;

pub(super) async fn write_stdin(state: &State, req: WriteStdinRequest) -> R<WriteStdinResponse> {
    if req.data.len() > MAX_STDIN {
        return Err(invalid(format!("data: at most {MAX_STDIN} bytes per call")));
    }
    let (_c, p) = validate::process(state, &req.container_id, &req.exec_id).await?;
    let fd = p.io.stdin.lock().await.clone().ok_or_else(|| {
        Status::failed_precondition(
            "stdin: not open (closed, or the process was created without stdin)",
        )
    })?;
    crate::stdio::write_all(&fd, &req.data)
        .await
        .map_err(|e| Status::failed_precondition(format!("stdin: {e}")))?;
    Ok(Response::new(WriteStdinResponse {
        written: req.data.len() as u32,
    }))
}

pub(super) async fn close_stdin(state: &State, req: CloseStdinRequest) -> R<CloseStdinResponse> {
    let (_c, p) = validate::process(state, &req.container_id, &req.exec_id).await?;
    if p.io.pty.is_some() {
        // A terminal has no separate stdin to close: send EOF (^D) instead.
        let fd =
            p.io.pty
                .clone()
                .ok_or_else(|| Status::internal("pty vanished"))?;
        crate::stdio::write_all(&fd, &[4])
            .await
            .map_err(|e| Status::failed_precondition(format!("stdin: {e}")))?;
    } else {
        p.io.stdin.lock().await.take();
    }
    Ok(Response::new(CloseStdinResponse {}))
}

pub(super) async fn resize_tty(state: &State, req: ResizeTtyRequest) -> R<ResizeTtyResponse> {
    let rows = u16::try_from(req.rows).map_err(|_| invalid("rows: must fit 16 bits"))?;
    let cols = u16::try_from(req.cols).map_err(|_| invalid("cols: must fit 16 bits"))?;
    let (_c, p) = validate::process(state, &req.container_id, &req.exec_id).await?;
    let pty =
        p.io.pty
            .as_ref()
            .ok_or_else(|| Status::failed_precondition("exec_id: the process has no terminal"))?;
    crate::stdio::resize(pty, rows, cols)
        .map_err(|e| Status::internal(format!("TIOCSWINSZ: {e}")))?;
    Ok(Response::new(ResizeTtyResponse {}))
}

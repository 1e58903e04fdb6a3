//! The streaming RPCs (containerd's `container_exec.go`,
//! `container_attach.go`): each checks its request and answers a
//! single-use URL on moatd's streaming server, where the session runs.

use super::container::{lookup, ready_sandbox};
use super::Daemon;
use crate::container::{ContainerRecord, ContainerState};
use crate::streaming::Pending;
use moat_proto::cri::*;
use tonic::Status;

/// Exec: checks the request and answers the streaming URL that runs it.
pub fn exec(d: &Daemon, req: ExecRequest) -> Result<ExecResponse, Status> {
    let rec = running(d, &req.container_id, req.stdin || req.stdout || req.stderr)?;
    if req.cmd.is_empty() {
        return Err(Status::invalid_argument("cmd: required"));
    }
    if req.tty && req.stderr {
        return Err(Status::invalid_argument(
            "stderr: must be false with tty (a terminal has one output stream)",
        ));
    }
    let url = url(
        d,
        Pending::Exec(ExecRequest {
            container_id: rec.id,
            ..req
        }),
    )?;
    Ok(ExecResponse { url })
}

/// Attach: checks the request and answers the streaming URL that attaches
/// to the container's main process.
pub fn attach(d: &Daemon, req: AttachRequest) -> Result<AttachResponse, Status> {
    let rec = running(d, &req.container_id, req.stdin || req.stdout || req.stderr)?;
    if req.stdin && !rec.config.stdin {
        return Err(Status::failed_precondition(format!(
            "stdin: container {} was not created with stdin open",
            rec.id
        )));
    }
    if rec.config.tty && req.stderr {
        return Err(Status::invalid_argument(
            "stderr: must be false for a container with a terminal (one output stream)",
        ));
    }
    let url = url(
        d,
        Pending::Attach(AttachRequest {
            tty: rec.config.tty,
            container_id: rec.id,
            ..req
        }),
    )?;
    Ok(AttachResponse { url })
}

/// The running container a session is for, checked with the request's
/// choice of streams (at least one).
fn running(d: &Daemon, id: &str, any_stream: bool) -> Result<ContainerRecord, Status> {
    let (rec, sb) = lookup(d, id)?;
    ready_sandbox(sb, &rec)?;
    if rec.state != ContainerState::Running {
        return Err(Status::failed_precondition(format!(
            "container {} is not running",
            rec.id
        )));
    }
    if !any_stream {
        return Err(Status::invalid_argument(
            "one of stdin, stdout, and stderr must be set",
        ));
    }
    Ok(rec)
}

/// The single-use URL of a checked request.
fn url(d: &Daemon, pending: Pending) -> Result<String, Status> {
    d.streaming
        .url(pending)
        .map_err(|e| Status::resource_exhausted(e.to_string()))
}

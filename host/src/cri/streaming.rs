//! The streaming RPCs (containerd's `container_exec.go`,
//! `container_attach.go`, `sandbox_portforward.go`): each checks its
//! request and answers a single-use URL on moatd's streaming server, where
//! the session runs.

use super::container::{lookup, ready_sandbox};
use super::status_from_pod_error;
use super::Daemon;
use crate::container::{ContainerRecord, ContainerState};
use crate::pod::SandboxState;
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

/// PortForward: checks the pod and the ports and answers the streaming URL
/// whose session connects to ports on the pod's localhost.
pub fn port_forward(d: &Daemon, req: PortForwardRequest) -> Result<PortForwardResponse, Status> {
    let sb = d
        .pods
        .get(&req.pod_sandbox_id)
        .and_then(|s| d.pods.refresh(s))
        .map_err(status_from_pod_error)?;
    if sb.state != SandboxState::Ready {
        return Err(Status::failed_precondition(format!(
            "pod sandbox {} is not ready",
            sb.id
        )));
    }
    for (i, p) in req.port.iter().enumerate() {
        if !(1..=65535).contains(p) {
            return Err(Status::invalid_argument(format!(
                "port[{i}]: {p} is not 1 to 65535"
            )));
        }
    }
    let url = url(
        d,
        Pending::PortForward(PortForwardRequest {
            pod_sandbox_id: sb.id,
            ..req
        }),
    )?;
    Ok(PortForwardResponse { url })
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

//! Processes: exec into a running container, signals, waiting.

use super::validate::{self, invalid};
use super::R;
use crate::container::launch;
use crate::container::oci_runtime::RuntimeError;
use crate::container::spec;
use crate::container::sync::InitRequest;
use crate::paths::validate_id;
use crate::reaper::Exit;
use crate::state::{Container, Process, State};
use moat_proto::agent::*;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Response, Status};

pub(super) async fn exec(state: &State, req: ExecProcessRequest) -> R<ExecProcessResponse> {
    validate_id("exec_id", &req.exec_id).map_err(invalid)?;
    let c = validate::container(state, &req.container_id).await?;
    let process: oci_spec::runtime::Process = serde_json::from_slice(&req.process)
        .map_err(|e| invalid(format!("process: not an OCI Process JSON: {e}")))?;
    let plan = spec::exec_plan(&process, &c.exec_defaults).map_err(invalid)?;
    if c.state() != "running" {
        return Err(Status::failed_precondition(format!(
            "container_id: {:?} is {}, not running",
            c.id,
            c.state()
        )));
    }
    {
        let execs = c
            .execs
            .lock()
            .map_err(|_| Status::internal("exec table poisoned"))?;
        if execs.contains_key(&req.exec_id) {
            return Err(Status::already_exists(format!(
                "exec_id: {:?} already exists",
                req.exec_id
            )));
        }
    }
    let (child_io, io) = crate::stdio::create(plan.terminal, req.stdin)
        .map_err(|e| Status::internal(format!("stdio: {e}")))?;
    let (pid, exit, console) = match state.config.runtime() {
        Some(runtime) => {
            // The runtime takes the host's process as sent: it is the
            // container's own with the exec's arguments.
            let file = c.dir.join(format!("exec-{}.json", req.exec_id));
            let s = runtime
                .exec(&c.id, &process, &file, child_io)
                .await
                .map_err(|e| match e {
                    RuntimeError::Refused { .. } => {
                        Status::failed_precondition(format!("exec failed: {e}"))
                    }
                    e => Status::internal(e.to_string()),
                })?;
            (s.pid, s.exit, s.console)
        }
        None => {
            let init = state.config.init_binary.clone();
            let cg = c.cgroup.clone();
            let request = InitRequest::Exec {
                target_pid: c.init.pid,
                process: Box::new(plan),
            };
            let l = tokio::task::spawn_blocking(move || {
                let l = launch::launch(&init, &request, child_io, |pid| {
                    cg.add_pid(pid).map_err(|e| e.to_string())
                })?;
                launch::wait_exec(&l.channel)?;
                Ok::<_, launch::LaunchError>(l)
            })
            .await
            .map_err(|e| Status::internal(format!("exec task: {e}")))?
            .map_err(|e| match e {
                launch::LaunchError::Setup(m) => {
                    Status::failed_precondition(format!("exec failed: {m}"))
                }
                e => Status::internal(e.to_string()),
            })?;
            (l.pid, l.exit, l.console)
        }
    };
    let io = crate::stdio::ProcessIo::finish(io, console).map_err(|e| {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        Status::internal(format!("stdio: {e}"))
    })?;
    let p = Process::new(pid, io, exit, c.cgroup.clone());
    c.execs
        .lock()
        .map_err(|_| Status::internal("exec table poisoned"))?
        .insert(req.exec_id.clone(), p);
    tracing::info!(container = %c.id, exec = %req.exec_id, pid, "exec started");
    Ok(Response::new(ExecProcessResponse { pid: pid as u32 }))
}

pub(super) async fn signal(state: &State, req: SignalProcessRequest) -> R<SignalProcessResponse> {
    let sig = i32::try_from(req.signal)
        .ok()
        .filter(|s| (1..=64).contains(s))
        .ok_or_else(|| invalid("signal: must be 1..=64"))?;
    let (c, p) = validate::process(state, &req.container_id, &req.exec_id).await?;
    if req.all {
        for pid in c
            .cgroup
            .pids()
            .map_err(|e| Status::internal(e.to_string()))?
        {
            // SAFETY: kill(2) with a pid from the container's cgroup.
            unsafe { libc::kill(pid, sig) };
        }
        return Ok(Response::new(SignalProcessResponse {}));
    }
    if p.exited().is_some() {
        return Err(Status::not_found(format!(
            "exec_id: process {} has already exited",
            p.pid
        )));
    }
    // SAFETY: kill(2); the pid is still ours (not reaped, so not reused).
    if unsafe { libc::kill(p.pid, sig) } != 0 {
        return Err(Status::internal(format!(
            "kill({}, {sig}): {}",
            p.pid,
            std::io::Error::last_os_error()
        )));
    }
    Ok(Response::new(SignalProcessResponse {}))
}

pub(super) async fn wait(state: &State, req: WaitProcessRequest) -> R<WaitProcessResponse> {
    let (c, p) = validate::process(state, &req.container_id, &req.exec_id).await?;
    let e = p.wait().await;
    if !req.exec_id.is_empty() {
        // Its status has been told: keep it a while for a repeated wait or
        // a late output read, then forget it, or probes leak one each.
        tokio::spawn(forget_later(
            c,
            req.exec_id,
            p,
            state.config.exec_record_ttl,
        ));
    }
    Ok(Response::new(WaitProcessResponse {
        exit_code: e.exit.status(),
        signal: match e.exit {
            Exit::Signal(s) => s,
            Exit::Code(_) => 0,
        },
        oom_killed: e.oom_killed,
    }))
}

/// Drops exec `id` of `c` after `ttl`, unless a new process took its id.
async fn forget_later(c: Arc<Container>, id: String, p: Arc<Process>, ttl: Duration) {
    tokio::time::sleep(ttl).await;
    if let Ok(mut execs) = c.execs.lock() {
        if execs.get(&id).is_some_and(|q| Arc::ptr_eq(q, &p)) {
            execs.remove(&id);
        }
    }
}

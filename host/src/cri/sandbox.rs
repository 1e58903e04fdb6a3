//! RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus,
//! ListPodSandbox.

use crate::cri::container::status_from_container_error;
use crate::cri::{status_from_pod_error, Daemon};
use crate::pod::{SandboxRecord, SandboxState};
use moat_proto::cri::*;
use tonic::Status;

fn cri_state(s: SandboxState) -> PodSandboxState {
    match s {
        SandboxState::Ready => PodSandboxState::SandboxReady,
        _ => PodSandboxState::SandboxNotready,
    }
}

/// A record as a CRI `PodSandboxStatus`.
pub fn to_status(rec: &SandboxRecord) -> PodSandboxStatus {
    let ns_options = rec
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone());
    PodSandboxStatus {
        id: rec.id.clone(),
        metadata: Some(rec.metadata()),
        state: cri_state(rec.state) as i32,
        created_at: rec.created_at,
        network: Some(PodSandboxNetworkStatus {
            ip: rec.ips.first().cloned().unwrap_or_default(),
            additional_ips: rec
                .ips
                .iter()
                .skip(1)
                .map(|ip| PodIp { ip: ip.clone() })
                .collect(),
        }),
        linux: Some(LinuxPodSandboxStatus {
            namespaces: Some(Namespace {
                options: ns_options,
            }),
        }),
        labels: rec.config.labels.clone(),
        annotations: rec.config.annotations.clone(),
        runtime_handler: rec.runtime_handler.clone(),
    }
}

/// RunPodSandbox.
pub async fn run(d: &Daemon, req: RunPodSandboxRequest) -> Result<RunPodSandboxResponse, Status> {
    let config = req
        .config
        .ok_or_else(|| Status::invalid_argument("config: required"))?;
    let id = d
        .pods
        .run(config, &req.runtime_handler)
        .await
        .map_err(status_from_pod_error)?;
    let status = d.pods.get(&id).ok().map(|r| to_status(&r));
    d.events.publish(
        &id,
        ContainerEventType::ContainerCreatedEvent,
        status.clone(),
    );
    d.events
        .publish(&id, ContainerEventType::ContainerStartedEvent, status);
    Ok(RunPodSandboxResponse { pod_sandbox_id: id })
}

/// StopPodSandbox.
pub async fn stop(
    d: &Daemon,
    req: StopPodSandboxRequest,
) -> Result<StopPodSandboxResponse, Status> {
    let rec = match d.pods.get(&req.pod_sandbox_id) {
        Ok(rec) => rec,
        // CRI: StopPodSandbox is idempotent and must not fail once
        // everything is reclaimed, so a sandbox already removed is stopped.
        Err(crate::pod::PodError::NotFound(_)) if !req.pod_sandbox_id.is_empty() => {
            return Ok(StopPodSandboxResponse {})
        }
        Err(e) => return Err(status_from_pod_error(e)),
    };
    d.containers
        .pod_stopping(&rec)
        .await
        .map_err(status_from_container_error)?;
    d.pods
        .stop(&req.pod_sandbox_id)
        .await
        .map_err(status_from_pod_error)?;
    let status = d.pods.get(&req.pod_sandbox_id).ok().map(|r| to_status(&r));
    d.events.publish(
        &req.pod_sandbox_id,
        ContainerEventType::ContainerStoppedEvent,
        status,
    );
    Ok(StopPodSandboxResponse {})
}

/// RemovePodSandbox (unknown ids succeed).
pub async fn remove(
    d: &Daemon,
    req: RemovePodSandboxRequest,
) -> Result<RemovePodSandboxResponse, Status> {
    if req.pod_sandbox_id.is_empty() {
        return Err(Status::invalid_argument("pod_sandbox_id: required"));
    }
    let known = d.pods.get(&req.pod_sandbox_id).ok();
    if let Some(rec) = &known {
        d.containers
            .pod_stopping(rec)
            .await
            .map_err(status_from_container_error)?;
    }
    d.pods
        .remove(&req.pod_sandbox_id)
        .await
        .map_err(status_from_pod_error)?;
    if let Some(rec) = &known {
        d.containers
            .pod_removed(&rec.id)
            .map_err(status_from_container_error)?;
    }
    if known.is_some() {
        d.events.publish(
            &req.pod_sandbox_id,
            ContainerEventType::ContainerDeletedEvent,
            None,
        );
    }
    Ok(RemovePodSandboxResponse {})
}

/// PodSandboxStatus.
pub fn status(
    d: &Daemon,
    req: PodSandboxStatusRequest,
) -> Result<PodSandboxStatusResponse, Status> {
    let rec = d
        .pods
        .get(&req.pod_sandbox_id)
        .map_err(status_from_pod_error)?;
    let rec = d.pods.refresh(rec).map_err(status_from_pod_error)?;
    let mut info = std::collections::HashMap::new();
    if req.verbose {
        info.insert(
            "info".into(),
            serde_json::json!({
                "vmmPid": rec.vm.map(|v| v.pid),
                "vcpus": rec.vcpus,
                "memoryMiB": rec.memory_mib,
                "vmDir": rec.vm_paths.dir,
                "netns": rec.netns,
                "exitReason": rec.exit_reason,
            })
            .to_string(),
        );
    }
    Ok(PodSandboxStatusResponse {
        status: Some(to_status(&rec)),
        info,
        containers_statuses: crate::cri::container::pod_container_statuses(d, &rec.id),
        timestamp: crate::clock::now_ns(),
    })
}

/// True if the record passes a CRI filter.
fn matches(rec: &SandboxRecord, f: &PodSandboxFilter) -> bool {
    (f.id.is_empty() || rec.id.starts_with(&f.id))
        && f.state
            .as_ref()
            .is_none_or(|s| s.state == cri_state(rec.state) as i32)
        && f.label_selector
            .iter()
            .all(|(k, v)| rec.config.labels.get(k) == Some(v))
}

/// ListPodSandbox.
pub fn list(d: &Daemon, req: ListPodSandboxRequest) -> Result<ListPodSandboxResponse, Status> {
    let filter = req.filter.unwrap_or_default();
    let mut items = Vec::new();
    for rec in d.pods.list().map_err(status_from_pod_error)? {
        let rec = d.pods.refresh(rec).map_err(status_from_pod_error)?;
        if rec.state == SandboxState::Creating || !matches(&rec, &filter) {
            continue;
        }
        items.push(PodSandbox {
            id: rec.id.clone(),
            metadata: Some(rec.metadata()),
            state: cri_state(rec.state) as i32,
            created_at: rec.created_at,
            labels: rec.config.labels.clone(),
            annotations: rec.config.annotations.clone(),
            runtime_handler: rec.runtime_handler.clone(),
        });
    }
    Ok(ListPodSandboxResponse { items })
}

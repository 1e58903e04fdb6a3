//! The container RPCs: Create/Start/Stop/Remove/List/Status Container,
//! UpdateContainerResources, ReopenContainerLog, ExecSync, ContainerStats
//! and ListContainerStats.

use crate::container::{ContainerError, ContainerRecord, ContainerState};
use crate::cri::{status_from_image_error, status_from_pod_error, Daemon};
use crate::pod::SandboxRecord;
use moat_proto::cri::*;
use std::time::Duration;
use tonic::Status;

/// Maps container errors onto gRPC codes.
pub fn status_from_container_error(e: ContainerError) -> Status {
    match e {
        ContainerError::Invalid(m) => Status::invalid_argument(m),
        ContainerError::NotFound(_) => Status::not_found(e.to_string()),
        ContainerError::Exists(m) => Status::already_exists(m),
        ContainerError::Precondition(m) => Status::failed_precondition(m),
        ContainerError::Exhausted(m) => Status::resource_exhausted(m),
        ContainerError::Timeout(m) => Status::deadline_exceeded(m),
        other => Status::internal(crate::chain(&other)),
    }
}

/// The CRI enum value of a container's state.
fn cri_state(s: ContainerState) -> i32 {
    let cri = match s {
        ContainerState::Created => moat_proto::cri::ContainerState::ContainerCreated,
        ContainerState::Running => moat_proto::cri::ContainerState::ContainerRunning,
        ContainerState::Exited => moat_proto::cri::ContainerState::ContainerExited,
    };
    cri as i32
}

/// The sandbox of a container (None if it is gone).
fn sandbox_of(d: &Daemon, rec: &ContainerRecord) -> Option<SandboxRecord> {
    d.pods
        .get(&rec.sandbox_id)
        .ok()
        .and_then(|s| d.pods.refresh(s).ok())
}

/// A container record, refreshed against its pod.
pub(super) fn lookup(
    d: &Daemon,
    id: &str,
) -> Result<(ContainerRecord, Option<SandboxRecord>), Status> {
    let rec = d.containers.get(id).map_err(status_from_container_error)?;
    let sb = sandbox_of(d, &rec);
    let rec = d
        .containers
        .refresh(rec, sb.as_ref())
        .map_err(status_from_container_error)?;
    Ok((rec, sb))
}

pub(super) fn ready_sandbox(
    sb: Option<SandboxRecord>,
    rec: &ContainerRecord,
) -> Result<SandboxRecord, Status> {
    sb.ok_or_else(|| {
        Status::failed_precondition(format!(
            "container {}: its pod sandbox {} is gone",
            rec.id, rec.sandbox_id
        ))
    })
}

fn image_spec(rec: &ContainerRecord) -> ImageSpec {
    let mut spec = rec.config.image.clone().unwrap_or_default();
    if spec.image.is_empty() {
        spec.image = rec.image_ref.clone();
    }
    spec
}

/// A record as a CRI `ContainerStatus`.
pub fn to_status(rec: &ContainerRecord) -> ContainerStatus {
    let user = rec
        .spec
        .process()
        .as_ref()
        .map(|p| p.user().clone())
        .unwrap_or_default();
    ContainerStatus {
        id: rec.id.clone(),
        metadata: rec.config.metadata.clone(),
        state: cri_state(rec.state),
        created_at: rec.created_at,
        started_at: rec.started_at,
        finished_at: rec.finished_at,
        exit_code: rec.exit_code,
        image: Some(image_spec(rec)),
        image_ref: rec.image_digest.clone(),
        reason: rec.reason.clone(),
        message: rec.message.clone(),
        labels: rec.config.labels.clone(),
        annotations: rec.config.annotations.clone(),
        mounts: rec.config.mounts.clone(),
        log_path: rec
            .log_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        resources: rec.resources.clone().map(|r| ContainerResources {
            linux: Some(r),
            windows: None,
        }),
        image_id: rec.image_id.clone(),
        user: Some(ContainerUser {
            linux: Some(LinuxContainerUser {
                uid: user.uid().into(),
                gid: user.gid().into(),
                supplemental_groups: user
                    .additional_gids()
                    .iter()
                    .flatten()
                    .map(|&g| g.into())
                    .collect(),
            }),
        }),
    }
}

/// CreateContainer.
pub async fn create(
    d: &Daemon,
    req: CreateContainerRequest,
) -> Result<CreateContainerResponse, Status> {
    if req.pod_sandbox_id.is_empty() {
        return Err(Status::invalid_argument("pod_sandbox_id: required"));
    }
    let config = req
        .config
        .ok_or_else(|| Status::invalid_argument("config: required"))?;
    let image_name = config
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .unwrap_or_default();
    if image_name.trim().is_empty() {
        return Err(Status::invalid_argument("config.image.image: required"));
    }
    let sb = d
        .pods
        .get(&req.pod_sandbox_id)
        .map_err(status_from_pod_error)?;
    let sb = d.pods.refresh(sb).map_err(status_from_pod_error)?;
    let image = d
        .images
        .resolve(&image_name)
        .map_err(status_from_image_error)?
        .ok_or_else(|| {
            Status::not_found(format!(
                "config.image.image: image {image_name:?} is not present; pull it first"
            ))
        })?;
    let id = d
        .containers
        .create(&sb, config, image)
        .await
        .map_err(status_from_container_error)?;
    Ok(CreateContainerResponse { container_id: id })
}

/// StartContainer.
pub async fn start(
    d: &Daemon,
    req: StartContainerRequest,
) -> Result<StartContainerResponse, Status> {
    let (rec, sb) = lookup(d, &req.container_id)?;
    let sb = ready_sandbox(sb, &rec)?;
    d.containers
        .start(&rec.id, &sb)
        .await
        .map_err(status_from_container_error)?;
    Ok(StartContainerResponse {})
}

/// The signal number of the image's `StopSignal` (SIGTERM if unset or unknown).
fn stop_signal(d: &Daemon, rec: &ContainerRecord) -> u32 {
    let cfg = d
        .images
        .resolve(&rec.image_id)
        .ok()
        .flatten()
        .map(|i| i.config_json());
    let name = cfg
        .as_ref()
        .and_then(|c| c["config"]["StopSignal"].as_str())
        .unwrap_or("");
    parse_signal(name).unwrap_or(libc::SIGTERM as u32)
}

/// "SIGTERM", "TERM" or "15" → 15.
fn parse_signal(name: &str) -> Option<u32> {
    if let Ok(n) = name.parse::<u32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|s| s as u32)
}

/// StopContainer.
pub async fn stop(d: &Daemon, req: StopContainerRequest) -> Result<StopContainerResponse, Status> {
    let (rec, sb) = lookup(d, &req.container_id)?;
    let timeout = Duration::from_secs(req.timeout.max(0) as u64);
    d.containers
        .stop(&rec.id, sb.as_ref(), timeout, stop_signal(d, &rec))
        .await
        .map_err(status_from_container_error)?;
    Ok(StopContainerResponse {})
}

/// RemoveContainer (unknown ids succeed).
pub async fn remove(
    d: &Daemon,
    req: RemoveContainerRequest,
) -> Result<RemoveContainerResponse, Status> {
    if req.container_id.is_empty() {
        return Err(Status::invalid_argument("container_id: required"));
    }
    let (rec, sb) = match lookup(d, &req.container_id) {
        Ok(x) => x,
        Err(s) if s.code() == tonic::Code::NotFound => return Ok(RemoveContainerResponse {}),
        Err(s) => return Err(s),
    };
    d.containers
        .remove(&rec.id, sb.as_ref())
        .await
        .map_err(status_from_container_error)?;
    Ok(RemoveContainerResponse {})
}

fn matches(rec: &ContainerRecord, f: &ContainerFilter) -> bool {
    (f.id.is_empty() || rec.id.starts_with(&f.id))
        && (f.pod_sandbox_id.is_empty() || rec.sandbox_id.starts_with(&f.pod_sandbox_id))
        && f.state
            .as_ref()
            .is_none_or(|s| s.state == cri_state(rec.state))
        && f.label_selector
            .iter()
            .all(|(k, v)| rec.config.labels.get(k) == Some(v))
}

/// Every container, refreshed against its pod.
fn all(d: &Daemon) -> Result<Vec<ContainerRecord>, Status> {
    let mut out = Vec::new();
    for rec in d.containers.list().map_err(status_from_container_error)? {
        let sb = sandbox_of(d, &rec);
        out.push(
            d.containers
                .refresh(rec, sb.as_ref())
                .map_err(status_from_container_error)?,
        );
    }
    Ok(out)
}

/// The statuses of one pod's containers (PodSandboxStatus).
pub fn pod_container_statuses(d: &Daemon, sandbox_id: &str) -> Vec<ContainerStatus> {
    all(d)
        .unwrap_or_default()
        .iter()
        .filter(|r| r.sandbox_id == sandbox_id)
        .map(to_status)
        .collect()
}

/// ListContainers.
pub fn list(d: &Daemon, req: ListContainersRequest) -> Result<ListContainersResponse, Status> {
    let f = req.filter.unwrap_or_default();
    let containers = all(d)?
        .iter()
        .filter(|r| matches(r, &f))
        .map(|r| Container {
            id: r.id.clone(),
            pod_sandbox_id: r.sandbox_id.clone(),
            metadata: r.config.metadata.clone(),
            image: Some(image_spec(r)),
            image_ref: r.image_digest.clone(),
            state: cri_state(r.state),
            created_at: r.created_at,
            labels: r.config.labels.clone(),
            annotations: r.config.annotations.clone(),
            image_id: r.image_id.clone(),
        })
        .collect();
    Ok(ListContainersResponse { containers })
}

/// ContainerStatus.
pub fn status(d: &Daemon, req: ContainerStatusRequest) -> Result<ContainerStatusResponse, Status> {
    let (rec, sb) = lookup(d, &req.container_id)?;
    let mut info = std::collections::HashMap::new();
    if req.verbose {
        info.insert(
            "info".to_string(),
            serde_json::json!({
                "sandboxID": rec.sandbox_id,
                "pid": rec.pid,
                "imageSlot": rec.slot,
                "vmmPid": sb.and_then(|s| s.vm).map(|v| v.pid),
                "runtimeSpec": rec.spec,
            })
            .to_string(),
        );
    }
    Ok(ContainerStatusResponse {
        status: Some(to_status(&rec)),
        info,
    })
}

/// UpdateContainerResources.
pub async fn update(
    d: &Daemon,
    req: UpdateContainerResourcesRequest,
) -> Result<UpdateContainerResourcesResponse, Status> {
    let (rec, sb) = lookup(d, &req.container_id)?;
    let sb = ready_sandbox(sb, &rec)?;
    let linux = req
        .linux
        .ok_or_else(|| Status::invalid_argument("linux: required"))?;
    d.containers
        .update(&rec.id, &sb, linux)
        .await
        .map_err(status_from_container_error)?;
    Ok(UpdateContainerResourcesResponse {})
}

/// ReopenContainerLog.
pub fn reopen_log(
    d: &Daemon,
    req: ReopenContainerLogRequest,
) -> Result<ReopenContainerLogResponse, Status> {
    let (rec, _) = lookup(d, &req.container_id)?;
    d.containers
        .reopen_log(&rec.id)
        .map_err(status_from_container_error)?;
    Ok(ReopenContainerLogResponse {})
}

/// ExecSync.
pub async fn exec_sync(d: &Daemon, req: ExecSyncRequest) -> Result<ExecSyncResponse, Status> {
    let (rec, sb) = lookup(d, &req.container_id)?;
    let sb = ready_sandbox(sb, &rec)?;
    if req.timeout < 0 {
        return Err(Status::invalid_argument("timeout: must not be negative"));
    }
    let (exit_code, stdout, stderr) = d
        .containers
        .exec_sync(
            &rec.id,
            &sb,
            req.cmd,
            Duration::from_secs(req.timeout as u64),
        )
        .await
        .map_err(status_from_container_error)?;
    Ok(ExecSyncResponse {
        stdout,
        stderr,
        exit_code,
    })
}

fn u64v(v: u64) -> Option<UInt64Value> {
    Some(UInt64Value { value: v })
}

async fn stats_of(
    d: &Daemon,
    rec: &ContainerRecord,
    sb: &SandboxRecord,
) -> Result<ContainerStats, Status> {
    let attributes = Some(ContainerAttributes {
        id: rec.id.clone(),
        metadata: rec.config.metadata.clone(),
        labels: rec.config.labels.clone(),
        annotations: rec.config.annotations.clone(),
    });
    if rec.state != ContainerState::Running {
        return Ok(ContainerStats {
            attributes,
            ..Default::default()
        });
    }
    let u = d
        .containers
        .usage(rec, sb)
        .await
        .map_err(status_from_container_error)?;
    let ts = if u.stats.timestamp_ns > 0 {
        u.stats.timestamp_ns
    } else {
        crate::clock::now_ns()
    };
    let cpu = u.stats.cpu.unwrap_or_default();
    let mem = u.stats.memory.unwrap_or_default();
    let limit = if mem.limit_bytes > 0 && mem.limit_bytes < u64::MAX / 2 {
        mem.limit_bytes
    } else {
        sb.memory_mib << 20
    };
    Ok(ContainerStats {
        attributes,
        cpu: Some(CpuUsage {
            timestamp: ts,
            usage_core_nano_seconds: u64v(cpu.usage_ns),
            usage_nano_cores: u.nano_cores.and_then(u64v),
        }),
        memory: Some(MemoryUsage {
            timestamp: ts,
            working_set_bytes: u64v(mem.working_set_bytes),
            available_bytes: u64v(limit.saturating_sub(mem.working_set_bytes)),
            usage_bytes: u64v(mem.usage_bytes),
            rss_bytes: u64v(mem.rss_bytes),
            page_faults: None,
            major_page_faults: None,
        }),
        writable_layer: None,
        swap: Some(SwapUsage {
            timestamp: ts,
            swap_available_bytes: None,
            swap_usage_bytes: u64v(mem.swap_bytes),
        }),
    })
}

/// Stats of a pod's running containers among `containers` (PodSandboxStats);
/// containers whose stats cannot be read are left out.
pub async fn pod_container_stats(
    d: &Daemon,
    sb: &SandboxRecord,
    containers: &[ContainerRecord],
) -> Vec<ContainerStats> {
    let running = containers
        .iter()
        .filter(|r| r.sandbox_id == sb.id && r.state == ContainerState::Running);
    gathered(running.map(|rec| async move { (rec.id.as_str(), stats_of(d, rec, sb).await) })).await
}

/// The stats the guests gave, asked of all at once (each within its
/// deadline); a container whose stats cannot be read is left out.
async fn gathered<'a, F>(calls: impl Iterator<Item = F>) -> Vec<ContainerStats>
where
    F: std::future::Future<Output = (&'a str, Result<ContainerStats, Status>)>,
{
    futures_util::future::join_all(calls)
        .await
        .into_iter()
        .filter_map(|(id, r)| {
            r.map_err(|e| tracing::debug!(%id, "container stats: {}", e.message()))
                .ok()
        })
        .collect()
}

/// ContainerStats.
pub async fn stats(
    d: &Daemon,
    req: ContainerStatsRequest,
) -> Result<ContainerStatsResponse, Status> {
    let (rec, sb) = lookup(d, &req.container_id)?;
    let sb = ready_sandbox(sb, &rec)?;
    Ok(ContainerStatsResponse {
        stats: Some(stats_of(d, &rec, &sb).await?),
    })
}

/// ListContainerStats: stats of every live container matching the filter.
pub async fn list_stats(
    d: &Daemon,
    req: ListContainerStatsRequest,
) -> Result<ListContainerStatsResponse, Status> {
    let f = req.filter.unwrap_or_default();
    let filter = ContainerFilter {
        id: f.id,
        state: None,
        pod_sandbox_id: f.pod_sandbox_id,
        label_selector: f.label_selector,
    };
    let live: Vec<(ContainerRecord, SandboxRecord)> = all(d)?
        .into_iter()
        .filter(|r| matches(r, &filter) && r.state != ContainerState::Exited)
        .filter_map(|r| sandbox_of(d, &r).map(|sb| (r, sb)))
        .collect();
    let stats = gathered(
        live.iter()
            .map(|(rec, sb)| async move { (rec.id.as_str(), stats_of(d, rec, sb).await) }),
    )
    .await;
    Ok(ListContainerStatsResponse { stats })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signals_parse() {
        assert_eq!(parse_signal("SIGTERM"), Some(15));
        assert_eq!(parse_signal("quit"), Some(3));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("SIGNOPE"), None);
        assert_eq!(parse_signal("0"), None);
    }
}

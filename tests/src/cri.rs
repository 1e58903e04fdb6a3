//! CRI test fixtures shared by the end-to-end suites: configs for pods and
//! containers of the project's busybox image, and thin calls that panic
//! with moatd's log on failure.

use crate::moatd::Moatd;
use moat_proto::cri::runtime_service_client::RuntimeServiceClient;
use moat_proto::cri::*;
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::Code;

/// A RuntimeService client on moatd's socket.
pub type Rt = RuntimeServiceClient<Channel>;

/// A pod named `name` (hostname too) logging under `log_dir/name`.
pub fn pod_config(name: &str, log_dir: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.join(name).display().to_string(),
        ..Default::default()
    }
}

/// A busybox container running `script` with `sh -c`.
pub fn container_config(m: &Moatd, name: &str, script: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: m.registry.busybox(),
            ..Default::default()
        }),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}/0.log"),
        labels: [("app".to_string(), name.to_string())].into(),
        ..Default::default()
    }
}

/// The container's security context, created if missing.
pub fn security_context(c: &mut ContainerConfig) -> &mut LinuxContainerSecurityContext {
    c.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

/// Pulls the registry's busybox image.
pub async fn pull(m: &Moatd) {
    pull_image(m, &m.registry.busybox()).await;
}

/// Pulls `image`, which must succeed.
pub async fn pull_image(m: &Moatd, image: &str) {
    try_pull_image(m, image)
        .await
        .unwrap_or_else(|e| panic!("PullImage {image}: {e:?}\n{}", m.log()));
}

/// PullImage; the image's reference (its id) or moatd's refusal.
pub async fn try_pull_image(m: &Moatd, image: &str) -> Result<String, tonic::Status> {
    m.images()
        .await
        .unwrap()
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

/// Every pod sandbox ListPodSandbox shows.
pub async fn list_pods(rt: &mut Rt) -> Vec<PodSandbox> {
    rt.list_pod_sandbox(ListPodSandboxRequest::default())
        .await
        .unwrap_or_else(|e| panic!("ListPodSandbox: {e:?}"))
        .into_inner()
        .items
}

/// The ids of the containers `filter` selects, sorted.
pub async fn container_ids(rt: &mut Rt, filter: Option<ContainerFilter>) -> Vec<String> {
    let mut ids: Vec<String> = rt
        .list_containers(ListContainersRequest { filter })
        .await
        .unwrap_or_else(|e| panic!("ListContainers: {e:?}"))
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.id)
        .collect();
    ids.sort();
    ids
}

/// RunPodSandbox with the default handler.
pub async fn try_run_pod(rt: &mut Rt, config: PodSandboxConfig) -> Result<String, tonic::Status> {
    rt.run_pod_sandbox(RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: String::new(),
    })
    .await
    .map(|r| r.into_inner().pod_sandbox_id)
}

/// RunPodSandbox that must succeed.
pub async fn run_pod(rt: &mut Rt, m: &Moatd, config: PodSandboxConfig) -> String {
    try_run_pod(rt, config)
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e:?}\n{}", m.log()))
}

/// CreateContainer in `pod` (the sandbox config is not re-sent).
pub async fn create(
    rt: &mut Rt,
    pod: &str,
    config: ContainerConfig,
) -> Result<String, tonic::Status> {
    rt.create_container(CreateContainerRequest {
        pod_sandbox_id: pod.into(),
        config: Some(config),
        sandbox_config: None,
    })
    .await
    .map(|r| r.into_inner().container_id)
}

/// StartContainer that must succeed.
pub async fn start(rt: &mut Rt, id: &str) {
    rt.start_container(StartContainerRequest {
        container_id: id.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("StartContainer {id}: {e:?}"));
}

/// Creates and starts a container; returns its id.
pub async fn run_container(rt: &mut Rt, m: &Moatd, pod: &str, config: ContainerConfig) -> String {
    let id = create(rt, pod, config)
        .await
        .unwrap_or_else(|e| panic!("CreateContainer: {e:?}\n{}", m.log()));
    start(rt, &id).await;
    id
}

/// PodSandboxStatus that must succeed (`verbose`: with moatd's info).
pub async fn pod_status(rt: &mut Rt, pod: &str, verbose: bool) -> PodSandboxStatusResponse {
    rt.pod_sandbox_status(PodSandboxStatusRequest {
        pod_sandbox_id: pod.into(),
        verbose,
    })
    .await
    .unwrap_or_else(|e| panic!("PodSandboxStatus {pod}: {e:?}"))
    .into_inner()
}

/// What moatd tells of a pod in its verbose status (`vmmPid`, `vmDir`, ...).
pub async fn pod_info(rt: &mut Rt, pod: &str) -> serde_json::Value {
    let st = pod_status(rt, pod, true).await;
    serde_json::from_str(&st.info["info"]).unwrap_or_else(|e| panic!("pod info: {e}"))
}

/// Stops and removes a pod; both must succeed.
pub async fn remove_pod(rt: &mut Rt, pod: &str) {
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("StopPodSandbox {pod}: {e:?}"));
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("RemovePodSandbox {pod}: {e:?}"));
}

/// ContainerStatus that must succeed.
pub async fn status(rt: &mut Rt, id: &str) -> ContainerStatus {
    rt.container_status(ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .unwrap_or_else(|e| panic!("ContainerStatus {id}: {e:?}"))
    .into_inner()
    .status
    .unwrap_or_else(|| panic!("ContainerStatus {id}: no status"))
}

/// Waits (up to 2 minutes) until the container has exited.
pub async fn wait_exited(rt: &mut Rt, id: &str) -> ContainerStatus {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = status(rt, id).await;
        if s.state == ContainerState::ContainerExited as i32 {
            return s;
        }
        assert!(Instant::now() < deadline, "{id} never exited: {s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// ExecSync of `cmd` with a timeout in seconds.
pub async fn exec(
    rt: &mut Rt,
    id: &str,
    cmd: &[&str],
    timeout: i64,
) -> Result<ExecSyncResponse, tonic::Status> {
    rt.exec_sync(ExecSyncRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout,
    })
    .await
    .map(|r| r.into_inner())
}

/// Runs `script` with `sh -c` in the container: (exit code, stdout +
/// stderr).
pub async fn exec_sh(rt: &mut Rt, id: &str, script: &str) -> (i32, String) {
    let r = exec(rt, id, &["/bin/sh", "-c", script], 60)
        .await
        .unwrap_or_else(|e| panic!("ExecSync {script:?}: {e:?}"));
    (
        r.exit_code,
        format!(
            "{}{}",
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        )
        .trim()
        .to_string(),
    )
}

/// Runs `script` that must exit 0; returns its trimmed stdout.
pub async fn exec_ok(rt: &mut Rt, id: &str, script: &str) -> String {
    let r = exec(rt, id, &["/bin/sh", "-c", script], 60)
        .await
        .unwrap_or_else(|e| panic!("ExecSync {script:?}: {e:?}"));
    assert_eq!(
        r.exit_code,
        0,
        "{script:?} in {id}: {}{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    String::from_utf8_lossy(&r.stdout).trim().to_string()
}

/// Asserts a call failed with `code`; returns the message.
pub fn assert_code<T: std::fmt::Debug>(
    r: Result<T, tonic::Status>,
    code: Code,
    what: &str,
) -> String {
    match r {
        Ok(v) => panic!("{what}: expected {code:?}, got {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "{what}: {s:?}");
            s.message().to_string()
        }
    }
}

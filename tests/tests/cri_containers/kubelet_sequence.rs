//! kubelet's sequence for containers as named steps over one pod: refused
//! creates leave nothing behind; the main container with mounts, env,
//! resources and a dropped capability; its CRI logs, ExecSync, stats,
//! resource updates, log reopening; completed and OOM-killed containers;
//! list filters, stop, removal, events, and the pod's stop.

use super::*;
use tonic::Streaming;

/// The sequence, step by step (each prints its name), in a microVM pod.
pub fn body() {
    sequence(false)
}

/// The same sequence in a native pod (moatd's default handler, runc).
pub fn native_body() {
    sequence(true)
}

fn sequence(native: bool) {
    tokio_runtime().block_on(async {
        let m = match native {
            true => Moatd::start_with_native_default(""),
            false => Moatd::start(""),
        }
        .expect("moatd");
        let mut rt = m.runtime().await.unwrap();
        let logs = m.dir.path().join("pods");
        let mut events = rt
            .get_container_events(GetEventsRequest::default())
            .await
            .unwrap()
            .into_inner();
        pull(&m).await;
        let pod = run_pod(&mut rt, &m, pod_config("web", &logs)).await;
        let host = host_volumes(&m);
        step("refused creates leave nothing");
        refused_creates(&m, &rt, &pod).await;
        step("the main container");
        let (app, log_path) = main_container(&m, &rt, &pod, &host, &logs).await;
        step("logs in the CRI format");
        cri_logs(&log_path).await;
        step("ExecSync");
        exec_sync(&rt, &app).await;
        step("stats");
        stats(&rt, &pod, &app).await;
        step("UpdateContainerResources");
        update_resources(&rt, &app).await;
        step("ReopenContainerLog");
        reopen_log(&rt, &app, &log_path).await;
        step("completed and OOM-killed containers");
        let (done, hog) = completed_and_oom_killed(&m, &rt, &pod, &logs).await;
        step("list filters");
        filters(&rt, &pod, &app, &done).await;
        step("StopContainer");
        stop(&rt, &app, &log_path).await;
        step("RemoveContainer");
        remove(&rt, &pod, [&app, &done, &hog]).await;
        step("container events");
        events_in_order(&mut events, &app).await;
        step("the pod's stop kills its containers");
        pod_stop_kills_containers(&m, &rt, &pod).await;
    });
}

/// The ids of the containers `f` selects, sorted.
async fn list(rt: &Rt, f: ContainerFilter) -> Vec<String> {
    container_ids(&mut rt.clone(), Some(f)).await
}

fn step(name: &str) {
    println!("== step: {name}");
}

/// Host files and directories the containers mount (kubelet's configmaps,
/// secrets, emptyDirs); they are copied into the VM.
fn host_volumes(m: &Moatd) -> PathBuf {
    let host = m.dir.path().join("volumes");
    std::fs::create_dir_all(host.join("config/sub")).unwrap();
    std::fs::write(host.join("config/greeting"), "hello from a configmap\n").unwrap();
    std::fs::write(host.join("config/sub/deep"), "deep\n").unwrap();
    std::fs::write(host.join("token"), "s3cret").unwrap();
    host
}

/// Error cases first: nothing of them may be left behind.
async fn refused_creates(m: &Moatd, rt: &Rt, pod: &str) {
    let mut rt = rt.clone();
    let pod = pod.to_string();
    let mut c = container_config(m, "bad", "true");
    assert_code(
        create(&mut rt, "nope", c.clone()).await,
        Code::NotFound,
        "unknown pod",
    );
    // A privileged container: the node's privileges cannot be had in a
    // microVM (the handler allows none over the guest here).
    let handler = pod_status(&mut rt, &pod, false)
        .await
        .status
        .map(|s| s.runtime_handler)
        .unwrap_or_default();
    if handler != "runc" {
        let mut p = c.clone();
        security_context(&mut p).privileged = true;
        let msg = assert_code(
            create(&mut rt, &pod, p).await,
            Code::InvalidArgument,
            "privileged in a VM",
        );
        assert!(msg.contains("security_context.privileged"), "{msg}");
    }
    c.image = Some(ImageSpec {
        image: format!("{}/moat/missing:1", m.registry.addr),
        ..Default::default()
    });
    assert_code(
        create(&mut rt, &pod, c.clone()).await,
        Code::NotFound,
        "image not pulled",
    );
    c.image = None;
    let msg = assert_code(
        create(&mut rt, &pod, c).await,
        Code::InvalidArgument,
        "no image",
    );
    assert!(msg.contains("config.image"), "{msg}");
    let mut c = container_config(m, "bad", "true");
    c.metadata = None;
    let msg = assert_code(
        create(&mut rt, &pod, c).await,
        Code::InvalidArgument,
        "no metadata",
    );
    assert!(msg.contains("metadata"), "{msg}");
    let mut c = container_config(m, "bad", "true");
    c.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            run_as_username: "nobody-here".into(),
            ..Default::default()
        }),
        resources: None,
    });
    let msg = assert_code(
        create(&mut rt, &pod, c).await,
        Code::InvalidArgument,
        "unknown user",
    );
    assert!(msg.contains("run_as_username"), "{msg}");
    assert_code(
        rt.start_container(StartContainerRequest {
            container_id: "0123abcd".into(),
        })
        .await,
        Code::NotFound,
        "start unknown",
    );
    assert_code(
        exec(&mut rt, "0123abcd", &["true"], 5).await,
        Code::NotFound,
        "exec unknown",
    );
    assert_slots(&mut rt, &pod, 0, "a failed create left an image attached").await;
}

/// The main container: env, copied mounts, resources, a dropped capability; answers its id and log path.
async fn main_container(
    m: &Moatd,
    rt: &Rt,
    pod: &str,
    host: &Path,
    logs: &Path,
) -> (String, PathBuf) {
    let mut rt = rt.clone();
    let pod = pod.to_string();
    let mut c = container_config(
        m,
        "app",
        "echo out; echo err >&2; trap 'echo term; exit 3' TERM; \
         while :; do echo tick; sleep 0.5; done",
    );
    c.envs = vec![KeyValue {
        key: "GREETING".into(),
        value: "hi".into(),
    }];
    c.mounts = vec![
        Mount {
            container_path: "/config".into(),
            host_path: host.join("config").display().to_string(),
            readonly: true,
            ..Default::default()
        },
        Mount {
            container_path: "/var/run/secrets/token".into(),
            host_path: host.join("token").display().to_string(),
            readonly: true,
            ..Default::default()
        },
    ];
    c.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            cpu_period: 100_000,
            cpu_quota: 50_000,
            ..Default::default()
        }),
        security_context: Some(LinuxContainerSecurityContext {
            capabilities: Some(Capability {
                drop_capabilities: vec!["CHOWN".into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
    });
    let t0 = Instant::now();
    let app = create(&mut rt, &pod, c.clone())
        .await
        .unwrap_or_else(|e| panic!("CreateContainer: {e:?}\n{}", m.log()));
    let created_ms = t0.elapsed().as_millis();
    let s = status(&mut rt, &app).await;
    assert_eq!(s.state, ContainerState::ContainerCreated as i32);
    start(&mut rt, &app).await;
    println!(
        "CreateContainer → running: {} ms (create {created_ms} ms)",
        t0.elapsed().as_millis()
    );
    let s = status(&mut rt, &app).await;
    assert_eq!(s.state, ContainerState::ContainerRunning as i32, "{s:?}");
    assert!(s.started_at >= s.created_at && s.created_at > 0);
    assert_eq!(s.image.as_ref().unwrap().image, m.registry.busybox());
    assert!(s.image_id.starts_with("sha256:"));
    assert_eq!(s.mounts.len(), 2);
    let log_path = PathBuf::from(&s.log_path);
    assert_eq!(log_path, logs.join("web/app/0.log"));
    assert_code(
        create(&mut rt, &pod, c).await,
        Code::AlreadyExists,
        "same name and attempt",
    );
    (app, log_path)
}

/// Logs in the CRI format, both streams.
async fn cri_logs(log_path: &Path) {
    // The two streams are read apart: stderr's line may come after
    // stdout's later ones.
    wait_log(log_path, " stderr F err\n").await;
    let content = wait_log(log_path, " stdout F tick").await;
    let first = content.lines().next().unwrap();
    let fields: Vec<&str> = first.splitn(4, ' ').collect();
    assert!(chrono_like(fields[0]), "{first}");
    assert!(content.contains(" stdout F out\n"), "{content}");
    assert!(content.contains(" stderr F err\n"), "{content}");
}

/// ExecSync: output, exit codes, the pod's view of the guest.
async fn exec_sync(rt: &Rt, app: &str) {
    let mut rt = rt.clone();
    let app = app.to_string();
    assert_eq!(
        exec_ok(&mut rt, &app, "cat /config/greeting").await,
        "hello from a configmap"
    );
    assert_eq!(exec_ok(&mut rt, &app, "cat /config/sub/deep").await, "deep");
    assert_eq!(
        exec_ok(&mut rt, &app, "cat /var/run/secrets/token").await,
        "s3cret"
    );
    assert_eq!(exec_ok(&mut rt, &app, "echo $GREETING").await, "hi");
    assert_eq!(exec_ok(&mut rt, &app, "hostname").await, "web");
    assert_eq!(
        exec_ok(&mut rt, &app, "cat /sys/fs/cgroup/memory.max").await,
        (64u64 << 20).to_string()
    );
    assert_eq!(
        exec_ok(&mut rt, &app, "cat /sys/fs/cgroup/cpu.max").await,
        "50000 100000"
    );
    // The process runs as PID 1 of its own PID namespace.
    assert_eq!(
        exec_ok(&mut rt, &app, "cat /proc/1/cmdline | tr '\\0' ' '")
            .await
            .split(' ')
            .next(),
        Some("/bin/sh")
    );
    // A read-only mount stays read-only; a dropped capability is gone.
    let r = exec(
        &mut rt,
        &app,
        &["/bin/sh", "-c", "echo x > /config/new"],
        30,
    )
    .await
    .unwrap();
    assert_ne!(r.exit_code, 0, "wrote to a read-only mount");
    let r = exec(
        &mut rt,
        &app,
        &["/bin/sh", "-c", "touch /tmp/f && chown 1:1 /tmp/f"],
        30,
    )
    .await
    .unwrap();
    assert_ne!(r.exit_code, 0, "chown worked without CAP_CHOWN");
    let r = exec(
        &mut rt,
        &app,
        &["/bin/sh", "-c", "echo to-err >&2; exit 7"],
        30,
    )
    .await
    .unwrap();
    assert_eq!(r.exit_code, 7);
    assert_eq!(String::from_utf8_lossy(&r.stderr).trim(), "to-err");
    let t = Instant::now();
    let msg = assert_code(
        exec(&mut rt, &app, &["sleep", "60"], 2).await,
        Code::DeadlineExceeded,
        "exec timeout",
    );
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "timeout took {:?}",
        t.elapsed()
    );
    assert!(msg.contains("timed out"), "{msg}");
    assert_code(
        exec(&mut rt, &app, &[], 5).await,
        Code::InvalidArgument,
        "empty cmd",
    );
}

/// Stats from the guest's cgroup.
async fn stats(rt: &Rt, pod: &str, app: &str) {
    let mut rt = rt.clone();
    let pod = pod.to_string();
    let app = app.to_string();
    let st = rt
        .container_stats(ContainerStatsRequest {
            container_id: app.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert!(st.cpu.unwrap().usage_core_nano_seconds.unwrap().value > 0);
    assert!(st.memory.unwrap().working_set_bytes.unwrap().value > 0);
    let all = rt
        .list_container_stats(ListContainerStatsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].attributes.as_ref().unwrap().id, app);
    let pod_stats = rt
        .pod_sandbox_stats(PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap()
        .linux
        .unwrap();
    assert!(pod_stats.memory.unwrap().working_set_bytes.unwrap().value > 1 << 20);
    assert_eq!(pod_stats.containers.len(), 1, "the pod's container stats");
}

/// UpdateContainerResources reaches the guest's cgroup.
async fn update_resources(rt: &Rt, app: &str) {
    let mut rt = rt.clone();
    let app = app.to_string();
    rt.update_container_resources(UpdateContainerResourcesRequest {
        container_id: app.clone(),
        linux: Some(LinuxContainerResources {
            memory_limit_in_bytes: 96 << 20,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        exec_ok(&mut rt, &app, "cat /sys/fs/cgroup/memory.max").await,
        (96u64 << 20).to_string()
    );
    let s = status(&mut rt, &app).await;
    assert_eq!(
        s.resources.unwrap().linux.unwrap().memory_limit_in_bytes,
        96 << 20
    );
}

/// ReopenContainerLog: kubelet rotated the file away; a new one fills.
async fn reopen_log(rt: &Rt, app: &str, log_path: &Path) {
    let mut rt = rt.clone();
    let app = app.to_string();
    let rotated = log_path.with_extension("log.1");
    std::fs::rename(log_path, &rotated).unwrap();
    rt.reopen_container_log(ReopenContainerLogRequest {
        container_id: app.clone(),
    })
    .await
    .unwrap();
    wait_log(log_path, " stdout F tick").await;
}

/// A second container from the same image shares its slot; one that finishes is Completed; a memory hog is OOMKilled. Answers both ids.
async fn completed_and_oom_killed(m: &Moatd, rt: &Rt, pod: &str, logs: &Path) -> (String, String) {
    let mut rt = rt.clone();
    let pod = pod.to_string();
    let done = create(&mut rt, &pod, container_config(m, "done", "echo finished"))
        .await
        .unwrap();
    assert_slots(&mut rt, &pod, 1, "one image, one slot").await;
    start(&mut rt, &done).await;
    let s = wait_exited(&mut rt, &done).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"), "{s:?}");
    assert!(s.finished_at >= s.started_at);
    wait_log(&logs.join("web/done/0.log"), " stdout F finished").await;
    assert_code(
        exec(&mut rt, &done, &["true"], 5).await,
        Code::FailedPrecondition,
        "exec in an exited container",
    );
    let mut hog = container_config(m, "hog", "x=0123456789; while :; do x=$x$x; done");
    hog.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            ..Default::default()
        }),
        security_context: None,
    });
    let hog = create(&mut rt, &pod, hog).await.unwrap();
    start(&mut rt, &hog).await;
    let s = wait_exited(&mut rt, &hog).await;
    assert_eq!(
        (s.exit_code, s.reason.as_str()),
        (137, "OOMKilled"),
        "{s:?}"
    );
    (done, hog)
}

/// ListContainers filters and the pod's container statuses.
async fn filters(rt: &Rt, pod: &str, app: &str, done: &str) {
    let mut rt = rt.clone();
    let pod = pod.to_string();
    let app = app.to_string();
    let done = done.to_string();
    let list = |f| list(&rt, f);
    assert_eq!(list(ContainerFilter::default()).await.len(), 3);
    assert_eq!(
        list(ContainerFilter {
            state: Some(ContainerStateValue {
                state: ContainerState::ContainerRunning as i32
            }),
            ..Default::default()
        })
        .await,
        vec![app.clone()]
    );
    assert_eq!(
        list(ContainerFilter {
            label_selector: [("app".to_string(), "done".to_string())].into(),
            ..Default::default()
        })
        .await,
        vec![done.clone()]
    );
    assert_eq!(
        list(ContainerFilter {
            pod_sandbox_id: pod[..12].into(),
            id: app[..12].into(),
            ..Default::default()
        })
        .await,
        vec![app.clone()]
    );
    let pod_status = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pod_status.containers_statuses.len(), 3);
}

/// StopContainer: SIGTERM, which the container traps; stopping twice succeeds.
async fn stop(rt: &Rt, app: &str, log_path: &Path) {
    let mut rt = rt.clone();
    let app = app.to_string();
    rt.stop_container(StopContainerRequest {
        container_id: app.clone(),
        timeout: 20,
    })
    .await
    .unwrap();
    let s = status(&mut rt, &app).await;
    assert_eq!(s.state, ContainerState::ContainerExited as i32);
    assert_eq!((s.exit_code, s.reason.as_str()), (3, "Error"), "{s:?}");
    wait_log(log_path, " stdout F term").await;
    rt.stop_container(StopContainerRequest {
        container_id: app.clone(),
        timeout: 0,
    })
    .await
    .expect("stopping twice succeeds");
}

/// Remove: the records go, the image slot is detached with the last one.
async fn remove(rt: &Rt, pod: &str, ids: [&String; 3]) {
    let mut rt = rt.clone();
    let pod = pod.to_string();
    let [app, done, hog] = ids;
    for id in [&app, &done, &hog] {
        rt.remove_container(RemoveContainerRequest {
            container_id: id.to_string(),
        })
        .await
        .unwrap();
    }
    rt.remove_container(RemoveContainerRequest {
        container_id: app.clone(),
    })
    .await
    .expect("removing twice succeeds");
    assert!(list(&rt, ContainerFilter::default()).await.is_empty());
    assert_slots(&mut rt, &pod, 0, "image slot not detached").await;
}

/// Events: created → started → stopped → deleted for the app container.
async fn events_in_order(events: &mut Streaming<ContainerEventResponse>, app: &str) {
    let app = app.to_string();
    let mut kinds = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && kinds.len() < 4 {
        match tokio::time::timeout(Duration::from_secs(2), events.message()).await {
            Ok(Ok(Some(ev))) if ev.container_id == app => kinds.push(ev.container_event_type),
            Ok(Ok(Some(_))) => {}
            _ => break,
        }
    }
    assert_eq!(
        kinds,
        vec![
            ContainerEventType::ContainerCreatedEvent as i32,
            ContainerEventType::ContainerStartedEvent as i32,
            ContainerEventType::ContainerStoppedEvent as i32,
            ContainerEventType::ContainerDeletedEvent as i32
        ]
    );
}

/// A running container is killed with its pod; containers go with their pod.
async fn pod_stop_kills_containers(m: &Moatd, rt: &Rt, pod: &str) {
    let mut rt = rt.clone();
    let pod = pod.to_string();
    let last = create(&mut rt, &pod, container_config(m, "last", "sleep 1000"))
        .await
        .unwrap();
    start(&mut rt, &last).await;
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    let s = status(&mut rt, &last).await;
    assert_eq!(s.state, ContainerState::ContainerExited as i32, "{s:?}");
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    assert_code(
        rt.container_status(ContainerStatusRequest {
            container_id: last,
            verbose: false,
        })
        .await,
        Code::NotFound,
        "containers go with their pod",
    );
    assert!(vmm_pids().is_empty(), "VMMs leaked");
}

/// An RFC 3339 timestamp with nanoseconds, as CRI logs carry.
fn chrono_like(s: &str) -> bool {
    s.len() >= 20
        && s.as_bytes()[4] == b'-'
        && s.contains('T')
        && s.ends_with('Z')
        && s.contains('.')
}

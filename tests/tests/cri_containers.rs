//! CRI end-to-end for containers: gRPC to a real moatd, pods in real
//! microVMs (in the test node here), images from the registry on 127.0.0.1,
//! real CNI plugins. Covers kubelet's sequence (pull → run pod → create →
//! start → status → exec → logs → stop → remove), the container RPCs and
//! their error cases, a moatd restart with a container running, and 20 pods
//! with containers created and removed in a row without leaks.
//!
//! Needs `make artifacts` and release builds of moatd and moat-vmm.

use moat_proto::cri::*;
use moat_tests::cri::*;
use moat_tests::moatd::{tokio_runtime, vmm_pids, Moatd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::Code;

const TIMEOUT: Duration = Duration::from_secs(1200);

/// Waits until the log file holds `needle`; returns its content.
async fn wait_log(path: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let content = std::fs::read_to_string(path).unwrap_or_default();
        if content.contains(needle) {
            return content;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} never reached {}: {content:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every block slot of the pod's VM that has an image attached.
async fn attached_slots(rt: &mut Rt, pod: &str) -> usize {
    let st = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&st.info["info"]).unwrap();
    let api = PathBuf::from(info["vmDir"].as_str().unwrap()).join("api.sock");
    let mut s = std::os::unix::net::UnixStream::connect(&api).unwrap();
    use std::io::{BufRead, Write};
    s.write_all(b"{\"op\":\"state\"}\n").unwrap();
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    v["result"]["slots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| !s["path"].is_null())
        .count()
}

fn kubelet_sequence_body() {
    tokio_runtime().block_on(async {
        let m = Moatd::start("").expect("moatd");
        let mut rt = m.runtime().await.unwrap();
        let logs = m.dir.path().join("pods");
        let mut events = rt
            .get_container_events(GetEventsRequest::default())
            .await
            .unwrap()
            .into_inner();
        pull(&m).await;
        let pod = run_pod(&mut rt, &m, pod_config("web", &logs)).await;

        // Host files and directories the container mounts (kubelet's
        // configmaps, secrets, emptyDirs) are copied into the VM.
        let host = m.dir.path().join("volumes");
        std::fs::create_dir_all(host.join("config/sub")).unwrap();
        std::fs::write(host.join("config/greeting"), "hello from a configmap\n").unwrap();
        std::fs::write(host.join("config/sub/deep"), "deep\n").unwrap();
        std::fs::write(host.join("token"), "s3cret").unwrap();

        // Error cases first: nothing of them may be left behind.
        let mut c = container_config(&m, "bad", "true");
        assert_code(
            create(&mut rt, "nope", c.clone()).await,
            Code::NotFound,
            "unknown pod",
        );
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
        let mut c = container_config(&m, "bad", "true");
        c.metadata = None;
        let msg = assert_code(
            create(&mut rt, &pod, c).await,
            Code::InvalidArgument,
            "no metadata",
        );
        assert!(msg.contains("metadata"), "{msg}");
        let mut c = container_config(&m, "bad", "true");
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
        assert_eq!(
            attached_slots(&mut rt, &pod).await,
            0,
            "a failed create left an image attached"
        );

        // The main container.
        let mut c = container_config(
            &m,
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

        // Logs in the CRI format, both streams.
        let content = wait_log(&log_path, " stdout F tick").await;
        let first = content.lines().next().unwrap();
        let fields: Vec<&str> = first.splitn(4, ' ').collect();
        assert!(chrono_like(fields[0]), "{first}");
        assert!(content.contains(" stdout F out\n"), "{content}");
        assert!(content.contains(" stderr F err\n"), "{content}");

        // ExecSync: output, exit codes, the pod's view of the guest.
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

        // Stats from the guest's cgroup.
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

        // UpdateContainerResources reaches the guest's cgroup.
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

        // ReopenContainerLog: kubelet rotated the file away; a new one fills.
        let rotated = log_path.with_extension("log.1");
        std::fs::rename(&log_path, &rotated).unwrap();
        rt.reopen_container_log(ReopenContainerLogRequest {
            container_id: app.clone(),
        })
        .await
        .unwrap();
        wait_log(&log_path, " stdout F tick").await;

        // A second container from the same image shares its slot; one that
        // finishes is Completed; a memory hog is OOMKilled.
        let done = create(&mut rt, &pod, container_config(&m, "done", "echo finished"))
            .await
            .unwrap();
        assert_eq!(
            attached_slots(&mut rt, &pod).await,
            1,
            "one image, one slot"
        );
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
        let mut hog = container_config(&m, "hog", "x=0123456789; while :; do x=$x$x; done");
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

        // Filters.
        let lister = rt.clone();
        let list = |f: ContainerFilter| {
            let mut rt = lister.clone();
            async move {
                let mut ids: Vec<String> = rt
                    .list_containers(ListContainersRequest { filter: Some(f) })
                    .await
                    .unwrap()
                    .into_inner()
                    .containers
                    .into_iter()
                    .map(|c| c.id)
                    .collect();
                ids.sort();
                ids
            }
        };
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

        // StopContainer: SIGTERM, which the container traps.
        rt.stop_container(StopContainerRequest {
            container_id: app.clone(),
            timeout: 20,
        })
        .await
        .unwrap();
        let s = status(&mut rt, &app).await;
        assert_eq!(s.state, ContainerState::ContainerExited as i32);
        assert_eq!((s.exit_code, s.reason.as_str()), (3, "Error"), "{s:?}");
        wait_log(&log_path, " stdout F term").await;
        rt.stop_container(StopContainerRequest {
            container_id: app.clone(),
            timeout: 0,
        })
        .await
        .expect("stopping twice succeeds");

        // Remove: the records go, the image slot is detached with the last one.
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
        assert!(list(ContainerFilter::default()).await.is_empty());
        assert_eq!(
            attached_slots(&mut rt, &pod).await,
            0,
            "image slot not detached"
        );

        // Events: created → started → stopped → deleted for the app container.
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

        // A running container is killed with its pod.
        let last = create(&mut rt, &pod, container_config(&m, "last", "sleep 1000"))
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
    });
}

/// An RFC 3339 timestamp with nanoseconds, as CRI logs carry.
fn chrono_like(s: &str) -> bool {
    s.len() >= 20
        && s.as_bytes()[4] == b'-'
        && s.contains('T')
        && s.ends_with('Z')
        && s.contains('.')
}

moat_tests::vm_test!(
    kubelet_sequence_with_containers,
    TIMEOUT,
    kubelet_sequence_body
);

fn restart_body() {
    tokio_runtime().block_on(async {
        let mut m = Moatd::start("").expect("moatd");
        let mut rt = m.runtime().await.unwrap();
        let logs = m.dir.path().join("pods");
        pull(&m).await;
        let pod = run_pod(&mut rt, &m, pod_config("survivor", &logs)).await;
        let c = create(
            &mut rt,
            &pod,
            container_config(
                &m,
                "ticker",
                "i=0; while :; do i=$((i+1)); echo tick-$i; sleep 0.3; done",
            ),
        )
        .await
        .unwrap();
        start(&mut rt, &c).await;
        let log = logs.join("survivor/ticker/0.log");
        wait_log(&log, "tick-2\n").await;

        // moatd crashes; the VM and the container keep running, and the new
        // moatd follows the container's output again.
        m.restart(true).expect("restart");
        let mut rt = m.runtime().await.unwrap();
        let s = status(&mut rt, &c).await;
        assert_eq!(s.state, ContainerState::ContainerRunning as i32, "{s:?}");
        let before = std::fs::read_to_string(&log).unwrap().lines().count();
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::fs::read_to_string(&log).unwrap().lines().count() < before + 3 {
            assert!(
                Instant::now() < deadline,
                "the log stopped after the restart\n{}",
                m.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(exec_ok(&mut rt, &c, "echo alive").await, "alive");

        // The VM dies: the container is reported exited.
        let vmms = vmm_pids();
        assert_eq!(vmms.len(), 1);
        // SAFETY: killing the VMM process this test started through moatd.
        unsafe { libc::kill(vmms[0] as i32, libc::SIGKILL) };
        let s = wait_exited(&mut rt, &c).await;
        assert_eq!(s.reason, "Error", "{s:?}");
        rt.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .unwrap();
        assert!(rt
            .list_containers(ListContainersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .containers
            .is_empty());
    });
}

moat_tests::vm_test!(
    running_containers_survive_a_moatd_restart,
    TIMEOUT,
    restart_body
);

/// What a leak check compares: moatd's open fds, the node's mounts, and
/// moatd's run dir, netns dir, IPAM leases and the VMM processes.
#[derive(Debug, PartialEq)]
struct Footprint {
    fds: usize,
    mounts: usize,
    run_entries: Vec<String>,
    netns: Vec<String>,
    leases: Vec<String>,
    vmms: usize,
}

fn footprint(m: &Moatd) -> Footprint {
    let pid = m.pid().expect("moatd runs");
    let mut leases: Vec<String> = Moatd::entries(&m.dir.path().join("ipam/moat-e2e"))
        .into_iter()
        .filter(|e| e.starts_with("10."))
        .collect();
    leases.sort();
    Footprint {
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0),
        mounts: std::fs::read_to_string("/proc/self/mounts")
            .map(|s| s.lines().count())
            .unwrap_or(0),
        run_entries: Moatd::entries(&m.run_dir())
            .into_iter()
            .filter(|e| e != "netns")
            .collect(),
        netns: Moatd::entries(&m.run_dir().join("netns")),
        leases,
        vmms: vmm_pids().len(),
    }
}

/// One step of the loop, with a time limit that fails with moatd's log.
async fn step<T>(m: &Moatd, i: usize, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(120), fut).await {
        Ok(v) => v,
        Err(_) => panic!(
            "pod {i}: {what} did not finish in 120 s; moatd log (last lines, newest first):\n{}",
            log_tail(m)
        ),
    }
}

/// Like [`step`] for a call that must succeed: a failure panics with the
/// error and the end of moatd's log.
async fn step_ok<T, E: std::fmt::Debug>(
    m: &Moatd,
    i: usize,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> T {
    match step(m, i, what, fut).await {
        Ok(v) => v,
        Err(e) => panic!(
            "pod {i}: {what} failed: {e:?}\nmoatd log (last lines, newest first):\n{}",
            log_tail(m)
        ),
    }
}

/// The last 60 lines of moatd's log, newest first.
fn log_tail(m: &Moatd) -> String {
    let log = m.log();
    let tail: Vec<&str> = log.lines().rev().take(60).collect();
    tail.join("\n")
}

fn twenty_pods_body() {
    tokio_runtime().block_on(async {
        let m = Moatd::start("").expect("moatd");
        let mut rt = m.runtime().await.unwrap();
        let logs = m.dir.path().join("pods");
        pull(&m).await;
        // One pod first, so lazily made things (connections, caches) exist.
        let warm = run_pod(&mut rt, &m, pod_config("warm", &logs)).await;
        rt.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: warm.clone(),
        })
        .await
        .unwrap();
        rt.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: warm,
        })
        .await
        .unwrap();
        let before = footprint(&m);
        let started = Instant::now();
        for i in 0..20 {
            let t = Instant::now();
            let name = format!("p{i}");
            let pod = step(
                &m,
                i,
                "RunPodSandbox",
                run_pod(&mut rt, &m, pod_config(&name, &logs)),
            )
            .await;
            let c = step(
                &m,
                i,
                "CreateContainer",
                create(
                    &mut rt,
                    &pod,
                    container_config(&m, "c", "echo up; sleep 1000"),
                ),
            )
            .await
            .unwrap_or_else(|e| panic!("pod {i}: CreateContainer: {e:?}\n{}", m.log()));
            step(&m, i, "StartContainer", start(&mut rt, &c)).await;
            assert_eq!(
                step(&m, i, "ExecSync", exec_ok(&mut rt, &c, "hostname")).await,
                name
            );
            step_ok(
                &m,
                i,
                "StopContainer",
                rt.stop_container(StopContainerRequest {
                    container_id: c.clone(),
                    timeout: 1,
                }),
            )
            .await;
            step_ok(
                &m,
                i,
                "RemoveContainer",
                rt.remove_container(RemoveContainerRequest { container_id: c }),
            )
            .await;
            step_ok(
                &m,
                i,
                "StopPodSandbox",
                rt.stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: pod.clone(),
                }),
            )
            .await;
            step_ok(
                &m,
                i,
                "RemovePodSandbox",
                rt.remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: pod,
                }),
            )
            .await;
            println!("pod {i}: {:.1} s", t.elapsed().as_secs_f64());
        }
        println!(
            "20 pods with a container each, created and removed in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        // Give closing connections a moment before counting fds.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let after = footprint(&m);
            if after == before {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "resources leaked over 20 pods:\nbefore {before:?}\nafter  {after:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert_eq!(before.vmms, 0);
        assert!(
            before.run_entries.is_empty() && before.netns.is_empty() && before.leases.is_empty()
        );
    });
}

moat_tests::vm_test!(twenty_pods_in_a_row_leak_nothing, TIMEOUT, twenty_pods_body);

//! A pod's whole life in a microVM (and a guest that crashes while booting).

use super::*;

/// A guest that resets while booting (here: a kernel panic, as its
/// initramfs is not a cpio archive) is booted once more in a fresh VM, then
/// RunPodSandbox fails with the reason and leaves nothing behind.
pub fn boot_crash_body() {
    tokio_runtime().block_on(async {
        let junk = std::env::temp_dir().join(format!("moat-not-a-cpio-{}", std::process::id()));
        std::fs::write(&junk, vec![0x5a; 8192]).unwrap();
        let extra = handler_toml("panics", &moat_tests::artifacts::vmlinux().unwrap(), &junk);
        let m = Moatd::start(&extra).expect("moatd");
        let mut rt = m.runtime().await.unwrap();
        let before = vmm_pids();
        let e = rt
            .run_pod_sandbox(run_req(pod_config("panics", &[]), "panics"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Internal);
        assert!(
            e.message().contains("guest reset"),
            "not reported as a guest reset: {e:?}"
        );
        let log = m.log();
        assert_eq!(
            log.matches("booting a new one").count(),
            1,
            "expected exactly one more boot:\n{log}"
        );
        assert_eq!(
            log.matches("pod sandbox failed to start").count(),
            2,
            "expected two failed boots:\n{log}"
        );
        assert_failed_pod_left_nothing(&mut rt, &m, &before).await;
        let _ = std::fs::remove_file(&junk);
    });
}

pub fn pod_lifecycle_body() {
    tokio_runtime().block_on(async {
        let m = Moatd::start("").expect("moatd");
        let mut rt = m.runtime().await.unwrap();
        let mut events = rt
            .get_container_events(GetEventsRequest::default())
            .await
            .unwrap()
            .into_inner();

        let started = Instant::now();
        let id = rt
            .run_pod_sandbox(run_req(pod_config("web", &[("app", "web")]), ""))
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e:?}\n{}", m.log()))
            .into_inner()
            .pod_sandbox_id;
        println!(
            "RunPodSandbox → agent ready: {:.2} s",
            started.elapsed().as_secs_f64()
        );
        assert_eq!(id.len(), 64);
        // A caller whose deadline passes mid-way (kubelet's grpc-timeout)
        // does not stop the work: the pod comes up all the same, and the
        // retry finds the name taken by it rather than booting a second VM.
        let mut hasty = tonic::Request::new(run_req(pod_config("db", &[("app", "db")]), "microvm"));
        hasty.set_timeout(Duration::from_millis(300));
        let other = match rt.run_pod_sandbox(hasty).await {
            Ok(r) => r.into_inner().pod_sandbox_id,
            Err(e) => {
                // tonic's client gives up with Cancelled; a server that
                // saw the deadline first would say DeadlineExceeded.
                assert!(
                    matches!(e.code(), Code::Cancelled | Code::DeadlineExceeded),
                    "{e:?}"
                );
                let deadline = Instant::now() + Duration::from_secs(300);
                loop {
                    let pods = moat_tests::cri::list_pods(&mut rt).await;
                    let db = pods.iter().find(|p| {
                        p.metadata.as_ref().is_some_and(|m| m.name == "db")
                            && p.state == PodSandboxState::SandboxReady as i32
                    });
                    if let Some(db) = db {
                        break db.id.clone();
                    }
                    assert!(
                        Instant::now() < deadline,
                        "the pod never came up\n{}",
                        m.log()
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        let again = rt
            .run_pod_sandbox(run_req(pod_config("db", &[("app", "db")]), "microvm"))
            .await
            .expect_err("the same pod twice");
        assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
        assert!(again.message().contains(&other), "{again:?}");
        assert_eq!(vmm_pids().len(), 2);

        let ev = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            (ev.container_id.as_str(), ev.container_event_type),
            (
                id.as_str(),
                ContainerEventType::ContainerCreatedEvent as i32
            )
        );

        let st = rt
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner();
        let status = st.status.unwrap();
        assert_eq!(status.state, PodSandboxState::SandboxReady as i32);
        // moatd never resolves a short id: stopping or removing by a prefix
        // is an unknown pod (which CRI calls success) and leaves the pod be.
        let short = id[..3].to_string();
        rt.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: short.clone(),
        })
        .await
        .expect("stopping an unknown pod succeeds");
        rt.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: short.clone(),
        })
        .await
        .expect("removing an unknown pod succeeds");
        let e = rt
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: short,
                verbose: false,
            })
            .await
            .expect_err("a prefix is not an id");
        assert_eq!(e.code(), Code::NotFound);
        assert_eq!(vmm_pids().len(), 2, "a prefix stopped a pod");
        let ip = status.network.unwrap().ip;
        assert!(ip.starts_with("10."), "pod IP {ip:?}");
        assert!(st.info["info"].contains("vmmPid"));
        // The pod IP answers from the node's side of the bridge: bridge → veth
        // → tc redirect → TAP → virtio-net → the guest's eth0.
        let ping = std::process::Command::new("busybox")
            .args(["ping", "-c", "3", "-W", "10", &ip])
            .output()
            .expect("busybox ping");
        assert!(
            ping.status.success(),
            "pod IP {ip} does not answer: {}{}",
            String::from_utf8_lossy(&ping.stdout),
            String::from_utf8_lossy(&ping.stderr)
        );

        // Filters: by label, by state, by id prefix.
        let lister = rt.clone();
        let list = |f: PodSandboxFilter| {
            let mut rt = lister.clone();
            async move {
                rt.list_pod_sandbox(ListPodSandboxRequest { filter: Some(f) })
                    .await
                    .unwrap()
                    .into_inner()
                    .items
            }
        };
        let by_label = list(PodSandboxFilter {
            label_selector: [("app".to_string(), "db".to_string())].into(),
            ..Default::default()
        })
        .await;
        assert_eq!(
            by_label.iter().map(|p| p.id.clone()).collect::<Vec<_>>(),
            vec![other.clone()]
        );
        assert_eq!(
            list(PodSandboxFilter {
                id: id[..12].into(),
                ..Default::default()
            })
            .await
            .len(),
            1
        );

        let stats = rt
            .pod_sandbox_stats(PodSandboxStatsRequest {
                pod_sandbox_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let mem = stats
            .stats
            .unwrap()
            .linux
            .unwrap()
            .memory
            .unwrap()
            .working_set_bytes
            .unwrap()
            .value;
        assert!(mem > 1 << 20, "VM memory {mem}");
        assert_eq!(
            rt.list_pod_sandbox_stats(ListPodSandboxStatsRequest::default())
                .await
                .unwrap()
                .into_inner()
                .stats
                .len(),
            2
        );

        // Stop is idempotent and releases the VM and the network.
        rt.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .unwrap();
        rt.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .expect("stopping twice succeeds");
        let not_ready = list(PodSandboxFilter {
            state: Some(PodSandboxStateValue {
                state: PodSandboxState::SandboxNotready as i32,
            }),
            ..Default::default()
        })
        .await;
        assert_eq!(
            not_ready.iter().map(|p| p.id.clone()).collect::<Vec<_>>(),
            vec![id.clone()]
        );
        assert_eq!(vmm_pids().len(), 1);
        for pod in [&id, &other] {
            rt.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            })
            .await
            .unwrap();
        }
        rt.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .expect("removing twice succeeds");
        assert!(moat_tests::cri::list_pods(&mut rt).await.is_empty());
        assert!(vmm_pids().is_empty(), "VMMs leaked: {:?}", vmm_pids());
        assert!(
            Moatd::entries(&m.run_dir().join("netns")).is_empty(),
            "netns leaked"
        );
        let ipam = Moatd::entries(&m.dir.path().join("ipam/moat-e2e"));
        assert!(
            ipam.iter().all(|e| !e.starts_with("10.")),
            "IPs not released: {ipam:?}"
        );
    });
}

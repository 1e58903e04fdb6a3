//! moatd killed (SIGKILL, at a test-only crash point) at each step of
//! RunPodSandbox, CreateContainer and RemoveContainer, then started again:
//! nothing is left behind (VMM, netns and its TAP, IP, image slot, guest
//! container, record), and the same call then succeeds.

use super::*;
use moatd::crash_point as point;

/// IPs the CNI's host-local IPAM holds.
fn allocated_ips(m: &Moatd) -> Vec<String> {
    Moatd::entries(&m.dir.path().join("ipam/moat-e2e"))
        .into_iter()
        .filter(|e| e.parse::<std::net::IpAddr>().is_ok())
        .collect()
}

/// Containers the pod's guest holds.
async fn guest_containers(rt: &mut Rt, pod: &str) -> Vec<String> {
    let info = pod_info(rt, pod).await;
    let vsock = PathBuf::from(info["vmDir"].as_str().unwrap()).join("vsock.sock");
    let mut agent = moatd::agent::connect(vsock, moat_proto::AGENT_VSOCK_PORT)
        .await
        .unwrap();
    agent
        .list_containers(moat_proto::agent::ListContainersRequest {})
        .await
        .unwrap()
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.container_id)
        .collect()
}

/// No container of `pod` is listed, attached to a slot of its VM, or held
/// by its guest.
async fn assert_no_container_left(rt: &mut Rt, m: &Moatd, pod: &str, at: &str) {
    assert!(
        container_ids(rt, None).await.is_empty(),
        "{at}: a container is listed"
    );
    assert_eq!(
        attached_slots(rt, pod).await,
        0,
        "{at}: a slot stayed attached"
    );
    assert!(
        guest_containers(rt, pod).await.is_empty(),
        "{at}: a guest container stayed\n{}",
        m.log()
    );
}

/// The call died with moatd: a transport error, not an answer.
fn assert_cut_off(e: &tonic::Status, at: &str) {
    assert!(
        matches!(
            e.code(),
            Code::Unknown | Code::Unavailable | Code::Cancelled
        ),
        "{at}: moatd answered instead of crashing: {e:?}"
    );
}

/// Restarts moatd after the crash it was started to have; a fresh client.
async fn after_crash(m: &mut Moatd, point: &str) -> Rt {
    m.wait_crashed()
        .unwrap_or_else(|e| panic!("crash point {point}: {e}"));
    m.restart(false)
        .unwrap_or_else(|e| panic!("crash point {point}: restarting: {e}"));
    match m.runtime().await {
        Ok(rt) => rt,
        Err(e) => panic!(
            "crash point {point}: moatd after the crash: {e}; log:\n{}",
            m.log()
        ),
    }
}

/// The scenario.
pub fn body() {
    tokio_runtime().block_on(async {
        let mut m = Moatd::start("").expect("moatd");
        let logs = m.dir.path().join("pods");
        pull(&m).await;
        let vmms_before = vmm_pids();
        let daemons_before = moat_tests::moatd::virtiofsd_pids();

        // RunPodSandbox.
        for (i, at) in [
            point::RUN_POD_RECORDED,
            point::RUN_POD_NETNS,
            point::RUN_POD_CNI,
            point::RUN_POD_TAP,
            point::RUN_POD_VMM,
            point::RUN_POD_AGENT,
        ]
        .into_iter()
        .enumerate()
        {
            m.restart_crashing_at(at).unwrap();
            let mut rt = m.runtime().await.unwrap();
            let config = pod_config(&format!("crash-{i}"), &logs);
            let e = try_run_pod(&mut rt, config.clone()).await.unwrap_err();
            assert_cut_off(&e, at);
            let mut rt = after_crash(&mut m, at).await;
            let pods = list_pods(&mut rt).await;
            assert!(pods.is_empty(), "{at}: a pod is listed: {pods:?}");
            assert_eq!(vmm_pids(), vmms_before, "{at}: a VMM leaked\n{}", m.log());
            assert_eq!(
                moat_tests::moatd::virtiofsd_pids(),
                daemons_before,
                "{at}: a virtiofsd leaked\n{}",
                m.log()
            );
            assert_eq!(
                Moatd::entries(&m.run_dir())
                    .into_iter()
                    .filter(|e| e != "netns")
                    .count(),
                0,
                "{at}: a VM directory leaked"
            );
            assert!(
                Moatd::entries(&m.run_dir().join("netns")).is_empty(),
                "{at}: a netns (and its TAP) leaked"
            );
            assert!(
                allocated_ips(&m).is_empty(),
                "{at}: an IP leaked: {:?}",
                allocated_ips(&m)
            );
            let cgroups = moat_tests::moatd::vmm_cgroups();
            assert!(cgroups.is_empty(), "{at}: a VMM cgroup leaked: {cgroups:?}");
            // The same call now succeeds.
            let pod = run_pod(&mut rt, &m, config).await;
            assert_eq!(allocated_ips(&m).len(), 1, "{at}");
            remove_pod(&mut rt, &pod).await;
        }

        let mut rt = m.runtime().await.unwrap();
        let pod = run_pod(&mut rt, &m, pod_config("crash-containers", &logs)).await;
        let config = container_config(&m, "crashed", "echo started; sleep 600");

        // CreateContainer.
        for at in [
            point::CREATE_CONTAINER_ATTACHED,
            point::CREATE_CONTAINER_IN_GUEST,
        ] {
            m.restart_crashing_at(at).unwrap();
            let mut rt = m.runtime().await.unwrap();
            let e = create(&mut rt, &pod, config.clone()).await.unwrap_err();
            assert_cut_off(&e, at);
            let mut rt = after_crash(&mut m, at).await;
            assert_no_container_left(&mut rt, &m, &pod, at).await;
            // The same call now succeeds, and the container runs.
            let c = create(&mut rt, &pod, config.clone())
                .await
                .unwrap_or_else(|e| panic!("{at}: CreateContainer again: {e:?}\n{}", m.log()));
            start(&mut rt, &c).await;
            wait_log(&logs.join("crash-containers/crashed/0.log"), "started").await;
            rt.remove_container(RemoveContainerRequest {
                container_id: c.clone(),
            })
            .await
            .unwrap();
            let _ = std::fs::remove_file(logs.join("crash-containers/crashed/0.log"));
        }

        // RemoveContainer.
        for at in [
            point::REMOVE_CONTAINER_IN_GUEST,
            point::REMOVE_CONTAINER_DETACHED,
        ] {
            let c = create(&mut rt, &pod, config.clone()).await.unwrap();
            start(&mut rt, &c).await;
            m.restart_crashing_at(at).unwrap();
            let mut crashing = m.runtime().await.unwrap();
            let e = crashing
                .remove_container(RemoveContainerRequest {
                    container_id: c.clone(),
                })
                .await
                .unwrap_err();
            assert_cut_off(&e, at);
            rt = after_crash(&mut m, at).await;
            // The same call now succeeds and leaves nothing.
            rt.remove_container(RemoveContainerRequest {
                container_id: c.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("{at}: RemoveContainer again: {e:?}\n{}", m.log()));
            assert_no_container_left(&mut rt, &m, &pod, at).await;
        }
        remove_pod(&mut rt, &pod).await;
        assert_eq!(vmm_pids(), vmms_before);
        assert!(allocated_ips(&m).is_empty());
    });
}

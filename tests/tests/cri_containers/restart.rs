//! A moatd restart with a container running: the container and its log
//! survive; then the VM dies and the container is reported exited.

use super::*;

/// The scenario.
pub fn body() {
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

//! Twenty pods with a container each, created and removed in a row: no fd,
//! mount, run-dir entry, netns, IPAM lease, VMM, virtiofsd or VMM cgroup
//! may be left behind.

use super::*;

/// What a leak check compares: moatd's open fds, the node's mounts, and
/// moatd's run dir, netns dir, IPAM leases, the VMM and virtiofsd
/// processes.
#[derive(Debug, PartialEq)]
struct Footprint {
    fds: usize,
    mounts: usize,
    run_entries: Vec<String>,
    netns: Vec<String>,
    leases: Vec<String>,
    vmms: usize,
    daemons: usize,
    vmm_cgroups: Vec<String>,
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
        daemons: moat_tests::moatd::virtiofsd_pids().len(),
        vmm_cgroups: moat_tests::moatd::vmm_cgroups(),
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

/// The last 60 lines of moatd's log, newest first, then the running VMs'
/// own logs and consoles.
fn log_tail(m: &Moatd) -> String {
    let log = m.log();
    let tail: Vec<&str> = log.lines().rev().take(60).collect();
    format!("{}\n{}", tail.join("\n"), m.vm_logs())
}

/// The loop and the leak check.
pub fn body() {
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

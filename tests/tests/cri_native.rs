//! CRI end-to-end for native pods (an `oci` runtime handler): containers
//! on the host through runc, with moat-agent beside each pod as its shim.
//! A pod with its own network and one with the node's (hostNetwork, the
//! node's PID namespace): run, create, start, logs, ExecSync, stop, remove,
//! and nothing left behind (agent, mounts, cgroups, pod directory).
//!
//! Runs where pods run (the test node here: cgroup v2, runc); needs
//! `make artifacts` and release builds.

use moat_proto::cri::*;
use moat_tests::cri::*;
use moat_tests::moatd::{tokio_runtime, Moatd};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(900);

const NATIVE: &str = "[runtime_handlers.runc]\nkind = \"oci\"\n";

fn native_pod(name: &str, log_dir: &std::path::Path) -> PodSandboxConfig {
    pod_config(name, log_dir)
}

async fn run_native(rt: &mut Rt, m: &Moatd, config: PodSandboxConfig) -> String {
    rt.run_pod_sandbox(RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: "runc".into(),
    })
    .await
    .unwrap_or_else(|e| panic!("RunPodSandbox (runc): {e:?}\n{}", m.log()))
    .into_inner()
    .pod_sandbox_id
}

/// Mount points under `dir`, from this process's mountinfo.
fn mounts_under(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| std::path::Path::new(p).starts_with(dir))
        .map(str::to_string)
        .collect()
}

/// Processes whose command line names `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) {
            out.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
        }
    }
    out
}

fn body() {
    tokio_runtime().block_on(async {
        let m = Moatd::start(NATIVE).expect("moatd");
        let mut rt = m.runtime().await.unwrap();
        let logs = m.dir.path().join("pods");
        pull(&m).await;

        println!("== step: a native pod with its own network");
        let pod = run_native(&mut rt, &m, native_pod("native", &logs)).await;
        let pod_st = pod_status(&mut rt, &pod, false).await;
        let ip = pod_st
            .status
            .as_ref()
            .and_then(|s| s.network.as_ref())
            .map(|n| n.ip.clone())
            .unwrap_or_default();
        assert!(ip.starts_with("10."), "pod IP {ip:?}");
        let mut c = container_config(
            &m,
            "app",
            "echo started in $(hostname); ls /proc | grep -c '^[0-9]' > /procs.txt; exec sleep 3600",
        );
        c.envs = vec![KeyValue {
            key: "GREETING".into(),
            value: "native".into(),
        }];
        let app = run_container(&mut rt, &m, &pod, c).await;
        let log = logs.join("native/app/0.log");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let text = loop {
            let t = std::fs::read_to_string(&log).unwrap_or_default();
            if t.contains("started in native") || std::time::Instant::now() > deadline {
                break t;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(text.contains(" stdout F started in native"), "CRI log: {text:?}");
        let out = exec_ok(&mut rt, &app, "echo $GREETING; hostname; ip -4 addr show eth0").await;
        assert!(out.starts_with("native\nnative\n"), "{out}");
        assert!(out.contains(&format!("inet {ip}/")), "{out}");
        // Its own PID namespace (CRI's default): a handful of processes,
        // not the node's.
        let procs = exec_ok(
            &mut rt,
            &app,
            "for i in $(seq 50); do [ -s /procs.txt ] && break; sleep 0.1; done; cat /procs.txt",
        )
        .await;
        let n: usize = procs.trim().parse().unwrap_or(usize::MAX);
        assert!(n < 10, "the container sees {n} processes: not its own PID namespace");
        let (code, _) = exec_sh(&mut rt, &app, "exit 3").await;
        assert_eq!(code, 3);
        let st = status(&mut rt, &app).await;
        assert_eq!(st.state, ContainerState::ContainerRunning as i32);

        println!("== step: a hostNetwork pod with the node's PID namespace");
        let mut host = native_pod("node-daemon", &logs);
        host.linux = Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    pid: NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let hpod = run_native(&mut rt, &m, host).await;
        let mut d = container_config(&m, "daemon", "exec sleep 3600");
        let sc = security_context(&mut d);
        sc.namespace_options = Some(NamespaceOption {
            network: NamespaceMode::Node as i32,
            pid: NamespaceMode::Node as i32,
            ..Default::default()
        });
        let daemon = run_container(&mut rt, &m, &hpod, d).await;
        let out = exec_ok(&mut rt, &daemon, "ip -o link show; ls /proc | grep -c '^[0-9]'").await;
        assert!(
            out.contains(&m.bridge),
            "a hostNetwork container sees the node's interfaces (the CNI bridge {}): {out}",
            m.bridge
        );
        let n: usize = out.lines().last().unwrap_or("").trim().parse().unwrap_or(0);
        assert!(n > 20, "a hostPID container sees the node's processes: {n}");

        println!("== step: stop and remove; nothing is left");
        for id in [&app, &daemon] {
            rt.stop_container(StopContainerRequest {
                container_id: id.to_string(),
                timeout: 5,
            })
            .await
            .unwrap();
            let st = status(&mut rt, id).await;
            assert_eq!(st.state, ContainerState::ContainerExited as i32);
            rt.remove_container(RemoveContainerRequest {
                container_id: id.to_string(),
            })
            .await
            .unwrap();
        }
        for p in [&pod, &hpod] {
            remove_pod(&mut rt, p).await;
        }
        let run = m.run_dir();
        assert!(mounts_under(&run).is_empty(), "{:?}", mounts_under(&run));
        let agents = processes_with(&run.display().to_string());
        assert!(agents.is_empty(), "left running: {agents:?}");
        let cgroups: Vec<String> = walk("/sys/fs/cgroup")
            .into_iter()
            .filter(|p| p.contains("moat-pod-"))
            .collect();
        assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
        let left: Vec<_> = std::fs::read_dir(&run)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "netns")
            .collect();
        assert!(left.is_empty(), "pod directories left: {left:?}");
    });
}

/// Every directory under `root`.
fn walk(root: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![std::path::PathBuf::from(root)];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(e.path().display().to_string());
                stack.push(e.path());
            }
        }
    }
    out
}

moat_tests::vm_test!(native_pods_run_on_the_host_through_runc, TIMEOUT, body);

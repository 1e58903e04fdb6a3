//! CRI end-to-end for native pods (the built-in `runc` handler, kind
//! `oci`): containers on the host through Debian's runc, with moat-agent
//! beside each pod as its shim. Covers a pod without a runtime class
//! running natively (its own network: CNI IP, CRI log, ExecSync, its own
//! PID namespace, stats from its cgroup, host devices, its namespace
//! holder without privilege), exec with a terminal and
//! port-forward through python3-websocket, a moatd restart with the
//! containers running, a node-daemon-shaped pod (hostNetwork, hostPID,
//! hostIPC, privileged: a port bound on the node, a bridge made, a hostPath with
//! bidirectional propagation), a
//! microVM pod and a native pod reaching each other over the CNI network,
//! and 20 native pods created and removed with nothing left behind (agents,
//! mounts, cgroups, pod directories, IPs).
//!
//! Runs where pods run (the test node here: cgroup v2, runc); needs
//! `make artifacts` and release builds.

use moat_proto::cri::*;
use moat_tests::cri::*;
use moat_tests::moatd::{tokio_runtime, vmm_pids, Moatd};
use moat_tests::websocket::{channel, status as ws_status, ws, ws_forward};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(900);

async fn run_handler(rt: &mut Rt, m: &Moatd, config: PodSandboxConfig, handler: &str) -> String {
    rt.run_pod_sandbox(RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: handler.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("RunPodSandbox ({handler:?}): {e:?}\n{}", m.log()))
    .into_inner()
    .pod_sandbox_id
}

/// Mount points under `dir`, from this process's mountinfo.
fn mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| Path::new(p).starts_with(dir))
        .map(str::to_string)
        .collect()
}

/// The `/proc/<pid>/status` of the pod's namespace holder: the process in
/// its cgroup's `.holder` child.
fn holder_status(pod: &str) -> String {
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cg = std::fs::read_to_string(e.path().join("cgroup")).unwrap_or_default();
        if cg.contains(&format!("moat-pod-{pod}")) && cg.trim_end().ends_with("/.holder") {
            return std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        }
    }
    panic!("no holder process for pod {pod}")
}

/// The value of `key` in a `/proc/<pid>/status` text.
fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(str::trim)
        .unwrap_or("")
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

/// Waits until `path` holds `needle`; returns its content.
async fn wait_file(path: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let t = std::fs::read_to_string(path).unwrap_or_default();
        if t.contains(needle) || Instant::now() > deadline {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn step(name: &str) {
    println!("== step: {name}");
}

async fn pod_ip(rt: &mut Rt, pod: &str) -> String {
    pod_status(rt, pod, false)
        .await
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .unwrap_or_default()
}

/// StopContainer with `timeout` seconds of grace, then RemoveContainer.
async fn stop_remove(rt: &mut Rt, id: &str, timeout: i64) {
    rt.stop_container(StopContainerRequest {
        container_id: id.to_string(),
        timeout,
    })
    .await
    .unwrap();
    let st = status(rt, id).await;
    assert_eq!(st.state, ContainerState::ContainerExited as i32);
    rt.remove_container(RemoveContainerRequest {
        container_id: id.to_string(),
    })
    .await
    .unwrap();
}

/// Nothing of any native pod is left: no agent or container process, no
/// mount, no pod cgroup, no pod directory.
fn nothing_left(m: &Moatd) {
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
    let netns: Vec<_> = std::fs::read_dir(run.join("netns"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(netns.is_empty(), "netns left: {netns:?}");
}

fn body() {
    tokio_runtime().block_on(async {
        let mut m = Moatd::start_with_native_default("").expect("moatd");
        let mut rt = m.runtime().await.unwrap();
        let logs = m.dir.path().join("pods");
        pull(&m).await;

        step("a pod without a runtime class runs natively");
        let pod = run_handler(&mut rt, &m, pod_config("native", &logs), "").await;
        assert!(vmm_pids().is_empty(), "a native pod started a VMM");
        let ip = pod_ip(&mut rt, &pod).await;
        assert!(ip.starts_with("10."), "pod IP {ip:?}");
        let mut c = container_config(
            &m,
            "app",
            "echo started in $(hostname); ls /proc | grep -c '^[0-9]' > /procs.txt; \
             mkdir -p /www && echo served-natively > /www/index.html && \
             httpd -p 127.0.0.1:8080 -h /www; exec sleep 3600",
        );
        c.envs = vec![KeyValue {
            key: "GREETING".into(),
            value: "native".into(),
        }];
        // Host devices as a device plugin passes them: a node read-only,
        // and a directory of nodes.
        let devdir = m.dir.path().join("devdir");
        std::fs::create_dir_all(devdir.join("sub")).unwrap();
        // 1:12 is in no runc default rule and has no driver: an open the
        // device cgroup lets through fails with ENXIO, one it stops with
        // EPERM.
        let ro = m.dir.path().join("ro-dev");
        for (node, minor) in [devdir.join("sub/null"), ro.clone()]
            .iter()
            .zip(["3", "12"])
        {
            let made = std::process::Command::new("mknod")
                .arg(node)
                .args(["c", "1", minor])
                .status()
                .is_ok_and(|s| s.success());
            assert!(made, "mknod {}", node.display());
        }
        c.devices = vec![
            Device {
                host_path: ro.display().to_string(),
                container_path: "/dev/moat-ro".into(),
                permissions: "r".into(),
            },
            Device {
                host_path: devdir.display().to_string(),
                container_path: "/dev/moatdir".into(),
                permissions: "rwm".into(),
            },
        ];
        let app = run_container(&mut rt, &m, &pod, c).await;
        let log = logs.join("native/app/0.log");
        let text = wait_file(&log, "started in native").await;
        assert!(
            text.contains(" stdout F started in native"),
            "CRI log: {text:?}"
        );
        let out = exec_ok(
            &mut rt,
            &app,
            "echo $GREETING; hostname; ip -4 addr show eth0",
        )
        .await;
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
        assert!(
            n < 10,
            "the container sees {n} processes: not its own PID namespace"
        );
        let (code, _) = exec_sh(&mut rt, &app, "exit 3").await;
        assert_eq!(code, 3);
        let out = exec_ok(
            &mut rt,
            &app,
            "(: < /dev/moat-ro) 2>&1 | grep -q 'No such device' && echo read-allowed; \
             (: > /dev/moat-ro) 2>&1 | grep -q 'not permitted' && echo write-refused; \
             echo x > /dev/moatdir/sub/null && echo dir-ok; \
             mknod /tmp/disk b 8 0 && (: < /tmp/disk) 2>&1 | grep -q 'not permitted' && \
             echo other-devices-refused",
        )
        .await;
        for want in [
            "read-allowed",
            "write-refused",
            "dir-ok",
            "other-devices-refused",
        ] {
            assert!(out.lines().any(|l| l == want), "{want}: {out}");
        }
        // The holder of its namespaces keeps nothing it does not need.
        let holder = holder_status(&pod);
        for (key, want) in [
            ("Uid", "65535\t65535\t65535\t65535"),
            ("CapEff", "0000000000000000"),
            ("CapPrm", "0000000000000000"),
            ("CapBnd", "0000000000000000"),
            ("NoNewPrivs", "1"),
            ("Seccomp", "2"),
        ] {
            assert_eq!(status_field(&holder, key), want, "{key}: {holder}");
        }
        let stats = rt
            .pod_sandbox_stats(PodSandboxStatsRequest {
                pod_sandbox_id: pod.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let mem = stats
            .stats
            .and_then(|s| s.linux)
            .and_then(|l| l.memory)
            .and_then(|m| m.working_set_bytes)
            .map(|v| v.value)
            .unwrap_or(0);
        assert!(mem > 0, "the pod's cgroup shows no memory");

        step("exec with a terminal and port-forward (python3-websocket)");
        let url = rt
            .exec(ExecRequest {
                container_id: app.clone(),
                cmd: vec!["sh".into(), "-c".into(), "read x; stty size; tty".into()],
                tty: true,
                stdin: true,
                stdout: true,
                stderr: false,
            })
            .await
            .unwrap()
            .into_inner()
            .url;
        let r = ws(
            &url,
            "v5.channel.k8s.io",
            json!([
                ["send", 4, "{\"Width\":100,\"Height\":30}"],
                ["sleep", 0.5],
                ["send", 0, "go\r"]
            ]),
        );
        assert!(channel(&r, 1).contains("30 100"), "{r}");
        assert!(channel(&r, 1).contains("/dev/pts/"), "{r}");
        assert_eq!(ws_status(&r)["status"], "Success");
        let url = rt
            .port_forward(PortForwardRequest {
                pod_sandbox_id: pod.clone(),
                port: vec![8080],
            })
            .await
            .unwrap()
            .into_inner()
            .url;
        let r = ws_forward(
            &url,
            "v4.channel.k8s.io",
            "GET /index.html HTTP/1.0\r\n\r\n",
        );
        assert!(channel(&r, 0).contains("served-natively"), "{r}");

        step("a container with a terminal (runc's console socket)");
        let mut t = container_config(&m, "term", "tty; stty size; exec sleep 3600");
        t.tty = true;
        t.stdin = true;
        let term = run_container(&mut rt, &m, &pod, t).await;
        let text = wait_file(&logs.join("native/term/0.log"), "/dev/pts/").await;
        assert!(text.contains(" stdout F /dev/pts/0"), "{text:?}");
        stop_remove(&mut rt, &term, 5).await;

        step("moatd restarts; the native containers keep running");
        let agent_pid = pod_info(&mut rt, &pod).await["vmmPid"].as_u64();
        m.restart(false).expect("restart");
        let mut rt = m.runtime().await.unwrap();
        assert_eq!(pod_info(&mut rt, &pod).await["vmmPid"].as_u64(), agent_pid);
        let st = status(&mut rt, &app).await;
        assert_eq!(st.state, ContainerState::ContainerRunning as i32);
        let out = exec_ok(&mut rt, &app, "echo after restart; echo to the log").await;
        assert_eq!(out, "after restart\nto the log");

        step("a node-daemon-shaped pod: hostNetwork, hostPID, privileged, shared hostPath");
        let shared = m.dir.path().join("run-shared");
        std::fs::create_dir_all(&shared).unwrap();
        let sh = |cmd: String| {
            let ok = std::process::Command::new("sh")
                .args(["-c", &cmd])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "{cmd}");
        };
        sh(format!(
            "mount --bind {0} {0} && mount --make-shared {0}",
            shared.display()
        ));
        let mut host = pod_config("node-daemon", &logs);
        let node_ns = NamespaceOption {
            network: NamespaceMode::Node as i32,
            pid: NamespaceMode::Node as i32,
            ipc: NamespaceMode::Node as i32,
            ..Default::default()
        };
        host.linux = Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(node_ns.clone()),
                privileged: true,
                ..Default::default()
            }),
            ..Default::default()
        });
        let hpod = run_handler(&mut rt, &m, host, "runc").await;
        let mut d = container_config(&m, "daemon", "exec sleep 3600");
        d.mounts = vec![Mount {
            container_path: "/host-run".into(),
            host_path: shared.display().to_string(),
            propagation: MountPropagation::PropagationBidirectional as i32,
            ..Default::default()
        }];
        let sc = security_context(&mut d);
        sc.namespace_options = Some(node_ns);
        sc.privileged = true;
        let daemon = run_container(&mut rt, &m, &hpod, d).await;
        let out = exec_ok(
            &mut rt,
            &daemon,
            "ip -o link show; ls /proc | grep -c '^[0-9]'; readlink /proc/self/ns/ipc; \
             ip link add moatnbr0 type bridge && ip link del moatnbr0 && echo bridge-made; \
             mkdir -p /host-run/sub && mount -t tmpfs daemon-tmpfs /host-run/sub && echo mounted",
        )
        .await;
        assert!(
            out.contains(&m.bridge),
            "a hostNetwork container sees the node's interfaces (the CNI bridge {}): {out}",
            m.bridge
        );
        let n: usize = out
            .lines()
            .find(|l| l.trim().parse::<usize>().is_ok())
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0);
        assert!(
            n > 20,
            "a hostPID container sees the node's processes: {n}\n{out}"
        );
        assert!(
            out.contains("bridge-made") && out.contains("mounted"),
            "{out}"
        );
        let node_ipc = std::fs::read_link("/proc/self/ns/ipc").unwrap();
        let node_ipc = node_ipc.display().to_string();
        assert!(
            out.contains(&node_ipc),
            "a hostIPC container is in the node's IPC namespace {node_ipc}: {out}"
        );
        let own = exec_ok(&mut rt, &app, "readlink /proc/self/ns/ipc").await;
        assert_ne!(own, node_ipc, "a pod without hostIPC has its own");
        // It binds a port on the node: reachable from the node's own
        // network namespace.
        exec_ok(
            &mut rt,
            &daemon,
            "mkdir -p /hp && echo host-port-ok > /hp/index.html && httpd -p 18080 -h /hp",
        )
        .await;
        let body = {
            use std::io::{Read, Write};
            let mut got = String::new();
            for _ in 0..50 {
                if let Ok(mut s) = std::net::TcpStream::connect("127.0.0.1:18080") {
                    let _ = s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n");
                    let _ = s.read_to_string(&mut got);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            got
        };
        assert!(
            body.contains("host-port-ok"),
            "the node's port 18080: {body:?}"
        );
        // The container's mount reached the host (bidirectional).
        let sub = shared.join("sub").display().to_string();
        assert!(
            mounts_under(&shared).contains(&sub),
            "the container's mount did not reach the host: {:?}",
            mounts_under(&shared)
        );
        sh(format!("umount {sub}"));

        step("a microVM pod and a native pod reach each other over CNI");
        let vpod = run_handler(&mut rt, &m, pod_config("vm", &logs), "microvm").await;
        let vm_ip = pod_ip(&mut rt, &vpod).await;
        let vc = run_container(
            &mut rt,
            &m,
            &vpod,
            container_config(&m, "vmapp", "exec sleep 3600"),
        )
        .await;
        let out = exec_ok(
            &mut rt,
            &vc,
            &format!("ping -c 1 -W 5 {ip} && echo vm-to-native"),
        )
        .await;
        assert!(out.contains("vm-to-native"), "{out}");
        let out = exec_ok(
            &mut rt,
            &app,
            &format!("ping -c 1 -W 5 {vm_ip} && echo native-to-vm"),
        )
        .await;
        assert!(out.contains("native-to-vm"), "{out}");
        stop_remove(&mut rt, &vc, 5).await;
        remove_pod(&mut rt, &vpod).await;

        step("stop and remove; nothing is left");
        for id in [&app, &daemon] {
            stop_remove(&mut rt, id, 5).await;
        }
        for p in [&pod, &hpod] {
            remove_pod(&mut rt, p).await;
        }
        sh(format!("umount {}", shared.display()));
        nothing_left(&m);

        step("20 native pods created and removed");
        let started = Instant::now();
        let mut ips = std::collections::HashSet::new();
        for i in 0..20 {
            let name = format!("many-{i}");
            let p = run_handler(&mut rt, &m, pod_config(&name, &logs), "").await;
            ips.insert(pod_ip(&mut rt, &p).await);
            let c = run_container(
                &mut rt,
                &m,
                &p,
                container_config(&m, "c", "exec sleep 3600"),
            )
            .await;
            stop_remove(&mut rt, &c, 0).await;
            remove_pod(&mut rt, &p).await;
        }
        println!("20 native pods in {:?}", started.elapsed());
        nothing_left(&m);
        // host-local's leases: every IP went back.
        let leases: Vec<String> = walk(&m.dir.path().join("ipam").display().to_string());
        let held: Vec<_> = std::fs::read_dir(m.dir.path().join("ipam"))
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|net| {
                std::fs::read_dir(net.path())
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("10."))
            .collect();
        assert!(held.is_empty(), "IPs still leased: {held:?} ({leases:?})");
    });
}

moat_tests::vm_test!(native_pods_run_on_the_host_through_runc, TIMEOUT, body);

//! CRI fields as kubelet and containerd define them, end to end against a
//! real moatd with pods in real microVMs (in the test node here): the pod
//! hostname from a long pod name, seccomp (unset, unconfined, the
//! deprecated path strings, RuntimeDefault, Localhost profiles,
//! privileged), pod sysctls in the namespaces they belong to, cAdvisor-style
//! metrics through ListPodSandboxMetrics, a privileged container managing
//! its pod's network (bridge, veth, tun, vxlan, iptables REDIRECT), RunAsGroup
//! without RunAsUser, StopPodSandbox idempotence, StopContainer of a
//! process that handles SIGTERM, and hostPort through the CNI `portmap`
//! plugin.
//!
//! Needs `make artifacts` and release builds of moatd and moat-vmm.

use moat_proto::cri::security_profile::ProfileType;
use moat_proto::cri::*;
use moat_tests::cri::*;
use moat_tests::moatd::{tokio_runtime, Moatd};
use std::time::{Duration, Instant};
use tonic::Code;

const TIMEOUT: Duration = Duration::from_secs(1200);

fn profile(t: ProfileType, localhost_ref: &str) -> Option<SecurityProfile> {
    Some(SecurityProfile {
        profile_type: t as i32,
        localhost_ref: localhost_ref.into(),
    })
}

/// A container that sleeps, with its security context shaped by `f`.
fn sleeper(
    m: &Moatd,
    name: &str,
    f: impl FnOnce(&mut LinuxContainerSecurityContext),
) -> ContainerConfig {
    let mut c = container_config(m, name, "sleep 3600");
    f(security_context(&mut c));
    c
}

/// The container's metrics by name, from ListPodSandboxMetrics, with their
/// labels checked against the descriptors.
async fn metrics_of(
    rt: &mut Rt,
    pod: &str,
    container: &str,
) -> std::collections::HashMap<String, u64> {
    let descriptors = rt
        .list_metric_descriptors(ListMetricDescriptorsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .descriptors;
    let pods = rt
        .list_pod_sandbox_metrics(ListPodSandboxMetricsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .pod_metrics;
    let p = pods
        .iter()
        .find(|p| p.pod_sandbox_id == pod)
        .unwrap_or_else(|| panic!("no metrics for pod {pod}: {pods:?}"));
    let c = p
        .container_metrics
        .iter()
        .find(|c| c.container_id == container)
        .unwrap_or_else(|| panic!("no metrics for container {container}: {p:?}"));
    c.metrics
        .iter()
        .map(|m| {
            let d = descriptors
                .iter()
                .find(|d| d.name == m.name)
                .unwrap_or_else(|| panic!("{} has no descriptor", m.name));
            assert_eq!(d.label_keys.len(), m.label_values.len(), "{m:?}");
            (m.name.clone(), m.value.map(|v| v.value).unwrap_or(0))
        })
        .collect()
}

async fn seccomp_mode(rt: &mut Rt, id: &str) -> String {
    exec_ok(rt, id, "grep '^Seccomp:' /proc/self/status | tr -d '\\t '").await
}

fn fidelity_body() {
    tokio_runtime().block_on(async {
        let m = Moatd::start("guest_privileged = true\n").expect("moatd");
        let mut rt = m.runtime().await.unwrap();
        pull(&m).await;
        let logs = m.dir.path().join("pods");

        // A pod with no hostname and a name over 63 characters gets the
        // name cut as kubelet cuts it; its sysctls land in the pod's IPC
        // namespace and the guest's network namespace.
        let long = format!("{}-tail-{}", "p".repeat(62), "x".repeat(30));
        let mut pod = pod_config(&long, &logs);
        pod.hostname = String::new();
        let linux = pod.linux.get_or_insert_with(Default::default);
        for (k, v) in [
            ("kernel.shm_rmid_forced", "1"),
            ("fs.mqueue.msg_max", "37"),
            ("net.ipv4.ip_unprivileged_port_start", "100"),
        ] {
            linux.sysctls.insert(k.into(), v.into());
        }
        // Not namespaced: refused before any VM boots.
        let mut bad = pod.clone();
        if let Some(l) = bad.linux.as_mut() {
            l.sysctls.insert("kernel.pid_max".into(), "4096".into());
        }
        let msg = assert_code(
            try_run_pod(&mut rt, bad).await,
            Code::InvalidArgument,
            "non-namespaced sysctl",
        );
        assert!(msg.contains("kernel.pid_max"), "{msg}");
        // RunAsGroup without RunAsUser is refused for the pod...
        let mut bad = pod.clone();
        if let Some(l) = bad.linux.as_mut() {
            l.security_context = Some(LinuxSandboxSecurityContext {
                run_as_group: Some(Int64Value { value: 10 }),
                ..Default::default()
            });
        }
        let msg = assert_code(
            try_run_pod(&mut rt, bad).await,
            Code::InvalidArgument,
            "sandbox run_as_group alone",
        );
        assert!(msg.contains("run_as_group"), "{msg}");

        let pod_id = run_pod(&mut rt, &m, pod).await;
        // ...and for a container.
        let mut c = container_config(&m, "group-only", "true");
        security_context(&mut c).run_as_group = Some(Int64Value { value: 10 });
        let msg = assert_code(
            create(&mut rt, &pod_id, c).await,
            Code::InvalidArgument,
            "container run_as_group alone",
        );
        assert!(msg.contains("run_as_group"), "{msg}");
        // A log path that leaves the pod's log directory is refused, and
        // nothing is written where it points.
        let escape = m.dir.path().join("escaped.log");
        for log_path in [
            format!(
                "../{}",
                "../".repeat(8) + escape.to_string_lossy().trim_start_matches('/')
            ),
            escape.to_string_lossy().into_owned(),
        ] {
            let mut c = container_config(&m, "log-escape", "true");
            c.log_path = log_path.clone();
            let msg = assert_code(
                create(&mut rt, &pod_id, c).await,
                Code::InvalidArgument,
                "log_path outside the pod's log directory",
            );
            assert!(msg.contains("log_path"), "{log_path}: {msg}");
        }
        assert!(
            !escape.exists(),
            "a log was written to {}",
            escape.display()
        );

        // Two containers see the pod's hostname and sysctls.
        let a = run_container(&mut rt, &m, &pod_id, sleeper(&m, "a", |_| {})).await;
        let b = run_container(&mut rt, &m, &pod_id, sleeper(&m, "b", |_| {})).await;
        for id in [&a, &b] {
            assert_eq!(exec_ok(&mut rt, id, "hostname").await, "p".repeat(62));
            assert_eq!(
                exec_ok(
                    &mut rt,
                    id,
                    "cat /proc/sys/kernel/shm_rmid_forced /proc/sys/fs/mqueue/msg_max \
                     /proc/sys/net/ipv4/ip_unprivileged_port_start | tr '\\n' ' '"
                )
                .await,
                "1 37 100"
            );
        }

        // cAdvisor-style metrics move when a container burns CPU and memory.
        let before = metrics_of(&mut rt, &pod_id, &b).await;
        exec_sh(&mut rt, &b, "timeout 4 sh -c 'while :; do :; done'; true").await;
        exec_ok(
            &mut rt,
            &b,
            "dd if=/dev/zero of=/dev/shm/fill bs=1M count=24 2>/dev/null",
        )
        .await;
        let after = metrics_of(&mut rt, &pod_id, &b).await;
        let cpu = "container_cpu_usage_seconds_total";
        assert!(after[cpu] > before[cpu], "{cpu}: {before:?} -> {after:?}");
        let mem = "container_memory_usage_bytes";
        assert!(
            after[mem] >= before[mem] + (16 << 20),
            "{mem}: {before:?} -> {after:?}"
        );
        assert!(after["container_processes"] >= 1, "{after:?}");
        let pod_net = rt
            .list_pod_sandbox_metrics(ListPodSandboxMetricsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .pod_metrics
            .into_iter()
            .find(|p| p.pod_sandbox_id == pod_id)
            .expect("the pod's metrics")
            .metrics;
        assert!(
            pod_net
                .iter()
                .any(|m| m.name == "container_network_transmit_bytes_total"
                    && m.label_values.first().map(String::as_str) == Some("POD")),
            "{pod_net:?}"
        );

        // seccomp: unset and unconfined (both spellings) mean no filter; a
        // user namespace can then be made without any capability.
        let unset = a.clone();
        let unconfined = run_container(
            &mut rt,
            &m,
            &pod_id,
            sleeper(&m, "unconfined", |s| {
                s.seccomp = profile(ProfileType::Unconfined, "")
            }),
        )
        .await;
        #[allow(deprecated)]
        let legacy_unconfined = run_container(
            &mut rt,
            &m,
            &pod_id,
            sleeper(&m, "legacy-unconfined", |s| {
                s.seccomp_profile_path = "unconfined".into()
            }),
        )
        .await;
        for id in [&unset, &unconfined, &legacy_unconfined] {
            assert_eq!(seccomp_mode(&mut rt, id).await, "Seccomp:0", "{id}");
            exec_ok(&mut rt, id, "unshare -U true").await;
        }
        // RuntimeDefault (both spellings): filtered, no namespaces, no mount.
        let default = run_container(
            &mut rt,
            &m,
            &pod_id,
            sleeper(&m, "default", |s| {
                s.seccomp = profile(ProfileType::RuntimeDefault, "")
            }),
        )
        .await;
        #[allow(deprecated)]
        let legacy_default = run_container(
            &mut rt,
            &m,
            &pod_id,
            sleeper(&m, "legacy-default", |s| {
                s.seccomp_profile_path = "runtime/default".into()
            }),
        )
        .await;
        for id in [&default, &legacy_default] {
            assert_eq!(seccomp_mode(&mut rt, id).await, "Seccomp:2", "{id}");
            let (code, out) = exec_sh(&mut rt, id, "unshare -U true").await;
            assert_ne!(code, 0, "unshare under RuntimeDefault: {out}");
            assert!(out.contains("not permitted"), "{out}");
            let (code, out) =
                exec_sh(&mut rt, id, "mkdir -p /mnt/t && mount -t tmpfs t /mnt/t").await;
            assert_ne!(code, 0, "mount under RuntimeDefault: {out}");
            // Ordinary work still runs.
            exec_ok(
                &mut rt,
                id,
                "echo ok > /tmp/f && chmod 600 /tmp/f && ls /proc >/dev/null",
            )
            .await;
        }
        // A privileged container ignores seccomp.
        let privileged = run_container(
            &mut rt,
            &m,
            &pod_id,
            sleeper(&m, "privileged", |s| {
                s.privileged = true;
                s.seccomp = profile(ProfileType::RuntimeDefault, "");
            }),
        )
        .await;
        assert_eq!(seccomp_mode(&mut rt, &privileged).await, "Seccomp:0");

        // A Localhost profile (Docker's JSON format) is enforced as written:
        // with CAP_SYS_ADMIN, only the profile can refuse sethostname.
        let path = m.dir.path().join("deny-hostname-chmod.json");
        std::fs::write(
            &path,
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [{"names": ["sethostname", "chmod", "fchmodat", "fchmodat2"],
                              "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                              "comment": "test profile"}]}"#,
        )
        .unwrap();
        let admin = |s: &mut LinuxContainerSecurityContext| {
            s.capabilities = Some(Capability {
                add_capabilities: vec!["SYS_ADMIN".into()],
                ..Default::default()
            });
        };
        let localhost = run_container(
            &mut rt,
            &m,
            &pod_id,
            sleeper(&m, "localhost", |s| {
                admin(s);
                s.seccomp = profile(ProfileType::Localhost, &path.display().to_string());
            }),
        )
        .await;
        #[allow(deprecated)]
        let legacy_localhost = run_container(
            &mut rt,
            &m,
            &pod_id,
            sleeper(&m, "legacy-localhost", |s| {
                admin(s);
                s.seccomp_profile_path = format!("localhost/{}", path.display());
            }),
        )
        .await;
        let control = run_container(&mut rt, &m, &pod_id, sleeper(&m, "control", admin)).await;
        exec_ok(
            &mut rt,
            &control,
            "hostname $(hostname) && touch /tmp/f && chmod 600 /tmp/f",
        )
        .await;
        for id in [&localhost, &legacy_localhost] {
            assert_eq!(seccomp_mode(&mut rt, id).await, "Seccomp:2", "{id}");
            let (code, out) = exec_sh(&mut rt, id, "hostname $(hostname)").await;
            assert_ne!(code, 0, "sethostname under the profile: {out}");
            let (code, out) = exec_sh(&mut rt, id, "touch /tmp/f && chmod 600 /tmp/f").await;
            assert_ne!(code, 0, "chmod under the profile: {out}");
            assert!(out.contains("not permitted"), "{out}");
            // Everything else is allowed.
            exec_ok(&mut rt, id, "mkdir -p /tmp/d && unshare -U true").await;
        }
        // Bad profile names are refused with the field named.
        for (what, f) in [
            (
                "relative localhost_ref",
                Box::new(|s: &mut LinuxContainerSecurityContext| {
                    s.seccomp = profile(ProfileType::Localhost, "profiles/x.json")
                }) as Box<dyn Fn(&mut LinuxContainerSecurityContext)>,
            ),
            (
                "missing profile file",
                Box::new(|s: &mut LinuxContainerSecurityContext| {
                    s.seccomp = profile(ProfileType::Localhost, "/nonexistent/x.json")
                }),
            ),
            (
                "unknown legacy profile",
                #[allow(deprecated)]
                Box::new(|s: &mut LinuxContainerSecurityContext| {
                    s.seccomp_profile_path = "docker/unconfined".into()
                }),
            ),
        ] {
            let msg = assert_code(
                create(&mut rt, &pod_id, sleeper(&m, "bad-seccomp", f)).await,
                Code::InvalidArgument,
                what,
            );
            assert!(msg.contains("seccomp"), "{what}: {msg}");
        }

        // A privileged container manages the pod's own network as service
        // meshes, CNI-in-pod and VPN sidecars do: a bridge, a veth pair, a
        // tun device, and an iptables NAT REDIRECT that really redirects
        // (nf_tables and legacy back ends), with the matches meshes use.
        pull_image(&m, &m.registry.netadmin()).await;
        let mut net = container_config(
            &m,
            "netadmin",
            "mkdir -p /www && echo redirected > /www/index.html && exec httpd -f -p 8080 -h /www",
        );
        net.image = Some(ImageSpec {
            image: m.registry.netadmin(),
            ..Default::default()
        });
        security_context(&mut net).privileged = true;
        let net = run_container(&mut rt, &m, &pod_id, net).await;
        exec_ok(
            &mut rt,
            &net,
            "ip=/sbin/ip; ls -l $ip && brctl addbr br-test && $ip link set br-test up \
             && $ip link add v-a type veth peer name v-b && $ip link set v-a master br-test \
             && $ip tuntap add mode tun tun-test \
             && $ip link add vx-test type vxlan id 42 dstport 4789 dev eth0 \
             && $ip -d link show vx-test | grep -q 'vxlan id 42' \
             && $ip -d link show tun-test | grep -q tun \
             && $ip -d link show v-b | grep -q veth",
        )
        .await;
        for (iptables, port) in [("/sbin/iptables", 8081), ("/sbin/iptables-legacy", 8082)] {
            exec_ok(
                &mut rt,
                &net,
                &format!(
                    "{iptables} -t nat -A OUTPUT -p tcp -d 127.0.0.1 --dport {port} \
                       -m owner ! --uid-owner 1337 -m comment --comment mesh \
                       -j REDIRECT --to-ports 8080 \
                     && {iptables} -t mangle -A PREROUTING -p tcp -m socket -j MARK --set-mark 1 \
                     && {iptables} -t mangle -A PREROUTING -p tcp --dport 9 -j TPROXY \
                       --on-port 15006 --tproxy-mark 0x1/0x1 \
                     && {iptables} -t nat -A POSTROUTING -m conntrack --ctstate DNAT -j MASQUERADE"
                ),
            )
            .await;
            let body = exec_ok(
                &mut rt,
                &net,
                // nc, not wget: the static busybox's resolver crashes beside
                // the image's shared glibc.
                &format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc 127.0.0.1 {port}"),
            )
            .await;
            assert!(body.ends_with("redirected"), "{iptables} REDIRECT: {body}");
        }

        // StopContainer: a process that handles SIGTERM ends at once, not
        // after the grace period.
        // Kubelet's namespace options (its own PID namespace, where top is
        // PID 1), with and without a terminal and stdin.
        for (name, tty) in [("top", false), ("top-tty", true)] {
            let mut top = container_config(&m, name, "");
            top.command = vec!["top".into()];
            top.tty = tty;
            top.stdin = tty;
            security_context(&mut top).namespace_options = Some(NamespaceOption {
                network: NamespaceMode::Pod as i32,
                pid: NamespaceMode::Container as i32,
                ipc: NamespaceMode::Pod as i32,
                ..Default::default()
            });
            let top = run_container(&mut rt, &m, &pod_id, top).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let started = Instant::now();
            // The second with the largest grace period a client can send
            // (`crictl stop -t 9223372036854775807`): no overflow, same stop.
            let timeout = if tty { i64::MAX } else { 60 };
            rt.stop_container(StopContainerRequest {
                container_id: top.clone(),
                timeout,
            })
            .await
            .unwrap_or_else(|e| panic!("StopContainer {name}: {e:?}\n{}", m.log()));
            let took = started.elapsed();
            let st = status(&mut rt, &top).await;
            assert_eq!(st.state, ContainerState::ContainerExited as i32);
            assert!(
                took < Duration::from_secs(10),
                "stopping {name} took {took:?} (exit {})",
                st.exit_code
            );
            assert_ne!(st.exit_code, 137, "{name} was killed, not stopped: {st:?}");
            println!(
                "StopContainer({name}, {timeout} s): {took:?}, exit {}",
                st.exit_code
            );
        }

        // StopPodSandbox is idempotent, also once the sandbox is removed.
        for _ in 0..2 {
            rt.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod_id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("StopPodSandbox: {e:?}\n{}", m.log()));
        }
        rt.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .unwrap();
        rt.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("StopPodSandbox after removal: {e:?}"));
    });
}

moat_tests::vm_test!(
    cri_fields_as_kubelet_and_containerd_define_them,
    TIMEOUT,
    fidelity_body
);

/// hostPort 12000 → containerPort 80 through the `portmap` plugin: the
/// pod's web server answers on the node's loopback and on its bridge IP.
fn host_port_body() {
    tokio_runtime().block_on(async {
        let portmap = serde_json::json!({
            "type": "portmap", "capabilities": {"portMappings": true}, "snat": true
        });
        let m = Moatd::start_with("", &[portmap]).expect("moatd");
        let mut rt = m.runtime().await.unwrap();
        pull(&m).await;
        let mut pod = pod_config("web", &m.dir.path().join("pods"));
        pod.port_mappings = vec![PortMapping {
            protocol: Protocol::Tcp as i32,
            container_port: 80,
            host_port: 12000,
            host_ip: String::new(),
        }];
        let pod_id = run_pod(&mut rt, &m, pod).await;
        let web = container_config(
            &m,
            "web",
            "mkdir -p /www && echo hello-from-the-pod > /www/index.html && exec httpd -f -p 80 -h /www",
        );
        run_container(&mut rt, &m, &pod_id, web).await;
        let status = rt
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: pod_id.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        let pod_ip = status.network.unwrap().ip;
        // The bridge's own address is the node's address on that network.
        let gateway = {
            let mut parts: Vec<&str> = pod_ip.split('.').collect();
            parts[3] = "1";
            parts.join(".")
        };
        for host in ["127.0.0.1", gateway.as_str()] {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let out = std::process::Command::new("curl")
                    .args(["-sS", "-m", "5"])
                    .arg(format!("http://{host}:12000/index.html"))
                    .output()
                    .unwrap();
                let body = String::from_utf8_lossy(&out.stdout).to_string();
                if body.contains("hello-from-the-pod") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{host}:12000 never answered: {body}{}\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    m.log()
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        rt.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .unwrap();
        rt.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod_id,
        })
        .await
        .unwrap();
        // The DNAT rules went with the pod.
        let rules = std::process::Command::new("iptables-save")
            .args(["-t", "nat"])
            .output()
            .unwrap();
        let rules = String::from_utf8_lossy(&rules.stdout);
        assert!(!rules.contains("12000"), "portmap rules left: {rules}");
    });
}

moat_tests::vm_test!(
    host_port_reaches_the_pod_through_portmap,
    TIMEOUT,
    host_port_body
);

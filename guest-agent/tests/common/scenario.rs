//! The agent scenario both integration tests drive (on this machine as root,
//! and inside a microVM): a sandbox, containers with identity, isolation and
//! limits, exec, a TTY, stdin, big output, updates and signals, OOM, bad
//! requests and removal, one named step each.

// Test helpers: a failed step fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

/// Where the scenario's containers get their root filesystems.
pub struct Images {
    /// The image device for c1, c3 and the bad requests.
    pub image: Id,
    /// The rootfs of c2.
    pub c2: Id,
    /// The agent runs on this machine: check its mounts and cgroups too.
    pub local: bool,
}

/// The whole agent scenario, step by step (each step prints its name, so a
/// hang or failure says where it was).
pub async fn drive(mut c: AgentClient<Channel>, images: Images) {
    let c = &mut c;
    println!("== step: sandbox");
    let (sb, cm_dir) = step_sandbox(c).await;
    println!("== step: c1 (identity, isolation, limits)");
    step_c1(c, &images, &sb, &cm_dir).await;
    println!("== step: c2 and an exec");
    step_c2_exec(c, &images).await;
    println!("== step: tty");
    step_tty(c).await;
    println!("== step: stdin pipe");
    step_stdin_pipe(c).await;
    println!("== step: 10 MiB output");
    step_big_output(c).await;
    println!("== step: update+signal");
    step_update_signal(c).await;
    println!("== step: oom");
    step_oom(c, &images).await;
    println!("== step: bad requests");
    step_bad_requests(c, &images).await;
    println!("== step: removal");
    step_removal(c, &images).await;
}

/// The OCI Process of an exec as nobody, `terminal` or not.
fn exec_json(args: Vec<&str>, terminal: bool) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "args": args, "env": ["PATH=/bin", "TERM=dumb"], "cwd": "/", "terminal": terminal,
        "user": {"uid": 65534, "gid": 65534}
    }))
    .unwrap()
}

/// The pod sandbox: hostname, DNS, shared IPC namespace, a copied file.
/// Returns the sandbox's files and namespaces and the copied file's
/// directory.
async fn step_sandbox(c: &mut AgentClient<Channel>) -> (CreateSandboxResponse, String) {
    let ping = c.ping(PingRequest {}).await.unwrap().into_inner();
    assert!(!ping.agent_version.is_empty());

    // Sandbox: hostname, DNS, shared IPC namespace, a file for the pod.
    let sb = c
        .create_sandbox(CreateSandboxRequest {
            sandbox_id: "pod1".into(),
            hostname: "pod-one".into(),
            dns: Some(DnsConfig {
                servers: vec!["10.96.0.10".into()],
                searches: vec!["ns.svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            }),
            hosts: vec![],
            sysctls: Default::default(),
            share_ipc: true,
            share_pid: false,
            share_uts: false,
        })
        .await
        .expect("create sandbox")
        .into_inner();
    let e = c
        .create_sandbox(CreateSandboxRequest {
            sandbox_id: "pod2".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
    // The pod's own files (hostname, hosts, resolv.conf), bound read-only
    // into c1 as a directory volume would be.
    let cm_dir = Path::new(&sb.hostname_path)
        .parent()
        .expect("the sandbox files' directory")
        .display()
        .to_string();
    (sb, cm_dir)
}

/// c1 checks its identity, isolation and limits from inside and exits.
async fn step_c1(
    c: &mut AgentClient<Channel>,
    images: &Images,
    sb: &CreateSandboxResponse,
    cm_dir: &str,
) {
    let ipc_ns = sb.namespace_paths.get("ipc").expect("ipc ns path").clone();
    // c1: checks identity, isolation, limits from inside; runs to exit.
    let script = "echo pid=$$; hostname; cat /etc/resolv.conf; cat /cm/hostname; echo; (echo x > /cm/hostname) 2>/dev/null && echo RO-WRITTEN; \
        mount -t tmpfs none /mnt 2>/dev/null && echo MOUNT-ALLOWED || echo MOUNT-DENIED; \
        mkdir /newdir 2>&1; echo mkdir-status=$?; \
        cat /sys/fs/cgroup/memory.max 2>/dev/null; cat /proc/self/status | grep CapEff; \
        readlink /proc/self/ns/ipc; id -u; echo init=$(cat /proc/1/comm); grep SigIgn /proc/self/status; yes | head -c 100 | wc -c; \
        echo rootfs-mounts=$(grep -c ' - rootfs ' /proc/self/mountinfo)";
    let spec1 = spec(
        &["/bin/sh", "-c", script],
        serde_json::json!({
            "namespaces": [{"type": "pid"}, {"type": "uts"}, {"type": "mount"},
                           {"type": "ipc", "path": ipc_ns}, {"type": "cgroup"}],
            "resources": {"memory": {"limit": 67108864}, "pids": {"limit": 64}},
            "seccomp": {"defaultAction": "SCMP_ACT_ALLOW",
                        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}
        }),
        serde_json::json!({
            "hostname": "c1host",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["ro", "nosuid", "nodev", "noexec"]},
                {"destination": "/sys/fs/cgroup", "type": "cgroup2", "source": "cgroup", "options": ["ro"]},
                {"destination": "/etc/resolv.conf", "type": "bind", "source": sb.resolv_conf_path, "options": ["rbind", "ro"]},
                {"destination": "/cm", "type": "bind", "source": cm_dir, "options": ["rbind", "ro"]}
            ]
        }),
    );
    let pid = create(c, "c1", spec1.clone(), images.image.clone(), false)
        .await
        .expect("create c1");
    assert!(pid > 1);
    let e = create(c, "c1", spec1, images.image.clone(), false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
    let list = c
        .list_containers(ListContainersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.containers[0].state, "created");
    c.start_container(StartContainerRequest {
        container_id: "c1".into(),
    })
    .await
    .expect("start c1");
    let out = String::from_utf8(read_all(c, "c1", "", OutputStream::Stdout).await).unwrap();
    let err = String::from_utf8(read_all(c, "c1", "", OutputStream::Stderr).await).unwrap();
    let w = wait(c, "c1", "").await;
    println!("c1 stdout:\n{out}\nc1 stderr:\n{err}");
    assert_eq!(w.exit_code, 0, "{w:?}");
    assert!(!w.oom_killed);
    // pivot_root detached the guest's root: nothing of it is left in view.
    assert!(
        out.contains("rootfs-mounts=0\n"),
        "the container still sees the guest root:\n{out}"
    );
    for want in [
        "pid=1\n",
        "c1host\n",
        "nameserver 10.96.0.10",
        "options ndots:5",
        "\npod-one\n",
        "MOUNT-DENIED",
        "mkdir-status=1",
        "67108864",
        "CapEff:\t00000000a80425fb",
        "init=sh\n",
        "SigIgn:\t0000000000000000\n",
        "\n100\n",
    ] {
        assert!(out.contains(want), "c1 output lacks {want:?}:\n{out}");
    }
    assert!(
        out.contains("'/newdir': Operation not permitted"),
        "mkdir not denied by seccomp with EPERM: {out}"
    );
    assert!(
        !out.contains("RO-WRITTEN"),
        "c1 wrote a read-only bind:\n{out}"
    );
    assert!(err.is_empty(), "{err}");
    // The container joined the pod's IPC namespace (the bind-mounted ns
    // file's inode is the namespace's).
    let ipc_ino = if images.local {
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&ipc_ns).unwrap())
    } else {
        0
    };
    assert!(
        !images.local || out.contains(&format!("ipc:[{ipc_ino}]")),
        "not in the pod IPC ns {ipc_ino}: {out}"
    );
    let e = c
        .start_container(StartContainerRequest {
            container_id: "c1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
}

/// c2 runs on from a plain directory lower layer; an exec joins it.
async fn step_c2_exec(c: &mut AgentClient<Channel>, images: &Images) {
    // c2: long-running, from a plain directory lower layer; exec, tty,
    // big output, stats.
    let spec2 = spec(
        &["/bin/sleep", "1000"],
        serde_json::json!({"seccomp": {"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}}),
        serde_json::json!({"hostname": "c2host"}),
    );
    create(c, "c2", spec2, images.c2.clone(), false)
        .await
        .expect("create c2");
    c.start_container(StartContainerRequest {
        container_id: "c2".into(),
    })
    .await
    .expect("start c2");
    c.exec_process(ExecProcessRequest {
        container_id: "c2".into(),
        exec_id: "e1".into(),
        process: exec_json(
            vec![
                "/bin/sh",
                "-c",
                "echo exec-pid=$$; cat /proc/1/cmdline; echo; hostname; id -u; grep CapBnd /proc/self/status; mkdir /tmp/x 2>&1; true",
            ],
            false,
        ),
        stdin: false,
    })
    .await
    .expect("exec e1");
    let out = String::from_utf8(read_all(c, "c2", "e1", OutputStream::Stdout).await).unwrap();
    assert_eq!(wait(c, "c2", "e1").await.exit_code, 0);
    println!("exec output:\n{out}");
    assert!(
        out.contains("/bin/sleep"),
        "exec does not see the container's PID 1: {out}"
    );
    assert!(out.contains("c2host") && out.contains("65534"), "{out}");
    assert!(!out.contains("exec-pid=1\n"));
    // The exec named no capabilities and no seccomp: it inherits the
    // container's.
    assert!(out.contains("CapBnd:\t00000000a80425fb"), "{out}");
    assert!(
        out.contains("Operation not permitted"),
        "exec escaped the container's seccomp: {out}"
    );
    if images.local {
        // This agent forgets a waited-for exec after 500 ms (not a minute).
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let list = c
            .list_containers(ListContainersRequest {})
            .await
            .unwrap()
            .into_inner();
        let c2 = list.containers.iter().find(|i| i.container_id == "c2");
        assert!(
            c2.is_some_and(|i| !i.exec_ids.contains(&"e1".to_string())),
            "a finished exec is never forgotten: {list:?}"
        );
    }
}

/// An exec with a terminal: resize, then stdin through it.
async fn step_tty(c: &mut AgentClient<Channel>) {
    // TTY: resize, then stdin through the terminal.
    c.exec_process(ExecProcessRequest {
        container_id: "c2".into(),
        exec_id: "tty".into(),
        process: exec_json(
            vec![
                "/bin/sh",
                "-c",
                "read line; stty size; test -t 0 && echo is-a-tty; tty; echo got-$line",
            ],
            true,
        ),
        stdin: true,
    })
    .await
    .expect("exec tty");
    c.resize_tty(ResizeTtyRequest {
        container_id: "c2".into(),
        exec_id: "tty".into(),
        rows: 33,
        cols: 111,
    })
    .await
    .expect("resize");
    c.write_stdin(WriteStdinRequest {
        container_id: "c2".into(),
        exec_id: "tty".into(),
        data: b"ping\n".to_vec(),
    })
    .await
    .expect("stdin");
    let out =
        String::from_utf8_lossy(&read_all(c, "c2", "tty", OutputStream::Stdout).await).into_owned();
    println!("tty output:\n{out}");
    assert_eq!(wait(c, "c2", "tty").await.exit_code, 0);
    assert!(out.contains("33 111"), "{out}");
    assert!(out.contains("got-ping"), "{out}");
    assert!(out.contains("is-a-tty"), "{out}");
    // The terminal comes from the container's own devpts: its name resolves.
    assert!(out.contains("/dev/pts/0"), "{out}");
}

/// An exec's stdin through a pipe, closed by CloseStdin.
async fn step_stdin_pipe(c: &mut AgentClient<Channel>) {
    // stdin through a pipe, closed by CloseStdin.
    c.exec_process(ExecProcessRequest {
        container_id: "c2".into(),
        exec_id: "cat".into(),
        process: exec_json(vec!["/bin/sh", "-c", "wc -c"], false),
        stdin: true,
    })
    .await
    .expect("exec cat");
    c.write_stdin(WriteStdinRequest {
        container_id: "c2".into(),
        exec_id: "cat".into(),
        data: vec![b'x'; 100_000],
    })
    .await
    .expect("stdin");
    c.close_stdin(CloseStdinRequest {
        container_id: "c2".into(),
        exec_id: "cat".into(),
    })
    .await
    .expect("close stdin");
    let out = String::from_utf8(read_all(c, "c2", "cat", OutputStream::Stdout).await).unwrap();
    assert_eq!(out.trim(), "100000");
}

/// 10 MiB of exec output streamed intact; container, process and guest stats.
async fn step_big_output(c: &mut AgentClient<Channel>) {
    // 10 MiB of output, streamed intact.
    let size = 10 * 1024 * 1024;
    c.exec_process(ExecProcessRequest {
        container_id: "c2".into(),
        exec_id: "big".into(),
        // 1 MiB of a 16-byte pattern built by doubling, written 10 times
        // with cat's large writes.
        process: exec_json(
            vec![
                "/bin/sh",
                "-c",
                "cd /tmp && printf 0123456789abcdef > p && for i in $(seq 16); do cat p p > q; mv q p; done && \
                 for i in $(seq 10); do cat p; done",
            ],
            false,
        ),
        stdin: false,
    })
    .await
    .expect("exec big");
    let big = read_all(c, "c2", "big", OutputStream::Stdout).await;
    assert_eq!(big.len(), size);
    let line = b"0123456789abcdef";
    assert!(
        big.chunks(line.len()).all(|ch| line.starts_with(ch)),
        "output corrupted"
    );
    assert_eq!(wait(c, "c2", "big").await.exit_code, 0);

    let stats = c
        .container_stats(ContainerStatsRequest {
            container_id: "c2".into(),
        })
        .await
        .expect("stats")
        .into_inner();
    let mem = stats.memory.unwrap();
    assert!(
        mem.usage_bytes > 0 && mem.working_set_bytes <= mem.usage_bytes,
        "{mem:?}"
    );
    assert!(stats.pids.unwrap().current >= 1);
    assert!(stats.cpu.unwrap().usage_ns > 0);
    let ps = c
        .list_processes(ListProcessesRequest {
            container_id: "c2".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ps.processes.iter().any(|p| p.command == "sleep"), "{ps:?}");
    let gs = c
        .guest_stats(GuestStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(gs.memory_total_bytes > 0);
}

/// Resources updated, then the container's process signalled.
async fn step_update_signal(c: &mut AgentClient<Channel>) {
    // Update resources, then signal the container's process.
    c.update_container(UpdateContainerRequest {
        container_id: "c2".into(),
        resources: br#"{"pids":{"limit":10}}"#.to_vec(),
    })
    .await
    .expect("update");
    c.signal_process(SignalProcessRequest {
        container_id: "c2".into(),
        exec_id: String::new(),
        signal: 9,
        all: false,
    })
    .await
    .expect("signal");
    let w = wait(c, "c2", "").await;
    assert_eq!((w.exit_code, w.signal), (137, 9));
    assert!(!w.oom_killed);
}

/// c3, a memory hog under a 32 MiB limit, is OOM-killed and reported so.
async fn step_oom(c: &mut AgentClient<Channel>, images: &Images) {
    // c3: a memory hog under a 32 MiB limit is OOM-killed and reported so.
    let spec3 = spec(
        &["/bin/sh", "-c", "x=0123456789; while :; do x=$x$x; done"],
        serde_json::json!({"resources": {"memory": {"limit": 33554432, "swap": 33554432}}}),
        serde_json::json!({}),
    );
    create(c, "c3", spec3, images.image.clone(), false)
        .await
        .expect("create c3");
    c.start_container(StartContainerRequest {
        container_id: "c3".into(),
    })
    .await
    .expect("start c3");
    let w = wait(c, "c3", "").await;
    println!("c3 exit: {w:?}");
    assert!(w.oom_killed, "{w:?}");
    assert_eq!(w.signal, 9);
}

/// Bad requests are refused with the field named.
async fn step_bad_requests(c: &mut AgentClient<Channel>, images: &Images) {
    // Bad requests are refused with the field named.
    let e = create(c, "../evil", vec![], images.image.clone(), false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("container_id"), "{e:?}");
    let bad_bind = spec(
        &["/bin/true"],
        serde_json::json!({}),
        serde_json::json!({"mounts": [{"destination": "/x", "type": "bind", "source": "/etc", "options": ["rbind"]}]}),
    );
    let e = create(c, "bad", bad_bind, images.image.clone(), false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("mounts[0].source"), "{e:?}");
    let e = create(
        c,
        "nodev",
        spec(&["/bin/true"], serde_json::json!({}), serde_json::json!({})),
        Id::Serial("nope".into()),
        false,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let e = c
        .wait_process(WaitProcessRequest {
            container_id: "ghost".into(),
            exec_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = create(
        c,
        "badexe",
        spec(
            &["/bin/does-not-exist"],
            serde_json::json!({}),
            serde_json::json!({}),
        ),
        images.image.clone(),
        false,
    )
    .await;
    // A missing program is found at create time (PATH lookup) or at start.
    if e.is_ok() {
        let e = c
            .start_container(StartContainerRequest {
                container_id: "badexe".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("does-not-exist"), "{e:?}");
    }
}

/// Removal leaves nothing behind.
async fn step_removal(c: &mut AgentClient<Channel>, images: &Images) {
    // Removal leaves nothing behind.
    for id in ["c1", "c2", "c3", "badexe"] {
        let r = c
            .remove_container(RemoveContainerRequest {
                container_id: id.into(),
                timeout_ms: 100,
            })
            .await;
        if id != "badexe" {
            r.expect("remove");
        }
    }
    let list = c
        .list_containers(ListContainersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(list.containers.is_empty(), "{list:?}");
    c.destroy_sandbox(DestroySandboxRequest {})
        .await
        .expect("destroy sandbox");
    if !images.local {
        return;
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains("/run/moat/containers/"),
        "container mounts left:\n{mounts}"
    );
    for id in ["c1", "c2", "c3"] {
        assert!(
            !Path::new("/sys/fs/cgroup/pod").join(id).exists(),
            "cgroup of {id} left"
        );
    }
    assert!(
        !mounts.contains(moat_proto::SANDBOX_NS_DIR),
        "ns mounts left"
    );
}

//! Volumes shared live with a pod VM over virtio-fs: data written and
//! fsynced in the guest is the host's, byte for byte, after the pod is gone
//! and for a second pod; a volume of 10,000 files and 256 MiB lists; a
//! configmap's `..data` swap and a token's rotation show in the guest within
//! 5 s, through mirrors the agent keeps (which inotify sees); read-only
//! mounts refuse writes, also to the guest's root, which makes no device
//! node in a volume either; an emptyDir is shared by two containers; a
//! single file mounts; symlinks and `..` stay inside the guest; BIDIRECTIONAL is
//! refused; a moatd restart keeps the volumes working; removing the pod
//! leaves no daemon, socket or mount; a pod whose daemon dies ends, saying
//! why.

use super::*;

fn mount(host: &Path, container_path: &str, readonly: bool) -> Mount {
    Mount {
        container_path: container_path.into(),
        host_path: host.display().to_string(),
        readonly,
        ..Default::default()
    }
}

fn sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Where kubelet mounts a pod's service-account token (a projected volume).
const TOKEN_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// kubelet's layout of a configmap volume: the data in a timestamped
/// directory, `..data` pointing at it, each key a link through `..data`.
fn configmap(dir: &Path, generation: &str, key: &str, value: &str) {
    let data = dir.join(format!("..{generation}"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join(key), value).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..{generation}"), &tmp).unwrap();
    // The swap: one rename, as kubelet's atomic writer does.
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    if !dir.join(key).exists() {
        std::os::unix::fs::symlink(format!("..data/{key}"), dir.join(key)).unwrap();
    }
}

/// A pod VM's volume directory (the share and its daemon's files), beside
/// its VM directory, out of the VMM's sight.
fn fs_dir(vm_dir: &Path) -> PathBuf {
    PathBuf::from(format!("{}.fs", vm_dir.display()))
}

/// The virtiofsd processes serving a share for `vm_dir` (its sandbox
/// makes it two: the parent and the child in its namespaces).
fn daemons(vm_dir: &Path) -> usize {
    let socket = fs_dir(vm_dir).join("fs.sock").display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline)
                .split('\0')
                .any(|a| a == socket)
        })
        .count()
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|p| p.starts_with(&dir))
        .collect()
}

/// The scenario.
pub fn body() {
    tokio_runtime().block_on(async {
        // Privileged containers in the guest: one plays the guest's root.
        let mut m = Moatd::start("guest_privileged = true\n").expect("moatd");
        let mut rt = m.runtime().await.unwrap();
        let logs = m.dir.path().join("pods");
        pull(&m).await;
        let host = m.dir.path().join("host");
        let pvc = host.join("pvc");
        let cm = host.join("configmap");
        let token = host.join("token");
        let big = host.join("big");
        let empty = host.join("empty");
        for d in [&pvc, &cm, &token, &big, &empty] {
            std::fs::create_dir_all(d).unwrap();
        }
        configmap(&cm, "2026_12_03_1", "key", "v1");
        configmap(&token, "2026_12_03_1", "token", "token-1");
        for i in 0..10_000 {
            std::fs::write(big.join(format!("f{i:05}")), i.to_string()).unwrap();
        }
        let huge = std::fs::File::create(big.join("huge")).unwrap();
        huge.set_len(256 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&huge, b"marker", (256 << 20) - 6).unwrap();
        let hosts = host.join("hosts");
        std::fs::write(&hosts, "10.0.0.7 volumes-test\n").unwrap();
        let secret = m.dir.path().join("node-secret");
        std::fs::write(&secret, "node-secret").unwrap();
        std::os::unix::fs::symlink(&secret, pvc.join("abs-link")).unwrap();
        std::os::unix::fs::symlink("../../node-secret", pvc.join("rel-link")).unwrap();

        let pod = run_pod(&mut rt, &m, pod_config("volumes", &logs)).await;
        let vm_dir = PathBuf::from(pod_info(&mut rt, &pod).await["vmDir"].as_str().unwrap());
        assert!(daemons(&vm_dir) > 0, "no virtiofsd for the pod VM");

        // BIDIRECTIONAL cannot cross the VM boundary.
        let mut bidi = container_config(&m, "bidi", "sleep 1000");
        let mut mnt = mount(&pvc, "/data", false);
        mnt.propagation = MountPropagation::PropagationBidirectional as i32;
        bidi.mounts = vec![mnt];
        let e = assert_code(
            create(&mut rt, &pod, bidi).await,
            Code::InvalidArgument,
            "bidirectional",
        );
        assert!(e.contains("config.mounts[0].propagation"), "{e}");

        let mut a = container_config(&m, "a", "sleep 1000");
        a.mounts = vec![
            mount(&pvc, "/data", false),
            mount(&cm, "/config", true),
            mount(&big, "/big", true),
            mount(&hosts, "/etc/hosts", true),
            mount(&empty, "/shared", false),
            mount(&token, TOKEN_DIR, true),
        ];
        let a = create(&mut rt, &pod, a).await.unwrap();
        start(&mut rt, &a).await;
        let mut b = container_config(&m, "b", "sleep 1000");
        b.mounts = vec![mount(&empty, "/shared", false)];
        let b = create(&mut rt, &pod, b).await.unwrap();
        start(&mut rt, &b).await;
        let s = status(&mut rt, &a).await;
        assert_eq!(s.mounts.len(), 6);
        assert!(s
            .mounts
            .iter()
            .all(|m| m.propagation == MountPropagation::PropagationPrivate as i32));

        // Written and fsynced in the guest: on the host, byte for byte.
        let sum = exec_ok(
            &mut rt,
            &a,
            "head -c 4194304 /dev/urandom > /tmp/blob && \
             dd if=/tmp/blob of=/data/blob bs=65536 conv=fsync 2>/dev/null && \
             sha256sum /tmp/blob",
        )
        .await;
        let want = sum.split_whitespace().next().unwrap().to_string();
        assert_eq!(sha256(&pvc.join("blob")), want);

        // The old copy limits (64 MiB, 4096 entries) are gone.
        assert_eq!(exec_ok(&mut rt, &a, "ls /big | wc -l").await, "10001");
        assert_eq!(
            exec_ok(
                &mut rt,
                &a,
                "stat -c %s /big/huge; tail -c 6 /big/huge; cat /big/f09999"
            )
            .await,
            "268435456\nmarker9999"
        );

        // A configmap and a projected token, read-only in kubelet's layout,
        // are served from mirrors in guest memory (not the virtio-fs mount a
        // writable volume is), which the agent keeps in step: their swaps
        // show within 5 s, made in the guest, where inotify sees them.
        let fs_types = exec_ok(
            &mut rt,
            &a,
            &format!("stat -f -c %t /config {TOKEN_DIR} /data"),
        )
        .await;
        let fs_types: Vec<&str> = fs_types.lines().collect();
        assert_eq!(fs_types.len(), 3, "{fs_types:?}");
        assert_eq!(fs_types[0], fs_types[1], "{fs_types:?}");
        assert_ne!(
            fs_types[0], fs_types[2],
            "the configmap is not mirrored: {fs_types:?}"
        );
        assert_eq!(exec_ok(&mut rt, &a, "cat /config/key").await, "v1");
        let read_token = format!("cat {TOKEN_DIR}/token");
        assert_eq!(exec_ok(&mut rt, &a, &read_token).await, "token-1");
        configmap(&cm, "2026_12_03_2", "key", "v2");
        configmap(&token, "2026_12_03_2", "token", "token-2");
        let t0 = Instant::now();
        loop {
            let cm_now = exec_ok(&mut rt, &a, "cat /config/key").await;
            if cm_now == "v2" && exec_ok(&mut rt, &a, &read_token).await == "token-2" {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "the update never showed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!(
            "configmap update and token rotation visible after {} ms",
            t0.elapsed().as_millis()
        );
        assert_eq!(
            exec_ok(&mut rt, &a, "readlink /config/..data").await,
            "..2026_12_03_2"
        );

        // Read-only refuses writes; the host file is untouched.
        let (code, out) = exec_sh(&mut rt, &a, "echo x > /config/new; echo y >> /etc/hosts").await;
        assert_ne!(code, 0, "{out}");
        assert!(!cm.join("new").exists());
        assert_eq!(
            std::fs::read_to_string(&hosts).unwrap(),
            "10.0.0.7 volumes-test\n"
        );
        // A single file.
        assert_eq!(
            exec_ok(&mut rt, &a, "cat /etc/hosts").await,
            "10.0.0.7 volumes-test"
        );
        // An emptyDir between two containers.
        exec_ok(&mut rt, &a, "echo from-a > /shared/note").await;
        assert_eq!(exec_ok(&mut rt, &b, "cat /shared/note").await, "from-a");
        assert_eq!(
            std::fs::read_to_string(empty.join("note")).unwrap(),
            "from-a\n"
        );

        // Symlinks and `..` resolve in the guest, never on the host.
        let (_, out) = exec_sh(
            &mut rt,
            &a,
            "cat /data/abs-link /data/rel-link /data/../../node-secret 2>&1; ls /data/..",
        )
        .await;
        assert!(
            !out.contains("node-secret\n") && !out.ends_with("node-secret"),
            "{out}"
        );

        // The guest's root gets no more than the mounts say: with the
        // guest's own read-only flag removed, a read-only volume and a
        // read-only file still refuse writes (the daemon's copy of the
        // mount is read-only), and no device node is made in a writable
        // volume. (A mirrored configmap is the guest's own copy.)
        let probe = host.join("handle-probe");
        std::fs::copy(env!("MOAT_HANDLE_PROBE"), &probe).unwrap();
        let mut root = container_config(&m, "root", "sleep 1000");
        security_context(&mut root).privileged = true;
        root.mounts = vec![
            mount(&pvc, "/data", false),
            mount(&big, "/ro", true),
            mount(&hosts, "/etc/hosts", true),
            mount(&probe, "/handle-probe", true),
        ];
        let root = create(&mut rt, &pod, root).await.unwrap();
        start(&mut rt, &root).await;
        exec_ok(
            &mut rt,
            &root,
            "mount -o remount,rw,bind /ro && mount -o remount,rw,bind /etc/hosts",
        )
        .await;
        for (what, cmd) in [
            ("a read-only volume", "touch /ro/planted"),
            ("a read-only file", "echo y >> /etc/hosts"),
            (
                "a device node",
                "mknod /data/disk b 8 0 || mknod /data/disk c 1 3",
            ),
        ] {
            let (code, out) = exec_sh(&mut rt, &root, cmd).await;
            assert_ne!(code, 0, "the guest's root wrote {what}: {out}");
        }
        // Nor does open by handle: with CAP_DAC_READ_SEARCH, the volume's
        // own handle opens, and no forged FUSE node id reaches a file
        // outside the pod's volumes.
        let out = exec_ok(&mut rt, &root, "/handle-probe /data node-secret").await;
        println!("open by handle in the guest:\n{out}");
        assert!(
            out.contains("own handle (type 129, 12 bytes): opened"),
            "{out}"
        );
        assert!(out.contains("; 0 reached the secret"), "{out}");
        assert!(!big.join("planted").exists());
        assert!(!pvc.join("disk").exists());
        assert_eq!(
            std::fs::read_to_string(&hosts).unwrap(),
            "10.0.0.7 volumes-test\n"
        );
        rt.remove_container(RemoveContainerRequest {
            container_id: root.clone(),
        })
        .await
        .unwrap();

        // moatd restarts: the volumes go on working.
        m.restart(true).expect("restart");
        let mut rt = m.runtime().await.unwrap();
        exec_ok(&mut rt, &a, "echo after-restart > /data/later && sync").await;
        assert_eq!(
            std::fs::read_to_string(pvc.join("later")).unwrap(),
            "after-restart\n"
        );
        assert!(daemons(&vm_dir) > 0);

        // Removing a container unbinds its volumes; removing the pod
        // leaves no daemon, socket or mount, and the data stays.
        rt.remove_container(RemoveContainerRequest {
            container_id: b.clone(),
        })
        .await
        .unwrap();
        assert_eq!(mounts_under(&fs_dir(&vm_dir).join("volumes")).len(), 1 + 6);
        remove_pod(&mut rt, &pod).await;
        assert_eq!(daemons(&vm_dir), 0);
        for dir in [vm_dir.clone(), fs_dir(&vm_dir)] {
            assert!(mounts_under(&dir).is_empty(), "{:?}", mounts_under(&dir));
            assert!(!dir.exists(), "{} is left", dir.display());
        }
        assert_eq!(sha256(&pvc.join("blob")), want);

        // A second pod mounting the same path sees it.
        let pod2 = run_pod(&mut rt, &m, pod_config("volumes-2", &logs)).await;
        let mut c = container_config(&m, "c", "sleep 1000");
        c.mounts = vec![mount(&pvc, "/data", true)];
        let c = create(&mut rt, &pod2, c).await.unwrap();
        start(&mut rt, &c).await;
        let again = exec_ok(&mut rt, &c, "sha256sum /data/blob; cat /data/later").await;
        assert!(again.starts_with(&want), "{again}");
        assert!(again.ends_with("after-restart"), "{again}");

        // The daemon dies: the pod VM ends (its guest's requests could never
        // complete), the pod is NotReady and says why, and goes cleanly.
        let vm_dir2 = PathBuf::from(pod_info(&mut rt, &pod2).await["vmDir"].as_str().unwrap());
        let socket = fs_dir(&vm_dir2).join("fs.sock").display().to_string();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline)
                .split('\0')
                .any(|a| a == socket)
            {
                let _ = std::process::Command::new("kill")
                    .arg("-9")
                    .arg(e.file_name())
                    .status();
            }
        }
        let t0 = Instant::now();
        loop {
            let st = pod_status(&mut rt, &pod2, true).await;
            let state = st.status.map(|s| s.state).unwrap_or_default();
            if state == PodSandboxState::SandboxNotready as i32 {
                let info = pod_info(&mut rt, &pod2).await;
                let why = info["exitReason"].as_str().unwrap_or_default().to_string();
                assert!(why.contains("virtio-fs daemon"), "{info}");
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "the pod VM outlived its virtiofsd"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        remove_pod(&mut rt, &pod2).await;
        assert!(!vm_dir2.exists() && !fs_dir(&vm_dir2).exists());
    });
}

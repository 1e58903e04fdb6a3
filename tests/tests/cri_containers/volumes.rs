//! Volumes shared live with a pod VM over virtio-fs: data written and
//! fsynced in the guest is the host's, byte for byte, after the pod is gone
//! and for a second pod; a volume of 10,000 files and 256 MiB lists; a
//! configmap's `..data` swap shows in the guest within 5 s; read-only
//! mounts refuse writes, also to the guest's root, which makes no device
//! node in a volume either; an emptyDir is shared by two containers; a
//! single file mounts; symlinks and `..` stay inside the guest; BIDIRECTIONAL is
//! refused; a moatd restart keeps the volumes working; removing the pod
//! leaves no daemon, socket or mount.

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

/// kubelet's layout of a configmap volume: the data in a timestamped
/// directory, `..data` pointing at it, each key a link through `..data`.
fn configmap(dir: &Path, generation: &str, value: &str) {
    let data = dir.join(format!("..{generation}"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("key"), value).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..{generation}"), &tmp).unwrap();
    // The swap: one rename, as kubelet's atomic writer does.
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    if !dir.join("key").exists() {
        std::os::unix::fs::symlink("..data/key", dir.join("key")).unwrap();
    }
}

/// The virtiofsd processes serving a share under `vm_dir` (its sandbox
/// makes it two: the parent and the child in its namespaces).
fn daemons(vm_dir: &Path) -> usize {
    let socket = vm_dir.join("fs.sock").display().to_string();
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
        let big = host.join("big");
        let empty = host.join("empty");
        for d in [&pvc, &cm, &big, &empty] {
            std::fs::create_dir_all(d).unwrap();
        }
        configmap(&cm, "2026_12_03_1", "v1");
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
        ];
        let a = create(&mut rt, &pod, a).await.unwrap();
        start(&mut rt, &a).await;
        let mut b = container_config(&m, "b", "sleep 1000");
        b.mounts = vec![mount(&empty, "/shared", false)];
        let b = create(&mut rt, &pod, b).await.unwrap();
        start(&mut rt, &b).await;
        let s = status(&mut rt, &a).await;
        assert_eq!(s.mounts.len(), 5);
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

        // A configmap's swap shows within 5 s.
        assert_eq!(exec_ok(&mut rt, &a, "cat /config/key").await, "v1");
        configmap(&cm, "2026_12_03_2", "v2");
        let t0 = Instant::now();
        loop {
            if exec_ok(&mut rt, &a, "cat /config/key").await == "v2" {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "the update never showed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!(
            "configmap update visible after {} ms",
            t0.elapsed().as_millis()
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
        // volume.
        let mut root = container_config(&m, "root", "sleep 1000");
        security_context(&mut root).privileged = true;
        root.mounts = vec![
            mount(&pvc, "/data", false),
            mount(&cm, "/config", true),
            mount(&hosts, "/etc/hosts", true),
        ];
        let root = create(&mut rt, &pod, root).await.unwrap();
        start(&mut rt, &root).await;
        exec_ok(
            &mut rt,
            &root,
            "mount -o remount,rw,bind /config && mount -o remount,rw,bind /etc/hosts",
        )
        .await;
        for (what, cmd) in [
            ("a read-only volume", "touch /config/planted"),
            ("a read-only file", "echo y >> /etc/hosts"),
            (
                "a device node",
                "mknod /data/disk b 8 0 || mknod /data/disk c 1 3",
            ),
        ] {
            let (code, out) = exec_sh(&mut rt, &root, cmd).await;
            assert_ne!(code, 0, "the guest's root wrote {what}: {out}");
        }
        assert!(!cm.join("planted").exists());
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
        assert_eq!(mounts_under(&vm_dir.join("volumes")).len(), 1 + 5);
        remove_pod(&mut rt, &pod).await;
        assert_eq!(daemons(&vm_dir), 0);
        assert!(
            mounts_under(&vm_dir).is_empty(),
            "{:?}",
            mounts_under(&vm_dir)
        );
        assert!(!vm_dir.exists());
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
        remove_pod(&mut rt, &pod2).await;
    });
}

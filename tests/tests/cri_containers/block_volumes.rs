//! Raw block volumes (CRI `devices`, kubelet's `volumeDevices`): a host
//! file given to a container as /dev/xvda is written through, byte for
//! byte, fsynced to the host; one given read-only refuses writes; a
//! character device is refused naming the field; the volumes survive a
//! moatd restart and their slots are freed with the container.

use super::*;

/// The scenario.
pub fn body() {
    tokio_runtime().block_on(async {
        let mut m = Moatd::start("").expect("moatd");
        let mut rt = m.runtime().await.unwrap();
        let logs = m.dir.path().join("pods");
        pull(&m).await;
        let pod = run_pod(&mut rt, &m, pod_config("blocks", &logs)).await;
        let disk = m.dir.path().join("disk.img");
        std::fs::write(&disk, vec![0u8; 64 << 20]).unwrap();
        let ro = m.dir.path().join("ro.img");
        let mut ro_content = b"read-only volume".to_vec();
        ro_content.resize(1 << 20, 0);
        std::fs::write(&ro, &ro_content).unwrap();
        let device = |host: &Path, container: &str, permissions: &str| Device {
            host_path: host.display().to_string(),
            container_path: container.into(),
            permissions: permissions.into(),
        };

        // A character device has no place in a VM.
        let mut bad = container_config(&m, "chardev", "sleep 1000");
        bad.devices = vec![device(Path::new("/dev/null"), "/dev/xvda", "rwm")];
        let e = assert_code(
            create(&mut rt, &pod, bad).await,
            Code::InvalidArgument,
            "a char device",
        );
        assert!(e.contains("config.devices[0].host_path"), "{e}");

        let mut cfg = container_config(&m, "db", "sleep 1000");
        cfg.devices = vec![
            device(&disk, "/dev/xvda", "rwm"),
            device(&ro, "/dev/xvdb", "r"),
        ];
        let c = create(&mut rt, &pod, cfg).await.unwrap();
        start(&mut rt, &c).await;
        // The image's slot and one per volume.
        assert_eq!(attached_slots(&mut rt, &pod).await, 3);

        // 4 MiB written through /dev/xvda and fsynced are on the host.
        let sum = exec_ok(
            &mut rt,
            &c,
            "test -b /dev/xvda && head -c 4194304 /dev/urandom > /tmp/pattern && \
             dd if=/tmp/pattern of=/dev/xvda bs=65536 conv=fsync 2>/dev/null && \
             sha256sum /tmp/pattern",
        )
        .await;
        let want = sum.split_whitespace().next().unwrap().to_string();
        let host_sum = |path: &Path| {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("head -c 4194304 {} | sha256sum", path.display()))
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(
            host_sum(&disk),
            want,
            "the host file differs from what the guest wrote"
        );
        // And read back in the guest from the device, not its page cache.
        let back = exec_ok(
            &mut rt,
            &c,
            "echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; head -c 4194304 /dev/xvda | sha256sum",
        )
        .await;
        assert!(back.starts_with(&want), "{back} vs {want}");

        // The read-only volume reads and refuses writes.
        assert_eq!(
            exec_ok(&mut rt, &c, "head -c 16 /dev/xvdb").await,
            "read-only volume"
        );
        let (code, out) = exec_sh(&mut rt, &c, "echo x | dd of=/dev/xvdb conv=fsync").await;
        assert_ne!(code, 0, "a write to the read-only volume worked: {out}");
        // Refused by the guest kernel at the write, not by an I/O error.
        assert!(out.contains("not permitted"), "{out}");
        assert_eq!(std::fs::read(&ro).unwrap(), ro_content);

        // moatd restarts: the volumes stay attached and in use.
        m.restart(true).expect("restart");
        let mut rt = m.runtime().await.unwrap();
        assert_eq!(attached_slots(&mut rt, &pod).await, 3);
        exec_ok(
            &mut rt,
            &c,
            "echo after-restart | dd of=/dev/xvda bs=512 seek=20000 conv=fsync 2>/dev/null",
        )
        .await;
        let mut f = std::fs::File::open(&disk).unwrap();
        use std::io::{Read, Seek};
        f.seek(std::io::SeekFrom::Start(20000 * 512)).unwrap();
        let mut buf = [0u8; 13];
        f.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"after-restart");

        // Removing the container frees the volumes' slots: a second
        // container takes the same disk and sees what the first wrote.
        rt.remove_container(RemoveContainerRequest {
            container_id: c.clone(),
        })
        .await
        .unwrap();
        assert_eq!(attached_slots(&mut rt, &pod).await, 0);
        let mut cfg = container_config(&m, "db2", "sleep 1000");
        cfg.devices = vec![device(&disk, "/dev/data", "rw")];
        let c2 = create(&mut rt, &pod, cfg).await.unwrap();
        start(&mut rt, &c2).await;
        let again = exec_ok(&mut rt, &c2, "head -c 4194304 /dev/data | sha256sum").await;
        assert!(again.starts_with(&want), "{again} vs {want}");
        remove_pod(&mut rt, &pod).await;
    });
}

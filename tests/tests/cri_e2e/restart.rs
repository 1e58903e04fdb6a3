//! Running pods survive a moatd restart.

use super::*;

pub fn restart_body() {
    tokio_runtime().block_on(async {
        let mut m = Moatd::start("").expect("moatd");
        let mut rt = m.runtime().await.unwrap();
        // kubelet's parent for a burstable pod, with the systemd driver.
        let mut config = pod_config("survivor", &[]);
        config.linux = Some(LinuxPodSandboxConfig {
            cgroup_parent: "kubepods-burstable-podsurvivor.slice".into(),
            ..Default::default()
        });
        let id = rt
            .run_pod_sandbox(run_req(config, ""))
            .await
            .unwrap()
            .into_inner()
            .pod_sandbox_id;
        let vmms = vmm_pids();
        assert_eq!(vmms.len(), 1);
        moat_tests::moatd::assert_vmm_confined(vmms[0]);
        // It was never root: moatd started it as its jail's uid, holding
        // only what its chroot needs.
        let uid = std::fs::read_to_string(format!("/proc/{}/status", vmms[0]))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().next().map(str::to_string))
            .unwrap();
        let log = std::fs::read_to_string(m.run_dir().join(&id[..16]).join("vmm.log")).unwrap();
        let started = format!("starting: uid {uid}, gid {uid}, capabilities [CAP_SYS_CHROOT]");
        assert!(
            log.contains(&started),
            "{started:?} not in the VMM's log:\n{log}"
        );
        // Jailed, the VMM still reports its memory (it reads /proc through
        // a file it opened before its root changed).
        let counters = m.vmm_control(&id, r#"{"op":"counters"}"#);
        assert!(
            counters["result"]["memory"]["total_kib"].as_u64() > Some(0),
            "{counters}"
        );
        let parent =
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podsurvivor.slice";
        let cgroup =
            moat_tests::moatd::assert_cgroup(vmms[0], &format!("{parent}/moat-vmm-{id}.scope"));
        // Its virtiofsd (the parent and its sandboxed child) has a cgroup
        // of its own beside it, with its own limits.
        let daemons: Vec<u32> = moat_tests::moatd::virtiofsd_pids()
            .into_iter()
            .filter(|p| {
                std::fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&id[..16]))
            })
            .collect();
        assert!(!daemons.is_empty(), "no virtiofsd for the pod");
        let mut fs_cgroup = std::path::PathBuf::new();
        for pid in &daemons {
            fs_cgroup =
                moat_tests::moatd::assert_cgroup(*pid, &format!("{parent}/moat-fs-{id}.scope"));
            assert_eq!(
                std::fs::read_to_string(fs_cgroup.join("memory.max"))
                    .unwrap()
                    .trim(),
                (256u64 << 20).to_string()
            );
        }

        // moatd crashes; its pod VM keeps running and is found again.
        m.restart(true).expect("restart");
        let mut rt = m.runtime().await.unwrap();
        assert_eq!(
            vmm_pids(),
            vmms,
            "the pod VM did not survive the moatd crash"
        );
        let st = moat_tests::cri::pod_status(&mut rt, &id, false).await;
        assert_eq!(
            st.status.unwrap().state,
            PodSandboxState::SandboxReady as i32
        );

        // A VM that dies while moatd runs is reported NotReady, with the
        // reason. SIGSYS is what the kernel sends when the VMM breaks its
        // seccomp filter (the filter itself is tested in moat-vmm): the
        // VMM's handler logs it and exits.
        // SAFETY: signalling the VMM process this test started through moatd.
        unsafe { libc::kill(vmms[0] as i32, libc::SIGSYS) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let st = moat_tests::cri::pod_status(&mut rt, &id, false).await;
            if st.status.unwrap().state == PodSandboxState::SandboxNotready as i32 {
                break;
            }
            assert!(Instant::now() < deadline, "dead VM still reported ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let info = moat_tests::cri::pod_info(&mut rt, &id).await;
        let reason = info["exitReason"].as_str().unwrap_or_default();
        assert!(reason.contains("seccomp"), "{info}");
        rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
            .await
            .unwrap();
        assert!(
            Moatd::entries(&m.run_dir().join("netns")).is_empty(),
            "netns leaked"
        );
        assert!(
            !cgroup.exists(),
            "the VMM's cgroup {} leaked",
            cgroup.display()
        );
        assert!(
            !fs_cgroup.exists(),
            "the virtiofsd's cgroup {} leaked",
            fs_cgroup.display()
        );
    });
}

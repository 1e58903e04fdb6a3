//! A guest that turns against its VMM, end to end in a real pod VM (in the
//! test node here). A privileged container has the guest's root powers:
//! it changes its NIC's MAC to send frames as another host, and floods
//! the VMM's vsock with its output. The VMM must drop the spoofed frames
//! (and forward again once the MAC is the pod's), keep its own memory
//! bounded, and keep answering its control socket throughout.
//!
//! Needs `make artifacts` and release builds of moatd and moat-vmm.

use moat_proto::cri::*;
use moat_tests::cri::*;
use moat_tests::moatd::{tokio_runtime, Moatd};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(900);

/// The VMM's own resident memory (without guest memory), in KiB.
fn vmm_overhead_kib(m: &Moatd, pod: &str) -> u64 {
    let c = m.vmm_control(pod, r#"{"op":"counters"}"#);
    let mem = &c["result"]["memory"];
    let total = mem["total_kib"].as_u64().unwrap_or(0);
    let guest = mem["guest_kib"].as_u64().unwrap_or(0);
    assert!(total > 0, "no memory counters: {c}");
    total - guest
}

fn hostile_body() {
    tokio_runtime().block_on(async {
        let m = Moatd::start("guest_privileged = true\n").expect("moatd");
        let mut rt = m.runtime().await.unwrap();
        pull(&m).await;
        let logs = m.dir.path().join("pods");
        let pod = run_pod(&mut rt, &m, pod_config("hostile", &logs)).await;
        // The netadmin image: iproute2's `ip` (netlink) changes the MAC;
        // busybox's needs packet sockets, which the guest kernel lacks.
        pull_image(&m, &m.registry.netadmin()).await;
        let mut root = container_config(&m, "root", "sleep 3600");
        root.image = Some(ImageSpec {
            image: m.registry.netadmin(),
            ..Default::default()
        });
        security_context(&mut root).privileged = true;
        let root = run_container(&mut rt, &m, &pod, root).await;

        // Frames sent with another host's MAC go nowhere; with the pod's
        // own, traffic flows again. (Taking the NIC down for the change
        // drops the default route, which is put back.)
        let gw = exec_ok(&mut rt, &root, "ip route | awk '/default/ {print $3}'").await;
        let gw = gw.trim();
        assert!(!gw.is_empty(), "no default route in the pod");
        let ping = format!("ping -c 2 -W 2 {gw}");
        exec_ok(&mut rt, &root, &ping).await;
        let spoofed_of = |c: &serde_json::Value| c["result"]["devices"]["net"]["spoofed"].as_u64();
        let spoofed_before = spoofed_of(&m.vmm_control(&pod, r#"{"op":"counters"}"#))
            .expect("the NIC's spoofed counter");
        let own = exec_ok(&mut rt, &root, "cat /sys/class/net/eth0/address").await;
        let set_mac = |mac: &str| {
            format!(
                "ip=/sbin/ip; $ip link set eth0 down && $ip link set eth0 address {mac} \
                 && $ip link set eth0 up && $ip route add default via {gw}"
            )
        };
        exec_ok(&mut rt, &root, &set_mac("02:00:00:00:99:99")).await;
        let (code, out) = exec_sh(&mut rt, &root, &ping).await;
        assert_ne!(code, 0, "a spoofed MAC still reached the gateway: {out}");
        let counters = m.vmm_control(&pod, r#"{"op":"counters"}"#);
        let spoofed = spoofed_of(&counters).unwrap_or(0);
        assert!(
            spoofed > spoofed_before,
            "no frame counted as spoofed ({out}): {counters}"
        );
        exec_ok(
            &mut rt,
            &root,
            &format!("{} && {ping}", set_mac(own.trim())),
        )
        .await;
        println!("spoofed frames dropped: {}", spoofed - spoofed_before);

        // 200 MiB of output through vsock as fast as the guest can write
        // it; the control socket is asked every 100 ms meanwhile.
        let before_kib = vmm_overhead_kib(&m, &pod);
        let flood = container_config(&m, "flood", "head -c 209715200 /dev/zero");
        let flood = run_container(&mut rt, &m, &pod, flood).await;
        let started = Instant::now();
        let mut slowest = Duration::ZERO;
        let mut peak_kib = before_kib;
        loop {
            let asked = Instant::now();
            // A VMM gone mid-flood: say why (its log, the guest's console).
            if !m.run_dir().join(&pod[..16]).join("api.sock").exists() {
                panic!("the pod's VMM is gone during the flood:\n{}", m.vm_logs());
            }
            let state = m.vmm_control(&pod, r#"{"op":"state"}"#);
            assert_eq!(state["ok"], true, "{state}");
            slowest = slowest.max(asked.elapsed());
            peak_kib = peak_kib.max(vmm_overhead_kib(&m, &pod));
            let st = status(&mut rt, &flood).await;
            if st.state == ContainerState::ContainerExited as i32 {
                assert_eq!(st.exit_code, 0);
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "the flood did not end in 600 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = logs.join("hostile").join("flood/0.log");
        let logged = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        println!(
            "flood: {:?}, {} MiB logged; control socket's slowest answer {slowest:?}; \
             VMM memory without the guest's {before_kib} KiB before, {peak_kib} KiB at most",
            started.elapsed(),
            logged >> 20
        );
        assert!(logged >= 200 << 20, "the log holds {logged} bytes");
        assert!(
            slowest < Duration::from_secs(2),
            "the control socket took {slowest:?} to answer"
        );
        assert!(
            peak_kib < before_kib + 16 * 1024,
            "the VMM grew from {before_kib} KiB to {peak_kib} KiB"
        );
    });
}

moat_tests::vm_test!(
    a_hostile_guest_cannot_hurt_its_vmm,
    moat_tests::vm::NodeOptions {
        timeout: TIMEOUT,
        min_memory_mib: 0,
        echo_output: false,
        // A guest that resets under the emulator mid-flood (a triple fault
        // its kernel never reports: seen in 2 CI runs and in 1 of 4 runs by
        // hand; agent_microvm saw the same in its 10 MiB output step) gets
        // one fresh node; a second one fails. Where microVMs boot on
        // hardware, the test runs once.
        retry_if: &["guest reset without poweroff notice"],
    },
    hostile_body
);

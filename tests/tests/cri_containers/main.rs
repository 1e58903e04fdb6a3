//! CRI end-to-end for containers: gRPC to a real moatd, pods in real
//! microVMs (in the test node here), images from the registry on 127.0.0.1,
//! real CNI plugins. Covers kubelet's sequence (pull → run pod → create →
//! start → status → exec → logs → stop → remove), the container RPCs and
//! their error cases, a moatd restart with a container running, moatd
//! killed at each step of RunPodSandbox, CreateContainer and
//! RemoveContainer, raw block volumes (CRI `devices`), volumes shared live
//! over virtio-fs, and 20 pods with
//! containers created and removed in a row without leaks.
//!
//! Needs `make artifacts` and release builds of moatd and moat-vmm.

use moat_proto::cri::*;
use moat_tests::cri::*;
use moat_tests::moatd::{tokio_runtime, vmm_pids, Moatd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::Code;

mod block_volumes;
mod crash;
mod kubelet_sequence;
mod restart;
mod twenty_pods;
mod volumes;

const TIMEOUT: Duration = Duration::from_secs(1200);

/// Waits until the log file holds `needle`; returns its content.
pub(crate) async fn wait_log(path: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let content = std::fs::read_to_string(path).unwrap_or_default();
        if content.contains(needle) {
            return content;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} never reached {}: {content:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// For a pod VM, that `want` of its block slots have an image attached
/// (`what` says why); a native pod has no slots to check.
pub(crate) async fn assert_slots(rt: &mut Rt, pod: &str, want: usize, what: &str) {
    let handler = pod_status(rt, pod, false)
        .await
        .status
        .map(|s| s.runtime_handler)
        .unwrap_or_default();
    if handler != "runc" {
        assert_eq!(attached_slots(rt, pod).await, want, "{what}");
    }
}

/// Every block slot of the pod's VM that has an image attached.
pub(crate) async fn attached_slots(rt: &mut Rt, pod: &str) -> usize {
    let info = pod_info(rt, pod).await;
    let api = PathBuf::from(info["vmDir"].as_str().unwrap()).join("api.sock");
    let mut s = std::os::unix::net::UnixStream::connect(&api).unwrap();
    use std::io::{BufRead, Write};
    s.write_all(b"{\"op\":\"state\"}\n").unwrap();
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    v["result"]["slots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| !s["path"].is_null())
        .count()
}

moat_tests::vm_test!(
    kubelet_sequence_with_containers,
    TIMEOUT,
    kubelet_sequence::body
);

moat_tests::vm_test!(
    kubelet_sequence_with_native_containers,
    TIMEOUT,
    kubelet_sequence::native_body
);

moat_tests::vm_test!(
    running_containers_survive_a_moatd_restart,
    TIMEOUT,
    restart::body
);

moat_tests::vm_test!(
    moatd_killed_at_each_step_leaves_nothing,
    TIMEOUT,
    crash::body
);

moat_tests::vm_test!(
    raw_block_volumes_are_written_through,
    TIMEOUT,
    block_volumes::body
);

moat_tests::vm_test!(
    volumes_are_shared_live_with_the_pod_vm,
    TIMEOUT,
    volumes::body
);

moat_tests::vm_test!(
    twenty_pods_in_a_row_leak_nothing,
    TIMEOUT,
    twenty_pods::body
);

//! End to end: the static agent packed as /init of the project's guest,
//! booted by moat-vmm in a real KVM microVM, driven over hybrid vsock. Runs
//! the same scenario as `agent_node` with the container image hot-attached
//! to a virtio-blk slot through moat-vmm's control API after boot, and found
//! by its serial.
//!
//! Needs (and fails loudly without): `build/vmlinux` (make artifacts),
//! `target/release/moat-vmm` and `moat-rootfs` (cargo build --release), and
//! the static agent `target/x86_64-unknown-linux-gnu/guest/moat-agent`
//! (RUSTFLAGS='-C target-feature=+crt-static' cargo build --profile guest -p
//! moat-agent --target x86_64-unknown-linux-gnu, as `make agent` does).
//! Runs where microVMs boot (`moat_tests::vm_test!`): directly on a host
//! with hardware virtualization, else inside the test node.

// Test code: a failed step fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use moat_proto::agent::agent_client::AgentClient;
use moat_proto::agent::block_device::Id;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

moat_tests::vm_test!(
    agent_in_a_moat_vmm_microvm,
    moat_tests::vm::NodeOptions {
        timeout: SCENARIO_LIMIT + Duration::from_secs(300),
        min_memory_mib: 1536,
        echo_output: true,
        // Seen once in CI and never by hand: a nested guest that stops
        // making progress under the emulator gets one fresh node.
        // So does a guest that resets under the emulator mid-scenario (a
        // triple fault at the reset vector, seen once in CI in the 10 MiB
        // output step); a second one fails. And so does a guest whose
        // kernel reports a vCPU that stopped running (an RCU stall, seen
        // once in CI after the update step, the agent's connection then
        // timing out): on hardware none of these is retried.
        retry_if: &[
            STALLED,
            "guest reset without poweroff notice",
            "rcu_sched detected stalls",
        ],
    },
    microvm_body
);

/// Checks the artefacts, then boots the microVM and drives the scenario.
fn microvm_body() {
    use moat_tests::artifacts;
    let vmlinux = artifacts::vmlinux().unwrap();
    let vmm = artifacts::binary("moat-vmm").unwrap();
    let rootfs_tool = artifacts::binary("moat-rootfs").unwrap();
    let agent = artifacts::static_agent().unwrap();
    assert_fresh(&agent);
    in_vm(&vmlinux, &vmm, &rootfs_tool, &agent);
}

/// Fails when the static agent is older than the agent's sources, so the
/// microVM never silently runs stale code.
fn assert_fresh(agent: &Path) {
    let built = std::fs::metadata(agent)
        .and_then(|m| m.modified())
        .expect("agent mtime");
    let mut stack = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
    stack.push(moat_tests::artifacts::workspace_root().join("proto"));
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("source dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(t) = e.metadata().and_then(|m| m.modified()) {
                assert!(
                    t <= built,
                    "{} is newer than the static agent {}: rebuild it (RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -p moat-agent --target x86_64-unknown-linux-gnu)",
                    p.display(),
                    agent.display()
                );
            }
        }
    }
}

fn in_vm(vmlinux: &Path, vmm: &Path, rootfs_tool: &Path, agent: &Path) {
    let work = PathBuf::from("/tmp/moat-agent-e2e");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let initrd = work.join("initramfs.cpio");
    sh(&format!(
        "{} initramfs --agent {} --out {}",
        rootfs_tool.display(),
        agent.display(),
        initrd.display()
    ));
    let rootfs = work.join("rootfs");
    busybox_rootfs(&rootfs);
    let img = work.join("image.erofs");
    sh(&format!(
        "mkfs.erofs -d0 {} {}",
        img.display(),
        rootfs.display()
    ));
    let uds = work.join("vsock.sock");
    let api = work.join("api.sock");
    let console = work.join("console.log");
    let mut vm = std::process::Command::new(vmm)
        .arg("--kernel")
        .arg(vmlinux)
        .arg("--initrd")
        .arg(&initrd)
        .args(["--cpus", "2", "--memory-mib", "512", "--blk-slots", "2"])
        .arg("--vsock-uds")
        .arg(&uds)
        .arg("--api-sock")
        .arg(&api)
        .arg("--serial")
        .arg(&console)
        .spawn()
        .expect("start moat-vmm");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let scenario = async {
            let mut c = connect_vsock(&uds, Duration::from_secs(180)).await;
            let details = c
                .guest_details(moat_proto::agent::GuestDetailsRequest {})
                .await
                .expect("guest details")
                .into_inner();
            println!("guest: {details:?}");
            // The image arrives after boot, through moat-vmm's control API,
            // the way moatd attaches a container image to a running pod VM.
            let answer = attach_drive(&api, 0, &img).await;
            assert!(answer.contains(r#""ok":true"#), "attach_drive: {answer}");
            drive(
                c.clone(),
                Images {
                    image: Id::Serial("moat-blk-0".into()),
                    c2: Id::Serial("moat-blk-0".into()),
                    local: false,
                },
            )
            .await;
            c.shutdown(moat_proto::agent::ShutdownRequest {})
                .await
                .expect("shutdown");
        };
        if rt
            .block_on(async { tokio::time::timeout(SCENARIO_LIMIT, scenario).await })
            .is_err()
        {
            // A step that never answers must not hold the node until its
            // own timeout: say where moat-vmm's threads are, then the
            // guest's console below tells what the guest was doing.
            println!(
                "moat-vmm threads:\n{}",
                moat_tests::node::thread_states(vm.id()).join("\n")
            );
            panic!("{STALLED}: the microVM scenario did not finish in {SCENARIO_LIMIT:?} (the last `== step` line above is the step that hung)");
        }
    }));
    // A clean shutdown ends the VMM by itself; after a failure, kill it now.
    let grace = if result.is_ok() { 60 } else { 0 };
    let deadline = Instant::now() + Duration::from_secs(grace);
    let status = loop {
        if let Ok(Some(s)) = vm.try_wait() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = vm.kill();
            let _ = vm.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    println!("guest console:\n{log}");
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    let status = status.expect("moat-vmm did not exit after Shutdown");
    assert!(
        status.success(),
        "moat-vmm exit after a clean poweroff: {status}"
    );
    println!("MICROVM-SCENARIO-OK");
}

/// Every step of the scenario together; a normal run takes a few minutes
/// inside the test node.
const SCENARIO_LIMIT: Duration = Duration::from_secs(600);

/// What the scenario says when it ran out of time.
const STALLED: &str = "MICROVM-SCENARIO-STALLED";

/// Sends one `attach_drive` request to the VMM's control socket; returns the answer line.
async fn attach_drive(api: &Path, slot: u32, image: &Path) -> String {
    let mut s = tokio::net::UnixStream::connect(api)
        .await
        .expect("control socket");
    let req =
        serde_json::json!({"op": "attach_drive", "slot": slot, "path": image, "read_only": true});
    s.write_all(format!("{req}\n").as_bytes())
        .await
        .expect("send attach_drive");
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while s.read(&mut byte).await.unwrap_or(0) == 1 && byte[0] != b'\n' {
        answer.push(byte[0]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// Connects through the VMM's hybrid vsock socket (CONNECT/OK handshake),
/// retrying until the agent answers a ping.
async fn connect_vsock(uds: &Path, limit: Duration) -> AgentClient<tonic::transport::Channel> {
    let deadline = Instant::now() + limit;
    loop {
        // The same hybrid vsock client moatd uses (CONNECT/OK handshake).
        let ch = moatd::agent::connect(uds.to_path_buf(), moat_proto::AGENT_VSOCK_PORT).await;
        if let Ok(c) = ch {
            let mut c = c
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20);
            if c.ping(moat_proto::agent::PingRequest {}).await.is_ok() {
                return c;
            }
        }
        assert!(
            Instant::now() < deadline,
            "agent did not answer on {} in {limit:?}",
            uds.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

//! The agent and its container engine, run for real as root: inside the
//! test node (a Debian kernel with cgroup2 at /sys/fs/cgroup) when the node
//! is available, or directly when this host itself has a cgroup2 hierarchy
//! with the memory controller and `MOAT_AGENT_TEST_DIRECT=1` is set.
//!
//! One scenario drives the agent binary over its gRPC API on a Unix socket:
//! sandbox files and shared IPC namespace, a container on an erofs image
//! attached as a block (loop) device (erofs) with an overlay, its own PID 1 and
//! hostname, dropped capabilities (mount fails), a seccomp-denied syscall
//! (EPERM), exec into a running container, a TTY with resize, 10 MiB of
//! output streamed intact, an OOM kill reported as such, stats, and
//! removal that leaves no cgroup or mount behind; plus bad requests.

// Test code: a failed step fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use moat_proto::agent::block_device::Id;
use std::path::PathBuf;
use std::time::Duration;

const IN_NODE: &str = "MOAT_AGENT_TEST_IN_NODE";

#[test]
fn agent_runs_containers_as_root() {
    if std::env::var_os(IN_NODE).is_some() || std::env::var_os("MOAT_AGENT_TEST_DIRECT").is_some() {
        scenario();
        return;
    }
    let mut node = moat_tests::node::NodeConfig::detect().expect(
        "the test node is needed for this test (or set MOAT_AGENT_TEST_DIRECT=1 on a cgroup2 host)",
    );
    node.timeout = Duration::from_secs(900);
    node.memory_mib = node.memory_mib.max(1024);
    // Stream the scenario's progress while it runs.
    node.echo_output = true;
    let exe = std::env::current_exe().expect("test binary path");
    let script = format!(
        "export {IN_NODE}=1; exec {} --exact agent_runs_containers_as_root --nocapture --test-threads=1",
        exe.display()
    );
    let out = moat_tests::vm::run_in_node(&node, &script).expect("node run");
    println!("{}", out.output);
    assert_eq!(
        out.status, 0,
        "scenario failed in the node; console:\n{}",
        out.console
    );
    assert!(
        out.output.contains("SCENARIO-OK"),
        "scenario did not finish:\n{}",
        out.output
    );
}

/// Builds the images, starts the agent, runs every check.
fn scenario() {
    let work = PathBuf::from("/tmp/moat-agent-it");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let rootfs = work.join("rootfs");
    busybox_rootfs(&rootfs);
    // An erofs image on a loop device stands in for the virtio-blk image.
    let img = work.join("image.erofs");
    sh(&format!(
        "mkfs.erofs -d0 {} {}",
        img.display(),
        rootfs.display()
    ));
    // The node's Debian kernel has these as modules (the guest's are built in).
    sh("grep -qw erofs /proc/filesystems || modprobe erofs; test -e /dev/loop-control || modprobe loop");
    let loopdev = sh(&format!("losetup -f --show {}", img.display()))
        .trim()
        .to_string();
    println!("image on {loopdev}");

    let sock = work.join("agent.sock");
    let mut agent = std::process::Command::new(env!("CARGO_BIN_EXE_moat-agent"))
        .arg("--listen-unix")
        .arg(&sock)
        .env("MOAT_AGENT_LOG", "info")
        .spawn()
        .expect("start agent");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(async {
            let c = connect_unix(sock).await;
            drive(
                c,
                Images {
                    image: Id::Path(loopdev.clone()),
                    c2: Id::Directory(rootfs.display().to_string()),
                    local: true,
                },
            )
            .await
        })
    }));
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = std::process::Command::new("losetup")
        .args(["-d", &loopdev])
        .status();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    println!("SCENARIO-OK");
}

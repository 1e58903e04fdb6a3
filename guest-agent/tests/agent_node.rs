//! The agent and its container engine, run for real as root where microVMs
//! boot (`moat_tests::vm_test!`): directly on a host with hardware
//! virtualization (which must have cgroup2 with the memory controller), else
//! inside the test node (a Debian kernel with cgroup2 at /sys/fs/cgroup).
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

moat_tests::vm_test!(
    agent_runs_containers_as_root,
    moat_tests::vm::NodeOptions {
        timeout: Duration::from_secs(900),
        min_memory_mib: 1024,
        echo_output: true,
        retry_if: &[],
    },
    scenario
);

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
        .env("MOAT_AGENT_EXEC_TTL_MS", "500")
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

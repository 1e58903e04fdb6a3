//! Foundation end-to-end tests: the test node works, and the guest this
//! project builds (kernel-config/ + moat-rootfs + moat-agent) boots to its
//! `/init` in a real KVM microVM.

use moat_tests::artifacts;
use moat_tests::node::{NodeConfig, NodeError};
use moat_tests::probe::{probe, VmSupport};
use moat_tests::vm::run_vm_script;
use std::time::Duration;

/// The test node's config, or None on a host with hardware virtualization,
/// where the node is optional (anywhere else it must be available).
fn node_or_direct() -> Option<NodeConfig> {
    match NodeConfig::detect() {
        Ok(node) => Some(node),
        Err(e) => {
            assert!(
                matches!(probe(), VmSupport::Direct { .. }),
                "the test node is required here: {e}"
            );
            None
        }
    }
}

#[test]
fn probe_reports_a_vm_capable_environment() {
    let support = probe();
    println!("{support}");
    assert!(
        !matches!(support, VmSupport::Unavailable { .. }),
        "{support}"
    );
}

#[test]
fn node_runs_a_command_with_kvm_and_returns_its_status() {
    let Some(mut node) = node_or_direct() else {
        return;
    };
    node.timeout = Duration::from_secs(120);
    let out = node
        .run("echo out-line; echo err-line >&2; test -c /dev/kvm && echo kvm-ok; touch /tmp/w && echo tmp-writable; exit 7")
        .expect("node run");
    assert_eq!(out.status, 7, "console:\n{}", out.console);
    for want in ["out-line", "err-line", "kvm-ok", "tmp-writable"] {
        assert!(
            out.output.contains(want),
            "missing {want:?} in output:\n{}",
            out.output
        );
    }
    println!(
        "node boot to command: {:.2} s, total {:.2} s",
        out.boot_time.as_secs_f64(),
        out.total_time.as_secs_f64()
    );
}

#[test]
fn hung_node_is_killed_at_the_time_limit_with_its_console_kept() {
    let Some(mut node) = node_or_direct() else {
        return;
    };
    node.timeout = Duration::from_secs(20);
    let started = std::time::Instant::now();
    match node.run("echo about-to-hang; sleep 3600") {
        Err(NodeError::Timeout {
            secs,
            processes,
            console,
        }) => {
            assert_eq!(secs, 20);
            assert!(
                console.contains("about-to-hang"),
                "console not kept:\n{console}"
            );
            assert!(
                processes.contains("sleep 3600"),
                "the hung command is not in the node's process list:\n{processes}"
            );
            assert!(started.elapsed() < Duration::from_secs(60));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}

/// A node that stops beating (here: its heartbeat writer is frozen, as when
/// the emulated CPUs stop) is reported as locked up and killed long before
/// the time limit.
#[test]
fn silent_node_is_reported_as_locked_up() {
    let Some(mut node) = node_or_direct() else {
        return;
    };
    node.timeout = Duration::from_secs(300);
    // Boot counts as silence: 15 s was shorter than a node's boot while the
    // other tests of this file boot theirs beside it.
    node.heartbeat_silence = Duration::from_secs(45);
    let started = std::time::Instant::now();
    let script = "s=$(sed -n 's/.*moat_scratch=\\([^ ]*\\).*/\\1/p' /proc/cmdline); \
                  kill -STOP $(cat $s/beat.pid) && echo frozen; sleep 3600";
    match node.run(script) {
        Err(NodeError::Lockup { why, console }) => {
            assert!(why.contains("no heartbeat"), "{why}");
            assert!(console.contains("frozen"), "console:\n{console}");
            assert!(started.elapsed() < Duration::from_secs(150));
        }
        other => panic!("expected a lockup, got {other:?}"),
    }
}

/// Boots the project's guest kernel and initramfs under QEMU's microvm
/// machine (a reference VMM independent of moat-vmm) and checks the agent
/// ran as PID 1 and powered the guest off.
#[test]
fn project_guest_boots_to_the_agent_as_init() {
    let kernel = artifacts::vmlinux().expect("guest kernel");
    let initrd = artifacts::initramfs().expect("guest initramfs");
    let script = format!(
        "exec qemu-system-x86_64 -machine microvm,acpi=off -enable-kvm -cpu host -m 128 -smp 1 \
         -nodefaults -no-user-config -display none -serial stdio -no-reboot \
         -kernel '{}' -initrd '{}' -append 'console=ttyS0 reboot=t panic=-1 moat.test=poweroff'",
        kernel.display(),
        initrd.display()
    );
    let run = run_vm_script(&script, Duration::from_secs(300)).expect("boot");
    println!("{}", run.output);
    assert!(
        run.output.contains("Run /init as init process"),
        "kernel did not reach /init:\n{}",
        run.output
    );
    assert!(
        run.output.contains("moat-agent ready") && run.output.contains("pid1=true"),
        "agent did not start as PID 1:\n{}",
        run.output
    );
    assert!(run.output.contains("powering off"), "{}", run.output);
    assert_eq!(run.status, 0, "QEMU did not exit cleanly:\n{}", run.output);
}

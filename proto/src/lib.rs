//! moat's wire protocols: the host<->agent API (`agent.proto`, ours) and the
//! Kubernetes CRI v1 types and services (from the `k8s-cri` crate).

/// The host<->agent API, generated from `proto/agent.proto`.
pub mod agent {
    tonic::include_proto!("moat.agent.v1");
}

/// Kubernetes CRI `runtime.v1` messages and service traits.
pub use k8s_cri::v1 as cri;

/// vsock port the agent serves its gRPC API on inside the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// vsock port on the host (CID 2) the agent connects to once it serves,
/// writing `READY <agent version>\n`. moat-vmm forwards the connection to
/// the Unix socket `<vsock uds>_<port>`, so a host listening there learns the
/// agent is up without polling it.
pub const AGENT_READY_VSOCK_PORT: u32 = 1025;

/// Guest I/O port the agent writes [`GUEST_EXIT_POWEROFF`] to just before it
/// reboots the guest, so the VMM can tell a clean poweroff from a reboot or a
/// kernel panic (both of which reset the guest through the i8042).
pub const GUEST_EXIT_PORT: u16 = 0x0510;

/// Value written to [`GUEST_EXIT_PORT`]: the guest is powering off cleanly.
pub const GUEST_EXIT_POWEROFF: u8 = 0x00;

/// Directory of the guest holding the pod's shared namespaces, one file per
/// type (`ipc`, `uts`, `pid`); a container joins one by naming its path in
/// the OCI spec's `linux.namespaces[].path`.
pub const SANDBOX_NS_DIR: &str = "/run/moat/sandbox/ns";

/// Kernel command-line key naming the virtio-fs tag of the pod's volumes
/// (`moat.volumes=TAG`): the agent mounts that device at [`VOLUMES_DIR`]
/// at boot.
pub const CMDLINE_VOLUMES_KEY: &str = "moat.volumes";

/// Where the guest mounts the pod's volumes, shared live from the host over
/// virtio-fs.
pub const VOLUMES_DIR: &str = "/run/moat/volumes";

/// Kernel command-line key the agent reads to learn test-only behaviour
/// (`moat.test=poweroff`: power off right after boot, for boot benchmarks).
pub const CMDLINE_TEST_KEY: &str = "moat.test";

/// The Linux namespace a pod sysctl belongs to (`"ipc"`, `"uts"` or
/// `"net"`), as runc and kubelet classify them; `None` for a sysctl that is
/// not namespaced, which a pod may not set.
pub fn sysctl_namespace(key: &str) -> Option<&'static str> {
    const IPC: [&str; 8] = [
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
    ];
    let key = key.replace('/', ".");
    if IPC.contains(&key.as_str()) || key.starts_with("fs.mqueue.") {
        Some("ipc")
    } else if key == "kernel.hostname" || key == "kernel.domainname" {
        Some("uts")
    } else if key.starts_with("net.") {
        Some("net")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sysctls_are_classified_by_namespace() {
        use super::sysctl_namespace as ns;
        assert_eq!(ns("kernel.shm_rmid_forced"), Some("ipc"));
        assert_eq!(ns("fs.mqueue.msg_max"), Some("ipc"));
        assert_eq!(ns("kernel/msgmax"), Some("ipc"));
        assert_eq!(ns("net.ipv4.ip_forward"), Some("net"));
        assert_eq!(ns("kernel.domainname"), Some("uts"));
        assert_eq!(ns("kernel.pid_max"), None);
        assert_eq!(ns("vm.overcommit_memory"), None);
        assert_eq!(ns("kernel.shm_next_id"), None);
    }
}

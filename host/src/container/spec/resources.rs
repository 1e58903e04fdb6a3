//! cgroup limits from the CRI resources.

use moat_proto::cri::LinuxContainerResources;
use oci_spec::runtime::{LinuxCpu, LinuxMemory, LinuxResources};

/// OCI cgroup limits from CRI resources (CreateContainer and
/// UpdateContainerResources).
pub fn resources(r: &LinuxContainerResources) -> LinuxResources {
    let mut res = LinuxResources::default();
    let mut cpu = LinuxCpu::default();
    if r.cpu_shares > 0 {
        cpu.set_shares(Some(r.cpu_shares as u64));
    }
    if r.cpu_quota > 0 {
        cpu.set_quota(Some(r.cpu_quota));
    }
    if r.cpu_period > 0 {
        cpu.set_period(Some(r.cpu_period as u64));
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.set_cpus(Some(r.cpuset_cpus.clone()));
    }
    if !r.cpuset_mems.is_empty() {
        cpu.set_mems(Some(r.cpuset_mems.clone()));
    }
    res.set_cpu(Some(cpu));
    let mut mem = LinuxMemory::default();
    if r.memory_limit_in_bytes > 0 {
        mem.set_limit(Some(r.memory_limit_in_bytes));
        // Without a swap limit the container may not swap (kubelet's
        // default of NoSwap).
        let swap = if r.memory_swap_limit_in_bytes > 0 {
            r.memory_swap_limit_in_bytes
        } else {
            r.memory_limit_in_bytes
        };
        mem.set_swap(Some(swap));
    }
    res.set_memory(Some(mem));
    if !r.unified.is_empty() {
        res.set_unified(Some(r.unified.clone()));
    }
    res
}

//! How big a pod's VM is: the sum of the pod's limits plus the handler's
//! overhead when kubelet gives them, else the handler's defaults, and never
//! more than the handler's maximum.

use crate::config::RuntimeHandler;
use moat_proto::cri::PodSandboxConfig;

/// vCPUs and MiB for a pod.
pub fn vm_size(config: &PodSandboxConfig, handler: &RuntimeHandler) -> (u8, u64) {
    let res = config.linux.as_ref().and_then(|l| l.resources.as_ref());
    let overhead = config.linux.as_ref().and_then(|l| l.overhead.as_ref());
    let vcpus = match res {
        Some(r) if r.cpu_quota > 0 && r.cpu_period > 0 => {
            let quota =
                r.cpu_quota as u64 + overhead.map(|o| o.cpu_quota.max(0) as u64).unwrap_or(0);
            quota.div_ceil(r.cpu_period as u64) as u32
        }
        _ => handler.default_vcpus,
    };
    let memory_mib = match res {
        Some(r) if r.memory_limit_in_bytes > 0 => {
            let pod = (r.memory_limit_in_bytes as u64).div_ceil(1 << 20);
            let extra = overhead
                .map(|o| (o.memory_limit_in_bytes.max(0) as u64).div_ceil(1 << 20))
                .filter(|m| *m > 0)
                .unwrap_or(u64::from(handler.overhead_memory_mib));
            pod + extra
        }
        _ => u64::from(handler.default_memory_mib),
    };
    let vcpus = vcpus.clamp(1, handler.max_vcpus).min(u32::from(u8::MAX)) as u8;
    let memory_mib = memory_mib.clamp(64, u64::from(handler.max_memory_mib));
    (vcpus, memory_mib)
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_proto::cri::{LinuxContainerResources, LinuxPodSandboxConfig};

    fn pod(quota: i64, period: i64, mem: i64) -> PodSandboxConfig {
        PodSandboxConfig {
            linux: Some(LinuxPodSandboxConfig {
                resources: Some(LinuxContainerResources {
                    cpu_quota: quota,
                    cpu_period: period,
                    memory_limit_in_bytes: mem,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_without_limits() {
        let h = RuntimeHandler::default();
        assert_eq!(vm_size(&PodSandboxConfig::default(), &h), (1, 256));
    }

    #[test]
    fn limits_plus_overhead_clamped() {
        let h = RuntimeHandler::default();
        // 1.5 CPUs → 2 vCPUs; 512 MiB + 64 MiB overhead.
        assert_eq!(vm_size(&pod(150_000, 100_000, 512 << 20), &h), (2, 576));
        // Far over the maximum.
        assert_eq!(vm_size(&pod(100_000_000, 100_000, 1 << 50), &h), (8, 16384));
    }
}

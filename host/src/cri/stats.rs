//! Pod sandbox stats from the host side of the VM: the VMM process's CPU
//! time and resident memory (guest memory the guest has touched included),
//! or a native pod's cgroup, with each running container's usage from its
//! agent's cgroups.

use crate::container::ContainerRecord;
use crate::cri::{status_from_pod_error, Daemon};
use crate::pod::SandboxRecord;
use moat_proto::cri::*;
use tonic::Status;

/// (cpu ns, rss bytes, threads) of a live process.
fn process_usage(pid: u32) -> Option<(u64, u64, u64)> {
    let stat = crate::procfs::Stat::of(pid)?;
    let (ticks, threads) = (stat.cpu_ticks, stat.threads);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Some((ticks * 1_000_000_000 / hz.max(1), rss_kib * 1024, threads))
}

/// (cpu ns, memory bytes, processes, memory limit) of a native pod's
/// cgroup (its holder and containers), from cgroup v2's files.
fn cgroup_usage(dir: &std::path::Path) -> Option<(u64, u64, u64, Option<u64>)> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    let cpu_us: u64 = read("cpu.stat")?
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())?;
    let mem: u64 = read("memory.current")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let procs: u64 = read("pids.current")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let limit = read("memory.max").and_then(|v| v.trim().parse().ok());
    Some((cpu_us * 1000, mem, procs, limit))
}

/// A sandbox's stats: a VM pod's from its VMM process, a native pod's
/// from its cgroup.
pub fn sandbox_stats(rec: &SandboxRecord) -> PodSandboxStats {
    let ts = crate::clock::now_ns();
    let usage = match (rec.kind, &rec.vmm_cgroup) {
        (crate::config::HandlerKind::Oci, Some(rel)) => {
            cgroup_usage(&std::path::Path::new(crate::vm::cgroup::CGROUP_ROOT).join(rel))
                .map(|(cpu, mem, procs, limit)| (cpu, mem, procs, limit.unwrap_or(0)))
        }
        _ => rec
            .vm
            .filter(|v| v.is_alive())
            .and_then(|v| process_usage(v.pid))
            .map(|(cpu, rss, threads)| (cpu, rss, threads, rec.memory_mib << 20)),
    };
    let (cpu, mem, procs) = match usage {
        Some((cpu_ns, rss, threads, limit)) => (
            Some(CpuUsage {
                timestamp: ts,
                usage_core_nano_seconds: Some(UInt64Value { value: cpu_ns }),
                usage_nano_cores: None,
            }),
            Some(MemoryUsage {
                timestamp: ts,
                working_set_bytes: Some(UInt64Value { value: rss }),
                rss_bytes: Some(UInt64Value { value: rss }),
                usage_bytes: Some(UInt64Value { value: rss }),
                available_bytes: (limit > 0).then(|| UInt64Value {
                    value: limit.saturating_sub(rss),
                }),
                ..Default::default()
            }),
            Some(ProcessUsage {
                timestamp: ts,
                process_count: Some(UInt64Value { value: threads }),
            }),
        ),
        None => (None, None, None),
    };
    PodSandboxStats {
        attributes: Some(PodSandboxAttributes {
            id: rec.id.clone(),
            metadata: Some(rec.metadata()),
            labels: rec.config.labels.clone(),
            annotations: rec.config.annotations.clone(),
        }),
        linux: Some(LinuxPodSandboxStats {
            cpu,
            memory: mem,
            network: None,
            process: procs,
            containers: Vec::new(),
        }),
        windows: None,
    }
}

/// A sandbox's stats with those of its running containers among
/// `containers` (from the guest).
async fn with_containers(
    d: &Daemon,
    rec: &SandboxRecord,
    containers: &[ContainerRecord],
) -> PodSandboxStats {
    let mut stats = sandbox_stats(rec);
    if let Some(linux) = stats.linux.as_mut() {
        linux.containers = crate::cri::container::pod_container_stats(d, rec, containers).await;
    }
    stats
}

/// Every container record, for the pods' container stats; a store that
/// cannot be read leaves them out rather than failing the pod stats.
fn all_containers(d: &Daemon) -> Vec<ContainerRecord> {
    d.containers.list().unwrap_or_default()
}

/// PodSandboxStats.
pub async fn pod_sandbox_stats(
    d: &Daemon,
    req: PodSandboxStatsRequest,
) -> Result<PodSandboxStatsResponse, Status> {
    let rec = d
        .pods
        .get(&req.pod_sandbox_id)
        .map_err(status_from_pod_error)?;
    Ok(PodSandboxStatsResponse {
        stats: Some(with_containers(d, &rec, &all_containers(d)).await),
    })
}

/// ListPodSandboxStats.
pub async fn list_pod_sandbox_stats(
    d: &Daemon,
    req: ListPodSandboxStatsRequest,
) -> Result<ListPodSandboxStatsResponse, Status> {
    let filter = req.filter.unwrap_or_default();
    let pods: Vec<SandboxRecord> = d
        .pods
        .list()
        .map_err(status_from_pod_error)?
        .into_iter()
        .filter(|r| filter.id.is_empty() || r.id.starts_with(&filter.id))
        .filter(|r| {
            filter
                .label_selector
                .iter()
                .all(|(k, v)| r.config.labels.get(k) == Some(v))
        })
        .collect();
    let containers = all_containers(d);
    // All pods at once: each guest answers within its own deadline.
    let stats =
        futures_util::future::join_all(pods.iter().map(|rec| with_containers(d, rec, &containers)))
            .await;
    Ok(ListPodSandboxStatsResponse { stats })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_usage() {
        let (cpu, rss, threads) = process_usage(std::process::id()).unwrap();
        assert!(rss > 0 && threads >= 1);
        let _ = cpu;
    }
}

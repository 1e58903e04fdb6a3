//! cAdvisor-style metrics through CRI (ListMetricDescriptors and
//! ListPodSandboxMetrics), for kubelet's CRI-based stats and its
//! `/metrics/cadvisor`: cAdvisor's metric names and labels (`container`,
//! `id`, `image`, `name`, `namespace`, `pod`, plus `interface` for the
//! network), from each running container's cgroup in the guest and, for the
//! pod's network, the counters of the pod interface in its network
//! namespace on the host (reported for the `POD` container, as cAdvisor
//! reports the sandbox's network).
//!
//! CRI carries each value as an unsigned integer that kubelet exports as
//! is, so `*_seconds_total` counters are whole seconds.

use crate::container::{ContainerRecord, ContainerState};
use crate::cri::Daemon;
use crate::pod::{SandboxRecord, SandboxState};
use moat_proto::cri::*;
use tonic::Status;

/// The labels every container metric has, in this order.
const LABELS: [&str; 6] = ["container", "id", "image", "name", "namespace", "pod"];

/// A metric moat serves: name, help, type, and whether it is per network
/// interface.
struct Def {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    per_interface: bool,
}

const fn def(name: &'static str, help: &'static str, kind: MetricType) -> Def {
    Def {
        name,
        help,
        kind,
        per_interface: false,
    }
}

const fn net(name: &'static str, help: &'static str) -> Def {
    Def {
        name,
        help,
        kind: MetricType::Counter,
        per_interface: true,
    }
}

use MetricType::{Counter, Gauge};

/// Every metric moat serves.
const DEFS: &[Def] = &[
    def(
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed in seconds.",
        Counter,
    ),
    def(
        "container_cpu_user_seconds_total",
        "Cumulative user cpu time consumed in seconds.",
        Counter,
    ),
    def(
        "container_cpu_system_seconds_total",
        "Cumulative system cpu time consumed in seconds.",
        Counter,
    ),
    def(
        "container_cpu_cfs_periods_total",
        "Number of elapsed enforcement period intervals.",
        Counter,
    ),
    def(
        "container_cpu_cfs_throttled_periods_total",
        "Number of throttled period intervals.",
        Counter,
    ),
    def(
        "container_cpu_cfs_throttled_seconds_total",
        "Total time duration the container has been throttled.",
        Counter,
    ),
    def(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        Gauge,
    ),
    def(
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        Gauge,
    ),
    def("container_memory_rss", "Size of RSS in bytes.", Gauge),
    def(
        "container_memory_cache",
        "Number of bytes of page cache memory.",
        Gauge,
    ),
    def(
        "container_memory_swap",
        "Container swap usage in bytes.",
        Gauge,
    ),
    def(
        "container_spec_memory_limit_bytes",
        "Memory limit for the container.",
        Gauge,
    ),
    def(
        "container_oom_events_total",
        "Count of out of memory events observed for the container.",
        Counter,
    ),
    def(
        "container_processes",
        "Number of processes running inside the container.",
        Gauge,
    ),
    def(
        "container_threads",
        "Number of threads running inside the container.",
        Gauge,
    ),
    def(
        "container_threads_max",
        "Maximum number of threads allowed inside the container, 0 if unlimited.",
        Gauge,
    ),
    def(
        "container_fs_reads_bytes_total",
        "Cumulative count of bytes read.",
        Counter,
    ),
    def(
        "container_fs_writes_bytes_total",
        "Cumulative count of bytes written.",
        Counter,
    ),
    def(
        "container_fs_reads_total",
        "Cumulative count of reads completed.",
        Counter,
    ),
    def(
        "container_fs_writes_total",
        "Cumulative count of writes completed.",
        Counter,
    ),
    def(
        "container_start_time_seconds",
        "Start time of the container since unix epoch in seconds.",
        Gauge,
    ),
    net(
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received.",
    ),
    net(
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted.",
    ),
    net(
        "container_network_receive_packets_total",
        "Cumulative count of packets received.",
    ),
    net(
        "container_network_transmit_packets_total",
        "Cumulative count of packets transmitted.",
    ),
    net(
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving.",
    ),
    net(
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting.",
    ),
    net(
        "container_network_receive_packets_dropped_total",
        "Cumulative count of packets dropped while receiving.",
    ),
    net(
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting.",
    ),
];

/// ListMetricDescriptors: every metric ListPodSandboxMetrics may carry.
pub fn descriptors() -> Vec<MetricDescriptor> {
    DEFS.iter()
        .map(|d| {
            let mut label_keys: Vec<String> = LABELS.iter().map(|s| s.to_string()).collect();
            if d.per_interface {
                label_keys.push("interface".into());
            }
            MetricDescriptor {
                name: d.name.into(),
                help: d.help.into(),
                label_keys,
            }
        })
        .collect()
}

fn metric(name: &str, labels: &[String], value: u64) -> Option<Metric> {
    let d = DEFS.iter().find(|d| d.name == name)?;
    Some(Metric {
        name: d.name.into(),
        // Gathered live.
        timestamp: 0,
        metric_type: d.kind as i32,
        label_values: labels.to_vec(),
        value: Some(UInt64Value { value }),
    })
}

const NS_PER_S: u64 = 1_000_000_000;

/// The metrics of one running container from its guest stats.
fn container_metrics(
    labels: &[String],
    started_at_ns: i64,
    stats: &moat_proto::agent::ContainerStatsResponse,
    processes: Option<u64>,
) -> Vec<Metric> {
    let cpu = stats.cpu.unwrap_or_default();
    let mem = stats.memory.unwrap_or_default();
    let pids = stats.pids.unwrap_or_default();
    let io = stats.io.unwrap_or_default();
    let limit = if mem.limit_bytes >= u64::MAX / 2 {
        0
    } else {
        mem.limit_bytes
    };
    let mut values = vec![
        ("container_cpu_usage_seconds_total", cpu.usage_ns / NS_PER_S),
        ("container_cpu_user_seconds_total", cpu.user_ns / NS_PER_S),
        (
            "container_cpu_system_seconds_total",
            cpu.system_ns / NS_PER_S,
        ),
        ("container_cpu_cfs_periods_total", cpu.nr_periods),
        (
            "container_cpu_cfs_throttled_periods_total",
            cpu.nr_throttled,
        ),
        (
            "container_cpu_cfs_throttled_seconds_total",
            cpu.throttled_ns / NS_PER_S,
        ),
        ("container_memory_usage_bytes", mem.usage_bytes),
        ("container_memory_working_set_bytes", mem.working_set_bytes),
        ("container_memory_rss", mem.rss_bytes),
        ("container_memory_cache", mem.cache_bytes),
        ("container_memory_swap", mem.swap_bytes),
        ("container_spec_memory_limit_bytes", limit),
        ("container_oom_events_total", mem.oom_kill_events),
        ("container_threads", pids.current),
        (
            "container_threads_max",
            if pids.limit >= u64::MAX / 2 {
                0
            } else {
                pids.limit
            },
        ),
        ("container_fs_reads_bytes_total", io.read_bytes),
        ("container_fs_writes_bytes_total", io.write_bytes),
        ("container_fs_reads_total", io.read_ios),
        ("container_fs_writes_total", io.write_ios),
        (
            "container_start_time_seconds",
            u64::try_from(started_at_ns).unwrap_or(0) / NS_PER_S,
        ),
    ];
    if let Some(p) = processes {
        values.push(("container_processes", p));
    }
    values
        .into_iter()
        .filter_map(|(n, v)| metric(n, labels, v))
        .collect()
}

/// Counters of one interface from a `/proc/PID/net/dev` table.
#[derive(Debug, Default, PartialEq, Eq)]
struct NetDev {
    rx_bytes: u64,
    rx_packets: u64,
    rx_errors: u64,
    rx_dropped: u64,
    tx_bytes: u64,
    tx_packets: u64,
    tx_errors: u64,
    tx_dropped: u64,
}

fn parse_net_dev(table: &str, interface: &str) -> Option<NetDev> {
    table.lines().find_map(|line| {
        let (name, rest) = line.split_once(':')?;
        if name.trim() != interface {
            return None;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|v| v.parse().ok())
            .collect::<Option<_>>()?;
        Some(NetDev {
            rx_bytes: *f.first()?,
            rx_packets: *f.get(1)?,
            rx_errors: *f.get(2)?,
            rx_dropped: *f.get(3)?,
            tx_bytes: *f.get(8)?,
            tx_packets: *f.get(9)?,
            tx_errors: *f.get(10)?,
            tx_dropped: *f.get(11)?,
        })
    })
}

/// The pod's network counters: its CNI interface, seen from the VMM, which
/// runs in the pod's network namespace.
fn pod_network_metrics(sb: &SandboxRecord) -> Vec<Metric> {
    let Some(vm) = sb.vm.filter(|v| v.is_alive()) else {
        return Vec::new();
    };
    let iface = crate::network::POD_IFNAME;
    let Some(n) = std::fs::read_to_string(format!("/proc/{}/net/dev", vm.pid))
        .ok()
        .and_then(|t| parse_net_dev(&t, iface))
    else {
        return Vec::new();
    };
    let md = sb.metadata();
    let labels = vec![
        "POD".to_string(),
        sb.id.clone(),
        String::new(),
        sb.id.clone(),
        md.namespace,
        md.name,
        iface.to_string(),
    ];
    [
        ("container_network_receive_bytes_total", n.rx_bytes),
        ("container_network_transmit_bytes_total", n.tx_bytes),
        ("container_network_receive_packets_total", n.rx_packets),
        ("container_network_transmit_packets_total", n.tx_packets),
        ("container_network_receive_errors_total", n.rx_errors),
        ("container_network_transmit_errors_total", n.tx_errors),
        (
            "container_network_receive_packets_dropped_total",
            n.rx_dropped,
        ),
        (
            "container_network_transmit_packets_dropped_total",
            n.tx_dropped,
        ),
    ]
    .into_iter()
    .filter_map(|(name, v)| metric(name, &labels, v))
    .collect()
}

/// ListPodSandboxMetrics: every ready pod with its running containers,
/// their guests asked all at once (each within its deadline).
pub async fn list_pod_sandbox_metrics(d: &Daemon) -> Result<ListPodSandboxMetricsResponse, Status> {
    let pods = d.pods.list().map_err(crate::cri::status_from_pod_error)?;
    let containers = d.containers.list().unwrap_or_default();
    let ready = pods.into_iter().filter(|p| p.state == SandboxState::Ready);
    let pod_metrics = futures_util::future::join_all(ready.map(|sb| {
        let containers = &containers;
        async move {
            let running = containers
                .iter()
                .filter(|c| c.sandbox_id == sb.id && c.state == ContainerState::Running);
            let per_container = futures_util::future::join_all(
                running.map(|rec| container_metrics_of(d, &sb, rec)),
            )
            .await
            .into_iter()
            .flatten()
            .collect();
            PodSandboxMetrics {
                pod_sandbox_id: sb.id.clone(),
                metrics: pod_network_metrics(&sb),
                container_metrics: per_container,
            }
        }
    }))
    .await;
    Ok(ListPodSandboxMetricsResponse { pod_metrics })
}

/// One running container's metrics, or None when its guest cannot tell.
async fn container_metrics_of(
    d: &Daemon,
    sb: &SandboxRecord,
    rec: &ContainerRecord,
) -> Option<ContainerMetrics> {
    let usage = match d.containers.usage(rec, sb).await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(id = %rec.id, "container metrics: {e}");
            return None;
        }
    };
    let processes = d.containers.process_count(rec, sb).await.ok();
    let md = sb.metadata();
    let name = rec
        .config
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let labels = vec![
        name,
        rec.id.clone(),
        rec.image_ref.clone(),
        rec.id.clone(),
        md.namespace.clone(),
        md.name.clone(),
    ];
    Some(ContainerMetrics {
        container_id: rec.id.clone(),
        metrics: container_metrics(&labels, rec.started_at, &usage.stats, processes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_has_one_descriptor_with_matching_labels() {
        let ds = descriptors();
        assert_eq!(ds.len(), DEFS.len());
        let mut names: Vec<&str> = ds.iter().map(|d| d.name.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DEFS.len(), "duplicate metric names");
        let labels: Vec<String> = LABELS.iter().map(|s| s.to_string()).collect();
        let stats = moat_proto::agent::ContainerStatsResponse {
            cpu: Some(moat_proto::agent::CpuStats {
                usage_ns: 3_500_000_000,
                ..Default::default()
            }),
            memory: Some(moat_proto::agent::MemoryStats {
                working_set_bytes: 4096,
                limit_bytes: u64::MAX,
                ..Default::default()
            }),
            ..Default::default()
        };
        let ms = container_metrics(&labels, 5 * NS_PER_S as i64, &stats, Some(2));
        for m in &ms {
            let d = ds.iter().find(|d| d.name == m.name).unwrap();
            assert_eq!(d.label_keys.len(), m.label_values.len(), "{}", m.name);
        }
        let get = |n: &str| {
            ms.iter()
                .find(|m| m.name == n)
                .and_then(|m| m.value)
                .map(|v| v.value)
        };
        assert_eq!(get("container_cpu_usage_seconds_total"), Some(3));
        assert_eq!(get("container_memory_working_set_bytes"), Some(4096));
        assert_eq!(get("container_spec_memory_limit_bytes"), Some(0));
        assert_eq!(get("container_processes"), Some(2));
        assert_eq!(get("container_start_time_seconds"), Some(5));
    }

    #[test]
    fn net_dev_rows_parse() {
        let table = "Inter-|   Receive                                                |  Transmit\n \
             face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
             lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0\n  \
             eth0:    1000      10    1    2    0     0          0         0     2000      20    3    4    0     0       0          0\n";
        assert_eq!(
            parse_net_dev(table, "eth0"),
            Some(NetDev {
                rx_bytes: 1000,
                rx_packets: 10,
                rx_errors: 1,
                rx_dropped: 2,
                tx_bytes: 2000,
                tx_packets: 20,
                tx_errors: 3,
                tx_dropped: 4
            })
        );
        assert_eq!(parse_net_dev(table, "eth1"), None);
    }
}

//! The CNI capability arguments a pod's CRI config maps to, as containerd
//! passes them: `portMappings` (hostPort entries), `bandwidth` (from the
//! `kubernetes.io/{ingress,egress}-bandwidth` annotations), `dns` (the pod's
//! DNS config), `cgroupPath` (the pod's cgroup parent) and `ipRanges` (the
//! node's pod CIDRs kubelet sends with UpdateRuntimeConfig). A plugin gets
//! those it declares in its `capabilities`.

use moat_proto::cri::{PodSandboxConfig, Protocol};
use serde_json::{json, Map, Value};

/// Annotations kubelet sets for the bandwidth plugin.
const INGRESS: &str = "kubernetes.io/ingress-bandwidth";
const EGRESS: &str = "kubernetes.io/egress-bandwidth";

/// The capability arguments for `config` on a node whose pod CIDRs are
/// `pod_cidrs`; an unreadable bandwidth annotation is an error naming it.
pub fn capability_args(
    config: &PodSandboxConfig,
    pod_cidrs: &[String],
) -> Result<Map<String, Value>, String> {
    let mut args = Map::new();
    if !pod_cidrs.is_empty() {
        // One range set per CIDR (dual-stack nodes have one per family).
        let ranges: Vec<Value> = pod_cidrs.iter().map(|c| json!([{ "subnet": c }])).collect();
        args.insert("ipRanges".into(), Value::Array(ranges));
    }
    let ports: Vec<Value> = config
        .port_mappings
        .iter()
        .filter(|p| p.host_port > 0)
        .map(|p| {
            let protocol = match Protocol::try_from(p.protocol) {
                Ok(Protocol::Udp) => "udp",
                Ok(Protocol::Sctp) => "sctp",
                _ => "tcp",
            };
            let mut m = json!({
                "hostPort": p.host_port,
                "containerPort": p.container_port,
                "protocol": protocol,
            });
            if !p.host_ip.is_empty() {
                m["hostIP"] = json!(p.host_ip);
            }
            m
        })
        .collect();
    if !ports.is_empty() {
        args.insert("portMappings".into(), Value::Array(ports));
    }
    let rate = |key: &str| -> Result<Option<u64>, String> {
        config
            .annotations
            .get(key)
            .map(|q| quantity(q).map_err(|e| format!("config.annotations[{key:?}]: {e}")))
            .transpose()
    };
    let (ingress, egress) = (rate(INGRESS)?, rate(EGRESS)?);
    if ingress.is_some() || egress.is_some() {
        let mut bw = Map::new();
        if let Some(r) = ingress {
            bw.insert("ingressRate".into(), json!(r));
            bw.insert("ingressBurst".into(), json!(u32::MAX));
        }
        if let Some(r) = egress {
            bw.insert("egressRate".into(), json!(r));
            bw.insert("egressBurst".into(), json!(u32::MAX));
        }
        args.insert("bandwidth".into(), Value::Object(bw));
    }
    if let Some(dns) = &config.dns_config {
        args.insert(
            "dns".into(),
            json!({"servers": dns.servers, "searches": dns.searches, "options": dns.options}),
        );
    }
    if let Some(parent) = config
        .linux
        .as_ref()
        .map(|l| &l.cgroup_parent)
        .filter(|p| !p.is_empty())
    {
        args.insert("cgroupPath".into(), json!(parent));
    }
    Ok(args)
}

/// Parses kubelet's `pod_cidr` (one CIDR, or two comma-separated for
/// dual-stack) into its CIDRs; empty means none.
pub fn parse_pod_cidrs(text: &str) -> Result<Vec<String>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            let (ip, prefix) = c
                .split_once('/')
                .ok_or_else(|| format!("{c:?} is not a CIDR like 10.244.1.0/24"))?;
            let ip: std::net::IpAddr = ip
                .parse()
                .map_err(|_| format!("{c:?}: {ip:?} is not an IP address"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            match prefix.parse::<u8>() {
                Ok(p) if p <= max => Ok(c.to_string()),
                _ => Err(format!("{c:?}: prefix must be 0..={max}")),
            }
        })
        .collect()
}

/// A Kubernetes quantity (`10M`, `1Gi`, `500k`, `1e6`) as a whole number.
fn quantity(q: &str) -> Result<u64, String> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let mult: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        s if s.starts_with(['e', 'E']) => s[1..]
            .parse::<i32>()
            .map(|e| 10f64.powi(e))
            .map_err(|_| format!("{q:?} is not a quantity"))?,
        _ => return Err(format!("{q:?} is not a quantity like 10M or 1Gi")),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{q:?} is not a quantity like 10M or 1Gi"))?;
    let v = (n * mult).ceil();
    if !(1.0..=1e18).contains(&v) {
        return Err(format!("{q:?} is out of range"));
    }
    Ok(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_proto::cri::{DnsConfig, LinuxPodSandboxConfig, PortMapping};

    #[test]
    fn kubelet_fields_become_capability_args() {
        let config = PodSandboxConfig {
            port_mappings: vec![
                PortMapping {
                    protocol: Protocol::Tcp as i32,
                    container_port: 80,
                    host_port: 12000,
                    host_ip: String::new(),
                },
                PortMapping {
                    protocol: Protocol::Udp as i32,
                    container_port: 53,
                    host_port: 5353,
                    host_ip: "127.0.0.1".into(),
                },
                // No hostPort: not a mapping.
                PortMapping {
                    protocol: Protocol::Tcp as i32,
                    container_port: 8080,
                    host_port: 0,
                    host_ip: String::new(),
                },
            ],
            annotations: [(INGRESS.to_string(), "10M".to_string())].into(),
            dns_config: Some(DnsConfig {
                servers: vec!["10.96.0.10".into()],
                searches: vec!["svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            }),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: "/kubepods/pod1".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let cidrs = parse_pod_cidrs("10.244.1.0/24, fd00:10:244:1::/64").unwrap();
        let a = Value::Object(capability_args(&config, &cidrs).unwrap());
        assert_eq!(
            a["portMappings"],
            json!([{"hostPort": 12000, "containerPort": 80, "protocol": "tcp"},
                   {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}])
        );
        assert_eq!(a["bandwidth"]["ingressRate"], 10_000_000);
        assert!(a["bandwidth"].get("egressRate").is_none());
        assert_eq!(a["dns"]["servers"], json!(["10.96.0.10"]));
        assert_eq!(a["cgroupPath"], "/kubepods/pod1");
        assert_eq!(
            a["ipRanges"],
            json!([[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]])
        );
        assert!(capability_args(&PodSandboxConfig::default(), &[])
            .unwrap()
            .is_empty());
        assert_eq!(parse_pod_cidrs(""), Ok(vec![]));
        assert!(parse_pod_cidrs("10.0.0.0/33").is_err());
        assert!(parse_pod_cidrs("nope/8").is_err());
    }

    #[test]
    fn quantities_parse_as_kubernetes_writes_them() {
        assert_eq!(quantity("1Gi"), Ok(1 << 30));
        assert_eq!(quantity("500k"), Ok(500_000));
        assert_eq!(quantity("1.5M"), Ok(1_500_000));
        assert_eq!(quantity("1e6"), Ok(1_000_000));
        assert!(quantity("fast").is_err());
        assert!(quantity("-1M").is_err());
    }
}

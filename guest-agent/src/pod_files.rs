//! Pod-level files: /etc/hosts, /etc/resolv.conf, /etc/hostname contents
//! from the CRI sandbox config, and the checks on their inputs.

use moat_proto::agent::{DnsConfig, HostEntry};
use std::net::IpAddr;

/// A pod input that is not acceptable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {reason}")]
pub struct InputError {
    /// Request field.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> InputError {
    InputError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Checks a hostname: 1..=64 bytes of dot-separated RFC 1123 labels.
pub fn check_hostname(field: &str, h: &str) -> Result<(), InputError> {
    if h.is_empty() || h.len() > 64 {
        return Err(bad(field, "must be 1..=64 bytes"));
    }
    let ok = h.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    });
    if ok {
        Ok(())
    } else {
        Err(bad(field, format!("{h:?} is not an RFC 1123 hostname")))
    }
}

fn check_word(field: &str, w: &str) -> Result<(), InputError> {
    if w.is_empty()
        || w.len() > 253
        || w.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '#')
    {
        return Err(bad(
            field,
            format!("{w:?} is empty, too long or has spaces"),
        ));
    }
    Ok(())
}

/// /etc/hosts for the pod.
pub fn hosts_file(hostname: &str, extra: &[HostEntry]) -> Result<String, InputError> {
    let mut s = String::from(
        "# Kubernetes-managed hosts file (moat).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    if !hostname.is_empty() {
        s.push_str(&format!("127.0.1.1\t{hostname}\n"));
    }
    for (i, e) in extra.iter().enumerate() {
        let ip: IpAddr = e.ip.parse().map_err(|_| {
            bad(
                format!("hosts[{i}].ip"),
                format!("{:?} is not an IP address", e.ip),
            )
        })?;
        if e.hostnames.is_empty() {
            return Err(bad(format!("hosts[{i}].hostnames"), "must not be empty"));
        }
        for (j, h) in e.hostnames.iter().enumerate() {
            check_word(&format!("hosts[{i}].hostnames[{j}]"), h)?;
        }
        s.push_str(&format!("{ip}\t{}\n", e.hostnames.join("\t")));
    }
    Ok(s)
}

/// /etc/resolv.conf for the pod.
pub fn resolv_conf(dns: &DnsConfig) -> Result<String, InputError> {
    let mut s = String::new();
    for (i, srv) in dns.servers.iter().enumerate() {
        let ip: IpAddr = srv.parse().map_err(|_| {
            bad(
                format!("dns.servers[{i}]"),
                format!("{srv:?} is not an IP address"),
            )
        })?;
        s.push_str(&format!("nameserver {ip}\n"));
    }
    if !dns.searches.is_empty() {
        for (i, d) in dns.searches.iter().enumerate() {
            check_word(&format!("dns.searches[{i}]"), d)?;
        }
        s.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    if !dns.options.is_empty() {
        for (i, o) in dns.options.iter().enumerate() {
            check_word(&format!("dns.options[{i}]"), o)?;
        }
        s.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_from_cri_config() {
        let dns = DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(&dns).unwrap(),
            "nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local\noptions ndots:5\n"
        );
        let hosts = hosts_file(
            "web-0",
            &[HostEntry {
                ip: "10.0.0.5".into(),
                hostnames: vec!["db".into(), "db.local".into()],
            }],
        )
        .unwrap();
        assert!(hosts.contains("127.0.1.1\tweb-0\n"));
        assert!(hosts.ends_with("10.0.0.5\tdb\tdb.local\n"));
    }

    #[test]
    fn bad_inputs_name_the_field() {
        let dns = DnsConfig {
            servers: vec!["not-an-ip".into()],
            ..Default::default()
        };
        assert_eq!(resolv_conf(&dns).unwrap_err().field, "dns.servers[0]");
        let dns = DnsConfig {
            searches: vec!["a b".into()],
            ..Default::default()
        };
        assert_eq!(resolv_conf(&dns).unwrap_err().field, "dns.searches[0]");
        let e = hosts_file(
            "h",
            &[HostEntry {
                ip: "1.2.3.4".into(),
                hostnames: vec!["x\ny".into()],
            }],
        )
        .unwrap_err();
        assert_eq!(e.field, "hosts[0].hostnames[0]");
        assert!(check_hostname("hostname", "ok-name.example").is_ok());
        for h in ["", "-bad", "bad_", "a..b", &"x".repeat(65)] {
            assert!(check_hostname("hostname", h).is_err(), "{h}");
        }
    }
}

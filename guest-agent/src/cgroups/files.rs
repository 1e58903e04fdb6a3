//! OCI `LinuxResources` → cgroup v2 interface files.
//!
//! Pure translation (no I/O), so every conversion is unit-tested. Values
//! follow runc's conversions from the cgroup v1 oriented OCI fields.

use oci_spec::runtime::LinuxResources;

/// A resource value that cannot be expressed or is out of range.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("resources.{field}: {reason}")]
pub struct ResourceError {
    /// Dotted OCI field name, e.g. `memory.limit`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

fn err(field: &str, reason: impl Into<String>) -> ResourceError {
    ResourceError {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// Converts cgroup v1 `cpu.shares` (2..=262144) to v2 `cpu.weight` (1..=10000).
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
}

/// Converts a v1 blkio weight (10..=1000) to v2 `io.weight` (1..=10000).
pub fn blkio_to_io_weight(w: u16) -> u64 {
    let w = u64::from(w.clamp(10, 1000));
    1 + ((w - 10) * 9999) / 990
}

fn limit_value(v: i64) -> String {
    if v < 0 {
        "max".to_string()
    } else {
        v.to_string()
    }
}

/// The files to write, in order, for `res`. File names are relative to the
/// container's cgroup directory.
pub fn resource_files(res: &LinuxResources) -> Result<Vec<(String, String)>, ResourceError> {
    let mut out: Vec<(String, String)> = Vec::new();
    if let Some(cpu) = res.cpu() {
        if let Some(shares) = cpu.shares() {
            if shares > 262_144 {
                return Err(err("cpu.shares", "must be <= 262144"));
            }
            out.push(("cpu.weight".into(), shares_to_weight(shares).to_string()));
        }
        let period = cpu.period().unwrap_or(100_000);
        if !(1000..=1_000_000).contains(&period) {
            return Err(err("cpu.period", "must be in 1000..=1000000 µs"));
        }
        match cpu.quota() {
            Some(q) if q > 0 => {
                if q < 1000 {
                    return Err(err("cpu.quota", "must be >= 1000 µs or <= 0 for no limit"));
                }
                out.push(("cpu.max".into(), format!("{q} {period}")));
            }
            Some(_) => out.push(("cpu.max".into(), format!("max {period}"))),
            None if cpu.period().is_some() => out.push(("cpu.max".into(), format!("max {period}"))),
            None => {}
        }
        if let Some(idle) = cpu.idle() {
            if !(0..=1).contains(&idle) {
                return Err(err("cpu.idle", "must be 0 or 1"));
            }
            out.push(("cpu.idle".into(), idle.to_string()));
        }
        if let Some(cpus) = cpu.cpus().as_deref().filter(|s| !s.is_empty()) {
            check_cpu_list("cpu.cpus", cpus)?;
            out.push(("cpuset.cpus".into(), cpus.to_string()));
        }
        if let Some(mems) = cpu.mems().as_deref().filter(|s| !s.is_empty()) {
            check_cpu_list("cpu.mems", mems)?;
            out.push(("cpuset.mems".into(), mems.to_string()));
        }
    }
    if let Some(mem) = res.memory() {
        if let Some(low) = mem.reservation() {
            out.push(("memory.low".into(), limit_value(low)));
        }
        let limit = mem.limit();
        if let Some(l) = limit {
            if (0..4096).contains(&l) && l != 0 {
                return Err(err("memory.limit", "must be at least 4096 bytes"));
            }
            if l != 0 {
                out.push(("memory.max".into(), limit_value(l)));
            }
        }
        if let Some(swap) = mem.swap() {
            // OCI swap is memory+swap; v2 swap.max is swap alone.
            let v = match (swap, limit) {
                (s, _) if s < 0 => "max".to_string(),
                (s, Some(l)) if l > 0 => {
                    if s < l {
                        return Err(err(
                            "memory.swap",
                            "must be >= memory.limit (it counts memory + swap)",
                        ));
                    }
                    (s - l).to_string()
                }
                (0, _) => "0".to_string(),
                _ => {
                    return Err(err(
                        "memory.swap",
                        "needs memory.limit (it counts memory + swap)",
                    ))
                }
            };
            out.push(("memory.swap.max".into(), v));
        }
    }
    if let Some(pids) = res.pids() {
        let l = pids.limit();
        out.push((
            "pids.max".into(),
            if l <= 0 { "max".into() } else { l.to_string() },
        ));
    }
    if let Some(bio) = res.block_io() {
        if let Some(w) = bio.weight() {
            if !(10..=1000).contains(&w) {
                return Err(err("blockIO.weight", "must be in 10..=1000"));
            }
            out.push(("io.weight".into(), blkio_to_io_weight(w).to_string()));
        }
        if let Some(devs) = bio.weight_device() {
            for (i, d) in devs.iter().enumerate() {
                if let Some(w) = d.weight() {
                    if !(10..=1000).contains(&w) {
                        return Err(err(
                            &format!("blockIO.weightDevice[{i}].weight"),
                            "must be in 10..=1000",
                        ));
                    }
                    out.push((
                        "io.weight".into(),
                        format!("{}:{} {}", d.major(), d.minor(), blkio_to_io_weight(w)),
                    ));
                }
            }
        }
        let throttles = [
            ("rbps", bio.throttle_read_bps_device()),
            ("wbps", bio.throttle_write_bps_device()),
            ("riops", bio.throttle_read_iops_device()),
            ("wiops", bio.throttle_write_iops_device()),
        ];
        for (key, devs) in throttles {
            for d in devs.iter().flatten() {
                if d.major() < 0 || d.minor() < 0 {
                    return Err(err("blockIO.throttle", "device numbers must be >= 0"));
                }
                let rate = if d.rate() == 0 {
                    "max".to_string()
                } else {
                    d.rate().to_string()
                };
                out.push((
                    "io.max".into(),
                    format!("{}:{} {key}={rate}", d.major(), d.minor()),
                ));
            }
        }
    }
    for (i, h) in res.hugepage_limits().iter().flatten().enumerate() {
        let size = h.page_size();
        if size.is_empty() || !size.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(err(
                &format!("hugepageLimits[{i}].pageSize"),
                "must be like 2MB",
            ));
        }
        out.push((format!("hugetlb.{size}.max"), h.limit().to_string()));
    }
    if let Some(unified) = res.unified() {
        let mut keys: Vec<_> = unified.keys().collect();
        keys.sort();
        for k in keys {
            let valid = k.contains('.')
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
                && !k.starts_with('.')
                && !k.starts_with("cgroup.");
            if !valid {
                return Err(err(
                    &format!("unified[{k:?}]"),
                    "must name a controller file like memory.high (no '/', not cgroup.*)",
                ));
            }
            let v = &unified[k];
            if v.contains('\0') || v.len() > 4096 {
                return Err(err(&format!("unified[{k:?}]"), "value too long or has NUL"));
            }
            out.push((k.clone(), v.clone()));
        }
    }
    Ok(out)
}

/// Checks a cpuset list like `0-3,5`.
fn check_cpu_list(field: &str, s: &str) -> Result<(), ResourceError> {
    let ok = s.split(',').all(|part| {
        let mut it = part.splitn(2, '-');
        let a = it.next().map(|x| x.parse::<u32>().is_ok()).unwrap_or(false);
        let b = it.next().map(|x| x.parse::<u32>().is_ok()).unwrap_or(true);
        a && b
    });
    if ok {
        Ok(())
    } else {
        Err(err(field, format!("{s:?} is not a list like 0-3,5")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(json: &str) -> LinuxResources {
        serde_json::from_str(json).unwrap()
    }

    fn get<'a>(files: &'a [(String, String)], k: &str) -> Vec<&'a str> {
        files
            .iter()
            .filter(|(f, _)| f == k)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    #[test]
    fn cpu_conversions() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1024), 39);
        let f = resource_files(&res(
            r#"{"cpu":{"shares":1024,"quota":50000,"period":100000,"cpus":"0-1","mems":"0"}}"#,
        ))
        .unwrap();
        assert_eq!(get(&f, "cpu.weight"), ["39"]);
        assert_eq!(get(&f, "cpu.max"), ["50000 100000"]);
        assert_eq!(get(&f, "cpuset.cpus"), ["0-1"]);
        assert_eq!(get(&f, "cpuset.mems"), ["0"]);
        let f = resource_files(&res(r#"{"cpu":{"quota":-1}}"#)).unwrap();
        assert_eq!(get(&f, "cpu.max"), ["max 100000"]);
        let e = resource_files(&res(r#"{"cpu":{"cpus":"0-x"}}"#)).unwrap_err();
        assert_eq!(e.field, "cpu.cpus");
        assert!(resource_files(&res(r#"{"cpu":{"period":5}}"#)).is_err());
    }

    #[test]
    fn memory_conversions() {
        let f = resource_files(&res(
            r#"{"memory":{"limit":67108864,"swap":134217728,"reservation":1048576}}"#,
        ))
        .unwrap();
        assert_eq!(get(&f, "memory.max"), ["67108864"]);
        assert_eq!(get(&f, "memory.swap.max"), ["67108864"]);
        assert_eq!(get(&f, "memory.low"), ["1048576"]);
        let f = resource_files(&res(r#"{"memory":{"limit":-1,"swap":-1}}"#)).unwrap();
        assert_eq!(get(&f, "memory.max"), ["max"]);
        assert_eq!(get(&f, "memory.swap.max"), ["max"]);
        let e = resource_files(&res(r#"{"memory":{"limit":100000,"swap":10}}"#)).unwrap_err();
        assert_eq!(e.field, "memory.swap");
        assert!(resource_files(&res(r#"{"memory":{"limit":100}}"#)).is_err());
    }

    #[test]
    fn pids_io_hugetlb_unified() {
        let f = resource_files(&res(r#"{"pids":{"limit":64},"blockIO":{"weight":500,
                "throttleReadBpsDevice":[{"major":254,"minor":0,"rate":1048576}]},
                "hugepageLimits":[{"pageSize":"2MB","limit":0}],
                "unified":{"memory.high":"1000000"}}"#))
        .unwrap();
        assert_eq!(get(&f, "pids.max"), ["64"]);
        assert_eq!(get(&f, "io.weight"), ["4950"]);
        assert_eq!(get(&f, "io.max"), ["254:0 rbps=1048576"]);
        assert_eq!(get(&f, "hugetlb.2MB.max"), ["0"]);
        assert_eq!(get(&f, "memory.high"), ["1000000"]);
        let f = resource_files(&res(r#"{"pids":{"limit":0}}"#)).unwrap();
        assert_eq!(get(&f, "pids.max"), ["max"]);
        for bad in [
            r#"{"unified":{"../x":"1"}}"#,
            r#"{"unified":{"cgroup.procs":"1"}}"#,
            r#"{"unified":{"a/b.c":"1"}}"#,
            r#"{"blockIO":{"weight":5}}"#,
        ] {
            assert!(resource_files(&res(bad)).is_err(), "{bad}");
        }
    }
}

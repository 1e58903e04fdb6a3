//! Parsing cgroup v2 statistics files (cpu.stat, memory.stat, io.stat, ...).

use std::collections::HashMap;

/// Parses a flat keyed file (`key value` per line), e.g. cpu.stat,
/// memory.stat, memory.events. Lines that do not parse are skipped.
pub fn parse_flat_keyed(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let k = it.next()?;
            let v = it.next()?.parse().ok()?;
            Some((k.to_string(), v))
        })
        .collect()
}

/// Parses a single-value file: a number, or `max` (→ `None`).
pub fn parse_single(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return None;
    }
    t.split_whitespace().next()?.parse().ok()
}

/// io.stat totals over all devices.
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
pub struct IoTotals {
    /// Bytes read.
    pub rbytes: u64,
    /// Bytes written.
    pub wbytes: u64,
    /// Read operations.
    pub rios: u64,
    /// Write operations.
    pub wios: u64,
}

/// Sums io.stat lines (`MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. ...`).
pub fn parse_io_stat(text: &str) -> IoTotals {
    let mut t = IoTotals::default();
    for line in text.lines() {
        for kv in line.split_whitespace().skip(1) {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let Ok(v) = v.parse::<u64>() else { continue };
            match k {
                "rbytes" => t.rbytes += v,
                "wbytes" => t.wbytes += v,
                "rios" => t.rios += v,
                "wios" => t.wios += v,
                _ => {}
            }
        }
    }
    t
}

/// One snapshot of a cgroup's statistics.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct CgroupStats {
    /// cpu.stat usage_usec, in ns.
    pub cpu_usage_ns: u64,
    /// cpu.stat user_usec, in ns.
    pub cpu_user_ns: u64,
    /// cpu.stat system_usec, in ns.
    pub cpu_system_ns: u64,
    /// Enforcement periods elapsed.
    pub nr_periods: u64,
    /// Periods throttled.
    pub nr_throttled: u64,
    /// Time throttled, ns.
    pub throttled_ns: u64,
    /// memory.current.
    pub memory_usage: u64,
    /// memory.current - inactive_file (never below 0).
    pub memory_working_set: u64,
    /// memory.stat anon.
    pub memory_rss: u64,
    /// memory.stat file.
    pub memory_cache: u64,
    /// memory.swap.current.
    pub memory_swap: u64,
    /// memory.max (0 when "max").
    pub memory_limit: u64,
    /// memory.events oom.
    pub oom_events: u64,
    /// memory.events oom_kill.
    pub oom_kill_events: u64,
    /// pids.current.
    pub pids_current: u64,
    /// pids.max (0 when "max").
    pub pids_limit: u64,
    /// io.stat totals.
    pub io: IoTotals,
}

/// Reads the statistics of the cgroup at `dir`; files of controllers that
/// are not enabled count as zero.
pub fn read_stats(dir: &std::path::Path) -> CgroupStats {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    let cpu = parse_flat_keyed(&read("cpu.stat"));
    let mem = parse_flat_keyed(&read("memory.stat"));
    let events = parse_flat_keyed(&read("memory.events"));
    let usage = parse_single(&read("memory.current")).unwrap_or(0);
    let inactive = mem.get("inactive_file").copied().unwrap_or(0);
    let us = |k: &str| cpu.get(k).copied().unwrap_or(0).saturating_mul(1000);
    CgroupStats {
        cpu_usage_ns: us("usage_usec"),
        cpu_user_ns: us("user_usec"),
        cpu_system_ns: us("system_usec"),
        nr_periods: cpu.get("nr_periods").copied().unwrap_or(0),
        nr_throttled: cpu.get("nr_throttled").copied().unwrap_or(0),
        throttled_ns: us("throttled_usec"),
        memory_usage: usage,
        memory_working_set: usage.saturating_sub(inactive),
        memory_rss: mem.get("anon").copied().unwrap_or(0),
        memory_cache: mem.get("file").copied().unwrap_or(0),
        memory_swap: parse_single(&read("memory.swap.current")).unwrap_or(0),
        memory_limit: parse_single(&read("memory.max")).unwrap_or(0),
        oom_events: events.get("oom").copied().unwrap_or(0),
        oom_kill_events: events.get("oom_kill").copied().unwrap_or(0),
        pids_current: parse_single(&read("pids.current")).unwrap_or(0),
        pids_limit: parse_single(&read("pids.max")).unwrap_or(0),
        io: parse_io_stat(&read("io.stat")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_files_of_a_fake_cgroup() {
        let t = tempfile::tempdir().unwrap();
        let w = |f: &str, s: &str| std::fs::write(t.path().join(f), s).unwrap();
        w(
            "cpu.stat",
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 3\nnr_throttled 1\nthrottled_usec 7\n",
        );
        w("memory.current", "10000\n");
        w("memory.stat", "anon 6000\nfile 4000\ninactive_file 3000\n");
        w("memory.events", "low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n");
        w("memory.max", "max\n");
        w("pids.current", "4\n");
        w("pids.max", "64\n");
        w(
            "io.stat",
            "254:0 rbytes=100 wbytes=200 rios=1 wios=2 dbytes=0 dios=0\n254:16 rbytes=1 wbytes=1 rios=1 wios=1\n",
        );
        let s = read_stats(t.path());
        assert_eq!(s.cpu_usage_ns, 1_500_000);
        assert_eq!(s.cpu_system_ns, 500_000);
        assert_eq!(s.throttled_ns, 7000);
        assert_eq!(s.memory_usage, 10000);
        assert_eq!(s.memory_working_set, 7000);
        assert_eq!(s.memory_rss, 6000);
        assert_eq!(s.memory_limit, 0);
        assert_eq!(s.oom_kill_events, 1);
        assert_eq!(s.pids_current, 4);
        assert_eq!(s.pids_limit, 64);
        assert_eq!(
            s.io,
            IoTotals {
                rbytes: 101,
                wbytes: 201,
                rios: 2,
                wios: 3
            }
        );
        // Missing controller files count as zero.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(read_stats(empty.path()), CgroupStats::default());
    }
}

//! Statistics: a container's cgroup, its processes, the whole guest.

use super::validate;
use super::R;
use crate::state::State;
use moat_proto::agent::*;
use tonic::Response;

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

pub(super) async fn container_stats(
    state: &State,
    req: ContainerStatsRequest,
) -> R<ContainerStatsResponse> {
    let c = validate::container(state, &req.container_id).await?;
    let s = c.cgroup.stats();
    Ok(Response::new(ContainerStatsResponse {
        cpu: Some(CpuStats {
            usage_ns: s.cpu_usage_ns,
            user_ns: s.cpu_user_ns,
            system_ns: s.cpu_system_ns,
            nr_periods: s.nr_periods,
            nr_throttled: s.nr_throttled,
            throttled_ns: s.throttled_ns,
        }),
        memory: Some(MemoryStats {
            usage_bytes: s.memory_usage,
            working_set_bytes: s.memory_working_set,
            rss_bytes: s.memory_rss,
            cache_bytes: s.memory_cache,
            swap_bytes: s.memory_swap,
            limit_bytes: s.memory_limit,
            oom_events: s.oom_events,
            oom_kill_events: s.oom_kill_events,
        }),
        pids: Some(PidsStats {
            current: s.pids_current,
            limit: s.pids_limit,
        }),
        io: Some(IoStats {
            read_bytes: s.io.rbytes,
            write_bytes: s.io.wbytes,
            read_ios: s.io.rios,
            write_ios: s.io.wios,
        }),
        timestamp_ns: now_ns(),
    }))
}

/// Parses `/proc/<pid>/stat` and `/proc/<pid>/status` for one process.
pub fn process_info(pid: i32) -> Option<ProcessInfo> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm is in parentheses and may contain spaces.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let command = stat.get(open + 1..close)?.to_string();
    let mut rest = stat.get(close + 2..)?.split_whitespace();
    let state = rest.next()?.to_string();
    let ppid = rest.next()?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(ProcessInfo {
        pid: pid as u32,
        ppid,
        command,
        state,
        uid,
    })
}

pub(super) async fn list_processes(
    state: &State,
    req: ListProcessesRequest,
) -> R<ListProcessesResponse> {
    let c = validate::container(state, &req.container_id).await?;
    let pids = c.cgroup.pids().unwrap_or_default();
    let processes = pids.into_iter().filter_map(process_info).collect();
    Ok(Response::new(ListProcessesResponse { processes }))
}

/// Parses /proc/meminfo values (kB) into bytes by key.
pub fn meminfo(text: &str) -> std::collections::HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let n: u64 = v.split_whitespace().next()?.parse().ok()?;
            Some((k.to_string(), n * 1024))
        })
        .collect()
}

/// Aggregate (user+nice, system+irq+softirq, idle+iowait) jiffies from /proc/stat.
pub fn cpu_jiffies(text: &str) -> (u64, u64, u64) {
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let g = |i: usize| v.get(i).copied().unwrap_or(0);
    (g(0) + g(1), g(2) + g(5) + g(6), g(3) + g(4))
}

pub(super) fn guest_stats() -> R<GuestStatsResponse> {
    let mem = meminfo(&std::fs::read_to_string("/proc/meminfo").unwrap_or_default());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let l: Vec<f64> = load
        .split_whitespace()
        .take(3)
        .filter_map(|x| x.parse().ok())
        .collect();
    let (user, system, idle) =
        cpu_jiffies(&std::fs::read_to_string("/proc/stat").unwrap_or_default());
    // SAFETY: sysconf with a constant.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()
        .filter(|h| *h > 0)
        .unwrap_or(100);
    let to_ns = |j: u64| j.saturating_mul(1_000_000_000 / hz);
    let uptime_ns = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0);
    let m = |k: &str| mem.get(k).copied().unwrap_or(0);
    Ok(Response::new(GuestStatsResponse {
        memory_total_bytes: m("MemTotal"),
        memory_free_bytes: m("MemFree"),
        memory_available_bytes: m("MemAvailable"),
        memory_cached_bytes: m("Cached"),
        load1: l.first().copied().unwrap_or(0.0),
        load5: l.get(1).copied().unwrap_or(0.0),
        load15: l.get(2).copied().unwrap_or(0.0),
        cpu_user_ns: to_ns(user),
        cpu_system_ns: to_ns(system),
        cpu_idle_ns: to_ns(idle),
        online_cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        uptime_ns,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let m = meminfo("MemTotal:       2000 kB\nMemFree:        1000 kB\nbogus\n");
        assert_eq!(m["MemTotal"], 2_048_000);
        assert_eq!(
            cpu_jiffies("cpu  1 2 3 4 5 6 7 0 0 0\ncpu0 1 1 1 1\n"),
            (3, 3 + 6 + 7, 4 + 5)
        );
        let me = process_info(std::process::id() as i32).unwrap();
        assert_eq!(me.pid, std::process::id());
        assert!(!me.command.is_empty());
    }
}

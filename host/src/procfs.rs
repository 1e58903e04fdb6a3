//! The fields moatd reads from `/proc/PID/stat` (a VMM's liveness and
//! start time, its CPU use and threads for pod stats), parsed in one place.

/// The ids of the processes now running (the numeric names in `/proc`).
pub fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
}

/// What `/proc/PID/stat` says about one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// One-letter state (`R`, `S`, `Z`, ...).
    pub state: char,
    /// User and system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Number of threads.
    pub threads: u64,
    /// Start time in clock ticks since boot (tells a reused pid apart).
    pub start_ticks: u64,
}

impl Stat {
    /// Reads the stat of `pid`; None if it is gone or unreadable.
    pub fn of(pid: u32) -> Option<Self> {
        Self::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// Parses the text of a stat file. The command name may hold spaces and
    /// parentheses, so the fields are counted after the last `)`.
    pub fn parse(text: &str) -> Option<Self> {
        let fields: Vec<&str> = text
            .get(text.rfind(')')? + 1..)?
            .split_whitespace()
            .collect();
        // After the command: state [0], utime [11], stime [12],
        // num_threads [17], starttime [19].
        let num = |i: usize| fields.get(i)?.parse::<u64>().ok();
        Some(Self {
            state: fields.first()?.chars().next()?,
            cpu_ticks: num(11)?.checked_add(num(12)?)?,
            threads: num(17)?,
            start_ticks: num(19)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_after_a_name_with_spaces_and_parentheses() {
        let text = "42 (a b) c)) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 3 0 12345 1000 10 18446744073709551615";
        let s = Stat::parse(text).unwrap();
        assert_eq!(s.state, 'S');
        assert_eq!(s.cpu_ticks, 12);
        assert_eq!(s.threads, 3);
        assert_eq!(s.start_ticks, 12345);
        assert_eq!(Stat::parse("42 (x) S 1"), None);
    }

    #[test]
    fn own_process() {
        let s = Stat::of(std::process::id()).unwrap();
        assert!(s.threads >= 1);
        assert!(s.start_ticks > 0);
    }
}

//! Watching a running node: its heartbeat, its console (kernel panics,
//! soft lockups, the command's output between the marks), and what to
//! report about QEMU's threads when it stops making progress.

use super::*;

/// The first console line that reports a kernel panic of the node (or the
/// stack overflow that precedes one).
pub fn panic_line(console: &str) -> Option<&str> {
    console.lines().find(|l| {
        l.contains("Kernel panic")
            || l.contains("stack guard page was hit")
            || l.contains("corrupted stack end detected")
    })
}

/// How long the node's heartbeat (a counter its init writes to the scratch
/// share every few seconds, `alive`) may stay still before the node counts
/// as dead, unless the config says otherwise.
/// A live node under full load still beats: the writer runs at the highest
/// priority. Boot counts as silence, and takes a few seconds. 300 s: with
/// 120 s the 20-pod test's node counted as dead in 8 of 8 attempts in one
/// session, while earlier boot-benchmark nodes given 500 s never stalled.
pub(super) const HEARTBEAT_SILENCE: Duration = Duration::from_secs(300);

/// Tracks when the node's heartbeat file last changed.
pub(super) struct Beat {
    last_seen: Option<std::time::SystemTime>,
    changed_at: Instant,
    checked_at: Instant,
}

impl Beat {
    pub(super) fn new(started: Instant) -> Self {
        Beat {
            last_seen: None,
            changed_at: started,
            checked_at: started,
        }
    }

    /// How long the heartbeat at `path` has not changed (checked at most
    /// once a second).
    pub(super) fn silent_for(&mut self, path: &Path) -> Duration {
        let now = Instant::now();
        if now.duration_since(self.checked_at) >= Duration::from_secs(1) {
            self.checked_at = now;
            let stamp = std::fs::metadata(path).and_then(|m| m.modified()).ok();
            if stamp.is_some() && stamp != self.last_seen {
                self.last_seen = stamp;
                self.changed_at = now;
            }
        }
        now.duration_since(self.changed_at)
    }
}

/// What the emulator itself is doing while its node is silent: CPU use
/// over one second and its threads' states, which tells a guest spinning
/// in emulated code (busy vCPU threads) from a stalled emulator (all
/// threads asleep).
/// Each thread of `pid` as `name:state:wait channel`, sorted: a thread
/// spinning in a guest shows `R`, a halted vCPU `S` in `kvm_vcpu_block`.
pub fn thread_states(pid: u32) -> Vec<String> {
    let mut threads = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let path = t.path();
            let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                .unwrap_or("?")
                .to_string();
            let wchan = std::fs::read_to_string(path.join("wchan")).unwrap_or_default();
            threads.push(format!("{}:{state}:{}", comm.trim(), wchan.trim()));
        }
    }
    threads.sort();
    threads
}

pub(super) fn emulator_activity(pid: u32) -> String {
    let cpu_ticks = || -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
    };
    let before = cpu_ticks();
    std::thread::sleep(Duration::from_secs(1));
    let after = cpu_ticks();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let cpu = match (before, after) {
        (Some(b), Some(a)) => format!("{}% CPU", a.saturating_sub(b) * 100 / hz),
        _ => "CPU unknown".into(),
    };
    let threads = thread_states(pid);
    format!(
        "QEMU used {cpu} over 1 s; its threads: {}",
        threads.join(" ")
    )
}

/// Asks the node's init for its process list (through the scratch share)
/// and waits briefly for the answer; what a hung command was doing.
pub(super) fn request_process_list(sdir: &Path) -> String {
    let answer = sdir.join("processes.txt");
    if std::fs::write(sdir.join("dump"), b"").is_err() {
        return "(could not ask the node)".into();
    }
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        if let Ok(text) = std::fs::read_to_string(&answer) {
            return text;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    "(the node did not answer)".into()
}

/// Kills the node early and returns everything it printed (once the console
/// reader has seen QEMU's output end).
pub(super) fn stop(
    guard: KillOnDrop<'_>,
    reader: Option<std::thread::JoinHandle<()>>,
    state: &Mutex<ConsoleState>,
) -> String {
    drop(guard);
    if let Some(r) = reader {
        let _ = r.join();
    }
    take_console(state)
}

/// Kills and reaps QEMU if the harness returns early.
pub(super) struct KillOnDrop<'a>(pub(super) &'a mut Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

#[derive(Default)]
pub(super) struct ConsoleState {
    pub(super) console: String,
    pub(super) output: String,
    pub(super) in_command: bool,
    pub(super) begun_at: Option<Duration>,
    pub(super) lockup: bool,
}

/// Seconds a CPU of the node has been stuck if `line` is the node kernel's
/// soft-lockup report (`watchdog: BUG: soft lockup - CPU#1 stuck for 52s!`).
pub(super) fn soft_lockup_secs(line: &str) -> Option<u64> {
    let rest = line.split("watchdog: BUG: soft lockup").nth(1)?;
    let after = rest.split("stuck for ").nth(1)?;
    after.split('s').next()?.trim().parse().ok()
}

/// A CPU stuck this long means the node is gone (a short report can come
/// from a starved emulator and heal).
pub(super) const LOCKUP_SECS: u64 = 60;

pub(super) fn take_console(state: &Mutex<ConsoleState>) -> String {
    state.lock().map(|s| s.console.clone()).unwrap_or_default()
}

pub(super) fn read_console(
    out: impl Read,
    state: &Mutex<ConsoleState>,
    started: Instant,
    echo_console: bool,
    echo_output: bool,
) {
    let mut reader = BufReader::new(out);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']).replace('\r', "");
        if echo_console {
            eprintln!("[node] {line}");
        }
        let Ok(mut s) = state.lock() else { break };
        if soft_lockup_secs(&line).is_some_and(|secs| secs >= LOCKUP_SECS) {
            s.lockup = true;
        }
        s.console.push_str(&line);
        s.console.push('\n');
        if line.contains(BEGIN_MARK) {
            s.in_command = true;
            s.begun_at = Some(started.elapsed());
        } else if line.contains(END_MARK) {
            s.in_command = false;
        } else if s.in_command {
            s.output.push_str(&line);
            s.output.push('\n');
            if echo_output && !echo_console {
                let mut o = std::io::stdout().lock();
                let _ = writeln!(o, "{line}");
                let _ = o.flush();
            }
        }
    }
}

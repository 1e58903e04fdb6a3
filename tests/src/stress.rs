//! The test node's stress run (`moat-node stress`, `make node-stress`):
//! boots nodes one after another, each running the same fixed load
//! (`scripts/node-load.sh`), and tallies how each node ended — so QEMU
//! versions and node settings can be compared by their failure rates.

use crate::node::{panic_line, NodeConfig, NodeError, NodeOutput};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// How one node of a stress run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The load finished and succeeded.
    Passed,
    /// The load finished and failed (its exit status); the node lived.
    LoadFailed(i32),
    /// The node's kernel panicked (what it said).
    Panic(String),
    /// The node locked up (a CPU stuck, or its heartbeat stopped).
    Lockup(String),
    /// The node was still running at the time limit.
    Timeout,
    /// QEMU stopped without the load's status, and no panic was seen.
    Vanished,
    /// The node could not be started at all.
    Unavailable(String),
}

impl Ending {
    /// A short word for the table.
    pub fn label(&self) -> String {
        match self {
            Ending::Passed => "passed".into(),
            Ending::LoadFailed(rc) => format!("load exit {rc}"),
            Ending::Panic(_) => "PANIC".into(),
            Ending::Lockup(_) => "LOCKUP".into(),
            Ending::Timeout => "timeout".into(),
            Ending::Vanished => "vanished".into(),
            Ending::Unavailable(_) => "unavailable".into(),
        }
    }

    /// True if the emulated machine failed (not the load).
    pub fn node_failed(&self) -> bool {
        matches!(
            self,
            Ending::Panic(_) | Ending::Lockup(_) | Ending::Timeout | Ending::Vanished
        )
    }
}

/// One node of a stress run.
#[derive(Debug, Clone)]
pub struct NodeRun {
    /// How it ended.
    pub ending: Ending,
    /// Boot-benchmark rounds that completed (`@round` lines).
    pub rounds: usize,
    /// Pods that came up and answered an exec (`@pod-ready` lines).
    pub pods: usize,
    /// Guest boots that ended in a triple fault or another unplanned reset
    /// (moat-vmm's exit code 3, or moatd's log of one).
    pub guest_resets: usize,
    /// Guest boots of the benchmark that failed in another way.
    pub boot_failures: usize,
    /// The lines that reported guest resets and failed boots.
    pub failure_lines: Vec<String>,
    /// Time until the node ran the load, if it got that far.
    pub boot: Option<Duration>,
    /// Wall time of the node.
    pub wall: Duration,
}

/// Counts the load's markers in `text` (the node's console, which carries
/// the load's output too).
fn tally(text: &str) -> (usize, usize, usize, usize, Vec<String>) {
    let (mut rounds, mut pods, mut resets, mut failures) = (0, 0, 0, 0);
    let mut lines = Vec::new();
    for line in text.lines() {
        let line = line.trim_start();
        if line.starts_with("@round ") {
            rounds += 1;
        } else if line.starts_with("@pod-ready ") {
            pods += 1;
        } else if line.starts_with("@pod-failed ") {
            lines.push(line.to_string());
        } else if line.starts_with("@guest-reset ") {
            resets += 1;
            lines.push(line.to_string());
        } else if is_boot_failure(line) {
            if line.contains("exit code 3") || line.contains("triple fault") {
                resets += 1;
            } else {
                failures += 1;
            }
            lines.push(line.to_string());
        }
    }
    (rounds, pods, resets, failures, lines)
}

/// A failed boot as the boot benchmark reports it (`moat-vmm run 3: …`,
/// `moat-vmm ready run 3: …`, `qemu (lean) run 3: …`).
fn is_boot_failure(line: &str) -> bool {
    [
        "moat-vmm run ",
        "moat-vmm ready run ",
        "qemu (lean) run ",
        "qemu (defaults) run ",
    ]
    .iter()
    .any(|p| {
        line.strip_prefix(p).is_some_and(|rest| {
            let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
            digits > 0 && rest[digits..].starts_with(": ")
        })
    })
}

/// Classifies what [`NodeConfig::run`] returned.
pub fn classify(result: &Result<NodeOutput, NodeError>, wall: Duration) -> NodeRun {
    let (ending, console, boot) = match result {
        Ok(out) => {
            let ending = if out.status == 0 {
                Ending::Passed
            } else {
                Ending::LoadFailed(out.status)
            };
            (ending, out.console.as_str(), Some(out.boot_time))
        }
        Err(NodeError::Lockup { why, console }) => {
            (Ending::Lockup(why.clone()), console.as_str(), None)
        }
        Err(NodeError::Timeout { console, .. }) => (Ending::Timeout, console.as_str(), None),
        Err(NodeError::Panic { line, console }) => {
            (Ending::Panic(line.clone()), console.as_str(), None)
        }
        Err(NodeError::NoStatus { console, .. }) => (Ending::Vanished, console.as_str(), None),
        Err(e) => (Ending::Unavailable(e.to_string()), "", None),
    };
    // A panic explains whatever came after it (a lockup, a vanished node).
    let ending = match panic_line(console) {
        Some(line) if !matches!(ending, Ending::Passed) => Ending::Panic(line.trim().to_string()),
        _ => ending,
    };
    let (rounds, pods, guest_resets, boot_failures, failure_lines) = tally(console);
    NodeRun {
        ending,
        rounds,
        pods,
        guest_resets,
        boot_failures,
        failure_lines,
        boot,
        wall,
    }
}

/// What a stress run does.
#[derive(Debug, Clone)]
pub struct StressPlan {
    /// Nodes booted one after another.
    pub nodes: usize,
    /// Boot-benchmark rounds in each node.
    pub rounds: usize,
    /// Pods started at once in each node.
    pub pods: usize,
}

/// Runs the plan, printing each node's line as it ends, and returns the
/// runs.
pub fn run(cfg: &NodeConfig, plan: &StressPlan) -> Vec<NodeRun> {
    let script = format!(
        "ROUNDS={} PODS={} exec scripts/node-load.sh",
        plan.rounds, plan.pods
    );
    let mut runs = Vec::new();
    for i in 1..=plan.nodes {
        let started = Instant::now();
        let result = cfg.run(&script);
        let run = classify(&result, started.elapsed());
        eprintln!(
            "node-stress: node {i}/{}: {}",
            plan.nodes,
            row(i, &run, plan)
        );
        match &run.ending {
            Ending::Panic(why) | Ending::Lockup(why) | Ending::Unavailable(why) => {
                eprintln!("node-stress: node {i}: {why}")
            }
            _ => {}
        }
        for line in &run.failure_lines {
            eprintln!("node-stress: node {i}: {line}");
        }
        // The console of every node that did not pass is kept: a dead node's
        // and one whose load failed (its moatctl errors are in it).
        let kept = match &result {
            Ok(out) if out.status != 0 => Some(out.console.as_str()),
            Ok(_) => None,
            Err(
                NodeError::Lockup { console, .. }
                | NodeError::Timeout { console, .. }
                | NodeError::Panic { console, .. }
                | NodeError::NoStatus { console, .. },
            ) => Some(console.as_str()),
            Err(_) => None,
        };
        if let Some(console) = kept {
            let tail: Vec<&str> = console.lines().rev().take(8).collect();
            for l in tail.into_iter().rev() {
                eprintln!("node-stress: node {i} console | {l}");
            }
            let path = std::env::temp_dir().join(format!(
                "moat-node-stress-{}-node-{i}.console",
                std::process::id()
            ));
            if std::fs::write(&path, console).is_ok() {
                eprintln!("node-stress: node {i}: whole console in {}", path.display());
            }
        }
        let stop = matches!(run.ending, Ending::Unavailable(_));
        runs.push(run);
        if stop {
            break;
        }
    }
    runs
}

fn row(i: usize, r: &NodeRun, plan: &StressPlan) -> String {
    format!(
        "| {i:>4} | {:<11} | {:>4}/{:<4} | {:>3}/{:<3} | {:>12} | {:>13} | {:>7} | {:>7.0} |",
        r.ending.label(),
        r.rounds,
        plan.rounds,
        r.pods,
        plan.pods,
        r.guest_resets,
        r.boot_failures,
        r.boot
            .map(|b| format!("{:.0}", b.as_secs_f64()))
            .unwrap_or_else(|| "-".into()),
        r.wall.as_secs_f64(),
    )
}

/// The table over a stress run: one line per node and a total.
pub fn table(settings: &str, plan: &StressPlan, runs: &[NodeRun]) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "node stress: {settings}");
    let _ = writeln!(
        t,
        "load per node: {} boot-benchmark rounds, then {} pods at once through moatd",
        plan.rounds, plan.pods
    );
    let _ = writeln!(
        t,
        "| node | ending      | rounds    | pods    | guest resets | other fails   | boot s  | wall s  |"
    );
    let _ = writeln!(
        t,
        "|-----:|-------------|-----------|---------|-------------:|--------------:|--------:|--------:|"
    );
    for (i, r) in runs.iter().enumerate() {
        let _ = writeln!(t, "{}", row(i + 1, r, plan));
    }
    // What the resets and failures were, under the table.
    for (i, r) in runs.iter().enumerate() {
        for line in &r.failure_lines {
            let _ = writeln!(t, "node {}: {line}", i + 1);
        }
    }
    let count = |f: fn(&Ending) -> bool| runs.iter().filter(|r| f(&r.ending)).count();
    let wall: Duration = runs.iter().map(|r| r.wall).sum();
    let _ = writeln!(
        t,
        "total: {} nodes, {} passed, {} lockups, {} panics, {} timeouts, {} vanished, {} load failures; \
         rounds {}/{}, pods {}/{}, guest resets {}, other boot failures {}; wall {:.0} s",
        runs.len(),
        count(|e| matches!(e, Ending::Passed)),
        count(|e| matches!(e, Ending::Lockup(_))),
        count(|e| matches!(e, Ending::Panic(_))),
        count(|e| matches!(e, Ending::Timeout)),
        count(|e| matches!(e, Ending::Vanished)),
        count(|e| matches!(e, Ending::LoadFailed(_))),
        runs.iter().map(|r| r.rounds).sum::<usize>(),
        runs.len() * plan.rounds,
        runs.iter().map(|r| r.pods).sum::<usize>(),
        runs.len() * plan.pods,
        runs.iter().map(|r| r.guest_resets).sum::<usize>(),
        runs.iter().map(|r| r.boot_failures).sum::<usize>(),
        wall.as_secs_f64(),
    );
    t
}

/// The node's settings in one line, for the table's heading.
pub fn describe(cfg: &NodeConfig) -> String {
    let version = std::process::Command::new(&cfg.qemu)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
        .unwrap_or_else(|| "version unknown".into());
    let mut s = format!(
        "{} ({version}); kernel {}; -accel {} -cpu {} -smp {} -m {}",
        cfg.qemu.display(),
        cfg.kernel.display(),
        cfg.accel,
        cfg.cpu_model,
        cfg.cpus,
        cfg.memory_mib
    );
    if !cfg.qemu_args.is_empty() {
        s += &format!(" {}", cfg.qemu_args.join(" "));
    }
    if !cfg.kernel_args.is_empty() {
        s += &format!("; kernel args `{}`", cfg.kernel_args);
    }
    if !cfg.kvm_amd_options.is_empty() {
        s += &format!("; kvm-amd {}", cfg.kvm_amd_options);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(status: i32, console: &str) -> Result<NodeOutput, NodeError> {
        Ok(NodeOutput {
            status,
            output: String::new(),
            console: console.into(),
            boot_time: Duration::from_secs(20),
            total_time: Duration::from_secs(100),
        })
    }

    #[test]
    fn counts_the_loads_markers() {
        let console = "@@moat-node:begin@@\n@round {}\n@round {}\nmoat-vmm run 2: exit code 3: vcpu0: triple fault: rip=0\n\
             moat-vmm ready run 2: agent not ready in time\nqemu (lean) run 11: exit code 1\n\
             @pod-ready load0 4000\n@pod-failed load1\n@guest-reset moatd: guest reset\nmoat-vmm run x: no\n";
        let r = classify(&out(1, console), Duration::from_secs(100));
        assert_eq!(r.ending, Ending::LoadFailed(1));
        assert_eq!(
            (r.rounds, r.pods, r.guest_resets, r.boot_failures),
            (2, 1, 2, 2)
        );
        assert_eq!(r.boot, Some(Duration::from_secs(20)));
    }

    #[test]
    fn a_panic_explains_a_lockup_or_a_vanished_node() {
        let console = "[ 80.1] BUG: TASK stack guard page was hit at 0000 (stack is 0000..0000)\n\
                       [ 80.2] Kernel panic - not syncing: corrupted stack end detected inside scheduler\n";
        let lockup = Err(NodeError::Lockup {
            why: "no heartbeat for 300 s".into(),
            console: console.into(),
        });
        let r = classify(&lockup, Duration::from_secs(400));
        assert!(matches!(r.ending, Ending::Panic(ref l) if l.contains("stack guard page")));
        assert!(r.ending.node_failed());
        let gone = Err(NodeError::NoStatus {
            qemu_status: "exit status: 0".into(),
            console: "booting\n".into(),
        });
        assert_eq!(
            classify(&gone, Duration::from_secs(5)).ending,
            Ending::Vanished
        );
        let stuck = Err(NodeError::Lockup {
            why: "a CPU stuck for 60 s or more".into(),
            console: "@@moat-node:begin@@\n@round {}\n".into(),
        });
        let r = classify(&stuck, Duration::from_secs(200));
        assert!(matches!(r.ending, Ending::Lockup(_)));
        assert_eq!(r.rounds, 1);
        let panicked = Err(NodeError::Panic {
            line: "Kernel panic - not syncing: corrupted stack end".into(),
            console: "@round {}\n[ 9.0] Kernel panic - not syncing: corrupted stack end\n".into(),
        });
        let r = classify(&panicked, Duration::from_secs(90));
        assert!(matches!(r.ending, Ending::Panic(ref l) if l.contains("corrupted stack end")));
        assert_eq!(r.rounds, 1);
    }

    #[test]
    fn the_table_totals_the_nodes() {
        let plan = StressPlan {
            nodes: 2,
            rounds: 3,
            pods: 3,
        };
        let runs = vec![
            classify(&out(0, "@round {}\n@round {}\n@round {}\n@pod-ready a 1\n@pod-ready b 1\n@pod-ready c 1\n"), Duration::from_secs(100)),
            classify(
                &Err(NodeError::Lockup { why: "x".into(), console: "@round {}\n@pod-failed load1\n".into() }),
                Duration::from_secs(300),
            ),
        ];
        let t = table("qemu", &plan, &runs);
        assert!(t.contains("2 nodes, 1 passed, 1 lockups, 0 panics"), "{t}");
        assert!(t.contains("rounds 4/6, pods 3/6"), "{t}");
        assert!(t.contains("wall 400 s"), "{t}");
        assert!(t.contains("node 2: @pod-failed load1"), "{t}");
    }
}

//! Runs a test's shell script where microVMs can boot: directly on a host
//! with hardware virtualization, or inside the test node.

use crate::node::{NodeConfig, NodeError, NodeOutput};
use crate::probe::{probe, VmSupport};
use std::io::Write;
use std::time::{Duration, Instant};

/// Output of a script run in a VM-capable environment.
#[derive(Debug, Clone)]
pub struct VmRun {
    /// Exit status of the script.
    pub status: i32,
    /// Its stdout and stderr, interleaved.
    pub output: String,
    /// The node's console when run in the node, else empty.
    pub console: String,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// How many times a command is run again in a fresh test node after the
/// node itself locked up. A safety net: under `make node-stress` one node in
/// ten died with QEMU 10.0 (a stack-corruption panic), six in ten with
/// bookworm's QEMU 7.2, so even with the newer QEMU a long test now and then
/// needs a second node.
const NODE_RETRIES: usize = 4;

/// Runs `script` with `sh` where KVM guests can boot, failing clearly if
/// neither the host nor the test node can run them.
pub fn run_vm_script(script: &str, timeout: Duration) -> anyhow::Result<VmRun> {
    match probe() {
        VmSupport::Direct { .. } => run_direct(script, timeout),
        VmSupport::Node { .. } => {
            let mut cfg = NodeConfig::detect()?;
            cfg.timeout = timeout;
            let out = run_in_node(&cfg, script).map_err(|e| match e {
                NodeError::Timeout { .. }
                | NodeError::NoStatus { .. }
                | NodeError::Lockup { .. }
                | NodeError::Panic { .. } => {
                    anyhow::anyhow!("{e}")
                }
                other => other.into(),
            })?;
            Ok(VmRun {
                status: out.status,
                output: out.output,
                console: out.console,
                elapsed: out.total_time,
            })
        }
        VmSupport::Unavailable { reason } => {
            anyhow::bail!("no environment can boot microVMs: {reason}")
        }
    }
}

/// Runs `script` in a test node set up by `cfg`, and again in a fresh node
/// (up to [`NODE_RETRIES`] times) while the node itself fails: the emulated
/// machine's fault, not the command's, said on stderr each time.
pub fn run_in_node(cfg: &NodeConfig, script: &str) -> Result<NodeOutput, NodeError> {
    let mut result = cfg.run(script);
    for _ in 0..NODE_RETRIES {
        let Err(e) = &result else { break };
        let (what, console) = match e {
            NodeError::Lockup { why, console } => (format!("locked up ({why})"), console),
            NodeError::Panic { line, console } => (format!("panicked ({line})"), console),
            _ => break,
        };
        let tail: Vec<&str> = console.lines().rev().take(5).collect();
        // Straight to stderr, past the test harness's capture, so a retry
        // shows in the log of a passing run too.
        let _ = writeln!(
            std::io::stderr(),
            "moat: the test node's kernel {what}, an emulator fault; running again in a fresh node. Last console lines:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
        result = cfg.run(script);
    }
    result
}

fn run_direct(script: &str, timeout: Duration) -> anyhow::Result<VmRun> {
    use std::process::{Command, Stdio};
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let out_path = dir.path().join("output");
    let out = std::fs::File::create(&out_path)?;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()?;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let output = std::fs::read_to_string(&out_path).unwrap_or_default();
            anyhow::bail!(
                "script timed out after {} s; output:\n{output}",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    Ok(VmRun {
        status: code,
        output: std::fs::read_to_string(&out_path).unwrap_or_default(),
        console: String::new(),
        elapsed: started.elapsed(),
    })
}

/// How a VM test runs when it needs the test node.
#[derive(Debug, Clone, Copy)]
pub struct NodeOptions {
    /// The node's time limit.
    pub timeout: Duration,
    /// The node's memory at least (MiB); 0 keeps the default.
    pub min_memory_mib: u32,
    /// Stream the test's output while it runs (a hang shows where it was).
    pub echo_output: bool,
    /// Output that marks a fault of a nested guest under the emulator (a
    /// stall, a reset): a failed test showing one gets one more run in a
    /// fresh node (a second failure fails).
    pub retry_if: &'static [&'static str],
}

impl From<Duration> for NodeOptions {
    fn from(timeout: Duration) -> Self {
        Self {
            timeout,
            min_memory_mib: 0,
            echo_output: false,
            retry_if: &[],
        }
    }
}

/// Runs a VM test body where microVMs can boot. On a host that can run them
/// (hardware virtualization, or already inside the test node) `body` runs
/// here; otherwise this test binary is run again inside the test node with
/// `--ignored --exact <inner>`, where `inner` is an `#[ignore]`d test that
/// calls the same body, and its result becomes this test's result.
pub fn run_where_vms_boot(inner: &str, options: impl Into<NodeOptions>, body: impl FnOnce()) {
    let options = options.into();
    let inside_node = std::env::var_os("MOAT_IN_TEST_NODE").is_some();
    match probe() {
        VmSupport::Direct { .. } => body(),
        _ if inside_node => body(),
        VmSupport::Node { .. } => {
            let mut cfg = NodeConfig::detect()
                .unwrap_or_else(|e| panic!("{inner}: the test node is needed: {e}"));
            cfg.timeout = options.timeout;
            cfg.memory_mib = cfg.memory_mib.max(options.min_memory_mib);
            cfg.echo_output = options.echo_output;
            let exe = std::env::current_exe().expect("test binary path");
            let script = format!(
                "exec '{}' --ignored --exact {inner} --nocapture --test-threads=1",
                exe.display()
            );
            // One node at a time per test binary: two emulated nodes, each
            // with its nested VMs, on this machine's 2 cores slowed guests
            // past moatd's waits (CI saw StopContainer time out in the
            // twenty-pod loop while the crash test's node ran beside it).
            static ONE_NODE: std::sync::Mutex<()> = std::sync::Mutex::new(());
            let _one = ONE_NODE.lock().unwrap_or_else(|p| p.into_inner());
            let run = || {
                run_in_node(&cfg, &script)
                    .unwrap_or_else(|e| panic!("{inner} in the test node: {e:#}"))
            };
            let mut out = run();
            if let Some(marker) = options.retry_if.iter().find(|m| out.output.contains(**m)) {
                if out.status != 0 {
                    eprintln!(
                        "moat: {inner} failed in the test node with an emulator fault ({marker}); running it once more in a fresh node. Its output:\n{}",
                        out.output
                    );
                    out = run();
                }
            }
            if !options.echo_output {
                println!("{}", out.output);
            }
            assert_eq!(
                out.status,
                0,
                "{inner} failed inside the test node:\n{}\nnode console (last lines):\n{}",
                out.output,
                tail(&out.console, 40)
            );
            assert!(
                out.output.contains("test result: ok. 1 passed"),
                "{inner} did not run inside the test node:\n{}",
                out.output
            );
        }
        VmSupport::Unavailable { reason } => panic!("no environment can boot microVMs: {reason}"),
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Declares the VM test `$name` that runs `$body` where microVMs boot:
/// `$name::where_vms_boot` runs it here on a host with hardware
/// virtualization (or inside the test node), else starts the test node,
/// which runs the `#[ignore]`d `$name::inside` — the same body — and takes
/// its result. `$node` is the node's time limit or [`NodeOptions`]. Items
/// of the calling file are in scope in `$node` and `$body`.
#[macro_export]
macro_rules! vm_test {
    ($name:ident, $node:expr, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[test]
            fn where_vms_boot() {
                $crate::vm::run_where_vms_boot(
                    concat!(stringify!($name), "::inside"),
                    $node,
                    $body,
                );
            }

            #[test]
            #[ignore = "run by where_vms_boot, where microVMs boot"]
            fn inside() {
                ($body)();
            }
        }
    };
}

//! moat-node: boot the test node and run a command inside it, or print
//! where VM tests would run.

use clap::{Parser, Subcommand};
use moat_tests::node::NodeConfig;
use moat_tests::probe::HostFacts;
use moat_tests::stress::{self, StressPlan};
use std::time::Duration;

#[derive(Parser)]
#[command(
    version,
    about = "The moat test node: a software-emulated Linux with working KVM"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Say whether VM tests run directly on this host or inside the node.
    Probe,
    /// Boot the node and run COMMAND inside it (as root, host root read-only).
    Run {
        /// Kill the node after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Node memory in MiB.
        #[arg(long)]
        memory_mib: Option<u32>,
        /// Show the node's whole console, not only the command's output.
        #[arg(long, short)]
        verbose: bool,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Boot NODES nodes one after another, each running the same load
    /// (`scripts/node-load.sh`: boot-benchmark rounds, then pods at once
    /// through moatd), and print a table of how each node ended. The node's
    /// settings come from the `MOAT_NODE_*` variables (see `moat-node
    /// stress --help`).
    #[command(
        after_help = "Node settings: MOAT_NODE_QEMU, MOAT_NODE_QEMU_ARGS, MOAT_NODE_ACCEL, MOAT_NODE_CPU, MOAT_NODE_CPUS, MOAT_NODE_MEMORY_MIB, MOAT_NODE_KERNEL, MOAT_NODE_KERNEL_ARGS, MOAT_NODE_KVM_AMD, MOAT_NODE_HEARTBEAT_SECS."
    )]
    Stress {
        /// Nodes to boot, one after another.
        #[arg(long, default_value_t = 4)]
        nodes: usize,
        /// Boot-benchmark rounds in each node.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Pods started at once through moatd in each node.
        #[arg(long, default_value_t = 3)]
        pods: usize,
        /// Kill a node after this many seconds.
        #[arg(long, default_value_t = 1200)]
        timeout: u64,
    },
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The node's settings with a time limit, or exit 125 if there is no node.
fn node_config(timeout_secs: u64) -> NodeConfig {
    match NodeConfig::detect() {
        Ok(mut c) => {
            c.timeout = Duration::from_secs(timeout_secs);
            c
        }
        Err(e) => {
            eprintln!("moat-node: {e}");
            std::process::exit(125);
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Probe => {
            println!("{}", HostFacts::gather().decide());
            0
        }
        Cmd::Stress {
            nodes,
            rounds,
            pods,
            timeout,
        } => {
            let cfg = node_config(timeout);
            let plan = StressPlan {
                nodes,
                rounds,
                pods,
            };
            let settings = stress::describe(&cfg);
            eprintln!("node-stress: {settings}");
            let runs = stress::run(&cfg, &plan);
            print!("{}", stress::table(&settings, &plan, &runs));
            let all_passed =
                runs.len() == plan.nodes && runs.iter().all(|r| r.ending == stress::Ending::Passed);
            i32::from(!all_passed)
        }
        Cmd::Run {
            timeout,
            memory_mib,
            verbose,
            command,
        } => {
            let mut cfg = node_config(timeout);
            cfg.echo_console = verbose;
            cfg.echo_output = true;
            if let Some(m) = memory_mib {
                cfg.memory_mib = m;
            }
            let script = command
                .iter()
                .map(|a| quote(a))
                .collect::<Vec<_>>()
                .join(" ");
            match cfg.run(&script) {
                Ok(out) => {
                    eprintln!(
                        "moat-node: node up in {:.2} s, command exited {} after {:.2} s in all",
                        out.boot_time.as_secs_f64(),
                        out.status,
                        out.total_time.as_secs_f64()
                    );
                    out.status
                }
                Err(e) => {
                    eprintln!("moat-node: {e}");
                    124
                }
            }
        }
    };
    std::process::exit(code);
}

//! moat-node: boot the test node and run a command inside it, or print
//! where VM tests would run.

use clap::{Parser, Subcommand};
use moat_tests::node::NodeConfig;
use moat_tests::probe::HostFacts;
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
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Probe => {
            println!("{}", HostFacts::gather().decide());
            0
        }
        Cmd::Run {
            timeout,
            memory_mib,
            verbose,
            command,
        } => {
            let mut cfg = match NodeConfig::detect() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("moat-node: {e}");
                    std::process::exit(125);
                }
            };
            cfg.timeout = Duration::from_secs(timeout);
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

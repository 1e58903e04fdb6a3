//! moat-agentctl: talk to a guest agent through a VM's hybrid vsock socket
//! (for operators and tests).

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(version, about = "Talk to the moat agent inside a microVM")]
struct Cli {
    /// The VM's vsock Unix socket (moat-vmm --vsock-uds).
    #[arg(long)]
    vsock_uds: PathBuf,
    /// Agent vsock port.
    #[arg(long, default_value_t = moat_proto::AGENT_VSOCK_PORT)]
    port: u32,
    /// Keep retrying the connection for this long (the VM may be booting).
    #[arg(long, default_value_t = 0.0)]
    wait_secs: f64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check the agent answers; prints its version and the guest uptime.
    Ping,
    /// Print the guest's kernel, CPUs and memory.
    Details,
    /// Ask the agent to power the guest off.
    Shutdown,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(cli.wait_secs.max(0.0));
    let mut client = loop {
        match moatd::agent::connect(cli.vsock_uds.clone(), cli.port).await {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("agent not ready: {e:#}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => {
                return Err(e.context(format!(
                    "connecting to the agent via {}",
                    cli.vsock_uds.display()
                )))
            }
        }
    };
    match cli.cmd {
        Cmd::Ping => {
            let r = client
                .ping(moat_proto::agent::PingRequest {})
                .await?
                .into_inner();
            println!(
                "agent {} up, guest uptime {:.3} s, answered after {:.3} s",
                r.agent_version,
                r.uptime_ns as f64 / 1e9,
                started.elapsed().as_secs_f64()
            );
        }
        Cmd::Details => {
            let r = client
                .guest_details(moat_proto::agent::GuestDetailsRequest {})
                .await?
                .into_inner();
            println!(
                "agent {} kernel {} cpus {} memory {} MiB",
                r.agent_version,
                r.kernel_release,
                r.online_cpus,
                r.memory_total_bytes >> 20
            );
        }
        Cmd::Shutdown => {
            client
                .shutdown(moat_proto::agent::ShutdownRequest {})
                .await?;
            println!("shutdown requested");
        }
    }
    Ok(())
}

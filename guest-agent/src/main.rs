//! moat-agent: PID 1 of a pod's microVM.
//!
//! It mounts the guest's base filesystems, reaps orphans, and serves the
//! host<->agent API (`proto/agent.proto`) on AF_VSOCK. The container engine
//! lives in its own modules as the agent grows.

mod cmdline;
mod pid1;
mod power;
mod server;
mod vsock;

use std::time::Instant;

fn main() {
    let started = Instant::now();
    let is_pid1 = std::process::id() == 1;
    if is_pid1 {
        if let Err(e) = pid1::mount_base_filesystems() {
            // Without /proc and /dev the agent cannot serve; say why on the
            // console and power off so the VMM exits instead of hanging.
            eprintln!("moat-agent: fatal: {e:#}");
            power::poweroff();
        }
    }
    init_logging();
    let cmdline = cmdline::KernelCmdline::read();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        pid1 = is_pid1,
        setup_us = started.elapsed().as_micros() as u64,
        "moat-agent ready"
    );
    if cmdline.test_mode() == Some("poweroff") {
        tracing::info!("moat.test=poweroff: powering off");
        power::poweroff();
    }
    let result = run();
    if let Err(e) = &result {
        tracing::error!("agent stopped: {e:#}");
    }
    if is_pid1 {
        // PID 1 must never exit (the kernel would panic): power off instead.
        power::poweroff();
    }
    if result.is_err() {
        std::process::exit(1);
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MOAT_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .init();
}

fn run() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        if std::process::id() == 1 {
            tokio::spawn(pid1::reap_children());
        }
        server::serve(moat_proto::AGENT_VSOCK_PORT).await
    })
}

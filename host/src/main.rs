//! moatd: the moat CRI daemon.

use clap::Parser;
use moatd::config::Config;
use std::path::PathBuf;

#[derive(Parser)]
#[command(version, about = "moat CRI daemon: every pod in its own KVM microVM")]
struct Cli {
    /// Configuration file (TOML); defaults apply when absent.
    #[arg(long, env = "MOATD_CONFIG")]
    config: Option<PathBuf>,
    /// Validate the configuration, print it, and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if cli.check_config {
        println!("{config:#?}");
        let registries = moatd::image::hosts::check_config_dir(&config.registry_config_dir)?;
        for (registry, hosts) in registries {
            println!("registry {registry}: tries {}", hosts.join(", then "));
        }
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(moatd::cri::serve(config))
}

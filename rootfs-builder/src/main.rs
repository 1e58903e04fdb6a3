//! moat-rootfs: builds what moat guests boot from.

use anyhow::Context;
use clap::{Parser, Subcommand};
use moat_proto::{GUEST_EXIT_PORT, GUEST_EXIT_POWEROFF};
use moat_rootfs::initramfs::{self, ExtraFile};
use std::path::PathBuf;

#[derive(Parser)]
#[command(version, about = "Builds moat guest initramfs archives")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write the guest initramfs (newc cpio) with the agent as /init.
    Initramfs {
        /// The static moat-agent binary.
        #[arg(long)]
        agent: PathBuf,
        /// Output archive.
        #[arg(long)]
        out: PathBuf,
        /// Extra file as HOST_PATH:GUEST_PATH[:OCTAL_MODE] (repeatable).
        #[arg(long = "add", value_name = "SRC:DEST[:MODE]")]
        add: Vec<String>,
    },
    /// Write the boot benchmark's initramfs, whose /init powers off at once.
    PoweroffInitramfs {
        /// Output archive.
        #[arg(long)]
        out: PathBuf,
    },
}

fn parse_extra(spec: &str) -> anyhow::Result<ExtraFile> {
    let mut parts = spec.splitn(3, ':');
    let (Some(src), Some(dest)) = (parts.next(), parts.next()) else {
        anyhow::bail!("--add {spec:?}: expected HOST_PATH:GUEST_PATH[:MODE]");
    };
    let mode = match parts.next() {
        Some(m) => u32::from_str_radix(m, 8)
            .with_context(|| format!("--add {spec:?}: bad octal mode {m:?}"))?,
        None => 0o644,
    };
    Ok(ExtraFile {
        source: src.into(),
        dest: dest.to_string(),
        mode,
    })
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Initramfs { agent, out, add } => {
            let extra = add
                .iter()
                .map(|s| parse_extra(s))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let archive = initramfs::build(&agent, &extra)?;
            let size = initramfs::write_atomic(&archive, &out)?;
            eprintln!("moat-rootfs: wrote {} ({size} bytes)", out.display());
        }
        Cmd::PoweroffInitramfs { out } => {
            let archive = initramfs::build_poweroff(GUEST_EXIT_PORT, GUEST_EXIT_POWEROFF)?;
            let size = initramfs::write_atomic(&archive, &out)?;
            eprintln!("moat-rootfs: wrote {} ({size} bytes)", out.display());
        }
    }
    Ok(())
}

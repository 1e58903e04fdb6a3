//! The guest initramfs: moat-agent as `/init` plus the few directories and
//! device nodes the kernel and the agent need before devtmpfs is mounted.

use crate::cpio::Archive;
use anyhow::Context;
use std::path::{Path, PathBuf};

/// Directories the agent mounts on or writes to at boot.
const DIRS: &[(&str, u32)] = &[
    ("dev", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("run", 0o755),
    ("tmp", 0o1777),
    ("etc", 0o755),
    ("mnt", 0o755),
];

/// An extra host file copied into the initramfs.
#[derive(Debug, Clone)]
pub struct ExtraFile {
    /// File on the host.
    pub source: PathBuf,
    /// Path inside the guest.
    pub dest: String,
    /// Permission bits.
    pub mode: u32,
}

/// Builds the guest initramfs archive with `agent` as `/init`.
pub fn build(agent: &Path, extra: &[ExtraFile]) -> anyhow::Result<Archive> {
    let mut a = Archive::new();
    for (dir, mode) in DIRS {
        a.dir(dir, *mode)?;
    }
    // The kernel opens /dev/console for init's stdio before devtmpfs is up.
    a.char_dev("dev/console", 0o600, 5, 1)?;
    a.char_dev("dev/null", 0o666, 1, 3)?;
    let init =
        std::fs::read(agent).with_context(|| format!("reading agent {}", agent.display()))?;
    if !init.starts_with(b"\x7fELF") {
        anyhow::bail!("agent {} is not an ELF executable", agent.display());
    }
    a.file("init", 0o755, init)?;
    for f in extra {
        let data =
            std::fs::read(&f.source).with_context(|| format!("reading {}", f.source.display()))?;
        a.file(&f.dest, f.mode, data)
            .with_context(|| format!("adding {} as {}", f.source.display(), f.dest))?;
    }
    Ok(a)
}

/// Builds the boot benchmark's initramfs: only [`crate::poweroff_init`] as
/// `/init` (and `/dev/console`, which the kernel opens for it), so a boot
/// ends as soon as the kernel hands over to user space.
pub fn build_poweroff(exit_port: u16, exit_value: u8) -> anyhow::Result<Archive> {
    let mut a = Archive::new();
    a.dir("dev", 0o755)?;
    a.char_dev("dev/console", 0o600, 5, 1)?;
    a.file(
        "init",
        0o755,
        crate::poweroff_init::elf(exit_port, exit_value),
    )?;
    Ok(a)
}

/// Writes `archive` to `out` atomically (temporary file, then rename).
pub fn write_atomic(archive: &Archive, out: &Path) -> anyhow::Result<u64> {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        out.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let bytes = archive.to_bytes();
    std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("renaming to {}", out.display()))?;
    Ok(bytes.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_is_init_and_build_is_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        std::fs::write(&agent, b"\x7fELF-fake-agent").unwrap();
        let a = build(&agent, &[]).unwrap();
        let paths: Vec<_> = a.paths().collect();
        assert!(paths.contains(&"init"));
        assert!(paths.contains(&"dev/console"));
        assert_eq!(a.to_bytes(), build(&agent, &[]).unwrap().to_bytes());
    }

    #[test]
    fn non_elf_agent_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        std::fs::write(&agent, b"#!/bin/sh\n").unwrap();
        let err = build(&agent, &[]).unwrap_err().to_string();
        assert!(err.contains("not an ELF"), "{err}");
    }
}

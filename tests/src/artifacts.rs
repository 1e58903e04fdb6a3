//! Paths of what the build produces (`make artifacts`): the guest kernel,
//! the guest initramfs, and the release binaries.

use std::path::{Path, PathBuf};

/// The workspace root (the directory holding the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Where `make` puts guest artefacts (`MOAT_BUILD_DIR`, default `build/`).
pub fn build_dir() -> PathBuf {
    std::env::var_os("MOAT_BUILD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("build"))
}

/// Cargo's target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn existing(path: PathBuf, what: &str) -> anyhow::Result<PathBuf> {
    if path.exists() {
        Ok(path)
    } else {
        anyhow::bail!(
            "{what} {} is missing: run `make artifacts` first",
            path.display()
        )
    }
}

/// The guest kernel (`build/vmlinux`).
pub fn vmlinux() -> anyhow::Result<PathBuf> {
    existing(build_dir().join("vmlinux"), "guest kernel")
}

/// The guest initramfs with moat-agent as /init (`build/initramfs.cpio`).
pub fn initramfs() -> anyhow::Result<PathBuf> {
    existing(build_dir().join("initramfs.cpio"), "guest initramfs")
}

/// The boot benchmark's initramfs, whose `/init` powers off at once
/// (`build/poweroff.cpio`).
pub fn poweroff_initramfs() -> anyhow::Result<PathBuf> {
    existing(build_dir().join("poweroff.cpio"), "poweroff initramfs")
}

/// The vhost-user-fs daemon `scripts/install-deps.sh` builds
/// (`/usr/local/bin/virtiofsd`).
pub fn virtiofsd() -> anyhow::Result<PathBuf> {
    existing(PathBuf::from("/usr/local/bin/virtiofsd"), "virtiofsd")
}

/// A release binary of the workspace (`target/release/<name>`).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    existing(target_dir().join("release").join(name), "binary")
}

/// The static guest agent (`make agent`: the `guest` profile, static glibc).
pub fn static_agent() -> anyhow::Result<PathBuf> {
    existing(
        target_dir().join("x86_64-unknown-linux-gnu/guest/moat-agent"),
        "static guest agent",
    )
}

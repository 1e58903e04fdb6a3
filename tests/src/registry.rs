//! A real OCI registry on 127.0.0.1 for tests, started with the project's
//! own `scripts/registry.sh` (Debian's docker-registry) and holding the
//! project's busybox image as `moat/busybox:latest`. Stopped on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

/// A running registry.
pub struct Registry {
    /// `127.0.0.1:<port>`.
    pub addr: String,
    dir: tempfile::TempDir,
}

fn script() -> PathBuf {
    crate::artifacts::workspace_root().join("scripts/registry.sh")
}

impl Registry {
    /// Starts a registry on a free loopback port and pushes the test image.
    pub fn start() -> anyhow::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        let dir = tempfile::Builder::new()
            .prefix("moat-registry-")
            .tempdir()?;
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .env("MOAT_REGISTRY_ADDR", &addr)
            .env("MOAT_REGISTRY_DIR", dir.path())
            .output()?;
        let reg = Self { addr, dir };
        if !out.status.success() {
            anyhow::bail!(
                "starting the registry failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(reg)
    }

    /// Full reference of the test image in this registry.
    pub fn busybox(&self) -> String {
        format!("{}/moat/busybox:latest", self.addr)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .env("MOAT_REGISTRY_ADDR", &self.addr)
            .env("MOAT_REGISTRY_DIR", self.dir.path())
            .output();
    }
}

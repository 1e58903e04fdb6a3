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

/// The test image's OCI layout: `MOAT_TEST_IMAGE_LAYOUT`, else
/// `images/busybox` in the build directory (`MOAT_BUILD_DIR`).
fn test_image_layout() -> PathBuf {
    std::env::var_os("MOAT_TEST_IMAGE_LAYOUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::artifacts::build_dir().join("images/busybox"))
}

impl Registry {
    /// Starts a registry on a free loopback port and pushes the test image.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(&[])
    }

    /// Like [`Registry::start`], serving HTTPS with the PEM certificate
    /// `cert` and its key `key`.
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<Self> {
        Self::start_with(&[
            ("MOAT_REGISTRY_TLS_CERT", cert.as_os_str()),
            ("MOAT_REGISTRY_TLS_KEY", key.as_os_str()),
        ])
    }

    /// Like [`Registry::start_tls`], demanding a client certificate signed
    /// by `client_ca`; the push presents the one in `push_cert_dir`
    /// (Docker's `client.cert`/`client.key`).
    pub fn start_mtls(
        cert: &std::path::Path,
        key: &std::path::Path,
        client_ca: &std::path::Path,
        push_cert_dir: &std::path::Path,
    ) -> anyhow::Result<Self> {
        Self::start_with(&[
            ("MOAT_REGISTRY_TLS_CERT", cert.as_os_str()),
            ("MOAT_REGISTRY_TLS_KEY", key.as_os_str()),
            ("MOAT_REGISTRY_CLIENT_CA", client_ca.as_os_str()),
            ("MOAT_REGISTRY_PUSH_CERT_DIR", push_cert_dir.as_os_str()),
        ])
    }

    /// Like [`Registry::start`], demanding `user` and `password` (HTTP
    /// basic auth from an htpasswd file).
    pub fn start_with_password(user: &str, password: &str) -> anyhow::Result<Self> {
        Self::start_with(&[
            ("MOAT_REGISTRY_USER", std::ffi::OsStr::new(user)),
            ("MOAT_REGISTRY_PASSWORD", std::ffi::OsStr::new(password)),
        ])
    }

    fn start_with(env: &[(&str, &std::ffi::OsStr)]) -> anyhow::Result<Self> {
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
            .env("MOAT_TEST_IMAGE_LAYOUT", test_image_layout())
            .envs(env.iter().copied())
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

    /// Full reference of the netadmin image (busybox + iptables), pushed
    /// when `make images` built it beside the busybox image.
    pub fn netadmin(&self) -> String {
        format!("{}/moat/netadmin:latest", self.addr)
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

//! CRI clients other people wrote, in Python: `tests/python/cri_client.py`
//! run in the venv `scripts/python-cri-env.sh` makes (grpcio, grpcio-tools,
//! hyper-h2), with stubs generated at run time from the CRI proto of the
//! `k8s-cri` crate moat builds against.

use crate::artifacts::workspace_root;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The venv's python (made on first use; the script is idempotent).
pub fn python() -> anyhow::Result<PathBuf> {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let out = Command::new("bash")
                .arg(workspace_root().join("scripts/python-cri-env.sh"))
                .output()
                .map_err(|e| format!("running scripts/python-cri-env.sh: {e}"))?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            match stdout.lines().last() {
                Some(p) if out.status.success() => Ok(PathBuf::from(p.trim())),
                _ => Err(format!(
                    "scripts/python-cri-env.sh failed ({}): {stdout}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                )),
            }
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The CRI runtime.v1 proto in the source of the `k8s-cri` crate the
/// workspace builds against (found through `cargo metadata`).
pub fn cri_proto() -> anyhow::Result<PathBuf> {
    match cri_proto_from_metadata() {
        Ok(p) => Ok(p),
        // In the test node (no writable cargo home, HOME elsewhere): the
        // version Cargo.lock pins, in the host's registry sources.
        Err(e) => cri_proto_from_lock().map_err(|e2| anyhow::anyhow!("{e:#}; {e2:#}")),
    }
}

/// The proto of the `k8s-cri` version `Cargo.lock` pins, in the cargo
/// registry's unpacked sources (`MOAT_CARGO_HOME`, `CARGO_HOME` or
/// `~/.cargo`).
fn cri_proto_from_lock() -> anyhow::Result<PathBuf> {
    let lock = std::fs::read_to_string(workspace_root().join("Cargo.lock"))?;
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"k8s-cri\""))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"').to_string())
        .ok_or_else(|| anyhow::anyhow!("k8s-cri is not in Cargo.lock"))?;
    let home = std::env::var_os("MOAT_CARGO_HOME")
        .or_else(|| std::env::var_os("CARGO_HOME"))
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .ok_or_else(|| anyhow::anyhow!("no cargo home"))?;
    let src = home.join("registry/src");
    for index in std::fs::read_dir(&src)?.flatten() {
        let proto = index
            .path()
            .join(format!("k8s-cri-{version}/proto/v1.proto"));
        if proto.exists() {
            return Ok(proto);
        }
    }
    anyhow::bail!(
        "k8s-cri-{version}/proto/v1.proto is not under {}",
        src.display()
    )
}

fn cri_proto_from_metadata() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // Only this platform's packages: the others need not be downloaded.
    let platform = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline"])
        .args(["--filter-platform", &platform])
        .current_dir(workspace_root())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let manifest = meta["packages"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "k8s-cri"))
        .and_then(|p| p["manifest_path"].as_str())
        .ok_or_else(|| anyhow::anyhow!("k8s-cri is not in cargo metadata"))?;
    let proto = Path::new(manifest)
        .parent()
        .unwrap_or(Path::new("."))
        .join("proto/v1.proto");
    anyhow::ensure!(proto.exists(), "{} is missing", proto.display());
    Ok(proto)
}

/// What one `cri_client.py` run printed: one JSON object per call, and
/// whether it exited 0.
#[derive(Debug)]
pub struct ClientRun {
    /// The JSON lines, in call order.
    pub results: Vec<serde_json::Value>,
    /// Exit status 0 (every call succeeded).
    pub success: bool,
    /// Its stderr (Python tracebacks).
    pub stderr: String,
}

/// Runs `tests/python/cri_client.py` with `args` (see its `--help`: `grpc
/// --socket S --proto P CALL...` or `raw-version --socket S --authority A`).
pub fn cri_client(args: &[&str]) -> anyhow::Result<ClientRun> {
    let out = Command::new(python()?)
        .arg(workspace_root().join("tests/python/cri_client.py"))
        .args(args)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let results = stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<Vec<serde_json::Value>, _>>()
        .map_err(|e| anyhow::anyhow!("cri_client.py printed something not JSON ({e}): {stdout}"))?;
    Ok(ClientRun {
        results,
        success: out.status.success(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// `cri_client.py grpc` on `socket`: grpcio with its default `:authority`
/// (or `authority`), making `calls` (`Service/Method[=JSON]`) in order.
pub fn grpc_calls(
    socket: &Path,
    authority: Option<&str>,
    calls: &[String],
) -> anyhow::Result<ClientRun> {
    let proto = cri_proto()?;
    let socket = socket.to_string_lossy();
    let proto = proto.to_string_lossy();
    let mut args = vec!["grpc", "--socket", &socket, "--proto", &proto];
    if let Some(a) = authority {
        args.extend(["--authority", a]);
    }
    args.extend(calls.iter().map(String::as_str));
    cri_client(&args)
}

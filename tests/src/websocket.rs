//! The streaming tests' WebSocket clients, written by others: Debian's
//! python3-websocket driving `tests/python/ws_channels.py` (exec, attach)
//! and `tests/python/ws_portforward.py` (kubelet's port-forward form).

use crate::artifacts::workspace_root;
use serde_json::Value;
use std::process::Command;

/// Runs the WebSocket client on `url` with `protocol` and `actions`.
pub fn ws(url: &str, protocol: &str, actions: Value) -> Value {
    try_ws(url, protocol, actions).unwrap_or_else(|e| panic!("{e}"))
}

/// [`ws`], answering the client's failure instead of panicking.
pub fn try_ws(url: &str, protocol: &str, actions: Value) -> Result<Value, String> {
    let out = Command::new("/usr/bin/python3")
        .arg(workspace_root().join("tests/python/ws_channels.py"))
        .args([url, protocol, &actions.to_string()])
        .output()
        .expect("python3 (install python3-websocket: scripts/install-deps.sh)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "ws_channels.py failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_str(stdout.trim()).map_err(|e| format!("{e}: {stdout}"))
}

/// What channel `ch` carried.
pub fn channel(v: &Value, ch: u8) -> &str {
    v["channels"][ch.to_string()].as_str().unwrap_or("")
}

/// The v4+ status on the error channel.
pub fn status(v: &Value) -> Value {
    serde_json::from_str(channel(v, 3)).unwrap_or_else(|e| panic!("status: {e}: {v}"))
}

/// kubelet's WebSocket port-forward through `ws_portforward.py`.
pub fn ws_forward(url: &str, protocol: &str, send: &str) -> Value {
    let out = Command::new("/usr/bin/python3")
        .arg(workspace_root().join("tests/python/ws_portforward.py"))
        .args([url, protocol, send])
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ws_portforward.py failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

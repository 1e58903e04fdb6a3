//! The control API: line-delimited JSON over a Unix socket.
//!
//! Each request is one JSON object on one line, with an `op` field; each
//! answer is one line: `{"ok":true,"result":...}` or
//! `{"ok":false,"error":"..."}`. See `vmm/README.md` for the operations.

pub mod server;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Default wait of a graceful shutdown request.
pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 10_000;

fn default_timeout() -> u64 {
    DEFAULT_SHUTDOWN_TIMEOUT_MS
}

/// One control request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Empty struct variants (not unit variants) so `deny_unknown_fields`
// also rejects stray fields on `state`, `pause`, `resume`, `counters`.
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Attach a host file to an empty block slot.
    AttachDrive {
        /// Slot index.
        slot: u32,
        /// Host file.
        path: PathBuf,
        /// Reject guest writes.
        #[serde(default)]
        read_only: bool,
    },
    /// Detach the file of a slot.
    DetachDrive {
        /// Slot index.
        slot: u32,
    },
    /// Report run state, sizing and slots.
    State {},
    /// Stop all vCPUs.
    Pause {},
    /// Restart paused vCPUs.
    Resume {},
    /// Wait up to `timeout_ms` for the guest to power off, then kill it.
    Shutdown {
        /// How long to wait.
        #[serde(default = "default_timeout")]
        timeout_ms: u64,
    },
    /// Exit and device counters.
    Counters {},
}

/// Parses one request line; the error text names the problem.
pub fn parse_request(line: &str) -> Result<Request, String> {
    serde_json::from_str(line).map_err(|e| format!("bad request: {e}"))
}

/// Encodes a success answer.
pub fn ok_response(result: serde_json::Value) -> String {
    serde_json::json!({ "ok": true, "result": result }).to_string()
}

/// Encodes an error answer.
pub fn error_response(msg: &str) -> String {
    serde_json::json!({ "ok": false, "error": msg }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_ops() {
        assert_eq!(
            parse_request(r#"{"op":"attach_drive","slot":1,"path":"/a.img","read_only":true}"#)
                .unwrap(),
            Request::AttachDrive {
                slot: 1,
                path: "/a.img".into(),
                read_only: true
            }
        );
        assert_eq!(
            parse_request(r#"{"op":"state"}"#).unwrap(),
            Request::State {}
        );
        assert_eq!(
            parse_request(r#"{"op":"shutdown"}"#).unwrap(),
            Request::Shutdown {
                timeout_ms: DEFAULT_SHUTDOWN_TIMEOUT_MS
            }
        );
        assert!(parse_request(r#"{"op":"detach_drive"}"#)
            .unwrap_err()
            .contains("slot"));
        assert!(parse_request(r#"{"op":"state","x":1}"#)
            .unwrap_err()
            .contains("unknown field"));
        assert!(parse_request(r#"{"op":"explode"}"#).is_err());
        assert!(parse_request("not json").is_err());
    }

    #[test]
    fn responses() {
        let v: serde_json::Value =
            serde_json::from_str(&ok_response(serde_json::json!(1))).unwrap();
        assert_eq!(v["ok"], true);
        let v: serde_json::Value =
            serde_json::from_str(&error_response("slot 3 is empty")).unwrap();
        assert_eq!(v["error"], "slot 3 is empty");
    }
}

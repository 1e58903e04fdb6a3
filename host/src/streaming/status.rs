//! How a remote command's end is told on the error channel: a JSON
//! `metav1.Status` from protocol version 4 on (Success, or Failure with
//! reason `NonZeroExitCode` and the exit code as an `ExitCode` cause), a
//! plain message for failures before that, as Kubernetes' remotecommand
//! server writes them.

use serde_json::json;

/// How the command ended, from the session's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It exited with this code (128 + n when killed by signal n).
    Exited(i32),
    /// It could not be run or waited for.
    Error(String),
}

/// What goes on the error channel for `outcome` with protocol `version`
/// (1 to 5); None when nothing is sent (success before version 4).
pub fn status_message(outcome: &Outcome, version: u8) -> Option<Vec<u8>> {
    let status = match outcome {
        Outcome::Exited(0) => json!({"metadata": {}, "status": "Success"}),
        Outcome::Exited(code) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Outcome::Error(m) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("error executing command in container: {m}"),
            "reason": "InternalError",
            "details": {"causes": [{"message": format!("error executing command in container: {m}")}]},
            "code": 500,
        }),
    };
    if version >= 4 {
        return Some(status.to_string().into_bytes());
    }
    match outcome {
        Outcome::Exited(0) => None,
        _ => status["message"].as_str().map(|m| m.as_bytes().to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(b: Option<Vec<u8>>) -> serde_json::Value {
        serde_json::from_slice(&b.unwrap()).unwrap()
    }

    #[test]
    fn v4_reports_success_and_exit_codes() {
        let ok = parse(status_message(&Outcome::Exited(0), 4));
        assert_eq!(ok, json!({"metadata": {}, "status": "Success"}));
        let failed = parse(status_message(&Outcome::Exited(3), 5));
        assert_eq!(failed["status"], "Failure");
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(
            failed["details"]["causes"],
            json!([{"reason": "ExitCode", "message": "3"}])
        );
    }

    #[test]
    fn before_v4_only_failures_are_told_as_text() {
        assert_eq!(status_message(&Outcome::Exited(0), 1), None);
        let m = status_message(&Outcome::Exited(2), 3).unwrap();
        assert_eq!(
            String::from_utf8(m).unwrap(),
            "command terminated with non-zero exit code: exit status 2"
        );
    }
}

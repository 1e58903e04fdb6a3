//! How moatctl prints things: state names, short ids and the text of CRI
//! log records.

use moat_proto::cri::{ContainerState, PodSandboxState};

/// A container state's name as `ps` and `inspect` print it.
pub fn container_state_name(state: i32) -> &'static str {
    match ContainerState::try_from(state) {
        Ok(ContainerState::ContainerCreated) => "Created",
        Ok(ContainerState::ContainerRunning) => "Running",
        Ok(ContainerState::ContainerExited) => "Exited",
        _ => "Unknown",
    }
}

/// The first 13 characters of an id, as listings print it.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(13)]
}

/// The text of CRI log records: partial records join the next one.
pub fn log_text(content: &str) -> String {
    let mut out = String::new();
    for line in content.lines() {
        let mut parts = line.splitn(4, ' ');
        let (_, _, tag, text) = (parts.next(), parts.next(), parts.next(), parts.next());
        out.push_str(text.unwrap_or(""));
        if tag != Some("P") {
            out.push('\n');
        }
    }
    out
}

/// A pod sandbox state's name as `pods` and `inspectp` print it.
pub fn state_name(state: i32) -> &'static str {
    if state == PodSandboxState::SandboxReady as i32 {
        "Ready"
    } else {
        "NotReady"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_records_join_partials() {
        let c = "2026-01-01T00:00:00.1Z stdout P hel\n2026-01-01T00:00:00.2Z stdout F lo\n2026-01-01T00:00:00.3Z stderr F x y\n";
        assert_eq!(log_text(c), "hello\nx y\n");
    }
}

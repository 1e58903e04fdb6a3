//! The guest kernel command line, as far as the agent reads it.

use std::collections::HashMap;

/// `key=value` words of `/proc/cmdline` (a bare `key` maps to "").
#[derive(Debug, Default)]
pub struct KernelCmdline {
    params: HashMap<String, String>,
}

impl KernelCmdline {
    /// Reads `/proc/cmdline`; an unreadable file yields an empty command line.
    pub fn read() -> Self {
        std::fs::read_to_string("/proc/cmdline")
            .map(|s| Self::parse(&s))
            .unwrap_or_default()
    }

    /// Parses a command line made of whitespace-separated words.
    pub fn parse(line: &str) -> Self {
        let params = line
            .split_whitespace()
            .map(|w| match w.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (w.to_string(), String::new()),
            })
            .collect();
        Self { params }
    }

    /// Value of `moat.test=`, which selects test-only behaviour.
    pub fn test_mode(&self) -> Option<&str> {
        self.params
            .get(moat_proto::CMDLINE_TEST_KEY)
            .map(String::as_str)
    }

    /// Value of `moat.volumes=`: the virtio-fs tag of the pod's volumes.
    pub fn volumes_tag(&self) -> Option<&str> {
        self.params
            .get(moat_proto::CMDLINE_VOLUMES_KEY)
            .map(String::as_str)
            .filter(|t| !t.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keys_and_flags() {
        let c = KernelCmdline::parse("console=ttyS0 quiet moat.test=poweroff\n");
        assert_eq!(c.test_mode(), Some("poweroff"));
        assert_eq!(c.params.get("quiet").map(String::as_str), Some(""));
        assert_eq!(KernelCmdline::parse("").test_mode(), None);
        assert_eq!(c.volumes_tag(), None);
        let c = KernelCmdline::parse("quiet moat.volumes=pod-volumes");
        assert_eq!(c.volumes_tag(), Some("pod-volumes"));
        assert_eq!(KernelCmdline::parse("moat.volumes=").volumes_tag(), None);
    }
}

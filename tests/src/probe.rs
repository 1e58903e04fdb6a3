//! Decides whether VM tests can run directly on this host's KVM or must run
//! inside the test node, and says why.

use std::fmt;
use std::path::Path;

/// Where tests that boot microVMs run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmSupport {
    /// `/dev/kvm` with hardware virtualization (VMX or SVM): run directly.
    Direct {
        /// The CPU feature found ("vmx" or "svm").
        feature: String,
    },
    /// The host cannot boot an ordinary Linux guest; use the test node.
    Node {
        /// Why the host cannot run guests itself.
        reason: String,
    },
    /// Neither works.
    Unavailable {
        /// What is missing.
        reason: String,
    },
}

impl fmt::Display for VmSupport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmSupport::Direct { feature } => {
                write!(f, "VM tests run directly on the host's KVM ({feature})")
            }
            VmSupport::Node { reason } => {
                write!(f, "VM tests run inside the test node: {reason}")
            }
            VmSupport::Unavailable { reason } => write!(f, "VM tests cannot run: {reason}"),
        }
    }
}

/// What the probe looks at; split out so the decision can be unit-tested.
#[derive(Debug, Clone)]
pub struct HostFacts {
    /// `/dev/kvm` exists and opens read-write.
    pub kvm_usable: bool,
    /// `/sys/module/kvm_pvm` exists.
    pub kvm_is_pvm: bool,
    /// "vmx" or "svm" if /proc/cpuinfo lists it.
    pub hw_virt: Option<String>,
    /// The test node can be started (QEMU and a node kernel are present).
    pub node_available: Result<(), String>,
}

impl HostFacts {
    /// Reads the facts from this machine.
    pub fn gather() -> Self {
        let kvm_usable = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        let kvm_is_pvm = Path::new("/sys/module/kvm_pvm").exists();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let hw_virt = cpu_virt_feature(&cpuinfo);
        let node_available = crate::node::NodeConfig::detect()
            .map(|_| ())
            .map_err(|e| e.to_string());
        Self {
            kvm_usable,
            kvm_is_pvm,
            hw_virt,
            node_available,
        }
    }

    /// The decision.
    pub fn decide(&self) -> VmSupport {
        let direct_blocker = if !self.kvm_usable {
            Some("/dev/kvm is missing or cannot be opened".to_string())
        } else if self.kvm_is_pvm {
            Some(
                "host KVM is PVM (kvm_pvm loaded), which cannot boot an ordinary Linux guest"
                    .to_string(),
            )
        } else if self.hw_virt.is_none() {
            Some("the CPU has no vmx/svm flag".to_string())
        } else {
            None
        };
        match (direct_blocker, &self.node_available) {
            (None, _) => VmSupport::Direct {
                feature: self.hw_virt.clone().unwrap_or_default(),
            },
            (Some(reason), Ok(())) => VmSupport::Node { reason },
            (Some(reason), Err(node)) => VmSupport::Unavailable {
                reason: format!("{reason}; and the test node cannot start: {node}"),
            },
        }
    }
}

/// "vmx" or "svm" if a `flags` line of /proc/cpuinfo has it.
pub fn cpu_virt_feature(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split_whitespace())
        .find(|f| *f == "vmx" || *f == "svm")
        .map(str::to_string)
}

/// Probes this host (the result is cached for the process) and prints the
/// decision once to stderr.
pub fn probe() -> VmSupport {
    static ONCE: std::sync::OnceLock<VmSupport> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let support = HostFacts::gather().decide();
        eprintln!("moat: {support}");
        support
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(kvm: bool, pvm: bool, virt: Option<&str>, node: bool) -> HostFacts {
        HostFacts {
            kvm_usable: kvm,
            kvm_is_pvm: pvm,
            hw_virt: virt.map(str::to_string),
            node_available: if node { Ok(()) } else { Err("no qemu".into()) },
        }
    }

    #[test]
    fn hardware_virt_runs_directly() {
        assert_eq!(
            facts(true, false, Some("svm"), false).decide(),
            VmSupport::Direct {
                feature: "svm".into()
            }
        );
    }

    #[test]
    fn pvm_host_uses_the_node() {
        let d = facts(true, true, None, true).decide();
        assert!(
            matches!(&d, VmSupport::Node { reason } if reason.contains("PVM")),
            "{d:?}"
        );
        // PVM wins even if a flag were listed.
        assert!(matches!(
            facts(true, true, Some("vmx"), true).decide(),
            VmSupport::Node { .. }
        ));
    }

    #[test]
    fn nothing_usable_is_reported() {
        let d = facts(false, false, None, false).decide();
        assert!(
            matches!(&d, VmSupport::Unavailable { reason } if reason.contains("/dev/kvm") && reason.contains("no qemu"))
        );
    }

    #[test]
    fn finds_cpu_flags() {
        assert_eq!(
            cpu_virt_feature("flags\t: fpu vme svm sse\n").as_deref(),
            Some("svm")
        );
        assert_eq!(cpu_virt_feature("flags\t: fpu vmxx\nmodel: vmx\n"), None);
    }
}

//! moatd's configuration file (TOML).
//!
//! Every key has a default; see [`Config`] for the keys and `README.md` for
//! an example. A runtime handler maps the CRI `runtime_handler` name of a
//! pod to the guest it boots.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Why a configuration is rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown keys.
    #[error("parsing {path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// The error.
        source: toml::de::Error,
    },
    /// A value is out of range or inconsistent; names the key.
    #[error("invalid config: {key}: {reason}")]
    Invalid {
        /// Dotted key path.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// moatd's whole configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// CRI gRPC Unix socket (default `/run/moat/moat.sock`).
    pub socket: PathBuf,
    /// Durable state: the embedded store, images (default `/var/lib/moat`).
    pub state_dir: PathBuf,
    /// Per-pod runtime files: VMM sockets, consoles (default `/run/moat/pods`).
    pub run_dir: PathBuf,
    /// moatd and VMM logs (default `/var/log/moat`).
    pub log_dir: PathBuf,
    /// Handler used when a pod's `runtime_handler` is empty (default `runc`,
    /// the native one).
    pub default_runtime_handler: String,
    /// Runtime handlers by name.
    pub runtime_handlers: BTreeMap<String, RuntimeHandler>,
    /// CNI network configuration directory; the first file (by name) is used
    /// (default `/etc/cni/net.d`).
    pub cni_conf_dir: PathBuf,
    /// Where CNI plugin binaries are looked for
    /// (default `/usr/lib/cni`, `/opt/cni/bin`).
    pub cni_bin_dirs: Vec<PathBuf>,
    /// How long a new pod VM may take to answer from its agent (default 60 s).
    pub agent_timeout_secs: u64,
    /// Registries spoken to over plain HTTP besides loopback ones (default none).
    pub insecure_registries: Vec<String>,
    /// Registry mirrors and per-registry TLS settings: containerd's
    /// `certs.d` layout, one directory per registry host (`docker.io`,
    /// `127.0.0.1:5000`, `_default`) holding a `hosts.toml`; read at each
    /// pull (default `/etc/moat/certs.d`; containerd's is
    /// `/etc/containerd/certs.d`).
    pub registry_config_dir: PathBuf,
    /// Cgroup driver reported to kubelet: "systemd" or "cgroupfs" (default "systemd").
    pub cgroup_driver: String,
    /// The streaming server kubelet sends exec, attach and port-forward
    /// sessions to.
    pub streaming: StreamingConfig,
    /// Limits on what a registry may send (images are untrusted).
    pub image_limits: ImageLimits,
    /// How each VMM is jailed.
    pub vmm_jail: VmmJail,
}

/// Each VMM's jail: a uid and gid of its own from a range no one else
/// uses, and its VM directory as its root (see `moat_vmm::confine`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct VmmJail {
    /// Jail every VMM (default true; off only for debugging).
    pub enabled: bool,
    /// First uid (and gid) of the range VMMs take theirs from (default
    /// 1 500 000 000, far above login users and kubelet's user-namespace
    /// ranges).
    pub uid_start: u32,
    /// How many ids the range holds: at most this many pod VMs at once
    /// (default 65536).
    pub uid_count: u32,
}

impl Default for VmmJail {
    fn default() -> Self {
        Self {
            enabled: true,
            uid_start: 1_500_000_000,
            uid_count: 65536,
        }
    }
}

/// Limits on what a registry may send.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ImageLimits {
    /// Largest layer accepted, in bytes as it travels (default 8 GiB). A
    /// layer must also arrive with exactly the size its manifest declares;
    /// the download stops at the first byte past either.
    pub max_layer_bytes: u64,
    /// A pull still running after this long is stopped and leaves nothing
    /// behind (default 1 h). Pulls of other images never wait on it.
    pub pull_timeout_secs: u64,
    /// Most bytes of file data an image may unpack to, all layers together
    /// (default 64 GiB): a decompression bomb stops here, before its layer
    /// is written.
    pub max_unpacked_bytes: u64,
    /// Most entries (files, directories, links) an image may hold, all
    /// layers together (default 1 000 000).
    pub max_unpacked_entries: u64,
    /// Largest manifest or image index accepted, in bytes (default 4 MiB,
    /// the limit Docker's registry puts on manifests it stores).
    pub max_manifest_bytes: u64,
    /// Largest image config accepted, in bytes (default 8 MiB).
    pub max_config_bytes: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            max_layer_bytes: 8 << 30,
            pull_timeout_secs: 3600,
            max_unpacked_bytes: 64 << 30,
            max_unpacked_entries: 1_000_000,
            max_manifest_bytes: 4 << 20,
            max_config_bytes: 8 << 20,
        }
    }
}

/// The streaming server (containerd's `stream_server_*` settings).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StreamingConfig {
    /// Address it listens on (default `127.0.0.1`: kubelet, on the same
    /// node, proxies the user's stream to it).
    pub address: String,
    /// TCP port (default 0: a free port chosen at start).
    pub port: u16,
    /// A session idle this long (no bytes either way) is closed (default
    /// 4 h, as kubelet and containerd).
    pub idle_timeout_secs: u64,
    /// PEM certificate chain; with `tls_key_file`, sessions are served
    /// over TLS (`https://` URLs). Neither: plain HTTP.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        Self {
            address: "127.0.0.1".into(),
            port: 0,
            idle_timeout_secs: 4 * 3600,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

/// How a handler runs a pod's containers.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HandlerKind {
    /// In a microVM of the pod's own (the fields below size it).
    #[default]
    Microvm,
    /// On the host, through an OCI runtime binary (`runtime_path`), with
    /// moat-agent beside the pod as its shim: ordinary containers, host
    /// namespaces allowed.
    Oci,
}

/// One runtime handler: its kind, and for a VM handler which guest a pod
/// boots and how big its VM is.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeHandler {
    /// `microvm` (default) or `oci`.
    pub kind: HandlerKind,
    /// The OCI runtime binary of an `oci` handler (default `/usr/sbin/runc`).
    pub runtime_path: PathBuf,
    /// The moat-agent binary an `oci` handler runs beside each pod
    /// (default: `moat-agent` beside moatd, else on PATH).
    pub agent: Option<PathBuf>,
    /// Guest kernel (uncompressed ELF vmlinux).
    pub kernel: PathBuf,
    /// Guest initramfs with moat-agent as /init.
    pub initramfs: PathBuf,
    /// The moat-vmm binary (default: `moat-vmm` beside moatd, else on PATH).
    pub vmm: Option<PathBuf>,
    /// The vhost-user-fs daemon that shares a pod VM's volumes (default
    /// `/usr/local/bin/virtiofsd`, where install-deps builds it).
    pub virtiofsd: PathBuf,
    /// vCPUs when the pod gives no CPU limits (default 1).
    pub default_vcpus: u32,
    /// Guest memory in MiB when the pod gives no memory limits (default 256).
    pub default_memory_mib: u32,
    /// Memory added to the sum of container limits for the guest kernel and agent (default 64).
    pub overhead_memory_mib: u32,
    /// Largest VM a pod may get: vCPUs (default 8).
    pub max_vcpus: u32,
    /// Largest VM a pod may get: MiB (default 16384).
    pub max_memory_mib: u32,
    /// virtio-blk slots per VM, one per container image in use (default 8).
    pub blk_slots: u32,
    /// Whether a privileged pod or container may run in the VM, privileged
    /// over its own guest only (Kata's `privileged_without_host_devices`);
    /// default false: refused, as it would never get the node's privileges
    /// it asks for.
    pub guest_privileged: bool,
}

/// The built-in native handler's name: pods without a RuntimeClass run
/// there by default, as with containerd.
pub const NATIVE_HANDLER: &str = "runc";

impl RuntimeHandler {
    /// The built-in native handler: runc from the distribution.
    pub fn native() -> Self {
        Self {
            kind: HandlerKind::Oci,
            ..Self::default()
        }
    }

    /// The moat-agent binary of a native pod: as configured, else beside
    /// the running moatd, else `moat-agent` on PATH.
    pub fn agent_binary(&self) -> PathBuf {
        if let Some(a) = &self.agent {
            return a.clone();
        }
        beside_moatd("moat-agent")
    }

    /// The moat-vmm binary: as configured, else beside the running moatd,
    /// else `moat-vmm` on PATH.
    pub fn vmm_binary(&self) -> PathBuf {
        if let Some(v) = &self.vmm {
            return v.clone();
        }
        beside_moatd("moat-vmm")
    }
}

/// `name` beside the running moatd if it is there, else `name` (on PATH).
fn beside_moatd(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(name)))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

impl Default for Config {
    fn default() -> Self {
        let mut runtime_handlers = BTreeMap::new();
        runtime_handlers.insert("microvm".to_string(), RuntimeHandler::default());
        runtime_handlers.insert(NATIVE_HANDLER.to_string(), RuntimeHandler::native());
        Self {
            socket: "/run/moat/moat.sock".into(),
            state_dir: "/var/lib/moat".into(),
            run_dir: "/run/moat/pods".into(),
            log_dir: "/var/log/moat".into(),
            default_runtime_handler: NATIVE_HANDLER.into(),
            runtime_handlers,
            cni_conf_dir: "/etc/cni/net.d".into(),
            cni_bin_dirs: vec!["/usr/lib/cni".into(), "/opt/cni/bin".into()],
            agent_timeout_secs: 60,
            insecure_registries: Vec::new(),
            registry_config_dir: "/etc/moat/certs.d".into(),
            cgroup_driver: "systemd".into(),
            streaming: StreamingConfig::default(),
            image_limits: ImageLimits::default(),
            vmm_jail: VmmJail::default(),
        }
    }
}

impl Default for RuntimeHandler {
    fn default() -> Self {
        Self {
            kind: HandlerKind::Microvm,
            runtime_path: "/usr/sbin/runc".into(),
            agent: None,
            kernel: "/usr/share/moat/vmlinux".into(),
            initramfs: "/usr/share/moat/initramfs.cpio".into(),
            vmm: None,
            virtiofsd: "/usr/local/bin/virtiofsd".into(),
            default_vcpus: 1,
            default_memory_mib: 256,
            overhead_memory_mib: 64,
            max_vcpus: 8,
            max_memory_mib: 16384,
            blk_slots: 8,
            guest_privileged: false,
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: origin.to_string(),
            source,
        })?;
        // The native `runc` handler is always there (containerd's default),
        // unless the file configures a handler of that name itself.
        cfg.runtime_handlers
            .entry(NATIVE_HANDLER.to_string())
            .or_insert_with(RuntimeHandler::native);
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks ranges and cross-references.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, reason: &str| ConfigError::Invalid {
            key,
            reason: reason.to_string(),
        };
        if !self
            .runtime_handlers
            .contains_key(&self.default_runtime_handler)
        {
            return Err(invalid(
                "default_runtime_handler".into(),
                &format!(
                    "{:?} is not a configured runtime handler",
                    self.default_runtime_handler
                ),
            ));
        }
        if !matches!(self.cgroup_driver.as_str(), "systemd" | "cgroupfs") {
            return Err(invalid(
                "cgroup_driver".into(),
                "must be \"systemd\" or \"cgroupfs\"",
            ));
        }
        if self.agent_timeout_secs == 0 {
            return Err(invalid("agent_timeout_secs".into(), "must be at least 1"));
        }
        if self.streaming.address.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid("streaming.address".into(), "must be an IP address"));
        }
        if self.streaming.idle_timeout_secs == 0 {
            return Err(invalid(
                "streaming.idle_timeout_secs".into(),
                "must be at least 1",
            ));
        }
        let j = self.vmm_jail;
        if j.uid_start == 0 || j.uid_count == 0 || j.uid_start.checked_add(j.uid_count).is_none() {
            return Err(invalid(
                "vmm_jail.uid_start".into(),
                "uid_start and uid_count must be at least 1 and end below 2^32",
            ));
        }
        if self.image_limits.max_layer_bytes == 0 {
            return Err(invalid(
                "image_limits.max_layer_bytes".into(),
                "must be at least 1",
            ));
        }
        for (key, v) in [
            ("pull_timeout_secs", self.image_limits.pull_timeout_secs),
            ("max_unpacked_bytes", self.image_limits.max_unpacked_bytes),
            (
                "max_unpacked_entries",
                self.image_limits.max_unpacked_entries,
            ),
        ] {
            if v == 0 {
                return Err(invalid(format!("image_limits.{key}"), "must be at least 1"));
            }
        }
        if self.streaming.tls_cert_file.is_some() != self.streaming.tls_key_file.is_some() {
            return Err(invalid(
                "streaming.tls_cert_file".into(),
                "tls_cert_file and tls_key_file go together",
            ));
        }
        for (name, h) in &self.runtime_handlers {
            let key = |k: &str| format!("runtime_handlers.{name}.{k}");
            if name.is_empty() {
                return Err(invalid(
                    "runtime_handlers".into(),
                    "handler names must not be empty",
                ));
            }
            if h.default_vcpus == 0 || h.default_vcpus > h.max_vcpus {
                return Err(invalid(
                    key("default_vcpus"),
                    "must be between 1 and max_vcpus",
                ));
            }
            if h.blk_slots == 0 || h.blk_slots > 32 {
                return Err(invalid(key("blk_slots"), "must be between 1 and 32"));
            }
            if h.max_vcpus > 254 {
                return Err(invalid(key("max_vcpus"), "must be at most 254"));
            }
            if h.default_memory_mib < 64 || h.default_memory_mib > h.max_memory_mib {
                return Err(invalid(
                    key("default_memory_mib"),
                    "must be between 64 and max_memory_mib",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_example_is_a_valid_config_of_the_defaults() {
        let readme = include_str!("../../README.md");
        let section = &readme[readme.find("## Configuring moatd").unwrap()..];
        let start = section.find("```toml\n").unwrap() + "```toml\n".len();
        let example = &section[start..start + section[start..].find("```").unwrap()];
        let parsed = Config::parse(example, "README.md").unwrap();
        // The example shows the defaults.
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(Config::parse("", "t").unwrap(), Config::default());
    }

    #[test]
    fn handlers_are_read() {
        let cfg = Config::parse(
            r#"
            default_runtime_handler = "small"
            [runtime_handlers.small]
            kernel = "/k"
            initramfs = "/i"
            default_memory_mib = 128
            "#,
            "t",
        )
        .unwrap();
        let h = &cfg.runtime_handlers["small"];
        assert_eq!(h.kernel, Path::new("/k"));
        assert_eq!(h.default_memory_mib, 128);
        assert_eq!(h.default_vcpus, 1);
    }

    #[test]
    fn registry_config_dir_is_read() {
        assert_eq!(
            Config::default().registry_config_dir,
            Path::new("/etc/moat/certs.d")
        );
        let cfg = Config::parse("registry_config_dir = \"/etc/containerd/certs.d\"", "t").unwrap();
        assert_eq!(
            cfg.registry_config_dir,
            Path::new("/etc/containerd/certs.d")
        );
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::parse("default_runtime_handler = \"nope\"", "t")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("default_runtime_handler") && e.contains("nope"),
            "{e}"
        );
        let e = Config::parse("[runtime_handlers.microvm]\ndefault_vcpus = 0", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("runtime_handlers.microvm.default_vcpus"), "{e}");
        let e = Config::parse("sockett = \"/x\"", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sockett"), "{e}");
    }
}

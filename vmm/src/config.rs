//! VM configuration: the JSON file format (`--config vm.json`), the
//! equivalent command-line flags, and validation with errors naming the field.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::arch::x86_64::layout::MAX_VIRTIO_DEVICES;

/// Default number of vCPUs.
pub const DEFAULT_CPUS: u8 = 1;
/// Default guest memory in MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 128;
/// Default number of virtio-blk slots.
pub const DEFAULT_BLK_SLOTS: u32 = 4;
/// Default guest vsock CID.
pub const DEFAULT_CID: u64 = 3;
/// Smallest guest memory accepted.
pub const MIN_MEMORY_MIB: u64 = 64;
/// Largest guest memory accepted (1 TiB).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// Most vCPUs accepted.
pub const MAX_CPUS: u8 = 64;

/// An invalid configuration value: `field: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// The offending field, e.g. `memory_mib` or `drives[1].slot`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    /// Builds an error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The complete configuration of one microVM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Uncompressed ELF `vmlinux`.
    pub kernel: PathBuf,
    /// Optional initramfs (cpio, optionally compressed).
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Number of vCPUs.
    #[serde(default = "default_cpus")]
    pub cpus: u8,
    /// Guest memory in MiB.
    #[serde(default = "default_memory")]
    pub memory_mib: u64,
    /// Extra kernel command-line arguments, appended last.
    #[serde(default)]
    pub cmdline_extra: String,
    /// Boot without `quiet` (full kernel log on the serial console).
    #[serde(default)]
    pub verbose_boot: bool,
    /// Serial console output: `stdout`, `off`, or a file path.
    #[serde(default = "default_serial")]
    pub serial: String,
    /// virtio-vsock with the hybrid Unix-socket backend.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// Number of virtio-blk slots (each exists from boot, attachable later).
    #[serde(default = "default_blk_slots")]
    pub blk_slots: u32,
    /// Drives attached at boot.
    #[serde(default)]
    pub drives: Vec<DriveConfig>,
    /// virtio-net backed by a TAP device.
    #[serde(default)]
    pub net: Option<NetConfig>,
    /// virtio-fs served by a vhost-user-fs daemon.
    #[serde(default)]
    pub fs: Option<FsConfig>,
    /// Control API Unix socket path.
    #[serde(default)]
    pub api_sock: Option<PathBuf>,
    /// Per-thread seccomp filters (on unless turned off, for debugging
    /// only: see `crate::seccomp`).
    #[serde(default = "default_seccomp")]
    pub seccomp: bool,
    /// Where the VMM confines itself once its devices are set up, before
    /// the guest runs (see `crate::confine`); `None` keeps its uid and root.
    #[serde(default)]
    pub jail: Option<JailConfig>,
    /// Files its launcher opened for it, as inherited fds (an unprivileged
    /// VMM could not open them itself).
    #[serde(default)]
    pub fds: InheritedFds,
}

/// Inherited fds that stand in for opening a path: each one set is used
/// instead (the path beside it then only names the file in messages).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InheritedFds {
    /// `/dev/kvm`, open for reading and writing.
    #[serde(default)]
    pub kvm: Option<i32>,
    /// The kernel (`kernel`), open for reading.
    #[serde(default)]
    pub kernel: Option<i32>,
    /// The initramfs (`initrd`), open for reading.
    #[serde(default)]
    pub initrd: Option<i32>,
    /// A Unix stream connected to the vhost-user-fs daemon (`fs.socket`).
    #[serde(default)]
    pub fs_socket: Option<i32>,
}

/// The file at `path`, or the inherited `fd` standing in for it (taken
/// over: call once per fd).
pub fn open_input(path: &Path, fd: Option<i32>) -> std::io::Result<std::fs::File> {
    match fd {
        // SAFETY: the launcher handed this fd over for this file alone
        // (`InheritedFds`), and validation refused duplicates.
        Some(fd) => Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }),
        None => std::fs::File::open(path),
    }
}

/// The VMM's jail: an unprivileged uid and gid of its own, and a directory
/// that becomes its root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailConfig {
    /// The uid to run as (not 0).
    pub uid: u32,
    /// The gid to run as (not 0); no supplementary groups are kept.
    pub gid: u32,
    /// The new root (an absolute directory, the VM's own): paths the VMM
    /// uses after the jail (its control socket, console rotation, vsock
    /// sockets) must be relative, resolved from it as the working
    /// directory.
    pub root: PathBuf,
}

/// virtio-vsock configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// Host Unix socket path the VMM listens on.
    pub uds: PathBuf,
    /// Guest CID.
    #[serde(default = "default_cid")]
    pub cid: u64,
}

/// virtio-fs: the device the guest mounts by `tag`, served by the
/// vhost-user-fs daemon listening on `socket`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// The mount tag (1 to 36 bytes).
    pub tag: String,
    /// The daemon's socket (connected before the jail, or named only in
    /// messages where `fds.fs_socket` is given).
    pub socket: PathBuf,
}

/// A block image attached to a slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveConfig {
    /// Slot index (`0..blk_slots`).
    pub slot: u32,
    /// Host file backing the disk.
    pub path: PathBuf,
    /// Reject guest writes.
    #[serde(default)]
    pub read_only: bool,
}

/// virtio-net configuration: exactly one of `tap` and `tap_fd`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Name of an existing TAP interface to open.
    #[serde(default)]
    pub tap: Option<String>,
    /// An inherited, already configured TAP file descriptor.
    #[serde(default)]
    pub tap_fd: Option<i32>,
    /// Guest MAC address `aa:bb:cc:dd:ee:ff`.
    #[serde(default)]
    pub mac: Option<String>,
}

/// Where the serial console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialOutput {
    /// Discard output (the UART still exists).
    Off,
    /// The VMM's standard output.
    Stdout,
    /// Append to a file.
    File(PathBuf),
}

fn default_cpus() -> u8 {
    DEFAULT_CPUS
}
fn default_memory() -> u64 {
    DEFAULT_MEMORY_MIB
}
fn default_serial() -> String {
    "stdout".to_string()
}
fn default_seccomp() -> bool {
    true
}
fn default_blk_slots() -> u32 {
    DEFAULT_BLK_SLOTS
}
fn default_cid() -> u64 {
    DEFAULT_CID
}

impl VmConfig {
    /// A configuration with defaults for everything but the kernel.
    pub fn new(kernel: PathBuf) -> Self {
        Self {
            kernel,
            initrd: None,
            cpus: DEFAULT_CPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
            cmdline_extra: String::new(),
            verbose_boot: false,
            serial: default_serial(),
            vsock: None,
            blk_slots: DEFAULT_BLK_SLOTS,
            drives: Vec::new(),
            net: None,
            fs: None,
            api_sock: None,
            seccomp: true,
            jail: None,
            fds: InheritedFds::default(),
        }
    }

    /// Parses a JSON configuration (unknown fields are rejected).
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        serde_json::from_str(text).map_err(|e| {
            // serde_json names the unknown/missing field in its message.
            ConfigError::new("config", e.to_string())
        })
    }

    /// Parsed serial output setting.
    pub fn serial_output(&self) -> SerialOutput {
        match self.serial.as_str() {
            "off" | "none" => SerialOutput::Off,
            "stdout" => SerialOutput::Stdout,
            p => SerialOutput::File(PathBuf::from(p)),
        }
    }

    /// Number of virtio-mmio devices this configuration needs.
    pub fn virtio_device_count(&self) -> u32 {
        self.blk_slots
            + u32::from(self.vsock.is_some())
            + u32::from(self.net.is_some())
            + u32::from(self.fs.is_some())
    }

    /// Checks every field; the error names the first invalid one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_fds()?;
        if self.fds.kernel.is_none() {
            check_file("kernel", &self.kernel)?;
        }
        match (&self.initrd, self.fds.initrd) {
            (Some(initrd), None) => check_file("initrd", initrd)?,
            (None, Some(_)) => return Err(ConfigError::new("fds.initrd", "needs initrd")),
            _ => {}
        }
        if self.cpus == 0 || self.cpus > MAX_CPUS {
            return Err(ConfigError::new(
                "cpus",
                format!("must be between 1 and {MAX_CPUS}"),
            ));
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(ConfigError::new(
                "memory_mib",
                format!("must be at least {MIN_MEMORY_MIB}"),
            ));
        }
        if self.memory_mib > MAX_MEMORY_MIB {
            return Err(ConfigError::new(
                "memory_mib",
                format!("must be at most {MAX_MEMORY_MIB}"),
            ));
        }
        if self.cmdline_extra.contains('\0') || self.cmdline_extra.contains('\n') {
            return Err(ConfigError::new(
                "cmdline_extra",
                "must not contain NUL or newline",
            ));
        }
        if self.serial.is_empty() {
            return Err(ConfigError::new(
                "serial",
                "must be stdout, off or a file path",
            ));
        }
        if let Some(v) = &self.vsock {
            if v.cid < 3 || v.cid >= u64::from(u32::MAX) {
                return Err(ConfigError::new(
                    "vsock.cid",
                    "must be at least 3 and below 4294967295",
                ));
            }
            check_socket_path("vsock.uds", &v.uds)?;
        }
        if self.virtio_device_count() > MAX_VIRTIO_DEVICES {
            return Err(ConfigError::new(
                "blk_slots",
                format!(
                    "too many virtio devices: {} block slots plus vsock/net exceed {MAX_VIRTIO_DEVICES}",
                    self.blk_slots
                ),
            ));
        }
        let mut seen = Vec::new();
        for (i, d) in self.drives.iter().enumerate() {
            if d.slot >= self.blk_slots {
                return Err(ConfigError::new(
                    format!("drives[{i}].slot"),
                    format!("{} is not below blk_slots ({})", d.slot, self.blk_slots),
                ));
            }
            if seen.contains(&d.slot) {
                return Err(ConfigError::new(
                    format!("drives[{i}].slot"),
                    format!("slot {} is used twice", d.slot),
                ));
            }
            seen.push(d.slot);
            check_file(&format!("drives[{i}].path"), &d.path)?;
        }
        if let Some(n) = &self.net {
            match (&n.tap, n.tap_fd) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(ConfigError::new(
                        "net",
                        "exactly one of tap and tap_fd must be set",
                    ))
                }
                (Some(name), None) => {
                    if name.is_empty() || name.len() > 15 || name.contains('/') {
                        return Err(ConfigError::new(
                            "net.tap",
                            "must be an interface name of 1 to 15 characters",
                        ));
                    }
                }
                (None, Some(_)) => {}
            }
            if let Some(mac) = &n.mac {
                parse_mac(mac).map_err(|m| ConfigError::new("net.mac", m))?;
            }
        }
        if let Some(f) = &self.fs {
            if f.tag.is_empty() || f.tag.len() > 36 || f.tag.contains('\0') {
                return Err(ConfigError::new("fs.tag", "must be 1 to 36 bytes, no NUL"));
            }
            if self.fds.fs_socket.is_none() {
                check_socket_path("fs.socket", &f.socket)?;
            }
        } else if self.fds.fs_socket.is_some() {
            return Err(ConfigError::new("fds.fs_socket", "is set without fs"));
        }
        if let Some(api) = &self.api_sock {
            check_socket_path("api_sock", api)?;
        }
        if let Some(j) = &self.jail {
            if j.uid == 0 || j.gid == 0 {
                return Err(ConfigError::new("jail", "uid and gid must not be 0"));
            }
            // Only a path: a VMM started unprivileged in its root may not
            // reach it from `/`.
            if !j.root.is_absolute() {
                return Err(ConfigError::new(
                    "jail.root",
                    format!("{} is not an absolute path", j.root.display()),
                ));
            }
        }
        Ok(())
    }

    /// Inherited fds: past stdio, and each used once.
    fn check_fds(&self) -> Result<(), ConfigError> {
        let tap = self.net.as_ref().and_then(|n| n.tap_fd);
        let named = [
            ("fds.kvm", self.fds.kvm),
            ("fds.kernel", self.fds.kernel),
            ("fds.initrd", self.fds.initrd),
            ("fds.fs_socket", self.fds.fs_socket),
            ("net.tap_fd", tap),
        ];
        let mut seen = Vec::new();
        for (field, fd) in named {
            let Some(fd) = fd else { continue };
            if fd < 3 {
                return Err(ConfigError::new(field, "must be 3 or more (0-2 are stdio)"));
            }
            if seen.contains(&fd) {
                return Err(ConfigError::new(field, format!("fd {fd} is used twice")));
            }
            seen.push(fd);
        }
        Ok(())
    }
}

fn check_file(field: &str, path: &Path) -> Result<(), ConfigError> {
    match std::fs::metadata(path) {
        Ok(m) if !m.is_dir() => Ok(()),
        Ok(_) => Err(ConfigError::new(
            field,
            format!("{} is not a file", path.display()),
        )),
        Err(e) => Err(ConfigError::new(
            field,
            format!("cannot access {}: {e}", path.display()),
        )),
    }
}

fn check_socket_path(field: &str, path: &Path) -> Result<(), ConfigError> {
    let len = path.as_os_str().len();
    // sockaddr_un.sun_path is 108 bytes including the NUL; vsock adds "_<port>".
    if len == 0 || len > 96 {
        return Err(ConfigError::new(
            field,
            "must be a path of 1 to 96 bytes (sockaddr_un limit)",
        ));
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent {
        if !parent.is_dir() {
            return Err(ConfigError::new(
                field,
                format!("directory {} does not exist", parent.display()),
            ));
        }
    }
    Ok(())
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"));
    }
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return Err(format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"));
        }
        mac[i] = u8::from_str_radix(p, 16)
            .map_err(|_| format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"))?;
    }
    Ok(mac)
}

/// Parses a `--drive slot=N,path=P[,ro]` flag value.
pub fn parse_drive_flag(s: &str) -> Result<DriveConfig, ConfigError> {
    let mut slot = None;
    let mut path = None;
    let mut read_only = false;
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("slot", v)) => {
                slot = Some(v.parse::<u32>().map_err(|_| {
                    ConfigError::new("--drive slot", format!("{v:?} is not a number"))
                })?)
            }
            Some(("path", v)) => path = Some(PathBuf::from(v)),
            Some(("ro" | "read_only", v)) => {
                read_only = match v {
                    "true" | "1" | "on" => true,
                    "false" | "0" | "off" => false,
                    _ => {
                        return Err(ConfigError::new(
                            "--drive ro",
                            format!("{v:?} is not a boolean"),
                        ))
                    }
                }
            }
            None if part == "ro" => read_only = true,
            None if part == "rw" => read_only = false,
            _ => {
                return Err(ConfigError::new(
                    "--drive",
                    format!("unknown part {part:?} (expected slot=N,path=P[,ro])"),
                ))
            }
        }
    }
    Ok(DriveConfig {
        slot: slot.ok_or_else(|| ConfigError::new("--drive", "missing slot=N"))?,
        path: path.ok_or_else(|| ConfigError::new("--drive", "missing path=P"))?,
        read_only,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel_file() -> tempfile::NamedTempFile {
        tempfile::NamedTempFile::new().unwrap()
    }

    #[test]
    fn json_defaults_and_unknown_fields() {
        let k = kernel_file();
        let text = format!("{{\"kernel\": {:?}}}", k.path());
        let c = VmConfig::from_json(&text).unwrap();
        assert_eq!(c.cpus, 1);
        assert_eq!(c.memory_mib, 128);
        assert_eq!(c.blk_slots, 4);
        assert_eq!(c.serial_output(), SerialOutput::Stdout);
        c.validate().unwrap();

        let bad = format!("{{\"kernel\": {:?}, \"memory\": 5}}", k.path());
        let e = VmConfig::from_json(&bad).unwrap_err();
        assert!(e.to_string().contains("unknown field `memory`"), "{e}");
        let e = VmConfig::from_json("{\"cpus\": 1}").unwrap_err();
        assert!(e.to_string().contains("missing field `kernel`"), "{e}");
    }

    #[test]
    fn validation_names_fields() {
        let k = kernel_file();
        let mut c = VmConfig::new(k.path().to_path_buf());
        c.memory_mib = 32;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "memory_mib: must be at least 64"
        );
        c.memory_mib = 128;
        c.cpus = 0;
        assert_eq!(c.validate().unwrap_err().field, "cpus");
        c.cpus = 2;
        c.drives.push(DriveConfig {
            slot: 9,
            path: k.path().to_path_buf(),
            read_only: true,
        });
        assert_eq!(c.validate().unwrap_err().field, "drives[0].slot");
        c.drives[0].slot = 1;
        c.validate().unwrap();
        c.drives.push(c.drives[0].clone());
        assert!(c.validate().unwrap_err().message.contains("used twice"));
        c.drives.pop();
        c.vsock = Some(VsockConfig {
            uds: "/tmp/v.sock".into(),
            cid: 2,
        });
        assert_eq!(c.validate().unwrap_err().field, "vsock.cid");
        c.vsock = Some(VsockConfig {
            uds: "/nonexistent-dir/v.sock".into(),
            cid: 3,
        });
        assert_eq!(c.validate().unwrap_err().field, "vsock.uds");
        c.vsock = None;
        c.blk_slots = 40;
        assert_eq!(c.validate().unwrap_err().field, "blk_slots");
        c.blk_slots = 4;
        c.net = Some(NetConfig {
            tap: Some("tap0".into()),
            tap_fd: Some(3),
            mac: None,
        });
        assert_eq!(c.validate().unwrap_err().field, "net");
        c.net = Some(NetConfig {
            tap: Some("tap0".into()),
            tap_fd: None,
            mac: Some("zz:00:00:00:00:00".into()),
        });
        assert_eq!(c.validate().unwrap_err().field, "net.mac");
        c.net = None;
        c.kernel = "/nonexistent/vmlinux".into();
        assert_eq!(c.validate().unwrap_err().field, "kernel");
    }

    #[test]
    fn inherited_fds_stand_in_for_paths_once_each() {
        let mut c = VmConfig::new("/nonexistent/vmlinux".into());
        c.fds.kernel = Some(5);
        c.validate().unwrap();
        c.fds.kvm = Some(2);
        assert_eq!(c.validate().unwrap_err().field, "fds.kvm");
        c.fds.kvm = Some(5);
        assert!(c.validate().unwrap_err().message.contains("used twice"));
        c.fds.kvm = Some(4);
        c.net = Some(NetConfig {
            tap: None,
            tap_fd: Some(4),
            mac: None,
        });
        assert_eq!(c.validate().unwrap_err().field, "net.tap_fd");
        c.net = None;
        c.fds.initrd = Some(6);
        assert_eq!(c.validate().unwrap_err().field, "fds.initrd");
        c.initrd = Some("/nonexistent/initrd".into());
        c.validate().unwrap();
        let back = VmConfig::from_json(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back.fds, c.fds);
    }

    #[test]
    fn drive_flag() {
        let d = parse_drive_flag("slot=2,path=/x.img,ro").unwrap();
        assert_eq!(d.slot, 2);
        assert!(d.read_only);
        assert_eq!(d.path, PathBuf::from("/x.img"));
        assert!(!parse_drive_flag("path=/x,slot=0").unwrap().read_only);
        assert!(parse_drive_flag("slot=x,path=/a").is_err());
        assert!(parse_drive_flag("path=/a").is_err());
        assert!(parse_drive_flag("slot=1,path=/a,bogus").is_err());
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("02:00:00:aa:bb:0c").unwrap(),
            [2, 0, 0, 0xaa, 0xbb, 0x0c]
        );
        assert!(parse_mac("02:00:00:aa:bb").is_err());
        assert!(parse_mac("02:00:00:aa:bb:0c0").is_err());
    }
}

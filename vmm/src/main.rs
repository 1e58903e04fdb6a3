//! moat-vmm binary entry point: parse flags or a JSON config, boot the VM,
//! run until it ends, exit with a documented code (see `moat_vmm::exit`).

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use moat_vmm::config::{parse_drive_flag, NetConfig, VmConfig, VsockConfig};
use moat_vmm::exit::{ExitCode, EXIT_CODES_HELP};

/// moat's virtual machine monitor: boots one Linux microVM per pod sandbox.
#[derive(Parser, Debug)]
#[command(name = "moat-vmm", version, after_help = EXIT_CODES_HELP)]
struct Args {
    /// JSON configuration file (excludes the VM flags below).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Uncompressed ELF vmlinux.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initramfs.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Number of vCPUs.
    #[arg(long)]
    cpus: Option<u8>,
    /// Guest memory in MiB.
    #[arg(long)]
    memory_mib: Option<u64>,
    /// Extra kernel command-line arguments.
    #[arg(long)]
    cmdline_extra: Option<String>,
    /// Boot without `quiet`.
    #[arg(long)]
    verbose_boot: bool,
    /// Host Unix socket of the hybrid vsock device.
    #[arg(long)]
    vsock_uds: Option<PathBuf>,
    /// Guest vsock CID (default 3).
    #[arg(long)]
    cid: Option<u64>,
    /// Number of virtio-blk slots (default 4).
    #[arg(long)]
    blk_slots: Option<u32>,
    /// Drive attached at boot: slot=N,path=P[,ro] (repeatable).
    #[arg(long)]
    drive: Vec<String>,
    /// TAP interface for virtio-net.
    #[arg(long)]
    tap: Option<String>,
    /// Inherited TAP file descriptor for virtio-net.
    #[arg(long)]
    tap_fd: Option<i32>,
    /// Guest MAC address.
    #[arg(long)]
    mac: Option<String>,
    /// virtio-fs: the vhost-user-fs daemon's socket (with --fs-tag).
    #[arg(long)]
    fs_socket: Option<PathBuf>,
    /// virtio-fs: the tag the guest mounts the device by.
    #[arg(long)]
    fs_tag: Option<String>,
    /// Control API Unix socket.
    #[arg(long)]
    api_sock: Option<PathBuf>,
    /// Serial console: stdout, off, or a file path.
    #[arg(long)]
    serial: Option<String>,
    /// Turns the seccomp filters off (debugging only; also with
    /// `"seccomp": false` in the config file).
    #[arg(long)]
    no_seccomp: bool,
    /// Jail: run as this uid once set up (with --jail-gid and --jail-root;
    /// `"jail"` in a config file).
    #[arg(long)]
    jail_uid: Option<u32>,
    /// Jail: the gid to run as.
    #[arg(long)]
    jail_gid: Option<u32>,
    /// Jail: the directory to chroot into (relative paths resolve from it).
    #[arg(long)]
    jail_root: Option<PathBuf>,
}

impl Args {
    fn has_vm_flags(&self) -> bool {
        self.kernel.is_some()
            || self.initrd.is_some()
            || self.cpus.is_some()
            || self.memory_mib.is_some()
            || self.cmdline_extra.is_some()
            || self.verbose_boot
            || self.vsock_uds.is_some()
            || self.cid.is_some()
            || self.blk_slots.is_some()
            || !self.drive.is_empty()
            || self.tap.is_some()
            || self.tap_fd.is_some()
            || self.mac.is_some()
            || self.fs_socket.is_some()
            || self.fs_tag.is_some()
            || self.api_sock.is_some()
            || self.serial.is_some()
            || self.jail_uid.is_some()
            || self.jail_gid.is_some()
            || self.jail_root.is_some()
    }

    fn into_config(self) -> Result<VmConfig, String> {
        if let Some(path) = &self.config {
            if self.has_vm_flags() {
                return Err("--config: use either a config file or VM flags, not both".into());
            }
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--config {}: {e}", path.display()))?;
            return VmConfig::from_json(&text).map_err(|e| e.to_string());
        }
        let kernel = self.kernel.ok_or("--kernel (or --config) is required")?;
        let mut c = VmConfig::new(kernel);
        c.initrd = self.initrd;
        if let Some(v) = self.cpus {
            c.cpus = v;
        }
        if let Some(v) = self.memory_mib {
            c.memory_mib = v;
        }
        if let Some(v) = self.cmdline_extra {
            c.cmdline_extra = v;
        }
        c.verbose_boot = self.verbose_boot;
        if let Some(uds) = self.vsock_uds {
            c.vsock = Some(VsockConfig {
                uds,
                cid: self.cid.unwrap_or(moat_vmm::config::DEFAULT_CID),
            });
        } else if self.cid.is_some() {
            return Err("--cid needs --vsock-uds".into());
        }
        if let Some(v) = self.blk_slots {
            c.blk_slots = v;
        }
        for d in &self.drive {
            c.drives
                .push(parse_drive_flag(d).map_err(|e| e.to_string())?);
        }
        if self.tap.is_some() || self.tap_fd.is_some() {
            c.net = Some(NetConfig {
                tap: self.tap,
                tap_fd: self.tap_fd,
                mac: self.mac,
            });
        } else if self.mac.is_some() {
            return Err("--mac needs --tap or --tap-fd".into());
        }
        match (self.fs_socket, self.fs_tag) {
            (Some(socket), Some(tag)) => c.fs = Some(moat_vmm::config::FsConfig { tag, socket }),
            (None, None) => {}
            _ => return Err("--fs-socket and --fs-tag go together".into()),
        }
        c.api_sock = self.api_sock;
        if let Some(s) = self.serial {
            c.serial = s;
        }
        match (self.jail_uid, self.jail_gid, self.jail_root) {
            (Some(uid), Some(gid), Some(root)) => {
                c.jail = Some(moat_vmm::config::JailConfig { uid, gid, root })
            }
            (None, None, None) => {}
            _ => return Err("--jail-uid, --jail-gid and --jail-root go together".into()),
        }
        Ok(c)
    }
}

fn main() {
    let start = Instant::now();
    // Started from an fd (moatd execs it that way), the process is named
    // after the fd's number.
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"moat-vmm".as_ptr(), 0, 0, 0) };
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MOAT_VMM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(moat_vmm::log::capped_stderr())
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    tracing::info!(
        "moat-vmm {} starting: {}",
        env!("CARGO_PKG_VERSION"),
        moat_vmm::confine::identity()
    );
    let no_seccomp = args.no_seccomp;
    let config = match args.into_config() {
        Ok(c) if no_seccomp => moat_vmm::config::VmConfig {
            seccomp: false,
            ..c
        },
        Ok(c) => c,
        Err(e) => {
            eprintln!("moat-vmm: {e}");
            std::process::exit(ExitCode::BadConfig.code());
        }
    };
    // Before any thread exists, so every thread inherits the mask.
    moat_vmm::runtime::block_exit_signals();
    let vmm = match moat_vmm::builder::build(config, start) {
        Ok(v) => v,
        Err(e) => {
            let code = e.exit_code();
            eprintln!("moat-vmm: {e}");
            std::process::exit(code.code());
        }
    };
    let code = vmm.run();
    // vCPU threads are parked or in KVM_RUN; exiting the process ends them.
    std::process::exit(code.code());
}

//! Assembles a microVM from a [`VmConfig`] and starts its vCPUs.
//!
//! Order matters for boot latency: everything the guest needs before its
//! first instruction (memory, kernel, devices, boot structures, vCPU state)
//! happens here; the control API socket and signal fd are set up by the
//! runtime after the vCPUs run.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use linux_loader::cmdline::Cmdline;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::{self as arch, layout};
use crate::config::{parse_mac, SerialOutput, VmConfig};
use crate::devices::bus::{BusDevice, IoBuses};
use crate::devices::legacy::exit_port::ExitPort;
use crate::devices::legacy::i8042::{I8042, I8042_LEN, I8042_PORT};
use crate::devices::legacy::serial::{SerialDevice, SerialSink, COM1_LEN, COM1_PORT};
use crate::devices::legacy::EventFdTrigger;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::fs::Fs;
use crate::devices::virtio::mmio::{MmioTransport, QUEUE_NOTIFY_OFFSET};
use crate::devices::virtio::net::{FrameIo, Net, Tap};
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::VirtioDevice;
use crate::event_loop::{EpollRegistrar, EventLoop};
use crate::exit::{ExitCode, ExitRequest};
use crate::runtime::{DeviceInfo, Vmm};
use crate::vstate::memory::create_guest_memory;
use crate::vstate::vcpu::{ExitCounters, Vcpu, VcpuControl};
use crate::vstate::vm::Vm;

/// Kernel command line every guest gets. `noreplace-smp` keeps a 1-vCPU
/// guest from rewriting every `lock` prefix in its kernel text at boot (about
/// 4000 single-byte text pokes, a quarter of a second under emulation), for
/// atomics that stay a little slower on one vCPU. `retain_initrd` keeps the
/// initramfs pages, which stay mapped from the file (shared by every VM), out
/// of the guest's page allocator: a page reused as a buffer must be in the
/// memfd a vhost-user daemon maps.
pub const BASE_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 pci=off nomodules noreplace-smp i8042.noaux i8042.nomux i8042.dumbkbd 8250.nr_uarts=1 retain_initrd";

/// Errors building the VM, each mapped to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The host cannot run ordinary guests.
    #[error(transparent)]
    Host(#[from] arch::HostError),
    /// KVM VM setup failed.
    #[error(transparent)]
    Vm(#[from] crate::vstate::vm::VmError),
    /// vCPU setup failed.
    #[error(transparent)]
    Vcpu(#[from] crate::vstate::vcpu::VcpuError),
    /// Guest memory allocation failed.
    #[error(transparent)]
    Memory(#[from] crate::vstate::memory::MemoryError),
    /// Kernel/initrd loading or boot structures failed.
    #[error(transparent)]
    Boot(#[from] arch::BootError),
    /// A device could not be created.
    #[error("{0}")]
    Device(String),
    /// Privileges could not be dropped before the guest runs.
    #[error(transparent)]
    Confine(#[from] crate::confine::ConfineError),
}

impl BuildError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Config(_) => ExitCode::BadConfig,
            Self::Boot(
                arch::BootError::KernelFile { .. }
                | arch::BootError::KernelLoad(_)
                | arch::BootError::InitrdFile { .. }
                | arch::BootError::InitrdTooBig(_)
                | arch::BootError::Cmdline(_),
            ) => ExitCode::BadConfig,
            Self::Host(_) | Self::Vm(_) | Self::Vcpu(_) => ExitCode::KvmError,
            Self::Memory(_) | Self::Boot(_) | Self::Device(_) | Self::Confine(_) => {
                ExitCode::Internal
            }
        }
    }
}

fn dev_err(what: impl std::fmt::Display) -> BuildError {
    BuildError::Device(what.to_string())
}

/// Builds the kernel command line for `config` with the given virtio-mmio
/// devices `(base address, irq)`.
pub fn build_cmdline(config: &VmConfig, mmio: &[(u64, u32)]) -> Result<Cmdline, BuildError> {
    let cl_err = |e: linux_loader::cmdline::Error| {
        BuildError::Config(crate::config::ConfigError::new(
            "cmdline_extra",
            format!("kernel command line: {e}"),
        ))
    };
    let mut cl = Cmdline::new(layout::CMDLINE_MAX_SIZE).map_err(cl_err)?;
    cl.insert_str(BASE_CMDLINE).map_err(cl_err)?;
    if !config.verbose_boot {
        cl.insert_str("quiet").map_err(cl_err)?;
    }
    for (addr, irq) in mmio {
        cl.add_virtio_mmio_device(layout::VIRTIO_MMIO_SIZE, GuestAddress(*addr), *irq, None)
            .map_err(cl_err)?;
    }
    let extra = config.cmdline_extra.trim();
    if !extra.is_empty() {
        cl.insert_str(extra).map_err(cl_err)?;
    }
    Ok(cl)
}

/// A virtio device waiting to be wired.
struct PendingDevice {
    name: String,
    device: Box<dyn VirtioDevice>,
    handler_id: u32,
    slot: Option<u32>,
}

/// What the attach steps add to while a VM is put together (Firecracker's
/// builder shape: one `attach_*` step per device).
struct Parts {
    vm: Vm,
    mem: GuestMemoryMmap,
    event_loop: EventLoop,
    buses: IoBuses,
    exit: Arc<ExitRequest>,
    /// virtio devices in the order they get MMIO slots.
    pending: Vec<PendingDevice>,
    /// Host sockets the VMM created (removed at exit).
    sockets: Vec<PathBuf>,
}

impl Parts {
    /// The event-loop handler id the next virtio device gets.
    fn next_handler_id(&self) -> u32 {
        self.event_loop.next_id() + self.pending.len() as u32
    }

    fn push(&mut self, name: String, device: Box<dyn VirtioDevice>, slot: Option<u32>) {
        let handler_id = self.next_handler_id();
        self.pending.push(PendingDevice {
            name,
            device,
            handler_id,
            slot,
        });
    }

    fn irq_trigger(&self, gsi: u32) -> Result<EventFdTrigger, BuildError> {
        let t = EventFdTrigger(
            vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).map_err(dev_err)?,
        );
        self.vm.register_irqfd(&t.0, gsi)?;
        Ok(t)
    }

    /// COM1, wired to the configured output.
    fn attach_serial(&mut self, config: &VmConfig) -> Result<Arc<Mutex<SerialDevice>>, BuildError> {
        let irq = self.irq_trigger(layout::SERIAL_IRQ)?;
        let sink = match config.serial_output() {
            SerialOutput::Off => SerialSink::Off,
            SerialOutput::Stdout => SerialSink::Stdout(std::io::stdout()),
            SerialOutput::File(p) => SerialSink::file(&p)
                .map_err(|e| dev_err(format!("serial file {}: {e}", p.display())))?,
        };
        let serial = Arc::new(Mutex::new(SerialDevice::new(irq, sink)));
        self.buses
            .pio
            .insert(serial.clone(), COM1_PORT, COM1_LEN)
            .map_err(dev_err)?;
        Ok(serial)
    }

    /// The i8042 (the guest's reset line) and moat's exit port.
    fn attach_exit_devices(&mut self) -> Result<(), BuildError> {
        let kbd_irq = self.irq_trigger(layout::I8042_KBD_IRQ)?;
        self.buses
            .pio
            .insert(
                Arc::new(Mutex::new(I8042::new(self.exit.clone(), kbd_irq))),
                I8042_PORT,
                I8042_LEN,
            )
            .map_err(dev_err)?;
        self.buses
            .pio
            .insert(
                Arc::new(Mutex::new(ExitPort::new(self.exit.clone()))),
                u64::from(moat_proto::GUEST_EXIT_PORT),
                1,
            )
            .map_err(dev_err)?;
        Ok(())
    }

    /// virtio-vsock with its hybrid Unix socket.
    fn attach_vsock(&mut self, v: &crate::config::VsockConfig) -> Result<(), BuildError> {
        let reg = EpollRegistrar::new(self.event_loop.epoll(), self.next_handler_id());
        let dev = Vsock::new(v.cid, &v.uds, reg).map_err(dev_err)?;
        self.sockets.push(v.uds.clone());
        self.push("vsock".into(), Box::new(dev), None);
        Ok(())
    }

    /// virtio-net on a TAP device.
    fn attach_net(&mut self, n: &crate::config::NetConfig) -> Result<(), BuildError> {
        let tap: Box<dyn FrameIo> = match (&n.tap, n.tap_fd) {
            (Some(name), _) => Box::new(Tap::open(name).map_err(dev_err)?),
            (None, Some(fd)) => Box::new(Tap::from_fd(fd).map_err(dev_err)?),
            (None, None) => return Err(dev_err("net: no TAP given")),
        };
        let mac = match &n.mac {
            Some(m) => parse_mac(m).map_err(|e| crate::config::ConfigError::new("net.mac", e))?,
            None => [0x02, 0x4d, 0x4f, 0x41, 0x54, 0x01],
        };
        let reg = EpollRegistrar::new(self.event_loop.epoll(), self.next_handler_id());
        let dev = Net::new(mac, tap, reg).map_err(dev_err)?;
        self.push("net".into(), Box::new(dev), None);
        Ok(())
    }

    /// virtio-fs, connected to its vhost-user-fs daemon.
    fn attach_fs(
        &mut self,
        f: &crate::config::FsConfig,
        fd: Option<i32>,
    ) -> Result<(), BuildError> {
        let reg = EpollRegistrar::new(self.event_loop.epoll(), self.next_handler_id());
        let dev = match fd {
            // SAFETY: the launcher handed this fd over for the daemon's
            // socket alone (`InheritedFds`), and validation refused
            // duplicates.
            Some(fd) => Fs::from_stream(
                &f.tag,
                &f.socket,
                unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) },
                reg,
            ),
            None => Fs::new(&f.tag, &f.socket, reg),
        }
        .map_err(dev_err)?
        .ending_vm_through(self.exit.clone());
        self.push("fs".into(), Box::new(dev), None);
        Ok(())
    }

    /// The virtio-blk slots, with the drives the config attaches at boot.
    fn attach_block_slots(&mut self, config: &VmConfig) -> Result<(), BuildError> {
        for slot in 0..config.blk_slots {
            let drive = config.drives.iter().find(|d| d.slot == slot);
            let mut dev = Block::new(slot, drive.is_some_and(|d| d.read_only));
            if let Some(d) = drive {
                dev.attach(&d.path, d.read_only).map_err(|e| {
                    crate::config::ConfigError::new(format!("drives (slot {slot})"), e.to_string())
                })?;
            }
            self.push(format!("blk{slot}"), Box::new(dev), Some(slot));
        }
        Ok(())
    }

    /// Gives each pending virtio device its MMIO window, IRQ, queue-notify
    /// ioeventfds and event-loop handler.
    fn wire_virtio(&mut self) -> Result<Vec<DeviceInfo>, BuildError> {
        let mut devices = Vec::new();
        for (index, p) in std::mem::take(&mut self.pending).into_iter().enumerate() {
            let (addr, irq) = layout::virtio_mmio_slot(index as u32)
                .ok_or_else(|| dev_err("too many virtio devices for the IRQ space"))?;
            let transport = MmioTransport::new(p.device, self.mem.clone()).map_err(dev_err)?;
            self.vm.register_irqfd(transport.irq().eventfd(), irq)?;
            let reg = EpollRegistrar::new(self.event_loop.epoll(), p.handler_id);
            let to_backend = transport.device().queue_events_to_backend();
            for (q, evt) in transport.queue_evts().iter().enumerate() {
                self.vm
                    .register_mmio_ioevent(evt, addr + QUEUE_NOTIFY_OFFSET, q as u32)?;
                if to_backend {
                    continue;
                }
                reg.add(
                    std::os::fd::AsRawFd::as_raw_fd(evt),
                    q as u32,
                    vmm_sys_util::epoll::EventSet::IN,
                )
                .map_err(dev_err)?;
            }
            let transport = Arc::new(Mutex::new(transport));
            let id = self.event_loop.add_handler(transport.clone());
            debug_assert_eq!(id, p.handler_id);
            let bus_dev: Arc<Mutex<dyn BusDevice>> = transport.clone();
            self.buses
                .mmio
                .insert(bus_dev, addr, layout::VIRTIO_MMIO_SIZE)
                .map_err(dev_err)?;
            devices.push(DeviceInfo {
                name: p.name,
                slot: p.slot,
                addr,
                irq,
                transport,
            });
        }
        Ok(devices)
    }
}

/// Builds the VM described by `config` and starts its vCPUs.
pub fn build(config: VmConfig, process_start: Instant) -> Result<Vmm, BuildError> {
    let phase = |what: &str| {
        tracing::debug!(
            "{what} {} us after process start",
            process_start.elapsed().as_micros()
        )
    };
    phase("building");
    config.validate()?;
    arch::check_host()?;
    let vm = Vm::new(config.fds.kvm)?;
    phase("VM created");
    let mem_size = config.memory_mib << 20;
    let mem = create_guest_memory(config.memory_mib)?;
    vm.register_memory(&mem)?;
    phase("memory registered");
    let entry = arch::load_kernel(&mem, &config.kernel, config.fds.kernel)?;
    phase("kernel loaded");
    let initrd = match &config.initrd {
        Some(p) => Some(arch::load_initrd(&mem, mem_size, p, config.fds.initrd)?),
        None => None,
    };
    phase("initramfs loaded");

    let mut parts = Parts {
        vm,
        mem,
        event_loop: EventLoop::new().map_err(dev_err)?,
        buses: IoBuses::default(),
        exit: Arc::new(ExitRequest::new().map_err(dev_err)?),
        pending: Vec::new(),
        sockets: Vec::new(),
    };
    let serial = parts.attach_serial(&config)?;
    parts.attach_exit_devices()?;
    // virtio devices: vsock, net, fs, then the block slots.
    if let Some(v) = &config.vsock {
        parts.attach_vsock(v)?;
    }
    if let Some(n) = &config.net {
        parts.attach_net(n)?;
    }
    if let Some(f) = &config.fs {
        parts.attach_fs(f, config.fds.fs_socket)?;
    }
    parts.attach_block_slots(&config)?;
    let devices = parts.wire_virtio()?;
    phase("devices set up");
    let mmio_slots: Vec<(u64, u32)> = devices.iter().map(|d| (d.addr, d.irq)).collect();

    let cmdline = build_cmdline(&config, &mmio_slots)?;
    arch::configure_system(&parts.mem, mem_size, &cmdline, initrd, config.cpus)?;
    phase("boot tables written");

    let Parts {
        vm,
        mem,
        event_loop,
        buses,
        exit,
        sockets,
        ..
    } = parts;
    let buses = Arc::new(buses);
    let control = VcpuControl::new()?;
    let counters = Arc::new(ExitCounters::default());
    let base_cpuid = vm.supported_cpuid()?;
    let mut vcpus = Vec::new();
    for i in 0..config.cpus {
        let v = Vcpu::new(
            &vm,
            i,
            buses.clone(),
            exit.clone(),
            control.clone(),
            counters.clone(),
        )?;
        v.configure(&base_cpuid, config.cpus, (i == 0).then_some(entry))?;
        vcpus.push(v);
    }
    phase("vCPUs configured");
    // Opened while /proc is still in reach: the memory counters read it.
    let smaps = std::fs::File::open("/proc/self/smaps").ok();
    // Everything privileged is done: the vCPU threads start without it.
    crate::confine::drop_privileges(config.jail.as_ref())?;
    let mut handles = Vec::new();
    for v in vcpus {
        handles.push(v.start(process_start, config.seccomp)?);
    }
    tracing::debug!(
        "vCPUs started {} us after process start",
        process_start.elapsed().as_micros()
    );

    Ok(Vmm::new(crate::runtime::VmmParts {
        config,
        vm,
        mem,
        event_loop,
        exit,
        control,
        counters,
        devices,
        serial,
        sockets,
        smaps,
        vcpu_threads: handles,
        start: process_start,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_contents() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut c = VmConfig::new(f.path().into());
        c.cmdline_extra = "moat.test=poweroff".into();
        let cl = build_cmdline(&c, &[(0xd000_0000, 5), (0xd000_1000, 6)]).unwrap();
        let s = cl.as_cstring().unwrap().into_string().unwrap();
        assert!(s.starts_with("console=ttyS0 reboot=k panic=-1"), "{s}");
        assert!(s.contains(" quiet "), "{s}");
        assert!(
            s.contains("virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"),
            "{s}"
        );
        assert!(s.ends_with("moat.test=poweroff"), "{s}");
        c.verbose_boot = true;
        let s = build_cmdline(&c, &[])
            .unwrap()
            .as_cstring()
            .unwrap()
            .into_string()
            .unwrap();
        assert!(!s.contains("quiet"));
        c.cmdline_extra = "x".repeat(3000);
        assert!(matches!(build_cmdline(&c, &[]), Err(BuildError::Config(_))));
    }

    #[test]
    fn error_codes() {
        let e = BuildError::Config(crate::config::ConfigError::new("cpus", "bad"));
        assert_eq!(e.exit_code(), ExitCode::BadConfig);
        assert_eq!(
            BuildError::Host(arch::HostError::Pvm).exit_code(),
            ExitCode::KvmError
        );
    }
}

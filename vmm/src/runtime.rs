//! The running VM: the VMM thread's main loop (device events, control API,
//! signals, exit requests) and cleanup.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

use crate::api::server::ApiServer;
use crate::api::{error_response, ok_response, parse_request, Request};
use crate::config::VmConfig;
use crate::devices::legacy::serial::SerialDevice;
use crate::devices::lock;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::mmio::MmioTransport;
use crate::event_loop::{EpollRegistrar, EventLoop};
use crate::exit::{ExitCode, ExitRequest};
use crate::vstate::vcpu::{ExitCounters, VcpuControl};
use crate::vstate::vm::Vm;

/// Handler id of the VMM's own fds (no device has it).
const VMM_ID: u32 = u32::MAX;
const SUB_EXIT: u32 = 0;
const SUB_SIGNAL: u32 = 1;
const SUB_API: u32 = 2;
const SUB_API_CLIENTS: u32 = 100;

/// A wired virtio device.
pub struct DeviceInfo {
    /// `vsock`, `net` or `blk<N>`.
    pub name: String,
    /// Block slot index.
    pub slot: Option<u32>,
    /// MMIO base.
    pub addr: u64,
    /// GSI.
    pub irq: u32,
    /// The transport (shared with the MMIO bus and the event loop).
    pub transport: Arc<Mutex<MmioTransport>>,
}

/// Everything the builder hands over to the runtime.
pub struct VmmParts {
    /// The configuration.
    pub config: VmConfig,
    /// The KVM VM.
    pub vm: Vm,
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The event loop with all device handlers.
    pub event_loop: EventLoop,
    /// Exit requests.
    pub exit: Arc<ExitRequest>,
    /// vCPU pause control.
    pub control: Arc<VcpuControl>,
    /// Exit counters.
    pub counters: Arc<ExitCounters>,
    /// virtio devices.
    pub devices: Vec<DeviceInfo>,
    /// The serial port (flushed at exit).
    pub serial: Arc<Mutex<SerialDevice>>,
    /// `/proc/self/smaps`, opened before the jail, for the memory counters.
    pub smaps: Option<std::fs::File>,
    /// Sockets to remove at exit.
    pub sockets: Vec<PathBuf>,
    /// vCPU threads.
    pub vcpu_threads: Vec<JoinHandle<()>>,
    /// Process start.
    pub start: Instant,
}

/// The running VMM.
pub struct Vmm {
    p: VmmParts,
    api: Option<ApiServer>,
    signal_fd: Option<OwnedFd>,
    shutdown_deadline: Option<Instant>,
}

/// Blocks SIGTERM and SIGINT in the calling thread (and threads it spawns
/// later), so they are only received through the signal fd.
pub fn block_exit_signals() {
    // SAFETY: plain sigset manipulation on a zeroed local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut set);
        libc::sigaddset(&raw mut set, libc::SIGTERM);
        libc::sigaddset(&raw mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut());
    }
}

fn exit_signal_fd() -> std::io::Result<OwnedFd> {
    // SAFETY: sigset built locally; signalfd returns a new fd we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut set);
        libc::sigaddset(&raw mut set, libc::SIGTERM);
        libc::sigaddset(&raw mut set, libc::SIGINT);
        let fd = libc::signalfd(-1, &raw const set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

impl Vmm {
    /// Wraps the built parts.
    pub fn new(p: VmmParts) -> Self {
        Self {
            p,
            api: None,
            signal_fd: None,
            shutdown_deadline: None,
        }
    }

    /// Installs the event loop's seccomp filter (unless the config turns
    /// filtering off), before the loop handles anything the guest did.
    fn install_seccomp(&mut self) -> Result<(), (ExitCode, String)> {
        if !self.p.config.seccomp {
            tracing::warn!("seccomp filtering is off (config)");
            return Ok(());
        }
        crate::seccomp::Thread::EventLoop
            .install()
            .map_err(|e| (ExitCode::Internal, e.to_string()))
    }

    /// Sets up the fds that are not needed before the guest runs: exit
    /// eventfd, signal fd, control API socket.
    fn setup_control(&mut self) -> Result<(), (ExitCode, String)> {
        let reg = EpollRegistrar::new(self.p.event_loop.epoll(), VMM_ID);
        let internal = |what: &str, e: std::io::Error| (ExitCode::Internal, format!("{what}: {e}"));
        reg.add(self.p.exit.event().as_raw_fd(), SUB_EXIT, EventSet::IN)
            .map_err(|e| internal("registering exit event", e))?;
        let sfd = exit_signal_fd().map_err(|e| internal("signalfd", e))?;
        reg.add(sfd.as_raw_fd(), SUB_SIGNAL, EventSet::IN)
            .map_err(|e| internal("registering signalfd", e))?;
        self.signal_fd = Some(sfd);
        if let Some(path) = self.p.config.api_sock.clone() {
            let srv = ApiServer::bind(&path, reg, SUB_API, SUB_API_CLIENTS)
                .map_err(|e| internal(&format!("control socket {}", path.display()), e))?;
            self.p.sockets.push(path);
            self.api = Some(srv);
        }
        Ok(())
    }

    /// Runs until the VM ends; returns the exit code. Cleans up sockets.
    pub fn run(mut self) -> ExitCode {
        let code = match self.setup_control().and_then(|()| self.install_seccomp()) {
            Ok(()) => self.main_loop(),
            Err((code, why)) => {
                tracing::error!("{why}");
                code
            }
        };
        self.cleanup();
        code
    }

    fn main_loop(&mut self) -> ExitCode {
        loop {
            let timeout = match self.shutdown_deadline {
                Some(d) => d
                    .saturating_duration_since(Instant::now())
                    .as_millis()
                    .min(i32::MAX as u128) as i32,
                None => -1,
            };
            let own = match self.p.event_loop.run_once(timeout) {
                Ok(o) => o,
                Err(e) => {
                    tracing::error!("epoll: {e}");
                    return ExitCode::Internal;
                }
            };
            for (sub, _events) in own {
                match sub {
                    SUB_EXIT => {
                        let _ = self.p.exit.event().read();
                    }
                    SUB_SIGNAL => {
                        if let Some(sig) = self.read_signal() {
                            tracing::info!("received signal {sig}, stopping the VM");
                            self.p
                                .exit
                                .request(ExitCode::Signal, format!("signal {sig}"));
                        }
                    }
                    _ => self.api_event(sub),
                }
            }
            if let Some((code, why)) = self.p.exit.requested() {
                tracing::info!(code = code.code(), "{why}");
                return code;
            }
            if self.shutdown_deadline.is_some_and(|d| Instant::now() >= d) {
                tracing::warn!("graceful shutdown timed out; killing the VM");
                return ExitCode::ShutdownTimeout;
            }
        }
    }

    fn read_signal(&self) -> Option<u32> {
        let fd = self.signal_fd.as_ref()?;
        let mut info = [0u8; 128];
        // SAFETY: reads one signalfd_siginfo (128 bytes) into a local buffer.
        let n = unsafe { libc::read(fd.as_raw_fd(), info.as_mut_ptr().cast(), info.len()) };
        (n == 128).then(|| u32::from_ne_bytes([info[0], info[1], info[2], info[3]]))
    }

    fn api_event(&mut self, sub: u32) {
        let Some(api) = self.api.as_mut() else {
            return;
        };
        if !api.owns(sub) {
            return;
        }
        let lines = api.handle_event(sub);
        for line in lines {
            let answer = match parse_request(&line.text) {
                Ok(req) => match self.execute_with(req, line.file) {
                    Ok(v) => ok_response(v),
                    Err(e) => error_response(&e),
                },
                Err(e) => error_response(&e),
            };
            if let Some(api) = self.api.as_mut() {
                api.respond(line.client, &answer);
            }
        }
    }

    fn block(&self, slot: u32) -> Result<&DeviceInfo, String> {
        self.p
            .devices
            .iter()
            .find(|d| d.slot == Some(slot))
            .ok_or_else(|| {
                format!(
                    "slot: {slot} is not below blk_slots ({})",
                    self.p.config.blk_slots
                )
            })
    }

    /// Executes one control request.
    pub fn execute(&mut self, req: Request) -> Result<serde_json::Value, String> {
        self.execute_with(req, None)
    }

    /// Executes one control request with the file its client passed (an
    /// `attach_drive` backs the slot with it rather than opening `path`).
    pub fn execute_with(
        &mut self,
        req: Request,
        mut file: Option<std::fs::File>,
    ) -> Result<serde_json::Value, String> {
        match req {
            Request::AttachDrive {
                slot,
                path,
                read_only,
            } => {
                let d = self.block(slot)?;
                let mut t = lock(&d.transport);
                t.with_device(|dev, _| match dev.as_any_mut().downcast_mut::<Block>() {
                    Some(b) => match file.take() {
                        Some(f) => b.attach_file(f, &path, read_only),
                        None => b.attach(&path, read_only),
                    }
                    .map_err(|e| e.to_string()),
                    None => Err(format!("slot: {slot} is not a block device")),
                })?;
                t.config_changed();
                Ok(serde_json::json!({ "slot": slot }))
            }
            Request::DetachDrive { slot } => {
                let d = self.block(slot)?;
                let mut t = lock(&d.transport);
                t.with_device(|dev, _| match dev.as_any_mut().downcast_mut::<Block>() {
                    Some(b) => b.detach().map_err(|e| e.to_string()),
                    None => Err(format!("slot: {slot} is not a block device")),
                })?;
                t.config_changed();
                Ok(serde_json::json!({ "slot": slot }))
            }
            Request::State {} => Ok(self.state()),
            Request::Pause {} => {
                self.p
                    .control
                    .pause(Duration::from_secs(2))
                    .map_err(|e| e.to_string())?;
                Ok(serde_json::json!({ "state": "paused" }))
            }
            Request::Resume {} => {
                self.p.control.resume();
                Ok(serde_json::json!({ "state": "running" }))
            }
            Request::Shutdown { timeout_ms } => {
                let deadline = Instant::now() + Duration::from_millis(timeout_ms);
                self.shutdown_deadline = Some(match self.shutdown_deadline {
                    Some(d) if d < deadline => d,
                    _ => deadline,
                });
                Ok(serde_json::json!({ "timeout_ms": timeout_ms }))
            }
            Request::Counters {} => Ok(self.counters()),
        }
    }

    fn state(&self) -> serde_json::Value {
        let slots: Vec<serde_json::Value> = self
            .p
            .devices
            .iter()
            .filter_map(|d| {
                let slot = d.slot?;
                let mut t = lock(&d.transport);
                let info = t.with_device(|dev, _| {
                    dev.as_any_mut().downcast_mut::<Block>().and_then(|b| {
                        b.attached()
                            .map(|(p, ro, s)| (p.display().to_string(), ro, s))
                    })
                });
                Some(match info {
                    Some((path, ro, sectors)) => serde_json::json!({
                        "slot": slot, "path": path, "read_only": ro, "sectors": sectors }),
                    None => serde_json::json!({ "slot": slot, "path": null }),
                })
            })
            .collect();
        serde_json::json!({
            "state": if self.p.control.is_paused() { "paused" } else { "running" },
            "vcpus": self.p.config.cpus,
            "memory_mib": self.p.config.memory_mib,
            "uptime_ms": self.p.start.elapsed().as_millis() as u64,
            "vsock": self.p.config.vsock.as_ref().map(|v| serde_json::json!({"uds": v.uds, "cid": v.cid})),
            "slots": slots,
            "registers": self.p.control.paused_registers(),
        })
    }

    fn counters(&self) -> serde_json::Value {
        let devices: serde_json::Map<String, serde_json::Value> = self
            .p
            .devices
            .iter()
            .map(|d| (d.name.clone(), lock(&d.transport).device().counters()))
            .collect();
        serde_json::json!({
            "exits": self.p.counters.to_json(),
            "devices": devices,
            "memory": self.p.smaps.as_ref().and_then(|f| crate::vstate::memory::rss_split(&self.p.mem, f)),
        })
    }

    fn cleanup(&mut self) {
        lock(&self.p.serial).flush();
        for s in &self.p.sockets {
            let _ = std::fs::remove_file(s);
        }
        tracing::debug!(counters = %self.counters(), "VM stopped");
        let _ = (&self.p.vm, &self.p.mem, &self.p.vcpu_threads);
    }
}

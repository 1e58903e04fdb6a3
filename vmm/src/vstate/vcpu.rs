//! vCPUs: configuration (CPUID, MSRs, registers, LAPIC), the KVM_RUN loop
//! on one thread each, exit dispatch to the buses, pause/resume.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::CpuId;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use super::vm::{Vm, VmError};
use crate::arch::x86_64::{cpuid::patch_cpuid, dump, regs, set_lint};
use crate::devices::bus::IoBuses;
use crate::devices::lock;
use crate::exit::{ExitCode, ExitRequest};

/// Errors configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// Creating the vCPU failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// A KVM ioctl failed.
    #[error("vcpu{0}: {1}: {2}")]
    Kvm(u8, &'static str, kvm_ioctls::Error),
    /// Register setup failed.
    #[error("vcpu{0}: {1}")]
    Regs(u8, regs::RegsError),
    /// The vCPU thread could not be spawned.
    #[error("spawning vcpu{0} thread: {1}")]
    Spawn(u8, std::io::Error),
    /// Installing the kick signal handler failed.
    #[error("installing vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
}

/// VM exits counted by kind (all vCPUs).
#[derive(Default)]
pub struct ExitCounters {
    /// Port-I/O reads.
    pub io_in: AtomicU64,
    /// Port-I/O writes.
    pub io_out: AtomicU64,
    /// MMIO reads.
    pub mmio_read: AtomicU64,
    /// MMIO writes.
    pub mmio_write: AtomicU64,
    /// Port/MMIO accesses no device claimed.
    pub unhandled: AtomicU64,
    /// HLT exits (rare with the in-kernel irqchip).
    pub hlt: AtomicU64,
    /// KVM_RUN interrupted by a signal (pause kicks).
    pub interrupted: AtomicU64,
    /// Other exits.
    pub other: AtomicU64,
    /// Nanoseconds from process start to vCPU0's first KVM_RUN.
    pub first_run_ns: AtomicU64,
}

impl ExitCounters {
    /// The counters as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "io_in": g(&self.io_in),
            "io_out": g(&self.io_out),
            "mmio_read": g(&self.mmio_read),
            "mmio_write": g(&self.mmio_write),
            "unhandled": g(&self.unhandled),
            "hlt": g(&self.hlt),
            "interrupted": g(&self.interrupted),
            "other": g(&self.other),
            "first_run_us": g(&self.first_run_ns) / 1000,
        })
    }
}

/// Pause/resume coordination between the VMM thread and the vCPU threads.
pub struct VcpuControl {
    paused: AtomicBool,
    parked: Mutex<usize>,
    /// Each parked vCPU's registers, as [`dump::describe`] put them when it
    /// parked (index order).
    registers: Mutex<std::collections::BTreeMap<u8, String>>,
    cv: Condvar,
    threads: Mutex<Vec<libc::pthread_t>>,
    started: AtomicUsize,
}

/// The vCPUs did not stop in time.
#[derive(Debug, thiserror::Error)]
#[error("only {parked} of {total} vCPUs paused within {timeout_ms} ms")]
pub struct PauseTimeout {
    /// vCPUs that parked.
    pub parked: usize,
    /// All vCPUs.
    pub total: usize,
    /// The wait.
    pub timeout_ms: u64,
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing: the signal only makes KVM_RUN return EINTR.
}

/// The signal that kicks a vCPU out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

impl VcpuControl {
    /// Installs the kick signal handler and creates the control block.
    pub fn new() -> Result<Arc<Self>, VcpuError> {
        register_signal_handler(kick_signal(), kick_handler).map_err(VcpuError::Signal)?;
        Ok(Arc::new(Self {
            paused: AtomicBool::new(false),
            parked: Mutex::new(0),
            registers: Mutex::new(std::collections::BTreeMap::new()),
            cv: Condvar::new(),
            threads: Mutex::new(Vec::new()),
            started: AtomicUsize::new(0),
        }))
    }

    /// Whether the VM is paused.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// The registers of every vCPU as it parked, while the VM is paused;
    /// empty while it runs (they would be stale).
    pub fn paused_registers(&self) -> std::collections::BTreeMap<u8, String> {
        if self.is_paused() {
            lock(&self.registers).clone()
        } else {
            Default::default()
        }
    }

    fn park(&self, index: u8, registers: String) {
        lock(&self.registers).insert(index, registers);
        let mut parked = lock(&self.parked);
        *parked += 1;
        self.cv.notify_all();
        while self.paused.load(Ordering::SeqCst) {
            parked = self.cv.wait(parked).unwrap_or_else(|e| e.into_inner());
        }
        *parked -= 1;
    }

    /// Stops all vCPUs (kicking them out of KVM_RUN) and waits until they park.
    pub fn pause(&self, timeout: Duration) -> Result<(), PauseTimeout> {
        self.paused.store(true, Ordering::SeqCst);
        let total = self.started.load(Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        let mut parked = lock(&self.parked);
        while *parked < total {
            if Instant::now() >= deadline {
                return Err(PauseTimeout {
                    parked: *parked,
                    total,
                    timeout_ms: timeout.as_millis() as u64,
                });
            }
            for t in lock(&self.threads).iter() {
                // SAFETY: the pthread_t belongs to a vCPU thread that lives
                // until process exit (vCPU threads never return while the
                // VMM runs); the handler is installed.
                unsafe { libc::pthread_kill(*t, kick_signal()) };
            }
            // One kick per vCPU, then time to park: a kick is only needed
            // again if it raced with a vCPU entering KVM_RUN.
            parked = self
                .cv
                .wait_timeout(parked, Duration::from_millis(20))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        Ok(())
    }

    /// Lets parked vCPUs run again.
    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
        let _g = lock(&self.parked);
        self.cv.notify_all();
    }
}

/// One vCPU.
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
    buses: Arc<IoBuses>,
    exit: Arc<ExitRequest>,
    control: Arc<VcpuControl>,
    counters: Arc<ExitCounters>,
}

impl Vcpu {
    /// Creates vCPU `index`.
    pub fn new(
        vm: &Vm,
        index: u8,
        buses: Arc<IoBuses>,
        exit: Arc<ExitRequest>,
        control: Arc<VcpuControl>,
        counters: Arc<ExitCounters>,
    ) -> Result<Self, VcpuError> {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(index))
            .map_err(|e| VcpuError::Kvm(index, "KVM_CREATE_VCPU", e))?;
        Ok(Self {
            index,
            fd,
            buses,
            exit,
            control,
            counters,
        })
    }

    /// Sets CPUID, MSRs and LAPIC; the boot CPU (`entry` given) also gets
    /// long-mode registers. APs stay in the KVM reset state awaiting INIT/SIPI.
    pub fn configure(
        &self,
        base_cpuid: &CpuId,
        num_cpus: u8,
        entry: Option<u64>,
    ) -> Result<(), VcpuError> {
        let i = self.index;
        let mut cpuid = base_cpuid.clone();
        patch_cpuid(cpuid.as_mut_slice(), i, num_cpus);
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(|e| VcpuError::Kvm(i, "KVM_SET_CPUID2", e))?;
        regs::setup_msrs(&self.fd).map_err(|e| VcpuError::Regs(i, e))?;
        set_lint(&self.fd).map_err(|e| VcpuError::Regs(i, e))?;
        if let Some(entry) = entry {
            regs::setup_regs(&self.fd, entry).map_err(|e| VcpuError::Regs(i, e))?;
            regs::setup_fpu(&self.fd).map_err(|e| VcpuError::Regs(i, e))?;
            regs::setup_sregs(&self.fd).map_err(|e| VcpuError::Regs(i, e))?;
        }
        Ok(())
    }

    /// Starts the vCPU thread; with `seccomp`, the thread installs its
    /// filter before it first enters the guest.
    pub fn start(self, process_start: Instant, seccomp: bool) -> Result<JoinHandle<()>, VcpuError> {
        let index = self.index;
        let control = self.control.clone();
        let handle = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .stack_size(256 * 1024)
            .spawn(move || {
                if seccomp {
                    if let Err(e) = crate::seccomp::Thread::Vcpu.install() {
                        self.exit
                            .request(ExitCode::Internal, format!("vcpu{index}: {e}"));
                        return;
                    }
                }
                self.run(process_start)
            })
            .map_err(|e| VcpuError::Spawn(index, e))?;
        {
            use std::os::unix::thread::JoinHandleExt;
            lock(&control.threads).push(handle.as_pthread_t());
        }
        control.started.fetch_add(1, Ordering::SeqCst);
        Ok(handle)
    }

    fn run(mut self, process_start: Instant) {
        if self.index == 0 {
            let ns = process_start.elapsed().as_nanos() as u64;
            self.counters.first_run_ns.store(ns, Ordering::Relaxed);
        }
        loop {
            if self.control.is_paused() {
                // Out of KVM_RUN, so the registers are readable and settled.
                self.control.park(self.index, dump::describe(&self.fd));
                continue;
            }
            if self.exit.is_requested() {
                // The VM is ending: stop running guest code.
                self.control.paused.store(true, Ordering::SeqCst);
                continue;
            }
            if let Err((code, why)) = self.run_once() {
                self.exit.request(code, why);
            }
        }
    }

    fn run_once(&mut self) -> Result<(), (ExitCode, String)> {
        let c = &self.counters;
        let i = self.index;
        match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                c.io_in.fetch_add(1, Ordering::Relaxed);
                if !self.buses.pio.read(u64::from(port), data) {
                    c.unhandled.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                c.io_out.fetch_add(1, Ordering::Relaxed);
                if !self.buses.pio.write(u64::from(port), data) {
                    c.unhandled.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                c.mmio_read.fetch_add(1, Ordering::Relaxed);
                if !self.buses.mmio.read(addr, data) {
                    c.unhandled.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                c.mmio_write.fetch_add(1, Ordering::Relaxed);
                if !self.buses.mmio.write(addr, data) {
                    c.unhandled.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(VcpuExit::Hlt) => {
                c.hlt.fetch_add(1, Ordering::Relaxed);
            }
            Ok(VcpuExit::Shutdown) => {
                // Logged here, as an exit requested earlier would win.
                tracing::warn!("vcpu{i}: triple fault: {}", dump::describe(&self.fd));
                self.exit.guest_reset(&format!("triple fault on vcpu{i}"));
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                self.exit
                    .guest_reset(&format!("system event {kind} on vcpu{i}"));
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                return Err((
                    ExitCode::KvmError,
                    format!(
                        "vcpu{i}: KVM entry failed (hardware reason {reason:#x}, cpu {cpu}): {}",
                        dump::describe(&self.fd)
                    ),
                ));
            }
            Ok(VcpuExit::InternalError) => {
                let run = self.fd.get_kvm_run();
                // SAFETY: after a KVM_EXIT_INTERNAL_ERROR exit the `internal`
                // member of the exit union is the one KVM filled.
                let sub = unsafe { run.__bindgen_anon_1.internal.suberror };
                return Err((
                    ExitCode::KvmError,
                    format!(
                        "vcpu{i}: KVM internal error (suberror {sub}{}): {}",
                        if sub == 1 { ": emulation failure" } else { "" },
                        dump::describe(&self.fd)
                    ),
                ));
            }
            Ok(other) => {
                c.other.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("vcpu{i}: unhandled exit {other:?}");
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                c.interrupted.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                return Err((ExitCode::KvmError, format!("vcpu{i}: KVM_RUN: {e}")));
            }
        }
        Ok(())
    }
}

//! x86_64 specifics: memory layout, boot protocol, CPUID, registers, MP table.

pub mod boot_params;
pub mod cpuid;
pub mod dump;
pub mod gdt;
pub mod kernel_image;
pub mod layout;
pub mod mptable;
pub mod regs;

use std::path::Path;

use kvm_bindings::kvm_lapic_state;
use kvm_ioctls::VcpuFd;
use linux_loader::loader::{Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::vstate::mapped_file::MappedFileReader;
use layout::{CMDLINE_START, HIMEM_START};

/// Errors loading the kernel/initramfs or writing boot structures.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file could not be opened.
    #[error("kernel {path}: {err}")]
    KernelFile {
        /// Path of the kernel.
        path: String,
        /// The I/O error.
        err: std::io::Error,
    },
    /// The ELF loader rejected the kernel.
    #[error("loading kernel ELF: {0}")]
    KernelLoad(linux_loader::loader::Error),
    /// The initramfs could not be read.
    #[error("initrd {path}: {err}")]
    InitrdFile {
        /// Path of the initramfs.
        path: String,
        /// The I/O error.
        err: std::io::Error,
    },
    /// The initramfs does not fit low memory.
    #[error("initrd of {0} bytes does not fit guest memory")]
    InitrdTooBig(u64),
    /// Writing the initramfs into guest memory failed.
    #[error("copying initrd into guest memory: {0}")]
    InitrdCopy(vm_memory::GuestMemoryError),
    /// The command line could not be written.
    #[error("kernel command line: {0}")]
    Cmdline(linux_loader::loader::Error),
    /// MP table error.
    #[error(transparent)]
    MpTable(#[from] mptable::MpTableError),
    /// Register/page-table setup error.
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    /// Zero page error.
    #[error(transparent)]
    BootParams(#[from] boot_params::BootParamsError),
}

/// Why this host cannot run ordinary guests.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostError {
    /// The host KVM is PVM.
    #[error("host KVM is PVM (kvm_pvm loaded): ordinary Linux guests cannot run here; run inside the test node")]
    Pvm,
    /// The CPU has no hardware virtualization.
    #[error("host CPU has no vmx/svm flag: KVM cannot run ordinary Linux guests here; run inside the test node or on a VMX/SVM host")]
    NoHardwareVirt,
}

/// Checks that the host KVM can run an ordinary (non-PVM) guest.
pub fn check_host() -> Result<(), HostError> {
    if Path::new("/sys/module/kvm_pvm").exists() {
        return Err(HostError::Pvm);
    }
    match std::fs::read_to_string("/proc/cpuinfo") {
        Ok(info) => check_cpuinfo(&info),
        // Without /proc we cannot tell; let KVM decide.
        Err(_) => Ok(()),
    }
}

/// Checks the `flags` lines of a `/proc/cpuinfo` text for vmx or svm.
pub fn check_cpuinfo(info: &str) -> Result<(), HostError> {
    let has_virt = info
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if has_virt {
        Ok(())
    } else {
        Err(HostError::NoHardwareVirt)
    }
}

/// Loads an ELF `vmlinux` into guest memory, its page-aligned segments
/// mapped rather than copied; returns the 64-bit entry point.
/// `fd`, when given, is the kernel file already open (see
/// [`crate::config::InheritedFds`]).
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path, fd: Option<i32>) -> Result<u64, BootError> {
    let file_err = |err| BootError::KernelFile {
        path: path.display().to_string(),
        err,
    };
    let file = crate::config::open_input(path, fd).map_err(file_err)?;
    let mappable = kernel_image::mappable_ranges(&file);
    let mut reader = MappedFileReader::new(file, mem)
        .map_err(file_err)?
        .only_map(mappable);
    let res = Elf::load(mem, None, &mut reader, Some(GuestAddress(HIMEM_START)))
        .map_err(BootError::KernelLoad)?;
    tracing::debug!(
        "kernel: {} of {} bytes mapped",
        reader.mapped_bytes(),
        reader.file_len()
    );
    Ok(res.kernel_load.0)
}

/// Puts the initramfs at the top of low memory, mapped rather than copied
/// (the guest keeps it: `retain_initrd` in the command line); returns
/// `(address, size)`.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    path: &Path,
    fd: Option<i32>,
) -> Result<(u64, u64), BootError> {
    let file_err = |err| BootError::InitrdFile {
        path: path.display().to_string(),
        err,
    };
    let file = crate::config::open_input(path, fd).map_err(file_err)?;
    let mut reader = MappedFileReader::new(file, mem).map_err(file_err)?;
    let size = reader.file_len();
    let addr = boot_params::initrd_address(mem_size, size).ok_or(BootError::InitrdTooBig(size))?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut reader, size as usize)
        .map_err(BootError::InitrdCopy)?;
    Ok((addr, size))
}

/// Writes command line, MP table, GDT/page tables and the zero page.
pub fn configure_system(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    cmdline: &linux_loader::cmdline::Cmdline,
    initrd: Option<(u64, u64)>,
    num_cpus: u8,
) -> Result<(), BootError> {
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline)
        .map_err(BootError::Cmdline)?;
    let cmdline_len = cmdline
        .as_cstring()
        .map(|c| c.as_bytes().len())
        .unwrap_or(0);
    mptable::setup_mptable(mem, num_cpus)?;
    regs::write_boot_tables(mem)?;
    let params = boot_params::build_boot_params(mem_size, cmdline_len, initrd);
    boot_params::write_boot_params(mem, &params)?;
    Ok(())
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(state: &kvm_lapic_state, off: usize) -> u32 {
    let mut b = [0u8; 4];
    for (i, v) in b.iter_mut().enumerate() {
        *v = state.regs[off + i] as u8;
    }
    u32::from_le_bytes(b)
}

fn set_lapic_reg(state: &mut kvm_lapic_state, off: usize, val: u32) {
    for (i, v) in val.to_le_bytes().iter().enumerate() {
        state.regs[off + i] = *v as _;
    }
}

fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Programs LINT0 as ExtINT and LINT1 as NMI in the vCPU's local APIC.
pub fn set_lint(vcpu: &VcpuFd) -> Result<(), regs::RegsError> {
    let mut state = vcpu
        .get_lapic()
        .map_err(|e| regs::RegsError::Kvm("KVM_GET_LAPIC", e))?;
    let lvt0 = lapic_reg(&state, APIC_LVT0);
    set_lapic_reg(
        &mut state,
        APIC_LVT0,
        with_delivery_mode(lvt0, APIC_MODE_EXTINT),
    );
    let lvt1 = lapic_reg(&state, APIC_LVT1);
    set_lapic_reg(
        &mut state,
        APIC_LVT1,
        with_delivery_mode(lvt1, APIC_MODE_NMI),
    );
    vcpu.set_lapic(&state)
        .map_err(|e| regs::RegsError::Kvm("KVM_SET_LAPIC", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo_flags() {
        assert_eq!(check_cpuinfo("flags\t\t: fpu vme svm lm\n"), Ok(()));
        assert_eq!(check_cpuinfo("flags\t\t: fpu vmx\n"), Ok(()));
        assert_eq!(
            check_cpuinfo("flags\t\t: fpu hypervisor lm\n"),
            Err(HostError::NoHardwareVirt)
        );
        assert!(HostError::Pvm.to_string().contains("PVM"));
    }

    #[test]
    fn lapic_modes() {
        let mut s = kvm_lapic_state::default();
        set_lapic_reg(&mut s, APIC_LVT0, 0x0001_0700);
        assert_eq!(lapic_reg(&s, APIC_LVT0), 0x0001_0700);
        assert_eq!(
            with_delivery_mode(0x0001_0000, APIC_MODE_EXTINT),
            0x0001_0700
        );
        assert_eq!(with_delivery_mode(0x0001_0700, APIC_MODE_NMI), 0x0001_0400);
    }

    #[test]
    fn initrd_loaded_high() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, b"070701initrd").unwrap();
        let (addr, size) = load_initrd(&mem, 64 << 20, f.path(), None).unwrap();
        assert_eq!(size, 12);
        let mut buf = [0u8; 12];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        assert_eq!(&buf, b"070701initrd");
    }

    #[test]
    fn bad_kernel_is_an_error() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, b"not an elf file at all").unwrap();
        assert!(matches!(
            load_kernel(&mem, f.path(), None),
            Err(BootError::KernelLoad(_))
        ));
        assert!(load_kernel(&mem, Path::new("/nonexistent"), None).is_err());
    }
}

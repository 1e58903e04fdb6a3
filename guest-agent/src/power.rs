//! Clean guest poweroff: sync, tell the VMM it is a poweroff, reboot.
//!
//! The guest kernel has no ACPI, so "power off" is a reboot through the
//! i8042 that ends the VM; the byte written to the VMM's exit port first
//! lets the VMM report a clean poweroff rather than a reboot or panic.

use moat_proto::{GUEST_EXIT_PORT, GUEST_EXIT_POWEROFF};

/// Powers the guest off. Never returns.
pub fn poweroff() -> ! {
    nix::unistd::sync();
    signal_vmm_poweroff();
    let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    eprintln!("moat-agent: reboot failed: {err:?}");
    loop {
        std::thread::park();
    }
}

/// Writes [`GUEST_EXIT_POWEROFF`] to [`GUEST_EXIT_PORT`]. Best effort: a VMM
/// without that port ignores the write.
fn signal_vmm_poweroff() {
    // SAFETY: ioperm only changes this process's I/O permission bitmap.
    let granted = unsafe { libc::ioperm(GUEST_EXIT_PORT.into(), 1, 1) } == 0;
    if !granted {
        return;
    }
    // SAFETY: the port was granted above; an `out` to it has no effect on
    // this process's memory.
    unsafe {
        std::arch::asm!("out dx, al", in("dx") GUEST_EXIT_PORT, in("al") GUEST_EXIT_POWEROFF,
            options(nomem, nostack, preserves_flags));
    }
}

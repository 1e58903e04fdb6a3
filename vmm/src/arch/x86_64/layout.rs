//! Guest physical memory layout for x86_64.

/// Start of the GDT written for the boot CPU.
pub const BOOT_GDT_START: u64 = 0x500;
/// Start of the (empty) IDT.
pub const BOOT_IDT_START: u64 = 0x520;
/// The zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot CPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Level-4 page table (PML4).
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory (512 x 2 MiB = the first 1 GiB identity mapped).
pub const PDE_START: u64 = 0xb000;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Maximum command line size (including the NUL) the x86 kernel accepts.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area; the MP table lives here.
pub const EBDA_START: u64 = 0x9fc00;
/// First address of high memory (1 MiB); the kernel is loaded above.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap (virtio-mmio devices, IOAPIC, LAPIC).
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End of the 32-bit MMIO gap (4 GiB).
pub const MMIO_GAP_END: u64 = 1 << 32;
/// Base address of the first virtio-mmio device.
pub const VIRTIO_MMIO_BASE: u64 = MMIO_GAP_START;
/// Size of one virtio-mmio device window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// IOAPIC base address.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Local APIC base address.
pub const APIC_ADDR: u32 = 0xfee0_0000;
/// KVM's TSS needs three pages below 4 GiB outside guest RAM.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// The first GSI handed to virtio-mmio devices (0-4 are legacy devices).
pub const IRQ_BASE: u32 = 5;
/// The last usable GSI of the IOAPIC (24 pins).
pub const IRQ_MAX: u32 = 23;
/// COM1 serial IRQ.
pub const SERIAL_IRQ: u32 = 4;
/// i8042 keyboard IRQ.
pub const I8042_KBD_IRQ: u32 = 1;

/// Guest RAM ranges `(start, size)` for `mem_size` bytes of memory: below the
/// MMIO gap and, for larger guests, the rest above 4 GiB.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

/// MMIO window and IRQ of the `index`-th virtio-mmio device, if it fits.
pub fn virtio_mmio_slot(index: u32) -> Option<(u64, u32)> {
    let irq = IRQ_BASE.checked_add(index)?;
    if irq > IRQ_MAX {
        return None;
    }
    Some((VIRTIO_MMIO_BASE + u64::from(index) * VIRTIO_MMIO_SIZE, irq))
}

/// Number of virtio-mmio devices that fit the IRQ space.
pub const MAX_VIRTIO_DEVICES: u32 = IRQ_MAX - IRQ_BASE + 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_split_around_gap() {
        assert_eq!(ram_ranges(128 << 20), vec![(0, 128 << 20)]);
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (0, MMIO_GAP_START));
        assert_eq!(r[1].0, 1 << 32);
        assert_eq!(r[0].1 + r[1].1, 4 << 30);
    }

    #[test]
    fn mmio_slots_bounded_by_irqs() {
        assert_eq!(virtio_mmio_slot(0), Some((0xd000_0000, 5)));
        assert_eq!(virtio_mmio_slot(1), Some((0xd000_1000, 6)));
        assert!(virtio_mmio_slot(MAX_VIRTIO_DEVICES - 1).is_some());
        assert!(virtio_mmio_slot(MAX_VIRTIO_DEVICES).is_none());
    }
}

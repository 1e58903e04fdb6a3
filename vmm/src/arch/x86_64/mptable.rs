//! Intel MultiProcessor Specification 1.4 table, so a guest without ACPI
//! (`CONFIG_X86_MPPARSE`) finds its CPUs, the IOAPIC and the IRQ routing.
//!
//! The structures are serialized field by field into a byte vector instead of
//! using `#[repr(packed)]` structs: no crate publishes MP table bindings
//! (Firecracker keeps its own), and explicit little-endian encoding needs no
//! `unsafe`.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_ADDR, EBDA_START, IOAPIC_ADDR, IRQ_MAX};

/// Errors writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    /// Too many CPUs for the APIC ID space we use.
    #[error("{0} vCPUs do not fit the MP table (max 254)")]
    TooManyCpus(u8),
    /// The table does not fit guest memory.
    #[error("writing the MP table: {0}")]
    Memory(vm_memory::GuestMemoryError),
}

const MPC_SPEC: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const CPU_STEPPING: u32 = 0x600;
const CPU_FEATURE_APIC: u32 = 0x200;
const CPU_FEATURE_FPU: u32 = 0x001;
const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;
const MP_IRQTYPE_INT: u8 = 0;
const MP_IRQTYPE_NMI: u8 = 1;
const MP_IRQTYPE_EXTINT: u8 = 3;
const MP_IRQDIR_DEFAULT: u16 = 0;
const MPC_APIC_USABLE: u8 = 1;

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

/// Builds the MP floating pointer plus configuration table for `num_cpus`
/// CPUs, to be placed at guest physical address `base`.
pub fn build_mptable(base: u64, num_cpus: u8) -> Result<Vec<u8>, MpTableError> {
    if num_cpus == 0 || num_cpus > 254 {
        return Err(MpTableError::TooManyCpus(num_cpus));
    }
    let ioapic_id = num_cpus.saturating_add(1);
    let table_addr = (base + 16) as u32;

    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        entries.push(MP_PROCESSOR);
        entries.push(cpu);
        entries.push(APIC_VERSION);
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.push(flags);
        entries.extend_from_slice(&CPU_STEPPING.to_le_bytes());
        entries.extend_from_slice(&(CPU_FEATURE_APIC | CPU_FEATURE_FPU).to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[MP_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[MP_IOAPIC, ioapic_id, IOAPIC_VERSION, MPC_APIC_USABLE]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    for irq in 0..=IRQ_MAX as u8 {
        entries.extend_from_slice(&[MP_INTSRC, MP_IRQTYPE_INT]);
        entries.extend_from_slice(&MP_IRQDIR_DEFAULT.to_le_bytes());
        entries.extend_from_slice(&[0, irq, ioapic_id, irq]);
        count += 1;
    }
    // LINT0 of the BSP receives ExtINT (the PIC), LINT1 of every CPU NMI.
    entries.extend_from_slice(&[MP_LINTSRC, MP_IRQTYPE_EXTINT]);
    entries.extend_from_slice(&MP_IRQDIR_DEFAULT.to_le_bytes());
    entries.extend_from_slice(&[0, 0, 0, 0]);
    count += 1;
    entries.extend_from_slice(&[MP_LINTSRC, MP_IRQTYPE_NMI]);
    entries.extend_from_slice(&MP_IRQDIR_DEFAULT.to_le_bytes());
    entries.extend_from_slice(&[0, 0, 0xff, 1]);
    count += 1;

    let mut header: Vec<u8> = Vec::with_capacity(44);
    header.extend_from_slice(b"PCMP");
    let length = (44 + entries.len()) as u16;
    header.extend_from_slice(&length.to_le_bytes());
    header.push(MPC_SPEC);
    header.push(0); // checksum, patched below
    header.extend_from_slice(b"MOAT    ");
    header.extend_from_slice(b"MOATVMM     ");
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    header.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&APIC_ADDR.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes()); // extended table length/checksum
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut out: Vec<u8> = Vec::with_capacity(16 + table.len());
    out.extend_from_slice(b"_MP_");
    out.extend_from_slice(&table_addr.to_le_bytes());
    out.push(1); // length in 16-byte units
    out.push(MPC_SPEC);
    out.push(0); // checksum, patched below
    out.extend_from_slice(&[0u8; 5]); // feature bytes: 0 = table present
    out[10] = checksum(&out[..16]);
    out.extend_from_slice(&table);
    Ok(out)
}

/// Writes the MP table for `num_cpus` CPUs at the start of the EBDA.
pub fn setup_mptable(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), MpTableError> {
    let bytes = build_mptable(EBDA_START, num_cpus)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(MpTableError::Memory)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_counts() {
        for cpus in [1u8, 2, 4, 64] {
            let t = build_mptable(EBDA_START, cpus).unwrap();
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0);
            let phys = u32::from_le_bytes(t[4..8].try_into().unwrap());
            assert_eq!(u64::from(phys), EBDA_START + 16);
            let table = &t[16..];
            assert_eq!(&table[0..4], b"PCMP");
            let len = u16::from_le_bytes(table[4..6].try_into().unwrap()) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0);
            let count = u16::from_le_bytes(table[34..36].try_into().unwrap());
            assert_eq!(count as usize, cpus as usize + 1 + 1 + 24 + 2);
            // First processor entry is the enabled BSP.
            assert_eq!(table[44], MP_PROCESSOR);
            assert_eq!(table[47], CPU_ENABLED | CPU_BOOTPROCESSOR);
        }
    }

    #[test]
    fn rejects_bad_cpu_counts() {
        assert!(build_mptable(EBDA_START, 0).is_err());
        assert!(build_mptable(EBDA_START, 255).is_err());
    }

    #[test]
    fn written_to_memory() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        setup_mptable(&mem, 2).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(EBDA_START)).unwrap();
        assert_eq!(&sig, b"_MP_");
    }
}

//! The zero page (`boot_params`) of the 64-bit Linux boot protocol: setup
//! header fields, e820 memory map, command line and initramfs location.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::layout::*;

/// e820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type: reserved.
pub const E820_RESERVED: u32 = 2;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const LOADFLAGS_CAN_USE_HEAP: u8 = 0x80;

/// Errors writing the zero page.
#[derive(Debug, thiserror::Error)]
pub enum BootParamsError {
    /// Writing to guest memory failed.
    #[error("writing boot_params: {0}")]
    Write(linux_loader::configurator::Error),
}

/// The e820 map for `mem_size` bytes of RAM: low RAM up to the EBDA (which
/// holds the MP table), RAM from 1 MiB to the MMIO gap, RAM above 4 GiB.
pub fn e820_map(mem_size: u64) -> Vec<boot_e820_entry> {
    let mut map = vec![
        boot_e820_entry {
            addr: 0,
            size: EBDA_START,
            r#type: E820_RAM,
        },
        boot_e820_entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            r#type: E820_RESERVED,
        },
    ];
    for (start, size) in ram_ranges(mem_size) {
        let (start, size) = if start == 0 {
            (HIMEM_START, size - HIMEM_START)
        } else {
            (start, size)
        };
        map.push(boot_e820_entry {
            addr: start,
            size,
            r#type: E820_RAM,
        });
    }
    map
}

/// Fills the zero page for a kernel with `cmdline_len` bytes of command line
/// (without NUL) and an optional initramfs `(address, size)`.
pub fn build_boot_params(
    mem_size: u64,
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
) -> boot_params {
    let mut params = boot_params::default();
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.loadflags |= LOADFLAGS_CAN_USE_HEAP;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = (cmdline_len + 1) as u32;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.ext_ramdisk_image = (addr >> 32) as u32;
        params.hdr.ramdisk_size = size as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }
    let map = e820_map(mem_size);
    for (i, e) in map.iter().enumerate() {
        params.e820_table[i] = *e;
    }
    params.e820_entries = map.len() as u8;
    params
}

/// Where to put an initramfs of `size` bytes: page aligned, as high as
/// possible below the end of low memory.
pub fn initrd_address(mem_size: u64, size: u64) -> Option<u64> {
    let lowmem_end = mem_size.min(MMIO_GAP_START);
    let addr = lowmem_end.checked_sub(size)? & !0xfff;
    (addr >= HIMEM_START).then_some(addr)
}

/// Writes `params` to the zero page.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    params: &boot_params,
) -> Result<(), BootParamsError> {
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new::<boot_params>(params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(BootParamsError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn e820_small_guest() {
        let m = e820_map(128 << 20);
        assert_eq!(m.len(), 3);
        assert_eq!(
            ({ m[0].addr }, { m[0].size }, { m[0].r#type }),
            (0, EBDA_START, E820_RAM)
        );
        assert_eq!({ m[1].r#type }, E820_RESERVED);
        assert_eq!({ m[2].addr }, HIMEM_START);
        assert_eq!({ m[2].addr } + { m[2].size }, 128 << 20);
    }

    #[test]
    fn e820_large_guest_skips_mmio_gap() {
        let m = e820_map(6 << 30);
        assert_eq!(m.len(), 4);
        assert_eq!({ m[2].addr } + { m[2].size }, MMIO_GAP_START);
        assert_eq!({ m[3].addr }, 1 << 32);
        assert_eq!({ m[2].size } + { m[3].size } + HIMEM_START, 6 << 30);
    }

    #[test]
    fn initrd_placement() {
        let a = initrd_address(128 << 20, 5000).unwrap();
        assert_eq!(a % 4096, 0);
        assert!(a + 5000 <= 128 << 20);
        assert!(a + 5000 + 4096 > 128 << 20);
        assert!(initrd_address(128 << 20, 200 << 20).is_none());
        let big = initrd_address(8 << 30, 1 << 20).unwrap();
        assert!(big + (1 << 20) <= MMIO_GAP_START);
    }

    #[test]
    fn zero_page_contents() {
        let p = build_boot_params(128 << 20, 99, Some((0x700_0000, 0x1234)));
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ p.hdr.cmdline_size }, 100);
        assert_eq!({ p.hdr.ramdisk_image }, 0x700_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 0x1234);
        assert_eq!({ p.e820_entries }, 3);
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        write_boot_params(&mem, &p).unwrap();
        let flag: u16 = mem.read_obj(GuestAddress(ZERO_PAGE_START + 0x1fe)).unwrap();
        assert_eq!(flag, 0xaa55);
    }
}

//! Guest memory: anonymous private `MAP_NORESERVE` mappings (vm-memory's
//! default for `MmapRegion::new`), split around the 32-bit MMIO gap.

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::layout::ram_ranges;

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
#[error("creating {size_mib} MiB of guest memory: {err}")]
pub struct MemoryError {
    /// Requested size.
    pub size_mib: u64,
    /// The mmap error.
    pub err: vm_memory::mmap::FromRangesError,
}

/// Creates `size_mib` MiB of guest memory.
pub fn create_guest_memory(size_mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(size_mib << 20)
        .into_iter()
        .map(|(start, size)| (GuestAddress(start), size as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|err| MemoryError { size_mib, err })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn regions() {
        let m = create_guest_memory(128).unwrap();
        assert_eq!(m.num_regions(), 1);
        assert_eq!(m.iter().map(|r| r.len()).sum::<u64>(), 128 << 20);
    }
}

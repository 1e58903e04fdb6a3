//! Guest memory: anonymous private `MAP_NORESERVE` mappings (vm-memory's
//! default for `MmapRegion::new`), split around the 32-bit MMIO gap.

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

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

/// Resident memory of this process in KiB, split into guest memory and
/// the VMM's own (code, heap, stacks, device buffers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RssSplit {
    /// All resident memory.
    pub total_kib: u64,
    /// Resident guest memory (anonymous pages and mapped boot images).
    pub guest_kib: u64,
}

/// Reads `smaps` (this process's `/proc/self/smaps`, opened before the
/// jail hid `/proc`) from its start and splits its resident memory by
/// `mem`'s host ranges; `None` where it cannot be read.
pub fn rss_split(mem: &GuestMemoryMmap, smaps: &std::fs::File) -> Option<RssSplit> {
    use std::io::{Read, Seek, SeekFrom};
    let ranges: Vec<(u64, u64)> = mem.iter().map(|r| (r.as_ptr() as u64, r.len())).collect();
    let mut file = smaps;
    file.seek(SeekFrom::Start(0)).ok()?;
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    Some(split_smaps(&text, &ranges))
}

/// Sums the `Rss:` lines of an smaps text, counting a mapping as guest
/// memory when it lies inside one of the host `ranges` `(start, len)`.
/// Guest memory can be several mappings, as boot images are mapped over it.
pub fn split_smaps(smaps: &str, ranges: &[(u64, u64)]) -> RssSplit {
    let (mut total, mut guest, mut in_guest) = (0u64, 0u64, false);
    for line in smaps.lines() {
        if let Some(kib) = line.strip_prefix("Rss:") {
            let kib: u64 = kib
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0);
            total += kib;
            if in_guest {
                guest += kib;
            }
            continue;
        }
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                in_guest = ranges
                    .iter()
                    .any(|&(start, len)| a >= start && b <= start.saturating_add(len));
            }
        }
    }
    RssSplit {
        total_kib: total,
        guest_kib: guest,
    }
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

    #[test]
    fn smaps_split_counts_every_mapping_inside_guest_memory() {
        let smaps = "\
55d000000000-55d000100000 r-xp 00000000 00:1f 12 /usr/bin/moat-vmm
Size:               1024 kB
Rss:                 800 kB
7f0000000000-7f0000200000 rw-p 00000000 00:00 0
Rss:                 100 kB
7f0000200000-7f0000a00000 rw-p 00200000 00:1f 99 /boot/vmlinux
Rss:                3000 kB
7f0000a00000-7f0008000000 rw-p 00000000 00:00 0
Rss:                2000 kB
7fff00000000-7fff00021000 rw-p 00000000 00:00 0 [stack]
Rss:                  12 kB
";
        let split = split_smaps(smaps, &[(0x7f00_0000_0000, 128 << 20)]);
        assert_eq!(split.total_kib, 5912);
        assert_eq!(split.guest_kib, 5100);
    }
}

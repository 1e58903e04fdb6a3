//! Guest memory: one sealed memfd, mapped shared (`MAP_NORESERVE`), split
//! around the 32-bit MMIO gap. Shared so that a vhost-user daemon (the pod's
//! virtio-fs server) can map the same pages from the fd; sealed against
//! shrinking and growing so that such a daemon cannot truncate it under the
//! VMM (a truncated page would fault the VMM with SIGBUS).

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::x86_64::layout::ram_ranges;

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The memfd could not be made, sized or sealed.
    #[error("creating the {size_mib} MiB guest memory file: {err}")]
    File {
        /// Requested size.
        size_mib: u64,
        /// The error.
        err: std::io::Error,
    },
    /// The memfd could not be mapped.
    #[error("mapping {size_mib} MiB of guest memory: {err}")]
    Map {
        /// Requested size.
        size_mib: u64,
        /// The mmap error.
        err: vm_memory::mmap::FromRangesError,
    },
}

/// Creates `size_mib` MiB of guest memory backed by a sealed memfd.
pub fn create_guest_memory(size_mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let file_err = |err| MemoryError::File { size_mib, err };
    let file = Arc::new(sealed_memfd(size_mib << 20).map_err(file_err)?);
    let mut offset = 0u64;
    let mut ranges = Vec::new();
    for (start, size) in ram_ranges(size_mib << 20) {
        ranges.push((
            GuestAddress(start),
            size as usize,
            Some(FileOffset::from_arc(file.clone(), offset)),
        ));
        offset += size;
    }
    GuestMemoryMmap::from_ranges_with_files(&ranges)
        .map_err(|err| MemoryError::Map { size_mib, err })
}

/// A memfd of `len` bytes that can neither shrink nor grow.
fn sealed_memfd(len: u64) -> std::io::Result<File> {
    // SAFETY: the name is a NUL-terminated literal; the call has no other
    // memory effects.
    let fd = unsafe {
        libc::memfd_create(
            c"moat-guest-ram".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a new fd that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len)?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: F_ADD_SEALS takes an int and touches no memory of ours.
    if unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

/// Resident memory of this process in KiB, split into guest memory and
/// the VMM's own (code, heap, stacks, device buffers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RssSplit {
    /// All resident memory.
    pub total_kib: u64,
    /// Resident guest memory (the memfd's pages and mapped boot images).
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
    fn memory_is_one_sealed_shared_file() {
        use std::os::fd::AsRawFd;
        use vm_memory::Bytes;
        // 4 GiB: two regions around the MMIO gap, at offsets of one file.
        let m = create_guest_memory(4096).unwrap();
        assert_eq!(m.num_regions(), 2);
        let offsets: Vec<(u64, i32)> = m
            .iter()
            .map(|r| {
                let f = r.file_offset().unwrap();
                (f.start(), f.file().as_raw_fd())
            })
            .collect();
        assert_eq!(offsets[0].0, 0);
        assert_eq!(offsets[1].0, m.iter().next().unwrap().len());
        assert_eq!(offsets[0].1, offsets[1].1);
        // A write through guest memory is in the file (what a vhost-user
        // daemon maps), and the file cannot be shrunk.
        let r = m.iter().next().unwrap();
        m.write_obj(0x1234_5678u32, GuestAddress(0x1000)).unwrap();
        let f = r.file_offset().unwrap().file();
        let mut buf = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(f, &mut buf, 0x1000).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0x1234_5678);
        assert!(f.set_len(4096).is_err());
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

//! Boot images mapped into guest memory instead of copied.
//!
//! [`MappedFileReader`] is the reader the kernel ELF loader and the initramfs
//! loader read through. Where guest memory and the file offset are both
//! page-aligned it maps whole file pages over the guest memory (private,
//! copy-on-write) instead of copying them: the VMM touches none of those
//! pages before the first vCPU run, the guest faults in only the pages it
//! uses, and pages it never writes stay page cache shared by every VM booted
//! from the same file. What is not page-aligned, and the last partial page,
//! is read as usual.
//!
//! Only file ranges the caller marks mappable are mapped
//! ([`MappedFileReader::only_map`]). A mapped page is private to the VMM:
//! a vhost-user daemon, which maps guest memory from its memfd, would see
//! the memfd's zero page under it. So only pages the guest never hands to a
//! device may be mapped: kernel text and read-only data, which the guest
//! never frees, and an initramfs the guest keeps (`retain_initrd`).
//!
//! A file must be replaced by rename, not rewritten in place, while VMs that
//! booted from it run: the guest would see the new bytes in pages it had not
//! touched yet.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{
    GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, ReadVolatile, VolatileMemoryError,
    VolatileSlice,
};

/// A file reader that maps page-aligned ranges into guest memory.
pub struct MappedFileReader<'m> {
    file: File,
    file_len: u64,
    /// Host ranges `(start, len)` of the guest memory regions.
    guest: Vec<(usize, usize)>,
    page: usize,
    mapped: u64,
    /// File ranges `[start, end)` that may be mapped; `None`: all.
    mappable: Option<Vec<(u64, u64)>>,
    _mem: std::marker::PhantomData<&'m GuestMemoryMmap>,
}

impl<'m> MappedFileReader<'m> {
    /// A reader of `file` that may map its pages over `mem`, and nowhere else.
    pub fn new(file: File, mem: &'m GuestMemoryMmap) -> std::io::Result<Self> {
        let file_len = file.metadata()?.len();
        let guest = mem
            .iter()
            .map(|r| (r.as_ptr() as usize, r.len() as usize))
            .collect();
        // SAFETY: sysconf has no memory effects.
        let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            p if p > 0 => p as usize,
            _ => 4096,
        };
        Ok(Self {
            file,
            file_len,
            guest,
            page,
            mapped: 0,
            mappable: None,
            _mem: std::marker::PhantomData,
        })
    }

    /// Maps only the file ranges `[start, end)` in `ranges`, copying the rest.
    pub fn only_map(mut self, ranges: Vec<(u64, u64)>) -> Self {
        self.mappable = Some(ranges);
        self
    }

    /// How many bytes from file position `pos` may be mapped (0: none).
    fn mappable_at(&self, pos: u64) -> u64 {
        match &self.mappable {
            None => self.file_len.saturating_sub(pos),
            Some(ranges) => ranges
                .iter()
                .find(|&&(start, end)| pos >= start && pos < end)
                .map_or(0, |&(_, end)| end.min(self.file_len) - pos),
        }
    }

    /// How many bytes from `pos` to copy before a mappable range starts.
    fn copy_len_at(&self, pos: u64, len: usize) -> usize {
        let next = self.mappable.as_ref().and_then(|ranges| {
            ranges
                .iter()
                .map(|&(start, _)| start)
                .filter(|&start| start > pos)
                .min()
        });
        match next {
            Some(start) => len.min((start - pos) as usize),
            None => len,
        }
    }

    /// Bytes mapped rather than copied so far.
    pub fn mapped_bytes(&self) -> u64 {
        self.mapped
    }

    /// The file's length.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    fn in_guest(&self, start: usize, len: usize) -> bool {
        self.guest.iter().any(|&(g, glen)| {
            start >= g && start.checked_add(len).is_some_and(|end| end <= g + glen)
        })
    }

    /// Maps as many whole pages as fit `len` bytes at `host` from the
    /// current file position; returns the bytes mapped (0: copy instead).
    fn try_map(&mut self, host: usize, len: usize) -> std::io::Result<usize> {
        let pos = self.file.stream_position()?;
        let avail = self.mappable_at(pos);
        let want = (len as u64).min(avail) as usize / self.page * self.page;
        if want == 0
            || !host.is_multiple_of(self.page)
            || !pos.is_multiple_of(self.page as u64)
            || !self.in_guest(host, want)
        {
            return Ok(0);
        }
        let offset = libc::off_t::try_from(pos).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        // SAFETY: [host, host + want) lies inside guest memory owned by the
        // `GuestMemoryMmap` this reader borrows (checked above), so the fixed
        // mapping replaces only guest pages, which the caller is overwriting
        // with these same file bytes; no Rust object lives in guest memory.
        // The file range is inside the file, so no page maps past its end.
        let p = unsafe {
            libc::mmap(
                host as *mut libc::c_void,
                want,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
                self.file.as_raw_fd(),
                offset,
            )
        };
        if p == libc::MAP_FAILED {
            // The old pages are untouched when mmap fails: copy instead.
            tracing::debug!(
                "mapping {want} bytes of a boot image failed ({}); copying",
                std::io::Error::last_os_error()
            );
            return Ok(0);
        }
        self.file.seek(SeekFrom::Current(want as i64))?;
        self.mapped += want as u64;
        Ok(want)
    }
}

impl Read for MappedFileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }
}

impl Seek for MappedFileReader<'_> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.file.seek(pos)
    }
}

impl ReadVolatile for MappedFileReader<'_> {
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let host = buf.ptr_guard_mut().as_ptr() as usize;
        // Callers read each guest region with one call: map what may be
        // mapped and copy the rest (unaligned, not mappable, the last
        // partial page) here.
        let mut done = 0;
        while done < buf.len() {
            let mapped = self
                .try_map(host + done, buf.len() - done)
                .map_err(VolatileMemoryError::IOError)?;
            if mapped > 0 {
                buf.bitmap().mark_dirty(done, mapped);
                done += mapped;
                continue;
            }
            let pos = self
                .file
                .stream_position()
                .map_err(VolatileMemoryError::IOError)?;
            let want = self.copy_len_at(pos, buf.len() - done);
            let mut rest = buf.offset(done)?.subslice(0, want)?;
            match self.file.read_volatile(&mut rest) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(VolatileMemoryError::IOError(e))
                    if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if done == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vm_memory::{Bytes, GuestAddress};

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    fn setup(len: usize) -> (tempfile::NamedTempFile, Vec<u8>, GuestMemoryMmap) {
        let data = pattern(len);
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&data).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        (f, data, mem)
    }

    #[test]
    fn aligned_pages_are_mapped_and_the_tail_copied() {
        let (f, data, mem) = setup(3 * 4096 + 100);
        let mut r = MappedFileReader::new(f.reopen().unwrap(), &mem).unwrap();
        mem.read_exact_volatile_from(GuestAddress(0x4000), &mut r, data.len())
            .unwrap();
        assert_eq!(r.mapped_bytes(), 3 * 4096);
        let mut back = vec![0u8; data.len()];
        mem.read_slice(&mut back, GuestAddress(0x4000)).unwrap();
        assert_eq!(back, data);
        // Memory after the image is still zero, not the file's next bytes.
        let after: u64 = mem
            .read_obj(GuestAddress(0x4000 + data.len() as u64))
            .unwrap();
        assert_eq!(after, 0);
    }

    #[test]
    fn guest_writes_never_reach_the_file() {
        let (f, data, mem) = setup(2 * 4096);
        let mut r = MappedFileReader::new(f.reopen().unwrap(), &mem).unwrap();
        mem.read_exact_volatile_from(GuestAddress(0), &mut r, data.len())
            .unwrap();
        assert_eq!(r.mapped_bytes(), 2 * 4096);
        mem.write_slice(&[0xaa; 64], GuestAddress(100)).unwrap();
        assert_eq!(std::fs::read(f.path()).unwrap(), data);
    }

    #[test]
    fn unaligned_offsets_are_copied() {
        let (f, data, mem) = setup(4 * 4096);
        let mut r = MappedFileReader::new(f.reopen().unwrap(), &mem).unwrap();
        r.seek(SeekFrom::Start(10)).unwrap();
        mem.read_exact_volatile_from(GuestAddress(0x1000), &mut r, 3 * 4096)
            .unwrap();
        assert_eq!(r.mapped_bytes(), 0);
        let mut back = vec![0u8; 3 * 4096];
        mem.read_slice(&mut back, GuestAddress(0x1000)).unwrap();
        assert_eq!(back, data[10..10 + 3 * 4096]);
        // Guest address not page-aligned: copied too.
        r.seek(SeekFrom::Start(0)).unwrap();
        mem.read_exact_volatile_from(GuestAddress(0x10010), &mut r, 4096)
            .unwrap();
        assert_eq!(r.mapped_bytes(), 0);
    }

    #[test]
    fn only_the_mappable_ranges_are_mapped() {
        let (f, data, _) = setup(8 * 4096);
        let mem = crate::vstate::memory::create_guest_memory(16).unwrap();
        let mut r = MappedFileReader::new(f.reopen().unwrap(), &mem)
            .unwrap()
            .only_map(vec![(4096, 3 * 4096), (5 * 4096, 6 * 4096 + 100)]);
        mem.read_exact_volatile_from(GuestAddress(0x10000), &mut r, data.len())
            .unwrap();
        assert_eq!(r.mapped_bytes(), 3 * 4096);
        let mut back = vec![0u8; data.len()];
        mem.read_slice(&mut back, GuestAddress(0x10000)).unwrap();
        assert_eq!(back, data);
        // A copied page is in the memory file; a mapped one is not.
        let file = mem.iter().next().unwrap().file_offset().unwrap().file();
        let mut page = vec![0u8; 4096];
        std::os::unix::fs::FileExt::read_exact_at(file, &mut page, 0x10000).unwrap();
        assert_eq!(page, data[..4096]);
        std::os::unix::fs::FileExt::read_exact_at(file, &mut page, 0x11000).unwrap();
        assert_eq!(page, vec![0u8; 4096]);
        std::os::unix::fs::FileExt::read_exact_at(file, &mut page, 0x13000).unwrap();
        assert_eq!(page, data[3 * 4096..4 * 4096]);
    }

    #[test]
    fn a_short_file_is_an_error_not_a_fault() {
        let (f, _data, mem) = setup(4096 + 10);
        let mut r = MappedFileReader::new(f.reopen().unwrap(), &mem).unwrap();
        assert!(mem
            .read_exact_volatile_from(GuestAddress(0), &mut r, 3 * 4096)
            .is_err());
        // The page that exists was mapped; nothing past the file end was.
        assert_eq!(r.mapped_bytes(), 4096);
    }

    #[test]
    fn memory_outside_the_guest_is_never_mapped() {
        let (f, data, mem) = setup(2 * 4096);
        let mut r = MappedFileReader::new(f.reopen().unwrap(), &mem).unwrap();
        let other = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 16)]).unwrap();
        other
            .read_exact_volatile_from(GuestAddress(0), &mut r, data.len())
            .unwrap();
        assert_eq!(r.mapped_bytes(), 0);
        let mut back = vec![0u8; data.len()];
        other.read_slice(&mut back, GuestAddress(0)).unwrap();
        assert_eq!(back, data);
    }
}

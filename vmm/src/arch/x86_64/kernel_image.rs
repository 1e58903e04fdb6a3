//! Which bytes of a vmlinux may stay mapped from the file
//! ([`MappedFileReader`](crate::vstate::mapped_file::MappedFileReader)):
//! those the guest keeps for its whole life and never hands to a device,
//! its text and read-only data. The kernel frees the rest of its image to
//! its page allocator at the end of boot (init sections, and the gaps
//! between text, rodata and data), and a freed page can become a buffer a
//! vhost-user daemon must see, so those pages are copied into guest memory.
//!
//! Ranges come from the ELF section headers: `.text`, and from `.rodata` to
//! the end of the loadable segment holding it (`__end_rodata` on x86_64).
//! A kernel without those sections is copied whole.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Most section headers read (a vmlinux has about 30).
const MAX_SECTIONS: usize = 256;
/// Largest section-name table read.
const MAX_NAMES: u64 = 64 << 10;

/// File ranges `[start, end)` of `kernel` (an ELF64 vmlinux) that may be
/// mapped; empty where the file is not laid out as expected.
pub fn mappable_ranges(kernel: &File) -> Vec<(u64, u64)> {
    parse(kernel).unwrap_or_default()
}

fn read_at(f: &File, off: u64, len: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, off).ok()?;
    Some(buf)
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(i..i + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], i: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?))
}

/// A section header's name offset, file offset and size.
struct Section {
    name: u32,
    offset: u64,
    size: u64,
}

fn parse(f: &File) -> Option<Vec<(u64, u64)>> {
    let eh = read_at(f, 0, 64)?;
    if eh.get(..4)? != b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        return None;
    }
    let (phoff, shoff) = (u64_at(&eh, 0x20)?, u64_at(&eh, 0x28)?);
    let (phentsize, phnum) = (
        usize::from(u16_at(&eh, 0x36)?),
        usize::from(u16_at(&eh, 0x38)?),
    );
    let (shentsize, shnum) = (
        usize::from(u16_at(&eh, 0x3a)?),
        usize::from(u16_at(&eh, 0x3c)?),
    );
    let shstrndx = usize::from(u16_at(&eh, 0x3e)?);
    if shentsize < 64 || phentsize < 56 || shnum > MAX_SECTIONS || phnum > MAX_SECTIONS {
        return None;
    }
    let sh = read_at(f, shoff, shentsize * shnum)?;
    let sections: Vec<Section> = (0..shnum)
        .map(|i| {
            let b = i * shentsize;
            Some(Section {
                name: u32_at(&sh, b)?,
                offset: u64_at(&sh, b + 24)?,
                size: u64_at(&sh, b + 32)?,
            })
        })
        .collect::<Option<_>>()?;
    let names = sections.get(shstrndx)?;
    let names = read_at(
        f,
        names.offset,
        usize::try_from(names.size.min(MAX_NAMES)).ok()?,
    )?;
    let find = |want: &str| {
        sections.iter().find(|s| {
            let n = names.get(s.name as usize..).unwrap_or_default();
            n.split(|&c| c == 0).next() == Some(want.as_bytes())
        })
    };
    let (text, rodata) = (find(".text")?, find(".rodata")?);
    // The file end of the PT_LOAD segment holding .rodata.
    let ph = read_at(f, phoff, phentsize * phnum)?;
    let rodata_end = (0..phnum).find_map(|i| {
        let b = i * phentsize;
        let (kind, off, filesz) = (u32_at(&ph, b)?, u64_at(&ph, b + 8)?, u64_at(&ph, b + 32)?);
        let end = off.checked_add(filesz)?;
        (kind == 1 && rodata.offset >= off && rodata.offset < end).then_some(end)
    })?;
    Some(vec![
        (text.offset, text.offset.checked_add(text.size)?),
        (rodata.offset, rodata_end),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_an_elf_maps_nothing() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, &[0u8; 4096]).unwrap();
        assert!(mappable_ranges(f.as_file()).is_empty());
    }

    /// An ELF with one loadable segment [0x1000, 0x5000) holding .text at
    /// 0x1000 (0x1800 bytes) and .rodata at 0x3000.
    fn synthetic() -> Vec<u8> {
        let mut f = vec![0u8; 0x6000];
        f[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let put16 =
            |f: &mut Vec<u8>, i: usize, v: u16| f[i..i + 2].copy_from_slice(&v.to_le_bytes());
        let put32 =
            |f: &mut Vec<u8>, i: usize, v: u32| f[i..i + 4].copy_from_slice(&v.to_le_bytes());
        let put64 =
            |f: &mut Vec<u8>, i: usize, v: u64| f[i..i + 8].copy_from_slice(&v.to_le_bytes());
        put64(&mut f, 0x20, 0x40); // phoff
        put64(&mut f, 0x28, 0x5000); // shoff
        put16(&mut f, 0x36, 56);
        put16(&mut f, 0x38, 1);
        put16(&mut f, 0x3a, 64);
        put16(&mut f, 0x3c, 4);
        put16(&mut f, 0x3e, 3);
        put32(&mut f, 0x40, 1); // PT_LOAD
        put64(&mut f, 0x48, 0x1000);
        put64(&mut f, 0x60, 0x4000);
        let names = b"\0.text\0.rodata\0.shstrtab\0";
        f[0x5400..0x5400 + names.len()].copy_from_slice(names);
        for (i, (name, off, size)) in [
            (1u32, 0x1000u64, 0x1800u64),
            (7, 0x3000, 0x800),
            (15, 0x5400, names.len() as u64),
        ]
        .into_iter()
        .enumerate()
        {
            let b = 0x5000 + (i + 1) * 64;
            put32(&mut f, b, name);
            put64(&mut f, b + 24, off);
            put64(&mut f, b + 32, size);
        }
        f
    }

    #[test]
    fn text_and_rodata_to_its_segment_end_are_mappable() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, &synthetic()).unwrap();
        assert_eq!(
            mappable_ranges(f.as_file()),
            vec![(0x1000, 0x2800), (0x3000, 0x5000)]
        );
        // A truncated header table is not a panic, only nothing mapped.
        f.as_file().set_len(0x5080).unwrap();
        assert!(mappable_ranges(f.as_file()).is_empty());
    }

    /// The guest kernel the build made, where there is one.
    #[test]
    fn a_vmlinux_maps_its_text_and_rodata() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../build/vmlinux");
        let Ok(f) = File::open(path) else {
            eprintln!("no {path}: skipped");
            return;
        };
        let r = mappable_ranges(&f);
        assert_eq!(r.len(), 2, "{r:x?}");
        assert!(
            r[0].0 < r[0].1 && r[0].1 <= r[1].0 && r[1].0 < r[1].1,
            "{r:x?}"
        );
    }
}

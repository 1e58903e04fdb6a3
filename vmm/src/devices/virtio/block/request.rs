//! Parsing and executing one virtio-blk request (virtio 1.x §5.2.6).
//!
//! A request chain is: a 16-byte header (type, reserved, sector; readable),
//! data buffers (readable for OUT, writable for IN / GET_ID), and a final
//! writable status byte. Anything malformed gets `VIRTIO_BLK_S_IOERR`, or is
//! dropped with a used length of 0 when there is no status byte to write.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::GuestMemoryMmap;

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Bytes copied per host I/O call.
const CHUNK: usize = 128 * 1024;

/// Largest segment the device offers the guest (`size_max`).
pub const SEGMENT_MAX: u32 = 32 << 10;
/// Most segments per request (`seg_max`): the queue size less the header
/// and status descriptors.
pub const SEGMENTS_MAX: u32 = 254;
/// Largest read or write a request may ask for: what `size_max` and
/// `seg_max` allow an honest driver. Larger requests fail, so one request
/// cannot hold the event loop in I/O over a whole disk.
pub const REQUEST_MAX: u64 = SEGMENT_MAX as u64 * SEGMENTS_MAX as u64;

/// The host file attached to a slot.
pub struct Backing {
    /// The open file.
    pub file: File,
    /// Its path (for the API).
    pub path: PathBuf,
    /// Size in 512-byte sectors.
    pub nsectors: u64,
    /// Whether guest writes are rejected.
    pub read_only: bool,
}

/// Request counters.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct BlockStats {
    /// IN requests completed.
    pub reads: u64,
    /// OUT requests completed.
    pub writes: u64,
    /// FLUSH requests completed.
    pub flushes: u64,
    /// Bytes read from the backing file.
    pub read_bytes: u64,
    /// Bytes written to the backing file.
    pub write_bytes: u64,
    /// Requests answered with IOERR/UNSUPP.
    pub errors: u64,
    /// Chains dropped because they had no status byte.
    pub dropped: u64,
}

/// Executes the request in `chain`; returns the number of bytes written to
/// the guest (the used length).
pub fn execute(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    backing: Option<&Backing>,
    id: &[u8],
    buf: &mut Vec<u8>,
    stats: &mut BlockStats,
) -> u32 {
    let reader = Reader::new(mem, chain.clone());
    let writer = Writer::new(mem, chain);
    let (mut reader, mut writer) = match (reader, writer) {
        (Ok(r), Ok(w)) if w.available_bytes() > 0 => (r, w),
        _ => {
            stats.dropped += 1;
            return 0;
        }
    };
    let Ok(mut status_writer) = writer.split_at(writer.available_bytes() - 1) else {
        stats.dropped += 1;
        return 0;
    };
    let (status, data_written) = match reader.read_obj::<[u8; 16]>() {
        Ok(hdr) => {
            let kind = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
            let mut s = [0u8; 8];
            s.copy_from_slice(&hdr[8..16]);
            let sector = u64::from_le_bytes(s);
            run(
                kind,
                sector,
                &mut reader,
                &mut writer,
                backing,
                id,
                buf,
                stats,
            )
        }
        Err(_) => (VIRTIO_BLK_S_IOERR, 0),
    };
    if status != VIRTIO_BLK_S_OK {
        stats.errors += 1;
    }
    if status_writer.write_all(&[status as u8]).is_err() {
        stats.dropped += 1;
        return 0;
    }
    data_written.saturating_add(1)
}

/// Checks that `len` bytes at `sector` are inside a disk of `nsectors`.
fn in_range(sector: u64, len: u64, nsectors: u64) -> bool {
    if !len.is_multiple_of(SECTOR_SIZE) || len > REQUEST_MAX {
        return false;
    }
    sector
        .checked_add(len / SECTOR_SIZE)
        .is_some_and(|end| end <= nsectors)
}

#[allow(clippy::too_many_arguments)]
fn run(
    kind: u32,
    sector: u64,
    reader: &mut Reader,
    writer: &mut Writer,
    backing: Option<&Backing>,
    id: &[u8],
    buf: &mut Vec<u8>,
    stats: &mut BlockStats,
) -> (u32, u32) {
    match kind {
        VIRTIO_BLK_T_GET_ID => {
            let n = writer.available_bytes().min(VIRTIO_BLK_ID_BYTES as usize);
            let mut idbuf = [0u8; VIRTIO_BLK_ID_BYTES as usize];
            let l = id.len().min(idbuf.len());
            idbuf[..l].copy_from_slice(&id[..l]);
            match writer.write_all(&idbuf[..n]) {
                Ok(()) => (VIRTIO_BLK_S_OK, n as u32),
                Err(_) => (VIRTIO_BLK_S_IOERR, 0),
            }
        }
        VIRTIO_BLK_T_IN => {
            let Some(b) = backing else {
                return (VIRTIO_BLK_S_IOERR, 0);
            };
            let len = writer.available_bytes() as u64;
            if !in_range(sector, len, b.nsectors) {
                return (VIRTIO_BLK_S_IOERR, 0);
            }
            let mut off = sector * SECTOR_SIZE;
            let mut left = len as usize;
            buf.resize(CHUNK, 0);
            while left > 0 {
                let n = left.min(CHUNK);
                if b.file.read_exact_at(&mut buf[..n], off).is_err()
                    || writer.write_all(&buf[..n]).is_err()
                {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                off += n as u64;
                left -= n;
            }
            stats.reads += 1;
            stats.read_bytes += len;
            (VIRTIO_BLK_S_OK, len as u32)
        }
        VIRTIO_BLK_T_OUT => {
            let Some(b) = backing else {
                return (VIRTIO_BLK_S_IOERR, 0);
            };
            if b.read_only {
                return (VIRTIO_BLK_S_IOERR, 0);
            }
            let len = reader.available_bytes() as u64;
            if !in_range(sector, len, b.nsectors) {
                return (VIRTIO_BLK_S_IOERR, 0);
            }
            let mut off = sector * SECTOR_SIZE;
            let mut left = len as usize;
            buf.resize(CHUNK, 0);
            while left > 0 {
                let n = left.min(CHUNK);
                if reader.read_exact(&mut buf[..n]).is_err()
                    || b.file.write_all_at(&buf[..n], off).is_err()
                {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                off += n as u64;
                left -= n;
            }
            stats.writes += 1;
            stats.write_bytes += len;
            (VIRTIO_BLK_S_OK, 0)
        }
        VIRTIO_BLK_T_FLUSH => {
            let Some(b) = backing else {
                return (VIRTIO_BLK_S_IOERR, 0);
            };
            if !b.read_only && b.file.sync_data().is_err() {
                return (VIRTIO_BLK_S_IOERR, 0);
            }
            stats.flushes += 1;
            (VIRTIO_BLK_S_OK, 0)
        }
        _ => (VIRTIO_BLK_S_UNSUPP, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::mem;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const HDR: u64 = 0x20_0000;
    const DATA: u64 = 0x30_0000;
    const STATUS: u64 = 0x40_0000;
    const W: u16 = VRING_DESC_F_WRITE as u16;

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    fn backing(ro: bool, sectors: u64) -> (Backing, tempfile::NamedTempFile) {
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut data = vec![0u8; (sectors * 512) as usize];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i / 512) as u8;
        }
        std::fs::write(f.path(), &data).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(f.path())
            .unwrap();
        (
            Backing {
                file,
                path: f.path().into(),
                nsectors: sectors,
                read_only: ro,
            },
            f,
        )
    }

    fn header(m: &GuestMemoryMmap, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        m.write_slice(&h, GuestAddress(HDR)).unwrap();
    }

    fn exec(
        m: &GuestMemoryMmap,
        descs: &[RawDescriptor],
        b: Option<&Backing>,
    ) -> (u32, u8, BlockStats) {
        let q = MockSplitQueue::new(m, 16);
        let chain = q.build_desc_chain(descs).unwrap();
        let mut st = BlockStats::default();
        m.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let used = execute(chain, m, b, b"moat-blk-0", &mut Vec::new(), &mut st);
        (used, m.read_obj(GuestAddress(STATUS)).unwrap(), st)
    }

    #[test]
    fn read_write_flush_getid() {
        let m = mem();
        let (b, _f) = backing(false, 8);
        header(&m, VIRTIO_BLK_T_IN, 3);
        let d = [desc(HDR, 16, 0), desc(DATA, 1024, W), desc(STATUS, 1, W)];
        let (used, status, st) = exec(&m, &d, Some(&b));
        assert_eq!((used, u32::from(status)), (1025, VIRTIO_BLK_S_OK));
        assert_eq!(st.read_bytes, 1024);
        let v: u8 = m.read_obj(GuestAddress(DATA + 600)).unwrap();
        assert_eq!(v, 4);

        header(&m, VIRTIO_BLK_T_OUT, 0);
        m.write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
        let d = [desc(HDR, 16, 0), desc(DATA, 512, 0), desc(STATUS, 1, W)];
        let (used, status, _) = exec(&m, &d, Some(&b));
        assert_eq!((used, u32::from(status)), (1, VIRTIO_BLK_S_OK));
        let mut one = [0u8; 1];
        b.file.read_exact_at(&mut one, 100).unwrap();
        assert_eq!(one[0], 0x5a);

        header(&m, VIRTIO_BLK_T_FLUSH, 0);
        let d = [desc(HDR, 16, 0), desc(STATUS, 1, W)];
        assert_eq!(u32::from(exec(&m, &d, Some(&b)).1), VIRTIO_BLK_S_OK);

        header(&m, VIRTIO_BLK_T_GET_ID, 0);
        let d = [desc(HDR, 16, 0), desc(DATA, 20, W), desc(STATUS, 1, W)];
        let (used, status, _) = exec(&m, &d, Some(&b));
        assert_eq!((used, u32::from(status)), (21, VIRTIO_BLK_S_OK));
        let mut id = [0u8; 10];
        m.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, b"moat-blk-0");
    }

    #[test]
    fn errors() {
        let m = mem();
        let (ro, _f) = backing(true, 8);
        // Write to a read-only attachment.
        header(&m, VIRTIO_BLK_T_OUT, 0);
        let d = [desc(HDR, 16, 0), desc(DATA, 512, 0), desc(STATUS, 1, W)];
        assert_eq!(u32::from(exec(&m, &d, Some(&ro)).1), VIRTIO_BLK_S_IOERR);
        // Out of range, and sector overflow.
        for sector in [7, u64::MAX - 1] {
            header(&m, VIRTIO_BLK_T_IN, sector);
            let d = [desc(HDR, 16, 0), desc(DATA, 1024, W), desc(STATUS, 1, W)];
            assert_eq!(u32::from(exec(&m, &d, Some(&ro)).1), VIRTIO_BLK_S_IOERR);
        }
        // Larger than a request may be (the disk holds it all).
        let (big, _g) = backing(true, 2 * REQUEST_MAX / 512);
        header(&m, VIRTIO_BLK_T_IN, 0);
        let too_big = u32::try_from(REQUEST_MAX + 512).unwrap();
        let d = [
            desc(HDR, 16, 0),
            desc(0x50_0000, too_big, W),
            desc(STATUS, 1, W),
        ];
        let (_, status, st) = exec(&m, &d, Some(&big));
        assert_eq!(u32::from(status), VIRTIO_BLK_S_IOERR);
        assert_eq!(st.read_bytes, 0);
        let d = [
            desc(HDR, 16, 0),
            desc(0x50_0000, too_big - 512, W),
            desc(STATUS, 1, W),
        ];
        assert_eq!(u32::from(exec(&m, &d, Some(&big)).1), VIRTIO_BLK_S_OK);
        // Unaligned length.
        header(&m, VIRTIO_BLK_T_IN, 0);
        let d = [desc(HDR, 16, 0), desc(DATA, 100, W), desc(STATUS, 1, W)];
        assert_eq!(u32::from(exec(&m, &d, Some(&ro)).1), VIRTIO_BLK_S_IOERR);
        // Empty slot.
        let d = [desc(HDR, 16, 0), desc(DATA, 512, W), desc(STATUS, 1, W)];
        assert_eq!(u32::from(exec(&m, &d, None).1), VIRTIO_BLK_S_IOERR);
        // Unknown type.
        header(&m, 77, 0);
        assert_eq!(u32::from(exec(&m, &d, Some(&ro)).1), VIRTIO_BLK_S_UNSUPP);
        // Short header.
        let d = [desc(HDR, 8, 0), desc(STATUS, 1, W)];
        assert_eq!(u32::from(exec(&m, &d, Some(&ro)).1), VIRTIO_BLK_S_IOERR);
    }

    #[test]
    fn malformed_chains_are_dropped() {
        let m = mem();
        let (b, _f) = backing(false, 8);
        header(&m, VIRTIO_BLK_T_IN, 0);
        // No writable descriptor: nowhere to put the status.
        let d = [desc(HDR, 16, 0), desc(DATA, 512, 0)];
        let (used, status, st) = exec(&m, &d, Some(&b));
        assert_eq!((used, status, st.dropped), (0, 0xff, 1));
        // Buffer outside guest memory.
        let d = [
            desc(HDR, 16, 0),
            desc(0xffff_0000_0000, 512, W),
            desc(STATUS, 1, W),
        ];
        assert_eq!(exec(&m, &d, Some(&b)).0, 0);
        // Oversized length running past the end of memory.
        let d = [
            desc(HDR, 16, 0),
            desc(DATA, u32::MAX, W),
            desc(STATUS, 1, W),
        ];
        assert_eq!(exec(&m, &d, Some(&b)).0, 0);
    }

    #[test]
    fn descriptor_loop_terminates() {
        let m = mem();
        let (b, _f) = backing(false, 8);
        header(&m, VIRTIO_BLK_T_IN, 0);
        let q = MockSplitQueue::new(&m, 16);
        // 0 -> 1 -> 0 -> ... a loop.
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(HDR, 16, VRING_DESC_F_NEXT as u16, 1)),
            RawDescriptor::from(SplitDescriptor::new(
                DATA,
                512,
                (VRING_DESC_F_NEXT as u16) | W,
                0,
            )),
        ];
        let chain = q.build_multiple_desc_chains(&descs).unwrap();
        let mut st = BlockStats::default();
        // Must return (the chain's TTL ends the loop), whatever the status.
        let _ = execute(chain, &m, Some(&b), b"", &mut Vec::new(), &mut st);
    }
}

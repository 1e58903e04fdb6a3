//! virtio-blk: guest requests (well-formed ones with any type, sector and
//! segments, and malformed chains) through the real transport and the real
//! block device, executed against a small temporary backing file.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use moat_fuzz::{Addr, Driver, GuestOp, Len};
use moat_vmm::devices::virtio::block::Block;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use vm_memory::{Bytes, GuestAddress};

/// Sectors of the backing file.
const SECTORS: u64 = 128;

/// The backing file, made once per process (its contents change as the
/// guest writes; only its size matters).
fn backing() -> &'static PathBuf {
    static FILE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &FILE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("disk.img");
            std::fs::write(&path, vec![0x5au8; (SECTORS * 512) as usize]).unwrap();
            (dir, path)
        })
        .1
}

#[derive(Arbitrary, Debug)]
enum Kind {
    In,
    Out,
    Flush,
    GetId,
    Other(u32),
}

#[derive(Arbitrary, Debug)]
enum Sector {
    /// Inside the disk, or just past its end.
    Near(u8),
    Raw(u64),
}

/// A data segment: address, length (sector multiples mostly) and whether
/// the device may write it.
#[derive(Arbitrary, Debug)]
struct Segment {
    addr: Addr,
    sectors: Option<u8>,
    len: Len,
    write: bool,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A request laid out as a driver would: header, segments, status.
    Request {
        kind: Kind,
        reserved: u32,
        sector: Sector,
        header_len: Option<u8>,
        segments: Vec<Segment>,
        status: Option<Len>,
    },
    Guest(GuestOp),
    /// The host detaches or re-attaches the drive between requests.
    Detach,
    Attach {
        read_only: bool,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    attached: bool,
    read_only: bool,
    ops: Vec<Op>,
}

const HDR: u64 = 0x70_0000;
const STATUS: u64 = 0x71_0000;

fn request(
    d: &mut Driver,
    kind: &Kind,
    reserved: u32,
    sector: &Sector,
    header_len: Option<u8>,
    segments: &[Segment],
    status: Option<Len>,
) {
    let kind = match kind {
        Kind::In => VIRTIO_BLK_T_IN,
        Kind::Out => VIRTIO_BLK_T_OUT,
        Kind::Flush => VIRTIO_BLK_T_FLUSH,
        Kind::GetId => VIRTIO_BLK_T_GET_ID,
        Kind::Other(k) => *k,
    };
    let sector = match sector {
        Sector::Near(s) => u64::from(*s) % (SECTORS + 8),
        Sector::Raw(s) => *s,
    };
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[4..8].copy_from_slice(&reserved.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    d.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
    let hlen = header_len.map_or(16, u32::from);
    let mut descs = vec![(HDR, hlen, 0u16)];
    for s in segments.iter().take(moat_fuzz::MAX_CHAIN) {
        let len = match s.sectors {
            Some(n) => u32::from(n % 17) * 512,
            None => s.len.get(),
        };
        let flags = if s.write { moat_fuzz::F_WRITE } else { 0 };
        descs.push((s.addr.get(), len, flags));
    }
    if let Some(l) = status {
        descs.push((STATUS, l.get(), moat_fuzz::F_WRITE));
    }
    d.vqs[0].push_chain(&descs);
    d.notify(0);
}

fn with_block(d: &mut Driver, f: impl FnOnce(&mut Block)) {
    d.t.with_device(|dev, _| {
        if let Some(b) = dev.as_any_mut().downcast_mut::<Block>() {
            f(b);
        }
    });
    d.t.config_changed();
}

fuzz_target!(|input: Input| {
    let path = backing();
    let mut d = Driver::new(|_| Box::new(Block::new(0, input.read_only)));
    if input.attached {
        with_block(&mut d, |b| b.attach(path, input.read_only).unwrap());
    }
    for op in &input.ops {
        match op {
            Op::Request {
                kind,
                reserved,
                sector,
                header_len,
                segments,
                status,
            } => request(
                &mut d,
                kind,
                *reserved,
                sector,
                *header_len,
                segments,
                *status,
            ),
            Op::Guest(g) => d.apply(g),
            Op::Detach => with_block(&mut d, |b| {
                let _ = b.detach();
            }),
            Op::Attach { read_only } => with_block(&mut d, |b| {
                let _ = b.attach(path, *read_only);
            }),
        }
    }
    d.finish();
});

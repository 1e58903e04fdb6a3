//! The virtio-blk device of one slot.

use std::any::Any;
use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom};
use std::path::Path;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_SIZE_MAX,
};
use virtio_queue::QueueT;
use vmm_sys_util::epoll::EventSet;

use super::request::{execute, Backing, BlockStats, SECTOR_SIZE, SEGMENTS_MAX, SEGMENT_MAX};
use crate::devices::virtio::{
    read_config_bytes, ActivateError, QueueCtx, VirtioDevice, TYPE_BLOCK,
};

/// Queue size of the single request queue.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];
// A request's segments and its header and status fit one queue.
const _: () = assert!(SEGMENTS_MAX + 2 <= QUEUE_SIZE as u32);

/// Errors attaching or detaching a drive.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The slot already has a drive.
    #[error("slot {0} already has a drive attached ({1})")]
    Busy(u32, String),
    /// The slot is empty.
    #[error("slot {0} is empty")]
    Empty(u32),
    /// The file could not be opened.
    #[error("opening {0}: {1}")]
    Open(String, std::io::Error),
}

/// One virtio-blk slot.
pub struct Block {
    slot: u32,
    id: Vec<u8>,
    backing: Option<Backing>,
    advertise_ro: bool,
    stats: BlockStats,
    buf: Vec<u8>,
}

impl Block {
    /// An empty slot. `advertise_ro` sets VIRTIO_BLK_F_RO (the guest reads
    /// it only at probe; read-only is enforced per attachment regardless).
    pub fn new(slot: u32, advertise_ro: bool) -> Self {
        Self {
            slot,
            id: format!("moat-blk-{slot}").into_bytes(),
            backing: None,
            advertise_ro,
            stats: BlockStats::default(),
            buf: Vec::new(),
        }
    }

    /// Attaches `path`; the caller raises the config-change interrupt.
    pub fn attach(&mut self, path: &Path, read_only: bool) -> Result<(), BlockError> {
        if let Some(b) = &self.backing {
            return Err(BlockError::Busy(self.slot, b.path.display().to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| BlockError::Open(path.display().to_string(), e))?;
        self.attach_file(file, path, read_only)
    }

    /// Attaches an open `file` (passed by moatd; `path` names it in logs and
    /// `state`); a writable drive needs a file open for writing.
    pub fn attach_file(
        &mut self,
        mut file: std::fs::File,
        path: &Path,
        read_only: bool,
    ) -> Result<(), BlockError> {
        if let Some(b) = &self.backing {
            return Err(BlockError::Busy(self.slot, b.path.display().to_string()));
        }
        let open_err = |e| BlockError::Open(path.display().to_string(), e);
        if !read_only {
            use std::os::fd::AsRawFd;
            // SAFETY: F_GETFL on a file this function owns.
            let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
            if flags < 0 || flags & libc::O_ACCMODE == libc::O_RDONLY {
                return Err(open_err(std::io::Error::other(
                    "the passed file is not open for writing",
                )));
            }
        }
        // Works for regular files and block devices alike.
        let size = file.seek(SeekFrom::End(0)).map_err(open_err)?;
        self.backing = Some(Backing {
            file,
            path: path.to_path_buf(),
            nsectors: size / SECTOR_SIZE,
            read_only,
        });
        tracing::info!(slot = self.slot, path = %path.display(), read_only, "drive attached");
        Ok(())
    }

    /// Detaches the drive; the caller raises the config-change interrupt.
    pub fn detach(&mut self) -> Result<(), BlockError> {
        match self.backing.take() {
            Some(b) => {
                tracing::info!(slot = self.slot, path = %b.path.display(), "drive detached");
                Ok(())
            }
            None => Err(BlockError::Empty(self.slot)),
        }
    }

    /// The slot index.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// `(path, read_only, sectors)` of the attached drive.
    pub fn attached(&self) -> Option<(&Path, bool, u64)> {
        self.backing
            .as_ref()
            .map(|b| (b.path.as_path(), b.read_only, b.nsectors))
    }

    fn config(&self) -> [u8; 24] {
        let mut c = [0u8; 24];
        let cap = self.backing.as_ref().map_or(0, |b| b.nsectors);
        c[0..8].copy_from_slice(&cap.to_le_bytes());
        // size_max and seg_max: together they bound a request.
        c[8..12].copy_from_slice(&SEGMENT_MAX.to_le_bytes());
        c[12..16].copy_from_slice(&SEGMENTS_MAX.to_le_bytes());
        c[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        c
    }

    fn process(&mut self, ctx: &mut QueueCtx) {
        let Some(queue) = ctx.queues.get_mut(0) else {
            return;
        };
        let mut used_any = false;
        while let Some(chain) = queue.pop_descriptor_chain(ctx.mem) {
            let head = chain.head_index();
            let len = execute(
                chain,
                ctx.mem,
                self.backing.as_ref(),
                &self.id,
                &mut self.buf,
                &mut self.stats,
            );
            if let Err(e) = queue.add_used(ctx.mem, head, len) {
                tracing::warn!(slot = self.slot, "virtio-blk add_used: {e}");
                break;
            }
            used_any = true;
        }
        if used_any {
            ctx.irq.signal_used();
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_SIZE_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE);
        if self.advertise_ro {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    fn activate(&mut self, _acked: u64, _ctx: &mut QueueCtx) -> Result<(), ActivateError> {
        Ok(())
    }

    fn reset(&mut self) {}

    fn queue_event(&mut self, _queue: usize, ctx: &mut QueueCtx) {
        self.process(ctx);
    }

    fn backend_event(&mut self, _sub: u32, _events: EventSet, _ctx: Option<&mut QueueCtx>) {}

    fn counters(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.stats).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("slot".into(), self.slot.into());
        }
        v
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::mmio::{tests::bring_up, MmioTransport};
    use crate::devices::virtio::test_utils::mem;
    use crate::event_loop::EventHandler;
    use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN};
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use vm_memory::{Bytes, GuestAddress};

    fn cap(t: &mut MmioTransport) -> u64 {
        let mut b = [0u8; 8];
        crate::devices::bus::BusDevice::read(t, 0x100, &mut b);
        u64::from_le_bytes(b)
    }

    /// A passed file backs the slot as it is; a writable drive needs it
    /// open for writing.
    #[test]
    fn passed_files_are_attached_as_given() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), vec![7u8; 4096]).unwrap();
        let mut b = Block::new(0, false);
        let ro = std::fs::File::open(f.path()).unwrap();
        let e = b.attach_file(ro, f.path(), false).unwrap_err();
        assert!(e.to_string().contains("not open for writing"), "{e}");
        let ro = std::fs::File::open(f.path()).unwrap();
        b.attach_file(ro, f.path(), true).unwrap();
        assert_eq!(b.backing.as_ref().map(|b| b.nsectors), Some(8));
        let rw = OpenOptions::new()
            .read(true)
            .write(true)
            .open(f.path())
            .unwrap();
        let mut other = Block::new(1, false);
        other.attach_file(rw, f.path(), false).unwrap();
    }

    #[test]
    fn attach_detach_changes_capacity_and_interrupts() {
        let m = mem();
        let mut t = MmioTransport::new(Box::new(Block::new(0, false)), m.clone()).unwrap();
        let mut q = bring_up(&mut t, &m, 1).remove(0);
        assert!(t.is_activated());
        assert_eq!(cap(&mut t), 0);
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), vec![7u8; 4096]).unwrap();
        t.with_device(|d, _| {
            let b = d.as_any_mut().downcast_mut::<Block>().unwrap();
            b.attach(f.path(), true).unwrap();
            assert!(b.attach(f.path(), true).is_err());
        });
        t.config_changed();
        assert_eq!(cap(&mut t), 8);
        assert_eq!(t.irq().status() & 2, 2);

        // A read through the real queue path.
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
        m.write_slice(&h, GuestAddress(0x80_0000)).unwrap();
        let w = VRING_DESC_F_WRITE as u16;
        q.push_chain(&[(0x80_0000, 16, 0), (0x81_0000, 512, w), (0x82_0000, 1, w)]);
        t.handle_event(0, EventSet::IN);
        assert_eq!(q.last_used(), (1, (0, 513)));
        let s: u8 = m.read_obj(GuestAddress(0x82_0000)).unwrap();
        assert_eq!(u32::from(s), VIRTIO_BLK_S_OK);
        let d: u8 = m.read_obj(GuestAddress(0x81_0000)).unwrap();
        assert_eq!(d, 7);

        t.with_device(|d, _| {
            let b = d.as_any_mut().downcast_mut::<Block>().unwrap();
            b.detach().unwrap();
            assert!(b.detach().is_err());
        });
        t.config_changed();
        assert_eq!(cap(&mut t), 0);
        let c = t.device().counters();
        assert_eq!(c["reads"], 1);
    }

    #[test]
    fn features() {
        assert_eq!(
            Block::new(0, true).avail_features() & (1 << VIRTIO_BLK_F_RO),
            1 << VIRTIO_BLK_F_RO
        );
        assert_eq!(
            Block::new(0, false).avail_features() & (1 << VIRTIO_BLK_F_RO),
            0
        );
        let mut b = Block::new(1, false);
        assert!(b.attach(Path::new("/nonexistent/x.img"), true).is_err());
    }
}

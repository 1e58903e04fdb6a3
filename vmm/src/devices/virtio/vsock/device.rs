//! The virtio-vsock device: rx/tx/event queues in front of the [`Muxer`].

use std::any::Any;
use std::io::{Read, Write};
use std::path::Path;

use virtio_queue::{Queue, QueueOwnedT, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

use super::backend::VsockBackend;
use super::muxer::Muxer;
use super::packet::{Header, HDR_SIZE, MAX_PKT_PAYLOAD};
use super::unix::{UnixBackend, UnixBackendError};
use crate::devices::virtio::{
    read_config_bytes, ActivateError, QueueCtx, VirtioDevice, TYPE_VSOCK,
};
use crate::event_loop::EpollRegistrar;

const RXQ: usize = 0;
const TXQ: usize = 1;
const QUEUE_SIZES: [u16; 3] = [256, 256, 16];

/// The vsock device, over the hybrid Unix-socket backend unless told otherwise.
pub struct Vsock<B: VsockBackend = UnixBackend> {
    cid: u64,
    muxer: Muxer<B>,
    buf: Vec<u8>,
}

impl Vsock<UnixBackend> {
    /// A device for guest `cid` serving host clients on `uds`.
    pub fn new(cid: u64, uds: &Path, reg: EpollRegistrar) -> Result<Self, UnixBackendError> {
        Self::with_backend(cid, UnixBackend::bind(uds)?, reg)
    }
}

impl<B: VsockBackend> Vsock<B> {
    /// A device for guest `cid` whose host side is `backend`.
    pub fn with_backend(
        cid: u64,
        backend: B,
        reg: EpollRegistrar,
    ) -> Result<Self, UnixBackendError> {
        Ok(Self {
            cid,
            muxer: Muxer::new(cid, backend, reg)?,
            buf: Vec::new(),
        })
    }

    /// The connection multiplexer (tests).
    #[cfg(test)]
    pub(crate) fn muxer_mut(&mut self) -> &mut Muxer<B> {
        &mut self.muxer
    }

    fn process_tx(&mut self, ctx: &mut QueueCtx) -> bool {
        let Some(q) = ctx.queues.get_mut(TXQ) else {
            return false;
        };
        let mut used = false;
        // A guest that posts no RX buffers gets its packets taken again
        // once it drains the backlog (its RX notification).
        while !self.muxer.tx_backed_up() {
            let Some(chain) = q.pop_descriptor_chain(ctx.mem) else {
                break;
            };
            let head = chain.head_index();
            match read_packet(ctx.mem, chain, &mut self.buf) {
                Some(h) => self.muxer.handle_tx(&h, &self.buf),
                None => tracing::debug!("vsock: dropping malformed tx packet"),
            }
            if q.add_used(ctx.mem, head, 0).is_err() {
                break;
            }
            used = true;
        }
        used
    }

    fn process_rx(&mut self, ctx: &mut QueueCtx) -> bool {
        let Some(q) = ctx.queues.get_mut(RXQ) else {
            return false;
        };
        let mut used = false;
        while self.muxer.has_rx() {
            let Some(chain) = q.pop_descriptor_chain(ctx.mem) else {
                break;
            };
            let head = chain.head_index();
            let mut w = match Writer::new(ctx.mem, chain) {
                Ok(w) if w.available_bytes() >= HDR_SIZE => w,
                _ => {
                    // Unusable buffer: return it empty.
                    if q.add_used(ctx.mem, head, 0).is_err() {
                        break;
                    }
                    used = true;
                    continue;
                }
            };
            let max = w.available_bytes() - HDR_SIZE;
            if !self.muxer.next_rx(max, &mut self.buf) {
                undo_pop(q);
                break;
            }
            let len = match w.write_all(&self.buf) {
                Ok(()) => self.buf.len() as u32,
                Err(_) => 0,
            };
            if q.add_used(ctx.mem, head, len).is_err() {
                break;
            }
            used = true;
        }
        self.muxer.after_rx();
        used
    }

    fn process(&mut self, ctx: &mut QueueCtx, tx: bool) {
        let mut used = false;
        if tx {
            used |= self.process_tx(ctx);
        }
        used |= self.process_rx(ctx);
        // Guest packets left waiting while the backlog was full.
        while !self.muxer.tx_backed_up() && has_avail(ctx, TXQ) {
            let took = self.process_tx(ctx);
            used |= took;
            used |= self.process_rx(ctx);
            if !took {
                break;
            }
        }
        if used {
            ctx.irq.signal_used();
        }
    }
}

/// Whether the guest has made buffers of queue `i` available.
fn has_avail(ctx: &QueueCtx, i: usize) -> bool {
    ctx.queues.get(i).is_some_and(|q| {
        q.avail_idx(ctx.mem, std::sync::atomic::Ordering::Acquire)
            .is_ok_and(|a| a.0 != q.next_avail())
    })
}

fn undo_pop(q: &mut Queue) {
    q.go_to_previous_position();
}

/// Reads header and payload of a tx chain; `None` if malformed.
fn read_packet(
    mem: &GuestMemoryMmap,
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    buf: &mut Vec<u8>,
) -> Option<Header> {
    let mut r = Reader::new(mem, chain).ok()?;
    let mut raw = [0u8; HDR_SIZE];
    r.read_exact(&mut raw).ok()?;
    let h = Header::decode(&raw);
    if h.len > MAX_PKT_PAYLOAD || h.len as usize > r.available_bytes() {
        return None;
    }
    buf.clear();
    buf.resize(h.len as usize, 0);
    r.read_exact(buf).ok()?;
    Some(h)
}

impl<B: VsockBackend> VirtioDevice for Vsock<B> {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, _acked: u64, ctx: &mut QueueCtx) -> Result<(), ActivateError> {
        if ctx.queues.len() != QUEUE_SIZES.len() {
            return Err(ActivateError("vsock needs 3 queues".into()));
        }
        self.process(ctx, false);
        Ok(())
    }

    fn reset(&mut self) {
        self.muxer.reset();
    }

    fn queue_event(&mut self, queue: usize, ctx: &mut QueueCtx) {
        self.process(ctx, queue == TXQ);
    }

    fn backend_event(&mut self, sub: u32, events: EventSet, ctx: Option<&mut QueueCtx>) {
        self.muxer.handle_event(sub, events);
        if let Some(ctx) = ctx {
            self.process(ctx, false);
        }
    }

    fn counters(&self) -> serde_json::Value {
        serde_json::to_value(self.muxer.stats()).unwrap_or_default()
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
mod tests;

//! The virtio-net device: rx/tx queues moving frames to and from a TAP.

use std::any::Any;
use std::io::{ErrorKind, Read, Write};

use virtio_queue::{QueueT, Reader, Writer};
use vmm_sys_util::epoll::EventSet;

use super::tap::{FrameIo, VNET_HDR_LEN};
use crate::devices::virtio::{read_config_bytes, ActivateError, QueueCtx, VirtioDevice, TYPE_NET};
use crate::event_loop::EpollRegistrar;

const RXQ: usize = 0;
const TXQ: usize = 1;
const QUEUE_SIZES: [u16; 2] = [256, 256];
/// Sub-token of the TAP fd.
pub const TAP_SUB: u32 = 8;
/// VIRTIO_NET_F_MAC.
const F_MAC: u64 = 1 << 5;
/// Largest frame plus header (64 KiB payload without offloads is plenty).
const MAX_FRAME: usize = 65562;

/// Frame counters.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct NetStats {
    /// Frames to the guest.
    pub rx_frames: u64,
    /// Bytes to the guest.
    pub rx_bytes: u64,
    /// Frames from the guest.
    pub tx_frames: u64,
    /// Bytes from the guest.
    pub tx_bytes: u64,
    /// Frames dropped (too big, bad descriptors, TAP errors).
    pub dropped: u64,
    /// Frames from the guest dropped for a source MAC not the NIC's own.
    pub spoofed: u64,
}

/// Bytes of an Ethernet header (destination, source, type).
const ETH_HDR_LEN: usize = 14;

/// Readies a guest frame for the TAP: its virtio-net header zeroed (no
/// offloads are offered, so its GSO and checksum fields mean nothing a
/// guest may ask of the host), and whether its source MAC is `mac`.
fn check_tx_frame(frame: &mut [u8], mac: &[u8; 6]) -> bool {
    if frame.len() < VNET_HDR_LEN + ETH_HDR_LEN {
        return false;
    }
    frame[..VNET_HDR_LEN].fill(0);
    frame[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12] == mac[..]
}

/// The virtio-net device.
pub struct Net {
    mac: [u8; 6],
    tap: Box<dyn FrameIo>,
    reg: EpollRegistrar,
    frame: Vec<u8>,
    pending: Option<usize>,
    tap_in: bool,
    stats: NetStats,
}

impl Net {
    /// A NIC with `mac` on `tap`; the TAP is registered (initially idle).
    pub fn new(mac: [u8; 6], tap: Box<dyn FrameIo>, reg: EpollRegistrar) -> std::io::Result<Self> {
        reg.add(tap.raw_fd(), TAP_SUB, EventSet::empty())?;
        Ok(Self {
            mac,
            tap,
            reg,
            frame: vec![0; MAX_FRAME],
            pending: None,
            tap_in: false,
            stats: NetStats::default(),
        })
    }

    fn set_tap_in(&mut self, on: bool) {
        if self.tap_in != on {
            let ev = if on { EventSet::IN } else { EventSet::empty() };
            match self.reg.modify(self.tap.raw_fd(), TAP_SUB, ev) {
                Ok(()) => self.tap_in = on,
                Err(e) => tracing::warn!("virtio-net epoll: {e}"),
            }
        }
    }

    fn process_rx(&mut self, ctx: &mut QueueCtx) -> bool {
        let Some(q) = ctx.queues.get_mut(RXQ) else {
            return false;
        };
        let mut used = false;
        loop {
            let len = match self.pending {
                Some(n) => n,
                None => match self.tap.read_frame(&mut self.frame) {
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        self.set_tap_in(true);
                        break;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::debug!("tap read: {e}");
                        self.stats.dropped += 1;
                        self.set_tap_in(true);
                        break;
                    }
                },
            };
            self.pending = Some(len);
            let Some(chain) = q.pop_descriptor_chain(ctx.mem) else {
                // No guest buffers: stop polling the TAP until the guest adds some.
                self.set_tap_in(false);
                break;
            };
            let head = chain.head_index();
            self.pending = None;
            let mut written = 0;
            if len >= VNET_HDR_LEN {
                // num_buffers = 1 (the field exists with VERSION_1).
                self.frame[10] = 1;
                self.frame[11] = 0;
            }
            let ok = match Writer::new(ctx.mem, chain) {
                Ok(mut w) => w.available_bytes() >= len && w.write_all(&self.frame[..len]).is_ok(),
                Err(_) => false,
            };
            if ok {
                written = len as u32;
                self.stats.rx_frames += 1;
                self.stats.rx_bytes += len as u64;
            } else {
                self.stats.dropped += 1;
            }
            if q.add_used(ctx.mem, head, written).is_err() {
                break;
            }
            used = true;
        }
        used
    }

    fn process_tx(&mut self, ctx: &mut QueueCtx) -> bool {
        let Some(q) = ctx.queues.get_mut(TXQ) else {
            return false;
        };
        let mut used = false;
        let mut buf = [0u8; 4096];
        let mut frame: Vec<u8> = Vec::new();
        while let Some(chain) = q.pop_descriptor_chain(ctx.mem) {
            let head = chain.head_index();
            frame.clear();
            let ok = match Reader::new(ctx.mem, chain) {
                Ok(mut r)
                    if r.available_bytes() <= MAX_FRAME && r.available_bytes() >= VNET_HDR_LEN =>
                {
                    loop {
                        match r.read(&mut buf) {
                            Ok(0) => break true,
                            Ok(n) => frame.extend_from_slice(&buf[..n]),
                            Err(_) => break false,
                        }
                    }
                }
                _ => false,
            };
            let spoofed = ok && !check_tx_frame(&mut frame, &self.mac);
            if spoofed {
                self.stats.spoofed += 1;
                self.stats.dropped += 1;
            } else if ok {
                match self.tap.write_frame(&frame) {
                    Ok(_) => {
                        self.stats.tx_frames += 1;
                        self.stats.tx_bytes += frame.len() as u64;
                    }
                    Err(e) => {
                        tracing::debug!("tap write: {e}");
                        self.stats.dropped += 1;
                    }
                }
            } else {
                self.stats.dropped += 1;
            }
            if q.add_used(ctx.mem, head, 0).is_err() {
                break;
            }
            used = true;
        }
        used
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        F_MAC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.mac, offset, data);
    }

    fn activate(&mut self, _acked: u64, ctx: &mut QueueCtx) -> Result<(), ActivateError> {
        if self.process_rx(ctx) {
            ctx.irq.signal_used();
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.set_tap_in(false);
        self.pending = None;
    }

    fn queue_event(&mut self, queue: usize, ctx: &mut QueueCtx) {
        let used = if queue == TXQ {
            self.process_tx(ctx)
        } else {
            self.process_rx(ctx)
        };
        if used {
            ctx.irq.signal_used();
        }
    }

    fn backend_event(&mut self, _sub: u32, _events: EventSet, ctx: Option<&mut QueueCtx>) {
        match ctx {
            Some(ctx) => {
                if self.process_rx(ctx) {
                    ctx.irq.signal_used();
                }
            }
            None => self.set_tap_in(false),
        }
    }

    fn counters(&self) -> serde_json::Value {
        serde_json::to_value(&self.stats).unwrap_or_default()
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
    use crate::event_loop::{EventHandler, EventLoop};
    use std::os::unix::net::UnixDatagram;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn frames_both_ways_and_bad_buffers() {
        let m = mem();
        let el = EventLoop::new().unwrap();
        let (host, dev_end) = UnixDatagram::pair().unwrap();
        dev_end.set_nonblocking(true).unwrap();
        let reg = EpollRegistrar::new(el.epoll(), 0);
        let net = Net::new([2, 0, 0, 0, 0, 1], Box::new(dev_end), reg).unwrap();
        let mut t = MmioTransport::new(Box::new(net), m.clone()).unwrap();
        let mut mac = [0u8; 6];
        t.device().read_config(0, &mut mac);
        assert_eq!(mac, [2, 0, 0, 0, 0, 1]);
        let mut vqs = bring_up(&mut t, &m, 1);
        let [rxq, txq] = &mut vqs[..] else {
            panic!("net has two queues");
        };
        let w = VRING_DESC_F_WRITE as u16;

        // Host -> guest.
        let mut frame = vec![0u8; VNET_HDR_LEN];
        frame.extend_from_slice(b"ethernet frame");
        host.send(&frame).unwrap();
        rxq.push_chain(&[(0x80_0000, 2048, w)]);
        t.handle_event(0, EventSet::IN);
        assert_eq!(rxq.last_used(), (1, (0, frame.len() as u32)));
        let mut got = vec![0u8; 14];
        m.read_slice(&mut got, GuestAddress(0x80_0000 + VNET_HDR_LEN as u64))
            .unwrap();
        assert_eq!(&got, b"ethernet frame");

        // A frame larger than the guest buffer is dropped, not truncated.
        host.send(&vec![0u8; 3000]).unwrap();
        rxq.push_chain(&[(0x80_0000, 2048, w)]);
        t.handle_event(TAP_SUB, EventSet::IN);
        assert_eq!(rxq.last_used(), (2, (1, 0)));

        // Guest -> host: the virtio-net header the guest filled in (GSO,
        // checksum offsets) reaches the TAP zeroed.
        let own = |src: [u8; 6]| {
            let mut f = vec![0xffu8; VNET_HDR_LEN];
            f.extend_from_slice(&[0xff; 6]);
            f.extend_from_slice(&src);
            f.extend_from_slice(&[0x08, 0x00]);
            f.extend_from_slice(b"from guest");
            f
        };
        let out = own([2, 0, 0, 0, 0, 1]);
        m.write_slice(&out, GuestAddress(0x90_0000)).unwrap();
        txq.push_chain(&[(0x90_0000, out.len() as u32, 0)]);
        t.handle_event(1, EventSet::IN);
        let mut b = [0u8; 64];
        let n = host.recv(&mut b).unwrap();
        assert_eq!(&b[..VNET_HDR_LEN], &[0u8; VNET_HDR_LEN][..]);
        assert_eq!(&b[VNET_HDR_LEN..n], &out[VNET_HDR_LEN..]);
        // A frame with another source MAC is dropped.
        let spoofed = own([2, 0, 0, 0, 0, 9]);
        m.write_slice(&spoofed, GuestAddress(0x90_0000)).unwrap();
        txq.push_chain(&[(0x90_0000, spoofed.len() as u32, 0)]);
        // Malformed tx: out of memory range, and shorter than the header.
        txq.push_chain(&[(0xffff_0000_0000, 100, 0)]);
        txq.push_chain(&[(0x90_0000, 4, 0)]);
        t.handle_event(1, EventSet::IN);
        assert_eq!(txq.used_idx(), 4);
        host.set_nonblocking(true).unwrap();
        assert!(
            host.recv(&mut b).is_err(),
            "a dropped frame reached the TAP"
        );
        assert_eq!(t.device().counters()["dropped"], 4);
        assert_eq!(t.device().counters()["spoofed"], 1);
    }
}

//! The virtio-fs device and its vhost-user frontend.

use std::any::Any;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio::{
    read_config_bytes, ActivateError, QueueCtx, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::event_loop::EpollRegistrar;
use crate::exit::{ExitCode, ExitRequest};

/// virtio device ID of a file system device.
pub const TYPE_FS: u32 = 26;
/// Bytes of the mount tag in the configuration space.
pub const TAG_LEN: usize = 36;
/// The high-priority queue (FORGET, INTERRUPT) and one request queue.
const NUM_QUEUES: usize = 2;
/// Ring size of each queue.
const QUEUE_SIZE: u16 = 1024;
/// Event-loop sub-token of queue `q`'s call eventfd: `CALL_SUB + q` (below
/// it are the transport's queue notifications).
const CALL_SUB: u32 = 16;
/// Sub-token of the daemon's socket (its hang-up).
const SOCKET_SUB: u32 = 32;
/// VIRTIO_RING_F_INDIRECT_DESC.
const RING_INDIRECT_DESC: u64 = 1 << 28;
/// VIRTIO_RING_F_EVENT_IDX.
const RING_EVENT_IDX: u64 = 1 << 29;
/// The features the device may offer, of those the daemon offers: the ring
/// layouts the guest and daemon agree on between them (no IOMMU, no packed
/// ring, nothing the VMM would have to take part in).
const OFFERABLE: u64 = VIRTIO_F_VERSION_1 | RING_INDIRECT_DESC | RING_EVENT_IDX;

/// Errors setting up the device.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag is empty or longer than the configuration space holds.
    #[error("virtio-fs tag {0:?}: must be 1 to 36 bytes")]
    Tag(String),
    /// The daemon could not be reached or refused the handshake.
    #[error("vhost-user-fs daemon at {path}: {err}")]
    Daemon {
        /// Its socket.
        path: String,
        /// The vhost-user error.
        err: vhost::Error,
    },
    /// An eventfd or epoll registration failed.
    #[error("virtio-fs: {0}")]
    Io(#[from] std::io::Error),
}

/// Counters for the control API.
#[derive(Debug, Default, serde::Serialize)]
struct FsStats {
    /// Interrupts raised for the daemon's calls.
    calls: u64,
    /// Times the driver activated the device.
    activations: u64,
    /// Activations the daemon refused.
    activation_errors: u64,
    /// The daemon's socket hung up.
    daemon_gone: bool,
}

/// A virtio-fs device backed by a vhost-user-fs daemon.
pub struct Fs {
    config: [u8; TAG_LEN + 4],
    frontend: Frontend,
    path: String,
    /// The daemon's virtio features, less VHOST_USER_F_PROTOCOL_FEATURES.
    daemon_features: u64,
    /// Whether protocol features were negotiated (rings then start
    /// disabled and are enabled explicitly).
    protocol: bool,
    calls: Vec<EventFd>,
    started: Vec<usize>,
    reg: EpollRegistrar,
    stats: FsStats,
    /// Where the daemon's going is reported, when it ends the VM.
    exit: Option<Arc<ExitRequest>>,
}

impl Fs {
    /// Connects to the daemon at `socket` and registers the call eventfds
    /// with `reg`; the guest mounts the device by `tag`.
    pub fn new(tag: &str, socket: &Path, reg: EpollRegistrar) -> Result<Self, FsError> {
        let stream = UnixStream::connect(socket).map_err(|e| FsError::Daemon {
            path: socket.display().to_string(),
            err: vhost::Error::VhostUserProtocol(vhost::vhost_user::Error::SocketConnect(e)),
        })?;
        Self::from_stream(tag, socket, stream, reg)
    }

    /// As [`Fs::new`], over a stream already connected to the daemon
    /// (`socket` only names it in messages).
    pub fn from_stream(
        tag: &str,
        socket: &Path,
        stream: UnixStream,
        reg: EpollRegistrar,
    ) -> Result<Self, FsError> {
        if tag.is_empty() || tag.len() > TAG_LEN {
            return Err(FsError::Tag(tag.into()));
        }
        let mut config = [0u8; TAG_LEN + 4];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[TAG_LEN..].copy_from_slice(&((NUM_QUEUES - 1) as u32).to_le_bytes());
        let path = socket.display().to_string();
        let daemon = |err| FsError::Daemon {
            path: path.clone(),
            err,
        };
        let mut frontend = Frontend::from_stream(stream, NUM_QUEUES as u64);
        frontend.set_owner().map_err(daemon)?;
        let features = frontend.get_features().map_err(daemon)?;
        let pf_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let protocol = features & pf_bit != 0;
        if protocol {
            let theirs = frontend.get_protocol_features().map_err(daemon)?;
            let ours = VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK;
            frontend
                .set_protocol_features(theirs & ours)
                .map_err(daemon)?;
        }
        let calls = (0..NUM_QUEUES)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<std::io::Result<Vec<_>>>()?;
        for (q, c) in calls.iter().enumerate() {
            reg.add(c.as_raw_fd(), CALL_SUB + q as u32, EventSet::IN)?;
        }
        reg.add(frontend.as_raw_fd(), SOCKET_SUB, EventSet::HANG_UP)?;
        Ok(Self {
            config,
            frontend,
            path,
            daemon_features: features & !pf_bit,
            protocol,
            calls,
            started: Vec::new(),
            reg,
            stats: FsStats::default(),
            exit: None,
        })
    }

    /// Ends the VM through `exit` when the daemon goes away, as Kata ends
    /// a sandbox whose virtiofsd died: the guest's requests in flight, and
    /// every later one, would wait for ever (a new daemon could not take
    /// over the open files and inodes the guest holds).
    pub fn ending_vm_through(mut self, exit: Arc<ExitRequest>) -> Self {
        self.exit = Some(exit);
        self
    }

    /// Hands the daemon the memory table and each ready queue.
    fn start(&mut self, acked: u64, ctx: &mut QueueCtx) -> Result<(), vhost::Error> {
        let pf = match self.protocol {
            true => VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(),
            false => 0,
        };
        self.frontend.set_features(acked | pf)?;
        let regions = ctx
            .mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()?;
        self.frontend.set_mem_table(&regions)?;
        let hva = |a: GuestAddress| -> Result<u64, vhost::Error> {
            ctx.mem
                .get_host_address(a)
                .map(|p| p as u64)
                .map_err(|_| vhost::Error::InvalidGuestMemory)
        };
        for (i, q) in ctx.queues.iter().enumerate() {
            if !q.ready() {
                continue;
            }
            self.frontend.set_vring_num(i, q.size())?;
            let addrs = VringConfigData {
                queue_max_size: q.max_size(),
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: hva(GuestAddress(q.desc_table()))?,
                used_ring_addr: hva(GuestAddress(q.used_ring()))?,
                avail_ring_addr: hva(GuestAddress(q.avail_ring()))?,
                log_addr: None,
            };
            self.frontend.set_vring_addr(i, &addrs)?;
            self.frontend.set_vring_base(i, 0)?;
            let (Some(call), Some(kick)) = (self.calls.get(i), ctx.queue_evts.get(i)) else {
                return Err(vhost::Error::InvalidQueue);
            };
            self.frontend.set_vring_call(i, call)?;
            self.frontend.set_vring_kick(i, kick)?;
            if self.protocol {
                self.frontend.set_vring_enable(i, true)?;
            }
            self.started.push(i);
        }
        Ok(())
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn avail_features(&self) -> u64 {
        self.daemon_features & OFFERABLE
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn queue_events_to_backend(&self) -> bool {
        true
    }

    fn activate(&mut self, acked_features: u64, ctx: &mut QueueCtx) -> Result<(), ActivateError> {
        self.stats.activations += 1;
        self.start(acked_features, ctx).map_err(|e| {
            self.stats.activation_errors += 1;
            ActivateError(format!("vhost-user-fs daemon at {}: {e}", self.path))
        })
    }

    fn reset(&mut self) {
        // GET_VRING_BASE stops a ring in the daemon.
        for i in std::mem::take(&mut self.started) {
            if let Err(e) = self.frontend.get_vring_base(i) {
                tracing::warn!("virtio-fs reset: stopping queue {i}: {e}");
            }
        }
    }

    fn queue_event(&mut self, _queue: usize, _ctx: &mut QueueCtx) {
        // Kicks go to the daemon; the VMM never watches them.
    }

    fn backend_event(&mut self, sub: u32, _events: EventSet, ctx: Option<&mut QueueCtx>) {
        if sub == SOCKET_SUB {
            if !self.stats.daemon_gone {
                tracing::warn!("vhost-user-fs daemon at {} hung up", self.path);
            }
            self.stats.daemon_gone = true;
            let _ = self.reg.remove(self.frontend.as_raw_fd());
            if let Some(exit) = &self.exit {
                exit.request(
                    ExitCode::BackendGone,
                    format!("the virtio-fs daemon at {} went away", self.path),
                );
            }
            return;
        }
        let Some(call) = sub
            .checked_sub(CALL_SUB)
            .and_then(|q| self.calls.get(q as usize))
        else {
            return;
        };
        // Drained even while inactive, so a stale count cannot spin epoll.
        if call.read().is_ok() {
            if let Some(ctx) = ctx {
                self.stats.calls += 1;
                ctx.irq.signal_used();
            }
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
    use crate::devices::virtio::mmio::MmioTransport;
    use crate::devices::virtio::test_utils::bring_up;
    use crate::devices::virtio::INT_VRING;
    use crate::event_loop::EventLoop;
    use std::sync::{Arc, Mutex, RwLock};
    use vhost::vhost_user::Listener;
    use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT};
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::QueueOwnedT;
    use vm_memory::{Bytes, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

    /// A vhost-user daemon that answers each request on queue 1 with its
    /// bytes upper-cased, read from and written to its own mapping of the
    /// guest memory file, as virtiofsd answers FUSE requests.
    struct Upper {
        mem: GuestMemoryAtomic<GuestMemoryMmap>,
    }

    impl VhostUserBackendMut for Upper {
        type Bitmap = ();
        type Vring = VringRwLock;
        fn num_queues(&self) -> usize {
            NUM_QUEUES
        }
        fn max_queue_size(&self) -> usize {
            usize::from(QUEUE_SIZE)
        }
        fn features(&self) -> u64 {
            // An IOMMU feature the device must not pass on to the guest.
            VIRTIO_F_VERSION_1
                | RING_EVENT_IDX
                | 1 << 33
                | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
        }
        fn protocol_features(&self) -> VhostUserProtocolFeatures {
            VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK
        }
        fn set_event_idx(&mut self, _enabled: bool) {}
        fn update_memory(
            &mut self,
            mem: GuestMemoryAtomic<GuestMemoryMmap>,
        ) -> std::io::Result<()> {
            self.mem = mem;
            Ok(())
        }
        fn handle_event(
            &mut self,
            device_event: u16,
            _evset: EventSet,
            vrings: &[VringRwLock],
            _thread_id: usize,
        ) -> std::io::Result<()> {
            if device_event != 1 {
                return Ok(());
            }
            let mem = self.mem.memory();
            let vring = &vrings[1];
            let chains: Vec<_> = vring
                .get_mut()
                .get_queue_mut()
                .iter(mem.clone())
                .map_err(std::io::Error::other)?
                .collect();
            for chain in chains {
                let head = chain.head_index();
                let descs: Vec<_> = chain.collect();
                let mut buf = vec![0u8; descs[0].len() as usize];
                mem.read_slice(&mut buf, descs[0].addr())
                    .map_err(std::io::Error::other)?;
                buf.make_ascii_uppercase();
                mem.write_slice(&buf, descs[1].addr())
                    .map_err(std::io::Error::other)?;
                vring
                    .add_used(head, buf.len() as u32)
                    .map_err(std::io::Error::other)?;
            }
            vring.signal_used_queue()
        }
    }

    fn daemon(dir: &Path) -> std::path::PathBuf {
        let sock = dir.join("fs.sock");
        let mut listener = Listener::new(&sock, true).unwrap();
        let backend = Arc::new(RwLock::new(Upper {
            mem: GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        }));
        let mut d = VhostUserDaemon::new(
            "upper".into(),
            backend,
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .unwrap();
        std::thread::spawn(move || {
            if d.start(&mut listener).is_ok() {
                let _ = d.wait();
            }
        });
        sock
    }

    #[test]
    fn the_daemon_works_the_rings_in_the_shared_guest_memory() {
        let dir = tempfile::tempdir().unwrap();
        let sock = daemon(dir.path());
        let mem = crate::vstate::memory::create_guest_memory(16).unwrap();
        let mut el = EventLoop::new().unwrap();
        let reg = EpollRegistrar::new(el.epoll(), el.next_id());
        let fs = Fs::new("volumes", &sock, reg).unwrap();
        assert_eq!(fs.avail_features(), VIRTIO_F_VERSION_1 | RING_EVENT_IDX);
        let mut tag = [0u8; 40];
        fs.read_config(0, &mut tag);
        assert_eq!(&tag[..8], b"volumes\0");
        assert_eq!(u32::from_le_bytes([tag[36], tag[37], tag[38], tag[39]]), 1);

        let mut t = MmioTransport::new(Box::new(fs), mem.clone()).unwrap();
        let mut vqs = bring_up(&mut t, &mem, 1);
        assert!(t.is_activated());
        let kick = t.queue_evts()[1].try_clone().unwrap();
        let irq = t.irq().clone();
        let t = Arc::new(Mutex::new(t));
        el.add_handler(t.clone());

        let msg = b"hello virtio-fs";
        mem.write_slice(msg, GuestAddress(0x50_0000)).unwrap();
        let head = vqs[1].push_chain(&[
            (0x50_0000, msg.len() as u32, 0),
            (0x60_0000, msg.len() as u32, VRING_DESC_F_WRITE as u16),
        ]);
        // What KVM does at the guest's QueueNotify write.
        kick.write(1).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while irq.status() & INT_VRING == 0 && std::time::Instant::now() < deadline {
            el.run_once(100).unwrap();
        }
        assert_eq!(irq.status() & INT_VRING, INT_VRING, "no interrupt");
        assert_eq!(vqs[1].last_used(), (1, (u32::from(head), msg.len() as u32)));
        let mut back = [0u8; 15];
        mem.read_slice(&mut back, GuestAddress(0x60_0000)).unwrap();
        assert_eq!(&back, b"HELLO VIRTIO-FS");
        let counters = t.lock().unwrap().device().counters();
        assert_eq!(counters["activations"], 1);
        assert_eq!(counters["activation_errors"], 0);
        assert!(counters["calls"].as_u64().unwrap() >= 1, "{counters}");
    }

    #[test]
    fn a_missing_daemon_or_a_bad_tag_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let el = EventLoop::new().unwrap();
        let reg = || EpollRegistrar::new(el.epoll(), 0);
        let e = Fs::new("v", &dir.path().join("none.sock"), reg())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("none.sock"), "{e}");
        let sock = daemon(dir.path());
        for tag in ["", &"x".repeat(37)] {
            assert!(matches!(Fs::new(tag, &sock, reg()), Err(FsError::Tag(_))));
        }
    }
}

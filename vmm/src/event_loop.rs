//! The epoll loop of the VMM thread: queue notifications (ioeventfds),
//! device backends (vsock sockets, TAP), the control API and signals.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::devices::lock;

/// Something that handles the events of the fds it registered.
pub trait EventHandler: Send {
    /// `sub` is the sub-token the fd was registered with.
    fn handle_event(&mut self, sub: u32, events: EventSet);
}

/// Builds the epoll user data for handler `id` and sub-token `sub`.
pub fn token(id: u32, sub: u32) -> u64 {
    (u64::from(id) << 32) | u64::from(sub)
}

/// Splits epoll user data into handler id and sub-token.
pub fn split_token(data: u64) -> (u32, u32) {
    ((data >> 32) as u32, data as u32)
}

/// Registers fds on behalf of one handler.
#[derive(Clone)]
pub struct EpollRegistrar {
    epoll: Arc<Epoll>,
    id: u32,
}

impl EpollRegistrar {
    /// A registrar for handler `id`.
    pub fn new(epoll: Arc<Epoll>, id: u32) -> Self {
        Self { epoll, id }
    }

    /// Adds `fd` with `events` and sub-token `sub`.
    pub fn add(&self, fd: RawFd, sub: u32, events: EventSet) -> std::io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(events, token(self.id, sub)),
        )
    }

    /// Changes the interest set of `fd`.
    pub fn modify(&self, fd: RawFd, sub: u32, events: EventSet) -> std::io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Modify,
            fd,
            EpollEvent::new(events, token(self.id, sub)),
        )
    }

    /// Removes `fd`.
    pub fn remove(&self, fd: RawFd) -> std::io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }
}

/// The epoll instance plus the handlers indexed by id.
pub struct EventLoop {
    epoll: Arc<Epoll>,
    handlers: Vec<Arc<Mutex<dyn EventHandler>>>,
}

impl EventLoop {
    /// Creates the epoll instance.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            epoll: Arc::new(Epoll::new()?),
            handlers: Vec::new(),
        })
    }

    /// The epoll instance.
    pub fn epoll(&self) -> Arc<Epoll> {
        self.epoll.clone()
    }

    /// The id the next added handler will get.
    pub fn next_id(&self) -> u32 {
        self.handlers.len() as u32
    }

    /// Adds a handler; returns its id.
    pub fn add_handler(&mut self, h: Arc<Mutex<dyn EventHandler>>) -> u32 {
        self.handlers.push(h);
        (self.handlers.len() - 1) as u32
    }

    /// Waits up to `timeout_ms` (-1: forever) and dispatches device events;
    /// events for ids without a handler (the VMM's own) are returned.
    pub fn run_once(&self, timeout_ms: i32) -> std::io::Result<Vec<(u32, EventSet)>> {
        let mut events = [EpollEvent::default(); 32];
        let n = match self.epoll.wait(timeout_ms, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e),
        };
        let mut own = Vec::new();
        for ev in &events[..n] {
            let (id, sub) = split_token(ev.data());
            match self.handlers.get(id as usize) {
                Some(h) => lock(h).handle_event(sub, ev.event_set()),
                None => own.push((sub, ev.event_set())),
            }
        }
        Ok(own)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EventFd;

    struct Count(Vec<u32>);
    impl EventHandler for Count {
        fn handle_event(&mut self, sub: u32, _events: EventSet) {
            self.0.push(sub);
        }
    }

    #[test]
    fn dispatches_by_token() {
        assert_eq!(split_token(token(7, 9)), (7, 9));
        let mut el = EventLoop::new().unwrap();
        let h = Arc::new(Mutex::new(Count(vec![])));
        let id = el.add_handler(h.clone());
        let reg = EpollRegistrar::new(el.epoll(), id);
        let e = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        reg.add(e.as_raw_fd(), 5, EventSet::IN).unwrap();
        let own_evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        EpollRegistrar::new(el.epoll(), u32::MAX)
            .add(own_evt.as_raw_fd(), 1, EventSet::IN)
            .unwrap();
        e.write(1).unwrap();
        own_evt.write(1).unwrap();
        let own = el.run_once(1000).unwrap();
        assert_eq!(lock(&h).0, vec![5]);
        assert_eq!(own.len(), 1);
        assert_eq!(own[0].0, 1);
        reg.remove(e.as_raw_fd()).unwrap();
    }
    use std::os::fd::AsRawFd;
}

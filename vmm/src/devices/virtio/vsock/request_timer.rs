//! The timer behind the connect-request timeout: a host-initiated
//! connection whose REQUEST the guest answers with neither RESPONSE nor RST
//! within [`CONN_REQUEST_TIMEOUT`] is reset and its host stream closed.
//!
//! One timerfd per device, registered with the event loop, is armed for the
//! earliest pending deadline. Its expirations are never read: re-arming or
//! disarming a timerfd resets its expiration count, which makes it
//! unreadable again, so every wake-up ends in [`RequestTimer::arm`].

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

/// How long the guest has to answer a host-initiated REQUEST. Firecracker
/// allows 2 s; guests in the emulated test node can be that slow under
/// load, and moatd's own CONNECT wait is 10 s, so the VMM frees the slot
/// at 5 s and moatd sees a clean refusal it retries.
pub const CONN_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A one-shot timer for the earliest connect-request deadline.
pub(super) struct RequestTimer {
    fd: TimerFd,
    armed_for: Option<Instant>,
}

impl RequestTimer {
    /// A disarmed timer.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            fd: TimerFd::new()?,
            armed_for: None,
        })
    }

    /// The fd to register with epoll (readable once the timer expired).
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Arms the timer for `deadline` (disarms it for `None`); `force`
    /// re-arms even when the deadline did not change, which clears an
    /// expiration that woke the loop.
    pub fn arm(&mut self, deadline: Option<Instant>, force: bool) {
        if deadline == self.armed_for && !force {
            return;
        }
        let r = match deadline {
            Some(d) => {
                // A zero duration would disarm the timer: fire 1 µs from now.
                let left = d.saturating_duration_since(Instant::now());
                self.fd.reset(left.max(Duration::from_micros(1)), None)
            }
            None => self.fd.clear(),
        };
        match r {
            Ok(()) => self.armed_for = deadline,
            Err(e) => {
                self.armed_for = None;
                tracing::warn!("vsock request timer: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

    fn ready(ep: &Epoll, ms: i32) -> bool {
        let mut evs = [EpollEvent::default(); 1];
        ep.wait(ms, &mut evs).unwrap() == 1
    }

    #[test]
    fn fires_and_rearming_clears_it() {
        let mut t = RequestTimer::new().unwrap();
        let ep = Epoll::new().unwrap();
        ep.ctl(
            ControlOperation::Add,
            t.fd(),
            EpollEvent::new(EventSet::IN, 1),
        )
        .unwrap();
        assert!(!ready(&ep, 0));
        // A deadline already past still fires.
        t.arm(Some(Instant::now()), false);
        assert!(ready(&ep, 1000));
        // Disarming clears the expiration without reading it.
        t.arm(None, true);
        assert!(!ready(&ep, 0));
        t.arm(Some(Instant::now() + Duration::from_millis(30)), false);
        assert!(!ready(&ep, 0));
        assert!(ready(&ep, 1000));
        // Forced re-arm for a later deadline clears the fired state.
        t.arm(Some(Instant::now() + Duration::from_secs(60)), true);
        assert!(!ready(&ep, 0));
    }
}

//! moat's exit port: the agent writes `GUEST_EXIT_POWEROFF` here right before
//! it resets the guest, so a reset that follows is a clean poweroff.

use std::sync::Arc;

use moat_proto::GUEST_EXIT_POWEROFF;

use crate::devices::bus::BusDevice;
use crate::exit::ExitRequest;

/// The exit port bus device.
pub struct ExitPort {
    exit: Arc<ExitRequest>,
}

impl ExitPort {
    /// A port that records poweroff notices in `exit`.
    pub fn new(exit: Arc<ExitRequest>) -> Self {
        Self { exit }
    }
}

impl BusDevice for ExitPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        match data.first() {
            Some(&GUEST_EXIT_POWEROFF) => {
                tracing::debug!("guest announced poweroff");
                self.exit.note_poweroff();
            }
            other => tracing::debug!("exit port: ignoring value {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::ExitCode;

    #[test]
    fn only_poweroff_value_counts() {
        let e = Arc::new(ExitRequest::new().unwrap());
        let mut p = ExitPort::new(e.clone());
        p.write(0, &[0x42]);
        p.write(0, &[]);
        e.guest_reset("test");
        assert_eq!(e.requested().unwrap().0, ExitCode::GuestReset);

        let e = Arc::new(ExitRequest::new().unwrap());
        let mut p = ExitPort::new(e.clone());
        p.write(0, &[GUEST_EXIT_POWEROFF]);
        e.guest_reset("test");
        assert_eq!(e.requested().unwrap().0, ExitCode::Poweroff);
    }
}

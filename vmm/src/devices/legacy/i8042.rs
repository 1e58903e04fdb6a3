//! A minimal i8042 PS/2 controller (ports 0x60 and 0x64).
//!
//! `vm-superio`'s `I8042Device` only implements the reset command and reads
//! back 0 for everything, so the Linux i8042 driver would wait ~0.5 s per
//! probe step for the "output buffer full" status bit. This controller
//! answers the controller commands Linux issues at probe (self test, control
//! register access, port tests) and keyboard commands with ACK, so probing
//! is instant; `0xFE` on the command port resets (ends) the VM.

use std::collections::VecDeque;
use std::sync::Arc;

use vm_superio::Trigger;

use super::EventFdTrigger;
use crate::devices::bus::BusDevice;
use crate::exit::ExitRequest;

/// Base port (data port); the command/status port is base + 4.
pub const I8042_PORT: u64 = 0x60;
/// Bus range length (0x60..=0x64).
pub const I8042_LEN: u64 = 5;

const OFF_DATA: u64 = 0;
const OFF_CMD: u64 = 4;

const SB_OUT_FULL: u8 = 0x01;
const SB_SYS: u8 = 0x04;
const SB_LAST_WAS_CMD: u8 = 0x08;
const SB_KBD_ENABLED: u8 = 0x10;

const CB_KBD_INT: u8 = 0x01;
const CB_POST_OK: u8 = 0x04;
const CB_KBD_DISABLE: u8 = 0x10;
const CB_AUX_DISABLE: u8 = 0x20;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_WRITE_OUTP: u8 = 0xd1;
const CMD_WRITE_KBD_OUTBUF: u8 = 0xd2;
const CMD_WRITE_AUX_OUTBUF: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
const CMD_RESET_CPU: u8 = 0xfe;

const KBD_ACK: u8 = 0xfa;
const KBD_RESET: u8 = 0xff;
const KBD_GET_ID: u8 = 0xf2;
const KBD_SELF_TEST_OK: u8 = 0xaa;

const BUF_MAX: usize = 16;

/// The i8042 controller.
pub struct I8042 {
    exit: Arc<ExitRequest>,
    kbd_irq: EventFdTrigger,
    ctr: u8,
    outp: u8,
    last_was_cmd: bool,
    pending: Option<u8>,
    buf: VecDeque<u8>,
}

impl I8042 {
    /// A controller that ends the VM through `exit` on reset and raises
    /// `kbd_irq` (IRQ 1) for keyboard data.
    pub fn new(exit: Arc<ExitRequest>, kbd_irq: EventFdTrigger) -> Self {
        Self {
            exit,
            kbd_irq,
            ctr: CB_POST_OK | CB_KBD_INT,
            outp: 0,
            last_was_cmd: false,
            pending: None,
            buf: VecDeque::new(),
        }
    }

    fn status(&self) -> u8 {
        let mut s = SB_SYS | SB_KBD_ENABLED;
        if !self.buf.is_empty() {
            s |= SB_OUT_FULL;
        }
        if self.last_was_cmd {
            s |= SB_LAST_WAS_CMD;
        }
        s
    }

    fn push(&mut self, b: u8) {
        if self.buf.len() < BUF_MAX {
            self.buf.push_back(b);
        }
    }

    fn push_kbd(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.push(*b);
        }
        if self.ctr & CB_KBD_INT != 0 {
            if let Err(e) = self.kbd_irq.trigger() {
                tracing::debug!("i8042 irq: {e}");
            }
        }
    }

    fn command(&mut self, cmd: u8) {
        self.last_was_cmd = true;
        match cmd {
            CMD_READ_CTR => self.push(self.ctr),
            CMD_WRITE_CTR | CMD_WRITE_OUTP | CMD_WRITE_KBD_OUTBUF | CMD_WRITE_AUX_OUTBUF
            | CMD_WRITE_AUX => self.pending = Some(cmd),
            CMD_AUX_DISABLE => self.ctr |= CB_AUX_DISABLE,
            CMD_AUX_ENABLE => self.ctr &= !CB_AUX_DISABLE,
            CMD_SELF_TEST => self.push(0x55),
            CMD_KBD_TEST => self.push(0x00),
            CMD_KBD_DISABLE => self.ctr |= CB_KBD_DISABLE,
            CMD_KBD_ENABLE => self.ctr &= !CB_KBD_DISABLE,
            CMD_READ_OUTP => self.push(self.outp),
            CMD_RESET_CPU => self.exit.guest_reset("i8042 reset"),
            other => tracing::trace!("i8042: ignoring command {other:#x}"),
        }
    }

    fn data(&mut self, v: u8) {
        self.last_was_cmd = false;
        match self.pending.take() {
            Some(CMD_WRITE_CTR) => self.ctr = v,
            Some(CMD_WRITE_OUTP) => self.outp = v,
            Some(CMD_WRITE_KBD_OUTBUF) => self.push_kbd(&[v]),
            Some(_) => {}
            None => match v {
                KBD_RESET => self.push_kbd(&[KBD_ACK, KBD_SELF_TEST_OK]),
                KBD_GET_ID => self.push_kbd(&[KBD_ACK, 0xab, 0x83]),
                _ => self.push_kbd(&[KBD_ACK]),
            },
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(first) = data.first_mut() else {
            return;
        };
        *first = match offset {
            OFF_DATA => self.buf.pop_front().unwrap_or(0),
            OFF_CMD => self.status(),
            _ => 0,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else {
            return;
        };
        match offset {
            OFF_DATA => self.data(v),
            OFF_CMD => self.command(v),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::ExitCode;
    use vmm_sys_util::eventfd::EventFd;

    fn dev() -> (I8042, Arc<ExitRequest>) {
        let e = Arc::new(ExitRequest::new().unwrap());
        let irq = EventFdTrigger(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        (I8042::new(e.clone(), irq), e)
    }

    fn rd(d: &mut I8042, off: u64) -> u8 {
        let mut b = [0u8];
        d.read(off, &mut b);
        b[0]
    }

    #[test]
    fn probe_sequence() {
        let (mut d, e) = dev();
        assert_eq!(rd(&mut d, 4) & SB_OUT_FULL, 0);
        d.write(4, &[CMD_SELF_TEST]);
        assert_ne!(rd(&mut d, 4) & SB_OUT_FULL, 0);
        assert_eq!(rd(&mut d, 0), 0x55);
        d.write(4, &[CMD_READ_CTR]);
        let ctr = rd(&mut d, 0);
        assert_eq!(ctr, CB_POST_OK | CB_KBD_INT);
        d.write(4, &[CMD_WRITE_CTR]);
        d.write(0, &[0x47]);
        d.write(4, &[CMD_READ_CTR]);
        assert_eq!(rd(&mut d, 0), 0x47);
        d.write(0, &[KBD_RESET]);
        assert_eq!(rd(&mut d, 0), KBD_ACK);
        assert_eq!(rd(&mut d, 0), KBD_SELF_TEST_OK);
        assert_eq!(rd(&mut d, 0), 0);
        assert!(e.requested().is_none());
        d.write(4, &[CMD_RESET_CPU]);
        assert_eq!(e.requested().unwrap().0, ExitCode::GuestReset);
    }

    #[test]
    fn odd_accesses_do_not_panic() {
        let (mut d, _) = dev();
        d.write(4, &[]);
        d.read(0, &mut []);
        d.write(2, &[0xfe]);
        for _ in 0..100 {
            d.write(0, &[0x00]);
        }
        assert!(d.buf.len() <= BUF_MAX);
    }
}

//! Process exit codes of `moat-vmm`, defined in one place.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | the guest powered off cleanly (exit-port notice, then i8042 reset) |
//! | 1 | internal VMM error (I/O failure on the host side, thread failure) |
//! | 2 | bad configuration or command line |
//! | 3 | the guest reset without a poweroff notice: reboot, kernel panic (`panic=-1`), triple fault |
//! | 4 | KVM error: no usable `/dev/kvm`, PVM host, VM setup failure, internal error / failed entry |
//! | 5 | a requested graceful shutdown timed out and the VM was killed |
//! | 6 | terminated by SIGTERM or SIGINT |
//! | 7 | a thread made a syscall outside its seccomp filter |
//! | 8 | a device's backend went away (the pod's virtio-fs daemon) |

/// Why the VMM exits; each variant maps to one process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// The guest powered off cleanly.
    Poweroff = 0,
    /// An internal error of the VMM.
    Internal = 1,
    /// Invalid configuration.
    BadConfig = 2,
    /// The guest reset (reboot, panic or triple fault) without a poweroff notice.
    GuestReset = 3,
    /// KVM could not run the guest (includes PVM / unsupported hosts).
    KvmError = 4,
    /// A graceful shutdown request timed out.
    ShutdownTimeout = 5,
    /// SIGTERM or SIGINT was received.
    Signal = 6,
    /// A thread made a syscall its seccomp filter does not allow.
    BadSyscall = 7,
    /// A device's backend went away (the pod's virtio-fs daemon): the
    /// guest's requests to it could never complete.
    BackendGone = 8,
}

impl ExitCode {
    /// The numeric process exit status.
    pub fn code(self) -> i32 {
        self as i32
    }

    /// Decodes an exit status as reported by the OS.
    pub fn from_code(code: i32) -> Option<Self> {
        Some(match code {
            0 => Self::Poweroff,
            1 => Self::Internal,
            2 => Self::BadConfig,
            3 => Self::GuestReset,
            4 => Self::KvmError,
            5 => Self::ShutdownTimeout,
            6 => Self::Signal,
            7 => Self::BadSyscall,
            8 => Self::BackendGone,
            _ => return None,
        })
    }

    /// Short human-readable description.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Poweroff => "guest powered off",
            Self::Internal => "internal VMM error",
            Self::BadConfig => "bad configuration",
            Self::GuestReset => "guest reset (reboot, panic or triple fault)",
            Self::KvmError => "KVM error",
            Self::ShutdownTimeout => "shutdown timed out, VM killed",
            Self::Signal => "terminated by signal",
            Self::BadSyscall => "a syscall outside the VMM's seccomp filter",
            Self::BackendGone => "a device's backend (the virtio-fs daemon) went away",
        }
    }
}

/// Text for `--help` listing all exit codes.
pub const EXIT_CODES_HELP: &str = "Exit codes:\n  0  guest powered off cleanly\n  1  internal VMM error\n  2  bad configuration\n  3  guest reset without poweroff notice (reboot, kernel panic, triple fault)\n  4  KVM error (no /dev/kvm, PVM host, internal error, failed entry)\n  5  graceful shutdown timed out, VM killed\n  6  terminated by SIGTERM/SIGINT\n  7  a syscall outside the seccomp filter\n  8  a device's backend (the virtio-fs daemon) went away";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for c in 0..=8 {
            let e = ExitCode::from_code(c).unwrap();
            assert_eq!(e.code(), c);
            assert!(!e.describe().is_empty());
        }
        assert_eq!(ExitCode::from_code(9), None);
    }
}

/// How the parts of the VMM ask the main loop to end the VM: the first
/// request wins; the main loop waits on [`ExitRequest::event`].
pub struct ExitRequest {
    evt: vmm_sys_util::eventfd::EventFd,
    code: std::sync::Mutex<Option<(ExitCode, String)>>,
    poweroff_notice: std::sync::atomic::AtomicBool,
    requested: std::sync::atomic::AtomicBool,
}

impl ExitRequest {
    /// Creates the request slot and its eventfd.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            evt: vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK)?,
            code: std::sync::Mutex::new(None),
            poweroff_notice: std::sync::atomic::AtomicBool::new(false),
            requested: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The eventfd that becomes readable once an exit is requested.
    pub fn event(&self) -> &vmm_sys_util::eventfd::EventFd {
        &self.evt
    }

    /// Requests exit with `code`; later requests are ignored.
    pub fn request(&self, code: ExitCode, why: impl Into<String>) {
        let mut slot = self.code.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some((code, why.into()));
            self.requested
                .store(true, std::sync::atomic::Ordering::SeqCst);
            // An eventfd write only fails on counter overflow.
            let _ = self.evt.write(1);
        }
    }

    /// Whether an exit was requested (cheap, for the vCPU loop).
    pub fn is_requested(&self) -> bool {
        self.requested.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Records the guest's "clean poweroff follows" notice from the exit port.
    pub fn note_poweroff(&self) {
        self.poweroff_notice
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// The guest reset the machine: a poweroff if it announced one, else a
    /// reboot/panic.
    pub fn guest_reset(&self, how: &str) {
        if self
            .poweroff_notice
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            self.request(ExitCode::Poweroff, format!("guest powered off ({how})"));
        } else {
            self.request(
                ExitCode::GuestReset,
                format!("guest reset without poweroff notice ({how})"),
            );
        }
    }

    /// The requested exit, if any.
    pub fn requested(&self) -> Option<(ExitCode, String)> {
        self.code.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod request_tests {
    use super::*;

    #[test]
    fn reset_after_notice_is_poweroff() {
        let r = ExitRequest::new().unwrap();
        r.note_poweroff();
        r.guest_reset("i8042");
        assert_eq!(r.requested().unwrap().0, ExitCode::Poweroff);
        assert_eq!(r.event().read().unwrap(), 1);
    }

    #[test]
    fn reset_without_notice_and_first_wins() {
        let r = ExitRequest::new().unwrap();
        r.guest_reset("triple fault");
        r.request(ExitCode::KvmError, "later");
        assert_eq!(r.requested().unwrap().0, ExitCode::GuestReset);
    }
}

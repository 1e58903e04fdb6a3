//! Per-thread seccomp filters (as Firecracker installs them): the syscalls
//! the event-loop thread and each vCPU thread make once the guest runs,
//! and nothing else. A syscall outside its thread's list traps (SIGSYS):
//! the handler writes which syscall to the VMM's log and ends the process
//! with [`ExitCode::BadSyscall`], so a guest that takes over a device
//! emulation cannot reach the rest of the kernel's interface, and moatd can
//! say why the pod's VM stopped. The lists were taken from traces of
//! moat-vmm running pods (boot, block attach and detach, vsock and net
//! traffic, pause, console rotation, shutdown) and name every syscall
//! those paths make. A vCPU emulates the device registers the guest
//! touches (activating or resetting a device there registers or drops its
//! fds), so both kinds of thread share the device list; the event loop
//! alone serves the control socket.
//!
//! Arguments are checked where a syscall's reach depends on them: `socket`
//! makes Unix sockets only (vsock's host side), and `ioctl` takes only the
//! requests the running VMM makes — KVM_RUN, the register reads that
//! describe a guest fault, and the descriptor-flag requests of the standard
//! library — so neither the KVM device's other requests (a new VM, memory
//! slots) nor a terminal's or socket's are in reach.

use crate::exit::ExitCode;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// The KVM request numbers the filters let through (as kvm-ioctls defines
/// them, which does not export them).
mod kvm_requests {
    #![allow(missing_docs)]
    use kvm_bindings::{kvm_regs, kvm_sregs, kvm_vcpu_events, KVMIO};
    use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr};
    ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
    ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
    ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
    ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
}
use kvm_requests::{KVM_GET_REGS, KVM_GET_SREGS, KVM_GET_VCPU_EVENTS, KVM_RUN};

/// The ioctl requests a running VMM makes: a vCPU's run and the register
/// reads of a fault's description, and the standard library's non-blocking
/// and close-on-exec switches.
fn allowed_ioctls() -> Vec<u64> {
    vec![
        KVM_RUN(),
        KVM_GET_REGS(),
        KVM_GET_SREGS(),
        KVM_GET_VCPU_EVENTS(),
        libc::FIONBIO,
        libc::FIOCLEX,
        libc::FIONCLEX,
    ]
}

/// Why a filter could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The filter did not compile.
    #[error("building the seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    /// The kernel refused it.
    #[error("installing the seccomp filter: {0}")]
    Install(#[from] seccompiler::Error),
}

/// What every thread of the VMM may do: memory, time, futexes, signals,
/// its own exit, logging.
const COMMON: &[libc::c_long] = &[
    libc::SYS_brk,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_close,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_fstat,
    libc::SYS_futex,
    libc::SYS_getpid,
    libc::SYS_getrandom,
    libc::SYS_gettid,
    libc::SYS_madvise,
    libc::SYS_mmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_munmap,
    libc::SYS_nanosleep,
    libc::SYS_newfstatat,
    libc::SYS_read,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_yield,
    libc::SYS_sigaltstack,
    libc::SYS_statx,
    libc::SYS_write,
    libc::SYS_writev,
];

/// The event loop's own: the control socket (accepting clients, binding
/// it at start).
const EVENT_LOOP: &[libc::c_long] = &[libc::SYS_accept4, libc::SYS_bind, libc::SYS_listen];

/// Device emulation, on both kinds of thread: queue work on the event loop,
/// and on a vCPU the register accesses that activate or reset a device
/// (which register or drop its fds, flush or close vsock connections) —
/// block I/O, the TAP, vsock's Unix sockets, eventfds and timers, image
/// files attached, vCPU kicks.
const DEVICES: &[libc::c_long] = &[
    libc::SYS_connect,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_wait,
    libc::SYS_eventfd2,
    libc::SYS_fcntl,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
    libc::SYS_getsockopt,
    libc::SYS_ioctl,
    libc::SYS_lseek,
    libc::SYS_openat,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_pread64,
    libc::SYS_preadv,
    libc::SYS_pwrite64,
    libc::SYS_pwritev,
    libc::SYS_readv,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_sendmsg,
    libc::SYS_sendto,
    libc::SYS_setsockopt,
    libc::SYS_shutdown,
    libc::SYS_socket,
    libc::SYS_tgkill,
    libc::SYS_timerfd_settime,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
];

/// A vCPU's own: KVM_RUN and its exits (the console file it writes, and
/// rotates, is opened with openat like an image file).
const VCPU: &[libc::c_long] = &[libc::SYS_ioctl];

/// Which thread a filter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Thread {
    /// The main thread, running the event loop.
    EventLoop,
    /// A vCPU thread.
    Vcpu,
}

impl Thread {
    /// The syscalls the thread may make.
    pub fn allowed(self) -> Vec<libc::c_long> {
        let own = match self {
            Self::EventLoop => EVENT_LOOP,
            Self::Vcpu => VCPU,
        };
        let mut all: Vec<libc::c_long> = COMMON.iter().chain(DEVICES).chain(own).copied().collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// The compiled filter: the thread's syscalls allowed (with their
    /// argument checks), any other kills the process.
    pub fn program(self) -> Result<BpfProgram, SeccompError> {
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for nr in self.allowed() {
            rules.insert(nr, argument_rules(nr)?);
        }
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Trap,
            SeccompAction::Allow,
            TargetArch::x86_64,
        )?;
        Ok(BpfProgram::try_from(filter)?)
    }

    /// Installs the thread's filter on the calling thread (which must have
    /// no_new_privs set, see [`crate::confine`]), after the SIGSYS handler.
    pub fn install(self) -> Result<(), SeccompError> {
        let program = self.program()?;
        install_sigsys_handler().map_err(seccompiler::Error::Seccomp)?;
        seccompiler::apply_filter(&program)?;
        tracing::debug!(thread = ?self, "seccomp filter installed");
        Ok(())
    }
}

/// The argument checks of syscall `nr` (any one rule matching allows it;
/// none: any arguments).
fn argument_rules(nr: libc::c_long) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    let arg_is = |index: u8, len: SeccompCmpArgLen, value: u64| {
        SeccompCondition::new(index, len, SeccompCmpOp::Eq, value)
            .and_then(|c| SeccompRule::new(vec![c]))
    };
    match nr {
        libc::SYS_socket => Ok(vec![arg_is(
            0,
            SeccompCmpArgLen::Dword,
            libc::AF_UNIX as u64,
        )?]),
        libc::SYS_ioctl => allowed_ioctls()
            .into_iter()
            .map(|request| arg_is(1, SeccompCmpArgLen::Dword, request))
            .collect(),
        _ => Ok(Vec::new()),
    }
}

/// Installs the handler that reports a trapped syscall and exits.
fn install_sigsys_handler() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction with our handler, SA_SIGINFO for the
    // syscall number; the handler only makes async-signal-safe calls.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_sigsys as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&raw mut act.sa_mask);
        if libc::sigaction(libc::SIGSYS, &raw const act, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The SIGSYS handler: `moat-vmm: seccomp: syscall N (args 0x…, 0x…) is
/// not allowed on this thread` to stderr (the VMM's log), then exit with
/// [`ExitCode::BadSyscall`]. No allocation, no locks.
extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // si_syscall follows si_signo, si_errno, si_code, padding and
    // si_call_addr in the x86-64 siginfo of SIGSYS.
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let nr = unsafe { info.cast::<u8>().add(24).cast::<i32>().read_unaligned() };
    let mut line = [0u8; 160];
    let mut n = 0;
    let mut put = |bytes: &[u8]| {
        for b in bytes {
            if n < line.len() {
                line[n] = *b;
                n += 1;
            }
        }
    };
    put(b"moat-vmm: seccomp: syscall ");
    let mut digits = [0u8; 12];
    let mut d = digits.len();
    let mut v = nr.unsigned_abs();
    loop {
        d -= 1;
        digits[d] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 || d == 0 {
            break;
        }
    }
    put(&digits[d..]);
    // The first two arguments (rdi, rsi: an ioctl's request, a socket's
    // family), from the trapped thread's registers.
    // SAFETY: the kernel passes the interrupted context as a ucontext_t.
    let (a0, a1) = unsafe {
        let uc = &*ctx.cast::<libc::ucontext_t>();
        (
            uc.uc_mcontext.gregs[libc::REG_RDI as usize] as u64,
            uc.uc_mcontext.gregs[libc::REG_RSI as usize] as u64,
        )
    };
    for (label, v) in [(b" (args 0x".as_slice(), a0), (b", 0x".as_slice(), a1)] {
        put(label);
        let mut hex = [0u8; 16];
        for (i, h) in hex.iter_mut().enumerate() {
            let nib = ((v >> ((15 - i) * 4)) & 0xf) as u8;
            *h = if nib < 10 {
                b'0' + nib
            } else {
                b'a' + nib - 10
            };
        }
        let start = hex.iter().position(|b| *b != b'0').unwrap_or(15);
        put(&hex[start..]);
    }
    put(b") is not allowed on this thread; stopping the VM\n");
    // SAFETY: write and _exit are async-signal-safe.
    unsafe {
        libc::write(2, line.as_ptr().cast(), n);
        libc::_exit(ExitCode::BadSyscall.code());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread with the vCPU filter may write but not ask for its uid: the
    /// process ends with the bad-syscall code. Run in a child process, which
    /// the filter ends instead of the test.
    #[test]
    fn a_syscall_outside_the_list_kills_the_process() {
        // Compiled before the fork: the child only makes raw syscalls.
        let program = Thread::Vcpu.program().unwrap();
        // SAFETY: fork in a test; the child allocates nothing and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: prctl with integer arguments only.
            unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
            if install_sigsys_handler().is_err() || seccompiler::apply_filter(&program).is_err() {
                // SAFETY: leaving the child at once.
                unsafe { libc::_exit(3) };
            }
            // Allowed.
            // SAFETY: writing nothing to stderr.
            unsafe { libc::write(2, std::ptr::null(), 0) };
            // Not allowed: the filter ends the process here.
            // SAFETY: a plain getuid call.
            unsafe { libc::getuid() };
            // SAFETY: leaving the child.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waiting for the child forked above.
        unsafe { libc::waitpid(pid, &raw mut status, 0) };
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), ExitCode::BadSyscall.code());
    }

    /// Runs `f` in a child under the vCPU filter; returns its exit code
    /// (0 when `f` returned).
    fn under_filter(f: fn()) -> i32 {
        let program = Thread::Vcpu.program().unwrap();
        // SAFETY: fork in a test; the child makes raw syscalls and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: prctl with integer arguments; leaving the child.
            unsafe {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                if install_sigsys_handler().is_err() || seccompiler::apply_filter(&program).is_err()
                {
                    libc::_exit(3);
                }
            }
            f();
            // SAFETY: leaving the child.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waiting for the child forked above.
        unsafe { libc::waitpid(pid, &raw mut status, 0) };
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        libc::WEXITSTATUS(status)
    }

    /// Unix sockets and the listed ioctl requests pass; an inet socket or
    /// another request ends the process.
    #[test]
    fn socket_families_and_ioctl_requests_are_checked() {
        let bad = ExitCode::BadSyscall.code();
        assert_eq!(
            // SAFETY: raw syscalls in the child, on fds it owns.
            under_filter(|| unsafe {
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                let mut on: libc::c_int = 1;
                libc::ioctl(fd, libc::FIONBIO, &raw mut on);
                libc::ioctl(fd, libc::FIOCLEX);
            }),
            0
        );
        assert_eq!(
            // SAFETY: raw syscalls in the child, on fds it owns.
            under_filter(|| unsafe {
                libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            }),
            bad
        );
        assert_eq!(
            // SAFETY: raw syscalls in the child, on fds it owns.
            under_filter(|| unsafe {
                // KVM_CREATE_VM, on stdin: refused before it reaches any fd.
                libc::ioctl(0, 0xAE01);
            }),
            bad
        );
        assert_eq!(
            // SAFETY: raw syscalls in the child, on fds it owns.
            under_filter(|| unsafe {
                libc::ioctl(0, libc::TIOCSTI, c"x".as_ptr());
            }),
            bad
        );
    }

    #[test]
    fn filters_compile_and_keep_the_event_loop_apart() {
        for t in [Thread::EventLoop, Thread::Vcpu] {
            t.program().unwrap();
        }
        assert!(Thread::EventLoop.allowed().contains(&libc::SYS_accept4));
        assert!(!Thread::Vcpu.allowed().contains(&libc::SYS_accept4));
        // Device resets on a vCPU drop fds from the event loop's epoll.
        assert!(Thread::Vcpu.allowed().contains(&libc::SYS_epoll_ctl));
        assert!(!Thread::EventLoop.allowed().contains(&libc::SYS_execve));
    }
}

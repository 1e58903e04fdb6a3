//! The single reaper: the only place the agent calls waitpid. It reaps every
//! child and orphan (the agent is PID 1 in the guest and a child subreaper
//! elsewhere) and hands each exit status to whoever registered for that pid,
//! so processes the agent waits on never have their status stolen.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// exit(code).
    Code(i32),
    /// Killed by a signal.
    Signal(i32),
}

impl Exit {
    /// Shell-style status: the code, or 128 + signal.
    pub fn status(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }
}

/// Unclaimed statuses are kept this long for a late registration.
const UNCLAIMED_TTL: Duration = Duration::from_secs(120);

#[derive(Default)]
struct Inner {
    waiters: HashMap<i32, oneshot::Sender<Exit>>,
    unclaimed: HashMap<i32, (Exit, Instant)>,
}

/// Registry of pids the agent waits for.
#[derive(Default)]
pub struct Reaper {
    inner: Mutex<Inner>,
}

/// The process-wide reaper.
pub fn global() -> &'static Reaper {
    static R: OnceLock<Reaper> = OnceLock::new();
    R.get_or_init(Reaper::default)
}

impl Reaper {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Spawns `cmd` and registers its pid before the reaper can see it exit.
    pub fn spawn(
        &self,
        cmd: &mut std::process::Command,
    ) -> std::io::Result<(i32, oneshot::Receiver<Exit>)> {
        let mut inner = self.lock();
        let child = cmd.spawn()?;
        let pid = child.id() as i32;
        // The Child handle is dropped without waiting: the reaper owns it.
        drop(child);
        let (tx, rx) = oneshot::channel();
        inner.waiters.insert(pid, tx);
        Ok((pid, rx))
    }

    /// Registers for the exit of `pid`, a process that is not the agent's
    /// direct child yet (it will be re-parented here). If it was already
    /// reaped the status arrives at once.
    pub fn watch(&self, pid: i32) -> oneshot::Receiver<Exit> {
        let mut inner = self.lock();
        let (tx, rx) = oneshot::channel();
        if let Some((exit, _)) = inner.unclaimed.remove(&pid) {
            let _ = tx.send(exit);
        } else {
            inner.waiters.insert(pid, tx);
        }
        rx
    }

    /// Reaps every exited child now and dispatches the statuses.
    pub fn reap_now(&self) {
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        let mut inner = self.lock();
        loop {
            let (pid, exit) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid.as_raw(), Exit::Signal(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            };
            match inner.waiters.remove(&pid) {
                Some(tx) => {
                    let _ = tx.send(exit);
                }
                None => {
                    tracing::debug!(pid, ?exit, "reaped orphan");
                    let now = Instant::now();
                    inner
                        .unclaimed
                        .retain(|_, (_, t)| now.duration_since(*t) < UNCLAIMED_TTL);
                    inner.unclaimed.insert(pid, (exit, now));
                }
            }
        }
    }

    /// Reaps on every SIGCHLD, forever.
    pub async fn run(&'static self) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut sigchld = match signal(SignalKind::child()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot watch SIGCHLD, children will not be reaped: {e}");
                return;
            }
        };
        loop {
            self.reap_now();
            sigchld.recv().await;
        }
    }
}

/// Makes this process the reaper of its orphaned descendants (PID 1 is
/// anyway; elsewhere, e.g. tests, this keeps containers our children).
pub fn become_subreaper() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatches_statuses_by_pid() {
        let _g = crate::FORK_TEST_LOCK
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let r = Reaper::default();
        let (_, mut a) = r
            .spawn(std::process::Command::new("sh").args(["-c", "exit 3"]))
            .unwrap();
        let (_, mut b) = r
            .spawn(std::process::Command::new("sh").args(["-c", "kill -9 $$"]))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let (mut ea, mut eb) = (None, None);
        while (ea.is_none() || eb.is_none()) && Instant::now() < deadline {
            r.reap_now();
            ea = ea.or(a.try_recv().ok());
            eb = eb.or(b.try_recv().ok());
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(ea, Some(Exit::Code(3)));
        assert_eq!(eb, Some(Exit::Signal(9)));
        assert_eq!(Exit::Signal(9).status(), 137);
    }

    #[test]
    fn late_watch_gets_an_unclaimed_status() {
        let r = Reaper::default();
        r.lock()
            .unclaimed
            .insert(4242, (Exit::Code(0), Instant::now()));
        let mut rx = r.watch(4242);
        assert_eq!(rx.try_recv().unwrap(), Exit::Code(0));
    }
}

//! The VMM's own log (its stderr, which moatd keeps in a file under its run
//! directory, often a tmpfs): capped, because a guest can make the VMM log
//! a line per misused register or bad descriptor.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Most bytes moat-vmm logs; later lines are dropped after one notice.
pub const LOG_MAX_BYTES: u64 = 4 << 20;

/// A writer that passes on at most `max` bytes, all its clones together.
pub struct CappedLog<W> {
    inner: W,
    written: Arc<AtomicU64>,
    max: u64,
}

impl<W: Write> CappedLog<W> {
    /// Passes at most `max` bytes to `inner`.
    pub fn new(inner: W, max: u64) -> Self {
        Self {
            inner,
            written: Arc::new(AtomicU64::new(0)),
            max,
        }
    }

    /// The inner writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }
}

impl<W: Write> Write for CappedLog<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let len = buf.len() as u64;
        let before = self.written.fetch_add(len, Ordering::Relaxed);
        if before >= self.max {
            return Ok(buf.len());
        }
        if before + len > self.max {
            let _ = writeln!(
                self.inner,
                "moat-vmm: the log reached {} bytes; later lines are dropped",
                self.max
            );
            return Ok(buf.len());
        }
        self.inner.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A maker of capped stderr writers (one cap for the process), for
/// `tracing_subscriber`'s `with_writer`.
pub fn capped_stderr() -> impl Fn() -> CappedLog<std::io::Stderr> {
    let written = Arc::new(AtomicU64::new(0));
    move || CappedLog {
        inner: std::io::stderr(),
        written: written.clone(),
        max: LOG_MAX_BYTES,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_lines_stops_at_the_cap_with_a_notice() {
        let mut log = CappedLog::new(Vec::new(), 100);
        for _ in 0..1000 {
            log.write_all(b"virtio: the guest misused a register\n")
                .unwrap();
        }
        let out = String::from_utf8(log.get_ref().clone()).unwrap();
        assert_eq!(out.matches("misused").count(), 2);
        assert!(out.ends_with("the log reached 100 bytes; later lines are dropped\n"));
        assert!(out.len() < 200);
    }
}

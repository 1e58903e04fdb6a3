//! 8250 UART on COM1 (port 0x3f8, IRQ 4), emulated by `vm-superio`, with its
//! output sent to stdout, a file, or nowhere.

use std::fs::{File, OpenOptions};
use std::io::{LineWriter, Write};
use std::path::{Path, PathBuf};

use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use super::EventFdTrigger;
use crate::devices::bus::BusDevice;

/// COM1 base port.
pub const COM1_PORT: u64 = 0x3f8;
/// Number of UART registers.
pub const COM1_LEN: u64 = 8;

/// Most bytes a console file holds before it is rotated to `<file>.1`
/// (replacing the previous one): a guest printing without end costs the
/// host at most twice this, in what is often a tmpfs.
pub const CONSOLE_FILE_MAX: u64 = 512 << 10;

/// Where console bytes go. Line buffered: one write syscall per line, not
/// per byte (the guest writes one byte per VM exit).
pub enum SerialSink {
    /// Discarded.
    Off,
    /// The VMM's stdout (already line buffered by std).
    Stdout(std::io::Stdout),
    /// A log file, rotated at a size.
    File(RotatingFile),
}

impl SerialSink {
    /// Opens `path` for appending, rotated at [`CONSOLE_FILE_MAX`].
    pub fn file(path: &Path) -> std::io::Result<Self> {
        RotatingFile::open(path, CONSOLE_FILE_MAX).map(Self::File)
    }
}

/// A line-buffered log file that, past `max` bytes, is renamed to
/// `<path>.1` and started afresh.
pub struct RotatingFile {
    path: PathBuf,
    file: LineWriter<File>,
    written: u64,
    max: u64,
}

impl RotatingFile {
    /// Opens `path` for appending; what it already holds counts.
    pub fn open(path: &Path, max: u64) -> std::io::Result<Self> {
        let f = OpenOptions::new().create(true).append(true).open(path)?;
        let written = f.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            file: LineWriter::new(f),
            written,
            max,
        })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(&self.path, old)?;
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.file = LineWriter::new(f);
        self.written = 0;
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written.saturating_add(buf.len() as u64) > self.max {
            self.rotate()?;
        }
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Write for SerialSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Off => Ok(buf.len()),
            Self::Stdout(s) => s.write(buf),
            Self::File(f) => f.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Off => Ok(()),
            Self::Stdout(s) => s.flush(),
            Self::File(f) => f.flush(),
        }
    }
}

/// The COM1 UART as a port-I/O bus device.
pub struct SerialDevice {
    serial: Serial<EventFdTrigger, NoEvents, SerialSink>,
}

impl SerialDevice {
    /// A UART raising `irq` and writing to `sink`.
    pub fn new(irq: EventFdTrigger, sink: SerialSink) -> Self {
        Self {
            serial: Serial::new(irq, sink),
        }
    }

    /// Flushes buffered console output.
    pub fn flush(&mut self) {
        let _ = self.serial.writer_mut().flush();
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (1, Ok(off)) = (data.len(), u8::try_from(offset)) {
            data[0] = self.serial.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (1, Ok(off)) = (data.len(), u8::try_from(offset)) {
            if let Err(e) = self.serial.write(off, data[0]) {
                tracing::debug!("serial write: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EventFd;

    #[test]
    fn bytes_reach_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let irq = EventFdTrigger(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mut s = SerialDevice::new(irq, SerialSink::file(&path).unwrap());
        for b in b"hello\n" {
            s.write(0, &[*b]);
        }
        // Wrong access width is ignored, not a panic.
        s.write(0, &[1, 2]);
        let mut d = [0u8; 2];
        s.read(5, &mut d);
        s.flush();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "hello\n");
        // Line status register reports THR empty.
        let mut lsr = [0u8];
        s.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
    }

    /// A guest printing without end keeps at most twice the cap on the
    /// host: the file and the one rotated before it.
    #[test]
    fn a_console_flood_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut f = RotatingFile::open(&path, 4096).unwrap();
        for i in 0..10_000 {
            writeln!(f, "line {i} of a guest that never stops").unwrap();
        }
        f.flush().unwrap();
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let rotated = dir.path().join("console.log.1");
        assert!(size(&path) <= 4096, "{}", size(&path));
        assert!(size(&rotated) <= 4096 && size(&rotated) > 0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        let last = std::fs::read_to_string(&path).unwrap();
        assert!(last.ends_with("line 9999 of a guest that never stops\n"));
    }
}

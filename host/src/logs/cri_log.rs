//! Writes container output to the log file kubelet named, in the CRI log
//! format: one record per line, `<RFC3339Nano time> <stream> <tag> <text>`,
//! where the tag is `F` for a full line and `P` for a partial one (a line cut
//! at the record size limit, or output that ended without a newline).
//! `reopen` starts a new file at the same path (ReopenContainerLog, after
//! kubelet rotated the old one away).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Largest text in one record; longer lines are split into P records
/// (kubelet and containerd use 16 KiB).
pub const MAX_RECORD: usize = 16 * 1024;

/// Which stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One container's log file. Each stream keeps its own unfinished line, so
/// interleaved stdout/stderr chunks never mix within a record.
pub struct CriLogWriter {
    path: PathBuf,
    file: File,
    pending: [Vec<u8>; 2],
}

/// Opens the log for appending. A symlink, FIFO or device put where the
/// log goes is refused, not followed or blocked on.
fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    Ok(file)
}

impl CriLogWriter {
    /// Opens (creating, appending) the log at `path`.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            path: path.to_path_buf(),
            file: open_append(path)?,
            pending: [Vec::new(), Vec::new()],
        })
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a chunk of `stream` output; complete lines are written at
    /// once, a trailing partial line waits for more (or a flush).
    pub fn write(&mut self, stream: Stream, mut data: &[u8]) -> std::io::Result<()> {
        let idx = stream as usize;
        let mut out = Vec::new();
        while !data.is_empty() {
            let room = MAX_RECORD - self.pending[idx].len();
            match data.iter().position(|&b| b == b'\n') {
                Some(nl) if nl <= room => {
                    self.pending[idx].extend_from_slice(&data[..nl]);
                    record(&mut out, stream, 'F', &self.pending[idx]);
                    self.pending[idx].clear();
                    data = &data[nl + 1..];
                }
                _ if data.len() >= room => {
                    // Over the record limit without a newline: cut a P record.
                    self.pending[idx].extend_from_slice(&data[..room]);
                    record(&mut out, stream, 'P', &self.pending[idx]);
                    self.pending[idx].clear();
                    data = &data[room..];
                }
                _ => {
                    self.pending[idx].extend_from_slice(data);
                    data = &[];
                }
            }
        }
        if !out.is_empty() {
            self.file.write_all(&out)?;
        }
        Ok(())
    }

    /// Writes any unfinished lines as P records (the process's output ended
    /// without a newline, or it exited).
    pub fn flush_partial(&mut self) -> std::io::Result<()> {
        let mut out = Vec::new();
        for (idx, stream) in [(0, Stream::Stdout), (1, Stream::Stderr)] {
            if !self.pending[idx].is_empty() {
                record(&mut out, stream, 'P', &self.pending[idx]);
                self.pending[idx].clear();
            }
        }
        self.file.write_all(&out)
    }

    /// Closes the current file and opens a new one at the same path.
    pub fn reopen(&mut self) -> std::io::Result<()> {
        self.file = open_append(&self.path)?;
        Ok(())
    }
}

fn record(out: &mut Vec<u8>, stream: Stream, tag: char, text: &[u8]) {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    out.extend_from_slice(format!("{now} {} {tag} ", stream.name()).as_bytes());
    out.extend_from_slice(text);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(path: &Path) -> Vec<(String, String, String)> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| {
                let mut p = l.splitn(4, ' ');
                let ts = p.next().unwrap();
                assert!(
                    chrono::DateTime::parse_from_rfc3339(ts).is_ok(),
                    "bad time {ts}"
                );
                (
                    p.next().unwrap().into(),
                    p.next().unwrap().into(),
                    p.next().unwrap_or("").into(),
                )
            })
            .collect()
    }

    #[test]
    fn lines_are_full_records_per_stream() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c/0.log");
        let mut w = CriLogWriter::open(&path).unwrap();
        w.write(Stream::Stdout, b"hel").unwrap();
        w.write(Stream::Stderr, b"oops\n").unwrap();
        w.write(Stream::Stdout, b"lo\nworld\n\ntail").unwrap();
        w.flush_partial().unwrap();
        let r = records(&path);
        let want = [
            ("stderr", "F", "oops"),
            ("stdout", "F", "hello"),
            ("stdout", "F", "world"),
            ("stdout", "F", ""),
            ("stdout", "P", "tail"),
        ];
        assert_eq!(r.len(), want.len(), "{r:?}");
        for (got, want) in r.iter().zip(want) {
            assert_eq!((got.0.as_str(), got.1.as_str(), got.2.as_str()), want);
        }
    }

    #[test]
    fn long_lines_split_into_partial_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut w = CriLogWriter::open(&path).unwrap();
        let line = vec![b'x'; MAX_RECORD * 2 + 10];
        w.write(Stream::Stdout, &line).unwrap();
        w.write(Stream::Stdout, b"\n").unwrap();
        let r = records(&path);
        let tags: Vec<_> = r.iter().map(|x| x.1.as_str()).collect();
        assert_eq!(tags, ["P", "P", "F"]);
        let total: usize = r.iter().map(|x| x.2.len()).sum();
        assert_eq!(total, line.len());
    }

    #[test]
    fn reopen_writes_to_a_new_file_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut w = CriLogWriter::open(&path).unwrap();
        w.write(Stream::Stdout, b"before\n").unwrap();
        std::fs::rename(&path, dir.path().join("0.log.1")).unwrap();
        w.reopen().unwrap();
        w.write(Stream::Stdout, b"after\n").unwrap();
        assert_eq!(records(&path)[0].2, "after");
        assert_eq!(records(&dir.path().join("0.log.1"))[0].2, "before");
    }
}

//! One partition of a disk or disk image as a stream of its own bytes:
//! `Read`, `Write` and `Seek` over the byte range `[start, start + len)` of
//! a file, with positioned reads and writes (`pread`/`pwrite`), so several
//! windows on one open file never move each other's position. fatfs takes
//! such a stream to open the FAT file system inside one partition.
//!
//! Used by PID 1 (`init::disk`), `osctl image flash` (the config seed) and
//! the QEMU harness (the Raspberry Pi firmware's boot files). It is I/O, so
//! it cannot live in `machinery`; it is its own crate because those three
//! share no other crate that does I/O.

use std::borrow::Borrow;
use std::cell::Cell;
use std::fs::File;
use std::io::{Error, ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt as _;

/// The bytes `[start, start + len)` of a file (owned or borrowed) as a
/// stream positioned at 0. Reads stop at the end of the window; a write
/// that would start past it fails with `WriteZero`.
pub struct Window<'a, F: Borrow<File>> {
    file: F,
    start: u64,
    len: u64,
    pos: u64,
    /// When set, where in the file the last read started.
    read_at: Option<&'a Cell<u64>>,
}

impl<F: Borrow<File>> Window<'static, F> {
    /// The `len` bytes of `file` from byte `start`.
    pub fn new(file: F, start: u64, len: u64) -> Self {
        Window { file, start, len, pos: 0, read_at: None }
    }
}

impl<'a, F: Borrow<File>> Window<'a, F> {
    /// The same window, noting in `at` the file offset where each read
    /// starts (to find where a file's data lies on the disk).
    pub fn reporting_reads_to<'b>(self, at: &'b Cell<u64>) -> Window<'b, F> {
        Window { file: self.file, start: self.start, len: self.len, pos: self.pos, read_at: Some(at) }
    }

    /// How many bytes are left from the position to the end of the window,
    /// at most `want`.
    fn room(&self, want: usize) -> usize {
        self.len.saturating_sub(self.pos).min(want as u64) as usize
    }
}

impl<F: Borrow<File>> Read for Window<'_, F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(at) = self.read_at {
            at.set(self.start + self.pos);
        }
        let n = self.room(buf.len());
        let n = self.file.borrow().read_at(&mut buf[..n], self.start + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<F: Borrow<File>> Write for Window<'_, F> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.room(buf.len());
        if n == 0 && !buf.is_empty() {
            return Err(Error::from(ErrorKind::WriteZero));
        }
        let n = self.file.borrow().write_at(&buf[..n], self.start + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }

    /// Positioned writes go straight to the file: nothing is buffered here
    /// (the caller syncs the file when it needs the bytes on the device).
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<F: Borrow<File>> Seek for Window<'_, F> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| Error::from(ErrorKind::InvalidInput))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64-byte file holding 0, 1, …, 63.
    fn file() -> (tempfile::NamedTempFile, File) {
        let t = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(t.path(), (0u8..64).collect::<Vec<_>>()).unwrap();
        let f = File::options().read(true).write(true).open(t.path()).unwrap();
        (t, f)
    }

    #[test]
    fn reads_see_only_the_window_and_stop_at_its_end() {
        let (_t, f) = file();
        let mut w = Window::new(&f, 16, 8);
        let mut out = Vec::new();
        w.read_to_end(&mut out).unwrap();
        assert_eq!(out, (16u8..24).collect::<Vec<_>>());
        assert_eq!(w.seek(SeekFrom::End(-2)).unwrap(), 6);
        let mut two = [0u8; 4];
        assert_eq!(w.read(&mut two).unwrap(), 2);
        assert_eq!(&two[..2], &[22, 23]);
        assert_eq!(w.seek(SeekFrom::Current(-3)).unwrap(), 5);
        assert_eq!(w.seek(SeekFrom::Current(-6)).unwrap_err().kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn writes_land_inside_the_window_and_never_past_it() {
        let (t, f) = file();
        let mut w = Window::new(f, 8, 4);
        w.seek(SeekFrom::Start(2)).unwrap();
        assert_eq!(w.write(&[0xaa; 8]).unwrap(), 2, "only the room left is written");
        assert_eq!(w.write(&[0xbb]).unwrap_err().kind(), ErrorKind::WriteZero);
        let bytes = std::fs::read(t.path()).unwrap();
        assert_eq!(&bytes[8..14], &[8, 9, 0xaa, 0xaa, 12, 13]);
    }

    #[test]
    fn a_reporting_window_tells_where_in_the_file_each_read_starts() {
        let (_t, f) = file();
        let at = Cell::new(0);
        let mut w = Window::new(&f, 32, 16).reporting_reads_to(&at);
        w.seek(SeekFrom::Start(5)).unwrap();
        let mut b = [0u8; 3];
        w.read_exact(&mut b).unwrap();
        assert_eq!((at.get(), b), (37, [37, 38, 39]));
    }
}

//! The kernel log (`dmesg`), read from `/dev/kmsg`.

use std::fs::File;
use std::io::{ErrorKind, Read as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;

use machinery::api::DmesgRecord;
use std::os::fd::AsFd as _;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tokio::sync::mpsc;

/// Where kernel log records come from; a fake in unit tests.
pub trait KernelLog: Send + Sync {
    /// Streams the records in the buffer, then (with `follow`) new ones.
    fn records(&self, follow: bool) -> std::io::Result<mpsc::Receiver<DmesgRecord>>;
}

/// The real kernel log device.
#[derive(Debug)]
pub struct Kmsg {
    pub path: PathBuf,
}

impl Default for Kmsg {
    fn default() -> Self {
        Kmsg { path: "/dev/kmsg".into() }
    }
}

impl KernelLog for Kmsg {
    fn records(&self, follow: bool) -> std::io::Result<mpsc::Receiver<DmesgRecord>> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(&self.path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("open {}: {e}", self.path.display())))?;
        let (tx, rx) = mpsc::channel(256);
        std::thread::Builder::new().name("dmesg".into()).spawn(move || pump(file, follow, &tx))?;
        Ok(rx)
    }
}

/// Reads records until the buffer is drained (or, with `follow`, until the
/// receiver goes away), on its own thread: `/dev/kmsg` is a character device
/// that tokio cannot register safely, and `poll(2)` with a timeout lets the
/// thread notice a departed receiver.
fn pump(mut file: File, follow: bool, tx: &mpsc::Sender<DmesgRecord>) {
    // One read returns one record; records are at most 8 KiB.
    let mut buf = vec![0u8; 8192];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if let Some(rec) = parse_record(&buf[..n])
                    && tx.blocking_send(rec).is_err()
                {
                    return;
                }
            }
            // Records were overwritten before we read them: carry on.
            Err(e) if e.raw_os_error() == Some(nix::libc::EPIPE) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if !follow || tx.is_closed() {
                    return;
                }
                let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
                let _ = poll(&mut fds, PollTimeout::from(1000u16));
            }
            Err(_) => return,
        }
    }
}

/// Parses `prio,seq,usec,flags[,…];message\n[ continuation lines]`.
pub fn parse_record(raw: &[u8]) -> Option<DmesgRecord> {
    let text = String::from_utf8_lossy(raw);
    let (header, rest) = text.split_once(';')?;
    let mut fields = header.split(',');
    let prio: u32 = fields.next()?.parse().ok()?;
    let sequence = fields.next()?.parse().ok()?;
    let timestamp_us = fields.next()?.parse().ok()?;
    let message = rest.lines().next().unwrap_or("").to_string();
    Some(DmesgRecord { priority: prio & 7, sequence, timestamp_us, message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_records() {
        let r = parse_record(b"6,339,5140900,-;NET: Registered protocol family 10\n SUBSYSTEM=net\n").unwrap();
        assert_eq!((r.priority, r.sequence, r.timestamp_us), (6, 339, 5140900));
        assert_eq!(r.message, "NET: Registered protocol family 10");
        // Facility bits are dropped from the priority.
        assert_eq!(parse_record(b"30,1,2,-;x").unwrap().priority, 6);
        assert!(parse_record(b"garbage").is_none());
    }
}

//! The boot disk as one file: its GPT partitions by label, each a window
//! of bytes, the EFI partition's boot entries read and renamed through
//! `fatfs`, and the Raspberry Pi's FAT files (`autoboot.txt` rewritten in
//! place, `cmdline.txt`) — no mounts, no kernel FAT driver. PID 1 opens the
//! real disk (`/dev/vda`); host mode and tests open an image file the same
//! way.

use std::cell::Cell;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use machinery::layout::{self, Slot};
use machinery::slots::{BootState, sdboot};
use partition_window::Window as PartitionWindow;
use sha2::{Digest as _, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{path}: reading the partition table: {detail}")]
    Gpt { path: PathBuf, detail: String },
    #[error("{path}: no partition labelled {label}")]
    NoPartition { path: PathBuf, label: String },
    #[error("{path}: EFI partition: {op}: {source}")]
    Fat { path: PathBuf, op: String, source: std::io::Error },
    #[error("{path}: EFI partition: {what} needs {need} bytes, {free} are free")]
    EfiFull { path: PathBuf, what: String, need: u64, free: u64 },
    #[error("{path}: {what} reads back with sha256 {found}, {expected} was written: the disk did not keep it")]
    ReadBack { path: PathBuf, what: String, expected: String, found: String },
    #[error("{path}: partition {label}: {op}: {source}")]
    PartFat { path: PathBuf, label: String, op: String, source: std::io::Error },
    #[error("{path}: partition {label}: {detail}")]
    BootFile { path: PathBuf, label: String, detail: String },
    #[error(transparent)]
    Slot(#[from] machinery::slots::SlotError),
    #[error("{path}: {source}")]
    Record { path: PathBuf, source: std::io::Error },
}

/// One partition: where it is on the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub label: String,
    pub offset: u64,
    pub size: u64,
}

pub struct Disk {
    path: PathBuf,
    file: File,
    partitions: Vec<Partition>,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk").field("path", &self.path).field("partitions", &self.partitions).finish()
    }
}

impl Disk {
    /// Opens a disk (or image file) for reading and writing.
    pub fn open(path: &Path) -> Result<Disk, DiskError> {
        let gpt_err = |e: &dyn std::fmt::Display| DiskError::Gpt { path: path.to_path_buf(), detail: e.to_string() };
        let table = gpt::GptConfig::new().writable(false).open(path).map_err(|e| gpt_err(&e))?;
        let lb = gpt::disk::LogicalBlockSize::Lb512;
        let partitions = table
            .partitions()
            .values()
            .map(|p| {
                Ok(Partition {
                    label: p.name.clone(),
                    offset: p.bytes_start(lb).map_err(|e| gpt_err(&e))?,
                    size: p.bytes_len(lb).map_err(|e| gpt_err(&e))?,
                })
            })
            .collect::<Result<Vec<_>, DiskError>>()?;
        let file = File::options().read(true).write(true).open(path).map_err(|source| DiskError::Io {
            op: "open",
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Disk { path: path.to_path_buf(), file, partitions })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn partition(&self, label: &str) -> Result<&Partition, DiskError> {
        self.partitions
            .iter()
            .find(|p| p.label == label)
            .ok_or_else(|| DiskError::NoPartition { path: self.path.clone(), label: label.to_string() })
    }

    fn io(&self, op: &'static str) -> impl FnOnce(std::io::Error) -> DiskError + '_ {
        move |source| DiskError::Io { op, path: self.path.clone(), source }
    }

    /// Writes `data` at `at` bytes into partition `label` (bounds checked).
    pub fn write_at(&self, label: &str, at: u64, data: &[u8]) -> Result<(), DiskError> {
        let p = self.partition(label)?;
        if at + data.len() as u64 > p.size {
            return Err(DiskError::Io {
                op: "write past the end of a partition on",
                path: self.path.clone(),
                source: std::io::Error::from(std::io::ErrorKind::WriteZero),
            });
        }
        self.file.write_all_at(data, p.offset + at).map_err(self.io("write"))
    }

    /// Reads `buf.len()` bytes at `at` bytes into partition `label` (bounds
    /// checked).
    pub fn read_at(&self, label: &str, at: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let p = self.partition(label)?;
        if at + buf.len() as u64 > p.size {
            return Err(DiskError::Io {
                op: "read past the end of a partition on",
                path: self.path.clone(),
                source: std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
            });
        }
        self.file.read_exact_at(buf, p.offset + at).map_err(self.io("read"))
    }

    /// Flushes what was written to the device, then drops it from the page
    /// cache so that a read-back comes from the disk.
    pub fn sync(&self) -> Result<(), DiskError> {
        self.file.sync_all().map_err(self.io("fsync"))?;
        // Best effort: on a regular file the advice changes nothing.
        let _ = nix::fcntl::posix_fadvise(&self.file, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED);
        Ok(())
    }

    /// sha256 of the first `len` bytes of partition `label`.
    pub fn hash(&self, label: &str, len: u64) -> Result<String, DiskError> {
        let p = self.partition(label)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            self.file.read_exact_at(&mut buf[..n], p.offset + done).map_err(self.io("read"))?;
            h.update(&buf[..n]);
            done += n as u64;
        }
        Ok(machinery::bundle::hex(&h.finalize()))
    }

    /// Partition `label` as a stream of its own bytes (for fatfs).
    pub fn window(&self, label: &str) -> Result<Window<'_>, DiskError> {
        let p = self.partition(label)?;
        Ok(PartitionWindow::new(&self.file, p.offset, p.size))
    }

    /// The EFI partition's file system.
    pub fn efi(&self) -> Result<Efi<'_>, DiskError> {
        let p = self.partition(layout::EFI)?.clone();
        let window = PartitionWindow::new(&self.file, p.offset, p.size);
        let fs = fatfs::FileSystem::new(window, fatfs::FsOptions::new()).map_err(|source| DiskError::Fat {
            path: self.path.clone(),
            op: "open".into(),
            source,
        })?;
        Ok(Efi { fs, path: &self.path })
    }
}

/// A boot file found on a FAT partition, for writing in place: its bytes
/// and where its data starts on the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InPlace {
    pub bytes: Vec<u8>,
    pub offset: u64,
}

impl Disk {
    fn part_fat_err(&self, label: &str, op: String) -> impl FnOnce(std::io::Error) -> DiskError {
        let (path, label) = (self.path.clone(), label.to_string());
        move |source| DiskError::PartFat { path, label, op, source }
    }

    fn fat_fs<'a>(
        &'a self,
        label: &str,
        read_at: Option<&'a Cell<u64>>,
    ) -> Result<fatfs::FileSystem<Window<'a>>, DiskError> {
        let p = self.partition(label)?;
        let window = PartitionWindow::new(&self.file, p.offset, p.size);
        let window = match read_at {
            Some(at) => window.reporting_reads_to(at),
            None => window,
        };
        fatfs::FileSystem::new(window, fatfs::FsOptions::new()).map_err(self.part_fat_err(label, "open FAT".into()))
    }

    /// Reads a file of exactly `len` bytes (one sector) on FAT partition
    /// `label`, and finds where its data is on the disk: the position of
    /// fatfs's read of it, checked against the raw bytes there. Writing
    /// there later changes the file without touching its directory entry.
    pub fn find_in_place(&self, label: &str, file: &str, len: usize) -> Result<InPlace, DiskError> {
        let at = Cell::new(0);
        let fs = self.fat_fs(label, Some(&at))?;
        let name = file.trim_start_matches('/');
        let mut f = fs.root_dir().open_file(name).map_err(self.part_fat_err(label, format!("open {name}")))?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).map_err(self.part_fat_err(label, format!("read {name}")))?;
        let boot_file = |detail: String| DiskError::BootFile { path: self.path.clone(), label: label.into(), detail };
        if bytes.len() != len {
            return Err(boot_file(format!(
                "{name} is {} bytes, not {len}: it cannot be rewritten in place (an image not built for A/B?)",
                bytes.len()
            )));
        }
        // One read of a sector-sized file starting in its first cluster.
        f.seek(SeekFrom::Start(0)).map_err(self.part_fat_err(label, format!("seek {name}")))?;
        let mut first = vec![0u8; len];
        f.read_exact(&mut first).map_err(self.part_fat_err(label, format!("read {name}")))?;
        let offset = at.get();
        let mut raw = vec![0u8; len];
        self.file.read_exact_at(&mut raw, offset).map_err(self.io("read"))?;
        if raw != bytes || !offset.is_multiple_of(512) {
            return Err(boot_file(format!("{name}: its data is not one aligned sector at byte {offset}")));
        }
        Ok(InPlace { bytes, offset })
    }

    /// Overwrites a file found by [`Disk::find_in_place`] with bytes of the
    /// same length, and flushes it to the device.
    pub fn write_in_place(&self, at: &InPlace, bytes: &[u8]) -> Result<(), DiskError> {
        if bytes.len() != at.bytes.len() {
            return Err(DiskError::Io {
                op: "write a file in place (the length changed) on",
                path: self.path.clone(),
                source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
            });
        }
        self.file.write_all_at(bytes, at.offset).map_err(self.io("write"))?;
        self.file.sync_data().map_err(self.io("fsync"))
    }

    /// Reads a whole file from FAT partition `label`.
    pub fn read_fat_file(&self, label: &str, file: &str) -> Result<Vec<u8>, DiskError> {
        let fs = self.fat_fs(label, None)?;
        let name = file.trim_start_matches('/');
        let mut out = Vec::new();
        fs.root_dir()
            .open_file(name)
            .and_then(|mut f| f.read_to_end(&mut out))
            .map_err(self.part_fat_err(label, format!("read {name}")))?;
        Ok(out)
    }

    /// Sets `plinth.slot=` in the `cmdline.txt` of FAT partition `label`,
    /// in place (same length), and reads it back.
    pub fn set_cmdline_slot(&self, label: &str, slot: Slot) -> Result<(), DiskError> {
        let name = layout::RPI_CMDLINE_TXT.trim_start_matches('/');
        let boot_file = |detail: String| DiskError::BootFile { path: self.path.clone(), label: label.into(), detail };
        let text = String::from_utf8(self.read_fat_file(label, name)?)
            .map_err(|_| boot_file(format!("{name} is not text")))?;
        let at = text
            .find(layout::CMDLINE_SLOT)
            .map(|i| i + layout::CMDLINE_SLOT.len())
            .filter(|&i| matches!(text.as_bytes().get(i..i + 2), Some([b'a' | b'b', b' ' | b'\n' | b'\r' | b'\t'])))
            .ok_or_else(|| {
                boot_file(format!("{name} has no {}a or {}b", layout::CMDLINE_SLOT, layout::CMDLINE_SLOT))
            })?;
        let mut new = text.into_bytes();
        new[at] = slot.name().as_bytes()[0];
        {
            let fs = self.fat_fs(label, None)?;
            let mut f = fs.root_dir().open_file(name).map_err(self.part_fat_err(label, format!("open {name}")))?;
            f.write_all(&new).map_err(self.part_fat_err(label, format!("write {name}")))?;
            f.flush().map_err(self.part_fat_err(label, format!("flush {name}")))?;
            drop(f);
            fs.unmount().map_err(self.part_fat_err(label, "unmount".into()))?;
        }
        self.sync()?;
        let back = String::from_utf8_lossy(&self.read_fat_file(label, name)?).into_owned();
        if Slot::from_cmdline(&back) != Some(slot) {
            return Err(boot_file(format!("{name} reads back without {}{}", layout::CMDLINE_SLOT, slot.name())));
        }
        Ok(())
    }

    /// Whether the disk has the Raspberry Pi layout (`BOOT`, `BOOT-A`, `BOOT-B`).
    pub fn is_rpi(&self) -> bool {
        [layout::RPI_AUTOBOOT, layout::BOOT_A, layout::BOOT_B].iter().all(|l| self.partition(l).is_ok())
    }
}

/// A partition of the disk as a stream of its own bytes (for fatfs).
pub type Window<'a> = PartitionWindow<'a, &'a File>;

/// The EFI system partition: systemd-boot's entries, one UKI per slot.
pub struct Efi<'a> {
    fs: fatfs::FileSystem<Window<'a>>,
    path: &'a Path,
}

/// Where a new UKI is written before it is renamed into place: not a
/// `.efi`, so the boot loader never sees a half-written one.
const TEMP_ENTRY: &str = "plinth-new.tmp";

impl<'a> Efi<'a> {
    fn fat_err(&self, op: String) -> impl FnOnce(std::io::Error) -> DiskError + '_ {
        move |source| DiskError::Fat { path: self.path.to_path_buf(), op, source }
    }

    fn linux_dir(&self) -> Result<fatfs::Dir<'_, Window<'a>>, DiskError> {
        let dir = layout::EFI_LINUX_DIR.trim_start_matches('/');
        self.fs.root_dir().open_dir(dir).map_err(self.fat_err(format!("open {dir}")))
    }

    /// The file names in `/EFI/Linux`.
    pub fn entries(&self) -> Result<Vec<String>, DiskError> {
        let dir = self.linux_dir()?;
        let mut names = Vec::new();
        for e in dir.iter() {
            let e = e.map_err(self.fat_err("list /EFI/Linux".into()))?;
            if e.is_file() {
                names.push(e.file_name());
            }
        }
        Ok(names)
    }

    /// The boot state the entries describe.
    pub fn state(&self) -> Result<BootState, DiskError> {
        let names = self.entries()?;
        Ok(sdboot::from_names(names.iter().map(String::as_str)))
    }

    /// Renames and removes entries to turn `old` into `new`, in the order
    /// `sdboot::steps` gives.
    pub fn apply(&self, old: &BootState, new: &BootState) -> Result<(), DiskError> {
        let dir = self.linux_dir()?;
        for step in sdboot::steps(old, new) {
            match step {
                sdboot::Step::Remove(name) => dir.remove(&name).map_err(self.fat_err(format!("remove {name}")))?,
                sdboot::Step::Rename { from, to } => {
                    dir.rename(&from, &dir, &to).map_err(self.fat_err(format!("rename {from} to {to}")))?
                }
            }
        }
        Ok(())
    }

    /// Bytes free on the partition.
    pub fn free(&self) -> Result<u64, DiskError> {
        let s = self.fs.stats().map_err(self.fat_err("read the free space".into()))?;
        Ok(u64::from(s.free_clusters()) * u64::from(s.cluster_size()))
    }

    /// Writes `data` as the next entry under a temporary name (not seen by
    /// the boot loader); [`Efi::verify_staged`] reads it back (after a
    /// [`Disk::sync`]) and [`Efi::commit_entry`] names it.
    pub fn stage_entry(&self, data: &[u8]) -> Result<(), DiskError> {
        let dir = self.linux_dir()?;
        let _ = dir.remove(TEMP_ENTRY);
        let free = self.free()?;
        if data.len() as u64 > free {
            return Err(DiskError::EfiFull {
                path: self.path.to_path_buf(),
                what: "the new boot entry".into(),
                need: data.len() as u64,
                free,
            });
        }
        let mut f = dir.create_file(TEMP_ENTRY).map_err(self.fat_err(format!("create {TEMP_ENTRY}")))?;
        f.truncate().map_err(self.fat_err(format!("truncate {TEMP_ENTRY}")))?;
        f.write_all(data).map_err(self.fat_err(format!("write {TEMP_ENTRY}")))?;
        f.flush().map_err(self.fat_err(format!("flush {TEMP_ENTRY}")))?;
        Ok(())
    }

    /// Reads the staged entry back and compares it with what was written.
    pub fn verify_staged(&self, data: &[u8]) -> Result<(), DiskError> {
        let dir = self.linux_dir()?;
        let mut back = Vec::with_capacity(data.len());
        dir.open_file(TEMP_ENTRY)
            .and_then(|mut f| f.read_to_end(&mut back))
            .map_err(self.fat_err(format!("read back {TEMP_ENTRY}")))?;
        let (expected, found) = (hex_sha(data), hex_sha(&back));
        if expected != found {
            return Err(DiskError::ReadBack {
                path: self.path.to_path_buf(),
                what: format!("EFI/Linux/{TEMP_ENTRY}"),
                expected,
                found,
            });
        }
        Ok(())
    }

    /// Gives the staged entry its name: from here the boot loader sees it.
    pub fn commit_entry(&self, name: &str) -> Result<(), DiskError> {
        let dir = self.linux_dir()?;
        dir.rename(TEMP_ENTRY, &dir, name).map_err(self.fat_err(format!("rename {TEMP_ENTRY} to {name}")))
    }

    /// Flushes the file system and closes it.
    pub fn close(self) -> Result<(), DiskError> {
        let path = self.path.to_path_buf();
        self.fs.unmount().map_err(|source| DiskError::Fat { path, op: "unmount".into(), source })
    }

    /// The UKI of `slot`'s entry, if it has one.
    pub fn read_entry(&self, slot: Slot) -> Result<Option<Vec<u8>>, DiskError> {
        let state = self.state()?;
        let Some(name) = sdboot::file_name(slot, state.get(slot)) else { return Ok(None) };
        let mut out = Vec::new();
        self.linux_dir()?
            .open_file(&name)
            .and_then(|mut f| f.read_to_end(&mut out))
            .map_err(self.fat_err(format!("read {name}")))?;
        Ok(Some(out))
    }
}

pub fn hex_sha(data: &[u8]) -> String {
    machinery::bundle::hex(&Sha256::digest(data))
}

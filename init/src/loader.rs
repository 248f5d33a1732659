//! The boot loader back-ends behind one interface: where the A/B state
//! lives, how a slot's boot files are written, and how a trial is launched.
//! [`Loader::detect`] picks one from the disk's partitions:
//!
//! - **systemd-boot** (an `EFI` partition): the state is the UKI file names
//!   (`machinery::slots::sdboot`); the boot part is a UKI, written under a
//!   temporary name and renamed into place.
//! - **Raspberry Pi firmware** (`BOOT`, `BOOT-A`, `BOOT-B`): the state is
//!   `autoboot.txt`, rewritten in place one sector at a time, and the trial
//!   record on STATE (`machinery::slots::rpi`); the boot part is the whole
//!   boot partition, with `plinth.slot=` set in its `cmdline.txt`; a trial is
//!   launched by `reboot(2)` with `"0 tryboot"`.
//!
//! Every transition is computed in memory by `machinery::slots` and written
//! in the order it gives, each write durable before the next.

use std::path::{Path, PathBuf};

use machinery::bundle;
use machinery::layout::{self, Slot};
use machinery::slots::rpi::{self, AtBoot, Autoboot, PiState, Reboot, Record};
use machinery::slots::{BootState, sdboot};

use crate::disk::{Disk, DiskError, InPlace};

/// Reads a bundle part's bytes at an offset into a buffer (from the staged
/// payload).
pub type PartReader<'a> = dyn FnMut(u64, &mut [u8]) -> Result<(), DiskError> + 'a;

/// Tries a new slot gets under systemd-boot: one boot.
const SDBOOT_TRIES: u32 = 1;

/// The boot loader of a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loader {
    SdBoot,
    Rpi {
        /// The trial record (on STATE).
        record: PathBuf,
    },
}

impl Loader {
    /// The Raspberry Pi's when the disk has its partitions, else systemd-boot.
    pub fn detect(disk: &Disk, record: &Path) -> Loader {
        if disk.is_rpi() { Loader::Rpi { record: record.to_path_buf() } } else { Loader::SdBoot }
    }

    /// The bundle part carrying this loader's boot files.
    pub fn boot_part(&self) -> &'static str {
        match self {
            Loader::SdBoot => bundle::PART_UKI,
            Loader::Rpi { .. } => bundle::PART_BOOT,
        }
    }

    /// Bytes the boot part may take when written to `target`.
    pub fn room(&self, disk: &Disk, target: Slot) -> Result<u64, DiskError> {
        match self {
            Loader::SdBoot => {
                let efi = disk.efi()?;
                // The target's old entry makes room when it is removed.
                let old = efi.read_entry(target)?.map_or(0, |u| u.len() as u64);
                Ok(efi.free()? + old)
            }
            Loader::Rpi { .. } => Ok(disk.partition(target.boot_label())?.size),
        }
    }

    /// The boot state.
    pub fn state(&self, disk: &Disk) -> Result<BootState, DiskError> {
        match self {
            Loader::SdBoot => disk.efi()?.state(),
            Loader::Rpi { record } => Ok(Pi::open(disk, record)?.state.boot_state()),
        }
    }

    /// Before `target` is written: its boot entry goes first.
    pub fn clear(&self, disk: &Disk, target: Slot, booted: Slot) -> Result<(), DiskError> {
        match self {
            Loader::SdBoot => {
                let efi = disk.efi()?;
                let old = efi.state()?;
                let mut cleared = old;
                cleared.clear(target, booted)?;
                efi.apply(&old, &cleared)?;
                efi.close()?;
            }
            Loader::Rpi { record } => {
                let pi = Pi::open(disk, record)?;
                let writes = pi.state.clear(target, booted)?;
                pi.write(disk, writes)?;
            }
        }
        // On the disk before the root is touched: without the flush the
        // kernel may write root blocks back before the entry's removal.
        disk.sync()
    }

    /// Writes `target`'s boot files from the bundle's boot part (`size`
    /// bytes with hash `sha256`, read through `read`) and reads them back;
    /// the boot loader does not see them until [`Loader::arm`].
    pub fn write_boot(
        &self,
        disk: &Disk,
        target: Slot,
        size: u64,
        sha256: &str,
        read: &mut PartReader<'_>,
    ) -> Result<(), DiskError> {
        match self {
            Loader::SdBoot => {
                let mut image = vec![0u8; size as usize];
                read(0, &mut image)?;
                machinery::pe::set_uki_slot(&mut image, target).map_err(|e| DiskError::BootFile {
                    path: disk.path().to_path_buf(),
                    label: layout::EFI.into(),
                    detail: format!("the bundle's UKI: {e}"),
                })?;
                let efi = disk.efi()?;
                efi.stage_entry(&image)?;
                disk.sync()?;
                efi.verify_staged(&image)
            }
            Loader::Rpi { .. } => {
                let label = target.boot_label();
                copy_verified(disk, label, size, sha256, read)?;
                disk.set_cmdline_slot(label, target)
            }
        }
    }

    /// `target` is written and read back: the next boot (or, on a Pi, the
    /// next reboot) tries it.
    pub fn arm(&self, disk: &Disk, target: Slot) -> Result<(), DiskError> {
        match self {
            Loader::SdBoot => {
                let efi = disk.efi()?;
                let cleared = efi.state()?;
                let mut armed = cleared;
                armed.arm_trial(target, SDBOOT_TRIES);
                efi.apply(&cleared, &armed)?;
                disk.sync()?;
                let name = sdboot::file_name(target, armed.get(target)).unwrap_or_default();
                efi.commit_entry(&name)?;
                efi.close()?;
            }
            Loader::Rpi { record } => {
                let pi = Pi::open(disk, record)?;
                let writes = pi.state.arm(target, rpi::TRIAL_TRIES)?;
                pi.write(disk, writes)?;
            }
        }
        disk.sync()
    }

    /// Commits the slot on trial that is running.
    pub fn commit(&self, disk: &Disk, booted: Slot) -> Result<(), DiskError> {
        match self {
            Loader::SdBoot => {
                let efi = disk.efi()?;
                let old = efi.state()?;
                let mut new = old;
                new.commit(booted);
                efi.apply(&old, &new)?;
                efi.close()?;
            }
            Loader::Rpi { record } => {
                let pi = Pi::open(disk, record)?;
                let writes = pi.state.commit(booted)?;
                pi.write(disk, writes)?;
            }
        }
        // A commit lost to a power cut would fail the slot at its next boot.
        disk.sync()
    }

    /// Makes the other, committed slot the one that boots next.
    pub fn rollback(&self, disk: &Disk, booted: Slot) -> Result<Slot, DiskError> {
        let target = match self {
            Loader::SdBoot => {
                let efi = disk.efi()?;
                let old = efi.state()?;
                let mut new = old;
                let target = new.rollback(booted)?;
                efi.apply(&old, &new)?;
                efi.close()?;
                target
            }
            Loader::Rpi { record } => {
                let pi = Pi::open(disk, record)?;
                let (target, writes) = pi.state.rollback(booted)?;
                pi.write(disk, writes)?;
                target
            }
        };
        disk.sync()?;
        Ok(target)
    }

    /// The slot on trial did not become healthy: on a Pi it is failed now,
    /// so the committed slot does not launch it again (systemd-boot's one
    /// try is already spent).
    pub fn give_up(&self, disk: &Disk, booted: Slot) -> Result<(), DiskError> {
        match self {
            Loader::SdBoot => Ok(()),
            Loader::Rpi { record } => {
                let pi = Pi::open(disk, record)?;
                let writes = pi.state.give_up(booted);
                pi.write(disk, writes)
            }
        }
    }

    /// Just before a reboot: on a Pi with a trial armed and tries left, the
    /// try is counted on STATE and the reboot must be a tryboot.
    pub fn prepare_reboot(&self, disk: &Disk, booted: Slot) -> Result<Reboot, DiskError> {
        match self {
            Loader::SdBoot => Ok(Reboot::Normal),
            Loader::Rpi { record } => {
                let pi = Pi::open(disk, record)?;
                let (how, writes) = pi.state.launch(booted);
                pi.write(disk, writes)?;
                Ok(how)
            }
        }
    }

    /// At boot: what this boot is, after finishing what a power cut
    /// interrupted (systemd-boot needs nothing: its renames are the state).
    pub fn at_boot(&self, disk: &Disk, booted: Slot) -> Result<AtBoot, DiskError> {
        match self {
            Loader::SdBoot => Ok(AtBoot::Committed),
            Loader::Rpi { record } => {
                let pi = Pi::open(disk, record)?;
                let (at, writes) = pi.state.at_boot(booted);
                pi.write(disk, writes)?;
                Ok(at)
            }
        }
    }
}

/// The Pi's state as read from the disk and STATE, with where to write it.
struct Pi<'a> {
    state: PiState,
    autoboot: InPlace,
    record: &'a Path,
}

impl<'a> Pi<'a> {
    fn open(disk: &Disk, record: &'a Path) -> Result<Pi<'a>, DiskError> {
        let autoboot = disk.find_in_place(layout::RPI_AUTOBOOT, layout::RPI_AUTOBOOT_TXT, rpi::AUTOBOOT_LEN)?;
        let parsed =
            Autoboot::parse(&autoboot.bytes, layout::RPI_BOOT_PARTITIONS).map_err(|e| DiskError::BootFile {
                path: disk.path().to_path_buf(),
                label: layout::RPI_AUTOBOOT.into(),
                detail: e.to_string(),
            })?;
        let text = match std::fs::read_to_string(record) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(DiskError::Record { path: record.to_path_buf(), source }),
        };
        let rec = Record::parse(&text).unwrap_or_else(|e| {
            // Not knowing what the other slot holds, never boot it.
            tracing::warn!("{}: {e}; treating slot {} as empty", record.display(), parsed.committed.other().name());
            Some(Record { slot: parsed.committed.other(), other: rpi::Other::Empty })
        });
        Ok(Pi { state: PiState { autoboot: parsed, record: rec }, autoboot, record })
    }

    /// Writes in order, each durable before the next.
    fn write(&self, disk: &Disk, writes: Vec<rpi::Write>) -> Result<(), DiskError> {
        for w in writes {
            match w {
                rpi::Write::Autoboot(a) => {
                    disk.write_in_place(&self.autoboot, a.encode(layout::RPI_BOOT_PARTITIONS).as_bytes())?
                }
                rpi::Write::Record(r) => write_record(self.record, &Record::encode(r))?,
            }
        }
        Ok(())
    }
}

/// Copies `size` bytes from `read` into partition `label`, flushes them,
/// and reads them back against `sha256`.
pub fn copy_verified(
    disk: &Disk,
    label: &str,
    size: u64,
    sha256: &str,
    read: &mut PartReader<'_>,
) -> Result<(), DiskError> {
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < size {
        let n = (size - at).min(buf.len() as u64) as usize;
        read(at, &mut buf[..n])?;
        disk.write_at(label, at, &buf[..n])?;
        at += n as u64;
    }
    disk.sync()?;
    let back = disk.hash(label, size)?;
    if back != sha256 {
        return Err(DiskError::ReadBack {
            path: disk.path().to_path_buf(),
            what: label.into(),
            expected: sha256.into(),
            found: back,
        });
    }
    Ok(())
}

/// Writes the trial record atomically and durably (temp, fsync, rename,
/// fsync the directory).
fn write_record(path: &Path, text: &str) -> Result<(), DiskError> {
    let err = |source| DiskError::Record { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    crate::store::write_private(path, text.as_bytes()).map_err(err)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    }
    Ok(())
}

/// Host mode's stand-in for the boot loader at power-on; returns the slot
/// "booted". systemd-boot: pick the entry, count a try down. The Pi
/// firmware: the `[tryboot]` partition when the one-shot flag (a file
/// beside the image, set by a tryboot reboot) is there, else the
/// committed one; the slot is what that partition's `cmdline.txt` says,
/// as the kernel would be told.
pub fn simulate_power_on(disk_path: &Path) -> Result<Slot, DiskError> {
    let disk = Disk::open(disk_path)?;
    if !disk.is_rpi() {
        let efi = disk.efi()?;
        let old = efi.state()?;
        let mut new = old;
        let slot = new.power_on().unwrap_or(Slot::A);
        efi.apply(&old, &new)?;
        efi.close()?;
        return Ok(slot);
    }
    let at = disk.find_in_place(layout::RPI_AUTOBOOT, layout::RPI_AUTOBOOT_TXT, rpi::AUTOBOOT_LEN)?;
    let boot_file = |detail: String| DiskError::BootFile {
        path: disk_path.to_path_buf(),
        label: layout::RPI_AUTOBOOT.into(),
        detail,
    };
    let a = Autoboot::parse(&at.bytes, layout::RPI_BOOT_PARTITIONS).map_err(|e| boot_file(e.to_string()))?;
    let flag = tryboot_flag(disk_path);
    let slot = if std::fs::remove_file(&flag).is_ok() { a.tryboot } else { a.committed };
    let cmdline = disk.read_fat_file(slot.boot_label(), layout::RPI_CMDLINE_TXT)?;
    Slot::from_cmdline(&String::from_utf8_lossy(&cmdline))
        .ok_or_else(|| boot_file(format!("{}'s cmdline.txt names no slot", slot.boot_label())))
}

/// Host mode: where a tryboot reboot leaves the firmware's one-shot flag.
pub fn tryboot_flag(disk: &Path) -> PathBuf {
    let mut name = disk.as_os_str().to_owned();
    name.push(".tryboot");
    PathBuf::from(name)
}

//! `osctl image flash`: writes a Plinth image to an SD card or USB stick.
//!
//! Plan first, then write: every check that can refuse (the image's framing
//! and size, its board, the device's use, size and kind, the config) runs
//! before the device is opened for writing, so a refusal writes nothing.
//! Then the image streams onto the device in 4 MiB writes (decompressed on
//! the way), is flushed, read back past the page cache and compared chunk by
//! chunk with what was written; last, the signed config goes onto the first
//! FAT partition (`seed`). Design note: `docs/flashing.md`.

pub mod host;
pub mod seed;
pub mod source;

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt as _, FileTypeExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest as _, Sha256};

pub use host::{DiskInfo, Host};
pub use source::Image;

/// The size of one write (and of one read-back comparison).
pub const CHUNK: usize = 4 << 20;
/// Flushed this often, so the progress bar shows what the card took, not
/// what the page cache did.
const SYNC_EVERY: u64 = 64 << 20;
/// Disks bigger than this are refused without `--force`: SD cards and USB
/// sticks are smaller, the disks of a workstation are not.
pub const MAX_SIZE: u64 = 256 << 30;

const MIB: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{path}: {why}; nothing was written")]
    BadImage { path: PathBuf, why: String },
    #[error("refusing {device}: {why}; nothing was written")]
    Refused { device: PathBuf, why: String },
    #[error("{0}")]
    Usage(String),
    #[error("too small: {image} needs {need} MiB, {device} has {has} MiB; nothing was written")]
    TooSmall { image: PathBuf, device: PathBuf, need: u64, has: u64 },
    #[error(
        "{image}: {why} after {at} bytes: {device} now holds a partial image (bytes 0-{at}) and is unusable{wiped}; flash it again with a good image"
    )]
    Midway { image: PathBuf, device: PathBuf, at: u64, why: String, wiped: &'static str },
    #[error("writing {device} at byte {at}: {source}: the device is unusable; check the card and flash it again")]
    Write { device: PathBuf, at: u64, source: std::io::Error },
    #[error(
        "{device} does not read back what was written: bytes {start}-{end} differ ({bad} of {chunks} 4 MiB chunks): the device is unusable; it may be failing, or smaller than it claims (counterfeit); try another"
    )]
    ReadBack { device: PathBuf, start: u64, end: u64, bad: usize, chunks: usize },
    #[error(
        "{image}: its content has sha256 {found}, its manifest {manifest} says {expected}: the image file is damaged and so is what {device} now holds; rebuild or download the image again"
    )]
    Manifest { image: PathBuf, manifest: PathBuf, device: PathBuf, expected: String, found: String },
    #[error("{device}: the image was written and verified, but the config was not: {source}")]
    Seed { device: PathBuf, source: seed::SeedError },
}

impl FlashError {
    /// Nothing was written: a check refused (osctl's exit code 4).
    pub fn is_refusal(&self) -> bool {
        matches!(self, FlashError::BadImage { .. } | FlashError::Refused { .. } | FlashError::TooSmall { .. })
    }
}

/// What to flash, checked and planned; nothing written yet.
#[derive(Debug)]
pub struct Plan {
    pub image: Image,
    pub device: PathBuf,
    /// `None` for a regular file standing in for a device.
    pub disk: Option<DiskInfo>,
    /// The device's capacity in bytes.
    pub capacity: u64,
}

/// What was flashed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub image: PathBuf,
    pub device: PathBuf,
    pub format: &'static str,
    pub bytes: u64,
    pub sha256: String,
    pub write_seconds: f64,
    pub verify_seconds: f64,
    /// `LABEL:/plinth/config.signed` when a config was put on the device.
    pub seed: Option<String>,
}

/// The checks on a whole disk, by kernel name: not a partition, nothing on
/// it mounted, not the running system's, not held by device-mapper or RAID,
/// a medium present, and (without `force`) removable and not huge.
pub fn check_disk(host: &Host, name: &str, force: bool) -> Result<DiskInfo, FlashError> {
    let device = PathBuf::from(format!("/dev/{name}"));
    let refuse = |why: String| FlashError::Refused { device: device.clone(), why };
    if !host.exists(name) {
        return Err(refuse("the kernel lists no block device of that name (`osctl image flash --list`)".into()));
    }
    if let Some(disk) = host.parent_disk(name) {
        return Err(refuse(format!("it is a partition of /dev/{disk}: flash the whole device, --device /dev/{disk}")));
    }
    let beneath = host.disks_of(name);
    if !beneath.contains(name) {
        let disks: Vec<String> = beneath.iter().map(|d| format!("/dev/{d}")).collect();
        return Err(refuse(format!(
            "it is a device-mapper or RAID device built on {}: flash a disk itself",
            disks.join(", ")
        )));
    }
    let uses = host.uses();
    let mine: Vec<_> = uses.iter().filter(|u| u.disk == name).collect();
    if let Some(u) = mine.iter().find(|u| u.system) {
        return Err(refuse(format!("it holds the running system ({}): never flash the disk you run from", u.what)));
    }
    if !mine.is_empty() {
        let what: Vec<&str> = mine.iter().map(|u| u.what.as_str()).collect();
        return Err(refuse(format!("it is mounted ({}): unmount it first (umount /dev/{name}*)", what.join(", "))));
    }
    let holders = host.holders(name);
    if !holders.is_empty() {
        return Err(refuse(format!(
            "it is in use by {} (LVM, LUKS or RAID): stop that first",
            holders.iter().map(|h| format!("/dev/{h}")).collect::<Vec<_>>().join(", ")
        )));
    }
    let info = host.disk(name, &uses).ok_or_else(|| refuse("its size cannot be read from sysfs".into()))?;
    if info.size == 0 {
        return Err(refuse("it has no medium (is the card in the reader?)".into()));
    }
    if !force && info.size > MAX_SIZE {
        return Err(refuse(format!(
            "it is {} GiB, bigger than SD cards and USB sticks are (limit {} GiB): pass --force if you mean it",
            info.size >> 30,
            MAX_SIZE >> 30
        )));
    }
    if !force && !info.is_removable_media() {
        return Err(refuse(format!(
            "it is not removable (a {} disk, {}): pass --force if you mean it",
            info.transport,
            if info.model.is_empty() { "no model" } else { &info.model }
        )));
    }
    Ok(info)
}

/// Checks everything and measures the image; writes nothing.
pub fn plan(
    host: &Host,
    image: &Path,
    device: &Path,
    board: Option<&str>,
    force: bool,
    device_is_file: bool,
) -> Result<Plan, FlashError> {
    let image = Image::open(image)?;
    if let Some(want) = board {
        match &image.manifest {
            None => {
                return Err(FlashError::BadImage {
                    path: image.path.clone(),
                    why: format!(
                        "cannot tell which board it was built for: {} is missing (image-builder writes it beside the image); drop --board to flash it anyway",
                        source::manifest_path(&image.path).display()
                    ),
                });
            }
            Some((path, m)) if m.board != want => {
                return Err(FlashError::BadImage {
                    path: image.path.clone(),
                    why: format!("it was built for {}, not {want} ({})", m.board, path.display()),
                });
            }
            Some(_) => {}
        }
    }
    let meta = std::fs::metadata(device).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => FlashError::Refused {
            device: device.to_path_buf(),
            why: "no such device (`osctl image flash --list` shows the disks)".into(),
        },
        _ => FlashError::Io { op: "stat", path: device.to_path_buf(), source },
    })?;
    let (disk, capacity) = if device_is_file {
        if !meta.file_type().is_file() {
            return Err(FlashError::Usage(format!(
                "--device-is-file stands a regular file in for a disk (tests); {} is not a regular file",
                device.display()
            )));
        }
        (None, meta.len())
    } else {
        if !meta.file_type().is_block_device() {
            return Err(FlashError::Refused {
                device: device.to_path_buf(),
                why: "it is not a block device (an SD card or USB stick is /dev/sdX or /dev/mmcblkN; `osctl image flash --list` shows them)".into(),
            });
        }
        let real = std::fs::canonicalize(device).map_err(|source| FlashError::Io {
            op: "resolve",
            path: device.to_path_buf(),
            source,
        })?;
        let name = real.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let info = check_disk(host, &name, force)?;
        let size = info.size;
        (Some(info), size)
    };
    if image.size > capacity {
        return Err(FlashError::TooSmall {
            image: image.path.clone(),
            device: device.to_path_buf(),
            need: image.size.div_ceil(MIB),
            has: capacity / MIB,
        });
    }
    Ok(Plan { image, device: device.to_path_buf(), disk, capacity })
}

/// Opens the planned device for writing: a block device exclusively, which
/// the kernel refuses while anything has it mounted (a second guard).
fn open_device(plan: &Plan) -> Result<File, FlashError> {
    let mut opts = File::options();
    opts.read(true).write(true);
    if plan.disk.is_some() {
        opts.custom_flags(nix::fcntl::OFlag::O_EXCL.bits());
    }
    opts.open(&plan.device).map_err(|source| match source.raw_os_error() {
        Some(code) if code == nix::errno::Errno::EBUSY as i32 => FlashError::Refused {
            device: plan.device.clone(),
            why: "the kernel says it is busy (mounted, or held by another program)".into(),
        },
        _ => FlashError::Io { op: "open", path: plan.device.clone(), source },
    })
}

/// Drops a device's pages from the page cache, so the next read comes from
/// the device (on a regular file it changes nothing that matters).
pub(crate) fn drop_cache(f: &File) {
    let _ = nix::fcntl::posix_fadvise(f, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED);
}

/// Fills `buf` from `r`; fewer bytes only at the end of the stream.
fn fill(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

struct Written {
    bytes: u64,
    sha256: String,
    chunks: Vec<[u8; 32]>,
}

/// Streams the image onto the device; on a damaged image mid-way, zeroes
/// the first MiB (the partition tables) so that nothing boots half an image.
fn write_image(plan: &Plan, dev: &File, bar: &indicatif::ProgressBar) -> Result<Written, FlashError> {
    let mut src = plan.image.reader()?;
    let mut buf = vec![0u8; CHUNK];
    let mut whole = Sha256::new();
    let mut chunks = Vec::with_capacity(plan.image.size.div_ceil(CHUNK as u64) as usize);
    let mut at = 0u64;
    let midway = |at: u64, why: String| {
        let wiped = dev.write_all_at(&vec![0u8; MIB.min(at) as usize], 0).and_then(|_| dev.sync_all()).is_ok();
        FlashError::Midway {
            image: plan.image.path.clone(),
            device: plan.device.clone(),
            at,
            why,
            wiped: if wiped && at > 0 { " (its partition table is erased, so it boots nothing)" } else { "" },
        }
    };
    loop {
        let n = fill(&mut src, &mut buf).map_err(|e| midway(at, format!("the image is damaged or truncated ({e})")))?;
        if n == 0 {
            break;
        }
        if at + n as u64 > plan.image.size {
            return Err(midway(at, format!("the image holds more than the {} bytes it declares", plan.image.size)));
        }
        dev.write_all_at(&buf[..n], at).map_err(|source| FlashError::Write {
            device: plan.device.clone(),
            at,
            source,
        })?;
        whole.update(&buf[..n]);
        chunks.push(Sha256::digest(&buf[..n]).into());
        at += n as u64;
        if at.is_multiple_of(SYNC_EVERY) {
            dev.sync_data().map_err(|source| FlashError::Write { device: plan.device.clone(), at, source })?;
        }
        bar.set_position(at);
    }
    if at < plan.image.size {
        return Err(midway(at, format!("the image ended early, at {at} of the {} bytes it declares", plan.image.size)));
    }
    dev.sync_all().map_err(|source| FlashError::Write { device: plan.device.clone(), at, source })?;
    Ok(Written { bytes: at, sha256: machinery::bundle::hex(&whole.finalize()), chunks })
}

/// Reads the written bytes back from the device and compares them chunk
/// by chunk; names the range that differs.
fn verify(plan: &Plan, dev: &File, w: &Written, bar: &indicatif::ProgressBar) -> Result<(), FlashError> {
    drop_cache(dev);
    let mut buf = vec![0u8; CHUNK];
    let mut bad = Vec::new();
    for (i, expected) in w.chunks.iter().enumerate() {
        let at = i as u64 * CHUNK as u64;
        let n = (w.bytes - at).min(CHUNK as u64) as usize;
        dev.read_exact_at(&mut buf[..n], at).map_err(|source| FlashError::Io {
            op: "read back",
            path: plan.device.clone(),
            source,
        })?;
        if Sha256::digest(&buf[..n]).as_slice() != expected {
            bad.push(i);
        }
        bar.set_position(at + n as u64);
    }
    match (bad.first(), bad.last()) {
        (Some(&first), Some(&last)) => Err(FlashError::ReadBack {
            device: plan.device.clone(),
            start: first as u64 * CHUNK as u64,
            end: ((last as u64 + 1) * CHUNK as u64).min(w.bytes),
            bad: bad.len(),
            chunks: w.chunks.len(),
        }),
        _ => Ok(()),
    }
}

/// Writes the plan: the image, flushed and read back, then the seed config
/// (an envelope), flushed and read back.
pub fn execute(plan: &Plan, seed_envelope: Option<&[u8]>) -> Result<Report, FlashError> {
    let dev = open_device(plan)?;
    let name = plan.device.display().to_string();
    let t = Instant::now();
    let bar = crate::output::progress(plan.image.size, &format!("writing {name}"));
    let written = write_image(plan, &dev, &bar);
    bar.finish_and_clear();
    let written = written?;
    let write_seconds = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let bar = crate::output::progress(written.bytes, &format!("verifying {name}"));
    let verified = verify(plan, &dev, &written, &bar);
    bar.finish_and_clear();
    verified?;
    let verify_seconds = t.elapsed().as_secs_f64();
    if let Some((path, m)) = &plan.image.manifest
        && let Some(expected) = m.image().map(|p| &p.sha256)
        && *expected != written.sha256
    {
        return Err(FlashError::Manifest {
            image: plan.image.path.clone(),
            manifest: path.clone(),
            device: plan.device.clone(),
            expected: expected.clone(),
            found: written.sha256,
        });
    }
    let seed = match seed_envelope {
        Some(env) => {
            let part = seed::write(&plan.device, &dev, env)
                .map_err(|source| FlashError::Seed { device: plan.device.clone(), source })?;
            Some(format!("{}:{}", part.label, machinery::layout::SEED_CONFIG))
        }
        None => None,
    };
    Ok(Report {
        image: plan.image.path.clone(),
        device: plan.device.clone(),
        format: plan.image.format.name(),
        bytes: written.bytes,
        sha256: written.sha256,
        write_seconds,
        verify_seconds,
        seed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_partitions_mounted_system_and_huge_disks() {
        let (_t, host) = host::tests::fake();
        let why = |name: &str, force: bool| check_disk(&host, name, force).unwrap_err().to_string();
        assert!(why("vda", true).contains("holds the running system (/ is on vda)"));
        assert!(why("sda", true).contains("holds the running system (swap is on sda2)"));
        assert!(why("mmcblk0", false).contains("it is mounted (mmcblk0p1 is mounted on /media/my card)"));
        assert!(why("sdb1", false).contains("partition of /dev/sdb: flash the whole device, --device /dev/sdb"));
        assert!(why("sdc", false).contains("no medium"));
        assert!(why("nope", false).contains("no block device"));
        let ok = check_disk(&host, "sdb", false).unwrap();
        assert_eq!(ok.size, 62333952 * 512);
        // A 1 TB USB disk: only with --force.
        std::fs::write(host.sys.join("block/sdb/size"), format!("{}\n", 2u64 << 30)).unwrap();
        assert!(why("sdb", false).contains("1024 GiB, bigger than SD cards"));
        assert!(check_disk(&host, "sdb", true).is_ok());
        // A fixed SATA disk nothing uses: only with --force.
        let fixed = host.sys.join("devices/pci0000:00/ata2/host1/block/sdd");
        std::fs::create_dir_all(&fixed).unwrap();
        std::fs::write(fixed.join("size"), "1000000\n").unwrap();
        std::fs::write(fixed.join("removable"), "0\n").unwrap();
        std::os::unix::fs::symlink(&fixed, host.sys.join("block/sdd")).unwrap();
        std::os::unix::fs::symlink(&fixed, host.sys.join("class/block/sdd")).unwrap();
        assert!(why("sdd", false).contains("not removable (a sata disk"));
        assert!(check_disk(&host, "sdd", true).is_ok());
    }

    /// The disk this machine runs from (found in /proc/self/mountinfo) is
    /// refused, even with --force; the check only reads.
    #[test]
    fn refuses_the_real_system_disk() {
        let host = Host::real();
        let Some(root) = host.uses().into_iter().find(|u| u.system) else {
            eprintln!("/ is not on a block device here (a container?): nothing to check");
            return;
        };
        let err = check_disk(&host, &root.disk, true).unwrap_err();
        assert!(err.is_refusal());
        assert!(err.to_string().contains("holds the running system"), "{err}");
    }
}

//! A/B upgrades on the node: receive a bundle, check it, write the slot
//! that is not running, arm a one-time trial boot; at boot, commit a slot
//! on trial once the node is healthy; roll back on request.
//!
//! The order is what makes it safe:
//! 1. the signed header is verified, and the board and version checked,
//!    before any byte is kept;
//! 2. the payload is staged on EPHEMERAL while each part is hashed: a
//!    truncated or corrupted bundle is refused with both slots untouched;
//! 3. only then is the other slot's boot entry removed, its root written
//!    and read back, its UKI written and read back under a temporary name;
//! 4. the running slot is demoted and the new entry renamed into place with
//!    one try (`machinery::slots`): a power cut before this step boots the
//!    old slot (the new one has no entry), after it the boot loader tries the
//!    new slot once and falls back by itself.

use std::io::{Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use machinery::api::{self, upgrade_chunk::Chunk};
use machinery::bundle::{self, BundleError, BundleManifest, Header};
use machinery::layout::{self, Slot};
use machinery::signing::VerifyingKey;
use machinery::slots::{BootState, View, sdboot};
use sha2::{Digest as _, Sha256};
use tokio_stream::{Stream, StreamExt as _};
use tonic::Status;

use crate::disk::{Disk, DiskError};
use crate::journal::Journal;
use crate::supervisor::event;

/// Tries a new slot gets: one boot.
const TRIAL_TRIES: u32 = 1;

/// Where the node's disk is and what it runs.
#[derive(Debug, Clone)]
pub struct SlotSettings {
    /// The whole boot disk (`/dev/vda`), or an image file in host mode.
    pub disk: PathBuf,
    /// The slot this boot runs from.
    pub booted: Slot,
    /// The board the running image was built for.
    pub board: String,
    /// The running Plinth version.
    pub version: String,
    /// Record of the version written to each slot (on STATE).
    pub record: PathBuf,
    /// Where a bundle is staged while it arrives (on EPHEMERAL).
    pub stage_dir: PathBuf,
    /// How long a slot on trial has to become healthy before init gives up
    /// and reboots (the boot loader then falls back).
    pub health_timeout: Duration,
}

pub struct Slots {
    settings: SlotSettings,
    trusted: VerifyingKey,
    events: Arc<Journal<api::Event>>,
    busy: tokio::sync::Mutex<()>,
}

fn refused(e: BundleError) -> Status {
    match e {
        BundleError::Signature(_) => Status::permission_denied(format!("upgrade refused: {e}")),
        _ => Status::failed_precondition(format!("upgrade refused: {e}")),
    }
}

fn disk_status(e: DiskError) -> Status {
    match e {
        DiskError::EfiFull { .. } => Status::resource_exhausted(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

fn io_status(op: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Status {
    let what = format!("{op} {}", path.display());
    move |e| {
        if e.raw_os_error() == Some(nix::libc::ENOSPC) {
            Status::resource_exhausted(format!("{what}: no space left to stage the bundle: {e}"))
        } else {
            Status::internal(format!("{what}: {e}"))
        }
    }
}

/// The versions written to each slot, kept on STATE.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct Record {
    #[serde(default)]
    a: String,
    #[serde(default)]
    b: String,
}

impl Record {
    fn get(&self, slot: Slot) -> &str {
        if slot == Slot::A { &self.a } else { &self.b }
    }

    fn set(&mut self, slot: Slot, v: &str) {
        *(if slot == Slot::A { &mut self.a } else { &mut self.b }) = v.to_string();
    }
}

/// A payload part in the staged payload file.
struct Staged {
    name: String,
    offset: u64,
    size: u64,
    sha256: String,
}

/// In the stage directory: the payload as it arrives, and the sha256 of
/// the manifest it belongs to (what a resumed upload must match).
const STAGED_PAYLOAD: &str = "payload.partial";
const STAGED_ID: &str = "manifest.sha256";

/// Checks each part of the staged payload against the signed manifest.
fn staged_parts(payload: &Path, m: &BundleManifest) -> Result<Vec<Staged>, Status> {
    let file = std::fs::File::open(payload).map_err(io_status("open", payload))?;
    let mut parts = Vec::new();
    let mut offset = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for p in &m.parts {
        let mut hash = Sha256::new();
        let mut done = 0u64;
        while done < p.size {
            let n = (p.size - done).min(buf.len() as u64) as usize;
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf[..n], offset + done)
                .map_err(io_status("read", payload))?;
            hash.update(&buf[..n]);
            done += n as u64;
        }
        let found = bundle::hex(&hash.finalize());
        if found != p.sha256 {
            return Err(refused(BundleError::Hash { name: p.name.clone(), expected: p.sha256.clone(), found }));
        }
        parts.push(Staged { name: p.name.clone(), offset, size: p.size, sha256: found });
        offset += p.size;
    }
    Ok(parts)
}

impl Slots {
    pub fn new(settings: SlotSettings, trusted: VerifyingKey, events: Arc<Journal<api::Event>>) -> Slots {
        Slots { settings, trusted, events, busy: tokio::sync::Mutex::new(()) }
    }

    pub fn booted(&self) -> Slot {
        self.settings.booted
    }

    pub fn health_timeout(&self) -> Duration {
        self.settings.health_timeout
    }

    fn record(&self) -> Record {
        std::fs::read(&self.settings.record).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    fn save_record(&self, r: &Record) -> Result<(), Status> {
        let path = &self.settings.record;
        crate::store::write_private(path, &serde_json::to_vec(r).unwrap_or_default()).map_err(io_status("write", path))
    }

    fn disk(&self) -> Result<Disk, Status> {
        Disk::open(&self.settings.disk).map_err(disk_status)
    }

    /// The boot state on disk.
    pub fn state(&self) -> Result<BootState, DiskError> {
        Disk::open(&self.settings.disk)?.efi()?.state()
    }

    /// Both slots, for `version`.
    pub fn infos(&self) -> Vec<api::SlotInfo> {
        let Ok(state) = self.state() else { return Vec::new() };
        let record = self.record();
        let booted = self.settings.booted;
        let next = state.next_boot();
        [Slot::A, Slot::B]
            .into_iter()
            .map(|slot| api::SlotInfo {
                name: slot.name().into(),
                version: if slot == booted { self.settings.version.clone() } else { record.get(slot).to_string() },
                state: state.view(slot, booted).name().into(),
                booted: slot == booted,
                next_boot: next == Some(slot),
            })
            .collect()
    }

    /// At boot: what the boot state says about this boot.
    pub fn boot_view(&self) -> Result<(View, View), DiskError> {
        let state = self.state()?;
        let b = self.settings.booted;
        Ok((state.view(b, b), state.view(b.other(), b)))
    }

    /// Commits the slot on trial that is running.
    pub fn commit(&self) -> Result<(), DiskError> {
        let disk = Disk::open(&self.settings.disk)?;
        let efi = disk.efi()?;
        let old = efi.state()?;
        let mut new = old;
        new.commit(self.settings.booted);
        efi.apply(&old, &new)?;
        efi.close()?;
        // A commit lost to a power cut would fail the slot at its next boot.
        disk.sync()?;
        let mut r = self.record();
        r.set(self.settings.booted, &self.settings.version);
        let _ = self.save_record(&r);
        Ok(())
    }

    /// Makes the other, committed slot the one that boots.
    pub fn rollback(&self) -> Result<Slot, Status> {
        let disk = self.disk()?;
        let efi = disk.efi().map_err(disk_status)?;
        let old = efi.state().map_err(disk_status)?;
        let mut new = old;
        let target = new.rollback(self.settings.booted).map_err(|e| Status::failed_precondition(e.to_string()))?;
        efi.apply(&old, &new).map_err(disk_status)?;
        efi.close().map_err(disk_status)?;
        disk.sync().map_err(disk_status)?;
        Ok(target)
    }

    /// Payload bytes already staged for the bundle whose manifest has this
    /// sha256 (an interrupted upload of it can resume there), else 0.
    pub fn staged_offset(&self, manifest_sha256: &str) -> u64 {
        let dir = &self.settings.stage_dir;
        let id = std::fs::read_to_string(dir.join(STAGED_ID)).unwrap_or_default();
        if id.trim() != manifest_sha256 || manifest_sha256.is_empty() {
            return 0;
        }
        std::fs::metadata(dir.join(STAGED_PAYLOAD)).map_or(0, |m| m.len())
    }

    /// Receives, checks and installs a bundle; returns the answer and whether
    /// to reboot now.
    pub async fn upgrade<S>(&self, mut chunks: S) -> Result<(api::UpgradeResponse, bool), Status>
    where
        S: Stream<Item = Result<api::UpgradeChunk, Status>> + Unpin,
    {
        let _busy = self.busy.try_lock().map_err(|_| Status::aborted("another upgrade is in progress on this node"))?;
        let opts = match chunks.next().await.transpose()?.and_then(|c| c.chunk) {
            Some(Chunk::Options(o)) => o,
            _ => return Err(Status::invalid_argument("an upgrade starts with a message carrying its options")),
        };

        // 1. The signed header.
        let mut buf = Vec::new();
        let (header, used) = loop {
            if let Some(h) = Header::parse(&buf, &self.trusted).map_err(refused)? {
                break h;
            }
            match next_data(&mut chunks).await? {
                Some(d) => buf.extend_from_slice(&d),
                None if buf.is_empty() => return Err(Status::invalid_argument("the upgrade carried no bundle")),
                None => return Err(refused(BundleError::Truncated { got: 0, expected: 1 })),
            }
        };
        let m = &header.manifest;
        m.check_for(&self.settings.board, &self.settings.version, opts.allow_downgrade).map_err(refused)?;
        let target = self.settings.booted.other();
        self.check_room(m, target)?;

        // 2. Stage the payload on EPHEMERAL (appending to what an interrupted
        // upload of the same bundle left), then check every part's hash.
        let started = Instant::now();
        let dir = self.settings.stage_dir.clone();
        let id = bundle::hex(&Sha256::digest(&header.manifest_bytes));
        let payload_path = dir.join(STAGED_PAYLOAD);
        let resumed = opts.resume_offset;
        if resumed > 0 && self.staged_offset(&id) < resumed {
            return Err(Status::failed_precondition(format!(
                "cannot resume at byte {resumed}: this node holds {} bytes of that bundle; upload it again from the start",
                self.staged_offset(&id)
            )));
        }
        let mut file = tokio::task::block_in_place(|| -> std::io::Result<std::fs::File> {
            std::fs::create_dir_all(&dir)?;
            if resumed == 0 {
                let _ = std::fs::remove_file(dir.join(STAGED_ID));
                std::fs::write(dir.join(STAGED_ID), &id)?;
            }
            let f = std::fs::OpenOptions::new().create(true).write(true).truncate(resumed == 0).open(&payload_path)?;
            f.set_len(resumed)?;
            Ok(f)
        })
        .map_err(io_status("stage the bundle in", &dir))?;
        file.seek(std::io::SeekFrom::End(0)).map_err(io_status("seek", &payload_path))?;
        let total = m.payload_size();
        let mut have = resumed;
        let mut pending = buf.split_off(used);
        loop {
            if !pending.is_empty() {
                if have + pending.len() as u64 > total {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(refused(BundleError::Trailing(have + pending.len() as u64 - total)));
                }
                tokio::task::block_in_place(|| file.write_all(&pending)).map_err(io_status("write", &payload_path))?;
                have += pending.len() as u64;
            }
            match next_data(&mut chunks).await? {
                Some(d) => pending = d,
                None => break,
            }
        }
        tokio::task::block_in_place(|| file.sync_all()).map_err(io_status("fsync", &payload_path))?;
        if have < total {
            return Err(Status::failed_precondition(format!(
                "upgrade refused: {}; the {have} bytes received are kept: run the upgrade again to resume",
                BundleError::Truncated { got: have, expected: total }
            )));
        }
        let upload = started.elapsed();
        let parts = tokio::task::block_in_place(|| staged_parts(&payload_path, m)).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&dir);
        })?;

        // 3 and 4. Write the other slot, read it back, arm its trial.
        let t = Instant::now();
        let result = tokio::task::block_in_place(|| self.install(&payload_path, &parts, target));
        let _ = std::fs::remove_dir_all(&dir);
        result?;
        let mut r = self.record();
        r.set(target, &m.version);
        r.set(self.settings.booted, &self.settings.version);
        self.save_record(&r)?;
        let write = t.elapsed();
        let reboot = !opts.stage;
        let summary = format!(
            "Plinth {} written to slot {} in {:.1} s (received in {:.1} s{}) and armed for one trial boot; {}",
            m.version,
            target.name(),
            write.as_secs_f64(),
            upload.as_secs_f64(),
            if resumed > 0 { format!(", resumed at byte {resumed}") } else { String::new() },
            if reboot { "rebooting into it" } else { "it boots at the next reboot" }
        );
        event(&self.events, "upgrade", summary.clone());
        Ok((
            api::UpgradeResponse {
                slot: target.name().into(),
                version: m.version.clone(),
                summary,
                rebooting: reboot,
                write_seconds: write.as_secs_f64(),
                resumed_from: resumed,
            },
            reboot,
        ))
    }

    /// Refuses a bundle whose parts cannot fit, before anything is kept.
    fn check_room(&self, m: &BundleManifest, target: Slot) -> Result<(), Status> {
        for p in &m.parts {
            if p.name != bundle::PART_UKI && p.name != bundle::PART_ROOT {
                return Err(refused(BundleError::Manifest(format!("unknown part {:?}", p.name))));
            }
        }
        let disk = self.disk()?;
        let root = disk.partition(target.root_label()).map_err(disk_status)?.size;
        let efi = disk.efi().map_err(disk_status)?;
        // The target's old entry makes room when it is removed.
        let old_entry = efi.read_entry(target).map_err(disk_status)?.map_or(0, |u| u.len() as u64);
        let efi_room = efi.free().map_err(disk_status)? + old_entry;
        for (name, room) in [(bundle::PART_ROOT, root), (bundle::PART_UKI, efi_room)] {
            let size = m.part(name).map_or(0, |p| p.size);
            if size > room {
                return Err(refused(BundleError::TooBig { name: name.into(), size, room }));
            }
        }
        Ok(())
    }

    /// Writes the staged parts to `target` (blocking).
    fn install(&self, payload: &Path, staged: &[Staged], target: Slot) -> Result<(), Status> {
        let disk = self.disk()?;
        let part = |name: &str| {
            staged.iter().find(|s| s.name == name).ok_or_else(|| Status::internal(format!("{name} was not staged")))
        };
        let (root, uki) = (part(bundle::PART_ROOT)?, part(bundle::PART_UKI)?);
        // The other slot loses its entry before its root is overwritten.
        {
            let efi = disk.efi().map_err(disk_status)?;
            let old = efi.state().map_err(disk_status)?;
            let mut cleared = old;
            cleared.clear(target, self.settings.booted).map_err(|e| Status::internal(e.to_string()))?;
            efi.apply(&old, &cleared).map_err(disk_status)?;
        }
        // On the disk before the root is touched: without the flush the
        // kernel may write root blocks back before the entry's removal.
        disk.sync().map_err(disk_status)?;
        tracing::info!("upgrade: slot {}: boot entry removed, writing its root", target.name());
        let label = target.root_label();
        let f = std::fs::File::open(payload).map_err(io_status("open", payload))?;
        let read_part = |s: &Staged, at: u64, buf: &mut [u8]| {
            std::os::unix::fs::FileExt::read_exact_at(&f, buf, s.offset + at).map_err(io_status("read", payload))
        };
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        while at < root.size {
            let n = (root.size - at).min(buf.len() as u64) as usize;
            read_part(root, at, &mut buf[..n])?;
            disk.write_at(label, at, &buf[..n]).map_err(disk_status)?;
            at += n as u64;
        }
        disk.sync().map_err(disk_status)?;
        let back = disk.hash(label, root.size).map_err(disk_status)?;
        if back != root.sha256 {
            return Err(disk_status(DiskError::ReadBack {
                path: disk.path().to_path_buf(),
                what: label.into(),
                expected: root.sha256.clone(),
                found: back,
            }));
        }
        tracing::info!("upgrade: slot {}: root written and read back", target.name());
        let mut image = vec![0u8; uki.size as usize];
        read_part(uki, 0, &mut image)?;
        machinery::pe::set_uki_slot(&mut image, target)
            .map_err(|e| Status::failed_precondition(format!("upgrade refused: the bundle's UKI: {e}")))?;
        let efi = disk.efi().map_err(disk_status)?;
        efi.stage_entry(&image).map_err(disk_status)?;
        disk.sync().map_err(disk_status)?;
        efi.verify_staged(&image).map_err(disk_status)?;
        tracing::info!("upgrade: slot {}: boot entry staged, arming", target.name());
        let cleared = efi.state().map_err(disk_status)?;
        let mut armed = cleared;
        armed.arm_trial(target, TRIAL_TRIES);
        efi.apply(&cleared, &armed).map_err(disk_status)?;
        disk.sync().map_err(disk_status)?;
        let name = sdboot::file_name(target, armed.get(target)).unwrap_or_default();
        efi.commit_entry(&name).map_err(disk_status)?;
        efi.close().map_err(disk_status)?;
        disk.sync().map_err(disk_status)
    }
}

/// The default [`SlotSettings::health_timeout`]: room for the kubelet to
/// start the node's pods again on a small board (a hung boot is reset by
/// the watchdog sooner).
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the services must have run without a restart.
pub const HEALTHY_FOR: Duration = Duration::from_secs(10);

/// The next payload bytes of an upgrade stream; `None` at its end.
async fn next_data<S>(chunks: &mut S) -> Result<Option<Vec<u8>>, Status>
where
    S: Stream<Item = Result<api::UpgradeChunk, Status>> + Unpin,
{
    match chunks.next().await.transpose()? {
        Some(api::UpgradeChunk { chunk: Some(Chunk::Data(d)) }) => Ok(Some(d)),
        Some(_) => Err(Status::invalid_argument("only the first upgrade message may carry options")),
        None => Ok(None),
    }
}

/// Where the boot disk is, from the device of a partition on it
/// (`/dev/vda2` → `/dev/vda`, through sysfs).
pub fn disk_of(partition: &Path) -> Option<PathBuf> {
    let name = partition.file_name()?;
    let sys = std::fs::canonicalize(Path::new("/sys/class/block").join(name)).ok()?;
    let parent = sys.parent()?.file_name()?;
    Some(Path::new("/dev").join(parent))
}

/// The board and version of the running image, from its root.
pub fn running_image() -> (String, String) {
    let board = std::fs::read_to_string(layout::ROOT_BOARD)
        .ok()
        .and_then(|t| machinery::board::Board::parse(layout::ROOT_BOARD, &t).ok())
        .map_or_else(String::new, |b| b.name);
    let version = std::fs::read(layout::ROOT_MANIFEST)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("plinth_version")?.as_str().map(str::to_string))
        .unwrap_or_else(|| machinery::VERSION.to_string());
    (board, version)
}

/// Host mode has no boot loader: do what systemd-boot does at power-on
/// (pick the entry, count a try down) and return the slot "booted".
pub fn simulate_boot_loader(disk: &Path) -> Result<Slot, DiskError> {
    let d = Disk::open(disk)?;
    let efi = d.efi()?;
    let old = efi.state()?;
    let mut new = old;
    let slot = new.power_on().unwrap_or(Slot::A);
    efi.apply(&old, &new)?;
    efi.close()?;
    Ok(slot)
}

//! A/B upgrades on the node: receive a bundle, check it, write the slot
//! that is not running, arm a one-time trial boot; at boot, commit a slot
//! on trial once the node is healthy; roll back on request.
//!
//! The order is what makes it safe:
//! 1. the signed header is verified, and the board, the security floor and
//!    the version checked, before any byte is kept;
//! 2. the payload is staged on EPHEMERAL while each part is hashed: a
//!    truncated or corrupted bundle is refused with both slots untouched;
//!    a part the running slot already holds (same sha256, asked by the
//!    client through UpgradeResume) is not sent but copied from there,
//!    and checked against the signed manifest as a received one is;
//! 3. only then is the other slot's boot entry removed, its root written
//!    and read back, its boot files written and read back where the boot
//!    loader does not see them (a UKI under a temporary name; a Pi's boot
//!    partition, no longer named by `autoboot.txt`);
//! 4. the new slot is armed for a trial (`crate::loader`): a power cut
//!    before this step boots the old slot, after it the new slot is tried
//!    and, unless it commits, the boot loader falls back by itself.

use std::io::{Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use machinery::api::{self, upgrade_chunk::Chunk};
use machinery::bundle::{self, BundleError, BundleManifest, Header};
use machinery::layout::{self, Slot};
use machinery::signing::VerifyingKey;
use machinery::slots::rpi::{AtBoot, Reboot};
use machinery::slots::{BootState, View};
use sha2::{Digest as _, Sha256};
use tokio_stream::{Stream, StreamExt as _};
use tonic::Status;

use crate::disk::{Disk, DiskError};
use crate::journal::Journal;
use crate::loader::Loader;
use crate::supervisor::event;

/// Where the node's disk is and what it runs.
#[derive(Debug, Clone)]
pub struct SlotSettings {
    /// The whole boot disk (`/dev/vda`), or an image file in host mode.
    pub disk: PathBuf,
    /// Its boot loader.
    pub loader: Loader,
    /// The slot this boot runs from.
    pub booted: Slot,
    /// The board the running image was built for.
    pub board: String,
    /// The running Plinth version.
    pub version: String,
    /// The running image's security version (its root manifest's).
    pub security_version: u64,
    /// Record of the version written to each slot (on STATE).
    pub record: PathBuf,
    /// The security floor (on STATE): the highest security version this
    /// node has committed; no bundle or rollback below it.
    pub floor: PathBuf,
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
    /// sha256 of the running slot's parts by (name, length): the running
    /// slot does not change while it runs.
    local_hashes: std::sync::Mutex<std::collections::HashMap<(String, u64), String>>,
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
        DiskError::Slot(_) => Status::failed_precondition(e.to_string()),
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

/// The version and security version written to each slot, kept on STATE.
/// A slot written by a release that knew no security version has 0.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct Record {
    #[serde(default)]
    a: String,
    #[serde(default)]
    b: String,
    #[serde(default)]
    security_a: u64,
    #[serde(default)]
    security_b: u64,
}

impl Record {
    fn get(&self, slot: Slot) -> &str {
        if slot == Slot::A { &self.a } else { &self.b }
    }

    fn security(&self, slot: Slot) -> u64 {
        if slot == Slot::A { self.security_a } else { self.security_b }
    }

    fn set(&mut self, slot: Slot, v: &str, security: u64) {
        let (version, sec) =
            if slot == Slot::A { (&mut self.a, &mut self.security_a) } else { (&mut self.b, &mut self.security_b) };
        *version = v.to_string();
        *sec = security;
    }

    /// No upgrade ever ran (no record on STATE): both slots hold the image
    /// that was flashed, the running one.
    fn factory(version: &str, security: u64) -> Record {
        Record { a: version.into(), b: version.into(), security_a: security, security_b: security }
    }
}

/// Reads the slot record; `None` when there is none (a fresh node).
fn read_record(path: &Path) -> Option<Record> {
    std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

/// A part of the bundle being installed, checked against the manifest.
struct Staged {
    name: String,
    size: u64,
    sha256: String,
    from: Source,
}

/// Where a part's bytes are.
enum Source {
    /// At this offset in the staged payload file.
    Payload(u64),
    /// In the running slot (not sent).
    Running,
}

/// What the upload of a bundle is staged under: its manifest's sha256 and
/// the parts it does not carry (a resumed upload must match both).
pub fn stage_id(manifest_sha256: &str, local: &[String]) -> String {
    if local.is_empty() { manifest_sha256.to_string() } else { format!("{manifest_sha256}+{}", local.join(",")) }
}

/// In the stage directory: the payload as it arrives, and the sha256 of
/// the manifest it belongs to (what a resumed upload must match).
const STAGED_PAYLOAD: &str = "payload.partial";
const STAGED_ID: &str = "manifest.sha256";

/// Reads a part's bytes from where they are: the staged payload, the
/// running slot's root, or the running slot's UKI (set to slot A).
fn part_reader<'a>(
    s: &Staged,
    payload: &'a Path,
    file: &'a std::fs::File,
    disk: &'a Disk,
    booted: Slot,
    running_uki: Option<&'a [u8]>,
) -> Box<crate::loader::PartReader<'a>> {
    match (&s.from, s.name == bundle::PART_ROOT, running_uki) {
        (Source::Payload(offset), ..) => {
            let offset = *offset;
            Box::new(move |at: u64, buf: &mut [u8]| {
                std::os::unix::fs::FileExt::read_exact_at(file, buf, offset + at).map_err(|source| DiskError::Io {
                    op: "read the staged bundle",
                    path: payload.to_path_buf(),
                    source,
                })
            })
        }
        (Source::Running, true, _) => {
            Box::new(move |at: u64, buf: &mut [u8]| disk.read_at(booted.root_label(), at, buf))
        }
        (Source::Running, false, Some(uki)) => Box::new(move |at: u64, buf: &mut [u8]| {
            let bytes = uki.get(at as usize..at as usize + buf.len()).ok_or_else(|| DiskError::Io {
                op: "read past the end of the running slot's UKI on",
                path: disk.path().to_path_buf(),
                source: std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
            })?;
            buf.copy_from_slice(bytes);
            Ok(())
        }),
        (Source::Running, false, None) => Box::new(move |_, _| {
            Err(DiskError::Io {
                op: "read the running slot's boot files from",
                path: disk.path().to_path_buf(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            })
        }),
    }
}

/// Checks each part of the staged payload against the signed manifest;
/// the `local` ones (checked when the upload started) are not in it.
fn staged_parts(payload: &Path, m: &BundleManifest, local: &[String]) -> Result<Vec<Staged>, Status> {
    let file = std::fs::File::open(payload).map_err(io_status("open", payload))?;
    let mut parts = Vec::new();
    let mut offset = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for p in &m.parts {
        if local.contains(&p.name) {
            parts.push(Staged { name: p.name.clone(), size: p.size, sha256: p.sha256.clone(), from: Source::Running });
            continue;
        }
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
        parts.push(Staged { name: p.name.clone(), size: p.size, sha256: found, from: Source::Payload(offset) });
        offset += p.size;
    }
    Ok(parts)
}

impl Slots {
    pub fn new(settings: SlotSettings, trusted: VerifyingKey, events: Arc<Journal<api::Event>>) -> Slots {
        Slots { settings, trusted, events, busy: tokio::sync::Mutex::new(()), local_hashes: Default::default() }
    }

    pub fn booted(&self) -> Slot {
        self.settings.booted
    }

    pub fn health_timeout(&self) -> Duration {
        self.settings.health_timeout
    }

    fn record(&self) -> Record {
        let s = &self.settings;
        if !s.record.exists() {
            return Record::factory(&s.version, s.security_version);
        }
        read_record(&s.record).unwrap_or_default()
    }

    /// The security floor. None stored: 0 (nothing committed since it
    /// existed). Unreadable: the running slot's security version, which is
    /// never below the floor (nothing below it is installed or rolled back
    /// to), and which the next committed boot stores again.
    pub fn floor(&self) -> u64 {
        let path = &self.settings.floor;
        match std::fs::read_to_string(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Ok(t) if t.trim().parse::<u64>().is_ok() => t.trim().parse().unwrap_or_default(),
            other => {
                let why = other.map_or_else(|e| e.to_string(), |t| format!("{:?} is not a number", t.trim()));
                tracing::warn!("{}: {why}: using the running security version as the floor", path.display());
                self.settings.security_version
            }
        }
    }

    /// Raises the floor to the running slot's security version, which is
    /// committed; returns the new floor when it rose. Written as the rest
    /// of STATE: temporary file, fsync, rename, directory fsync, 0600.
    pub fn raise_floor(&self) -> Result<Option<u64>, DiskError> {
        let running = self.settings.security_version;
        let path = &self.settings.floor;
        let stored = std::fs::read_to_string(path).ok().and_then(|t| t.trim().parse::<u64>().ok());
        if stored.is_some_and(|f| f >= running) {
            return Ok(None);
        }
        crate::store::write_private(path, format!("{running}\n").as_bytes()).map_err(|source| DiskError::Io {
            op: "write the security floor",
            path: path.clone(),
            source,
        })?;
        Ok(Some(running))
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
        self.settings.loader.state(&Disk::open(&self.settings.disk)?)
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
        self.settings.loader.commit(&disk, self.settings.booted)?;
        let mut r = self.record();
        r.set(self.settings.booted, &self.settings.version, self.settings.security_version);
        let _ = self.save_record(&r);
        self.raise_floor().map(|_| ())
    }

    /// Makes the other, committed slot the one that boots, unless its
    /// security version is below the floor.
    pub fn rollback(&self) -> Result<Slot, Status> {
        let other = self.settings.booted.other();
        let (record, floor) = (self.record(), self.floor());
        let security = record.security(other);
        if security < floor {
            let version = record.get(other);
            return Err(Status::failed_precondition(format!(
                "rollback refused: slot {} holds Plinth {} at security version {security}, below this node's \
                 security floor {floor} (the highest security version it has committed)",
                other.name(),
                if version.is_empty() { "(unknown version)" } else { version },
            )));
        }
        self.settings.loader.rollback(&self.disk()?, self.settings.booted).map_err(disk_status)
    }

    /// The slot on trial did not become healthy: do not try it again.
    pub fn give_up(&self) -> Result<(), DiskError> {
        self.settings.loader.give_up(&Disk::open(&self.settings.disk)?, self.settings.booted)
    }

    /// Just before a reboot: whether it must launch a trial (a Pi's
    /// tryboot), the try counted first.
    pub fn prepare_reboot(&self) -> Result<Reboot, DiskError> {
        self.settings.loader.prepare_reboot(&Disk::open(&self.settings.disk)?, self.settings.booted)
    }

    /// At boot, before the health gate: what this boot is, once what a
    /// power cut interrupted is finished.
    pub fn at_boot(&self) -> Result<AtBoot, DiskError> {
        self.settings.loader.at_boot(&Disk::open(&self.settings.disk)?, self.settings.booted)
    }

    /// Payload bytes already staged under `id` ([`stage_id`]: an
    /// interrupted upload of that bundle can resume there), else 0.
    pub fn staged_offset(&self, id: &str) -> u64 {
        let dir = &self.settings.stage_dir;
        let staged = std::fs::read_to_string(dir.join(STAGED_ID)).unwrap_or_default();
        if staged.trim() != id || id.is_empty() {
            return 0;
        }
        std::fs::metadata(dir.join(STAGED_PAYLOAD)).map_or(0, |m| m.len())
    }

    /// Of a bundle's parts, those the running slot holds byte for byte: its
    /// root, and its UKI once set back to slot A (as a bundle carries it).
    /// A Pi's boot partition is always sent.
    pub fn local_parts(&self, parts: &[api::PartDigest]) -> Vec<String> {
        parts
            .iter()
            .filter(|p| self.local_sha256(&p.name, p.size).is_some_and(|h| h == p.sha256))
            .map(|p| p.name.clone())
            .collect()
    }

    /// sha256 of the first `size` bytes of what the running slot holds for
    /// part `name`; `None` when it holds no such part.
    fn local_sha256(&self, name: &str, size: u64) -> Option<String> {
        let key = (name.to_string(), size);
        if let Some(h) = self.local_hashes.lock().ok()?.get(&key) {
            return Some(h.clone());
        }
        let hash = match name {
            bundle::PART_ROOT => {
                let disk = Disk::open(&self.settings.disk).ok()?;
                let label = self.settings.booted.root_label();
                if size > disk.partition(label).ok()?.size {
                    return None;
                }
                disk.hash(label, size).ok()?
            }
            bundle::PART_UKI => {
                let uki = self.running_uki().ok()??;
                if uki.len() as u64 != size {
                    return None;
                }
                bundle::hex(&Sha256::digest(&uki))
            }
            _ => return None,
        };
        self.local_hashes.lock().ok()?.insert(key, hash.clone());
        Some(hash)
    }

    /// The running slot's UKI with its slot set to A, as a bundle carries it.
    fn running_uki(&self) -> Result<Option<Vec<u8>>, DiskError> {
        if self.settings.loader.boot_part() != bundle::PART_UKI {
            return Ok(None);
        }
        let disk = Disk::open(&self.settings.disk)?;
        let Some(mut uki) = disk.efi()?.read_entry(self.settings.booted)? else { return Ok(None) };
        Ok(machinery::pe::set_uki_slot(&mut uki, Slot::A).is_ok().then_some(uki))
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
        m.check_for(&self.settings.board, &self.settings.version, self.floor(), opts.allow_downgrade)
            .map_err(refused)?;
        let target = self.settings.booted.other();
        self.check_room(m, target)?;
        // The parts the client did not send: the running slot must hold
        // them, as the signed manifest says.
        let local: Vec<String> =
            m.parts.iter().filter(|p| opts.local_parts.contains(&p.name)).map(|p| p.name.clone()).collect();
        if let Some(name) = opts.local_parts.iter().find(|n| !local.contains(n)) {
            return Err(refused(BundleError::Manifest(format!("the client skipped part {name:?}, which it has not"))));
        }
        for p in m.parts.iter().filter(|p| local.contains(&p.name)) {
            if tokio::task::block_in_place(|| self.local_sha256(&p.name, p.size)).as_deref() != Some(&p.sha256) {
                return Err(Status::failed_precondition(format!(
                    "upgrade refused: the client did not send part {}, and slot {} does not hold it (sha256 {}): \
                     send the whole bundle",
                    p.name,
                    self.settings.booted.name(),
                    p.sha256
                )));
            }
        }

        // 2. Stage the payload on EPHEMERAL (appending to what an interrupted
        // upload of the same bundle left), then check every part's hash.
        let started = Instant::now();
        let dir = self.settings.stage_dir.clone();
        let id = stage_id(&bundle::hex(&Sha256::digest(&header.manifest_bytes)), &local);
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
        let total: u64 = m.parts.iter().filter(|p| !local.contains(&p.name)).map(|p| p.size).sum();
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
        let parts = tokio::task::block_in_place(|| staged_parts(&payload_path, m, &local)).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&dir);
        })?;

        // 3 and 4. Write the other slot, read it back, arm its trial.
        let t = Instant::now();
        let result = tokio::task::block_in_place(|| self.install(&payload_path, &parts, target));
        let _ = std::fs::remove_dir_all(&dir);
        result?;
        let mut r = self.record();
        r.set(target, &m.version, m.security_version);
        r.set(self.settings.booted, &self.settings.version, self.settings.security_version);
        self.save_record(&r)?;
        let write = t.elapsed();
        let reboot = !opts.stage;
        let summary = format!(
            "Plinth {} written to slot {} in {:.1} s ({} MiB received in {:.1} s{}{}) and armed for a trial boot; {}",
            m.version,
            target.name(),
            write.as_secs_f64(),
            total >> 20,
            upload.as_secs_f64(),
            if resumed > 0 { format!(", resumed at byte {resumed}") } else { String::new() },
            if local.is_empty() {
                String::new()
            } else {
                format!("; {} copied from slot {}", local.join(", "), self.settings.booted.name())
            },
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
                local_parts: local,
            },
            reboot,
        ))
    }

    /// Refuses a bundle whose parts cannot fit, before anything is kept.
    fn check_room(&self, m: &BundleManifest, target: Slot) -> Result<(), Status> {
        let boot_part = self.settings.loader.boot_part();
        let carried = m.boot_part().map_err(refused)?;
        if carried != boot_part {
            return Err(refused(BundleError::BootMethod { bundle: carried, node: boot_part }));
        }
        for p in &m.parts {
            if p.name != boot_part && p.name != bundle::PART_ROOT {
                return Err(refused(BundleError::Manifest(format!("unknown part {:?}", p.name))));
            }
        }
        let disk = self.disk()?;
        let root = disk.partition(target.root_label()).map_err(disk_status)?.size;
        let boot_room = self.settings.loader.room(&disk, target).map_err(disk_status)?;
        for (name, room) in [(bundle::PART_ROOT, root), (boot_part, boot_room)] {
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
        let loader = &self.settings.loader;
        let part = |name: &str| {
            staged.iter().find(|s| s.name == name).ok_or_else(|| Status::internal(format!("{name} was not staged")))
        };
        let (root, boot) = (part(bundle::PART_ROOT)?, part(loader.boot_part())?);
        // The other slot loses its entry before its root is overwritten.
        loader.clear(&disk, target, self.settings.booted).map_err(disk_status)?;
        tracing::info!("upgrade: slot {}: boot entry removed, writing its root", target.name());
        let f = std::fs::File::open(payload).map_err(io_status("open", payload))?;
        let running_uki = match (&boot.from, loader.boot_part()) {
            (Source::Running, bundle::PART_UKI) => self.running_uki().map_err(disk_status)?,
            _ => None,
        };
        let disk = &disk;
        let reader = |s: &Staged| part_reader(s, payload, &f, disk, self.settings.booted, running_uki.as_deref());
        crate::loader::copy_verified(disk, target.root_label(), root.size, &root.sha256, &mut *reader(root))
            .map_err(disk_status)?;
        tracing::info!("upgrade: slot {}: root written and read back", target.name());
        loader.write_boot(disk, target, boot.size, &boot.sha256, &mut *reader(boot)).map_err(|e| match e {
            DiskError::BootFile { .. } => Status::failed_precondition(format!("upgrade refused: {e}")),
            e => disk_status(e),
        })?;
        tracing::info!("upgrade: slot {}: boot files written and read back, arming", target.name());
        loader.arm(disk, target).map_err(disk_status)
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

/// The board, version and security version of the running image, from
/// its root (an image made before security versions existed has 0).
pub fn running_image() -> (String, String, u64) {
    let board = std::fs::read_to_string(layout::ROOT_BOARD)
        .ok()
        .and_then(|t| machinery::board::Board::parse(layout::ROOT_BOARD, &t).ok())
        .map_or_else(String::new, |b| b.name);
    let manifest = std::fs::read(layout::ROOT_MANIFEST)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .unwrap_or_default();
    let version = manifest
        .get("plinth_version")
        .and_then(|v| v.as_str())
        .map_or_else(|| machinery::VERSION.to_string(), str::to_string);
    let security = manifest.get("security_version").and_then(|v| v.as_u64()).unwrap_or(0);
    (board, version, security)
}

/// On STATE: the security floor (decimal, one line).
pub const SECURITY_FLOOR: &str = "security-floor";

/// On STATE: the Raspberry Pi's trial record (`machinery::slots::rpi::Record`).
pub const TRIAL_RECORD: &str = "boot-trial";

/// Host mode: the slots of an image file standing in for the boot disk,
/// once init has played the boot loader's part at power-on.
pub fn host_slots(
    disk: PathBuf,
    state_dir: &Path,
    board: String,
    health_timeout: Duration,
) -> Result<SlotSettings, DiskError> {
    let booted = crate::loader::simulate_power_on(&disk)?;
    let loader = Loader::detect(&Disk::open(&disk)?, &state_dir.join(TRIAL_RECORD));
    let record = state_dir.join("slots.json");
    // One binary plays every slot: the security version is the one the
    // upgrade wrote to the booted slot, else this build's.
    let security_version = read_record(&record).map_or(machinery::SECURITY_VERSION, |r| r.security(booted));
    Ok(SlotSettings {
        disk,
        loader,
        booted,
        board,
        version: machinery::VERSION.to_string(),
        security_version,
        record,
        floor: state_dir.join(SECURITY_FLOOR),
        stage_dir: state_dir.join("upgrade"),
        health_timeout,
    })
}

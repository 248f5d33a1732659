//! The seed config: a signed machine config that `osctl image flash
//! --config` put on the boot disk's first FAT partition (`EFI`, or `BOOT`
//! on a Raspberry Pi) at `layout::SEED_CONFIG`, so a node comes up
//! configured without a maintenance-mode step.
//!
//! Consulted only at a boot with no stored config. The seed is checked as
//! ApplyConfig checks a config (`ConfigStore::verify`: the signature
//! against the trusted key, then validation, which holds `version` to 1 or
//! more: above the none applied), stored on STATE, and only then removed from the FAT, so
//! a card with a stale seed cannot apply it again once the node has moved
//! on. A seed that does not verify is reported and left alone: the node
//! stays in maintenance mode.

use std::io::{Read, Seek, Write};
use std::path::Path;

use machinery::layout;

use crate::disk::{Disk, DiskError};
use crate::store::{ConfigStore, Signed, Slot, StoreError, VerifyFailure};

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("{label}:{file}: {op}: {source}")]
    Fat { label: String, file: &'static str, op: &'static str, source: std::io::Error },
    #[error("{label}:{file}: not a signed config envelope: {why}")]
    Envelope { label: String, file: &'static str, why: String },
    #[error("{label}:{file}: {source}")]
    Verify { label: String, file: &'static str, source: VerifyFailure },
    #[error("{label}:{file}: storing it on STATE: {source}")]
    Store { label: String, file: &'static str, source: StoreError },
}

/// The first FAT partition's label on a disk: `BOOT` (Raspberry Pi) or `EFI`.
fn seed_partition(disk: &Disk) -> Option<&'static str> {
    [layout::RPI_AUTOBOOT, layout::EFI].into_iter().find(|l| disk.partition(l).is_ok())
}

/// At a boot with no stored config: adopts the seed on `disk`, if there is
/// one. `Ok(None)`: no seed (or no FAT partition to hold one).
pub fn adopt(disk: &Path, store: &ConfigStore) -> Result<Option<Signed>, SeedError> {
    let disk = Disk::open(disk)?;
    let Some(label) = seed_partition(&disk) else { return Ok(None) };
    adopt_from(disk.window(label)?, label, store)
}

/// The same on a FAT filesystem given as a stream (a partition's window,
/// or an image in memory in tests).
pub fn adopt_from<S: Read + Write + Seek>(
    fat: S,
    label: &str,
    store: &ConfigStore,
) -> Result<Option<Signed>, SeedError> {
    let file = layout::SEED_CONFIG;
    let fat_err = |op: &'static str| {
        let label = label.to_string();
        move |source| SeedError::Fat { label, file, op, source }
    };
    let fs = fatfs::FileSystem::new(fat, fatfs::FsOptions::new()).map_err(fat_err("open the FAT filesystem"))?;
    let mut raw = Vec::new();
    match fs.root_dir().open_file(file.trim_start_matches('/')) {
        Ok(mut f) => f.read_to_end(&mut raw).map_err(fat_err("read"))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(fat_err("open")(e)),
    };
    let (bytes, signature) = machinery::signing::envelope_decode(&raw).map_err(|e| SeedError::Envelope {
        label: label.to_string(),
        file,
        why: e.to_string(),
    })?;
    let signed = store.verify(&format!("{label}:{file}"), &bytes, &signature).map_err(|source| SeedError::Verify {
        label: label.to_string(),
        file,
        source,
    })?;
    store.save(Slot::Active, &signed).map_err(|source| SeedError::Store { label: label.to_string(), file, source })?;
    // Stored: from here on the node has a config, and the seed goes.
    fs.root_dir().remove(file.trim_start_matches('/')).map_err(fat_err("remove"))?;
    fs.unmount().map_err(fat_err("flush the FAT filesystem"))?;
    Ok(Some(signed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use machinery::signing::{self, Purpose, SigningKey};
    use std::io::Cursor;

    fn config(version: u64) -> String {
        let ca = machinery::pki::generate_ca("t").unwrap();
        format!(
            "version = {version}\n[machine]\nhostname = \"seeded\"\n[cluster]\nname = \"demo\"\nrole = \"controlplane\"\n[api]\nca_cert = \"\"\"{}\"\"\"\nca_key = \"\"\"{}\"\"\"\n",
            ca.cert_pem, ca.key_pem
        )
    }

    fn envelope(key: &SigningKey, text: &str) -> Vec<u8> {
        signing::envelope_encode(text.as_bytes(), &signing::sign(Purpose::Config, key, text.as_bytes()))
    }

    /// A FAT filesystem in memory holding `files`.
    fn fat(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut cur = Cursor::new(vec![0u8; 4 << 20]);
        fatfs::format_volume(&mut cur, fatfs::FormatVolumeOptions::new()).unwrap();
        {
            let fs = fatfs::FileSystem::new(&mut cur, fatfs::FsOptions::new()).unwrap();
            for (path, data) in files {
                let (dir, name) = path.trim_start_matches('/').rsplit_once('/').unwrap_or(("", path));
                let dir = if dir.is_empty() { fs.root_dir() } else { fs.root_dir().create_dir(dir).unwrap() };
                let mut f = dir.create_file(name).unwrap();
                std::io::Write::write_all(&mut f, data).unwrap();
            }
            fs.unmount().unwrap();
        }
        cur.into_inner()
    }

    fn has_seed(image: &mut Vec<u8>) -> bool {
        let fs = fatfs::FileSystem::new(Cursor::new(image), fatfs::FsOptions::new()).unwrap();
        fs.root_dir().open_file(layout::SEED_CONFIG.trim_start_matches('/')).is_ok()
    }

    fn store() -> (tempfile::TempDir, ConfigStore, SigningKey) {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[7; 32]);
        let store = ConfigStore::open(dir.path(), key.verifying_key()).unwrap();
        (dir, store, key)
    }

    #[test]
    fn a_good_seed_is_stored_then_removed() {
        let (_d, store, key) = store();
        let text = config(3);
        let mut image =
            fat(&[("/autoboot.txt", b"[all]\ntryboot_a_b=1\n"), (layout::SEED_CONFIG, &envelope(&key, &text))]);
        let signed = adopt_from(Cursor::new(&mut image), "BOOT", &store).unwrap().unwrap();
        assert_eq!((signed.config.version, signed.config.machine.hostname.as_str()), (3, "seeded"));
        assert_eq!(store.load(Slot::Active).unwrap().unwrap().bytes, text.as_bytes());
        assert!(!has_seed(&mut image), "the seed is removed once stored");
        // The rest of the partition is untouched.
        let fs = fatfs::FileSystem::new(Cursor::new(&mut image), fatfs::FsOptions::new()).unwrap();
        let mut autoboot = String::new();
        fs.root_dir().open_file("autoboot.txt").unwrap().read_to_string(&mut autoboot).unwrap();
        assert_eq!(autoboot, "[all]\ntryboot_a_b=1\n");
    }

    #[test]
    fn no_seed_is_nothing() {
        let (_d, store, _) = store();
        let mut image = fat(&[("/autoboot.txt", b"x")]);
        assert!(adopt_from(Cursor::new(&mut image), "BOOT", &store).unwrap().is_none());
        assert!(store.load(Slot::Active).unwrap().is_none());
    }

    #[test]
    fn a_seed_signed_by_another_key_is_refused_and_left() {
        let (_d, store, _) = store();
        let other = SigningKey::from_bytes(&[8; 32]);
        let mut image = fat(&[(layout::SEED_CONFIG, &envelope(&other, &config(1)))]);
        let err = adopt_from(Cursor::new(&mut image), "EFI", &store).unwrap_err().to_string();
        assert!(err.starts_with("EFI:/plinth/config.signed: refused:"), "{err}");
        assert!(store.load(Slot::Active).unwrap().is_none());
        assert!(has_seed(&mut image));
    }

    #[test]
    fn an_invalid_or_garbled_seed_is_refused() {
        let (_d, store, key) = store();
        let bad = config(1).replace("role = \"controlplane\"", "role = \"boss\"");
        let mut image = fat(&[(layout::SEED_CONFIG, &envelope(&key, &bad))]);
        let err = adopt_from(Cursor::new(&mut image), "BOOT", &store).unwrap_err().to_string();
        assert!(err.contains("role"), "{err}");
        let mut image = fat(&[(layout::SEED_CONFIG, b"version = 1\n")]);
        let err = adopt_from(Cursor::new(&mut image), "BOOT", &store).unwrap_err().to_string();
        assert!(err.contains("not a signed config envelope"), "{err}");
        assert!(store.load(Slot::Active).unwrap().is_none());
    }

    /// The whole path on a GPT disk image: the seed is found on the first
    /// FAT partition by label.
    #[test]
    fn adopts_from_a_gpt_disk() {
        use std::os::unix::fs::FileExt as _;
        let (_d, store, key) = store();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let mib = 1u64 << 20;
        let file = std::fs::File::options().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        file.set_len(8 * mib).unwrap();
        let mut file = file;
        gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(8 * mib / 512 - 1).unwrap())
            .overwrite_lba0(&mut file)
            .unwrap();
        let mut table = gpt::GptConfig::new()
            .writable(true)
            .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
            .create_from_device(file, None)
            .unwrap();
        table.add_partition(layout::RPI_AUTOBOOT, 4 * mib, gpt::partition_types::BASIC, 0, Some(mib / 512)).unwrap();
        table.add_partition(layout::STATE, 2 * mib, gpt::partition_types::LINUX_FS, 0, Some(mib / 512)).unwrap();
        let offset = table.partitions().values().find(|p| p.name == layout::RPI_AUTOBOOT).unwrap().first_lba * 512;
        table.write().unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.write_all_at(&fat(&[(layout::SEED_CONFIG, &envelope(&key, &config(2)))]), offset).unwrap();
        let signed = adopt(&path, &store).unwrap().unwrap();
        assert_eq!(signed.config.version, 2);
        // A second boot finds no seed.
        assert!(adopt(&path, &store).unwrap().is_none());
    }
}

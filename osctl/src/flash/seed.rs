//! Puts a signed machine config on a flashed device's first FAT partition
//! (`EFI`, or `BOOT` on a Raspberry Pi) at `layout::SEED_CONFIG`, where init
//! adopts it at first boot. The partition is found in the device's GPT (gpt
//! crate) and written through fatfs on its byte range: no mount, no root
//! beyond opening the device.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use machinery::layout;
use partition_window::Window;

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("{path}: reading the partition table: {detail}")]
    Gpt { path: PathBuf, detail: String },
    #[error("{path}: the image has no {efi} or {boot} partition to put the config on (is it a Plinth image?)", efi = layout::EFI, boot = layout::RPI_AUTOBOOT)]
    NoPartition { path: PathBuf },
    #[error("{path}: partition {label}: {op}: {source}")]
    Fat { path: PathBuf, label: String, op: String, source: std::io::Error },
    #[error("{path}: partition {label}: {file} reads back different from what was written")]
    ReadBack { path: PathBuf, label: String, file: String },
}

/// The first FAT partition: where the seed goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatPartition {
    pub label: String,
    pub offset: u64,
    pub size: u64,
}

/// Finds the partition labelled `EFI` or `BOOT` that comes first on the disk.
pub fn find(path: &Path) -> Result<FatPartition, SeedError> {
    let gpt_err = |e: &dyn std::fmt::Display| SeedError::Gpt { path: path.to_path_buf(), detail: e.to_string() };
    let table = gpt::GptConfig::new().writable(false).open(path).map_err(|e| gpt_err(&e))?;
    let lb = gpt::disk::LogicalBlockSize::Lb512;
    let mut found: Option<FatPartition> = None;
    for p in table.partitions().values() {
        if p.name != layout::EFI && p.name != layout::RPI_AUTOBOOT {
            continue;
        }
        let offset = p.bytes_start(lb).map_err(|e| gpt_err(&e))?;
        if found.as_ref().is_none_or(|f| offset < f.offset) {
            found =
                Some(FatPartition { label: p.name.clone(), offset, size: p.bytes_len(lb).map_err(|e| gpt_err(&e))? });
        }
    }
    found.ok_or_else(|| SeedError::NoPartition { path: path.to_path_buf() })
}

/// Writes `envelope` at `SEED_CONFIG` on the first FAT partition of the
/// device at `path`, flushes, and reads it back.
pub fn write(path: &Path, device: &File, envelope: &[u8]) -> Result<FatPartition, SeedError> {
    let part = find(path)?;
    let fat = |op: &str| {
        let (path, label, op) = (path.to_path_buf(), part.label.clone(), op.to_string());
        move |source| SeedError::Fat { path, label, op, source }
    };
    let window = Window::new(device, part.offset, part.size);
    let fs = fatfs::FileSystem::new(window, fatfs::FsOptions::new()).map_err(fat("open the FAT filesystem"))?;
    {
        let (dir_name, file_name) = split(layout::SEED_CONFIG);
        let root = fs.root_dir();
        let dir = match root.open_dir(dir_name) {
            Ok(d) => d,
            Err(_) => root.create_dir(dir_name).map_err(fat(&format!("create /{dir_name}")))?,
        };
        let mut f = dir.create_file(file_name).map_err(fat(&format!("create {}", layout::SEED_CONFIG)))?;
        f.truncate().map_err(fat(&format!("truncate {}", layout::SEED_CONFIG)))?;
        f.write_all(envelope).map_err(fat(&format!("write {}", layout::SEED_CONFIG)))?;
        f.flush().map_err(fat(&format!("write {}", layout::SEED_CONFIG)))?;
    }
    fs.unmount().map_err(fat("flush the FAT filesystem"))?;
    device.sync_all().map_err(fat("fsync"))?;
    super::drop_cache(device);
    if read(device, &part).map_err(fat(&format!("read back {}", layout::SEED_CONFIG)))?.as_deref() != Some(envelope) {
        return Err(SeedError::ReadBack {
            path: path.to_path_buf(),
            label: part.label,
            file: layout::SEED_CONFIG.into(),
        });
    }
    Ok(part)
}

/// The seed on a FAT partition, if there is one.
pub fn read(device: &File, part: &FatPartition) -> std::io::Result<Option<Vec<u8>>> {
    let window = Window::new(device, part.offset, part.size);
    let fs = fatfs::FileSystem::new(window, fatfs::FsOptions::new())?;
    let mut out = Vec::new();
    match fs.root_dir().open_file(layout::SEED_CONFIG.trim_start_matches('/')) {
        Ok(mut f) => f.read_to_end(&mut out)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(Some(out))
}

/// `/plinth/config.signed` → (`plinth`, `config.signed`).
fn split(path: &str) -> (&str, &str) {
    path.trim_start_matches('/').rsplit_once('/').unwrap_or(("", path))
}

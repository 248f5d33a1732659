//! The disk image: a FAT EFI system partition built in memory (fatfs) and a
//! GPT (gpt crate) written into a plain file — no loop devices, no root.

use std::fs::File;
use std::io::{Cursor, Seek as _, SeekFrom, Write as _};
use std::path::Path;

use crate::BuildError;

const MIB: u64 = 1024 * 1024;

/// Which FAT a partition gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fat {
    /// The EFI system partition: whatever fits its size (FAT16 at 64 MiB).
    Efi,
    /// FAT32, as the Raspberry Pi's `start*.elf` expects in a GPT partition
    /// (older firmware assumes FAT32 there).
    Fat32,
    /// The smallest FAT that fits (the Pi's `autoboot.txt` partition, read
    /// by the EEPROM boot loader, which reads FAT12/16/32).
    Small,
}

/// Builds a FAT filesystem of `size_mib` labelled `label` holding `files`
/// (path → bytes; directories are created as needed).
pub fn fat_image(size_mib: u64, label: &str, kind: Fat, files: &[(&str, &[u8])]) -> Result<Vec<u8>, BuildError> {
    let fat = |e: std::io::Error| BuildError::Fat(format!("{label}: {e}"));
    let mut cur = Cursor::new(vec![0u8; (size_mib * MIB) as usize]);
    let mut name = [b' '; 11];
    for (d, s) in name.iter_mut().zip(label.bytes().map(|b| b.to_ascii_uppercase())) {
        *d = s;
    }
    let mut opts = fatfs::FormatVolumeOptions::new().volume_label(name);
    opts = match kind {
        Fat::Efi => opts,
        Fat::Fat32 => opts.fat_type(fatfs::FatType::Fat32),
        Fat::Small => opts.fat_type(if size_mib <= 16 { fatfs::FatType::Fat12 } else { fatfs::FatType::Fat16 }),
    };
    fatfs::format_volume(&mut cur, opts).map_err(fat)?;
    {
        let fs = fatfs::FileSystem::new(&mut cur, fatfs::FsOptions::new()).map_err(fat)?;
        for (path, data) in files {
            let root = fs.root_dir();
            let parts: Vec<&str> = path.split('/').collect();
            let mut dir = root;
            for d in &parts[..parts.len() - 1] {
                dir = match dir.open_dir(d) {
                    Ok(x) => x,
                    Err(_) => dir.create_dir(d).map_err(fat)?,
                };
            }
            let mut f = dir.create_file(parts[parts.len() - 1]).map_err(fat)?;
            f.truncate().map_err(fat)?;
            f.write_all(data).map_err(fat)?;
        }
        fs.unmount().map_err(fat)?;
    }
    Ok(cur.into_inner())
}

/// A partition's GPT type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// EFI system partition.
    Esp,
    /// Microsoft basic data: a FAT partition the Raspberry Pi boot loader
    /// reads (it accepts basic data and ESP types in a GPT).
    Fat,
    /// Linux filesystem data.
    Linux,
}

/// One partition to lay out: its GPT label, type, size and content.
pub struct Part<'a> {
    pub label: &'a str,
    pub kind: Kind,
    pub size_mib: u64,
    /// Written at the partition's start; `None` leaves it zeroed.
    pub content: Option<&'a Path>,
}

/// Where a partition landed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Placed {
    pub label: String,
    pub offset: u64,
    pub size: u64,
}

/// Writes a GPT disk image at `out` with the partitions in order, 1 MiB
/// aligned, and copies each content file into place.
pub fn write_gpt(out: &Path, parts: &[Part<'_>]) -> Result<Vec<Placed>, BuildError> {
    let gpt_err = |e: gpt::GptError| BuildError::Gpt(e.to_string());
    // 1 MiB in front (protective MBR, GPT, alignment), 1 MiB behind (backup GPT).
    let total = MIB + parts.iter().map(|p| p.size_mib * MIB).sum::<u64>() + MIB;
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .map_err(|e| BuildError::io("create", out, e))?;
    file.set_len(total).map_err(|e| BuildError::io("size", out, e))?;
    let mut file = file;
    let lb = gpt::disk::LogicalBlockSize::Lb512;
    let mbr = gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(total / 512 - 1).unwrap_or(u32::MAX));
    mbr.overwrite_lba0(&mut file).map_err(|e| BuildError::Gpt(e.to_string()))?;
    let mut disk =
        gpt::GptConfig::new().writable(true).logical_block_size(lb).create_from_device(file, None).map_err(gpt_err)?;
    for p in parts {
        let kind = match p.kind {
            Kind::Esp => gpt::partition_types::EFI,
            Kind::Fat => gpt::partition_types::BASIC,
            Kind::Linux => gpt::partition_types::LINUX_FS,
        };
        disk.add_partition(p.label, p.size_mib * MIB, kind, 0, Some(MIB / 512)).map_err(gpt_err)?;
    }
    let placed: Vec<Placed> = disk
        .partitions()
        .values()
        .map(|p| Placed {
            label: p.name.clone(),
            offset: p.bytes_start(lb).unwrap_or(0),
            size: p.bytes_len(lb).unwrap_or(0),
        })
        .collect();
    let mut file = disk.write().map_err(gpt_err)?;
    for (p, at) in parts.iter().zip(&placed) {
        let Some(src) = p.content else { continue };
        let data = std::fs::read(src).map_err(|e| BuildError::io("read", src, e))?;
        if data.len() as u64 > at.size {
            return Err(BuildError::TooBig { what: p.label.to_string(), size: data.len() as u64, room: at.size });
        }
        // Zero blocks are skipped: the file is fresh (zeros), and stays sparse.
        for (i, chunk) in data.chunks(64 * 1024).enumerate() {
            if chunk.iter().all(|&b| b == 0) {
                continue;
            }
            file.seek(SeekFrom::Start(at.offset + (i * 64 * 1024) as u64))
                .map_err(|e| BuildError::io("seek", out, e))?;
            file.write_all(chunk).map_err(|e| BuildError::io("write", out, e))?;
        }
    }
    file.sync_all().map_err(|e| BuildError::io("fsync", out, e))?;
    Ok(placed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt_has_the_labels_sizes_and_content() {
        let dir = tempfile::tempdir().unwrap();
        let content = dir.path().join("c");
        std::fs::write(&content, b"root image bytes").unwrap();
        let img = dir.path().join("disk.img");
        let placed = write_gpt(
            &img,
            &[
                Part { label: "EFI", kind: Kind::Esp, size_mib: 2, content: None },
                Part { label: "ROOT-A", kind: Kind::Linux, size_mib: 3, content: Some(&content) },
                Part { label: "STATE", kind: Kind::Linux, size_mib: 1, content: None },
            ],
        )
        .unwrap();
        // Read it back with the gpt crate.
        let disk = gpt::GptConfig::new().open(&img).unwrap();
        let labels: Vec<(String, u64)> = disk.partitions().values().map(|p| (p.name.clone(), p.first_lba)).collect();
        assert_eq!(labels.iter().map(|l| l.0.as_str()).collect::<Vec<_>>(), ["EFI", "ROOT-A", "STATE"]);
        assert!(labels.iter().all(|(_, lba)| lba % 2048 == 0), "1 MiB aligned: {labels:?}");
        assert_eq!(placed[1].size, 3 * MIB);
        let bytes = std::fs::read(&img).unwrap();
        let at = placed[1].offset as usize;
        assert_eq!(&bytes[at..at + 16], b"root image bytes");
        assert_eq!(&bytes[510..512], &[0x55, 0xAA], "protective MBR");
        let too_big = write_gpt(&img, &[Part { label: "X", kind: Kind::Linux, size_mib: 1, content: Some(&img) }]);
        assert!(matches!(too_big, Err(BuildError::TooBig { .. })));
    }

    #[test]
    fn fat_holds_the_files() {
        let img = fat_image(
            33,
            "EFI",
            Fat::Efi,
            &[("EFI/BOOT/BOOTX64.EFI", b"boot"), ("loader/loader.conf", b"default x\n")],
        )
        .unwrap();
        let fs = fatfs::FileSystem::new(Cursor::new(img), fatfs::FsOptions::new()).unwrap();
        let mut s = String::new();
        std::io::Read::read_to_string(&mut fs.root_dir().open_file("loader/loader.conf").unwrap(), &mut s).unwrap();
        assert_eq!(s, "default x\n");
        assert!(fs.root_dir().open_file("EFI/BOOT/BOOTX64.EFI").is_ok());
    }
}

//! The data-partition rules over the real mke2fs and e2fsck, on a 16 MiB
//! file laid out as the image's STATE: a fresh-install marker is formatted
//! and cleared, a flipped bit in the primary superblock is repaired from
//! the backup and never formatted. Only the kernel's part (finding the
//! partition in sysfs, mounting) is played by the test: a "mount" succeeds
//! when the primary superblock is intact.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use init::boot::{self, Content, Mounted};
use init::system::{Linux, SysError, SysResult, System};
use machinery::layout;
use nix::mount::MsFlags;

struct Disk {
    dev: PathBuf,
    mounts: Mutex<Vec<String>>,
}

fn missing(op: &'static str, path: &Path) -> SysError {
    SysError { op, path: path.to_path_buf(), source: std::io::Error::from(std::io::ErrorKind::NotFound) }
}

impl System for Disk {
    fn mount(&self, source: &str, target: &Path, _: &str, _: MsFlags, _: &str) -> SysResult<()> {
        self.mounts.lock().unwrap().push(source.to_string());
        match Linux.read_at(Path::new(source), 1024 + 56, 2)? == [0x53, 0xEF] {
            true => Ok(()),
            false => Err(SysError {
                op: "mount",
                path: target.to_path_buf(),
                source: std::io::Error::other("bad superblock"),
            }),
        }
    }
    fn move_mount(&self, _: &Path, to: &Path) -> SysResult<()> {
        Err(missing("move", to))
    }
    fn umount(&self, target: &Path) -> SysResult<()> {
        Err(missing("umount", target))
    }
    fn switch_root(&self, new_root: &Path) -> SysResult<()> {
        Err(missing("switch_root", new_root))
    }
    fn mkdir_all(&self, _: &Path) -> SysResult<()> {
        Ok(())
    }
    fn read_to_string(&self, path: &Path) -> SysResult<String> {
        match path.to_str() {
            Some("/sys/class/block/vdz4/uevent") => Ok(format!("DEVNAME={}\nPARTNAME=STATE\n", self.dev.display())),
            _ => Err(missing("read", path)),
        }
    }
    fn write(&self, path: &Path, _: &[u8]) -> SysResult<()> {
        Err(missing("write", path))
    }
    fn read_dir(&self, _: &Path) -> SysResult<Vec<String>> {
        Ok(vec!["vdz4".into()])
    }
    fn read_at(&self, path: &Path, offset: u64, len: usize) -> SysResult<Vec<u8>> {
        Linux.read_at(path, offset, len)
    }
    fn write_at(&self, path: &Path, offset: u64, data: &[u8]) -> SysResult<()> {
        Linux.write_at(path, offset, data)
    }
    fn load_module(&self, path: &Path) -> SysResult<()> {
        Err(missing("load", path))
    }
    fn run(&self, program: &Path, args: &[&str]) -> SysResult<i32> {
        Linux.run(program, args)
    }
    fn sync(&self) {}
    fn dm_create(&self, name: &str, _: u64, _: &str, _: &str) -> SysResult<PathBuf> {
        Err(missing("dm_create", Path::new(name)))
    }
}

#[test]
fn fresh_state_is_formatted_and_a_flipped_superblock_bit_is_repaired_not_formatted() {
    if !Path::new(boot::MKE2FS).exists() || !Path::new(boot::E2FSCK).exists() {
        assert!(std::env::var("CI").is_err(), "CI: e2fsprogs missing: run scripts/setup-debian.sh");
        eprintln!("skipped: no {} or {}", boot::MKE2FS, boot::E2FSCK);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("state.img");
    std::fs::write(&dev, layout::fresh_marker(layout::STATE)).unwrap();
    std::fs::OpenOptions::new().write(true).open(&dev).unwrap().set_len(16 << 20).unwrap();
    let disk = Disk { dev: dev.clone(), mounts: Mutex::default() };
    let target = dir.path().join("state");

    // First boot: the marker says format; the marker is gone afterwards.
    assert_eq!(boot::mount_data_partition(&disk, "STATE", &target, Duration::ZERO).unwrap(), Mounted::New);
    assert!(Linux.read_at(&dev, 0, 512).unwrap().iter().all(|&b| b == 0), "marker cleared");
    let Content::Ext4 { primary: true, backups } = boot::classify(&disk, &dev, "STATE").unwrap() else {
        panic!("mke2fs made no ext4")
    };
    assert!(!backups.is_empty(), "a 16 MiB STATE has a backup superblock");
    // The filesystem's UUID (superblock +104): a new mke2fs makes another.
    let uuid = Linux.read_at(&dev, 1024 + 104, 16).unwrap();

    // One flipped bit in the primary superblock's magic: repaired from the
    // backup by the real e2fsck, which rewrites the primary.
    let mut magic = Linux.read_at(&dev, 1024 + 56, 1).unwrap();
    magic[0] ^= 0x01;
    Linux.write_at(&dev, 1024 + 56, &magic).unwrap();
    let Mounted::Repaired(steps) = boot::mount_data_partition(&disk, "STATE", &target, Duration::ZERO).unwrap() else {
        panic!("not repaired")
    };
    assert!(steps.iter().any(|s| s.contains("e2fsck -y -b")), "{steps:?}");
    assert_eq!(Linux.read_at(&dev, 1024 + 104, 16).unwrap(), uuid, "the same filesystem, not a new one");
    assert!(!disk.mounts.lock().unwrap().is_empty());
    assert_eq!(boot::classify(&disk, &dev, "STATE").unwrap(), Content::Ext4 { primary: true, backups });
}

//! The early boot steps of PID 1, each a function over [`System`]: mount
//! the API filesystems, load the board's modules, find the slot's root by
//! GPT label, switch into it, mount STATE and EPHEMERAL.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use machinery::layout::{self, Slot};
use machinery::verity::{self, RootVerity};
use nix::mount::MsFlags;

use crate::system::{SysError, System};

/// Where the root image is mounted before init switches into it.
pub const SYSROOT: &str = "/sysroot";
/// The filesystem maker and checker shipped in the root image.
pub const MKE2FS: &str = "/usr/sbin/mke2fs";
pub const E2FSCK: &str = "/usr/sbin/e2fsck";

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Sys(#[from] SysError),
    #[error(
        "no partition labelled {label} appeared within {waited:?} (is the disk attached, and its driver in the board's modules?)"
    )]
    NoPartition { label: String, waited: Duration },
    #[error(
        "the kernel command line names no slot (expected {}a or {}b): {cmdline:?}, and systemd-boot's selected entry names none either: {entry}",
        layout::CMDLINE_SLOT,
        layout::CMDLINE_SLOT
    )]
    NoSlot { cmdline: String, entry: String },
    #[error(
        "{label} ({}) holds {why}: it is not blank and not an ext4 filesystem, so it is not formatted (nothing on it is touched)",
        dev.display()
    )]
    NotBlank { label: String, dev: PathBuf, why: String },
    #[error("creating the filesystem of {label} ({}): mke2fs exited with {code}", dev.display())]
    Format { label: String, dev: PathBuf, code: i32 },
    #[error("{label} ({}) does not mount, even after repair: {}", dev.display(), tried.join("; "))]
    Unmountable { label: String, dev: PathBuf, tried: Vec<String> },
    #[error("the kernel command line: {0}")]
    VerityWord(#[from] machinery::verity::VerityError),
    #[error("{label} ({}): setting up dm-verity: {source}", dev.display())]
    VeritySetup { label: String, dev: PathBuf, source: SysError },
    #[error(
        "{label} ({}) is refused by dm-verity ({source}): its bytes do not match the root hash on the signed kernel command line (a modified or corrupted root); it is not mounted",
        dev.display()
    )]
    RootRefused { label: String, dev: PathBuf, source: SysError },
}

/// /proc, /sys, /dev (devtmpfs) and /run.
pub fn early_mounts(sys: &dyn System) -> Result<(), BootError> {
    let nsnd = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    for (src, target, fstype, flags, data) in [
        ("proc", "/proc", "proc", nsnd | MsFlags::MS_NOEXEC, ""),
        ("sysfs", "/sys", "sysfs", nsnd | MsFlags::MS_NOEXEC, ""),
        ("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID, "mode=0755"),
        ("tmpfs", "/run", "tmpfs", nsnd, "mode=0755"),
    ] {
        sys.mkdir_all(Path::new(target))?;
        sys.mount(src, Path::new(target), fstype, flags, data)?;
    }
    Ok(())
}

/// What containers need once in the root: the unified cgroup hierarchy
/// (with its controllers handed down: runc places each container below the
/// root), and tmpfs on /tmp and /dev/shm. Returns what failed; the node
/// still boots and serves its API without them.
pub fn runtime_mounts(sys: &dyn System) -> Vec<SysError> {
    let nsnd = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let mut failed = Vec::new();
    for (src, target, fstype, flags, data) in [
        ("cgroup2", "/sys/fs/cgroup", "cgroup2", nsnd | MsFlags::MS_NOEXEC, "nsdelegate"),
        ("tmpfs", "/tmp", "tmpfs", nsnd, "mode=1777"),
        ("shm", "/dev/shm", "tmpfs", nsnd, "mode=1777"),
    ] {
        if let Err(e) =
            sys.mkdir_all(Path::new(target)).and_then(|_| sys.mount(src, Path::new(target), fstype, flags, data))
        {
            failed.push(e);
        }
    }
    // One at a time: a controller this kernel lacks does not stop the others.
    let control = Path::new("/sys/fs/cgroup/cgroup.subtree_control");
    for c in ["cpuset", "cpu", "io", "memory", "hugetlb", "pids"] {
        if let Err(e) = sys.write(control, format!("+{c}").as_bytes()) {
            failed.push(e);
        }
    }
    failed
}

/// Where efivarfs is mounted, and the variable systemd-boot sets to the
/// entry it starts (its Boot Loader Interface), UTF-16 after 4 bytes of
/// attributes.
pub const EFIVARS: &str = "/sys/firmware/efi/efivars";
pub const LOADER_ENTRY_SELECTED: &str = "LoaderEntrySelected-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// The slot this boot belongs to: `plinth.slot=` on `/proc/cmdline`, or,
/// from a Secure Boot signed UKI, which names none (one signed file serves
/// both slots), the entry systemd-boot started (`plinth-2-a+2-1.efi`).
pub fn slot(sys: &dyn System) -> Result<Slot, BootError> {
    let cmdline = sys.read_to_string(Path::new("/proc/cmdline"))?;
    if let Some(slot) = Slot::from_cmdline(&cmdline) {
        return Ok(slot);
    }
    let no_slot = |entry: String| BootError::NoSlot { cmdline: cmdline.trim().to_string(), entry };
    let dir = Path::new(EFIVARS);
    if let Err(e) =
        sys.mount("efivarfs", dir, "efivarfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC, "")
    {
        // Already mounted is fine; anything else shows in the next read.
        tracing::debug!("{e}");
    }
    let raw = sys.read_to_string(&dir.join(LOADER_ENTRY_SELECTED)).map_err(|e| no_slot(e.to_string()))?;
    // Attributes (4 bytes), then UTF-16LE: ASCII file names read as their
    // bytes with NULs between.
    let name: String = raw.chars().skip(4).filter(|c| *c != '\0').collect();
    machinery::slots::sdboot::parse_name(&name).map(|(slot, _)| slot).ok_or_else(|| no_slot(format!("{name:?}")))
}

/// Loads the modules listed in `<dir>/order`, in order. A module that fails
/// is reported and skipped: the next ones may still be what the boot needs.
pub fn load_modules(sys: &dyn System, dir: &Path) -> Result<Vec<SysError>, BootError> {
    let order = sys.read_to_string(&dir.join("order"))?;
    Ok(order
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|name| sys.load_module(&dir.join(name)).err())
        .collect())
}

/// The device node of the partition labelled `label`, if the kernel has
/// found it (`PARTNAME=` in `/sys/class/block/*/uevent`).
pub fn find_partition(sys: &dyn System, label: &str) -> Option<PathBuf> {
    let base = Path::new("/sys/class/block");
    sys.read_dir(base).ok()?.into_iter().find_map(|name| {
        let uevent = sys.read_to_string(&base.join(&name).join("uevent")).ok()?;
        let field = |key: &str| uevent.lines().find_map(|l| l.strip_prefix(key)).map(str::to_string);
        (field("PARTNAME=")? == label).then(|| Path::new("/dev").join(field("DEVNAME=").unwrap_or(name)))
    })
}

/// Waits for a partition to appear: block devices are probed asynchronously.
pub fn wait_partition(sys: &dyn System, label: &str, timeout: Duration) -> Result<PathBuf, BootError> {
    let start = Instant::now();
    loop {
        if let Some(dev) = find_partition(sys, label) {
            return Ok(dev);
        }
        if start.elapsed() >= timeout {
            return Err(BootError::NoPartition { label: label.to_string(), waited: timeout });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Mounts the slot's read-only root image at [`SYSROOT`]: through a
/// dm-verity device when the command line carries the root's hash
/// (`machinery::verity`), so every block read is checked against it and a
/// modified block fails to read; as it is on an image without one.
/// Returns the root partition's device.
pub fn mount_root(sys: &dyn System, slot: Slot, timeout: Duration) -> Result<PathBuf, BootError> {
    let label = slot.root_label();
    let verity = RootVerity::from_cmdline(&sys.read_to_string(Path::new("/proc/cmdline"))?)?;
    let dev = wait_partition(sys, label, timeout)?;
    sys.mkdir_all(Path::new(SYSROOT))?;
    let mount =
        |source: &Path| sys.mount(&source.to_string_lossy(), Path::new(SYSROOT), "squashfs", MsFlags::MS_RDONLY, "");
    match verity {
        Some(v) => {
            let verified = sys
                .dm_create(verity::DEVICE_NAME, v.sectors(), verity::TARGET, &v.table_params(&dev.to_string_lossy()))
                .map_err(|source| BootError::VeritySetup { label: label.into(), dev: dev.clone(), source })?;
            mount(&verified).map_err(|source| BootError::RootRefused {
                label: label.into(),
                dev: dev.clone(),
                source,
            })?;
            tracing::info!("{label}: verified by dm-verity ({}), root hash {}", verified.display(), v.root_hash);
        }
        None => {
            tracing::warn!("{label}: the command line carries no {}: the root is not verified", verity::CMDLINE_VERITY);
            mount(&dev)?;
        }
    }
    Ok(dev)
}

/// Moves the API filesystems into [`SYSROOT`] and makes it the root.
pub fn switch_into_root(sys: &dyn System) -> Result<(), BootError> {
    for m in ["/dev", "/proc", "/sys", "/run"] {
        sys.move_mount(Path::new(m), &Path::new(SYSROOT).join(&m[1..]))?;
    }
    sys.switch_root(Path::new(SYSROOT))?;
    Ok(())
}

/// The ext2/3/4 superblock's magic 0xEF53, at +56 of a superblock.
const EXT4_MAGIC: [u8; 2] = [0x53, 0xEF];
pub(crate) const EXT4_MAGIC_AT: u64 = 56;
/// The primary superblock's offset in the partition.
const PRIMARY_SUPERBLOCK: u64 = 1024;
/// The region that must be all zeros for a partition without the
/// fresh-install marker to count as blank: the first MiB, where ext4's
/// primary superblock and the headers of other filesystems, RAID and LVM
/// live.
pub const BLANK_REGION: usize = 1 << 20;
/// The first backup superblock (block number, block size) of an ext4 made
/// with mke2fs' defaults, per block size: group 1's first block.
const USUAL_BACKUPS: [(u64, u32); 3] = [(8193, 1024), (16384, 2048), (32768, 4096)];

/// What a data partition holds, judged before anything is written to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Zeros in the whole [`BLANK_REGION`], and no superblock anywhere.
    Blank,
    /// Plinth's fresh-install marker (`layout::fresh_marker`) for this
    /// partition, and no superblock anywhere.
    Fresh,
    /// An ext4: its primary superblock's magic is there (`primary`), or
    /// only backups' — each as (block number, block size) for `e2fsck -b`.
    Ext4 { primary: bool, backups: Vec<(u64, u32)> },
    /// Anything else: never formatted.
    Other(String),
}

fn le32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
}

/// Reads what the data partition `dev` labelled `label` holds.
pub fn classify(sys: &dyn System, dev: &Path, label: &str) -> Result<Content, BootError> {
    let head = sys.read_at(dev, 0, BLANK_REGION)?;
    let sb = &head[PRIMARY_SUPERBLOCK as usize..];
    let primary = sb[EXT4_MAGIC_AT as usize..][..2] == EXT4_MAGIC;
    // Where backups are: from the primary superblock when it is there
    // (first data block + blocks per group, in its block size), else where
    // mke2fs puts the first one for each block size.
    let mut candidates = Vec::new();
    if primary && le32(sb, 24) <= 6 {
        candidates.push((le32(sb, 20) + le32(sb, 32), 1024u32 << le32(sb, 24)));
    }
    candidates.extend(USUAL_BACKUPS);
    let mut backups = Vec::new();
    for (block, size) in candidates {
        // A partition too small for this group has no backup there.
        let found = sys.read_at(dev, block * u64::from(size) + EXT4_MAGIC_AT, 2).is_ok_and(|m| m == EXT4_MAGIC);
        if found && !backups.contains(&(block, size)) {
            backups.push((block, size));
        }
    }
    if primary || !backups.is_empty() {
        return Ok(Content::Ext4 { primary, backups });
    }
    Ok(match layout::read_fresh_marker(&head[..layout::FRESH_MARKER_LEN], label) {
        layout::Marker::Fresh => Content::Fresh,
        layout::Marker::Foreign(why) => Content::Other(why),
        layout::Marker::Absent => match head.iter().position(|&b| b != 0) {
            None => Content::Blank,
            Some(at) => Content::Other(format!(
                "data at byte {at} of its first MiB, no ext4 superblock (primary or backup) and no fresh-install marker"
            )),
        },
    })
}

/// What [`mount_data_partition`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mounted {
    /// The filesystem there mounted as it was.
    Existing,
    /// A blank or freshly installed partition: its filesystem was created.
    New,
    /// It did not mount at first; these steps (in order) repaired it.
    Repaired(Vec<String>),
}

/// What an `e2fsck` exit code means.
fn fsck_said(code: i32) -> &'static str {
    match code {
        0 => "no errors",
        1..=3 => "errors corrected",
        4..=7 => "errors left uncorrected",
        8 => "operational error (no usable superblock?)",
        _ => "failed",
    }
}

/// Mounts STATE or EPHEMERAL. Formats it only when it is blank or holds
/// the fresh-install marker; an ext4 that does not mount is checked
/// (`e2fsck -p`), then repaired from its backup superblocks (`e2fsck -y
/// -b`), mounting again after each step. Anything else is left untouched
/// and reported.
pub fn mount_data_partition(
    sys: &dyn System,
    label: &str,
    target: &Path,
    timeout: Duration,
) -> Result<Mounted, BootError> {
    let dev = wait_partition(sys, label, timeout)?;
    let dev_s = dev.to_string_lossy().into_owned();
    let mount = || sys.mount(&dev_s, target, "ext4", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, "");
    match classify(sys, &dev, label)? {
        Content::Other(why) => Err(BootError::NotBlank { label: label.into(), dev, why }),
        content @ (Content::Blank | Content::Fresh) => {
            let code = sys.run(Path::new(MKE2FS), &["-t", "ext4", "-q", "-F", "-L", label, &dev_s])?;
            if code != 0 {
                return Err(BootError::Format { label: label.into(), dev, code });
            }
            // The marker lives in the first sector, which ext4 leaves alone:
            // cleared once the filesystem is there, so that only a
            // partition never formatted ever holds it.
            if content == Content::Fresh {
                sys.write_at(&dev, 0, &[0; layout::FRESH_MARKER_LEN])?;
            }
            sys.mkdir_all(target)?;
            mount()?;
            Ok(Mounted::New)
        }
        Content::Ext4 { primary, backups } => {
            sys.mkdir_all(target)?;
            let mut done = match mount() {
                Ok(()) => return Ok(Mounted::Existing),
                Err(e) => vec![format!(
                    "mount failed ({}; primary superblock {})",
                    e.source,
                    if primary { "present" } else { "damaged" }
                )],
            };
            let mut attempts = vec![vec!["-p".to_string()]];
            attempts.extend(
                backups
                    .iter()
                    .map(|(b, s)| ["-y", "-b", &b.to_string(), "-B", &s.to_string()].map(String::from).to_vec()),
            );
            if backups.is_empty() {
                attempts.push(vec!["-y".into()]);
            }
            for mut args in attempts {
                args.push(dev_s.clone());
                let argv: Vec<&str> = args.iter().map(String::as_str).collect();
                let step = format!("e2fsck {}", argv.join(" "));
                match sys.run(Path::new(E2FSCK), &argv) {
                    Ok(code) => done.push(format!("{step}: exit {code}, {}", fsck_said(code))),
                    Err(e) => {
                        done.push(format!("{step}: {e}"));
                        continue;
                    }
                }
                match mount() {
                    Ok(()) => {
                        done.push("mounted".into());
                        return Ok(Mounted::Repaired(done));
                    }
                    Err(e) => done.push(format!("mount failed ({})", e.source)),
                }
            }
            Err(BootError::Unmountable { label: label.into(), dev, tried: done })
        }
    }
}

/// Unmounts the data partitions (best effort: report, do not stop).
pub fn unmount_data(sys: &dyn System) -> Vec<SysError> {
    sys.sync();
    [layout::MOUNT_EPHEMERAL, layout::MOUNT_STATE].into_iter().filter_map(|m| sys.umount(Path::new(m)).err()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::Recorder;

    fn disk(sys: &Recorder) {
        sys.file("/proc/cmdline", "console=ttyS0 plinth.slot=b\n");
        for (i, label) in ["EFI", "ROOT-A", "ROOT-B", "STATE", "EPHEMERAL"].iter().enumerate() {
            let n = i + 1;
            sys.file(
                &format!("/sys/class/block/vda{n}/uevent"),
                format!("MAJOR=254\nMINOR={n}\nDEVNAME=vda{n}\nDEVTYPE=partition\nPARTN={n}\nPARTNAME={label}\n"),
            );
        }
        sys.file("/sys/class/block/vda/uevent", "MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\n");
    }

    #[test]
    fn boots_the_slot_named_on_the_command_line() {
        let sys = Recorder::default();
        disk(&sys);
        sys.file("/lib/modules/plinth/order", "virtio.ko\n# comment\n\nvirtio_blk.ko\n");
        early_mounts(&sys).unwrap();
        assert!(load_modules(&sys, Path::new("/lib/modules/plinth")).unwrap().is_empty());
        let slot = slot(&sys).unwrap();
        assert_eq!(slot, Slot::B);
        let dev = mount_root(&sys, slot, Duration::ZERO).unwrap();
        assert_eq!(dev, Path::new("/dev/vda3"));
        switch_into_root(&sys).unwrap();
        let calls = sys.calls();
        assert_eq!(
            calls,
            [
                "mkdir /proc",
                "mount proc /proc proc",
                "mkdir /sys",
                "mount sysfs /sys sysfs",
                "mkdir /dev",
                "mount devtmpfs /dev devtmpfs mode=0755",
                "mkdir /run",
                "mount tmpfs /run tmpfs mode=0755",
                "load /lib/modules/plinth/virtio.ko",
                "load /lib/modules/plinth/virtio_blk.ko",
                "mkdir /sysroot",
                "mount /dev/vda3 /sysroot squashfs ro",
                "move /dev /sysroot/dev",
                "move /proc /sysroot/proc",
                "move /sys /sysroot/sys",
                "move /run /sysroot/run",
                "switch_root /sysroot",
            ]
        );
    }

    fn verity_word() -> String {
        machinery::verity::RootVerity { data_blocks: 1000, root_hash: "ab".repeat(32), salt: "cd".repeat(32) }.word()
    }

    #[test]
    fn a_root_with_a_hash_on_the_command_line_is_mounted_through_dm_verity() {
        let sys = Recorder::default();
        disk(&sys);
        sys.file("/proc/cmdline", format!("console=ttyS0 plinth.slot=b {}\n", verity_word()));
        assert_eq!(mount_root(&sys, Slot::B, Duration::ZERO).unwrap(), Path::new("/dev/vda3"));
        let table = format!("1 /dev/vda3 /dev/vda3 4096 4096 1000 1000 sha256 {} {}", "ab".repeat(32), "cd".repeat(32));
        assert_eq!(
            sys.calls(),
            [
                "mkdir /sysroot".to_string(),
                format!("dm_create plinth-root 8000 verity {table}"),
                "mount /dev/dm-0 /sysroot squashfs ro".to_string(),
            ]
        );
    }

    #[test]
    fn a_root_dm_verity_refuses_is_not_mounted_and_the_error_names_it() {
        let sys = Recorder::default();
        disk(&sys);
        sys.file("/proc/cmdline", format!("console=ttyS0 plinth.slot=a {}\n", verity_word()));
        sys.outcome("mount /dev/dm-0 /sysroot squashfs ro", &[1]);
        let e = mount_root(&sys, Slot::A, Duration::ZERO).unwrap_err().to_string();
        assert!(e.contains("ROOT-A (/dev/vda2) is refused by dm-verity"), "{e}");
        assert!(e.contains("do not match the root hash"), "{e}");
        assert!(!sys.calls().iter().any(|c| c.starts_with("mount /dev/vda2")), "never mounted unverified");

        // A malformed word stops the boot before anything is mounted.
        let sys = Recorder::default();
        disk(&sys);
        sys.file("/proc/cmdline", "plinth.slot=a plinth.verity=12:zz:-\n");
        let e = mount_root(&sys, Slot::A, Duration::ZERO).unwrap_err().to_string();
        assert!(e.contains("plinth.verity=12:zz:-") && e.contains("64 hex"), "{e}");
        assert!(sys.calls().is_empty(), "{:?}", sys.calls());
    }

    #[test]
    fn a_failing_module_does_not_stop_the_others() {
        let sys = Recorder::default();
        sys.file("/m/order", "a.ko\nb.ko\n");
        sys.failing.lock().unwrap().push("/m/a.ko".into());
        let failures = load_modules(&sys, Path::new("/m")).unwrap();
        assert_eq!(failures.len(), 1);
        assert!(failures[0].to_string().contains("/m/a.ko"));
        assert_eq!(sys.calls(), ["load /m/a.ko", "load /m/b.ko"]);
    }

    #[test]
    fn containers_get_cgroup2_and_every_controller_the_kernel_has() {
        let sys = Recorder::default();
        let control = "/sys/fs/cgroup/cgroup.subtree_control";
        sys.failing.lock().unwrap().push(control.into());
        let failures = runtime_mounts(&sys);
        let calls = sys.calls();
        assert_eq!(calls[..2], ["mkdir /sys/fs/cgroup", "mount cgroup2 /sys/fs/cgroup cgroup2 nsdelegate"]);
        assert!(calls.contains(&"mount tmpfs /tmp tmpfs mode=1777".to_string()), "{calls:?}");
        // Each controller is asked for on its own: one missing does not stop the others.
        let asked: Vec<&String> = calls.iter().filter(|c| c.starts_with("write")).collect();
        assert_eq!(asked.len(), 6);
        assert_eq!(asked[3], &format!("write {control} +memory"));
        assert_eq!(failures.len(), 6);
    }

    #[test]
    fn missing_partition_and_slot_are_named() {
        let sys = Recorder::default();
        sys.file("/proc/cmdline", "console=ttyS0");
        assert!(slot(&sys).unwrap_err().to_string().contains("plinth.slot=a"));
        let e = mount_root(&sys, Slot::A, Duration::ZERO).unwrap_err();
        assert!(e.to_string().contains("ROOT-A"), "{e}");
    }

    #[test]
    fn a_signed_uki_names_no_slot_and_the_entry_systemd_boot_started_does() {
        let sys = Recorder::default();
        sys.file("/proc/cmdline", "console=ttyS0 panic=10");
        let var = format!("{EFIVARS}/{LOADER_ENTRY_SELECTED}");
        let utf16 = |s: &str| -> Vec<u8> {
            let mut v = vec![6, 0, 0, 0];
            v.extend(s.encode_utf16().chain([0]).flat_map(u16::to_le_bytes));
            v
        };
        sys.file(&var, utf16("plinth-2-b+2-1.efi"));
        assert_eq!(slot(&sys).unwrap(), Slot::B);
        assert_eq!(sys.calls(), ["mount efivarfs /sys/firmware/efi/efivars efivarfs"]);
        sys.file(&var, utf16("plinth-1-a.efi"));
        assert_eq!(slot(&sys).unwrap(), Slot::A);
        // Another boot loader's entry: named in the error.
        sys.file(&var, utf16("debian.conf"));
        let e = slot(&sys).unwrap_err().to_string();
        assert!(e.contains("\"debian.conf\"") && e.contains("plinth.slot=a"), "{e}");
    }

    /// An ext4 of 1 KiB blocks as mke2fs lays it out: the primary
    /// superblock at 1024 and group 1's backup at block 8193.
    fn ext4(primary: bool) -> Vec<u8> {
        let mut d = vec![0u8; 8194 * 1024];
        for at in [1024, 8193 * 1024] {
            d[at + 56..at + 58].copy_from_slice(&EXT4_MAGIC);
            d[at + 20] = 1; // first data block
            d[at + 33] = 0x20; // 8192 blocks per group
        }
        if !primary {
            d[1024 + 56] ^= 0x01;
        }
        d
    }

    #[test]
    fn formats_only_a_blank_or_fresh_partition() {
        let sys = Recorder::default();
        disk(&sys);
        sys.file("/dev/vda4", layout::fresh_marker("STATE").to_vec());
        sys.file("/dev/vda5", vec![0u8; 4096]);
        assert_eq!(
            mount_data_partition(&sys, "STATE", Path::new("/system/state"), Duration::ZERO).unwrap(),
            Mounted::New
        );
        assert_eq!(mount_data_partition(&sys, "EPHEMERAL", Path::new("/var"), Duration::ZERO).unwrap(), Mounted::New);
        assert_eq!(
            sys.calls(),
            [
                "run /usr/sbin/mke2fs -t ext4 -q -F -L STATE /dev/vda4",
                "write_at /dev/vda4 0 512 bytes",
                "mkdir /system/state",
                "mount /dev/vda4 /system/state ext4",
                "run /usr/sbin/mke2fs -t ext4 -q -F -L EPHEMERAL /dev/vda5",
                "mkdir /var",
                "mount /dev/vda5 /var ext4",
            ]
        );
        // The marker is gone: a later damage to the filesystem is never
        // taken for a fresh install.
        assert_eq!(classify(&sys, Path::new("/dev/vda4"), "STATE").unwrap(), Content::Blank);
        // An existing ext4 is mounted as it is.
        sys.file("/dev/vda4", ext4(true));
        assert_eq!(
            mount_data_partition(&sys, "STATE", Path::new("/system/state"), Duration::ZERO).unwrap(),
            Mounted::Existing
        );
    }

    #[test]
    fn never_formats_a_partition_that_holds_anything_else() {
        let sys = Recorder::default();
        disk(&sys);
        // One flipped bit in the primary superblock's magic: still an ext4
        // (its backup says so), repaired, never formatted.
        sys.file("/dev/vda4", ext4(false));
        assert_eq!(
            classify(&sys, Path::new("/dev/vda4"), "STATE").unwrap(),
            Content::Ext4 { primary: false, backups: vec![(8193, 1024)] }
        );
        // Something that is not ours, or another partition's marker.
        let mut data = vec![0u8; 4096];
        data[3000] = 7;
        sys.file("/dev/vda5", data);
        let e = mount_data_partition(&sys, "EPHEMERAL", Path::new("/var"), Duration::ZERO).unwrap_err();
        assert!(e.to_string().contains("byte 3000") && e.to_string().contains("not formatted"), "{e}");
        sys.file("/dev/vda5", layout::fresh_marker("STATE").to_vec());
        let e = mount_data_partition(&sys, "EPHEMERAL", Path::new("/var"), Duration::ZERO).unwrap_err();
        assert!(e.to_string().contains("marker of partition \"STATE\""), "{e}");
        let _ = mount_data_partition(&sys, "STATE", Path::new("/system/state"), Duration::ZERO);
        assert!(!sys.calls().iter().any(|c| c.contains("mke2fs") || c.starts_with("write")), "{:?}", sys.calls());
    }

    #[test]
    fn an_ext4_that_does_not_mount_is_repaired_from_its_backup_superblock() {
        let sys = Recorder::default();
        disk(&sys);
        sys.file("/dev/vda4", ext4(false));
        let mount = "mount /dev/vda4 /system/state ext4";
        sys.outcome(mount, &[1, 1]);
        sys.outcome("run /usr/sbin/e2fsck -p /dev/vda4", &[8]);
        sys.outcome("run /usr/sbin/e2fsck -y -b 8193 -B 1024 /dev/vda4", &[1]);
        let Mounted::Repaired(steps) =
            mount_data_partition(&sys, "STATE", Path::new("/system/state"), Duration::ZERO).unwrap()
        else {
            panic!("not repaired: {:?}", sys.calls())
        };
        assert_eq!(steps.len(), 5, "{steps:?}");
        assert!(steps[0].contains("primary superblock damaged"), "{steps:?}");
        assert_eq!(steps[1], "e2fsck -p /dev/vda4: exit 8, operational error (no usable superblock?)");
        assert_eq!(steps[3], "e2fsck -y -b 8193 -B 1024 /dev/vda4: exit 1, errors corrected");
        assert_eq!(
            sys.calls(),
            [
                "mkdir /system/state",
                mount,
                "run /usr/sbin/e2fsck -p /dev/vda4",
                mount,
                "run /usr/sbin/e2fsck -y -b 8193 -B 1024 /dev/vda4",
                mount,
            ]
        );
        // Beyond repair: reported with every step tried, still not formatted.
        let sys = Recorder::default();
        disk(&sys);
        sys.file("/dev/vda4", ext4(true));
        sys.outcome(mount, &[1, 1, 1]);
        sys.outcome("run /usr/sbin/e2fsck -p /dev/vda4", &[4]);
        sys.outcome("run /usr/sbin/e2fsck -y -b 8193 -B 1024 /dev/vda4", &[4]);
        let e = mount_data_partition(&sys, "STATE", Path::new("/system/state"), Duration::ZERO).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("does not mount, even after repair") && e.contains("-b 8193"), "{e}");
        assert!(!sys.calls().iter().any(|c| c.contains("mke2fs")));
    }
}

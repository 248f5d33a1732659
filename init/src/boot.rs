//! The early boot steps of PID 1, each a function over [`System`]: mount
//! the API filesystems, load the board's modules, find the slot's root by
//! GPT label, switch into it, mount STATE and EPHEMERAL.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use machinery::layout::{self, Slot};
use nix::mount::MsFlags;

use crate::system::{SysError, System};

/// Where the root image is mounted before init switches into it.
pub const SYSROOT: &str = "/sysroot";
/// The filesystem maker shipped in the root image.
pub const MKE2FS: &str = "/usr/sbin/mke2fs";

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Sys(#[from] SysError),
    #[error(
        "no partition labelled {label} appeared within {waited:?} (is the disk attached, and its driver in the board's modules?)"
    )]
    NoPartition { label: String, waited: Duration },
    #[error(
        "the kernel command line names no slot (expected {}a or {}b): {cmdline:?}",
        layout::CMDLINE_SLOT,
        layout::CMDLINE_SLOT
    )]
    NoSlot { cmdline: String },
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

/// The slot this boot belongs to, from `/proc/cmdline`.
pub fn slot(sys: &dyn System) -> Result<Slot, BootError> {
    let cmdline = sys.read_to_string(Path::new("/proc/cmdline"))?;
    Slot::from_cmdline(&cmdline).ok_or(BootError::NoSlot { cmdline: cmdline.trim().to_string() })
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

/// Mounts the slot's read-only root image at [`SYSROOT`].
pub fn mount_root(sys: &dyn System, slot: Slot, timeout: Duration) -> Result<PathBuf, BootError> {
    let dev = wait_partition(sys, slot.root_label(), timeout)?;
    sys.mkdir_all(Path::new(SYSROOT))?;
    sys.mount(&dev.to_string_lossy(), Path::new(SYSROOT), "squashfs", MsFlags::MS_RDONLY, "")?;
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

fn has_ext4(sys: &dyn System, dev: &Path) -> Result<bool, BootError> {
    // The ext2/3/4 superblock starts at 1024; its magic 0xEF53 at +56.
    Ok(sys.read_at(dev, 1024 + 56, 2)? == [0x53, 0xEF])
}

/// Whether [`mount_data_partition`] had to create the filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Formatted {
    Existing,
    New,
}

/// Mounts STATE or EPHEMERAL, creating its ext4 filesystem on first boot.
/// Only a partition with no ext4 superblock at all is formatted.
pub fn mount_data_partition(
    sys: &dyn System,
    label: &str,
    target: &Path,
    timeout: Duration,
) -> Result<Formatted, BootError> {
    let dev = wait_partition(sys, label, timeout)?;
    let dev_s = dev.to_string_lossy();
    let formatted = if has_ext4(sys, &dev)? {
        Formatted::Existing
    } else {
        sys.run(Path::new(MKE2FS), &["-t", "ext4", "-q", "-F", "-L", label, &dev_s])?;
        Formatted::New
    };
    sys.mkdir_all(target)?;
    sys.mount(&dev_s, target, "ext4", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, "")?;
    Ok(formatted)
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
    fn formats_only_a_blank_partition() {
        let sys = Recorder::default();
        disk(&sys);
        sys.file("/dev/vda4", vec![0u8; 4096]);
        let mut ext4 = vec![0u8; 4096];
        ext4[1080] = 0x53;
        ext4[1081] = 0xEF;
        sys.file("/dev/vda5", ext4);
        assert_eq!(
            mount_data_partition(&sys, "STATE", Path::new("/system/state"), Duration::ZERO).unwrap(),
            Formatted::New
        );
        assert_eq!(
            mount_data_partition(&sys, "EPHEMERAL", Path::new("/var"), Duration::ZERO).unwrap(),
            Formatted::Existing
        );
        assert_eq!(
            sys.calls(),
            [
                "run /usr/sbin/mke2fs -t ext4 -q -F -L STATE /dev/vda4",
                "mkdir /system/state",
                "mount /dev/vda4 /system/state ext4",
                "mkdir /var",
                "mount /dev/vda5 /var ext4",
            ]
        );
    }
}

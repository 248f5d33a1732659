//! The host's block devices and which of them are in use, read from sysfs
//! and procfs. Their roots are parameters, so tests point them at a fake
//! tree; nothing here writes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Where sysfs and procfs are (`/sys`, `/proc`; a fake tree in tests).
#[derive(Debug, Clone)]
pub struct Host {
    pub sys: PathBuf,
    pub proc: PathBuf,
}

/// A whole disk, as `--list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DiskInfo {
    /// Kernel name (`sdb`, `mmcblk0`); the device is `/dev/<name>`.
    pub name: String,
    pub size: u64,
    pub removable: bool,
    /// `usb`, `mmc`, `nvme`, `sata`, `virtio` or `unknown`.
    pub transport: String,
    pub model: String,
    /// Why it must not be flashed (mounted, the running system), if so.
    pub in_use: Vec<String>,
    /// The running system is on it (the root filesystem, or swap).
    pub system: bool,
}

impl DiskInfo {
    /// Removable media: what an SD card or USB stick is.
    pub fn is_removable_media(&self) -> bool {
        self.removable || matches!(self.transport.as_str(), "usb" | "mmc")
    }
}

/// One way a disk is in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Use {
    /// The whole disk.
    pub disk: String,
    /// What uses it, in words: `/ is on vda`, `sda1 is mounted on /boot`.
    pub what: String,
    /// The running system lives on it (the root filesystem, or swap).
    pub system: bool,
}

fn read_trim(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// `\040` and friends in mountinfo's fields.
fn unescape(field: &str) -> String {
    let mut out = String::new();
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 4).and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(char::from(c));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

impl Host {
    pub fn real() -> Host {
        Host { sys: PathBuf::from("/sys"), proc: PathBuf::from("/proc") }
    }

    fn class(&self, name: &str) -> PathBuf {
        self.sys.join("class/block").join(name)
    }

    /// Whether the kernel knows a block device of this name.
    pub fn exists(&self, name: &str) -> bool {
        self.class(name).exists()
    }

    /// The whole disk a partition belongs to; `None` for a whole disk.
    pub fn parent_disk(&self, name: &str) -> Option<String> {
        let class = self.class(name);
        if !class.join("partition").exists() {
            return None;
        }
        let real = std::fs::canonicalize(&class).ok()?;
        Some(real.parent()?.file_name()?.to_string_lossy().into_owned())
    }

    /// The whole disks under a block device: itself (or its disk, for a
    /// partition), or for device-mapper and RAID devices the disks beneath.
    pub fn disks_of(&self, name: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        self.collect_disks(name, &mut out, 0);
        out
    }

    fn collect_disks(&self, name: &str, out: &mut BTreeSet<String>, depth: usize) {
        let slaves: Vec<String> = std::fs::read_dir(self.class(name).join("slaves"))
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        if slaves.is_empty() || depth > 8 {
            out.insert(self.parent_disk(name).unwrap_or_else(|| name.to_string()));
        } else {
            slaves.iter().for_each(|s| self.collect_disks(s, out, depth + 1));
        }
    }

    /// `major:minor` → kernel name, for every block device.
    fn numbers(&self) -> BTreeMap<String, String> {
        let Ok(dir) = std::fs::read_dir(self.sys.join("class/block")) else { return BTreeMap::new() };
        dir.flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                Some((read_trim(&e.path().join("dev"))?, name))
            })
            .collect()
    }

    /// Every disk in use: under a mounted filesystem or active swap, and
    /// which of them hold the running system.
    pub fn uses(&self) -> Vec<Use> {
        let numbers = self.numbers();
        let mut uses = Vec::new();
        let mut add = |dev: &str, what: String, system: bool| {
            for disk in self.disks_of(dev) {
                uses.push(Use { disk, what: what.clone(), system });
            }
        };
        let mountinfo = std::fs::read_to_string(self.proc.join("self/mountinfo")).unwrap_or_default();
        for line in mountinfo.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let (Some(number), Some(target)) = (fields.get(2), fields.get(4)) else { continue };
            let Some(dev) = numbers.get(*number) else { continue };
            let target = unescape(target);
            if target == "/" {
                add(dev, format!("/ is on {dev}"), true);
            } else {
                add(dev, format!("{dev} is mounted on {target}"), false);
            }
        }
        let swaps = std::fs::read_to_string(self.proc.join("swaps")).unwrap_or_default();
        for line in swaps.lines().skip(1) {
            let mut f = line.split_whitespace();
            let (Some(file), Some(kind)) = (f.next(), f.next()) else { continue };
            let dev = match kind {
                "partition" => Path::new(file).file_name().map(|n| n.to_string_lossy().into_owned()),
                // A swap file: the device of the filesystem holding it.
                _ => std::fs::metadata(file).ok().and_then(|m| {
                    use std::os::unix::fs::MetadataExt as _;
                    let d = m.dev();
                    numbers.get(&format!("{}:{}", nix::sys::stat::major(d), nix::sys::stat::minor(d))).cloned()
                }),
            };
            if let Some(dev) = dev {
                add(&dev, format!("swap is on {dev}"), true);
            }
        }
        uses
    }

    /// Device-mapper or RAID devices built on a disk or its partitions.
    pub fn holders(&self, disk: &str) -> Vec<String> {
        let mut names = vec![disk.to_string()];
        if let Ok(dir) = std::fs::read_dir(self.sys.join("block").join(disk)) {
            names.extend(
                dir.flatten()
                    .filter(|e| e.path().join("partition").exists())
                    .map(|e| e.file_name().to_string_lossy().into_owned()),
            );
        }
        let mut out: Vec<String> = names
            .iter()
            .flat_map(|n| {
                std::fs::read_dir(self.class(n).join("holders"))
                    .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect::<Vec<_>>())
                    .unwrap_or_default()
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// One whole disk's facts.
    pub fn disk(&self, name: &str, uses: &[Use]) -> Option<DiskInfo> {
        let dir = self.sys.join("block").join(name);
        let sectors: u64 = read_trim(&dir.join("size"))?.parse().ok()?;
        let real = std::fs::canonicalize(&dir).unwrap_or(dir.clone()).display().to_string();
        let transport = if real.contains("/usb") {
            "usb"
        } else if real.contains("/mmc_host/") || name.starts_with("mmcblk") {
            "mmc"
        } else if real.contains("/nvme") {
            "nvme"
        } else if real.contains("/ata") {
            "sata"
        } else if real.contains("/virtio") {
            "virtio"
        } else {
            "unknown"
        };
        let part = |f: &str| read_trim(&dir.join("device").join(f)).unwrap_or_default();
        // virtio's "vendor" is a PCI id (0x1af4), not a name.
        let model = [part("vendor"), part("model"), part("name")]
            .into_iter()
            .filter(|s| !s.is_empty() && !s.starts_with("0x"))
            .collect::<Vec<_>>()
            .join(" ");
        Some(DiskInfo {
            name: name.to_string(),
            size: sectors * 512,
            removable: read_trim(&dir.join("removable")).as_deref() == Some("1"),
            transport: transport.to_string(),
            model,
            in_use: uses.iter().filter(|u| u.disk == name).map(|u| u.what.clone()).collect(),
            system: uses.iter().any(|u| u.disk == name && u.system),
        })
    }

    /// Every whole disk that could take an image: not loop, RAM, zram,
    /// device-mapper, RAID or optical devices, and not empty (a card reader
    /// with no card).
    pub fn list(&self) -> Vec<DiskInfo> {
        let uses = self.uses();
        let mut names: Vec<String> = std::fs::read_dir(self.sys.join("block"))
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        names
            .iter()
            .filter(|n| !["loop", "ram", "zram", "dm-", "md", "sr", "nbd"].iter().any(|p| n.starts_with(p)))
            .filter_map(|n| self.disk(n, &uses))
            .filter(|d| d.size > 0)
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// A fake /sys and /proc: `vda` (virtio, the root filesystem), `sda`
    /// (SATA, /boot on sda1, swap on sda2), `sdb` (a USB card reader, a
    /// 32 GiB card, nothing mounted), `mmcblk0` (an SD slot, sdcard
    /// mounted at /media/card), `sdc` (USB reader, no card), `loop0`.
    pub(crate) fn fake() -> (tempfile::TempDir, Host) {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path().join("sys");
        let disk = |name: &str, dev: &str, bus: &str, sectors: u64, removable: bool, parts: &[(&str, &str)]| {
            let real = sys.join("devices").join(bus).join("block").join(name);
            write(&real.join("size"), &format!("{sectors}\n"));
            write(&real.join("removable"), if removable { "1\n" } else { "0\n" });
            write(&real.join("dev"), &format!("{dev}\n"));
            std::fs::create_dir_all(real.join("holders")).unwrap();
            std::fs::create_dir_all(sys.join("block")).unwrap();
            std::fs::create_dir_all(sys.join("class/block")).unwrap();
            symlink(&real, sys.join("block").join(name)).unwrap();
            symlink(&real, sys.join("class/block").join(name)).unwrap();
            for (p, pdev) in parts {
                write(&real.join(p).join("partition"), "1\n");
                write(&real.join(p).join("dev"), &format!("{pdev}\n"));
                std::fs::create_dir_all(real.join(p).join("holders")).unwrap();
                symlink(real.join(p), sys.join("class/block").join(p)).unwrap();
            }
            real
        };
        disk("vda", "254:0", "pci0000:00/virtio1", 536870912, false, &[]);
        disk("sda", "8:0", "pci0000:00/ata1/host0", 1953525168, false, &[("sda1", "8:1"), ("sda2", "8:2")]);
        let sdb = disk("sdb", "8:16", "pci0000:00/usb2/2-1/host6", 62333952, true, &[("sdb1", "8:17")]);
        write(&sdb.join("device/vendor"), "Generic \n");
        write(&sdb.join("device/model"), "STORAGE DEVICE  \n");
        let mmc =
            disk("mmcblk0", "179:0", "platform/mmc_host/mmc0/mmc0:aaaa", 124735488, false, &[("mmcblk0p1", "179:1")]);
        write(&mmc.join("device/name"), "SC64G\n");
        disk("sdc", "8:32", "pci0000:00/usb2/2-2/host7", 0, true, &[]);
        disk("loop0", "7:0", "virtual", 2048, false, &[]);
        let proc = t.path().join("proc");
        write(
            &proc.join("self/mountinfo"),
            "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
             27 1 254:0 / / rw,relatime - ext4 /dev/root rw\n\
             30 27 8:1 / /boot rw,relatime - vfat /dev/sda1 rw\n\
             31 27 179:1 / /media/my\\040card rw,relatime - vfat /dev/mmcblk0p1 rw\n",
        );
        write(
            &proc.join("swaps"),
            "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n/dev/sda2                               partition\t8388604\t\t0\t\t-2\n",
        );
        (t, Host { sys, proc })
    }

    #[test]
    fn lists_disks_with_transport_size_and_use() {
        let (_t, host) = fake();
        let list = host.list();
        let names: Vec<&str> = list.iter().map(|d| d.name.as_str()).collect();
        // loop0 is virtual, sdc has no card.
        assert_eq!(names, ["mmcblk0", "sda", "sdb", "vda"]);
        let sdb = &list[2];
        assert_eq!((sdb.size, sdb.removable, sdb.transport.as_str()), (62333952 * 512, true, "usb"));
        assert_eq!(sdb.model, "Generic STORAGE DEVICE");
        assert!(sdb.in_use.is_empty() && sdb.is_removable_media());
        let mmc = &list[0];
        assert_eq!((mmc.transport.as_str(), mmc.model.as_str()), ("mmc", "SC64G"));
        assert_eq!(mmc.in_use, ["mmcblk0p1 is mounted on /media/my card"]);
        assert!(mmc.is_removable_media());
        let sda = &list[1];
        assert_eq!(sda.transport, "sata");
        assert_eq!(sda.in_use, ["sda1 is mounted on /boot", "swap is on sda2"]);
        assert!(!sda.is_removable_media());
        assert_eq!(list[3].in_use, ["/ is on vda"]);
        assert!(list[3].system && sda.system && !mmc.system && !sdb.system);
    }

    #[test]
    fn uses_mark_the_system_disks() {
        let (_t, host) = fake();
        let system: BTreeSet<String> = host.uses().into_iter().filter(|u| u.system).map(|u| u.disk).collect();
        assert_eq!(system.into_iter().collect::<Vec<_>>(), ["sda", "vda"]);
        assert_eq!(host.parent_disk("sdb1").as_deref(), Some("sdb"));
        assert_eq!(host.parent_disk("sdb"), None);
    }

    #[test]
    fn device_mapper_maps_to_the_disks_beneath() {
        let (t, host) = fake();
        let dm = t.path().join("sys/devices/virtual/block/dm-0");
        write(&dm.join("dev"), "253:0\n");
        std::fs::create_dir_all(dm.join("slaves")).unwrap();
        symlink(host.sys.join("class/block/sdb1"), dm.join("slaves/sdb1")).unwrap();
        symlink(&dm, host.sys.join("class/block/dm-0")).unwrap();
        std::fs::create_dir_all(host.sys.join("class/block/sdb1/holders/dm-0")).unwrap();
        assert_eq!(host.disks_of("dm-0").into_iter().collect::<Vec<_>>(), ["sdb"]);
        assert_eq!(host.holders("sdb"), ["dm-0"]);
        let err = crate::flash::check_disk(&host, "sdb", false).unwrap_err().to_string();
        assert!(err.contains("in use by /dev/dm-0 (LVM, LUKS or RAID)"), "{err}");
        let err = crate::flash::check_disk(&host, "dm-0", true).unwrap_err().to_string();
        assert!(err.contains("device-mapper or RAID device built on /dev/sdb"), "{err}");
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape("/media/my\\040card\\011x"), "/media/my card\tx");
        assert_eq!(unescape("/a\\b"), "/a\\b");
    }
}

//! The disk and file layout: the contract between image-builder, which
//! writes images, and init, which boots them.
//!
//! GPT partitions, found by label (`PARTNAME=` in
//! `/sys/class/block/*/uevent`):
//!
//! | label       | content                                                   |
//! |-------------|-----------------------------------------------------------|
//! | `EFI`       | FAT: systemd-boot and one UKI per slot (`plinth-2-a.efi`…)|
//! | `ROOT-A`    | read-only root image (squashfs) of slot A                  |
//! | `ROOT-B`    | read-only root image of slot B                            |
//! | `STATE`     | ext4, small: machine config, node identity, boot state    |
//! | `EPHEMERAL` | ext4, the rest of the disk: /var                          |
//!
//! In that order, each 1 MiB aligned. image-builder writes `EFI` and both
//! root slots (the same root image, so a fresh node has a bootable fallback)
//! and leaves `STATE` and `EPHEMERAL` zeroed but for the fresh-install
//! marker ([`fresh_marker`]) in their first sector: init creates their ext4
//! filesystems on first boot, and only on a partition that holds that
//! marker or nothing but zeros — never on one that holds anything else (a
//! damaged filesystem is repaired or left alone, not replaced). That keeps
//! the image small and sparse, needs no mkfs on the build host, and lets the
//! partition first grown to the real disk's size be formatted at its final
//! size.

//! Raspberry Pi images (`boot = "rpi-firmware"`, and `arm64-virt`, whose
//! boot files the QEMU harness reads as the Pi firmware would) have no `EFI`
//! partition; the firmware reads `autoboot.txt` from the first FAT
//! partition, then boots the partition it names (`tryboot_a_b=1`):
//!
//! | # | label       | content                                               |
//! |---|-------------|-------------------------------------------------------|
//! | 1 | `BOOT`      | FAT: `autoboot.txt` only (one sector: the A/B state)  |
//! | 2 | `BOOT-A`    | FAT: firmware, `config.txt`, `cmdline.txt` (slot a), kernel, initramfs, DTBs |
//! | 3 | `BOOT-B`    | the same for slot b                                   |
//! | 4…7 | `ROOT-A`, `ROOT-B`, `STATE`, `EPHEMERAL` | as above               |

/// Partition labels.
pub const EFI: &str = "EFI";
/// Raspberry Pi: the FAT partition the firmware reads `autoboot.txt` from.
pub const RPI_AUTOBOOT: &str = "BOOT";
pub const BOOT_A: &str = "BOOT-A";
pub const BOOT_B: &str = "BOOT-B";
/// Raspberry Pi: the partition numbers (1-based, as `boot_partition=` counts
/// them) of `BOOT-A` and `BOOT-B`.
pub const RPI_BOOT_PARTITIONS: (u32, u32) = (2, 3);
/// On the `BOOT` partition: the firmware's A/B file.
pub const RPI_AUTOBOOT_TXT: &str = "/autoboot.txt";
/// On a slot's boot partition: the kernel command line (`plinth.slot=` in it).
pub const RPI_CMDLINE_TXT: &str = "/cmdline.txt";
/// On the first FAT partition (`EFI`, or `BOOT` on a Pi): a signed machine
/// config put there by `osctl image flash --config`, adopted at first boot.
pub const SEED_CONFIG: &str = "/plinth/config.signed";
pub const ROOT_A: &str = "ROOT-A";
pub const ROOT_B: &str = "ROOT-B";
pub const STATE: &str = "STATE";
pub const EPHEMERAL: &str = "EPHEMERAL";

/// A root slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    /// The GPT label of this slot's root partition.
    pub fn root_label(self) -> &'static str {
        match self {
            Slot::A => ROOT_A,
            Slot::B => ROOT_B,
        }
    }

    /// The label of this slot's boot partition (Raspberry Pi layout).
    pub fn boot_label(self) -> &'static str {
        match self {
            Slot::A => BOOT_A,
            Slot::B => BOOT_B,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// The slot named on a kernel command line (`plinth.slot=a`).
    pub fn from_cmdline(cmdline: &str) -> Option<Slot> {
        cmdline.split_whitespace().find_map(|w| match w.strip_prefix(CMDLINE_SLOT)? {
            "a" => Some(Slot::A),
            "b" => Some(Slot::B),
            _ => None,
        })
    }
}

/// On the EFI partition (FAT, paths from its root): systemd-boot as the
/// removable-media boot loader, its config, and the directory of Unified
/// Kernel Images, one per slot, named by `slots::sdboot::file_name`.
pub const EFI_BOOT_LOADER: &str = "/EFI/BOOT/BOOTX64.EFI";
pub const EFI_LOADER_CONF: &str = "/loader/loader.conf";
pub const EFI_LINUX_DIR: &str = "/EFI/Linux";

/// Kernel command-line key naming the slot a boot entry belongs to.
pub const CMDLINE_SLOT: &str = "plinth.slot=";

/// In the initramfs: where the board's kernel modules are, in load order
/// (`modules/order` lists the file names, one per line).
pub const INITRAMFS_MODULES: &str = "/lib/modules/plinth";
/// In the root image: binaries and the config-signing key baked in.
pub const ROOT_APID: &str = "/usr/bin/apid";
pub const ROOT_INIT: &str = "/usr/bin/plinth-init";
/// The control plane and the kubelet.
pub const ROOT_ORCHESTRATOR: &str = "/usr/bin/orchestrator";
/// Our static binaries an image carries, by file name in the build's
/// binary directory, with where they go in the root.
pub const IMAGE_BINARIES: [(&str, &str); 3] =
    [("plinth-init", ROOT_INIT), ("apid", ROOT_APID), ("orchestrator", ROOT_ORCHESTRATOR)];
/// Our pod sandbox ("pause") program, by file name in the build's binary
/// directory; the image carries it only inside [`PAUSE_ARCHIVE`].
pub const PAUSE_BINARY: &str = "plinth-pause";
/// The container runtime in the root image (Debian's containerd, runc and
/// CNI plugins, with the shared libraries they link).
pub const ROOT_CONTAINERD: &str = "/usr/bin/containerd";
/// Debian's etcd server, which init runs on a control plane of an HA
/// cluster (`cluster.datastore = "etcd"`).
pub const ROOT_ETCD: &str = "/usr/bin/etcd";
/// etcd's data and its member's certificates (on EPHEMERAL).
pub const ETCD_DIR: &str = "/var/lib/etcd";
/// etcd's client and peer ports (its registered ones).
pub const ETCD_CLIENT_PORT: u16 = 2379;
pub const ETCD_PEER_PORT: u16 = 2380;
/// containerd's config, written by image-builder: CRI with runc and the
/// cgroupfs driver, state under /run, images and snapshots on EPHEMERAL.
pub const ROOT_CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
/// Where a node's boot steps are appended (`boot_steps`): on /run, which
/// PID 1 mounts first and carries into the root, so it is new each boot.
pub const BOOT_STEPS: &str = "/run/plinth/boot-steps";
/// containerd's CRI socket.
pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
/// containerd's images, snapshots and containers (on EPHEMERAL).
pub const CONTAINERD_ROOT: &str = "/var/lib/containerd";
/// Where the CNI plugins are, in the root image.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// Where the kubelet writes its CNI network config and containerd reads it
/// (on EPHEMERAL: the root is read-only).
pub const CNI_CONF_DIR: &str = "/var/lib/plinth/cni";
/// In the root image: OCI image archives imported into containerd when the
/// kubelet starts (the pod sandbox image, and the images given to
/// `image-builder --preload-image`): pods run without a registry.
pub const ROOT_IMAGES: &str = "/usr/share/plinth/images";
/// The pod sandbox image's archive in [`ROOT_IMAGES`], and its name.
pub const PAUSE_ARCHIVE: &str = "0-pause.tar";
pub const PAUSE_IMAGE: &str = "localhost/plinth/pause:1";
/// The executable search path of the services init runs (containerd finds
/// runc and its shim, the CNI plugins find iptables, the kubelet ctr).
pub const SERVICE_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
pub const ROOT_TRUSTED_KEY: &str = "/etc/plinth/trusted-key.pub";
/// In the root image: the image manifest (versions, sha256 of every part).
pub const ROOT_MANIFEST: &str = "/etc/plinth/manifest.json";
/// In the root image: when the image was built (Unix seconds, decimal, one
/// line; `SOURCE_DATE_EPOCH` when set). init's clock floor on boards with no
/// real-time clock.
pub const ROOT_BUILD_TIME: &str = "/etc/plinth/build-time";
/// In the root image: the board config the image was built for.
pub const ROOT_BOARD: &str = "/etc/plinth/board.toml";
/// Mount points, once switched into the root image.
pub const MOUNT_STATE: &str = "/system/state";
pub const MOUNT_EPHEMERAL: &str = "/var";
/// On EPHEMERAL: the orchestrator's data (its SQLite store, its CA and the
/// admin kubeconfig it writes).
pub const ORCHESTRATOR_DATA: &str = "/var/lib/plinth/orchestrator";
/// On EPHEMERAL: a copy of the machine API's trust (apid's serving
/// certificate and key, the client CA certificate, the cluster id; 0600 in
/// a 0700 directory), kept apart from STATE so that a STATE that cannot be
/// read still leaves safe mode with the last known trust.
pub const TRUST_COPY: &str = "/var/lib/plinth/trust/trust.json";
/// The Kubernetes API port on a control-plane node.
pub const KUBE_API_PORT: u16 = 6443;

/// The fresh-install marker: the first sector of `STATE` and `EPHEMERAL`
/// in a new image. Its magic, a version (little-endian u32) and the
/// partition's label (NUL-padded); the rest of the sector is zero.
pub const FRESH_MAGIC: &[u8; 16] = b"PLINTH-FRESH-FS\0";
pub const FRESH_VERSION: u32 = 1;
pub const FRESH_MARKER_LEN: usize = 512;
/// Where the label sits in the marker, and its room.
const FRESH_LABEL: std::ops::Range<usize> = 20..52;

/// The fresh-install marker image-builder writes at the start of the data
/// partition labelled `label`: init may format a partition that holds it.
pub fn fresh_marker(label: &str) -> [u8; FRESH_MARKER_LEN] {
    let mut m = [0u8; FRESH_MARKER_LEN];
    m[..16].copy_from_slice(FRESH_MAGIC);
    m[16..20].copy_from_slice(&FRESH_VERSION.to_le_bytes());
    let room = &mut m[FRESH_LABEL];
    let n = label.len().min(room.len());
    room[..n].copy_from_slice(&label.as_bytes()[..n]);
    m
}

/// What a partition's first sector says about the fresh-install marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    /// No marker (no magic).
    Absent,
    /// This partition's marker, of the version this build writes.
    Fresh,
    /// Our magic, but another version or another partition's label: not
    /// formatted (it is not what this build wrote there).
    Foreign(String),
}

/// Reads the marker in `sector` (the partition's first bytes) for `label`.
pub fn read_fresh_marker(sector: &[u8], label: &str) -> Marker {
    if sector.len() < FRESH_MARKER_LEN || &sector[..16] != FRESH_MAGIC {
        return Marker::Absent;
    }
    let version = u32::from_le_bytes([sector[16], sector[17], sector[18], sector[19]]);
    let named = &sector[FRESH_LABEL];
    let named = String::from_utf8_lossy(&named[..named.iter().position(|&b| b == 0).unwrap_or(named.len())]);
    if version != FRESH_VERSION {
        Marker::Foreign(format!("fresh-install marker version {version} (this build knows {FRESH_VERSION})"))
    } else if named != label {
        Marker::Foreign(format!("fresh-install marker of partition {named:?}"))
    } else if sector[FRESH_LABEL.end..FRESH_MARKER_LEN].iter().any(|&b| b != 0) {
        Marker::Foreign("fresh-install marker followed by data in its sector".into())
    } else {
        Marker::Fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_marker_round_trip() {
        let m = fresh_marker(STATE);
        assert_eq!(read_fresh_marker(&m, STATE), Marker::Fresh);
        assert!(matches!(read_fresh_marker(&m, EPHEMERAL), Marker::Foreign(w) if w.contains("\"STATE\"")));
        assert_eq!(read_fresh_marker(&[0; 512], STATE), Marker::Absent);
        let mut v2 = m;
        v2[16] = 2;
        assert!(matches!(read_fresh_marker(&v2, STATE), Marker::Foreign(w) if w.contains("version 2")));
        let mut dirty = m;
        dirty[300] = 1;
        assert!(matches!(read_fresh_marker(&dirty, STATE), Marker::Foreign(_)));
    }

    #[test]
    fn slot_from_cmdline() {
        assert_eq!(Slot::from_cmdline("console=ttyS0 plinth.slot=b quiet"), Some(Slot::B));
        assert_eq!(Slot::from_cmdline("plinth.slot=c"), None);
        assert_eq!(Slot::from_cmdline("console=ttyS0"), None);
        assert_eq!(Slot::A.other().root_label(), "ROOT-B");
    }
}

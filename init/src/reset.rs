//! `osctl reset`: what a node wipes when it leaves its cluster, as
//! `talosctl reset` does, so that it comes back in maintenance mode and
//! can join another cluster.
//!
//! - STATE: every file but those that describe the disk's boot slots
//!   rather than the node's cluster ([`KEEP_ON_STATE`]: the slot record,
//!   the security floor, the Raspberry Pi's trial record, and the clock's
//!   last time) goes once the services have stopped: the config and its
//!   copies, the machine API's trust record. The security floor only
//!   rises, so a reset must not lower it (a reset node must not take a
//!   bundle its floor refuses).
//! - EPHEMERAL (PID 1): after it is unmounted, its first MiB becomes the
//!   fresh-install marker and zeros, and the backup superblocks' magic is
//!   zeroed, so the next boot formats it (`boot::classify` finds it
//!   `Fresh`): the orchestrator's store and keys, the kubelet's
//!   certificate, containerd's images and the trust copy go with it. Its
//!   data blocks are not overwritten (as Talos' default fast wipe).
//! - Host mode: the state directory stands for both: everything in it but
//!   [`KEEP_ON_STATE`] goes.

use std::path::{Path, PathBuf};

use machinery::layout;

use crate::boot::{self, Content};
use crate::system::System;

/// On STATE (or the host-mode state directory): what a reset keeps.
pub const KEEP_ON_STATE: &[&str] =
    &["slots.json", crate::upgrade::SECURITY_FLOOR, crate::upgrade::TRIAL_RECORD, crate::clock::SAVED];

/// On /run (a tmpfs, gone at the reboot): a reset was asked; PID 1 wipes
/// EPHEMERAL once it is unmounted.
pub const RESET_REQUESTED: &str = "/run/plinth/reset-requested";

/// The entries of `dir` a reset removes (the others are kept), sorted.
pub fn plan(entries: &[String]) -> Vec<String> {
    let mut remove: Vec<String> = entries.iter().filter(|e| !KEEP_ON_STATE.contains(&e.as_str())).cloned().collect();
    remove.sort();
    remove
}

/// Removes what [`plan`] says from `dir`; returns what was removed, or
/// the first failure (naming the path).
pub fn wipe_dir(dir: &Path) -> Result<Vec<String>, String> {
    let entries: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("read {}: {e}", dir.display())),
    };
    let remove = plan(&entries);
    for name in &remove {
        let path: PathBuf = dir.join(name);
        let meta = std::fs::symlink_metadata(&path).map_err(|e| format!("stat {}: {e}", path.display()))?;
        let r = if meta.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        r.map_err(|e| format!("remove {}: {e}", path.display()))?;
    }
    Ok(remove)
}

/// Makes the unmounted data partition `dev` labelled `label` one the next
/// boot formats: the fresh-install marker, zeros to the end of the first
/// MiB, and no backup superblock left.
pub fn wipe_partition(sys: &dyn System, dev: &Path, label: &str) -> Result<(), String> {
    let backups = match boot::classify(sys, dev, label).map_err(|e| e.to_string())? {
        Content::Ext4 { backups, .. } => backups,
        _ => Vec::new(),
    };
    let mut head = vec![0u8; boot::BLANK_REGION];
    head[..layout::FRESH_MARKER_LEN].copy_from_slice(&layout::fresh_marker(label));
    sys.write_at(dev, 0, &head).map_err(|e| e.to_string())?;
    for (block, size) in backups {
        sys.write_at(dev, block * u64::from(size) + boot::EXT4_MAGIC_AT, &[0, 0]).map_err(|e| e.to_string())?;
    }
    sys.sync();
    match boot::classify(sys, dev, label).map_err(|e| e.to_string())? {
        Content::Fresh => Ok(()),
        other => Err(format!("{}: still {other:?} after the wipe", dev.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_keeps_only_what_describes_the_disks_slots() {
        let on_state: Vec<String> = [
            "config",
            "trust.json",
            "slots.json",
            "security-floor",
            "boot-trial",
            crate::clock::SAVED,
            "orchestrator",
            "logs",
            "init.sock",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut want = vec!["config", "init.sock", "logs", "orchestrator", "trust.json"];
        want.sort();
        assert_eq!(plan(&on_state), want);
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("config")).unwrap();
        std::fs::write(d.path().join("config/config.signed"), "x").unwrap();
        std::fs::write(d.path().join("security-floor"), "3\n").unwrap();
        std::fs::write(d.path().join("trust.json"), "{}").unwrap();
        assert_eq!(wipe_dir(d.path()).unwrap(), ["config", "trust.json"]);
        assert_eq!(std::fs::read_to_string(d.path().join("security-floor")).unwrap(), "3\n", "the floor never falls");
        assert!(!d.path().join("config").exists());
    }

    #[test]
    fn a_wiped_ephemeral_is_formatted_at_the_next_boot() {
        let sys = crate::system::Recorder::default();
        // An ext4 (1 KiB blocks): the primary superblock and group 1's backup.
        let mut disk = vec![0u8; 9 << 20];
        disk[1024 + 56..1024 + 58].copy_from_slice(&[0x53, 0xEF]);
        disk[1024 + 24] = 0; // log block size: 1 KiB
        disk[1024 + 32..1024 + 36].copy_from_slice(&8192u32.to_le_bytes());
        disk[1024 + 20..1024 + 24].copy_from_slice(&1u32.to_le_bytes());
        let backup = 8193 * 1024 + 56;
        disk[backup..backup + 2].copy_from_slice(&[0x53, 0xEF]);
        disk[5000] = 7;
        sys.file("/dev/vda5", disk);
        let dev = Path::new("/dev/vda5");
        assert!(matches!(boot::classify(&sys, dev, layout::EPHEMERAL).unwrap(), Content::Ext4 { .. }));
        wipe_partition(&sys, dev, layout::EPHEMERAL).unwrap();
        assert_eq!(boot::classify(&sys, dev, layout::EPHEMERAL).unwrap(), Content::Fresh);
    }
}

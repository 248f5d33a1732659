//! Disk pressure on the node's data filesystem (EPHEMERAL on a node: the
//! kubelet's directory, containerd's root and the store's database share
//! it). The threshold is upstream's default hard eviction signal,
//! `nodefs.available<10%`; the condition's and the event's wording are
//! the upstream kubelet's.

use std::path::Path;

/// Below this share of the filesystem available, the node has disk pressure.
pub const MIN_AVAILABLE_PERCENT: u64 = 10;

/// Space on the filesystem holding a path, as statvfs(3) reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes an unprivileged process may still write (`f_bavail`).
    pub available: u64,
    pub total: u64,
}

impl Usage {
    pub fn of(path: &Path) -> Result<Usage, crate::KubeletError> {
        let s = nix::sys::statvfs::statvfs(path).map_err(|e| crate::KubeletError::Io {
            op: "statvfs",
            path: path.to_path_buf(),
            source: e.into(),
        })?;
        Ok(Usage { available: s.blocks_available() * s.fragment_size(), total: s.blocks() * s.fragment_size() })
    }

    pub fn pressure(&self) -> bool {
        self.total > 0 && u128::from(self.available) * 100 < u128::from(self.total) * u128::from(MIN_AVAILABLE_PERCENT)
    }
}

/// The `DiskPressure` condition's reason and message.
pub fn condition(pressure: bool) -> (&'static str, &'static str) {
    if pressure {
        ("KubeletHasDiskPressure", "kubelet has disk pressure")
    } else {
        ("KubeletHasNoDiskPressure", "kubelet has no disk pressure")
    }
}

/// The Event's reason when the condition turns `pressure` from the stored
/// `old` status ("True"/"False"; `None` before the first status): only a
/// change is recorded, and a first status only when it is pressure.
pub fn transition(old: Option<&str>, pressure: bool) -> Option<&'static str> {
    let now = if pressure { "True" } else { "False" };
    match old {
        Some(o) if o == now => None,
        None if !pressure => None,
        _ => Some(if pressure { "NodeHasDiskPressure" } else { "NodeHasNoDiskPressure" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_percent_available_is_the_line() {
        let u = |available, total| Usage { available, total }.pressure();
        assert!(!u(100, 1000));
        assert!(u(99, 1000));
        assert!(u(0, 1000));
        assert!(!u(0, 0), "an unknown size is no pressure");
        assert!(!u(u64::MAX / 5, u64::MAX), "no overflow");
    }

    #[test]
    fn events_only_on_a_change() {
        assert_eq!(transition(Some("False"), true), Some("NodeHasDiskPressure"));
        assert_eq!(transition(Some("True"), false), Some("NodeHasNoDiskPressure"));
        assert_eq!(transition(Some("True"), true), None);
        assert_eq!(transition(Some("False"), false), None);
        assert_eq!(transition(None, true), Some("NodeHasDiskPressure"));
        assert_eq!(transition(None, false), None);
        assert_eq!(condition(true), ("KubeletHasDiskPressure", "kubelet has disk pressure"));
    }

    /// A real filesystem (a tmpfs mounted here; needs root) filled past
    /// 90 % has pressure, and none once the space is freed.
    #[test]
    fn a_filling_filesystem_comes_under_pressure_and_leaves_it() {
        let dir = tempfile::tempdir().unwrap();
        nix::mount::mount(Some("tmpfs"), dir.path(), Some("tmpfs"), nix::mount::MsFlags::empty(), Some("size=4m"))
            .unwrap_or_else(|e| panic!("mount a tmpfs on {} (the test needs root): {e}", dir.path().display()));
        let check = || -> Result<(), String> {
            let empty = Usage::of(dir.path()).map_err(|e| e.to_string())?;
            if empty.pressure() || empty.total != 4 << 20 {
                return Err(format!("an empty 4 MiB tmpfs: {empty:?}"));
            }
            let file = dir.path().join("big");
            std::fs::write(&file, vec![1u8; (37 << 20) / 10]).map_err(|e| e.to_string())?;
            let full = Usage::of(dir.path()).map_err(|e| e.to_string())?;
            if !full.pressure() {
                return Err(format!("3.7 of 4 MiB used is pressure: {full:?}"));
            }
            std::fs::remove_file(&file).map_err(|e| e.to_string())?;
            let freed = Usage::of(dir.path()).map_err(|e| e.to_string())?;
            if freed.pressure() {
                return Err(format!("freed: {freed:?}"));
            }
            Ok(())
        };
        let result = check();
        nix::mount::umount(dir.path()).unwrap();
        result.unwrap();
        assert!(matches!(Usage::of(&dir.path().join("missing")), Err(crate::KubeletError::Io { op: "statvfs", .. })));
    }
}

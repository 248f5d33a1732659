//! This boot's steps (`machinery::boot_steps`): init appends the ones it
//! reaches, its services append theirs to the same file, and `Version`
//! reads them all back.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use machinery::api;
use machinery::boot_steps;

/// Time since the kernel started (`CLOCK_BOOTTIME`).
pub fn since_boot() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).map_or(Duration::ZERO, Duration::from)
}

/// The file of this boot's steps.
#[derive(Debug, Clone)]
pub struct StepLog(PathBuf);

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("reading the boot steps {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: boot_steps::ParseError },
}

impl StepLog {
    pub fn new(path: impl Into<PathBuf>) -> StepLog {
        StepLog(path.into())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Starts an empty file (host mode: the last run's steps are not this one's).
    pub fn clear(&self) -> std::io::Result<()> {
        match std::fs::remove_file(&self.0) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Records that `name` is reached now.
    pub fn record(&self, name: &str) {
        self.record_at(name, since_boot());
    }

    /// Records that `name` was reached at `at` since boot. A step that
    /// cannot be written is logged: the boot goes on without it.
    pub fn record_at(&self, name: &str, at: Duration) {
        let written = self
            .0
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|_| std::fs::OpenOptions::new().create(true).append(true).open(&self.0))
            .and_then(|mut f| f.write_all(boot_steps::line(name, at).as_bytes()));
        if let Err(e) = written {
            tracing::warn!("recording boot step {name} in {}: {e}", self.0.display());
        }
    }

    /// The steps recorded so far, in order.
    pub fn read(&self) -> Result<Vec<api::BootStep>, StepError> {
        let text = match std::fs::read_to_string(&self.0) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            r => r.map_err(|source| StepError::Read { path: self.0.clone(), source })?,
        };
        let steps = boot_steps::parse(&text).map_err(|source| StepError::Parse { path: self.0.clone(), source })?;
        Ok(steps.into_iter().map(|(name, at)| api::BootStep { name, since_boot_us: at.as_micros() as u64 }).collect())
    }
}

/// This boot's id, which the kernel draws anew at each boot.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_appended_and_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let log = StepLog::new(dir.path().join("run/boot-steps"));
        assert!(log.read().unwrap().is_empty(), "no file yet: no steps");
        log.record_at(boot_steps::PID1, Duration::from_millis(2_000));
        log.record(boot_steps::NETWORK);
        let steps = log.read().unwrap();
        assert_eq!(steps.len(), 2);
        assert_eq!((steps[0].name.as_str(), steps[0].since_boot_us), (boot_steps::PID1, 2_000_000));
        assert!(steps[1].since_boot_us > 0);
        log.clear().unwrap();
        assert!(log.read().unwrap().is_empty());
    }

    #[test]
    fn a_damaged_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let log = StepLog::new(dir.path().join("boot-steps"));
        std::fs::write(log.path(), "pid1 x\n").unwrap();
        let e = log.read().unwrap_err().to_string();
        assert!(e.contains("boot-steps") && e.contains("line 1"), "{e}");
    }
}

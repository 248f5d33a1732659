//! `orchestrator backup` and `orchestrator restore`, and what a server
//! does when it finds its database damaged: say so, name the last
//! automatic snapshot and how to bring it back, and wait (a supervisor
//! restarting it would only find the same damage again).

use std::path::{Path, PathBuf};

use orchestrator_store::StoreError;
use orchestrator_store::backup::{self, Header, Snapshots};

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The database of a data directory.
pub fn database(data_dir: &Path) -> PathBuf {
    data_dir.join("state.db")
}

/// The cluster CA certificate a server in `data_dir` uses: `--ca-cert`, or its own.
fn ca_cert(data_dir: &Path, ca_cert: Option<&Path>) -> PathBuf {
    ca_cert.map_or_else(|| data_dir.join("ca.crt"), Path::to_path_buf)
}

/// Writes a backup of `data_dir`'s store (which may be serving) to `out`.
pub fn backup(data_dir: &Path, ca: Option<&Path>, out: &Path) -> anyhow::Result<Header> {
    let header = Header {
        plinth_version: env!("CARGO_PKG_VERSION").into(),
        cluster: backup::cluster_of(&ca_cert(data_dir, ca))?,
        created: orchestrator_apimachinery::registry::now(),
        sha256: String::new(),
        size: 0,
    };
    Ok(backup::write_backup(&database(data_dir), out, header)?)
}

/// Brings back `from` (a backup file, or an automatic snapshot) as
/// `data_dir`'s store, with the server stopped; a backup of another
/// cluster (another CA) is refused. Returns what it says of the result.
pub fn restore(data_dir: &Path, ca: Option<&Path>, from: &Path) -> anyhow::Result<String> {
    let db = database(data_dir);
    let ca = ca_cert(data_dir, ca);
    // A fresh node may have no CA yet: it takes the backup's cluster.
    let cluster = if ca.exists() { Some(backup::cluster_of(&ca)?) } else { None };
    let is_backup = std::fs::read(from)
        .map_err(|e| anyhow::anyhow!("read {}: {e}", from.display()))?
        .starts_with(b"plinth-store-backup/");
    let kept = if is_backup {
        backup::restore_backup(from, &db, cluster.as_deref(), now_unix())?.1
    } else {
        backup::restore(from, &db, now_unix())?
    };
    Ok(match kept {
        Some(k) => format!(
            "restored {} from {} (the database there was kept as {})",
            db.display(),
            from.display(),
            k.display()
        ),
        None => format!("restored {} from {}", db.display(), from.display()),
    })
}

/// What to tell the operator when the store at `data_dir` is corrupt.
pub fn corrupt_offer(data_dir: &Path, e: &StoreError) -> String {
    let db = database(data_dir);
    match Snapshots::beside(&db).latest() {
        Some((snapshot, at)) => format!(
            "{e}. The last automatic snapshot is {} (taken at Unix time {at}): stop the orchestrator and run \
             `orchestrator restore --data-dir {} {}` (the damaged file is kept aside), or restore a backup",
            snapshot.display(),
            data_dir.display(),
            snapshot.display()
        ),
        None => format!(
            "{e}. There is no automatic snapshot under {}: restore a backup with `orchestrator restore --data-dir {} FILE`",
            Snapshots::beside(&db).dir().display(),
            data_dir.display()
        ),
    }
}

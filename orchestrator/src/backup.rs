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

fn is_backup(from: &Path) -> anyhow::Result<bool> {
    use std::io::Read as _;
    let mut head = [0u8; 20];
    let n = std::fs::File::open(from)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| anyhow::anyhow!("read {}: {e}", from.display()))?;
    Ok(head[..n].starts_with(b"plinth-store-backup/"))
}

/// The cluster of a data directory, when it has a CA already.
fn cluster(ca: &Path) -> anyhow::Result<Option<String>> {
    Ok(if ca.exists() { Some(backup::cluster_of(ca)?) } else { None })
}

/// Checks `from` as [`restore`] would, changing nothing; says what it holds.
pub fn check(data_dir: &Path, ca: Option<&Path>, from: &Path, backup_only: bool) -> anyhow::Result<String> {
    if backup_only || is_backup(from)? {
        let (h, _) = backup::read_backup(from, cluster(&ca_cert(data_dir, ca))?.as_deref())?;
        Ok(format!(
            "{}: a backup of cluster {} taken at {} by Plinth {} ({} bytes, sha256 {})",
            from.display(),
            h.cluster,
            h.created,
            h.plinth_version,
            h.size,
            h.sha256
        ))
    } else {
        backup::check(from)?;
        Ok(format!("{}: an intact store snapshot", from.display()))
    }
}

/// Brings back `from` (a backup file, or unless `backup_only` an automatic
/// snapshot) as `data_dir`'s store, with the server stopped; a backup of
/// another cluster (another CA) is refused. Returns what it says of the result.
pub fn restore(data_dir: &Path, ca: Option<&Path>, from: &Path, backup_only: bool) -> anyhow::Result<String> {
    let db = database(data_dir);
    let ca = ca_cert(data_dir, ca);
    // A fresh node may have no CA yet: it takes the backup's cluster.
    let cluster = cluster(&ca)?;
    let kept = if backup_only || is_backup(from)? {
        backup::restore_backup(from, &db, cluster.as_deref(), now_unix())?.1
    } else {
        backup::restore(from, &db, now_unix())?
    };
    clear_damaged(data_dir);
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

/// Where a server that found its store damaged says so for init
/// (`osctl version`, events): JSON, [`Damaged`].
pub fn damaged_marker(data_dir: &Path) -> PathBuf {
    data_dir.join("store-damaged.json")
}

/// What the marker holds. init reads it (`init::cluster_store`): the field
/// names are a contract.
#[derive(Debug, serde::Serialize)]
pub struct Damaged {
    /// The store's error, naming the file.
    pub error: String,
    /// The newest automatic snapshot's file name under `snapshots/`.
    pub snapshot: Option<String>,
    /// When it was taken (Unix seconds).
    pub snapshot_taken: Option<u64>,
}

/// Leaves the marker for init (a failure to write it is logged: the
/// server's own log still says everything).
pub fn report_damaged(data_dir: &Path, e: &StoreError) {
    let latest = Snapshots::beside(&database(data_dir)).latest();
    let damaged = Damaged {
        error: e.to_string(),
        snapshot: latest.as_ref().and_then(|(p, _)| p.file_name()).map(|n| n.to_string_lossy().into_owned()),
        snapshot_taken: latest.map(|(_, at)| at),
    };
    let path = damaged_marker(data_dir);
    let json = serde_json::to_vec(&damaged).expect("the report serialises");
    if let Err(e) = std::fs::write(&path, json) {
        tracing::warn!("write {}: {e}", path.display());
    }
}

/// The store opened (or was restored): no report stays behind.
pub fn clear_damaged(data_dir: &Path) {
    let path = damaged_marker(data_dir);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => tracing::warn!("remove {}: {e}", path.display()),
        _ => {}
    }
}

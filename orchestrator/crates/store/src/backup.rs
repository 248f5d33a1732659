//! Copies of the database: a consistent snapshot of a live store
//! (SQLite's online backup API, one read transaction while writers go on),
//! the automatic snapshots kept beside it (rotated), and putting a copy
//! back in place of a damaged or wiped database.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::{SqliteStore, StoreError};

/// Automatic snapshots kept (the newest ones).
pub const KEEP_SNAPSHOTS: usize = 2;

/// How often an automatic snapshot is taken: each one writes the whole
/// database once, so once a day.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(24 * 3600);

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { op, path, source }
}

/// Writes `dest` (through a temporary file, fsynced, then renamed) as a
/// consistent copy of the database at `src`, which may be in use.
pub fn copy_database(src: &Path, dest: &Path) -> Result<(), StoreError> {
    let from = Connection::open(src).map_err(|e| StoreError::sqlite("open for a backup", src, e))?;
    from.busy_timeout(Duration::from_secs(5)).map_err(|e| StoreError::sqlite("set busy timeout", src, e))?;
    let tmp = dest.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    {
        let mut to = Connection::open(&tmp).map_err(|e| StoreError::sqlite("create", &tmp, e))?;
        let backup =
            rusqlite::backup::Backup::new(&from, &mut to).map_err(|e| StoreError::sqlite("back up", src, e))?;
        // Every page in one step: one read transaction, so one revision.
        backup.step(-1).map_err(|e| StoreError::sqlite("back up", src, e))?;
    }
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io("fsync", &tmp))?;
    std::fs::rename(&tmp, dest).map_err(io("rename into place", dest))?;
    if let Some(dir) = dest.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io("fsync", dir))?;
    }
    Ok(())
}

/// Checks a database file as the store's open does; a damaged one is
/// [`StoreError::Corrupt`] naming it.
pub fn check(path: &Path) -> Result<(), StoreError> {
    let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(|e| StoreError::sqlite("open", path, e))?;
    SqliteStore::quick_check(&c, path)
}

/// The automatic snapshots of the database at `db`: `snapshots/` beside it,
/// `state-<unix seconds>.db`.
pub struct Snapshots {
    dir: PathBuf,
}

impl Snapshots {
    pub fn beside(db: &Path) -> Snapshots {
        Snapshots { dir: db.parent().unwrap_or(Path::new(".")).join("snapshots") }
    }

    /// Where they are kept.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The snapshots, newest first, with the time each was taken.
    pub fn list(&self) -> Vec<(PathBuf, u64)> {
        let mut all: Vec<(PathBuf, u64)> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let at = name.strip_prefix("state-")?.strip_suffix(".db")?.parse().ok()?;
                Some((e.path(), at))
            })
            .collect();
        all.sort_by_key(|s| std::cmp::Reverse(s.1));
        all
    }

    /// The newest snapshot, if any.
    pub fn latest(&self) -> Option<(PathBuf, u64)> {
        self.list().into_iter().next()
    }

    /// Takes a snapshot of the database at `db` when the newest is older
    /// than [`SNAPSHOT_EVERY`] at `now` (unix seconds), keeping
    /// [`KEEP_SNAPSHOTS`]; returns the new one's path.
    pub fn take_if_due(&self, db: &Path, now: u64) -> Result<Option<PathBuf>, StoreError> {
        if self.latest().is_some_and(|(_, at)| now.saturating_sub(at) < SNAPSHOT_EVERY.as_secs()) {
            return Ok(None);
        }
        std::fs::create_dir_all(&self.dir).map_err(io("create", &self.dir))?;
        let path = self.dir.join(format!("state-{now}.db"));
        copy_database(db, &path)?;
        for (old, _) in self.list().into_iter().skip(KEEP_SNAPSHOTS) {
            std::fs::remove_file(&old).map_err(io("remove an old snapshot", &old))?;
        }
        Ok(Some(path))
    }
}

/// Puts the database copy `from` in place of the database at `db`: `from`
/// is checked first; a database already there is kept aside as
/// `<db>.replaced-<unix seconds>` (its WAL and shared memory removed), never
/// deleted. The store must not be open.
pub fn restore(from: &Path, db: &Path, now: u64) -> Result<Option<PathBuf>, StoreError> {
    check(from)?;
    let kept = if db.exists() {
        let aside = PathBuf::from(format!("{}.replaced-{now}", db.display()));
        std::fs::rename(db, &aside).map_err(io("move aside", db))?;
        Some(aside)
    } else {
        None
    };
    for suffix in ["-wal", "-shm"] {
        let f = PathBuf::from(format!("{}{suffix}", db.display()));
        match std::fs::remove_file(&f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(StoreError::Io { op: "remove", path: f, source: e });
            }
            _ => {}
        }
    }
    copy_database(from, db)?;
    Ok(kept)
}

/// The first line of a backup file.
const MAGIC: &str = "plinth-store-backup/v1";

/// What a backup file says of itself: its first line after the magic, as
/// JSON; the database copy follows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Header {
    pub plinth_version: String,
    /// The cluster's identity: the sha256 of its CA certificate (PEM).
    pub cluster: String,
    /// When it was taken (RFC 3339).
    pub created: String,
    /// The sha256 of the database copy that follows.
    pub sha256: String,
    pub size: u64,
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The cluster identity of a CA certificate file (the sha256 of its PEM).
pub fn cluster_of(ca_cert: &Path) -> Result<String, StoreError> {
    Ok(sha256_hex(&std::fs::read(ca_cert).map_err(io("read", ca_cert))?))
}

/// Writes a backup of the database at `db` to `out`: the magic line, the
/// [`Header`] line (filled in with the copy's checksum and size), then the
/// consistent copy itself.
pub fn write_backup(db: &Path, out: &Path, mut header: Header) -> Result<Header, StoreError> {
    let copy = out.with_extension("db-copy");
    copy_database(db, &copy)?;
    let bytes = std::fs::read(&copy).map_err(io("read", &copy));
    let _ = std::fs::remove_file(&copy);
    let bytes = bytes?;
    header.sha256 = sha256_hex(&bytes);
    header.size = bytes.len() as u64;
    let line = serde_json::to_string(&header).expect("a header serialises");
    let mut file = format!("{MAGIC}\n{line}\n").into_bytes();
    file.extend_from_slice(&bytes);
    std::fs::write(out, file).map_err(io("write", out))?;
    Ok(header)
}

/// Why a backup file is refused.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: not a Plinth store backup (its first line is not {MAGIC:?})")]
    NotABackup { path: PathBuf },
    #[error("{path}: the header is not valid: {detail}")]
    Header { path: PathBuf, detail: String },
    #[error(
        "{path}: the checksum does not match: the header says sha256 {expected}, the data is {found} (a damaged or truncated file)"
    )]
    Checksum { path: PathBuf, expected: String, found: String },
    #[error("{path} is a backup of another cluster (CA sha256 {theirs}); this node's cluster is {ours}")]
    OtherCluster { path: PathBuf, theirs: String, ours: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Reads and verifies a backup file: its magic, its header, its checksum,
/// and, when `cluster` is given, that it is this cluster's. Returns the
/// header and the database copy's bytes.
pub fn read_backup(path: &Path, cluster: Option<&str>) -> Result<(Header, Vec<u8>), BackupError> {
    let file = std::fs::read(path).map_err(io("read", path))?;
    let not_a_backup = || BackupError::NotABackup { path: path.to_path_buf() };
    let rest = file.strip_prefix(format!("{MAGIC}\n").as_bytes()).ok_or_else(not_a_backup)?;
    let end = rest.iter().position(|b| *b == b'\n').ok_or_else(not_a_backup)?;
    let header: Header = serde_json::from_slice(&rest[..end])
        .map_err(|e| BackupError::Header { path: path.to_path_buf(), detail: e.to_string() })?;
    let data = &rest[end + 1..];
    let found = sha256_hex(data);
    if found != header.sha256 || data.len() as u64 != header.size {
        return Err(BackupError::Checksum { path: path.to_path_buf(), expected: header.sha256, found });
    }
    if let Some(ours) = cluster.filter(|c| *c != header.cluster) {
        return Err(BackupError::OtherCluster {
            path: path.to_path_buf(),
            theirs: header.cluster,
            ours: ours.to_string(),
        });
    }
    Ok((header, data.to_vec()))
}

/// Restores the database at `db` from the backup file `path` (verified as
/// [`read_backup`] does); returns the header and where a database that was
/// there was kept aside.
pub fn restore_backup(
    path: &Path,
    db: &Path,
    cluster: Option<&str>,
    now: u64,
) -> Result<(Header, Option<PathBuf>), BackupError> {
    let (header, data) = read_backup(path, cluster)?;
    let copy = db.with_extension("restoring");
    std::fs::write(&copy, data).map_err(io("write", &copy))?;
    let done = restore(&copy, db, now);
    let _ = std::fs::remove_file(&copy);
    Ok((header, done?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Durability, Store};

    fn filled(db: &Path) -> (SqliteStore, i64) {
        let s = SqliteStore::open(db, Durability::Full).unwrap();
        let mut rev = 0;
        for i in 0..100 {
            rev = s.create(&format!("/registry/configmaps/default/c{i:03}"), format!("value {i}").as_bytes()).unwrap();
        }
        (s, rev)
    }

    fn wipe(db: &Path) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
        }
    }

    #[test]
    fn backup_wipe_restore_gives_back_every_key() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let (s, rev) = filled(&db);
        let copy = dir.path().join("backup.db");
        // Taken while the store is open and its last writes are still in the WAL.
        copy_database(&db, &copy).unwrap();
        s.create("/registry/configmaps/default/after", b"not in the backup").unwrap();
        drop(s);
        wipe(&db);
        assert_eq!(restore(&copy, &db, 1).unwrap(), None, "nothing to keep aside");
        let s = SqliteStore::open(&db, Durability::Full).unwrap();
        assert_eq!(s.current_revision().unwrap(), rev);
        let page = s.list("/registry/configmaps/", None, 0, None).unwrap();
        assert_eq!(page.items.len(), 100);
        for (i, kv) in page.items.iter().enumerate() {
            assert_eq!(kv.value, format!("value {i}").as_bytes());
        }
        assert!(s.create("/registry/configmaps/default/new", b"n").unwrap() > rev, "revisions go on");
    }

    #[test]
    fn a_corrupt_database_names_the_file_and_the_last_snapshot_brings_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let (s, rev) = filled(&db);
        let snapshots = Snapshots::beside(&db);
        let snap = snapshots.take_if_due(&db, 1_000_000).unwrap().unwrap();
        drop(s);
        // A torn write over the header.
        let mut bytes = std::fs::read(&db).unwrap();
        bytes[..100].fill(0x5a);
        std::fs::write(&db, &bytes).unwrap();
        let e = SqliteStore::open(&db, Durability::Full).err().expect("a corrupt database is refused");
        assert!(matches!(&e, StoreError::Corrupt { path, .. } if *path == db), "{e:?}");
        assert!(e.to_string().starts_with(&format!("{} is corrupt: ", db.display())), "{e}");
        assert_eq!(snapshots.latest(), Some((snap.clone(), 1_000_000)));
        // A damaged copy is refused before anything is touched.
        let bad = dir.path().join("bad.db");
        std::fs::write(&bad, &bytes).unwrap();
        assert!(matches!(restore(&bad, &db, 2), Err(StoreError::Corrupt { .. })));
        assert_eq!(std::fs::read(&db).unwrap(), bytes);
        let kept = restore(&snap, &db, 3).unwrap().unwrap();
        assert_eq!(std::fs::read(&kept).unwrap(), bytes, "the damaged file is kept aside");
        let s = SqliteStore::open(&db, Durability::Full).unwrap();
        assert_eq!(s.current_revision().unwrap(), rev);
        assert_eq!(s.list("/registry/", None, 0, None).unwrap().items.len(), 100);
    }

    #[test]
    fn snapshots_are_taken_once_a_day_and_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let (_s, _) = filled(&db);
        let snapshots = Snapshots::beside(&db);
        let day = SNAPSHOT_EVERY.as_secs();
        assert!(snapshots.take_if_due(&db, 10).unwrap().is_some());
        assert!(snapshots.take_if_due(&db, 10 + day - 1).unwrap().is_none(), "not due yet");
        assert!(snapshots.take_if_due(&db, 10 + day).unwrap().is_some());
        assert!(snapshots.take_if_due(&db, 10 + 2 * day).unwrap().is_some());
        let at: Vec<u64> = snapshots.list().into_iter().map(|(_, at)| at).collect();
        assert_eq!(at, [10 + 2 * day, 10 + day], "the newest {KEEP_SNAPSHOTS}");
        for (p, _) in snapshots.list() {
            check(&p).unwrap();
        }
    }

    fn header(cluster: &str) -> Header {
        Header {
            plinth_version: "0.1.0".into(),
            cluster: cluster.into(),
            created: "2026-12-03T09:00:00Z".into(),
            sha256: String::new(),
            size: 0,
        }
    }

    #[test]
    fn a_backup_file_is_checked_before_it_is_restored() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let (s, rev) = filled(&db);
        let file = dir.path().join("cluster.backup");
        let h = write_backup(&db, &file, header("ours")).unwrap();
        assert_eq!(
            h.size,
            std::fs::read(&file).unwrap().len() as u64
                - (MAGIC.len() as u64 + 2)
                - serde_json::to_string(&h).unwrap().len() as u64
        );
        drop(s);
        // Another cluster's, a damaged one, not a backup at all: refused, naming the file.
        let e = restore_backup(&file, &db, Some("theirs"), 1).unwrap_err();
        assert!(matches!(e, BackupError::OtherCluster { .. }), "{e}");
        assert!(e.to_string().contains("cluster.backup is a backup of another cluster"), "{e}");
        let mut damaged = std::fs::read(&file).unwrap();
        let last = damaged.len() - 1;
        damaged[last] ^= 0xff;
        let bad = dir.path().join("damaged.backup");
        std::fs::write(&bad, &damaged).unwrap();
        let e = restore_backup(&bad, &db, Some("ours"), 1).unwrap_err();
        assert!(e.to_string().starts_with(&format!("{}: the checksum does not match", bad.display())), "{e}");
        let e = restore_backup(&db, &db, None, 1).unwrap_err();
        assert!(matches!(e, BackupError::NotABackup { .. }), "{e}");
        // Wiped, then restored: every key.
        wipe(&db);
        let (got, kept) = restore_backup(&file, &db, Some("ours"), 1).unwrap();
        assert_eq!((got, kept), (h, None));
        let s = SqliteStore::open(&db, Durability::Full).unwrap();
        assert_eq!(s.current_revision().unwrap(), rev);
        assert_eq!(s.list("/registry/", None, 0, None).unwrap().items.len(), 100);
    }
}

//! The control plane's revisioned key/value store, in the style of k3s'
//! kine: one append-only SQLite table where every write is a new row, the
//! row id is the revision (Kubernetes' `resourceVersion`), deletes append
//! tombstones, and `UNIQUE(name, prev_revision)` is the compare-and-swap.
//!
//! Writes go through one connection under a mutex, in `BEGIN IMMEDIATE`
//! transactions, and publish their event on a broadcast channel before the
//! lock is released: watchers see every change, in order, with no gaps and
//! no polling. Writes that arrive while a transaction is being committed
//! wait in a queue and go together into the next one (group commit): one
//! fsync and one copy of the shared B-tree pages for all of them, and each
//! is acknowledged only once its transaction is durable. A batch that fails
//! as a whole (a full disk, an I/O error) is retried one write per
//! transaction, so each write gets its own answer. A watch from the past replays rows from the table first, a
//! page at a time through the reader connection: the writer lock is held
//! only to subscribe and read the current revision, and a watch holds one
//! page in memory however old its start.
//! Values are at most [`MAX_VALUE_BYTES`] (etcd's default request limit).
//! Durability: WAL with `synchronous=FULL` by default — an acknowledged
//! write survives a power cut; `Durability::Normal` trades that for speed.
//! The [`Store`] trait is also implemented over etcd (`orchestrator-store-etcd`);
//! [`conformance`] holds the assertions both implementations pass.

pub mod conformance;

pub mod backup;

pub mod migrate;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use rusqlite::{Connection, OptionalExtension as _, TransactionBehavior, params};
use tokio::sync::broadcast;

/// One key's current value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// A change; for a delete, `kv` is the deleted value at the tombstone's
/// revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    pub prev: Option<KeyValue>,
}

/// A page of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    pub items: Vec<KeyValue>,
    /// The revision the list was read at (pass it back to continue).
    pub revision: i64,
    /// More items remain after the last one.
    pub more: bool,
}

/// The largest value stored, as etcd's default `--max-request-bytes`
/// (1.5 MiB): Kubernetes objects above it are refused, whatever built them.
pub const MAX_VALUE_BYTES: usize = 1536 * 1024;

/// Reads the past of a watch one page at a time: the events after the
/// given revision, in order, up to the watch's `replayed_to`; empty when
/// there are no more.
pub type Pager = Box<dyn FnMut(i64) -> Result<Vec<Event>, StoreError> + Send>;

/// A watch: the past, read in pages, then live events after it; or, for a
/// store whose server keeps the order and the past itself (etcd), the
/// events a task forwards from the server's watch stream.
pub struct Watch {
    source: Source,
}

enum Source {
    Replay(Replay),
    Feed(tokio::sync::mpsc::Receiver<Result<Event, StoreError>>),
}

struct Replay {
    page: VecDeque<Event>,
    pager: Pager,
    /// The last revision replayed so far.
    cursor: i64,
    live: broadcast::Receiver<Event>,
    /// Live events at or below this revision are part of the replayed past.
    replayed_to: i64,
    prefix: String,
}

impl Watch {
    /// A watch of `prefix` replaying the past after `from` up to
    /// `replayed_to` through `pager`, then following `live`.
    pub fn new(prefix: &str, from: i64, replayed_to: i64, pager: Pager, live: broadcast::Receiver<Event>) -> Watch {
        let replay =
            Replay { page: VecDeque::new(), pager, cursor: from, live, replayed_to, prefix: prefix.to_string() };
        Watch { source: Source::Replay(replay) }
    }

    /// A watch fed, in order and without gaps, by a task that owns the
    /// server's watch stream; the task ends the watch by sending an error
    /// (`Compacted`, `Unavailable`) or by dropping its sender (`Closed`).
    pub fn feed(events: tokio::sync::mpsc::Receiver<Result<Event, StoreError>>) -> Watch {
        Watch { source: Source::Feed(events) }
    }

    /// The next event for this watch's prefix; `Lagged` means the watcher
    /// fell behind (more than the live channel holds arrived while it
    /// replayed or read slowly) and must re-list (the API server answers 410).
    pub async fn next(&mut self) -> Result<Event, StoreError> {
        let w = match &mut self.source {
            Source::Feed(events) => return events.recv().await.unwrap_or(Err(StoreError::Closed)),
            Source::Replay(w) => w,
        };
        while w.page.is_empty() && w.cursor < w.replayed_to {
            let page = (w.pager)(w.cursor)?;
            w.cursor = page.last().map_or(w.replayed_to, |e| e.kv.mod_revision);
            w.page.extend(page);
        }
        if let Some(e) = w.page.pop_front() {
            return Ok(e);
        }
        loop {
            match w.live.recv().await {
                Ok(e) if e.kv.mod_revision > w.replayed_to && e.kv.key.starts_with(&w.prefix) => return Ok(e),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => return Err(StoreError::Lagged(n)),
                Err(broadcast::error::RecvError::Closed) => return Err(StoreError::Closed),
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{key}: already exists")]
    AlreadyExists { key: String },
    #[error("{key}: not found")]
    NotFound { key: String },
    #[error("{key}: modified concurrently (expected revision {expected}, found {found})")]
    Conflict { key: String, expected: i64, found: i64 },
    #[error("revision {requested} has been compacted (oldest available: {compacted})")]
    Compacted { requested: i64, compacted: i64 },
    #[error("the watcher fell {0} events behind: re-list and watch again")]
    Lagged(u64),
    #[error("the store is closed")]
    Closed,
    #[error("{key}: the value is {size} bytes, over the limit of {limit}")]
    TooLarge { key: String, size: usize, limit: usize },
    /// The filesystem holding the database is full (SQLite's `SQLITE_FULL`,
    /// ENOSPC): nothing was written, and writes succeed again once space
    /// returns.
    #[error("{op} on {path}: no space left on device")]
    NoSpace { op: &'static str, path: PathBuf },
    /// The database file is damaged (SQLite's `SQLITE_CORRUPT`,
    /// `SQLITE_NOTADB`, or a failed `quick_check`).
    #[error("{path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("{op} on {path}: {source}")]
    Sqlite { op: &'static str, path: PathBuf, source: rusqlite::Error },
    /// A remote store cannot answer now (no quorum, no reachable member):
    /// the API answers 503 and the caller may retry.
    #[error("{op}: the store is unavailable ({endpoints}): {reason}")]
    Unavailable { op: &'static str, endpoints: String, reason: String },
    /// A remote store refused or failed a request for another reason.
    #[error("{op} ({endpoints}): {reason}")]
    Remote { op: &'static str, endpoints: String, reason: String },
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    /// Another process has the database open (an orchestrator serving it).
    #[error("{path} is in use by another process (an orchestrator serving it, {lock} is locked): stop it first")]
    InUse { path: PathBuf, lock: PathBuf },
}

impl StoreError {
    /// A SQLite error during `op` on the database at `path`; a full disk is
    /// [`StoreError::NoSpace`].
    pub fn sqlite(op: &'static str, path: &Path, source: rusqlite::Error) -> StoreError {
        match source.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => StoreError::NoSpace { op, path: path.to_path_buf() },
            Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) => {
                StoreError::Corrupt { path: path.to_path_buf(), detail: format!("{op}: {source}") }
            }
            _ => StoreError::Sqlite { op, path: path.to_path_buf(), source },
        }
    }
}

/// A revisioned key/value store.
pub trait Store: Send + Sync {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;
    /// Keys starting with `prefix`, in key order, after `start_after`, at
    /// most `limit` (0: all), as of `revision` (`None`: now).
    fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        revision: Option<i64>,
    ) -> Result<ListPage, StoreError>;
    /// Returns the new revision.
    fn create(&self, key: &str, value: &[u8]) -> Result<i64, StoreError>;
    /// Replaces the value if the key's revision is `expected`.
    fn update(&self, key: &str, value: &[u8], expected: i64) -> Result<i64, StoreError>;
    /// Deletes (if at `expected`, when given); returns the tombstone's revision.
    fn delete(&self, key: &str, expected: Option<i64>) -> Result<i64, StoreError>;
    /// Events for keys under `prefix` strictly after revision `from`.
    fn watch(&self, prefix: &str, from: i64) -> Result<Watch, StoreError>;
    /// Forgets history at or below `revision` (current values stay).
    fn compact(&self, revision: i64) -> Result<(), StoreError>;
    fn current_revision(&self) -> Result<i64, StoreError>;
    /// Gives the space compaction freed back to the filesystem (etcd's
    /// defragmentation); a back-end that needs nothing of the kind keeps
    /// this default.
    fn reclaim(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=FULL`: an acknowledged write survives power loss.
    Full,
    /// `synchronous=NORMAL`: survives a crash of the process, not of the machine.
    Normal,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kine (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  name TEXT NOT NULL,
  created INTEGER NOT NULL,
  deleted INTEGER NOT NULL,
  create_revision INTEGER NOT NULL,
  prev_revision INTEGER NOT NULL,
  lease INTEGER NOT NULL DEFAULT 0,
  value BLOB,
  old_value BLOB
);
CREATE INDEX IF NOT EXISTS kine_name_id_index ON kine (name, id);
CREATE INDEX IF NOT EXISTS kine_prev_revision_index ON kine (prev_revision);
CREATE UNIQUE INDEX IF NOT EXISTS kine_name_prev_revision_uindex ON kine (name, prev_revision);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
-- kine's (name) and (id, deleted): (name, id) and the rowid serve every
-- query they served, and each index is pages more written per write.
DROP INDEX IF EXISTS kine_name_index;
DROP INDEX IF EXISTS kine_id_deleted_index;
";

/// The SQLite implementation.
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Connection>,
    /// Writes waiting for a transaction, and whether one is being
    /// committed: the next leader commits the whole queue at once.
    group: Mutex<Group>,
    /// Signalled when a leader has answered its batch and stepped down.
    turn: Condvar,
    /// Write transactions committed since open.
    commits: AtomicU64,
    /// Reads, and the pages of watches replaying the past.
    reader: Arc<Mutex<Connection>>,
    events: broadcast::Sender<Event>,
    /// An exclusive `flock` on `<database>.lock` while open: one process
    /// serves a database (`orchestrator migrate` refuses one being served).
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// The newest row of a key at or below a revision: (id, deleted, create_revision, value).
type Row = (i64, bool, i64, Vec<u8>);

/// What a write expects of its key's current row.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// A create: no live row.
    Absent,
    /// An update: a live row at this revision.
    Revision(i64),
    /// A delete: a live row, at this revision if one is given.
    Present(Option<i64>),
}

impl Expect {
    fn check(self, key: &str, current: Option<&Row>) -> Result<(), StoreError> {
        match (self, current) {
            (Expect::Absent, Some(_)) => Err(StoreError::AlreadyExists { key: key.to_string() }),
            (Expect::Absent, None) => Ok(()),
            (Expect::Revision(_) | Expect::Present(_), None) => Err(StoreError::NotFound { key: key.to_string() }),
            (Expect::Revision(expected) | Expect::Present(Some(expected)), Some(r)) if r.0 != expected => {
                Err(StoreError::Conflict { key: key.to_string(), expected, found: r.0 })
            }
            (_, Some(_)) => Ok(()),
        }
    }
}

/// The group-commit queue.
#[derive(Default)]
struct Group {
    queue: Vec<Arc<Pending>>,
    /// A writer is committing a batch (it holds or waits for `writer`).
    leading: bool,
}

/// One write waiting in the group-commit queue, and its answer once its
/// transaction has committed (or failed).
struct Pending {
    key: String,
    value: Option<Vec<u8>>,
    expect: Expect,
    answer: Mutex<Option<Result<i64, StoreError>>>,
}

fn latest(conn: &Connection, key: &str, at: i64) -> rusqlite::Result<Option<Row>> {
    conn.query_row(
        "SELECT id, deleted, create_revision, value FROM kine WHERE name = ?1 AND id <= ?2 ORDER BY id DESC LIMIT 1",
        params![key, at],
        |r| Ok((r.get(0)?, r.get::<_, i64>(1)? != 0, r.get(2)?, r.get::<_, Option<Vec<u8>>>(3)?.unwrap_or_default())),
    )
    .optional()
}

/// At most this many events, or about this many bytes, per page of a
/// watch's replayed past.
const PAGE_EVENTS: i64 = 256;
const PAGE_BYTES: usize = 1024 * 1024;

/// The events under `prefix` after revision `after` up to `to`, one page;
/// compacted history is an error, not a silent gap.
fn read_page(conn: &Connection, prefix: &str, after: i64, to: i64) -> rusqlite::Result<Result<Vec<Event>, StoreError>> {
    let compacted = SqliteStore::compacted(conn)?;
    if after < compacted {
        return Ok(Err(StoreError::Compacted { requested: after, compacted }));
    }
    let mut stmt = conn.prepare_cached(
        "SELECT name, id, deleted, create_revision, value, old_value, prev_revision FROM kine
         WHERE id > ?1 AND id <= ?2 AND substr(name, 1, ?3) = ?4 ORDER BY id LIMIT ?5",
    )?;
    let mut rows = stmt.query(params![after, to, prefix.chars().count() as i64, prefix, PAGE_EVENTS])?;
    let (mut page, mut bytes) = (Vec::new(), 0);
    while bytes < PAGE_BYTES
        && let Some(r) = rows.next()?
    {
        let key: String = r.get(0)?;
        let id: i64 = r.get(1)?;
        let deleted = r.get::<_, i64>(2)? != 0;
        let create_revision: i64 = r.get(3)?;
        let value = r.get::<_, Option<Vec<u8>>>(4)?.unwrap_or_default();
        let old = r.get::<_, Option<Vec<u8>>>(5)?;
        let prev_revision: i64 = r.get(6)?;
        bytes += value.len() + old.as_ref().map_or(0, Vec::len);
        let prev = old.filter(|_| prev_revision > 0).map(|v| KeyValue {
            key: key.clone(),
            value: v,
            create_revision,
            mod_revision: prev_revision,
        });
        page.push(Event {
            kind: if deleted { EventKind::Delete } else { EventKind::Put },
            kv: KeyValue { key, value, create_revision, mod_revision: id },
            prev,
        });
    }
    Ok(Ok(page))
}

fn kv(key: &str, row: &Row) -> KeyValue {
    KeyValue { key: key.to_string(), value: row.3.clone(), create_revision: row.2, mod_revision: row.0 }
}

impl SqliteStore {
    pub fn open(path: &Path, durability: Durability) -> Result<SqliteStore, StoreError> {
        let err = |op| move |source| StoreError::sqlite(op, path, source);
        let sync = match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        let open = || -> Result<Connection, StoreError> {
            let c = Connection::open(path).map_err(err("open"))?;
            c.busy_timeout(std::time::Duration::from_secs(5)).map_err(err("set busy timeout"))?;
            c.execute_batch(&format!(
                "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA journal_size_limit={WAL_LIMIT_BYTES};"
            ))
            .map_err(err("set pragmas"))?;
            Ok(c)
        };
        let lock_path = PathBuf::from(format!("{}.lock", path.display()));
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| StoreError::Io { op: "open", path: lock_path.clone(), source })?;
        let lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|_| StoreError::InUse { path: path.to_path_buf(), lock: lock_path.clone() })?;
        let writer = open()?;
        Self::quick_check(&writer, path)?;
        // Only a new database takes this (an old one is converted by its first `reclaim`).
        writer.execute_batch("PRAGMA auto_vacuum=INCREMENTAL;").map_err(err("set auto_vacuum"))?;
        writer.execute_batch(SCHEMA).map_err(err("create schema"))?;
        let reader = open()?;
        let (events, _) = broadcast::channel(4096);
        Ok(SqliteStore {
            path: path.to_path_buf(),
            writer: Mutex::new(writer),
            group: Mutex::new(Group::default()),
            turn: Condvar::new(),
            commits: AtomicU64::new(0),
            reader: Arc::new(Mutex::new(reader)),
            events,
            _lock: lock,
        })
    }

    /// SQLite's `quick_check` of the open database: anything but "ok" is
    /// [`StoreError::Corrupt`] with what it found.
    fn quick_check(conn: &Connection, path: &Path) -> Result<(), StoreError> {
        let mut stmt = conn.prepare("PRAGMA quick_check").map_err(|e| StoreError::sqlite("check", path, e))?;
        let found: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(|e| StoreError::sqlite("check", path, e))?;
        if found == ["ok"] {
            return Ok(());
        }
        Err(StoreError::Corrupt { path: path.to_path_buf(), detail: found.join("; ") })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sql(&self, op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::sqlite(op, &self.path, source)
    }

    fn compacted(conn: &Connection) -> rusqlite::Result<i64> {
        Ok(conn
            .query_row("SELECT value FROM meta WHERE key = 'compact_rev'", [], |r| r.get(0))
            .optional()?
            .unwrap_or(0))
    }

    /// Write transactions committed since the store was opened: fewer than
    /// the writes when concurrent writes were grouped.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Appends one row for `key` once `expect` holds for its current row,
    /// and answers when that row is durable. The write joins the queue;
    /// when no batch is being committed, the writer becomes the leader and
    /// commits the whole queue at once; otherwise it waits for a leader to
    /// answer it (or to step down, leaving the next batch to it).
    fn write(&self, key: &str, value: Option<&[u8]>, expect: Expect) -> Result<i64, StoreError> {
        if let Some(v) = value.filter(|v| v.len() > MAX_VALUE_BYTES) {
            return Err(StoreError::TooLarge { key: key.to_string(), size: v.len(), limit: MAX_VALUE_BYTES });
        }
        let mine = Arc::new(Pending {
            key: key.to_string(),
            value: value.map(<[u8]>::to_vec),
            expect,
            answer: Mutex::new(None),
        });
        let mut group = self.group.lock().unwrap_or_else(|e| e.into_inner());
        group.queue.push(mine.clone());
        loop {
            if let Some(answer) = mine.answer.lock().unwrap_or_else(|e| e.into_inner()).take() {
                return answer;
            }
            if group.leading {
                group = self.turn.wait(group).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            group.leading = true;
            let batch = std::mem::take(&mut group.queue);
            drop(group);
            {
                let mut conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
                self.commit_batch(&mut conn, &batch);
            }
            group = self.group.lock().unwrap_or_else(|e| e.into_inner());
            group.leading = false;
            self.turn.notify_all();
        }
    }

    /// Commits `batch` in one transaction and answers each write; when the
    /// transaction fails as a whole, each write is tried again alone. Events
    /// are published in revision order, before the writer is released.
    fn commit_batch(&self, conn: &mut Connection, batch: &[Arc<Pending>]) {
        let outcomes = match self.transaction(conn, batch) {
            Ok(outcomes) => outcomes,
            Err(e) if batch.len() == 1 => vec![Err(e)],
            Err(_) => batch
                .iter()
                .map(|p| self.transaction(conn, std::slice::from_ref(p)).and_then(|mut one| one.remove(0)))
                .collect(),
        };
        for (pending, outcome) in batch.iter().zip(outcomes) {
            let answer = outcome.map(|event| {
                let rev = event.kv.mod_revision;
                let _ = self.events.send(event);
                rev
            });
            *pending.answer.lock().unwrap_or_else(|e| e.into_inner()) = Some(answer);
        }
    }

    /// One `BEGIN IMMEDIATE` transaction holding every write of `batch`
    /// whose expectation holds (the others are answered with their refusal
    /// and write nothing). `Err` when the transaction itself failed: then
    /// nothing of it was written.
    fn transaction(
        &self,
        conn: &mut Connection,
        batch: &[Arc<Pending>],
    ) -> Result<Vec<Result<Event, StoreError>>, StoreError> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(self.sql("begin"))?;
        let mut outcomes = Vec::with_capacity(batch.len());
        for p in batch {
            let current = latest(&tx, &p.key, i64::MAX).map_err(self.sql("read"))?.filter(|r| !r.1);
            match p.expect.check(&p.key, current.as_ref()) {
                Ok(()) => outcomes.push(Ok(self.append(&tx, p, current)?)),
                Err(refused) => outcomes.push(Err(refused)),
            }
        }
        tx.commit().map_err(self.sql("commit"))?;
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(outcomes)
    }

    /// Inserts the row of one write inside `tx`; returns its event.
    fn append(&self, tx: &rusqlite::Transaction<'_>, p: &Pending, current: Option<Row>) -> Result<Event, StoreError> {
        let key = p.key.as_str();
        let (created, create_rev, prev_rev, old) = match &current {
            Some(r) => (0, r.2, r.0, Some(r.3.clone())),
            None => (1, 0, latest(tx, key, i64::MAX).map_err(self.sql("read"))?.map_or(0, |r| r.0), None),
        };
        let deleted = p.value.is_none();
        let stored = p.value.clone().or(old.clone());
        tx.execute(
            "INSERT INTO kine (name, created, deleted, create_revision, prev_revision, value, old_value) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![key, created, deleted as i64, create_rev, prev_rev, stored, old],
        )
        .map_err(self.sql("insert"))?;
        let rev = tx.last_insert_rowid();
        if created == 1 {
            tx.execute("UPDATE kine SET create_revision = ?1 WHERE id = ?1", params![rev])
                .map_err(self.sql("update"))?;
        }
        let create_revision = if created == 1 { rev } else { create_rev };
        Ok(Event {
            kind: if deleted { EventKind::Delete } else { EventKind::Put },
            kv: KeyValue {
                key: key.to_string(),
                value: stored.unwrap_or_default(),
                create_revision,
                mod_revision: rev,
            },
            prev: current.as_ref().map(|r| kv(key, r)),
        })
    }
}

impl Store for SqliteStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let conn = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        Ok(latest(&conn, key, i64::MAX).map_err(self.sql("get"))?.filter(|r| !r.1).map(|r| kv(key, &r)))
    }

    fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        revision: Option<i64>,
    ) -> Result<ListPage, StoreError> {
        let conn = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let current: i64 =
            conn.query_row("SELECT COALESCE(MAX(id), 0) FROM kine", [], |r| r.get(0)).map_err(self.sql("list"))?;
        let at = revision.unwrap_or(current);
        let compacted = Self::compacted(&conn).map_err(self.sql("list"))?;
        if revision.is_some() && at < compacted {
            return Err(StoreError::Compacted { requested: at, compacted });
        }
        let mut stmt = conn
            .prepare_cached(
                "SELECT k.name, k.id, k.create_revision, k.value FROM kine k
                 JOIN (SELECT name, MAX(id) AS id FROM kine WHERE id <= ?1 AND name >= ?2 AND name > ?3 AND name < ?6 GROUP BY name) m ON k.id = m.id
                 WHERE k.deleted = 0 AND substr(k.name, 1, ?4) = ?2 ORDER BY k.name LIMIT ?5",
            )
            .map_err(self.sql("list"))?;
        let fetch = if limit == 0 { -1 } else { limit as i64 + 1 };
        // Above every key under the prefix: the scan stops at the prefix's
        // end instead of reading every later key (a list of an empty kind
        // cost a scan of the rest of the table).
        let end = format!("{prefix}\u{10FFFF}");
        let mut items: Vec<KeyValue> = stmt
            .query_map(params![at, prefix, start_after.unwrap_or(""), prefix.chars().count() as i64, fetch, end], |r| {
                Ok(KeyValue {
                    key: r.get(0)?,
                    mod_revision: r.get(1)?,
                    create_revision: r.get(2)?,
                    value: r.get::<_, Option<Vec<u8>>>(3)?.unwrap_or_default(),
                })
            })
            .map_err(self.sql("list"))?
            .collect::<Result<_, _>>()
            .map_err(self.sql("list"))?;
        let more = limit > 0 && items.len() > limit;
        items.truncate(if limit == 0 { items.len() } else { limit });
        Ok(ListPage { items, revision: at, more })
    }

    fn create(&self, key: &str, value: &[u8]) -> Result<i64, StoreError> {
        self.write(key, Some(value), Expect::Absent)
    }

    fn update(&self, key: &str, value: &[u8], expected: i64) -> Result<i64, StoreError> {
        self.write(key, Some(value), Expect::Revision(expected))
    }

    fn delete(&self, key: &str, expected: Option<i64>) -> Result<i64, StoreError> {
        self.write(key, None, Expect::Present(expected))
    }

    fn watch(&self, prefix: &str, from: i64) -> Result<Watch, StoreError> {
        // Subscribe and read the current revision under the writer lock:
        // every later write is live, every earlier one is in the past the
        // pager reads, without the lock, a page at a time.
        let (live, replayed_to) = {
            let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            let live = self.events.subscribe();
            let compacted = Self::compacted(&writer).map_err(self.sql("watch"))?;
            if from < compacted {
                return Err(StoreError::Compacted { requested: from, compacted });
            }
            let current: i64 = writer
                .query_row("SELECT COALESCE(MAX(id), 0) FROM kine", [], |r| r.get(0))
                .map_err(self.sql("watch"))?;
            (live, current)
        };
        let (reader, path, key_prefix) = (self.reader.clone(), self.path.clone(), prefix.to_string());
        let pager: Pager = Box::new(move |after| {
            let conn = reader.lock().unwrap_or_else(|e| e.into_inner());
            read_page(&conn, &key_prefix, after, replayed_to)
                .map_err(|source| StoreError::sqlite("replay a watch", &path, source))?
        });
        Ok(Watch::new(prefix, from, replayed_to, pager, live))
    }

    fn compact(&self, revision: i64) -> Result<(), StoreError> {
        let mut conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(self.sql("begin"))?;
        // Superseded rows at or below the target, and tombstones there.
        tx.execute(
            "DELETE FROM kine WHERE id <= ?1 AND (deleted = 1 OR id IN
               (SELECT k.id FROM kine k WHERE k.id <= ?1 AND EXISTS
                 (SELECT 1 FROM kine n WHERE n.name = k.name AND n.id > k.id AND n.id <= ?1)))",
            params![revision],
        )
        .map_err(self.sql("compact"))?;
        tx.execute("INSERT INTO meta (key, value) VALUES ('compact_rev', ?1) ON CONFLICT(key) DO UPDATE SET value = MAX(value, ?1)", params![revision])
            .map_err(self.sql("compact"))?;
        tx.commit().map_err(self.sql("commit"))
    }

    fn current_revision(&self) -> Result<i64, StoreError> {
        let conn = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        conn.query_row("SELECT COALESCE(MAX(id), 0) FROM kine", [], |r| r.get(0)).map_err(self.sql("read revision"))
    }

    /// Incremental vacuum (a database made before it was the default is
    /// converted once, by a full `VACUUM`), then a checkpoint that
    /// truncates the WAL.
    fn reclaim(&self) -> Result<(), StoreError> {
        let conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mode: i64 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0)).map_err(self.sql("read auto_vacuum"))?;
        if mode == INCREMENTAL {
            // Each step of the statement frees one page: run it to the end.
            let mut stmt = conn.prepare("PRAGMA incremental_vacuum").map_err(self.sql("incremental vacuum"))?;
            let mut rows = stmt.query([]).map_err(self.sql("incremental vacuum"))?;
            while rows.next().map_err(self.sql("incremental vacuum"))?.is_some() {}
        } else {
            conn.execute_batch("PRAGMA auto_vacuum=INCREMENTAL; VACUUM;")
                .map_err(self.sql("convert to incremental vacuum"))?;
        }
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).map_err(self.sql("checkpoint"))
    }
}

/// `PRAGMA auto_vacuum`'s value for incremental.
const INCREMENTAL: i64 = 2;

/// The WAL is cut back to this size whenever a checkpoint resets it.
const WAL_LIMIT_BYTES: u64 = 4 * 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("state.db"), Durability::Normal).unwrap();
        (dir, s)
    }

    #[test]
    fn create_get_update_conflict_delete() {
        let (_d, s) = store();
        conformance::create_get_update_conflict_delete(&s);
    }

    #[test]
    fn list_with_prefix_limit_continue_and_past_revision() {
        let (_d, s) = store();
        conformance::list_with_prefix_limit_continue_and_past_revision(&s);
    }

    #[tokio::test]
    async fn watch_replays_the_past_then_follows_without_gaps() {
        let (_d, s) = store();
        conformance::watch_replays_the_past_then_follows_without_gaps(&s).await;
    }

    #[test]
    fn values_over_the_limit_are_refused() {
        let (_d, s) = store();
        conformance::values_over_the_limit_are_refused(&s);
    }

    #[tokio::test]
    async fn compaction_keeps_current_values_and_refuses_old_watches() {
        let (_d, s) = store();
        conformance::compaction_keeps_current_values_and_refuses_old_watches(&s).await;
    }

    #[test]
    fn concurrent_writers_never_both_win() {
        let (_d, s) = store();
        conformance::concurrent_writers_never_both_win(std::sync::Arc::new(s));
    }

    /// A watch from the start pages through a long past without the
    /// writer lock: writes go on between its pages.
    #[tokio::test]
    async fn a_long_past_is_replayed_in_pages_while_writes_go_on() {
        let (_d, s) = store();
        conformance::a_long_past_is_replayed_in_order_while_writes_go_on(&s).await;
    }

    fn file_size(path: &Path) -> u64 {
        std::fs::metadata(path).map_or(0, |m| m.len())
    }

    /// Compaction frees pages; `reclaim` gives them back to the filesystem
    /// and truncates the WAL; a database made without incremental vacuum
    /// is converted by its first `reclaim`.
    #[test]
    fn reclaim_returns_compacted_space_and_truncates_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            // A database as an older Plinth made it: no auto_vacuum.
            let c = Connection::open(&path).unwrap();
            c.execute_batch("PRAGMA journal_mode=WAL;").unwrap();
            c.execute_batch(SCHEMA).unwrap();
        }
        let s = SqliteStore::open(&path, Durability::Normal).unwrap();
        let mut rev = s.create("/k", &[b'x'; 4096]).unwrap();
        for _ in 0..2000 {
            rev = s.update("/k", &[b'y'; 4096], rev).unwrap();
        }
        s.reclaim().unwrap();
        let wal = dir.path().join("state.db-wal");
        assert_eq!(file_size(&wal), 0, "the WAL is truncated");
        let full = file_size(&path);
        assert!(full > 2000 * 4096, "{full} bytes hold the history");
        s.compact(rev).unwrap();
        s.reclaim().unwrap();
        let after = file_size(&path);
        assert!(after < full / 20, "{after} bytes left of {full} after compaction and reclaim");
        assert_eq!(file_size(&wal), 0);
        assert_eq!(s.get("/k").unwrap().unwrap().value, vec![b'y'; 4096]);
        let mode: i64 = s.writer.lock().unwrap().query_row("PRAGMA auto_vacuum", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, INCREMENTAL, "converted");
    }

    /// What one small update (a Lease renewal) appends to the WAL: each
    /// index is pages more per write (kine's five indexes: 31 KB here).
    #[test]
    fn an_update_writes_few_pages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let s = SqliteStore::open(&path, Durability::Full).unwrap();
        for i in 0..200 {
            s.create(&format!("/registry/x/{i}"), &[b'x'; 2000]).unwrap();
        }
        let mut rev = s.create("/registry/leases/node", &[b'l'; 400]).unwrap();
        s.reclaim().unwrap();
        s.writer.lock().unwrap().execute_batch("PRAGMA wal_autocheckpoint=0;").unwrap();
        for _ in 0..100 {
            rev = s.update("/registry/leases/node", &[b'l'; 400], rev).unwrap();
        }
        let per_update = file_size(&dir.path().join("state.db-wal")) / 100;
        assert!(per_update < 24 * 1024, "{per_update} WAL bytes per update");
    }

    /// Writes that queue while a transaction is being committed go
    /// together into the next one: one commit for all of them, each
    /// answered with its own revision (or its own refusal), the events in
    /// revision order.
    #[test]
    fn writes_queued_behind_a_commit_share_one_transaction() {
        let (_d, s) = store();
        let s = Arc::new(s);
        let taken = s.create("/registry/x/taken", b"v").unwrap();
        let mut events = s.events.subscribe();
        let before = s.commits();
        let wait_until = |done: &dyn Fn(&Group) -> bool| {
            while !done(&s.group.lock().unwrap()) {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        };
        // The first write leads a batch of one and waits for the writer…
        let held = s.writer.lock().unwrap();
        let spawn = |i: usize| {
            let s = s.clone();
            std::thread::spawn(move || match i {
                // A refused write in a batch refuses only itself.
                1 => s.create("/registry/x/taken", b"again"),
                _ => s.create(&format!("/registry/x/{i}"), b"v"),
            })
        };
        let first = spawn(0);
        wait_until(&|g| g.leading && g.queue.is_empty());
        // …while seven more queue behind it.
        let rest: Vec<_> = (1..8).map(spawn).collect();
        wait_until(&|g| g.queue.len() == 7);
        drop(held);
        let answers: Vec<_> = std::iter::once(first).chain(rest).map(|w| w.join().unwrap()).collect();
        assert_eq!(s.commits() - before, 2, "a batch of one, then one of seven: {answers:?}");
        assert!(matches!(answers[1], Err(StoreError::AlreadyExists { .. })), "{:?}", answers[1]);
        let mut revs: Vec<i64> =
            answers.iter().enumerate().filter(|(i, _)| *i != 1).map(|(_, a)| *a.as_ref().unwrap()).collect();
        revs.sort();
        assert_eq!(revs, ((taken + 1)..=(taken + 7)).collect::<Vec<_>>());
        let seen: Vec<i64> = (0..7).map(|_| events.try_recv().unwrap().kv.mod_revision).collect();
        assert_eq!(seen, revs, "events in revision order");
        assert_eq!(s.get("/registry/x/taken").unwrap().unwrap().value, b"v");
    }

    #[test]
    fn reopen_keeps_data_and_revisions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let rev = {
            let s = SqliteStore::open(&path, Durability::Full).unwrap();
            s.create("/a", b"1").unwrap();
            s.create("/b", b"2").unwrap()
        };
        let s = SqliteStore::open(&path, Durability::Full).unwrap();
        assert_eq!(s.current_revision().unwrap(), rev);
        assert!(s.create("/c", b"3").unwrap() > rev);
        assert_eq!(s.get("/a").unwrap().unwrap().value, b"1");
    }

    /// A child process writes and prints each acknowledged revision, and is
    /// killed with SIGKILL mid-stream: every acknowledged write must be there.
    #[test]
    fn kill_9_loses_no_acknowledged_write() {
        if let Ok(path) = std::env::var("PLINTH_STORE_CRASH_CHILD") {
            let s = SqliteStore::open(Path::new(&path), Durability::Full).unwrap();
            for i in 0.. {
                let rev = s.create(&format!("/k/{i:06}"), b"v").unwrap();
                println!("{i} {rev}");
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "tests::kill_9_loses_no_acknowledged_write", "--nocapture", "--test-threads=1"])
            .env("PLINTH_STORE_CRASH_CHILD", &path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut acked = Vec::new();
        let mut line = String::new();
        while acked.len() < 200 && std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0 {
            if let Some((i, _)) = line.trim().split_once(' ').and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b))) {
                acked.push(i);
            }
            line.clear();
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(acked.len() >= 200, "the child acknowledged only {} writes", acked.len());
        let s = SqliteStore::open(&path, Durability::Full).unwrap();
        for i in acked {
            assert!(s.get(&format!("/k/{i:06}")).unwrap().is_some(), "acknowledged write {i} was lost");
        }
    }
}

//! Restoring an etcd snapshot as the data of a new one-member cluster
//! (Talos' `bootstrap --recover-from`, etcd's `snapshot restore` for one
//! member), without etcd's own tools: Debian 12 ships no `etcdutl`, and
//! its `etcdctl` (the `etcd-client` package, 16 MiB installed) would
//! grow every image for one rare command.
//!
//! A snapshot is etcd's backend, a bbolt file, with the sha256 of its bytes
//! appended. etcd 3.4 starting a *new* cluster on a data directory that
//! holds a backend (`member/snap/db`) but no write-ahead log keeps the
//! backend's keys and revisions and starts a fresh raft log for the
//! members of its `--initial-cluster`. One thing must change first: the
//! backend's `consistent_index` (the last raft index the old cluster
//! applied). The new log starts again at 1, and etcd skips every entry at
//! or below that index as applied already — writes would be acknowledged
//! and lost. It is set to 0 in place (an 8-byte value in a leaf page;
//! bbolt checksums only its meta pages). The old members left in the
//! backend's `members` bucket are not read by 3.4, which takes the
//! member list from the raft log (docs/etcd.md).
//!
//! Everything is read and checked before anything is written: the sha256,
//! bbolt's meta pages (magic, checksum), every page of the `key` and
//! `meta` buckets reachable (bounds, page kinds), and each stored
//! revision's key. A damaged file is refused with the reason.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::Digest as _;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{path}: not a usable etcd snapshot: {reason}; nothing was restored")]
    Damaged { path: PathBuf, reason: String },
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{path} holds an etcd member already: move it aside first")]
    NotEmpty { path: PathBuf },
}

/// What a snapshot holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contents {
    /// Keys present (not deleted) at the last revision.
    pub keys: usize,
    /// The store's revision when the snapshot was taken.
    pub revision: i64,
    /// The raft index the old cluster had applied.
    pub consistent_index: u64,
}

impl std::fmt::Display for Contents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} keys at revision {}", self.keys, self.revision)
    }
}

/// Checks snapshot `file` and says what it holds.
pub fn check(file: &Path) -> Result<Contents, RestoreError> {
    let data = read(file)?;
    let db = checked_db(file, &data)?;
    Ok(inspect(db).map_err(|reason| damaged(file, reason))?.0)
}

/// Writes snapshot `file` as the backend of a new member under `data_dir`
/// (etcd's `--data-dir`, which must hold no `member/`): checked first,
/// `member/snap/db` written through a temporary file and synced.
pub fn restore(file: &Path, data_dir: &Path) -> Result<Contents, RestoreError> {
    let data = read(file)?;
    let db = checked_db(file, &data)?;
    let (contents, index_at) = inspect(db).map_err(|reason| damaged(file, reason))?;
    let member = data_dir.join("member");
    if member.exists() {
        return Err(RestoreError::NotEmpty { path: member });
    }
    let mut db = db.to_vec();
    if let Some(at) = index_at {
        db[at..at + 8].copy_from_slice(&0u64.to_be_bytes());
    }
    let snap = member.join("snap");
    fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RestoreError + use<> {
        let path = path.to_path_buf();
        move |source| RestoreError::Io { op, path, source }
    }
    std::fs::create_dir_all(&snap).map_err(io("create", &snap))?;
    for d in [data_dir, &member, &snap] {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).map_err(io("chmod", d))?;
    }
    let (tmp, out) = (snap.join("db.part"), snap.join("db"));
    let mut f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(&db).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("sync", &tmp))?;
    std::fs::rename(&tmp, &out).map_err(io("rename into place", &out))?;
    std::fs::File::open(&snap).and_then(|d| d.sync_all()).map_err(io("sync", &snap))?;
    Ok(contents)
}

fn read(file: &Path) -> Result<Vec<u8>, RestoreError> {
    std::fs::read(file).map_err(|source| RestoreError::Io { op: "read", path: file.to_path_buf(), source })
}

fn damaged(file: &Path, reason: impl Into<String>) -> RestoreError {
    RestoreError::Damaged { path: file.to_path_buf(), reason: reason.into() }
}

/// The database without the sha256 etcd appends, once that matches.
fn checked_db<'a>(file: &Path, data: &'a [u8]) -> Result<&'a [u8], RestoreError> {
    if data.len() < 2 * 4096 + 32 {
        return Err(damaged(file, format!("{} bytes: too short for an etcd snapshot", data.len())));
    }
    let (db, sum) = data.split_at(data.len() - 32);
    if sha2::Sha256::digest(db).as_slice() != sum {
        return Err(damaged(file, "its sha256 does not match the one etcd appended (truncated or altered)"));
    }
    Ok(db)
}

const MAGIC: u32 = 0xED0C_DAED;
const BRANCH: u16 = 0x01;
const LEAF: u16 = 0x02;
const BUCKET_LEAF: u32 = 0x01;
/// Deeper than any bbolt tree of a real etcd: a loop in a damaged file.
const MAX_DEPTH: usize = 64;

fn u16_at(b: &[u8], at: usize) -> Result<u16, String> {
    b.get(at..at + 2).map(|s| u16::from_le_bytes([s[0], s[1]])).ok_or_else(|| format!("a field past the end at {at}"))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
        .ok_or_else(|| format!("a field past the end at {at}"))
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, String> {
    b.get(at..at + 8)
        .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
        .ok_or_else(|| format!("a field past the end at {at}"))
}

fn fnv1a64(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| (h ^ u64::from(*x)).wrapping_mul(0x0100_0000_01b3))
}

/// A tree's root: a page, or a bucket inlined in its parent's value.
#[derive(Clone, Copy)]
enum Root<'a> {
    Page(u64),
    Inline(&'a [u8]),
}

struct Bolt<'a> {
    db: &'a [u8],
    page_size: usize,
    /// Pages the file claims (the meta's high-water mark).
    pages: u64,
}

impl<'a> Bolt<'a> {
    /// Opens the file at its current meta page (valid checksum, higher
    /// transaction ID); returns the root bucket's root too.
    fn open(db: &'a [u8]) -> Result<(Bolt<'a>, u64), String> {
        let page_size = u32_at(db, 16 + 8)? as usize;
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(format!("not a bbolt database (etcd's backend): page size {page_size}"));
        }
        let mut best: Option<(u64, u64, u64)> = None; // txid, root, pages
        for at in [16, page_size + 16] {
            let meta = db.get(at..at + 64).ok_or("the meta pages are cut short")?;
            if u32_at(meta, 0)? != MAGIC || fnv1a64(&meta[..56]) != u64_at(meta, 56)? {
                continue;
            }
            let (root, pages, txid) = (u64_at(meta, 16)?, u64_at(meta, 40)?, u64_at(meta, 48)?);
            if best.is_none_or(|b| txid > b.0) {
                best = Some((txid, root, pages));
            }
        }
        let (_, root, pages) = best.ok_or("not a bbolt database (etcd's backend): no valid meta page")?;
        if (db.len() as u64) < pages.saturating_mul(page_size as u64) {
            return Err(format!("{} bytes hold fewer than the {pages} pages its meta page counts", db.len()));
        }
        Ok((Bolt { db, page_size, pages }, root))
    }

    /// Page `id` with its overflow pages.
    fn page(&self, id: u64) -> Result<&'a [u8], String> {
        if id < 2 || id >= self.pages {
            return Err(format!("a reference to page {id}, outside the file's {} pages", self.pages));
        }
        let at = id as usize * self.page_size;
        let overflow = u32_at(self.db, at + 12)? as usize;
        self.db.get(at..at + (overflow + 1) * self.page_size).ok_or_else(|| format!("page {id} runs past the end"))
    }

    /// Calls `f(flags, key, value)` for every entry of the tree at `root`, in key order.
    fn walk(
        &self,
        root: Root<'a>,
        depth: usize,
        f: &mut dyn FnMut(u32, &'a [u8], &'a [u8]) -> Result<(), String>,
    ) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err("a page tree deeper than bbolt makes (a loop)".into());
        }
        let p = match root {
            Root::Page(id) => self.page(id)?,
            Root::Inline(b) => b,
        };
        let (flags, count) = (u16_at(p, 8)?, u16_at(p, 10)? as usize);
        for i in 0..count {
            let e = 16 + 16 * i;
            match flags {
                LEAF => {
                    let (fl, pos, ks, vs) = (
                        u32_at(p, e)?,
                        u32_at(p, e + 4)? as usize,
                        u32_at(p, e + 8)? as usize,
                        u32_at(p, e + 12)? as usize,
                    );
                    let k = e + pos;
                    let key = p.get(k..k + ks).ok_or("a key past its page")?;
                    let value = p.get(k + ks..k + ks + vs).ok_or("a value past its page")?;
                    f(fl, key, value)?;
                }
                BRANCH => self.walk(Root::Page(u64_at(p, e + 8)?), depth + 1, f)?,
                other => return Err(format!("a page of kind {other:#x} where a branch or leaf belongs")),
            }
        }
        Ok(())
    }

    /// The root of bucket `name` in the tree at `parent`.
    fn bucket(&self, parent: Root<'a>, name: &[u8]) -> Result<Root<'a>, String> {
        let mut found = None;
        self.walk(parent, 0, &mut |flags, key, value| {
            if flags & BUCKET_LEAF != 0 && key == name {
                let root = u64_at(value, 0)?;
                found = Some(if root == 0 { Root::Inline(&value[16.min(value.len())..]) } else { Root::Page(root) });
            }
            Ok(())
        })?;
        found.ok_or_else(|| format!("no {:?} bucket: not an etcd backend", String::from_utf8_lossy(name)))
    }
}

/// A protobuf varint at the start of `b`: its value and length.
fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, x) in b.iter().take(10).enumerate() {
        v |= u64::from(x & 0x7f) << (7 * i);
        if x & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// What the database holds, and where its consistent index is (an offset in `db`).
fn inspect(db: &[u8]) -> Result<(Contents, Option<usize>), String> {
    let (bolt, root) = Bolt::open(db)?;
    let root = Root::Page(root);
    // Every revision of every key: revision (8 bytes, big-endian), '_',
    // sub-revision, and 't' for a deletion; the value is an mvccpb.KeyValue
    // whose field 1 is the key.
    let mut live: HashMap<&[u8], bool> = HashMap::new();
    let mut revision = 0i64;
    bolt.walk(bolt.bucket(root, b"key")?, 0, &mut |_, rev, value| {
        if !(rev.len() == 17 || rev.len() == 18) || rev[8] != b'_' {
            return Err(format!("a revision key of {} bytes", rev.len()));
        }
        let main = i64::from_be_bytes(rev[..8].try_into().expect("8 bytes"));
        revision = revision.max(main);
        let key = (value.first() == Some(&0x0a))
            .then(|| varint(&value[1..]))
            .flatten()
            .and_then(|(n, used)| value.get(1 + used..1 + used + n as usize))
            .ok_or_else(|| format!("revision {main}: its value is not an etcd key-value"))?;
        live.insert(key, rev.len() == 17);
        Ok(())
    })?;
    let mut index_at = None;
    let mut consistent_index = 0;
    bolt.walk(bolt.bucket(root, b"meta")?, 0, &mut |_, key, value| {
        if key == b"consistent_index" {
            let v: [u8; 8] = value.try_into().map_err(|_| format!("a consistent index of {} bytes", value.len()))?;
            consistent_index = u64::from_be_bytes(v);
            index_at = Some(value.as_ptr() as usize - db.as_ptr() as usize);
        }
        Ok(())
    })?;
    let keys = live.values().filter(|l| **l).count();
    Ok((Contents { keys, revision, consistent_index }, index_at))
}

//! One store's objects into another (issue 19 item 6: a single node on
//! SQLite becoming the first member of an HA control plane on etcd, as
//! k3s' `--cluster-init` on a SQLite server). Every key is copied as it
//! is at one revision of the source — every kind, CRDs and custom
//! objects, status, uids — by [`Store`] calls alone, so any two stores
//! will do. Revisions are the target's own: a resourceVersion read before
//! means nothing after, and the copy ends by compacting the target at its
//! last write, so a client watching from an old one is told `410 Gone`
//! and lists again.

use std::collections::BTreeMap;

use crate::{Store, StoreError};

/// Keys read from the source per request.
const PAGE: usize = 500;
/// Every object's key starts so (etcd refuses an empty range key).
const ALL: &str = "/";

/// What was copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// The source's revision the copy was read at.
    pub source_revision: i64,
    /// The target's revision after the copy.
    pub target_revision: i64,
    /// Keys copied per collection (`pods`, `apiextensions.k8s.io/customresourcedefinitions`…).
    pub by_collection: BTreeMap<String, usize>,
    /// Keys that were in the target and were written over (`force`).
    pub replaced: usize,
}

impl Copied {
    pub fn total(&self) -> usize {
        self.by_collection.values().sum()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "the target store is not empty ({first} and more, {count} key(s) in the first page): give --force to write the copy over it"
    )]
    NotEmpty { count: usize, first: String },
    /// `key`: the key written or read, empty for the whole store.
    #[error("{op}{}{key}: {source}", if key.is_empty() { "" } else { " " })]
    Store { op: &'static str, key: String, source: Box<StoreError> },
}

/// The collection of a key: `/registry/pods/ns/name` → `pods`; a custom
/// resource, kept under its group, → `group/plural`.
pub fn collection(key: &str) -> String {
    let mut parts = key.trim_start_matches('/').split('/').skip(1);
    match (parts.next(), parts.next()) {
        (Some(group), Some(plural)) if group.contains('.') => format!("{group}/{plural}"),
        (Some(first), _) => first.to_string(),
        _ => key.to_string(),
    }
}

/// Copies every key of `from` (at its current revision) into `to`, which
/// must hold nothing unless `force` (then its keys with the same names are
/// replaced and the others left).
pub fn copy(from: &dyn Store, to: &dyn Store, force: bool) -> Result<Copied, MigrateError> {
    fn err(op: &'static str, key: &str) -> impl FnOnce(StoreError) -> MigrateError {
        let key = key.to_string();
        move |source| MigrateError::Store { op, key, source: Box::new(source) }
    }
    let present = to.list(ALL, None, PAGE, None).map_err(err("list the target", ""))?;
    if !force && let Some(first) = present.items.first() {
        return Err(MigrateError::NotEmpty { count: present.items.len(), first: first.key.clone() });
    }
    let source_revision = from.current_revision().map_err(err("read the revision of the source", ""))?;
    let mut copied = Copied { source_revision, target_revision: 0, by_collection: BTreeMap::new(), replaced: 0 };
    let mut after: Option<String> = None;
    loop {
        let page = from.list(ALL, after.as_deref(), PAGE, Some(source_revision)).map_err(err("list the source", ""))?;
        for kv in &page.items {
            let written = match to.create(&kv.key, &kv.value) {
                Err(StoreError::AlreadyExists { .. }) if force => {
                    let current = to.get(&kv.key).map_err(err("read the target's", &kv.key))?;
                    copied.replaced += 1;
                    match current {
                        Some(c) => to.update(&kv.key, &kv.value, c.mod_revision),
                        None => to.create(&kv.key, &kv.value),
                    }
                }
                r => r,
            };
            copied.target_revision = written.map_err(err("write", &kv.key))?;
            *copied.by_collection.entry(collection(&kv.key)).or_default() += 1;
        }
        match page.items.last() {
            Some(last) if page.more => after = Some(last.key.clone()),
            _ => break,
        }
    }
    if copied.target_revision > 0 {
        to.compact(copied.target_revision).map_err(err("compact the target at its last write", ""))?;
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Durability, SqliteStore};

    fn store(dir: &tempfile::TempDir, name: &str) -> SqliteStore {
        SqliteStore::open(&dir.path().join(name), Durability::Normal).unwrap()
    }

    #[test]
    fn every_key_is_copied_once_counted_by_collection() {
        let d = tempfile::tempdir().unwrap();
        let (from, to) = (store(&d, "a.db"), store(&d, "b.db"));
        from.create("/registry/pods/default/web", b"{\"uid\":\"u1\"}").unwrap();
        let rev = from.create("/registry/pods/default/gone", b"x").unwrap();
        from.delete("/registry/pods/default/gone", Some(rev)).unwrap();
        let r = from.create("/registry/configmaps/default/c", b"v1").unwrap();
        from.update("/registry/configmaps/default/c", b"v2", r).unwrap();
        from.create("/registry/example.com/widgets/default/w", b"w").unwrap();
        // More than a page.
        for i in 0..(PAGE + 3) {
            from.create(&format!("/registry/secrets/default/s{i:04}"), b"s").unwrap();
        }
        let c = copy(&from, &to, false).unwrap();
        assert_eq!(c.total(), PAGE + 6);
        assert_eq!(c.by_collection["pods"], 1);
        assert_eq!(c.by_collection["configmaps"], 1);
        assert_eq!(c.by_collection["example.com/widgets"], 1);
        assert_eq!(c.by_collection["secrets"], PAGE + 3);
        assert_eq!(to.get("/registry/configmaps/default/c").unwrap().unwrap().value, b"v2");
        assert_eq!(to.get("/registry/pods/default/web").unwrap().unwrap().value, b"{\"uid\":\"u1\"}");
        assert!(to.get("/registry/pods/default/gone").unwrap().is_none());
        // The target's history before the copy's end is compacted: an old revision is 410.
        assert!(matches!(to.watch("/registry/", 1), Err(StoreError::Compacted { .. })), "old revisions are gone");

        // Not empty now: refused, nothing written; forced, written over.
        from.update(
            "/registry/pods/default/web",
            b"{\"uid\":\"u2\"}",
            from.get("/registry/pods/default/web").unwrap().unwrap().mod_revision,
        )
        .unwrap();
        let before = to.current_revision().unwrap();
        let e = copy(&from, &to, false).unwrap_err();
        assert!(e.to_string().contains("not empty") && e.to_string().contains("--force"), "{e}");
        assert_eq!(to.current_revision().unwrap(), before);
        let c = copy(&from, &to, true).unwrap();
        assert_eq!(c.replaced, c.total());
        assert_eq!(to.get("/registry/pods/default/web").unwrap().unwrap().value, b"{\"uid\":\"u2\"}");
    }

    #[test]
    fn collections_of_keys() {
        assert_eq!(collection("/registry/pods/default/p"), "pods");
        assert_eq!(collection("/registry/namespaces/kube-system"), "namespaces");
        assert_eq!(collection("/registry/stable.example.com/crontabs/default/c"), "stable.example.com/crontabs");
    }
}

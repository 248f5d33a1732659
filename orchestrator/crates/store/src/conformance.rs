//! What every [`Store`] promises, as assertions over a fresh, empty store:
//! the SQLite store's unit tests and the etcd store's integration tests run
//! the same functions, so both implementations keep the same contract
//! (revisions, compare-and-swap, paged lists at a revision, watches with no
//! gap, compaction, the value limit). Each function panics on a broken
//! promise; it is test support, called by no production path.

use std::sync::Arc;

use crate::{EventKind, MAX_VALUE_BYTES, Store, StoreError};

/// Create, get, update with compare-and-swap, delete and re-create.
pub fn create_get_update_conflict_delete(s: &dyn Store) {
    let r1 = s.create("/pods/a", b"1").unwrap();
    assert!(matches!(s.create("/pods/a", b"x"), Err(StoreError::AlreadyExists { .. })));
    let got = s.get("/pods/a").unwrap().unwrap();
    assert_eq!((got.value.as_slice(), got.create_revision, got.mod_revision), (&b"1"[..], r1, r1));
    let r2 = s.update("/pods/a", b"2", r1).unwrap();
    assert!(r2 > r1);
    assert!(
        matches!(s.update("/pods/a", b"3", r1), Err(StoreError::Conflict { expected, found, .. }) if expected == r1 && found == r2)
    );
    assert!(matches!(s.delete("/pods/a", Some(r1)), Err(StoreError::Conflict { .. })));
    let r3 = s.delete("/pods/a", Some(r2)).unwrap();
    assert!(s.get("/pods/a").unwrap().is_none());
    assert!(matches!(s.update("/pods/a", b"4", r3), Err(StoreError::NotFound { .. })));
    assert!(matches!(s.delete("/pods/a", None), Err(StoreError::NotFound { .. })));
    // Re-created after a delete: a new create revision.
    let r4 = s.create("/pods/a", b"5").unwrap();
    assert_eq!(s.get("/pods/a").unwrap().unwrap().create_revision, r4);
    assert_eq!(s.current_revision().unwrap(), r4);
}

/// Lists by prefix, in pages continued at the first page's revision, and
/// as of a past revision.
pub fn list_with_prefix_limit_continue_and_past_revision(s: &dyn Store) {
    for i in 0..5 {
        s.create(&format!("/pods/ns/p{i}"), format!("{i}").as_bytes()).unwrap();
    }
    s.create("/services/ns/s", b"s").unwrap();
    let page = s.list("/pods/", None, 2, None).unwrap();
    assert_eq!(page.items.iter().map(|k| k.key.as_str()).collect::<Vec<_>>(), ["/pods/ns/p0", "/pods/ns/p1"]);
    assert!(page.more);
    assert_eq!(page.revision, s.current_revision().unwrap());
    s.create("/pods/ns/p9", b"later").unwrap();
    let next = s.list("/pods/", Some("/pods/ns/p1"), 10, Some(page.revision)).unwrap();
    assert_eq!(next.items.len(), 3, "the continuation reads at the first page's revision");
    assert!(!next.more);
    let at = s.current_revision().unwrap();
    let p0 = s.get("/pods/ns/p0").unwrap().unwrap();
    s.update("/pods/ns/p0", b"changed", p0.mod_revision).unwrap();
    s.delete("/pods/ns/p1", None).unwrap();
    let old = s.list("/pods/", None, 0, Some(at)).unwrap();
    assert_eq!(old.items.len(), 6);
    assert_eq!((old.items[0].value.as_slice(), old.revision), (&b"0"[..], at));
    let now = s.list("/pods/", None, 0, None).unwrap();
    assert_eq!(now.items.len(), 5);
    assert_eq!(now.items[0].value, b"changed");
    assert_eq!(now.items[0].mod_revision, s.get("/pods/ns/p0").unwrap().unwrap().mod_revision);
}

/// A watch from revision 0 replays the past, then follows; a watch from
/// now sees only what follows; deletes carry the deleted value.
pub async fn watch_replays_the_past_then_follows_without_gaps(s: &dyn Store) {
    let r1 = s.create("/pods/a", b"1").unwrap();
    s.create("/other/x", b"x").unwrap();
    let r2 = s.update("/pods/a", b"2", r1).unwrap();
    let mut w = s.watch("/pods/", 0).unwrap();
    let e = w.next().await.unwrap();
    assert_eq!((e.kind, e.kv.mod_revision, e.kv.create_revision, e.prev), (EventKind::Put, r1, r1, None));
    let e = w.next().await.unwrap();
    assert_eq!((e.kv.mod_revision, e.prev.unwrap().value), (r2, b"1".to_vec()));
    let r3 = s.delete("/pods/a", None).unwrap();
    let e = w.next().await.unwrap();
    assert_eq!((e.kind, e.kv.mod_revision, e.kv.value.as_slice()), (EventKind::Delete, r3, &b"2"[..]));
    assert_eq!((e.kv.key.as_str(), e.kv.create_revision), ("/pods/a", r1));
    // From now: only what follows.
    let mut w2 = s.watch("/pods/", r3).unwrap();
    let r4 = s.create("/pods/b", b"b").unwrap();
    assert_eq!(w2.next().await.unwrap().kv.mod_revision, r4);
}

/// A watch from the start of a long past sees every event once, in order,
/// and the writes made while it replays after the old ones.
pub async fn a_long_past_is_replayed_in_order_while_writes_go_on(s: &dyn Store) {
    let mut rev = s.create("/pods/a", &[b'x'; 8192]).unwrap();
    for _ in 0..600 {
        rev = s.update("/pods/a", &[b'y'; 8192], rev).unwrap();
    }
    let mut w = s.watch("/pods/", 0).unwrap();
    let first = w.next().await.unwrap().kv.mod_revision;
    let during = s.create("/pods/b", b"b").unwrap();
    let mut seen = vec![first];
    while seen.last() != Some(&during) {
        seen.push(w.next().await.unwrap().kv.mod_revision);
    }
    assert_eq!(seen.len(), 602, "every write once");
    assert!(seen.windows(2).all(|p| p[0] < p[1]), "in order");
}

/// Values over [`MAX_VALUE_BYTES`] are refused and nothing is written.
pub fn values_over_the_limit_are_refused(s: &dyn Store) {
    let big = vec![b'x'; MAX_VALUE_BYTES + 1];
    assert!(matches!(s.create("/big", &big), Err(StoreError::TooLarge { .. })));
    let r = s.create("/big", &big[..MAX_VALUE_BYTES]).unwrap();
    assert!(matches!(s.update("/big", &big, r), Err(StoreError::TooLarge { .. })));
    assert_eq!(s.current_revision().unwrap(), r, "nothing written");
    assert_eq!(s.get("/big").unwrap().unwrap().value.len(), MAX_VALUE_BYTES);
}

/// Compaction keeps current values; lists and watches from before it are
/// `Compacted` (the API's 410 Gone).
pub async fn compaction_keeps_current_values_and_refuses_old_watches(s: &dyn Store) {
    let r1 = s.create("/k", b"1").unwrap();
    let r2 = s.update("/k", b"2", r1).unwrap();
    let r3 = s.create("/gone", b"g").unwrap();
    let r4 = s.delete("/gone", Some(r3)).unwrap();
    s.compact(r4).unwrap();
    assert_eq!(s.get("/k").unwrap().unwrap().value, b"2");
    assert!(s.get("/gone").unwrap().is_none());
    assert!(matches!(s.watch("/", r1), Err(StoreError::Compacted { .. })));
    assert!(matches!(s.list("/", None, 0, Some(r1)), Err(StoreError::Compacted { .. })));
    assert_eq!(s.list("/", None, 0, Some(r4)).unwrap().items.len(), 1);
    let mut w = s.watch("/", r4).unwrap();
    let r5 = s.update("/k", b"3", r2).unwrap();
    assert_eq!(w.next().await.unwrap().kv.mod_revision, r5);
}

/// Of eight writers updating from the same revision, exactly one wins.
pub fn concurrent_writers_never_both_win(s: Arc<dyn Store>) {
    let r = s.create("/cas", b"0").unwrap();
    let wins: usize = (0..8)
        .map(|i| {
            let s = s.clone();
            std::thread::spawn(move || s.update("/cas", format!("{i}").as_bytes(), r).is_ok())
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap() as usize)
        .sum();
    assert_eq!(wins, 1);
}

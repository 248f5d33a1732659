//! A snapshot restored as a new one-member cluster: a member's data taken
//! through the maintenance API, written by `restore::restore` into an
//! empty data directory, and Debian's etcd started there as a new cluster
//! holds every key at its revision, takes new writes (acknowledged and
//! read back: none skipped as applied already) and keeps them across a
//! SIGKILL. A damaged file is refused naming it, and writes nothing.
//! `cargo test -p orchestrator-store-etcd --test restore`

use orchestrator_store::Store;
use orchestrator_store_etcd::local::{self, LocalCluster};
use orchestrator_store_etcd::restore::{self, RestoreError};
use orchestrator_store_etcd::{EtcdConfig, EtcdStore, admin};

fn store(c: &LocalCluster) -> EtcdStore {
    EtcdStore::connect(&EtcdConfig::from_url(&c.url(), None).unwrap()).unwrap()
}

#[test]
fn a_snapshot_restored_holds_every_key_and_takes_new_writes() {
    if !local::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("etcd.snapshot");
    let value = vec![b'v'; 1024];
    let key = |i: usize| format!("/registry/configmaps/default/c{i:04}");
    let (revision, deleted_rev) = {
        let old = LocalCluster::start_in(&dir.path().join("old"), 1).unwrap();
        let s = store(&old);
        // Enough 1 KiB values for branch pages in bbolt's tree.
        let mut revs = Vec::new();
        for i in 0..300 {
            revs.push(s.create(&key(i), &value).unwrap());
        }
        for i in 0..10 {
            s.delete(&key(i), None).unwrap();
        }
        let updated = s.update(&key(10), b"updated", revs[10]).unwrap();
        let r = s.current_revision().unwrap();
        assert_eq!(updated, r);
        let cfg = EtcdConfig::from_url(&old.url(), None).unwrap();
        admin::snapshot(&cfg, &file).unwrap();
        (r, revs[0])
    };
    let seen = restore::check(&file).unwrap();
    assert_eq!((seen.keys, seen.revision), (290, revision), "{seen:?}");
    assert!(seen.consistent_index > 0, "{seen:?}");

    // A damaged copy is refused, naming it and why; nothing is written.
    let bad = dir.path().join("bad.snapshot");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[5000] ^= 0xff;
    std::fs::write(&bad, &bytes).unwrap();
    let target = dir.path().join("new");
    let e = restore::restore(&bad, &target.join("m0")).unwrap_err();
    assert!(matches!(e, RestoreError::Damaged { .. }), "{e}");
    assert!(e.to_string().contains("bad.snapshot") && e.to_string().contains("sha256"), "{e}");
    assert!(!target.exists(), "nothing written for a damaged file");

    let done = restore::restore(&file, &target.join("m0")).unwrap();
    assert_eq!(done.keys, 290);
    let e = restore::restore(&file, &target.join("m0")).unwrap_err();
    assert!(matches!(e, RestoreError::NotEmpty { .. }), "a member's data is never written over: {e}");

    let mut new = LocalCluster::start_in(&target, 1).unwrap();
    let s = store(&new);
    assert!(s.current_revision().unwrap() >= revision);
    assert_eq!(s.get(&key(10)).unwrap().unwrap().value, b"updated");
    assert_eq!(s.get(&key(299)).unwrap().unwrap().value, value);
    assert!(s.get(&key(0)).unwrap().is_none(), "deleted at {deleted_rev}, deleted still");
    let page = s.list("/registry/configmaps/", None, 1000, None).unwrap();
    assert_eq!(page.items.len(), 290);
    // New writes go on from the old revision and are applied.
    let r = s.create("/registry/configmaps/default/after", b"new").unwrap();
    assert!(r > revision, "{r} after {revision}");
    assert_eq!(s.get("/registry/configmaps/default/after").unwrap().unwrap().value, b"new");
    drop(s);
    // Its own write-ahead log now: a SIGKILL loses nothing.
    new.kill(0);
    new.restart(0).unwrap();
    let s = store(&new);
    assert_eq!(s.get("/registry/configmaps/default/after").unwrap().unwrap().value, b"new");
    assert_eq!(s.get(&key(10)).unwrap().unwrap().value, b"updated");
    let members = admin::members(&EtcdConfig::from_url(&new.url(), None).unwrap()).unwrap();
    assert_eq!(members.len(), 1, "a cluster of one: {members:?}");
}

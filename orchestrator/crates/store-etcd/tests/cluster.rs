//! The store on a three-member etcd cluster on loopback, with members
//! killed by SIGKILL: acknowledged writes survive, watches see every event
//! in order, a lost quorum is `Unavailable` and the store recovers by
//! itself when a member returns.
//! `cargo test -p orchestrator-store-etcd --test cluster`

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use orchestrator_store::{EventKind, Store, StoreError};
use orchestrator_store_etcd::local::{self, LocalCluster};
use orchestrator_store_etcd::{EtcdConfig, EtcdStore};

fn cluster() -> Option<(LocalCluster, EtcdStore)> {
    if !local::available() {
        return None;
    }
    let c = LocalCluster::start(3).unwrap();
    let s = EtcdStore::connect(&EtcdConfig::from_url(&c.url(), None).unwrap()).unwrap();
    Some((c, s))
}

/// A writer creates 1,000 keys while one of the three members is killed
/// with SIGKILL a third of the way in; every acknowledged create is there
/// afterwards, and a watch opened before the first write saw every create
/// once, in revision order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_killed_mid_stream_loses_no_acknowledged_write() {
    let Some((mut c, s)) = cluster() else { return };
    let s = std::sync::Arc::new(s);
    let from = s.current_revision().unwrap();
    let mut watch = s.watch("/w/", from).unwrap();
    let writer = {
        let s = s.clone();
        std::thread::spawn(move || {
            let mut acked = BTreeSet::new();
            for i in 0..1000 {
                let key = format!("/w/{i:04}");
                // A write refused while the cluster elects a leader is
                // retried; one that timed out may or may not have landed.
                for _ in 0..20 {
                    match s.create(&key, b"v") {
                        Ok(rev) => {
                            acked.insert((key.clone(), rev));
                            break;
                        }
                        Err(StoreError::AlreadyExists { .. }) => break,
                        Err(StoreError::Unavailable { .. }) => std::thread::sleep(Duration::from_millis(100)),
                        Err(e) => panic!("create {key}: {e}"),
                    }
                }
            }
            acked
        })
    };
    let mut seen: Vec<(String, i64)> = Vec::new();
    let mut killed = false;
    while seen.len() < 1000 {
        let e = tokio::time::timeout(Duration::from_secs(60), watch.next())
            .await
            .unwrap_or_else(|_| panic!("no event for 60 s after {} events", seen.len()))
            .unwrap();
        assert_eq!(e.kind, EventKind::Put);
        seen.push((e.kv.key, e.kv.mod_revision));
        if seen.len() == 300 && !killed {
            // The member the first endpoint names: the client and the watch
            // may well be using it.
            c.kill(0);
            killed = true;
        }
        if writer.is_finished() && seen.len() >= s.list("/w/", None, 0, None).unwrap().items.len() {
            break;
        }
    }
    let acked = writer.join().unwrap();
    assert!(killed);
    assert!(acked.len() >= 990, "only {} of 1,000 writes acknowledged", acked.len());
    let stored: BTreeSet<(String, i64)> =
        s.list("/w/", None, 0, None).unwrap().items.into_iter().map(|kv| (kv.key, kv.mod_revision)).collect();
    for a in &acked {
        assert!(stored.contains(a), "acknowledged {a:?} is not stored");
    }
    assert!(seen.windows(2).all(|p| p[0].1 < p[1].1), "events out of order");
    let seen_set: BTreeSet<(String, i64)> = seen.into_iter().collect();
    assert_eq!(seen_set, stored, "the watch saw exactly the stored creates");
}

/// Two of three members down: requests are `Unavailable` naming the
/// endpoints and why, and no read answers from the minority; one member
/// back, the same store works again without being reopened.
#[test]
fn a_lost_quorum_is_unavailable_and_recovers_by_itself() {
    let Some((mut c, s)) = cluster() else { return };
    let rev = s.create("/q/before", b"1").unwrap();
    c.kill(1);
    c.kill(2);
    let err = s.create("/q/during", b"2").unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&c.endpoints()[0]) && message.contains("unavailable"), "{message}");
    assert!(matches!(s.get("/q/before"), Err(StoreError::Unavailable { .. })), "no stale read without quorum");
    c.restart(1).unwrap();
    let start = Instant::now();
    let after = loop {
        match s.create("/q/after", b"3") {
            Ok(r) => break r,
            Err(StoreError::Unavailable { .. }) if start.elapsed() < Duration::from_secs(60) => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("the store did not recover: {e}"),
        }
    };
    assert!(after > rev);
    assert_eq!(s.get("/q/before").unwrap().unwrap().mod_revision, rev);
    // The write that timed out during the outage may have landed since (it
    // was proposed before the leader knew it had lost its quorum): what one
    // read says, the next says too.
    let during = s.get("/q/during").unwrap().map(|kv| kv.mod_revision);
    assert_eq!(s.get("/q/during").unwrap().map(|kv| kv.mod_revision), during);
}

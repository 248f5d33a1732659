//! The store's conformance assertions (`orchestrator_store::conformance`,
//! which the SQLite store's unit tests run too) against real etcd: each
//! test on a fresh one-member cluster on loopback.
//! `cargo test -p orchestrator-store-etcd --test conformance`

use std::sync::Arc;

use orchestrator_store::conformance;
use orchestrator_store_etcd::local::LocalCluster;
use orchestrator_store_etcd::{EtcdConfig, EtcdStore};

/// A fresh one-member cluster and a store on it; `None` (skipped, with a
/// message) without etcd outside CI; under CI=true a missing etcd fails.
fn store() -> Option<(LocalCluster, EtcdStore)> {
    if !orchestrator_store_etcd::local::available() {
        return None;
    }
    let cluster = LocalCluster::start(1).unwrap();
    let store = EtcdStore::connect(&EtcdConfig::from_url(&cluster.url(), None).unwrap()).unwrap();
    Some((cluster, store))
}

#[test]
fn create_get_update_conflict_delete() {
    let Some((_c, s)) = store() else { return };
    conformance::create_get_update_conflict_delete(&s);
}

#[test]
fn list_with_prefix_limit_continue_and_past_revision() {
    let Some((_c, s)) = store() else { return };
    conformance::list_with_prefix_limit_continue_and_past_revision(&s);
}

#[tokio::test]
async fn watch_replays_the_past_then_follows_without_gaps() {
    let Some((_c, s)) = store() else { return };
    conformance::watch_replays_the_past_then_follows_without_gaps(&s).await;
}

#[tokio::test]
async fn a_long_past_is_replayed_in_order_while_writes_go_on() {
    let Some((_c, s)) = store() else { return };
    conformance::a_long_past_is_replayed_in_order_while_writes_go_on(&s).await;
}

#[test]
fn values_over_the_limit_are_refused() {
    let Some((_c, s)) = store() else { return };
    conformance::values_over_the_limit_are_refused(&s);
}

#[tokio::test]
async fn compaction_keeps_current_values_and_refuses_old_watches() {
    let Some((_c, s)) = store() else { return };
    conformance::compaction_keeps_current_values_and_refuses_old_watches(&s).await;
}

#[test]
fn concurrent_writers_never_both_win() {
    let Some((_c, s)) = store() else { return };
    conformance::concurrent_writers_never_both_win(Arc::new(s));
}

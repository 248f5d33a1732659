//! What keeps the store from growing without bound, run by the API server
//! every five minutes (as kube-apiserver asks etcd to compact): Events
//! older than their time to live are deleted (upstream's `--event-ttl`,
//! one hour), history older than the newest [`KEEP_REVISIONS`] is
//! compacted (watches from before it get 410 Gone and re-list), and the
//! freed space goes back to the filesystem ([`Store::reclaim`]).

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Event;

use crate::resources::by_kind;
use orchestrator_store::{Store, StoreError};

/// History kept by compaction (as kine: the newest 1,000 revisions).
pub const KEEP_REVISIONS: i64 = 1000;

/// How long an Event lives after its last write (kube-apiserver's
/// `--event-ttl` default).
pub const DEFAULT_EVENT_TTL: Duration = Duration::from_secs(3600);

/// How often a pass runs (kube-apiserver's compaction interval).
pub const EVERY: Duration = Duration::from_secs(300);

/// The Events listed per page while looking for expired ones.
const PAGE: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub keep_revisions: i64,
    pub event_ttl: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings { keep_revisions: KEEP_REVISIONS, event_ttl: DEFAULT_EVENT_TTL }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub events_expired: usize,
    /// Stored Events that do not decode as one (kept: their age is unknown).
    pub events_unreadable: usize,
    /// The revision history was compacted to, if any.
    pub compacted_to: Option<i64>,
}

/// One pass at the time `now`: expire Events, compact, reclaim.
pub fn run(store: &dyn Store, settings: &Settings, now: Timestamp) -> Result<Report, StoreError> {
    let (events_expired, events_unreadable) = expire_events(store, settings.event_ttl, now)?;
    let target = store.current_revision()? - settings.keep_revisions;
    let compacted_to = (target > 0).then_some(target);
    if let Some(target) = compacted_to {
        store.compact(target)?;
    }
    store.reclaim()?;
    Ok(Report { events_expired, events_unreadable, compacted_to })
}

/// When an Event was last written: the latest of its timestamps (an
/// update that bumps `count` moves `lastTimestamp` or the series' time, as
/// etcd's lease is renewed by every write upstream).
fn last_written(e: &Event) -> Option<Timestamp> {
    [
        e.last_timestamp.as_ref().map(|t| t.0),
        e.event_time.as_ref().map(|t| t.0),
        e.series.as_ref().and_then(|s| s.last_observed_time.as_ref()).map(|t| t.0),
        e.metadata.creation_timestamp.as_ref().map(|t| t.0),
    ]
    .into_iter()
    .flatten()
    .max()
}

/// Deletes the Events last written more than `ttl` before `now`; returns
/// how many were deleted and how many could not be read. An Event written
/// again meanwhile (a conflict) is kept.
pub fn expire_events(store: &dyn Store, ttl: Duration, now: Timestamp) -> Result<(usize, usize), StoreError> {
    let prefix = by_kind("Event").expect("events are served").prefix(None);
    let cutoff = now - jiff::SignedDuration::try_from(ttl).unwrap_or(jiff::SignedDuration::MAX);
    let (mut expired, mut unreadable, mut after) = (0, 0, None::<String>);
    loop {
        let page = store.list(&prefix, after.as_deref(), PAGE, None)?;
        for kv in &page.items {
            let Ok(event) = serde_json::from_slice::<Event>(&kv.value) else {
                unreadable += 1;
                continue;
            };
            if last_written(&event).is_some_and(|t| t < cutoff) {
                match store.delete(&kv.key, Some(kv.mod_revision)) {
                    Ok(_) => expired += 1,
                    Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if !page.more {
            return Ok((expired, unreadable));
        }
        after = page.items.last().map(|kv| kv.key.clone());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::registry::{Registry, WriteOptions};
    use orchestrator_store::{Durability, SqliteStore};

    fn at(t: Timestamp) -> String {
        t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    }

    fn event(name: &str, last: Timestamp) -> serde_json::Value {
        json!({
            "metadata": {"name": name, "namespace": "default"},
            "involvedObject": {"kind": "Pod", "apiVersion": "v1", "namespace": "default", "name": "p", "uid": "u"},
            "reason": "Pulled", "type": "Normal",
            "message": "Successfully pulled image \"registry.k8s.io/pause:3.10\" in 1.234s (1.234s including waiting). Image size: 320368 bytes.",
            "source": {"component": "kubelet", "host": "node-1"},
            "firstTimestamp": at(last), "lastTimestamp": at(last), "count": 1,
        })
    }

    fn registry() -> (tempfile::TempDir, Registry) {
        let d = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&d.path().join("state.db"), Durability::Normal).unwrap();
        let r = Registry::new(Arc::new(s));
        r.bootstrap("127.0.0.1:6443").unwrap();
        (d, r)
    }

    #[test]
    fn events_expire_after_their_ttl_from_their_last_write() {
        let (_d, r) = registry();
        let ev = by_kind("Event").unwrap();
        let o = WriteOptions::default();
        let now = Timestamp::now();
        let mins = jiff::SignedDuration::from_mins;
        // Stored now, whatever time it claims: it lives an hour from now.
        r.create(ev, Some("default"), event("claims-old", now - mins(120)), &o).unwrap();
        r.create(ev, Some("default"), event("fresh", now), &o).unwrap();
        // Seen again 50 minutes from now (its count bumped): an hour from then.
        let mut bumped = event("bumped", now);
        bumped["lastTimestamp"] = at(now + mins(50)).into();
        bumped["count"] = 7.into();
        r.create(ev, Some("default"), bumped, &o).unwrap();
        assert_eq!(expire_events(&*r.store, DEFAULT_EVENT_TTL, now + mins(30)).unwrap(), (0, 0));
        assert_eq!(expire_events(&*r.store, DEFAULT_EVENT_TTL, now + mins(70)).unwrap(), (2, 0));
        let left = r.list(ev, None, &Default::default()).unwrap().items;
        assert_eq!(left.iter().map(crate::registry::name_of).collect::<Vec<_>>(), ["bumped"]);
        assert_eq!(expire_events(&*r.store, DEFAULT_EVENT_TTL, now + mins(111)).unwrap(), (1, 0));
        // A shorter time to live (`--event-ttl`).
        r.create(ev, Some("default"), event("short", now), &o).unwrap();
        assert_eq!(expire_events(&*r.store, Duration::from_secs(60), now + mins(2)).unwrap(), (1, 0));
    }

    fn disk_bytes(dir: &std::path::Path) -> u64 {
        ["state.db", "state.db-wal"].iter().map(|f| std::fs::metadata(dir.join(f)).map_or(0, |m| m.len())).sum()
    }

    /// 10,000 writes — ConfigMaps updated in place and a new Event every
    /// other write, a simulated second apart — with a housekeeping pass
    /// every 300 simulated seconds: once Events start to expire (after
    /// the first hour) the database and its WAL stay the same size.
    #[test]
    fn a_churn_of_ten_thousand_writes_keeps_the_database_flat() {
        let (d, r) = registry();
        let (cm, ev) = (by_kind("ConfigMap").unwrap(), by_kind("Event").unwrap());
        let o = WriteOptions::default();
        let start = Timestamp::now();
        let settings = Settings::default();
        let mut written = 0u64;
        let mut sizes = Vec::new();
        for i in 0..10_000i64 {
            let now = start + jiff::SignedDuration::from_secs(i);
            let name = format!("c{}", (i / 2) % 20);
            if i % 2 == 0 {
                let data = json!({"metadata": {"name": name}, "data": {"v": "x".repeat(1024), "i": i.to_string()}});
                let w = if i < 40 {
                    r.create(cm, Some("default"), data, &o)
                } else {
                    r.update(cm, Some("default"), &name, data, crate::registry::Part::Main, &o)
                };
                written += serde_json::to_vec(&w.unwrap().object).unwrap().len() as u64;
            } else {
                let w = r.create(ev, Some("default"), event(&format!("p.{i:x}"), now), &o).unwrap();
                written += serde_json::to_vec(&w.object).unwrap().len() as u64;
            }
            if i % 300 == 299 {
                run(&*r.store, &settings, now).unwrap();
                sizes.push((i + 1, disk_bytes(d.path())));
            }
        }
        eprintln!("database + WAL after each pass (writes, bytes): {sizes:?}; {written} bytes written");
        let settled = sizes.iter().find(|(i, _)| *i >= 5_000).unwrap().1;
        let biggest = sizes.iter().filter(|(i, _)| *i >= 5_000).map(|(_, b)| *b).max().unwrap();
        assert!(biggest <= settled + settled / 20, "grew from {settled} to {biggest} bytes: {sizes:?}");
        let events = r.list(ev, None, &Default::default()).unwrap().items.len();
        // The last pass kept an hour's (1,800); 50 were written after it.
        assert!((1845..=1855).contains(&events), "an hour of Events kept, not {events}");
    }
}

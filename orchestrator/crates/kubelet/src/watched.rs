//! Watches of the ConfigMaps and Secrets the node's pods use, one per
//! object (in its namespace, with a `metadata.name` field selector), as
//! upstream's kubelet does: the Node authorizer lets a kubelet watch
//! nothing wider. A change (and a watch's start, which may follow a
//! missed change) makes the pods of that namespace due, so their volumes
//! are refreshed.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::Kubelet;

/// (kind, namespace, name).
pub type Key = (&'static str, String, String);

#[derive(Default)]
pub struct Watched {
    tasks: Mutex<HashMap<Key, tokio::task::JoinHandle<()>>>,
}

impl Watched {
    /// Watches exactly `wanted`: starts the missing watches, stops the others.
    pub fn sync(&self, k: &Arc<Kubelet>, wanted: HashSet<Key>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|key, task| {
            let keep = wanted.contains(key);
            if !keep {
                task.abort();
            }
            keep
        });
        for key in wanted {
            if let Entry::Vacant(slot) = tasks.entry(key) {
                let task = tokio::spawn(follow(Arc::downgrade(k), slot.key().clone()));
                slot.insert(task);
            }
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        for task in self.tasks.get_mut().unwrap_or_else(|e| e.into_inner()).values() {
            task.abort();
        }
    }
}

async fn follow(k: Weak<Kubelet>, (kind, ns, name): Key) {
    let selector = format!("metadata.name={name}");
    loop {
        let Some(api) = k.upgrade().map(|k| k.api.clone()) else { return };
        if let Some(mut w) = api.watch_in(kind, Some(&ns), &selector).await {
            let Some(kubelet) = k.upgrade() else { return };
            kubelet.namespace_due(Some(serde_json::json!({"metadata": {"namespace": ns}})));
            drop(kubelet);
            while let Some(o) = w.next().await {
                let Some(kubelet) = k.upgrade() else { return };
                kubelet.namespace_due(Some(o));
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

//! On an HA control plane (the store on etcd): a deleted Node takes the
//! etcd member of the same name out of the member list (a control plane's
//! member is named by its hostname, its Node too), as upstream's
//! `kubectl delete node` + `etcdctl member remove` by hand. A replaced
//! node can then join again as a new member, and the others' quorum no
//! longer counts a machine that is gone. The removal is refused (and
//! tried again, then reported as a Warning Event) when the members that
//! stay would have no quorum; a Node that is no member changes nothing.
//!
//! Every API server on etcd runs this (not only the controllers' leader):
//! a removal is idempotent, the second finds no member of that name. A
//! deletion made while no API server watched is not seen; `osctl etcd
//! remove-member` is the way then.
//!
//! The etcd administration itself is behind [`Members`] (this crate does
//! not use the etcd client: the binary gives it one).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use orchestrator_apimachinery::registry::Registry;
use orchestrator_store::EventKind;

/// The member list, as the binary administers it.
pub trait Members: Send + Sync + 'static {
    /// The member named `name` leaves, unless that would lose the quorum:
    /// what happened in words, `None` when no member has that name.
    fn leave(&self, name: &str) -> Result<Option<String>, String>;
}

/// How often a refused removal is tried again, and how many times.
const RETRY: Duration = Duration::from_secs(5);
const TRIES: u32 = 12;

/// Watches Node deletions from now on and removes their members.
pub fn spawn(reg: Arc<Registry>, members: Arc<dyn Members>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let prefix = crate::rt("Node").prefix(None);
        loop {
            let from = reg.store.current_revision().unwrap_or(0);
            let mut watch = match reg.store.watch(&prefix, from) {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!("etcd members: watch: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            while let Ok(e) = watch.next().await {
                if e.kind != EventKind::Delete {
                    continue;
                }
                let Some(name) = e.kv.key.strip_prefix(&prefix).map(str::to_string) else { continue };
                tokio::spawn(remove(reg.clone(), members.clone(), name));
            }
        }
    })
}

/// Removes `node`'s member, trying again while etcd refuses.
async fn remove(reg: Arc<Registry>, members: Arc<dyn Members>, node: String) {
    let mut last = String::new();
    for _ in 0..TRIES {
        let (m, n) = (members.clone(), node.clone());
        match tokio::task::spawn_blocking(move || m.leave(&n)).await {
            Ok(Ok(None)) => return,
            Ok(Ok(Some(said))) => {
                tracing::info!(node, "Node deleted: {said}");
                report(&reg, &node, "Normal", "EtcdMemberRemoved", &format!("Node deleted: {said}"));
                return;
            }
            Ok(Err(why)) => last = why,
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(RETRY).await;
    }
    let msg = format!("Node deleted, its etcd member is still listed: {last} (osctl etcd remove-member {node})");
    tracing::warn!(node, "{msg}");
    report(&reg, &node, "Warning", "EtcdMemberNotRemoved", &msg);
}

fn report(reg: &Registry, node: &str, ty: &str, reason: &str, message: &str) {
    let involved = ObjectReference {
        kind: Some("Node".into()),
        api_version: Some("v1".into()),
        name: Some(node.to_string()),
        ..Default::default()
    };
    crate::event(reg, &involved, ty, reason, message, "etcd-members");
}

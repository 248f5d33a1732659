//! Cordoning and draining a node before it goes away for a while (an
//! upgrade's reboot, a reset), as `kubectl drain --ignore-daemonsets
//! --delete-emptydir-data --force` and Talos' drain before an upgrade:
//!
//! - the Node is marked unschedulable (`spec.unschedulable`);
//! - every pod bound to it is evicted through the `pods/eviction`
//!   subresource, so PodDisruptionBudgets are honoured (a 429 is tried
//!   again every [`RETRY`] until the deadline), except the ones kubectl
//!   drain leaves: DaemonSet pods (their controller would start them
//!   again on the node at once) and mirror pods (the kubelet's own);
//! - the drain is done when every evicted pod is gone from the node.
//!
//! Pods without a controller are evicted too (as Talos does; kubectl
//! needs `--force`): the node is going away, and a pod left on it would
//! stop anyway. The node's own credentials suffice: the Node authorizer
//! and NodeRestriction let a kubelet update its own Node and evict the
//! pods bound to it.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::Part;
use orchestrator_apimachinery::typed;

use crate::Api;
use crate::health::node_ready;

/// How often an eviction refused by a disruption budget is asked again
/// (kubectl drain's 5 s).
pub const RETRY: Duration = Duration::from_secs(5);

/// The mirror-pod annotation the kubelet sets on a static pod's mirror.
const MIRROR: &str = "kubernetes.io/config.mirror";

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("{0}")]
    Api(#[from] ApiError),
    #[error("node {node}: {pods} not evicted within {timeout:?}: {why}")]
    Timeout { node: String, pods: String, timeout: Duration, why: String },
    #[error("node {node} is not registered: nothing to drain")]
    NoNode { node: String },
}

/// What a drain did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Drained {
    /// Evicted pods, `namespace/name`.
    pub evicted: Vec<String>,
    /// Pods left on the node, `namespace/name (why)`.
    pub left: Vec<String>,
    /// No other node could take the pods: the node was not drained.
    pub alone: bool,
}

impl std::fmt::Display for Drained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.alone {
            return write!(
                f,
                "not drained: no other Ready, schedulable node to take its pods (they come back after the reboot)"
            );
        }
        write!(f, "cordoned and drained: {} pods evicted", self.evicted.len())?;
        if !self.evicted.is_empty() {
            write!(f, " ({})", self.evicted.join(", "))?;
        }
        if !self.left.is_empty() {
            write!(f, "; left: {}", self.left.join(", "))?;
        }
        Ok(())
    }
}

fn key(p: &Pod) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or_default(),
        p.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Why a pod stays on a drained node (`None`: it is evicted).
pub fn stays(p: &Pod) -> Option<&'static str> {
    let daemon =
        p.metadata.owner_references.iter().flatten().any(|o| o.controller == Some(true) && o.kind == "DaemonSet");
    let mirror = p.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(MIRROR));
    if mirror {
        Some("mirror pod")
    } else if daemon {
        Some("DaemonSet-managed")
    } else {
        None
    }
}

fn unschedulable(n: &Node) -> bool {
    n.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false)
}

/// Whether a node other than `node` can take its pods: Ready and not cordoned.
pub fn others_can_take(nodes: &[Node], node: &str) -> bool {
    nodes.iter().any(|n| n.metadata.name.as_deref() != Some(node) && node_ready(n, None) && !unschedulable(n))
}

async fn pods_on(api: &Api, node: &str) -> Result<Vec<Pod>, ApiError> {
    api.list_as("Pod", &format!("spec.nodeName={node}")).await
}

/// Sets the Node's `spec.unschedulable` (cordon: true, uncordon: false);
/// returns whether it changed.
pub async fn cordon(api: &Api, node: &str, on: bool) -> Result<bool, ApiError> {
    let changed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = changed.clone();
    api.modify("Node", None, node, Part::Main, move |o| {
        let set = typed::change_as::<Node>(o, "Node", |n| {
            if unschedulable(n) == on {
                return false;
            }
            n.spec.get_or_insert_with(Default::default).unschedulable = on.then_some(true);
            true
        });
        let set = set.unwrap_or(false);
        flag.store(set, std::sync::atomic::Ordering::Relaxed);
        set
    })
    .await?;
    Ok(changed.load(std::sync::atomic::Ordering::Relaxed))
}

/// Cordons `node` and evicts its pods (but DaemonSet and mirror pods),
/// waiting at most `timeout` for them to be gone. With `only_if_others`,
/// a node no other can stand in for is left as it is (`alone`).
pub async fn drain(api: &Api, node: &str, timeout: Duration, only_if_others: bool) -> Result<Drained, DrainError> {
    let nodes: Vec<Node> = api.list_as("Node", "").await?;
    if !nodes.iter().any(|n| n.metadata.name.as_deref() == Some(node)) {
        return Err(DrainError::NoNode { node: node.to_string() });
    }
    if only_if_others && !others_can_take(&nodes, node) {
        return Ok(Drained { alone: true, ..Default::default() });
    }
    cordon(api, node, true).await?;
    let deadline = Instant::now() + timeout;
    let mut out = Drained::default();
    // uid by pod, of those asked to go.
    let mut asked: std::collections::BTreeMap<String, String> = Default::default();
    let mut next_try: std::collections::BTreeMap<String, Instant> = Default::default();
    let mut why = String::new();
    loop {
        let pods = pods_on(api, node).await?;
        let mut waiting = Vec::new();
        for p in &pods {
            let k = key(p);
            if let Some(reason) = stays(p) {
                if !out.left.iter().any(|l| l.starts_with(&format!("{k} "))) {
                    out.left.push(format!("{k} ({reason})"));
                }
                continue;
            }
            let uid = p.metadata.uid.clone().unwrap_or_default();
            waiting.push(k.clone());
            if asked.get(&k) == Some(&uid) || p.metadata.deletion_timestamp.is_some() {
                continue;
            }
            if next_try.get(&k).is_some_and(|t| Instant::now() < *t) {
                continue;
            }
            let (ns, name) = (p.metadata.namespace.as_deref().unwrap_or_default(), p.metadata.name.as_deref());
            match api.evict(ns, name.unwrap_or_default()).await {
                Ok(()) => {
                    asked.insert(k.clone(), uid);
                    if !out.evicted.contains(&k) {
                        out.evicted.push(k.clone());
                    }
                }
                Err(e) if e.code == 404 => {}
                Err(e) if e.code == 429 => {
                    why = format!("{k}: {}", e.message);
                    next_try.insert(k, Instant::now() + RETRY);
                }
                Err(e) => return Err(e.into()),
            }
        }
        // Done when no pod but those that stay is bound to the node.
        let still = waiting;
        if still.is_empty() {
            return Ok(out);
        }
        if Instant::now() >= deadline {
            if why.is_empty() {
                why = "still terminating".into();
            }
            return Err(DrainError::Timeout { node: node.to_string(), pods: still.join(", "), timeout, why });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn daemonset_and_mirror_pods_stay_the_rest_go() {
        let ds = pod(json!({"metadata": {"name": "agent-x", "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent", "uid": "1", "controller": true}]}}));
        let rs = pod(json!({"metadata": {"name": "web-x", "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "2", "controller": true}]}}));
        let mirror = pod(json!({"metadata": {"name": "static-n1", "annotations": {MIRROR: "abc"}}}));
        let bare = pod(json!({"metadata": {"name": "bare"}}));
        assert_eq!(stays(&ds), Some("DaemonSet-managed"));
        assert_eq!(stays(&mirror), Some("mirror pod"));
        assert_eq!((stays(&rs), stays(&bare)), (None, None));
    }

    #[test]
    fn a_node_alone_has_nobody_to_take_its_pods() {
        let node = |name: &str, ready: &str, cordoned: bool| -> Node {
            serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"unschedulable": cordoned},
                "status": {"conditions": [{"type": "Ready", "status": ready}]}}))
            .unwrap()
        };
        assert!(!others_can_take(&[node("n1", "True", false)], "n1"));
        assert!(!others_can_take(&[node("n1", "True", false), node("n2", "False", false)], "n1"));
        assert!(!others_can_take(&[node("n1", "True", false), node("n2", "True", true)], "n1"));
        assert!(others_can_take(&[node("n1", "True", false), node("n2", "True", false)], "n1"));
    }
}

//! Whether a node is back at work: its Node `Ready`, and the pods it ran
//! before (a list recorded earlier) `Running` and `Ready` again. init
//! records the list before an upgrade reboots the node, and commits the
//! trial slot only once this holds (`orchestrator health`).

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};

use crate::Api;
use orchestrator_apimachinery::errors::ApiError;

/// A pod by namespace and name: the same object after a reboot (its
/// containers are new, the pod is not).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

/// Whether a time is at or after `since` (Unix seconds).
fn at_or_after(t: Option<&Time>, since: i64) -> bool {
    t.is_some_and(|t| t.0.as_second() >= since)
}

/// A Node Ready, by a heartbeat at or after `since` (Unix seconds) when
/// given: after a reboot the stored status is the old boot's until the
/// kubelet reports again.
pub fn node_ready(node: &Node, since: Option<i64>) -> bool {
    let conditions = node.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .is_some_and(|c| c.status == "True" && since.is_none_or(|t| at_or_after(c.last_heartbeat_time.as_ref(), t)))
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

/// A pod running with every container ready, each started at or after
/// `since` when given (the containers of this boot, not a stale status).
pub fn pod_ready(pod: &Pod, since: Option<i64>) -> bool {
    let status = pod.status.as_ref();
    let running = phase(pod) == Some("Running");
    let conditions = status.and_then(|s| s.conditions.as_ref());
    let ready = conditions.into_iter().flatten().find(|c| c.type_ == "Ready").is_some_and(|c| c.status == "True");
    let fresh = since.is_none_or(|t| {
        status.and_then(|s| s.container_statuses.as_ref()).is_some_and(|cs| {
            !cs.is_empty()
                && cs.iter().all(|c| {
                    let running = c.state.as_ref().and_then(|s| s.running.as_ref());
                    at_or_after(running.and_then(|r| r.started_at.as_ref()), t)
                })
        })
    });
    running && ready && fresh
}

fn pod_ref(pod: &Pod) -> PodRef {
    let field = |f: &Option<String>| f.clone().unwrap_or_default();
    PodRef { namespace: field(&pod.metadata.namespace), name: field(&pod.metadata.name) }
}

async fn node_pods(api: &Api, node: &str) -> Result<Vec<Pod>, ApiError> {
    api.list_as("Pod", &format!("spec.nodeName={node}")).await
}

/// The pods on `node` that are running and ready now, sorted.
pub async fn ready_pods(api: &Api, node: &str) -> Result<Vec<PodRef>, ApiError> {
    let pods = node_pods(api, node).await?;
    let mut out: Vec<PodRef> = pods.iter().filter(|p| pod_ready(p, None)).map(pod_ref).collect();
    out.sort();
    Ok(out)
}

/// What keeps `node` from being back at work: empty when its Node is
/// Ready and every pod of `expected` still on it is running and ready
/// (a pod deleted meanwhile is no longer expected), both reported at or
/// after `since` when given.
pub async fn not_ready(
    api: &Api,
    node: &str,
    expected: &[PodRef],
    since: Option<i64>,
) -> Result<Vec<String>, ApiError> {
    let mut out = Vec::new();
    match api.get_as::<Node>("Node", None, node).await {
        Ok(n) if node_ready(&n, since) => {}
        Ok(_) => out.push(format!("node {node} is not Ready (in this boot)")),
        Err(e) if e.code == 404 => out.push(format!("node {node} is not registered")),
        Err(e) => return Err(e),
    }
    let pods = node_pods(api, node).await?;
    for want in expected {
        let Some(p) = pods.iter().find(|p| pod_ref(p) == *want) else { continue };
        if !pod_ready(p, since) {
            let phase = phase(p).unwrap_or("Pending");
            out.push(format!("pod {}/{} is {phase}, not running and ready again", want.namespace, want.name));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn typed<K: serde::de::DeserializeOwned>(v: serde_json::Value) -> K {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn ready_means_running_with_the_ready_condition_reported_since_the_boot() {
        let pod = |phase: &str, ready: &str, started: &str| -> Pod {
            typed(json!({"status": {
                "phase": phase,
                "conditions": [{"type": "Ready", "status": ready}],
                "containerStatuses": [{"name": "c", "state": {"running": {"startedAt": started}}}],
            }}))
        };
        let boot = orchestrator_apimachinery::registry::parse_time("2026-12-01T10:00:00Z");
        assert!(pod_ready(&pod("Running", "True", "2026-12-01T10:00:05Z"), boot));
        // The status the last boot left behind is not this boot's.
        assert!(!pod_ready(&pod("Running", "True", "2026-12-01T09:59:00Z"), boot));
        assert!(pod_ready(&pod("Running", "True", "2026-12-01T09:59:00Z"), None));
        assert!(!pod_ready(&pod("Running", "False", "2026-12-01T10:00:05Z"), boot));
        assert!(!pod_ready(&pod("Pending", "True", "2026-12-01T10:00:05Z"), boot));
        assert!(!pod_ready(&typed(json!({"status": {"phase": "Running"}})), None));
        let node = |status: &str, beat: &str| -> Node {
            typed(json!({"status": {"conditions": [{"type": "Ready", "status": status, "lastHeartbeatTime": beat}]}}))
        };
        assert!(node_ready(&node("True", "2026-12-01T10:00:01Z"), boot));
        assert!(!node_ready(&node("True", "2026-12-01T09:59:59Z"), boot));
        assert!(!node_ready(&node("False", "2026-12-01T10:00:01Z"), boot));
        let p: Pod = typed(json!({"metadata": {"namespace": "default", "name": "web-1"}}));
        assert_eq!(pod_ref(&p), PodRef { namespace: "default".into(), name: "web-1".into() });
    }
}

//! Whether a node is back at work: its Node `Ready`, and the pods it ran
//! before (a list recorded earlier) `Running` and `Ready` again. init
//! records the list before an upgrade reboots the node, and commits the
//! trial slot only once this holds (`orchestrator health`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Api;
use orchestrator_apimachinery::errors::ApiError;

/// A pod by namespace and name: the same object after a reboot (its
/// containers are new, the pod is not).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

fn condition<'a>(obj: &'a Value, kind: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")?.as_array()?.iter().find(|c| c["type"] == kind)
}

fn time_at(v: &Value, ptr: &str) -> Option<i64> {
    orchestrator_apimachinery::registry::parse_time(v.pointer(ptr)?.as_str()?)
}

/// A Node Ready, by a heartbeat at or after `since` (Unix seconds) when
/// given: after a reboot the stored status is the old boot's until the
/// kubelet reports again.
pub fn node_ready(node: &Value, since: Option<i64>) -> bool {
    condition(node, "Ready").is_some_and(|c| {
        c["status"] == "True" && since.is_none_or(|t| time_at(c, "/lastHeartbeatTime").is_some_and(|h| h >= t))
    })
}

/// A pod running with every container ready, each started at or after
/// `since` when given (the containers of this boot, not a stale status).
pub fn pod_ready(pod: &Value, since: Option<i64>) -> bool {
    let running = pod.pointer("/status/phase").and_then(Value::as_str) == Some("Running");
    let ready = condition(pod, "Ready").is_some_and(|c| c["status"] == "True");
    let fresh = since.is_none_or(|t| {
        let statuses = pod.pointer("/status/containerStatuses").and_then(Value::as_array);
        statuses.is_some_and(|cs| {
            !cs.is_empty() && cs.iter().all(|c| time_at(c, "/state/running/startedAt").is_some_and(|s| s >= t))
        })
    });
    running && ready && fresh
}

fn pod_ref(pod: &Value) -> PodRef {
    let field = |p: &str| pod.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string();
    PodRef { namespace: field("/metadata/namespace"), name: field("/metadata/name") }
}

async fn node_pods(api: &Api, node: &str) -> Result<Vec<Value>, ApiError> {
    api.list("Pod", &format!("spec.nodeName={node}")).await
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
    match api.get("Node", None, node).await {
        Ok(n) if node_ready(&n, since) => {}
        Ok(_) => out.push(format!("node {node} is not Ready (in this boot)")),
        Err(e) if e.code == 404 => out.push(format!("node {node} is not registered")),
        Err(e) => return Err(e),
    }
    let pods = node_pods(api, node).await?;
    for want in expected {
        let Some(p) = pods.iter().find(|p| pod_ref(p) == *want) else { continue };
        if !pod_ready(p, since) {
            let phase = p.pointer("/status/phase").and_then(Value::as_str).unwrap_or("Pending");
            out.push(format!("pod {}/{} is {phase}, not running and ready again", want.namespace, want.name));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ready_means_running_with_the_ready_condition_reported_since_the_boot() {
        let pod = |phase: &str, ready: &str, started: &str| {
            json!({"status": {
                "phase": phase,
                "conditions": [{"type": "Ready", "status": ready}],
                "containerStatuses": [{"name": "c", "state": {"running": {"startedAt": started}}}],
            }})
        };
        let boot = orchestrator_apimachinery::registry::parse_time("2026-12-01T10:00:00Z");
        assert!(pod_ready(&pod("Running", "True", "2026-12-01T10:00:05Z"), boot));
        // The status the last boot left behind is not this boot's.
        assert!(!pod_ready(&pod("Running", "True", "2026-12-01T09:59:00Z"), boot));
        assert!(pod_ready(&pod("Running", "True", "2026-12-01T09:59:00Z"), None));
        assert!(!pod_ready(&pod("Running", "False", "2026-12-01T10:00:05Z"), boot));
        assert!(!pod_ready(&pod("Pending", "True", "2026-12-01T10:00:05Z"), boot));
        assert!(!pod_ready(&json!({"status": {"phase": "Running"}}), None));
        let node = |status: &str, beat: &str| json!({"status": {"conditions": [{"type": "Ready", "status": status, "lastHeartbeatTime": beat}]}});
        assert!(node_ready(&node("True", "2026-12-01T10:00:01Z"), boot));
        assert!(!node_ready(&node("True", "2026-12-01T09:59:59Z"), boot));
        assert!(!node_ready(&node("False", "2026-12-01T10:00:01Z"), boot));
        let p = json!({"metadata": {"namespace": "default", "name": "web-1"}});
        assert_eq!(pod_ref(&p), PodRef { namespace: "default".into(), name: "web-1".into() });
    }
}

//! Whether a node is back at work: its Node `Ready`, and the pods it ran
//! before (a list recorded earlier) `Running` and `Ready` again. init
//! records the list before an upgrade reboots the node, and commits the
//! trial slot only once this holds (`orchestrator health`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::errors::ApiError;
use crate::kubelet::api::Api;

/// A pod by namespace and name: the same object after a reboot (its
/// containers are new, the pod is not).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

fn condition_true(obj: &Value, kind: &str) -> bool {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == kind && c["status"] == "True"))
}

/// A pod running with every container ready.
pub fn pod_ready(pod: &Value) -> bool {
    pod.pointer("/status/phase").and_then(Value::as_str) == Some("Running") && condition_true(pod, "Ready")
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
    let mut out: Vec<PodRef> = node_pods(api, node).await?.iter().filter(|p| pod_ready(p)).map(pod_ref).collect();
    out.sort();
    Ok(out)
}

/// What keeps `node` from being back at work: empty when its Node is
/// Ready and every pod of `expected` still on it is running and ready
/// (a pod deleted meanwhile is no longer expected).
pub async fn not_ready(api: &Api, node: &str, expected: &[PodRef]) -> Result<Vec<String>, ApiError> {
    let mut out = Vec::new();
    match api.get("Node", None, node).await {
        Ok(n) if condition_true(&n, "Ready") => {}
        Ok(_) => out.push(format!("node {node} is not Ready")),
        Err(e) if e.code == 404 => out.push(format!("node {node} is not registered")),
        Err(e) => return Err(e),
    }
    let pods = node_pods(api, node).await?;
    for want in expected {
        let Some(p) = pods.iter().find(|p| pod_ref(p) == *want) else { continue };
        if !pod_ready(p) {
            let phase = p.pointer("/status/phase").and_then(Value::as_str).unwrap_or("Pending");
            out.push(format!("pod {}/{} is {phase}, not ready", want.namespace, want.name));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ready_means_running_with_the_ready_condition() {
        let pod = |phase: &str, ready: &str| json!({"status": {"phase": phase, "conditions": [{"type": "Ready", "status": ready}]}});
        assert!(pod_ready(&pod("Running", "True")));
        assert!(!pod_ready(&pod("Running", "False")));
        assert!(!pod_ready(&pod("Pending", "True")));
        assert!(!pod_ready(&json!({"status": {"phase": "Running"}})));
        let p = json!({"metadata": {"namespace": "default", "name": "web-1"}});
        assert_eq!(pod_ref(&p), PodRef { namespace: "default".into(), name: "web-1".into() });
    }
}

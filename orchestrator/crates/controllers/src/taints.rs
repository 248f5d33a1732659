//! NoExecute taints (upstream's taint-eviction controller): a pod bound to
//! a node with a `NoExecute` taint it does not tolerate is deleted at once;
//! one that tolerates it for `tolerationSeconds` is deleted that long
//! after the taint was added; one that tolerates it with no time limit
//! stays. With the node lifecycle's `node.kubernetes.io/unreachable`
//! taint and the 5-minute tolerations every pod gets at admission (as
//! upstream's DefaultTolerationSeconds), a node that went away has its
//! pods deleted after 5 minutes, and their controllers (ReplicaSets and
//! the like, which count no pod being deleted) make replacements that the
//! scheduler puts on the nodes still Ready. On a node that cannot answer,
//! a deleted pod stays Terminating until its kubelet is back (and stops
//! it) or the Node is deleted, as upstream.

use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::{DeleteOptions, Registry};

use crate::scheduler::toleration_matches;
use crate::{event, is_deleting, list_typed, name, node_name, reference};

/// When (unix seconds) a pod with `tolerations` must leave a node with
/// `taints`; `None` while it tolerates every NoExecute taint for ever (or
/// there is none). A taint with no `timeAdded` counts from `now`.
pub(crate) fn evict_at(tolerations: &[Toleration], taints: &[Taint], now: i64) -> Option<i64> {
    let mut at: Option<i64> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let matching: Vec<&Toleration> = tolerations.iter().filter(|t| toleration_matches(t, taint)).collect();
        let deadline = if matching.is_empty() {
            now
        } else if matching.iter().any(|t| t.toleration_seconds.is_none()) {
            continue;
        } else {
            let added = taint.time_added.as_ref().map_or(now, |t| t.0.as_second());
            let secs = matching.iter().filter_map(|t| t.toleration_seconds).min().unwrap_or(0).max(0);
            added + secs
        };
        at = Some(at.map_or(deadline, |a| a.min(deadline)));
    }
    at
}

pub fn reconcile(reg: &Registry) -> Result<(), ApiError> {
    reconcile_at(reg, time::OffsetDateTime::now_utc().unix_timestamp())
}

fn reconcile_at(reg: &Registry, now: i64) -> Result<(), ApiError> {
    let nodes: Vec<Node> = list_typed(reg)?;
    let tainted: Vec<(&str, &[Taint])> = nodes
        .iter()
        .filter_map(|n| {
            let taints = n.spec.as_ref()?.taints.as_deref()?;
            taints.iter().any(|t| t.effect == "NoExecute").then_some((name(&n.metadata), taints))
        })
        .collect();
    if tainted.is_empty() {
        return Ok(());
    }
    for p in list_typed::<Pod>(reg)? {
        if is_deleting(&p.metadata) {
            continue;
        }
        let Some((node, taints)) = node_name(&p).and_then(|n| tainted.iter().find(|(t, _)| *t == n)) else {
            continue;
        };
        let tolerations = p.spec.as_ref().and_then(|s| s.tolerations.as_deref()).unwrap_or_default();
        let Some(at) = evict_at(tolerations, taints, now) else { continue };
        if at > now {
            continue;
        }
        let ns = p.metadata.namespace.as_deref();
        let keys: Vec<&str> = taints.iter().filter(|t| t.effect == "NoExecute").map(|t| t.key.as_str()).collect();
        match reg.delete(crate::rt("Pod"), ns, name(&p.metadata), &DeleteOptions::default()) {
            Ok(_) => {}
            Err(e) if e.code == 404 || e.code == 409 => continue,
            Err(e) => return Err(e),
        }
        let message = format!("Marking for deletion Pod {}/{}", ns.unwrap_or_default(), name(&p.metadata));
        tracing::info!(node, taints = ?keys, "{message}");
        event(reg, &reference(&p), "Normal", "TaintManagerEviction", &message, "taint-eviction-controller");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use orchestrator_apimachinery::registry::WriteOptions;
    use serde_json::json;

    use crate::rt;

    fn taint(key: &str, effect: &str, added: Option<i64>) -> Taint {
        let time_added = added.map(|s| Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap()));
        Taint { key: key.into(), effect: effect.into(), time_added, value: None }
    }

    fn toleration(key: &str, seconds: Option<i64>) -> Toleration {
        Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: seconds,
            value: None,
        }
    }

    #[test]
    fn a_pod_leaves_when_its_tolerations_run_out() {
        let unreachable = "node.kubernetes.io/unreachable";
        let taints = [taint(unreachable, "NoSchedule", None), taint(unreachable, "NoExecute", Some(1000))];
        assert_eq!(evict_at(&[], &taints, 1010), Some(1010), "not tolerated: at once");
        assert_eq!(evict_at(&[toleration(unreachable, Some(300))], &taints, 1010), Some(1300));
        let two = [toleration(unreachable, Some(300)), toleration(unreachable, Some(30))];
        assert_eq!(evict_at(&two, &taints, 1010), Some(1030), "the shortest");
        assert_eq!(evict_at(&[toleration(unreachable, None)], &taints, 1010), None, "for ever");
        assert_eq!(evict_at(&[toleration("other", Some(300))], &taints, 1010), Some(1010));
        assert_eq!(evict_at(&[], &taints[..1], 1010), None, "NoSchedule evicts nothing");
    }

    #[test]
    fn pods_on_a_node_tainted_noexecute_are_deleted_when_due() {
        let d = tempfile::tempdir().unwrap();
        let reg = crate::test_registry(&d);
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let added = k8s_openapi::jiff::Timestamp::from_second(now - 100).unwrap().to_string();
        let gone = json!({"metadata": {"name": "gone"}, "spec": {"taints": [
            {"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule", "timeAdded": added},
            {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "timeAdded": added}]}});
        reg.create(rt("Node"), None, gone, &WriteOptions::default()).unwrap();
        reg.create(rt("Node"), None, json!({"metadata": {"name": "fine"}}), &WriteOptions::default()).unwrap();
        let pod = |name: &str, node: &str, seconds: Option<i64>| {
            let mut tolerations = vec![];
            if let Some(s) = seconds {
                tolerations.push(json!({"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                    "effect": "NoExecute", "tolerationSeconds": s}));
            }
            let p = json!({"metadata": {"name": name, "namespace": "default"}, "spec": {"nodeName": node,
                "tolerations": tolerations, "containers": [{"name": "c", "image": "busybox"}]}});
            reg.create(rt("Pod"), Some("default"), p, &WriteOptions::default()).unwrap();
        };
        pod("due", "gone", Some(60));
        pod("not-yet", "gone", Some(300));
        pod("elsewhere", "fine", Some(60));
        // A taint of the operator's own, which no toleration admission
        // adds tolerates.
        let own = json!({"metadata": {"name": "own"}, "spec": {"taints": [
            {"key": "example.com/maintenance", "effect": "NoExecute"}]}});
        reg.create(rt("Node"), None, own, &WriteOptions::default()).unwrap();
        pod("intolerant", "own", None);
        reconcile_at(&reg, now).unwrap();
        let deleting = |name: &str| {
            let p: Pod =
                orchestrator_apimachinery::typed::decode(reg.get(rt("Pod"), Some("default"), name).unwrap(), "pod")
                    .unwrap();
            is_deleting(&p.metadata)
        };
        assert!(deleting("due") && deleting("intolerant"));
        assert!(!deleting("not-yet") && !deleting("elsewhere"));
        // 200 s later, the 300 s one is due too.
        reconcile_at(&reg, now + 200).unwrap();
        assert!(deleting("not-yet") && !deleting("elsewhere"));
    }
}

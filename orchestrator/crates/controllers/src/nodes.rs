//! Node lifecycle: a node whose Lease (kube-node-lease/<node>) was not
//! renewed within its leaseDurationSeconds gets Ready=Unknown and the
//! `node.kubernetes.io/unreachable` taints; a renewed lease with the
//! kubelet reporting Ready lifts the taints. As upstream, a lease is
//! timed from no earlier than this controller's start: after the control
//! plane was down, every node first gets its lease duration to renew,
//! rather than being marked Unknown for the control plane's own outage.

use std::sync::OnceLock;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::{Part, Registry};

use crate::{list_typed, modify_typed, time_now};

const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

fn seconds(t: &Time) -> i64 {
    t.0.as_second()
}

/// Whether the node's lease (or, before its first, its creation) is
/// recent enough at `now`, counting nothing before `started`.
fn lease_fresh(lease: Option<&Lease>, node: &Node, now: i64, started: i64) -> bool {
    let created = node.metadata.creation_timestamp.as_ref().map_or(now, seconds);
    match lease {
        Some(l) => {
            let spec = l.spec.as_ref();
            let duration = spec.and_then(|s| s.lease_duration_seconds).map_or(40, i64::from);
            let renewed = spec.and_then(|s| s.renew_time.as_ref()).map_or(0, |t| t.0.as_second());
            now - renewed.max(started) <= duration
        }
        // A new node has the grace period to post its first lease.
        None => now - created.max(started) <= 40,
    }
}

/// When this process's controller first ran (unix seconds).
static STARTED: OnceLock<i64> = OnceLock::new();

pub fn reconcile(reg: &Registry) -> Result<(), ApiError> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    reconcile_at(reg, now, *STARTED.get_or_init(|| now))
}

fn reconcile_at(reg: &Registry, now_s: i64, started: i64) -> Result<(), ApiError> {
    let leases: Vec<Lease> = list_typed::<Lease>(reg)?
        .into_iter()
        .filter(|l| l.metadata.namespace.as_deref() == Some("kube-node-lease"))
        .collect();
    for node in list_typed::<Node>(reg)? {
        let name = node.metadata.name.clone().unwrap_or_default();
        let lease = leases.iter().find(|l| l.metadata.name == node.metadata.name);
        let fresh = lease_fresh(lease, &node, now_s, started);
        let conds = node.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or_default();
        let ready = conds.iter().find(|c| c.type_ == "Ready").map(|c| c.status.clone());
        let taints = node.spec.as_ref().and_then(|s| s.taints.as_deref()).unwrap_or_default();
        let tainted = taints.iter().any(|t| t.key == UNREACHABLE);
        if !fresh && ready.as_deref() != Some("Unknown") {
            let t = time_now();
            modify_typed(reg, None, &name, Part::Status, |n: &mut Node| {
                let conds = n.status.as_mut().and_then(|s| s.conditions.as_mut());
                for c in conds.into_iter().flatten() {
                    c.status = "Unknown".into();
                    c.reason = Some("NodeStatusUnknown".into());
                    c.message = Some("Kubelet stopped posting node status.".into());
                    c.last_transition_time = Some(t.clone());
                }
                true
            })?;
        }
        let want_taint = !fresh || ready.as_deref() == Some("Unknown");
        if want_taint != tainted {
            modify_typed(reg, None, &name, Part::Main, |n: &mut Node| {
                let spec = n.spec.get_or_insert_default();
                let mut ts = spec.taints.take().unwrap_or_default();
                ts.retain(|t| t.key != UNREACHABLE);
                if want_taint {
                    for effect in ["NoSchedule", "NoExecute"] {
                        let time_added = Some(time_now());
                        ts.push(Taint { key: UNREACHABLE.into(), effect: effect.into(), time_added, value: None });
                    }
                }
                spec.taints = Some(ts);
                true
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use orchestrator_apimachinery::registry::WriteOptions;
    use serde_json::json;

    use crate::rt;

    fn ready(reg: &Registry) -> String {
        let n: Node =
            orchestrator_apimachinery::typed::decode(reg.get(rt("Node"), None, "n1").unwrap(), "Node").unwrap();
        let conds = n.status.and_then(|s| s.conditions).unwrap_or_default();
        conds.into_iter().find(|c| c.type_ == "Ready").map(|c| c.status).unwrap_or_default()
    }

    #[test]
    fn a_lease_that_lapsed_while_the_control_plane_was_down_gets_its_duration_again() {
        let d = tempfile::tempdir().unwrap();
        let reg = crate::test_registry(&d);
        let node = json!({"metadata": {"name": "n1"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        reg.create(rt("Node"), None, node, &WriteOptions::default()).unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        // Renewed 10 minutes ago, with 60 s to run: the control plane was down since.
        let renewed = k8s_openapi::jiff::Timestamp::from_second(now - 600).unwrap();
        let lease = json!({"metadata": {"name": "n1", "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 60, "renewTime": renewed.to_string()}});
        reg.create(rt("Lease"), Some("kube-node-lease"), lease, &WriteOptions::default()).unwrap();
        // Back for 30 s: the kubelet still has time to renew.
        reconcile_at(&reg, now, now - 30).unwrap();
        assert_eq!(ready(&reg), "True");
        // Back for 61 s and not renewed: the node is gone indeed.
        reconcile_at(&reg, now, now - 61).unwrap();
        assert_eq!(ready(&reg), "Unknown");
    }
}

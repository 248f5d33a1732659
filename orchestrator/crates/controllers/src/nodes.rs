//! Node lifecycle: a node whose Lease (kube-node-lease/<node>) was not
//! renewed within its leaseDurationSeconds gets Ready=Unknown and the
//! `node.kubernetes.io/unreachable` taints; a renewed lease with the
//! kubelet reporting Ready lifts the taints.

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

fn lease_fresh(lease: Option<&Lease>, node: &Node, now: i64) -> bool {
    let created = node.metadata.creation_timestamp.as_ref().map_or(now, seconds);
    match lease {
        Some(l) => {
            let spec = l.spec.as_ref();
            let duration = spec.and_then(|s| s.lease_duration_seconds).map_or(40, i64::from);
            let renewed = spec.and_then(|s| s.renew_time.as_ref()).map_or(0, |t| t.0.as_second());
            now - renewed <= duration
        }
        // A new node has the grace period to post its first lease.
        None => now - created <= 40,
    }
}

pub fn reconcile(reg: &Registry) -> Result<(), ApiError> {
    let leases: Vec<Lease> = list_typed::<Lease>(reg)?
        .into_iter()
        .filter(|l| l.metadata.namespace.as_deref() == Some("kube-node-lease"))
        .collect();
    let now_s = time::OffsetDateTime::now_utc().unix_timestamp();
    for node in list_typed::<Node>(reg)? {
        let name = node.metadata.name.clone().unwrap_or_default();
        let fresh = lease_fresh(leases.iter().find(|l| l.metadata.name == node.metadata.name), &node, now_s);
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

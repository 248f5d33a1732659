//! Node lifecycle: a node whose Lease (kube-node-lease/<node>) was not
//! renewed within its leaseDurationSeconds gets Ready=Unknown and the
//! `node.kubernetes.io/unreachable` taints; a renewed lease with the
//! kubelet reporting Ready lifts the taints.

use serde_json::{Value, json};

use crate::{list_all, rt};
use orch_apimachinery::errors::ApiError;
use orch_apimachinery::registry::{Part, Registry, WriteOptions, name_of, namespace_of, now, parse_time};

const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

fn lease_fresh(lease: Option<&Value>, node: &Value, now: i64) -> bool {
    let created =
        node.pointer("/metadata/creationTimestamp").and_then(Value::as_str).and_then(parse_time).unwrap_or(now);
    match lease {
        Some(l) => {
            let duration = l.pointer("/spec/leaseDurationSeconds").and_then(Value::as_i64).unwrap_or(40);
            let renewed = l.pointer("/spec/renewTime").and_then(Value::as_str).and_then(parse_time).unwrap_or(0);
            now - renewed <= duration
        }
        // A new node has the grace period to post its first lease.
        None => now - created <= 40,
    }
}

pub fn reconcile(reg: &Registry) -> Result<(), ApiError> {
    let leases: Vec<Value> =
        list_all(reg, "Lease")?.into_iter().filter(|l| namespace_of(l) == Some("kube-node-lease")).collect();
    let now_s = time::OffsetDateTime::now_utc().unix_timestamp();
    for node in list_all(reg, "Node")? {
        let name = name_of(&node).to_string();
        let fresh = lease_fresh(leases.iter().find(|l| name_of(l) == name), &node, now_s);
        let conds = node.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
        let ready =
            conds.iter().find(|c| c["type"] == "Ready").map(|c| c["status"].as_str().unwrap_or_default().to_string());
        let taints: Vec<Value> = node.pointer("/spec/taints").and_then(Value::as_array).cloned().unwrap_or_default();
        let tainted = taints.iter().any(|t| t["key"] == UNREACHABLE);
        if !fresh && ready.as_deref() != Some("Unknown") {
            reg.modify(rt("Node"), None, &name, Part::Status, &WriteOptions::default(), |o| {
                let t = now();
                for c in o.pointer_mut("/status/conditions").and_then(Value::as_array_mut).into_iter().flatten() {
                    c["status"] = "Unknown".into();
                    c["reason"] = "NodeStatusUnknown".into();
                    c["message"] = "Kubelet stopped posting node status.".into();
                    c["lastTransitionTime"] = t.clone().into();
                }
                Ok(true)
            })?;
        }
        let want_taint = !fresh || ready.as_deref() == Some("Unknown");
        if want_taint != tainted {
            reg.modify(rt("Node"), None, &name, Part::Main, &WriteOptions::default(), |o| {
                let mut ts: Vec<Value> =
                    o.pointer("/spec/taints").and_then(Value::as_array).cloned().unwrap_or_default();
                ts.retain(|t| t["key"] != UNREACHABLE);
                if want_taint {
                    ts.push(json!({"key": UNREACHABLE, "effect": "NoSchedule", "timeAdded": now()}));
                    ts.push(json!({"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": now()}));
                }
                o["spec"]["taints"] = json!(ts);
                Ok(true)
            })?;
        }
    }
    Ok(())
}

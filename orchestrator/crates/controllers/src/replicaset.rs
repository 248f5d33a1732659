//! ReplicaSet: keeps `spec.replicas` active pods from the template, owned by
//! the set, and reports replicas / ready / available in its status.

use serde_json::{Value, json};

use crate::{controller_ref, int, is_deleting, list_all, owned_by, pod_active, pod_ready, rt, selector_of};
use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::{
    DeleteOptions, Part, Registry, WriteOptions, name_of, namespace_of, parse_time, uid_of,
};

/// A pod from a template, owned by `owner`.
pub(crate) fn pod_from_template(owner: &Value) -> Value {
    let t = &owner["spec"]["template"];
    let mut meta = t.get("metadata").cloned().unwrap_or(json!({}));
    meta["generateName"] = format!("{}-", name_of(owner)).into();
    meta["namespace"] = namespace_of(owner).into();
    meta["ownerReferences"] = json!([controller_ref(owner)]);
    if let Some(m) = meta.as_object_mut() {
        m.remove("name");
        m.remove("creationTimestamp");
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": t["spec"]})
}

/// Ready for at least `min_ready` seconds.
pub(crate) fn pod_available(p: &Value, min_ready: i64, now: i64) -> bool {
    if !pod_ready(p) {
        return false;
    }
    if min_ready == 0 {
        return true;
    }
    let since = p
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["lastTransitionTime"].as_str())
        .and_then(parse_time)
        .unwrap_or(now);
    now - since >= min_ready
}

/// Which pods to remove first: unscheduled, then not ready, then newest.
fn deletion_rank(p: &Value) -> (bool, bool, std::cmp::Reverse<String>) {
    let scheduled = p.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty());
    let created = p.pointer("/metadata/creationTimestamp").and_then(Value::as_str).unwrap_or_default().to_string();
    (scheduled, pod_ready(p), std::cmp::Reverse(created))
}

pub fn reconcile(reg: &Registry) -> Result<(), ApiError> {
    let pods = list_all(reg, "Pod")?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for rs in list_all(reg, "ReplicaSet")? {
        let ns = namespace_of(&rs).map(str::to_string);
        let (uid, name) = (uid_of(&rs).to_string(), name_of(&rs).to_string());
        let selector = selector_of(&rs);
        let owned: Vec<&Value> = pods
            .iter()
            .filter(|p| namespace_of(p) == ns.as_deref() && owned_by(p, &uid).is_some() && selector.matches_object(p))
            .collect();
        let active: Vec<&Value> = owned.iter().copied().filter(|p| pod_active(p)).collect();
        let want = int(&rs, "/spec/replicas");
        if !is_deleting(&rs) {
            let diff = want - active.len() as i64;
            if diff > 0 {
                for _ in 0..diff.min(100) {
                    reg.create(rt("Pod"), ns.as_deref(), pod_from_template(&rs), &WriteOptions::default())?;
                }
            } else if diff < 0 {
                let mut victims = active.clone();
                victims.sort_by_key(|p| deletion_rank(p));
                for p in victims.into_iter().take((-diff) as usize) {
                    match reg.delete(rt("Pod"), ns.as_deref(), name_of(p), &DeleteOptions::default()) {
                        Err(e) if e.code == 404 => {}
                        r => {
                            r?;
                        }
                    }
                }
            }
        }
        let min_ready = int(&rs, "/spec/minReadySeconds");
        let labels_match = active.iter().filter(|p| {
            rs.pointer("/spec/template/metadata/labels")
                .and_then(Value::as_object)
                .is_none_or(|l| l.iter().all(|(k, v)| p["metadata"]["labels"][k] == *v))
        });
        let status = json!({
            "replicas": active.len(),
            "fullyLabeledReplicas": labels_match.count(),
            "readyReplicas": active.iter().filter(|p| pod_ready(p)).count(),
            "availableReplicas": active.iter().filter(|p| pod_available(p, min_ready, now)).count(),
            "observedGeneration": rs["metadata"]["generation"],
        });
        let mut status = status;
        if let Some(m) = status.as_object_mut() {
            m.retain(|k, v| k == "replicas" || v.as_i64() != Some(0));
        }
        if rs.get("status") != Some(&status) {
            reg.modify(rt("ReplicaSet"), ns.as_deref(), &name, Part::Status, &WriteOptions::default(), |o| {
                o["status"] = status.clone();
                Ok(true)
            })?;
        }
    }
    Ok(())
}

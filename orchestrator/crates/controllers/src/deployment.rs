//! Deployment: one ReplicaSet per pod template (named by its hash), rolling
//! updates bounded by maxSurge / maxUnavailable (or Recreate), revision
//! annotations (so `rollout undo` re-uses an old set and renumbers it),
//! revision history pruning, and the status and conditions
//! `kubectl rollout status` reads.

use k8s_openapi::api::apps::v1::Deployment;
use serde_json::{Value, json};

use crate::{controller_ref, decode, event, int, is_deleting, list_all, owned_by, reference, rt, set_condition};
use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::{
    DeleteOptions, Part, Registry, WriteOptions, name_of, namespace_of, parse_time, uid_of,
};

const REVISION: &str = "deployment.kubernetes.io/revision";
const HASH: &str = "pod-template-hash";

/// Upstream's style of template hash: FNV-32a, digits mapped to safe letters.
pub fn template_hash(template: &Value) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in serde_json::to_string(template).unwrap_or_default().bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string().bytes().map(|d| ALPHABET[(d - b'0') as usize] as char).collect()
}

/// An int-or-percent of `total` (surge rounds up, unavailable down).
fn resolve(v: Option<&Value>, total: i64, round_up: bool) -> i64 {
    match v {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        Some(Value::String(s)) => match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            Some(p) if round_up => (p * total + 99) / 100,
            Some(p) => p * total / 100,
            None => s.parse().unwrap_or(0),
        },
        _ => 0,
    }
}

fn revision(rs: &Value) -> i64 {
    rs.pointer("/metadata/annotations")
        .and_then(|a| a.get(REVISION))
        .and_then(Value::as_str)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn template_without_hash(rs: &Value) -> Value {
    let mut t = rs["spec"]["template"].clone();
    if let Some(l) = t.pointer_mut("/metadata/labels").and_then(Value::as_object_mut) {
        l.remove(HASH);
    }
    t
}

/// A ScalingReplicaSet Event about the Deployment `d`.
fn scaling_event(reg: &Registry, d: &Value, msg: &str) -> Result<(), ApiError> {
    let involved = reference(&decode::<Deployment>(d.clone())?);
    event(reg, &involved, "Normal", "ScalingReplicaSet", msg, "deployment-controller");
    Ok(())
}

fn scale(reg: &Registry, d: &Value, rs: &Value, to: i64, replicas: i64, surge: i64) -> Result<(), ApiError> {
    let from = int(rs, "/spec/replicas");
    if from == to {
        return Ok(());
    }
    let ns = namespace_of(rs);
    reg.modify(rt("ReplicaSet"), ns, name_of(rs), Part::Main, &WriteOptions::default(), |o| {
        o["spec"]["replicas"] = to.into();
        let a = &mut o["metadata"]["annotations"];
        a["deployment.kubernetes.io/desired-replicas"] = replicas.to_string().into();
        a["deployment.kubernetes.io/max-replicas"] = (replicas + surge).to_string().into();
        Ok(true)
    })?;
    let dir = if to > from { "up" } else { "down" };
    let msg = format!("Scaled {dir} replica set {} from {from} to {to}", name_of(rs));
    scaling_event(reg, d, &msg)?;
    Ok(())
}

fn new_replica_set(d: &Value, hash: &str, revision: i64, replicas: i64, surge: i64) -> Value {
    let mut template = d["spec"]["template"].clone();
    template["metadata"]["labels"][HASH] = hash.into();
    let mut selector = d["spec"]["selector"].clone();
    selector["matchLabels"][HASH] = hash.into();
    let mut labels = template["metadata"]["labels"].clone();
    labels[HASH] = hash.into();
    json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": format!("{}-{hash}", name_of(d)), "namespace": namespace_of(d), "labels": labels,
            "annotations": {REVISION: revision.to_string(), "deployment.kubernetes.io/desired-replicas": d["spec"]["replicas"].to_string(),
                "deployment.kubernetes.io/max-replicas": (int(d, "/spec/replicas") + surge).to_string()},
            "ownerReferences": [controller_ref(d)]},
        "spec": {"replicas": replicas, "minReadySeconds": d["spec"]["minReadySeconds"].as_i64().unwrap_or(0),
            "selector": selector, "template": template}})
}

pub fn reconcile(reg: &Registry) -> Result<(), ApiError> {
    let all_rs = list_all(reg, "ReplicaSet")?;
    for d in list_all(reg, "Deployment")? {
        if is_deleting(&d) {
            continue;
        }
        if let Err(e) = sync(reg, &d, &all_rs)
            && e.code != 409
            && e.code != 404
        {
            tracing::warn!(deployment = name_of(&d), "{e}");
        }
    }
    Ok(())
}

fn sync(reg: &Registry, d: &Value, all_rs: &[Value]) -> Result<(), ApiError> {
    let ns = namespace_of(d);
    let uid = uid_of(d);
    let owned: Vec<&Value> =
        all_rs.iter().filter(|rs| namespace_of(rs) == ns && owned_by(rs, uid).is_some() && !is_deleting(rs)).collect();
    let replicas = int(d, "/spec/replicas");
    let recreate = d.pointer("/spec/strategy/type").and_then(Value::as_str) == Some("Recreate");
    let (surge, unavailable) = if recreate {
        (0, 0)
    } else {
        let surge = resolve(d.pointer("/spec/strategy/rollingUpdate/maxSurge"), replicas, true);
        let mut unavailable = resolve(d.pointer("/spec/strategy/rollingUpdate/maxUnavailable"), replicas, false);
        if surge == 0 && unavailable == 0 {
            unavailable = 1;
        }
        (surge, unavailable)
    };
    let template = &d["spec"]["template"];
    let max_rev = owned.iter().map(|rs| revision(rs)).max().unwrap_or(0);
    let Some(new_rs) = owned.iter().copied().find(|rs| template_without_hash(rs) == *template) else {
        // A new template: a new ReplicaSet, scaled within the surge.
        let total: i64 = owned.iter().map(|rs| int(rs, "/spec/replicas")).sum();
        let old_pods: i64 = owned.iter().map(|rs| int(rs, "/status/replicas")).sum();
        let initial = if recreate {
            if old_pods > 0 || total > 0 { 0 } else { replicas }
        } else {
            (replicas + surge - total).clamp(0, replicas)
        };
        let hash = template_hash(template);
        let rs = new_replica_set(d, &hash, max_rev + 1, initial, surge);
        let created = match reg.create(rt("ReplicaSet"), ns, rs, &WriteOptions::default()) {
            Ok(w) => w.object,
            Err(e) if e.reason == "AlreadyExists" => {
                return Err(ApiError::conflict(
                    rt("ReplicaSet"),
                    &format!("{}-{hash}", name_of(d)),
                    "a replica set of this name exists with another template",
                ));
            }
            Err(e) => return Err(e),
        };
        if initial > 0 {
            let msg = format!("Scaled up replica set {} from 0 to {initial}", name_of(&created));
            scaling_event(reg, d, &msg)?;
        }
        let msg = format!("Created new replica set \"{}\"", name_of(&created));
        return write_status(reg, d, &owned, Some(&created), ("True", "NewReplicaSetCreated", &msg));
    };
    let new_rev = if revision(new_rs) < max_rev || revision(new_rs) == 0 {
        // Rolled back to an old template: it becomes the newest revision.
        let rev = max_rev + 1;
        reg.modify(rt("ReplicaSet"), ns, name_of(new_rs), Part::Main, &WriteOptions::default(), |o| {
            o["metadata"]["annotations"][REVISION] = rev.to_string().into();
            Ok(true)
        })?;
        rev
    } else {
        revision(new_rs)
    };
    if d.pointer(&format!("/metadata/annotations/{}", REVISION.replace('/', "~1"))).and_then(Value::as_str)
        != Some(&new_rev.to_string())
    {
        reg.modify(rt("Deployment"), ns, name_of(d), Part::Main, &WriteOptions::default(), |o| {
            o["metadata"]["annotations"][REVISION] = new_rev.to_string().into();
            Ok(true)
        })?;
    }
    let old: Vec<&Value> = owned.iter().copied().filter(|rs| uid_of(rs) != uid_of(new_rs)).collect();
    let paused = d.pointer("/spec/paused") == Some(&json!(true));
    if !paused {
        if recreate {
            let old_running: i64 = old.iter().map(|rs| int(rs, "/status/replicas")).sum();
            for rs in &old {
                scale(reg, d, rs, 0, replicas, surge)?;
            }
            if old_running == 0 && old.iter().all(|rs| int(rs, "/spec/replicas") == 0) {
                scale(reg, d, new_rs, replicas, replicas, surge)?;
            }
        } else {
            let total: i64 = owned.iter().map(|rs| int(rs, "/spec/replicas")).sum();
            let new_spec = int(new_rs, "/spec/replicas");
            if new_spec > replicas {
                scale(reg, d, new_rs, replicas, replicas, surge)?;
            } else if new_spec < replicas && total < replicas + surge {
                scale(reg, d, new_rs, replicas.min(new_spec + replicas + surge - total), replicas, surge)?;
            }
            // Scale old sets down as far as availability allows.
            let min_available = replicas - unavailable;
            let all_pods: i64 = owned.iter().map(|rs| int(rs, "/status/replicas")).sum();
            let new_unavailable = (int(new_rs, "/spec/replicas") - int(new_rs, "/status/availableReplicas")).max(0);
            let mut cleanup = (all_pods - min_available - new_unavailable).max(0);
            let mut available: i64 = owned.iter().map(|rs| int(rs, "/status/availableReplicas")).sum();
            let mut by_age = old.clone();
            by_age.sort_by_key(|rs| revision(rs));
            for rs in by_age {
                let spec = int(rs, "/spec/replicas");
                if spec == 0 {
                    continue;
                }
                let unhealthy = (spec - int(rs, "/status/availableReplicas")).max(0).min(cleanup);
                cleanup -= unhealthy;
                let healthy_down = (spec - unhealthy).min((available - min_available).max(0));
                available -= healthy_down;
                let to = spec - unhealthy - healthy_down;
                scale(reg, d, rs, to, replicas, surge)?;
            }
        }
        // Revision history: old, empty sets beyond the limit go.
        let limit = d.pointer("/spec/revisionHistoryLimit").and_then(Value::as_i64).unwrap_or(10).max(0) as usize;
        let mut empty: Vec<&&Value> =
            old.iter().filter(|rs| int(rs, "/spec/replicas") == 0 && int(rs, "/status/replicas") == 0).collect();
        if empty.len() > limit {
            empty.sort_by_key(|rs| revision(rs));
            for rs in &empty[..empty.len() - limit] {
                let _ = reg.delete(rt("ReplicaSet"), ns, name_of(rs), &DeleteOptions::default());
            }
        }
    }
    write_status(
        reg,
        d,
        &owned,
        Some(new_rs),
        ("True", "ReplicaSetUpdated", &format!("ReplicaSet \"{}\" is progressing.", name_of(new_rs))),
    )
}

fn write_status(
    reg: &Registry,
    d: &Value,
    owned: &[&Value],
    new_rs: Option<&Value>,
    progressing: (&str, &str, &str),
) -> Result<(), ApiError> {
    let replicas = int(d, "/spec/replicas");
    let sum = |p: &str| owned.iter().map(|rs| int(rs, p)).sum::<i64>();
    let updated = new_rs.map_or(0, |rs| int(rs, "/status/replicas"));
    let (total, ready, available) =
        (sum("/status/replicas"), sum("/status/readyReplicas"), sum("/status/availableReplicas"));
    let unavailable = (sum("/spec/replicas").max(replicas) - available).max(0);
    let max_unavailable = if d.pointer("/spec/strategy/type").and_then(Value::as_str) == Some("Recreate") {
        0
    } else {
        resolve(d.pointer("/spec/strategy/rollingUpdate/maxUnavailable"), replicas, false)
    };
    let old_status = d.get("status").cloned().unwrap_or(json!({}));
    let mut conds = old_status.get("conditions").cloned().unwrap_or(json!([]));
    conds = if available >= replicas - max_unavailable {
        set_condition(
            &conds,
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
            true,
        )
    } else {
        set_condition(
            &conds,
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
            true,
        )
    };
    let complete = updated == replicas && total == replicas && available == replicas && new_rs.is_some();
    let name = new_rs.map(name_of).unwrap_or_default();
    let progress = ["replicas", "updatedReplicas", "readyReplicas", "availableReplicas"]
        .iter()
        .zip([total, updated, ready, available])
        .any(|(k, v)| old_status.get(*k).and_then(Value::as_i64).unwrap_or(0) != v);
    let prev = conds.as_array().and_then(|c| c.iter().find(|c| c["type"] == "Progressing")).cloned();
    let deadline = d.pointer("/spec/progressDeadlineSeconds").and_then(Value::as_i64).unwrap_or(600);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let stale = prev
        .as_ref()
        .and_then(|c| c["lastUpdateTime"].as_str())
        .and_then(parse_time)
        .is_some_and(|t| now - t > deadline);
    conds = if complete {
        set_condition(
            &conds,
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            &format!("ReplicaSet \"{name}\" has successfully progressed."),
            true,
        )
    } else if prev.as_ref().is_some_and(|c| c["reason"] == "ProgressDeadlineExceeded") && !progress {
        conds
    } else if stale && !progress && progressing.1 == "ReplicaSetUpdated" {
        set_condition(
            &conds,
            "Progressing",
            "False",
            "ProgressDeadlineExceeded",
            &format!("ReplicaSet \"{name}\" has timed out progressing."),
            true,
        )
    } else {
        let mut c = set_condition(&conds, "Progressing", progressing.0, progressing.1, progressing.2, true);
        if progress {
            let t = orchestrator_apimachinery::registry::now();
            for x in c.as_array_mut().into_iter().flatten().filter(|x| x["type"] == "Progressing") {
                x["lastUpdateTime"] = t.clone().into();
            }
        }
        c
    };
    let mut status = json!({"observedGeneration": d["metadata"]["generation"], "replicas": total, "updatedReplicas": updated,
        "readyReplicas": ready, "availableReplicas": available, "unavailableReplicas": unavailable, "conditions": conds});
    if let Some(m) = status.as_object_mut() {
        m.retain(|_, v| v.as_i64() != Some(0));
    }
    if d.get("status") == Some(&status) {
        return Ok(());
    }
    reg.modify(rt("Deployment"), namespace_of(d), name_of(d), Part::Status, &WriteOptions::default(), |o| {
        o["status"] = status.clone();
        Ok(true)
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surge_and_unavailable_round_like_upstream() {
        assert_eq!(resolve(Some(&json!("25%")), 3, true), 1);
        assert_eq!(resolve(Some(&json!("25%")), 3, false), 0);
        assert_eq!(resolve(Some(&json!(2)), 3, false), 2);
        assert_eq!(resolve(None, 3, false), 0);
        let h = template_hash(&json!({"spec": {"containers": [{"name": "a"}]}}));
        assert!(h.len() >= 8 && h.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(h, template_hash(&json!({"spec": {"containers": [{"name": "b"}]}})));
    }
}

//! Deployment: one ReplicaSet per pod template (named by its hash), rolling
//! updates bounded by maxSurge / maxUnavailable (or Recreate), revision
//! annotations (so `rollout undo` re-uses an old set and renumbers it),
//! revision history pruning, and the status and conditions
//! `kubectl rollout status` reads.

use k8s_openapi::Resource;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStatus, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::replicaset::nonzero;
use crate::{
    controller_ref, create_typed, event, is_deleting, list_typed, modify_typed, name, owned_by, reference, rt,
    set_condition, time_now, uid, write_status,
};
use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::{DeleteOptions, Part, Registry};

const REVISION: &str = "deployment.kubernetes.io/revision";
const HASH: &str = "pod-template-hash";

/// Upstream's style of template hash: FNV-32a, digits mapped to safe
/// letters. It hashes the template's JSON (as stored), so names of
/// existing sets stay the same.
pub fn template_hash(template: &PodTemplateSpec) -> String {
    let json = serde_json::to_value(template).map(|v| v.to_string()).unwrap_or_default();
    let mut h: u32 = 0x811c_9dc5;
    for b in json.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string().bytes().map(|d| ALPHABET[(d - b'0') as usize] as char).collect()
}

/// An int-or-percent of `total` (surge rounds up, unavailable down).
fn resolve(v: Option<&IntOrString>, total: i64, round_up: bool) -> i64 {
    match v {
        Some(IntOrString::Int(n)) => i64::from(*n),
        Some(IntOrString::String(s)) => match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            Some(p) if round_up => (p * total + 99) / 100,
            Some(p) => p * total / 100,
            None => s.parse().unwrap_or(0),
        },
        None => 0,
    }
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata.annotations.as_ref().and_then(|a| a.get(REVISION)).and_then(|r| r.parse().ok()).unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i64 {
    rs.spec.as_ref().and_then(|s| s.replicas).map_or(0, i64::from)
}

/// `status.replicas`, `status.readyReplicas`, `status.availableReplicas`.
fn status_counts(rs: &ReplicaSet) -> (i64, i64, i64) {
    rs.status.as_ref().map_or((0, 0, 0), |s| {
        let n = |v: Option<i32>| v.map_or(0, i64::from);
        (i64::from(s.replicas), n(s.ready_replicas), n(s.available_replicas))
    })
}

fn status_replicas(rs: &ReplicaSet) -> i64 {
    status_counts(rs).0
}

fn available_replicas(rs: &ReplicaSet) -> i64 {
    status_counts(rs).2
}

fn template_without_hash(rs: &ReplicaSet) -> Option<PodTemplateSpec> {
    let mut t = rs.spec.as_ref()?.template.clone()?;
    if let Some(l) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        l.remove(HASH);
    }
    Some(t)
}

fn is_recreate(spec: &DeploymentSpec) -> bool {
    spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate")
}

fn rolling(spec: &DeploymentSpec) -> (Option<&IntOrString>, Option<&IntOrString>) {
    let r = spec.strategy.as_ref().and_then(|s| s.rolling_update.as_ref());
    (r.and_then(|r| r.max_surge.as_ref()), r.and_then(|r| r.max_unavailable.as_ref()))
}

/// A ScalingReplicaSet Event about the Deployment `d`.
fn scaling_event(reg: &Registry, d: &Deployment, msg: &str) {
    event(reg, &reference(d), "Normal", "ScalingReplicaSet", msg, "deployment-controller");
}

fn scale(reg: &Registry, d: &Deployment, rs: &ReplicaSet, to: i64, replicas: i64, surge: i64) -> Result<(), ApiError> {
    let from = spec_replicas(rs);
    if from == to {
        return Ok(());
    }
    let rs_name = name(&rs.metadata);
    modify_typed(reg, rs.metadata.namespace.as_deref(), rs_name, Part::Main, |o: &mut ReplicaSet| {
        o.spec.get_or_insert_default().replicas = Some(to as i32);
        let a = o.metadata.annotations.get_or_insert_default();
        a.insert("deployment.kubernetes.io/desired-replicas".into(), replicas.to_string());
        a.insert("deployment.kubernetes.io/max-replicas".into(), (replicas + surge).to_string());
        true
    })?;
    let dir = if to > from { "up" } else { "down" };
    scaling_event(reg, d, &format!("Scaled {dir} replica set {rs_name} from {from} to {to}"));
    Ok(())
}

fn new_replica_set(
    d: &Deployment,
    spec: &DeploymentSpec,
    hash: &str,
    revision: i64,
    initial: i64,
    surge: i64,
) -> ReplicaSet {
    let replicas = spec.replicas.map_or(0, i64::from);
    let mut template = spec.template.clone();
    let template_labels = template.metadata.get_or_insert_default().labels.get_or_insert_default();
    template_labels.insert(HASH.into(), hash.into());
    let labels = template_labels.clone();
    let mut selector = spec.selector.clone();
    selector.match_labels.get_or_insert_default().insert(HASH.into(), hash.into());
    let annotations = [
        (REVISION, revision.to_string()),
        ("deployment.kubernetes.io/desired-replicas", replicas.to_string()),
        ("deployment.kubernetes.io/max-replicas", (replicas + surge).to_string()),
    ];
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!("{}-{hash}", name(&d.metadata))),
            namespace: d.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations.into_iter().map(|(k, v)| (k.to_string(), v)).collect()),
            owner_references: Some(vec![controller_ref(d)]),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(initial as i32),
            min_ready_seconds: Some(spec.min_ready_seconds.unwrap_or(0)),
            selector,
            template: Some(template),
        }),
        status: None,
    }
}

pub fn reconcile(reg: &Registry) -> Result<(), ApiError> {
    let all_rs: Vec<ReplicaSet> = list_typed(reg)?;
    for d in list_typed::<Deployment>(reg)? {
        if is_deleting(&d.metadata) {
            continue;
        }
        if let Err(e) = sync(reg, &d, &all_rs)
            && e.code != 409
            && e.code != 404
        {
            tracing::warn!(deployment = name(&d.metadata), "{e}");
        }
    }
    Ok(())
}

fn sync(reg: &Registry, d: &Deployment, all_rs: &[ReplicaSet]) -> Result<(), ApiError> {
    // Validation requires a spec; a Deployment without one has nothing to run.
    let Some(spec) = d.spec.as_ref() else { return Ok(()) };
    let ns = d.metadata.namespace.as_deref();
    let owned: Vec<&ReplicaSet> = all_rs
        .iter()
        .filter(|rs| rs.metadata.namespace.as_deref() == ns && owned_by(&rs.metadata, uid(&d.metadata)))
        .filter(|rs| !is_deleting(&rs.metadata))
        .collect();
    let replicas = spec.replicas.map_or(0, i64::from);
    let recreate = is_recreate(spec);
    let (surge, unavailable) = if recreate {
        (0, 0)
    } else {
        let (max_surge, max_unavailable) = rolling(spec);
        let surge = resolve(max_surge, replicas, true);
        let mut unavailable = resolve(max_unavailable, replicas, false);
        if surge == 0 && unavailable == 0 {
            unavailable = 1;
        }
        (surge, unavailable)
    };
    let max_rev = owned.iter().map(|rs| revision(rs)).max().unwrap_or(0);
    let Some(new_rs) = owned.iter().copied().find(|rs| template_without_hash(rs).as_ref() == Some(&spec.template))
    else {
        // A new template: a new ReplicaSet, scaled within the surge.
        let total: i64 = owned.iter().map(|rs| spec_replicas(rs)).sum();
        let old_pods: i64 = owned.iter().map(|rs| status_replicas(rs)).sum();
        let initial = if recreate {
            if old_pods > 0 || total > 0 { 0 } else { replicas }
        } else {
            (replicas + surge - total).clamp(0, replicas)
        };
        let hash = template_hash(&spec.template);
        let rs = new_replica_set(d, spec, &hash, max_rev + 1, initial, surge);
        let created = match create_typed(reg, ns, &rs) {
            Ok(created) => created,
            Err(e) if e.reason == "AlreadyExists" => {
                return Err(ApiError::conflict(
                    rt(ReplicaSet::KIND),
                    &format!("{}-{hash}", name(&d.metadata)),
                    "a replica set of this name exists with another template",
                ));
            }
            Err(e) => return Err(e),
        };
        let created_name = name(&created.metadata);
        if initial > 0 {
            scaling_event(reg, d, &format!("Scaled up replica set {created_name} from 0 to {initial}"));
        }
        let msg = format!("Created new replica set \"{created_name}\"");
        return update_status(reg, d, &owned, Some(&created), ("True", "NewReplicaSetCreated", &msg));
    };
    let new_rev = if revision(new_rs) < max_rev || revision(new_rs) == 0 {
        // Rolled back to an old template: it becomes the newest revision.
        let rev = max_rev + 1;
        modify_typed(reg, ns, name(&new_rs.metadata), Part::Main, |o: &mut ReplicaSet| {
            o.metadata.annotations.get_or_insert_default().insert(REVISION.into(), rev.to_string());
            true
        })?;
        rev
    } else {
        revision(new_rs)
    };
    let annotations = d.metadata.annotations.as_ref();
    if annotations.and_then(|a| a.get(REVISION)) != Some(&new_rev.to_string()) {
        modify_typed(reg, ns, name(&d.metadata), Part::Main, |o: &mut Deployment| {
            o.metadata.annotations.get_or_insert_default().insert(REVISION.into(), new_rev.to_string());
            true
        })?;
    }
    let old: Vec<&ReplicaSet> = owned.iter().copied().filter(|rs| uid(&rs.metadata) != uid(&new_rs.metadata)).collect();
    if spec.paused != Some(true) {
        if recreate {
            let old_running: i64 = old.iter().map(|rs| status_replicas(rs)).sum();
            for rs in &old {
                scale(reg, d, rs, 0, replicas, surge)?;
            }
            if old_running == 0 && old.iter().all(|rs| spec_replicas(rs) == 0) {
                scale(reg, d, new_rs, replicas, replicas, surge)?;
            }
        } else {
            let total: i64 = owned.iter().map(|rs| spec_replicas(rs)).sum();
            let new_spec = spec_replicas(new_rs);
            if new_spec > replicas {
                scale(reg, d, new_rs, replicas, replicas, surge)?;
            } else if new_spec < replicas && total < replicas + surge {
                scale(reg, d, new_rs, replicas.min(new_spec + replicas + surge - total), replicas, surge)?;
            }
            // Scale old sets down as far as availability allows.
            let min_available = replicas - unavailable;
            let all_pods: i64 = owned.iter().map(|rs| status_replicas(rs)).sum();
            let new_unavailable = (spec_replicas(new_rs) - available_replicas(new_rs)).max(0);
            let mut cleanup = (all_pods - min_available - new_unavailable).max(0);
            let mut available: i64 = owned.iter().map(|rs| available_replicas(rs)).sum();
            let mut by_age = old.clone();
            by_age.sort_by_key(|rs| revision(rs));
            for rs in by_age {
                let spec = spec_replicas(rs);
                if spec == 0 {
                    continue;
                }
                let unhealthy = (spec - available_replicas(rs)).max(0).min(cleanup);
                cleanup -= unhealthy;
                let healthy_down = (spec - unhealthy).min((available - min_available).max(0));
                available -= healthy_down;
                let to = spec - unhealthy - healthy_down;
                scale(reg, d, rs, to, replicas, surge)?;
            }
        }
        // Revision history: old, empty sets beyond the limit go.
        let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
        let mut empty: Vec<&&ReplicaSet> =
            old.iter().filter(|rs| spec_replicas(rs) == 0 && status_replicas(rs) == 0).collect();
        if empty.len() > limit {
            empty.sort_by_key(|rs| revision(rs));
            for rs in &empty[..empty.len() - limit] {
                let _ = reg.delete(rt(ReplicaSet::KIND), ns, name(&rs.metadata), &DeleteOptions::default());
            }
        }
    }
    let msg = format!("ReplicaSet \"{}\" is progressing.", name(&new_rs.metadata));
    update_status(reg, d, &owned, Some(new_rs), ("True", "ReplicaSetUpdated", &msg))
}

fn update_status(
    reg: &Registry,
    d: &Deployment,
    owned: &[&ReplicaSet],
    new_rs: Option<&ReplicaSet>,
    progressing: (&str, &str, &str),
) -> Result<(), ApiError> {
    let spec = d.spec.as_ref();
    let replicas = spec.and_then(|s| s.replicas).map_or(0, i64::from);
    let sum = |f: fn(&ReplicaSet) -> i64| owned.iter().map(|rs| f(rs)).sum::<i64>();
    let updated = new_rs.map_or(0, status_replicas);
    let (total, ready, available) = (sum(status_replicas), sum(|rs| status_counts(rs).1), sum(available_replicas));
    let unavailable = (sum(spec_replicas).max(replicas) - available).max(0);
    let max_unavailable = match spec {
        Some(s) if !is_recreate(s) => resolve(rolling(s).1, replicas, false),
        _ => 0,
    };
    let old_status = d.status.clone().unwrap_or_default();
    let mut conds = old_status.conditions.clone().unwrap_or_default();
    if available >= replicas - max_unavailable {
        let msg = "Deployment has minimum availability.";
        set_condition(&mut conds, "Available", "True", "MinimumReplicasAvailable", msg, true);
    } else {
        let msg = "Deployment does not have minimum availability.";
        set_condition(&mut conds, "Available", "False", "MinimumReplicasUnavailable", msg, true);
    }
    let complete = updated == replicas && total == replicas && available == replicas && new_rs.is_some();
    let rs_name = new_rs.map(|rs| name(&rs.metadata)).unwrap_or_default();
    let was = |v: Option<i32>| v.map_or(0, i64::from);
    let progress = [
        (was(old_status.replicas), total),
        (was(old_status.updated_replicas), updated),
        (was(old_status.ready_replicas), ready),
        (was(old_status.available_replicas), available),
    ]
    .iter()
    .any(|(old, new)| old != new);
    let prev = conds.iter().find(|c| c.type_ == "Progressing").cloned();
    let deadline = spec.and_then(|s| s.progress_deadline_seconds).map_or(600, i64::from);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let stale =
        prev.as_ref().and_then(|c| c.last_update_time.as_ref()).is_some_and(|t| now - t.0.as_second() > deadline);
    if complete {
        let msg = format!("ReplicaSet \"{rs_name}\" has successfully progressed.");
        set_condition(&mut conds, "Progressing", "True", "NewReplicaSetAvailable", &msg, true);
    } else if prev.as_ref().is_some_and(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded")) && !progress {
        // The deadline stays exceeded until the rollout moves again.
    } else if stale && !progress && progressing.1 == "ReplicaSetUpdated" {
        let msg = format!("ReplicaSet \"{rs_name}\" has timed out progressing.");
        set_condition(&mut conds, "Progressing", "False", "ProgressDeadlineExceeded", &msg, true);
    } else {
        set_condition(&mut conds, "Progressing", progressing.0, progressing.1, progressing.2, true);
        if progress {
            let t = time_now();
            for c in conds.iter_mut().filter(|c| c.type_ == "Progressing") {
                c.last_update_time = Some(t.clone());
            }
        }
    }
    let status = DeploymentStatus {
        observed_generation: d.metadata.generation.filter(|g| *g != 0),
        replicas: nonzero(total),
        updated_replicas: nonzero(updated),
        ready_replicas: nonzero(ready),
        available_replicas: nonzero(available),
        unavailable_replicas: nonzero(unavailable),
        conditions: Some(conds),
        ..Default::default()
    };
    write_status(reg, d, d.status.as_ref(), status, |o: &mut Deployment| &mut o.status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn surge_and_unavailable_round_like_upstream() {
        let pct = IntOrString::String("25%".into());
        assert_eq!(resolve(Some(&pct), 3, true), 1);
        assert_eq!(resolve(Some(&pct), 3, false), 0);
        assert_eq!(resolve(Some(&IntOrString::Int(2)), 3, false), 2);
        assert_eq!(resolve(None, 3, false), 0);
        let template = |c: &str| -> PodTemplateSpec {
            serde_json::from_value(json!({"spec": {"containers": [{"name": c}]}})).unwrap()
        };
        let h = template_hash(&template("a"));
        assert!(h.len() >= 8 && h.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(h, template_hash(&template("b")));
    }

    #[test]
    fn the_template_hash_is_the_one_of_the_stored_json() {
        // Existing ReplicaSets are named by the hash of the template as
        // stored; typing the controller must not rename them.
        let stored = json!({"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "busybox", "ports": [{"containerPort": 80}]}]}});
        let typed: PodTemplateSpec = serde_json::from_value(stored.clone()).unwrap();
        let mut h: u32 = 0x811c_9dc5;
        for b in serde_json::to_string(&stored).unwrap().bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        let digits: String = h.to_string();
        assert_eq!(template_hash(&typed).len(), digits.len());
        let alphabet = b"bcdfghjklmnpqrstvwxz2456789";
        let expect: String = digits.bytes().map(|d| alphabet[(d - b'0') as usize] as char).collect();
        assert_eq!(template_hash(&typed), expect);
    }
}

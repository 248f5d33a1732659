//! StatefulSet: pods with stable names `<set>-<ordinal>` (hostname and
//! subdomain set), one claim per replica and volumeClaimTemplate
//! (`<template>-<set>-<ordinal>`, kept on scale-down unless the retention
//! policy says Delete), OrderedReady (one pod at a time, each waiting for
//! its predecessors to be Running and Ready; scale-down from the highest
//! ordinal) or Parallel management, RollingUpdate (highest ordinal first,
//! down to `partition`) or OnDelete. Each template is a ControllerRevision
//! (`<set>-<hash>`, data `{"spec":{"template":…,"$patch":"replace"}}`, as
//! upstream, so `kubectl rollout history/undo sts` work); pods carry the
//! revision in `controller-revision-hash`.

use std::collections::BTreeMap;

use k8s_openapi::Resource;
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetSpec, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use serde::Deserialize as _;
use serde_json::json;

use crate::deployment::template_hash;
use crate::replicaset::{labels, nonzero, pod_available};
use crate::{
    controller_ref, create_typed, event, is_deleting, list_typed, modify_typed, name, owned_by, phase, pod_ready,
    reference, rt, uid, write_status,
};
use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::{DeleteOptions, Part, Registry};

pub const REVISION_LABEL: &str = "controller-revision-hash";
const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
const COMPONENT: &str = "statefulset-controller";

/// What one pass reads once for every set.
struct World {
    pods: Vec<Pod>,
    revisions: Vec<ControllerRevision>,
    claims: Vec<PersistentVolumeClaim>,
}

pub fn reconcile(reg: &Registry) -> Result<(), ApiError> {
    let world = World { pods: list_typed(reg)?, revisions: list_typed(reg)?, claims: list_typed(reg)? };
    for set in list_typed::<StatefulSet>(reg)? {
        if is_deleting(&set.metadata) {
            continue;
        }
        if let Err(e) = sync(reg, &set, &world)
            && e.code != 409
            && e.code != 404
        {
            tracing::warn!(statefulset = name(&set.metadata), "{e}");
        }
    }
    Ok(())
}

/// The ordinal of a pod of `set` named `<set>-<n>`.
fn ordinal(set: &str, pod: &str) -> Option<i64> {
    pod.strip_prefix(set)?
        .strip_prefix('-')?
        .parse()
        .ok()
        .filter(|n: &i64| n.to_string().len() == pod.len() - set.len() - 1)
}

fn running_and_ready(p: &Pod) -> bool {
    phase(p) == "Running" && pod_ready(p)
}

fn revision_of(p: &Pod) -> Option<&str> {
    labels(&p.metadata).get(REVISION_LABEL).map(String::as_str)
}

/// A revision's data: the template, to be applied as a replacing patch.
fn revision_data(template: &PodTemplateSpec) -> serde_json::Value {
    let mut t = serde_json::to_value(template).unwrap_or_default();
    t["$patch"] = "replace".into();
    json!({"spec": {"template": t}})
}

/// A revision's data as [`revision_data`] writes it: the typed template
/// (its `$patch` directive is no field of the type and is left out).
#[derive(serde::Deserialize)]
struct RevisionData {
    spec: RevisionSpec,
}

#[derive(serde::Deserialize)]
struct RevisionSpec {
    template: PodTemplateSpec,
}

fn template_of(rev: &ControllerRevision) -> Option<PodTemplateSpec> {
    RevisionData::deserialize(&rev.data.as_ref()?.0).ok().map(|d| d.spec.template)
}

fn claim_name(template: &str, set: &str, ordinal: i64) -> String {
    format!("{template}-{set}-{ordinal}")
}

/// Makes sure a ControllerRevision holds `spec.template` and is the newest;
/// returns the owned revisions (refreshed) and the update revision's name.
fn update_revision(
    reg: &Registry,
    set: &StatefulSet,
    spec: &StatefulSetSpec,
    owned: Vec<ControllerRevision>,
) -> Result<(Vec<ControllerRevision>, String), ApiError> {
    let ns = set.metadata.namespace.as_deref();
    let rev_name = format!("{}-{}", name(&set.metadata), template_hash(&spec.template));
    let newest = owned.iter().map(|r| r.revision).max().unwrap_or(0);
    let mut owned = owned;
    match owned.iter_mut().find(|r| name(&r.metadata) == rev_name) {
        Some(r) if r.revision == newest => {}
        Some(r) => {
            // Rolled back to an old template: it becomes the newest revision.
            modify_typed(reg, ns, &rev_name, Part::Main, |o: &mut ControllerRevision| {
                o.revision = newest + 1;
                true
            })?;
            r.revision = newest + 1;
        }
        None => {
            let mut meta_labels = spec.template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
            meta_labels.insert(REVISION_LABEL.into(), template_hash(&spec.template));
            let rev = ControllerRevision {
                metadata: ObjectMeta {
                    name: Some(rev_name.clone()),
                    namespace: set.metadata.namespace.clone(),
                    labels: Some(meta_labels),
                    owner_references: Some(vec![controller_ref(set)]),
                    ..Default::default()
                },
                data: Some(RawExtension(revision_data(&spec.template))),
                revision: newest + 1,
            };
            let created = match create_typed(reg, ns, &rev) {
                Ok(c) => c,
                Err(e) if e.reason == "AlreadyExists" => {
                    return Err(ApiError::conflict(rt(ControllerRevision::KIND), &rev_name, "revision exists"));
                }
                Err(e) => return Err(e),
            };
            owned.push(created);
        }
    }
    Ok((owned, rev_name))
}

fn sync(reg: &Registry, set: &StatefulSet, world: &World) -> Result<(), ApiError> {
    let Some(spec) = set.spec.as_ref() else { return Ok(()) };
    let ns = set.metadata.namespace.as_deref();
    let set_name = name(&set.metadata);
    let set_uid = uid(&set.metadata);
    let mine = |m: &ObjectMeta| m.namespace.as_deref() == ns && owned_by(m, set_uid);
    let owned_revs: Vec<ControllerRevision> = world.revisions.iter().filter(|r| mine(&r.metadata)).cloned().collect();
    let (revisions, update_rev) = update_revision(reg, set, spec, owned_revs)?;
    let status = set.status.clone().unwrap_or_default();
    let current_rev = status.current_revision.clone().filter(|r| revisions.iter().any(|x| name(&x.metadata) == r));
    let current_rev = current_rev.unwrap_or_else(|| update_rev.clone());

    let start = spec.ordinals.as_ref().and_then(|o| o.start).map_or(0, i64::from);
    let replicas = spec.replicas.map_or(1, i64::from);
    let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
    let strategy = spec.update_strategy.as_ref();
    let rolling = strategy.and_then(|s| s.type_.as_deref()).unwrap_or("RollingUpdate") == "RollingUpdate";
    let partition = strategy.and_then(|s| s.rolling_update.as_ref()).and_then(|r| r.partition).map_or(0, i64::from);
    let mut pods: BTreeMap<i64, &Pod> = BTreeMap::new();
    for p in world.pods.iter().filter(|p| mine(&p.metadata)) {
        if let Some(o) = ordinal(set_name, name(&p.metadata)) {
            pods.insert(o, p);
        }
    }
    let wanted = start..start + replicas;

    // Replicas in order: replace finished pods, create missing ones.
    for o in wanted.clone() {
        match pods.get(&o) {
            Some(p) if is_deleting(&p.metadata) => {
                if !parallel {
                    return write(reg, set, &pods, &current_rev, &update_rev);
                }
            }
            Some(p) if matches!(phase(p), "Failed" | "Succeeded") => {
                delete_pod(reg, set, p)?;
                if !parallel {
                    return write(reg, set, &pods, &current_rev, &update_rev);
                }
            }
            Some(p) => {
                if !parallel && !running_and_ready(p) {
                    return write(reg, set, &pods, &current_rev, &update_rev);
                }
            }
            None => {
                let use_current = rolling && o < partition && current_rev != update_rev;
                let rev = if use_current { &current_rev } else { &update_rev };
                let template = revisions
                    .iter()
                    .find(|r| name(&r.metadata) == rev)
                    .and_then(template_of)
                    .unwrap_or_else(|| spec.template.clone());
                create_claims(reg, set, spec, o, &world.claims)?;
                let pod = new_pod(set, spec, &template, o, rev);
                match create_typed(reg, ns, &pod) {
                    Ok(_) => {
                        let m = format!("create Pod {} in StatefulSet {set_name} successful", name(&pod.metadata));
                        event(reg, &reference(set), "Normal", "SuccessfulCreate", &m, COMPONENT);
                    }
                    Err(e) if e.reason == "AlreadyExists" => {}
                    Err(e) => return Err(e),
                }
                if !parallel {
                    return write(reg, set, &pods, &current_rev, &update_rev);
                }
            }
        }
    }

    // Condemned pods (scale-down): from the highest ordinal.
    let condemned: Vec<&Pod> = pods.iter().rev().filter(|(o, _)| !wanted.contains(o)).map(|(_, p)| *p).collect();
    for p in &condemned {
        if is_deleting(&p.metadata) {
            if !parallel {
                return write(reg, set, &pods, &current_rev, &update_rev);
            }
            continue;
        }
        delete_pod(reg, set, p)?;
        if !parallel {
            return write(reg, set, &pods, &current_rev, &update_rev);
        }
    }
    let when_scaled = spec.persistent_volume_claim_retention_policy.as_ref().and_then(|p| p.when_scaled.as_deref());
    if when_scaled == Some("Delete") && condemned.is_empty() {
        delete_scaled_claims(reg, set, spec, &wanted, &world.claims)?;
    }

    // Rolling update: one pod at a time, highest ordinal first, once all are Ready.
    let all_ready =
        wanted.clone().all(|o| pods.get(&o).is_some_and(|p| running_and_ready(p) && !is_deleting(&p.metadata)));
    if rolling && all_ready {
        for o in wanted.clone().rev().filter(|o| *o >= partition) {
            let p = pods[&o];
            if revision_of(p) != Some(update_rev.as_str()) {
                delete_pod(reg, set, p)?;
                break;
            }
        }
    }
    prune_history(reg, set, spec, &revisions, &pods, &current_rev, &update_rev)?;
    write(reg, set, &pods, &current_rev, &update_rev)
}

fn delete_pod(reg: &Registry, set: &StatefulSet, p: &Pod) -> Result<(), ApiError> {
    match reg.delete(rt(Pod::KIND), p.metadata.namespace.as_deref(), name(&p.metadata), &DeleteOptions::default()) {
        Err(e) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
        Ok(_) => {
            let m = format!("delete Pod {} in StatefulSet {} successful", name(&p.metadata), name(&set.metadata));
            event(reg, &reference(set), "Normal", "SuccessfulDelete", &m, COMPONENT);
            Ok(())
        }
    }
}

/// The claims of ordinal `o`, created where missing.
fn create_claims(
    reg: &Registry,
    set: &StatefulSet,
    spec: &StatefulSetSpec,
    o: i64,
    existing: &[PersistentVolumeClaim],
) -> Result<(), ApiError> {
    let ns = set.metadata.namespace.as_deref();
    let set_name = name(&set.metadata);
    let when_deleted = spec.persistent_volume_claim_retention_policy.as_ref().and_then(|p| p.when_deleted.as_deref());
    for t in spec.volume_claim_templates.iter().flatten() {
        let claim = claim_name(name(&t.metadata), set_name, o);
        if existing.iter().any(|c| c.metadata.namespace.as_deref() == ns && name(&c.metadata) == claim) {
            continue;
        }
        let mut c = t.clone();
        c.status = None;
        c.metadata.name = Some(claim.clone());
        c.metadata.namespace = set.metadata.namespace.clone();
        let l = c.metadata.labels.get_or_insert_default();
        l.extend(spec.selector.match_labels.clone().unwrap_or_default());
        if when_deleted == Some("Delete") {
            // The garbage collector takes it with the set.
            c.metadata.owner_references = Some(vec![OwnerReference { controller: Some(false), ..controller_ref(set) }]);
        }
        match create_typed(reg, ns, &c) {
            Ok(_) => {
                let m = format!("create Claim {claim} Pod {set_name}-{o} in StatefulSet {set_name} success");
                event(reg, &reference(set), "Normal", "SuccessfulCreate", &m, COMPONENT);
            }
            Err(e) if e.reason == "AlreadyExists" => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `whenScaled: Delete`: the claims of ordinals scaled away go once their pods are gone.
fn delete_scaled_claims(
    reg: &Registry,
    set: &StatefulSet,
    spec: &StatefulSetSpec,
    wanted: &std::ops::Range<i64>,
    claims: &[PersistentVolumeClaim],
) -> Result<(), ApiError> {
    let ns = set.metadata.namespace.as_deref();
    let set_name = name(&set.metadata);
    for t in spec.volume_claim_templates.iter().flatten() {
        let prefix = format!("{}-", name(&t.metadata));
        for c in claims.iter().filter(|c| c.metadata.namespace.as_deref() == ns && !is_deleting(&c.metadata)) {
            let Some(o) = name(&c.metadata).strip_prefix(&prefix).and_then(|rest| ordinal(set_name, rest)) else {
                continue;
            };
            if !wanted.contains(&o) {
                match reg.delete(rt(PersistentVolumeClaim::KIND), ns, name(&c.metadata), &DeleteOptions::default()) {
                    Err(e) if e.code != 404 => return Err(e),
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

fn new_pod(set: &StatefulSet, spec: &StatefulSetSpec, template: &PodTemplateSpec, o: i64, rev: &str) -> Pod {
    let set_name = name(&set.metadata);
    let pod_name = format!("{set_name}-{o}");
    let mut meta = template.metadata.clone().unwrap_or_default();
    meta.name = Some(pod_name.clone());
    meta.generate_name = None;
    meta.creation_timestamp = None;
    meta.namespace = set.metadata.namespace.clone();
    meta.owner_references = Some(vec![controller_ref(set)]);
    let l = meta.labels.get_or_insert_default();
    l.insert(POD_NAME_LABEL.into(), pod_name.clone());
    l.insert(POD_INDEX_LABEL.into(), o.to_string());
    l.insert(REVISION_LABEL.into(), rev.to_string());
    let mut pod_spec = template.spec.clone().unwrap_or_default();
    pod_spec.hostname = Some(pod_name);
    if !spec.service_name.as_deref().unwrap_or_default().is_empty() {
        pod_spec.subdomain = spec.service_name.clone();
    }
    let volumes = pod_spec.volumes.get_or_insert_default();
    for t in spec.volume_claim_templates.iter().flatten() {
        let tname = name(&t.metadata).to_string();
        volumes.retain(|v| v.name != tname);
        volumes.push(Volume {
            name: tname.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(&tname, set_name, o),
                read_only: None,
            }),
            ..Default::default()
        });
    }
    Pod { metadata: meta, spec: Some(pod_spec), status: None }
}

/// Old revisions beyond `revisionHistoryLimit` go, never one a pod uses.
fn prune_history(
    reg: &Registry,
    set: &StatefulSet,
    spec: &StatefulSetSpec,
    revisions: &[ControllerRevision],
    pods: &BTreeMap<i64, &Pod>,
    current: &str,
    update: &str,
) -> Result<(), ApiError> {
    let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
    let live = |r: &ControllerRevision| {
        let n = name(&r.metadata);
        n == current || n == update || pods.values().any(|p| revision_of(p) == Some(n))
    };
    let mut old: Vec<&ControllerRevision> = revisions.iter().filter(|r| !live(r)).collect();
    if old.len() <= limit {
        return Ok(());
    }
    old.sort_by_key(|r| r.revision);
    for r in &old[..old.len() - limit] {
        let rt = rt(ControllerRevision::KIND);
        match reg.delete(rt, set.metadata.namespace.as_deref(), name(&r.metadata), &DeleteOptions::default()) {
            Err(e) if e.code != 404 => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// The status `kubectl rollout status sts` reads.
fn write(
    reg: &Registry,
    set: &StatefulSet,
    pods: &BTreeMap<i64, &Pod>,
    current: &str,
    update: &str,
) -> Result<(), ApiError> {
    let spec = set.spec.as_ref();
    let replicas = spec.and_then(|s| s.replicas).map_or(1, i64::from);
    let min_ready = spec.and_then(|s| s.min_ready_seconds).map_or(0, i64::from);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let live: Vec<&&Pod> = pods.values().filter(|p| !is_deleting(&p.metadata)).collect();
    let count = |f: &dyn Fn(&Pod) -> bool| live.iter().filter(|p| f(p)).count() as i64;
    let ready = count(&running_and_ready);
    let updated = count(&|p| revision_of(p) == Some(update));
    let mut current_rev = current.to_string();
    let mut current_count = count(&|p| revision_of(p) == Some(current));
    let rolling = spec
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate");
    // A rolling update is complete when every replica runs the update revision.
    if rolling && updated == replicas && ready == replicas && live.len() as i64 == replicas {
        current_rev = update.to_string();
        current_count = updated;
    }
    let status = StatefulSetStatus {
        observed_generation: set.metadata.generation,
        replicas: live.len() as i32,
        ready_replicas: nonzero(ready),
        available_replicas: Some(count(&|p| running_and_ready(p) && pod_available(p, min_ready, now)) as i32),
        current_replicas: nonzero(current_count),
        updated_replicas: nonzero(updated),
        current_revision: Some(current_rev),
        update_revision: Some(update.to_string()),
        collision_count: Some(0),
        conditions: None,
    };
    write_status(reg, set, set.status.as_ref(), status, |o: &mut StatefulSet| &mut o.status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_registry as registry;
    use orchestrator_apimachinery::registry::WriteOptions;

    fn create(reg: &Registry, extra: serde_json::Value) {
        let mut o = json!({"metadata": {"name": "db"}, "spec": {"replicas": 3, "serviceName": "db",
            "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}}}}]}});
        o["spec"].as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        reg.create(rt(StatefulSet::KIND), Some("default"), o, &WriteOptions::default()).unwrap();
    }

    fn pods(reg: &Registry) -> Vec<Pod> {
        let mut ps: Vec<Pod> = list_typed(reg).unwrap();
        ps.retain(|p| !is_deleting(&p.metadata));
        ps.sort_by_key(|p| name(&p.metadata).to_string());
        ps
    }

    fn names(reg: &Registry) -> Vec<String> {
        pods(reg).iter().map(|p| name(&p.metadata).to_string()).collect()
    }

    /// What the scheduler and kubelet would do: every pod bound, Running and Ready.
    fn make_ready(reg: &Registry) {
        for p in pods(reg) {
            if p.spec.as_ref().unwrap().node_name.is_none() {
                let binding = serde_json::json!({"target": {"kind": "Node", "name": "n1"}});
                orchestrator_apimachinery::patch::bind(reg, Some("default"), name(&p.metadata), &binding).unwrap();
            }
            modify_typed(reg, Some("default"), name(&p.metadata), Part::Status, |p: &mut Pod| {
                let s = p.status.get_or_insert_default();
                s.phase = Some("Running".into());
                s.conditions = Some(vec![k8s_openapi::api::core::v1::PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]);
                true
            })
            .unwrap();
        }
    }

    /// Deletions finish at once (no kubelet to wait for).
    fn finish_deletes(reg: &Registry) {
        let all: Vec<Pod> = list_typed(reg).unwrap();
        for p in all.iter().filter(|p| is_deleting(&p.metadata)) {
            let opts = DeleteOptions { grace_period: Some(0), ..Default::default() };
            let _ = reg.delete(rt(Pod::KIND), Some("default"), name(&p.metadata), &opts);
        }
    }

    /// Enough passes, with pods Ready and deletions done, for a rollout to finish.
    fn settle(reg: &Registry) {
        for _ in 0..6 {
            reconcile(reg).unwrap();
            finish_deletes(reg);
            reconcile(reg).unwrap();
            make_ready(reg);
        }
    }

    fn get(reg: &Registry) -> StatefulSet {
        orchestrator_apimachinery::typed::decode(reg.get(rt(StatefulSet::KIND), Some("default"), "db").unwrap(), "sts")
            .unwrap()
    }

    #[test]
    fn ordered_ready_creates_one_at_a_time_with_stable_names_and_claims() {
        let d = tempfile::tempdir().unwrap();
        let reg = registry(&d);
        create(&reg, json!({}));
        reconcile(&reg).unwrap();
        reconcile(&reg).unwrap();
        assert_eq!(names(&reg), ["db-0"], "db-1 waits for db-0 to be Ready");
        let p = &pods(&reg)[0];
        let spec = p.spec.as_ref().unwrap();
        assert_eq!((spec.hostname.as_deref(), spec.subdomain.as_deref()), (Some("db-0"), Some("db")));
        let l = labels(&p.metadata);
        assert_eq!(l[POD_NAME_LABEL], "db-0");
        assert_eq!(l[POD_INDEX_LABEL], "0");
        assert!(l[REVISION_LABEL].starts_with("db-"));
        let vol = &spec.volumes.as_ref().unwrap()[0];
        assert_eq!(vol.persistent_volume_claim.as_ref().unwrap().claim_name, "data-db-0");
        let claims: Vec<PersistentVolumeClaim> = list_typed(&reg).unwrap();
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].spec.as_ref().unwrap().storage_class_name.as_deref(), Some("local-path"));
        for _ in 0..3 {
            make_ready(&reg);
            reconcile(&reg).unwrap();
        }
        assert_eq!(names(&reg), ["db-0", "db-1", "db-2"]);
        make_ready(&reg);
        reconcile(&reg).unwrap();
        let st = get(&reg).status.unwrap();
        assert_eq!((st.replicas, st.ready_replicas, st.updated_replicas), (3, Some(3), Some(3)));
        assert_eq!(st.current_revision, st.update_revision);

        // Scale down: the highest ordinal first, one at a time; claims stay.
        modify_typed(&reg, Some("default"), "db", Part::Main, |s: &mut StatefulSet| {
            s.spec.as_mut().unwrap().replicas = Some(1);
            true
        })
        .unwrap();
        reconcile(&reg).unwrap();
        assert_eq!(names(&reg), ["db-0", "db-1"], "db-2 goes first");
        reconcile(&reg).unwrap();
        assert_eq!(names(&reg), ["db-0", "db-1"], "db-1 waits for db-2 to be gone");
        finish_deletes(&reg);
        reconcile(&reg).unwrap();
        finish_deletes(&reg);
        assert_eq!(names(&reg), ["db-0"]);
        assert_eq!(list_typed::<PersistentVolumeClaim>(&reg).unwrap().len(), 3, "claims are retained");
    }

    #[test]
    fn parallel_partitioned_update_and_rollback_revisions() {
        let d = tempfile::tempdir().unwrap();
        let reg = registry(&d);
        create(
            &reg,
            json!({"podManagementPolicy": "Parallel", "updateStrategy": {"type": "RollingUpdate",
            "rollingUpdate": {"partition": 1}}}),
        );
        reconcile(&reg).unwrap();
        assert_eq!(names(&reg), ["db-0", "db-1", "db-2"], "Parallel starts every pod at once");
        make_ready(&reg);
        reconcile(&reg).unwrap();
        let first = get(&reg).status.unwrap().update_revision.unwrap();
        modify_typed(&reg, Some("default"), "db", Part::Main, |s: &mut StatefulSet| {
            s.spec.as_mut().unwrap().template.spec.as_mut().unwrap().containers[0].image = Some("busybox:2".into());
            true
        })
        .unwrap();
        settle(&reg);
        let image = |p: &Pod| p.spec.as_ref().unwrap().containers[0].image.clone().unwrap();
        let images: Vec<String> = pods(&reg).iter().map(image).collect();
        assert_eq!(images, ["busybox:1", "busybox:2", "busybox:2"], "ordinals below the partition keep the old one");
        let st = get(&reg).status.unwrap();
        assert_eq!(st.current_revision.as_deref(), Some(first.as_str()));
        assert_eq!(st.updated_replicas, Some(2));
        let revs: Vec<ControllerRevision> = list_typed(&reg).unwrap();
        assert_eq!(revs.len(), 2);
        let second = revs.iter().find(|r| name(&r.metadata) != first).unwrap();
        assert_eq!(second.revision, 2);
        assert_eq!(second.data.as_ref().unwrap().0["spec"]["template"]["$patch"], "replace");

        // Back to the first template (what `rollout undo` patches in): the old revision is renumbered.
        modify_typed(&reg, Some("default"), "db", Part::Main, |s: &mut StatefulSet| {
            let spec = s.spec.as_mut().unwrap();
            spec.template.spec.as_mut().unwrap().containers[0].image = Some("busybox:1".into());
            spec.update_strategy.as_mut().unwrap().rolling_update = None;
            true
        })
        .unwrap();
        settle(&reg);
        let images: Vec<String> = pods(&reg).iter().map(image).collect();
        assert_eq!(images, ["busybox:1", "busybox:1", "busybox:1"]);
        let revs: Vec<ControllerRevision> = list_typed(&reg).unwrap();
        assert_eq!(revs.iter().find(|r| name(&r.metadata) == first).unwrap().revision, 3);
        let st = get(&reg).status.unwrap();
        assert_eq!(
            (st.current_revision.as_deref(), st.update_revision.as_deref()),
            (Some(first.as_str()), Some(first.as_str()))
        );
    }
}

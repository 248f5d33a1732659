//! ReplicaSet: keeps `spec.replicas` active pods from the template, owned by
//! the set, and reports replicas / ready / available in its status.
//! `keep_replicas` is that logic over either replica kind; the
//! ReplicationController controller calls it too.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{Metadata, Resource};

use crate::{
    controller_ref, create_typed, is_deleting, list_typed, name, node_name, owned_by, pod_active, pod_ready,
    ready_condition, rt, selector_of, uid, write_status,
};
use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::{DeleteOptions, Registry};
use orchestrator_apimachinery::selector::LabelSelector;

/// A pod from a template, owned by `owner`.
pub(crate) fn pod_from_template<K: Resource + Metadata<Ty = ObjectMeta>>(
    owner: &K,
    template: Option<&PodTemplateSpec>,
) -> Pod {
    let mut meta = template.and_then(|t| t.metadata.clone()).unwrap_or_default();
    meta.generate_name = Some(format!("{}-", name(owner.metadata())));
    meta.namespace = owner.metadata().namespace.clone();
    meta.owner_references = Some(vec![controller_ref(owner)]);
    meta.name = None;
    meta.creation_timestamp = None;
    Pod { metadata: meta, spec: template.and_then(|t| t.spec.clone()), status: None }
}

/// The labels of an object (none: an empty map).
pub(crate) fn labels(m: &ObjectMeta) -> &BTreeMap<String, String> {
    static NONE: BTreeMap<String, String> = BTreeMap::new();
    m.labels.as_ref().unwrap_or(&NONE)
}

/// A count for a status field that is left out when zero.
pub(crate) fn nonzero(n: i64) -> Option<i32> {
    (n != 0).then_some(n as i32)
}

/// Ready for at least `min_ready` seconds.
pub(crate) fn pod_available(p: &Pod, min_ready: i64, now: i64) -> bool {
    if !pod_ready(p) {
        return false;
    }
    if min_ready == 0 {
        return true;
    }
    let since = ready_condition(p).and_then(|c| c.last_transition_time.as_ref()).map_or(now, |t| t.0.as_second());
    now - since >= min_ready
}

/// Which pods to remove first: unscheduled, then not ready, then newest.
fn deletion_rank(p: &Pod) -> (bool, bool, std::cmp::Reverse<i64>) {
    let scheduled = node_name(p).is_some_and(|n| !n.is_empty());
    let created = p.metadata.creation_timestamp.as_ref().map_or(0, |t| t.0.as_second());
    (scheduled, pod_ready(p), std::cmp::Reverse(created))
}

/// What a replica controller (ReplicaSet, ReplicationController) has
/// found of its pods, for its status.
pub(crate) struct Replicas {
    pub replicas: i32,
    pub fully_labeled: Option<i32>,
    pub ready: Option<i32>,
    pub available: Option<i32>,
}

/// What one replica controller asks for: `replicas` pods from `template`
/// that `selector` matches, available after `min_ready` seconds.
pub(crate) struct ReplicaSpec<'a> {
    pub selector: LabelSelector,
    pub replicas: i64,
    pub template: Option<&'a PodTemplateSpec>,
    pub min_ready: i64,
}

/// The shared logic of both replica controllers over `owner` (either
/// kind): creates or deletes pods towards the wanted count (none while
/// the owner is being deleted) and counts what its status reports.
pub(crate) fn keep_replicas<K: Resource + Metadata<Ty = ObjectMeta>>(
    reg: &Registry,
    pods: &[Pod],
    owner: &K,
    spec: &ReplicaSpec<'_>,
    now: i64,
) -> Result<Replicas, ApiError> {
    let meta = owner.metadata();
    let ns = meta.namespace.as_deref();
    let owned: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.metadata.namespace.as_deref() == ns && owned_by(&p.metadata, uid(meta)))
        .filter(|p| spec.selector.matches(labels(&p.metadata)))
        .collect();
    let active: Vec<&Pod> = owned.iter().copied().filter(|p| pod_active(p)).collect();
    if !is_deleting(meta) {
        let diff = spec.replicas - active.len() as i64;
        if diff > 0 {
            for _ in 0..diff.min(100) {
                create_typed(reg, ns, &pod_from_template(owner, spec.template))?;
            }
        } else if diff < 0 {
            let mut victims = active.clone();
            victims.sort_by_key(|p| deletion_rank(p));
            for p in victims.into_iter().take((-diff) as usize) {
                match reg.delete(rt(Pod::KIND), ns, name(&p.metadata), &DeleteOptions::default()) {
                    Err(e) if e.code == 404 => {}
                    r => {
                        r?;
                    }
                }
            }
        }
    }
    let template_labels = spec.template.and_then(|t| t.metadata.as_ref()).and_then(|m| m.labels.as_ref());
    let labels_match = active
        .iter()
        .filter(|p| template_labels.is_none_or(|l| l.iter().all(|(k, v)| labels(&p.metadata).get(k) == Some(v))));
    let count = |f: &dyn Fn(&Pod) -> bool| nonzero(active.iter().filter(|p| f(p)).count() as i64);
    Ok(Replicas {
        replicas: active.len() as i32,
        fully_labeled: nonzero(labels_match.count() as i64),
        ready: count(&pod_ready),
        available: count(&|p| pod_available(p, spec.min_ready, now)),
    })
}

pub fn reconcile(reg: &Registry) -> Result<(), ApiError> {
    let pods: Vec<Pod> = list_typed(reg)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for rs in list_typed::<ReplicaSet>(reg)? {
        let spec = rs.spec.as_ref();
        let want = ReplicaSpec {
            selector: selector_of(spec.map(|s| &s.selector)),
            replicas: spec.and_then(|s| s.replicas).map_or(0, i64::from),
            template: spec.and_then(|s| s.template.as_ref()),
            min_ready: spec.and_then(|s| s.min_ready_seconds).map_or(0, i64::from),
        };
        let got = keep_replicas(reg, &pods, &rs, &want, now)?;
        let status = ReplicaSetStatus {
            replicas: got.replicas,
            fully_labeled_replicas: got.fully_labeled,
            ready_replicas: got.ready,
            available_replicas: got.available,
            observed_generation: rs.metadata.generation.filter(|g| *g != 0),
            ..Default::default()
        };
        write_status(reg, &rs, rs.status.as_ref(), status, |o: &mut ReplicaSet| &mut o.status)?;
    }
    Ok(())
}

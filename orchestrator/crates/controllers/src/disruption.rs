//! The disruption controller (upstream's `pkg/controller/disruption`):
//! keeps each PodDisruptionBudget's status — the pods it expects, how many
//! must stay healthy, how many are, how many may go (`disruptionsAllowed`,
//! which eviction takes from) and the `DisruptionAllowed` condition — and
//! forgets the evictions recorded in `disruptedPods` once their pods are
//! going or after two minutes.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::{is_deleting, list_typed, name, pod_ready, rt, selector_of, time_now, write_status_as_read};
use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::policy::IntOrPercent;
use orchestrator_apimachinery::registry::Registry;
use orchestrator_apimachinery::typed;

/// Upstream's `DeletionTimeout`: an eviction not followed by a deletion is forgotten.
const DELETION_TIMEOUT_SECONDS: i64 = 120;

/// What the budget's numbers are computed from.
struct Workloads {
    pods: Vec<Pod>,
    replica_sets: Vec<ReplicaSet>,
    deployments: Vec<Deployment>,
    stateful_sets: Vec<StatefulSet>,
}

fn int_or_percent(v: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString) -> Result<IntOrPercent, String> {
    IntOrPercent::parse(&serde_json::to_value(v).unwrap_or_default())
}

/// The replicas that the controllers of `pods` want, each controller
/// counted once (upstream's `getExpectedScale`).
fn expected_scale(w: &Workloads, ns: &str, pods: &[&Pod]) -> Result<i64, String> {
    let mut seen = BTreeSet::new();
    let mut total = 0i64;
    for p in pods {
        let owner = p.metadata.owner_references.iter().flatten().find(|r| r.controller == Some(true));
        let Some(owner) = owner else {
            return Err(format!("found no controller ref for pod {:?}", name(&p.metadata)));
        };
        let in_ns = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            m.namespace.as_deref() == Some(ns) && m.uid.as_deref() == Some(owner.uid.as_str())
        };
        let (uid, replicas) = match owner.kind.as_str() {
            "ReplicaSet" => {
                let rs = w.replica_sets.iter().find(|r| in_ns(&r.metadata)).ok_or("the pod's ReplicaSet is gone")?;
                let deploy = rs
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .find(|r| r.controller == Some(true) && r.kind == "Deployment");
                match deploy
                    .and_then(|d| w.deployments.iter().find(|x| x.metadata.uid.as_deref() == Some(d.uid.as_str())))
                {
                    Some(d) => (d.metadata.uid.clone(), d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)),
                    None => (rs.metadata.uid.clone(), rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)),
                }
            }
            "StatefulSet" => {
                let s = w.stateful_sets.iter().find(|s| in_ns(&s.metadata)).ok_or("the pod's StatefulSet is gone")?;
                (s.metadata.uid.clone(), s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1))
            }
            kind => return Err(format!("found no controllers for pod {:?} ({kind} has no scale)", name(&p.metadata))),
        };
        if seen.insert(uid) {
            total += i64::from(replicas);
        }
    }
    Ok(total)
}

/// Upstream's `getExpectedPodCount`: (expected pods, desired healthy).
pub(crate) fn expected_and_desired(
    min_available: Option<IntOrPercent>,
    max_unavailable: Option<IntOrPercent>,
    matched: i64,
    scale: impl FnOnce() -> Result<i64, String>,
) -> Result<(i64, i64), String> {
    match (min_available, max_unavailable) {
        (_, Some(max)) => {
            let expected = scale()?;
            Ok((expected, (expected - max.scaled(expected, true)).max(0)))
        }
        (Some(IntOrPercent::Int(min)), None) => Ok((matched, min)),
        (Some(pct), None) => {
            let expected = scale()?;
            Ok((expected, pct.scaled(expected, true)))
        }
        (None, None) => Ok((matched, 0)),
    }
}

fn seconds(t: &Time) -> i64 {
    t.0.as_second()
}

fn condition(old: &[Condition], allowed: bool, reason: &str, message: &str, generation: i64) -> Condition {
    let status = if allowed { "True" } else { "False" };
    let kept = old.iter().find(|c| c.type_ == "DisruptionAllowed" && c.status == status);
    Condition {
        type_: "DisruptionAllowed".into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: Some(generation),
        last_transition_time: kept.map_or_else(time_now, |c| c.last_transition_time.clone()),
    }
}

/// The status a budget should have now (`now` in Unix seconds).
fn status_of(pdb: &PodDisruptionBudget, w: &Workloads, now: i64) -> PodDisruptionBudgetStatus {
    let ns = pdb.metadata.namespace.as_deref().unwrap_or_default();
    let generation = pdb.metadata.generation.unwrap_or(0);
    let old = pdb.status.clone().unwrap_or_default();
    let old_conditions = old.conditions.clone().unwrap_or_default();
    let spec = pdb.spec.clone().unwrap_or_default();
    let pods: Vec<&Pod> = match &spec.selector {
        None => Vec::new(),
        Some(sel) => {
            let sel = selector_of(Some(sel));
            w.pods
                .iter()
                .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
                .filter(|p| sel.matches(p.metadata.labels.as_ref().unwrap_or(&BTreeMap::new())))
                .collect()
        }
    };
    let parsed = (
        spec.min_available.as_ref().map(int_or_percent).transpose(),
        spec.max_unavailable.as_ref().map(int_or_percent).transpose(),
    );
    let computed = match parsed {
        (Ok(min), Ok(max)) => expected_and_desired(min, max, pods.len() as i64, || expected_scale(w, ns, &pods)),
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    let (expected, desired) = match computed {
        Ok(v) => v,
        Err(e) => {
            // Upstream's fail-safe: nothing may be disrupted while the budget cannot be computed.
            return PodDisruptionBudgetStatus {
                disruptions_allowed: 0,
                conditions: Some(vec![condition(&old_conditions, false, "SyncFailed", &e, generation)]),
                observed_generation: Some(generation),
                ..old
            };
        }
    };
    // Evictions the pods have not followed yet still count as disruptions.
    let disrupted: BTreeMap<String, Time> = old
        .disrupted_pods
        .unwrap_or_default()
        .into_iter()
        .filter(|(p, at)| {
            pods.iter().any(|x| name(&x.metadata) == p && !is_deleting(&x.metadata))
                && seconds(at) + DELETION_TIMEOUT_SECONDS > now
        })
        .collect();
    let healthy = pods
        .iter()
        .filter(|p| !is_deleting(&p.metadata) && !disrupted.contains_key(name(&p.metadata)) && pod_ready(p))
        .count() as i64;
    let allowed = if expected <= 0 { 0 } else { (healthy - desired).max(0) };
    let reason = if allowed > 0 { "SufficientPods" } else { "InsufficientPods" };
    PodDisruptionBudgetStatus {
        current_healthy: healthy as i32,
        desired_healthy: desired as i32,
        expected_pods: expected as i32,
        disruptions_allowed: allowed as i32,
        disrupted_pods: (!disrupted.is_empty()).then_some(disrupted),
        observed_generation: Some(generation),
        conditions: Some(vec![condition(&old_conditions, allowed > 0, reason, "", generation)]),
    }
}

pub fn reconcile(reg: &Registry) -> Result<(), ApiError> {
    let budgets: Vec<PodDisruptionBudget> = list_typed(reg)?;
    if budgets.is_empty() {
        return Ok(());
    }
    let w = Workloads {
        pods: list_typed(reg)?,
        replica_sets: list_typed(reg)?,
        deployments: list_typed(reg)?,
        stateful_sets: list_typed(reg)?,
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for pdb in &budgets {
        let status = status_of(pdb, &w, now);
        if pdb.status.as_ref() == Some(&status) {
            continue;
        }
        // An eviction that took a disruption meanwhile makes this a conflict.
        let mut o = typed::encode(pdb, "PodDisruptionBudget")?;
        o["status"] = typed::encode(&status, "PodDisruptionBudget status")?;
        let m = &pdb.metadata;
        write_status_as_read(reg, rt("PodDisruptionBudget"), m.namespace.as_deref(), name(m), o)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use IntOrPercent::{Int, Percent};

    #[test]
    fn budgets_as_upstream_computes_them() {
        let scale = |n| move || Ok(n);
        // minAvailable: 2 of the 3 pods matched.
        assert_eq!(expected_and_desired(Some(Int(2)), None, 3, scale(5)), Ok((3, 2)));
        // minAvailable 50% of 3 replicas rounds up to 2.
        assert_eq!(expected_and_desired(Some(Percent(50)), None, 1, scale(3)), Ok((3, 2)));
        // maxUnavailable 1 of 3: 2 must stay.
        assert_eq!(expected_and_desired(None, Some(Int(1)), 3, scale(3)), Ok((3, 2)));
        // maxUnavailable 30% of 4 rounds up to 2 unavailable: 2 must stay.
        assert_eq!(expected_and_desired(None, Some(Percent(30)), 4, scale(4)), Ok((4, 2)));
        // More unavailable than expected: none need stay.
        assert_eq!(expected_and_desired(None, Some(Int(5)), 3, scale(3)), Ok((3, 0)));
        assert!(expected_and_desired(None, Some(Int(1)), 3, || Err("no controller".into())).is_err());
    }

    fn pod(name: &str, ready: bool, rs_uid: &str) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name, "namespace": "d", "labels": {"app": "web"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": rs_uid, "controller": true}]},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}}))
        .unwrap()
    }

    #[test]
    fn status_counts_ready_pods_and_recent_evictions() {
        let rs: ReplicaSet = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "web", "namespace": "d", "uid": "rs1"}, "spec": {"replicas": 3, "selector": {}}}),
        )
        .unwrap();
        let w = Workloads {
            pods: vec![pod("a", true, "rs1"), pod("b", true, "rs1"), pod("c", false, "rs1")],
            replica_sets: vec![rs],
            deployments: vec![],
            stateful_sets: vec![],
        };
        let now = 1_000_000;
        let mut pdb: PodDisruptionBudget = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "d", "generation": 1},
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "web"}}}}))
        .unwrap();
        let st = status_of(&pdb, &w, now);
        assert_eq!((st.expected_pods, st.desired_healthy, st.current_healthy, st.disruptions_allowed), (3, 2, 2, 0));
        assert_eq!(st.conditions.as_ref().unwrap()[0].reason, "InsufficientPods");
        // An eviction of `a` recorded a moment ago: `a` is not counted; an old one is forgotten.
        pdb.spec.as_mut().unwrap().max_unavailable = None;
        pdb.spec.as_mut().unwrap().min_available =
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1));
        let at = |s| Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap());
        pdb.status = Some(PodDisruptionBudgetStatus {
            disrupted_pods: Some(BTreeMap::from([("a".into(), at(now - 5)), ("b".into(), at(now - 500))])),
            ..Default::default()
        });
        let st = status_of(&pdb, &w, now);
        assert_eq!((st.expected_pods, st.desired_healthy, st.current_healthy, st.disruptions_allowed), (3, 1, 1, 0));
        assert_eq!(st.disrupted_pods.unwrap().keys().collect::<Vec<_>>(), ["a"]);
        // A pod without a controller fails a maxUnavailable budget safe.
        let lone: Pod = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "x", "namespace": "d", "labels": {"app": "web"}}}),
        )
        .unwrap();
        let w = Workloads { pods: vec![lone], replica_sets: vec![], deployments: vec![], stateful_sets: vec![] };
        pdb.spec.as_mut().unwrap().min_available = None;
        pdb.spec.as_mut().unwrap().max_unavailable =
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1));
        let st = status_of(&pdb, &w, now);
        assert_eq!(st.disruptions_allowed, 0);
        assert_eq!(st.conditions.unwrap()[0].reason, "SyncFailed");
    }
}

//! The `pods/eviction` subresource (upstream's `EvictionREST`): a pod is
//! deleted when the PodDisruptionBudget that selects it allows one more
//! disruption, which is taken from its `status.disruptionsAllowed` and
//! recorded in `status.disruptedPods` (so the disruption controller does not
//! count the pod as healthy while it goes); else 429 with the budget as the
//! cause. Pods already disrupted (Pending, finished, being deleted) and
//! pods no budget selects are deleted directly.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{StatusCause, StatusDetails, Time};
use serde_json::{Value, json};

use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::{DeleteOptions, Part, Registry, WriteOptions};
use orchestrator_apimachinery::resources::by_kind;
use orchestrator_apimachinery::selector::LabelSelector;
use orchestrator_apimachinery::typed;

/// Upstream's `MaxDisruptedPodSize`: evictions the controller has not yet seen.
const MAX_DISRUPTED: usize = 2000;
const VIOLATION: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

/// 429 TooManyRequests with the budget as the cause, as upstream words it.
fn too_many(cause: String) -> ApiError {
    ApiError {
        details: Some(Box::new(StatusDetails {
            causes: Some(vec![StatusCause {
                reason: Some("DisruptionBudget".into()),
                message: Some(cause),
                field: None,
            }]),
            ..Default::default()
        })),
        ..ApiError::new(429, "TooManyRequests", VIOLATION)
    }
}

fn forbidden(pdb: &str, why: &str) -> ApiError {
    ApiError::forbidden(format!("poddisruptionbudgets.policy \"{pdb}\" is forbidden: {why}"))
}

/// Checks an Eviction body (`policy/v1`, or `policy/v1beta1` as kubectl
/// ≤1.21 sends) against the pod named in the URL; returns its deleteOptions.
pub fn parse(name: &str, body: &Value) -> Result<Value, ApiError> {
    let api_version = body.get("apiVersion").and_then(Value::as_str).unwrap_or("policy/v1");
    let kind = body.get("kind").and_then(Value::as_str).unwrap_or("Eviction");
    if !matches!(api_version, "policy/v1" | "policy/v1beta1") || kind != "Eviction" {
        return Err(ApiError::bad_request(format!(
            "the body is a {api_version}, Kind={kind}, not a policy/v1 Eviction"
        )));
    }
    // The raw body, not decoded: k8s-openapi's Eviction is policy/v1 only, and v1beta1 is accepted here.
    if body.pointer("/metadata/name").and_then(Value::as_str).is_some_and(|n| n != name) {
        return Err(ApiError::bad_request("name in URL does not match name in Eviction object"));
    }
    Ok(body.get("deleteOptions").cloned().unwrap_or(Value::Null))
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Upstream's `canIgnorePDB`: the pod is no disruption (any more).
fn already_disrupted(p: &Pod) -> bool {
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    matches!(phase, "Succeeded" | "Failed" | "Pending") || p.metadata.deletion_timestamp.is_some()
}

/// The budgets in the pod's namespace whose selector matches its labels.
fn budgets(reg: &Registry, ns: &str, pod: &Pod) -> Result<Vec<PodDisruptionBudget>, ApiError> {
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let all: Vec<PodDisruptionBudget> = typed::list(reg, by_kind("PodDisruptionBudget").expect("served"), Some(ns))?;
    Ok(all
        .into_iter()
        .filter(|b| {
            // A nil selector selects nothing; an empty one, every pod (policy/v1).
            b.spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .is_some_and(|s| LabelSelector::from_typed(s).matches(&labels))
        })
        .collect())
}

/// Takes one disruption from the budget `name`, recording the pod; 429 when none is left.
fn decrement(reg: &Registry, ns: &str, name: &str, pod: &str, dry_run: bool) -> Result<(), ApiError> {
    let rt = by_kind("PodDisruptionBudget").expect("served");
    let opts = WriteOptions { dry_run, ..Default::default() };
    reg.modify(rt, Some(ns), name, Part::Status, &opts, |o| {
        let mut refused = None;
        let what = format!("PodDisruptionBudget {ns}/{name}");
        let changed = typed::change_as(o, &what, |pdb: &mut PodDisruptionBudget| {
            let generation = pdb.metadata.generation.unwrap_or(0);
            let taken = take_one(pdb.status.get_or_insert_default(), generation, name, pod);
            taken.map_err(|e| refused = Some(e)).is_ok()
        })?;
        refused.map_or(Ok(changed), Err)
    })?;
    Ok(())
}

/// Upstream's `checkAndDecrement` on a budget's status (of generation `generation`).
fn take_one(status: &mut PodDisruptionBudgetStatus, generation: i64, name: &str, pod: &str) -> Result<(), ApiError> {
    if status.observed_generation.unwrap_or(0) < generation {
        return Err(too_many(format!("The disruption budget {name} is still being processed by the server.")));
    }
    if status.disruptions_allowed < 0 {
        return Err(forbidden(name, "pdb disruptions allowed is negative"));
    }
    if status.disrupted_pods.as_ref().map_or(0, BTreeMap::len) >= MAX_DISRUPTED {
        return Err(forbidden(name, "DisruptedPods map too big - too many evictions not confirmed by PDB controller"));
    }
    if status.disruptions_allowed == 0 {
        return Err(too_many(format!(
            "The disruption budget {name} needs {} healthy pods and has {} currently",
            status.desired_healthy, status.current_healthy
        )));
    }
    status.disruptions_allowed -= 1;
    if status.disruptions_allowed == 0 {
        for c in status.conditions.iter_mut().flatten().filter(|c| c.type_ == "DisruptionAllowed") {
            c.status = "False".into();
            c.reason = "InsufficientPods".into();
        }
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let at = Time(k8s_openapi::jiff::Timestamp::from_second(now).unwrap_or_default());
    status.disrupted_pods.get_or_insert_default().insert(pod.to_string(), at);
    Ok(())
}

/// Evicts pod `ns/name` with the given delete options; the answer is upstream's Success Status.
pub fn evict(reg: &Registry, ns: &str, name: &str, mut opts: DeleteOptions) -> Result<Value, ApiError> {
    let pods = by_kind("Pod").expect("served");
    let pod: Pod = typed::decode(reg.get(pods, Some(ns), name)?, "Pod")?;
    // Delete the pod that was checked, not a successor of the same name.
    opts.precondition_uid = opts.precondition_uid.or(pod.metadata.uid.clone());
    if !already_disrupted(&pod) {
        let mut found = budgets(reg, ns, &pod)?;
        if found.len() > 1 {
            return Err(ApiError::internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            ));
        }
        if let Some(pdb) = found.pop() {
            let policy =
                pdb.spec.as_ref().and_then(|s| s.unhealthy_pod_eviction_policy.as_deref()).unwrap_or("IfHealthyBudget");
            let status = pdb.status.clone().unwrap_or_default();
            // An unready pod is no healthy pod to lose: it goes without a decrement
            // when the policy says so, or while the budget is met.
            let unhealthy_goes = !pod_ready(&pod)
                && (policy == "AlwaysAllow"
                    || (status.current_healthy >= status.desired_healthy && status.desired_healthy > 0));
            if !unhealthy_goes {
                decrement(reg, ns, pdb.metadata.name.as_deref().unwrap_or_default(), name, opts.dry_run)?;
            }
        }
    }
    reg.delete(pods, Some(ns), name, &opts)?;
    Ok(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_must_be_an_eviction_of_the_pod_named() {
        let ok = json!({"apiVersion": "policy/v1beta1", "kind": "Eviction", "metadata": {"name": "p"},
            "deleteOptions": {"gracePeriodSeconds": 0}});
        assert_eq!(parse("p", &ok).unwrap(), json!({"gracePeriodSeconds": 0}));
        let other = json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "q"}});
        assert_eq!(parse("p", &other).unwrap_err().message, "name in URL does not match name in Eviction object");
        assert_eq!(parse("p", &json!({"apiVersion": "v1", "kind": "Pod"})).unwrap_err().code, 400);
    }

    #[test]
    fn a_decrement_takes_one_and_records_the_pod() {
        let mut st = PodDisruptionBudgetStatus {
            disruptions_allowed: 1,
            desired_healthy: 2,
            current_healthy: 3,
            expected_pods: 3,
            observed_generation: Some(1),
            ..Default::default()
        };
        take_one(&mut st, 1, "web", "web-1").unwrap();
        assert_eq!(st.disruptions_allowed, 0);
        assert!(st.disrupted_pods.as_ref().unwrap().contains_key("web-1"));
        let e = take_one(&mut st, 1, "web", "web-2").unwrap_err();
        assert_eq!(e.code, 429);
        assert_eq!(
            e.details.unwrap().causes.unwrap()[0].message.as_deref(),
            Some("The disruption budget web needs 2 healthy pods and has 3 currently")
        );
        let stale =
            take_one(&mut PodDisruptionBudgetStatus { disruptions_allowed: 5, ..Default::default() }, 2, "web", "p");
        assert!(
            stale.unwrap_err().details.unwrap().causes.unwrap()[0]
                .message
                .as_deref()
                .unwrap()
                .contains("still being processed")
        );
    }

    #[test]
    fn refusals_are_upstreams_429_with_the_budget_as_cause() {
        let e = too_many("The disruption budget web needs 2 healthy pods and has 2 currently".into()).to_json();
        assert_eq!(e["code"], 429);
        assert_eq!(e["reason"], "TooManyRequests");
        assert_eq!(e["message"], VIOLATION);
        assert_eq!(e["details"]["causes"][0]["reason"], "DisruptionBudget");
    }
}

//! Upstream's LimitRanger and Priority admission for pods: a namespace's
//! LimitRanges default containers' requests and limits and refuse pods
//! outside their min/max; `priorityClassName` (or the global default
//! class) is resolved into `spec.priority` and `preemptionPolicy`. The
//! built-in `system-node-critical` and `system-cluster-critical` classes
//! are created at start.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{LimitRange, LimitRangeItem, Pod, ResourceRequirements};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as Written;
use serde_json::{Value, json};

use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::policy::SYSTEM_CLASSES;
use orchestrator_apimachinery::quantity::Quantity;
use orchestrator_apimachinery::registry::{Registry, WriteOptions, name_of};
use orchestrator_apimachinery::resources::by_kind;
use orchestrator_apimachinery::typed;
use orchestrator_apimachinery::validation::qos_class;

/// Creates the built-in PriorityClasses that are missing.
pub fn ensure_system_classes(reg: &Registry) -> Result<(), ApiError> {
    let rt = by_kind("PriorityClass").expect("served");
    for (name, value, description) in SYSTEM_CLASSES {
        let pc = json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": name}, "value": value, "description": description});
        match reg.create(rt, None, pc, &WriteOptions::default()) {
            Err(e) if e.code != 409 => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

fn forbidden(pod: &str, why: &str) -> ApiError {
    ApiError::forbidden(format!("pods \"{pod}\" is forbidden: {why}"))
}

/// Both admissions, in upstream's order. The pod has decoded through its
/// type before this hook (the registry's `admit`), so it is changed as a
/// typed `Pod`; only what changed is written back.
pub fn admit(reg: &Registry, ns: &str, pod: &mut Value) -> Result<(), ApiError> {
    let name = name_of(pod).to_string();
    let mut outcome = Ok(false);
    typed::change_as(pod, &format!("Pod {name}"), |p: &mut Pod| {
        outcome = limit_ranges(reg, ns, &name, p).and_then(|ranged| priority(reg, &name, p).map(|()| ranged));
        outcome.is_ok()
    })?;
    // A namespace with LimitRanges may have changed the requests: the QoS
    // class again, from the JSON spec (`validation::qos_class` reads it so
    // for the registry's defaults too).
    if outcome? && pod.get("status").is_some_and(Value::is_object) {
        let qos = qos_class(&pod["spec"]);
        pod["status"]["qosClass"] = qos.into();
    }
    Ok(())
}

/// A quantity of a resource list, parsed.
fn quantity_in(list: Option<&BTreeMap<String, Written>>, r: &str) -> Option<Quantity> {
    list.and_then(|l| l.get(r)).and_then(|q| Quantity::parse(&q.0))
}

/// LimitRanger; `Ok(false)` when the namespace has no LimitRange.
fn limit_ranges(reg: &Registry, ns: &str, name: &str, pod: &mut Pod) -> Result<bool, ApiError> {
    let ranges: Vec<LimitRange> = typed::list(reg, by_kind("LimitRange").expect("served"), Some(ns))?;
    if ranges.is_empty() {
        return Ok(false);
    }
    let mut errors = Vec::new();
    let Some(spec) = pod.spec.as_mut() else { return Ok(true) };
    for item in ranges.iter().flat_map(|lr| lr.spec.iter().flat_map(|s| &s.limits)) {
        match item.type_.as_str() {
            "Container" => {
                for c in spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten()) {
                    default_container(item, &mut c.resources);
                    check(item, c.resources.as_ref(), "Container", &mut errors);
                }
            }
            "Pod" => {
                let mut sums = ResourceRequirements::default();
                for (part, limits) in [(&mut sums.requests, false), (&mut sums.limits, true)] {
                    let mut totals = BTreeMap::new();
                    for r in ["cpu", "memory", "ephemeral-storage"] {
                        let mut sum = Quantity::ZERO;
                        let mut all = true;
                        for c in &spec.containers {
                            let res = c.resources.as_ref();
                            let list = if limits {
                                res.and_then(|r| r.limits.as_ref())
                            } else {
                                res.and_then(|r| r.requests.as_ref())
                            };
                            match quantity_in(list, r) {
                                Some(q) => sum = sum + q,
                                None => all = false,
                            }
                        }
                        if all {
                            totals.insert(r.to_string(), Written(sum.to_string()));
                        }
                    }
                    *part = Some(totals);
                }
                check(item, Some(&sums), "Pod", &mut errors);
            }
            _ => {}
        }
    }
    match errors.len() {
        0 => Ok(true),
        1 => Err(forbidden(name, &errors[0])),
        _ => Err(forbidden(name, &format!("[{}]", errors.join(", ")))),
    }
}

/// Upstream's `mergeContainerResources`: missing limits and requests from the defaults.
fn default_container(item: &LimitRangeItem, resources: &mut Option<ResourceRequirements>) {
    for (from, limits) in [(&item.default, true), (&item.default_request, false)] {
        for (r, q) in from.iter().flatten() {
            let res = resources.get_or_insert_default();
            let part = if limits { &mut res.limits } else { &mut res.requests };
            part.get_or_insert_default().entry(r.clone()).or_insert_with(|| q.clone());
        }
    }
}

/// Upstream's `minConstraint`, `maxConstraint` and `limitRequestRatioConstraint`.
fn check(item: &LimitRangeItem, res: Option<&ResourceRequirements>, what: &str, errors: &mut Vec<String>) {
    let (requests, limits) = (res.and_then(|r| r.requests.as_ref()), res.and_then(|r| r.limits.as_ref()));
    let text = |list: Option<&BTreeMap<String, Written>>, r: &str| {
        list.and_then(|l| l.get(r)).map(|q| q.0.clone()).unwrap_or_default()
    };
    for (r, min) in item.min.iter().flatten() {
        let min_s = min.0.as_str();
        let Some(min_q) = Quantity::parse(min_s) else { continue };
        match quantity_in(requests, r) {
            None => errors.push(format!("minimum {r} usage per {what} is {min_s}.  No request is specified")),
            Some(q) if q < min_q => {
                errors.push(format!("minimum {r} usage per {what} is {min_s}, but request is {}", text(requests, r)))
            }
            _ => {}
        }
        if let Some(q) = quantity_in(limits, r)
            && q < min_q
        {
            errors.push(format!("minimum {r} usage per {what} is {min_s}, but limit is {}", text(limits, r)));
        }
    }
    for (r, max) in item.max.iter().flatten() {
        let max_s = max.0.as_str();
        let Some(max_q) = Quantity::parse(max_s) else { continue };
        match quantity_in(limits, r) {
            None => errors.push(format!("maximum {r} usage per {what} is {max_s}.  No limit is specified")),
            Some(q) if q > max_q => {
                errors.push(format!("maximum {r} usage per {what} is {max_s}, but limit is {}", text(limits, r)))
            }
            _ => {}
        }
        if let Some(q) = quantity_in(requests, r)
            && q > max_q
        {
            errors.push(format!("maximum {r} usage per {what} is {max_s}, but request is {}", text(requests, r)));
        }
    }
    for (r, ratio) in item.max_limit_request_ratio.iter().flatten() {
        let ratio_s = ratio.0.as_str();
        let (Some(ratio_q), Some(req), Some(lim)) =
            (Quantity::parse(ratio_s), quantity_in(requests, r), quantity_in(limits, r))
        else {
            continue;
        };
        // limit/request > ratio, in thousandths to stay exact.
        if req.milli() > 0 && lim.milli() * 1000 > ratio_q.milli() * req.milli() {
            let actual = lim.milli() as f64 / req.milli() as f64;
            errors.push(format!(
                "{r} max limit to request ratio per {what} is {ratio_s}, but provided ratio is {actual:.6}"
            ));
        }
    }
}

fn priority(reg: &Registry, name: &str, pod: &mut Pod) -> Result<(), ApiError> {
    let rt = by_kind("PriorityClass").expect("served");
    let wanted = pod.spec.as_ref().and_then(|s| s.priority_class_name.clone()).filter(|n| !n.is_empty());
    let class: Option<PriorityClass> = match wanted {
        Some(class) => match typed::get(reg, rt, None, &class) {
            Ok(pc) => Some(pc),
            Err(e) if e.code == 404 => {
                return Err(forbidden(name, &format!("no PriorityClass with name {class} was found")));
            }
            Err(e) => return Err(e),
        },
        None => {
            let all: Vec<PriorityClass> = typed::list(reg, rt, None)?;
            all.into_iter().filter(|pc| pc.global_default == Some(true)).min_by_key(|pc| pc.value)
        }
    };
    let (value, policy) = match &class {
        Some(pc) => (pc.value, pc.preemption_policy.clone().unwrap_or_else(|| "PreemptLowerPriority".into())),
        None => (0, "PreemptLowerPriority".to_string()),
    };
    let Some(spec) = pod.spec.as_mut() else { return Ok(()) };
    if let Some(given) = spec.priority
        && given != value
    {
        return Err(forbidden(
            name,
            &format!(
                "the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
            ),
        ));
    }
    if let Some(pc) = &class {
        spec.priority_class_name = pc.metadata.name.clone();
    }
    spec.priority = Some(value);
    spec.preemption_policy.get_or_insert(policy);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_global_default_class_applies_and_a_given_priority_must_agree() {
        let d = tempfile::tempdir().unwrap();
        let store =
            orchestrator_store::SqliteStore::open(&d.path().join("s.db"), orchestrator_store::Durability::Normal);
        let reg = Registry::new(std::sync::Arc::new(store.unwrap()));
        ensure_system_classes(&reg).unwrap();
        ensure_system_classes(&reg).unwrap();
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": []}});
        admit(&reg, "default", &mut pod).unwrap();
        assert_eq!((&pod["spec"]["priority"], pod["spec"].get("priorityClassName")), (&json!(0), None));
        let pc = json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "normal"},
            "value": 100, "globalDefault": true, "preemptionPolicy": "Never"});
        reg.create(by_kind("PriorityClass").unwrap(), None, pc, &WriteOptions::default()).unwrap();
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": []}});
        admit(&reg, "default", &mut pod).unwrap();
        assert_eq!(pod["spec"]["priorityClassName"], "normal");
        assert_eq!((&pod["spec"]["priority"], &pod["spec"]["preemptionPolicy"]), (&json!(100), &json!("Never")));
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"priority": 5, "containers": []}});
        let e = admit(&reg, "default", &mut pod).unwrap_err();
        assert_eq!(e.code, 403);
        assert!(e.message.contains("the integer value of priority (5) must not be provided in pod spec"), "{e}");
    }

    #[test]
    fn containers_get_defaults_and_are_held_to_min_and_max() {
        let item: LimitRangeItem = serde_json::from_value(json!({"type": "Container", "max": {"cpu": "1"},
            "min": {"cpu": "100m"}, "default": {"cpu": "500m", "memory": "128Mi"}, "defaultRequest": {"cpu": "200m"}}))
        .unwrap();
        let mut c = serde_json::from_value(json!({"limits": {"memory": "64Mi"}})).unwrap();
        default_container(&item, &mut c);
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            json!({"limits": {"cpu": "500m", "memory": "64Mi"}, "requests": {"cpu": "200m"}})
        );
        let mut errors = Vec::new();
        check(&item, c.as_ref(), "Container", &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let big = serde_json::from_value(json!({"limits": {"cpu": "2"}, "requests": {"cpu": "50m"}})).unwrap();
        check(&item, Some(&big), "Container", &mut errors);
        assert_eq!(
            errors,
            [
                "minimum cpu usage per Container is 100m, but request is 50m",
                "maximum cpu usage per Container is 1, but limit is 2"
            ]
        );
    }
}

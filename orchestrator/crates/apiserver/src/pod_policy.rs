//! Upstream's LimitRanger and Priority admission for pods: a namespace's
//! LimitRanges default containers' requests and limits and refuse pods
//! outside their min/max; `priorityClassName` (or the global default
//! class) is resolved into `spec.priority` and `preemptionPolicy`. The
//! built-in `system-node-critical` and `system-cluster-critical` classes
//! are created at start.

use serde_json::{Map, Value, json};

use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::policy::SYSTEM_CLASSES;
use orchestrator_apimachinery::quantity::Quantity;
use orchestrator_apimachinery::registry::{ListOptions, Registry, WriteOptions, name_of};
use orchestrator_apimachinery::resources::by_kind;
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

/// Both admissions, in upstream's order.
pub fn admit(reg: &Registry, ns: &str, pod: &mut Value) -> Result<(), ApiError> {
    limit_ranges(reg, ns, pod)?;
    priority(reg, pod)
}

fn quantity_at(o: &Value, ptr: &str) -> Option<Quantity> {
    o.pointer(ptr).and_then(Value::as_str).and_then(Quantity::parse)
}

fn limit_ranges(reg: &Registry, ns: &str, pod: &mut Value) -> Result<(), ApiError> {
    let rt = by_kind("LimitRange").expect("served");
    let ranges = reg.list(rt, Some(ns), &ListOptions::default())?.items;
    if ranges.is_empty() {
        return Ok(());
    }
    let name = name_of(pod).to_string();
    let mut errors = Vec::new();
    for lr in &ranges {
        for item in lr.pointer("/spec/limits").and_then(Value::as_array).into_iter().flatten() {
            match item.get("type").and_then(Value::as_str) {
                Some("Container") => {
                    for list in ["containers", "initContainers"] {
                        let Some(cs) = pod.pointer_mut(&format!("/spec/{list}")).and_then(Value::as_array_mut) else {
                            continue;
                        };
                        for c in cs.iter_mut() {
                            default_container(item, c);
                            check(item, c, "Container", &mut errors);
                        }
                    }
                }
                Some("Pod") => {
                    let mut sums = json!({"resources": {"requests": {}, "limits": {}}});
                    for part in ["requests", "limits"] {
                        let mut totals: Map<String, Value> = Map::new();
                        for r in ["cpu", "memory", "ephemeral-storage"] {
                            let mut sum = Quantity::ZERO;
                            let mut all = true;
                            for c in pod.pointer("/spec/containers").and_then(Value::as_array).into_iter().flatten() {
                                match quantity_at(c, &format!("/resources/{part}/{r}")) {
                                    Some(q) => sum = sum + q,
                                    None => all = false,
                                }
                            }
                            if all {
                                totals.insert(r.into(), sum.to_string().into());
                            }
                        }
                        sums["resources"][part] = Value::Object(totals);
                    }
                    check(item, &sums, "Pod", &mut errors);
                }
                _ => {}
            }
        }
    }
    match errors.len() {
        0 => {}
        1 => return Err(forbidden(&name, &errors[0])),
        _ => return Err(forbidden(&name, &format!("[{}]", errors.join(", ")))),
    }
    let qos = qos_class(&pod["spec"]);
    if pod.get("status").is_some_and(Value::is_object) {
        pod["status"]["qosClass"] = qos.into();
    }
    Ok(())
}

/// Upstream's `mergeContainerResources`: missing limits and requests from the defaults.
fn default_container(item: &Value, c: &mut Value) {
    for (from, part) in [("default", "limits"), ("defaultRequest", "requests")] {
        for (r, q) in item.get(from).and_then(Value::as_object).into_iter().flatten() {
            if !c.get("resources").is_some_and(Value::is_object) {
                c["resources"] = json!({});
            }
            if !c["resources"].get(part).is_some_and(Value::is_object) {
                c["resources"][part] = json!({});
            }
            if c["resources"][part].get(r).is_none() {
                c["resources"][part][r] = q.clone();
            }
        }
    }
}

/// Upstream's `minConstraint`, `maxConstraint` and `limitRequestRatioConstraint`.
fn check(item: &Value, c: &Value, what: &str, errors: &mut Vec<String>) {
    let text = |p: &str| c.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string();
    for (r, min) in item.get("min").and_then(Value::as_object).into_iter().flatten() {
        let min_s = min.as_str().unwrap_or_default();
        let Some(min_q) = Quantity::parse(min_s) else { continue };
        let (req, lim) = (format!("/resources/requests/{r}"), format!("/resources/limits/{r}"));
        match quantity_at(c, &req) {
            None => errors.push(format!("minimum {r} usage per {what} is {min_s}.  No request is specified")),
            Some(q) if q < min_q => {
                errors.push(format!("minimum {r} usage per {what} is {min_s}, but request is {}", text(&req)))
            }
            _ => {}
        }
        if let Some(q) = quantity_at(c, &lim)
            && q < min_q
        {
            errors.push(format!("minimum {r} usage per {what} is {min_s}, but limit is {}", text(&lim)));
        }
    }
    for (r, max) in item.get("max").and_then(Value::as_object).into_iter().flatten() {
        let max_s = max.as_str().unwrap_or_default();
        let Some(max_q) = Quantity::parse(max_s) else { continue };
        let (req, lim) = (format!("/resources/requests/{r}"), format!("/resources/limits/{r}"));
        match quantity_at(c, &lim) {
            None => errors.push(format!("maximum {r} usage per {what} is {max_s}.  No limit is specified")),
            Some(q) if q > max_q => {
                errors.push(format!("maximum {r} usage per {what} is {max_s}, but limit is {}", text(&lim)))
            }
            _ => {}
        }
        if let Some(q) = quantity_at(c, &req)
            && q > max_q
        {
            errors.push(format!("maximum {r} usage per {what} is {max_s}, but request is {}", text(&req)));
        }
    }
    for (r, ratio) in item.get("maxLimitRequestRatio").and_then(Value::as_object).into_iter().flatten() {
        let ratio_s = ratio.as_str().unwrap_or_default();
        let (Some(ratio_q), Some(req), Some(lim)) = (
            Quantity::parse(ratio_s),
            quantity_at(c, &format!("/resources/requests/{r}")),
            quantity_at(c, &format!("/resources/limits/{r}")),
        ) else {
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

fn priority(reg: &Registry, pod: &mut Value) -> Result<(), ApiError> {
    let rt = by_kind("PriorityClass").expect("served");
    let name = name_of(pod).to_string();
    let wanted = pod.pointer("/spec/priorityClassName").and_then(Value::as_str).filter(|n| !n.is_empty());
    let class = match wanted {
        Some(class) => match reg.get(rt, None, class) {
            Ok(pc) => Some(pc),
            Err(e) if e.code == 404 => {
                return Err(forbidden(&name, &format!("no PriorityClass with name {class} was found")));
            }
            Err(e) => return Err(e),
        },
        None => {
            let all = reg.list(rt, None, &ListOptions::default())?.items;
            all.into_iter()
                .filter(|pc| pc.get("globalDefault").and_then(Value::as_bool) == Some(true))
                .min_by_key(|pc| pc.get("value").and_then(Value::as_i64).unwrap_or(0))
        }
    };
    let (value, policy) = match &class {
        Some(pc) => (
            pc.get("value").and_then(Value::as_i64).unwrap_or(0),
            pc.get("preemptionPolicy").and_then(Value::as_str).unwrap_or("PreemptLowerPriority").to_string(),
        ),
        None => (0, "PreemptLowerPriority".to_string()),
    };
    if let Some(given) = pod.pointer("/spec/priority").and_then(Value::as_i64)
        && given != value
    {
        return Err(forbidden(
            &name,
            &format!(
                "the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
            ),
        ));
    }
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else { return Ok(()) };
    if let Some(pc) = &class {
        spec.insert("priorityClassName".into(), name_of(pc).into());
    }
    spec.insert("priority".into(), value.into());
    spec.entry("preemptionPolicy").or_insert(policy.into());
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
        priority(&reg, &mut pod).unwrap();
        assert_eq!((&pod["spec"]["priority"], pod["spec"].get("priorityClassName")), (&json!(0), None));
        let pc = json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "normal"},
            "value": 100, "globalDefault": true, "preemptionPolicy": "Never"});
        reg.create(by_kind("PriorityClass").unwrap(), None, pc, &WriteOptions::default()).unwrap();
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": []}});
        priority(&reg, &mut pod).unwrap();
        assert_eq!(pod["spec"]["priorityClassName"], "normal");
        assert_eq!((&pod["spec"]["priority"], &pod["spec"]["preemptionPolicy"]), (&json!(100), &json!("Never")));
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"priority": 5, "containers": []}});
        let e = priority(&reg, &mut pod).unwrap_err();
        assert_eq!(e.code, 403);
        assert!(e.message.contains("the integer value of priority (5) must not be provided in pod spec"), "{e}");
    }

    #[test]
    fn containers_get_defaults_and_are_held_to_min_and_max() {
        let item = json!({"type": "Container", "max": {"cpu": "1"}, "min": {"cpu": "100m"},
            "default": {"cpu": "500m", "memory": "128Mi"}, "defaultRequest": {"cpu": "200m"}});
        let mut c = json!({"name": "c", "resources": {"limits": {"memory": "64Mi"}}});
        default_container(&item, &mut c);
        assert_eq!(c["resources"], json!({"limits": {"cpu": "500m", "memory": "64Mi"}, "requests": {"cpu": "200m"}}));
        let mut errors = Vec::new();
        check(&item, &c, "Container", &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let big = json!({"resources": {"limits": {"cpu": "2"}, "requests": {"cpu": "50m"}}});
        check(&item, &big, "Container", &mut errors);
        assert_eq!(
            errors,
            [
                "minimum cpu usage per Container is 100m, but request is 50m",
                "maximum cpu usage per Container is 1, but limit is 2"
            ]
        );
    }
}

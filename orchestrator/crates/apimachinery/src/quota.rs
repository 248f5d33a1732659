//! ResourceQuota arithmetic shared by admission (which charges a new
//! object to its namespace's quotas) and the quota controller (which
//! recounts `status.used`): what one object uses, and whether adding it
//! stays within a quota's `hard` limits — refusals worded as upstream's.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::quantity::Quantity;
use crate::resources::ResourceType;

pub type Usage = BTreeMap<String, Quantity>;

/// k8s-openapi's `ResourceList`: resource name → quantity as written.
pub type ResourceList = BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>;

/// Object counts that quotas name without `count/` (upstream's legacy names).
const LEGACY_COUNTS: &[(&str, &str)] = &[
    ("pods", "pods"),
    ("services", "services"),
    ("secrets", "secrets"),
    ("configmaps", "configmaps"),
    ("persistentvolumeclaims", "persistentvolumeclaims"),
    ("resourcequotas", "resourcequotas"),
    ("replicationcontrollers", "replicationcontrollers"),
];

/// `count/<plural>[.<group>]` for a kind.
pub fn count_name(rt: &ResourceType) -> String {
    if rt.group.is_empty() { format!("count/{}", rt.plural) } else { format!("count/{}.{}", rt.plural, rt.group) }
}

/// Whether a pod still uses its resources (not finished).
pub fn pod_counts(pod: &Value) -> bool {
    !matches!(pod.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed"))
}

fn container_sum(spec: &Value, part: &str, resource: &str) -> Quantity {
    let get = |c: &Value| {
        c.pointer(&format!("/resources/{part}/{resource}")).and_then(Value::as_str).and_then(Quantity::parse)
    };
    let sum = spec
        .get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(get)
        .fold(Quantity::ZERO, |a, b| a + b);
    // An init container runs alone: the pod needs the larger of it and the sum.
    spec.get("initContainers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(get)
        .fold(sum, |acc, q| if q > acc { q } else { acc })
}

/// What one object of `rt` uses of a quota's resources.
pub fn usage(rt: &ResourceType, o: &Value) -> Usage {
    let mut u = Usage::new();
    let one = Quantity::parse("1").expect("a quantity");
    u.insert(count_name(rt), one);
    if rt.group.is_empty()
        && let Some((_, legacy)) = LEGACY_COUNTS.iter().find(|(p, _)| *p == rt.plural)
    {
        u.insert(legacy.to_string(), one);
    }
    if rt.kind == "Pod" {
        let spec = o.get("spec").cloned().unwrap_or_default();
        for r in ["cpu", "memory", "ephemeral-storage"] {
            let req = container_sum(&spec, "requests", r);
            let lim = container_sum(&spec, "limits", r);
            u.insert(format!("requests.{r}"), req);
            u.insert(r.to_string(), req);
            u.insert(format!("limits.{r}"), lim);
        }
    }
    if rt.kind == "Service" {
        let ty = o.pointer("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP");
        let ports = o.pointer("/spec/ports").and_then(Value::as_array).map_or(0, Vec::len) as i128;
        if ty == "LoadBalancer" {
            u.insert("services.loadbalancers".into(), one);
        }
        if ty == "NodePort" || ty == "LoadBalancer" {
            u.insert("services.nodeports".into(), one.times(ports));
        }
    }
    if rt.kind == "PersistentVolumeClaim"
        && let Some(q) = o.pointer("/spec/resources/requests/storage").and_then(Value::as_str).and_then(Quantity::parse)
    {
        u.insert("requests.storage".into(), q);
    }
    u
}

/// The resources of `hard` an object using `u` must declare but does not
/// (a pod without a cpu request under a `requests.cpu` quota).
pub fn missing(rt: &ResourceType, o: &Value, hard: &Usage) -> Vec<String> {
    if rt.kind != "Pod" {
        return Vec::new();
    }
    let declared = |part: &str, r: &str| {
        let spec = o.get("spec").cloned().unwrap_or_default();
        spec.get("containers")
            .and_then(Value::as_array)
            .is_some_and(|cs| cs.iter().all(|c| c.pointer(&format!("/resources/{part}/{r}")).is_some()))
    };
    let mut out = Vec::new();
    for key in hard.keys() {
        let (part, r) = match key.split_once('.') {
            Some(("requests", r)) if r != "storage" => ("requests", r),
            Some(("limits", r)) => ("limits", r),
            None if matches!(key.as_str(), "cpu" | "memory" | "ephemeral-storage") => ("requests", key.as_str()),
            _ => continue,
        };
        if !declared(part, r) {
            out.push(key.clone());
        }
    }
    out
}

/// Parses a `ResourceList` (`spec.hard`, `status.used`).
pub fn parse_list(v: Option<&Value>) -> Usage {
    v.and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, q)| Some((k.clone(), Quantity::parse(q.as_str()?)?)))
        .collect()
}

/// A typed `ResourceList` (a quota's `spec.hard`, `status.hard`,
/// `status.used`) in exact quantities; an entry that does not parse is
/// left out, as [`parse_list`] leaves it.
pub fn from_resource_list(list: Option<&ResourceList>) -> Usage {
    list.into_iter().flatten().filter_map(|(k, q)| Some((k.clone(), Quantity::parse(&q.0)?))).collect()
}

/// `u` as a typed `ResourceList`, each quantity in upstream's canonical form.
pub fn to_resource_list(u: &Usage) -> ResourceList {
    u.iter().map(|(k, v)| (k.clone(), k8s_openapi::apimachinery::pkg::api::resource::Quantity(v.to_string()))).collect()
}

fn pretty(u: &Usage) -> String {
    u.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// `used` plus `delta` on the resources `hard` limits, or upstream's
/// refusal naming the quota and only the exceeded resources.
pub fn charge(quota: &str, hard: &Usage, used: &Usage, delta: &Usage) -> Result<Usage, String> {
    let mut new = used.clone();
    let (mut requested, mut was, mut limited) = (Usage::new(), Usage::new(), Usage::new());
    for (r, limit) in hard {
        let Some(d) = delta.get(r).filter(|d| !d.is_zero()) else { continue };
        let before = used.get(r).copied().unwrap_or(Quantity::ZERO);
        let after = before + *d;
        if after > *limit {
            requested.insert(r.clone(), *d);
            was.insert(r.clone(), before);
            limited.insert(r.clone(), *limit);
        }
        new.insert(r.clone(), after);
    }
    if !requested.is_empty() {
        return Err(format!(
            "exceeded quota: {quota}, requested: {}, used: {}, limited: {}",
            pretty(&requested),
            pretty(&was),
            pretty(&limited)
        ));
    }
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::by_kind;
    use serde_json::json;

    fn list(v: Value) -> Usage {
        parse_list(Some(&v))
    }

    #[test]
    fn a_pod_uses_its_requests_limits_and_a_count() {
        let pod = json!({"spec": {"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "500m"}}},
            {"name": "b", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}}],
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2"}}}]}});
        let u = usage(by_kind("Pod").unwrap(), &pod);
        assert_eq!(u["pods"].to_string(), "1");
        assert_eq!(u["count/pods"].to_string(), "1");
        assert_eq!(u["requests.cpu"].to_string(), "2", "the init container is larger");
        assert_eq!(u["requests.memory"].to_string(), "128Mi");
        assert_eq!(u["limits.cpu"].to_string(), "500m");
        let hard = list(json!({"limits.memory": "1Gi", "requests.cpu": "4"}));
        assert_eq!(missing(by_kind("Pod").unwrap(), &pod, &hard), ["limits.memory"]);
        assert_eq!(count_name(by_kind("Deployment").unwrap()), "count/deployments.apps");
    }

    #[test]
    fn charges_within_hard_limits_and_refuses_as_upstream() {
        let hard = list(json!({"pods": "2", "requests.cpu": "1"}));
        let used = list(json!({"pods": "1", "requests.cpu": "500m"}));
        let delta = list(json!({"pods": "1", "requests.cpu": "500m", "count/pods": "1"}));
        let after = charge("compute", &hard, &used, &delta).unwrap();
        assert_eq!((after["pods"].to_string(), after["requests.cpu"].to_string()), ("2".into(), "1".into()));
        assert!(!after.contains_key("count/pods"), "only what the quota limits");
        let typed: ResourceList =
            serde_json::from_value(json!({"pods": "2", "requests.cpu": "1000m", "bad": "x"})).unwrap();
        assert_eq!(
            from_resource_list(Some(&typed)),
            hard,
            "the typed list parses as the JSON one; a bad entry is left out"
        );
        assert_eq!(
            to_resource_list(&hard),
            serde_json::from_value::<ResourceList>(json!({"pods": "2", "requests.cpu": "1"})).unwrap()
        );
        let e = charge("compute", &hard, &after, &delta).unwrap_err();
        assert_eq!(
            e,
            "exceeded quota: compute, requested: pods=1,requests.cpu=500m, used: pods=2,requests.cpu=1, limited: pods=2,requests.cpu=1"
        );
    }
}

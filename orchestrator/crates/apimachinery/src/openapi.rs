//! The OpenAPI schemas of the built-in types, as upstream's `/openapi/v3`
//! documents carry them (what `kubectl explain` reads): generated at build
//! time from k8s-openapi's sources (`build_openapi.rs`: upstream's
//! descriptions, types, formats, `required`, `$ref`s to
//! `#/components/schemas/<name>`, a field's description beside its
//! reference in `allOf`, `x-kubernetes-group-version-kind` on each kind),
//! embedded as one JSON document (about 1 MB) and parsed once on first use.
//! Here the lists that merge in a strategic merge patch get upstream's
//! `x-kubernetes-patch-merge-key`/`x-kubernetes-patch-strategy`, from the
//! same table the server merges with (`smp::list_strategy`), so that
//! kubectl's client-side apply computes the patches the server applies.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use serde_json::{Map, Value, json};

static SCHEMAS: &str = include_str!(concat!(env!("OUT_DIR"), "/openapi_schemas.json"));

/// Every built-in schema by its upstream name (`io.k8s.api.core.v1.Pod`).
pub fn definitions() -> &'static Map<String, Value> {
    static DEFS: OnceLock<Map<String, Value>> = OnceLock::new();
    DEFS.get_or_init(|| {
        let mut defs: Map<String, Value> = serde_json::from_str(SCHEMAS).expect("the generated OpenAPI schemas");
        for (def, field, strategy, key) in PATCH_STRATEGIES {
            if let Some(p) = defs.get_mut(*def).and_then(|d| d.pointer_mut(&format!("/properties/{field}"))) {
                p["x-kubernetes-patch-strategy"] = json!(strategy);
                if let Some(k) = key {
                    p["x-kubernetes-patch-merge-key"] = json!(k);
                }
            }
        }
        // Every `conditions` list merges by `type` (smp::list_strategy).
        for d in defs.values_mut() {
            if let Some(c) = d.pointer_mut("/properties/conditions").filter(|c| c["type"] == "array") {
                c["x-kubernetes-patch-strategy"] = json!("merge");
                c["x-kubernetes-patch-merge-key"] = json!("type");
            }
        }
        defs
    })
}

/// FNV-1a of the embedded schemas: part of the documents' `hash`.
pub fn digest() -> u64 {
    static DIGEST: OnceLock<u64> = OnceLock::new();
    *DIGEST.get_or_init(|| {
        SCHEMAS.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
    })
}

/// Upstream's patch strategies of the lists that `smp::list_strategy`
/// merges: (schema, field, strategy, merge key).
const PATCH_STRATEGIES: &[(&str, &str, &str, Option<&str>)] = &[
    ("io.k8s.api.core.v1.PodSpec", "containers", "merge", Some("name")),
    ("io.k8s.api.core.v1.PodSpec", "initContainers", "merge", Some("name")),
    ("io.k8s.api.core.v1.PodSpec", "ephemeralContainers", "merge", Some("name")),
    ("io.k8s.api.core.v1.PodSpec", "imagePullSecrets", "merge", Some("name")),
    ("io.k8s.api.core.v1.PodSpec", "volumes", "merge,retainKeys", Some("name")),
    ("io.k8s.api.core.v1.PodSpec", "hostAliases", "merge", Some("ip")),
    ("io.k8s.api.core.v1.PodSpec", "topologySpreadConstraints", "merge", Some("topologyKey")),
    ("io.k8s.api.core.v1.PodStatus", "podIPs", "merge", Some("ip")),
    ("io.k8s.api.core.v1.PodStatus", "hostIPs", "merge", Some("ip")),
    ("io.k8s.api.core.v1.Container", "env", "merge", Some("name")),
    ("io.k8s.api.core.v1.Container", "ports", "merge", Some("containerPort")),
    ("io.k8s.api.core.v1.Container", "volumeMounts", "merge", Some("mountPath")),
    ("io.k8s.api.core.v1.Container", "volumeDevices", "merge", Some("devicePath")),
    ("io.k8s.api.core.v1.EphemeralContainer", "env", "merge", Some("name")),
    ("io.k8s.api.core.v1.EphemeralContainer", "ports", "merge", Some("containerPort")),
    ("io.k8s.api.core.v1.EphemeralContainer", "volumeMounts", "merge", Some("mountPath")),
    ("io.k8s.api.core.v1.EphemeralContainer", "volumeDevices", "merge", Some("devicePath")),
    ("io.k8s.api.core.v1.ServiceSpec", "ports", "merge", Some("port")),
    ("io.k8s.api.core.v1.NodeStatus", "addresses", "merge", Some("type")),
    ("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "ownerReferences", "merge", Some("uid")),
    ("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "finalizers", "merge", None),
    ("io.k8s.api.apps.v1.DeploymentSpec", "strategy", "retainKeys", None),
];

/// The schema name of a built-in kind (`apps`, `v1`, `Deployment`).
pub fn kind_schema(group: &str, version: &str, kind: &str) -> Option<&'static str> {
    let want = json!({"group": group, "version": version, "kind": kind});
    definitions()
        .iter()
        .find(|(_, d)| d["x-kubernetes-group-version-kind"].as_array().is_some_and(|g| g.contains(&want)))
        .map(|(n, _)| n.as_str())
}

/// The named schemas and every schema they reference, directly or not.
pub fn closure<'a>(roots: impl IntoIterator<Item = &'a str>) -> Map<String, Value> {
    let defs = definitions();
    let mut seen = BTreeSet::new();
    let mut todo: Vec<String> = roots.into_iter().map(str::to_string).collect();
    while let Some(name) = todo.pop() {
        let Some(d) = defs.get(&name) else { continue };
        if !seen.insert(name) {
            continue;
        }
        refs(d, &mut todo);
    }
    seen.into_iter().filter_map(|n| defs.get(&n).map(|d| (n, d.clone()))).collect()
}

fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v.as_str().and_then(|r| r.strip_prefix("#/components/schemas/"))) {
                    ("$ref", Some(name)) => out.push(name.to_string()),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smp::{ListStrategy, list_strategy};

    /// The schema at a field path of a kind, through `$ref`, `allOf` and `items`.
    fn at(kind: &str, path: &[&str]) -> Value {
        let defs = definitions();
        let mut cur = defs[kind].clone();
        let deref = |mut v: Value| loop {
            let r = v["$ref"].as_str().or_else(|| v["allOf"][0]["$ref"].as_str()).map(str::to_string);
            match r {
                Some(r) => v = defs[r.trim_start_matches("#/components/schemas/")].clone(),
                None if v["type"] == "array" => v = v["items"].clone(),
                None => return v,
            }
        };
        for p in path {
            cur = deref(cur)["properties"][p].clone();
        }
        cur
    }

    #[test]
    fn kinds_carry_upstream_descriptions_types_and_references() {
        assert_eq!(kind_schema("apps", "v1", "Deployment"), Some("io.k8s.api.apps.v1.Deployment"));
        assert_eq!(kind_schema("", "v1", "Pod"), Some("io.k8s.api.core.v1.Pod"));
        assert_eq!(kind_schema("nope", "v1", "Pod"), None);
        let probe = at("io.k8s.api.core.v1.Pod", &["spec", "containers", "livenessProbe"]);
        assert!(probe["description"].as_str().unwrap().contains("Periodic probe of container liveness"));
        assert_eq!(probe["allOf"][0]["$ref"], "#/components/schemas/io.k8s.api.core.v1.Probe");
        let period = at("io.k8s.api.core.v1.Pod", &["spec", "containers", "livenessProbe", "periodSeconds"]);
        assert_eq!((period["type"].as_str(), period["format"].as_str()), (Some("integer"), Some("int32")));
        let tz = at("io.k8s.api.batch.v1.CronJob", &["spec", "timeZone"]);
        assert!(tz["description"].as_str().unwrap().contains("time zone name"), "{tz}");
        let spec = &definitions()["io.k8s.api.batch.v1.CronJobSpec"];
        assert_eq!(spec["required"], json!(["jobTemplate", "schedule"]));
        assert!(definitions()["io.k8s.api.batch.v1.CronJob"].get("required").is_none());
        let deployment = closure(["io.k8s.api.apps.v1.Deployment"]);
        for name in ["io.k8s.api.core.v1.PodSpec", "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"] {
            assert!(deployment.contains_key(name), "{name}");
        }
        assert!(!deployment.contains_key("io.k8s.api.batch.v1.CronJob"));
    }

    #[test]
    fn patch_strategies_match_the_servers_merge() {
        for (kind, schema, path) in [
            ("Pod", "io.k8s.api.core.v1.Pod", &["spec", "containers"][..]),
            ("Pod", "io.k8s.api.core.v1.Pod", &["spec", "volumes"]),
            ("Pod", "io.k8s.api.core.v1.Pod", &["spec", "containers", "env"]),
            ("Pod", "io.k8s.api.core.v1.Pod", &["spec", "containers", "ports"]),
            ("Pod", "io.k8s.api.core.v1.Pod", &["spec", "initContainers", "volumeMounts"]),
            ("Pod", "io.k8s.api.core.v1.Pod", &["status", "conditions"]),
            ("Pod", "io.k8s.api.core.v1.Pod", &["status", "podIPs"]),
            ("Pod", "io.k8s.api.core.v1.Pod", &["metadata", "ownerReferences"]),
            ("Pod", "io.k8s.api.core.v1.Pod", &["spec", "tolerations"]),
            ("Deployment", "io.k8s.api.apps.v1.Deployment", &["spec", "template", "spec", "containers"]),
            ("Deployment", "io.k8s.api.apps.v1.Deployment", &["status", "conditions"]),
            ("Service", "io.k8s.api.core.v1.Service", &["spec", "ports"]),
            ("Node", "io.k8s.api.core.v1.Node", &["status", "addresses"]),
            ("Job", "io.k8s.api.batch.v1.Job", &["spec", "template", "spec", "topologySpreadConstraints"]),
        ] {
            let s = at(schema, path);
            let key = s["x-kubernetes-patch-merge-key"].as_str();
            // list_strategy sees the path within the pod template's spec too.
            let tail: Vec<&str> = match path.iter().position(|p| *p == "template") {
                Some(i) => path[i + 1..].to_vec(),
                None => path.to_vec(),
            };
            match list_strategy(kind, &tail) {
                ListStrategy::MergeKey(k) => assert_eq!(key, Some(k), "{kind} {path:?}"),
                other => assert_eq!((key, other), (None, ListStrategy::Replace), "{kind} {path:?}"),
            }
        }
        let finalizers = at("io.k8s.api.core.v1.Pod", &["metadata", "finalizers"]);
        assert_eq!(finalizers["x-kubernetes-patch-strategy"], "merge");
        assert_eq!(list_strategy("Pod", &["metadata", "finalizers"]), ListStrategy::Set);
    }
}

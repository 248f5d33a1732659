//! The OpenAPI schemas of the built-in types, as upstream's `/openapi/v3`
//! documents carry them (what `kubectl explain` reads): generated at build
//! time from k8s-openapi's sources (`build_openapi.rs`: upstream's
//! descriptions, types, formats, `required`, `$ref`s to
//! `#/components/schemas/<name>`, a field's description beside its
//! reference in `allOf`, `x-kubernetes-group-version-kind` on each kind,
//! and upstream's `x-kubernetes-patch-merge-key`/`-strategy` on the lists
//! the server's strategic merge patch merges (`smp::list_strategy`; the
//! tests check both agree), so that kubectl's client-side apply computes
//! the patches the server applies). Each schema is embedded as JSON text
//! (about 1 MB in all) with the schemas it references: a document is
//! written from the texts, never parsed (parsed values would cost the
//! server ~9 MB of RSS on the first `kubectl apply`).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::OnceLock;

/// One generated schema.
pub struct Def {
    pub name: &'static str,
    /// The schema, as JSON.
    pub json: &'static str,
    /// Its v2 form (`gnostic::to_v2`): a byte range of `V2_JSON`.
    v2: (usize, usize),
    /// Its gnostic `NamedSchema` entry: a byte range of `V2_PB`.
    pb: (usize, usize),
    /// The indexes in `DEFS` of the schemas it references.
    refs: &'static [usize],
    /// The kinds it is the schema of: (group, version, kind).
    gvk: &'static [(&'static str, &'static str, &'static str)],
    /// Its fields that lead to another schema or carry a patch strategy:
    /// (field, index in `DEFS` or `usize::MAX`, patch strategy, merge key).
    fields: &'static [(&'static str, usize, &'static str, &'static str)],
}

include!(concat!(env!("OUT_DIR"), "/openapi_schemas.rs"));
static V2_JSON: &str = include_str!(concat!(env!("OUT_DIR"), "/openapi_v2.json"));
static V2_PB: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/openapi_v2.pb"));

impl Def {
    /// The schema in `/openapi/v2`'s form, as JSON.
    pub fn v2_json(&self) -> &'static str {
        &V2_JSON[self.v2.0..self.v2.1]
    }

    /// The schema's entry in gnostic's `Definitions` message.
    pub fn v2_protobuf(&self) -> &'static [u8] {
        &V2_PB[self.pb.0..self.pb.1]
    }
}

/// Every built-in schema, by name.
pub fn definitions() -> &'static [Def] {
    DEFS
}

/// The schema name of a built-in kind (`apps`, `v1`, `Deployment`).
pub fn kind_schema(group: &str, version: &str, kind: &str) -> Option<&'static str> {
    DEFS.iter().find(|d| d.gvk.contains(&(group, version, kind))).map(|d| d.name)
}

/// Upstream's patch strategy and merge key (`x-kubernetes-patch-strategy`,
/// `-merge-key`; empty where it has none) of the field at `path` (field
/// names from the object's root) in a built-in kind's schema; `None` for a
/// kind k8s-openapi does not carry. A kind served in several groups or
/// versions (Event, HorizontalPodAutoscaler) takes its first schema: their
/// strategies agree.
pub fn patch_strategy(kind: &str, path: &[&str]) -> Option<(&'static str, &'static str)> {
    let mut def = DEFS.iter().find(|d| d.gvk.iter().any(|g| g.2 == kind))?;
    let none = Some(("", ""));
    for (i, seg) in path.iter().enumerate() {
        let Some(&(_, child, strategy, key)) = def.fields.iter().find(|f| f.0 == *seg) else { return none };
        if i + 1 == path.len() {
            return Some((strategy, key));
        }
        match DEFS.get(child) {
            Some(d) => def = d,
            None => return none,
        }
    }
    none
}

/// The named schemas and every schema they reference, directly or not, in name order.
pub fn closure<'a>(roots: impl IntoIterator<Item = &'a str>) -> Vec<&'static Def> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<usize> =
        roots.into_iter().filter_map(|r| DEFS.binary_search_by(|d| d.name.cmp(r)).ok()).collect();
    while let Some(i) = todo.pop() {
        if seen.insert(i) {
            todo.extend(DEFS[i].refs);
        }
    }
    seen.into_iter().map(|i| &DEFS[i]).collect()
}

/// Appends `"name":schema` for each schema, comma-separated, to a JSON object being written.
pub fn write_members(out: &mut String, defs: &[&Def]) {
    for (i, d) in defs.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let _ = write!(out, "{sep}{}:{}", serde_json::Value::from(d.name), d.json);
    }
}

/// As `write_members`, with the schemas' v2 forms.
pub fn write_v2_members(out: &mut String, defs: &[Def]) {
    for (i, d) in defs.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let _ = write!(out, "{sep}{}:{}", serde_json::Value::from(d.name), d.v2_json());
    }
}

/// FNV-1a of the embedded schemas: part of the documents' `hash`.
pub fn digest() -> u64 {
    static DIGEST: OnceLock<u64> = OnceLock::new();
    *DIGEST.get_or_init(|| {
        let bytes = DEFS.iter().flat_map(|d| d.name.bytes().chain(d.json.bytes()));
        bytes.fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn parsed() -> serde_json::Map<String, Value> {
        definitions().iter().map(|d| (d.name.to_string(), serde_json::from_str(d.json).unwrap())).collect()
    }

    /// The schema at a field path of a kind, through `$ref`, `allOf` and `items`.
    fn at(kind: &str, path: &[&str]) -> Value {
        let defs = &parsed();
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
        let schemas = parsed();
        let probe = at("io.k8s.api.core.v1.Pod", &["spec", "containers", "livenessProbe"]);
        assert!(probe["description"].as_str().unwrap().contains("Periodic probe of container liveness"));
        assert_eq!(probe["allOf"][0]["$ref"], "#/components/schemas/io.k8s.api.core.v1.Probe");
        let period = at("io.k8s.api.core.v1.Pod", &["spec", "containers", "livenessProbe", "periodSeconds"]);
        assert_eq!((period["type"].as_str(), period["format"].as_str()), (Some("integer"), Some("int32")));
        let tz = at("io.k8s.api.batch.v1.CronJob", &["spec", "timeZone"]);
        assert!(tz["description"].as_str().unwrap().contains("time zone name"), "{tz}");
        let spec = &schemas["io.k8s.api.batch.v1.CronJobSpec"];
        assert_eq!(spec["required"], json!(["jobTemplate", "schedule"]));
        assert!(schemas["io.k8s.api.batch.v1.CronJob"].get("required").is_none());
        let deployment: Vec<&str> = closure(["io.k8s.api.apps.v1.Deployment"]).iter().map(|d| d.name).collect();
        for name in ["io.k8s.api.core.v1.PodSpec", "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"] {
            assert!(deployment.contains(&name), "{name}");
        }
        assert!(!deployment.contains(&"io.k8s.api.batch.v1.CronJob"));
        let mut written = String::from("{");
        write_members(&mut written, &closure(["io.k8s.api.core.v1.Probe"]));
        written.push('}');
        let members: serde_json::Map<String, Value> = serde_json::from_str(&written).unwrap();
        assert!(members.contains_key("io.k8s.api.core.v1.HTTPGetAction") && members.len() > 3, "{written}");
    }

    #[test]
    fn upstream_list_and_patch_markers() {
        // (kind, schema, path, upstream's merge key: None = the list is replaced)
        for (kind, schema, path, want) in [
            ("Pod", "io.k8s.api.core.v1.Pod", &["spec", "containers"][..], Some("name")),
            ("Pod", "io.k8s.api.core.v1.Pod", &["spec", "volumes"], Some("name")),
            ("Pod", "io.k8s.api.core.v1.Pod", &["spec", "containers", "env"], Some("name")),
            ("Pod", "io.k8s.api.core.v1.Pod", &["spec", "containers", "ports"], Some("containerPort")),
            ("Pod", "io.k8s.api.core.v1.Pod", &["spec", "initContainers", "volumeMounts"], Some("mountPath")),
            ("Pod", "io.k8s.api.core.v1.Pod", &["spec", "ephemeralContainers", "env"], Some("name")),
            ("Pod", "io.k8s.api.core.v1.Pod", &["spec", "schedulingGates"], Some("name")),
            ("Pod", "io.k8s.api.core.v1.Pod", &["status", "conditions"], Some("type")),
            ("Pod", "io.k8s.api.core.v1.Pod", &["status", "podIPs"], Some("ip")),
            ("Pod", "io.k8s.api.core.v1.Pod", &["metadata", "ownerReferences"], Some("uid")),
            ("Pod", "io.k8s.api.core.v1.Pod", &["spec", "tolerations"], None),
            ("Pod", "io.k8s.api.core.v1.Pod", &["spec", "containers", "args"], None),
            ("Deployment", "io.k8s.api.apps.v1.Deployment", &["spec", "template", "spec", "containers"], Some("name")),
            ("Deployment", "io.k8s.api.apps.v1.Deployment", &["status", "conditions"], Some("type")),
            ("Service", "io.k8s.api.core.v1.Service", &["spec", "ports"], Some("port")),
            ("Node", "io.k8s.api.core.v1.Node", &["status", "addresses"], Some("type")),
            ("ServiceAccount", "io.k8s.api.core.v1.ServiceAccount", &["secrets"], Some("name")),
            (
                "Job",
                "io.k8s.api.batch.v1.Job",
                &["spec", "template", "spec", "topologySpreadConstraints"],
                Some("topologyKey"),
            ),
            (
                "CertificateSigningRequest",
                "io.k8s.api.certificates.v1.CertificateSigningRequest",
                &["status", "conditions"],
                None,
            ),
        ] {
            let s = at(schema, path);
            assert_eq!(s["x-kubernetes-patch-merge-key"].as_str(), want, "{kind} {path:?}: {s}");
            // What smp walks to find it (`smp`'s tests check the merge itself).
            assert_eq!(patch_strategy(kind, path).map(|p| p.1).filter(|k| !k.is_empty()), want, "{kind} {path:?}");
        }
        let finalizers = at("io.k8s.api.core.v1.Pod", &["metadata", "finalizers"]);
        assert_eq!(finalizers["x-kubernetes-patch-strategy"], "merge");
        assert_eq!(patch_strategy("Pod", &["metadata", "finalizers"]), Some(("merge", "")));
        assert_eq!(patch_strategy("Widget", &["status", "conditions"]), None);
        // Server-side apply's markers.
        let ports = at("io.k8s.api.core.v1.Pod", &["spec", "containers", "ports"]);
        assert_eq!(
            (ports["x-kubernetes-list-type"].as_str(), &ports["x-kubernetes-list-map-keys"]),
            (Some("map"), &json!(["containerPort", "protocol"]))
        );
        assert_eq!(at("io.k8s.api.core.v1.Pod", &["spec", "tolerations"])["x-kubernetes-list-type"], "atomic");
        assert_eq!(at("io.k8s.api.core.v1.Pod", &["metadata", "finalizers"])["x-kubernetes-list-type"], "set");
        assert_eq!(parsed()["io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector"]["x-kubernetes-map-type"], "atomic");
    }
}

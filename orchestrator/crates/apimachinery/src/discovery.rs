//! Discovery documents (`/version`, `/api`, `/apis`, group-version resource
//! lists, and `/api` and `/apis` aggregated as `apidiscovery.k8s.io`
//! `APIGroupDiscoveryList`s, built from the same resource lists) and the OpenAPI v3 documents: the schemas
//! `kubectl explain` shows, and what kubectl needs to leave validation to
//! the server (`fieldValidation=Strict`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    APIGroup, APIGroupList, APIResource, APIResourceList, APIVersions, GroupVersionForDiscovery, ObjectMeta,
    ServerAddressByClientCIDR,
};
use kube_core::discovery::v2::{
    APIGroupDiscovery, APIGroupDiscoveryList, APIResourceDiscovery, APISubresourceDiscovery, APIVersionDiscovery,
    GroupVersionKind,
};
use serde_json::{Map, Value, json};
use std::fmt::Write as _;

use std::sync::{Arc, OnceLock};

use crate::resources::{GROUPS, RESOURCES, ResourceType, group_version};

/// The Kubernetes version the API server presents.
pub const MAJOR: &str = "1";
pub const MINOR: &str = "33";

pub fn version() -> Value {
    json!({"major": MAJOR, "minor": MINOR, "gitVersion": format!("v{MAJOR}.{MINOR}.0-plinth.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "", "gitTreeState": "clean", "buildDate": "", "goVersion": "none (Rust)", "compiler": "rustc",
        "platform": format!("linux/{}", if cfg!(target_arch = "aarch64") { "arm64" } else { "amd64" })})
}

fn with_type<T: serde::Serialize>(v: T, kind: &str, api_version: &str) -> Value {
    let mut j = serde_json::to_value(v).unwrap_or_default();
    j["kind"] = kind.into();
    j["apiVersion"] = api_version.into();
    j
}

pub fn api_versions(server_address: &str) -> Value {
    let mut j = with_type(
        APIVersions {
            versions: vec!["v1".into()],
            server_address_by_client_cidrs: vec![ServerAddressByClientCIDR {
                client_cidr: "0.0.0.0/0".into(),
                server_address: server_address.into(),
            }],
        },
        "APIVersions",
        "v1",
    );
    j.as_object_mut().map(|m| m.remove("apiVersion"));
    j
}

fn group(name: &str, versions: &[&str]) -> APIGroup {
    let gvs: Vec<GroupVersionForDiscovery> = versions
        .iter()
        .map(|v| GroupVersionForDiscovery { group_version: format!("{name}/{v}"), version: v.to_string() })
        .collect();
    APIGroup {
        name: name.into(),
        preferred_version: gvs.first().cloned(),
        server_address_by_client_cidrs: None,
        versions: gvs,
    }
}

/// The groups of the served custom types with their versions, preferred
/// (upstream's version priority) first.
fn custom_groups(custom: &[Arc<ResourceType>]) -> Vec<(&'static str, Vec<&'static str>)> {
    let mut groups: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    for rt in custom {
        match groups.iter_mut().find(|(g, _)| *g == rt.group) {
            Some((_, vs)) if !vs.contains(&rt.version) => vs.push(rt.version),
            Some(_) => {}
            None => groups.push((rt.group, vec![rt.version])),
        }
    }
    for (_, vs) in &mut groups {
        vs.sort_by_key(|v| crate::crd::version_priority(v));
    }
    groups.sort();
    groups
}

/// The group of SelfSubjectAccessReview (`kubectl auth can-i`), answered
/// by the authorizer and never stored.
pub const AUTHORIZATION_GROUP: &str = "authorization.k8s.io";
/// The group of TokenReview, TokenRequest and SelfSubjectReview, answered
/// by the authenticators and never stored.
pub const AUTHENTICATION_GROUP: &str = "authentication.k8s.io";
/// NodeMetrics and PodMetrics, read from the kubelets and never stored.
pub const METRICS_GROUP: &str = "metrics.k8s.io";
pub const METRICS_VERSION: &str = "v1beta1";

/// `/apis`: the built-in groups, then those of the served CRDs.
pub fn api_group_list(custom: &[Arc<ResourceType>]) -> Value {
    let mut groups: Vec<APIGroup> = GROUPS
        .iter()
        .chain([&AUTHENTICATION_GROUP, &AUTHORIZATION_GROUP])
        .map(|g| group(g, &[group_version(g)]))
        .collect();
    groups.push(group(METRICS_GROUP, &[METRICS_VERSION]));
    groups.extend(custom_groups(custom).into_iter().map(|(g, vs)| group(g, &vs)));
    with_type(APIGroupList { groups }, "APIGroupList", "v1")
}

pub fn api_group(name: &str, custom: &[Arc<ResourceType>]) -> Option<Value> {
    if GROUPS.contains(&name) || name == AUTHORIZATION_GROUP || name == AUTHENTICATION_GROUP {
        return Some(with_type(group(name, &[group_version(name)]), "APIGroup", "v1"));
    }
    if name == METRICS_GROUP {
        return Some(with_type(group(name, &[METRICS_VERSION]), "APIGroup", "v1"));
    }
    let (g, vs) = custom_groups(custom).into_iter().find(|(g, _)| *g == name)?;
    Some(with_type(group(g, &vs), "APIGroup", "v1"))
}

const VERBS: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn resource(rt: &ResourceType) -> APIResource {
    APIResource {
        name: rt.plural.into(),
        singular_name: rt.singular.into(),
        namespaced: rt.namespaced,
        kind: rt.kind.into(),
        verbs: strings(VERBS),
        short_names: (!rt.short_names.is_empty()).then(|| strings(rt.short_names)),
        categories: (!rt.categories.is_empty()).then(|| strings(rt.categories)),
        storage_version_hash: None,
        group: None,
        version: None,
    }
}

fn subresource(rt: &ResourceType, sub: &str) -> APIResource {
    let (kind, group, version, verbs): (&str, Option<&str>, Option<&str>, &[&str]) = match sub {
        "scale" => ("Scale", Some("autoscaling"), Some("v1"), &["get", "patch", "update"]),
        "binding" => ("Binding", None, None, &["create"]),
        "exec" => ("PodExecOptions", None, None, &["create", "get"]),
        "attach" => ("PodAttachOptions", None, None, &["create", "get"]),
        "portforward" => ("PodPortForwardOptions", None, None, &["create", "get"]),
        "log" => (rt.kind, None, None, &["get"]),
        "token" => ("TokenRequest", Some(AUTHENTICATION_GROUP), Some("v1"), &["create"]),
        // What `kubectl drain` looks for to evict rather than delete.
        "eviction" => ("Eviction", Some(crate::resources::POLICY_GROUP), Some("v1"), &["create"]),
        _ => (rt.kind, None, None, &["get", "patch", "update"]),
    };
    APIResource {
        name: format!("{}/{sub}", rt.plural),
        singular_name: String::new(),
        namespaced: rt.namespaced,
        kind: kind.into(),
        verbs: strings(verbs),
        group: group.map(str::to_string),
        version: version.map(str::to_string),
        short_names: None,
        categories: None,
        storage_version_hash: None,
    }
}

/// The resources of a group version ("" for core) as `APIResourceList`
/// entries, subresources right after their resource; `None` for a group
/// version not served.
fn resources(group: &str, version: &str, custom: &[Arc<ResourceType>]) -> Option<Vec<APIResource>> {
    if (group == AUTHORIZATION_GROUP || group == AUTHENTICATION_GROUP) && version == "v1" {
        let review = |kind: &str| APIResource {
            name: format!("{}s", kind.to_lowercase()),
            singular_name: kind.to_lowercase(),
            namespaced: kind == "LocalSubjectAccessReview",
            kind: kind.into(),
            verbs: strings(&["create"]),
            ..Default::default()
        };
        let kinds: &[&str] = if group == AUTHORIZATION_GROUP {
            &["LocalSubjectAccessReview", "SelfSubjectAccessReview", "SelfSubjectRulesReview", "SubjectAccessReview"]
        } else {
            &["SelfSubjectReview", "TokenReview"]
        };
        return Some(kinds.iter().map(|k| review(k)).collect());
    }
    if (group, version) == (METRICS_GROUP, METRICS_VERSION) {
        let metrics = |kind: &str, name: &str, namespaced| APIResource {
            name: name.into(),
            namespaced,
            kind: kind.into(),
            verbs: strings(&["get", "list"]),
            ..Default::default()
        };
        return Some(vec![metrics("NodeMetrics", "nodes", false), metrics("PodMetrics", "pods", true)]);
    }
    let rts = served(group, version, custom);
    if rts.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for rt in &rts {
        resources.push(resource(rt));
        for sub in rt.subresources {
            resources.push(subresource(rt, sub));
        }
    }
    Some(resources)
}

/// The `APIResourceList` of a group version ("" for core), the served
/// custom types included.
pub fn resource_list(group: &str, version: &str, custom: &[Arc<ResourceType>]) -> Option<Value> {
    let resources = resources(group, version, custom)?;
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(with_type(APIResourceList { group_version: gv, resources }, "APIResourceList", "v1"))
}

/// The versions of `apidiscovery.k8s.io` served, newest first: kubectl
/// ≥1.30 asks for v2, 1.26–1.29 for v2beta1 (the same shape).
pub const AGGREGATED_VERSIONS: &[&str] = &["v2", "v2beta1"];

/// One group version's resources in aggregated discovery's shape: each
/// resource with its response kind, scope and subresources folded in.
fn discovery_version(group: &str, version: &str, list: Vec<APIResource>) -> APIVersionDiscovery {
    let gvk = |g: Option<String>, v: Option<String>, kind: String| GroupVersionKind {
        group: Some(g.unwrap_or_else(|| group.to_string())),
        version: Some(v.unwrap_or_else(|| version.to_string())),
        kind: Some(kind),
    };
    let mut resources: Vec<APIResourceDiscovery> = Vec::new();
    for r in list {
        let response_kind = Some(gvk(r.group, r.version, r.kind));
        match r.name.split_once('/') {
            None => resources.push(APIResourceDiscovery {
                resource: Some(r.name),
                response_kind,
                scope: Some(if r.namespaced { "Namespaced" } else { "Cluster" }.into()),
                singular_resource: Some(r.singular_name),
                verbs: r.verbs,
                short_names: r.short_names.unwrap_or_default(),
                categories: r.categories.unwrap_or_default(),
                subresources: Vec::new(),
            }),
            Some((parent, sub)) => {
                if let Some(p) = resources.iter_mut().find(|p| p.resource.as_deref() == Some(parent)) {
                    p.subresources.push(APISubresourceDiscovery {
                        subresource: Some(sub.to_string()),
                        response_kind,
                        accepted_types: Vec::new(),
                        verbs: r.verbs,
                    });
                }
            }
        }
    }
    APIVersionDiscovery { version: Some(version.into()), resources, freshness: Some("Current".into()) }
}

/// `/api` (`core`) or `/apis` as one `APIGroupDiscoveryList` of
/// `apidiscovery.k8s.io/<version>`: every group with its versions,
/// preferred first, and every resource of each, the served versions of
/// established CRDs included.
pub fn aggregated(core: bool, version: &str, custom: &[Arc<ResourceType>]) -> Value {
    let groups: Vec<(&str, Vec<&str>)> = if core {
        vec![("", vec!["v1"])]
    } else {
        let builtin = GROUPS.iter().chain([&AUTHENTICATION_GROUP, &AUTHORIZATION_GROUP]);
        let mut g: Vec<(&str, Vec<&str>)> = builtin.map(|g| (*g, vec![group_version(g)])).collect();
        g.push((METRICS_GROUP, vec![METRICS_VERSION]));
        g.extend(custom_groups(custom));
        g
    };
    let items = groups
        .into_iter()
        .map(|(g, versions)| APIGroupDiscovery {
            metadata: Some(ObjectMeta { name: (!g.is_empty()).then(|| g.to_string()), ..Default::default() }),
            versions: versions
                .into_iter()
                .filter_map(|v| Some(discovery_version(g, v, resources(g, v, custom)?)))
                .collect(),
        })
        .collect();
    let list = APIGroupDiscoveryList { metadata: Some(Default::default()), items };
    with_type(list, "APIGroupDiscoveryList", &format!("apidiscovery.k8s.io/{version}"))
}

/// The built-in and custom types of one group version.
fn served<'a>(group: &str, version: &str, custom: &'a [Arc<ResourceType>]) -> Vec<&'a ResourceType> {
    let builtin = RESOURCES.iter();
    builtin.chain(custom.iter().map(|r| &**r)).filter(|r| r.group == group && r.version == version).collect()
}

/// The group versions that have OpenAPI v3 documents, as URL paths.
fn openapi_paths(custom: &[Arc<ResourceType>]) -> Vec<String> {
    let mut v = vec!["api/v1".to_string()];
    v.extend(GROUPS.iter().map(|g| format!("apis/{g}/{}", group_version(g))));
    for (g, vs) in custom_groups(custom) {
        v.extend(vs.iter().map(|ver| format!("apis/{g}/{ver}")));
    }
    v
}

/// A stable tag for this build's documents (clients cache by it: kubectl
/// keeps them on disk), changing with the built-in schemas.
fn hash() -> String {
    format!("plinth{}{MINOR}-{:016x}", env!("CARGO_PKG_VERSION").replace('.', ""), crate::openapi::digest())
}

pub fn openapi_v3_index(custom: &[Arc<ResourceType>]) -> Value {
    let paths: serde_json::Map<String, Value> = openapi_paths(custom)
        .into_iter()
        .map(|p| {
            let url = format!("/openapi/v3/{p}?hash={}", hash());
            (p, json!({"serverRelativeURL": url}))
        })
        .collect();
    json!({"paths": paths})
}

/// The OpenAPI v3 document of one group version (`api/v1`, `apis/apps/v1`), as JSON text:
/// for each kind, its PATCH operation with the group-version-kind and the
/// `fieldValidation` parameter, and its schema: a built-in kind's full one
/// (`openapi`) with every schema it references, a CRD's from its version.
pub fn openapi_v3(path: &str, custom: &[Arc<ResourceType>]) -> Option<String> {
    let (group, version) = match path.split('/').collect::<Vec<_>>().as_slice() {
        ["api", v] => ("", *v),
        ["apis", g, v] => (*g, *v),
        _ => return None,
    };
    let rts = served(group, version, custom);
    if rts.is_empty() {
        return None;
    }
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    for &rt in &rts {
        let gvk = json!([{"group": rt.group, "version": rt.version, "kind": rt.kind}]);
        let scope = if rt.namespaced { "/namespaces/{namespace}" } else { "" };
        let url = format!("/{path}{scope}/{}/{{name}}", rt.plural);
        let schema_name = schema_name(rt);
        let op = |verb: &str| {
            json!({"operationId": format!("{verb}{}", rt.kind), "x-kubernetes-action": verb,
                "x-kubernetes-group-version-kind": gvk[0],
                "parameters": [
                    {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                    {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                    {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}}],
                "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema_name}")}}}}}})
        };
        paths.insert(url, json!({"patch": op("patch"), "put": op("put")}));
        let collection = format!("/{path}{scope}/{}", rt.plural);
        paths.insert(collection, json!({"post": op("post")}));
        let schema = match rt.custom.as_ref().and_then(|c| c.schema.as_ref()) {
            Some(s) => {
                let mut s = serde_json::to_value(s).unwrap_or_default();
                with_object_fields(&mut s);
                s["x-kubernetes-group-version-kind"] = gvk.clone();
                s
            }
            None if builtin_schema(rt).is_some() => continue,
            // A kind k8s-openapi does not carry (metrics.k8s.io).
            None => json!({"type": "object", "x-kubernetes-group-version-kind": gvk,
                "description": format!("{} (schema served by the API server: fieldValidation=Strict)", rt.kind)}),
        };
        schemas.insert(schema_name, schema);
    }
    // The built-in kinds' schemas and every schema they reference, as the
    // generated JSON texts (`openapi`), then the others. A CRD's schema
    // references ObjectMeta (`with_object_fields`).
    let object_meta =
        rts.iter().any(|rt| rt.custom.as_ref().is_some_and(|c| c.schema.is_some())).then_some(OBJECT_META);
    let builtin = crate::openapi::closure(rts.iter().filter_map(|rt| builtin_schema(rt)).chain(object_meta));
    let info = json!({"title": "Kubernetes", "version": format!("v{MAJOR}.{MINOR}.0")});
    let mut out =
        format!(r#"{{"openapi":"3.0.0","info":{info},"paths":{},"components":{{"schemas":{{"#, Value::Object(paths));
    crate::openapi::write_members(&mut out, &builtin);
    for (i, (name, schema)) in schemas.iter().enumerate() {
        let sep = if i == 0 && builtin.is_empty() { "" } else { "," };
        out.push_str(&format!("{sep}{}:{schema}", Value::from(name.as_str())));
    }
    out.push_str("}}}");
    Some(out)
}

/// `/openapi/v2`'s forms: JSON, or gnostic's protobuf (what kubectl ≤1.27 asks for).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenApiV2 {
    Json,
    Protobuf,
}

/// `/openapi/v2` as upstream serves it (what kubectl ≤1.27 reads for
/// `explain`, client-side validation and the patch metadata of client-side
/// apply): every built-in schema (`openapi`, converted at build time),
/// each CRD version's schema and a placeholder for the kinds k8s-openapi
/// lacks, each kind's `x-kubernetes-group-version-kind`; and paths with
/// each kind's put/patch/post operations carrying the group-version-kind
/// and the `dryRun`/`fieldManager`/`fieldValidation` query parameters
/// (kubectl 1.25–1.27 look for `fieldValidation` there before leaving
/// validation to the server). Written from the embedded texts and entries,
/// never parsed; nothing is kept between requests.
pub fn openapi_v2(custom: &[Arc<ResourceType>], format: OpenApiV2) -> Vec<u8> {
    let mut paths = serde_json::Map::new();
    let mut extra: Vec<(String, Value)> = Vec::new();
    for rt in RESOURCES.iter().chain(custom.iter().map(|r| &**r)) {
        let gv = if rt.group.is_empty() {
            format!("api/{}", rt.version)
        } else {
            format!("apis/{}/{}", rt.group, rt.version)
        };
        let gvk = json!({"group": rt.group, "version": rt.version, "kind": rt.kind});
        let scope = if rt.namespaced { "/namespaces/{namespace}" } else { "" };
        let schema_name = schema_name(rt);
        let op = |verb: &str| {
            json!({"operationId": format!("{verb}{}", rt.kind), "x-kubernetes-action": verb,
                "x-kubernetes-group-version-kind": gvk,
                "consumes": ["application/json", "application/merge-patch+json",
                    "application/strategic-merge-patch+json", "application/apply-patch+yaml"],
                "produces": ["application/json", "application/yaml", "application/vnd.kubernetes.protobuf"],
                "parameters": [
                    {"name": "dryRun", "in": "query", "type": "string", "uniqueItems": true},
                    {"name": "fieldManager", "in": "query", "type": "string", "uniqueItems": true},
                    {"name": "fieldValidation", "in": "query", "type": "string", "uniqueItems": true}],
                "responses": {"200": {"description": "OK", "schema": {"$ref": format!("#/definitions/{schema_name}")}}}})
        };
        paths.insert(format!("/{gv}{scope}/{}/{{name}}", rt.plural), json!({"patch": op("patch"), "put": op("put")}));
        paths.insert(format!("/{gv}{scope}/{}", rt.plural), json!({"post": op("post")}));
        let mut schema = match rt.custom.as_ref().and_then(|c| c.schema.as_ref()) {
            Some(s) => {
                let mut s = serde_json::to_value(s).unwrap_or_default();
                with_object_fields(&mut s);
                s
            }
            None if builtin_schema(rt).is_some() => continue,
            None => json!({"type": "object", "description": format!("{} (schema served by the API server)", rt.kind)}),
        };
        schema["x-kubernetes-group-version-kind"] = json!([gvk]);
        crate::gnostic::to_v2(&mut schema);
        extra.push((schema_name, schema));
    }
    let defs = crate::openapi::definitions();
    let (title, version) = ("Kubernetes", format!("v{MAJOR}.{MINOR}.0"));
    match format {
        OpenApiV2::Protobuf => {
            let entries: Vec<Vec<u8>> = extra.iter().map(|(n, s)| crate::gnostic::definition(n, s)).collect();
            let all: Vec<&[u8]> =
                defs.iter().map(|d| d.v2_protobuf()).chain(entries.iter().map(Vec::as_slice)).collect();
            crate::gnostic::document(title, &version, &paths, &all)
        }
        OpenApiV2::Json => {
            let info = json!({"title": title, "version": version});
            let head = format!(r#"{{"swagger":"2.0","info":{info},"paths":{},"definitions":{{"#, Value::Object(paths));
            // One allocation of the final size (the document is ~1 MB).
            let defs_len: usize = defs.iter().map(|d| d.v2_json().len() + d.name.len() + 4).sum();
            let extra_len: usize = extra.iter().map(|(n, s)| n.len() + 4 + s.to_string().len()).sum();
            let mut out = String::with_capacity(head.len() + defs_len + extra_len + 2);
            out.push_str(&head);
            crate::openapi::write_v2_members(&mut out, defs);
            for (name, schema) in &extra {
                let _ = write!(out, ",{}:{schema}", Value::from(name.as_str()));
            }
            out.push_str("}}");
            out.into_bytes()
        }
    }
}

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

/// Adds what every object has to a CRD version's schema, as upstream
/// publishes it, so that `kubectl explain` lists them and kubectl's
/// client-side validation knows them: `apiVersion`, `kind` and `metadata`
/// (ObjectMeta by reference; `gnostic::to_v2` rewrites it for v2). They are
/// a built-in kind's own (a ConfigMap's), with their descriptions. A CRD's
/// own schema may give none of them.
fn with_object_fields(schema: &mut Value) {
    static FIELDS: OnceLock<Map<String, Value>> = OnceLock::new();
    let fields = FIELDS.get_or_init(|| {
        let name = crate::openapi::kind_schema("", "v1", "ConfigMap").expect("k8s-openapi carries ConfigMap");
        let def = crate::openapi::definitions().iter().find(|d| d.name == name).expect("a kind's schema is defined");
        let mut cm: Value = serde_json::from_str(def.json).expect("generated schemas are JSON");
        let Some(Value::Object(props)) = cm.get_mut("properties").map(Value::take) else { return Map::new() };
        props.into_iter().filter(|(k, _)| matches!(k.as_str(), "apiVersion" | "kind" | "metadata")).collect()
    });
    let Value::Object(top) = schema else { return };
    if let Value::Object(props) = top.entry("properties").or_insert_with(|| json!({})) {
        props.extend(fields.clone());
    }
}

/// A built-in kind's generated schema (`openapi`), if k8s-openapi has it.
fn builtin_schema(rt: &ResourceType) -> Option<&'static str> {
    if rt.custom.is_some() {
        return None;
    }
    crate::openapi::kind_schema(rt.group, rt.version, rt.kind)
}

fn schema_name(rt: &ResourceType) -> String {
    if let Some(name) = builtin_schema(rt) {
        return name.to_string();
    }
    if rt.custom.is_some() {
        // Upstream names a CRD's schema by its reversed group: com.example.v1.Widget.
        let group: Vec<&str> = rt.group.split('.').rev().collect();
        return format!("{}.{}.{}", group.join("."), rt.version, rt.kind);
    }
    let group = match rt.group {
        "" => "core",
        // Upstream's packages: the group's first label (`rbac`, `networking`…).
        g => g.split('.').next().unwrap_or(g),
    };
    format!("io.k8s.api.{group}.{}.{}", rt.version, rt.kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_lists_short_names_categories_and_scale() {
        let apps = resource_list("apps", "v1", &[]).unwrap();
        let res = apps["resources"].as_array().unwrap();
        let dep = res.iter().find(|r| r["name"] == "deployments").unwrap();
        assert_eq!(dep["shortNames"], json!(["deploy"]));
        assert_eq!(dep["categories"], json!(["all"]));
        let scale = res.iter().find(|r| r["name"] == "deployments/scale").unwrap();
        assert_eq!((scale["group"].as_str(), scale["kind"].as_str()), (Some("autoscaling"), Some("Scale")));
        let core = resource_list("", "v1", &[]).unwrap();
        assert_eq!(core["groupVersion"], "v1");
        assert!(core["resources"].as_array().unwrap().iter().any(|r| r["name"] == "pods/binding"));
        assert!(resource_list("nope", "v1", &[]).is_none());
        assert_eq!(api_group_list(&[])["groups"][0]["preferredVersion"]["groupVersion"], "apps/v1");
    }

    #[test]
    fn aggregated_discovery_folds_subresources_into_their_resource() {
        let core = aggregated(true, "v2", &[]);
        assert_eq!(
            (core["kind"].as_str(), core["apiVersion"].as_str()),
            (Some("APIGroupDiscoveryList"), Some("apidiscovery.k8s.io/v2"))
        );
        let items = core["items"].as_array().unwrap();
        assert_eq!(items.len(), 1);
        assert!(items[0]["metadata"].get("name").is_none());
        let v1 = &items[0]["versions"][0];
        assert_eq!((v1["version"].as_str(), v1["freshness"].as_str()), (Some("v1"), Some("Current")));
        let pods = v1["resources"].as_array().unwrap().iter().find(|r| r["resource"] == "pods").unwrap();
        assert_eq!(pods["responseKind"], json!({"group": "", "version": "v1", "kind": "Pod"}));
        assert_eq!((pods["scope"].as_str(), pods["singularResource"].as_str()), (Some("Namespaced"), Some("pod")));
        assert_eq!((&pods["shortNames"], &pods["categories"]), (&json!(["po"]), &json!(["all"])));
        let subs: Vec<&str> =
            pods["subresources"].as_array().unwrap().iter().map(|s| s["subresource"].as_str().unwrap()).collect();
        assert_eq!(
            subs,
            ["status", "binding", "eviction", "ephemeralcontainers", "log", "exec", "attach", "portforward"]
        );
        let eviction = &pods["subresources"][2];
        assert_eq!(eviction["responseKind"], json!({"group": "policy", "version": "v1", "kind": "Eviction"}));
        assert_eq!(eviction["verbs"], json!(["create"]));
        assert!(!v1["resources"].as_array().unwrap().iter().any(|r| r["resource"].as_str().unwrap().contains('/')));

        let apis = aggregated(false, "v2beta1", &[]);
        assert_eq!(apis["apiVersion"], "apidiscovery.k8s.io/v2beta1");
        let apps = apis["items"].as_array().unwrap().iter().find(|g| g["metadata"]["name"] == "apps").unwrap();
        let deploy = apps["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "deployments")
            .unwrap();
        let scale = deploy["subresources"].as_array().unwrap().iter().find(|s| s["subresource"] == "scale").unwrap();
        assert_eq!(scale["responseKind"], json!({"group": "autoscaling", "version": "v1", "kind": "Scale"}));
        let nodes = aggregated(true, "v2", &[]);
        let node = nodes["items"][0]["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "nodes")
            .unwrap()
            .clone();
        assert_eq!(node["scope"], "Cluster");
        let authz =
            apis["items"].as_array().unwrap().iter().find(|g| g["metadata"]["name"] == AUTHORIZATION_GROUP).unwrap();
        assert_eq!(authz["versions"][0]["resources"].as_array().unwrap().len(), 4);
    }

    #[test]
    fn openapi_v2_carries_every_definition_and_kinds_operations() {
        let doc: Value = serde_json::from_slice(&openapi_v2(&[], OpenApiV2::Json)).unwrap();
        assert_eq!(doc["swagger"], "2.0");
        let defs = doc["definitions"].as_object().unwrap();
        assert!(defs.len() >= crate::openapi::definitions().len(), "{}", defs.len());
        let probe = &defs["io.k8s.api.core.v1.Container"]["properties"]["livenessProbe"];
        assert_eq!(probe["$ref"], "#/definitions/io.k8s.api.core.v1.Probe");
        assert!(probe["description"].as_str().unwrap().contains("Periodic probe"));
        assert_eq!(defs["io.k8s.api.apps.v1.Deployment"]["x-kubernetes-group-version-kind"][0]["kind"], "Deployment");
        let patch = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Deployment");
        assert!(patch["parameters"].as_array().unwrap().iter().any(|p| p["name"] == "fieldValidation"));
        // Nothing of v3's form is left.
        let text = doc.to_string();
        assert!(!text.contains("\"$ref\":\"#/components/") && !text.contains("\"allOf\":["));
        let pb = openapi_v2(&[], OpenApiV2::Protobuf);
        assert_eq!(&pb[..5], b"\x0a\x032.0");
        assert!(pb.len() > 500_000, "{}", pb.len());
    }

    #[test]
    fn openapi_v3_has_patch_with_field_validation() {
        let idx = openapi_v3_index(&[]);
        assert!(
            idx["paths"]["apis/apps/v1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .starts_with("/openapi/v3/apis/apps/v1?hash=")
        );
        let doc: Value = serde_json::from_str(&openapi_v3("apis/apps/v1", &[]).unwrap()).unwrap();
        let deployment = &doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(deployment["x-kubernetes-group-version-kind"][0]["kind"], "Deployment");
        assert!(doc["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"].is_object());
        let patch = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Deployment");
        assert!(patch["parameters"].as_array().unwrap().iter().any(|p| p["name"] == "fieldValidation"));
        let core: Value = serde_json::from_str(&openapi_v3("api/v1", &[]).unwrap()).unwrap();
        assert!(core["paths"]["/api/v1/nodes/{name}"].is_object());
        // Every built-in kind served has its full schema.
        let missing: Vec<&str> = RESOURCES.iter().filter(|rt| builtin_schema(rt).is_none()).map(|rt| rt.kind).collect();
        assert!(missing.is_empty(), "no schema for {missing:?}");
    }

    #[test]
    fn a_crds_schemas_carry_what_every_object_has() {
        let mut crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget"},
                "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema":
                    {"type": "object", "properties": {"spec": {"type": "object"}}}}}]}});
        crate::crd::apply_defaults(&mut crd);
        crate::crd::set_status(&mut crd, &[], &json!({}), "2026-01-01T00:00:00Z");
        let custom = crate::crd::served_types(&crd);
        let v3: Value = serde_json::from_str(&openapi_v3("apis/example.com/v1", &custom).unwrap()).unwrap();
        let schemas = &v3["components"]["schemas"];
        let props = &schemas["com.example.v1.Widget"]["properties"];
        assert!(props["spec"].is_object(), "{props}");
        assert_eq!(props["apiVersion"]["type"], "string");
        assert!(props["kind"]["description"].as_str().unwrap().starts_with("Kind is a string value"));
        assert_eq!(
            props["metadata"]["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
        );
        // What it references is in the document.
        assert!(schemas["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]["properties"]["labels"].is_object());
        assert!(schemas["io.k8s.apimachinery.pkg.apis.meta.v1.ManagedFieldsEntry"].is_object());
        let v2: Value = serde_json::from_slice(&openapi_v2(&custom, OpenApiV2::Json)).unwrap();
        let props = &v2["definitions"]["com.example.v1.Widget"]["properties"];
        assert_eq!(props["metadata"]["$ref"], "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta");
        assert_eq!(props["apiVersion"]["type"], "string");
    }
}

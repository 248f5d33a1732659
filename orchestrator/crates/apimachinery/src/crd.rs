//! CustomResourceDefinitions (`apiextensions.k8s.io/v1`): their defaults
//! and validation as upstream words them, their status (accepted names,
//! `NamesAccepted` and `Established`), and the resource types an
//! established CRD serves, one per served version.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionNames,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use crate::resources::{CustomVersion, ResourceType};
use crate::schema::{self, Causes};
use crate::validation::{LABEL_MSG, is_dns1035_label, is_dns1123_label};

pub const KIND: &str = "CustomResourceDefinition";

/// The strings of served custom types, kept once each for the life of the
/// process: `ResourceType`'s names are `&'static str` (the static table's
/// call sites compare and pass them freely), and a CRD created, deleted
/// and created again reuses its strings, so this grows only with the
/// distinct names ever served.
static STRINGS: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
static LISTS: Mutex<BTreeSet<&'static [&'static str]>> = Mutex::new(BTreeSet::new());

fn intern(s: &str) -> &'static str {
    let mut set = STRINGS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(k) = set.get(s) {
        return k;
    }
    let k: &'static str = Box::leak(s.to_string().into_boxed_str());
    set.insert(k);
    k
}

fn intern_list(v: &[String]) -> &'static [&'static str] {
    let items: Vec<&'static str> = v.iter().map(|s| intern(s)).collect();
    let mut set = LISTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(k) = set.get(items.as_slice()) {
        return k;
    }
    let k: &'static [&'static str] = Box::leak(items.into_boxed_slice());
    set.insert(k);
    k
}

/// A custom object through its metadata's type (the rest is the schema's
/// to prune and check).
fn roundtrip(mut v: Value) -> Result<Value, String> {
    let Some(m) = v.as_object_mut() else { return Err("the object must be a JSON object".into()) };
    let meta: ObjectMeta =
        serde_json::from_value(m.get("metadata").cloned().unwrap_or(json!({}))).map_err(|e| e.to_string())?;
    m.insert("metadata".into(), serde_json::to_value(meta).map_err(|e| e.to_string())?);
    Ok(v)
}

fn typed(o: &Value) -> Option<CustomResourceDefinition> {
    serde_json::from_value(o.clone()).ok()
}

/// Upstream's defaults: `singular` (the kind in lower case), `listKind`,
/// `conversion.strategy: None`.
pub fn apply_defaults(o: &mut Value) {
    let Some(spec) = o.get_mut("spec").and_then(Value::as_object_mut) else { return };
    if let Some(names) = spec.get_mut("names").and_then(Value::as_object_mut) {
        let kind = names.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
        if !kind.is_empty() {
            names.entry("singular").or_insert_with(|| kind.to_lowercase().into());
            names.entry("listKind").or_insert_with(|| format!("{kind}List").into());
        }
    }
    spec.entry("conversion").or_insert_with(|| json!({"strategy": "None"}));
}

fn check_names(names: &Value, path: &str, causes: &mut Causes) {
    for f in ["plural", "singular"] {
        match names.get(f).and_then(Value::as_str) {
            None | Some("") if f == "plural" => causes.push((format!("{path}.{f}"), "Required value".into())),
            Some(v) if !v.is_empty() && !is_dns1123_label(v) => {
                causes.push((format!("{path}.{f}"), format!("Invalid value: \"{v}\": {LABEL_MSG}")))
            }
            _ => {}
        }
    }
    for f in ["kind", "listKind"] {
        match names.get(f).and_then(Value::as_str) {
            None | Some("") => causes.push((format!("{path}.{f}"), "Required value".into())),
            Some(v) if !is_dns1035_label(&v.to_lowercase()) => causes.push((
                format!("{path}.{f}"),
                format!("Invalid value: \"{v}\": may have mixed case, but should otherwise match: [a-z]([-a-z0-9]*[a-z0-9])?"),
            )),
            _ => {}
        }
    }
    for (n, s) in names.get("shortNames").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let v = s.as_str().unwrap_or_default();
        if !is_dns1123_label(v) {
            causes.push((format!("{path}.shortNames[{n}]"), format!("Invalid value: \"{v}\": {LABEL_MSG}")));
        }
    }
    for (n, s) in names.get("categories").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let v = s.as_str().unwrap_or_default();
        if !is_dns1123_label(v) {
            causes.push((format!("{path}.categories[{n}]"), format!("Invalid value: \"{v}\": {LABEL_MSG}")));
        }
    }
}

fn check_version(v: &Value, path: &str, causes: &mut Causes) {
    let name = v.get("name").and_then(Value::as_str).unwrap_or_default();
    if name.is_empty() {
        causes.push((format!("{path}.name"), "Required value".into()));
    } else if !is_dns1035_label(name) {
        causes.push((
            format!("{path}.name"),
            format!("Invalid value: \"{name}\": a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"),
        ));
    }
    let schema_path = format!("{path}.schema.openAPIV3Schema");
    match v.pointer("/schema/openAPIV3Schema") {
        None => causes.push((schema_path, "Required value: schemas are required".into())),
        Some(s) => match serde_json::from_value(s.clone()) {
            Ok(s) => causes.extend(schema::check_structural(&s, &schema_path)),
            Err(e) => causes.push((schema_path, format!("Invalid value: {e}"))),
        },
    }
    if let Some(scale) = v.pointer("/subresources/scale") {
        let sp = format!("{path}.subresources.scale");
        let under = |p: &str, roots: &[&str]| roots.iter().any(|r| p.starts_with(r) && p.len() > r.len());
        for (f, roots) in [
            ("specReplicasPath", &[".spec."][..]),
            ("statusReplicasPath", &[".status."][..]),
            ("labelSelectorPath", &[".spec.", ".status."][..]),
        ] {
            match scale.get(f).and_then(Value::as_str) {
                None if f != "labelSelectorPath" => causes.push((format!("{sp}.{f}"), "Required value".into())),
                Some(p) if !under(p, roots) => {
                    let what = match f {
                        "specReplicasPath" => "should be a json path under .spec",
                        "statusReplicasPath" => "should be a json path under .status",
                        _ => "should be a json path under either .spec or .status",
                    };
                    causes.push((format!("{sp}.{f}"), format!("Invalid value: \"{p}\": {what}")));
                }
                _ => {}
            }
        }
    }
    const COLUMN_TYPES: &[&str] = &["boolean", "date", "integer", "number", "string"];
    for (n, c) in v.get("additionalPrinterColumns").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let cp = format!("{path}.additionalPrinterColumns[{n}]");
        for f in ["name", "type", "jsonPath"] {
            if c.get(f).and_then(Value::as_str).is_none_or(str::is_empty) {
                causes.push((format!("{cp}.{f}"), "Required value".into()));
            }
        }
        if let Some(t) = c.get("type").and_then(Value::as_str).filter(|t| !t.is_empty() && !COLUMN_TYPES.contains(t)) {
            causes.push((
                format!("{cp}.type"),
                format!("Unsupported value: \"{t}\": supported values: \"boolean\", \"date\", \"integer\", \"number\", \"string\""),
            ));
        }
        if let Some(p) = c.get("jsonPath").and_then(Value::as_str).filter(|p| !p.is_empty())
            && column_value(p, &json!({})).is_none()
        {
            causes.push((format!("{cp}.jsonPath"), format!("Invalid value: \"{p}\": must be a simple json path")));
        }
    }
}

/// The checks of a CRD's spec and name (its status is the server's).
pub fn validate(o: &Value) -> Causes {
    let mut causes = Causes::new();
    let spec = o.get("spec").cloned().unwrap_or(json!({}));
    let group = spec.get("group").and_then(Value::as_str).unwrap_or_default();
    let plural = spec.pointer("/names/plural").and_then(Value::as_str).unwrap_or_default();
    let name = o.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    if name != format!("{plural}.{group}") {
        causes.push((
            "metadata.name".into(),
            format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    if group.is_empty() {
        causes.push(("spec.group".into(), "Required value".into()));
    } else if !group.contains('.') {
        causes.push((
            "spec.group".into(),
            format!("Invalid value: \"{group}\": should be a domain with at least one dot"),
        ));
    }
    match spec.get("scope").and_then(Value::as_str) {
        Some("Cluster" | "Namespaced") => {}
        None | Some("") => causes.push(("spec.scope".into(), "Required value".into())),
        Some(s) => causes.push((
            "spec.scope".into(),
            format!("Unsupported value: \"{s}\": supported values: \"Cluster\", \"Namespaced\""),
        )),
    }
    check_names(spec.get("names").unwrap_or(&json!({})), "spec.names", &mut causes);
    let versions = spec.get("versions").and_then(Value::as_array).cloned().unwrap_or_default();
    if versions.is_empty() {
        causes.push((
            "spec.versions".into(),
            "Invalid value: null: must have exactly one version marked as storage version".into(),
        ));
    } else {
        let storage = versions.iter().filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true)).count();
        if storage != 1 {
            let names: Vec<&str> = versions.iter().filter_map(|v| v.get("name").and_then(Value::as_str)).collect();
            causes.push((
                "spec.versions".into(),
                format!("Invalid value: {}: must have exactly one version marked as storage version", json!(names)),
            ));
        }
        let mut seen = BTreeSet::new();
        for (n, v) in versions.iter().enumerate() {
            let path = format!("spec.versions[{n}]");
            let name = v.get("name").and_then(Value::as_str).unwrap_or_default();
            if !name.is_empty() && !seen.insert(name) {
                causes.push((format!("{path}.name"), format!("Invalid value: \"{name}\": must be unique")));
            }
            check_version(v, &path, &mut causes);
        }
    }
    match spec.pointer("/conversion/strategy").and_then(Value::as_str) {
        None | Some("None") => {}
        Some(s) => causes.push((
            "spec.conversion.strategy".into(),
            format!(
                "Unsupported value: \"{s}\": supported values: \"None\" (this server calls no conversion webhooks)"
            ),
        )),
    }
    causes
}

/// The checks of a change: scope and group are fixed once created.
pub fn validate_update(old: &Value, new: &Value) -> Causes {
    let mut causes = Causes::new();
    for f in ["scope", "group"] {
        let (a, b) = (old.pointer(&format!("/spec/{f}")), new.pointer(&format!("/spec/{f}")));
        if a != b {
            let v = b.and_then(Value::as_str).unwrap_or_default();
            causes.push((format!("spec.{f}"), format!("Invalid value: \"{v}\": field is immutable")));
        }
    }
    causes
}

fn condition(ty: &str, ok: bool, reason: &str, message: &str, previous: &Value, now: &str) -> Value {
    let status = if ok { "True" } else { "False" };
    let old = previous
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == ty));
    let since = match old {
        Some(c) if c["status"] == status => c["lastTransitionTime"].clone(),
        _ => now.into(),
    };
    json!({"type": ty, "status": status, "lastTransitionTime": since, "reason": reason, "message": message})
}

/// Sets the CRD's status as upstream's naming and establishing controllers
/// leave it: the names are accepted unless another CRD of the group uses
/// the kind or a short name; accepted names make it Established. `others`
/// are the other CRDs; `previous` the stored object (for transition times
/// and stored versions).
pub fn set_status(o: &mut Value, others: &[Value], previous: &Value, now: &str) {
    let name = o.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
    let group = o.pointer("/spec/group").cloned().unwrap_or_default();
    let names = o.pointer("/spec/names").cloned().unwrap_or(json!({}));
    let kind = names.get("kind").cloned().unwrap_or_default();
    let short: BTreeSet<String> =
        names["shortNames"].as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_string)).collect();
    let mut conflict = None;
    for other in others.iter().filter(|c| c["spec"]["group"] == group && c["metadata"]["name"] != name.as_str()) {
        let accepted = &other["status"]["acceptedNames"];
        if accepted["kind"] == kind {
            conflict = Some(("KindConflict", format!("{} is already in use", kind.as_str().unwrap_or_default())));
        }
        for s in accepted["shortNames"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            if short.contains(s) {
                conflict = Some(("ShortNamesConflict", format!("\"{s}\" is already in use")));
            }
        }
    }
    let accepted = match conflict {
        None => names.clone(),
        Some(_) => previous.pointer("/status/acceptedNames").cloned().unwrap_or(json!({"plural": "", "kind": ""})),
    };
    let established = conflict.is_none() || previous.pointer("/status/acceptedNames/kind").is_some();
    let names_cond = match &conflict {
        None => condition("NamesAccepted", true, "NoConflicts", "no conflicts found", previous, now),
        Some((reason, msg)) => condition("NamesAccepted", false, reason, msg, previous, now),
    };
    let est_cond = if established {
        condition("Established", true, "InitialNamesAccepted", "the initial names have been accepted", previous, now)
    } else {
        condition("Established", false, "NotAccepted", "not all names are accepted", previous, now)
    };
    let mut stored: BTreeSet<String> = previous
        .pointer("/status/storedVersions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    for v in o.pointer("/spec/versions").and_then(Value::as_array).into_iter().flatten() {
        if v["storage"] == true
            && let Some(n) = v["name"].as_str()
        {
            stored.insert(n.to_string());
        }
    }
    o["status"] = json!({"acceptedNames": accepted, "conditions": [names_cond, est_cond], "storedVersions": stored});
}

/// Whether the stored CRD serves its resources: Established and not being deleted.
fn established(o: &Value) -> bool {
    o.pointer("/metadata/deletionTimestamp").is_none()
        && o.pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Established" && c["status"] == "True"))
}

/// The resource types an established CRD serves, one per served version,
/// under its accepted names.
pub fn served_types(o: &Value) -> Vec<Arc<ResourceType>> {
    if !established(o) {
        return Vec::new();
    }
    let Some(crd) = typed(o) else { return Vec::new() };
    let names: CustomResourceDefinitionNames =
        crd.status.as_ref().and_then(|s| s.accepted_names.clone()).unwrap_or_else(|| crd.spec.names.clone());
    let crd_name = crd.metadata.name.clone().unwrap_or_default();
    crd.spec
        .versions
        .iter()
        .filter(|v| v.served)
        .map(|v| {
            let subs = v.subresources.as_ref();
            let subresources: &'static [&'static str] =
                match (subs.is_some_and(|s| s.status.is_some()), subs.is_some_and(|s| s.scale.is_some())) {
                    (true, true) => &["status", "scale"],
                    (true, false) => &["status"],
                    (false, true) => &["scale"],
                    (false, false) => &[],
                };
            Arc::new(ResourceType {
                group: intern(&crd.spec.group),
                version: intern(&v.name),
                kind: intern(&names.kind),
                plural: intern(&names.plural),
                singular: intern(names.singular.as_deref().unwrap_or_default()),
                namespaced: crd.spec.scope == "Namespaced",
                short_names: intern_list(names.short_names.as_deref().unwrap_or_default()),
                categories: intern_list(names.categories.as_deref().unwrap_or_default()),
                subresources,
                fields: &[],
                roundtrip,
                custom: Some(Arc::new(CustomVersion {
                    schema: v.schema.as_ref().and_then(|s| s.open_api_v3_schema.clone()),
                    columns: v.additional_printer_columns.clone().unwrap_or_default(),
                    scale: subs.and_then(|s| s.scale.clone()),
                    crd: crd_name.clone(),
                })),
            })
        })
        .collect()
}

/// The values an `additionalPrinterColumns` JSONPath (`.spec.replicas`,
/// `.status.conditions[?(@.type=="Ready")].status`) finds in `o`; `None`
/// when the path does not parse.
pub fn column_value<'v>(path: &str, o: &'v Value) -> Option<Vec<&'v Value>> {
    use jsonpath_rust::JsonPath as _;
    o.query(&format!("${path}")).ok()
}

/// Upstream's order of versions (kube-aware): GA before beta before
/// alpha, higher numbers first, then other names alphabetically.
pub fn version_priority(v: &str) -> (u8, i64, i64, String) {
    let parse = |rest: &str| -> Option<(u8, i64, i64)> {
        let (major, tail) = rest.split_at(rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len()));
        let major: i64 = major.parse().ok()?;
        if tail.is_empty() {
            return Some((0, -major, 0));
        }
        for (stage, prefix) in [(1, "beta"), (2, "alpha")] {
            if let Some(n) = tail.strip_prefix(prefix) {
                return Some((stage, -major, -n.parse::<i64>().ok()?));
            }
        }
        None
    };
    match v.strip_prefix('v').and_then(parse) {
        Some((stage, major, minor)) => (stage, major, minor, String::new()),
        None => (3, 0, 0, v.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd() -> Value {
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": KIND, "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"], "categories": ["all"]},
                "versions": [
                    {"name": "v1", "served": true, "storage": true,
                     "schema": {"openAPIV3Schema": {"type": "object"}},
                     "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}}},
                    {"name": "v1beta1", "served": true, "storage": false,
                     "schema": {"openAPIV3Schema": {"type": "object"}}}]}})
    }

    #[test]
    fn defaults_and_a_valid_crd() {
        let mut o = crd();
        apply_defaults(&mut o);
        assert_eq!(o["spec"]["names"]["singular"], "widget");
        assert_eq!(o["spec"]["names"]["listKind"], "WidgetList");
        assert_eq!(o["spec"]["conversion"]["strategy"], "None");
        assert_eq!(validate(&o), Causes::new());
    }

    #[test]
    fn invalid_crds_name_their_fields() {
        let mut o = crd();
        o["metadata"]["name"] = "gadgets.example.com".into();
        o["spec"]["scope"] = "Global".into();
        o["spec"]["versions"][1]["storage"] = true.into();
        o["spec"]["versions"][1]["name"] = "v1".into();
        o["spec"]["versions"][0]["schema"]["openAPIV3Schema"] = json!({"type": "object", "properties": {"spec": {}}});
        apply_defaults(&mut o);
        let fields: Vec<String> = validate(&o).into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            vec![
                "metadata.name",
                "spec.scope",
                "spec.versions",
                "spec.versions[0].schema.openAPIV3Schema.properties[spec].type",
                "spec.versions[1].name",
            ]
        );
        let mut o = crd();
        o["spec"]["versions"][0]["additionalPrinterColumns"] =
            json!([{"name": "R", "type": "float", "jsonPath": ".spec.r"}]);
        o["spec"]["versions"][0]["subresources"]["scale"]["specReplicasPath"] = ".status.x".into();
        o["spec"]["group"] = "local".into();
        o["metadata"]["name"] = "widgets.local".into();
        apply_defaults(&mut o);
        let causes = validate(&o);
        assert_eq!(
            causes[0],
            ("spec.group".into(), "Invalid value: \"local\": should be a domain with at least one dot".into())
        );
        assert_eq!(causes[1].0, "spec.versions[0].subresources.scale.specReplicasPath");
        assert_eq!(causes[2].0, "spec.versions[0].additionalPrinterColumns[0].type");
    }

    #[test]
    fn status_establishes_unless_names_conflict() {
        let mut o = crd();
        apply_defaults(&mut o);
        set_status(&mut o, &[], &json!({}), "2026-01-01T00:00:00Z");
        assert_eq!(o["status"]["conditions"][1]["type"], "Established");
        assert_eq!(o["status"]["conditions"][1]["status"], "True");
        assert_eq!(o["status"]["storedVersions"], json!(["v1"]));
        let types = served_types(&o);
        assert_eq!(types.iter().map(|t| t.version).collect::<Vec<_>>(), vec!["v1", "v1beta1"]);
        assert_eq!(types[0].subresources, &["status", "scale"]);
        assert_eq!(types[0].short_names, &["wd"]);
        assert_eq!(types[0].key(Some("d"), "a"), "/registry/example.com/widgets/d/a");
        let mut other = crd();
        other["metadata"]["name"] = "gizmos.example.com".into();
        other["spec"]["names"] = json!({"plural": "gizmos", "kind": "Gizmo", "shortNames": ["wd"]});
        set_status(&mut other, &[o.clone()], &json!({}), "2026-01-01T00:00:00Z");
        assert_eq!(other["status"]["conditions"][0]["reason"], "ShortNamesConflict");
        assert_eq!(other["status"]["conditions"][1]["status"], "False");
        assert!(served_types(&other).is_empty());
    }

    #[test]
    fn versions_sort_as_upstream() {
        let mut v = vec!["v1alpha1", "foo", "v2", "v1beta2", "v1", "v1beta1", "v10"];
        v.sort_by_key(|v| version_priority(v));
        assert_eq!(v, vec!["v10", "v2", "v1", "v1beta2", "v1beta1", "v1alpha1", "foo"]);
    }
}

//! Structural schemas of CustomResourceDefinitions (apiextensions'
//! `openAPIV3Schema`): the checks that make a schema structural, and, for
//! custom objects, pruning of unknown fields, defaulting and validation
//! with upstream's field paths and wording. A walker over k8s-openapi's
//! `JSONSchemaProps`, not a JSON Schema engine: structural schemas need
//! only the keywords below (upstream rejects the rest in structural
//! positions).

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use serde_json::Value;

/// (field path, message) pairs, as `ApiError::invalid` takes them.
pub type Causes = Vec<(String, String)>;

const TYPES: &[&str] = &["array", "boolean", "integer", "number", "object", "string"];

fn items(s: &JSONSchemaProps) -> Option<&JSONSchemaProps> {
    match &s.items {
        Some(JSONSchemaPropsOrArray::Schema(i)) => Some(i),
        _ => None,
    }
}

fn additional(s: &JSONSchemaProps) -> Option<&JSONSchemaProps> {
    match &s.additional_properties {
        Some(JSONSchemaPropsOrBool::Schema(a)) => Some(a),
        _ => None,
    }
}

fn preserves(s: &JSONSchemaProps) -> bool {
    s.x_kubernetes_preserve_unknown_fields == Some(true)
}

fn props(s: &JSONSchemaProps) -> impl Iterator<Item = (&String, &JSONSchemaProps)> {
    s.properties.iter().flat_map(BTreeMap::iter)
}

/// The checks that make `schema` (at `path`, e.g.
/// `spec.versions[0].schema.openAPIV3Schema`) a structural schema.
pub fn check_structural(schema: &JSONSchemaProps, path: &str) -> Causes {
    let mut causes = Causes::new();
    match schema.type_.as_deref() {
        Some("object") => {}
        Some(t) => causes.push((format!("{path}.type"), format!("Invalid value: \"{t}\": must be object at the root"))),
        None => causes.push((format!("{path}.type"), "Required value: must not be empty at the root".into())),
    }
    check_node(schema, path, true, &mut causes);
    causes
}

fn check_node(s: &JSONSchemaProps, path: &str, root: bool, causes: &mut Causes) {
    let int_or_string = s.x_kubernetes_int_or_string == Some(true);
    match s.type_.as_deref() {
        None | Some("") if !root && !int_or_string && !preserves(s) => causes
            .push((format!("{path}.type"), "Required value: must not be empty for specified object fields".into())),
        Some(t) if !t.is_empty() && !TYPES.contains(&t) => causes.push((
            format!("{path}.type"),
            format!(
                "Unsupported value: \"{t}\": supported values: {}",
                TYPES.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(", ")
            ),
        )),
        Some(t) if int_or_string && !t.is_empty() => causes.push((
            format!("{path}.type"),
            format!("Invalid value: \"{t}\": must be empty if x-kubernetes-int-or-string is true"),
        )),
        Some("array") if s.items.is_none() => {
            causes.push((format!("{path}.items"), "Required value: must be specified".into()))
        }
        _ => {}
    }
    if s.properties.is_some() && s.additional_properties.is_some() {
        causes.push((
            format!("{path}.additionalProperties"),
            "Forbidden: additionalProperties and properties are mutual exclusive".into(),
        ));
    }
    if matches!(s.items, Some(JSONSchemaPropsOrArray::Schemas(_))) {
        causes.push((format!("{path}.items"), "Forbidden: items must be a schema object and not an array".into()));
    }
    if let Some(p) = &s.pattern
        && let Err(e) = regex::Regex::new(p)
    {
        causes.push((format!("{path}.pattern"), format!("Invalid value: \"{p}\": {e}")));
    }
    if let Some(d) = &s.default {
        let mut errs = Causes::new();
        let mut v = d.0.clone();
        prune(s, &mut v, "", &mut Vec::new());
        validate_node(s, &v, "default", &mut errs);
        for (f, m) in errs {
            causes.push((format!("{path}.default"), format!("{}: {m}", f.trim_start_matches("default."))));
        }
    }
    for (k, p) in props(s) {
        check_node(p, &format!("{path}.properties[{k}]"), false, causes);
    }
    if let Some(i) = items(s) {
        check_node(i, &format!("{path}.items"), false, causes);
    }
    if let Some(a) = additional(s) {
        check_node(a, &format!("{path}.additionalProperties"), false, causes);
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

/// Removes the fields `schema` does not specify (keeping what
/// `x-kubernetes-preserve-unknown-fields` and `additionalProperties`
/// allow), recording their paths in `pruned`. At the root, `apiVersion`,
/// `kind` and `metadata` are always kept.
pub fn prune(schema: &JSONSchemaProps, v: &mut Value, path: &str, pruned: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            let fixed = path.is_empty();
            if let Some(a) = additional(schema) {
                for (k, child) in m.iter_mut() {
                    prune(a, child, &join(path, k), pruned);
                }
                return;
            }
            let allow_all = preserves(schema) || schema.additional_properties.is_some();
            m.retain(|k, _| {
                let keep = allow_all
                    || (fixed && matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
                    || schema.properties.as_ref().is_some_and(|p| p.contains_key(k));
                if !keep {
                    pruned.push(join(path, k));
                }
                keep
            });
            for (k, p) in props(schema) {
                if let Some(child) = m.get_mut(k) {
                    prune(p, child, &join(path, k), pruned);
                }
            }
        }
        Value::Array(a) => {
            if let Some(i) = items(schema) {
                for (n, child) in a.iter_mut().enumerate() {
                    prune(i, child, &format!("{path}[{n}]"), pruned);
                }
            }
        }
        _ => {}
    }
}

/// Fills `default`s of absent properties (and of the items and values
/// below them), as upstream does before validation.
pub fn default(schema: &JSONSchemaProps, v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, p) in props(schema) {
                if !m.contains_key(k)
                    && let Some(d) = &p.default
                {
                    m.insert(k.clone(), d.0.clone());
                }
                if let Some(child) = m.get_mut(k) {
                    default(p, child);
                }
            }
            if let Some(a) = additional(schema) {
                for child in m.values_mut() {
                    default(a, child);
                }
            }
        }
        Value::Array(a) => {
            if let Some(i) = items(schema) {
                a.iter_mut().for_each(|child| default(i, child));
            }
        }
        _ => {}
    }
}

/// Validates a custom object (its `metadata` is the registry's to check).
pub fn validate(schema: &JSONSchemaProps, o: &Value) -> Causes {
    let mut causes = Causes::new();
    let mut body = o.clone();
    if let Some(m) = body.as_object_mut() {
        m.remove("metadata");
        m.remove("apiVersion");
        m.remove("kind");
    }
    validate_node(schema, &body, "", &mut causes);
    causes
}

/// How upstream shows a value in a message: strings quoted, the rest as JSON.
fn shown(v: &Value) -> String {
    v.to_string()
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_matches(ty: &str, v: &Value) -> bool {
    match ty {
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        t => type_name(v) == t,
    }
}

/// `minItems`/`maxItems` (`what`: "items") or `minProperties`/`maxProperties`.
fn count_bounds(n: usize, (min, max): (Option<i64>, Option<i64>), field: &str, what: &str, causes: &mut Causes) {
    let n = n as i64;
    if let Some(min) = min.filter(|m| n < *m) {
        causes.push((field.into(), format!("Invalid value: {n}: {field} in body should have at least {min} {what}")));
    }
    if let Some(max) = max.filter(|m| n > *m) {
        causes.push((field.into(), format!("Too many: {n}: must have at most {max} items")));
    }
}

fn validate_node(s: &JSONSchemaProps, v: &Value, path: &str, causes: &mut Causes) {
    let field = if path.is_empty() { "<root>" } else { path };
    if v.is_null() {
        if s.nullable != Some(true) && s.type_.as_deref().is_some_and(|t| !t.is_empty()) {
            let t = s.type_.as_deref().unwrap_or_default();
            causes.push((
                field.into(),
                format!("Invalid value: \"null\": {field} in body must be of type {t}: \"null\""),
            ));
        }
        return;
    }
    if s.x_kubernetes_int_or_string == Some(true) {
        if !(v.is_i64() || v.is_u64() || v.is_string()) {
            causes.push((
                field.into(),
                format!(
                    "Invalid value: \"{}\": {field} in body must be of type integer,string: \"{}\"",
                    type_name(v),
                    type_name(v)
                ),
            ));
            return;
        }
    } else if let Some(t) = s.type_.as_deref().filter(|t| !t.is_empty())
        && !type_matches(t, v)
    {
        let tn = type_name(v);
        causes.push((field.into(), format!("Invalid value: \"{tn}\": {field} in body must be of type {t}: \"{tn}\"")));
        return;
    }
    if let Some(e) = &s.enum_
        && !e.iter().any(|x| x.0 == *v)
    {
        let list: Vec<String> = e.iter().map(|x| shown(&x.0)).collect();
        causes.push((field.into(), format!("Unsupported value: {}: supported values: {}", shown(v), list.join(", "))));
    }
    match v {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or_default();
            if let Some(min) = s.minimum {
                let excl = s.exclusive_minimum == Some(true);
                if x < min || (excl && x == min) {
                    let rel = if excl { "greater than" } else { "greater than or equal to" };
                    causes.push((field.into(), format!("Invalid value: {n}: {field} in body should be {rel} {min}")));
                }
            }
            if let Some(max) = s.maximum {
                let excl = s.exclusive_maximum == Some(true);
                if x > max || (excl && x == max) {
                    let rel = if excl { "less than" } else { "less than or equal to" };
                    causes.push((field.into(), format!("Invalid value: {n}: {field} in body should be {rel} {max}")));
                }
            }
            if let Some(m) = s.multiple_of.filter(|m| *m > 0.0)
                && (x / m).fract() != 0.0
            {
                causes.push((field.into(), format!("Invalid value: {n}: {field} in body should be a multiple of {m}")));
            }
        }
        Value::String(st) => {
            let len = st.chars().count() as i64;
            if let Some(min) = s.min_length
                && len < min
            {
                causes.push((
                    field.into(),
                    format!("Invalid value: \"{st}\": {field} in body should be at least {min} chars long"),
                ));
            }
            if let Some(max) = s.max_length
                && len > max
            {
                causes.push((field.into(), format!("Too long: may not be more than {max} bytes")));
            }
            if let Some(p) = &s.pattern
                && regex::Regex::new(p).is_ok_and(|re| !re.is_match(st))
            {
                causes.push((field.into(), format!("Invalid value: \"{st}\": {field} in body should match '{p}'")));
            }
        }
        Value::Array(a) => {
            count_bounds(a.len(), (s.min_items, s.max_items), field, "items", causes);
            if let Some(i) = items(s) {
                for (k, child) in a.iter().enumerate() {
                    validate_node(i, child, &format!("{path}[{k}]"), causes);
                }
            }
        }
        Value::Object(m) => {
            for r in s.required.iter().flatten() {
                if !m.contains_key(r) {
                    causes.push((join(path, r), "Required value".into()));
                }
            }
            count_bounds(m.len(), (s.min_properties, s.max_properties), field, "properties", causes);
            for (k, child) in m {
                let p = s.properties.as_ref().and_then(|p| p.get(k)).or_else(|| additional(s));
                if let Some(p) = p {
                    validate_node(p, child, &join(path, k), causes);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema(v: Value) -> JSONSchemaProps {
        serde_json::from_value(v).unwrap()
    }

    fn widget() -> JSONSchemaProps {
        schema(json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["size"], "properties": {
                "replicas": {"type": "integer", "minimum": 0, "maximum": 10, "default": 1},
                "size": {"type": "string", "enum": ["small", "large"]},
                "name": {"type": "string", "pattern": "^[a-z]+$", "minLength": 2, "maxLength": 5},
                "ports": {"type": "array", "maxItems": 2, "items": {"type": "object", "properties": {
                    "port": {"x-kubernetes-int-or-string": true}, "proto": {"type": "string", "default": "TCP"}}}},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "note": {"type": "string", "nullable": true}}},
            "status": {"type": "object", "properties": {"replicas": {"type": "integer"}}}}}))
    }

    #[test]
    fn prunes_unknown_fields_but_keeps_preserved_and_additional_ones() {
        let mut o = json!({"apiVersion": "x/v1", "kind": "W", "metadata": {"name": "a"}, "bogus": 1,
            "spec": {"size": "small", "extra": true, "labels": {"a": "b"}, "free": {"any": {"thing": 1}},
                "ports": [{"port": 80, "junk": 1}]}});
        let mut pruned = Vec::new();
        prune(&widget(), &mut o, "", &mut pruned);
        assert_eq!(pruned, vec!["bogus", "spec.extra", "spec.ports[0].junk"]);
        assert_eq!(o["spec"]["free"]["any"]["thing"], 1);
        assert_eq!(o["spec"]["labels"]["a"], "b");
        assert_eq!(o["metadata"]["name"], "a");
    }

    #[test]
    fn defaults_absent_fields_in_present_objects() {
        let mut o = json!({"spec": {"size": "small", "ports": [{"port": "http"}]}});
        default(&widget(), &mut o);
        assert_eq!(o["spec"]["replicas"], 1);
        assert_eq!(o["spec"]["ports"][0]["proto"], "TCP");
        assert!(o.get("status").is_none());
    }

    #[test]
    fn validation_names_the_field_as_upstream() {
        let causes = |spec: Value| validate(&widget(), &json!({"metadata": {"name": "x"}, "spec": spec}));
        assert_eq!(
            causes(json!({"size": "small", "replicas": "three"})),
            vec![(
                "spec.replicas".to_string(),
                "Invalid value: \"string\": spec.replicas in body must be of type integer: \"string\"".to_string()
            )]
        );
        assert_eq!(causes(json!({"replicas": 1})), vec![("spec.size".to_string(), "Required value".to_string())]);
        assert_eq!(
            causes(json!({"size": "huge"}))[0].1,
            "Unsupported value: \"huge\": supported values: \"small\", \"large\""
        );
        assert_eq!(
            causes(json!({"size": "small", "replicas": 11}))[0].1,
            "Invalid value: 11: spec.replicas in body should be less than or equal to 10"
        );
        assert_eq!(
            causes(json!({"size": "small", "replicas": -1}))[0].1,
            "Invalid value: -1: spec.replicas in body should be greater than or equal to 0"
        );
        assert_eq!(
            causes(json!({"size": "small", "name": "AB"}))[0].1,
            "Invalid value: \"AB\": spec.name in body should match '^[a-z]+$'"
        );
        assert_eq!(
            causes(json!({"size": "small", "name": "a"}))[0].1,
            "Invalid value: \"a\": spec.name in body should be at least 2 chars long"
        );
        assert_eq!(causes(json!({"size": "small", "name": "abcdef"}))[0].1, "Too long: may not be more than 5 bytes");
        assert_eq!(
            causes(json!({"size": "small", "ports": [{}, {}, {}]}))[0],
            ("spec.ports".to_string(), "Too many: 3: must have at most 2 items".to_string())
        );
        assert_eq!(causes(json!({"size": "small", "ports": [{"port": true}]}))[0].0, "spec.ports[0].port");
        assert!(causes(json!({"size": "small", "ports": [{"port": "http"}, {"port": 8080}]})).is_empty());
        assert_eq!(causes(json!({"size": "small", "labels": {"a": 1}}))[0].0, "spec.labels.a");
        assert!(causes(json!({"size": "small", "note": null})).is_empty());
        assert_eq!(causes(json!({"size": null}))[0].0, "spec.size");
    }

    #[test]
    fn structural_rules() {
        let p = "spec.versions[0].schema.openAPIV3Schema";
        assert!(check_structural(&widget(), p).is_empty());
        let bad = schema(json!({"type": "object", "properties": {
            "spec": {"properties": {"a": {"type": "strin"}}},
            "list": {"type": "array"},
            "both": {"type": "object", "properties": {"x": {"type": "string"}}, "additionalProperties": {"type": "string"}},
            "n": {"type": "integer", "default": "one"}}}));
        let causes = check_structural(&bad, p);
        let fields: Vec<&str> = causes.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "spec.versions[0].schema.openAPIV3Schema.properties[both].additionalProperties",
                "spec.versions[0].schema.openAPIV3Schema.properties[list].items",
                "spec.versions[0].schema.openAPIV3Schema.properties[n].default",
                "spec.versions[0].schema.openAPIV3Schema.properties[spec].type",
                "spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[a].type",
            ]
        );
        assert_eq!(causes[3].1, "Required value: must not be empty for specified object fields");
        assert_eq!(
            check_structural(&schema(json!({"type": "string"})), p)[0].1,
            "Invalid value: \"string\": must be object at the root"
        );
    }
}

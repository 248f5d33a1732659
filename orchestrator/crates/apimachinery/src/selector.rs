//! Label selectors (`a=b,c!=d,e in (f,g),h notin (i),j,!k`) and field
//! selectors (`spec.nodeName=n1,status.phase!=Failed`), parsed once and
//! matched against objects.

use std::collections::BTreeMap;

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

impl Requirement {
    /// A `matchExpressions` entry.
    fn of_expression(key: String, operator: Option<&str>, values: Vec<String>) -> Requirement {
        match operator {
            Some("In") => Requirement::In(key, values),
            Some("NotIn") => Requirement::NotIn(key, values),
            Some("Exists") => Requirement::Exists(key),
            Some("DoesNotExist") => Requirement::NotExists(key),
            // An unknown operator matches nothing, as upstream's conversion error does.
            _ => Requirement::In(key, vec![]),
        }
    }

    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        }
    }
}

/// A parsed label selector; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(pub Vec<Requirement>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unable to parse requirement: {0}")]
pub struct SelectorError(pub String);

/// Splits on commas that are not inside parentheses.
fn terms(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter().map(str::trim).filter(|t| !t.is_empty()).collect()
}

fn valid_key(k: &str) -> bool {
    !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

fn valid_value(v: &str) -> bool {
    v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn set(s: &str) -> Option<Vec<String>> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(inner.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect())
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<LabelSelector, SelectorError> {
        let mut reqs = Vec::new();
        for t in terms(s) {
            let err = || SelectorError(t.to_string());
            let req = if let Some(k) = t.strip_prefix('!') {
                Requirement::NotExists(k.trim().to_string())
            } else if let Some((k, v)) = t.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = t.split_once(" notin ") {
                Requirement::NotIn(k.trim().into(), set(v).ok_or_else(err)?)
            } else if let Some((k, v)) = t.split_once(" in ") {
                Requirement::In(k.trim().into(), set(v).ok_or_else(err)?)
            } else {
                Requirement::Exists(t.to_string())
            };
            let (key, values): (&str, Vec<&str>) = match &req {
                Requirement::Equals(k, v) | Requirement::NotEquals(k, v) => (k, vec![v]),
                Requirement::In(k, vs) | Requirement::NotIn(k, vs) => (k, vs.iter().map(String::as_str).collect()),
                Requirement::Exists(k) | Requirement::NotExists(k) => (k, vec![]),
            };
            if !valid_key(key) || !values.iter().all(|v| valid_value(v)) {
                return Err(err());
            }
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    /// From a `metav1.LabelSelector` (matchLabels + matchExpressions).
    /// A workload's `spec.selector`: a `LabelSelector`, but for a
    /// ReplicationController's plain map of labels.
    pub fn of_workload(kind: &str, sel: &Value) -> LabelSelector {
        if kind == "ReplicationController" {
            LabelSelector::from_json(&serde_json::json!({ "matchLabels": sel }))
        } else {
            LabelSelector::from_json(sel)
        }
    }

    pub fn from_json(sel: &Value) -> LabelSelector {
        let mut reqs = Vec::new();
        if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in m {
                reqs.push(Requirement::Equals(k.clone(), v.as_str().unwrap_or_default().to_string()));
            }
        }
        for e in sel.get("matchExpressions").and_then(Value::as_array).into_iter().flatten() {
            let key = e.get("key").and_then(Value::as_str).unwrap_or_default().to_string();
            let values: Vec<String> = e
                .get("values")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            reqs.push(Requirement::of_expression(key, e.get("operator").and_then(Value::as_str), values));
        }
        LabelSelector(reqs)
    }

    /// From a typed `metav1.LabelSelector`, as [`LabelSelector::from_json`].
    pub fn from_typed(sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector) -> LabelSelector {
        let labels = sel.match_labels.iter().flatten();
        let mut reqs: Vec<Requirement> = labels.map(|(k, v)| Requirement::Equals(k.clone(), v.clone())).collect();
        for e in sel.match_expressions.iter().flatten() {
            let values = e.values.clone().unwrap_or_default();
            reqs.push(Requirement::of_expression(e.key.clone(), Some(&e.operator), values));
        }
        LabelSelector(reqs)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| r.matches(labels))
    }

    /// Matches an object's `metadata.labels`.
    pub fn matches_object(&self, obj: &Value) -> bool {
        self.is_empty() || self.matches(&labels_of(obj))
    }
}

impl std::fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|r| match r {
                Requirement::Equals(k, v) => format!("{k}={v}"),
                Requirement::NotEquals(k, v) => format!("{k}!={v}"),
                Requirement::In(k, vs) => format!("{k} in ({})", vs.join(",")),
                Requirement::NotIn(k, vs) => format!("{k} notin ({})", vs.join(",")),
                Requirement::Exists(k) => k.clone(),
                Requirement::NotExists(k) => format!("!{k}"),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

pub fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
        .unwrap_or_default()
}

/// A parsed field selector: terms `path=value` / `path!=value`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(pub Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses and checks each field against `supported` (plus
    /// `metadata.name` and `metadata.namespace`, always allowed). An
    /// unsupported field is refused with upstream's words: a kind with
    /// fields of its own says `field label not supported`, one with only
    /// the metadata fields names those two.
    pub fn parse(s: &str, supported: &[&str]) -> Result<FieldSelector, SelectorError> {
        let mut out = Vec::new();
        for t in terms(s) {
            let (field, eq, value) = if let Some((f, v)) = t.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                (f, true, v)
            } else {
                return Err(SelectorError(format!("invalid selector: '{t}'; can't understand '{t}'")));
            };
            let field = field.trim();
            if !(field == "metadata.name" || field == "metadata.namespace" || supported.contains(&field)) {
                return Err(SelectorError(if supported.is_empty() {
                    format!("{field:?} is not a known field selector: only \"metadata.name\", \"metadata.namespace\"")
                } else {
                    format!("field label not supported: {field}")
                }));
            }
            out.push((field.to_string(), eq, value.trim().to_string()));
        }
        Ok(FieldSelector(out))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(field, eq, want)| {
            let got = field_value(obj, field);
            (got == *want) == *eq
        })
    }
}

/// Boolean fields upstream's field sets format with `strconv.FormatBool`:
/// absent (Go's zero value) reads "false".
const BOOL_FIELDS: &[&str] = &["spec.unschedulable", "spec.hostNetwork"];

/// The string form of a field as upstream's field sets (`GetAttrs`) give
/// it: a dotted path in the object ("" when absent, "false" for an absent
/// boolean), but for the fields upstream computes — a Job's
/// `status.successful` is its `status.succeeded` and a replica count is
/// "0" when absent (`strconv.Itoa` of Go's zero value); an Event's
/// `source` is `source.component`, else its reporting controller; a pod's
/// `status.podIPs` (and `status.podIP`) its first IP.
pub fn field_value(obj: &Value, field: &str) -> String {
    let string = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string();
    let count = |p: &str| obj.pointer(p).and_then(Value::as_i64).unwrap_or(0).to_string();
    match field {
        "status.successful" => return count("/status/succeeded"),
        "status.replicas" => return count("/status/replicas"),
        "source" => {
            let component = string("/source/component");
            return if component.is_empty() { string("/reportingComponent") } else { component };
        }
        "status.podIP" | "status.podIPs" => {
            let first = string("/status/podIPs/0/ip");
            return if first.is_empty() { string("/status/podIP") } else { first };
        }
        _ => {}
    }
    let mut v = obj;
    for part in field.split('.') {
        match v.get(part) {
            Some(next) => v = next,
            None if BOOL_FIELDS.contains(&field) => return "false".to_string(),
            None => return String::new(),
        }
    }
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn computed_fields_read_as_upstream_formats_them() {
        let job = json!({"status": {"succeeded": 2}});
        assert_eq!(field_value(&job, "status.successful"), "2");
        assert_eq!(field_value(&json!({}), "status.successful"), "0");
        assert_eq!(field_value(&json!({"spec": {"replicas": 3}}), "status.replicas"), "0");
        assert_eq!(
            field_value(&json!({"source": {"component": "kubelet"}, "reportingComponent": "x"}), "source"),
            "kubelet"
        );
        assert_eq!(field_value(&json!({"reportingComponent": "ctl"}), "source"), "ctl");
        assert_eq!(field_value(&json!({"spec": {}}), "spec.hostNetwork"), "false");
        let pod = json!({"status": {"podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]}});
        assert_eq!(
            (field_value(&pod, "status.podIP"), field_value(&pod, "status.podIPs")),
            ("10.0.0.1".into(), "10.0.0.1".into())
        );
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn label_selector_operators() {
        let s = LabelSelector::parse("app=web,tier!=db,env in (prod, staging),track notin (canary),release,!legacy")
            .unwrap();
        assert_eq!(s.0.len(), 6);
        assert!(s.matches(&labels(&[("app", "web"), ("env", "prod"), ("release", "1")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("env", "dev"), ("release", "1")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("env", "prod"), ("release", "1"), ("legacy", "y")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("env", "prod")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("env", "prod"), ("release", "1"), ("tier", "db")])));
        assert!(LabelSelector::parse("").unwrap().matches(&labels(&[])));
        assert!(LabelSelector::parse("a in b").is_err());
        assert!(LabelSelector::parse("a=b c").is_err());
        assert_eq!(s.to_string(), "app=web,tier!=db,env in (prod,staging),track notin (canary),release,!legacy");
    }

    #[test]
    fn label_selector_from_json() {
        let s = LabelSelector::from_json(&json!({"matchLabels": {"app": "a"},
            "matchExpressions": [{"key": "t", "operator": "NotIn", "values": ["x"]}]}));
        assert!(s.matches(&labels(&[("app", "a")])));
        assert!(!s.matches(&labels(&[("app", "a"), ("t", "x")])));
    }

    #[test]
    fn field_selector_with_not_equals_and_several_terms() {
        let pod = json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {"nodeName": "n1"},
            "status": {"phase": "Running"}});
        let ok = |s| FieldSelector::parse(s, &["spec.nodeName", "status.phase"]).unwrap().matches(&pod);
        assert!(ok("spec.nodeName=n1,status.phase!=Succeeded,status.phase!=Failed"));
        assert!(!ok("spec.nodeName=n1,status.phase!=Running"));
        assert!(ok("metadata.name==p"));
        assert!(ok("spec.nodeName!="));
        assert!(!ok("spec.nodeName="));
        let node = |spec: Value| json!({"metadata": {"name": "n"}, "spec": spec});
        let schedulable = |s, n: &Value| FieldSelector::parse(s, &["spec.unschedulable"]).unwrap().matches(n);
        assert!(schedulable("spec.unschedulable=false", &node(json!({}))));
        assert!(schedulable("spec.unschedulable!=true", &node(json!({}))));
        assert!(!schedulable("spec.unschedulable=true", &node(json!({}))));
        assert!(schedulable("spec.unschedulable=true", &node(json!({"unschedulable": true}))));
        assert!(!schedulable("spec.unschedulable=false", &node(json!({"unschedulable": true}))));
        assert_eq!(
            FieldSelector::parse("spec.bogus=1", &["spec.unschedulable"]).unwrap_err(),
            SelectorError("field label not supported: spec.bogus".into())
        );
        assert_eq!(
            FieldSelector::parse("foo.bar=baz", &[]).unwrap_err(),
            SelectorError(
                r#""foo.bar" is not a known field selector: only "metadata.name", "metadata.namespace""#.into()
            )
        );
    }
}

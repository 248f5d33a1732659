//! `events.k8s.io/v1` Events: stored as the core v1 Events they are
//! upstream (one object under `/registry/events/`, visible through both
//! APIs), converted on the way in and out — `note`↔`message`,
//! `regarding`↔`involvedObject`, `reportingController`↔`reportingComponent`
//! (or, for an Event a core client wrote with only a source,
//! `source.component`), `deprecatedSource`↔`source`, `deprecatedCount`,
//! `deprecatedFirstTimestamp`, `deprecatedLastTimestamp` ↔ `count`,
//! `firstTimestamp`, `lastTimestamp`; `series`, `eventTime`,
//! `reportingInstance`, `action`, `reason`, `type` and `related` are the
//! same in both — and validated on create and update as upstream's
//! events.k8s.io strategy does (an update may change only the series,
//! the note's… nothing but `series` and metadata: the rest is immutable,
//! with upstream's core field paths).

use serde_json::{Value, json};

use crate::resources::{EVENTS_GROUP, ResourceType};

pub const GROUP: &str = EVENTS_GROUP;

/// Whether `rt` is the events.k8s.io Event (stored as core Events).
pub fn serves(rt: &ResourceType) -> bool {
    rt.group == GROUP
}

/// (events.k8s.io/v1 field, core v1 field) of the fields that differ by name.
const RENAMED: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedCount", "count"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
];

fn rename(o: &mut Value, pairs: impl Iterator<Item = (&'static str, &'static str)>) {
    if let Some(m) = o.as_object_mut() {
        for (from, to) in pairs {
            if let Some(v) = m.remove(from) {
                m.insert(to.into(), v);
            }
        }
    }
}

/// An events.k8s.io/v1 Event as the core v1 Event it is stored as.
pub fn to_core(mut o: Value) -> Value {
    rename(&mut o, RENAMED.iter().copied());
    o["apiVersion"] = "v1".into();
    o
}

/// A stored core v1 Event as events.k8s.io/v1 reads it.
pub fn from_core(mut o: Value) -> Value {
    rename(&mut o, RENAMED.iter().map(|(a, b)| (*b, *a)));
    o["apiVersion"] = json!(format!("{GROUP}/v1"));
    let component = o.pointer("/deprecatedSource/component").and_then(Value::as_str).map(str::to_string);
    if o.get("reportingController").is_none_or(|v| v.as_str().is_none_or(str::is_empty))
        && let Some(c) = component.filter(|c| !c.is_empty())
    {
        o["reportingController"] = c.into();
    }
    o
}

fn text<'a>(o: &'a Value, field: &str) -> &'a str {
    o.get(field).and_then(Value::as_str).unwrap_or_default()
}

/// What upstream's events.k8s.io/v1 create validation refuses, with its
/// field paths (the events.k8s.io names).
pub fn validate_create(o: &Value) -> Vec<(String, String)> {
    let mut causes = Vec::new();
    let mut required = |field: &str| {
        if text(o, field).is_empty() {
            causes.push((field.to_string(), "Required value".to_string()));
        }
    };
    for field in ["eventTime", "reportingController", "reportingInstance", "action", "reason"] {
        required(field);
    }
    let ty = text(o, "type");
    if ty != "Normal" && ty != "Warning" {
        causes.push(("type".into(), format!("Invalid value: \"{ty}\": has invalid value: {ty}")));
    }
    let note = text(o, "note");
    if note.len() > 1024 {
        causes.push(("note".into(), "Too long: may not be more than 1024 bytes".into()));
    }
    for (field, max) in [("reportingController", 253), ("reportingInstance", 128), ("action", 128), ("reason", 128)] {
        if text(o, field).len() > max {
            causes.push((field.into(), format!("Too long: may not be more than {max} bytes")));
        }
    }
    if let Some(series) = o.get("series").filter(|s| !s.is_null()) {
        if series.get("count").and_then(Value::as_i64).unwrap_or(0) < 2 {
            causes.push(("series.count".into(), "Invalid value: should be at least 2".into()));
        }
        if text(series, "lastObservedTime").is_empty() {
            causes.push(("series.lastObservedTime".into(), "Required value".into()));
        }
    }
    causes
}

/// Whether two values of one field are the same, absent = null = zero.
fn same(a: Option<&Value>, b: Option<&Value>) -> bool {
    let norm = |v: Option<&Value>| match v {
        None | Some(Value::Null) => Value::Null,
        Some(Value::String(s)) if s.is_empty() => Value::Null,
        Some(Value::Number(n)) if n.as_f64() == Some(0.0) => Value::Null,
        Some(Value::Object(o)) if o.values().all(|v| v.is_null() || v == "") => Value::Null,
        Some(v) => v.clone(),
    };
    norm(a) == norm(b)
}

/// `eventTime` compared to the microsecond, as upstream tolerates clients
/// that truncate it.
fn same_micros(a: Option<&Value>, b: Option<&Value>) -> bool {
    let micros = |v: Option<&Value>| {
        let s = v.and_then(Value::as_str)?;
        let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
        Some(t.unix_timestamp_nanos() / 1000)
    };
    same(a, b) || micros(a).is_some_and(|m| Some(m) == micros(b))
}

/// What upstream's events.k8s.io/v1 update validation refuses: every
/// field but `series` (checked again when it changes) and metadata is
/// immutable. Both Events in their stored core form; the field paths are
/// upstream's (core names).
pub fn validate_update(new: &Value, old: &Value) -> Vec<(String, String)> {
    let mut causes = Vec::new();
    if !same(new.get("series"), old.get("series"))
        && let Some(series) = new.get("series").filter(|s| !s.is_null())
    {
        if series.get("count").and_then(Value::as_i64).unwrap_or(0) < 2 {
            causes.push(("series.count".into(), "Invalid value: should be at least 2".into()));
        }
        if text(series, "lastObservedTime").is_empty() {
            causes.push(("series.lastObservedTime".into(), "Required value".into()));
        }
    }
    let fields = [
        ("involvedObject", "involvedObject"),
        ("reason", "reason"),
        ("message", "message"),
        ("source", "source"),
        ("firstTimestamp", "firstTimestamp"),
        ("lastTimestamp", "lastTimestamp"),
        ("count", "count"),
        ("type", "type"),
        ("eventTime", "eventTime"),
        ("action", "action"),
        ("related", "related"),
        ("reportingComponent", "reportingController"),
        ("reportingInstance", "reportingInstance"),
    ];
    for (field, path) in fields {
        let (a, b) = (new.get(field), old.get(field));
        let unchanged = match field {
            "eventTime" => same_micros(a, b),
            // An Event a core client wrote names its reporter only in
            // `source`: events.k8s.io reads it from there (`from_core`).
            "reportingComponent" => same(a, b) || same(b, None),
            _ => same(a, b),
        };
        if !unchanged {
            causes.push((path.to_string(), "Invalid value: field is immutable".to_string()));
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversion_round_trips_and_fills_the_reporting_controller() {
        let v1 = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"},
            "regarding": {"kind": "Pod", "name": "p"}, "note": "pulled", "reason": "Pulled", "action": "Pull",
            "reportingController": "ctl", "reportingInstance": "ctl-1", "eventTime": "2026-01-01T00:00:00.000000Z",
            "deprecatedCount": 3, "series": {"count": 2, "lastObservedTime": "2026-01-01T00:00:01.000000Z"}, "type": "Normal"});
        let core = to_core(v1.clone());
        assert_eq!((core["apiVersion"].as_str(), core["message"].as_str()), (Some("v1"), Some("pulled")));
        assert_eq!(
            (core["involvedObject"]["name"].as_str(), core["reportingComponent"].as_str()),
            (Some("p"), Some("ctl"))
        );
        assert_eq!(core["count"], 3);
        assert_eq!(from_core(core), v1);
        let old = json!({"apiVersion": "v1", "kind": "Event", "source": {"component": "kubelet"}, "count": 1});
        let read = from_core(old);
        assert_eq!(
            (read["reportingController"].as_str(), read["deprecatedCount"].as_i64()),
            (Some("kubelet"), Some(1))
        );
        assert!(validate_create(&v1).is_empty());
        let fields: Vec<String> = validate_create(&json!({"type": "Normal"})).into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["eventTime", "reportingController", "reportingInstance", "action", "reason"]);

        // Updates: only the series (and metadata) may change.
        let stored = to_core(v1.clone());
        let mut next = v1.clone();
        next["series"] = json!({"count": 3, "lastObservedTime": "2026-01-01T00:00:02.000000Z"});
        next["metadata"]["labels"] = json!({"a": "b"});
        next["eventTime"] = json!("2026-01-01T00:00:00.000000400Z");
        assert!(validate_update(&to_core(next.clone()), &stored).is_empty());
        next["note"] = json!("changed");
        next["regarding"]["name"] = json!("q");
        next["series"]["count"] = json!(1);
        let causes = validate_update(&to_core(next), &stored);
        let fields: Vec<&str> = causes.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["series.count", "involvedObject", "message"]);
        assert_eq!(causes[1].1, "Invalid value: field is immutable");
    }
}

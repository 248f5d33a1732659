//! The `pods/ephemeralcontainers` subresource, as upstream's
//! `EphemeralContainersStrategy`: a write through it changes only
//! `spec.ephemeralContainers` of the stored pod (whatever else the body
//! says), and only by adding containers; each new one is checked as
//! upstream checks ephemeral containers (unique names across the pod, no
//! ports, probes, lifecycle or resources, a target that is a container).
//! A pod is never created with ephemeral containers. The writes
//! themselves are `patch::update_ephemeral` and `patch::patch`.

use serde_json::{Value, json};

use crate::errors::ApiError;
use crate::resources::ResourceType;
use crate::validation::{Causes, LABEL_MSG, default_pod_spec, is_dns1123_label};

/// Container fields an ephemeral container may not set (upstream's allow list, turned round).
const FORBIDDEN: &[&str] =
    &["ports", "livenessProbe", "readinessProbe", "startupProbe", "lifecycle", "resources", "resizePolicy"];

fn list<'a>(pod: &'a Value, field: &str) -> &'a [Value] {
    pod.pointer(&format!("/spec/{field}")).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

fn name_of(c: &Value) -> &str {
    c.get("name").and_then(Value::as_str).unwrap_or_default()
}

/// A new pod may not carry ephemeral containers (upstream's message).
pub fn check_create(pod: &Value, causes: &mut Causes) {
    if !list(pod, "ephemeralContainers").is_empty() {
        causes.push(("spec.ephemeralContainers".into(), "Forbidden: cannot be set on create".into()));
    }
}

/// Whether a field holds something (upstream compares with the zero value; `resources: {}` is zero).
fn set(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Object(m) => m.values().any(set),
        Value::Array(a) => !a.is_empty(),
        _ => true,
    }
}

/// The causes refusing `new`'s ephemeral containers as an update of `old`'s.
pub fn validate_update(old: &Value, new: &Value) -> Causes {
    let mut causes = Causes::new();
    let (before, after) = (list(old, "ephemeralContainers"), list(new, "ephemeralContainers"));
    for (i, o) in before.iter().enumerate() {
        match after.iter().find(|n| name_of(n) == name_of(o)) {
            None => causes.push((
                "spec.ephemeralContainers".into(),
                format!("Forbidden: existing ephemeral containers \"{}\" may not be removed\n", name_of(o)),
            )),
            Some(n) if n != o => causes.push((
                format!("spec.ephemeralContainers[{i}]"),
                format!("Forbidden: existing ephemeral containers \"{}\" may not be changed\n", name_of(o)),
            )),
            Some(_) => {}
        }
    }
    let mut names: Vec<&str> = list(old, "containers").iter().chain(list(old, "initContainers")).map(name_of).collect();
    let targets = names.clone();
    for (i, c) in after.iter().enumerate() {
        let at = format!("spec.ephemeralContainers[{i}]");
        let name = name_of(c);
        if name.is_empty() {
            causes.push((format!("{at}.name"), "Required value".into()));
        } else if !is_dns1123_label(name) {
            causes.push((format!("{at}.name"), format!("Invalid value: \"{name}\": {LABEL_MSG}")));
        } else if names.contains(&name) {
            causes.push((format!("{at}.name"), format!("Duplicate value: \"{name}\"")));
        } else {
            names.push(name);
        }
        if before.iter().any(|o| o == c) {
            continue;
        }
        if c.get("image").and_then(Value::as_str).is_none_or(|s| s.trim().is_empty()) {
            causes.push((format!("{at}.image"), "Required value".into()));
        }
        for f in FORBIDDEN {
            if c.get(*f).is_some_and(set) {
                causes.push((format!("{at}.{f}"), "Forbidden: cannot be set for an Ephemeral Container".into()));
            }
        }
        if let Some(t) = c.get("targetContainerName").and_then(Value::as_str).filter(|t| !t.is_empty())
            && !targets.contains(&t)
        {
            causes.push((format!("{at}.targetContainerName"), format!("Not found: \"{t}\"")));
        }
    }
    causes
}

/// Takes `new`'s ephemeral containers into the stored pod `cur` once they
/// pass; whether that changed it. The rest of `new` is ignored.
pub fn take(rt: &ResourceType, name: &str, cur: &mut Value, new: &Value) -> Result<bool, ApiError> {
    // Defaulted first, as upstream: an existing container sent back without its defaults is unchanged.
    let mut spec = json!({"ephemeralContainers": list(new, "ephemeralContainers")});
    default_pod_spec(&mut spec);
    let new = &json!({"spec": spec});
    let causes = validate_update(cur, new);
    if !causes.is_empty() {
        return Err(ApiError::invalid(rt, name, causes));
    }
    let after = list(new, "ephemeralContainers").to_vec();
    if after.as_slice() == list(cur, "ephemeralContainers") {
        return Ok(false);
    }
    cur["spec"]["ephemeralContainers"] = json!(after);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ephemeral: Value) -> Value {
        json!({"spec": {"containers": [{"name": "c", "image": "busybox"}], "ephemeralContainers": ephemeral}})
    }

    #[test]
    fn only_valid_additions_pass() {
        let debugger = json!({"name": "debugger", "image": "busybox", "targetContainerName": "c", "resources": {}});
        let old = pod(json!([]));
        assert_eq!(validate_update(&old, &pod(json!([debugger]))), Causes::new());
        let bad = json!([
            {"name": "c", "image": "busybox"},
            {"name": "x", "image": "", "ports": [{"containerPort": 80}], "readinessProbe": {"exec": {"command": ["true"]}},
             "resources": {"limits": {"cpu": "1"}}, "targetContainerName": "nope"},
            {"name": "Bad", "image": "busybox"},
        ]);
        let causes = validate_update(&old, &pod(bad));
        let want: Vec<(&str, &str)> = vec![
            ("spec.ephemeralContainers[0].name", "Duplicate value: \"c\""),
            ("spec.ephemeralContainers[1].image", "Required value"),
            ("spec.ephemeralContainers[1].ports", "Forbidden: cannot be set for an Ephemeral Container"),
            ("spec.ephemeralContainers[1].readinessProbe", "Forbidden: cannot be set for an Ephemeral Container"),
            ("spec.ephemeralContainers[1].resources", "Forbidden: cannot be set for an Ephemeral Container"),
            ("spec.ephemeralContainers[1].targetContainerName", "Not found: \"nope\""),
        ];
        let got: Vec<(&str, &str)> = causes.iter().map(|(f, m)| (f.as_str(), m.as_str())).take(want.len()).collect();
        assert_eq!(got, want);
        assert!(causes[want.len()].0 == "spec.ephemeralContainers[2].name", "{causes:?}");
        // Existing ones may be neither changed nor removed.
        let with = pod(json!([debugger]));
        let changed = pod(json!([{"name": "debugger", "image": "other"}]));
        assert_eq!(
            validate_update(&with, &changed),
            vec![(
                "spec.ephemeralContainers[0]".to_string(),
                "Forbidden: existing ephemeral containers \"debugger\" may not be changed\n".to_string()
            )]
        );
        assert_eq!(validate_update(&with, &pod(json!([])))[0].0, "spec.ephemeralContainers");
        let mut causes = Causes::new();
        check_create(&with, &mut causes);
        assert_eq!(causes, vec![("spec.ephemeralContainers".into(), "Forbidden: cannot be set on create".into())]);
    }
}

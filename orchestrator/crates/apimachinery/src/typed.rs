//! Typed changes to stored objects. k8s-openapi types drop fields they do
//! not know, so a stored object is never replaced by its typed re-encoding:
//! [`change_as`] compares the typed encoding before and after a change and
//! writes only that difference into the stored JSON, which keeps every
//! field the type does not know (one a newer schema or client stored).

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::errors::ApiError;

/// Decodes stored JSON as `K`; `what` names the object in the error.
pub fn decode<K: DeserializeOwned>(o: Value, what: &str) -> Result<K, ApiError> {
    serde_json::from_value(o).map_err(|e| ApiError::internal(format!("decoding the stored {what}: {e}")))
}

/// Encodes a typed object or part as JSON; `what` names it in the error.
pub fn encode<K: Serialize>(o: &K, what: &str) -> Result<Value, ApiError> {
    serde_json::to_value(o).map_err(|e| ApiError::internal(format!("encoding {what}: {e}")))
}

/// Changes `stored` as a `K`: `f` edits the typed value and says whether it
/// changed anything; what it changed is written into `stored`, nothing else.
pub fn change_as<K: DeserializeOwned + Serialize>(
    stored: &mut Value,
    what: &str,
    f: impl FnOnce(&mut K) -> bool,
) -> Result<bool, ApiError> {
    let mut typed: K = decode(stored.clone(), what)?;
    let before = encode(&typed, what)?;
    if !f(&mut typed) {
        return Ok(false);
    }
    carry(stored, &before, &encode(&typed, what)?);
    Ok(true)
}

/// Applies the difference from `before` to `after` (two encodings of one
/// type) to `stored`: removed keys go, changed values are replaced, and
/// objects and same-length lists are followed down so that what only
/// `stored` has stays.
fn carry(stored: &mut Value, before: &Value, after: &Value) {
    if before == after {
        return;
    }
    match (stored, before, after) {
        (Value::Object(s), Value::Object(b), Value::Object(a)) => {
            for k in b.keys().filter(|k| !a.contains_key(*k)) {
                s.remove(k);
            }
            for (k, av) in a {
                match (s.get_mut(k), b.get(k)) {
                    (Some(sv), Some(bv)) => carry(sv, bv, av),
                    _ => {
                        s.insert(k.clone(), av.clone());
                    }
                }
            }
        }
        (Value::Array(s), Value::Array(b), Value::Array(a)) if s.len() == b.len() && b.len() == a.len() => {
            for ((sv, bv), av) in s.iter_mut().zip(b).zip(a) {
                carry(sv, bv, av);
            }
        }
        (s, _, a) => *s = a.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;
    use serde_json::json;

    #[test]
    fn a_typed_change_keeps_fields_the_type_does_not_know() {
        let mut stored = json!({"metadata": {"name": "d", "futureField": 1, "annotations": {"a": "1"}},
            "spec": {"replicas": 1, "selector": {}, "template": {"spec": {"containers": [{"name": "c", "newKnob": true}]}}},
            "futureTopLevel": {"x": 1}});
        let changed = change_as(&mut stored, "Deployment d", |d: &mut Deployment| {
            let spec = d.spec.as_mut().expect("a spec");
            spec.replicas = Some(3);
            spec.template.spec.as_mut().expect("a pod spec").containers[0].image = Some("busybox".into());
            d.metadata.annotations = None;
            true
        })
        .unwrap();
        assert!(changed);
        assert_eq!(stored["spec"]["replicas"], 3);
        assert_eq!(stored["spec"]["template"]["spec"]["containers"][0]["image"], "busybox");
        assert_eq!(stored["spec"]["template"]["spec"]["containers"][0]["newKnob"], true);
        assert_eq!(stored["metadata"]["futureField"], 1);
        assert_eq!(stored["futureTopLevel"], json!({"x": 1}));
        assert!(stored["metadata"].get("annotations").is_none(), "a field the change removed goes");
    }

    #[test]
    fn no_change_leaves_the_stored_object_alone_and_bad_json_is_named() {
        let mut stored = json!({"metadata": {"name": "d", "futureField": 1}});
        let before = stored.clone();
        assert!(!change_as(&mut stored, "Deployment d", |_: &mut Deployment| false).unwrap());
        assert_eq!(stored, before);
        let mut bad = json!({"metadata": {"name": 5}});
        let e = change_as(&mut bad, "Deployment d", |_: &mut Deployment| true).unwrap_err();
        assert!(e.message.contains("decoding the stored Deployment d"), "{}", e.message);
    }
}

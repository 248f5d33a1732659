//! Typed changes to stored objects. k8s-openapi types drop fields they do
//! not know, so a stored object is never replaced by its typed re-encoding:
//! [`change_as`] compares the typed encoding before and after a change and
//! writes only that difference into the stored JSON, which keeps every
//! field the type does not know (one a newer schema or client stored).

use k8s_openapi::Metadata;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::errors::ApiError;
use crate::registry::Registry;
use crate::resources::ResourceType;

/// Every stored object of a kind (in `ns`, or all), decoded from the
/// stored bytes straight into its type: no JSON tree in between, which a
/// controller pass over every pod would pay for twice.
pub fn list<K: DeserializeOwned + Metadata<Ty = ObjectMeta>>(
    reg: &Registry,
    rt: &ResourceType,
    ns: Option<&str>,
) -> Result<Vec<K>, ApiError> {
    let prefix = rt.prefix(ns);
    let (mut items, mut start, mut revision) = (Vec::new(), None, None);
    loop {
        let page =
            reg.store.list(&prefix, start.as_deref(), 0, revision).map_err(|e| ApiError::from_store(rt, "", e))?;
        revision = Some(page.revision);
        for kv in &page.items {
            let mut o: K = serde_json::from_slice(&kv.value)
                .map_err(|e| ApiError::internal(format!("decoding the stored {} at {}: {e}", rt.kind, kv.key)))?;
            o.metadata_mut().resource_version = Some(kv.mod_revision.to_string());
            items.push(o);
        }
        if !page.more {
            return Ok(items);
        }
        start = page.items.last().map(|kv| kv.key.clone());
    }
}

/// One stored object decoded as `K`, as [`Registry::get`] reads it
/// (resourceVersion set); a missing object is the registry's 404.
pub fn get<K: DeserializeOwned>(
    reg: &Registry,
    rt: &ResourceType,
    ns: Option<&str>,
    name: &str,
) -> Result<K, ApiError> {
    decode(reg.get(rt, ns, name)?, &format!("{} {name}", rt.kind))
}

/// A request's object (of `rt`) decoded as `K`, refused as the registry
/// refuses a body its type cannot hold: upstream decodes before admission.
pub fn from_body<K: DeserializeOwned>(rt: &ResourceType, o: &Value) -> Result<K, ApiError> {
    <K as serde::Deserialize>::deserialize(o).map_err(|e| crate::errors::cannot_handle(rt, e))
}

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
    fn a_typed_list_is_the_list_decoded() {
        use crate::registry::{ListOptions, WriteOptions};
        use crate::resources::by_kind;
        use k8s_openapi::api::core::v1::ConfigMap;
        use orchestrator_store::{Durability, SqliteStore};
        let d = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&d.path().join("db"), Durability::Normal).unwrap();
        let reg = Registry::new(std::sync::Arc::new(store));
        reg.bootstrap("127.0.0.1:6443").unwrap();
        let cm = by_kind("ConfigMap").unwrap();
        for (ns, name) in [("default", "a"), ("kube-system", "b"), ("default", "c")] {
            let o = json!({"metadata": {"name": name}, "data": {"k": name}});
            reg.create(cm, Some(ns), o, &WriteOptions::default()).unwrap();
        }
        for ns in [None, Some("default")] {
            let values = reg.list(cm, ns, &ListOptions::default()).unwrap().items;
            let want: Vec<ConfigMap> = values.into_iter().map(|v| serde_json::from_value(v).unwrap()).collect();
            assert_eq!(list::<ConfigMap>(&reg, cm, ns).unwrap(), want);
        }
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

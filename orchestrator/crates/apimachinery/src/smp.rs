//! Strategic merge patch over `serde_json::Value`, with upstream's merge
//! keys for the built-in kinds: their schemas' `x-kubernetes-patch-*`
//! markers (`openapi::patch_strategy`, the same the OpenAPI documents give
//! kubectl); for other kinds, name rules (KUBERNETES-API.md lists them).
//! Lists of objects merge by a key, primitive lists marked `merge`
//! (`finalizers`) merge as a set, every other list is replaced. Directives: `$patch` (delete/replace/merge), `$setElementOrder/`,
//! `$retainKeys`, `$deleteFromPrimitiveList/`; `null` deletes a field.

use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatchError {
    #[error("invalid patch: {0}")]
    Invalid(String),
}

/// How a list at a path merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// Objects matched by this key.
    MergeKey(&'static str),
    /// Primitive values, merged as a set.
    Set,
    Replace,
}

/// The strategy for the list at `path` (field names only) in an object of `kind`.
pub fn list_strategy(kind: &str, path: &[&str]) -> ListStrategy {
    // A built-in kind: upstream's markers in its schema (`openapi`).
    if let Some((strategy, key)) = crate::openapi::patch_strategy(kind, path) {
        return match (strategy.split(',').any(|s| s == "merge"), key) {
            (false, _) => ListStrategy::Replace,
            (true, "") => ListStrategy::Set,
            (true, k) => ListStrategy::MergeKey(k),
        };
    }
    let Some((last, parent)) = path.split_last() else { return ListStrategy::Replace };
    let in_container =
        parent.last().is_some_and(|p| matches!(*p, "containers" | "initContainers" | "ephemeralContainers"));
    match *last {
        "containers" | "initContainers" | "ephemeralContainers" | "imagePullSecrets" | "volumes" => {
            ListStrategy::MergeKey("name")
        }
        "env" if in_container => ListStrategy::MergeKey("name"),
        "ports" if in_container => ListStrategy::MergeKey("containerPort"),
        "ports" if kind == "Service" && parent == ["spec"] => ListStrategy::MergeKey("port"),
        "volumeMounts" if in_container => ListStrategy::MergeKey("mountPath"),
        "volumeDevices" if in_container => ListStrategy::MergeKey("devicePath"),
        "hostAliases" | "podIPs" | "hostIPs" => ListStrategy::MergeKey("ip"),
        "topologySpreadConstraints" => ListStrategy::MergeKey("topologyKey"),
        "conditions" => ListStrategy::MergeKey("type"),
        "addresses" if kind == "Node" && parent == ["status"] => ListStrategy::MergeKey("type"),
        "ownerReferences" if parent == ["metadata"] => ListStrategy::MergeKey("uid"),
        "finalizers" if parent == ["metadata"] => ListStrategy::Set,
        _ => ListStrategy::Replace,
    }
}

/// Applies `patch` to `target` for an object of `kind`.
pub fn apply(kind: &str, target: &Value, patch: &Value) -> Result<Value, PatchError> {
    let Value::Object(p) = patch else { return Err(PatchError::Invalid("the patch must be a JSON object".into())) };
    let base = target.as_object().cloned().unwrap_or_default();
    Ok(merge_map(kind, &mut Vec::new(), base, p)?.map_or(Value::Null, Value::Object))
}

/// Merges a patch map into a map; `None` means "delete this map".
fn merge_map<'a>(
    kind: &str,
    path: &mut Vec<&'a str>,
    mut base: Map<String, Value>,
    patch: &'a Map<String, Value>,
) -> Result<Option<Map<String, Value>>, PatchError> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("delete") => return Ok(None),
        Some("replace") => {
            let mut m = patch.clone();
            m.remove("$patch");
            return Ok(Some(m));
        }
        Some("merge") | None => {}
        Some(other) => return Err(PatchError::Invalid(format!("unknown $patch directive {other:?}"))),
    }
    for (k, v) in patch {
        if k == "$patch" || k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if k.starts_with("$deleteFromPrimitiveList/") {
            continue;
        }
        if v.is_null() {
            base.remove(k);
            continue;
        }
        path.push(k);
        let merged = match (base.remove(k), v) {
            (Some(Value::Object(b)), Value::Object(pm)) => merge_map(kind, path, b, pm)?.map(Value::Object),
            (None, Value::Object(pm)) => merge_map(kind, path, Map::new(), pm)?.map(Value::Object),
            (old, Value::Array(pl)) => {
                let old = match old {
                    Some(Value::Array(a)) => a,
                    _ => Vec::new(),
                };
                Some(Value::Array(merge_list(kind, path, old, pl)?))
            }
            (_, v) => Some(v.clone()),
        };
        path.pop();
        if let Some(m) = merged {
            base.insert(k.clone(), m);
        }
    }
    for (k, v) in patch {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let remove = v.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(list)) = base.get_mut(field) {
                list.retain(|x| !remove.contains(x));
            }
        }
    }
    for (k, order) in patch {
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            path.push(field);
            let strategy = list_strategy(kind, path);
            path.pop();
            if let (Some(Value::Array(list)), Some(order)) = (base.get_mut(field), order.as_array()) {
                reorder(list, order, strategy);
            }
        }
    }
    if let Some(keep) = patch.get("$retainKeys").and_then(Value::as_array) {
        base.retain(|k, _| keep.iter().any(|x| x.as_str() == Some(k)));
    }
    Ok(Some(base))
}

fn key_of<'v>(item: &'v Value, key: &str) -> Option<&'v Value> {
    item.get(key)
}

fn merge_list<'a>(
    kind: &str,
    path: &mut Vec<&'a str>,
    mut base: Vec<Value>,
    patch: &'a [Value],
) -> Result<Vec<Value>, PatchError> {
    let strategy = list_strategy(kind, path);
    // `[{"$patch": "replace"}, …]` replaces the list with the rest.
    if patch.iter().any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace")) {
        return Ok(patch.iter().filter(|i| i.get("$patch").is_none()).cloned().collect());
    }
    match strategy {
        ListStrategy::Replace => Ok(patch.to_vec()),
        ListStrategy::Set => {
            for v in patch {
                if !base.contains(v) {
                    base.push(v.clone());
                }
            }
            Ok(base)
        }
        ListStrategy::MergeKey(key) => {
            for item in patch {
                let Some(pm) = item.as_object() else {
                    return Err(PatchError::Invalid(format!("{}: expected objects in the list", path.join("."))));
                };
                let Some(kv) = key_of(item, key) else {
                    return Err(PatchError::Invalid(format!(
                        "{}: an element has no merge key {key:?}",
                        path.join(".")
                    )));
                };
                let pos = base.iter().position(|b| key_of(b, key) == Some(kv));
                let delete = pm.get("$patch").and_then(Value::as_str) == Some("delete");
                match (pos, delete) {
                    (Some(i), true) => {
                        base.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => {
                        let old = match base[i].take() {
                            Value::Object(m) => m,
                            _ => Map::new(),
                        };
                        match merge_map(kind, path, old, pm)? {
                            Some(m) => base[i] = Value::Object(m),
                            None => {
                                base.remove(i);
                            }
                        }
                    }
                    (None, false) => {
                        if let Some(m) = merge_map(kind, path, Map::new(), pm)? {
                            base.push(Value::Object(m));
                        }
                    }
                }
            }
            Ok(base)
        }
    }
}

/// Orders `list` as `order` says; elements it does not name keep their
/// relative order after those it does.
fn reorder(list: &mut [Value], order: &[Value], strategy: ListStrategy) {
    let rank = |v: &Value| -> usize {
        let probe = match strategy {
            ListStrategy::MergeKey(k) => v.get(k),
            _ => Some(v),
        };
        order
            .iter()
            .position(|o| match strategy {
                ListStrategy::MergeKey(k) => o.get(k) == probe,
                _ => Some(o) == probe,
            })
            .unwrap_or(usize::MAX)
    };
    list.sort_by_key(rank);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Value {
        json!({"metadata": {"name": "web", "finalizers": ["a"], "labels": {"app": "web", "old": "x"}},
          "spec": {"replicas": 1, "template": {"spec": {"containers": [
            {"name": "app", "image": "nginx:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
             "ports": [{"containerPort": 80, "protocol": "TCP"}]},
            {"name": "side", "image": "busybox"}]}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%"}}}})
    }

    #[test]
    fn containers_merge_by_name_and_env_by_name() {
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "image": "nginx:2", "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}]}]}}}});
        let out = apply("Deployment", &deployment(), &patch).unwrap();
        let c = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(c.as_array().unwrap().len(), 2);
        assert_eq!(c[0]["image"], "nginx:2");
        assert_eq!(c[0]["ports"][0]["containerPort"], 80);
        assert_eq!(
            c[0]["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "3"}, {"name": "C", "value": "4"}])
        );
        assert_eq!(c[1]["name"], "side");
    }

    #[test]
    fn delete_directive_null_and_set_element_order() {
        let patch = json!({"metadata": {"labels": {"old": null}},
          "spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "side"}, {"name": "app"}],
            "containers": [{"name": "app", "$setElementOrder/env": [{"name": "B"}],
                            "env": [{"name": "A", "$patch": "delete"}]}]}}}});
        let out = apply("Deployment", &deployment(), &patch).unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"app": "web"}));
        let c = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(c[0]["name"], "side");
        assert_eq!(c[1]["env"], json!([{"name": "B", "value": "2"}]));
    }

    #[test]
    fn retain_keys_replace_and_primitive_lists() {
        let patch = json!({"metadata": {"finalizers": ["b", "a"], "$deleteFromPrimitiveList/finalizers": ["a"]},
          "spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null}}});
        let out = apply("Deployment", &deployment(), &patch).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        let replace = json!({"spec": {"template": {"spec": {"containers": [{"$patch": "replace"}, {"name": "x", "image": "y"}]}}}});
        let out = apply("Deployment", &deployment(), &replace).unwrap();
        assert_eq!(out["spec"]["template"]["spec"]["containers"], json!([{"name": "x", "image": "y"}]));
        let map_replace = json!({"metadata": {"labels": {"$patch": "replace", "only": "1"}}});
        assert_eq!(
            apply("Deployment", &deployment(), &map_replace).unwrap()["metadata"]["labels"],
            json!({"only": "1"})
        );
    }

    #[test]
    fn service_ports_by_port_and_other_lists_replaced() {
        let svc = json!({"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}],
            "externalIPs": ["1.1.1.1"]}});
        let out = apply(
            "Service",
            &svc,
            &json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}],
            "externalIPs": ["2.2.2.2"]}}),
        )
        .unwrap();
        assert_eq!(out["spec"]["ports"].as_array().unwrap().len(), 2);
        assert_eq!(out["spec"]["ports"][0]["targetPort"], 8080);
        assert_eq!(out["spec"]["externalIPs"], json!(["2.2.2.2"]));
        assert!(apply("Service", &svc, &json!({"spec": {"ports": [{"name": "nokey"}]}})).is_err());
        assert!(apply("Service", &svc, &json!([1])).is_err());
    }

    #[test]
    fn conditions_merge_by_type() {
        let node = json!({"status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "DiskPressure", "status": "False"}],
            "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}});
        let out = apply(
            "Node",
            &node,
            &json!({"status": {"conditions": [{"type": "Ready", "status": "True"}],
            "addresses": [{"type": "Hostname", "address": "n1"}]}}),
        )
        .unwrap();
        assert_eq!(out["status"]["conditions"][0]["status"], "True");
        assert_eq!(out["status"]["conditions"].as_array().unwrap().len(), 2);
        assert_eq!(out["status"]["addresses"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn built_in_kinds_merge_by_their_schemas_markers() {
        for (kind, path, want) in [
            ("Pod", &["spec", "schedulingGates"][..], ListStrategy::MergeKey("name")),
            ("Pod", &["spec", "ephemeralContainers", "env"], ListStrategy::MergeKey("name")),
            ("Pod", &["spec", "tolerations"], ListStrategy::Replace),
            ("Pod", &["metadata", "finalizers"], ListStrategy::Set),
            (
                "Deployment",
                &["spec", "template", "spec", "containers", "ports"],
                ListStrategy::MergeKey("containerPort"),
            ),
            ("ServiceAccount", &["secrets"], ListStrategy::MergeKey("name")),
            ("Node", &["spec", "podCIDRs"], ListStrategy::Set),
            ("CertificateSigningRequest", &["status", "conditions"], ListStrategy::Replace),
            // A kind k8s-openapi lacks keeps the name rules.
            ("Widget", &["status", "conditions"], ListStrategy::MergeKey("type")),
        ] {
            assert_eq!(list_strategy(kind, path), want, "{kind} {path:?}");
        }
        let pod = json!({"spec": {"schedulingGates": [{"name": "a"}, {"name": "b"}]}});
        let out = apply("Pod", &pod, &json!({"spec": {"schedulingGates": [{"name": "c"}]}})).unwrap();
        assert_eq!(out["spec"]["schedulingGates"].as_array().unwrap().len(), 3);
    }
}

//! PATCH (JSON patch, merge patch, strategic merge patch, server-side
//! apply), the `scale` subresource and pod `binding`, over the registry.

use serde_json::{Value, json};

use crate::decode::MAX_REQUEST_BYTES;
use crate::ephemeral;
use crate::errors::ApiError;
use crate::registry::{Part, Registry, WriteOptions, Written, fields_v1, meta_str, now};
use crate::resources::{ResourceType, by_kind};
use crate::smp;

/// A CRD's `.spec.replicas` as a JSON pointer.
fn pointer(path: &str) -> String {
    path.replace('.', "/")
}

/// Where the desired replicas are: `/spec/replicas`, or a CRD's `specReplicasPath`.
fn spec_replicas(rt: &ResourceType) -> String {
    match rt.custom.as_ref().and_then(|c| c.scale.as_ref()) {
        Some(s) => pointer(&s.spec_replicas_path),
        None => "/spec/replicas".into(),
    }
}

/// The `autoscaling/v1` Scale of a deployment, replica set, replication
/// controller, stateful set or custom object (through its CRD's scale paths).
pub fn scale_of(rt: &ResourceType, o: &Value) -> Value {
    let custom = rt.custom.as_ref().and_then(|c| c.scale.as_ref());
    let (status, selector) = match custom {
        Some(s) => (
            pointer(&s.status_replicas_path),
            s.label_selector_path
                .as_deref()
                .and_then(|p| o.pointer(&pointer(p)))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        ),
        None => (
            "/status/replicas".to_string(),
            o.pointer("/spec/selector")
                .map(|s| crate::selector::LabelSelector::of_workload(rt.kind, s).to_string())
                .unwrap_or_default(),
        ),
    };
    let m = &o["metadata"];
    json!({"kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": m["name"], "namespace": m["namespace"], "uid": m["uid"], "resourceVersion": m["resourceVersion"],
            "creationTimestamp": m["creationTimestamp"]},
        "spec": {"replicas": o.pointer(&spec_replicas(rt)).cloned().unwrap_or(json!(0))},
        "status": {"replicas": o.pointer(&status).cloned().unwrap_or(json!(0)), "selector": selector}})
}

/// Sets the desired replicas at `pointer`, creating the objects on the way.
fn set_at(o: &mut Value, pointer: &str, v: Value) {
    let mut cur = o;
    let parts: Vec<&str> = pointer.split('/').skip(1).collect();
    for (n, p) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = json!({});
        }
        let m = cur.as_object_mut().expect("an object");
        if n == parts.len() - 1 {
            m.insert(p.to_string(), v);
            return;
        }
        cur = m.entry(p.to_string()).or_insert_with(|| json!({}));
    }
}

fn replicas_of_scale(scale: &Value) -> Result<i64, ApiError> {
    let r = scale.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0);
    if r < 0 {
        return Err(ApiError::bad_request(format!(
            "spec.replicas: Invalid value: {r}: must be greater than or equal to 0"
        )));
    }
    Ok(r)
}

/// PUT …/scale.
pub fn update_scale(
    reg: &Registry,
    rt: &ResourceType,
    ns: Option<&str>,
    name: &str,
    scale: &Value,
    opts: &WriteOptions,
) -> Result<Written, ApiError> {
    let replicas = replicas_of_scale(scale)?;
    let rv = scale
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
        .map(str::to_string);
    let mut w = reg.modify(rt, ns, name, Part::Main, opts, |o| {
        if let Some(rv) = &rv {
            o["metadata"]["resourceVersion"] = rv.clone().into();
        }
        set_at(o, &spec_replicas(rt), replicas.into());
        Ok(true)
    })?;
    w.object = scale_of(rt, &w.object);
    Ok(w)
}

/// POST pods/NAME/binding: assigns the pod to a node.
pub fn bind(reg: &Registry, ns: Option<&str>, name: &str, binding: &Value) -> Result<(), ApiError> {
    let pods = by_kind("Pod").expect("pods are served");
    let node = binding.pointer("/target/name").and_then(Value::as_str).unwrap_or_default().to_string();
    if node.is_empty() {
        return Err(ApiError::invalid(pods, name, vec![("target.name".into(), "Required value".into())]));
    }
    let binding_write = WriteOptions { subresource: true, ..Default::default() };
    reg.modify(pods, ns, name, Part::Main, &binding_write, |o| {
        match o.pointer("/spec/nodeName").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => {
                return Err(ApiError::conflict(pods, name, &format!("pod {name} is already assigned to node \"{n}\"")));
            }
            _ => {}
        }
        if o.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(ApiError::conflict(pods, name, "the pod is being deleted"));
        }
        o["spec"]["nodeName"] = node.clone().into();
        Ok(true)
    })?;
    reg.modify(pods, ns, name, Part::Status, &WriteOptions::default(), |o| {
        let cond =
            json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now()});
        let patched = smp::apply("Pod", o, &json!({"status": {"conditions": [cond]}}))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        *o = patched;
        Ok(true)
    })?;
    Ok(())
}

/// Upstream's bounds on a JSON patch: at most this many operations, and
/// values copied within the document at most [`MAX_REQUEST_BYTES`] in all
/// (a 2 KB patch of `copy` operations can otherwise double an object forty
/// times before anything checks its size).
const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

fn json_patch_bounded(target: &mut Value, ops: &json_patch::Patch) -> Result<(), ApiError> {
    if ops.0.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(ApiError::too_large(format!(
            "The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {}",
            ops.0.len()
        )));
    }
    let mut copied = 0usize;
    for op in &ops.0 {
        if let json_patch::PatchOperation::Copy(c) = op
            && let Some(v) = target.pointer(c.from.as_str())
        {
            copied += serialized_len(v, MAX_REQUEST_BYTES - copied.min(MAX_REQUEST_BYTES));
            if copied > MAX_REQUEST_BYTES {
                return Err(ApiError::too_large(format!(
                    "Unable to apply patch: the values copied exceed {MAX_REQUEST_BYTES} bytes: Request entity too large: limit is {MAX_REQUEST_BYTES}"
                )));
            }
        }
        json_patch::patch(target, std::slice::from_ref(op))
            .map_err(|e| ApiError::new(422, "Invalid", format!("the JSON patch could not be applied: {e}")))?;
    }
    Ok(())
}

/// The length of `v` as JSON, counted up to just past `limit`.
fn serialized_len(v: &Value, limit: usize) -> usize {
    struct Count(usize, usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            if self.0 > self.1 { Err(std::io::ErrorKind::FileTooLarge.into()) } else { Ok(b.len()) }
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0, limit);
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

fn apply_patch(kind: &str, content_type: &str, target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    match content_type {
        "application/json-patch+json" => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            json_patch_bounded(target, &ops)
        }
        "application/merge-patch+json" => {
            if !patch.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            json_patch::merge(target, patch);
            Ok(())
        }
        "application/strategic-merge-patch+json" => {
            *target = smp::apply(kind, target, patch).map_err(|e| ApiError::bad_request(e.to_string()))?;
            Ok(())
        }
        ct => Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {ct:?})"
            ),
        )),
    }
}

/// `PUT pods/{name}/ephemeralcontainers`: `body` is the whole Pod, of which
/// only the ephemeral containers are taken; its resourceVersion, when
/// given, must be the stored one.
pub fn update_ephemeral(
    reg: &Registry,
    rt: &ResourceType,
    ns: Option<&str>,
    name: &str,
    body: &Value,
    opts: &WriteOptions,
) -> Result<Written, ApiError> {
    let want = meta_str(body, "resourceVersion").filter(|r| !r.is_empty());
    let opts = WriteOptions { subresource: true, ..opts.clone() };
    reg.modify(rt, ns, name, Part::Main, &opts, |cur| {
        if want.is_some_and(|w| Some(w) != meta_str(cur, "resourceVersion")) {
            return Err(ApiError::modified(rt, name));
        }
        ephemeral::take(rt, name, cur, body)
    })
}

/// PATCH on an object or its `status`/`scale`/`ephemeralcontainers`.
#[allow(clippy::too_many_arguments)]
pub fn patch(
    reg: &Registry,
    rt: &ResourceType,
    ns: Option<&str>,
    name: &str,
    sub: Option<&str>,
    content_type: &str,
    body: &Value,
    opts: &WriteOptions,
    force: bool,
) -> Result<Written, ApiError> {
    if content_type == "application/apply-patch+yaml" {
        return server_side_apply(reg, rt, ns, name, sub, body, opts, force);
    }
    // Custom objects have no patch strategies to merge by, as upstream.
    if rt.custom.is_some() && content_type == "application/strategic-merge-patch+json" {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
        ));
    }
    match sub {
        Some("scale") => {
            let mut w = reg.modify(rt, ns, name, Part::Main, opts, |o| {
                let mut scale = scale_of(rt, o);
                apply_patch("Scale", content_type, &mut scale, body)?;
                set_at(o, &spec_replicas(rt), replicas_of_scale(&scale)?.into());
                if let Some(rv) = scale.pointer("/metadata/resourceVersion").cloned() {
                    o["metadata"]["resourceVersion"] = rv;
                }
                Ok(true)
            })?;
            w.object = scale_of(rt, &w.object);
            Ok(w)
        }
        // Applied to the whole pod, of which only the ephemeral containers are kept.
        Some("ephemeralcontainers") => {
            reg.modify(rt, ns, name, Part::Main, &WriteOptions { subresource: true, ..opts.clone() }, |cur| {
                let mut patched = cur.clone();
                apply_patch(rt.kind, content_type, &mut patched, body)?;
                ephemeral::take(rt, name, cur, &patched)
            })
        }
        _ => {
            let part = if sub == Some("status") { Part::Status } else { Part::Main };
            reg.modify(rt, ns, name, part, opts, |o| {
                apply_patch(rt.kind, content_type, o, body)?;
                Ok(true)
            })
        }
    }
}

/// Leaf paths of a `fieldsV1` tree.
fn leaves(fields: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match fields.as_object() {
        Some(m) if !m.is_empty() => {
            for (k, v) in m {
                if k == "." {
                    continue;
                }
                prefix.push(k.clone());
                leaves(v, prefix, out);
                prefix.pop();
            }
        }
        _ => out.push(prefix.clone()),
    }
}

fn paths_of(fields: &Value) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    leaves(fields, &mut Vec::new(), &mut out);
    out
}

/// The value at a `fieldsV1` path (`f:spec`, `k:{"name":"x"}`).
fn value_at<'v>(o: &'v Value, path: &[String]) -> Option<&'v Value> {
    let mut v = o;
    for seg in path {
        if let Some(f) = seg.strip_prefix("f:") {
            v = v.get(f)?;
        } else if let Some(k) = seg.strip_prefix("k:") {
            let key: Value = serde_json::from_str(k).ok()?;
            let km = key.as_object()?;
            v = v.as_array()?.iter().find(|i| km.iter().all(|(kk, kv)| i.get(kk) == Some(kv)))?;
        } else {
            return None;
        }
    }
    Some(v)
}

fn remove_at(o: &mut Value, path: &[String]) {
    let Some((last, parent)) = path.split_last() else { return };
    let mut v = o;
    for seg in parent {
        let next = if let Some(f) = seg.strip_prefix("f:") {
            v.get_mut(f)
        } else if let Some(k) = seg.strip_prefix("k:") {
            let Ok(key) = serde_json::from_str::<Value>(k) else { return };
            let Some(km) = key.as_object().cloned() else { return };
            v.as_array_mut().and_then(|a| a.iter_mut().find(|i| km.iter().all(|(kk, kv)| i.get(kk) == Some(kv))))
        } else {
            None
        };
        match next {
            Some(n) => v = n,
            None => return,
        }
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(m) = v.as_object_mut() {
            m.remove(f);
        }
    } else if let Some(k) = last.strip_prefix("k:")
        && let (Ok(key), Some(a)) = (serde_json::from_str::<Value>(k), v.as_array_mut())
        && let Some(km) = key.as_object()
    {
        a.retain(|i| !km.iter().all(|(kk, kv)| i.get(kk) == Some(kv)));
    }
}

fn dotted(path: &[String]) -> String {
    path.iter()
        .map(|s| match s.strip_prefix("f:") {
            Some(f) => format!(".{f}"),
            None => format!("[{}]", s.trim_start_matches("k:")),
        })
        .collect()
}

/// The part of an applied configuration that is the manager's intent.
fn applied_fields(applied: &Value) -> Value {
    let mut a = applied.clone();
    if let Some(m) = a.get_mut("metadata").and_then(Value::as_object_mut) {
        m.retain(|k, _| matches!(k.as_str(), "labels" | "annotations" | "finalizers" | "ownerReferences"));
    }
    if let Some(m) = a.as_object_mut() {
        m.remove("status");
        if m.get("metadata").and_then(Value::as_object).is_some_and(|m| m.is_empty()) {
            m.remove("metadata");
        }
    }
    fields_v1(&a)
}

/// `application/apply-patch+yaml`: creates the object if absent; else
/// merges the applied configuration, refusing (409) to change a field
/// another manager owns unless `force`, and removing fields this manager
/// applied before and no longer does.
#[allow(clippy::too_many_arguments)]
fn server_side_apply(
    reg: &Registry,
    rt: &ResourceType,
    ns: Option<&str>,
    name: &str,
    sub: Option<&str>,
    applied: &Value,
    opts: &WriteOptions,
    force: bool,
) -> Result<Written, ApiError> {
    let Some(manager) = opts.field_manager.clone() else {
        return Err(ApiError::bad_request("PATCH, application/apply-patch+yaml requires fieldManager to be set"));
    };
    if sub.is_some() {
        return Err(ApiError::new(405, "MethodNotAllowed", "server-side apply on subresources is not supported"));
    }
    if !applied.is_object() {
        return Err(ApiError::bad_request("the applied configuration must be an object"));
    }
    let plain = WriteOptions { field_manager: None, ..opts.clone() };
    let api_version = rt.api_version();
    let fields = applied_fields(applied);
    let entry = json!({"manager": manager, "operation": "Apply", "apiVersion": api_version, "time": now(),
        "fieldsType": "FieldsV1", "fieldsV1": fields});
    match reg.get(rt, ns, name) {
        Err(e) if e.code == 404 => {
            let mut o = applied.clone();
            o["metadata"]["name"] = name.into();
            o["metadata"]["managedFields"] = json!([entry]);
            return reg.create(rt, ns, o, &plain);
        }
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    let new_paths = paths_of(&fields);
    reg.modify(rt, ns, name, Part::Main, &plain, |cur| {
        let mut managed: Vec<Value> =
            cur.pointer("/metadata/managedFields").and_then(Value::as_array).cloned().unwrap_or_default();
        let mut conflicts = Vec::new();
        for p in &new_paths {
            let (now_v, want) = (value_at(cur, p), value_at(applied, p));
            if now_v.is_none() || now_v == want || want.is_some_and(Value::is_object) {
                continue;
            }
            for e in managed.iter().filter(|e| e["manager"] != manager.as_str()) {
                if paths_of(&e["fieldsV1"]).contains(p) {
                    conflicts.push((
                        e["manager"].as_str().unwrap_or_default().to_string(),
                        e["apiVersion"].clone(),
                        p.clone(),
                    ));
                }
            }
        }
        if !conflicts.is_empty() && !force {
            let msgs: Vec<String> = conflicts
                .iter()
                .map(|(m, v, p)| {
                    format!("conflict with \"{m}\" using {}: {}", v.as_str().unwrap_or_default(), dotted(p))
                })
                .collect();
            let mut e = ApiError::new(
                409,
                "Conflict",
                format!(
                    "Apply failed with {} conflict{}: {}",
                    conflicts.len(),
                    if conflicts.len() == 1 { "" } else { "s" },
                    msgs.join("\n")
                ),
            );
            e.details = Some(Box::new(k8s_openapi::apimachinery::pkg::apis::meta::v1::StatusDetails {
                causes: Some(
                    conflicts
                        .iter()
                        .map(|(m, _, p)| k8s_openapi::apimachinery::pkg::apis::meta::v1::StatusCause {
                            reason: Some("FieldManagerConflict".into()),
                            message: Some(format!("conflict with \"{m}\"")),
                            field: Some(dotted(p)),
                        })
                        .collect(),
                ),
                ..Default::default()
            }));
            return Err(e);
        }
        // Forced: the other managers lose the fields.
        for (m, _, p) in &conflicts {
            for e in managed.iter_mut().filter(|e| e["manager"] == m.as_str()) {
                remove_at(&mut e["fieldsV1"], p);
            }
        }
        let previous_entry =
            managed.iter().find(|e| e["manager"] == manager.as_str() && e["operation"] == "Apply").cloned();
        let previous: Vec<Vec<String>> = previous_entry.as_ref().map(|e| paths_of(&e["fieldsV1"])).unwrap_or_default();
        let mut body = applied.clone();
        if let Some(m) = body.as_object_mut() {
            m.remove("status");
        }
        if let Some(m) = body.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("managedFields");
            m.remove("resourceVersion");
        }
        let mut merged = smp::apply(rt.kind, cur, &body).map_err(|e| ApiError::bad_request(e.to_string()))?;
        for p in previous.iter().filter(|p| !new_paths.contains(p)) {
            let owned_by_others =
                managed.iter().any(|e| e["manager"] != manager.as_str() && paths_of(&e["fieldsV1"]).contains(p));
            if !owned_by_others {
                remove_at(&mut merged, p);
            }
        }
        managed.retain(|e| !(e["manager"] == manager.as_str() && e["operation"] == "Apply"));
        managed.retain(|e| e["fieldsV1"].as_object().is_some_and(|m| !m.is_empty()));
        managed.push(entry.clone());
        merged["metadata"]["managedFields"] = Value::Array(managed);
        merged["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"].clone();
        let without_managed = |o: &Value| {
            let mut o = o.clone();
            o["metadata"].as_object_mut().map(|m| m.remove("managedFields"));
            o
        };
        let same_fields = previous_entry.is_some_and(|e| e["fieldsV1"] == entry["fieldsV1"]) && conflicts.is_empty();
        if same_fields && without_managed(&merged) == without_managed(cur) {
            return Ok(false);
        }
        *cur = merged;
        Ok(true)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::FieldValidation;
    use orchestrator_store::{Durability, SqliteStore};
    use std::sync::Arc;

    fn registry() -> (tempfile::TempDir, Registry) {
        let d = tempfile::tempdir().unwrap();
        let r = Registry::new(Arc::new(SqliteStore::open(&d.path().join("db"), Durability::Normal).unwrap()));
        r.bootstrap("127.0.0.1:6443").unwrap();
        (d, r)
    }

    fn opts(manager: &str) -> WriteOptions {
        WriteOptions {
            field_manager: Some(manager.into()),
            validation: FieldValidation::Strict,
            dry_run: false,
            subresource: false,
        }
    }

    #[test]
    fn json_patches_that_copy_past_the_limit_are_refused() {
        let mut doc = json!({"data": {"a": "x".repeat(1 << 20)}});
        let ops: Vec<Value> =
            (0..4).map(|i| json!({"op": "copy", "from": "/data/a", "path": format!("/data/b{i}")})).collect();
        let e = apply_patch("ConfigMap", "application/json-patch+json", &mut doc, &Value::Array(ops)).unwrap_err();
        assert_eq!((e.code, e.reason), (413, "RequestEntityTooLarge"), "{}", e.message);
        let many: Vec<Value> = (0..10_001).map(|_| json!({"op": "test", "path": "/data", "value": {}})).collect();
        let e = apply_patch("ConfigMap", "application/json-patch+json", &mut doc, &Value::Array(many)).unwrap_err();
        assert_eq!(e.code, 413, "{}", e.message);
        let mut small = json!({"a": {"b": 1}});
        let ops = json!([{"op": "copy", "from": "/a", "path": "/c"}, {"op": "add", "path": "/c/d", "value": 2}]);
        apply_patch("ConfigMap", "application/json-patch+json", &mut small, &ops).unwrap();
        assert_eq!(small, json!({"a": {"b": 1}, "c": {"b": 1, "d": 2}}));
    }

    #[test]
    fn patch_kinds_and_scale() {
        let (_d, r) = registry();
        let dep = by_kind("Deployment").unwrap();
        let body = json!({"metadata": {"name": "web"}, "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "w"}},
            "template": {"metadata": {"labels": {"app": "w"}}, "spec": {"containers": [{"name": "c", "image": "nginx:1"}]}}}});
        r.create(dep, Some("default"), body, &WriteOptions::default()).unwrap();
        let w = patch(
            &r,
            dep,
            Some("default"),
            "web",
            Some("scale"),
            "application/merge-patch+json",
            &json!({"spec": {"replicas": 4}}),
            &WriteOptions::default(),
            false,
        )
        .unwrap();
        assert_eq!((w.object["kind"].as_str(), w.object["spec"]["replicas"].as_i64()), (Some("Scale"), Some(4)));
        assert_eq!(w.object["status"]["selector"], "app=w");
        let smp_body = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx:2"}]}}}});
        let w = patch(
            &r,
            dep,
            Some("default"),
            "web",
            None,
            "application/strategic-merge-patch+json",
            &smp_body,
            &WriteOptions::default(),
            false,
        )
        .unwrap();
        assert_eq!(w.object["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:2");
        assert_eq!(w.object["metadata"]["generation"], 3);
        let jp = json!([{"op": "replace", "path": "/spec/replicas", "value": 2}]);
        let w = patch(
            &r,
            dep,
            Some("default"),
            "web",
            None,
            "application/json-patch+json",
            &jp,
            &WriteOptions::default(),
            false,
        )
        .unwrap();
        assert_eq!(w.object["spec"]["replicas"], 2);
        let stale = json!({"metadata": {"resourceVersion": "1"}, "spec": {"replicas": 9}});
        let e = patch(
            &r,
            dep,
            Some("default"),
            "web",
            None,
            "application/merge-patch+json",
            &stale,
            &WriteOptions::default(),
            false,
        )
        .unwrap_err();
        assert_eq!(e.code, 409);
        let e = patch(&r, dep, Some("default"), "web", None, "text/plain", &json!({}), &WriteOptions::default(), false)
            .unwrap_err();
        assert_eq!(e.code, 415);
    }

    #[test]
    fn server_side_apply_creates_conflicts_forces_and_prunes() {
        let (_d, r) = registry();
        let cm = by_kind("ConfigMap").unwrap();
        let applied =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}});
        let ssa = |body: &Value, who: &str, force: bool| {
            patch(&r, cm, Some("default"), "c", None, "application/apply-patch+yaml", body, &opts(who), force)
        };
        let w = ssa(&applied, "alice", false).unwrap();
        assert!(w.created);
        assert_eq!(w.object["metadata"]["managedFields"][0]["fieldsV1"]["f:data"]["f:a"], json!({}));
        // bob changes a field alice owns: conflict, then forced.
        let bob = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "x"}});
        let e = ssa(&bob, "bob", false).unwrap_err();
        assert_eq!(e.code, 409);
        assert!(e.message.contains("conflict with \"alice\" using v1: .data.a"), "{}", e.message);
        let w = ssa(&bob, "bob", true).unwrap();
        assert_eq!(w.object["data"], json!({"a": "x", "b": "2"}));
        // alice stops applying b: it goes; a is bob's now and stays.
        let alice2 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {}});
        let w = ssa(&alice2, "alice", false).unwrap();
        assert_eq!(w.object["data"], json!({"a": "x"}));
        // Applying the same again changes nothing.
        let before = w.object["metadata"]["resourceVersion"].clone();
        let w = ssa(&bob, "bob", false).unwrap();
        assert_eq!(w.object["metadata"]["resourceVersion"], before);
    }
}

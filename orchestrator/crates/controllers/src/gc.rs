//! Garbage collection by ownerReferences (background: dependents of a gone
//! owner go; foreground: an owner waits in `foregroundDeletion` until its
//! dependents are gone; orphan: dependents lose the reference) and
//! namespace deletion (everything in it, then the namespace).

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use crate::{is_deleting, list_all};
use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::{
    DeleteOptions, Part, Propagation, Registry, WriteOptions, name_of, namespace_of, uid_of,
};
use orchestrator_apimachinery::resources::{RESOURCES, ResourceType};

fn finalizers(o: &Value) -> Vec<String> {
    o.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

fn refs(o: &Value) -> Vec<Value> {
    o.pointer("/metadata/ownerReferences").and_then(Value::as_array).cloned().unwrap_or_default()
}

fn delete(reg: &Registry, rt: &ResourceType, o: &Value, propagation: Propagation) -> Result<(), ApiError> {
    let opts = DeleteOptions { propagation: Some(propagation), ..Default::default() };
    match reg.delete(rt, namespace_of(o), name_of(o), &opts) {
        Err(e) if e.code == 404 => Ok(()),
        r => r.map(|_| ()),
    }
}

fn remove_finalizer(reg: &Registry, rt: &ResourceType, o: &Value, f: &str) -> Result<(), ApiError> {
    reg.modify(rt, namespace_of(o), name_of(o), Part::Main, &WriteOptions::default(), |cur| {
        let fs: Vec<String> = finalizers(cur).into_iter().filter(|x| x != f).collect();
        cur["metadata"]["finalizers"] = json!(fs);
        Ok(true)
    })
    .map(|_| ())
}

pub fn reconcile(reg: &Registry) -> Result<(), ApiError> {
    // One revision for every list: an owner created after one list and
    // its dependent before the next must not look orphaned.
    let at = reg.store.current_revision().map_err(|e| ApiError::internal(e.to_string()))?;
    let snapshot = orchestrator_apimachinery::registry::ListOptions { exact_revision: Some(at), ..Default::default() };
    let mut all: Vec<(&'static ResourceType, Value)> = Vec::new();
    for rt in RESOURCES.iter().filter(|r| r.kind != "Event") {
        for o in reg.list(rt, None, &snapshot)?.items {
            all.push((rt, o));
        }
    }
    let by_uid: HashMap<String, &Value> = all.iter().map(|(_, o)| (uid_of(o).to_string(), o)).collect();
    let mut has_dependents: HashSet<String> = HashSet::new();
    for (rt, o) in &all {
        let rs = refs(o);
        if rs.is_empty() {
            continue;
        }
        let ns = namespace_of(o);
        let live: Vec<&Value> = rs
            .iter()
            .filter_map(|r| by_uid.get(r["uid"].as_str().unwrap_or_default()).copied())
            .filter(|owner| owner_scope_ok(owner, ns))
            .collect();
        // An owner of a kind this server does not serve cannot be checked:
        // its dependents stay (upstream's collector does the same).
        let unknown_owner = rs
            .iter()
            .any(|r| orchestrator_apimachinery::resources::by_kind(r["kind"].as_str().unwrap_or_default()).is_none());
        if live.is_empty() && !unknown_owner {
            if !is_deleting(o) {
                delete(reg, rt, o, Propagation::Background)?;
            }
            continue;
        }
        for owner in &live {
            has_dependents.insert(uid_of(owner).to_string());
            let fs = finalizers(owner);
            if is_deleting(owner) && fs.iter().any(|f| f == "orphan") {
                let owner_uid = uid_of(owner).to_string();
                reg.modify(rt, ns, name_of(o), Part::Main, &WriteOptions::default(), |cur| {
                    let kept: Vec<Value> = refs(cur).into_iter().filter(|r| r["uid"] != owner_uid.as_str()).collect();
                    cur["metadata"]["ownerReferences"] = json!(kept);
                    Ok(true)
                })?;
            } else if is_deleting(owner) && fs.iter().any(|f| f == "foregroundDeletion") && !is_deleting(o) {
                delete(reg, rt, o, Propagation::Foreground)?;
            }
        }
    }
    // Owners waiting for their dependents.
    for (rt, o) in &all {
        if !is_deleting(o) || has_dependents.contains(uid_of(o)) {
            continue;
        }
        for f in ["foregroundDeletion", "orphan"] {
            if finalizers(o).iter().any(|x| x == f) {
                remove_finalizer(reg, rt, o, f)?;
            }
        }
    }
    Ok(())
}

/// A namespaced dependent may only be owned from its namespace or by a
/// cluster-scoped owner.
fn owner_scope_ok(owner: &Value, dependent_ns: Option<&str>) -> bool {
    match namespace_of(owner) {
        None => true,
        Some(ns) => Some(ns) == dependent_ns,
    }
}

pub fn reconcile_namespaces(reg: &Registry) -> Result<(), ApiError> {
    for n in list_all(reg, "Namespace")? {
        if !is_deleting(&n) {
            continue;
        }
        let ns = name_of(&n).to_string();
        let mut remaining = 0;
        for rt in RESOURCES.iter().filter(|r| r.namespaced) {
            for o in reg.list(rt, Some(&ns), &Default::default())?.items {
                remaining += 1;
                if !is_deleting(&o) {
                    delete(reg, rt, &o, Propagation::Background)?;
                }
            }
        }
        if remaining == 0 {
            reg.finalize_namespace(&ns)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchestrator_store::{Durability, SqliteStore};
    use std::sync::Arc;

    #[test]
    fn orphans_go_unknown_owners_stay_foreground_waits() {
        let d = tempfile::tempdir().unwrap();
        let reg = Registry::new(Arc::new(SqliteStore::open(&d.path().join("db"), Durability::Normal).unwrap()));
        reg.bootstrap("127.0.0.1:6443").unwrap();
        let cm = orchestrator_apimachinery::resources::by_kind("ConfigMap").unwrap();
        let o = WriteOptions::default();
        let owned = |name: &str, kind: &str, uid: &str| json!({"metadata": {"name": name, "ownerReferences": [{"apiVersion": "v1", "kind": kind, "name": "x", "uid": uid}]}});
        reg.create(cm, Some("default"), owned("orphan", "ConfigMap", "gone"), &o).unwrap();
        reg.create(cm, Some("default"), owned("widget", "Widget", "unknown"), &o).unwrap();
        let parent = reg.create(cm, Some("default"), json!({"metadata": {"name": "parent"}}), &o).unwrap().object;
        reg.create(cm, Some("default"), owned("child", "ConfigMap", uid_of(&parent)), &o).unwrap();
        let fg = DeleteOptions { propagation: Some(Propagation::Foreground), ..Default::default() };
        reg.delete(cm, Some("default"), "parent", &fg).unwrap();
        for _ in 0..3 {
            reconcile(&reg).unwrap();
        }
        let exists = |n: &str| reg.get(cm, Some("default"), n).is_ok();
        assert!(!exists("orphan"));
        assert!(exists("widget"));
        assert!(!exists("child") && !exists("parent"), "foreground: the child first, then the parent");
    }
}

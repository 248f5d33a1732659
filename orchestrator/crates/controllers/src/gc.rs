//! Garbage collection by ownerReferences (background: dependents of a gone
//! owner go; foreground: an owner waits in `foregroundDeletion` until its
//! dependents are gone; orphan: dependents lose the reference) and
//! namespace deletion (everything in it, then the namespace).

use std::collections::{HashMap, HashSet};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde_json::Value;

use crate::{is_deleting, list_typed, name, uid};
use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::{DeleteOptions, ListOptions, Part, Propagation, Registry, WriteOptions};
use orchestrator_apimachinery::resources::{RESOURCES, ResourceType, by_kind};
use orchestrator_apimachinery::typed::{change_as, decode};

fn finalizers(m: &ObjectMeta) -> &[String] {
    m.finalizers.as_deref().unwrap_or_default()
}

fn refs(m: &ObjectMeta) -> &[OwnerReference] {
    m.owner_references.as_deref().unwrap_or_default()
}

/// The metadata of every object of a kind: the collector works on any
/// kind, so it reads only what all share.
fn metadata_of(
    reg: &Registry,
    rt: &ResourceType,
    ns: Option<&str>,
    opts: &ListOptions,
) -> Result<Vec<ObjectMeta>, ApiError> {
    let items = reg.list(rt, ns, opts)?.items;
    let what = format!("metadata of a {}", rt.kind);
    items.into_iter().map(|mut o| decode(o["metadata"].take(), &what)).collect()
}

fn delete(reg: &Registry, rt: &ResourceType, m: &ObjectMeta, propagation: Propagation) -> Result<(), ApiError> {
    let opts = DeleteOptions { propagation: Some(propagation), ..Default::default() };
    match reg.delete(rt, m.namespace.as_deref(), name(m), &opts) {
        Err(e) if e.code == 404 => Ok(()),
        r => r.map(|_| ()),
    }
}

/// Changes the metadata of a stored object of any kind.
fn modify_metadata(
    reg: &Registry,
    rt: &ResourceType,
    m: &ObjectMeta,
    f: impl Fn(&mut ObjectMeta),
) -> Result<(), ApiError> {
    let what = format!("metadata of {} {}", rt.kind, name(m));
    reg.modify(rt, m.namespace.as_deref(), name(m), Part::Main, &WriteOptions::default(), |cur: &mut Value| {
        change_as(&mut cur["metadata"], &what, |meta: &mut ObjectMeta| {
            f(meta);
            true
        })
    })
    .map(|_| ())
}

pub fn reconcile(reg: &Registry) -> Result<(), ApiError> {
    // One revision for every list: an owner created after one list and
    // its dependent before the next must not look orphaned.
    let at = reg.store.current_revision().map_err(|e| ApiError::internal(e.to_string()))?;
    let snapshot = ListOptions { exact_revision: Some(at), ..Default::default() };
    let mut all: Vec<(&'static ResourceType, ObjectMeta)> = Vec::new();
    for rt in RESOURCES.iter().filter(|r| r.kind != "Event") {
        all.extend(metadata_of(reg, rt, None, &snapshot)?.into_iter().map(|m| (rt, m)));
    }
    let by_uid: HashMap<&str, &ObjectMeta> = all.iter().map(|(_, m)| (uid(m), m)).collect();
    let mut has_dependents: HashSet<&str> = HashSet::new();
    for (rt, o) in &all {
        let rs = refs(o);
        if rs.is_empty() {
            continue;
        }
        let ns = o.namespace.as_deref();
        let live: Vec<&ObjectMeta> = rs
            .iter()
            .filter_map(|r| by_uid.get(r.uid.as_str()).copied())
            .filter(|owner| owner_scope_ok(owner, ns))
            .collect();
        // An owner of a kind this server does not serve cannot be checked:
        // its dependents stay (upstream's collector does the same).
        let unknown_owner = rs.iter().any(|r| by_kind(&r.kind).is_none());
        if live.is_empty() && !unknown_owner {
            if !is_deleting(o) {
                delete(reg, rt, o, Propagation::Background)?;
            }
            continue;
        }
        for owner in &live {
            has_dependents.insert(uid(owner));
            let fs = finalizers(owner);
            if is_deleting(owner) && fs.iter().any(|f| f == "orphan") {
                modify_metadata(reg, rt, o, |m| {
                    let kept = refs(m).iter().filter(|r| r.uid != uid(owner)).cloned().collect();
                    m.owner_references = Some(kept);
                })?;
            } else if is_deleting(owner) && fs.iter().any(|f| f == "foregroundDeletion") && !is_deleting(o) {
                delete(reg, rt, o, Propagation::Foreground)?;
            }
        }
    }
    // Owners waiting for their dependents.
    for (rt, o) in &all {
        if !is_deleting(o) || has_dependents.contains(uid(o)) {
            continue;
        }
        for f in ["foregroundDeletion", "orphan"] {
            if finalizers(o).iter().any(|x| x == f) {
                modify_metadata(reg, rt, o, |m| {
                    m.finalizers = Some(finalizers(m).iter().filter(|x| *x != f).cloned().collect());
                })?;
            }
        }
    }
    Ok(())
}

/// A namespaced dependent may only be owned from its namespace or by a
/// cluster-scoped owner.
fn owner_scope_ok(owner: &ObjectMeta, dependent_ns: Option<&str>) -> bool {
    match owner.namespace.as_deref() {
        None => true,
        Some(ns) => Some(ns) == dependent_ns,
    }
}

pub fn reconcile_namespaces(reg: &Registry) -> Result<(), ApiError> {
    for n in list_typed::<Namespace>(reg)? {
        if !is_deleting(&n.metadata) {
            continue;
        }
        let ns = name(&n.metadata);
        let mut remaining = 0;
        // Custom objects too: one served version per CRD (they share the objects).
        let custom = reg.custom_types();
        let mut seen = std::collections::BTreeSet::new();
        let custom = custom.iter().filter(|r| seen.insert((r.group, r.plural))).map(|r| &**r);
        for rt in RESOURCES.iter().chain(custom).filter(|r| r.namespaced) {
            for o in metadata_of(reg, rt, Some(ns), &ListOptions::default())? {
                remaining += 1;
                if !is_deleting(&o) {
                    delete(reg, rt, &o, Propagation::Background)?;
                }
            }
        }
        if remaining == 0 {
            reg.finalize_namespace(ns)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchestrator_apimachinery::registry::uid_of;
    use orchestrator_store::{Durability, SqliteStore};
    use serde_json::json;
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

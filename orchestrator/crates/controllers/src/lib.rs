//! Controllers and the scheduler, in the API server's process: one task
//! follows every change in the store and, after a short debounce (and at
//! least once a second, for time-based rules), runs each reconciler over a
//! fresh read of what it needs. Reconcilers are level-triggered and write
//! only differences (the registry skips no-op updates), so a pass whose
//! writes cause another pass converges.

mod deployment;
mod endpoints;
mod gc;
mod nodes;
mod replicaset;
mod scheduler;
mod serviceaccounts;
mod workloads;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::{Metadata, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::{ListOptions, Part, Registry, WriteOptions, name_of, new_uid, now, uid_of};
use orchestrator_apimachinery::resources::{ResourceType, by_kind};
use orchestrator_apimachinery::selector::LabelSelector;

/// What changed since the last pass.
#[derive(Debug, Default, Clone)]
pub struct Changes {
    /// Resource names (plurals) with writes.
    pub resources: HashSet<String>,
    /// A delete, or a write of an object being deleted.
    pub deletion: bool,
    /// The pass is the periodic one (time-based rules, and a safety net).
    pub periodic: bool,
    /// Run everything (the first pass, and after a lagged watch).
    pub all: bool,
}

impl Changes {
    fn note(&mut self, e: &orchestrator_store::Event) {
        if let Some(plural) = e.kv.key.strip_prefix("/registry/").and_then(|k| k.split('/').next()) {
            self.resources.insert(plural.to_string());
        }
        if e.kind == orchestrator_store::EventKind::Delete
            || e.kv.value.windows(19).any(|w| w == b"\"deletionTimestamp\"")
        {
            self.deletion = true;
        }
    }

    fn any(&self, plurals: &[&str]) -> bool {
        self.all || plurals.iter().any(|p| self.resources.contains(*p))
    }
}

/// How often the periodic pass runs.
const PERIOD: Duration = Duration::from_secs(2);

/// Starts the controllers; they run until the runtime stops.
pub fn spawn_all(reg: Arc<Registry>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let from = reg.store.current_revision().unwrap_or(0);
            let mut watch = match reg.store.watch("/registry/", from) {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!("controllers: watch: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut changes = Changes { all: true, ..Default::default() };
            let mut periods = 0u64;
            loop {
                let (r, c) = (reg.clone(), std::mem::take(&mut changes));
                if let Err(e) = tokio::task::spawn_blocking(move || reconcile_all(&r, &c)).await {
                    tracing::warn!("controllers: pass panicked: {e}");
                }
                tokio::select! {
                    e = watch.next() => match e {
                        Ok(e) => changes.note(&e),
                        Err(_) => break, // lagged: watch again from now, and run everything
                    },
                    _ = tokio::time::sleep(PERIOD) => {
                        periods += 1;
                        changes.periodic = true;
                        // Every 30 s, a full pass as a safety net.
                        changes.all = periods.is_multiple_of(15);
                        continue;
                    }
                }
                // Let a burst of writes settle into one pass.
                let settle = tokio::time::sleep(Duration::from_millis(20));
                tokio::pin!(settle);
                loop {
                    tokio::select! {
                        e = watch.next() => match e {
                            Ok(e) => changes.note(&e),
                            Err(_) => break,
                        },
                        _ = &mut settle => break,
                    }
                }
            }
        }
    })
}

type Reconciler = fn(&Registry) -> Result<(), ApiError>;

/// One pass of the reconcilers that `changes` concern.
pub fn reconcile_all(reg: &Registry, changes: &Changes) {
    let c = changes;
    let passes: [(&str, bool, Reconciler); 10] = [
        ("deployment", c.periodic || c.any(&["deployments", "replicasets"]), deployment::reconcile),
        ("replicaset", c.periodic || c.any(&["replicasets", "pods"]), replicaset::reconcile),
        ("job", c.periodic || c.any(&["jobs", "pods"]), workloads::reconcile_jobs),
        ("daemonset", c.periodic || c.any(&["daemonsets", "pods", "nodes"]), workloads::reconcile_daemonsets),
        ("scheduler", c.periodic || c.any(&["pods", "nodes"]), scheduler::reconcile),
        ("endpoints", c.any(&["services", "pods"]), endpoints::reconcile),
        ("node-lifecycle", c.periodic || c.any(&["nodes", "leases"]), nodes::reconcile),
        ("serviceaccount", c.any(&["namespaces", "serviceaccounts"]), serviceaccounts::reconcile),
        ("namespace", c.all || c.deletion || c.any(&["namespaces"]), gc::reconcile_namespaces),
        ("garbage-collector", c.all || c.deletion, gc::reconcile),
    ];
    for (name, wanted, pass) in passes {
        if !wanted {
            continue;
        }
        let span = tracing::debug_span!("reconcile", controller = name);
        let _e = span.enter();
        if let Err(e) = pass(reg) {
            // Conflicts and vanished objects are normal races; the next pass retries.
            if e.code != 409 && e.code != 404 {
                tracing::warn!(controller = name, "{e}");
            }
        }
    }
}

pub(crate) fn rt(kind: &str) -> &'static ResourceType {
    by_kind(kind).expect("a served kind")
}

pub(crate) fn list_all(reg: &Registry, kind: &str) -> Result<Vec<Value>, ApiError> {
    Ok(reg.list(rt(kind), None, &ListOptions::default())?.items)
}

/// Every object of a kind, typed. The registry stores only what the type
/// knows (it decodes each write through it), so each one decodes.
pub(crate) fn list_typed<K: Resource + DeserializeOwned>(reg: &Registry) -> Result<Vec<K>, ApiError> {
    list_all(reg, K::KIND)?.into_iter().map(decode).collect()
}

pub(crate) fn decode<K: Resource + DeserializeOwned>(o: Value) -> Result<K, ApiError> {
    serde_json::from_value(o).map_err(|e| ApiError::internal(format!("decoding a stored {}: {e}", K::KIND)))
}

/// Changes one object as its type, retrying on conflicts like
/// [`Registry::modify`]; `f` says whether it changed anything.
pub(crate) fn modify_typed<K: Resource + DeserializeOwned + Serialize>(
    reg: &Registry,
    ns: Option<&str>,
    name: &str,
    part: Part,
    mut f: impl FnMut(&mut K) -> bool,
) -> Result<(), ApiError> {
    reg.modify(rt(K::KIND), ns, name, part, &WriteOptions::default(), |o| {
        let mut typed: K = decode(o.take())?;
        let changed = f(&mut typed);
        *o = serde_json::to_value(&typed)
            .map_err(|e| ApiError::internal(format!("encoding {} {name}: {e}", K::KIND)))?;
        Ok(changed)
    })?;
    Ok(())
}

/// Now, as a typed timestamp, in whole seconds (as [`now`]).
pub(crate) fn time_now() -> Time {
    let seconds = time::OffsetDateTime::now_utc().unix_timestamp();
    Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap_or_default())
}

/// What an Event's `involvedObject` says about a typed object.
pub(crate) fn reference<K: Resource + Metadata<Ty = ObjectMeta>>(o: &K) -> ObjectReference {
    let m = o.metadata();
    ObjectReference {
        api_version: Some(K::API_VERSION.to_string()),
        kind: Some(K::KIND.to_string()),
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        uid: m.uid.clone(),
        resource_version: m.resource_version.clone(),
        field_path: None,
    }
}

pub(crate) fn is_deleting(o: &Value) -> bool {
    o.pointer("/metadata/deletionTimestamp").is_some()
}

pub(crate) fn owned_by<'a>(o: &'a Value, uid: &str) -> Option<&'a Value> {
    o.pointer("/metadata/ownerReferences").and_then(Value::as_array)?.iter().find(|r| r["uid"] == uid)
}

pub(crate) fn controller_ref(owner: &Value) -> Value {
    json!({"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": name_of(owner), "uid": uid_of(owner),
        "controller": true, "blockOwnerDeletion": true})
}

pub(crate) fn selector_of(o: &Value) -> LabelSelector {
    o.pointer("/spec/selector").map(LabelSelector::from_json).unwrap_or_default()
}

pub(crate) fn pod_ready(p: &Value) -> bool {
    p.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

pub(crate) fn pod_active(p: &Value) -> bool {
    !is_deleting(p) && !matches!(p.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed"))
}

pub(crate) fn int(o: &Value, p: &str) -> i64 {
    o.pointer(p).and_then(Value::as_i64).unwrap_or(0)
}

/// Records a core/v1 Event about the object `involved` refers to.
pub(crate) fn event(
    reg: &Registry,
    involved: &ObjectReference,
    ty: &str,
    reason: &str,
    message: &str,
    component: &str,
) {
    let ns = involved.namespace.as_deref().unwrap_or("default").to_string();
    let name = involved.name.as_deref().unwrap_or_default();
    let t = now();
    let e = json!({"metadata": {"name": format!("{name}.{}", &new_uid().replace('-', "")[..16]), "namespace": ns},
        "involvedObject": involved,
        "reason": reason, "message": message, "type": ty, "source": {"component": component},
        "firstTimestamp": t, "lastTimestamp": t, "count": 1, "reportingComponent": component, "reportingInstance": component});
    if let Err(e) = reg.create(rt("Event"), Some(&ns), e, &WriteOptions::default()) {
        tracing::debug!("event: {e}");
    }
}

/// Sets a condition of `type` in `status.conditions`, keeping its
/// transition time when the status does not change. Returns the new list.
pub(crate) fn set_condition(
    conds: &Value,
    ty: &str,
    status: &str,
    reason: &str,
    message: &str,
    update_time: bool,
) -> Value {
    let mut list: Vec<Value> = conds.as_array().cloned().unwrap_or_default();
    let t = now();
    let existing = list.iter().position(|c| c["type"] == ty);
    let mut c = json!({"type": ty, "status": status, "reason": reason, "message": message, "lastTransitionTime": t});
    if update_time {
        c["lastUpdateTime"] = t.clone().into();
    }
    if let Some(i) = existing {
        let old = &list[i];
        if old["status"] == status {
            c["lastTransitionTime"] = old["lastTransitionTime"].clone();
            if old["reason"] == reason && old["message"] == message && update_time {
                c["lastUpdateTime"] = old["lastUpdateTime"].clone();
            }
        }
        list[i] = c;
    } else {
        list.push(c);
    }
    Value::Array(list)
}

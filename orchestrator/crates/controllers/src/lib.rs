//! Controllers and the scheduler, in the API server's process: one task
//! follows every change in the store and, after a short debounce (and at
//! least once a second, for time-based rules), runs each reconciler over a
//! fresh read of what it needs. Reconcilers are level-triggered and write
//! only differences (the registry skips no-op updates), so a pass whose
//! writes cause another pass converges.

pub mod ca_expiry;
pub mod certificates;
mod cronjob;
mod deployment;
mod disruption;
mod endpoints;
pub mod etcd_members;
mod gc;
mod indexed;
pub mod ipam;
pub mod leader;
mod nodes;
mod persistentvolumes;
mod quota;
mod replicaset;
mod replicationcontroller;
mod scheduler;
mod serviceaccounts;
mod statefulset;
mod taints;
mod tokencleaner;
mod workloads;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DeploymentCondition;
use k8s_openapi::api::batch::v1::JobCondition;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::{Metadata, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::{Part, Registry, WriteOptions, new_uid};
use orchestrator_apimachinery::resources::{ResourceType, by_kind};
use orchestrator_apimachinery::selector::LabelSelector;
use orchestrator_apimachinery::typed;

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
            let mut watch = watch_from_now(&reg, "controllers").await;
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

/// A watch of every object from the current revision on; a store that
/// cannot give one is asked again every second (`who` names the caller in the log).
pub(crate) async fn watch_from_now(reg: &Registry, who: &str) -> orchestrator_store::Watch {
    loop {
        let from = reg.store.current_revision().unwrap_or(0);
        match reg.store.watch("/registry/", from) {
            Ok(w) => return w,
            Err(e) => {
                tracing::warn!("{who}: watch: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

type Reconciler = fn(&Registry) -> Result<(), ApiError>;

/// One pass of the reconcilers that `changes` concern.
pub fn reconcile_all(reg: &Registry, changes: &Changes) {
    let c = changes;
    let passes: [(&str, bool, Reconciler); 18] = [
        ("deployment", c.periodic || c.any(&["deployments", "replicasets"]), deployment::reconcile),
        ("replicaset", c.periodic || c.any(&["replicasets", "pods"]), replicaset::reconcile),
        (
            "replicationcontroller",
            c.periodic || c.any(&["replicationcontrollers", "pods"]),
            replicationcontroller::reconcile,
        ),
        ("job", c.periodic || c.any(&["jobs", "pods"]), workloads::reconcile_jobs),
        ("cronjob", c.periodic || c.any(&["cronjobs", "jobs"]), cronjob::reconcile),
        (
            "statefulset",
            c.periodic || c.any(&["statefulsets", "pods", "controllerrevisions", "persistentvolumeclaims"]),
            statefulset::reconcile,
        ),
        ("daemonset", c.periodic || c.any(&["daemonsets", "pods", "nodes"]), workloads::reconcile_daemonsets),
        (
            "persistentvolume",
            c.periodic || c.any(&["persistentvolumeclaims", "persistentvolumes", "storageclasses"]),
            persistentvolumes::reconcile,
        ),
        (
            "disruption",
            c.periodic || c.any(&["poddisruptionbudgets", "pods", "replicasets", "deployments", "statefulsets"]),
            disruption::reconcile,
        ),
        ("resourcequota", c.periodic || c.deletion || c.any(&["resourcequotas"]), quota::reconcile),
        ("scheduler", c.periodic || c.any(&["pods", "nodes"]), scheduler::reconcile),
        ("endpoints", c.any(&["services", "pods"]), endpoints::reconcile),
        ("node-lifecycle", c.periodic || c.any(&["nodes", "leases"]), nodes::reconcile),
        ("taint-eviction", c.periodic || c.any(&["nodes", "leases", "pods"]), taints::reconcile),
        ("node-ipam", c.any(&["nodes"]), ipam::reconcile),
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

/// A bootstrapped registry over a store in `d`, for the controllers' tests.
#[cfg(test)]
pub(crate) fn test_registry(d: &tempfile::TempDir) -> Registry {
    let store = orchestrator_store::SqliteStore::open(&d.path().join("db"), orchestrator_store::Durability::Normal);
    let reg = Registry::new(Arc::new(store.expect("a store in a temporary directory")));
    reg.bootstrap("127.0.0.1:6443").expect("bootstrap");
    reg
}

pub(crate) fn rt(kind: &str) -> &'static ResourceType {
    by_kind(kind).expect("a served kind")
}

/// Every object of a kind, typed. The registry stores only what the type
/// knows (it decodes each write through it), so each one decodes.
pub(crate) fn list_typed<K: Resource + Metadata<Ty = ObjectMeta> + DeserializeOwned>(
    reg: &Registry,
) -> Result<Vec<K>, ApiError> {
    typed::list(reg, rt(K::KIND), None)
}

/// Changes one object as its type, retrying on conflicts like
/// [`Registry::modify`]; `f` says whether it changed anything. Only what `f`
/// changed is written ([`typed::change_as`]), so fields the type does not
/// know survive.
pub(crate) fn modify_typed<K: Resource + DeserializeOwned + Serialize>(
    reg: &Registry,
    ns: Option<&str>,
    name: &str,
    part: Part,
    mut f: impl FnMut(&mut K) -> bool,
) -> Result<(), ApiError> {
    let what = format!("{} {name}", K::KIND);
    reg.modify(rt(K::KIND), ns, name, part, &WriteOptions::default(), |o| typed::change_as(o, &what, &mut f))?;
    Ok(())
}

/// Writes `status` into the status subresource of `o` unless `current`
/// (its status as read) is the same; `field` is the status field of `K`.
pub(crate) fn write_status<K, S>(
    reg: &Registry,
    o: &K,
    current: Option<&S>,
    status: S,
    field: impl Fn(&mut K) -> &mut Option<S>,
) -> Result<(), ApiError>
where
    K: Resource + Metadata<Ty = ObjectMeta> + DeserializeOwned + Serialize,
    S: PartialEq + Clone,
{
    if current == Some(&status) {
        return Ok(());
    }
    let m = o.metadata();
    modify_typed(reg, m.namespace.as_deref(), name(m), Part::Status, |k: &mut K| {
        *field(k) = Some(status.clone());
        true
    })
}

/// Writes the status of `o` over the version it was read at: a conflict
/// means someone (an eviction, an admission) wrote meanwhile, and the next
/// pass recomputes from that.
pub(crate) fn write_status_as_read(
    reg: &Registry,
    rt: &ResourceType,
    ns: Option<&str>,
    name: &str,
    o: serde_json::Value,
) -> Result<(), ApiError> {
    match reg.update(rt, ns, name, o, Part::Status, &WriteOptions::default()) {
        Err(e) if e.code == 409 => Ok(()),
        r => r.map(|_| ()),
    }
}

/// Creates a typed object; returns it as stored.
pub(crate) fn create_typed<K: Resource + DeserializeOwned + Serialize>(
    reg: &Registry,
    ns: Option<&str>,
    o: &K,
) -> Result<K, ApiError> {
    let written = reg.create(rt(K::KIND), ns, typed::encode(o, K::KIND)?, &WriteOptions::default())?;
    typed::decode(written.object, K::KIND)
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

pub(crate) fn name(m: &ObjectMeta) -> &str {
    m.name.as_deref().unwrap_or_default()
}

pub(crate) fn uid(m: &ObjectMeta) -> &str {
    m.uid.as_deref().unwrap_or_default()
}

pub(crate) fn is_deleting(m: &ObjectMeta) -> bool {
    m.deletion_timestamp.is_some()
}

pub(crate) fn owned_by(m: &ObjectMeta, owner_uid: &str) -> bool {
    m.owner_references.iter().flatten().any(|r| r.uid == owner_uid)
}

/// The reference a controller puts on what it creates.
pub(crate) fn controller_ref<K: Resource + Metadata<Ty = ObjectMeta>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::API_VERSION.to_string(),
        kind: K::KIND.to_string(),
        name: name(owner.metadata()).to_string(),
        uid: uid(owner.metadata()).to_string(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

pub(crate) fn selector_of(s: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>) -> LabelSelector {
    s.map(LabelSelector::from_typed).unwrap_or_default()
}

fn conditions(p: &Pod) -> &[PodCondition] {
    p.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or_default()
}

pub(crate) fn ready_condition(p: &Pod) -> Option<&PodCondition> {
    conditions(p).iter().find(|c| c.type_ == "Ready")
}

pub(crate) fn pod_ready(p: &Pod) -> bool {
    ready_condition(p).is_some_and(|c| c.status == "True")
}

pub(crate) fn phase(p: &Pod) -> &str {
    p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or_default()
}

pub(crate) fn pod_active(p: &Pod) -> bool {
    !is_deleting(&p.metadata) && !matches!(phase(p), "Succeeded" | "Failed")
}

pub(crate) fn node_name(p: &Pod) -> Option<&str> {
    p.spec.as_ref().and_then(|s| s.node_name.as_deref())
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
    let t = time_now();
    let e = Event {
        metadata: ObjectMeta {
            name: Some(format!("{name}.{}", &new_uid().replace('-', "")[..16])),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        involved_object: involved.clone(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        type_: Some(ty.into()),
        source: Some(EventSource { component: Some(component.into()), host: None }),
        first_timestamp: Some(t.clone()),
        last_timestamp: Some(t),
        count: Some(1),
        reporting_component: Some(component.into()),
        reporting_instance: Some(component.into()),
        ..Default::default()
    };
    if let Err(e) = create_typed(reg, Some(&ns), &e) {
        tracing::debug!("event: {e}");
    }
}

/// A status condition: Deployment, Job and Pod conditions share these fields.
pub(crate) trait Condition: Default {
    fn type_(&self) -> &str;
    fn status(&self) -> &str;
    fn reason(&self) -> Option<&str>;
    fn message(&self) -> Option<&str>;
    fn set(&mut self, ty: &str, status: &str, reason: &str, message: &str);
    fn transition(&mut self) -> &mut Option<Time>;
    /// `lastUpdateTime`, for the kinds that have one.
    fn update(&mut self) -> Option<&mut Option<Time>>;
}

macro_rules! condition {
    ($ty:ty, |$c:ident| $update:expr) => {
        impl Condition for $ty {
            fn type_(&self) -> &str {
                &self.type_
            }
            fn status(&self) -> &str {
                &self.status
            }
            fn reason(&self) -> Option<&str> {
                self.reason.as_deref()
            }
            fn message(&self) -> Option<&str> {
                self.message.as_deref()
            }
            fn set(&mut self, ty: &str, status: &str, reason: &str, message: &str) {
                self.type_ = ty.into();
                self.status = status.into();
                self.reason = Some(reason.into());
                self.message = Some(message.into());
            }
            fn transition(&mut self) -> &mut Option<Time> {
                &mut self.last_transition_time
            }
            fn update(&mut self) -> Option<&mut Option<Time>> {
                let $c = self;
                $update
            }
        }
    };
}
condition!(DeploymentCondition, |c| Some(&mut c.last_update_time));
condition!(JobCondition, |_c| None);
condition!(PodCondition, |_c| None);

/// Sets a condition of `type`, keeping its transition time when the status
/// does not change (and its update time when nothing changes).
pub(crate) fn set_condition<C: Condition>(
    list: &mut Vec<C>,
    ty: &str,
    status: &str,
    reason: &str,
    message: &str,
    update_time: bool,
) {
    let t = time_now();
    let mut c = C::default();
    c.set(ty, status, reason, message);
    *c.transition() = Some(t.clone());
    if update_time && let Some(u) = c.update() {
        *u = Some(t);
    }
    match list.iter_mut().find(|c| c.type_() == ty) {
        Some(old) => {
            if old.status() == status {
                *c.transition() = old.transition().clone();
                let same = old.reason() == Some(reason) && old.message() == Some(message);
                if same
                    && update_time
                    && let (Some(u), Some(old_u)) = (c.update(), old.update())
                {
                    *u = old_u.clone();
                }
            }
            *old = c;
        }
        None => list.push(c),
    }
}

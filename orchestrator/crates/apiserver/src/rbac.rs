//! Role-based access control, as upstream's RBAC authorizer: Roles,
//! ClusterRoles (with `aggregationRule`), RoleBindings and
//! ClusterRoleBindings, evaluated from an in-memory index that watches the
//! store (no SQLite read per request); the bootstrap policy
//! (`kubernetes.io/bootstrapping=rbac-defaults`), reconciled at start; the
//! ClusterRole aggregation controller; escalation prevention.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject as RbacSubject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::{
    ListOptions, Part, Registry, WriteOptions, name_of, namespace_of, resource_version_of,
};
use orchestrator_apimachinery::resources::{ResourceType, by_kind};
use orchestrator_apimachinery::selector::LabelSelector;
use orchestrator_apimachinery::typed;
use orchestrator_http::pki::{ADMIN_GROUP, READ_ONLY_GROUP};

use crate::User;

pub const AUTHENTICATED: &str = "system:authenticated";
const BOOTSTRAP_LABEL: &str = "kubernetes.io/bootstrapping";
const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";
const KINDS: [&str; 4] = ["Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"];

/// What a request asks to do.
#[derive(Debug, Clone, Default)]
pub struct Attributes {
    pub verb: String,
    pub namespace: Option<String>,
    pub group: String,
    /// The plural, without the subresource.
    pub resource: String,
    pub subresource: Option<String>,
    pub name: Option<String>,
    /// A non-resource request's path (then the resource fields are empty).
    pub path: Option<String>,
}

impl Attributes {
    pub fn resource(verb: &str, ns: Option<&str>, group: &str, resource: &str, name: Option<&str>) -> Attributes {
        let (resource, sub) = match resource.split_once('/') {
            Some((r, s)) => (r, Some(s.to_string())),
            None => (resource, None),
        };
        Attributes {
            verb: verb.into(),
            namespace: ns.filter(|n| !n.is_empty()).map(str::to_string),
            group: group.into(),
            resource: resource.into(),
            subresource: sub,
            name: name.filter(|n| !n.is_empty()).map(str::to_string),
            path: None,
        }
    }

    pub fn non_resource(verb: &str, path: &str) -> Attributes {
        Attributes { verb: verb.into(), path: Some(path.into()), ..Default::default() }
    }

    /// `resource/subresource`, as rules name it.
    pub fn combined(&self) -> String {
        match &self.subresource {
            Some(s) => format!("{}/{s}", self.resource),
            None => self.resource.clone(),
        }
    }
}

/// One `PolicyRule`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rule {
    pub verbs: Vec<String>,
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub resource_names: Vec<String>,
    pub non_resource_urls: Vec<String>,
}

/// A list of strings at `field` (none when absent).
pub(crate) fn strings(v: &Value, field: &str) -> Vec<String> {
    v.get(field)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

impl Rule {
    pub fn from_json(v: &Value) -> Rule {
        Rule {
            verbs: strings(v, "verbs"),
            api_groups: strings(v, "apiGroups"),
            resources: strings(v, "resources"),
            resource_names: strings(v, "resourceNames"),
            non_resource_urls: strings(v, "nonResourceURLs"),
        }
    }

    pub fn from_typed(r: &PolicyRule) -> Rule {
        let list = |l: &Option<Vec<String>>| l.clone().unwrap_or_default();
        Rule {
            verbs: r.verbs.clone(),
            api_groups: list(&r.api_groups),
            resources: list(&r.resources),
            resource_names: list(&r.resource_names),
            non_resource_urls: list(&r.non_resource_urls),
        }
    }

    pub fn to_json(&self) -> Value {
        let mut v = json!({"verbs": self.verbs});
        for (field, list) in [
            ("apiGroups", &self.api_groups),
            ("resources", &self.resources),
            ("resourceNames", &self.resource_names),
            ("nonResourceURLs", &self.non_resource_urls),
        ] {
            if !list.is_empty() {
                v[field] = json!(list);
            }
        }
        v
    }

    /// Upstream's `RuleAllows`.
    pub fn allows(&self, a: &Attributes) -> bool {
        let has = |list: &[String], want: &str| list.iter().any(|x| x == "*" || x == want);
        if !has(&self.verbs, &a.verb) {
            return false;
        }
        if let Some(path) = &a.path {
            return self
                .non_resource_urls
                .iter()
                .any(|u| u == "*" || u == path || u.strip_suffix('*').is_some_and(|prefix| path.starts_with(prefix)));
        }
        let combined = a.combined();
        has(&self.api_groups, &a.group)
            && self
                .resources
                .iter()
                .any(|r| r == "*" || *r == combined || a.subresource.as_ref().is_some_and(|s| *r == format!("*/{s}")))
            && (self.resource_names.is_empty() || a.name.as_ref().is_some_and(|n| self.resource_names.contains(n)))
    }

    /// Upstream's `Covers` for one rule: everything `sub` grants, `self` does.
    fn covers(&self, sub: &Rule) -> bool {
        let all = |owner: &[String], wanted: &[String]| {
            owner.iter().any(|o| o == "*") || wanted.iter().all(|w| owner.contains(w))
        };
        let resources = sub.resources.iter().all(|r| {
            self.resources
                .iter()
                .any(|o| o == "*" || o == r || r.split_once('/').is_some_and(|(_, s)| *o == format!("*/{s}")))
        });
        let urls = sub.non_resource_urls.iter().all(|u| {
            self.non_resource_urls
                .iter()
                .any(|o| o == "*" || o == u || o.strip_suffix('*').is_some_and(|p| u.starts_with(p)))
        });
        let names = self.resource_names.is_empty()
            || (!sub.resource_names.is_empty() && sub.resource_names.iter().all(|n| self.resource_names.contains(n)));
        all(&self.verbs, &sub.verbs)
            && (sub.api_groups.is_empty() || all(&self.api_groups, &sub.api_groups))
            && resources
            && urls
            && (sub.resources.is_empty() || names)
    }

    /// Splits into rules of one verb, group, resource, name or URL each
    /// (upstream's `BreakdownRule`), so that several owner rules can
    /// together cover one rule.
    fn breakdown(&self) -> Vec<Rule> {
        let one = |s: &String| vec![s.clone()];
        let mut out = Vec::new();
        for verb in &self.verbs {
            for group in &self.api_groups {
                for resource in &self.resources {
                    let names: Vec<Vec<String>> = if self.resource_names.is_empty() {
                        vec![Vec::new()]
                    } else {
                        self.resource_names.iter().map(one).collect()
                    };
                    for n in names {
                        out.push(Rule {
                            verbs: one(verb),
                            api_groups: one(group),
                            resources: one(resource),
                            resource_names: n,
                            ..Default::default()
                        });
                    }
                }
            }
            for url in &self.non_resource_urls {
                out.push(Rule { verbs: one(verb), non_resource_urls: one(url), ..Default::default() });
            }
        }
        out
    }

    /// Upstream's compact string form, for error messages.
    fn describe(&self) -> String {
        let q = |l: &[String]| l.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(" ");
        let mut parts = Vec::new();
        if !self.api_groups.is_empty() {
            parts.push(format!("APIGroups:[{}]", q(&self.api_groups)));
        }
        if !self.resources.is_empty() {
            parts.push(format!("Resources:[{}]", q(&self.resources)));
        }
        if !self.resource_names.is_empty() {
            parts.push(format!("ResourceNames:[{}]", q(&self.resource_names)));
        }
        if !self.non_resource_urls.is_empty() {
            parts.push(format!("NonResourceURLs:[{}]", q(&self.non_resource_urls)));
        }
        parts.push(format!("Verbs:[{}]", q(&self.verbs)));
        format!("{{{}}}", parts.join(", "))
    }
}

fn rules_of(rules: Option<&Vec<PolicyRule>>) -> Vec<Rule> {
    rules.into_iter().flatten().map(Rule::from_typed).collect()
}

/// Whether a binding's subject is this user.
fn subject_applies(s: &RbacSubject, binding_ns: Option<&str>, user: &User) -> bool {
    match s.kind.as_str() {
        "User" => user.name == s.name,
        "Group" => user.groups.iter().any(|g| *g == s.name),
        "ServiceAccount" => {
            let ns = s.namespace.as_deref().filter(|n| !n.is_empty()).or(binding_ns);
            ns.is_some_and(|ns| user.name == format!("system:serviceaccount:{ns}:{}", s.name))
        }
        _ => false,
    }
}

/// A RoleBinding or ClusterRoleBinding, as the index keeps it (both kinds have this shape).
struct Binding {
    namespace: Option<String>,
    role_ref: RoleRef,
    subjects: Vec<RbacSubject>,
}

impl Binding {
    fn applies(&self, user: &User) -> bool {
        self.subjects.iter().any(|s| subject_applies(s, self.namespace.as_deref(), user))
    }
}

/// The index: every RBAC object, typed, by `namespace/name`.
#[derive(Default)]
struct Snapshot {
    roles: HashMap<String, Role>,
    cluster_roles: HashMap<String, ClusterRole>,
    role_bindings: HashMap<String, Binding>,
    cluster_role_bindings: HashMap<String, Binding>,
    /// The resourceVersion each `kind namespace/name` was last set (or
    /// removed) at: the watches replay from the oldest listed revision and
    /// the aggregation controller sets its writes at once, so an object can
    /// arrive older than the one held, and is then ignored.
    revisions: HashMap<String, i64>,
}

impl Snapshot {
    /// Sets (or with `deleted`, removes) one stored object of `kind`,
    /// unless the index holds it at a later resourceVersion.
    fn apply(&mut self, kind: &str, o: Value, deleted: bool) -> Result<(), ApiError> {
        fn put<K>(map: &mut HashMap<String, K>, key: String, o: Option<K>) {
            match o {
                Some(o) => map.insert(key, o),
                None => map.remove(&key),
            };
        }
        let key = format!("{}/{}", namespace_of(&o).unwrap_or_default(), name_of(&o));
        let revision = resource_version_of(&o).and_then(|v| v.parse().ok());
        if let Some(revision) = revision {
            let held = self.revisions.entry(format!("{kind} {key}")).or_insert(revision);
            if *held > revision {
                return Ok(());
            }
            *held = revision;
        }
        let binding = |b: Option<(ObjectMeta, RoleRef, Option<Vec<RbacSubject>>)>| {
            b.map(|(m, role_ref, subjects)| Binding {
                namespace: m.namespace,
                role_ref,
                subjects: subjects.unwrap_or_default(),
            })
        };
        let what = format!("{kind} {key}");
        match kind {
            "Role" => put(&mut self.roles, key, (!deleted).then(|| typed::decode(o, &what)).transpose()?),
            "ClusterRole" => {
                put(&mut self.cluster_roles, key, (!deleted).then(|| typed::decode(o, &what)).transpose()?)
            }
            "RoleBinding" => {
                let b: Option<RoleBinding> = (!deleted).then(|| typed::decode(o, &what)).transpose()?;
                put(&mut self.role_bindings, key, binding(b.map(|b| (b.metadata, b.role_ref, b.subjects))))
            }
            _ => {
                let b: Option<ClusterRoleBinding> = (!deleted).then(|| typed::decode(o, &what)).transpose()?;
                put(&mut self.cluster_role_bindings, key, binding(b.map(|b| (b.metadata, b.role_ref, b.subjects))))
            }
        }
        Ok(())
    }

    /// The rules a binding in `ns` grants through `role_ref` (none when its role is missing).
    fn granted(&self, role_ref: &RoleRef, ns: Option<&str>) -> Vec<Rule> {
        let name = &role_ref.name;
        match role_ref.kind.as_str() {
            "ClusterRole" => self.cluster_roles.get(&format!("/{name}")).map(|r| rules_of(r.rules.as_ref())),
            "Role" => self.roles.get(&format!("{}/{name}", ns.unwrap_or_default())).map(|r| rules_of(r.rules.as_ref())),
            _ => None,
        }
        .unwrap_or_default()
    }

    /// Every rule that applies to `user` in `ns` (cluster-wide ones always).
    fn rules_for(&self, user: &User, ns: Option<&str>) -> Vec<Rule> {
        let granted = |b: &Binding| self.granted(&b.role_ref, b.namespace.as_deref());
        let mut rules: Vec<Rule> =
            self.cluster_role_bindings.values().filter(|b| b.applies(user)).flat_map(granted).collect();
        if let Some(ns) = ns {
            rules.extend(
                self.role_bindings
                    .values()
                    .filter(|b| b.namespace.as_deref() == Some(ns) && b.applies(user))
                    .flat_map(granted),
            );
        }
        rules
    }
}

/// The authorizer and its watch-fed index.
pub struct Rbac {
    snapshot: RwLock<Snapshot>,
}

fn rt(kind: &str) -> &'static ResourceType {
    by_kind(kind).expect("RBAC kinds are served")
}

impl Rbac {
    /// Reconciles the bootstrap policy, loads the index and keeps it
    /// current from watches; runs the aggregation controller.
    pub fn start(registry: Arc<Registry>) -> Result<Arc<Rbac>, ApiError> {
        reconcile_defaults(&registry)?;
        let rbac = Arc::new(Rbac { snapshot: RwLock::default() });
        let mut from = i64::MAX;
        {
            let mut snap = rbac.snapshot.write().unwrap_or_else(|e| e.into_inner());
            for kind in KINDS {
                let list = registry.list(rt(kind), None, &ListOptions::default())?;
                from = from.min(list.revision);
                for o in list.items {
                    // The registry decodes every write through its type, so a stored object decodes.
                    if let Err(e) = snap.apply(kind, o, false) {
                        tracing::error!("the RBAC index: {}", e.message);
                    }
                }
            }
        }
        aggregate(&registry, &rbac);
        for kind in KINDS {
            let mut watch = registry
                .watch(rt(kind), None, from, LabelSelector::default(), Default::default())
                .map_err(|e| ApiError::internal(format!("watching {kind}s for the RBAC index: {e}")))?;
            let (rbac, registry) = (Arc::downgrade(&rbac), registry.clone());
            tokio::spawn(async move {
                loop {
                    let event = match watch.next().await {
                        Ok(e) => e,
                        Err(e) => {
                            tracing::error!("the RBAC index's watch of {kind}s ended: {e}");
                            return;
                        }
                    };
                    let Some(rbac) = rbac.upgrade() else { return };
                    {
                        let mut snap = rbac.snapshot.write().unwrap_or_else(|e| e.into_inner());
                        if let Err(e) = snap.apply(kind, event.object, event.kind == "DELETED") {
                            tracing::error!("the RBAC index: {}", e.message);
                        }
                    }
                    if kind == "ClusterRole" {
                        aggregate(&registry, &rbac);
                    }
                }
            });
        }
        Ok(rbac)
    }

    /// Whether `user` may do `a`: `system:masters` always, otherwise as
    /// the rules bound to the user say.
    pub fn allows(&self, user: &User, a: &Attributes) -> bool {
        if user.groups.iter().any(|g| g == ADMIN_GROUP) {
            return true;
        }
        let snap = self.snapshot.read().unwrap_or_else(|e| e.into_inner());
        snap.rules_for(user, a.namespace.as_deref()).iter().any(|r| r.allows(a))
    }

    /// What `user` may do in `ns` (SelfSubjectRulesReview).
    pub fn rules_for(&self, user: &User, ns: Option<&str>) -> Vec<Rule> {
        if user.groups.iter().any(|g| g == ADMIN_GROUP) {
            return vec![
                Rule {
                    verbs: vec!["*".into()],
                    api_groups: vec!["*".into()],
                    resources: vec!["*".into()],
                    ..Default::default()
                },
                Rule { verbs: vec!["*".into()], non_resource_urls: vec!["*".into()], ..Default::default() },
            ];
        }
        self.snapshot.read().unwrap_or_else(|e| e.into_inner()).rules_for(user, ns)
    }

    /// Escalation prevention for a write of an RBAC object `obj` by `user`
    /// (upstream's `ConfirmNoEscalation` and the `escalate`/`bind` verbs).
    pub fn check_write(&self, user: &User, rt: &ResourceType, ns: Option<&str>, obj: &Value) -> Result<(), ApiError> {
        let name = name_of(obj);
        // `obj` is the request's object; one its type cannot hold is refused as the registry refuses it.
        let (granted, role_kind, role_name) = match rt.kind {
            "Role" => (rules_of(typed::from_body::<Role>(rt, obj)?.rules.as_ref()), rt.kind, name.to_string()),
            "ClusterRole" => {
                (rules_of(typed::from_body::<ClusterRole>(rt, obj)?.rules.as_ref()), rt.kind, name.to_string())
            }
            "RoleBinding" | "ClusterRoleBinding" => {
                let role_ref = if rt.kind == "RoleBinding" {
                    typed::from_body::<RoleBinding>(rt, obj)?.role_ref
                } else {
                    typed::from_body::<ClusterRoleBinding>(rt, obj)?.role_ref
                };
                let snap = self.snapshot.read().unwrap_or_else(|e| e.into_inner());
                let b_ns = ns.map(str::to_string).or_else(|| namespace_of(obj).map(str::to_string));
                let kind = if role_ref.kind == "ClusterRole" { "ClusterRole" } else { "Role" };
                (snap.granted(&role_ref, b_ns.as_deref()), kind, role_ref.name.clone())
            }
            _ => return Ok(()),
        };
        let verb = if rt.kind.ends_with("Binding") { "bind" } else { "escalate" };
        let plural = if role_kind == "ClusterRole" { "clusterroles" } else { "roles" };
        let role_ns = if role_kind == "ClusterRole" { None } else { ns };
        let attrs = Attributes::resource(verb, role_ns.or(ns), rt.group, plural, Some(&role_name));
        if self.allows(user, &attrs) {
            return Ok(());
        }
        let held = self.rules_for(user, ns);
        let missing: Vec<Rule> =
            granted.iter().flat_map(Rule::breakdown).filter(|r| !held.iter().any(|h| h.covers(r))).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let groups = user.groups.iter().map(|g| format!("{g:?}")).collect::<Vec<_>>().join(" ");
        let list = missing.iter().map(Rule::describe).collect::<Vec<_>>().join("\n");
        let what = format!(
            "user {:?} (groups=[{groups}]) is attempting to grant RBAC permissions not currently held:\n{list}",
            user.name
        );
        Err(ApiError::forbidden(format!(
            "{} {name:?} is forbidden: {what}",
            orchestrator_apimachinery::errors::qualified(rt)
        )))
    }
}

/// The aggregation controller: an aggregated ClusterRole's rules are the
/// union of the rules of the ClusterRoles its selectors pick.
fn aggregate(registry: &Registry, rbac: &Rbac) {
    let wanted: Vec<(String, Vec<PolicyRule>)> = {
        let snap = rbac.snapshot.read().unwrap_or_else(|e| e.into_inner());
        let mut roles: Vec<&ClusterRole> = snap.cluster_roles.values().collect();
        let name = |r: &ClusterRole| r.metadata.name.clone().unwrap_or_default();
        roles.sort_by_key(|r| name(r));
        roles
            .iter()
            .filter_map(|role| {
                let selectors = role.aggregation_rule.as_ref()?.cluster_role_selectors.as_ref()?;
                let mut rules: Vec<PolicyRule> = Vec::new();
                for sel in selectors.iter().map(LabelSelector::from_typed).filter(|s| !s.is_empty()) {
                    for other in &roles {
                        let labels = other.metadata.labels.clone().unwrap_or_default();
                        if name(other) != name(role) && sel.matches(&labels) {
                            for r in other.rules.iter().flatten() {
                                if !rules.contains(r) {
                                    rules.push(r.clone());
                                }
                            }
                        }
                    }
                }
                let current = role.rules.clone().unwrap_or_default();
                (current != rules).then(|| (name(role), rules))
            })
            .collect()
    };
    for (name, rules) in wanted {
        let what = format!("ClusterRole {name}");
        let set = registry.modify(rt("ClusterRole"), None, &name, Part::Main, &WriteOptions::default(), |o| {
            typed::change_as(o, &what, |r: &mut ClusterRole| {
                r.rules = Some(rules.clone());
                true
            })
        });
        // In force at once, not when the watch brings the write back: at
        // start the read-only group's `view` is granted only this way.
        let applied = set.and_then(|w| {
            rbac.snapshot.write().unwrap_or_else(|e| e.into_inner()).apply("ClusterRole", w.object, false)
        });
        if let Err(e) = applied {
            tracing::warn!("aggregating the rules of ClusterRole {name:?}: {}", e.message);
        }
    }
}

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({"verbs": verbs, "apiGroups": groups, "resources": resources})
}

fn urls(verbs: &[&str], urls: &[&str]) -> Value {
    json!({"verbs": verbs, "nonResourceURLs": urls})
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const AGG: &str = "rbac.authorization.k8s.io/aggregate-to-";

fn cluster_role(name: &str, labels: Value, rules: Vec<Value>) -> Value {
    let mut l = json!({BOOTSTRAP_LABEL: "rbac-defaults"});
    for (k, v) in labels.as_object().into_iter().flatten() {
        l[k] = v.clone();
    }
    json!({"metadata": {"name": name, "labels": l, "annotations": {AUTOUPDATE: "true"}}, "rules": rules})
}

fn aggregated(name: &str, labels: Value) -> Value {
    let mut r = cluster_role(name, labels, Vec::new());
    r["aggregationRule"] = json!({"clusterRoleSelectors": [{"matchLabels": {format!("{AGG}{name}"): "true"}}]});
    r
}

/// Upstream's bootstrap ClusterRoles, for the resources Plinth serves.
pub fn default_cluster_roles() -> Vec<Value> {
    let rw: Vec<&str> = READ.iter().chain(WRITE).copied().collect();
    vec![
        cluster_role("cluster-admin", json!({}), vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])]),
        aggregated("admin", json!({})),
        aggregated("edit", json!({format!("{AGG}admin"): "true"})),
        aggregated("view", json!({format!("{AGG}edit"): "true"})),
        // What metrics-server installs; `metrics.k8s.io` is served here.
        cluster_role(
            "system:aggregated-metrics-reader",
            json!({format!("{AGG}view"): "true", format!("{AGG}edit"): "true", format!("{AGG}admin"): "true"}),
            vec![rule(READ, &["metrics.k8s.io"], &["nodes", "pods"])],
        ),
        cluster_role(
            "system:aggregate-to-admin",
            json!({format!("{AGG}admin"): "true"}),
            vec![
                rule(&["create"], &["authorization.k8s.io"], &["localsubjectaccessreviews"]),
                rule(&rw, &["rbac.authorization.k8s.io"], &["rolebindings", "roles"]),
            ],
        ),
        cluster_role(
            "system:aggregate-to-edit",
            json!({format!("{AGG}edit"): "true"}),
            vec![
                rule(
                    READ,
                    &[""],
                    &["pods/attach", "pods/exec", "pods/portforward", "pods/proxy", "secrets", "services/proxy"],
                ),
                rule(&["impersonate"], &[""], &["serviceaccounts"]),
                rule(WRITE, &[""], &["pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy"]),
                rule(&["create"], &[""], &["pods/eviction"]),
                rule(
                    WRITE,
                    &[""],
                    &[
                        "configmaps",
                        "events",
                        "persistentvolumeclaims",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "secrets",
                        "serviceaccounts",
                        "services",
                        "services/proxy",
                    ],
                ),
                rule(&["create"], &[""], &["serviceaccounts/token"]),
                rule(
                    WRITE,
                    &["apps"],
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/rollback",
                        "deployments/scale",
                        "replicasets",
                        "replicasets/scale",
                        "statefulsets",
                        "statefulsets/scale",
                    ],
                ),
                rule(WRITE, &["batch"], &["cronjobs", "jobs"]),
                rule(&rw, &["coordination.k8s.io"], &["leases"]),
            ],
        ),
        cluster_role(
            "system:aggregate-to-view",
            json!({format!("{AGG}view"): "true"}),
            vec![
                rule(
                    READ,
                    &[""],
                    &[
                        "configmaps",
                        "endpoints",
                        "persistentvolumeclaims",
                        "persistentvolumeclaims/status",
                        "pods",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "serviceaccounts",
                        "services",
                        "services/status",
                    ],
                ),
                rule(
                    READ,
                    &[""],
                    &[
                        "bindings",
                        "events",
                        "limitranges",
                        "namespaces/status",
                        "pods/log",
                        "pods/status",
                        "replicationcontrollers/status",
                        "resourcequotas",
                        "resourcequotas/status",
                    ],
                ),
                rule(READ, &[""], &["namespaces"]),
                rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
                rule(
                    READ,
                    &["apps"],
                    &[
                        "controllerrevisions",
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "statefulsets",
                        "statefulsets/scale",
                        "statefulsets/status",
                    ],
                ),
                rule(READ, &["batch"], &["cronjobs", "cronjobs/status", "jobs", "jobs/status"]),
            ],
        ),
        cluster_role(
            "system:discovery",
            json!({}),
            vec![urls(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
        ),
        cluster_role(
            "system:basic-user",
            json!({}),
            vec![
                rule(&["create"], &["authorization.k8s.io"], &["selfsubjectaccessreviews", "selfsubjectrulesreviews"]),
                rule(&["create"], &["authentication.k8s.io"], &["selfsubjectreviews"]),
            ],
        ),
        cluster_role(
            "system:node-bootstrapper",
            json!({}),
            vec![rule(&["create", "get", "list", "watch"], &["certificates.k8s.io"], &["certificatesigningrequests"])],
        ),
        cluster_role(
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            json!({}),
            vec![rule(&["create"], &["certificates.k8s.io"], &["certificatesigningrequests/nodeclient"])],
        ),
        cluster_role(
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            json!({}),
            vec![rule(&["create"], &["certificates.k8s.io"], &["certificatesigningrequests/selfnodeclient"])],
        ),
        cluster_role("system:node", json!({}), node_rules()),
        cluster_role(
            "system:public-info-viewer",
            json!({}),
            vec![urls(&["get"], &["/healthz", "/livez", "/readyz", "/version", "/version/"])],
        ),
    ]
}

fn cluster_role_binding(name: &str, role: &str, groups: &[&str]) -> Value {
    let subjects: Vec<Value> =
        groups.iter().map(|g| json!({"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": g})).collect();
    json!({"metadata": {"name": name, "labels": {BOOTSTRAP_LABEL: "rbac-defaults"}, "annotations": {AUTOUPDATE: "true"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": subjects})
}

/// Upstream's bootstrap ClusterRoleBindings, and Plinth's read-only group bound to `view`.
pub fn default_cluster_role_bindings() -> Vec<Value> {
    vec![
        cluster_role_binding("cluster-admin", "cluster-admin", &[ADMIN_GROUP]),
        cluster_role_binding("system:discovery", "system:discovery", &[AUTHENTICATED]),
        cluster_role_binding("system:basic-user", "system:basic-user", &[AUTHENTICATED]),
        cluster_role_binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            &[AUTHENTICATED, "system:unauthenticated"],
        ),
        cluster_role_binding(READ_ONLY_GROUP, "view", &[READ_ONLY_GROUP]),
        // Joining by token, as kubeadm binds it: bootstrappers may ask for a
        // node client certificate; nodes may renew their own.
        cluster_role_binding("kubeadm:kubelet-bootstrap", "system:node-bootstrapper", &[BOOTSTRAPPERS]),
        cluster_role_binding(
            "kubeadm:node-autoapprove-bootstrap",
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            &[BOOTSTRAPPERS],
        ),
        cluster_role_binding(
            "kubeadm:node-autoapprove-certificate-rotation",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            &[NODES],
        ),
        // As upstream since its Node authorizer: `system:node` bound to
        // nobody (`node_authz` answers for kubelets).
        cluster_role_binding("system:node", "system:node", &[]),
    ]
}

const BOOTSTRAPPERS: &str = orchestrator_apimachinery::bootstrap_token::GROUP;
const NODES: &str = orchestrator_apimachinery::certificates::NODES_GROUP;

/// Upstream's `system:node` ClusterRole: what a kubelet (with its service
/// proxy and cluster DNS) reads and writes.
pub(crate) fn node_rules() -> Vec<Value> {
    vec![
        rule(&["create", "delete", "get", "list", "patch", "update", "watch"], &[""], &["nodes"]),
        rule(&["patch", "update"], &[""], &["nodes/status"]),
        rule(&["create", "patch", "update"], &["", "events.k8s.io"], &["events"]),
        rule(&["create", "delete", "get", "list", "watch"], &[""], &["pods"]),
        rule(&["patch", "update"], &[""], &["pods/status"]),
        rule(&["create"], &[""], &["pods/eviction"]),
        rule(&["get", "list", "watch"], &[""], &["configmaps", "secrets", "services", "endpoints", "namespaces"]),
        rule(&["get"], &[""], &["persistentvolumeclaims"]),
        // Beyond upstream's role: a Plinth kubelet is also the local-path
        // provisioner's deleter, so it lists volumes and deletes the
        // Released ones whose directories it removed (`kubelet/src/claims.rs`).
        rule(&["get", "list", "delete"], &[""], &["persistentvolumes"]),
        rule(&["update", "patch"], &[""], &["persistentvolumeclaims/status"]),
        rule(&["create"], &[""], &["serviceaccounts/token"]),
        rule(&["get", "list", "watch"], &["discovery.k8s.io"], &["endpointslices"]),
        rule(&["create", "delete", "get", "patch", "update"], &["coordination.k8s.io"], &["leases"]),
        rule(&["create", "get", "list", "watch"], &["certificates.k8s.io"], &["certificatesigningrequests"]),
        rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        rule(&["create"], &["authorization.k8s.io"], &["subjectaccessreviews", "localsubjectaccessreviews"]),
    ]
}

/// Creates the bootstrap policy, and (as upstream's reconciliation) adds
/// back what is missing from an object still marked
/// `rbac.authorization.kubernetes.io/autoupdate: "true"`.
fn reconcile_defaults(registry: &Registry) -> Result<(), ApiError> {
    let defaults = default_cluster_roles()
        .into_iter()
        .map(|o| ("ClusterRole", o))
        .chain(default_cluster_role_bindings().into_iter().map(|o| ("ClusterRoleBinding", o)));
    for (kind, want) in defaults {
        let rt = rt(kind);
        match registry.create(rt, None, want.clone(), &WriteOptions::default()) {
            Err(e) if e.reason == "AlreadyExists" => {
                // The bootstrap policy is JSON merged into the stored object item by item
                // (upstream's reconciliation), for two kinds alike: it stays JSON.
                registry.modify(rt, None, name_of(&want), Part::Main, &WriteOptions::default(), |o| {
                    if o.pointer(&format!("/metadata/annotations/{}", AUTOUPDATE.replace('/', "~1")))
                        .and_then(Value::as_str)
                        == Some("false")
                    {
                        return Ok(false);
                    }
                    let before = o.clone();
                    for field in ["rules", "subjects"] {
                        for item in want.get(field).and_then(Value::as_array).into_iter().flatten() {
                            let list = o[field].as_array().cloned().unwrap_or_default();
                            if !list.contains(item) {
                                let mut list = list;
                                list.push(item.clone());
                                o[field] = Value::Array(list);
                            }
                        }
                    }
                    if kind == "ClusterRoleBinding" && name_of(&want) == "system:node" {
                        // A store from before the Node authorizer bound the nodes' group here.
                        let legacy = cluster_role_binding("", "", &[NODES])["subjects"][0].clone();
                        if let Some(list) = o["subjects"].as_array_mut() {
                            list.retain(|s| *s != legacy);
                        }
                    }
                    for field in ["roleRef", "aggregationRule"] {
                        if let Some(v) = want.get(field) {
                            o[field] = v.clone();
                        }
                    }
                    Ok(*o != before)
                })?;
            }
            r => {
                r?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(v: Value) -> Rule {
        Rule::from_json(&v)
    }

    #[test]
    fn rules_match_verbs_groups_resources_names_and_urls() {
        let pods = r(json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods", "*/status"]}));
        assert!(pods.allows(&Attributes::resource("get", Some("a"), "", "pods", Some("p"))));
        assert!(!pods.allows(&Attributes::resource("delete", Some("a"), "", "pods", Some("p"))));
        assert!(!pods.allows(&Attributes::resource("get", Some("a"), "apps", "pods", None)));
        assert!(!pods.allows(&Attributes::resource("get", Some("a"), "", "pods/log", Some("p"))));
        assert!(pods.allows(&Attributes::resource("get", Some("a"), "", "services/status", Some("s"))));
        let named = r(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["configmaps"], "resourceNames": ["x"]}));
        assert!(named.allows(&Attributes::resource("update", Some("a"), "", "configmaps", Some("x"))));
        assert!(!named.allows(&Attributes::resource("update", Some("a"), "", "configmaps", Some("y"))));
        assert!(!named.allows(&Attributes::resource("list", Some("a"), "", "configmaps", None)));
        let u = r(json!({"verbs": ["get"], "nonResourceURLs": ["/apis/*", "/api"]}));
        assert!(u.allows(&Attributes::non_resource("get", "/apis/apps/v1")));
        assert!(u.allows(&Attributes::non_resource("get", "/api")));
        assert!(!u.allows(&Attributes::non_resource("get", "/api/v1")));
        assert!(!u.allows(&Attributes::resource("get", None, "", "pods", None)));
    }

    #[test]
    fn coverage_is_per_atom() {
        let held = [
            r(json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]})),
            r(json!({"verbs": ["list"], "apiGroups": [""], "resources": ["pods"]})),
        ];
        let want = r(json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}));
        assert!(want.breakdown().iter().all(|a| held.iter().any(|h| h.covers(a))));
        let more = r(json!({"verbs": ["get", "delete"], "apiGroups": [""], "resources": ["pods"]}));
        let missing: Vec<_> = more.breakdown().into_iter().filter(|a| !held.iter().any(|h| h.covers(a))).collect();
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].describe(), r#"{APIGroups:[""], Resources:["pods"], Verbs:["delete"]}"#);
        let star = r(json!({"verbs": ["*"], "apiGroups": [""], "resources": ["pods"]}));
        assert!(!held.iter().any(|h| h.covers(&star.breakdown()[0])), "a wildcard verb is not held by named verbs");
    }

    #[test]
    fn service_account_subjects_default_to_the_binding_namespace() {
        let user = User { name: "system:serviceaccount:ns:sa".into(), ..Default::default() };
        let applies = |b: &Value, user: &User| {
            let rb: RoleBinding = serde_json::from_value(b.clone()).unwrap();
            let subjects = rb.subjects.unwrap_or_default();
            Binding { namespace: rb.metadata.namespace, role_ref: rb.role_ref, subjects }.applies(user)
        };
        let b = json!({"metadata": {"name": "b", "namespace": "ns"}, "subjects": [{"kind": "ServiceAccount", "name": "sa"}]});
        assert!(applies(&b, &user));
        let other = json!({"metadata": {"name": "b", "namespace": "x"}, "subjects": [{"kind": "ServiceAccount", "name": "sa"}]});
        assert!(!applies(&other, &user));
    }

    /// The read-only group is bound to `view`, an aggregated ClusterRole
    /// whose rules the aggregation controller writes at start: the
    /// authorizer must hold them when `start` returns, before any watch
    /// event has been delivered (a current-thread runtime runs no spawned
    /// task until the test yields), or the first request is refused.
    #[tokio::test]
    async fn aggregated_roles_are_in_force_when_start_returns() {
        use orchestrator_store::{Durability, SqliteStore};
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db"), Durability::Normal).unwrap();
        let registry = Arc::new(Registry::new(Arc::new(store)));
        let rbac = Rbac::start(registry).unwrap();
        let viewer = User { name: "viewer".into(), groups: vec![READ_ONLY_GROUP.into()], ..Default::default() };
        assert!(rbac.allows(&viewer, &Attributes::resource("list", None, "", "namespaces", None)));
        assert!(rbac.allows(&viewer, &Attributes::resource("get", Some("default"), "apps", "deployments", Some("d"))));
        assert!(!rbac.allows(&viewer, &Attributes::resource("delete", Some("default"), "", "configmaps", Some("c"))));
    }

    #[test]
    fn the_index_ignores_an_object_older_than_the_one_it_holds() {
        let role = |rv: &str, verb: &str| json!({"metadata": {"name": "r", "resourceVersion": rv}, "rules": [{"verbs": [verb], "apiGroups": [""], "resources": ["pods"]}]});
        let verbs = |s: &Snapshot| s.cluster_roles["/r"].rules.as_ref().unwrap()[0].verbs.clone();
        let mut snap = Snapshot::default();
        snap.apply("ClusterRole", role("7", "get"), false).unwrap();
        snap.apply("ClusterRole", role("5", "list"), false).unwrap();
        assert_eq!(verbs(&snap), ["get"]);
        snap.apply("ClusterRole", role("9", "watch"), false).unwrap();
        assert_eq!(verbs(&snap), ["watch"]);
        snap.apply("ClusterRole", role("10", "watch"), true).unwrap();
        snap.apply("ClusterRole", role("8", "get"), false).unwrap();
        assert!(snap.cluster_roles.is_empty(), "a replayed write does not bring back a deleted role");
    }
}

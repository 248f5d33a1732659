//! The Node authorizer, as upstream's `--authorization-mode=Node,RBAC`:
//! a kubelet (`system:node:<name>` in `system:nodes`) gets an answer here
//! before RBAC. Secrets, ConfigMaps, PersistentVolumeClaims,
//! PersistentVolumes and ServiceAccount tokens are readable only along a
//! path from the node: node ← pods bound to it (`spec.nodeName`) →
//! what those pods reference (env, envFrom, volumes, projected sources,
//! imagePullSecrets, their ServiceAccount) → a claim's volume. Its Lease
//! is its own; everything else is what upstream's `system:node` role
//! grants. No opinion otherwise (RBAC decides, and the reason given here
//! ends the 403's message, as upstream's).
//!
//! The graph is read from the store per request (one list of the node's
//! pods in the object's namespace) rather than kept in memory from
//! watches as upstream does: the kubelet reads these objects when a pod
//! starts, not on every pass, and a read never lags a binding.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, PodSpec};
use serde_json::Value;

use orchestrator_apimachinery::certificates::{NODE_USER_PREFIX, NODES_GROUP};
use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::{ListOptions, Registry};
use orchestrator_apimachinery::resources::{ResourceType, by_kind};
use orchestrator_apimachinery::selector::FieldSelector;
use orchestrator_apimachinery::typed;

use crate::User;
use crate::rbac::{Attributes, Rule, node_rules};

/// Where nodes' Leases live.
pub(crate) const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// The node `user` acts for: `Some(name)` for `system:node:<name>` in
/// `system:nodes`, `Some("")` for another name in that group, `None` for
/// anyone else.
pub(crate) fn node_of(user: &User) -> Option<&str> {
    if !user.groups.iter().any(|g| g == NODES_GROUP) {
        return None;
    }
    Some(user.name.strip_prefix(NODE_USER_PREFIX).unwrap_or_default())
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    Allow,
    /// RBAC decides; the reason (maybe empty) ends a 403's message.
    NoOpinion(String),
}

fn no(reason: impl Into<String>) -> Decision {
    Decision::NoOpinion(reason.into())
}

/// What a kubelet may do besides the objects handled here: upstream's
/// `system:node` ClusterRole (unbound, as upstream's).
static NODE_RULES: LazyLock<Vec<Rule>> = LazyLock::new(|| node_rules().iter().map(Rule::from_json).collect());

/// The kinds reachable from a node through its pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Object {
    Secret,
    ConfigMap,
    Claim,
    Volume,
    ServiceAccount,
}

/// Upstream's answer for `a` by `user`.
pub(crate) fn authorize(reg: &Registry, user: &User, a: &Attributes) -> Decision {
    let Some(node) = node_of(user) else { return no("") };
    if node.is_empty() {
        return no(format!("unknown node for user {:?}", user.name));
    }
    if a.path.is_some() {
        return rules(a);
    }
    let sub = a.subresource.as_deref();
    match (a.group.as_str(), a.resource.as_str()) {
        ("", "secrets") => read_namespaced(reg, node, Object::Secret, a),
        ("", "configmaps") => read_namespaced(reg, node, Object::ConfigMap, a),
        ("", "persistentvolumeclaims") if sub == Some("status") => {
            if !matches!(a.verb.as_str(), "update" | "patch") {
                return no("can only get/update/patch this type");
            }
            related_answer(reg, node, Object::Claim, a)
        }
        ("", "persistentvolumeclaims") => get_only(reg, node, Object::Claim, a),
        ("", "persistentvolumes") => volumes(reg, node, a),
        ("", "serviceaccounts") => {
            if a.verb != "create" || a.name.is_none() {
                return no("can only create tokens for individual service accounts");
            }
            if sub != Some("token") {
                return no("can only create token subresource of serviceaccount");
            }
            related_answer(reg, node, Object::ServiceAccount, a)
        }
        ("coordination.k8s.io", "leases") => lease(node, a),
        _ => rules(a),
    }
}

fn rules(a: &Attributes) -> Decision {
    if NODE_RULES.iter().any(|r| r.allows(a)) { Decision::Allow } else { no("") }
}

fn read_namespaced(reg: &Registry, node: &str, what: Object, a: &Attributes) -> Decision {
    if !matches!(a.verb.as_str(), "get" | "list" | "watch") {
        return no("can only read resources of this type");
    }
    if a.subresource.is_some() {
        return no("cannot read subresource");
    }
    if a.namespace.is_none() {
        return no("can only read namespaced object of this type");
    }
    related_answer(reg, node, what, a)
}

fn get_only(reg: &Registry, node: &str, what: Object, a: &Attributes) -> Decision {
    if a.verb != "get" {
        return no("can only get individual resources of this type");
    }
    if a.subresource.is_some() {
        return no("cannot get subresource");
    }
    related_answer(reg, node, what, a)
}

/// PersistentVolumes: `get` along the graph, as upstream; beyond upstream,
/// a Plinth kubelet is the local-path deleter, so it lists volumes and
/// deletes those pinned to it (`kubelet/src/claims.rs`).
fn volumes(reg: &Registry, node: &str, a: &Attributes) -> Decision {
    match (a.verb.as_str(), a.subresource.as_deref(), a.name.as_deref()) {
        ("list", None, None) => Decision::Allow,
        ("delete", None, Some(name)) => {
            let pinned = reg.get(rt("PersistentVolume"), None, name).ok().is_some_and(|pv| pinned_to(&pv, node));
            if pinned { Decision::Allow } else { no(unrelated(node)) }
        }
        _ => get_only(reg, node, Object::Volume, a),
    }
}

/// Whether a volume's node affinity names only `node`'s host name.
fn pinned_to(pv: &Value, node: &str) -> bool {
    let Ok(pv) = typed::decode::<PersistentVolume>(pv.clone(), "PersistentVolume") else { return false };
    let terms = pv.spec.and_then(|s| s.node_affinity).and_then(|a| a.required).map(|r| r.node_selector_terms);
    terms.is_some_and(|terms| {
        !terms.is_empty()
            && terms.iter().all(|t| {
                t.match_expressions.iter().flatten().any(|e| {
                    e.key == "kubernetes.io/hostname"
                        && e.operator == "In"
                        && e.values.as_deref() == Some(&[node.into()])
                })
            })
    })
}

fn lease(node: &str, a: &Attributes) -> Decision {
    if !matches!(a.verb.as_str(), "get" | "create" | "update" | "patch" | "delete") {
        return no("can only get, create, update, patch, or delete a node lease");
    }
    if a.namespace.as_deref() != Some(NODE_LEASE_NAMESPACE) {
        return no(format!("can only access leases in the {NODE_LEASE_NAMESPACE:?} system namespace"));
    }
    // On create the name is in the body: NodeRestriction checks it.
    if a.verb != "create" && a.name.as_deref() != Some(node) {
        return no("can only access node lease with the same name as the requesting node");
    }
    Decision::Allow
}

fn unrelated(node: &str) -> String {
    format!("no relationship found between node '{node}' and this object")
}

fn related_answer(reg: &Registry, node: &str, what: Object, a: &Attributes) -> Decision {
    let Some(name) = a.name.as_deref() else { return no("No Object name found") };
    match related(reg, node, what, a.namespace.as_deref().unwrap_or_default(), name) {
        Ok(true) => Decision::Allow,
        Ok(false) => no(unrelated(node)),
        Err(e) => {
            tracing::warn!(node, "node authorizer: {e}");
            no(unrelated(node))
        }
    }
}

fn rt(kind: &str) -> &'static ResourceType {
    by_kind(kind).expect("a served kind")
}

/// The pods bound to `node` in `ns` (every namespace when `None`).
fn pods_on(reg: &Registry, node: &str, ns: Option<&str>) -> Result<Vec<Pod>, ApiError> {
    let fields = FieldSelector(vec![("spec.nodeName".into(), true, node.into())]);
    let list = reg.list(rt("Pod"), ns, &ListOptions { fields, ..Default::default() })?;
    list.items.into_iter().map(|p| typed::decode::<Pod>(p, "Pod")).collect()
}

/// Whether `ns/name` of kind `what` is reachable from `node`.
fn related(reg: &Registry, node: &str, what: Object, ns: &str, name: &str) -> Result<bool, ApiError> {
    if what == Object::Volume {
        let pv = match reg.get(rt("PersistentVolume"), None, name) {
            Ok(pv) => typed::decode::<PersistentVolume>(pv, "PersistentVolume")?,
            Err(e) if e.code == 404 => return Ok(false),
            Err(e) => return Err(e),
        };
        let Some(claim) = pv.spec.and_then(|s| s.claim_ref) else { return Ok(false) };
        let (cns, cname) = (claim.namespace.unwrap_or_default(), claim.name.unwrap_or_default());
        if !related(reg, node, Object::Claim, &cns, &cname)? {
            return Ok(false);
        }
        let bound = match reg.get(rt("PersistentVolumeClaim"), Some(&cns), &cname) {
            Ok(c) => typed::decode::<PersistentVolumeClaim>(c, "PersistentVolumeClaim")?
                .spec
                .and_then(|s| s.volume_name)
                .is_some_and(|v| v == name),
            Err(e) if e.code == 404 => false,
            Err(e) => return Err(e),
        };
        return Ok(bound);
    }
    Ok(pods_on(reg, node, Some(ns))?.iter().any(|p| {
        let refs = references(p);
        match what {
            Object::Secret => refs.secrets.contains(name),
            Object::ConfigMap => refs.config_maps.contains(name),
            Object::Claim => refs.claims.contains(name),
            Object::ServiceAccount => refs.service_account.as_deref() == Some(name),
            Object::Volume => false,
        }
    }))
}

/// The API objects a pod uses (upstream's graph edges from a pod).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct PodReferences {
    pub secrets: BTreeSet<String>,
    pub config_maps: BTreeSet<String>,
    pub claims: BTreeSet<String>,
    pub service_account: Option<String>,
}

pub(crate) fn references(pod: &Pod) -> PodReferences {
    let mut r = PodReferences::default();
    let Some(spec) = &pod.spec else { return r };
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    r.service_account = spec.service_account_name.clone().filter(|s| !s.is_empty());
    for s in spec.image_pull_secrets.iter().flatten() {
        r.secrets.insert(s.name.clone());
    }
    env_references(spec, &mut r);
    for v in spec.volumes.iter().flatten() {
        if let Some(s) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            r.secrets.insert(s);
        }
        if let Some(s) = v.csi.as_ref().and_then(|c| c.node_publish_secret_ref.as_ref()) {
            r.secrets.insert(s.name.clone());
        }
        if let Some(c) = &v.config_map {
            r.config_maps.insert(c.name.clone());
        }
        for s in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(s) = &s.secret {
                r.secrets.insert(s.name.clone());
            }
            if let Some(c) = &s.config_map {
                r.config_maps.insert(c.name.clone());
            }
        }
        if let Some(c) = &v.persistent_volume_claim {
            r.claims.insert(c.claim_name.clone());
        }
        if v.ephemeral.is_some() {
            r.claims.insert(format!("{pod_name}-{}", v.name));
        }
    }
    r.secrets.retain(|n| !n.is_empty());
    r.config_maps.retain(|n| !n.is_empty());
    r
}

/// Secrets and ConfigMaps named by containers' env and envFrom.
fn env_references(spec: &PodSpec, r: &mut PodReferences) {
    let containers = spec.init_containers.iter().flatten().chain(&spec.containers);
    let ephemeral = spec.ephemeral_containers.iter().flatten().map(|e| (&e.env, &e.env_from));
    for (env, env_from) in containers.map(|c| (&c.env, &c.env_from)).chain(ephemeral) {
        for v in env.iter().flatten().filter_map(|e| e.value_from.as_ref()) {
            if let Some(s) = &v.secret_key_ref {
                r.secrets.insert(s.name.clone());
            }
            if let Some(c) = &v.config_map_key_ref {
                r.config_maps.insert(c.name.clone());
            }
        }
        for f in env_from.iter().flatten() {
            if let Some(s) = &f.secret_ref {
                r.secrets.insert(s.name.clone());
            }
            if let Some(c) = &f.config_map_ref {
                r.config_maps.insert(c.name.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchestrator_apimachinery::registry::WriteOptions;
    use orchestrator_store::{Durability, SqliteStore};
    use serde_json::json;
    use std::sync::Arc;

    fn node(name: &str) -> User {
        User {
            name: format!("system:node:{name}"),
            groups: vec![NODES_GROUP.into(), "system:authenticated".into()],
            ..Default::default()
        }
    }

    fn registry() -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db"), Durability::Normal).unwrap();
        let reg = Registry::new(Arc::new(store));
        reg.bootstrap("127.0.0.1:6443").unwrap();
        (dir, reg)
    }

    fn create(reg: &Registry, kind: &str, ns: Option<&str>, o: Value) {
        reg.create(rt(kind), ns, o, &WriteOptions::default()).unwrap();
    }

    fn pod(name: &str, node: &str, spec: Value) -> Value {
        let mut spec = spec;
        spec["nodeName"] = node.into();
        if spec.get("containers").is_none() {
            spec["containers"] = json!([{"name": "c", "image": "busybox"}]);
        }
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}, "spec": spec})
    }

    fn a(verb: &str, ns: Option<&str>, group: &str, resource: &str, name: Option<&str>) -> Attributes {
        Attributes::resource(verb, ns, group, resource, name)
    }

    #[test]
    fn a_pods_references_are_its_edges() {
        let p: Pod = serde_json::from_value(pod(
            "web",
            "w1",
            json!({"serviceAccountName": "robot", "imagePullSecrets": [{"name": "pull"}],
                "initContainers": [{"name": "i", "image": "x", "envFrom": [{"configMapRef": {"name": "init-cm"}}]}],
                "containers": [{"name": "c", "image": "x", "env": [
                    {"name": "A", "valueFrom": {"secretKeyRef": {"name": "env-secret", "key": "k"}}},
                    {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "env-cm", "key": "k"}}}],
                    "envFrom": [{"secretRef": {"name": "from-secret"}}]}],
                "volumes": [
                    {"name": "s", "secret": {"secretName": "vol-secret"}},
                    {"name": "m", "configMap": {"name": "vol-cm"}},
                    {"name": "p", "projected": {"sources": [{"secret": {"name": "proj-secret"}}, {"configMap": {"name": "kube-root-ca.crt"}}]}},
                    {"name": "d", "persistentVolumeClaim": {"claimName": "data"}},
                    {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {"accessModes": ["ReadWriteOnce"]}}}}]}),
        ))
        .unwrap();
        let r = references(&p);
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(r.secrets, set(&["env-secret", "from-secret", "proj-secret", "pull", "vol-secret"]));
        assert_eq!(r.config_maps, set(&["env-cm", "init-cm", "kube-root-ca.crt", "vol-cm"]));
        assert_eq!(r.claims, set(&["data", "web-scratch"]));
        assert_eq!(r.service_account.as_deref(), Some("robot"));
    }

    #[test]
    fn the_authorizer_table() {
        let (_d, reg) = registry();
        create(
            &reg,
            "Pod",
            Some("default"),
            pod(
                "web",
                "w1",
                json!({"serviceAccountName": "robot", "volumes": [
                    {"name": "s", "secret": {"secretName": "mine"}},
                    {"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]}),
            ),
        );
        create(
            &reg,
            "Pod",
            Some("default"),
            pod("db", "w2", json!({"volumes": [{"name": "s", "secret": {"secretName": "theirs"}}]})),
        );
        create(
            &reg,
            "PersistentVolumeClaim",
            Some("default"),
            json!({"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "volumeName": "pv-data",
                "resources": {"requests": {"storage": "1Gi"}}}}),
        );
        let hostname = |n: &str| {
            json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [n]}]}]}})
        };
        create(
            &reg,
            "PersistentVolume",
            None,
            json!({"metadata": {"name": "pv-data"}, "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                "hostPath": {"path": "/x"}, "claimRef": {"namespace": "default", "name": "data"}, "nodeAffinity": hostname("w1")}}),
        );
        create(
            &reg,
            "PersistentVolume",
            None,
            json!({"metadata": {"name": "pv-other"}, "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                "hostPath": {"path": "/y"}, "nodeAffinity": hostname("w2")}}),
        );
        let w1 = node("w1");
        let d = Some("default");
        let unrelated = no("no relationship found between node 'w1' and this object");
        let cases: Vec<(Attributes, Decision)> = vec![
            (a("get", d, "", "secrets", Some("mine")), Decision::Allow),
            (a("watch", d, "", "secrets", Some("mine")), Decision::Allow),
            (a("get", d, "", "secrets", Some("theirs")), unrelated),
            (a("get", Some("kube-system"), "", "secrets", Some("mine")), no(unrelated_msg())),
            (a("list", d, "", "secrets", None), no("No Object name found")),
            (a("list", None, "", "secrets", None), no("can only read namespaced object of this type")),
            (a("update", d, "", "secrets", Some("mine")), no("can only read resources of this type")),
            (a("get", d, "", "configmaps", Some("mine")), no(unrelated_msg())),
            (a("get", d, "", "persistentvolumeclaims", Some("data")), Decision::Allow),
            (a("list", d, "", "persistentvolumeclaims", None), no("can only get individual resources of this type")),
            (a("patch", d, "", "persistentvolumeclaims/status", Some("data")), Decision::Allow),
            (a("get", None, "", "persistentvolumes", Some("pv-data")), Decision::Allow),
            (a("get", None, "", "persistentvolumes", Some("pv-other")), no(unrelated_msg())),
            (a("list", None, "", "persistentvolumes", None), Decision::Allow),
            (a("delete", None, "", "persistentvolumes", Some("pv-data")), Decision::Allow),
            (a("delete", None, "", "persistentvolumes", Some("pv-other")), no(unrelated_msg())),
            (a("create", d, "", "serviceaccounts/token", Some("robot")), Decision::Allow),
            (a("create", d, "", "serviceaccounts/token", Some("default")), no(unrelated_msg())),
            (
                a("get", d, "", "serviceaccounts", Some("robot")),
                no("can only create tokens for individual service accounts"),
            ),
            (a("update", Some("kube-node-lease"), "coordination.k8s.io", "leases", Some("w1")), Decision::Allow),
            (a("create", Some("kube-node-lease"), "coordination.k8s.io", "leases", None), Decision::Allow),
            (
                a("update", Some("kube-node-lease"), "coordination.k8s.io", "leases", Some("w2")),
                no("can only access node lease with the same name as the requesting node"),
            ),
            (
                a("get", d, "coordination.k8s.io", "leases", Some("w1")),
                no("can only access leases in the \"kube-node-lease\" system namespace"),
            ),
            (a("watch", None, "", "pods", None), Decision::Allow),
            (a("patch", d, "", "pods/status", Some("db")), Decision::Allow),
            // A node adds no ephemeral containers, even to its own pods.
            (a("patch", d, "", "pods/ephemeralcontainers", Some("db")), no("")),
            (a("get", None, "", "nodes", Some("w2")), Decision::Allow),
            (a("list", None, "", "services", None), Decision::Allow),
            (a("create", d, "", "events", None), Decision::Allow),
            (a("delete", d, "apps", "deployments", Some("x")), no("")),
            (a("get", None, "rbac.authorization.k8s.io", "clusterroles", Some("admin")), no("")),
        ];
        for (attrs, want) in cases {
            assert_eq!(authorize(&reg, &w1, &attrs), want, "{attrs:?}");
        }
        // Not a node: no opinion; a node group member with another name: unknown.
        let admin = User { name: "admin".into(), groups: vec!["system:masters".into()], ..Default::default() };
        assert_eq!(authorize(&reg, &admin, &a("get", d, "", "secrets", Some("theirs"))), no(""));
        let odd = User { name: "kubelet".into(), groups: vec![NODES_GROUP.into()], ..Default::default() };
        assert_eq!(
            authorize(&reg, &odd, &a("get", d, "", "secrets", Some("mine"))),
            no("unknown node for user \"kubelet\"")
        );
        // Bound later: the relationship follows the pods at once.
        create(
            &reg,
            "Pod",
            Some("default"),
            pod("late", "w1", json!({"volumes": [{"name": "s", "secret": {"secretName": "theirs"}}]})),
        );
        assert_eq!(authorize(&reg, &w1, &a("get", d, "", "secrets", Some("theirs"))), Decision::Allow);
    }

    fn unrelated_msg() -> String {
        unrelated("w1")
    }
}

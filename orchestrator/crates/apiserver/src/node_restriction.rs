//! NodeRestriction admission, as upstream's plugin, for writes by a
//! kubelet (`system:node:<name>`, see `node_authz`): its own Node (not
//! its taints, nor labels in `node-restriction.kubernetes.io/` or other
//! `kubernetes.io`/`k8s.io` labels beyond the kubelet's own), its own
//! Lease in `kube-node-lease`, the status of pods bound to it, deleting
//! and evicting pods bound to it, mirror pods bound to itself that use no
//! other API object, and ServiceAccount tokens bound to its pods.
//! Upstream's wording, a 403 that changes nothing.

use std::collections::BTreeMap;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize as _;
use serde_json::Value;

use orchestrator_apimachinery::errors::{ApiError, qualified};
use orchestrator_apimachinery::registry::{Registry, name_of};
use orchestrator_apimachinery::resources::{ResourceType, by_kind};
use orchestrator_apimachinery::typed;

use crate::User;
use crate::node_authz::{NODE_LEASE_NAMESPACE, node_of, references};

const MIRROR: &str = "kubernetes.io/config.mirror";

/// Labels a kubelet may set on its Node (upstream's `kubeletapis`).
const KUBELET_LABELS: &[&str] = &[
    "kubernetes.io/hostname",
    "kubernetes.io/arch",
    "kubernetes.io/os",
    "beta.kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
];
const KUBELET_LABEL_NAMESPACES: &[&str] = &["kubelet.kubernetes.io", "node.kubernetes.io"];
const NODE_RESTRICTION: &str = "node-restriction.kubernetes.io";

/// Admits a write (`verb`: create, update, patch, delete) of `user` to
/// `rt` `ns/name[/sub]`; `new` is the object as it would be stored
/// (create, update, and a patch's result).
#[allow(clippy::too_many_arguments)]
pub(crate) fn admit(
    reg: &Registry,
    user: &User,
    verb: &str,
    rt: &ResourceType,
    ns: Option<&str>,
    name: Option<&str>,
    sub: Option<&str>,
    new: Option<&Value>,
) -> Result<(), ApiError> {
    let Some(node) = node_of(user) else { return Ok(()) };
    let name = name.map(str::to_string).or_else(|| new.map(|o| name_of(o).to_string())).unwrap_or_default();
    let refuse = |why: String| Err(forbidden(rt, &name, why));
    let operation = match verb {
        "create" => "CREATE",
        "delete" => "DELETE",
        _ => "UPDATE",
    };
    match (rt.group, rt.plural, sub) {
        ("", "pods", None) => match operation {
            "CREATE" => mirror_pod(rt, node, new)?.map_or(Ok(()), refuse),
            "DELETE" if bound_to(reg, rt, ns, &name)? != node => {
                refuse(format!("node {node:?} can only delete pods with spec.nodeName set to itself"))
            }
            "DELETE" => Ok(()),
            _ => refuse(format!(
                "unexpected operation {operation:?}, node {node:?} can only create and delete mirror pods"
            )),
        },
        ("", "pods", Some("status")) => match operation {
            "UPDATE" if bound_to(reg, rt, ns, &name)? != node => {
                refuse(format!("node {node:?} can only update pod status for pods with spec.nodeName set to itself"))
            }
            "UPDATE" => Ok(()),
            _ => refuse(format!("unexpected operation {operation:?}, node {node:?} can only update pod status")),
        },
        ("", "pods", Some("eviction")) if bound_to(reg, rt, ns, &name)? != node => {
            refuse(format!("node {node} can only evict pods with spec.nodeName set to itself"))
        }
        ("", "nodes", sub) => {
            if name != node {
                return refuse(format!("node {node:?} is not allowed to modify node {name:?}"));
            }
            match (operation, sub, new) {
                ("CREATE", _, Some(o)) => {
                    let set: Vec<String> = labels(&typed::from_body::<Node>(rt, o)?.metadata).into_keys().collect();
                    match forbidden_labels(&set) {
                        Some(l) => refuse(format!("is not allowed to set the following labels: {l}")),
                        None => Ok(()),
                    }
                }
                ("UPDATE", None, Some(o)) => {
                    let old: Node = typed::get(reg, rt, None, &name)?;
                    let new: Node = typed::from_body(rt, o)?;
                    let taints = |n: &Node| n.spec.as_ref().and_then(|s| s.taints.clone());
                    if taints(&old) != taints(&new) {
                        return refuse(format!("node {node:?} is not allowed to modify taints"));
                    }
                    let (before, after) = (labels(&old.metadata), labels(&new.metadata));
                    let mut changed: Vec<String> =
                        after.iter().filter(|(k, v)| before.get(*k) != Some(v)).map(|(k, _)| k.clone()).collect();
                    changed.extend(before.keys().filter(|k| !after.contains_key(*k)).cloned());
                    match forbidden_labels(&changed) {
                        Some(l) => refuse(format!("is not allowed to modify labels: {l}")),
                        None => Ok(()),
                    }
                }
                _ => Ok(()),
            }
        }
        ("coordination.k8s.io", "leases", _) => {
            if ns != Some(NODE_LEASE_NAMESPACE) {
                return refuse(format!("can only access leases in the {NODE_LEASE_NAMESPACE:?} system namespace"));
            }
            if name != node {
                return refuse("can only access node lease with the same name as the requesting node".into());
            }
            Ok(())
        }
        ("", "serviceaccounts", Some("token")) => token_request(reg, node, ns, new)?.map_or(Ok(()), refuse),
        _ => Ok(()),
    }
}

/// `<resource> "<name>" is forbidden: <why>` (admission's `NewForbidden`).
fn forbidden(rt: &ResourceType, name: &str, why: String) -> ApiError {
    let what = if name.is_empty() { qualified(rt) } else { format!("{} {name:?}", qualified(rt)) };
    let mut e = ApiError::forbidden(format!("{what} is forbidden: {why}"));
    e.details = Some(Box::new(k8s_openapi::apimachinery::pkg::apis::meta::v1::StatusDetails {
        name: Some(name.to_string()).filter(|n| !n.is_empty()),
        group: Some(rt.group.to_string()).filter(|g| !g.is_empty()),
        kind: Some(rt.plural.to_string()),
        ..Default::default()
    }));
    e
}

fn labels(m: &ObjectMeta) -> BTreeMap<String, String> {
    m.labels.clone().unwrap_or_default()
}

fn node_name(pod: &Pod) -> &str {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).unwrap_or_default()
}

/// The node a stored pod is bound to ("" when unbound).
fn bound_to(reg: &Registry, rt: &ResourceType, ns: Option<&str>, name: &str) -> Result<String, ApiError> {
    let pod: Pod = typed::get(reg, by_kind("Pod").unwrap_or(rt), ns, name)?;
    Ok(node_name(&pod).to_string())
}

/// Why a node may not create this pod (`None`: a mirror pod of its own).
fn mirror_pod(rt: &ResourceType, node: &str, new: Option<&Value>) -> Result<Option<String>, ApiError> {
    let Some(o) = new else { return Ok(None) };
    let pod: Pod = typed::from_body(rt, o)?;
    let m = &pod.metadata;
    if !m.annotations.as_ref().is_some_and(|a| a.contains_key(MIRROR)) {
        return Ok(Some(format!("pod does not have {MIRROR:?} annotation, node {node:?} can only create mirror pods")));
    }
    if node_name(&pod) != node {
        return Ok(Some(format!("node {node:?} can only create pods with spec.nodeName set to itself")));
    }
    let owners = m.owner_references.as_deref().unwrap_or_default();
    if owners.len() > 1 || owners.first().is_some_and(|r| r.kind != "Node" || r.name != node) {
        return Ok(Some(format!("node {node:?} can only create pods with an owner reference set to itself")));
    }
    let refs = references(&pod);
    let what = if refs.service_account.is_some() {
        "a service account"
    } else if !refs.secrets.is_empty() {
        "secrets"
    } else if !refs.config_maps.is_empty() {
        "configmaps"
    } else if !refs.claims.is_empty() {
        "persistentvolumeclaims"
    } else {
        return Ok(None);
    };
    Ok(Some(format!("node {node:?} can not create pods that reference {what}")))
}

/// Why a node may not request this token (`None`: bound to a pod of its own).
fn token_request(
    reg: &Registry,
    node: &str,
    ns: Option<&str>,
    new: Option<&Value>,
) -> Result<Option<String>, ApiError> {
    // As `satoken::token_request` refuses a body that is no TokenRequest.
    let decode =
        |o: &Value| TokenRequest::deserialize(o).map_err(|e| ApiError::bad_request(format!("TokenRequest: {e}")));
    let request = new.map(decode).transpose()?;
    let Some(bound) = request.and_then(|r| r.spec.bound_object_ref).filter(|b| b.kind.as_deref() == Some("Pod")) else {
        return Ok(Some("node requested token not bound to a pod".into()));
    };
    let (name, uid) = (bound.name.unwrap_or_default(), bound.uid.unwrap_or_default());
    let Some(Ok(pod)) = by_kind("Pod").map(|pods| typed::get::<Pod>(reg, pods, ns, &name)) else {
        return Ok(Some("node requested token bound to a pod that does not exist".into()));
    };
    if !uid.is_empty() && Some(&uid) != pod.metadata.uid.as_ref() {
        return Ok(Some(format!(
            "the UID in the bound object reference ({uid}) does not match the UID in record. The object might have been deleted and then recreated"
        )));
    }
    Ok((node_name(&pod) != node).then(|| "node requested token bound to a pod scheduled on a different node".into()))
}

/// The labels a kubelet may not set or change, sorted and joined
/// (`None` when there are none): `node-restriction.kubernetes.io/`, and
/// `kubernetes.io`/`k8s.io` labels other than the kubelet's own.
fn forbidden_labels(keys: &[String]) -> Option<String> {
    let mut bad: Vec<&str> = keys
        .iter()
        .map(String::as_str)
        .filter(|key| {
            let Some((prefix, _)) = key.split_once('/') else { return false };
            let within = |domain: &str| prefix == domain || prefix.ends_with(&format!(".{domain}"));
            let kubernetes = within("kubernetes.io") || within("k8s.io");
            let kubelets = KUBELET_LABELS.contains(key) || KUBELET_LABEL_NAMESPACES.iter().any(|d| within(d));
            within(NODE_RESTRICTION) || (kubernetes && !kubelets)
        })
        .collect();
    bad.sort_unstable();
    bad.dedup();
    (!bad.is_empty()).then(|| bad.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_labels_a_kubelet_may_not_set() {
        assert_eq!(
            forbidden_labels(&keys(&[
                "node-restriction.kubernetes.io/x",
                "example.node-restriction.kubernetes.io/y",
                "node-role.kubernetes.io/control-plane",
                "kubernetes.io/hostname",
                "node.kubernetes.io/instance-type",
                "foo.node.kubernetes.io/bar",
                "kubelet.kubernetes.io/x",
                "topology.kubernetes.io/zone",
                "k8s.io/other",
                "example.com/free",
                "plain",
            ]))
            .as_deref(),
            Some(
                "example.node-restriction.kubernetes.io/y, k8s.io/other, node-restriction.kubernetes.io/x, node-role.kubernetes.io/control-plane"
            )
        );
        assert_eq!(forbidden_labels(&keys(&["kubernetes.io/os", "example.com/x"])), None);
    }

    #[test]
    fn only_reference_free_mirror_pods_bound_to_the_node() {
        let pod = |annotations: Value, node: &str, spec: Value| {
            let mut spec = spec;
            spec["nodeName"] = node.into();
            spec["containers"] = serde_json::json!([{"name": "c", "image": "x"}]);
            serde_json::json!({"metadata": {"name": "p", "annotations": annotations}, "spec": spec})
        };
        let mirror = serde_json::json!({MIRROR: "hash"});
        let none = serde_json::json!({});
        let pods = by_kind("Pod").unwrap();
        assert_eq!(mirror_pod(pods, "w1", Some(&pod(mirror.clone(), "w1", none.clone()))).unwrap(), None);
        let cases = [
            (
                pod(none.clone(), "w1", none.clone()),
                "pod does not have \"kubernetes.io/config.mirror\" annotation, node \"w1\" can only create mirror pods",
            ),
            (
                pod(mirror.clone(), "w2", none.clone()),
                "node \"w1\" can only create pods with spec.nodeName set to itself",
            ),
            (
                pod(
                    mirror.clone(),
                    "w1",
                    serde_json::json!({"volumes": [{"name": "s", "secret": {"secretName": "x"}}]}),
                ),
                "node \"w1\" can not create pods that reference secrets",
            ),
            (
                pod(mirror.clone(), "w1", serde_json::json!({"serviceAccountName": "default"})),
                "node \"w1\" can not create pods that reference a service account",
            ),
        ];
        for (p, want) in cases {
            assert_eq!(mirror_pod(pods, "w1", Some(&p)).unwrap().as_deref(), Some(want));
        }
    }
}

//! The scheduler: binds pending pods (no nodeName, default scheduler) to a
//! Ready, schedulable node that fits — nodeSelector, taints the pod does
//! not tolerate, requests against allocatable (cpu, memory, pods) — scoring
//! the least allocated; unschedulable pods get a PodScheduled=False
//! condition and a FailedScheduling event.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::{Part, Registry};
use serde_json::json;

use crate::persistentvolumes::{self, ClaimState, Volumes};
use crate::{event, list_typed, modify_typed, reference, set_condition};

pub use orchestrator_apimachinery::stateful::parse_quantity;

fn quantity(q: &Quantity) -> f64 {
    parse_quantity(&q.0).unwrap_or(0.0)
}

/// A pod's requests (its limits where it sets no requests): (cpu cores, memory bytes).
fn requests(pod: &Pod) -> (f64, f64) {
    let mut cpu = 0.0;
    let mut mem = 0.0;
    for c in pod.spec.iter().flat_map(|s| &s.containers) {
        let r = c.resources.as_ref().and_then(|r| r.requests.as_ref().or(r.limits.as_ref()));
        cpu += r.and_then(|r| r.get("cpu")).map_or(0.0, quantity);
        mem += r.and_then(|r| r.get("memory")).map_or(0.0, quantity);
    }
    (cpu, mem)
}

pub(crate) fn node_ready(n: &Node) -> bool {
    let conditions = n.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or_default();
    conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Whether `taint` is one that keeps new pods off (NoSchedule, NoExecute)
/// and none of `tolerations` tolerates it.
pub(crate) fn repels(tolerations: &[Toleration], taint: &Taint) -> bool {
    matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute") && !tolerates(tolerations, taint)
}

fn tolerates(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| {
        let exists = t.operator.as_deref() == Some("Exists");
        let key_ok = match t.key.as_deref() {
            None | Some("") => exists,
            Some(k) => taint.key == k,
        };
        let value_ok = exists || t.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default();
        let effect_ok = t.effect.as_deref().is_none_or(|e| e.is_empty() || taint.effect == e);
        key_ok && value_ok && effect_ok
    })
}

/// Whether a node carries every label of a node selector.
pub(crate) fn selected(node_selector: Option<&BTreeMap<String, String>>, node: &Node) -> bool {
    let labels = node.metadata.labels.as_ref();
    node_selector.is_none_or(|sel| sel.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v)))
}

/// Why `node` cannot take `pod`, or its score (higher is better).
fn fit(pod: &Pod, node: &Node, on_node: &[&Pod]) -> Result<f64, &'static str> {
    let spec = pod.spec.as_ref();
    if !node_ready(node) {
        return Err("node(s) were not ready");
    }
    let node_spec = node.spec.as_ref();
    if node_spec.and_then(|s| s.unschedulable) == Some(true) {
        return Err("node(s) were unschedulable");
    }
    let tolerations = spec.and_then(|s| s.tolerations.as_deref()).unwrap_or_default();
    if node_spec.and_then(|s| s.taints.as_deref()).unwrap_or_default().iter().any(|t| repels(tolerations, t)) {
        return Err("node(s) had untolerated taint(s)");
    }
    if !selected(spec.and_then(|s| s.node_selector.as_ref()), node) {
        return Err("node(s) didn't match Pod's node affinity/selector");
    }
    let alloc = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
    let capacity = |name: &str, default: f64| alloc.and_then(|a| a.get(name)).map_or(default, quantity);
    let (cpu_cap, mem_cap) = (capacity("cpu", f64::MAX), capacity("memory", f64::MAX));
    let pods_cap = capacity("pods", 110.0);
    let (mut cpu, mut mem) = requests(pod);
    for p in on_node {
        let (c, m) = requests(p);
        cpu += c;
        mem += m;
    }
    if on_node.len() as f64 + 1.0 > pods_cap {
        return Err("Too many pods");
    }
    if cpu > cpu_cap {
        return Err("Insufficient cpu");
    }
    if mem > mem_cap {
        return Err("Insufficient memory");
    }
    let free = |used: f64, cap: f64| if cap == f64::MAX || cap == 0.0 { 1.0 } else { (cap - used) / cap };
    Ok((free(cpu, cpu_cap) + free(mem, mem_cap)) / 2.0)
}

/// Not being deleted and not finished.
fn active(p: &Pod) -> bool {
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
    p.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

fn node_name(p: &Pod) -> Option<&str> {
    p.spec.as_ref().and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty())
}

pub fn reconcile(reg: &Registry) -> Result<(), ApiError> {
    let pods: Vec<Pod> = list_typed(reg)?;
    let nodes: Vec<Node> = list_typed(reg)?;
    let mut volumes: Option<Volumes> = None;
    let mut assigned: Vec<(String, &Pod)> =
        pods.iter().filter(|p| active(p)).filter_map(|p| Some((node_name(p)?.to_string(), p))).collect();
    for pod in &pods {
        let scheduler = pod.spec.as_ref().and_then(|s| s.scheduler_name.as_deref()).unwrap_or("default-scheduler");
        if node_name(pod).is_some() || !active(pod) || scheduler != "default-scheduler" {
            continue;
        }
        let claims = match pod_claims(reg, pod, &mut volumes)? {
            Ok(c) => c,
            Err(why) => {
                unschedulable(reg, pod, &format!("0/{} nodes are available: {why}.", nodes.len()))?;
                continue;
            }
        };
        let mut best: Option<(f64, &str)> = None;
        let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
        for n in &nodes {
            let name = n.metadata.name.as_deref().unwrap_or_default();
            let on: Vec<&Pod> = assigned.iter().filter(|(nn, _)| nn == name).map(|(_, p)| *p).collect();
            let volumes_fit = claims.iter().all(|c| match c {
                ClaimState::Bound(a) => persistentvolumes::affinity_allows(a.as_ref(), n),
                ClaimState::Delayed(_) => true,
            });
            match fit(pod, n, &on)
                .and_then(|s| if volumes_fit { Ok(s) } else { Err("node(s) had volume node affinity conflict") })
            {
                Ok(score) if best.is_none_or(|(b, _)| score > b) => best = Some((score, name)),
                Ok(_) => {}
                Err(r) => *reasons.entry(r).or_default() += 1,
            }
        }
        let ns = pod.metadata.namespace.as_deref();
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        match best {
            Some((_, node)) => {
                // Claims waiting for their first consumer get a volume on this node first.
                let chosen = nodes.iter().find(|n| n.metadata.name.as_deref() == Some(node)).expect("a listed node");
                let provisioned = claims.iter().try_for_each(|c| match c {
                    ClaimState::Delayed(claim) => persistentvolumes::provision(reg, claim, chosen),
                    ClaimState::Bound(_) => Ok(()),
                });
                if let Err(e) = provisioned {
                    unschedulable(reg, pod, &format!("running PreBind plugin \"VolumeBinding\": {}", e.message))?;
                    continue;
                }
                // `bind` takes a Binding as the subresource receives it: JSON.
                orchestrator_apimachinery::patch::bind(
                    reg,
                    ns,
                    name,
                    &json!({"target": {"kind": "Node", "name": node}}),
                )?;
                let msg = format!("Successfully assigned {}/{name} to {node}", ns.unwrap_or_default());
                event(reg, &reference(pod), "Normal", "Scheduled", &msg, "default-scheduler");
                assigned.push((node.to_string(), pod));
            }
            None => {
                let detail: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
                let msg = if nodes.is_empty() {
                    "no nodes available to schedule pods".to_string()
                } else {
                    format!("0/{} nodes are available: {}.", nodes.len(), detail.join(", "))
                };
                unschedulable(reg, pod, &msg)?;
            }
        }
    }
    Ok(())
}

/// The claims of a pod that uses any (read once per pass), or why it must wait.
fn pod_claims(
    reg: &Registry,
    pod: &Pod,
    volumes: &mut Option<Volumes>,
) -> Result<Result<Vec<ClaimState>, String>, ApiError> {
    let uses = pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()).any(|v| v.persistent_volume_claim.is_some());
    if !uses {
        return Ok(Ok(Vec::new()));
    }
    if volumes.is_none() {
        *volumes = Some(Volumes::read(reg)?);
    }
    Ok(volumes.as_ref().expect("just read").of_pod(pod))
}

/// Records why a pod cannot be scheduled (once per message).
fn unschedulable(reg: &Registry, pod: &Pod, msg: &str) -> Result<(), ApiError> {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or_default();
    if conditions.iter().any(|c| c.type_ == "PodScheduled" && c.message.as_deref() == Some(msg)) {
        return Ok(());
    }
    let (ns, name) = (pod.metadata.namespace.as_deref(), pod.metadata.name.as_deref().unwrap_or_default());
    modify_typed(reg, ns, name, Part::Status, |p: &mut Pod| {
        let conds = p.status.get_or_insert_default().conditions.get_or_insert_default();
        set_condition(conds, "PodScheduled", "False", "Unschedulable", msg, false);
        true
    })?;
    event(reg, &reference(pod), "Warning", "FailedScheduling", msg, "default-scheduler");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::Value;

    fn typed<K: serde::de::DeserializeOwned>(v: &Value) -> K {
        serde_json::from_value(v.clone()).unwrap()
    }

    fn fit(pod: &Value, node: &Value, on_node: &[&Value]) -> Result<f64, &'static str> {
        let on: Vec<Pod> = on_node.iter().map(|p| typed(p)).collect();
        super::fit(&typed(pod), &typed(node), &on.iter().collect::<Vec<_>>())
    }

    fn node(name: &str, cpu: &str, taint: Option<Value>) -> Value {
        json!({"metadata": {"name": name, "labels": {"disk": "ssd"}}, "spec": {"taints": taint.into_iter().collect::<Vec<_>>()},
            "status": {"allocatable": {"cpu": cpu, "memory": "1Gi", "pods": "10"}, "conditions": [{"type": "Ready", "status": "True"}]}})
    }

    fn pod(cpu: &str) -> Value {
        json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": "100Mi"}}}]}})
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("100m"), Some(0.1));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("128Mi"), Some(134217728.0));
        assert_eq!(parse_quantity("1G"), Some(1e9));
        assert_eq!(parse_quantity("2e3"), Some(2000.0));
        assert_eq!(parse_quantity("x"), None);
    }

    #[test]
    fn fit_checks_resources_taints_selector_and_scores_least_allocated() {
        let p = pod("500m");
        let small = node("a", "1", None);
        let big = node("b", "4", None);
        assert!(fit(&p, &big, &[]).unwrap() > fit(&p, &small, &[]).unwrap());
        let busy = pod("800m");
        assert_eq!(fit(&p, &small, &[&busy]), Err("Insufficient cpu"));
        let tainted = node("c", "4", Some(json!({"key": "dedicated", "value": "x", "effect": "NoSchedule"})));
        assert_eq!(fit(&p, &tainted, &[]), Err("node(s) had untolerated taint(s)"));
        let mut tolerant = p.clone();
        tolerant["spec"]["tolerations"] = json!([{"key": "dedicated", "operator": "Equal", "value": "x"}]);
        assert!(fit(&tolerant, &tainted, &[]).is_ok());
        let mut picky = p.clone();
        picky["spec"]["nodeSelector"] = json!({"disk": "hdd"});
        assert!(fit(&picky, &big, &[]).is_err());
        let mut not_ready = big.clone();
        not_ready["status"]["conditions"][0]["status"] = "Unknown".into();
        assert_eq!(fit(&p, &not_ready, &[]), Err("node(s) were not ready"));
    }
}

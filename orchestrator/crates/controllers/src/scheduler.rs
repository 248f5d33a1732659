//! The scheduler: binds pending pods (no nodeName, default scheduler) to a
//! Ready, schedulable node that fits — nodeSelector and node affinity,
//! taints the pod does not tolerate, requests against allocatable (cpu,
//! memory, pods), volumes, topology spread constraints, pod affinity and
//! anti-affinity — scoring as upstream's default plugins do (least
//! allocated, preferred node affinity, topology spreading with the system
//! defaults, preferred pod affinity); unschedulable pods get a
//! PodScheduled=False condition and a FailedScheduling event in upstream's
//! words.

mod affinity;
mod spread;

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Taint, Toleration};
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
    tolerations.iter().any(|t| toleration_matches(t, taint))
}

/// Whether toleration `t` tolerates `taint` (key, value by operator, effect).
pub(crate) fn toleration_matches(t: &Toleration, taint: &Taint) -> bool {
    let exists = t.operator.as_deref() == Some("Exists");
    let key_ok = match t.key.as_deref() {
        None | Some("") => exists,
        Some(k) => taint.key == k,
    };
    let value_ok = exists || t.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default();
    let effect_ok = t.effect.as_deref().is_none_or(|e| e.is_empty() || taint.effect == e);
    key_ok && value_ok && effect_ok
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
    if !affinity::node_matches(pod, node) {
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

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

fn labels(p: &Pod) -> &BTreeMap<String, String> {
    p.metadata.labels.as_ref().unwrap_or(&NO_LABELS)
}

fn namespace(p: &Pod) -> &str {
    p.metadata.namespace.as_deref().unwrap_or("default")
}

/// The most one scoring plugin gives a node (upstream's MaxNodeScore).
const MAX_NODE_SCORE: i64 = 100;

/// Upstream's default score plugin weights.
const NODE_AFFINITY_WEIGHT: i64 = 2;
const SPREAD_WEIGHT: i64 = 2;
const INTER_POD_WEIGHT: i64 = 2;

/// The cluster as one pass sees it: nodes, the active pods bound to each
/// (those this pass binds included), and namespace labels.
struct Cluster<'a> {
    nodes: &'a [Node],
    on_node: Vec<Vec<&'a Pod>>,
    namespaces: affinity::NamespaceLabels,
}

impl<'a> Cluster<'a> {
    fn new(nodes: &'a [Node], pods: &'a [Pod], namespaces: &[Namespace]) -> Cluster<'a> {
        let index: HashMap<&str, usize> =
            nodes.iter().enumerate().map(|(i, n)| (n.metadata.name.as_deref().unwrap_or_default(), i)).collect();
        let mut on_node = vec![Vec::new(); nodes.len()];
        for p in pods.iter().filter(|p| active(p)) {
            if let Some(&i) = node_name(p).and_then(|n| index.get(n)) {
                on_node[i].push(p);
            }
        }
        let namespaces = namespaces
            .iter()
            .map(|n| (n.metadata.name.clone().unwrap_or_default(), n.metadata.labels.clone().unwrap_or_default()))
            .collect();
        Cluster { nodes, on_node, namespaces }
    }

    /// Every placed pod with its node.
    fn placed(&self) -> impl Iterator<Item = (&'a Node, &'a Pod)> + '_ {
        let nodes = self.nodes;
        self.on_node.iter().enumerate().flat_map(move |(i, ps)| ps.iter().map(move |p| (&nodes[i], *p)))
    }
}

/// Scales scores to 0–100 between the lowest and the highest (all 0 when
/// they are equal), as upstream's InterPodAffinity normalizes.
fn normalize_span(raw: &[i64]) -> Vec<i64> {
    let (min, max) = (raw.iter().copied().min().unwrap_or(0), raw.iter().copied().max().unwrap_or(0));
    raw.iter().map(|&s| if max == min { 0 } else { MAX_NODE_SCORE * (s - min) / (max - min) }).collect()
}

/// Scales scores to 0–100 of the highest (upstream's DefaultNormalizeScore).
fn normalize_max(raw: &[i64]) -> Vec<i64> {
    let max = raw.iter().copied().max().unwrap_or(0);
    raw.iter().map(|&s| if max == 0 { s } else { MAX_NODE_SCORE * s / max }).collect()
}

/// Upstream's unschedulable message: each reason with its count, sorted as text.
fn no_fit_message(nodes: usize, reasons: &BTreeMap<&str, usize>) -> String {
    let mut detail: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    detail.sort();
    format!("0/{nodes} nodes are available: {}.", detail.join(", "))
}

/// The node for `pod` (an index into the cluster's nodes), or why none fits:
/// the nodes are filtered (readiness, taints, selector and node affinity,
/// resources, volumes, topology spread, inter-pod affinity) and the rest
/// scored (least allocated, preferred node affinity, spreading, preferred
/// inter-pod affinity).
fn pick(pod: &Pod, cluster: &Cluster, owners: &spread::Owners, claims: &[ClaimState]) -> Result<usize, String> {
    let inter = affinity::InterPod::new(pod, cluster);
    let spread = spread::Spread::new(pod, cluster, owners);
    let mut feasible: Vec<(usize, f64)> = Vec::new();
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, n) in cluster.nodes.iter().enumerate() {
        let volumes_fit = claims.iter().all(|c| match c {
            ClaimState::Bound(a) => persistentvolumes::affinity_allows(a.as_ref(), n),
            ClaimState::Delayed(_) => true,
        });
        let verdict = fit(pod, n, &cluster.on_node[i])
            .and_then(|s| if volumes_fit { Ok(s) } else { Err("node(s) had volume node affinity conflict") })
            .and_then(|s| spread.filter(n).map(|()| s))
            .and_then(|s| inter.filter(n).map(|()| s));
        match verdict {
            Ok(free) => feasible.push((i, free)),
            Err(r) => *reasons.entry(r).or_default() += 1,
        }
    }
    if feasible.is_empty() {
        return Err(if cluster.nodes.is_empty() {
            "no nodes available to schedule pods".to_string()
        } else {
            no_fit_message(cluster.nodes.len(), &reasons)
        });
    }
    let indices: Vec<usize> = feasible.iter().map(|(i, _)| *i).collect();
    let preference: Vec<i64> = indices.iter().map(|&i| affinity::node_preference(pod, &cluster.nodes[i])).collect();
    let preference = normalize_max(&preference);
    let spreading = spread.scores(pod, cluster, &indices);
    let inter_pod = normalize_span(&indices.iter().map(|&i| inter.score(&cluster.nodes[i])).collect::<Vec<_>>());
    let mut best: Option<(i64, usize)> = None;
    for (slot, (i, free)) in feasible.iter().enumerate() {
        let score = (free * MAX_NODE_SCORE as f64).round() as i64
            + NODE_AFFINITY_WEIGHT * preference[slot]
            + SPREAD_WEIGHT * spreading[slot]
            + INTER_POD_WEIGHT * inter_pod[slot];
        if best.is_none_or(|(b, _)| score > b) {
            best = Some((score, *i));
        }
    }
    Ok(best.expect("a feasible node").1)
}

pub fn reconcile(reg: &Registry) -> Result<(), ApiError> {
    let pods: Vec<Pod> = list_typed(reg)?;
    let pending: Vec<&Pod> = pods
        .iter()
        .filter(|p| {
            let scheduler = p.spec.as_ref().and_then(|s| s.scheduler_name.as_deref()).unwrap_or("default-scheduler");
            node_name(p).is_none() && active(p) && scheduler == "default-scheduler"
        })
        .collect();
    if pending.is_empty() {
        return Ok(());
    }
    let nodes: Vec<Node> = list_typed(reg)?;
    let namespaces: Vec<Namespace> = list_typed(reg)?;
    let owners = spread::Owners::read(reg)?;
    let mut cluster = Cluster::new(&nodes, &pods, &namespaces);
    let mut volumes: Option<Volumes> = None;
    for pod in pending {
        let claims = match pod_claims(reg, pod, &mut volumes)? {
            Ok(c) => c,
            Err(why) => {
                unschedulable(reg, pod, &format!("0/{} nodes are available: {why}.", nodes.len()))?;
                continue;
            }
        };
        let chosen = match pick(pod, &cluster, &owners, &claims) {
            Ok(i) => i,
            Err(msg) => {
                unschedulable(reg, pod, &msg)?;
                continue;
            }
        };
        let node = &nodes[chosen];
        let node_name = node.metadata.name.as_deref().unwrap_or_default();
        // Claims waiting for their first consumer get a volume on this node first.
        let provisioned = claims.iter().try_for_each(|c| match c {
            ClaimState::Delayed(claim) => persistentvolumes::provision(reg, claim, node),
            ClaimState::Bound(_) => Ok(()),
        });
        if let Err(e) = provisioned {
            unschedulable(reg, pod, &format!("running PreBind plugin \"VolumeBinding\": {}", e.message))?;
            continue;
        }
        let ns = pod.metadata.namespace.as_deref();
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        // `bind` takes a Binding as the subresource receives it: JSON.
        orchestrator_apimachinery::patch::bind(reg, ns, name, &json!({"target": {"kind": "Node", "name": node_name}}))?;
        let msg = format!("Successfully assigned {}/{name} to {node_name}", ns.unwrap_or_default());
        event(reg, &reference(pod), "Normal", "Scheduled", &msg, "default-scheduler");
        cluster.on_node[chosen].push(pod);
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

    fn zoned(name: &str, zone: &str) -> Node {
        typed(
            &json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "topology.kubernetes.io/zone": zone}},
            "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}, "conditions": [{"type": "Ready", "status": "True"}]}}),
        )
    }

    /// A pod labelled app=`app`, owned by ReplicaSet `app`, on `node` (None: pending), with `spec` merged in.
    fn replica(name: &str, app: &str, node: Option<&str>, spec: Value) -> Pod {
        let mut p = json!({"metadata": {"name": name, "namespace": "default", "labels": {"app": app},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": app, "uid": "u", "controller": true}]},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
        if let Some(n) = node {
            p["spec"]["nodeName"] = n.into();
        }
        for (k, v) in spec.as_object().into_iter().flatten() {
            p["spec"][k] = v.clone();
        }
        typed(&p)
    }

    fn owners(apps: &[&str]) -> spread::Owners {
        let rs = apps
            .iter()
            .map(|a| {
                typed(&json!({"metadata": {"name": a, "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": a}}, "template": {}}}))
            })
            .collect();
        spread::Owners::new(Vec::new(), rs, Vec::new())
    }

    /// Where `pod` goes among `nodes` with `placed` bound, by node name, or the message.
    fn place(nodes: &[Node], placed: &[Pod], pod: &Pod, apps: &[&str]) -> Result<String, String> {
        let cluster = Cluster::new(nodes, placed, &[]);
        let i = pick(pod, &cluster, &owners(apps), &[])?;
        Ok(nodes[i].metadata.name.clone().unwrap())
    }

    #[test]
    fn replicas_of_one_owner_spread_over_nodes_by_default() {
        let nodes = [zoned("a", "z1"), zoned("b", "z1"), zoned("c", "z2")];
        // Without spreading the first node would win every tie.
        let placed = [replica("w1", "web", Some("a"), json!({}))];
        assert_eq!(place(&nodes, &placed, &replica("w2", "web", None, json!({})), &["web"]).unwrap(), "c");
        let placed = [replica("w1", "web", Some("a"), json!({})), replica("w2", "web", Some("c"), json!({}))];
        assert_eq!(place(&nodes, &placed, &replica("w3", "web", None, json!({})), &["web"]).unwrap(), "b");
        // Another owner's pods do not count.
        let placed = [replica("o1", "other", Some("a"), json!({}))];
        assert_eq!(place(&nodes, &placed, &replica("w1", "web", None, json!({})), &["web", "other"]).unwrap(), "a");
    }

    fn anti_by_host(app: &str) -> Value {
        json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": "kubernetes.io/hostname"}]}}})
    }

    #[test]
    fn required_anti_affinity_filters_with_upstream_message() {
        let nodes = [zoned("a", "z1"), zoned("b", "z1"), zoned("c", "z2")];
        let placed: Vec<Pod> =
            ["a", "b", "c"].iter().map(|n| replica(&format!("w-{n}"), "web", Some(n), anti_by_host("web"))).collect();
        let err = place(&nodes, &placed, &replica("w4", "web", None, anti_by_host("web")), &["web"]).unwrap_err();
        assert_eq!(err, "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules.");
        // Existing pods' anti-affinity keeps a pod without any rule of its own off their nodes.
        let err = place(&nodes, &placed, &replica("plain", "web", None, json!({})), &["web"]).unwrap_err();
        assert_eq!(err, "0/3 nodes are available: 3 node(s) didn't satisfy existing pods anti-affinity rules.");
        // By zone: both z1 nodes are out.
        let by_zone = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "topology.kubernetes.io/zone"}]}}});
        let placed = [replica("db", "db", Some("a"), json!({}))];
        assert_eq!(place(&nodes, &placed, &replica("w", "web", None, by_zone), &[]).unwrap(), "c");
        // Reasons are counted and sorted as text, as upstream's FitError.
        let mut cordoned = zoned("d", "z2");
        cordoned.spec = Some(typed(&json!({"unschedulable": true})));
        let nodes = [zoned("a", "z1"), zoned("b", "z1"), cordoned];
        let placed = [replica("w-a", "web", Some("a"), json!({})), replica("w-b", "web", Some("b"), json!({}))];
        let err = place(&nodes, &placed, &replica("w3", "web", None, anti_by_host("web")), &["web"]).unwrap_err();
        assert_eq!(
            err,
            "0/3 nodes are available: 1 node(s) were unschedulable, 2 node(s) didn't match pod anti-affinity rules."
        );
    }

    #[test]
    fn pod_affinity_requires_a_matching_pod_in_the_domain_but_lets_the_first_in() {
        let nodes = [zoned("a", "z1"), zoned("b", "z1"), zoned("c", "z2")];
        let with_cache = json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "topology.kubernetes.io/zone"}]}}});
        let placed = [replica("cache", "cache", Some("c"), json!({}))];
        assert_eq!(place(&nodes, &placed, &replica("w", "web", None, with_cache.clone()), &[]).unwrap(), "c");
        let err = place(&nodes, &[], &replica("w", "web", None, with_cache.clone()), &[]).unwrap_err();
        assert_eq!(err, "0/3 nodes are available: 3 node(s) didn't match pod affinity rules.");
        // A pod matching its own term starts the group anywhere.
        assert!(place(&nodes, &[], &replica("c1", "cache", None, with_cache), &[]).is_ok());
        // Terms look in the pod's namespace unless told otherwise.
        let mut elsewhere = replica("cache", "cache", Some("c"), json!({}));
        elsewhere.metadata.namespace = Some("other".into());
        let in_other = json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "cache"}}, "namespaceSelector": {}, "topologyKey": "kubernetes.io/hostname"}]}}});
        let placed = [elsewhere];
        assert_eq!(place(&nodes, &placed, &replica("w", "web", None, in_other), &[]).unwrap(), "c");
        let same_ns = json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "kubernetes.io/hostname"}]}}});
        assert!(place(&nodes, &placed, &replica("w", "web", None, same_ns), &[]).is_err());
    }

    #[test]
    fn preferred_affinity_and_anti_affinity_score() {
        let nodes = [zoned("a", "z1"), zoned("b", "z1"), zoned("c", "z2")];
        let placed = [replica("db", "db", Some("b"), json!({}))];
        let near = json!({"affinity": {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100,
            "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}}]}}});
        assert_eq!(place(&nodes, &placed, &replica("w", "web", None, near), &[]).unwrap(), "b");
        let away = json!({"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100,
            "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "topology.kubernetes.io/zone"}}]}}});
        assert_eq!(place(&nodes, &placed, &replica("w", "web", None, away), &[]).unwrap(), "c");
        let prefer_c = json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 50,
            "preference": {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["c"]}]}}]}}});
        assert_eq!(place(&nodes, &[], &replica("w", "web", None, prefer_c), &[]).unwrap(), "c");
        let require_not_a = json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["a", "b", "c"]}]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["b"]}]}]}}}});
        assert_eq!(place(&nodes, &[], &replica("w", "web", None, require_not_a), &[]).unwrap(), "b");
    }

    fn spread_by(key: &str, when: &str, extra: Value) -> Value {
        let mut c = json!({"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": when, "labelSelector": {"matchLabels": {"app": "web"}}});
        for (k, v) in extra.as_object().into_iter().flatten() {
            c[k] = v.clone();
        }
        json!({"topologySpreadConstraints": [c]})
    }

    #[test]
    fn topology_spread_constraints_filter_by_skew_and_score() {
        let nodes = [zoned("a", "z1"), zoned("b", "z1"), zoned("c", "z2")];
        let zone = "topology.kubernetes.io/zone";
        let placed = [replica("w1", "web", Some("a"), json!({})), replica("w2", "web", Some("c"), json!({}))];
        // z1 has 1, z2 has 1: any node; then z1 has 2, z2 has 1: only z2 keeps the skew at 1.
        assert!(
            place(&nodes, &placed, &replica("w3", "web", None, spread_by(zone, "DoNotSchedule", json!({}))), &[])
                .is_ok()
        );
        let placed = [
            replica("w1", "web", Some("a"), json!({})),
            replica("w2", "web", Some("b"), json!({})),
            replica("w3", "web", Some("c"), json!({})),
            replica("w4", "web", Some("c"), json!({})),
        ];
        let mut tainted = zoned("c", "z2");
        tainted.spec = Some(typed(&json!({"unschedulable": true})));
        let mut tight = nodes.clone();
        tight[2] = tainted;
        let five = replica("w5", "web", None, spread_by(zone, "DoNotSchedule", json!({})));
        assert!(place(&nodes, &placed[..3], &five, &[]).unwrap() == "c");
        let err = place(&tight, &placed[..3], &five, &[]).unwrap_err();
        assert_eq!(
            err,
            "0/3 nodes are available: 1 node(s) were unschedulable, 2 node(s) didn't match pod topology spread constraints."
        );
        // A node without the key cannot take the pod.
        let mut bare = zoned("d", "z1");
        bare.metadata.labels.as_mut().unwrap().remove(zone);
        let err = place(&[bare.clone()], &[], &five, &[]).unwrap_err();
        assert_eq!(
            err,
            "0/1 nodes are available: 1 node(s) didn't match pod topology spread constraints (missing required label)."
        );
        // minDomains above the domains there are: the minimum counts as 0.
        let few = replica("w5", "web", None, spread_by(zone, "DoNotSchedule", json!({"minDomains": 3})));
        let err = place(&nodes, &placed, &few, &[]).unwrap_err();
        assert!(err.contains("3 node(s) didn't match pod topology spread constraints"), "{err}");
        // ScheduleAnyway prefers the emptier domain but never refuses.
        let soft = replica("w5", "web", None, spread_by(zone, "ScheduleAnyway", json!({})));
        assert!(["a", "b"].contains(&place(&nodes, &placed, &soft, &[]).unwrap().as_str()));
        assert_eq!(place(&[bare], &placed, &soft, &[]).unwrap(), "d");
        // nodeAffinityPolicy Honor (the default): nodes the pod may not use are no domain.
        let mut picky = spread_by(zone, "DoNotSchedule", json!({}));
        picky["nodeSelector"] = json!({"topology.kubernetes.io/zone": "z1"});
        assert!(place(&nodes, &placed, &replica("w5", "web", None, picky), &[]).is_ok());
    }

    /// The throughput figure (not a timing assertion): 300 pods of one
    /// Service bound in one pass over 3 and over 30 nodes, spread evenly.
    /// `cargo test -p orchestrator-controllers --lib scheduler::tests::throughput -- --ignored --nocapture`
    #[test]
    #[ignore = "a figure for the report, run by hand"]
    fn throughput() {
        use orchestrator_apimachinery::registry::WriteOptions;
        for nodes in [3usize, 30] {
            let d = tempfile::tempdir().unwrap();
            let reg = crate::test_registry(&d);
            let create = |kind: &str, ns: Option<&str>, o: Value| {
                reg.create(crate::rt(kind), ns, o, &WriteOptions::default()).unwrap();
            };
            let svc =
                json!({"metadata": {"name": "bench"}, "spec": {"selector": {"app": "bench"}, "ports": [{"port": 80}]}});
            create("Service", Some("default"), svc);
            for i in 0..nodes {
                let n = zoned(&format!("n{i}"), &format!("z{}", i % 3));
                create("Node", None, serde_json::to_value(n).unwrap());
            }
            for i in 0..300 {
                let p = json!({"metadata": {"name": format!("p{i}"), "labels": {"app": "bench"}},
                    "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
                create("Pod", Some("default"), p);
            }
            let start = std::time::Instant::now();
            reconcile(&reg).unwrap();
            let took = start.elapsed();
            let pods: Vec<Pod> = list_typed(&reg).unwrap();
            let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
            for p in &pods {
                *per_node.entry(node_name(p).expect("bound").to_string()).or_default() += 1;
            }
            let (min, max) = (per_node.values().min().unwrap(), per_node.values().max().unwrap());
            assert_eq!((per_node.len(), max - min), (nodes, 0), "{per_node:?}");
            eprintln!("{nodes} nodes: 300 pods bound in {took:.2?} ({:.0} pods/s)", 300.0 / took.as_secs_f64());
        }
    }
}

//! Topology spreading, as upstream's PodTopologySpread plugin: the pod's
//! `topologySpreadConstraints` (DoNotSchedule ones filter by skew,
//! ScheduleAnyway ones score), or, for a pod with none, the system default
//! constraints (`kubernetes.io/hostname` maxSkew 3 and
//! `topology.kubernetes.io/zone` maxSkew 5, both ScheduleAnyway) over the
//! selector of the pod's Services and controller, so replicas of one owner
//! spread over nodes and zones.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::Registry;
use orchestrator_apimachinery::selector::{LabelSelector, Requirement};

use super::{Cluster, affinity, labels, namespace, repels};
use crate::list_typed;

pub(super) const CONSTRAINTS: &str = "node(s) didn't match pod topology spread constraints";
pub(super) const MISSING_LABEL: &str = "node(s) didn't match pod topology spread constraints (missing required label)";

const HOSTNAME: &str = "kubernetes.io/hostname";
const ZONE: &str = "topology.kubernetes.io/zone";

/// The Services, ReplicaSets and StatefulSets a pod's default spreading selector comes from.
pub(super) struct Owners {
    services: Vec<Service>,
    replicasets: Vec<ReplicaSet>,
    statefulsets: Vec<StatefulSet>,
}

impl Owners {
    #[cfg(test)]
    pub(super) fn new(services: Vec<Service>, replicasets: Vec<ReplicaSet>, statefulsets: Vec<StatefulSet>) -> Owners {
        Owners { services, replicasets, statefulsets }
    }

    pub(super) fn read(reg: &Registry) -> Result<Owners, ApiError> {
        Ok(Owners { services: list_typed(reg)?, replicasets: list_typed(reg)?, statefulsets: list_typed(reg)? })
    }

    /// Upstream's DefaultSelector: the selectors of the Services that select
    /// the pod, and of its controlling ReplicaSet or StatefulSet.
    fn default_selector(&self, pod: &Pod) -> LabelSelector {
        let (ns, own) = (namespace(pod), labels(pod));
        let mut merged = BTreeMap::new();
        for s in self.services.iter().filter(|s| s.metadata.namespace.as_deref() == Some(ns)) {
            let sel = s.spec.as_ref().and_then(|s| s.selector.as_ref()).filter(|s| !s.is_empty());
            if let Some(sel) = sel.filter(|sel| sel.iter().all(|(k, v)| own.get(k) == Some(v))) {
                merged.extend(sel.clone());
            }
        }
        let mut selector = LabelSelector(merged.into_iter().map(|(k, v)| Requirement::Equals(k, v)).collect());
        let owner = pod.metadata.owner_references.iter().flatten().find(|r| r.controller == Some(true));
        let named = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, name: &str| {
            m.namespace.as_deref() == Some(ns) && m.name.as_deref() == Some(name)
        };
        let controller_selector = owner.and_then(|o| match (o.api_version.as_str(), o.kind.as_str()) {
            ("apps/v1", "ReplicaSet") => self
                .replicasets
                .iter()
                .find(|r| named(&r.metadata, &o.name))
                .and_then(|r| r.spec.as_ref().map(|s| &s.selector)),
            ("apps/v1", "StatefulSet") => self
                .statefulsets
                .iter()
                .find(|s| named(&s.metadata, &o.name))
                .and_then(|s| s.spec.as_ref().map(|s| &s.selector)),
            _ => None,
        });
        if let Some(s) = controller_selector {
            selector.0.extend(LabelSelector::from_typed(s).0);
        }
        selector
    }
}

/// One spread constraint, resolved for the pod being scheduled.
struct Constraint {
    key: String,
    max_skew: i64,
    min_domains: Option<usize>,
    /// None matches no pod (a constraint without a labelSelector).
    selector: Option<LabelSelector>,
    honor_affinity: bool,
    honor_taints: bool,
    /// Whether the pod itself matches the selector.
    self_match: bool,
}

impl Constraint {
    fn counts(&self, pod: &Pod, other: &Pod) -> bool {
        namespace(other) == namespace(pod) && self.selector.as_ref().is_some_and(|s| s.matches(labels(other)))
    }

    /// Whether pods on `node` count for this constraint (nodeAffinityPolicy,
    /// nodeTaintsPolicy; the node has every key in `keys`).
    fn counts_on(&self, pod: &Pod, node: &Node, keys: &[String]) -> bool {
        keys.iter().all(|k| value(node, k).is_some())
            && (!self.honor_affinity || affinity::node_matches(pod, node))
            && (!self.honor_taints || {
                let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.as_deref()).unwrap_or_default();
                let taints = node.spec.as_ref().and_then(|s| s.taints.as_deref()).unwrap_or_default();
                !taints.iter().any(|t| repels(tolerations, t))
            })
    }
}

fn value<'n>(node: &'n Node, key: &str) -> Option<&'n str> {
    node.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

/// A DoNotSchedule constraint with the matching pods per domain.
struct Hard {
    c: Constraint,
    counts: BTreeMap<String, i64>,
    /// The fewest matching pods in any domain (0 below minDomains domains).
    min: i64,
}

/// Topology spreading for one pod.
pub(super) struct Spread {
    hard: Vec<Hard>,
    soft: Vec<Constraint>,
    /// The soft constraints are the system defaults.
    defaulted: bool,
}

impl Spread {
    pub(super) fn new(pod: &Pod, cluster: &Cluster, owners: &Owners) -> Spread {
        let own = labels(pod);
        let spec_constraints =
            pod.spec.as_ref().and_then(|s| s.topology_spread_constraints.as_deref()).unwrap_or_default();
        let mut hard = Vec::new();
        let mut soft = Vec::new();
        for t in spec_constraints {
            let selector = t.label_selector.as_ref().map(|s| {
                let mut sel = LabelSelector::from_typed(s);
                for k in t.match_label_keys.iter().flatten() {
                    if let Some(v) = own.get(k) {
                        sel.0.push(Requirement::In(k.clone(), vec![v.clone()]));
                    }
                }
                sel
            });
            let c = Constraint {
                key: t.topology_key.clone(),
                max_skew: i64::from(t.max_skew),
                min_domains: t.min_domains.and_then(|m| usize::try_from(m).ok()),
                self_match: selector.as_ref().is_some_and(|s| s.matches(own)),
                selector,
                honor_affinity: t.node_affinity_policy.as_deref() != Some("Ignore"),
                honor_taints: t.node_taints_policy.as_deref() == Some("Honor"),
            };
            if t.when_unsatisfiable == "DoNotSchedule" { hard.push(c) } else { soft.push(c) }
        }
        let defaulted = spec_constraints.is_empty();
        if defaulted {
            let selector = owners.default_selector(pod);
            if !selector.is_empty() {
                for (key, max_skew) in [(HOSTNAME, 3), (ZONE, 5)] {
                    soft.push(Constraint {
                        key: key.into(),
                        max_skew,
                        min_domains: None,
                        self_match: selector.matches(own),
                        selector: Some(selector.clone()),
                        honor_affinity: true,
                        honor_taints: false,
                    });
                }
            }
        }
        let keys: Vec<String> = hard.iter().map(|c| c.key.clone()).collect();
        let hard = hard.into_iter().map(|c| Hard::count(c, pod, cluster, &keys)).collect();
        Spread { hard, soft, defaulted }
    }

    /// Why the node cannot take the pod under the DoNotSchedule constraints, if it cannot.
    pub(super) fn filter(&self, node: &Node) -> Result<(), &'static str> {
        if self.hard.iter().any(|h| value(node, &h.c.key).is_none()) {
            return Err(MISSING_LABEL);
        }
        for h in &self.hard {
            let here = value(node, &h.c.key).and_then(|v| h.counts.get(v)).copied().unwrap_or(0);
            if here + i64::from(h.c.self_match) - h.min > h.c.max_skew {
                return Err(CONSTRAINTS);
            }
        }
        Ok(())
    }

    /// The ScheduleAnyway constraints' scores (0–100, fewer matching pods
    /// around scoring higher) of the feasible nodes, in their order.
    pub(super) fn scores(&self, pod: &Pod, cluster: &Cluster, feasible: &[usize]) -> Vec<i64> {
        if self.soft.is_empty() {
            return vec![0; feasible.len()];
        }
        // Nodes without every key are left out, except under the defaults (a node without a zone still spreads by host).
        let keys: Vec<String> =
            if self.defaulted { Vec::new() } else { self.soft.iter().map(|c| c.key.clone()).collect() };
        let ignored: Vec<bool> =
            feasible.iter().map(|&i| keys.iter().any(|k| value(&cluster.nodes[i], k).is_none())).collect();
        let considered: Vec<usize> = feasible.iter().zip(&ignored).filter(|(_, ig)| !**ig).map(|(i, _)| *i).collect();
        let mut raw = vec![0.0f64; feasible.len()];
        for c in &self.soft {
            let per_node = c.key == HOSTNAME;
            let domains: BTreeSet<&str> =
                considered.iter().map(|&i| value(&cluster.nodes[i], &c.key).unwrap_or_default()).collect();
            let size = if per_node { considered.len() } else { domains.len() };
            // Upstream's topologyNormalizingWeight: more domains weigh more.
            let weight = ((size + 2) as f64).ln();
            let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
            for (node, other) in cluster.placed() {
                if !c.counts(pod, other) || !c.counts_on(pod, node, &keys) {
                    continue;
                }
                let domain = if per_node { node.metadata.name.as_deref() } else { value(node, &c.key) };
                if let Some(d) = domain.filter(|d| per_node || domains.contains(d)) {
                    *counts.entry(d).or_default() += 1;
                }
            }
            for (slot, &i) in feasible.iter().enumerate() {
                let node = &cluster.nodes[i];
                let Some(v) = value(node, &c.key) else { continue };
                let domain = if per_node { node.metadata.name.as_deref().unwrap_or_default() } else { v };
                raw[slot] += counts.get(domain).copied().unwrap_or(0) as f64 * weight + (c.max_skew - 1) as f64;
            }
        }
        let raw: Vec<i64> = raw.iter().map(|r| r.round() as i64).collect();
        let kept = || raw.iter().zip(&ignored).filter(|(_, ig)| !**ig).map(|(r, _)| *r);
        let (min, max) = (kept().min().unwrap_or(0), kept().max().unwrap_or(0));
        raw.iter()
            .zip(&ignored)
            .map(|(&s, &ig)| match () {
                _ if ig => 0,
                _ if max == 0 => super::MAX_NODE_SCORE,
                _ => super::MAX_NODE_SCORE * (max + min - s) / max,
            })
            .collect()
    }
}

impl Hard {
    /// Counts the pods matching `c` per domain, over the nodes that carry every key of `keys` and pass its policies.
    fn count(c: Constraint, pod: &Pod, cluster: &Cluster, keys: &[String]) -> Hard {
        let mut counts: BTreeMap<String, i64> = BTreeMap::new();
        for node in cluster.nodes.iter().filter(|n| c.counts_on(pod, n, keys)) {
            counts.entry(value(node, &c.key).unwrap_or_default().to_string()).or_default();
        }
        for (node, other) in cluster.placed() {
            if c.counts(pod, other) && c.counts_on(pod, node, keys) {
                *counts.entry(value(node, &c.key).unwrap_or_default().to_string()).or_default() += 1;
            }
        }
        let too_few = c.min_domains.is_some_and(|m| counts.len() < m);
        let min = if too_few { 0 } else { counts.values().copied().min().unwrap_or(0) };
        Hard { c, counts, min }
    }
}

//! Node IPAM, as kube-controller-manager's range allocator
//! (`--cluster-cidr`, `--node-cidr-mask-size`): each Node without
//! `spec.podCIDR` gets the first free subnet of the cluster CIDR, in
//! `podCIDR` and `podCIDRs`. The allocations are the Nodes' own
//! `spec.podCIDR`s, read afresh every pass: nothing to rebuild at start,
//! and a deleted Node's subnet is free at the next pass. A pool with no
//! subnet left is a Warning Event `CIDRNotAvailable` on the Node (once
//! per Node and process), never a failed pass.
//!
//! Configured once per process ([`configure`]) and run by the
//! controllers' loop (only by the leader of several control planes), so
//! two allocators never hand out the same subnet.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Mutex, OnceLock};

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;

use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::{Part, Registry};

use crate::{event, list_typed, modify_typed, name, reference, uid};

/// The cluster CIDR and the size of each node's subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    cluster: Ipv4Net,
    mask: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("--cluster-cidr {0:?}: not an IPv4 CIDR (e.g. 10.244.0.0/16)")]
    Cidr(String),
    #[error("--node-cidr-mask-size {mask}: must be at least the --cluster-cidr prefix length {prefix} and at most 30")]
    Mask { mask: u8, prefix: u8 },
}

impl Pool {
    pub fn new(cluster_cidr: &str, mask: u8) -> Result<Pool, PoolError> {
        let cluster: Ipv4Net = cluster_cidr.parse().map_err(|_| PoolError::Cidr(cluster_cidr.to_string()))?;
        if mask < cluster.prefix_len() || mask > 30 {
            return Err(PoolError::Mask { mask, prefix: cluster.prefix_len() });
        }
        Ok(Pool { cluster: cluster.trunc(), mask })
    }

    /// The first subnet not in `used`.
    fn allocate(&self, used: &BTreeSet<Ipv4Net>) -> Option<Ipv4Net> {
        self.cluster.subnets(self.mask).ok()?.find(|s| !used.iter().any(|u| u.contains(s) || s.contains(u)))
    }
}

struct Ipam {
    pool: Pool,
    /// Nodes (by uid) already told the pool is exhausted.
    reported: Mutex<HashSet<String>>,
}

static IPAM: OnceLock<Ipam> = OnceLock::new();

/// Turns the allocator on for this process (the first call wins).
pub fn configure(pool: Pool) {
    let _ = IPAM.set(Ipam { pool, reported: Mutex::default() });
}

pub(crate) fn reconcile(reg: &Registry) -> Result<(), ApiError> {
    match IPAM.get() {
        Some(ipam) => assign(reg, ipam),
        None => Ok(()),
    }
}

fn pod_cidr(n: &Node) -> Option<&str> {
    n.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()).filter(|c| !c.is_empty())
}

fn assign(reg: &Registry, ipam: &Ipam) -> Result<(), ApiError> {
    let mut nodes = list_typed::<Node>(reg)?;
    let mut used: BTreeSet<Ipv4Net> = nodes.iter().filter_map(|n| pod_cidr(n)?.parse().ok()).collect();
    // Oldest first: a node waiting longer gets the next subnet.
    nodes.sort_by(|a, b| a.metadata.creation_timestamp.cmp(&b.metadata.creation_timestamp));
    let mut reported = ipam.reported.lock().unwrap_or_else(|e| e.into_inner());
    let present: HashSet<&str> = nodes.iter().map(|n| uid(&n.metadata)).collect();
    reported.retain(|u| present.contains(u.as_str()));
    for node in nodes.iter().filter(|n| pod_cidr(n).is_none() && n.metadata.deletion_timestamp.is_none()) {
        let node_name = name(&node.metadata);
        let Some(cidr) = ipam.pool.allocate(&used) else {
            if reported.insert(uid(&node.metadata).to_string()) {
                tracing::warn!(node = node_name, "no pod CIDR left in {}", ipam.pool.cluster);
                let message = format!("Node {node_name} status is now: CIDRNotAvailable");
                event(reg, &reference(node), "Warning", "CIDRNotAvailable", &message, "cidrAllocator");
            }
            continue;
        };
        let value = cidr.to_string();
        let mut taken = None;
        modify_typed(reg, None, node_name, Part::Main, |n: &mut Node| {
            let spec = n.spec.get_or_insert_default();
            if let Some(c) = spec.pod_cidr.as_deref().filter(|c| !c.is_empty()) {
                taken = c.parse().ok();
                return false;
            }
            spec.pod_cidr = Some(value.clone());
            spec.pod_cidrs = Some(vec![value.clone()]);
            true
        })?;
        used.insert(taken.unwrap_or(cidr));
        tracing::info!(node = node_name, "pod CIDR {}", taken.unwrap_or(cidr));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{create_typed, test_registry};
    use k8s_openapi::api::core::v1::{Event, NodeSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn pools_are_checked_and_hand_out_the_first_free_subnet() {
        assert_eq!(Pool::new("10.244.0.0/33", 24), Err(PoolError::Cidr("10.244.0.0/33".into())));
        assert_eq!(Pool::new("fd00::/64", 80), Err(PoolError::Cidr("fd00::/64".into())));
        assert_eq!(Pool::new("10.244.0.0/16", 8), Err(PoolError::Mask { mask: 8, prefix: 16 }));
        assert_eq!(Pool::new("10.244.0.0/16", 31), Err(PoolError::Mask { mask: 31, prefix: 16 }));
        let p = Pool::new("10.244.7.9/16", 24).unwrap();
        assert_eq!(p.allocate(&BTreeSet::new()), Some(net("10.244.0.0/24")));
        let used = [net("10.244.0.0/24"), net("10.244.2.0/24")].into_iter().collect();
        assert_eq!(p.allocate(&used), Some(net("10.244.1.0/24")));
        // A foreign range overlapping the pool blocks what it covers.
        let used = [net("10.244.0.0/23")].into_iter().collect();
        assert_eq!(p.allocate(&used), Some(net("10.244.2.0/24")));
        let tiny = Pool::new("10.9.0.0/25", 26).unwrap();
        let full = [net("10.9.0.0/26"), net("10.9.0.64/26")].into_iter().collect();
        assert_eq!(tiny.allocate(&full), None);
    }

    fn node(reg: &Registry, name: &str, cidr: Option<&str>) {
        let n = Node {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            spec: Some(NodeSpec { pod_cidr: cidr.map(str::to_string), ..Default::default() }),
            ..Default::default()
        };
        create_typed(reg, None, &n).unwrap();
    }

    fn cidr_of(reg: &Registry, name: &str) -> (Option<String>, Option<Vec<String>>) {
        let n: Node =
            orchestrator_apimachinery::typed::decode(reg.get(crate::rt("Node"), None, name).unwrap(), "Node").unwrap();
        let spec = n.spec.unwrap_or_default();
        (spec.pod_cidr, spec.pod_cidrs)
    }

    #[test]
    fn nodes_get_distinct_subnets_freed_on_delete_and_exhaustion_is_an_event() {
        let d = tempfile::tempdir().unwrap();
        let reg = test_registry(&d);
        let ipam = Ipam { pool: Pool::new("10.50.0.0/23", 24).unwrap(), reported: Mutex::default() };
        node(&reg, "kept", Some("10.50.0.0/24"));
        node(&reg, "a", None);
        node(&reg, "b", None);
        assign(&reg, &ipam).unwrap();
        assert_eq!(cidr_of(&reg, "kept").0.as_deref(), Some("10.50.0.0/24"), "an existing allocation is kept");
        let a = cidr_of(&reg, "a");
        assert_eq!(a, (Some("10.50.1.0/24".into()), Some(vec!["10.50.1.0/24".into()])));
        assert_eq!(cidr_of(&reg, "b").0, None, "the pool is exhausted");
        let events = list_typed::<Event>(&reg).unwrap();
        let reasons: Vec<_> =
            events.iter().map(|e| (e.reason.clone(), e.type_.clone(), e.involved_object.name.clone())).collect();
        assert_eq!(reasons, vec![(Some("CIDRNotAvailable".into()), Some("Warning".into()), Some("b".into()))]);
        assign(&reg, &ipam).unwrap();
        assert_eq!(list_typed::<Event>(&reg).unwrap().len(), 1, "told once");
        // Freed with its Node, and handed to the one waiting.
        reg.delete(crate::rt("Node"), None, "a", &Default::default()).unwrap();
        assign(&reg, &ipam).unwrap();
        assert_eq!(cidr_of(&reg, "b").0.as_deref(), Some("10.50.1.0/24"));
    }
}

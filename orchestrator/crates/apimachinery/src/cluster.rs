//! Cluster-wide names and addresses every layer agrees on.

use std::net::Ipv4Addr;

/// The `kube-dns` Service's cluster IP: what pods' resolv.conf names.
pub const CLUSTER_DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const CLUSTER_DOMAIN: &str = "cluster.local";

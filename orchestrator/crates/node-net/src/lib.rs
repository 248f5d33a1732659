//! A node's networking, run by the kubelet: the service proxy
//! (kube-proxy's iptables mode) and the cluster DNS, which follow Services
//! and Endpoints, and the routes to other nodes' pods, which follow Nodes —
//! all through the API client — and the masquerade of the node's pod CIDR.

pub mod dns;
pub mod masquerade;
pub mod overlay;
pub mod proxy;
pub mod routes;

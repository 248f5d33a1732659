//! A node's Service networking, run by the kubelet: the service proxy
//! (kube-proxy's iptables mode) and the cluster DNS. Both follow Services
//! and Endpoints through the API client.

pub mod dns;
pub mod proxy;

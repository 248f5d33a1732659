//! Routes to the other nodes' pods. Every other Node's `spec.podCIDR` is
//! routed either via that Node's InternalIP when the two share a layer-2
//! network (Flannel's host-gw), or through the VXLAN overlay
//! ([`crate::overlay`], Flannel's vxlan) — chosen by the machine config's
//! `cluster.pod_network` ([`Mode`]); the default, `auto`, does what
//! Flannel's vxlan with `DirectRouting` does: a direct route when the other
//! node's InternalIP is on a network directly connected to this node, the
//! overlay otherwise. Routes are written over rtnetlink in the main table
//! with their own protocol number ([`ROUTE_PROTOCOL`],
//! `ip route show proto 212`): a sync replaces the ones that differ and
//! deletes those of Nodes gone, and never touches a route it did not make.
//!
//! Pod-to-pod traffic across nodes keeps its pod source address: the
//! node's masquerade ([`crate::masquerade`], jumped to last from
//! POSTROUTING) rewrites whatever leaves the node's pod CIDR, so a nat
//! chain of ours (`PLP-<id>-PODNET`, jumped to first) accepts packets from
//! this node's pods to other nodes' pod CIDRs before that rule sees them (over the overlay too: the inner packet leaves by
//! the vxlan device through the same POSTROUTING).
//!
//! A Node whose InternalIP is an address of this host (several kubelets on
//! one host, as host-mode tests run) gets no route: its bridge is here.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;
use std::time::Duration;

use futures_util::TryStreamExt as _;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::{Handle, RouteMessageBuilder};

use crate::overlay::{self, Device, OverlayError, Remote};
use crate::proxy::{Chains, ProxyError, remove_postrouting_chain, restore_text, run};
use orchestrator_apimachinery::errors::ApiError;
use orchestrator_client::{Api, Watch};

/// The routing protocol number of our routes (unassigned in
/// `/etc/iproute2/rt_protos`): how a sync finds the routes it made.
pub const ROUTE_PROTOCOL: u8 = 212;

/// The kernel's main routing table.
const MAIN_TABLE: u8 = 254;

/// How often the routes are checked even when no Node changed (repairs a
/// route someone deleted).
const RESYNC: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    #[error("open a netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("list the routes of protocol {ROUTE_PROTOCOL}: {0}")]
    List(rtnetlink::Error),
    #[error("{op} the route to {cidr} via {via}: {source}")]
    Route { op: &'static str, cidr: Ipv4Net, via: Ipv4Addr, source: rtnetlink::Error },
    #[error("pod overlay: {0}")]
    Overlay(#[from] OverlayError),
    #[error(transparent)]
    Iptables(#[from] ProxyError),
    #[error(transparent)]
    Api(#[from] ApiError),
}

/// The routes this node wants: every other Node's pod CIDR → its
/// InternalIP. A Node without both, with one that does not parse (logged),
/// or whose InternalIP is local (`local`) is left out.
pub fn wanted(nodes: &[Node], me: &str, local: &[IpAddr]) -> BTreeMap<Ipv4Net, Ipv4Addr> {
    let mut out = BTreeMap::new();
    for n in nodes {
        let name = n.metadata.name.as_deref().unwrap_or_default();
        if name == me {
            continue;
        }
        let Some(cidr) = n.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()) else { continue };
        let internal = n
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .map(|a| a.address.as_str());
        let Some(internal) = internal else { continue };
        let (cidr, via) = match (cidr.parse::<Ipv4Net>(), internal.parse::<Ipv4Addr>()) {
            (Ok(c), Ok(v)) => (c.trunc(), v),
            (Err(e), _) => {
                tracing::warn!("pod routes: skipping Node {name:?}: spec.podCIDR {cidr:?}: {e}");
                continue;
            }
            (_, Err(e)) => {
                tracing::warn!("pod routes: skipping Node {name:?}: InternalIP {internal:?}: {e}");
                continue;
            }
        };
        if local.contains(&IpAddr::V4(via)) {
            continue;
        }
        out.insert(cidr, via);
    }
    out
}

/// How this node reaches the other nodes' pods: the machine config's
/// `cluster.pod_network`, the orchestrator's `--pod-network`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// A direct route to a node on a directly connected network, the VXLAN
    /// overlay to any other (Flannel's vxlan with `DirectRouting`).
    #[default]
    Auto,
    /// Direct routes only (Flannel's host-gw): a node on no directly
    /// connected network is left unrouted, with a warning.
    HostGw,
    /// The VXLAN overlay to every node (Flannel's vxlan).
    Vxlan,
}

impl Mode {
    /// The names, as the config and the command line spell them.
    pub const NAMES: [&'static str; 3] = ["auto", "host-gw", "vxlan"];

    /// The pods' MTU over an underlay of `underlay` bytes: the VXLAN
    /// device's when every path to another node's pods is the overlay,
    /// else the underlay's. In `auto` most paths are direct routes at the
    /// underlay's MTU, and a full-size packet into the overlay gets
    /// "fragmentation needed" from the pod's own node (path MTU
    /// discovery); Flannel instead gives every pod the overlay's MTU.
    pub fn pod_mtu(self, underlay: u32) -> u32 {
        match self {
            Mode::Auto | Mode::HostGw => underlay,
            Mode::Vxlan => underlay.saturating_sub(crate::overlay::OVERHEAD),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::HostGw => "host-gw",
            Mode::Vxlan => "vxlan",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Mode::Auto),
            "host-gw" => Ok(Mode::HostGw),
            "vxlan" => Ok(Mode::Vxlan),
            _ => Err(format!("{s:?} is not a pod network mode: one of {}", Mode::NAMES.join(", "))),
        }
    }
}

/// How one other node's pod CIDR is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// Via its InternalIP, on a network this node shares with it.
    Direct(Ipv4Addr),
    /// Through the vxlan device to its InternalIP.
    Vxlan(Ipv4Addr),
}

/// This host's view of its own networks.
#[derive(Debug, Clone, Default)]
pub struct Host {
    /// Every address of its interfaces.
    pub addresses: Vec<IpAddr>,
    /// The IPv4 networks directly connected to it (not loopback, not the
    /// overlay's own /32).
    pub subnets: Vec<Ipv4Net>,
}

impl Host {
    pub fn read() -> Host {
        let mut host = Host::default();
        let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return host };
        for a in addrs {
            let Some(ip) = a.address.as_ref().and_then(|sa| sa.as_sockaddr_in()).map(|s| s.ip()) else { continue };
            host.addresses.push(IpAddr::V4(ip));
            let mask = a.netmask.as_ref().and_then(|sa| sa.as_sockaddr_in()).map(|s| s.ip());
            let prefix = mask.map_or(32, |m| u32::from(m).leading_ones() as u8);
            if ip.is_loopback() || a.interface_name == overlay::DEVICE || prefix >= 32 {
                continue;
            }
            if let Ok(net) = Ipv4Net::new(ip, prefix) {
                host.subnets.push(net.trunc());
            }
        }
        host
    }
}

/// How each other node's pods are reached (`want` from [`wanted`]): the
/// decision of `mode` given this host's directly connected `subnets`.
pub fn plan(want: &BTreeMap<Ipv4Net, Ipv4Addr>, mode: Mode, subnets: &[Ipv4Net]) -> BTreeMap<Ipv4Net, Hop> {
    let mut out = BTreeMap::new();
    for (cidr, node) in want {
        let on_link = subnets.iter().any(|s| s.contains(node));
        let hop = match mode {
            Mode::Vxlan => Hop::Vxlan(*node),
            Mode::Auto if on_link => Hop::Direct(*node),
            Mode::Auto => Hop::Vxlan(*node),
            Mode::HostGw if on_link => Hop::Direct(*node),
            Mode::HostGw => {
                tracing::warn!(
                    "pod routes: the node at {node} (pods {cidr}) is on no network of this node: not routed in \
                     host-gw mode (cluster.pod_network = \"auto\" or \"vxlan\" reaches it over VXLAN)"
                );
                continue;
            }
        };
        out.insert(*cidr, hop);
    }
    out
}

/// One of our routes as read back: destination → gateway.
fn ours(msg: &RouteMessage) -> Option<(Ipv4Net, Option<Ipv4Addr>)> {
    if msg.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL) || msg.header.table != MAIN_TABLE {
        return None;
    }
    let (mut dst, mut via) = (None, None);
    for a in &msg.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(*d),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => via = Some(*g),
            _ => {}
        }
    }
    Some((Ipv4Net::new(dst?, msg.header.destination_prefix_length).ok()?, via))
}

/// The output interface of a route.
fn oif(msg: &RouteMessage) -> Option<u32> {
    msg.attributes.iter().find_map(|a| if let RouteAttribute::Oif(i) = a { Some(*i) } else { None })
}

fn route(cidr: Ipv4Net, via: Ipv4Addr) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(cidr.addr(), cidr.prefix_len())
        .gateway(via)
        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
        .build()
}

/// The route through the overlay: via the node's VXLAN gateway, onlink on
/// the device `vx`.
fn overlay_route(cidr: Ipv4Net, vx: u32) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(cidr.addr(), cidr.prefix_len())
        .gateway(overlay::gateway(cidr))
        .output_interface(vx)
        .onlink()
        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
        .build()
}

/// A route as read back: gateway and output interface.
type Seen = (Option<Ipv4Addr>, Option<u32>);

/// Our routes in the main table now, with their output interfaces.
async fn current_routes(h: &Handle) -> Result<BTreeMap<Ipv4Net, Seen>, RoutesError> {
    let all = RouteMessageBuilder::<Ipv4Addr>::new().build();
    let msgs: Vec<RouteMessage> = h.route().get(all).execute().try_collect().await.map_err(RoutesError::List)?;
    Ok(msgs.iter().filter_map(|m| ours(m).map(|(c, v)| (c, (v, oif(m))))).collect())
}

/// Our routes in the main table now.
#[cfg(test)]
async fn current(h: &Handle) -> Result<BTreeMap<Ipv4Net, Option<Ipv4Addr>>, RoutesError> {
    Ok(current_routes(h).await?.into_iter().map(|(c, (v, _))| (c, v)).collect())
}

/// Whether the route read back is the one `hop` wants (`vx`: the
/// overlay device's index, when it exists).
fn matches(cidr: Ipv4Net, hop: &Hop, seen: &Seen, vx: Option<u32>) -> bool {
    match hop {
        Hop::Direct(via) => seen.0 == Some(*via) && (vx.is_none() || seen.1 != vx),
        Hop::Vxlan(_) => seen.0 == Some(overlay::gateway(cidr)) && vx.is_some() && seen.1 == vx,
    }
}

/// Makes our routes say exactly `want`; `vx` is the overlay device's index
/// (needed when a hop is [`Hop::Vxlan`]).
async fn apply_routes(h: &Handle, want: &BTreeMap<Ipv4Net, Hop>, vx: Option<u32>) -> Result<(), RoutesError> {
    let have = current_routes(h).await?;
    for (cidr, seen) in &have {
        if !want.get(cidr).is_some_and(|hop| matches(*cidr, hop, seen, vx)) {
            let via = seen.0;
            let gw = via.unwrap_or(Ipv4Addr::UNSPECIFIED);
            let mut msg = route(*cidr, gw);
            if via.is_none() {
                msg.attributes.retain(|a| !matches!(a, RouteAttribute::Gateway(_)));
            }
            match h.route().del(msg).execute().await {
                Ok(()) => tracing::info!("pod routes: removed {cidr} via {gw}"),
                // Gone already: what we wanted.
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -nix::libc::ESRCH => {}
                Err(source) => return Err(RoutesError::Route { op: "delete", cidr: *cidr, via: gw, source }),
            }
        }
    }
    for (cidr, hop) in want {
        if have.get(cidr).is_some_and(|seen| matches(*cidr, hop, seen, vx)) {
            continue;
        }
        let (msg, via, how) = match (hop, vx) {
            (Hop::Direct(via), _) => (route(*cidr, *via), *via, "directly"),
            (Hop::Vxlan(_), Some(vx)) => (overlay_route(*cidr, vx), overlay::gateway(*cidr), "over VXLAN"),
            (Hop::Vxlan(node), None) => {
                tracing::warn!("pod routes: {cidr} (the node at {node}): no overlay device");
                continue;
            }
        };
        h.route().add(msg).replace().execute().await.map_err(|source| RoutesError::Route {
            op: "add",
            cidr: *cidr,
            via,
            source,
        })?;
        tracing::info!("pod routes: {cidr} via {via} {how}");
    }
    Ok(())
}

/// Makes the dataplane say `plan`: the overlay device (created when a hop
/// needs it; `device` says what it is), its FDB and neighbour entries, and
/// the routes. Entries of Nodes gone are removed after their routes.
pub async fn apply(h: &Handle, plan: &BTreeMap<Ipv4Net, Hop>, device: Device) -> Result<(), RoutesError> {
    let remotes: Vec<Remote> = plan
        .iter()
        .filter_map(|(cidr, hop)| match hop {
            Hop::Vxlan(node) => Some(Remote { cidr: *cidr, node: *node }),
            Hop::Direct(_) => None,
        })
        .collect();
    let vx = if remotes.is_empty() { overlay::index(h).await? } else { Some(overlay::ensure(h, device).await?) };
    if let Some(vx) = vx {
        overlay::add_entries(h, vx, &remotes).await?;
    }
    apply_routes(h, plan, vx).await?;
    if let Some(vx) = vx {
        overlay::remove_stale(h, vx, &remotes).await?;
    }
    Ok(())
}

/// One sync of the dataplane from `nodes`, in this thread's network
/// namespace: what [`run_forever`] does on each change, without the API
/// and the nat exemption. Returns the plan it applied.
pub async fn program(
    nodes: &[Node],
    me: &str,
    mode: Mode,
    device: Device,
) -> Result<BTreeMap<Ipv4Net, Hop>, RoutesError> {
    let h = netlink()?;
    let host = Host::read();
    let plan = plan(&wanted(nodes, me, &host.addresses), mode, &host.subnets);
    apply(&h, &plan, device).await?;
    Ok(plan)
}

/// The jump into the pod-network chain (first in POSTROUTING).
fn jump(chains: &Chains) -> Vec<String> {
    let comment = format!("plinth pod network ({})", chains.pod_network().trim_end_matches("-PODNET"));
    ["-m", "comment", "--comment", &comment, "-j", &chains.pod_network()].map(str::to_string).to_vec()
}

/// The `iptables-restore --noflush` input of the pod-network chain: this
/// node's pods (`own`) reach the other nodes' pod CIDRs unmasqueraded.
fn exemption_input(chains: &Chains, own: Ipv4Net, peers: impl Iterator<Item = Ipv4Net>) -> String {
    let chain = chains.pod_network();
    let rules: String = peers
        .map(|p| {
            format!(
                "-A {chain} -s {own} -d {p} -m comment --comment \"pod to pod across nodes: not masqueraded\" -j ACCEPT\n"
            )
        })
        .collect();
    restore_text([chain.clone()].iter(), &rules, &[])
}

/// Keeps this node's pods' traffic to the `peers`' pod CIDRs from the
/// masquerade (the chain and its jump).
pub async fn apply_exemption(
    chains: &Chains,
    own: Ipv4Net,
    peers: impl Iterator<Item = Ipv4Net>,
) -> Result<(), ProxyError> {
    run("iptables-restore", &["-w", "--noflush"], Some(&exemption_input(chains, own, peers))).await?;
    let rule = jump(chains);
    let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
    if run("iptables", &[&["-w", "-t", "nat", "-C", "POSTROUTING"][..], &rule].concat(), None).await.is_err() {
        run("iptables", &[&["-w", "-t", "nat", "-I", "POSTROUTING", "1"][..], &rule].concat(), None).await?;
    }
    Ok(())
}

async fn sync(h: &Handle, api: &Api, me: &str, chains: &Chains, mode: Mode, device: Device) -> Result<(), RoutesError> {
    let nodes: Vec<Node> = crate::proxy::typed("Node", api.list("Node", "").await?);
    let host = Host::read();
    let plan = plan(&wanted(&nodes, me, &host.addresses), mode, &host.subnets);
    apply_exemption(chains, device.own, plan.keys().copied()).await?;
    apply(h, &plan, device).await
}

/// A netlink socket in this thread's network namespace (its connection
/// runs on the current tokio runtime).
pub fn netlink() -> Result<Handle, RoutesError> {
    let (conn, h, _) = rtnetlink::new_connection().map_err(RoutesError::Socket)?;
    tokio::spawn(conn);
    Ok(h)
}

/// Keeps this node's routes to the other nodes' pods in step with the
/// cluster's Nodes, for ever: after every Node change and every 30 s. A
/// failure is logged and retried. `own` is this node's pod CIDR, `local`
/// its InternalIP (the overlay's local address).
pub async fn run_forever(api: Api, me: String, chains: Chains, own: Ipv4Net, mode: Mode, local: Ipv4Addr) {
    let device = Device { local, own };
    let h = match netlink() {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!("pod routes: {e}; no routes to other nodes' pods");
            return;
        }
    };
    let mut nodes: Option<Watch> = None;
    let mut tick = tokio::time::interval(RESYNC);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if nodes.is_none() {
            nodes = api.watch("Node", "").await;
        }
        if let Err(e) = sync(&h, &api, &me, &chains, mode, device).await {
            tracing::warn!("pod routes: {e}");
        }
        tokio::select! {
            event = async { nodes.as_mut().expect("guarded").next().await }, if nodes.is_some() => {
                if event.is_none() {
                    nodes = None;
                }
            }
            _ = tick.tick() => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Removes this node's routes, its overlay device and its pod-network
/// chain (a node taken down, a test torn down).
pub async fn cleanup(chains: &Chains) -> Result<(), RoutesError> {
    let h = netlink()?;
    apply_routes(&h, &BTreeMap::new(), None).await?;
    overlay::remove(&h).await?;
    remove_postrouting_chain(&jump(chains), &chains.pod_network()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pods_get_the_overlays_mtu_when_every_path_is_the_overlay() {
        assert_eq!([Mode::Auto, Mode::HostGw, Mode::Vxlan].map(|m| m.pod_mtu(1500)), [1500, 1500, 1450]);
        assert_eq!(Mode::Vxlan.pod_mtu(9000), 8950);
    }

    fn node(name: &str, cidr: Option<&str>, ip: Option<&str>) -> Node {
        let mut n = json!({"metadata": {"name": name}, "spec": {}, "status": {"addresses": [{"type": "Hostname", "address": name}]}});
        if let Some(c) = cidr {
            n["spec"]["podCIDR"] = c.into();
        }
        if let Some(ip) = ip {
            n["status"]["addresses"].as_array_mut().unwrap().push(json!({"type": "InternalIP", "address": ip}));
        }
        serde_json::from_value(n).unwrap()
    }

    #[test]
    fn every_other_nodes_pod_cidr_goes_via_its_internal_ip() {
        let nodes = [
            node("cp", Some("10.244.0.0/24"), Some("10.5.0.1")),
            node("w1", Some("10.244.1.0/24"), Some("10.5.0.2")),
            node("w2", Some("10.244.2.0/24"), Some("10.5.0.3")),
            // Not yet given a range, or no address yet: nothing to route.
            node("w3", None, Some("10.5.0.4")),
            node("w4", Some("10.244.4.0/24"), None),
        ];
        let local = ["10.5.0.2".parse().unwrap(), "127.0.0.1".parse().unwrap()];
        let got = wanted(&nodes, "w1", &local);
        let want: BTreeMap<Ipv4Net, Ipv4Addr> = [
            ("10.244.0.0/24".parse().unwrap(), "10.5.0.1".parse().unwrap()),
            ("10.244.2.0/24".parse().unwrap(), "10.5.0.3".parse().unwrap()),
        ]
        .into();
        assert_eq!(got, want);
    }

    #[test]
    fn nodes_on_this_host_and_unparsable_fields_get_no_route() {
        let nodes = [
            // Another kubelet on this host: its bridge is here.
            node("h2", Some("10.244.7.0/24"), Some("192.168.1.9")),
            node("bad-cidr", Some("10.244.8.0/24 via 1.2.3.4"), Some("10.5.0.8")),
            node("bad-ip", Some("10.244.9.0/24"), Some("10.5.0.9; reboot")),
            node("v6", Some("fd00::/64"), Some("fd00::1")),
            // A CIDR written with host bits is routed as its network.
            node("sloppy", Some("10.244.10.7/24"), Some("10.5.0.10")),
        ];
        let got = wanted(&nodes, "h1", &["192.168.1.9".parse().unwrap()]);
        assert_eq!(got, [("10.244.10.0/24".parse().unwrap(), "10.5.0.10".parse().unwrap())].into());
    }

    #[test]
    fn auto_routes_directly_on_a_connected_network_and_over_vxlan_otherwise() {
        let net = |s: &str| s.parse::<Ipv4Net>().unwrap();
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let want = BTreeMap::from([
            (net("10.244.1.0/24"), ip("10.5.0.2")),
            (net("10.244.2.0/24"), ip("192.168.7.3")),
            (net("10.244.3.0/24"), ip("10.5.1.9")),
        ]);
        // This node: 10.5.0.0/24 and 10.5.1.0/28 (.0–.15) connected.
        let subnets = [net("10.5.0.0/24"), net("10.5.1.0/28")];
        assert_eq!(
            plan(&want, Mode::Auto, &subnets),
            BTreeMap::from([
                (net("10.244.1.0/24"), Hop::Direct(ip("10.5.0.2"))),
                (net("10.244.2.0/24"), Hop::Vxlan(ip("192.168.7.3"))),
                (net("10.244.3.0/24"), Hop::Direct(ip("10.5.1.9"))),
            ])
        );
        // A /29 that stops before .9: routed, so VXLAN.
        let narrow = [net("10.5.0.0/24"), net("10.5.1.0/29")];
        assert_eq!(plan(&want, Mode::Auto, &narrow)[&net("10.244.3.0/24")], Hop::Vxlan(ip("10.5.1.9")));
        // host-gw leaves the unreachable node out; vxlan takes every node.
        let hg = plan(&want, Mode::HostGw, &subnets);
        assert_eq!(hg.len(), 2, "{hg:?}");
        assert!(!hg.contains_key(&net("10.244.2.0/24")));
        assert!(plan(&want, Mode::Vxlan, &subnets).values().all(|h| matches!(h, Hop::Vxlan(_))));
        // No networks known (no addresses): auto falls back to the overlay.
        assert!(plan(&want, Mode::Auto, &[]).values().all(|h| matches!(h, Hop::Vxlan(_))));
    }

    #[test]
    fn modes_are_spelled_as_the_config_spells_them() {
        for name in Mode::NAMES {
            assert_eq!(name.parse::<Mode>().unwrap().as_str(), name);
        }
        assert_eq!(Mode::default(), Mode::Auto);
        let e = "hostgw".parse::<Mode>().unwrap_err();
        assert_eq!(e, "\"hostgw\" is not a pod network mode: one of auto, host-gw, vxlan");
    }

    #[test]
    fn a_route_matches_its_hop_by_gateway_and_device() {
        let cidr: Ipv4Net = "10.244.2.0/24".parse().unwrap();
        let node: Ipv4Addr = "10.5.0.2".parse().unwrap();
        let over = overlay_route(cidr, 7);
        assert_eq!(oif(&over), Some(7));
        assert!(over.header.flags.contains(rtnetlink::packet_route::route::RouteFlags::Onlink));
        let seen = (ours(&over).unwrap().1, oif(&over));
        assert_eq!(seen.0, Some("10.244.2.0".parse().unwrap()), "via the node's VXLAN gateway");
        assert!(matches(cidr, &Hop::Vxlan(node), &seen, Some(7)));
        assert!(!matches(cidr, &Hop::Vxlan(node), &seen, Some(8)), "a re-created device: replaced");
        assert!(!matches(cidr, &Hop::Direct(node), &seen, Some(7)));
        let direct = (Some(node), Some(2));
        assert!(matches(cidr, &Hop::Direct(node), &direct, Some(7)));
        assert!(matches(cidr, &Hop::Direct(node), &direct, None));
        assert!(!matches(cidr, &Hop::Vxlan(node), &direct, Some(7)));
    }

    #[test]
    fn routes_carry_our_protocol_and_only_ours_are_read_back() {
        let msg = route("10.244.1.0/24".parse().unwrap(), "10.5.0.2".parse().unwrap());
        assert_eq!(msg.header.protocol, RouteProtocol::Other(ROUTE_PROTOCOL));
        assert_eq!(msg.header.table, MAIN_TABLE, "the main table");
        assert_eq!(ours(&msg), Some(("10.244.1.0/24".parse().unwrap(), Some("10.5.0.2".parse().unwrap()))));
        let mut theirs = msg.clone();
        theirs.header.protocol = RouteProtocol::Static;
        assert_eq!(ours(&theirs), None, "a route we did not make is left alone");
    }

    fn sh(program: &str, args: &[&str]) -> String {
        let out = std::process::Command::new(program).args(args).output().unwrap();
        assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The real thing, in a network namespace of the test's own (root):
    /// routes are added, their gateway replaced, the routes of Nodes gone
    /// removed, a route someone else made left alone, and the exemption
    /// chain jumped to first from POSTROUTING.
    #[test]
    #[allow(unsafe_code)]
    fn routes_and_the_exemption_follow_the_nodes_in_a_network_namespace() {
        std::thread::spawn(|| {
            // SAFETY: unshare(2) with CLONE_NEWNET moves only this thread
            // (and the processes it starts) into a new network namespace;
            // it touches no memory.
            let r = unsafe { nix::libc::unshare(nix::libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "unshare(CLONE_NEWNET) needs root: {}", std::io::Error::last_os_error());
            sh("ip", &["link", "set", "lo", "up"]);
            sh("ip", &["link", "add", "eth1", "type", "veth", "peer", "name", "peer1"]);
            sh("ip", &["addr", "add", "10.5.0.1/24", "dev", "eth1"]);
            sh("ip", &["link", "set", "eth1", "up"]);
            sh("ip", &["link", "set", "peer1", "up"]);
            sh("ip", &["route", "add", "10.99.0.0/24", "via", "10.5.0.9"]);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let h = netlink().unwrap();
                let net = |s: &str| s.parse::<Ipv4Net>().unwrap();
                let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
                let first =
                    BTreeMap::from([(net("10.244.1.0/24"), ip("10.5.0.2")), (net("10.244.2.0/24"), ip("10.5.0.3"))]);
                let direct = |m: &BTreeMap<Ipv4Net, Ipv4Addr>| m.iter().map(|(c, v)| (*c, Hop::Direct(*v))).collect();
                apply_routes(&h, &direct(&first), None).await.unwrap();
                let read = current(&h).await.unwrap();
                assert_eq!(read, first.iter().map(|(c, v)| (*c, Some(*v))).collect());
                // w1 moved to another address, w2 was deleted.
                let second = BTreeMap::from([(net("10.244.1.0/24"), ip("10.5.0.4"))]);
                apply_routes(&h, &direct(&second), None).await.unwrap();
                let shown = sh("ip", &["-4", "route", "show", "proto", "212"]);
                assert_eq!(shown.trim(), "10.244.1.0/24 via 10.5.0.4 dev eth1", "{shown}");
                let all = sh("ip", &["-4", "route"]);
                assert!(all.contains("10.99.0.0/24 via 10.5.0.9"), "someone else's route stays: {all}");

                let chains = Chains::new("plinth-test0");
                apply_exemption(&chains, net("10.244.0.0/24"), second.keys().copied()).await.unwrap();
                apply_exemption(&chains, net("10.244.0.0/24"), second.keys().copied()).await.unwrap();
                let saved = sh("iptables-save", &["-t", "nat"]);
                let post: Vec<&str> = saved.lines().filter(|l| l.starts_with("-A POSTROUTING")).collect();
                assert_eq!(post.len(), 1, "one jump, however often synced: {saved}");
                assert!(post[0].ends_with(&format!("-j {}", chains.pod_network())), "{saved}");
                assert!(saved.contains("-s 10.244.0.0/24 -d 10.244.1.0/24"), "{saved}");

                cleanup(&chains).await.unwrap();
                assert_eq!(sh("ip", &["-4", "route", "show", "proto", "212"]).trim(), "");
                let saved = sh("iptables-save", &["-t", "nat"]);
                assert!(!saved.contains(&chains.pod_network()), "{saved}");
            });
        })
        .join()
        .unwrap();
    }

    #[test]
    fn pod_traffic_to_other_nodes_is_accepted_before_the_bridge_masquerades_it() {
        let chains = Chains::new("plinth0");
        let input = exemption_input(
            &chains,
            "10.244.1.0/24".parse().unwrap(),
            ["10.244.0.0/24".parse().unwrap(), "10.244.2.0/24".parse().unwrap()].into_iter(),
        );
        let chain = chains.pod_network();
        assert!(!chain.starts_with("PL-"), "outside the proxy's chains: {chain}");
        assert!(chain.len() <= 28, "{chain}");
        let rules: Vec<&str> = input.lines().filter(|l| l.starts_with("-A ")).collect();
        assert_eq!(rules.len(), 2, "{input}");
        assert!(rules[0].starts_with(&format!("-A {chain} -s 10.244.1.0/24 -d 10.244.0.0/24 ")), "{input}");
        assert!(rules.iter().all(|r| r.ends_with("-j ACCEPT")), "{input}");
        assert!(input.starts_with(&format!("*nat\n:{chain} - [0:0]\n")) && input.ends_with("COMMIT\n"), "{input}");
        assert_eq!(jump(&chains).last().map(String::as_str), Some(chain.as_str()));
    }
}

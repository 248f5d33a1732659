//! Routes to the other nodes' pods (Flannel's host-gw mode): every other
//! Node's `spec.podCIDR` is routed via that Node's InternalIP, the nodes
//! sharing a layer-2 network. Routes are written over rtnetlink in the main
//! table with their own protocol number ([`ROUTE_PROTOCOL`],
//! `ip route show proto 212`): a sync replaces the ones that differ and
//! deletes those of Nodes gone, and never touches a route it did not make.
//!
//! Pod-to-pod traffic across nodes keeps its pod source address: the CNI
//! bridge's `ipMasq` masquerades whatever leaves the node's pod CIDR, so a
//! nat chain of ours (`PLP-<id>-PODNET`, jumped to first from POSTROUTING)
//! accepts packets from this node's pods to other nodes' pod CIDRs before
//! that rule sees them.
//!
//! A Node whose InternalIP is an address of this host (several kubelets on
//! one host, as host-mode tests run) gets no route: its bridge is here.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use futures_util::TryStreamExt as _;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::{Handle, RouteMessageBuilder};

use crate::proxy::{Chains, ProxyError, restore_text, run};
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

/// The addresses of this host's interfaces.
fn local_addresses() -> Vec<IpAddr> {
    nix::ifaddrs::getifaddrs()
        .map(|addrs| {
            addrs.filter_map(|a| a.address).filter_map(|sa| sa.as_sockaddr_in().map(|s| IpAddr::V4(s.ip()))).collect()
        })
        .unwrap_or_default()
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

fn route(cidr: Ipv4Net, via: Ipv4Addr) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(cidr.addr(), cidr.prefix_len())
        .gateway(via)
        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
        .build()
}

/// Our routes in the main table now.
async fn current(h: &Handle) -> Result<BTreeMap<Ipv4Net, Option<Ipv4Addr>>, RoutesError> {
    let all = RouteMessageBuilder::<Ipv4Addr>::new().build();
    let msgs: Vec<RouteMessage> = h.route().get(all).execute().try_collect().await.map_err(RoutesError::List)?;
    Ok(msgs.iter().filter_map(ours).collect())
}

/// Makes our routes say exactly `want`.
async fn apply_routes(h: &Handle, want: &BTreeMap<Ipv4Net, Ipv4Addr>) -> Result<(), RoutesError> {
    let have = current(h).await?;
    for (cidr, via) in &have {
        if want.get(cidr) != via.as_ref() {
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
    for (cidr, via) in want {
        if have.get(cidr) != Some(&Some(*via)) {
            h.route().add(route(*cidr, *via)).replace().execute().await.map_err(|source| RoutesError::Route {
                op: "add",
                cidr: *cidr,
                via: *via,
                source,
            })?;
            tracing::info!("pod routes: {cidr} via {via}");
        }
    }
    Ok(())
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

async fn apply_exemption(chains: &Chains, own: Ipv4Net, want: &BTreeMap<Ipv4Net, Ipv4Addr>) -> Result<(), ProxyError> {
    run("iptables-restore", &["-w", "--noflush"], Some(&exemption_input(chains, own, want.keys().copied()))).await?;
    let rule = jump(chains);
    let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
    if run("iptables", &[&["-w", "-t", "nat", "-C", "POSTROUTING"][..], &rule].concat(), None).await.is_err() {
        run("iptables", &[&["-w", "-t", "nat", "-I", "POSTROUTING", "1"][..], &rule].concat(), None).await?;
    }
    Ok(())
}

async fn sync(h: &Handle, api: &Api, me: &str, chains: &Chains, own: Ipv4Net) -> Result<(), RoutesError> {
    let nodes: Vec<Node> = crate::proxy::typed("Node", api.list("Node", "").await?);
    let want = wanted(&nodes, me, &local_addresses());
    apply_exemption(chains, own, &want).await?;
    apply_routes(h, &want).await
}

fn netlink() -> Result<Handle, RoutesError> {
    let (conn, h, _) = rtnetlink::new_connection().map_err(RoutesError::Socket)?;
    tokio::spawn(conn);
    Ok(h)
}

/// Keeps this node's routes to the other nodes' pods in step with the
/// cluster's Nodes, for ever: after every Node change and every 30 s. A
/// failure is logged and retried. `own` is this node's pod CIDR.
pub async fn run_forever(api: Api, me: String, chains: Chains, own: Ipv4Net) {
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
        if let Err(e) = sync(&h, &api, &me, &chains, own).await {
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

/// Removes this node's routes and its pod-network chain (a node taken
/// down, a test torn down).
pub async fn cleanup(chains: &Chains) -> Result<(), RoutesError> {
    apply_routes(&netlink()?, &BTreeMap::new()).await?;
    let rule = jump(chains);
    let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
    while run("iptables", &[&["-w", "-t", "nat", "-D", "POSTROUTING"][..], &rule].concat(), None).await.is_ok() {}
    let chain = chains.pod_network();
    let saved = run("iptables-save", &["-t", "nat"], None).await?;
    if saved.lines().any(|l| l.split_whitespace().next() == Some(&format!(":{chain}"))) {
        run("iptables-restore", &["-w", "--noflush"], Some(&restore_text([chain.clone()].iter(), "", &[&chain])))
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
                apply_routes(&h, &first).await.unwrap();
                let read = current(&h).await.unwrap();
                assert_eq!(read, first.iter().map(|(c, v)| (*c, Some(*v))).collect());
                // w1 moved to another address, w2 was deleted.
                let second = BTreeMap::from([(net("10.244.1.0/24"), ip("10.5.0.4"))]);
                apply_routes(&h, &second).await.unwrap();
                let shown = sh("ip", &["-4", "route", "show", "proto", "212"]);
                assert_eq!(shown.trim(), "10.244.1.0/24 via 10.5.0.4 dev eth1", "{shown}");
                let all = sh("ip", &["-4", "route"]);
                assert!(all.contains("10.99.0.0/24 via 10.5.0.9"), "someone else's route stays: {all}");

                let chains = Chains::new("plinth-test0");
                apply_exemption(&chains, net("10.244.0.0/24"), &second).await.unwrap();
                apply_exemption(&chains, net("10.244.0.0/24"), &second).await.unwrap();
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

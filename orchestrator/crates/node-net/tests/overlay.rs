//! The VXLAN overlay and the `auto` choice on real kernel devices, in
//! network namespaces this test makes (root): nodes a and c share a layer
//! 2, node b is behind a router (see `support`). Each node's dataplane is
//! programmed by `routes::program` from Node objects, as the kubelet's
//! sync does, and pods connect to each other across it.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use ipnet::Ipv4Net;
use orchestrator_node_net::overlay;
use orchestrator_node_net::proxy::Chains;
use orchestrator_node_net::routes::{self, Hop, Mode};
use support::{A, B, C, Lab, in_ns, node, node_at, pod_ip, whoami, whoami_server, whoami_within};

const PORT: u16 = 7070;

fn to(n: &support::NodeSpec, host: u8) -> SocketAddr {
    SocketAddr::new(pod_ip(n, host).into(), PORT)
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

#[test]
fn pods_reach_each_other_over_vxlan_across_a_router_and_directly_on_a_shared_lan() {
    let lab = Lab::new("o");
    let all = || vec![node(&A), node(&B), node(&C)];
    // Someone else's route on node a: never touched.
    lab.on(&A, "ip", &["route", "add", "10.99.0.0/24", "via", "10.1.0.254", "proto", "static"]);

    // auto: direct to the node on the same LAN, VXLAN to the one behind the router.
    let plan_a = lab.program(&A, all(), Mode::Auto);
    assert_eq!(
        plan_a,
        BTreeMap::from([(net(B.cidr), Hop::Vxlan(B.ip)), (net(C.cidr), Hop::Direct(C.ip))]),
        "node a's choice"
    );
    assert_eq!(lab.program(&B, all(), Mode::Auto).values().filter(|h| matches!(h, Hop::Vxlan(_))).count(), 2);
    assert_eq!(
        lab.program(&C, all(), Mode::Auto),
        BTreeMap::from([(net(A.cidr), Hop::Direct(A.ip)), (net(B.cidr), Hop::Vxlan(B.ip))])
    );

    // The device as Flannel's vxlan mode makes it.
    let link = lab.on(&A, "ip", &["-d", "link", "show", overlay::DEVICE]);
    for want in [
        "vxlan id 1 ",
        "local 10.1.0.1 ",
        "dstport 8472 ",
        "nolearning",
        "mtu 1450 ",
        "link/ether 0e:70:0a:f4:01:00",
        "state UNKNOWN",
    ] {
        assert!(link.contains(want), "{want:?} in {link}");
    }
    assert!(lab.on(&A, "ip", &["-4", "addr", "show", overlay::DEVICE]).contains("inet 10.244.1.0/32"));
    let routes_a = lab.on(&A, "ip", &["-4", "route", "show", "proto", "212"]);
    assert_eq!(
        routes_a.lines().map(str::trim).collect::<Vec<_>>(),
        ["10.244.2.0/24 via 10.244.2.0 dev plinth.vxlan onlink", "10.244.3.0/24 via 10.1.0.3 dev eth0"],
        "{routes_a}"
    );
    let fdb = lab.on(&A, "bridge", &["fdb", "show", "dev", overlay::DEVICE]);
    assert_eq!(fdb.trim(), "0e:70:0a:f4:02:00 dst 10.2.0.1 self permanent", "{fdb}");
    let neigh = lab.on(&A, "ip", &["neigh", "show", "dev", overlay::DEVICE]);
    assert_eq!(neigh.trim(), "10.244.2.0 lladdr 0e:70:0a:f4:02:00 PERMANENT", "{neigh}");

    // Pods talk: across the router over VXLAN, on the LAN directly, both ways.
    for pod in ["pa", "pb", "pc"] {
        whoami_server(&lab.ns(pod), PORT);
    }
    assert_eq!(whoami(&lab.ns("pa"), to(&B, 2)).unwrap(), "10.244.1.2", "a → b over VXLAN");
    assert_eq!(whoami(&lab.ns("pb"), to(&A, 2)).unwrap(), "10.244.2.2", "b → a over VXLAN");
    assert_eq!(whoami(&lab.ns("pc"), to(&B, 2)).unwrap(), "10.244.3.2", "c → b over VXLAN");
    assert_eq!(whoami(&lab.ns("pc"), to(&A, 2)).unwrap(), "10.244.3.2", "c → a directly");
    // A resync changes nothing.
    assert_eq!(lab.program(&A, all(), Mode::Auto), plan_a);
    assert_eq!(lab.on(&A, "ip", &["-4", "route", "show", "proto", "212"]), routes_a);

    // The CNI bridge's ipMasq masquerades what leaves a's pod CIDR (here
    // as the source address of the vxlan device); the PODNET exemption
    // keeps pod-to-pod traffic over the overlay unmasqueraded.
    support::sh(
        "ip",
        &[
            "netns",
            "exec",
            &lab.ns("a"),
            "iptables",
            "-w",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            A.cidr,
            "!",
            "-d",
            "224.0.0.0/4",
            "-j",
            "MASQUERADE",
        ],
    );
    assert_eq!(whoami(&lab.ns("pa"), to(&B, 2)).unwrap(), "10.244.1.0", "masqueraded without the exemption");
    let peers: Vec<Ipv4Net> = plan_a.keys().copied().collect();
    in_ns(&lab.ns("a"), move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(routes::apply_exemption(&Chains::new("br0"), net(A.cidr), peers.into_iter())).unwrap();
    });
    assert_eq!(whoami(&lab.ns("pa"), to(&B, 2)).unwrap(), "10.244.1.2", "the exemption holds over VXLAN");

    // Node b moved to another address: one FDB entry, to the new one.
    lab.program(&A, vec![node(&A), node_at(&B, "10.2.0.9".parse().unwrap()), node(&C)], Mode::Auto);
    let fdb = lab.on(&A, "bridge", &["fdb", "show", "dev", overlay::DEVICE]);
    assert_eq!(fdb.trim(), "0e:70:0a:f4:02:00 dst 10.2.0.9 self permanent", "{fdb}");

    // Node b deleted: its route, neighbour and FDB entry go; c's route and
    // someone else's stay.
    lab.program(&A, vec![node(&A), node(&C)], Mode::Auto);
    let routes = lab.on(&A, "ip", &["-4", "route", "show", "proto", "212"]);
    assert_eq!(routes.trim(), "10.244.3.0/24 via 10.1.0.3 dev eth0", "{routes}");
    assert_eq!(lab.on(&A, "bridge", &["fdb", "show", "dev", overlay::DEVICE]).trim(), "");
    assert_eq!(lab.on(&A, "ip", &["neigh", "show", "dev", overlay::DEVICE]).trim(), "");
    assert!(lab.on(&A, "ip", &["-4", "route"]).contains("10.99.0.0/24 via 10.1.0.254"));
    // (The router has no route back to a's pods: no ICMP answer, a timeout.)
    let gone = whoami_within(&lab.ns("pa"), to(&B, 2), std::time::Duration::from_millis(500));
    assert!(gone.is_err(), "no way to b's pods any more: {gone:?}");

    // host-gw: b is on no network of a's: left unrouted; c directly.
    assert_eq!(lab.program(&A, all(), Mode::HostGw), BTreeMap::from([(net(C.cidr), Hop::Direct(C.ip))]));
    // vxlan: everything over the overlay, the LAN neighbour too.
    for n in [&A, &C] {
        lab.program(n, all(), Mode::Vxlan);
    }
    let routes = lab.on(&A, "ip", &["-4", "route", "show", "proto", "212"]);
    assert!(routes.contains("10.244.3.0/24 via 10.244.3.0 dev plinth.vxlan onlink"), "{routes}");
    assert_eq!(whoami(&lab.ns("pc"), to(&A, 2)).unwrap(), "10.244.3.2", "c → a over VXLAN");

    // Taken down: our routes and the device go.
    in_ns(&lab.ns("a"), || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(routes::cleanup(&Chains::new("br0"))).unwrap();
    });
    assert_eq!(lab.on(&A, "ip", &["-4", "route", "show", "proto", "212"]).trim(), "");
    assert!(!lab.on(&A, "ip", &["link"]).contains(overlay::DEVICE));
    assert!(lab.on(&A, "ip", &["-4", "route"]).contains("10.99.0.0/24 via 10.1.0.254"));
}

#[test]
fn a_link_of_that_name_that_is_not_vxlan_is_left_alone() {
    let lab = Lab::new("n");
    lab.on(&A, "ip", &["link", "add", overlay::DEVICE, "type", "bridge"]);
    let device = overlay::Device { local: A.ip, own: net(A.cidr) };
    let err = in_ns(&lab.ns("a"), move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(routes::program(&[node(&A), node(&B)], "a", Mode::Auto, device)).unwrap_err().to_string()
    });
    assert!(err.contains("not a vxlan device"), "{err}");
    assert!(lab.on(&A, "ip", &["-d", "link", "show", overlay::DEVICE]).contains("bridge"));
}

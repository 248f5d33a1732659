//! Pod addresses handed out by the control plane (issue 15 item 3): the
//! node IPAM controller gives each Node a distinct `spec.podCIDR` from
//! `--cluster-cidr`, a joined worker's kubelet takes its pod range from
//! its Node, a deleted Node's range is handed out again, and an exhausted
//! pool is a Warning Event on the Node while the controller keeps going.
//! The real `orchestrator server` and `orchestrator kubelet` processes.

mod common;
mod kubelet_support;

use std::time::Duration;

use kubelet_support::{BUSYBOX, Cluster};

const READY: Duration = Duration::from_secs(60);

/// containerd's /24 cut into four /26s: the kubelet's Node, registered
/// first, has the first, and its pods get addresses from it. Returns the
/// /24's prefix ("10.x.y.").
fn kubelet_range_from_its_node(c: &Cluster) -> String {
    let base = c.containerd.pod_cidr.trim_end_matches("0/24").to_string();
    let cidr = c.ok(&["get", "node", &c.node, "-o", "jsonpath={.spec.podCIDR} {.spec.podCIDRs}"]);
    assert_eq!(cidr, format!("{base}0/26 [\"{base}0/26\"]"));
    c.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {BUSYBOX}\n    imagePullPolicy: Never\n    command: [sleep, '3600']\n"
    ));
    let ip = c.wait_for(&["get", "pod", "p", "-o", "jsonpath={.status.podIP}"], READY, |s| !s.is_empty());
    let last: u8 = ip.rsplit('.').next().unwrap().parse().unwrap();
    assert!(ip.starts_with(&base) && (1..63).contains(&last), "{ip} in {base}0/26");
    base
}

#[test]
fn the_control_planes_own_kubelet_takes_its_range_from_its_node() {
    let Some(c) = Cluster::start_ipam(false) else { return };
    kubelet_range_from_its_node(&c);
}

#[test]
fn nodes_get_distinct_pod_cidrs_freed_on_delete_and_exhaustion_is_an_event() {
    let Some(c) = Cluster::start_ipam(true) else { return };
    let base = kubelet_range_from_its_node(&c);
    let cidr = |node: &str| c.ok(&["get", "node", node, "-o", "jsonpath={.spec.podCIDR} {.spec.podCIDRs}"]);

    // Nodes an admin creates (no kubelet behind them) get the next ranges.
    let node = |name: &str| format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\n");
    for n in ["n2", "n3", "n4"] {
        c.apply(&node(n));
    }
    for (n, want) in [("n2", "64"), ("n3", "128"), ("n4", "192")] {
        c.wait_for(&["get", "node", n, "-o", "jsonpath={.spec.podCIDR}"], READY, |s| s == format!("{base}{want}/26"));
    }
    // None left: an event on the Node, not a crash.
    c.apply(&node("n5"));
    c.wait_for(
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=n5",
            "-o",
            "jsonpath={.items[*].type} {.items[*].reason}",
        ],
        READY,
        |s| s == "Warning CIDRNotAvailable",
    );
    assert_eq!(cidr("n5").trim(), "");
    // n2 goes: its range is n5's.
    c.ok(&["delete", "node", "n2"]);
    c.wait_for(&["get", "node", "n5", "-o", "jsonpath={.spec.podCIDR}"], READY, |s| s == format!("{base}64/26"));
    // The others keep theirs.
    assert_eq!(cidr("n3"), format!("{base}128/26 [\"{base}128/26\"]"));
}

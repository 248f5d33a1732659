//! The scheduler over several nodes, driven by a real kubectl: three Node
//! objects created by an admin (Ready, with allocatable, hostname and zone
//! labels, and Leases that stay fresh), no kubelet — the scheduler's
//! decisions are read back from `spec.nodeName`, the PodScheduled condition
//! and FailedScheduling events.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::Server;

const T: Duration = Duration::from_secs(60);
const ZONE: &str = "topology.kubernetes.io/zone";

/// Creates node `name` in `zone`, Ready, with a Lease good for an hour.
fn node(s: &Server, name: &str, zone: &str) {
    let t = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap();
    let yaml = format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{kubernetes.io/hostname: {name}, {ZONE}: {zone}, kubernetes.io/os: linux}}\n\
         status:\n  allocatable: {{cpu: '4', memory: 8Gi, pods: '110'}}\n  capacity: {{cpu: '4', memory: 8Gi, pods: '110'}}\n\
         \x20 conditions: [{{type: Ready, status: 'True', reason: KubeletReady, message: kubelet is posting ready status}}]\n\
         ---\napiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {{name: {name}, namespace: kube-node-lease}}\n\
         spec: {{holderIdentity: {name}, leaseDurationSeconds: 3600, renewTime: '{t}'}}\n"
    );
    s.apply(&yaml, &[]);
}

/// A Deployment of `replicas` pods labelled app=`name`, with `spec` (YAML, indented for the pod spec) added.
fn deployment(name: &str, replicas: u32, spec: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      containers: [{{name: c, image: busybox}}]\n{spec}"
    )
}

/// The nodes the pods labelled app=`app` are bound to, counted by node ("" for pending).
fn placement(s: &Server, app: &str) -> BTreeMap<String, usize> {
    let out = s.ok(&[
        "get",
        "pods",
        "-l",
        &format!("app={app}"),
        "-o",
        "jsonpath={range .items[*]}{.spec.nodeName}{\"\\n\"}{end}",
    ]);
    let mut m = BTreeMap::new();
    for l in out.lines() {
        *m.entry(l.trim().to_string()).or_default() += 1;
    }
    m
}

fn wait_placed(s: &Server, app: &str, pods: usize, bound: usize) -> BTreeMap<String, usize> {
    let start = std::time::Instant::now();
    loop {
        let m = placement(s, app);
        let total: usize = m.values().sum();
        let placed: usize = m.iter().filter(|(n, _)| !n.is_empty()).map(|(_, c)| c).sum();
        if total == pods && placed == bound {
            return m;
        }
        assert!(start.elapsed() < T, "app={app}: {m:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn replicas_spread_anti_affinity_zones_and_preferences_over_three_nodes() {
    let Some(s) = Server::start() else { return };
    node(&s, "n1", "east");
    node(&s, "n2", "east");
    node(&s, "n3", "west");
    s.wait_for(&["get", "nodes", "--no-headers"], T, |o| o.matches(" Ready ").count() == 3);

    // Default spreading: one replica per node.
    s.apply(&deployment("web", 3, ""), &[]);
    let m = wait_placed(&s, "web", 3, 3);
    assert_eq!(m.keys().collect::<Vec<_>>(), ["n1", "n2", "n3"], "{m:?}");

    // Required anti-affinity by hostname: three land, the fourth waits with upstream's message.
    let anti = "      affinity:\n        podAntiAffinity:\n          requiredDuringSchedulingIgnoredDuringExecution:\n          - labelSelector: {matchLabels: {app: solo}}\n            topologyKey: kubernetes.io/hostname\n";
    s.apply(&deployment("solo", 4, anti), &[]);
    let m = wait_placed(&s, "solo", 4, 3);
    assert_eq!(m.get(""), Some(&1), "{m:?}");
    assert!(m.iter().all(|(_, c)| *c == 1), "one per node: {m:?}");
    let pending = s.ok(&["get", "pods", "-l", "app=solo", "--field-selector", "spec.nodeName=", "-o", "name"]);
    let pending = pending.trim().trim_start_matches("pod/");
    let cond = s.wait_for(
        &["get", "pod", pending, "-o", "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")]}"],
        T,
        |o| o.contains("Unschedulable"),
    );
    let cond: serde_json::Value = serde_json::from_str(&cond).unwrap();
    assert_eq!(cond["status"], "False");
    assert_eq!(cond["message"], "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules.");
    let events = s.wait_for(
        &["get", "events", "--field-selector", &format!("involvedObject.name={pending},reason=FailedScheduling")],
        T,
        |o| o.contains("FailedScheduling"),
    );
    assert!(events.contains("didn't match pod anti-affinity rules"), "{events}");
    // Cordoning a node changes the count of each reason.
    s.ok(&["cordon", "n3"]);
    s.ok(&["delete", "pod", pending, "--wait=false"]);
    let _ = s.wait_for(&["get", "events", "--field-selector", "reason=FailedScheduling", "-o", "jsonpath={.items[*].message}"], T, |o| {
        o.contains("0/3 nodes are available: 1 node(s) were unschedulable, 2 node(s) didn't match pod anti-affinity rules.")
    });
    s.ok(&["uncordon", "n3"]);

    // Zones: with maxSkew 1 over the zone, four replicas split two and two, though east has two nodes.
    let zones = "      topologySpreadConstraints:\n      - maxSkew: 1\n        topologyKey: topology.kubernetes.io/zone\n        whenUnsatisfiable: DoNotSchedule\n        labelSelector: {matchLabels: {app: zonal}}\n";
    s.apply(&deployment("zonal", 4, zones), &[]);
    let m = wait_placed(&s, "zonal", 4, 4);
    let east = m.get("n1").copied().unwrap_or(0) + m.get("n2").copied().unwrap_or(0);
    assert_eq!((east, m.get("n3").copied().unwrap_or(0)), (2, 2), "{m:?}");

    // Preferred affinity: next to the database, wherever it is.
    s.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: db, labels: {app: db}}\nspec:\n  nodeName: n2\n  containers: [{name: c, image: busybox}]\n", &[]);
    let near = "apiVersion: v1\nkind: Pod\nmetadata: {name: cache, labels: {app: cache}}\nspec:\n  containers: [{name: c, image: busybox}]\n  affinity:\n    podAffinity:\n      preferredDuringSchedulingIgnoredDuringExecution:\n      - weight: 100\n        podAffinityTerm:\n          labelSelector: {matchLabels: {app: db}}\n          topologyKey: kubernetes.io/hostname\n";
    s.apply(near, &[]);
    let m = wait_placed(&s, "cache", 1, 1);
    assert_eq!(m.keys().collect::<Vec<_>>(), ["n2"], "{m:?}");
}

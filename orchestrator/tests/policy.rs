//! What charts create alongside workloads, driven by a real kubectl:
//! PodDisruptionBudgets kept by the disruption controller and honoured by
//! the `pods/eviction` subresource and `kubectl drain` (pods move to
//! another hollow node, DaemonSet pods stay), and the stored kinds with
//! their `kubectl get` columns and validation.

mod common;

use std::time::Duration;

use common::{APP, HollowNode, Server};

const T: Duration = Duration::from_secs(60);

const PDB: &str = "apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web}
spec:
  minAvailable: 2
  selector: {matchLabels: {app: web}}
";

const AGENT: &str = "apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers: [{name: c, image: busybox:1}]
";

/// `name node` of each pod with label `app`, sorted.
fn placement(s: &Server, app: &str) -> Vec<String> {
    let out = s.ok(&[
        "get",
        "pods",
        "-l",
        &format!("app={app}"),
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.phase}{\"\\n\"}{end}",
    ]);
    let mut v: Vec<String> = out.lines().map(str::to_string).collect();
    v.sort();
    v
}

fn eviction(s: &Server, pod: &str, api_version: &str) -> std::process::Output {
    let body = format!(
        r#"{{"apiVersion":"{api_version}","kind":"Eviction","metadata":{{"name":"{pod}","namespace":"default"}}}}"#
    );
    let f = s.dir.path().join(format!("eviction-{pod}.json"));
    std::fs::write(&f, body).unwrap();
    s.run(&["create", "--raw", &format!("/api/v1/namespaces/default/pods/{pod}/eviction"), "-f", f.to_str().unwrap()])
}

#[test]
fn eviction_honours_the_budget_and_drain_moves_pods() {
    let Some(s) = Server::start() else { return };
    let _n1 = HollowNode::start(&s, "hollow-1", 40);
    s.apply(APP, &[]);
    s.apply(AGENT, &[]);
    s.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    s.ok(&["rollout", "status", "daemonset/agent", "--timeout=60s"]);
    s.apply(PDB, &[]);
    // Two ready pods, two needed: nothing may go.
    let row = s.wait_for(&["get", "pdb", "web", "--no-headers"], T, |o| o.split_whitespace().nth(3) == Some("0"));
    assert_eq!(row.split_whitespace().take(4).collect::<Vec<_>>(), ["web", "2", "N/A", "0"], "{row}");
    let st = s.ok(&[
        "get",
        "pdb",
        "web",
        "-o",
        "jsonpath={.status.currentHealthy} {.status.desiredHealthy} {.status.expectedPods} {.status.conditions[0].reason}",
    ]);
    assert_eq!(st, "2 2 2 InsufficientPods");

    // The eviction subresource refuses with upstream's 429 and cause.
    let pods = placement(&s, "web");
    let first = pods[0].split(' ').next().unwrap().to_string();
    let out = eviction(&s, &first, "policy/v1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("TooManyRequests") && err.contains("Cannot evict pod as it would violate the pod's disruption budget."),
        "{err}"
    );
    assert_eq!(placement(&s, "web"), pods, "nothing was deleted");

    // A second node; draining the first is refused while the budget blocks.
    let _n2 = HollowNode::start(&s, "hollow-2", 40);
    s.wait_for(&["get", "nodes", "--no-headers"], T, |o| o.matches(" Ready ").count() == 2);
    let err = s.fails(&["drain", "hollow-1", "--timeout=20s"]);
    assert!(err.contains("cannot delete DaemonSet-managed Pods"), "{err}");
    let node = s.ok(&["get", "node", "hollow-1", "--no-headers"]);
    assert!(node.contains("Ready,SchedulingDisabled"), "drain cordons first: {node}");
    let out = s.run(&["drain", "hollow-1", "--ignore-daemonsets", "--timeout=12s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the budget blocks the drain");
    assert!(
        err.contains("(will retry after 5s): Cannot evict pod as it would violate the pod's disruption budget."),
        "{err}"
    );
    assert_eq!(placement(&s, "web"), pods, "nothing was evicted");

    // One may go: drain evicts one pod at a time as replacements become ready on hollow-2.
    s.ok(&["patch", "pdb", "web", "--type=merge", "-p", r#"{"spec":{"minAvailable":1}}"#]);
    s.wait_for(&["get", "pdb", "web", "--no-headers"], T, |o| o.split_whitespace().nth(3) == Some("1"));
    let out = s.ok(&["drain", "hollow-1", "--ignore-daemonsets", "--timeout=90s"]);
    assert!(out.contains("node/hollow-1 drained") && out.contains("evicting pod default/web-"), "{out}");
    let moved = s.wait_for(&["get", "pods", "-l", "app=web", "-o", "wide", "--no-headers"], T, |o| {
        o.lines().count() == 2 && o.lines().all(|l| l.contains("Running") && l.contains("hollow-2"))
    });
    assert!(!moved.contains("hollow-1"), "{moved}");
    let agents = placement(&s, "agent");
    assert!(agents.iter().any(|p| p.contains(" hollow-1 ")), "DaemonSet pods stay: {agents:?}");
    s.ok(&["uncordon", "hollow-1"]);
    let node = s.ok(&["get", "node", "hollow-1", "--no-headers"]);
    assert!(!node.contains("SchedulingDisabled"), "{node}");

    // With a disruption allowed, an eviction (here as kubectl ≤1.21 words it) deletes the pod.
    s.wait_for(&["get", "pdb", "web", "--no-headers"], T, |o| o.split_whitespace().nth(3) == Some("1"));
    let pod = placement(&s, "web")[0].split(' ').next().unwrap().to_string();
    let out = eviction(&s, &pod, "policy/v1beta1");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    s.wait_for(&["get", "pod", &pod, "--ignore-not-found", "--no-headers"], T, |o| o.trim().is_empty());
}

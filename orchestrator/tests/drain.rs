//! `orchestrator drain` and `uncordon`, what init runs before an upgrade's
//! reboot and at a reset (issue 15 items 6 and 8), with the node's own
//! certificate as a worker has it: a node alone is left as it is, a
//! PodDisruptionBudget holds the drain back, DaemonSet pods stay, pods go
//! to the other node, the node may drain nobody else, and `--delete`
//! removes its Node.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{APP, HollowNode, Server};
use orchestrator_http::pki;

const T: Duration = Duration::from_secs(60);

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

const PDB: &str = "apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web}
spec:
  minAvailable: 2
  selector: {matchLabels: {app: web}}
";

/// A kubelet directory holding `system:node:<node>`'s certificate, as a
/// joined worker's kubelet keeps it.
fn node_identity(s: &Server, node: &str) -> tempfile::TempDir {
    let ca = pki::load_ca(&s.dir.path().join("ca.crt"), &s.dir.path().join("ca.key")).unwrap();
    let cert = pki::issue_client(&ca, &format!("system:node:{node}"), "system:nodes").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("pki")).unwrap();
    std::fs::write(dir.path().join("pki/ca.crt"), &ca.cert_pem).unwrap();
    std::fs::write(dir.path().join("pki/kubelet-client-current.pem"), format!("{}{}", cert.cert_pem, cert.key_pem))
        .unwrap();
    dir
}

fn tool(s: &Server, kubelet_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(&args[..1])
        .args(["--server", &format!("https://{}", s.address), "--kubelet-dir"])
        .arg(kubelet_dir)
        .args(&args[1..])
        .output()
        .unwrap()
}

fn said(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// `name node` of each pod with label `app`, sorted.
fn placement(s: &Server, app: &str) -> Vec<String> {
    let out = s.ok(&[
        "get",
        "pods",
        "-l",
        &format!("app={app}"),
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName}{\"\\n\"}{end}",
    ]);
    let mut v: Vec<String> = out.lines().map(str::to_string).collect();
    v.sort();
    v
}

fn cordoned(s: &Server, node: &str) -> bool {
    s.ok(&["get", "node", node, "-o", "jsonpath={.spec.unschedulable}"]) == "true"
}

#[test]
fn a_node_drains_itself_through_evictions_and_leaves_the_cluster() {
    let Some(s) = Server::start() else { return };
    let _n1 = HollowNode::start(&s, "hollow-1", 40);
    s.apply(APP, &[]);
    s.apply(AGENT, &[]);
    s.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    s.ok(&["rollout", "status", "daemonset/agent", "--timeout=60s"]);
    s.apply(PDB, &[]);
    s.wait_for(&["get", "pdb", "web", "--no-headers"], T, |o| o.split_whitespace().nth(3) == Some("0"));
    let me = node_identity(&s, "hollow-1");
    let web = placement(&s, "web");

    // Alone: nowhere for its pods to go, so nothing is done (an upgrade's
    // pods come back after the reboot).
    let out = tool(&s, me.path(), &["drain", "--node", "hollow-1", "--only-if-others", "--timeout", "10s"]);
    assert!(out.status.success(), "{}", said(&out));
    assert!(said(&out).contains("not drained: no other Ready, schedulable node"), "{}", said(&out));
    assert!(!cordoned(&s, "hollow-1"));

    // A second node; the budget holds the drain back, which says why.
    let _n2 = HollowNode::start(&s, "hollow-2", 40);
    s.wait_for(&["get", "nodes", "--no-headers"], T, |o| o.matches(" Ready ").count() == 2);
    let out = tool(&s, me.path(), &["drain", "--node", "hollow-1", "--only-if-others", "--timeout", "8s"]);
    assert!(!out.status.success(), "the budget blocks the drain: {}", said(&out));
    assert!(
        said(&out).contains("not evicted within")
            && said(&out).contains("Cannot evict pod as it would violate the pod's disruption budget."),
        "{}",
        said(&out)
    );
    assert!(cordoned(&s, "hollow-1"), "cordoned first (init uncordons it)");
    assert_eq!(placement(&s, "web"), web, "nothing was evicted");

    // The node may not drain another.
    let out = tool(&s, me.path(), &["drain", "--node", "hollow-2", "--timeout", "8s"]);
    assert!(!out.status.success());
    assert!(said(&out).contains("is not allowed to modify node \"hollow-2\""), "{}", said(&out));

    // One may go at a time: the pods move to hollow-2, the DaemonSet's stays.
    s.ok(&["patch", "pdb", "web", "--type=merge", "-p", r#"{"spec":{"minAvailable":1}}"#]);
    let out = tool(&s, me.path(), &["drain", "--node", "hollow-1", "--only-if-others", "--timeout", "90s"]);
    assert!(out.status.success(), "{}", said(&out));
    let text = said(&out);
    assert!(text.contains("cordoned and drained: 2 pods evicted (default/web-"), "{text}");
    assert!(text.contains("(DaemonSet-managed)"), "{text}");
    let moved = placement(&s, "web");
    assert!(moved.len() == 2 && moved.iter().all(|p| p.ends_with(" hollow-2")), "{moved:?}");
    assert!(placement(&s, "agent").iter().any(|p| p.ends_with(" hollow-1")), "DaemonSet pods stay");

    let out = tool(&s, me.path(), &["uncordon", "--node", "hollow-1"]);
    assert!(out.status.success() && said(&out).contains("uncordoned"), "{}", said(&out));
    assert!(!cordoned(&s, "hollow-1"));

    // Leaving: drained again (nothing left to move) and its Node deleted.
    let out = tool(&s, me.path(), &["drain", "--node", "hollow-1", "--delete", "--timeout", "30s"]);
    assert!(out.status.success(), "{}", said(&out));
    assert!(said(&out).contains("Node deleted"), "{}", said(&out));
    let nodes = s.ok(&["get", "nodes", "-o", "name"]);
    assert_eq!(nodes.trim(), "node/hollow-2", "{nodes}");
}

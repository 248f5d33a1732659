//! v1 ReplicationControllers driven by kubectl with a hollow node standing
//! in for the kubelet: the selector defaulted from the template's labels,
//! replicas kept by the ReplicaSet logic, `kubectl scale rc`, the scale
//! subresource, status counts and columns, a field selector on
//! `status.replicas`, a mismatched selector refused, and the garbage
//! collector taking the pods with their controller.

mod common;

use std::time::Duration;

use common::{HollowNode, Server};

const T: Duration = Duration::from_secs(60);

const RC: &str = r#"apiVersion: v1
kind: ReplicationController
metadata: {name: legacy}
spec:
  replicas: 2
  template:
    metadata: {labels: {app: legacy}}
    spec:
      containers: [{name: web, image: nginx:1.25}]
"#;

const MISMATCHED: &str = r#"apiVersion: v1
kind: ReplicationController
metadata: {name: bad}
spec:
  selector: {app: alpha}
  template:
    metadata: {labels: {app: beta}}
    spec:
      containers: [{name: web, image: nginx:1.25}]
"#;

fn running_pods(out: &str) -> usize {
    out.lines().filter(|l| l.contains("Running")).count()
}

#[test]
fn replication_controller_keeps_scales_and_owns_its_pods() {
    let Some(s) = Server::start() else { return };
    let _node = HollowNode::start(&s, "hollow-1", 40);
    assert!(s.apply(RC, &[]).contains("replicationcontroller/legacy created"));
    // The selector and the controller's labels default to the template's labels.
    assert_eq!(
        s.ok(&["get", "rc", "legacy", "-o", "jsonpath={.spec.selector.app} {.metadata.labels.app}"]),
        "legacy legacy"
    );
    s.wait_for(&["get", "pods", "-l", "app=legacy", "--no-headers"], T, |o| running_pods(o) == 2);
    let get = s.wait_for(&["get", "rc", "legacy", "--no-headers"], T, |o| {
        o.split_whitespace().take(4).collect::<Vec<_>>() == ["legacy", "2", "2", "2"]
    });
    assert!(get.starts_with("legacy"), "{get}");
    let owner =
        s.ok(&["get", "pods", "-l", "app=legacy", "-o", "jsonpath={.items[0].metadata.ownerReferences[0].kind}"]);
    assert_eq!(owner, "ReplicationController");

    assert!(s.ok(&["scale", "rc", "legacy", "--replicas=3"]).contains("scaled"));
    s.wait_for(&["get", "pods", "-l", "app=legacy", "--no-headers"], T, |o| running_pods(o) == 3);
    s.wait_for(&["get", "rc", "legacy", "-o", "jsonpath={.status.readyReplicas}"], T, |o| o == "3");
    let scale: serde_json::Value = serde_json::from_str(&s.ok(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/replicationcontrollers/legacy/scale",
    ]))
    .unwrap();
    assert_eq!(
        (scale["spec"]["replicas"].as_i64(), scale["status"]["selector"].as_str()),
        (Some(3), Some("app=legacy"))
    );
    let selected = s.ok(&["get", "rc", "--field-selector", "status.replicas=3", "-o", "name"]);
    assert_eq!(selected.trim(), "replicationcontroller/legacy");

    s.ok(&["scale", "rc", "legacy", "--replicas=1"]);
    s.wait_for(&["get", "pods", "-l", "app=legacy", "--no-headers"], T, |o| o.lines().count() == 1);

    let f = s.dir.path().join("bad.yaml");
    std::fs::write(&f, MISMATCHED).unwrap();
    let err = s.fails(&["apply", "-f", f.to_str().unwrap()]);
    assert!(
        err.contains("spec.template.metadata.labels") && err.contains("`selector` does not match template `labels`"),
        "{err}"
    );
    assert!(s.fails(&["get", "rc", "bad"]).contains("NotFound"));

    // Deleting the controller takes its pods with it.
    s.ok(&["delete", "rc", "legacy"]);
    s.wait_for(&["get", "pods", "-l", "app=legacy", "--no-headers", "--ignore-not-found"], T, |o| o.trim().is_empty());
}

//! A single node on SQLite becomes the first member of an HA control plane
//! (issue 19 item 6): objects created with kubectl, `orchestrator migrate`
//! (refused while the server serves the database, and into an etcd that
//! is not empty), then the server on etcd shows the same objects — names,
//! specs, uids, labels, status, a CRD and its custom object — and watches
//! run from the new revisions. `cargo test -p orchestrator --test migrate`

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::Server;
use orchestrator_store_etcd::local::{self, LocalCluster};

const OBJECTS: &str = r#"apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: blue}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: shop, labels: {app: web}}
data: {greeting: hello}
---
apiVersion: v1
kind: Secret
metadata: {name: creds, namespace: shop}
stringData: {password: s3cret}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: nginx, image: "nginx:1.25"}]
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
"#;

const WIDGET: &str = "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1, namespace: shop, labels: {size: large}}\nspec: {size: large}\n";

/// Each object's identity and contents, as kubectl shows them.
fn snapshot(s: &Server) -> Vec<String> {
    let fields = "jsonpath={.metadata.name} {.metadata.uid} {.metadata.labels} {.spec} {.data} {.status}";
    let mut out = Vec::new();
    for (kind, ns) in [
        ("namespace/shop", None),
        ("configmap/settings", Some("shop")),
        ("secret/creds", Some("shop")),
        ("deployment/web", Some("shop")),
        ("crd/widgets.example.com", None),
        ("widget/w1", Some("shop")),
    ] {
        let mut args = vec!["get", kind, "-o", fields];
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        // A CRD's status (its conditions' times) is rewritten by its controller: its spec is what moved.
        let line = s.ok(&args);
        let line =
            if kind.starts_with("crd/") { line.split(" {\"acceptedNames\"").next().unwrap().to_string() } else { line };
        out.push(format!("{kind}: {line}"));
    }
    out
}

fn migrate(data_dir: &std::path::Path, url: &str, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["migrate", "--data-dir"])
        .arg(data_dir)
        .args(["--store", url])
        .args(extra)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn a_sqlite_node_moves_to_etcd_with_every_object() {
    let Some(kubectl) = common::kubectl() else { return };
    if !local::available() {
        return;
    }
    let etcd = LocalCluster::start(1).unwrap();
    let url = etcd.url();
    let mut sqlite = Server::start_with_args(tempfile::tempdir().unwrap(), kubectl.clone(), &["--controllers=false"]);
    sqlite.apply(OBJECTS, &[]);
    sqlite.wait_for(
        &["get", "crd", "widgets.example.com", "-o", "jsonpath={.status.acceptedNames.kind}"],
        Duration::from_secs(20),
        |k| k == "Widget",
    );
    sqlite.apply(WIDGET, &[]);
    sqlite.ok(&[
        "patch",
        "widget",
        "w1",
        "-n",
        "shop",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Ready"}}"#,
    ]);
    let before = snapshot(&sqlite);
    assert!(before.iter().any(|l| l.contains("{\"phase\":\"Ready\"}")), "{before:#?}");

    // Served: refused, nothing copied.
    let served = migrate(sqlite.dir.path(), &url, &[]);
    assert!(!served.status.success());
    assert!(
        text(&served).contains("is in use by another process") && text(&served).contains("stop it first"),
        "{}",
        text(&served)
    );

    sqlite.child.kill().unwrap();
    sqlite.child.wait().unwrap();
    let dir = std::mem::replace(&mut sqlite.dir, tempfile::tempdir().unwrap());
    let out = migrate(dir.path(), &url, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let report = text(&out);
    for line in
        ["configmaps", "secrets", "deployments", "namespaces", "customresourcedefinitions", "example.com/widgets"]
    {
        assert!(report.contains(line), "{line} missing from:\n{report}");
    }
    assert!(report.starts_with("copied "), "{report}");
    // A second run finds etcd holding the copy: refused without --force.
    let again = migrate(dir.path(), &url, &[]);
    assert!(
        !again.status.success() && text(&again).contains("not empty") && text(&again).contains("--force"),
        "{}",
        text(&again)
    );

    // The same data directory served from etcd: the same objects.
    let on_etcd = Server::start_on_etcd(dir, kubectl, &url, "warn", &["--controllers=false"]);
    assert_eq!(snapshot(&on_etcd), before);

    // Watches run from the new revisions; one from before the copy is told 410.
    let rv = on_etcd.ok(&["get", "configmaps", "-n", "shop", "-o", "jsonpath={.metadata.resourceVersion}"]);
    let watch = Command::new(&on_etcd.kubectl)
        .args([
            "get",
            "--raw",
            &format!("/api/v1/namespaces/shop/configmaps?watch=1&resourceVersion={rv}&timeoutSeconds=4"),
        ])
        .env("KUBECONFIG", on_etcd.kubeconfig())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    on_etcd.ok(&["create", "configmap", "after", "-n", "shop", "--from-literal=a=1"]);
    let events = String::from_utf8(watch.wait_with_output().unwrap().stdout).unwrap();
    assert!(events.contains("\"type\":\"ADDED\"") && events.contains("\"name\":\"after\""), "{events}");
    let old =
        on_etcd.ok(&["get", "--raw", "/api/v1/namespaces/shop/configmaps?watch=1&resourceVersion=2&timeoutSeconds=2"]);
    assert!(old.contains("\"code\":410"), "{old}");
}

//! Kubelets hold only their own rights (issue 15 item 2): the Node
//! authorizer and NodeRestriction admission, proved with a worker joined
//! by token (the real `orchestrator server` and `orchestrator kubelet`
//! processes over a private containerd). The worker's own loop (pods
//! started, volumes mounted and refreshed, status written, Lease renewed)
//! runs under them, and its certificate is refused everything else.

mod common;
mod kubelet_support;

use std::time::Duration;

use kubelet_support::{BUSYBOX, Cluster};

const READY: Duration = Duration::from_secs(60);

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_joined_worker_reads_only_what_its_pods_use_and_writes_only_itself() {
    let Some(c) = Cluster::start_split() else { return };
    let node = c.node.clone();
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: mine}}
stringData: {{key: one}}
---
apiVersion: v1
kind: Secret
metadata: {{name: theirs}}
stringData: {{key: private}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web}}
spec:
  terminationGracePeriodSeconds: 1
  volumes:
  - {{name: sec, secret: {{secretName: mine}}}}
  containers:
  - name: main
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: [sleep, "3600"]
    env:
    - {{name: KEY, valueFrom: {{secretKeyRef: {{name: mine, key: key}}}}}}
    volumeMounts:
    - {{name: sec, mountPath: /sec, readOnly: true}}
"#
    ));
    c.wait_for(&["get", "pod", "web", "-o", "jsonpath={.status.phase}"], READY, |s| s == "Running");
    // Its volumes and env came through the node's own credentials, and a
    // change of the Secret reaches the running container (a watch of that
    // one object: the node may watch no other).
    assert_eq!(c.ok(&["exec", "web", "--", "cat", "/sec/key"]), "one");
    assert_eq!(c.ok(&["exec", "web", "--", "sh", "-c", "echo $KEY"]), "one\n");
    c.ok(&["patch", "secret", "mine", "-p", r#"{"stringData":{"key":"two"}}"#]);
    c.wait_for(&["exec", "web", "--", "cat", "/sec/key"], READY, |s| s == "two");

    // As the worker: the Secret its pod mounts, yes; another, no.
    let mine = c.run_as_node(&["get", "secret", "mine", "-o", "jsonpath={.metadata.name}"]);
    assert!(mine.status.success(), "{}", stderr(&mine));
    let theirs = c.run_as_node(&["get", "secret", "theirs"]);
    assert!(!theirs.status.success());
    assert!(
        stderr(&theirs).contains(&format!(
            "secrets \"theirs\" is forbidden: User \"system:node:{node}\" cannot get resource \"secrets\" in API group \"\" in the namespace \"default\": no relationship found between node '{node}' and this object"
        )),
        "{}",
        stderr(&theirs)
    );
    // `kubectl auth can-i` asks the same authorizers.
    for (secret, want) in [("mine", "yes"), ("theirs", "no")] {
        let can = c.run_as_node(&["auth", "can-i", "get", &format!("secret/{secret}")]);
        assert_eq!(String::from_utf8_lossy(&can.stdout).trim(), want, "{secret}: {}", stderr(&can));
    }
    let all = c.run_as_node(&["get", "secrets", "-A"]);
    assert!(
        !all.status.success() && stderr(&all).contains("can only read namespaced object of this type"),
        "{}",
        stderr(&all)
    );
    // Another node's object is not its to change.
    c.apply("apiVersion: v1\nkind: Node\nmetadata: {name: other, labels: {kubernetes.io/hostname: other}}\nspec: {}\n");
    let other = c.run_as_node(&["label", "node", "other", "example.com/x=1"]);
    assert!(
        stderr(&other).contains(&format!(
            "nodes \"other\" is forbidden: node \"{node}\" is not allowed to modify node \"other\""
        )),
        "{}",
        stderr(&other)
    );
    let lease = c.run_as_node(&["-n", "kube-node-lease", "delete", "lease", "other"]);
    assert!(
        stderr(&lease).contains("can only access node lease with the same name as the requesting node"),
        "{}",
        stderr(&lease)
    );
    // Not a privileged label on itself; a free one, yes.
    let role = c.run_as_node(&["label", "node", &node, "node-restriction.kubernetes.io/x=y"]);
    assert!(
        stderr(&role).contains(&format!(
            "nodes \"{node}\" is forbidden: is not allowed to modify labels: node-restriction.kubernetes.io/x"
        )),
        "{}",
        stderr(&role)
    );
    let role = c.run_as_node(&["label", "node", &node, "node-role.kubernetes.io/control-plane="]);
    assert!(
        stderr(&role).contains("is not allowed to modify labels: node-role.kubernetes.io/control-plane"),
        "{}",
        stderr(&role)
    );
    let free = c.run_as_node(&["label", "node", &node, "example.com/rack=r1"]);
    assert!(free.status.success(), "{}", stderr(&free));
    assert!(!c.ok(&["get", "node", &node, "--show-labels"]).contains("node-restriction"));
    // No pods of its own making (it runs no static pods).
    let made = c.run_as_node(&["run", "sneaky", "--image", BUSYBOX]);
    assert!(
        stderr(&made).contains(&format!(
            "pod does not have \"kubernetes.io/config.mirror\" annotation, node \"{node}\" can only create mirror pods"
        )),
        "{}",
        stderr(&made)
    );

    // The worker's loop kept working under all this: its Lease is renewed,
    // the Node Ready, the pod untouched, and nothing it asked was refused.
    let renewed = c.ok(&["-n", "kube-node-lease", "get", "lease", &node, "-o", "jsonpath={.spec.renewTime}"]);
    c.wait_for(&["-n", "kube-node-lease", "get", "lease", &node, "-o", "jsonpath={.spec.renewTime}"], READY, |s| {
        s != renewed
    });
    c.wait_for(&["get", "node", &node], READY, |s| s.contains(" Ready "));
    assert_eq!(c.pod_field("web", ".status.containerStatuses[0].restartCount"), "0");
    // Deleted: the kubelet stops it and removes the object (its own delete).
    c.ok(&["delete", "pod", "web", "--wait=false"]);
    c.wait_for(&["get", "pods", "-o", "name"], READY, |s| !s.contains("pod/web"));
    let log = c.server_log();
    assert!(!log.contains("is forbidden"), "the kubelet was refused something: {log}");
}

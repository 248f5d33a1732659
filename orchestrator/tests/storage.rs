//! StatefulSets and storage driven by a real kubectl, with a hollow node
//! standing in for the kubelet: ordered start (a pod is created only once
//! its predecessor is Ready), scale-down from the highest ordinal,
//! partitioned rolling updates, `rollout status|history|undo sts`,
//! Parallel management; claims defaulting to the local-path class and
//! bound when their first pod is scheduled, a claim for a missing class
//! Pending with an event, and the immutable fields refused.

mod common;

use std::time::Duration;

use common::{HollowNode, Server};

const T: Duration = Duration::from_secs(60);

const DB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{port: 80}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 3
  selector:
    matchLabels: {app: db}
  template:
    metadata:
      labels: {app: db}
    spec:
      containers:
      - name: c
        image: busybox:1.36
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources:
        requests: {storage: 1Gi}
"#;

fn pods(s: &Server, selector: &str) -> Vec<String> {
    let out = s.ok(&["get", "pods", "-l", selector, "-o", "jsonpath={.items[*].metadata.name}"]);
    out.split_whitespace().map(str::to_string).collect()
}

fn images(s: &Server) -> String {
    let jp = r#"jsonpath={range .items[*]}{.metadata.name}={.spec.containers[0].image} {end}"#;
    s.ok(&["get", "pods", "-l", "app=db", "-o", jp]).trim().to_string()
}

#[test]
fn statefulset_order_scale_partition_history_and_undo() {
    let Some(s) = Server::start() else { return };
    s.apply(DB, &[]);
    // No node yet: db-0 cannot run, and db-1 is not created before it is Ready.
    s.wait_for(&["get", "pod", "db-0", "-o", "name"], T, |o| o.contains("db-0"));
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(pods(&s, "app=db"), ["db-0"]);
    let claim = s.ok(&["get", "pvc", "data-db-0", "--no-headers"]);
    assert!(claim.contains("Pending") && claim.contains("local-path"), "{claim}");

    let _node = HollowNode::start(&s, "hollow-1", 40);
    s.ok(&["annotate", "node", "hollow-1", "storage.plinth.dev/local-path-root=/var/lib/plinth-test/storage"]);
    let out = s.ok(&["rollout", "status", "sts/db", "--timeout=60s"]);
    assert!(out.contains("partitioned roll out complete: 3 new pods have been updated"), "{out}");
    let get = s.ok(&["get", "sts", "db"]);
    assert!(get.contains("READY") && get.contains("3/3"), "{get}");
    // Each pod was created after its predecessor became Ready.
    let created = |p: &str| s.ok(&["get", "pod", p, "-o", "jsonpath={.metadata.creationTimestamp}"]);
    let ready = |p: &str| {
        s.ok(&["get", "pod", p, "-o", r#"jsonpath={.status.conditions[?(@.type=="Ready")].lastTransitionTime}"#])
    };
    assert!(created("db-1") >= ready("db-0") && created("db-2") >= ready("db-1"));
    let labels = s.ok(&["get", "pod", "db-1", "-o", "jsonpath={.metadata.labels}"]);
    for l in [
        "statefulset.kubernetes.io/pod-name\":\"db-1",
        "apps.kubernetes.io/pod-index\":\"1",
        "controller-revision-hash",
    ] {
        assert!(labels.contains(l), "{l} in {labels}");
    }
    let host = s.ok(&["get", "pod", "db-1", "-o", "jsonpath={.spec.hostname}.{.spec.subdomain}"]);
    assert_eq!(host, "db-1.db");
    let pvcs = s.wait_for(&["get", "pvc", "--no-headers"], T, |o| o.matches("Bound").count() == 3);
    assert!(pvcs.contains("data-db-2") && pvcs.contains("RWO") && pvcs.contains("1Gi"), "{pvcs}");
    let pv = s.ok(&["get", "pv", "--no-headers"]);
    assert!(pv.contains("Delete") && pv.contains("default/data-db-0") && pv.contains("local-path"), "{pv}");
    let affinity = s.ok(&[
        "get",
        "pv",
        "-o",
        "jsonpath={.items[0].spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0]}",
    ]);
    assert_eq!(affinity, "hollow-1");

    // Partitioned rolling update: only ordinals >= 2 take the new template.
    s.ok(&["patch", "sts", "db", "-p", r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":2}}}}"#]);
    s.ok(&["set", "image", "sts/db", "c=busybox:1.37"]);
    s.wait_for(&["get", "pods", "-l", "app=db", "-o", "jsonpath={.items[*].spec.containers[0].image}"], T, |o| {
        o == "busybox:1.36 busybox:1.36 busybox:1.37"
    });
    let out = s.ok(&["rollout", "status", "sts/db", "--timeout=60s"]);
    assert!(out.contains("partitioned roll out complete: 1 new pods have been updated"), "{out}");
    s.ok(&["patch", "sts", "db", "-p", r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":0}}}}"#]);
    s.wait_for(&["get", "sts", "db", "-o", "jsonpath={.status.updatedReplicas}/{.status.readyReplicas}"], T, |o| {
        o == "3/3"
    });
    assert_eq!(images(&s), "db-0=busybox:1.37 db-1=busybox:1.37 db-2=busybox:1.37");
    let revs = s.ok(&["get", "controllerrevisions", "--no-headers"]);
    assert_eq!(revs.lines().count(), 2, "{revs}");
    assert!(revs.contains("statefulset.apps/db"), "{revs}");
    let history = s.ok(&["rollout", "history", "sts/db"]);
    assert!(history.contains("REVISION") && history.contains("1 ") && history.contains("2 "), "{history}");

    // Undo: back to the first template, which becomes revision 3.
    let out = s.ok(&["rollout", "undo", "sts/db"]);
    assert!(out.contains("rolled back"), "{out}");
    s.wait_for(&["get", "pods", "-l", "app=db", "-o", "jsonpath={.items[*].spec.containers[0].image}"], T, |o| {
        o == "busybox:1.36 busybox:1.36 busybox:1.36"
    });
    let history = s.ok(&["rollout", "history", "sts/db"]);
    assert!(history.contains("2 ") && history.contains("3 ") && !history.contains("\n1 "), "{history}");
    s.wait_for(&["get", "sts", "db", "-o", "jsonpath={.status.currentRevision}={.status.updateRevision}"], T, |o| {
        o.split('=').collect::<Vec<_>>().windows(2).all(|w| w[0] == w[1])
    });

    // Scale down (the order is proved in the controller's tests); the claims stay.
    s.ok(&["scale", "sts", "db", "--replicas=1"]);
    s.wait_for(&["get", "pods", "-l", "app=db", "-o", "name"], T, |o| o.trim() == "pod/db-0");
    assert_eq!(s.ok(&["get", "pvc", "-o", "name"]).lines().count(), 3, "claims are retained");

    // Parallel: every pod is created at once, though none can run (no node fits).
    let parallel = DB
        .replace("name: db}", "name: par}")
        .replace("{app: db}", "{app: par}")
        .replace("serviceName: db", "serviceName: par")
        .replace("  replicas: 3\n", "  replicas: 3\n  podManagementPolicy: Parallel\n")
        .replace("    spec:\n      containers:", "    spec:\n      nodeSelector: {disk: none}\n      containers:");
    s.apply(&parallel, &[]);
    let out = s.wait_for(&["get", "pods", "-l", "app=par", "--no-headers"], T, |o| o.lines().count() == 3);
    assert_eq!(out.matches("Pending").count(), 3, "{out}");

    // Immutable fields: upstream's message.
    let err = s.fails(&["patch", "sts", "db", "-p", r#"{"spec":{"serviceName":"other"}}"#]);
    assert!(err.contains("spec: Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden"), "{err}");
}

#[test]
fn claims_default_wait_for_missing_classes_and_keep_their_spec() {
    let Some(s) = Server::start() else { return };
    let sc = s.ok(&["get", "storageclass"]);
    assert!(
        sc.contains("local-path (default)")
            && sc.contains("rancher.io/local-path")
            && sc.contains("WaitForFirstConsumer"),
        "{sc}"
    );
    s.apply(
        r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: plain}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: gold}
spec:
  storageClassName: gold
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
"#,
        &[],
    );
    assert_eq!(s.ok(&["get", "pvc", "plain", "-o", "jsonpath={.spec.storageClassName}"]), "local-path");
    let events = s.wait_for(&["describe", "pvc", "gold"], T, |o| o.contains("ProvisioningFailed"));
    assert!(events.contains("storageclass.storage.k8s.io \"gold\" not found"), "{events}");
    let plain = s.wait_for(&["describe", "pvc", "plain"], T, |o| o.contains("WaitForFirstConsumer"));
    assert!(plain.contains("waiting for first consumer to be created before binding"), "{plain}");
    assert!(s.ok(&["get", "pvc", "gold", "--no-headers"]).contains("Pending"));

    // A pod using a claim that does not exist waits, with an event.
    s.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: orphan}
spec:
  containers: [{name: c, image: busybox}]
  volumes: [{name: v, persistentVolumeClaim: {claimName: nowhere}}]
"#,
        &[],
    );
    let _node = HollowNode::start(&s, "hollow-1", 40);
    let d = s.wait_for(&["describe", "pod", "orphan"], T, |o| o.contains("FailedScheduling"));
    assert!(d.contains("persistentvolumeclaim \"nowhere\" not found"), "{d}");

    // The spec is immutable but for a bound claim's requests.
    let err = s.fails(&["patch", "pvc", "plain", "-p", r#"{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}"#]);
    assert!(err.contains("spec: Forbidden: spec is immutable after creation except resources.requests"), "{err}");
    let err = s.fails(&["patch", "sc", "local-path", "-p", r#"{"provisioner":"other"}"#]);
    assert!(err.contains("provisioner: Forbidden: updates to provisioner are forbidden."), "{err}");

    // Bad input: a 422 naming the field, and nothing stored.
    let f = s.dir.path().join("bad-claim.yaml");
    std::fs::write(&f, "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: bad}\nspec: {resources: {requests: {storage: 1Gi}}}\n")
        .unwrap();
    let err = s.fails(&["create", "-f", f.to_str().unwrap()]);
    assert!(err.contains("spec.accessModes: Required value: at least 1 access mode is required"), "{err}");
    assert!(s.fails(&["get", "pvc", "bad"]).contains("NotFound"));
}

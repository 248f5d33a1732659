//! Persistent volumes on a real node (containerd, runc, the kubelet): a
//! StatefulSet's claim keeps what its pod wrote across the pod's deletion
//! and re-creation under the same name; deleting a claim of a Delete class
//! removes its directory and volume, of a Retain class leaves both, the
//! volume Released. Needs what tests/kubelet.rs needs; skipped without it
//! unless CI=true.

mod common;
mod kubelet_support;

use std::time::Duration;

use kubelet_support::{BUSYBOX, Cluster};

const READY: Duration = Duration::from_secs(60);

fn ready(c: &Cluster, pod: &str) {
    c.wait_for(&["get", "pod", pod, "-o", "jsonpath={.status.containerStatuses[0].ready}"], READY, |s| s == "true");
}

#[test]
fn claims_keep_data_across_pods_and_are_reclaimed_by_policy() {
    let Some(c) = Cluster::start() else { return };
    c.apply(&format!(
        r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: vault}}
spec:
  serviceName: vault
  replicas: 1
  selector: {{matchLabels: {{app: vault}}}}
  template:
    metadata: {{labels: {{app: vault}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: c
        image: {BUSYBOX}
        imagePullPolicy: Never
        command: [sleep, "3600"]
        volumeMounts: [{{name: data, mountPath: /data}}]
  volumeClaimTemplates:
  - metadata: {{name: data}}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {{requests: {{storage: 64Mi}}}}
"#
    ));
    ready(&c, "vault-0");
    c.ok(&["exec", "vault-0", "--", "sh", "-c", "echo kept > /data/note"]);
    let pv = c.ok(&["get", "pvc", "data-vault-0", "-o", "jsonpath={.spec.volumeName}"]);
    let dir = c.ok(&["get", "pv", &pv, "-o", "jsonpath={.spec.hostPath.path}"]);
    assert!(dir.starts_with(c.kubelet_dir().join("storage").to_str().unwrap()), "{dir}");
    assert_eq!(std::fs::read_to_string(std::path::Path::new(&dir).join("note")).unwrap(), "kept\n");

    // The pod goes; the StatefulSet brings it back under its name, with its claim.
    let uid = c.pod_field("vault-0", ".metadata.uid");
    c.ok(&["delete", "pod", "vault-0", "--wait=true"]);
    c.wait_for(&["get", "pod", "vault-0", "-o", "jsonpath={.metadata.uid}"], READY, |u| !u.is_empty() && u != uid);
    ready(&c, "vault-0");
    assert_eq!(c.ok(&["exec", "vault-0", "--", "cat", "/data/note"]), "kept\n");

    // Delete (the local-path class): the claim goes, then the directory and the volume.
    c.ok(&["delete", "sts", "vault", "--wait=true"]);
    c.wait_for(&["get", "pods", "-o", "name"], READY, |o| o.trim().is_empty());
    c.ok(&["delete", "pvc", "data-vault-0", "--wait=true"]);
    c.wait_for(&["get", "pv", "-o", "name"], READY, |o| o.trim().is_empty());
    assert!(!std::path::Path::new(&dir).exists(), "{dir} removed");

    // Retain: the volume stays Released, its data on disk.
    c.apply(&format!(
        r#"
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {{name: keep}}
provisioner: rancher.io/local-path
reclaimPolicy: Retain
volumeBindingMode: WaitForFirstConsumer
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: kept}}
spec:
  storageClassName: keep
  accessModes: [ReadWriteOnce]
  resources: {{requests: {{storage: 64Mi}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: writer}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: [sh, -c, "echo retained > /data/note && sleep 3600"]
    volumeMounts: [{{name: d, mountPath: /data}}]
  volumes: [{{name: d, persistentVolumeClaim: {{claimName: kept}}}}]
"#
    ));
    ready(&c, "writer");
    let pv = c.ok(&["get", "pvc", "kept", "-o", "jsonpath={.spec.volumeName}"]);
    let dir = c.ok(&["get", "pv", &pv, "-o", "jsonpath={.spec.hostPath.path}"]);
    c.ok(&["delete", "pod", "writer", "--wait=true"]);
    c.ok(&["delete", "pvc", "kept", "--wait=true"]);
    c.wait_for(&["get", "pv", &pv, "-o", "jsonpath={.status.phase}"], READY, |p| p == "Released");
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(c.ok(&["get", "pv", &pv, "-o", "jsonpath={.status.phase}"]), "Released");
    assert_eq!(std::fs::read_to_string(std::path::Path::new(&dir).join("note")).unwrap(), "retained\n");
}

/// A pod bound to the node whose claim does not exist waits with
/// FailedMount, and starts once the claim is there and bound.
#[test]
fn a_pod_waits_for_its_claim() {
    let Some(c) = Cluster::start() else { return };
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: patient}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: [sleep, "3600"]
    volumeMounts: [{{name: d, mountPath: /data, readOnly: true}}]
  volumes: [{{name: d, persistentVolumeClaim: {{claimName: later}}}}]
"#,
        node = c.node
    ));
    c.wait_for(&["get", "events", "--field-selector", "involvedObject.name=patient,reason=FailedMount"], READY, |o| {
        o.contains("persistentvolumeclaim \"later\" not found")
    });
    assert_eq!(c.pod_field("patient", ".status.phase"), "Pending");
    let dir = c.data.path().join("static");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hello"), "static\n").unwrap();
    c.apply(&format!(
        r#"
apiVersion: v1
kind: PersistentVolume
metadata: {{name: static}}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [ReadWriteOnce]
  storageClassName: ""
  hostPath: {{path: {}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: later}}
spec:
  storageClassName: ""
  volumeName: static
  accessModes: [ReadWriteOnce]
  resources: {{requests: {{storage: 1Gi}}}}
"#,
        dir.display()
    ));
    ready(&c, "patient");
    assert_eq!(c.ok(&["exec", "patient", "--", "cat", "/data/hello"]), "static\n");
    let out = c.run(&["exec", "patient", "--", "touch", "/data/x"]);
    assert!(!out.status.success(), "the mount is read-only");
    c.ok(&["delete", "pod", "patient", "--wait=true"]);
}

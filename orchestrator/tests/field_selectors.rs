//! Field selectors on the fields upstream computes rather than reads
//! (a Job's `status.successful`, absent counts and booleans as Go's zero
//! values, an Event's `source`, a pod's `status.podIPs`), driven by
//! kubectl, and upstream's refusal of a field a kind does not have.

mod common;

use common::Server;

const OBJECTS: &str = r#"apiVersion: batch/v1
kind: Job
metadata: {name: j}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: busybox}]
---
apiVersion: v1
kind: Pod
metadata: {name: plain}
spec:
  containers: [{name: c, image: busybox}]
---
apiVersion: v1
kind: Pod
metadata: {name: host}
spec:
  hostNetwork: true
  containers: [{name: c, image: busybox}]
---
apiVersion: v1
kind: Event
metadata: {name: from-kubelet}
involvedObject: {kind: Pod, name: plain, namespace: default}
reason: Pulled
message: pulled
source: {component: kubelet}
---
apiVersion: v1
kind: Event
metadata: {name: from-controller}
involvedObject: {kind: Pod, name: plain, namespace: default}
reason: Created
message: created
reportingComponent: my-controller
reportingInstance: my-controller-1
"#;

fn names(s: &Server, kind: &str, selector: &str) -> String {
    s.ok(&["get", kind, "--field-selector", selector, "-o", "name"]).trim().to_string()
}

#[test]
fn computed_fields_select_as_upstream() {
    let Some(s) = Server::start() else { return };
    s.apply(OBJECTS, &[]);
    assert_eq!(names(&s, "jobs", "status.successful=0"), "job.batch/j");
    assert_eq!(names(&s, "jobs", "status.successful!=0"), "");
    // The Job's pod is not on the host network either.
    let off_host = names(&s, "pods", "spec.hostNetwork=false");
    assert!(off_host.lines().any(|l| l == "pod/plain") && !off_host.contains("pod/host"), "{off_host}");
    assert_eq!(names(&s, "pods", "spec.hostNetwork=true"), "pod/host");
    assert_eq!(names(&s, "pods", "status.podIPs=10.1.2.3"), "");
    assert_eq!(names(&s, "events", "source=kubelet"), "event/from-kubelet");
    assert_eq!(names(&s, "events", "source=my-controller"), "event/from-controller");
    assert_eq!(names(&s, "events", "reportingComponent=my-controller"), "event/from-controller");

    let err = s.fails(&["get", "pods", "--field-selector", "spec.bogus=1"]);
    assert!(err.contains("field label not supported: spec.bogus"), "{err}");
    let err = s.fails(&["get", "ingress", "--field-selector", "foo.bar=baz"]);
    assert!(
        err.contains(r#""foo.bar" is not a known field selector: only "metadata.name", "metadata.namespace""#),
        "{err}"
    );
    assert!(err.contains("BadRequest"), "{err}");
}

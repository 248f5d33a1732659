//! Controllers and the scheduler driven by a real kubectl, with a hollow
//! node standing in for the kubelet: rollout status, scale, image update,
//! rollout undo, endpoints, garbage collection, namespace cascade, a
//! node whose lease lapses, and CronJobs (the firing itself is proved in
//! the controller's tests, whose clock is a parameter).

mod common;

use std::time::Duration;

use common::{APP, HollowNode, Server};

const T: Duration = Duration::from_secs(60);

fn running_pods(out: &str) -> usize {
    out.lines().filter(|l| l.contains("Running")).count()
}

#[test]
fn deployment_rollout_scale_undo_and_gc() {
    let Some(s) = Server::start() else { return };
    let _node = HollowNode::start(&s, "hollow-1", 40);
    s.apply(APP, &[]);
    let out = s.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let pods = s.wait_for(&["get", "pods", "-l", "app=web", "--no-headers"], T, |o| running_pods(o) == 2);
    assert!(pods.contains("1/1"), "{pods}");
    let wide = s.ok(&["get", "pods", "-l", "app=web", "-o", "wide"]);
    assert!(wide.contains("hollow-1") && wide.contains("10.244.0."), "scheduled and reported: {wide}");
    // Endpoints and EndpointSlices follow the ready pods.
    s.wait_for(&["get", "endpoints", "web", "-o", "jsonpath={.subsets[0].addresses[*].ip}"], T, |o| {
        o.split(' ').count() == 2
    });
    let slices = s.ok(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=web",
        "-o",
        "jsonpath={.items[0].endpoints[*].conditions.ready}",
    ]);
    assert_eq!(slices, "true true");
    let describe = s.ok(&["describe", "deployment", "web"]);
    assert!(describe.contains("ScalingReplicaSet") && describe.contains("NewReplicaSetAvailable"), "{describe}");

    s.ok(&["scale", "deployment", "web", "--replicas=3"]);
    s.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    s.wait_for(&["get", "pods", "-l", "app=web", "--no-headers"], T, |o| running_pods(o) == 3);

    // A new template rolls out through a second ReplicaSet.
    s.ok(&["set", "image", "deployment/web", "nginx=nginx:1.26"]);
    let out = s.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let rs = s.ok(&["get", "rs", "-l", "app=web", "--no-headers"]);
    assert_eq!(rs.lines().count(), 2, "{rs}");
    let history = s.ok(&["rollout", "history", "deployment/web"]);
    assert!(history.contains("1 ") && history.contains("2 "), "{history}");
    s.wait_for(&["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].spec.containers[0].image}"], T, |o| {
        o.split(' ').filter(|i| *i == "nginx:1.26").count() == 3 && !o.contains("1.25")
    });

    // Undo: back to the first template, as revision 3.
    s.ok(&["rollout", "undo", "deployment/web"]);
    s.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let image = s.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.template.spec.containers[0].image}"]);
    assert_eq!(image, "nginx:1.25");
    let rev =
        s.ok(&["get", "deploy", "web", "-o", "jsonpath={.metadata.annotations.deployment\\.kubernetes\\.io/revision}"]);
    assert_eq!(rev, "3");

    // Deleting the deployment takes its ReplicaSets and pods with it.
    s.ok(&["delete", "deployment", "web"]);
    s.wait_for(&["get", "rs,pods", "-l", "app=web", "--no-headers", "--ignore-not-found"], T, |o| o.trim().is_empty());
}

#[test]
fn namespace_deletion_cascades() {
    let Some(s) = Server::start() else { return };
    let _node = HollowNode::start(&s, "hollow-1", 40);
    s.ok(&["create", "namespace", "team", "--dry-run=client", "-o", "yaml"]);
    s.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n", &[]);
    s.apply(APP, &["-n", "team"]);
    s.ok(&["rollout", "status", "deployment/web", "-n", "team", "--timeout=60s"]);
    let out = s.ok(&["delete", "namespace", "team", "--timeout=60s"]);
    assert!(out.contains("deleted"), "{out}");
    let err = s.fails(&["get", "namespace", "team"]);
    assert!(err.contains("not found"), "{err}");
    assert!(s.ok(&["get", "pods", "-A", "--no-headers"]).trim().is_empty());
}

#[test]
fn lapsed_lease_makes_node_unknown_and_pods_wait() {
    let Some(s) = Server::start() else { return };
    let mut node = HollowNode::start(&s, "hollow-1", 2);
    s.wait_for(&["get", "nodes", "--no-headers"], T, |o| o.contains(" Ready "));
    node.stop();
    s.wait_for(
        &["get", "node", "hollow-1", "-o", "jsonpath={.status.conditions[0].status} {.spec.taints[*].key}"],
        T,
        |o| o.starts_with("Unknown") && o.contains("node.kubernetes.io/unreachable"),
    );
    assert!(s.ok(&["get", "nodes", "--no-headers"]).contains("NotReady"));
    s.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: waiting}\nspec: {containers: [{name: c, image: busybox}]}\n",
        &[],
    );
    let events = s.wait_for(
        &["get", "events", "--field-selector", "involvedObject.name=waiting,reason=FailedScheduling"],
        T,
        |o| o.contains("FailedScheduling"),
    );
    assert!(events.contains("0/1 nodes are available"), "{events}");
    assert!(s.ok(&["get", "pod", "waiting", "--no-headers"]).contains("Pending"));
}

#[test]
fn jobs_complete_and_daemonsets_cover_nodes() {
    let Some(s) = Server::start() else { return };
    let _node = HollowNode::start(&s, "hollow-1", 40);
    s.apply(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {name: once}\nspec:\n  completions: 2\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{name: c, image: busybox, command: [\"true\"]}]\n",
        &[],
    );
    let out = s.ok(&["wait", "--for=condition=complete", "job/once", "--timeout=60s"]);
    assert!(out.contains("condition met"), "{out}");
    let job = s.ok(&["get", "job", "once", "--no-headers"]);
    assert!(job.contains("Complete") && job.contains("2/2"), "{job}");

    s.apply(
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: agent}\nspec:\n  selector: {matchLabels: {app: agent}}\n  template:\n    metadata: {labels: {app: agent}}\n    spec:\n      containers: [{name: c, image: busybox:1}]\n",
        &[],
    );
    let out = s.ok(&["rollout", "status", "daemonset/agent", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    s.ok(&["set", "image", "daemonset/agent", "c=busybox:2"]);
    s.ok(&["rollout", "status", "daemonset/agent", "--timeout=60s"]);
    s.wait_for(&["get", "pods", "-l", "app=agent", "-o", "jsonpath={.items[*].spec.containers[0].image}"], T, |o| {
        o == "busybox:2"
    });
    let ds = s.ok(&["get", "ds", "agent", "--no-headers"]);
    assert!(ds.starts_with("agent ") && ds.split_whitespace().nth(1) == Some("1"), "{ds}");
}

#[test]
fn cronjobs_validate_list_and_start_jobs_by_hand() {
    let Some(s) = Server::start() else { return };
    let cj = |name: &str, schedule: &str, tz: &str| {
        format!(
            "apiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: {name}}}\nspec:\n  schedule: \"{schedule}\"\n{tz}  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: Never\n          containers: [{{name: c, image: busybox, command: [\"true\"]}}]\n"
        )
    };
    s.apply(&cj("nightly", "0 3 * * *", "  timeZone: Europe/Paris\n"), &[]);
    let row = s.ok(&["get", "cj", "nightly", "--no-headers"]);
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[..6], &["nightly", "0", "3", "*", "*", "*"], "{row}");
    assert_eq!(&cols[6..10], &["Europe/Paris", "False", "0", "<none>"], "{row}");
    let defaults = s.ok(&[
        "get",
        "cronjob",
        "nightly",
        "-o",
        "jsonpath={.spec.concurrencyPolicy} {.spec.successfulJobsHistoryLimit} {.spec.failedJobsHistoryLimit}",
    ]);
    assert_eq!(defaults, "Allow 3 1");

    // kubectl ≥1.32 posts the Job as protobuf.
    let out = s.ok(&["create", "job", "by-hand", "--from=cronjob/nightly"]);
    assert!(out.contains("job.batch/by-hand created"), "{out}");
    let annotation = s.ok(&["get", "job", "by-hand", "-o", "jsonpath={.metadata.annotations}"]);
    assert!(annotation.contains("cronjob.kubernetes.io/instantiate"), "{annotation}");
    let owner = s.ok(&[
        "get",
        "job",
        "by-hand",
        "-o",
        "jsonpath={.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}",
    ]);
    assert_eq!(owner, "CronJob/nightly");

    for (name, schedule, tz, want) in [
        ("few", "* * *", "", "spec.schedule: Invalid value: \"* * *\": expected exactly 5 fields, found 3: [* * *]"),
        ("tz-in", "CRON_TZ=UTC 0 * * * *", "", "cannot use TZ or CRON_TZ in schedule, use timeZone field instead"),
        (
            "mars",
            "0 * * * *",
            "  timeZone: Mars/Olympus\n",
            "spec.timeZone: Invalid value: \"Mars/Olympus\": unknown time zone Mars/Olympus",
        ),
    ] {
        let f = s.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&f, cj(name, schedule, tz)).unwrap();
        let err = s.fails(&["apply", "-f", f.to_str().unwrap()]);
        assert!(err.contains(want), "{name}: {err}");
    }
    assert!(s.fails(&["get", "cj", "mars"]).contains("NotFound"));
}

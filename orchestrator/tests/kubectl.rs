//! The API server driven by a real kubectl (see common::kubectl for where
//! it comes from): apply, get, describe, watch, scale, patch, server-side
//! apply, authorization and upstream-shaped errors.

mod common;

use std::io::{BufRead as _, BufReader};
use std::process::Stdio;
use std::time::Duration;

use common::{APP, Server};

#[test]
fn apply_get_describe_scale_delete() {
    let Some(s) = Server::start() else { return };
    let out = s.apply(APP, &[]);
    for line in ["configmap/web-config created", "deployment.apps/web created", "service/web created"] {
        assert!(out.contains(line), "{out}");
    }
    // A second apply changes nothing.
    let again = s.apply(APP, &[]);
    assert_eq!(again.matches("unchanged").count(), 3, "{again}");

    let get = s.ok(&["get", "deploy,svc,cm"]);
    assert!(get.contains("deployment.apps/web"), "{get}");
    assert!(get.contains("READY") && get.contains("UP-TO-DATE"), "upstream's columns: {get}");
    assert!(get.contains("service/web") && get.contains("10.96."), "{get}");
    assert!(get.contains("configmap/web-config"), "{get}");

    let yaml = s.ok(&["get", "deployment", "web", "-o", "yaml"]);
    for want in [
        "kind: Deployment",
        "uid:",
        "resourceVersion:",
        "generation: 1",
        "maxSurge: 25%",
        "imagePullPolicy: IfNotPresent",
    ] {
        assert!(yaml.contains(want), "missing {want:?} in\n{yaml}");
    }
    let describe = s.ok(&["describe", "deployment", "web"]);
    assert!(describe.contains("Replicas:") && describe.contains("nginx:1.25"), "{describe}");
    let describe = s.ok(&["describe", "service", "web"]);
    assert!(describe.contains("10.96."), "{describe}");

    // Change the manifest: configured; scale through the scale subresource.
    let out = s.apply(&APP.replace("replicas: 2", "replicas: 3"), &[]);
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    assert!(s.ok(&["scale", "deployment", "web", "--replicas=5"]).contains("scaled"));
    assert_eq!(s.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas} {.metadata.generation}"]), "5 3");

    // Label and field selectors.
    let by_label = s.ok(&["get", "deploy", "-l", "app=web", "-o", "name"]);
    assert_eq!(by_label.trim(), "deployment.apps/web");
    assert!(s.ok(&["get", "deploy", "-l", "app!=web", "-o", "name"]).trim().is_empty());
    let by_field =
        s.ok(&["get", "cm", "--field-selector", "metadata.name!=web-config,metadata.namespace=default", "-o", "name"]);
    assert!(!by_field.contains("web-config"), "{by_field}");

    let out = s.ok(&["delete", "-f", s.dir.path().join("manifest-0.yaml").to_str().unwrap()]);
    assert!(out.contains("deleted"), "{out}");
    let err = s.fails(&["get", "deployment", "web"]);
    assert!(err.contains("NotFound") || err.contains("not found"), "{err}");
}

#[test]
fn watch_receives_events() {
    let Some(s) = Server::start() else { return };
    let mut w = s
        .cmd(&s.kubeconfig(), &["get", "configmaps", "-w", "--output-watch-events", "--request-timeout=20s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(w.stdout.take().unwrap()).lines();
    // The watch is established once kubectl printed nothing for an empty
    // list; create until the event shows (the create may race the watch).
    std::thread::sleep(Duration::from_millis(500));
    s.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: watched}\ndata: {a: b}\n", &[]);
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line.contains("watched") {
            break;
        }
    }
    assert!(seen.iter().any(|l| l.contains("ADDED") && l.contains("watched")), "{seen:?}");
    s.ok(&["label", "configmap", "watched", "x=y"]);
    let next = lines.next().unwrap().unwrap();
    assert!(next.contains("MODIFIED") && next.contains("watched"), "{next}");
    let _ = w.kill();
    let _ = w.wait();

    // sendInitialEvents (kubectl 1.35's rollout status / wait): the current
    // state, then a bookmark that ends the initial events.
    let raw = s.ok(&["get", "--raw",
        "/api/v1/namespaces/default/configmaps?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=1"]);
    let events: Vec<serde_json::Value> = raw.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events[0]["type"], "ADDED");
    let end = events.iter().find(|e| e["type"] == "BOOKMARK").expect("a bookmark");
    assert_eq!(end["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"], "true");
}

#[test]
fn authorization_and_errors_are_upstream_shaped() {
    let Some(s) = Server::start() else { return };
    let ro = s.read_only_kubeconfig();
    let out = s.cmd(&ro, &["get", "namespaces", "-o", "name"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("namespace/default"));
    let out = s.cmd(&ro, &["create", "namespace", "x", "-o", "name", "--dry-run=server"]).output().unwrap();
    assert!(!out.status.success());
    let out = s.cmd(&ro, &["delete", "configmap", "kube-root", "--ignore-not-found"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Forbidden") && err.contains("User \"viewer\" cannot delete resource \"configmaps\""),
        "{err}"
    );

    // kubectl auth can-i asks the authorizer through SelfSubjectAccessReview.
    let can = |kc: &std::path::Path, verb: &str| {
        String::from_utf8(s.cmd(kc, &["auth", "can-i", verb, "pods"]).output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!((can(&ro, "list").as_str(), can(&ro, "delete").as_str()), ("yes", "no"));
    assert_eq!(can(&s.kubeconfig(), "delete"), "yes");

    let bad_name = s.dir.path().join("bad.yaml");
    std::fs::write(&bad_name, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: Bad_Name}\n").unwrap();
    let err = s.fails(&["apply", "-f", bad_name.to_str().unwrap()]);
    assert!(err.contains("is invalid") && err.contains("metadata.name: Invalid value: \"Bad_Name\""), "{err}");

    let unknown = s.dir.path().join("unknown.yaml");
    std::fs::write(&unknown, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\nbogus: 1\n").unwrap();
    let err = s.fails(&["apply", "-f", unknown.to_str().unwrap()]);
    assert!(err.contains("unknown field \"bogus\""), "{err}");

    let missing = s.dir.path().join("missing.yaml");
    std::fs::write(&missing, "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {selector: {matchLabels: {a: b}}, template: {metadata: {labels: {a: b}}, spec: {containers: [{name: c}]}}}\n").unwrap();
    let err = s.fails(&["apply", "-f", missing.to_str().unwrap()]);
    assert!(err.contains("spec.template.spec.containers[0].image: Required value"), "{err}");

    let err = s.fails(&["get", "pod", "nope"]);
    assert!(err.contains("pods \"nope\" not found"), "{err}");

    // A stale resourceVersion on update: 409.
    s.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\n", &[]);
    let yaml = s.ok(&["get", "cm", "c", "-o", "yaml"]);
    s.ok(&["label", "cm", "c", "x=1"]);
    let stale = s.dir.path().join("stale.yaml");
    std::fs::write(&stale, yaml.replace("a: b", "a: changed")).unwrap();
    let err = s.fails(&["replace", "-f", stale.to_str().unwrap()]);
    assert!(err.contains("the object has been modified"), "{err}");
}

#[test]
fn server_side_apply_and_patches() {
    let Some(s) = Server::start() else { return };
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ssa}\ndata: {a: '1', b: '2'}\n";
    let out = s.apply(cm, &["--server-side"]);
    assert!(out.contains("configmap/ssa serverside-applied"), "{out}");
    let mf =
        s.ok(&["get", "cm", "ssa", "--show-managed-fields", "-o", "jsonpath={.metadata.managedFields[0].manager}"]);
    assert_eq!(mf, "kubectl");
    // Another manager changing a's value conflicts unless forced.
    let other = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ssa}\ndata: {a: 'x'}\n";
    let f = s.dir.path().join("other.yaml");
    std::fs::write(&f, other).unwrap();
    let err = s.fails(&["apply", "--server-side", "--field-manager=other", "-f", f.to_str().unwrap()]);
    assert!(err.contains("conflict") && err.contains(".data.a"), "{err}");
    s.ok(&["apply", "--server-side", "--field-manager=other", "--force-conflicts", "-f", f.to_str().unwrap()]);
    assert_eq!(s.ok(&["get", "cm", "ssa", "-o", "jsonpath={.data.a}{.data.b}"]), "x2");

    s.ok(&["patch", "cm", "ssa", "--type=merge", "-p", r#"{"data":{"c":"3"}}"#]);
    s.ok(&["patch", "cm", "ssa", "--type=json", "-p", r#"[{"op":"remove","path":"/data/b"}]"#]);
    assert_eq!(s.ok(&["get", "cm", "ssa", "-o", "jsonpath={.data}"]), r#"{"a":"x","c":"3"}"#);

    s.apply(APP, &[]);
    s.ok(&[
        "patch",
        "deploy",
        "web",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"nginx","image":"nginx:1.26"}]}}}}"#,
    ]);
    let c = s.ok(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].env[0].name}",
    ]);
    assert_eq!(c, "nginx:1.26 GREETING", "strategic merge keeps the env of the container merged by name");
    s.ok(&["set", "env", "deploy/web", "EXTRA=1"]);
    let env = s.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.template.spec.containers[0].env[*].name}"]);
    assert_eq!(env, "GREETING EXTRA");
}

/// kubectl ≥1.32 sends protobuf bodies for these `create` commands.
#[test]
fn imperative_create_commands() {
    let Some(s) = Server::start() else { return };
    s.ok(&["create", "namespace", "team"]);
    s.wait_for(
        &["get", "serviceaccount", "default", "-n", "team", "-o", "name"],
        std::time::Duration::from_secs(20),
        |o| o.trim() == "serviceaccount/default",
    );
    s.ok(&["create", "configmap", "c1", "--from-literal=a=b", "-n", "team"]);
    s.ok(&["create", "secret", "generic", "s1", "--from-literal=p=q", "-n", "team"]);
    s.ok(&["create", "deployment", "d1", "--image=nginx:1.25", "--port=80", "--replicas=2", "-n", "team"]);
    s.ok(&["create", "service", "clusterip", "d1", "--tcp=80:8080", "-n", "team"]);
    assert_eq!(s.ok(&["get", "cm", "c1", "-n", "team", "-o", "jsonpath={.data.a}"]), "b");
    assert_eq!(s.ok(&["get", "secret", "s1", "-n", "team", "-o", "jsonpath={.data.p}"]), "cQ==");
    let d = s.ok(&[
        "get",
        "deploy",
        "d1",
        "-n",
        "team",
        "-o",
        "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].ports[0].containerPort} {.spec.strategy.type}",
    ]);
    assert_eq!(d, "2 80 RollingUpdate");
    let svc = s.ok(&[
        "get",
        "svc",
        "d1",
        "-n",
        "team",
        "-o",
        "jsonpath={.spec.ports[0].port} {.spec.ports[0].targetPort} {.spec.selector.app}",
    ]);
    assert_eq!(svc, "80 8080 d1");

    // Kinds the hand-written tables lacked (kubectl ≥1.32: protobuf bodies).
    s.ok(&["create", "cronjob", "nightly", "--image=busybox", "--schedule=0 3 * * *", "-n", "team", "--", "true"]);
    s.ok(&["create", "job", "now", "--from=cronjob/nightly", "-n", "team"]);
    let job = s.ok(&[
        "get",
        "job",
        "now",
        "-n",
        "team",
        "-o",
        "jsonpath={.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name} {.spec.template.spec.containers[0].image} {.spec.template.spec.restartPolicy}",
    ]);
    assert_eq!(job, "CronJob/nightly busybox OnFailure");
    s.ok(&[
        "run",
        "p1",
        "--image=busybox",
        "--labels=run=p1",
        "--env=A=1",
        "--port=8080",
        "-n",
        "team",
        "--",
        "sleep",
        "1",
    ]);
    let pod = s.ok(&[
        "get",
        "pod",
        "p1",
        "-n",
        "team",
        "-o",
        "jsonpath={.spec.containers[0].image} {.spec.containers[0].env[0].value} {.spec.containers[0].ports[0].containerPort} {.spec.containers[0].args}",
    ]);
    assert_eq!(pod, r#"busybox 1 8080 ["sleep","1"]"#);
    s.ok(&["delete", "deployment", "d1", "-n", "team"]);
    let gone = s.run(&["get", "deployment", "d1", "-n", "team"]);
    assert!(!gone.status.success(), "the deployment is deleted");
}

#[test]
fn foreign_certificates_and_oversized_bodies_are_refused() {
    let Some(s) = Server::start() else { return };
    // A client certificate from another CA: the TLS handshake fails.
    let other = orchestrator_http::pki::generate_ca("other").unwrap();
    let client = orchestrator_http::pki::issue_client(&other, "mallory", orchestrator_http::pki::ADMIN_GROUP).unwrap();
    let ca = orchestrator_http::pki::CertKey {
        cert_pem: std::fs::read_to_string(s.dir.path().join("ca.crt")).unwrap(),
        key_pem: String::new(),
    };
    let path = s.dir.path().join("mallory.kubeconfig");
    std::fs::write(
        &path,
        orchestrator_http::pki::kubeconfig(&format!("https://{}", s.address), &ca, &client, "mallory"),
    )
    .unwrap();
    let out = s.cmd(&path, &["get", "namespaces"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && (err.contains("tls") || err.contains("certificate")), "{err}");

    // A body over 3 MiB: 413, and nothing stored.
    let big = s.dir.path().join("big.txt");
    std::fs::write(&big, "a".repeat(4 << 20)).unwrap();
    let err = s.fails(&["create", "configmap", "big", &format!("--from-file={}", big.display())]);
    assert!(err.contains("RequestEntityTooLarge") || err.contains("too large"), "{err}");
    assert!(s.fails(&["get", "configmap", "big"]).contains("not found"));
}

/// Writes acknowledged to kubectl survive a SIGKILL of the server (the
/// store fsyncs before answering); the restarted server serves them.
#[test]
fn kill_9_loses_no_acknowledged_write() {
    let Some(kubectl) = common::kubectl() else { return };
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().to_path_buf();
    let mut s = Server::start_in_fsync(dir, kubectl.clone());
    let mut acked = Vec::new();
    for i in 0..15 {
        let name = format!("c{i}");
        if s.run(&["create", "configmap", &name, "--from-literal=i=1"]).status.success() {
            acked.push(name);
        }
    }
    // Kill while a burst of writes is in flight.
    let burst: Vec<_> = (15..25)
        .map(|i| {
            s.cmd(&s.kubeconfig(), &["create", "configmap", &format!("c{i}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    for mut b in burst {
        let _ = b.wait();
    }
    let dir = std::mem::replace(&mut s.dir, tempfile::tempdir().unwrap());
    drop(s);
    assert_eq!(dir.path(), keep);
    let s = Server::start_in_fsync(dir, kubectl);
    let names = s.ok(&["get", "configmaps", "-o", "name"]);
    for n in acked {
        assert!(names.contains(&format!("configmap/{n}\n")), "acknowledged {n} was lost:\n{names}");
    }
}

/// Fields that become iptables rules or file names on every node are
/// refused at admission (422 naming the field) and nothing is stored:
/// a newline in a Service's port name, `protocol: FOO`, an Endpoints
/// address that is not an IP, a volume item path and a ConfigMap key
/// leading out of the pod's volume directory.
#[test]
fn hostile_service_endpoints_and_volume_fields_are_refused() {
    let Some(s) = Server::start() else { return };
    let cases = [
        (
            "service/evil",
            r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "evil"},
                "spec": {"ports": [{"name": "a\n-A PREROUTING -j ACCEPT", "port": 80}]}}"#,
            "spec.ports[0].name: Invalid value: \"a\\n-A PREROUTING -j ACCEPT\"",
        ),
        (
            "service/foo",
            r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "foo"},
                "spec": {"ports": [{"port": 80, "protocol": "FOO"}]}}"#,
            "spec.ports[0].protocol: Unsupported value: \"FOO\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
        ),
        (
            "endpoints/evil",
            r#"{"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "evil"},
                "subsets": [{"addresses": [{"ip": "10.0.0.1 -j ACCEPT"}], "ports": [{"port": 80}]}]}"#,
            "subsets[0].addresses[0].ip: Invalid value: \"10.0.0.1 -j ACCEPT\": must be a valid IP address",
        ),
        (
            "pod/escape",
            r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "escape"},
                "spec": {"containers": [{"name": "c", "image": "busybox"}],
                         "volumes": [{"name": "v", "configMap": {"name": "c", "items": [{"key": "k", "path": "../../etc/x"}]}}]}}"#,
            "spec.volumes[0].configMap.items[0].path: Invalid value: \"../../etc/x\": must not contain '..'",
        ),
        (
            "configmap/dots",
            r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "dots"}, "data": {"..": "x"}}"#,
            "data[..]: Invalid value: \"..\": must not be '..'",
        ),
    ];
    for (i, (object, json, want)) in cases.iter().enumerate() {
        let f = s.dir.path().join(format!("hostile-{i}.json"));
        std::fs::write(&f, json).unwrap();
        let err = s.fails(&["create", "-f", f.to_str().unwrap()]);
        assert!(err.contains("is invalid") && err.contains(want), "{object}: {err}");
        let (kind, name) = object.split_once('/').unwrap();
        let err = s.fails(&["get", kind, name]);
        assert!(err.contains("not found"), "{object} was stored: {err}");
    }
}

#[test]
fn a_pods_spec_changes_only_where_upstream_lets_it() {
    let Some(s) = Server::start() else { return };
    s.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: fixed}
spec:
  containers: [{name: c, image: "busybox:1"}]
  tolerations: [{key: a, operator: Exists}]
"#,
        &[],
    );
    // The image, added tolerations and a deadline change.
    s.ok(&["set", "image", "pod/fixed", "c=busybox:2"]);
    s.ok(&["patch", "pod", "fixed", "-p", r#"{"spec":{"activeDeadlineSeconds":60}}"#]);
    s.ok(&[
        "patch",
        "pod",
        "fixed",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/spec/tolerations/-","value":{"key":"b","operator":"Exists"}}]"#,
    ]);
    let got = s.ok(&[
        "get",
        "pod",
        "fixed",
        "-o",
        "jsonpath={.spec.containers[0].image} {.spec.activeDeadlineSeconds}|{.spec.tolerations[*].key}",
    ]);
    let (fields, tolerations) = got.split_once('|').unwrap();
    assert_eq!(fields, "busybox:2 60");
    assert!(tolerations.starts_with("a ") && tolerations.ends_with(" b"), "{tolerations}");
    // Who the pod runs as, where and with what volumes does not.
    for patch in [
        r#"{"spec":{"serviceAccountName":"admin"}}"#,
        r#"{"spec":{"nodeName":"elsewhere"}}"#,
        r#"{"spec":{"volumes":[{"name":"root","hostPath":{"path":"/"}}]}}"#,
        r#"{"spec":{"ephemeralContainers":[{"name":"d","image":"busybox"}]}}"#,
    ] {
        let err = s.fails(&["patch", "pod", "fixed", "-p", patch]);
        assert!(err.contains("spec: Forbidden: pod updates may not change fields other than"), "{patch}: {err}");
    }
    let err = s.fails(&["patch", "pod", "fixed", "-p", r#"{"spec":{"activeDeadlineSeconds":120}}"#]);
    assert!(
        err.contains("spec.activeDeadlineSeconds: Invalid value: 120: must be less than or equal to previous value"),
        "{err}"
    );
    let got = s.ok(&[
        "get",
        "pod",
        "fixed",
        "-o",
        "jsonpath={.spec.serviceAccountName}|{.spec.nodeName}|{.spec.volumes}|{.spec.ephemeralContainers}",
    ]);
    assert!(
        !got.contains("admin") && !got.contains("elsewhere") && !got.contains("hostPath") && !got.contains("busybox"),
        "{got}"
    );
}

//! kubectl's everyday tools against a real kubelet with containerd:
//! `kubectl debug` (ephemeral containers, `--copy-to`), and the
//! commands people type every day. Needs what the kubelet suite needs
//! (scripts/setup-debian.sh); skipped without it unless CI=true.

mod common;
mod kubelet_support;

use std::process::Command;
use std::time::Duration;

use kubelet_support::{BUSYBOX, Cluster};
use serde_json::Value;

const READY: Duration = Duration::from_secs(60);

/// A pod whose one container `app` runs a process a debugger can recognise.
fn start_target(c: &Cluster, name: &str) {
    c.ok(&["run", name, "--image", BUSYBOX, "--image-pull-policy=Never", "--", "sh", "-c", "exec sleep 3601"]);
    c.wait_for(&["get", "pod", name, "-o", "jsonpath={.status.containerStatuses[0].ready}"], READY, |s| s == "true");
}

/// `curl` to the API server with a cluster-admin service account's token: (HTTP code, body).
fn curl(c: &Cluster, token: &str, method: &str, path: &str, content_type: &str, body: &str) -> (u16, Value) {
    let out = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(c.data.path().join("ca.crt"))
        .args(["-X", method, "-H", &format!("Authorization: Bearer {token}"), "-w", "\n%{http_code}"])
        .args(if body.is_empty() { vec![] } else { vec!["-H", content_type, "--data-binary", body] })
        .arg(format!("{}{path}", c.url.trim_end_matches('/')))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or_default();
    (code.trim().parse().unwrap_or(0), serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}")))
}

fn admin_token(c: &Cluster) -> String {
    c.ok(&["create", "serviceaccount", "root"]);
    c.ok(&["create", "clusterrolebinding", "root", "--clusterrole=cluster-admin", "--serviceaccount=default:root"]);
    c.ok(&["create", "token", "root"]).trim().to_string()
}

/// `kubectl debug -i --target`: an ephemeral container in the running
/// pod's sandbox sees the target's processes (its PID namespace), reads
/// stdin, and is reported in `ephemeralContainerStatuses`.
#[test]
fn kubectl_debug_adds_an_ephemeral_container_sharing_the_targets_processes() {
    let Some(c) = Cluster::start() else { return };
    start_target(&c, "app");
    // containerd ends an attachment when its stdin ends (as Docker): the
    // session's input stays open until the answer is in.
    let mut debug = c.spawn(&[
        "debug",
        "-i",
        "app",
        "--image",
        BUSYBOX,
        "--image-pull-policy=Never",
        "--target=app",
        "--container=debugger",
        "--",
        "sh",
    ]);
    let mut input = debug.stdin.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = debug.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            if tx.send(l.unwrap()).is_err() {
                return;
            }
        }
    });
    std::io::Write::write_all(&mut input, b"ps -o pid,args; echo from-the-debugger\n").unwrap();
    let mut seen = Vec::new();
    while seen.last().is_none_or(|l| l != "from-the-debugger") {
        seen.push(rx.recv_timeout(READY).unwrap_or_else(|e| panic!("{e}: the debugger answered {seen:?}")));
    }
    assert!(seen.iter().any(|l| l.ends_with(" sleep 3601")), "the target's process is listed: {seen:?}");
    std::io::Write::write_all(&mut input, b"exit\n").unwrap();
    drop(input);
    assert!(debug.wait().unwrap().success());
    let status = ".status.ephemeralContainerStatuses[0]";
    c.wait_for(&["get", "pod", "app", "-o", &format!("jsonpath={{{status}.state.terminated.exitCode}}")], READY, |s| {
        s == "0"
    });
    assert_eq!(c.pod_field("app", &format!("{status}.name")), "debugger");
    assert_eq!(c.pod_field("app", &format!("{status}.ready")), "false");
    assert_eq!(c.pod_field("app", ".spec.ephemeralContainers[0].targetContainerName"), "app");
    // Never restarted, and the pod stays Running and ready with its own container.
    assert_eq!(c.pod_field("app", ".status.phase"), "Running");
    assert_eq!(c.pod_field("app", ".status.containerStatuses[0].ready"), "true");
    // Its output is the container's log, as upstream.
    let logs = c.ok(&["logs", "app", "-c", "debugger"]);
    assert!(logs.contains("from-the-debugger"), "{logs}");
}

/// The subresource: GET is the pod, JSON patch and PUT add, and every
/// refusal is upstream's 422 with the field path (nothing stored); a
/// `view` user may not add one; `--copy-to` copies the pod with a debug container.
#[test]
fn ephemeral_containers_subresource_validates_and_copy_to_works() {
    let Some(c) = Cluster::start() else { return };
    start_target(&c, "app");
    let token = admin_token(&c);
    let path = "/api/v1/namespaces/default/pods/app/ephemeralcontainers";
    let (code, pod) = curl(&c, &token, "GET", path, "", "");
    assert_eq!((code, pod["kind"].as_str()), (200, Some("Pod")));
    // JSON patch: one addition.
    let add = r#"[{"op": "add", "path": "/spec/ephemeralContainers", "value": [
        {"name": "one", "image": "docker.io/library/busybox:plinth", "imagePullPolicy": "Never",
         "command": ["sh", "-c", "echo one done"]}]}]"#;
    let (code, pod) = curl(&c, &token, "PATCH", path, "Content-Type: application/json-patch+json", add);
    assert_eq!(code, 200, "{pod}");
    assert_eq!(pod["spec"]["ephemeralContainers"][0]["terminationMessagePolicy"], "File", "defaulted");
    c.wait_for(
        &["get", "pod", "app", "-o", "jsonpath={.status.ephemeralContainerStatuses[0].state.terminated.reason}"],
        READY,
        |s| s == "Completed",
    );
    // Refusals, each with its field path; the stored pod is unchanged.
    let before = c.pod_field("app", ".metadata.resourceVersion");
    let cases: &[(&str, &str, &str)] = &[
        (
            r#"[{"op": "add", "path": "/spec/ephemeralContainers/-", "value": {"name": "app", "image": "busybox"}}]"#,
            "spec.ephemeralContainers[1].name",
            "Duplicate value: \"app\"",
        ),
        (
            r#"[{"op": "add", "path": "/spec/ephemeralContainers/-", "value": {"name": "p", "image": "busybox", "ports": [{"containerPort": 80}]}}]"#,
            "spec.ephemeralContainers[1].ports",
            "Forbidden: cannot be set for an Ephemeral Container",
        ),
        (
            r#"[{"op": "add", "path": "/spec/ephemeralContainers/-", "value": {"name": "t", "image": "busybox", "targetContainerName": "nope"}}]"#,
            "spec.ephemeralContainers[1].targetContainerName",
            "Not found: \"nope\"",
        ),
        (
            r#"[{"op": "replace", "path": "/spec/ephemeralContainers/0/image", "value": "other"}]"#,
            "spec.ephemeralContainers[0]",
            "Forbidden: existing ephemeral containers \"one\" may not be changed\n",
        ),
        (
            r#"[{"op": "remove", "path": "/spec/ephemeralContainers/0"}]"#,
            "spec.ephemeralContainers",
            "Forbidden: existing ephemeral containers \"one\" may not be removed\n",
        ),
    ];
    for (patch, field, message) in cases {
        let (code, status) = curl(&c, &token, "PATCH", path, "Content-Type: application/json-patch+json", patch);
        assert_eq!((code, status["reason"].as_str()), (422, Some("Invalid")), "{status}");
        let cause = &status["details"]["causes"][0];
        assert_eq!((cause["field"].as_str(), cause["message"].as_str()), (Some(*field), Some(*message)), "{status}");
    }
    assert_eq!(c.pod_field("app", ".metadata.resourceVersion"), before);
    // PUT: the whole pod with one more; only the ephemeral containers are taken.
    let (_, mut pod) = curl(&c, &token, "GET", path, "", "");
    pod["spec"]["ephemeralContainers"].as_array_mut().unwrap().push(serde_json::json!(
        {"name": "two", "image": BUSYBOX, "imagePullPolicy": "Never", "command": ["true"]}
    ));
    pod["metadata"]["labels"]["ignored"] = "yes".into();
    let (code, put) = curl(&c, &token, "PUT", path, "Content-Type: application/json", &pod.to_string());
    assert_eq!(code, 200, "{put}");
    assert_eq!(put["spec"]["ephemeralContainers"][1]["name"], "two");
    assert!(put["metadata"]["labels"].get("ignored").is_none(), "only spec.ephemeralContainers changes: {put}");
    // A stale resourceVersion is a conflict.
    let (code, _) = curl(&c, &token, "PUT", path, "Content-Type: application/json", &pod.to_string());
    assert_eq!(code, 409);
    // A pod is not created with ephemeral containers.
    let fresh = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "fresh"},
        "spec": {"containers": [{"name": "c", "image": BUSYBOX}],
                 "ephemeralContainers": [{"name": "d", "image": BUSYBOX}]}});
    let (code, status) = curl(
        &c,
        &token,
        "POST",
        "/api/v1/namespaces/default/pods",
        "Content-Type: application/json",
        &fresh.to_string(),
    );
    assert_eq!(code, 422, "{status}");
    assert_eq!(status["details"]["causes"][0]["field"], "spec.ephemeralContainers");
    // RBAC: `view` reads pods but may not add ephemeral containers.
    c.ok(&["create", "serviceaccount", "viewer"]);
    c.ok(&["create", "rolebinding", "viewer", "--clusterrole=view", "--serviceaccount=default:viewer"]);
    let as_viewer = "--as=system:serviceaccount:default:viewer";
    let refused = c.run(&["debug", as_viewer, "app", "--image", BUSYBOX, "--image-pull-policy=Never", "--", "true"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(err.contains("cannot patch resource \"pods/ephemeralcontainers\""), "{err}");
    // --copy-to: a copy of the pod with the debug container beside the
    // original (kubectl ≥1.32 creates the copy with a protobuf Pod).
    c.ok(&[
        "debug",
        "app",
        "--copy-to=app-copy",
        "--container=debugger",
        "--image",
        BUSYBOX,
        "--image-pull-policy=Never",
        "--",
        "sleep",
        "3600",
    ]);
    c.wait_for(&["get", "pod", "app-copy", "-o", "jsonpath={.status.containerStatuses[*].ready}"], READY, |s| {
        s == "true true"
    });
    let names = c.pod_field("app-copy", ".spec.containers[*].name");
    assert_eq!(names, "app debugger");
}

/// The millicores of a `kubectl top` CPU column (`12m`, or whole cores).
fn millicores(cpu: &str) -> u64 {
    match cpu.strip_suffix('m') {
        Some(m) => m.parse().unwrap(),
        None => cpu.parse::<u64>().unwrap() * 1000,
    }
}

/// `kubectl top node` and `kubectl top pod [--containers] [-A] [-l]`
/// from the kubelet's CRI stats, with no metrics-server: a busy pod uses
/// more CPU than an idle one; the window is reported; `view` may read
/// metrics and a service account without a role may not.
#[test]
fn kubectl_top_reads_the_kubelets_stats() {
    let Some(c) = Cluster::start() else { return };
    let image = ["--image", BUSYBOX, "--image-pull-policy=Never"];
    c.ok(&[&["run", "busy", "--labels=load=busy"][..], &image, &["--", "sh", "-c", "while :; do :; done"]].concat());
    c.ok(&[&["run", "idle", "--labels=load=idle"][..], &image, &["--", "sleep", "3600"]].concat());
    for pod in ["busy", "idle"] {
        c.wait_for(&["get", "pod", pod, "-o", "jsonpath={.status.containerStatuses[0].ready}"], READY, |s| s == "true");
    }
    let discovery = c.ok(&["api-resources", "--api-group=metrics.k8s.io", "--no-headers"]);
    assert!(discovery.contains("NodeMetrics") && discovery.contains("PodMetrics"), "{discovery}");
    let nodes = c.wait_for(&["top", "node", "--no-headers"], READY, |s| s.starts_with("node-1 "));
    let cols: Vec<&str> = nodes.split_whitespace().collect();
    assert!(millicores(cols[1]) > 0 && cols[3].ends_with("Mi"), "{nodes}");
    let pods = c.wait_for(&["top", "pod", "--no-headers"], READY, |s| s.contains("busy") && s.contains("idle"));
    let cpu = |name: &str| {
        let line = pods.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{pods}"));
        millicores(line.split_whitespace().nth(1).unwrap())
    };
    assert!(cpu("busy") >= 100 && cpu("busy") > 10 * cpu("idle").max(1), "a busy loop uses more CPU: {pods}");
    let containers = c.ok(&["top", "pod", "busy", "--containers", "--no-headers"]);
    assert!(containers.starts_with("busy ") && containers.split_whitespace().nth(1) == Some("busy"), "{containers}");
    let all = c.ok(&["top", "pod", "-A", "--no-headers"]);
    assert!(all.lines().any(|l| l.starts_with("default ") && l.contains(" busy ")), "{all}");
    let selected = c.ok(&["top", "pod", "-l", "load=idle", "--no-headers"]);
    assert!(selected.starts_with("idle ") && !selected.contains("busy"), "{selected}");
    let one: Value =
        serde_json::from_str(&c.ok(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/busy"]))
            .unwrap();
    assert_eq!(one["kind"], "PodMetrics");
    let window = one["window"].as_str().unwrap().trim_end_matches('s').parse::<f64>().unwrap();
    assert!((1.0..60.0).contains(&window), "{one}");
    let missing = c.run(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/absent"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NotFound"), "{missing:?}");
    // RBAC: `view` aggregates the metrics reader; no role, no metrics.
    c.ok(&["create", "serviceaccount", "viewer"]);
    c.ok(&["create", "rolebinding", "viewer", "--clusterrole=view", "--serviceaccount=default:viewer"]);
    c.ok(&["top", "pod", "idle", "--as=system:serviceaccount:default:viewer"]);
    let refused = c.run(&["top", "pod", "--as=system:serviceaccount:default:nobody"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("cannot list resource \"pods\" in API group \"metrics.k8s.io\""), "{err}");
    c.ok(&["delete", "pod", "busy", "--grace-period=1"]);
}

/// `kubectl cp` both ways (busybox's tar in the pod), `kubectl wait
/// --for=condition=Ready` and `--for=delete`, `kubectl run --rm -i` (the
/// output, then the pod gone), `kubectl events --for`.
#[test]
fn kubectl_cp_wait_run_rm_and_events() {
    let Some(c) = Cluster::start() else { return };
    let image = ["--image", BUSYBOX, "--image-pull-policy=Never"];
    c.ok(&[&["run", "box", "--restart=Never"][..], &image, &["--", "sleep", "3600"]].concat());
    let out = c.ok(&["wait", "--for=condition=Ready", "pod/box", "--timeout=60s"]);
    assert_eq!(out.trim(), "pod/box condition met");
    // cp into the pod and back, a file and a directory.
    let local = c.data.path().join("cp-in");
    std::fs::create_dir_all(local.join("sub")).unwrap();
    std::fs::write(local.join("a.txt"), "alpha\n").unwrap();
    std::fs::write(local.join("sub/b.txt"), "beta\n").unwrap();
    c.ok(&["cp", local.join("a.txt").to_str().unwrap(), "box:/tmp/a.txt"]);
    assert_eq!(c.ok(&["exec", "box", "--", "cat", "/tmp/a.txt"]), "alpha\n");
    c.ok(&["cp", local.to_str().unwrap(), "box:/tmp/tree"]);
    assert_eq!(c.ok(&["exec", "box", "--", "cat", "/tmp/tree/sub/b.txt"]), "beta\n");
    c.ok(&["exec", "box", "--", "sh", "-c", "echo made-in-the-pod > /tmp/out.txt"]);
    let back = c.data.path().join("cp-out.txt");
    c.ok(&["cp", "box:/tmp/out.txt", back.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "made-in-the-pod\n");
    // events about the pod, in kubectl's own table.
    let events = c.ok(&["events", "--for", "pod/box"]);
    assert!(events.contains("Started") && events.contains("Pod/box"), "{events}");
    // --for=delete waits for the pod to be gone.
    c.ok(&["delete", "pod", "box", "--wait=false", "--grace-period=1"]);
    let out = c.ok(&["wait", "--for=delete", "pod/box", "--timeout=60s"]);
    assert!(out.contains("pod/box condition met"), "{out}");
    assert!(!c.ok(&["get", "pods", "-o", "name"]).contains("pod/box"));
    // run --rm -i: the container's output, then the pod is deleted.
    let out = c.run_with_stdin(
        &[&["run", "once", "--rm", "-i", "--restart=Never"][..], &image, &["--", "sh", "-c", "read x; echo got $x"]]
            .concat(),
        b"hello\n",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("got hello"), "{stdout}");
    assert!(stdout.contains("pod \"once\" deleted"), "{stdout}");
    c.wait_for(&["get", "pods", "-o", "name"], READY, |s| !s.contains("pod/once"));
}

/// `kubectl diff` (a server-side dry run: exit 1 with the change, 0 when
/// none, nothing stored) and `kubectl apply -k` (a kustomization with a
/// name prefix, labels and a ConfigMap generator).
#[test]
fn kubectl_diff_and_apply_kustomization() {
    let Some(s) = common::Server::start() else { return };
    let dir = s.dir.path().join("kz");
    std::fs::create_dir_all(&dir).unwrap();
    let cm = |v: &str| format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings}}\ndata: {{mode: {v}}}\n");
    std::fs::write(dir.join("cm.yaml"), cm("one")).unwrap();
    let file = dir.join("cm.yaml");
    let file = file.to_str().unwrap();
    let new = s.run(&["diff", "-f", file]);
    assert_eq!(new.status.code(), Some(1), "a new object is a difference: {new:?}");
    s.ok(&["apply", "-f", file]);
    let same = s.run(&["diff", "-f", file]);
    assert_eq!(same.status.code(), Some(0), "{same:?}");
    std::fs::write(dir.join("cm.yaml"), cm("two")).unwrap();
    let changed = s.run(&["diff", "-f", file]);
    let text = String::from_utf8_lossy(&changed.stdout);
    assert_eq!(changed.status.code(), Some(1), "{changed:?}");
    assert!(text.contains("-  mode: one") && text.contains("+  mode: two"), "{text}");
    assert_eq!(s.ok(&["get", "cm", "settings", "-o", "jsonpath={.data.mode}"]), "one", "diff stores nothing");
    // apply -k
    std::fs::write(
        dir.join("kustomization.yaml"),
        "namePrefix: kz-\nlabels:\n- pairs: {app: kz}\n  includeSelectors: true\nresources: [cm.yaml]\n\
         configMapGenerator:\n- name: generated\n  literals: [colour=blue]\n",
    )
    .unwrap();
    s.ok(&["apply", "-k", dir.to_str().unwrap()]);
    let names = s.ok(&["get", "cm", "-l", "app=kz", "-o", "jsonpath={.items[*].metadata.name}"]);
    let names: Vec<&str> = names.split_whitespace().collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"kz-settings"), "{names:?}");
    let generated = names.iter().find(|n| n.starts_with("kz-generated-")).expect("the generated ConfigMap, hashed");
    assert_eq!(s.ok(&["get", "cm", generated, "-o", "jsonpath={.data.colour}"]), "blue");
    assert_eq!(s.ok(&["get", "cm", "kz-settings", "-o", "jsonpath={.data.mode}"]), "two");
    // diff -k against what apply -k stored: nothing to show.
    assert_eq!(s.run(&["diff", "-k", dir.to_str().unwrap()]).status.code(), Some(0));
}

//! What charts create alongside workloads, driven by a real kubectl:
//! PodDisruptionBudgets kept by the disruption controller and honoured by
//! the `pods/eviction` subresource and `kubectl drain` (pods move to
//! another hollow node, DaemonSet pods stay), and the stored kinds with
//! their `kubectl get` columns and validation (APIServices included).

mod common;

use std::time::Duration;

use common::{APP, HollowNode, Server};

const T: Duration = Duration::from_secs(60);

const PDB: &str = "apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web}
spec:
  minAvailable: 2
  selector: {matchLabels: {app: web}}
";

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

/// `name node` of each pod with label `app`, sorted.
fn placement(s: &Server, app: &str) -> Vec<String> {
    let out = s.ok(&[
        "get",
        "pods",
        "-l",
        &format!("app={app}"),
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.phase}{\"\\n\"}{end}",
    ]);
    let mut v: Vec<String> = out.lines().map(str::to_string).collect();
    v.sort();
    v
}

fn eviction(s: &Server, pod: &str, api_version: &str) -> std::process::Output {
    let body = format!(
        r#"{{"apiVersion":"{api_version}","kind":"Eviction","metadata":{{"name":"{pod}","namespace":"default"}}}}"#
    );
    let f = s.dir.path().join(format!("eviction-{pod}.json"));
    std::fs::write(&f, body).unwrap();
    s.run(&["create", "--raw", &format!("/api/v1/namespaces/default/pods/{pod}/eviction"), "-f", f.to_str().unwrap()])
}

#[test]
fn eviction_honours_the_budget_and_drain_moves_pods() {
    let Some(s) = Server::start() else { return };
    let _n1 = HollowNode::start(&s, "hollow-1", 40);
    s.apply(APP, &[]);
    s.apply(AGENT, &[]);
    s.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    s.ok(&["rollout", "status", "daemonset/agent", "--timeout=60s"]);
    s.apply(PDB, &[]);
    // Two ready pods, two needed: nothing may go.
    let row = s.wait_for(&["get", "pdb", "web", "--no-headers"], T, |o| o.split_whitespace().nth(3) == Some("0"));
    assert_eq!(row.split_whitespace().take(4).collect::<Vec<_>>(), ["web", "2", "N/A", "0"], "{row}");
    let st = s.ok(&[
        "get",
        "pdb",
        "web",
        "-o",
        "jsonpath={.status.currentHealthy} {.status.desiredHealthy} {.status.expectedPods} {.status.conditions[0].reason}",
    ]);
    assert_eq!(st, "2 2 2 InsufficientPods");

    // The eviction subresource refuses with upstream's 429 and cause.
    let pods = placement(&s, "web");
    let first = pods[0].split(' ').next().unwrap().to_string();
    let out = eviction(&s, &first, "policy/v1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("TooManyRequests")
            && err.contains("Cannot evict pod as it would violate the pod's disruption budget."),
        "{err}"
    );
    assert_eq!(placement(&s, "web"), pods, "nothing was deleted");

    // A second node; draining the first is refused while the budget blocks.
    let _n2 = HollowNode::start(&s, "hollow-2", 40);
    s.wait_for(&["get", "nodes", "--no-headers"], T, |o| o.matches(" Ready ").count() == 2);
    let err = s.fails(&["drain", "hollow-1", "--timeout=20s"]);
    assert!(err.contains("cannot delete DaemonSet-managed Pods"), "{err}");
    let node = s.ok(&["get", "node", "hollow-1", "--no-headers"]);
    assert!(node.contains("Ready,SchedulingDisabled"), "drain cordons first: {node}");
    let out = s.run(&["drain", "hollow-1", "--ignore-daemonsets", "--timeout=12s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the budget blocks the drain");
    assert!(
        err.contains("(will retry after 5s): Cannot evict pod as it would violate the pod's disruption budget."),
        "{err}"
    );
    assert_eq!(placement(&s, "web"), pods, "nothing was evicted");

    // One may go: drain evicts one pod at a time as replacements become ready on hollow-2.
    s.ok(&["patch", "pdb", "web", "--type=merge", "-p", r#"{"spec":{"minAvailable":1}}"#]);
    s.wait_for(&["get", "pdb", "web", "--no-headers"], T, |o| o.split_whitespace().nth(3) == Some("1"));
    let out = s.ok(&["drain", "hollow-1", "--ignore-daemonsets", "--timeout=90s"]);
    assert!(out.contains("node/hollow-1 drained") && out.contains("evicting pod default/web-"), "{out}");
    let moved = s.wait_for(&["get", "pods", "-l", "app=web", "-o", "wide", "--no-headers"], T, |o| {
        o.lines().count() == 2 && o.lines().all(|l| l.contains("Running") && l.contains("hollow-2"))
    });
    assert!(!moved.contains("hollow-1"), "{moved}");
    let agents = placement(&s, "agent");
    assert!(agents.iter().any(|p| p.contains(" hollow-1 ")), "DaemonSet pods stay: {agents:?}");
    s.ok(&["uncordon", "hollow-1"]);
    let node = s.ok(&["get", "node", "hollow-1", "--no-headers"]);
    assert!(!node.contains("SchedulingDisabled"), "{node}");

    // With a disruption allowed, an eviction (here as kubectl ≤1.21 words it) deletes the pod.
    s.wait_for(&["get", "pdb", "web", "--no-headers"], T, |o| o.split_whitespace().nth(3) == Some("1"));
    let pod = placement(&s, "web")[0].split(' ').next().unwrap().to_string();
    let out = eviction(&s, &pod, "policy/v1beta1");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    s.wait_for(&["get", "pod", &pod, "--ignore-not-found", "--no-headers"], T, |o| o.trim().is_empty());
}

fn pod(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n{extra}  containers:\n  - name: c\n    image: busybox\n"
    )
}

fn with_cpu_limit(name: &str, cpu: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    resources: {{limits: {{cpu: \"{cpu}\"}}}}\n"
    )
}

/// Applies `yaml` expecting a refusal; returns kubectl's stderr.
fn refused(s: &Server, yaml: &str) -> String {
    let f = s.dir.path().join("refused.yaml");
    std::fs::write(&f, yaml).unwrap();
    s.fails(&["apply", "-f", f.to_str().unwrap()])
}

#[test]
fn limit_ranges_quotas_and_priority_classes_at_admission() {
    let Some(s) = Server::start() else { return };
    // LimitRange: defaults filled in, max enforced.
    s.apply(
        "apiVersion: v1\nkind: LimitRange\nmetadata: {name: cpu}\nspec:\n  limits:\n  - type: Container\n    max: {cpu: \"1\"}\n    default: {cpu: 500m}\n    defaultRequest: {cpu: 200m}\n",
        &[],
    );
    let lr = s.ok(&["get", "limits", "cpu", "-o", "jsonpath={.spec.limits[0].defaultRequest.cpu}"]);
    assert_eq!(lr, "200m");
    s.apply(&pod("plain", ""), &[]);
    let res = s.ok(&["get", "pod", "plain", "-o", "jsonpath={.spec.containers[0].resources.limits.cpu} {.spec.containers[0].resources.requests.cpu} {.status.qosClass}"]);
    assert_eq!(res, "500m 200m Burstable");
    let err = refused(&s, &with_cpu_limit("big", "2"));
    assert!(err.contains("pods \"big\" is forbidden: maximum cpu usage per Container is 1, but limit is 2"), "{err}");
    assert!(s.fails(&["get", "pod", "big"]).contains("not found"));

    // ResourceQuota: counted, refused over the limit with upstream's 403, given back on delete.
    s.apply("apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: compute}\nspec:\n  hard: {pods: \"2\", requests.cpu: \"1\"}\n", &[]);
    s.wait_for(&["get", "quota", "compute", "-o", "jsonpath={.status.used.pods}"], T, |o| o == "1");
    s.apply(&pod("second", ""), &[]);
    let row = s.ok(&["get", "quota", "compute", "--no-headers"]);
    assert!(row.contains("pods: 2/2, requests.cpu: 400m/1"), "{row}");
    let err = refused(&s, &pod("third", ""));
    assert!(
        err.contains("Error from server (Forbidden)")
            && err.contains(
                "pods \"third\" is forbidden: exceeded quota: compute, requested: pods=1, used: pods=2, limited: pods=2"
            ),
        "{err}"
    );
    s.ok(&["delete", "pod", "second"]);
    s.wait_for(&["get", "quota", "compute", "-o", "jsonpath={.status.used.pods}"], T, |o| o == "1");
    s.apply(&pod("third", ""), &[]);

    // Object counts: the namespace already holds kube-root-ca.crt.
    s.apply(
        "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: objects}\nspec:\n  hard: {count/configmaps: \"1\"}\n",
        &[],
    );
    s.wait_for(&["get", "quota", "objects", "-o", "jsonpath={.status.used.count/configmaps}"], T, |o| o == "1");
    let err = s.fails(&["create", "configmap", "more", "--from-literal=a=b"]);
    assert!(
        err.contains("configmaps \"more\" is forbidden: exceeded quota: objects, requested: count/configmaps=1, used: count/configmaps=1, limited: count/configmaps=1"),
        "{err}"
    );
    s.ok(&["delete", "quota", "objects"]);

    // PriorityClass: resolved into spec.priority; the built-in classes exist; an unknown class is refused.
    s.ok(&["delete", "quota", "compute"]);
    s.apply("apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: high}\nvalue: 1000\n", &[]);
    s.apply(&pod("important", "  priorityClassName: high\n"), &[]);
    let p = s.ok(&["get", "pod", "important", "-o", "jsonpath={.spec.priority} {.spec.preemptionPolicy}"]);
    assert_eq!(p, "1000 PreemptLowerPriority");
    s.apply(&pod("critical", "  priorityClassName: system-node-critical\n"), &[]);
    assert_eq!(s.ok(&["get", "pod", "critical", "-o", "jsonpath={.spec.priority}"]), "2000001000");
    let err = refused(&s, &pod("lost", "  priorityClassName: nope\n"));
    assert!(err.contains("pods \"lost\" is forbidden: no PriorityClass with name nope was found"), "{err}");
    let pcs = s.ok(&["get", "pc"]);
    assert!(
        pcs.lines().next().unwrap().split_whitespace().eq([
            "NAME",
            "VALUE",
            "GLOBAL-DEFAULT",
            "AGE",
            "PREEMPTIONPOLICY"
        ]),
        "{pcs}"
    );
    assert!(pcs.contains("system-cluster-critical") && pcs.contains("2000000000"), "{pcs}");
    let err =
        refused(&s, "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: system-mine}\nvalue: 1\n");
    assert!(err.contains("metadata.name: Invalid value: \"system-mine\": priority class names with 'system-' prefix are reserved for system use only"), "{err}");
}

/// (manifest, the `get` header, an invalid manifest, the error it must carry)
const KINDS: &[(&str, &str, &str, &str, &str)] = &[
    (
        "pdb",
        "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: k}\nspec: {maxUnavailable: \"25%\", selector: {matchLabels: {app: k}}}\n",
        "NAME MIN AVAILABLE MAX UNAVAILABLE ALLOWED DISRUPTIONS AGE",
        "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: bad}\nspec: {minAvailable: -1}\n",
        "spec.minAvailable: Invalid value: -1: must be greater than or equal to 0",
    ),
    (
        "hpa",
        "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: k}\nspec: {scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}, maxReplicas: 5}\n",
        "NAME REFERENCE TARGETS MINPODS MAXPODS REPLICAS AGE",
        "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: bad}\nspec: {scaleTargetRef: {kind: Deployment, name: web}, minReplicas: 3, maxReplicas: 2}\n",
        "spec.maxReplicas: Invalid value: 2: must be greater than or equal to `minReplicas`",
    ),
    (
        "netpol",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: k}\nspec: {podSelector: {matchLabels: {app: k}}}\n",
        "NAME POD-SELECTOR AGE",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad}\nspec: {podSelector: {}, policyTypes: [Sideways]}\n",
        "spec.policyTypes[0]: Unsupported value: \"Sideways\"",
    ),
    (
        "ing",
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: k}\nspec:\n  rules:\n  - host: k.example.com\n    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}\n",
        "NAME CLASS HOSTS ADDRESS PORTS AGE",
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: bad}\nspec:\n  rules:\n  - http: {paths: [{path: /, backend: {service: {name: web, port: {number: 80}}}}]}\n",
        "spec.rules[0].http.paths[0].pathType: Required value: pathType must be specified",
    ),
    (
        "ingressclass",
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: k}\nspec: {controller: example.com/ingress}\n",
        "NAME CONTROLLER PARAMETERS AGE",
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: bad}\nspec: {controller: nope}\n",
        "spec.controller: Invalid value: \"nope\"",
    ),
    (
        "quota",
        "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: k}\nspec: {hard: {count/deployments.apps: \"3\"}}\n",
        "NAME AGE REQUEST LIMIT",
        "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: bad}\nspec: {hard: {pods: \"-1\"}}\n",
        "spec.hard[pods]: Invalid value: \"-1\": must be greater than or equal to 0",
    ),
    (
        "limits",
        "apiVersion: v1\nkind: LimitRange\nmetadata: {name: k}\nspec: {limits: [{type: Container, max: {memory: 1Gi}}]}\n",
        "NAME CREATED AT",
        "apiVersion: v1\nkind: LimitRange\nmetadata: {name: bad}\nspec: {limits: [{type: Container, max: {cpu: \"1\"}, min: {cpu: \"2\"}}]}\n",
        "spec.limits[0].min[cpu]: Invalid value: \"2\": min value 2 is greater than max value 1",
    ),
    (
        "validatingwebhookconfigurations",
        "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata: {name: k}\nwebhooks:\n- name: check.k.example.com\n  clientConfig: {url: \"https://k.example.com/check\"}\n  sideEffects: None\n  admissionReviewVersions: [v1]\n",
        "NAME WEBHOOKS AGE",
        "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata: {name: bad}\nwebhooks:\n- name: check\n  clientConfig: {url: \"https://k.example.com/check\"}\n  admissionReviewVersions: [v1]\n",
        "webhooks[0].sideEffects: Required value: must specify one of None, NoneOnDryRun",
    ),
    (
        "mutatingwebhookconfigurations",
        "apiVersion: admissionregistration.k8s.io/v1\nkind: MutatingWebhookConfiguration\nmetadata: {name: k}\nwebhooks:\n- name: fix.k.example.com\n  clientConfig: {service: {namespace: default, name: web}}\n  sideEffects: None\n  admissionReviewVersions: [v1]\n",
        "NAME WEBHOOKS AGE",
        "apiVersion: admissionregistration.k8s.io/v1\nkind: MutatingWebhookConfiguration\nmetadata: {name: bad}\nwebhooks:\n- name: fix.k.example.com\n  clientConfig: {}\n  sideEffects: None\n  admissionReviewVersions: [v1]\n",
        "webhooks[0].clientConfig: Required value: exactly one of url or service is required",
    ),
];

#[test]
fn stored_kinds_validate_and_print_as_upstream() {
    let Some(s) = Server::start() else { return };
    for (short, good, header, bad, error) in KINDS {
        s.apply(good, &[]);
        let out = s.ok(&["get", short, "k"]);
        let first = out.lines().next().unwrap_or_default();
        assert!(first.split_whitespace().eq(header.split_whitespace()), "{short}: {out}");
        let err = refused(&s, bad);
        assert!(err.contains(error), "{short}: {err}");
        let err = s.fails(&["get", short, "bad"]);
        assert!(err.contains("not found"), "{short}: nothing stored: {err}");
    }
    let hpa = s.ok(&["get", "hpa", "k", "--no-headers"]);
    assert!(hpa.split_whitespace().take(5).eq(["k", "Deployment/web", "cpu:", "<unknown>/80%", "1"]), "{hpa}");
    let ing = s.ok(&["get", "ing", "k", "--no-headers"]);
    assert!(ing.split_whitespace().take(4).eq(["k", "<none>", "k.example.com", "80"]), "{ing}");
    let wh = s.ok(&[
        "get",
        "mutatingwebhookconfigurations",
        "k",
        "-o",
        "jsonpath={.webhooks[0].clientConfig.service.port} {.webhooks[0].timeoutSeconds}",
    ]);
    assert_eq!(wh, "443 10", "upstream's defaults");
    let pdb = s.wait_for(
        &["get", "pdb", "k", "-o", "jsonpath={.status.observedGeneration} {.status.expectedPods}"],
        T,
        |o| o.starts_with('1'),
    );
    assert_eq!(pdb, "1 0", "the controller saw the budget; it selects no pods");
    // Discovery: the groups and their versions, as kubectl sees them.
    let versions = s.ok(&["api-versions"]);
    for gv in [
        "policy/v1",
        "autoscaling/v2",
        "networking.k8s.io/v1",
        "scheduling.k8s.io/v1",
        "admissionregistration.k8s.io/v1",
    ] {
        assert!(versions.lines().any(|l| l == gv), "{gv}: {versions}");
    }
    let resources = s.ok(&["api-resources", "--api-group=policy", "--no-headers"]);
    assert!(resources.contains("poddisruptionbudgets") && resources.contains("pdb"), "{resources}");
}

const WARDLE: &str = "apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1alpha1.wardle.k8s.io}
spec:
  group: wardle.k8s.io
  version: v1alpha1
  groupPriorityMinimum: 1000
  versionPriority: 15
  insecureSkipTLSVerify: true
  service: {namespace: wardle, name: api}
";

/// APIServices (what metrics-server's and other aggregated servers'
/// charts register) are stored with upstream's validation and columns; one
/// naming a service says it is not available, as nothing is proxied to
/// it, and its group stays out of discovery, so kubectl keeps working.
#[test]
fn api_services_are_stored_with_their_availability() {
    let Some(s) = Server::start() else { return };
    s.apply(WARDLE, &[]);
    s.apply(
        "apiVersion: apiregistration.k8s.io/v1\nkind: APIService\nmetadata: {name: v1.example.com}\nspec: {group: example.com, version: v1, groupPriorityMinimum: 100, versionPriority: 1}\n",
        &[],
    );
    let out = s.ok(&["get", "apiservices"]);
    let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["NAME", "SERVICE", "AVAILABLE", "AGE"], "{out}");
    assert_eq!(rows[1][..2], ["v1.example.com", "Local"], "{out}");
    assert_eq!(rows[1][2], "True", "{out}");
    assert_eq!(rows[2][..4], ["v1alpha1.wardle.k8s.io", "wardle/api", "False", "(FailedDiscoveryCheck)"], "{out}");
    let port = s.ok(&["get", "apiservice", "v1alpha1.wardle.k8s.io", "-o", "jsonpath={.spec.service.port}"]);
    assert_eq!(port, "443", "upstream's default port");
    let f = s.dir.path().join("wardle.yaml");
    std::fs::write(&f, WARDLE).unwrap();
    let err = s.fails(&["create", "-f", f.to_str().unwrap()]);
    assert!(err.contains("AlreadyExists") && err.contains("\"v1alpha1.wardle.k8s.io\" already exists"), "{err}");
    let err = refused(&s, &WARDLE.replace("name: v1alpha1.wardle.k8s.io", "name: wardle").replace("1000", "0"));
    assert!(err.contains("metadata.name: Invalid value: \"wardle\": must be `spec.version+\".\"+spec.group`"), "{err}");
    assert!(err.contains("spec.groupPriorityMinimum: Invalid value: 0: must be positive and less than 20000"), "{err}");
    assert!(s.fails(&["get", "apiservice", "wardle"]).contains("not found"), "nothing stored");
    let resources = s.ok(&["api-resources", "--api-group=apiregistration.k8s.io", "--no-headers"]);
    assert!(resources.contains("apiservices") && resources.contains("APIService"), "{resources}");
    // The unavailable group is not discovered: kubectl prints no
    // "unable to retrieve the complete list of server APIs".
    let out = s.run(&["api-versions"]);
    let (versions, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stderr.is_empty(), "{stderr}");
    assert!(versions.lines().any(|l| l == "apiregistration.k8s.io/v1"), "{versions}");
    assert!(!versions.contains("wardle"), "{versions}");
}

/// `kubectl drain` with the newest kubectl and the oldest pinned one
/// (1.27): refused while the budget blocks, done when it allows.
#[test]
fn drain_with_the_newest_and_oldest_kubectl() {
    let Some(main) = common::kubectl() else { return };
    let oldest = std::path::PathBuf::from("/usr/lib/google-cloud-sdk/bin/kubectl.1.27");
    let builds: Vec<_> = std::iter::once(main).chain(oldest.is_file().then_some(oldest)).collect();
    for kubectl in builds {
        let which = kubectl.display().to_string();
        let s = Server::start_in(tempfile::tempdir().unwrap(), kubectl);
        let _n = HollowNode::start(&s, "hollow-1", 40);
        s.apply(APP, &[]);
        s.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
        s.apply(PDB, &[]);
        s.wait_for(&["get", "pdb", "web", "-o", "jsonpath={.status.currentHealthy}"], T, |o| o == "2");
        let out = s.run(&["drain", "hollow-1", "--timeout=7s"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("would violate the pod's disruption budget"), "{which}: {err}");
        s.ok(&["patch", "pdb", "web", "--type=merge", "-p", r#"{"spec":{"minAvailable":0}}"#]);
        s.wait_for(&["get", "pdb", "web", "-o", "jsonpath={.status.disruptionsAllowed}"], T, |o| o == "2");
        let out = s.ok(&["drain", "hollow-1", "--timeout=60s"]);
        assert!(out.contains("node/hollow-1 drained"), "{which}: {out}");
        // The replacements wait: the only node is cordoned.
        let pods = s.wait_for(&["get", "pods", "-l", "app=web", "--no-headers"], T, |o| {
            o.lines().count() == 2 && o.lines().all(|l| l.contains("Pending"))
        });
        assert!(!pods.contains("Running"), "{which}: {pods}");
    }
}

//! Aggregated discovery (`apidiscovery.k8s.io` v2 and v2beta1) driven by
//! real clients: kubectl ≥1.30 and 1.27 discover every resource, a CRD's
//! kind included, from `/api` and `/apis` alone and list what the plain
//! per-group-version documents list; kube-rs' `Discovery::run_aggregated`;
//! the Accept fallbacks, Content-Type, ETag and 304 on the wire; the
//! documents in protobuf. OpenAPI v3:
//! `kubectl explain` of built-in kinds, strict validation of a misspelt field.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::Server;

const CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.example.org
spec:
  group: example.org
  scope: Cluster
  names: {plural: gadgets, singular: gadget, kind: Gadget, shortNames: [gd], categories: [all]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;

/// The paths kubectl's `-v=6` log says it requested (both log formats:
/// `GET https://…` up to 1.29, `url="https://…"` since).
fn requested_paths(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| {
            let start = l.find("https://")?;
            let url = &l[start + "https://".len()..];
            let path = &url[url.find('/')?..];
            let end = path.find(['?', '"', ' ']).unwrap_or(path.len());
            Some(path[..end].to_string())
        })
        .collect()
}

/// (name, kind) of every resource `kubectl api-resources` prints.
fn api_resources(s: &Server, cache: &std::path::Path) -> (BTreeSet<(String, String)>, Vec<String>) {
    let out = s.run(&["api-resources", "-v=6", "--no-headers", "--cache-dir", cache.to_str().unwrap()]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "api-resources failed: {stderr}");
    let rows = stdout
        .lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            Some((words.first()?.to_string(), words.last()?.to_string()))
        })
        .collect();
    (rows, requested_paths(&stderr))
}

/// What the plain documents list (`/api/v1`, each `/apis/<group>/<version>`),
/// subresources left out, as `kubectl api-resources` printed before
/// aggregated discovery.
fn plain_resources(s: &Server) -> BTreeSet<(String, String)> {
    let raw = |p: &str| -> serde_json::Value { serde_json::from_str(&s.ok(&["get", "--raw", p])).unwrap() };
    let mut gvs = vec!["/api/v1".to_string()];
    for g in raw("/apis")["groups"].as_array().unwrap() {
        gvs.extend(
            g["versions"].as_array().unwrap().iter().map(|v| format!("/apis/{}", v["groupVersion"].as_str().unwrap())),
        );
    }
    let mut set = BTreeSet::new();
    for gv in gvs {
        for r in raw(&gv)["resources"].as_array().unwrap() {
            let name = r["name"].as_str().unwrap();
            if !name.contains('/') {
                set.insert((name.to_string(), r["kind"].as_str().unwrap().to_string()));
            }
        }
    }
    set
}

fn install_crd(s: &Server) {
    s.apply(CRD, &[]);
    s.ok(&["wait", "--for=condition=Established", "crd/gadgets.example.org", "--timeout=20s"]);
}

/// kubectl ≥1.30 (the PyPI build and the pinned 1.30 and 1.33) and 1.27
/// (which asks for v2beta1) read `/api` and `/apis` only — no legacy
/// per-group-version request — and list the same resources as the plain
/// documents, the CRD's kind among them; `get` by a CRD's short name works.
#[test]
fn kubectl_discovers_everything_from_the_aggregated_documents() {
    let Some(builds) = common::kubectl_builds([27, 30, 33]) else { return };
    for kubectl in builds {
        let which = kubectl.display().to_string();
        let s = Server::start_in(tempfile::tempdir().unwrap(), kubectl);
        install_crd(&s);
        let cache = s.dir.path().join("discovery-cache");
        let (listed, paths) = api_resources(&s, &cache);
        let legacy: Vec<&String> = paths.iter().filter(|p| p.starts_with("/api/") || p.starts_with("/apis/")).collect();
        assert!(legacy.is_empty(), "{which}: legacy discovery requests {legacy:?}");
        assert!(paths.iter().any(|p| p == "/apis") && paths.iter().any(|p| p == "/api"), "{which}: {paths:?}");
        assert!(listed.contains(&("gadgets".into(), "Gadget".into())), "{which}: {listed:?}");
        assert!(listed.contains(&("deployments".into(), "Deployment".into())), "{which}: {listed:?}");
        assert_eq!(listed, plain_resources(&s), "{which}: aggregated and plain discovery differ");
        s.apply("apiVersion: example.org/v1\nkind: Gadget\nmetadata: {name: g1}\n", &[]);
        let get = s.ok(&["get", "gd", "--cache-dir", cache.to_str().unwrap()]);
        assert!(get.contains("g1"), "{which}: {get}");
    }
}

/// A GET of `path` with `accept`, and `if_none_match` if given: status,
/// Content-Type, ETag and body.
async fn get(
    client: &kube::Client,
    path: &str,
    accept: &str,
    if_none_match: Option<&str>,
) -> (u16, String, String, serde_json::Value) {
    let mut req = http::Request::get(path).header(http::header::ACCEPT, accept);
    if let Some(tag) = if_none_match {
        req = req.header(http::header::IF_NONE_MATCH, tag);
    }
    let resp = client.send(req.body(kube::client::Body::empty()).unwrap()).await.unwrap();
    let header = |h: http::header::HeaderName| {
        resp.headers().get(h).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
    };
    let (status, ct, etag) = (resp.status().as_u16(), header(http::header::CONTENT_TYPE), header(http::header::ETAG));
    let bytes = resp.into_body().collect_bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, ct, etag, body)
}

const V2: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
const V2BETA1: &str = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList";

/// kube-rs' aggregated discovery finds built-in kinds, subresources and
/// the CRD's kind; on the wire the Accept list decides (v2, v2beta1, the
/// plain fallback, 406), the Content-Type names what was served, and the
/// ETag comes back as a 304.
#[test]
fn kube_rs_aggregated_discovery_and_negotiation_on_the_wire() {
    use kube::discovery::{Discovery, verbs};
    let Some(s) = Server::start() else { return };
    install_crd(&s);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = common::kube_client(&s).await;
        let d = Discovery::new(client.clone()).run_aggregated().await.unwrap();
        let (pod, caps) = d.get("").unwrap().recommended_kind("Pod").unwrap();
        assert_eq!(pod.plural, "pods");
        assert!(caps.supports_operation(verbs::WATCH));
        let subs: Vec<&str> = caps.subresources.iter().map(|(r, _)| r.plural.as_str()).collect();
        assert!(subs.contains(&"log") && subs.contains(&"eviction") && subs.contains(&"status"), "{subs:?}");
        let (gadget, caps) = d.get("example.org").expect("the CRD's group").recommended_kind("Gadget").unwrap();
        assert_eq!((gadget.plural.as_str(), caps.scope.clone()), ("gadgets", kube::discovery::Scope::Cluster));
        assert!(d.get("apps").unwrap().recommended_kind("Deployment").is_some());

        let (code, ct, etag, body) = get(&client, "/apis", &format!("{V2},{V2BETA1},application/json"), None).await;
        assert_eq!((code, ct.as_str()), (200, V2));
        assert_eq!(body["kind"], "APIGroupDiscoveryList");
        assert!(!etag.is_empty());
        let (code, _, again, _) = get(&client, "/apis", V2, Some(&etag)).await;
        assert_eq!((code, again.as_str()), (304, etag.as_str()));

        let (code, ct, _, body) = get(&client, "/api", &format!("{V2BETA1},application/json"), None).await;
        assert_eq!(
            (code, ct.as_str(), body["apiVersion"].as_str()),
            (200, V2BETA1, Some("apidiscovery.k8s.io/v2beta1"))
        );
        let (code, ct, _, body) = get(&client, "/api", "application/json", None).await;
        assert_eq!((code, ct.as_str(), body["kind"].as_str()), (200, "application/json", Some("APIVersions")));
        let unknown = "application/json;g=apidiscovery.k8s.io;v=v3;as=APIGroupDiscoveryList";
        let (code, ct, _, body) = get(&client, "/apis", &format!("{unknown},application/json"), None).await;
        assert_eq!((code, ct.as_str(), body["kind"].as_str()), (200, "application/json", Some("APIGroupList")));
        let (code, _, _, body) = get(&client, "/apis", unknown, None).await;
        assert_eq!((code, body["reason"].as_str()), (406, Some("NotAcceptable")));
    });
    // The CRD's group goes from the document once the CRD is deleted.
    s.ok(&["delete", "crd", "gadgets.example.org"]);
    let apis =
        s.wait_for(&["api-resources", "--api-group=example.org", "--no-headers"], Duration::from_secs(10), |o| {
            o.trim().is_empty()
        });
    assert!(apis.trim().is_empty(), "{apis}");
}

/// Discovery in Kubernetes protobuf, read back with k8s-pb's prost types
/// (a Go-less protobuf client): the aggregated list, v2 and v2beta1, and
/// the plain documents, each with its Content-Type.
#[test]
fn discovery_documents_in_protobuf() {
    use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
    use prost::Message as _;
    const PB: &str = "application/vnd.kubernetes.protobuf";
    let Some(s) = Server::start() else { return };
    install_crd(&s);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = common::kube_client(&s).await;
        let fetch = |path: &'static str, accept: String| {
            let client = client.clone();
            async move {
                let req = http::Request::get(path).header(http::header::ACCEPT, accept);
                let resp = client.send(req.body(kube::client::Body::empty()).unwrap()).await.unwrap();
                assert_eq!(resp.status(), 200, "{path}");
                let ct = resp.headers()[http::header::CONTENT_TYPE].to_str().unwrap().to_string();
                let bytes = resp.into_body().collect_bytes().await.unwrap();
                let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown::decode(
                    bytes.strip_prefix(b"k8s\0").expect("k8s\\0 magic"),
                )
                .unwrap();
                let tm = unknown.type_meta.unwrap_or_default();
                (ct, tm.api_version.unwrap_or_default(), tm.kind.unwrap_or_default(), unknown.raw.unwrap_or_default())
            }
        };
        for v in ["v2", "v2beta1"] {
            let media = format!("{PB};g=apidiscovery.k8s.io;v={v};as=APIGroupDiscoveryList");
            let (ct, api_version, kind, raw) = fetch("/apis", format!("{media},{V2},application/json")).await;
            assert_eq!(ct, media);
            assert_eq!(
                (api_version.as_str(), kind.as_str()),
                (&*format!("apidiscovery.k8s.io/{v}"), "APIGroupDiscoveryList")
            );
            // Both versions share the wire form of v2's messages.
            let list = k8s_pb::api::apidiscovery::v2::APIGroupDiscoveryList::decode(raw.as_slice()).unwrap();
            let group = |name: &str| {
                list.items.iter().find(|g| g.metadata.as_ref().and_then(|m| m.name.as_deref()) == Some(name)).cloned()
            };
            let apps = group("apps").expect("apps in the list");
            let v1 = apps.versions.iter().find(|v| v.version.as_deref() == Some("v1")).expect("apps/v1");
            let deployments =
                v1.resources.iter().find(|r| r.resource.as_deref() == Some("deployments")).expect("deployments");
            assert_eq!(deployments.scope.as_deref(), Some("Namespaced"));
            assert_eq!(deployments.short_names, ["deploy"]);
            assert!(deployments.verbs.iter().any(|v| v == "watch"), "{:?}", deployments.verbs);
            let scale = deployments.subresources.iter().find(|s| s.subresource.as_deref() == Some("scale")).unwrap();
            let kind = scale.response_kind.as_ref().unwrap();
            assert_eq!((kind.group.as_deref(), kind.kind.as_deref()), (Some("autoscaling"), Some("Scale")));
            let gadgets = &group("example.org").expect("the CRD's group").versions[0].resources[0];
            assert_eq!((gadgets.resource.as_deref(), gadgets.scope.as_deref()), (Some("gadgets"), Some("Cluster")));
        }
        let (ct, _, kind, raw) = fetch("/api", format!("{PB}, application/json")).await;
        assert_eq!((ct.as_str(), kind.as_str()), (PB, "APIVersions"));
        assert_eq!(meta::APIVersions::decode(raw.as_slice()).unwrap().versions, ["v1"]);
        let (_, _, kind, raw) = fetch("/apis", PB.to_string()).await;
        assert_eq!(kind, "APIGroupList");
        let groups = meta::APIGroupList::decode(raw.as_slice()).unwrap().groups;
        assert!(groups.iter().any(|g| g.name.as_deref() == Some("example.org")), "{groups:?}");
    });
}

/// `kubectl explain` of built-in kinds reads their full schemas from
/// `/openapi/v3` (upstream's descriptions, types, `-required-`, nested
/// references) with kubectl 1.27, 1.28, 1.33 and the newest.
#[test]
fn kubectl_explain_shows_builtin_schemas() {
    let Some(builds) = common::kubectl_builds([27, 28, 33]) else { return };
    for kubectl in builds {
        let which = kubectl.display().to_string();
        let s = Server::start_in(tempfile::tempdir().unwrap(), kubectl);
        let probe = s.ok(&["explain", "pod.spec.containers.livenessProbe"]);
        for want in [
            "FIELD: livenessProbe <Probe>",
            "Periodic probe of container liveness",
            "periodSeconds\t<integer>",
            "How often (in seconds) to perform the probe",
            "httpGet\t<HTTPGetAction>",
        ] {
            assert!(probe.contains(want), "{which}: {want:?} in\n{probe}");
        }
        let strategy = s.ok(&["explain", "deployment.spec.strategy", "--recursive"]);
        for want in [
            "GROUP:      apps",
            "FIELD: strategy <DeploymentStrategy>",
            "rollingUpdate\t<RollingUpdateDeployment>",
            "maxSurge\t<IntOrString>",
            "type\t<string>",
        ] {
            assert!(strategy.contains(want), "{which}: {want:?} in\n{strategy}");
        }
        let tz = s.ok(&["explain", "cronjob.spec.timeZone"]);
        assert!(
            tz.contains("FIELD: timeZone <string>") && tz.contains("The time zone name for the given schedule"),
            "{which}: {tz}"
        );
        let spec = s.ok(&["explain", "cj.spec"]);
        assert!(spec.contains("schedule\t<string> -required-"), "{which}: {spec}");
        // A kind of a group with several (rbac), and a cluster-scoped one.
        let role = s.ok(&["explain", "clusterrole.rules.verbs"]);
        assert!(
            role.contains("FIELD: verbs <[]string>") && role.contains("Verbs is a list of Verbs"),
            "{which}: {role}"
        );
    }
}

/// `kubectl explain` lists upstream's enum values of a field whose Go type
/// is an enum (`/openapi/v3`'s `enum`), with kubectl 1.33 and the newest.
#[test]
fn kubectl_explain_lists_enum_values() {
    let Some(builds) = common::kubectl_builds([33]) else { return };
    for kubectl in builds {
        let which = kubectl.display().to_string();
        let s = Server::start_in(tempfile::tempdir().unwrap(), kubectl);
        let pull = s.ok(&["explain", "pod.spec.containers.imagePullPolicy"]);
        assert!(pull.contains("ENUM:\n    Always\n    IfNotPresent\n    Never\n"), "{which}: {pull}");
        let policy = s.ok(&["explain", "cronjob.spec.concurrencyPolicy"]);
        assert!(policy.contains("ENUM:\n    Allow\n    Forbid\n    Replace\n"), "{which}: {policy}");
    }
}

/// `kubectl apply --validate=strict` of a built-in kind with a misspelt
/// field is refused naming the field, and nothing is stored.
#[test]
fn strict_validation_names_a_misspelt_field() {
    let Some(builds) = common::kubectl_builds([27, 28, 33]) else { return };
    for kubectl in builds {
        let which = kubectl.display().to_string();
        let s = Server::start_in(tempfile::tempdir().unwrap(), kubectl);
        let f = s.dir.path().join("typo.yaml");
        std::fs::write(
            &f,
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: typo}\nspec:\n  replicas: 1\n  selector: {matchLabels: {app: t}}\n  template:\n    metadata: {labels: {app: t}}\n    spec:\n      containers:\n      - name: c\n        image: busybox\n        imagePullPolcy: Never\n",
        )
        .unwrap();
        let err = s.fails(&["apply", "--validate=strict", "-f", f.to_str().unwrap()]);
        assert!(err.contains("imagePullPolcy"), "{which}: {err}");
        let get = s.run(&["get", "deployment", "typo"]);
        assert!(!get.status.success(), "{which}: stored after a refused apply");
    }
}

const TYPO: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: typo}\nspec:\n  replicas: 1\n  selector: {matchLabels: {app: t}}\n  template:\n    metadata: {labels: {app: t}}\n    spec:\n      containers:\n      - name: c\n        image: busybox\n        imagePullPolcy: Never\n        resources: {limits: {cpu: 1, memory: 10Mi}}\n        ports: [{containerPort: 80, protocol: TCP}]\n";

/// kubectl 1.20–1.26 read `/openapi/v2` in gnostic's protobuf:
/// `explain` of built-in kinds (upstream's descriptions, types, nested
/// references, `-required-`) and of a CRD's kind; `apply --validate=true`
/// of a misspelt field is refused naming it — by kubectl's own validation
/// against the v2 schemas (1.20–1.24) or through the `fieldValidation`
/// parameter the v2 paths advertise (1.25, 1.26) — and nothing is stored, while
/// the same object spelt right (an integer CPU, a port list) is accepted;
/// a second client-side apply merges a container's env and ports by key.
#[test]
fn old_kubectl_explains_and_validates_from_openapi_v2() {
    let Some(builds) = common::old_kubectls() else { return };
    for kubectl in builds {
        let which = kubectl.display().to_string();
        let s = Server::start_in(tempfile::tempdir().unwrap(), kubectl);
        let probe = s.ok(&["explain", "pod.spec.containers.livenessProbe"]);
        for want in
            ["RESOURCE: livenessProbe <Object>", "Periodic probe of container liveness", "periodSeconds\t<integer>"]
        {
            assert!(probe.contains(want), "{which}: {want:?} in\n{probe}");
        }
        let strategy = s.ok(&["explain", "deployment.spec.strategy", "--recursive"]);
        assert!(
            strategy.contains("VERSION:  apps/v1") && strategy.contains("maxSurge\t<string>"),
            "{which}: {strategy}"
        );
        let spec = s.ok(&["explain", "cj.spec"]);
        assert!(spec.contains("schedule\t<string> -required-"), "{which}: {spec}");

        let f = s.dir.path().join("typo.yaml");
        std::fs::write(&f, TYPO).unwrap();
        let err = s.fails(&["apply", "--validate=true", "-f", f.to_str().unwrap()]);
        assert!(err.contains("imagePullPolcy"), "{which}: {err}");
        assert!(!s.run(&["get", "deployment", "typo"]).status.success(), "{which}: stored after a refused apply");
        std::fs::write(&f, TYPO.replace("imagePullPolcy", "imagePullPolicy")).unwrap();
        s.ok(&["apply", "--validate=true", "-f", f.to_str().unwrap()]);

        // Client-side apply with the v2 patch metadata: env merges by name
        // (a variable another writer added survives), ports by containerPort.
        let web = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers:\n      - name: c\n        image: busybox\n        env: [{name: A, value: '1'}, {name: B, value: '2'}]\n        ports: [{containerPort: 80}, {containerPort: 81}]\n";
        let f = s.dir.path().join("web.yaml");
        std::fs::write(&f, web).unwrap();
        s.ok(&["apply", "-f", f.to_str().unwrap()]);
        let other =
            r#"{"spec":{"template":{"spec":{"containers":[{"name":"c","env":[{"name":"X","value":"kept"}]}]}}}}"#;
        s.ok(&["patch", "deployment", "web", "--type=strategic", "-p", other]);
        std::fs::write(&f, web.replace("{name: B, value: '2'}", "{name: C, value: '3'}").replace("81", "82")).unwrap();
        s.ok(&["apply", "-f", f.to_str().unwrap()]);
        let c = s.ok(&["get", "deployment", "web", "-o", "jsonpath={.spec.template.spec.containers[0].env[*].name} {.spec.template.spec.containers[0].ports[*].containerPort}"]);
        assert_eq!(c.trim(), "A C X 80 82", "{which}");

        install_crd_with_schema(&s);
        let gadget = s.ok(&["explain", "gizmo.spec"]);
        assert!(
            gadget.contains("size\t<string> -required-") && gadget.contains("replicas\t<integer>"),
            "{which}: {gadget}"
        );
        let f = s.dir.path().join("gizmo.yaml");
        std::fs::write(&f, "apiVersion: example.org/v1\nkind: Gizmo\nmetadata: {name: g}\nspec: {size: small, port: 80, colour: red}\n").unwrap();
        let err = s.fails(&["apply", "--validate=true", "-f", f.to_str().unwrap()]);
        assert!(err.contains("colour"), "{which}: {err}");
        std::fs::write(&f, "apiVersion: example.org/v1\nkind: Gizmo\nmetadata: {name: g, labels: {a: b}}\nspec: {size: small, port: http, extra: {any: 1}}\n").unwrap();
        s.ok(&["apply", "--validate=true", "-f", f.to_str().unwrap()]);
    }
}

const GIZMO_CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gizmos.example.org
spec:
  group: example.org
  scope: Namespaced
  names: {plural: gizmos, singular: gizmo, kind: Gizmo}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: string, enum: [small, large]}
              replicas: {type: integer, nullable: true}
              port: {x-kubernetes-int-or-string: true}
              extra: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;

fn install_crd_with_schema(s: &Server) {
    s.apply(GIZMO_CRD, &[]);
    s.ok(&["wait", "--for=condition=Established", "crd/gizmos.example.org", "--timeout=20s"]);
}

/// `/openapi/v2` on the wire: gnostic's protobuf when the Accept header
/// names it, JSON otherwise; each with its own ETag, answered with 304;
/// every built-in definition and the CRD's, upstream's list and patch
/// markers on them, and a new CRD changes the document.
#[test]
fn openapi_v2_negotiation_etag_and_definitions_on_the_wire() {
    let Some(s) = Server::start() else { return };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = rt.block_on(common::kube_client(&s));
    let raw = |accept: &str, tag: Option<&str>| {
        rt.block_on(async {
            let mut req = http::Request::get("/openapi/v2").header(http::header::ACCEPT, accept);
            if let Some(tag) = tag {
                req = req.header(http::header::IF_NONE_MATCH, tag);
            }
            let resp = client.send(req.body(kube::client::Body::empty()).unwrap()).await.unwrap();
            let h = |n: http::header::HeaderName| {
                resp.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
            };
            let (code, ct, etag) = (resp.status().as_u16(), h(http::header::CONTENT_TYPE), h(http::header::ETAG));
            (code, ct, etag, resp.into_body().collect_bytes().await.unwrap().to_vec())
        })
    };
    const PB: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";
    let (code, ct, pb_tag, pb) = raw(PB, None);
    assert_eq!((code, ct.as_str()), (200, "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"));
    assert_eq!(&pb[..5], b"\x0a\x032.0", "a gnostic Document starts with swagger: 2.0");
    let (code, ct, json_tag, body) = raw("application/json", None);
    assert_eq!((code, ct.as_str()), (200, "application/json"));
    assert_ne!(pb_tag, json_tag);
    assert_eq!(raw(PB, Some(&pb_tag)).0, 304);
    assert_eq!(raw("application/json", Some(&json_tag)).0, 304);
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let defs = doc["definitions"].as_object().unwrap();
    assert!(defs.len() > 600, "{}", defs.len());
    let ports = &defs["io.k8s.api.core.v1.Container"]["properties"]["ports"];
    assert_eq!(ports["x-kubernetes-list-type"], "map");
    assert_eq!(ports["x-kubernetes-list-map-keys"], serde_json::json!(["containerPort", "protocol"]));
    assert_eq!(ports["x-kubernetes-patch-merge-key"], "containerPort");
    let volumes = &defs["io.k8s.api.core.v1.PodSpec"]["properties"]["volumes"];
    assert_eq!(volumes["x-kubernetes-patch-strategy"], "merge,retainKeys");
    assert_eq!(defs["io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector"]["x-kubernetes-map-type"], "atomic");
    let pull = &defs["io.k8s.api.core.v1.Container"]["properties"]["imagePullPolicy"];
    assert_eq!(pull["enum"], serde_json::json!(["Always", "IfNotPresent", "Never"]));

    install_crd_with_schema(&s);
    assert_eq!(raw("application/json", Some(&json_tag)).0, 200, "a new CRD must change the document");
    let (_, _, _, body) = raw("application/json", None);
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let gizmo = &doc["definitions"]["org.example.v1.Gizmo"];
    assert_eq!(gizmo["x-kubernetes-group-version-kind"][0]["kind"], "Gizmo");
    assert_eq!(gizmo["properties"]["spec"]["properties"]["port"]["format"], "int-or-string");
    assert_eq!(
        gizmo["properties"]["metadata"]["$ref"],
        "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    );
    let patch = &doc["paths"]["/apis/example.org/v1/namespaces/{namespace}/gizmos/{name}"]["patch"];
    assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Gizmo");
}

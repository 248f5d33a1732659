//! CustomResourceDefinitions driven by a real kubectl: a CRD established
//! and discovered (short names, categories, `get all`), custom objects
//! through every verb and patch type, the status and scale subresources,
//! printer columns, schema pruning, defaulting and validation, two served
//! versions, watch, RBAC on a custom resource, an invalid CRD, and
//! deleting the CRD with its objects.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::Server;
use orchestrator_http::pki;

const CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd], categories: [all]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.replicas, labelSelectorPath: .status.selector}
    additionalPrinterColumns:
    - {name: Size, type: string, jsonPath: .spec.size}
    - {name: Replicas, type: integer, jsonPath: .spec.replicas}
    - {name: Ready, type: string, jsonPath: '.status.conditions[?(@.type=="Ready")].status'}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: string, enum: [small, large]}
              replicas: {type: integer, minimum: 0, maximum: 10, default: 1}
              color: {type: string, pattern: '^[a-z]+$', default: blue}
              port: {x-kubernetes-int-or-string: true}
              extra: {type: object, x-kubernetes-preserve-unknown-fields: true}
          status:
            type: object
            properties:
              replicas: {type: integer}
              selector: {type: string}
              conditions:
                type: array
                items:
                  type: object
                  properties:
                    type: {type: string}
                    status: {type: string}
  - name: v1beta1
    served: true
    storage: false
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;

const WIDGET: &str = "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: a, labels: {tier: front}}\n\
                      spec: {size: small, port: http, extra: {any: {thing: 1}}}\n";

fn install(s: &Server) {
    s.apply(CRD, &[]);
    s.ok(&["wait", "--for=condition=Established", "crd/widgets.example.com", "--timeout=20s"]);
}

/// The JSON of `kubectl get <args> -o json`.
fn json(s: &Server, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend(["-o", "json"]);
    serde_json::from_str(&s.ok(&a)).unwrap()
}

#[test]
fn custom_objects_through_every_verb() {
    let Some(s) = Server::start() else { return };
    install(&s);
    // Discovery right after Established: short name, category, the CRD itself.
    let crd = json(&s, &["crd", "widgets.example.com"]);
    assert_eq!(crd["status"]["acceptedNames"]["kind"], "Widget");
    assert_eq!(crd["status"]["storedVersions"], serde_json::json!(["v1"]));
    let res = s.ok(&["api-resources", "--api-group=example.com"]);
    assert!(res.contains("widgets") && res.contains("wd") && res.contains("Widget"), "{res}");
    let out = s.apply(WIDGET, &[]);
    assert!(out.contains("widget.example.com/a created"), "{out}");
    // Defaults filled, preserved fields kept, generation 1.
    let w = json(&s, &["wd", "a"]);
    assert_eq!(w["spec"]["replicas"], 1);
    assert_eq!(w["spec"]["color"], "blue");
    assert_eq!(w["spec"]["extra"]["any"]["thing"], 1);
    assert_eq!(w["metadata"]["generation"], 1);
    // A default added to the schema later shows on objects already stored.
    let mode = r#"[{"op":"add","path":"/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/mode","value":{"type":"string","default":"fast"}}]"#;
    s.ok(&["patch", "crd", "widgets.example.com", "--type=json", "-p", mode]);
    assert_eq!(json(&s, &["wd", "a"])["spec"]["mode"], "fast");
    assert_eq!(json(&s, &["wd", "a"])["metadata"]["generation"], 1);
    // Printer columns and `get all`.
    let get = s.ok(&["get", "widgets"]);
    let header: Vec<&str> = get.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "SIZE", "REPLICAS", "READY", "AGE"], "{get}");
    assert!(get.lines().nth(1).unwrap().starts_with("a "), "{get}");
    assert!(get.contains("small"), "{get}");
    let all = s.ok(&["get", "all"]);
    assert!(all.contains("widget.example.com/a"), "{all}");
    // Field and label selectors.
    assert!(s.ok(&["get", "wd", "--field-selector", "metadata.name=a", "-o", "name"]).contains("widget.example.com/a"));
    assert!(s.ok(&["get", "wd", "--field-selector", "metadata.name=b", "-o", "name"]).is_empty());
    assert!(s.ok(&["get", "wd", "-l", "tier=front", "-o", "name"]).contains("widget.example.com/a"));
    assert!(s.ok(&["get", "wd", "-l", "tier=back", "-o", "name"]).is_empty());
    assert!(s.ok(&["get", "wd", "-A", "--field-selector", "metadata.namespace=default", "-o", "name"]).contains("/a"));
    // Merge and JSON patches bump the generation; strategic merge is refused as upstream.
    s.ok(&["patch", "wd", "a", "--type=merge", "-p", r#"{"spec":{"replicas":2}}"#]);
    s.ok(&["patch", "wd", "a", "--type=json", "-p", r#"[{"op":"replace","path":"/spec/size","value":"large"}]"#]);
    let w = json(&s, &["wd", "a"]);
    assert_eq!((w["spec"]["replicas"].as_i64(), w["spec"]["size"].as_str()), (Some(2), Some("large")));
    assert_eq!(w["metadata"]["generation"], 3);
    let err = s.fails(&["patch", "wd", "a", "--type=strategic", "-p", r#"{"spec":{"replicas":3}}"#]);
    assert!(
        err.contains("application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"),
        "{err}"
    );
    // Status: ignored on the main resource, spec ignored on status writes.
    s.ok(&["patch", "wd", "a", "--type=merge", "-p", r#"{"status":{"replicas":9}}"#]);
    assert!(json(&s, &["wd", "a"]).get("status").is_none());
    let status = r#"{"spec":{"replicas":7},"status":{"replicas":2,"selector":"app=w","conditions":[{"type":"Ready","status":"True"}]}}"#;
    s.ok(&["patch", "wd", "a", "--subresource=status", "--type=merge", "-p", status]);
    let w = json(&s, &["wd", "a"]);
    assert_eq!((w["spec"]["replicas"].as_i64(), w["status"]["replicas"].as_i64()), (Some(2), Some(2)));
    assert_eq!(w["metadata"]["generation"], 3, "a status write leaves the generation");
    let get = s.ok(&["get", "wd", "a", "--no-headers"]);
    assert!(get.split_whitespace().nth(3) == Some("True"), "{get}");
    // Scale maps the CRD's paths.
    let scale: serde_json::Value =
        serde_json::from_str(&s.ok(&["get", "--raw", "/apis/example.com/v1/namespaces/default/widgets/a/scale"]))
            .unwrap();
    assert_eq!((scale["spec"]["replicas"].as_i64(), scale["status"]["replicas"].as_i64()), (Some(2), Some(2)));
    assert_eq!(scale["status"]["selector"], "app=w");
    s.ok(&["scale", "wd", "a", "--replicas=5"]);
    assert_eq!(json(&s, &["wd", "a"])["spec"]["replicas"], 5);
    // Server-side apply creates and owns fields; a second manager conflicts.
    let b = "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: b}\nspec: {size: large, replicas: 4}\n";
    s.apply(b, &["--server-side"]);
    assert_eq!(json(&s, &["wd", "b"])["spec"]["replicas"], 4);
    let b2 = "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: b}\nspec: {size: large, replicas: 6}\n";
    let f = s.dir.path().join("b2.yaml");
    std::fs::write(&f, b2).unwrap();
    let err = s.fails(&["apply", "--server-side", "--field-manager=other", "-f", f.to_str().unwrap()]);
    assert!(err.contains("conflict"), "{err}");
    // The second served version reads the same objects, apiVersion rewritten.
    let beta = json(&s, &["widgets.v1beta1.example.com", "b"]);
    assert_eq!(beta["apiVersion"], "example.com/v1beta1");
    assert_eq!(beta["spec"]["replicas"], 4);
    // Update with a stale resourceVersion is a conflict.
    let mut stale = json(&s, &["wd", "b"]);
    s.ok(&["label", "wd", "b", "x=y"]);
    stale["metadata"]["labels"] = serde_json::json!({"x": "z"});
    let f = s.dir.path().join("stale.json");
    std::fs::write(&f, stale.to_string()).unwrap();
    let err = s.fails(&["replace", "-f", f.to_str().unwrap()]);
    assert!(err.contains("the object has been modified"), "{err}");
    // delete and deletecollection.
    s.ok(&["delete", "wd", "b"]);
    s.apply(&WIDGET.replace("name: a", "name: c"), &[]);
    s.ok(&["delete", "wd", "--all"]);
    assert!(s.ok(&["get", "wd", "-o", "name"]).is_empty());
}

#[test]
fn schema_violations_and_invalid_crds_are_422_and_store_nothing() {
    let Some(s) = Server::start() else { return };
    install(&s);
    let bad = "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: bad}\nspec: {size: huge, replicas: 11, color: Red}\n";
    let f = s.dir.path().join("bad.yaml");
    std::fs::write(&f, bad).unwrap();
    let err = s.fails(&["create", "-f", f.to_str().unwrap()]);
    assert!(err.contains("Widget \"bad\" is invalid"), "{err}");
    assert!(err.contains("spec.size: Unsupported value: \"huge\": supported values: \"small\", \"large\""), "{err}");
    assert!(
        err.contains("spec.replicas: Invalid value: 11: spec.replicas in body should be less than or equal to 10"),
        "{err}"
    );
    assert!(err.contains("spec.color: Invalid value: \"Red\": spec.color in body should match '^[a-z]+$'"), "{err}");
    let typed = "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: bad}\nspec: {size: small, replicas: two}\n";
    std::fs::write(&f, typed).unwrap();
    let err = s.fails(&["create", "-f", f.to_str().unwrap()]);
    assert!(
        err.contains(
            "spec.replicas: Invalid value: \"string\": spec.replicas in body must be of type integer: \"string\""
        ),
        "{err}"
    );
    let missing = "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: bad}\nspec: {replicas: 1}\n";
    std::fs::write(&f, missing).unwrap();
    assert!(s.fails(&["create", "-f", f.to_str().unwrap()]).contains("spec.size: Required value"));
    // Unknown fields: refused with kubectl's strict validation, pruned without it.
    let unknown = "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: u}\nspec: {size: small, bogus: 1}\n";
    std::fs::write(&f, unknown).unwrap();
    let err = s.fails(&["create", "--validate=strict", "-f", f.to_str().unwrap()]);
    assert!(err.contains("unknown field \"spec.bogus\""), "{err}");
    s.ok(&["create", "--validate=false", "-f", f.to_str().unwrap()]);
    assert!(json(&s, &["wd", "u"])["spec"].get("bogus").is_none());
    s.ok(&["delete", "wd", "u"]);
    assert!(s.ok(&["get", "wd", "-o", "name"]).is_empty(), "nothing stored");
    // An invalid CRD.
    let crd = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: gadgets.example.org}
spec:
  group: example
  scope: Everywhere
  names: {plural: things, kind: Gadget}
  versions:
  - {name: v1, served: true, storage: true, schema: {openAPIV3Schema: {type: object, properties: {spec: {properties: {a: {type: string}}}, list: {type: array}}}}}
  - {name: v2, served: true, storage: true, schema: {openAPIV3Schema: {type: object}}}
"#;
    std::fs::write(&f, crd).unwrap();
    let err = s.fails(&["create", "-f", f.to_str().unwrap()]);
    assert!(err.contains("CustomResourceDefinition \"gadgets.example.org\" is invalid"), "{err}");
    for want in [
        "metadata.name: Invalid value: \"gadgets.example.org\": must be spec.names.plural+\".\"+spec.group",
        "spec.group: Invalid value: \"example\": should be a domain with at least one dot",
        "spec.scope: Unsupported value: \"Everywhere\": supported values: \"Cluster\", \"Namespaced\"",
        "spec.versions: Invalid value: [\"v1\",\"v2\"]: must have exactly one version marked as storage version",
        "spec.versions[0].schema.openAPIV3Schema.properties[spec].type: Required value: must not be empty for specified object fields",
        "spec.versions[0].schema.openAPIV3Schema.properties[list].items: Required value: must be specified",
    ] {
        assert!(err.contains(want), "missing {want:?} in {err}");
    }
    assert!(s.fails(&["get", "crd", "gadgets.example.org"]).contains("NotFound"));
    // Required fields missing: 422 with their paths, not a decoding error.
    let crd = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: things.example.org}\n\
               spec: {group: example.org, names: {plural: things}}\n";
    std::fs::write(&f, crd).unwrap();
    let err = s.fails(&["create", "-f", f.to_str().unwrap()]);
    for want in ["spec.scope: Required value", "spec.names.kind: Required value", "spec.versions: Invalid value"] {
        assert!(err.contains(want), "missing {want:?} in {err}");
    }
}

#[test]
fn deleting_the_crd_deletes_its_objects_and_stops_serving() {
    let Some(s) = Server::start() else { return };
    install(&s);
    s.ok(&["create", "namespace", "other"]);
    s.apply(WIDGET, &[]);
    s.apply(&WIDGET.replace("metadata: {", "metadata: {namespace: other, "), &[]);
    assert_eq!(s.ok(&["get", "wd", "-A", "-o", "name"]).lines().count(), 2);
    // A watch sees the objects change and go.
    let mut watch = s
        .cmd(&s.kubeconfig(), &["get", "wd", "-n", "default", "--watch", "--output-watch-events", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut events =
        serde_json::Deserializer::from_reader(watch.stdout.take().unwrap()).into_iter::<serde_json::Value>();
    let mut next = || {
        let e = events.next().unwrap().unwrap();
        (e["type"].as_str().unwrap().to_string(), e["object"]["metadata"]["name"].as_str().unwrap().to_string())
    };
    assert_eq!(next(), ("ADDED".to_string(), "a".to_string()));
    s.ok(&["label", "wd", "a", "seen=yes"]);
    assert_eq!(next(), ("MODIFIED".to_string(), "a".to_string()));
    s.ok(&["delete", "wd", "a"]);
    assert_eq!(next(), ("DELETED".to_string(), "a".to_string()));
    let _ = watch.kill();
    let _ = watch.wait();
    // A namespace going takes its custom objects with it.
    s.ok(&["create", "namespace", "gone"]);
    s.apply(&WIDGET.replace("metadata: {", "metadata: {namespace: gone, "), &[]);
    s.ok(&["delete", "namespace", "gone", "--timeout=20s"]);
    assert!(s.ok(&["get", "wd", "-A", "-o", "name"]).lines().count() == 1, "only other/a is left");
    s.ok(&["delete", "crd", "widgets.example.com"]);
    let err = s.fails(&["get", "--raw", "/apis/example.com/v1/namespaces/other/widgets"]);
    assert!(err.contains("NotFound") || err.contains("not found"), "{err}");
    // Created again, the CRD serves an empty collection: the objects went with it.
    install(&s);
    let list = s.ok(&["get", "--raw", "/apis/example.com/v1/widgets"]);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["items"], serde_json::json!([]), "{list}");
}

#[test]
fn rbac_rules_name_the_group_and_plural() {
    let Some(s) = Server::start() else { return };
    install(&s);
    s.apply(WIDGET, &[]);
    let ca = pki::load_or_generate_ca(&s.dir.path().join("ca.crt"), &s.dir.path().join("ca.key")).unwrap();
    let cert = pki::issue_client(&ca, "wanda", "").unwrap();
    let kc: PathBuf = s.dir.path().join("wanda.kubeconfig");
    std::fs::write(&kc, pki::kubeconfig(&format!("https://{}", s.address), &ca, &cert, "wanda")).unwrap();
    s.apply(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: widget-reader, namespace: default}\n\
         rules: [{apiGroups: [example.com], resources: [widgets], verbs: [get, list]}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: wanda, namespace: default}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: widget-reader}\n\
         subjects: [{kind: User, name: wanda, apiGroup: rbac.authorization.k8s.io}]\n",
        &[],
    );
    let out = s.until_ok(&kc, &["get", "widgets.example.com", "-o", "name"]);
    assert!(out.contains("widget.example.com/a"), "{out}");
    let refused = |args: &[&str]| {
        let out = s.cmd(&kc, args).output().unwrap();
        assert!(!out.status.success(), "{args:?} should be refused");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refused(&["delete", "widgets.example.com", "a"]);
    assert!(
        err.contains("User \"wanda\" cannot delete resource \"widgets\" in API group \"example.com\" in the namespace \"default\""),
        "{err}"
    );
    let err = refused(&["patch", "widgets.example.com", "a", "--subresource=status", "--type=merge", "-p", "{}"]);
    assert!(err.contains("resource \"widgets/status\" in API group \"example.com\""), "{err}");
    assert!(refused(&["get", "widgets.example.com", "-n", "kube-system"]).contains("forbidden"));
}

/// The pinned kubectl builds (1.27–1.33, where present) and the PyPI one
/// create a CRD, wait for it and list its objects with printer columns.
#[test]
fn each_kubectl_discovers_a_new_crd() {
    let Some(builds) = common::kubectl_builds([27, 30, 33]) else { return };
    for kubectl in builds {
        let s = Server::start_in(tempfile::tempdir().unwrap(), kubectl.clone());
        let which = kubectl.display().to_string();
        install(&s);
        s.apply(WIDGET, &[]);
        let get = s.ok(&["get", "wd"]);
        assert!(get.starts_with("NAME") && get.contains("SIZE") && get.contains("small"), "{which}: {get}");
        let w = s
            .wait_for(&["get", "widget", "a", "-o", "jsonpath={.spec.replicas}"], Duration::from_secs(5), |o| o == "1");
        assert_eq!(w, "1", "{which}");
        s.ok(&["delete", "crd", "widgets.example.com"]);
    }
}

async fn kube_client(kubeconfig: &std::path::Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
    kube::Client::try_from(cfg).unwrap()
}

/// kube-rs' dynamic API on custom objects, and content negotiation:
/// protobuf asked first with a JSON fallback is answered in JSON; a
/// protobuf body is a 415 (custom objects are JSON-only upstream).
#[test]
fn kube_rs_dynamic_objects_and_json_only_negotiation() {
    use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
    let Some(s) = Server::start() else { return };
    install(&s);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = kube_client(&s.kubeconfig()).await;
        let gvk = kube::api::GroupVersionKind::gvk("example.com", "v1", "Widget");
        let ar = ApiResource::from_gvk_with_plural(&gvk, "widgets");
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
        let mut w = DynamicObject::new("k", &ar);
        w.data = serde_json::json!({"spec": {"size": "large"}});
        let created = api.create(&PostParams::default(), &w).await.unwrap();
        assert_eq!(created.data["spec"]["replicas"], 1, "defaulted");
        let listed = api.list(&ListParams::default().fields("metadata.name=k")).await.unwrap();
        assert_eq!(listed.items.len(), 1);
        let req = http::Request::builder()
            .uri("/apis/example.com/v1/namespaces/default/widgets/k")
            .header("accept", "application/vnd.kubernetes.protobuf, application/json")
            .body(Vec::new())
            .unwrap();
        let text = client.request_text(req).await.unwrap();
        let o: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(o["kind"], "Widget");
        let req = http::Request::builder()
            .method("POST")
            .uri("/apis/example.com/v1/namespaces/default/widgets")
            .header("content-type", "application/vnd.kubernetes.protobuf")
            .body(b"k8s\0\x0a\x00".to_vec())
            .unwrap();
        match client.request_text(req).await {
            Err(kube::Error::Api(e)) => assert_eq!((e.code, e.reason.as_str()), (415, "UnsupportedMediaType"), "{e:?}"),
            other => panic!("a protobuf custom object: {other:?}"),
        }
    });
}

/// Two API servers on one etcd: a CRD created through one is served by the
/// other (it follows CRD writes through its watch), and stops being served
/// there when deleted.
#[test]
fn a_crd_written_through_one_api_server_is_served_by_another() {
    use orchestrator_store_etcd::local::{self, LocalCluster};
    let Some(kubectl) = common::kubectl() else { return };
    if !local::available() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI: etcd is missing (scripts/setup-debian.sh)");
        eprintln!("SKIPPED: no etcd");
        return;
    }
    let etcd = LocalCluster::start(1).unwrap();
    let a = Server::start_on_etcd(tempfile::tempdir().unwrap(), kubectl.clone(), &etcd.url(), "warn", &[]);
    let (ca, key) = (a.dir.path().join("ca.crt"), a.dir.path().join("ca.key"));
    let extra = ["--ca-cert", ca.to_str().unwrap(), "--ca-key", key.to_str().unwrap(), "--controllers=false"];
    let b = Server::start_on_etcd(tempfile::tempdir().unwrap(), kubectl, &etcd.url(), "warn", &extra);
    install(&a);
    b.wait_for(&["get", "--raw", "/apis/example.com/v1/widgets"], Duration::from_secs(20), |o| {
        o.contains("WidgetList")
    });
    b.apply(WIDGET, &[]);
    assert!(a.ok(&["get", "wd", "-o", "name"]).contains("widget.example.com/a"));
    a.ok(&["delete", "crd", "widgets.example.com"]);
    let start = std::time::Instant::now();
    while b.run(&["get", "--raw", "/apis/example.com/v1/widgets"]).status.success() {
        assert!(start.elapsed() < Duration::from_secs(20), "B still serves widgets");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `kubectl explain` of a custom kind reads its CRD's schema from
/// `/openapi/v3`: the kind, a field's type and the fields under it
/// (kubectl 1.28, 1.33 and the newest).
#[test]
fn kubectl_explain_reads_the_crds_schema() {
    let Some(builds) = common::kubectl_builds([28, 33]) else { return };
    for kubectl in builds {
        explain_with(&Server::start_in(tempfile::tempdir().unwrap(), kubectl));
    }
}

fn explain_with(s: &Server) {
    install(s);
    let kind = s.ok(&["explain", "widgets"]);
    assert!(kind.contains("KIND:") && kind.contains("Widget") && kind.contains("example.com"), "{kind}");
    assert!(kind.contains("spec") && kind.contains("status"), "{kind}");
    // What every object has, added to the CRD's own schema as upstream does.
    for field in ["apiVersion\t<string>", "kind\t<string>", "metadata\t<ObjectMeta>"] {
        assert!(kind.contains(field), "{field}: {kind}");
    }
    let labels = s.ok(&["explain", "widgets.metadata.labels"]);
    assert!(labels.contains("FIELD: labels <map[string]string>"), "{labels}");
    let spec = s.ok(&["explain", "widgets.spec"]);
    for field in ["size", "replicas", "color", "port", "extra"] {
        assert!(spec.contains(field), "{field}: {spec}");
    }
    assert!(spec.contains("-required-"), "{spec}");
    let replicas = s.ok(&["explain", "widget.spec.replicas"]);
    assert!(replicas.contains("FIELD: replicas <integer>"), "{replicas}");
    let recursive = s.ok(&["explain", "wd.status", "--recursive"]);
    assert!(recursive.contains("conditions") && recursive.contains("type"), "{recursive}");
}

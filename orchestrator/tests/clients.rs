//! The API server driven by the clients people write programs with: the
//! Python `kubernetes` client (PyPI) and kube-rs — create, list with a
//! selector, watch, merge / strategic-merge / server-side-apply patches,
//! typed deletes, and errors as those clients see them (a Status's bytes); metadata-only reads
//! (`PartialObjectMetadata`) in protobuf and JSON.

mod common;

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};

const PYTHON_TEST: &str = r#"
import sys, threading
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

config.load_kube_config(config_file=sys.argv[1])
v1 = client.CoreV1Api()
ns = "default"
cm = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py", labels={"app": "py"}), data={"a": "1"})
created = v1.create_namespaced_config_map(ns, cm)
assert created.metadata.resource_version, created

# A watch from the created version sees the patches that follow.
seen = []
def watcher():
    w = watch.Watch()
    for ev in w.stream(v1.list_namespaced_config_map, ns, label_selector="app=py",
                       resource_version=created.metadata.resource_version, timeout_seconds=20):
        seen.append((ev["type"], dict(ev["object"].data or {})))
        if len(seen) == 2:
            w.stop()
t = threading.Thread(target=watcher)
t.start()
import time; time.sleep(1)

# The client's default patch content type is strategic merge for dicts.
v1.patch_namespaced_config_map("py", ns, {"data": {"b": "2"}})
# A JSON patch (list body).
v1.patch_namespaced_config_map("py", ns, [{"op": "replace", "path": "/data/a", "value": "9"}])
t.join(25)
assert seen == [("MODIFIED", {"a": "1", "b": "2"}), ("MODIFIED", {"a": "9", "b": "2"})], seen

items = v1.list_namespaced_config_map(ns, label_selector="app=py").items
assert [i.metadata.name for i in items] == ["py"], items
assert v1.list_namespaced_config_map(ns, label_selector="app=other").items == []

try:
    v1.create_namespaced_config_map(ns, cm)
    raise SystemExit("a duplicate create succeeded")
except ApiException as e:
    assert e.status == 409 and "AlreadyExists" in e.body, (e.status, e.body)

v1.delete_namespaced_config_map("py", ns)
try:
    v1.read_namespaced_config_map("py", ns)
    raise SystemExit("read after delete succeeded")
except ApiException as e:
    assert e.status == 404 and "NotFound" in e.body, (e.status, e.body)

# The kinds whose DELETE answers with the deleted object (upstream's
# OpenAPI says V1Service, V1Pod): the client decodes into that type.
svc = client.V1Service(metadata=client.V1ObjectMeta(name="py-svc"),
                       spec=client.V1ServiceSpec(ports=[client.V1ServicePort(port=80)]))
v1.create_namespaced_service(ns, svc)
gone = v1.delete_namespaced_service("py-svc", ns)
assert isinstance(gone, client.V1Service) and gone.metadata.name == "py-svc", gone
pod = client.V1Pod(metadata=client.V1ObjectMeta(name="py-pod"),
                   spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")]))
v1.create_namespaced_pod(ns, pod)
gone = v1.delete_namespaced_pod("py-pod", ns)
assert isinstance(gone, client.V1Pod) and gone.metadata.name == "py-pod", gone

# An error's body as the client prints it (create_from_yaml's
# FailToCreateError): upstream's Status, byte for byte.
from kubernetes import utils
doc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "py-twice"}, "spec": {"ports": [{"port": 99}]}}
utils.create_from_dict(client.ApiClient(), doc, namespace=ns)
try:
    utils.create_from_dict(client.ApiClient(), doc, namespace=ns)
    raise SystemExit("a second create succeeded")
except utils.FailToCreateError as e:
    want = ('Error from server (Conflict): {"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",'
            '"message":"services \\"py-twice\\" already exists","reason":"AlreadyExists",'
            '"details":{"name":"py-twice","kind":"services"},"code":409}\n')
    assert str(e) == want, str(e)
print("python client: ok")
"#;

#[test]
fn python_kubernetes_client_creates_watches_patches_and_sees_errors() {
    let (Some(server), Some(py)) = (common::Server::start(), common::venv_python("kubernetes")) else { return };
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("client_test.py");
    std::fs::write(&script, PYTHON_TEST).unwrap();
    let out = std::process::Command::new(py).arg(&script).arg(server.kubeconfig()).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "python client test failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("python client: ok"), "{stdout}");
}

/// A kube-rs client from the server's admin kubeconfig.
async fn kube_client(server: &common::Server) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(server.kubeconfig()).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
    kube::Client::try_from(cfg).unwrap()
}

/// What a protobuf response (or a watch event's object) carries: the
/// `k8s\0` magic, then a `runtime.Unknown` with the type and the raw object.
fn unknown(bytes: &[u8]) -> k8s_pb::apimachinery::pkg::runtime::Unknown {
    use prost::Message as _;
    k8s_pb::apimachinery::pkg::runtime::Unknown::decode(bytes.strip_prefix(b"k8s\0").expect("k8s\\0 magic")).unwrap()
}

/// The first `WatchEvent` of a protobuf watch stream (frames of a 4-byte
/// big-endian length and the event).
fn first_watch_event(bytes: &[u8]) -> k8s_pb::apimachinery::pkg::apis::meta::v1::WatchEvent {
    use prost::Message as _;
    let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
    k8s_pb::apimachinery::pkg::apis::meta::v1::WatchEvent::decode(&bytes[4..4 + len]).unwrap()
}

#[test]
fn kube_rs_creates_watches_patches_and_applies() {
    let Some(server) = common::Server::start() else { return };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = kube_client(&server).await;
        let cms: Api<ConfigMap> = Api::namespaced(client, "default");

        let mut cm: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "rs", "labels": {"app": "rs"}},
            "data": {"a": "1"}
        }))
        .unwrap();
        let created = cms.create(&PostParams::default(), &cm).await.unwrap();
        let rv = created.metadata.resource_version.clone().unwrap();

        // Watch from the created version while a merge patch changes it.
        let wp = WatchParams::default().labels("app=rs").timeout(20);
        let mut events = Box::pin(cms.watch(&wp, &rv).await.unwrap());
        cms.patch("rs", &PatchParams::default(), &Patch::Merge(serde_json::json!({"data": {"b": "2"}}))).await.unwrap();
        let ev = tokio::time::timeout(Duration::from_secs(20), futures_util::StreamExt::next(&mut events))
            .await
            .expect("a watch event")
            .unwrap()
            .unwrap();
        match ev {
            WatchEvent::Modified(o) => {
                assert_eq!(o.data.unwrap().get("b").map(String::as_str), Some("2"));
            }
            other => panic!("expected MODIFIED, got {other:?}"),
        }

        // Server-side apply from a second manager: a conflict, then forced.
        let apply = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "rs"}, "data": {"a": "from-apply"}
        });
        let first = cms.patch("rs", &PatchParams::apply("tool-a"), &Patch::Apply(&apply)).await;
        // The field belongs to the creating manager: a conflict (409) unless forced.
        if let Err(kube::Error::Api(e)) = &first {
            assert_eq!(e.code, 409, "{e:?}");
        }
        let applied = cms.patch("rs", &PatchParams::apply("tool-a").force(), &Patch::Apply(&apply)).await.unwrap();
        assert_eq!(applied.data.as_ref().and_then(|d| d.get("a")).map(String::as_str), Some("from-apply"));
        let managers: Vec<String> =
            applied.metadata.managed_fields.unwrap_or_default().into_iter().filter_map(|m| m.manager).collect();
        assert!(managers.iter().any(|m| m == "tool-a"), "{managers:?}");

        let list = cms.list(&ListParams::default().labels("app=rs")).await.unwrap();
        assert_eq!(list.items.len(), 1);
        cm.metadata.name = Some("rs".into());
        match cms.create(&PostParams::default(), &cm).await {
            Err(kube::Error::Api(e)) => assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists")),
            other => panic!("a duplicate create: {other:?}"),
        }
        cms.delete("rs", &DeleteParams::default()).await.unwrap();
        match cms.get("rs").await {
            Err(kube::Error::Api(e)) => assert_eq!((e.code, e.reason.as_str()), (404, "NotFound")),
            other => panic!("get after delete: {other:?}"),
        }
    });
}

/// YAML bodies, as `curl --data-binary @cm.yaml -H 'Content-Type:
/// application/yaml'` sends them: created; malformed YAML is a 400 Status
/// and stores nothing.
#[test]
fn yaml_bodies_are_accepted_and_malformed_ones_refused() {
    let Some(server) = common::Server::start() else { return };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = kube_client(&server).await;
        let post = |body: &str, ct: &str, method: &str, path: &str| {
            http::Request::builder()
                .method(method)
                .uri(path)
                .header("content-type", ct)
                .body(body.as_bytes().to_vec())
                .unwrap()
        };
        let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\ndata:\n  k: v # a comment\n";
        let path = "/api/v1/namespaces/default/configmaps";
        client.request_text(post(yaml, "application/yaml", "POST", path)).await.unwrap();
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        let got = cms.get("from-yaml").await.unwrap();
        assert_eq!(got.data.unwrap().get("k").map(String::as_str), Some("v"));

        // Server-side apply with a YAML body.
        let apply = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\ndata:\n  x: \"1\"\n";
        let ssa = format!("{path}/applied?fieldManager=yaml-test");
        client.request_text(post(apply, "application/apply-patch+yaml", "PATCH", &ssa)).await.unwrap();
        assert!(cms.get("applied").await.is_ok());

        let bad = "apiVersion: v1\nkind: ConfigMap\nmetadata: [unclosed\n";
        match client.request_text(post(bad, "application/yaml", "POST", path)).await {
            Err(kube::Error::Api(e)) => {
                assert_eq!((e.code, e.reason.as_str()), (400, "BadRequest"), "{e:?}");
                assert!(e.message.contains("not valid YAML"), "{e:?}");
            }
            other => panic!("malformed YAML: {other:?}"),
        }
        let names: Vec<String> =
            cms.list(&ListParams::default()).await.unwrap().items.into_iter().filter_map(|c| c.metadata.name).collect();
        assert!(
            names.iter().all(|n| ["from-yaml", "applied", "kube-root-ca.crt"].contains(&n.as_str())),
            "nothing else was stored: {names:?}"
        );
    });
}

/// `Accept` as upstream negotiates it: client-go's "protobuf, else JSON"
/// is answered in protobuf (read back here with k8s-pb's prost types, a
/// Go-less protobuf client), JSON listed first is answered in JSON, and a
/// list with nothing the server produces gets a 406 NotAcceptable Status.
#[test]
fn accept_lists_pick_protobuf_or_json_or_get_406() {
    use prost::Message as _;
    let Some(server) = common::Server::start() else { return };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = kube_client(&server).await;
        let get = |path: &str, accept: &str| {
            http::Request::builder().uri(path).header("accept", accept).body(Vec::new()).unwrap()
        };
        let cms = Api::<ConfigMap>::namespaced(client.clone(), "default");
        let cm = ConfigMap {
            metadata: ObjectMeta { name: Some("pb".into()), ..Default::default() },
            data: Some([("k".to_string(), "v".to_string())].into()),
            ..Default::default()
        };
        cms.create(&PostParams::default(), &cm).await.unwrap();
        for (path, kind) in [
            ("/api/v1/namespaces/default/configmaps", "ConfigMapList"),
            ("/api/v1/namespaces/default/configmaps/pb", "ConfigMap"),
        ] {
            for accept in
                ["application/vnd.kubernetes.protobuf, application/json", "application/vnd.kubernetes.protobuf"]
            {
                let req = get(path, accept).map(kube::client::Body::from);
                let resp = client.send(req).await.unwrap();
                assert_eq!(resp.status(), 200);
                assert_eq!(resp.headers()["content-type"], "application/vnd.kubernetes.protobuf", "{accept}");
                let bytes = resp.into_body().collect_bytes().await.unwrap();
                let unknown = unknown(&bytes);
                assert_eq!(unknown.type_meta.and_then(|t| t.kind).as_deref(), Some(kind));
                let raw = unknown.raw.unwrap_or_default();
                let data = if kind == "ConfigMap" {
                    k8s_pb::api::core::v1::ConfigMap::decode(raw.as_slice()).unwrap().data
                } else {
                    let list = k8s_pb::api::core::v1::ConfigMapList::decode(raw.as_slice()).unwrap();
                    let pb = list
                        .items
                        .into_iter()
                        .find(|c| c.metadata.as_ref().and_then(|m| m.name.as_deref()) == Some("pb"));
                    pb.expect("the ConfigMap in the list").data
                };
                assert_eq!(data.get("k").map(String::as_str), Some("v"));
            }
        }
        let list = client
            .request_text(get(
                "/api/v1/namespaces/default/configmaps",
                "application/json, application/vnd.kubernetes.protobuf",
            ))
            .await
            .unwrap();
        assert!(list.contains("\"kind\":\"ConfigMapList\""), "{list}");
        for refused in ["application/yaml", "application/json;q=0, application/yaml"] {
            match client.request_text(get("/api/v1/namespaces/default/configmaps", refused)).await {
                Err(kube::Error::Api(e)) => {
                    assert_eq!((e.code, e.reason.as_str()), (406, "NotAcceptable"), "{e:?}");
                    assert!(e.message.starts_with("only the following media types are accepted"), "{e:?}");
                }
                other => panic!("Accept {refused:?}: {other:?}"),
            }
        }
    });
}

/// A truncated protobuf body is a 400 naming the message path and field
/// number, and stores nothing; a protobuf watch streams upstream's
/// length-prefixed WatchEvent frames, read here with k8s-pb's types.
#[test]
fn protobuf_bodies_errors_and_watch_frames() {
    use k8s_pb::api::core::v1 as pb;
    use k8s_pb::apimachinery::pkg::apis::meta::v1 as pb_meta;
    use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
    use prost::Message as _;
    let Some(server) = common::Server::start() else { return };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = kube_client(&server).await;
        let envelope = |kind: &str, raw: Vec<u8>| {
            let u = Unknown {
                type_meta: Some(TypeMeta { api_version: Some("v1".into()), kind: Some(kind.into()) }),
                raw: Some(raw),
                content_encoding: Some(String::new()),
                content_type: Some(String::new()),
            };
            let mut body = b"k8s\0".to_vec();
            u.encode(&mut body).unwrap();
            body
        };
        let pod = pb::Pod {
            metadata: Some(pb_meta::ObjectMeta { name: Some("cut".into()), ..Default::default() }),
            spec: Some(pb::PodSpec {
                containers: vec![pb::Container {
                    name: Some("c".into()),
                    image: Some("busybox".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut raw = pod.encode_to_vec();
        raw.truncate(raw.len() - 3);
        let post = |body: Vec<u8>| {
            http::Request::builder()
                .method("POST")
                .uri("/api/v1/namespaces/default/pods")
                .header("content-type", "application/vnd.kubernetes.protobuf")
                .header("accept", "application/json")
                .body(kube::client::Body::from(body))
                .unwrap()
        };
        let resp = client.send(post(envelope("Pod", raw))).await.unwrap();
        assert_eq!(resp.status(), 400);
        let text = String::from_utf8_lossy(&resp.into_body().collect_bytes().await.unwrap()).into_owned();
        assert!(text.contains("malformed protobuf at Pod.spec (field 2)"), "{text}");
        let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), "default");
        assert!(pods.get_opt("cut").await.unwrap().is_none(), "nothing stored");

        // The whole body creates the pod; a protobuf watch sees it.
        let resp = client.send(post(envelope("Pod", pod.encode_to_vec()))).await.unwrap();
        assert_eq!(resp.status(), 201);
        let watch = http::Request::builder()
            .uri("/api/v1/namespaces/default/pods?watch=1&timeoutSeconds=2")
            .header("accept", "application/vnd.kubernetes.protobuf;stream=watch")
            .body(kube::client::Body::from(Vec::new()))
            .unwrap();
        let resp = client.send(watch).await.unwrap();
        assert_eq!(resp.headers()["content-type"], "application/vnd.kubernetes.protobuf;stream=watch");
        let bytes = resp.into_body().collect_bytes().await.unwrap();
        let event = first_watch_event(&bytes);
        assert_eq!(event.r#type.as_deref(), Some("ADDED"));
        let inner = event.object.and_then(|o| o.raw).unwrap();
        let got = pb::Pod::decode(unknown(&inner).raw.unwrap_or_default().as_slice()).unwrap();
        assert_eq!(got.metadata.and_then(|m| m.name).as_deref(), Some("cut"));
    });
}

/// Metadata-only reads (`as=PartialObjectMetadata[List]`), as client-go's
/// metadata informers and garbage collectors make them: a get, a list and
/// a watch with client-go's Accept list answered in protobuf (read back
/// with k8s-pb's types), and kube-rs' `get_metadata`/`list_metadata` in
/// JSON; the objects' data never included.
#[test]
fn metadata_only_reads_in_protobuf_and_json() {
    use k8s_pb::apimachinery::pkg::apis::meta::v1 as pb_meta;
    use prost::Message as _;
    let Some(server) = common::Server::start() else { return };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = kube_client(&server).await;
        let cms = Api::<ConfigMap>::namespaced(client.clone(), "default");
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some("meta".into()),
                labels: Some([("app".to_string(), "m".to_string())].into()),
                ..Default::default()
            },
            data: Some([("secret-ish".to_string(), "payload".to_string())].into()),
            ..Default::default()
        };
        cms.create(&PostParams::default(), &cm).await.unwrap();
        // client-go's metadata client: protobuf, then JSON, of the conversion.
        let accept = |as_kind: &str| {
            format!(
                "application/vnd.kubernetes.protobuf;as={as_kind};g=meta.k8s.io;v=v1,application/json;as={as_kind};g=meta.k8s.io;v=v1,application/json"
            )
        };
        let get = |path: &str, accept: String| {
            http::Request::builder().uri(path).header("accept", accept).body(Vec::new()).unwrap()
        };
        let get_body = |path: &str, accept: String| get(path, accept).map(kube::client::Body::from);
        let open = |bytes: &[u8], kind: &str| {
            let unknown = unknown(bytes);
            let tm = unknown.type_meta.unwrap_or_default();
            assert_eq!((tm.api_version.as_deref(), tm.kind.as_deref()), (Some("meta.k8s.io/v1"), Some(kind)));
            unknown.raw.unwrap_or_default()
        };
        let resp = client
            .send(get_body("/api/v1/namespaces/default/configmaps/meta", accept("PartialObjectMetadata")))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/vnd.kubernetes.protobuf");
        let bytes = resp.into_body().collect_bytes().await.unwrap();
        assert!(!bytes.windows(7).any(|w| w == b"payload"), "the data travelled");
        let one = pb_meta::PartialObjectMetadata::decode(open(&bytes, "PartialObjectMetadata").as_slice()).unwrap();
        let meta = one.metadata.unwrap();
        assert_eq!((meta.name.as_deref(), meta.labels.get("app").map(String::as_str)), (Some("meta"), Some("m")));
        assert!(meta.resource_version.is_some_and(|v| !v.is_empty()));

        let resp = client
            .send(get_body("/api/v1/namespaces/default/configmaps?labelSelector=app%3Dm", accept("PartialObjectMetadataList")))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let bytes = resp.into_body().collect_bytes().await.unwrap();
        let list = pb_meta::PartialObjectMetadataList::decode(open(&bytes, "PartialObjectMetadataList").as_slice())
            .unwrap();
        let names: Vec<_> = list.items.iter().filter_map(|i| i.metadata.as_ref()?.name.clone()).collect();
        assert_eq!(names, ["meta"]);
        assert!(list.metadata.and_then(|m| m.resource_version).is_some_and(|v| !v.is_empty()));

        let resp = client
            .send(get_body(
                "/api/v1/namespaces/default/configmaps?watch=1&timeoutSeconds=2&labelSelector=app%3Dm",
                accept("PartialObjectMetadata"),
            ))
            .await
            .unwrap();
        assert_eq!(resp.headers()["content-type"], "application/vnd.kubernetes.protobuf;stream=watch");
        let bytes = resp.into_body().collect_bytes().await.unwrap();
        let event = first_watch_event(&bytes);
        assert_eq!(event.r#type.as_deref(), Some("ADDED"));
        let inner = event.object.and_then(|o| o.raw).unwrap();
        let got = pb_meta::PartialObjectMetadata::decode(open(&inner, "PartialObjectMetadata").as_slice()).unwrap();
        assert_eq!(got.metadata.and_then(|m| m.name).as_deref(), Some("meta"));

        // kube-rs asks for JSON only.
        let m = cms.get_metadata("meta").await.unwrap();
        assert_eq!(m.types.as_ref().map(|t| t.kind.as_str()), Some("PartialObjectMetadata"));
        assert_eq!(m.metadata.labels.unwrap_or_default().get("app").map(String::as_str), Some("m"));
        let all = cms.list_metadata(&ListParams::default().labels("app=m")).await.unwrap();
        assert_eq!(all.items.iter().filter_map(|i| i.metadata.name.as_deref()).collect::<Vec<_>>(), ["meta"]);
        let text = client
            .request_text(get("/api/v1/namespaces/default/configmaps/meta", accept("PartialObjectMetadata").replace("application/vnd.kubernetes.protobuf;", "application/x-nothing;")))
            .await
            .unwrap();
        assert!(text.contains("\"kind\":\"PartialObjectMetadata\"") && !text.contains("payload"), "{text}");
    });
}

const WIDGETS_CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, properties: {secret: {type: string}}}
"#;

/// Metadata-only reads of custom objects, as a garbage collector or a
/// metadata informer of a CRD's kind makes them: kube-rs'
/// `get_metadata`/`list_metadata`/`watch_metadata` on a `DynamicObject`
/// API (JSON), and client-go's Accept list (protobuf first) for a get, a
/// list and a watch, read back with k8s-pb's types; the spec never travels.
#[test]
fn metadata_only_reads_of_custom_objects() {
    use k8s_pb::apimachinery::pkg::apis::meta::v1 as pb_meta;
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    use prost::Message as _;
    let Some(server) = common::Server::start() else { return };
    server.apply(WIDGETS_CRD, &[]);
    server.ok(&["wait", "--for=condition=Established", "crd/widgets.example.com", "--timeout=20s"]);
    // Created, not applied: the last-applied annotation would carry the spec.
    let f = server.dir.path().join("w1.yaml");
    std::fs::write(&f, "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1, labels: {tier: front}}\nspec: {secret: payload}\n").unwrap();
    server.ok(&["create", "-f", f.to_str().unwrap()]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = kube_client(&server).await;
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("example.com", "v1", "Widget"));
        let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
        let m = widgets.get_metadata("w1").await.unwrap();
        assert_eq!(m.types.as_ref().map(|t| (t.api_version.as_str(), t.kind.as_str())), Some(("meta.k8s.io/v1", "PartialObjectMetadata")));
        assert_eq!(m.metadata.labels.unwrap_or_default().get("tier").map(String::as_str), Some("front"));
        let list = widgets.list_metadata(&ListParams::default().labels("tier=front")).await.unwrap();
        assert_eq!(list.items.iter().filter_map(|i| i.metadata.name.as_deref()).collect::<Vec<_>>(), ["w1"]);
        assert!(widgets.list_metadata(&ListParams::default().labels("tier=back")).await.unwrap().items.is_empty());
        // A metadata watch (what kube-rs' metadata reflectors run) sees the object.
        let stream = widgets.watch_metadata(&WatchParams::default().labels("tier=front").timeout(2), "0").await.unwrap();
        let mut stream = std::pin::pin!(stream);
        let seen = tokio::time::timeout(Duration::from_secs(20), async {
            use futures_util::StreamExt as _;
            while let Some(ev) = stream.next().await {
                if let Ok(WatchEvent::Added(m)) = ev {
                    return m.metadata.name;
                }
            }
            None
        })
        .await
        .unwrap();
        assert_eq!(seen.as_deref(), Some("w1"));

        let accept = |as_kind: &str| {
            format!(
                "application/vnd.kubernetes.protobuf;as={as_kind};g=meta.k8s.io;v=v1,application/json;as={as_kind};g=meta.k8s.io;v=v1,application/json"
            )
        };
        let get = |path: &str, accept: String| {
            http::Request::builder().uri(path).header("accept", accept).body(kube::client::Body::from(Vec::new())).unwrap()
        };
        let open = |bytes: &[u8], kind: &str| {
            assert!(!bytes.windows(7).any(|w| w == b"payload"), "the spec travelled");
            let unknown = unknown(bytes);
            let tm = unknown.type_meta.unwrap_or_default();
            assert_eq!((tm.api_version.as_deref(), tm.kind.as_deref()), (Some("meta.k8s.io/v1"), Some(kind)));
            unknown.raw.unwrap_or_default()
        };
        let base = "/apis/example.com/v1/namespaces/default/widgets";
        let resp = client.send(get(&format!("{base}/w1"), accept("PartialObjectMetadata"))).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/vnd.kubernetes.protobuf");
        let bytes = resp.into_body().collect_bytes().await.unwrap();
        let one = pb_meta::PartialObjectMetadata::decode(open(&bytes, "PartialObjectMetadata").as_slice()).unwrap();
        assert_eq!(one.metadata.and_then(|m| m.name).as_deref(), Some("w1"));
        let resp =
            client.send(get(&format!("{base}?labelSelector=tier%3Dfront"), accept("PartialObjectMetadataList"))).await.unwrap();
        assert_eq!(resp.status(), 200);
        let bytes = resp.into_body().collect_bytes().await.unwrap();
        let list =
            pb_meta::PartialObjectMetadataList::decode(open(&bytes, "PartialObjectMetadataList").as_slice()).unwrap();
        let names: Vec<_> = list.items.iter().filter_map(|i| i.metadata.as_ref()?.name.clone()).collect();
        assert_eq!(names, ["w1"]);
        let resp = client
            .send(get(&format!("{base}?watch=1&timeoutSeconds=2&labelSelector=tier%3Dfront"), accept("PartialObjectMetadata")))
            .await
            .unwrap();
        assert_eq!(resp.headers()["content-type"], "application/vnd.kubernetes.protobuf;stream=watch");
        let bytes = resp.into_body().collect_bytes().await.unwrap();
        let event = first_watch_event(&bytes);
        assert_eq!(event.r#type.as_deref(), Some("ADDED"));
        let inner = event.object.and_then(|o| o.raw).unwrap();
        let got = pb_meta::PartialObjectMetadata::decode(open(&inner, "PartialObjectMetadata").as_slice()).unwrap();
        assert_eq!(got.metadata.and_then(|m| m.name).as_deref(), Some("w1"));
    });
}

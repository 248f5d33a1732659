//! events.k8s.io/v1 Events, stored as the core v1 Events they are: written
//! by kube-rs through events.k8s.io (as controller runtimes write them)
//! and seen by its watch, read back through core v1 by kubectl (`get`,
//! `kubectl events`), a core Event read through events.k8s.io, and
//! upstream's create and update validation.

mod common;

use std::time::Duration;

use common::Server;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};

const CORE_EVENT: &str = r#"apiVersion: v1
kind: Event
metadata: {name: from-kubelet}
involvedObject: {kind: Pod, name: web-0, namespace: default}
reason: Pulled
message: Successfully pulled image
type: Normal
count: 4
source: {component: kubelet, host: n1}
"#;

const INCOMPLETE: &str = r#"apiVersion: events.k8s.io/v1
kind: Event
metadata: {name: incomplete}
regarding: {kind: Pod, name: web-0, namespace: default}
note: no reporter
type: Normal
"#;

#[test]
fn events_v1_and_core_events_are_one_object() {
    let Some(s) = Server::start() else { return };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = common::kube_client(&s).await;
        let events: Api<Event> = Api::namespaced(client, "default");
        let wp = WatchParams::default().timeout(20);
        let mut watch = Box::pin(events.watch(&wp, "0").await.unwrap());
        let ev: Event = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "scaled"},
            "eventTime": "2026-01-01T00:00:00.000000Z",
            "reportingController": "example.com/operator",
            "reportingInstance": "operator-7d9",
            "action": "Scale",
            "reason": "ScaledUp",
            "type": "Normal",
            "note": "Scaled up to 3",
            "regarding": {"kind": "Deployment", "name": "web", "namespace": "default", "apiVersion": "apps/v1"},
            "series": {"count": 2, "lastObservedTime": "2026-01-01T00:00:05.000000Z"}
        }))
        .unwrap();
        let created = events.create(&PostParams::default(), &ev).await.unwrap();
        assert_eq!(created.note.as_deref(), Some("Scaled up to 3"));
        assert_eq!(created.regarding.as_ref().and_then(|r| r.name.as_deref()), Some("web"));
        let seen = tokio::time::timeout(Duration::from_secs(20), futures_util::StreamExt::next(&mut watch))
            .await
            .expect("a watch event")
            .unwrap()
            .unwrap();
        match seen {
            WatchEvent::Added(e) => {
                assert_eq!(
                    (e.reporting_controller.as_deref(), e.action.as_deref()),
                    (Some("example.com/operator"), Some("Scale"))
                );
            }
            other => panic!("expected ADDED, got {other:?}"),
        }
    });

    // The same object through core v1, as kubectl reads Events.
    let core: serde_json::Value = serde_json::from_str(&s.ok(&["get", "events", "scaled", "-o", "json"])).unwrap();
    assert_eq!(core["apiVersion"], "v1");
    assert_eq!(
        (core["message"].as_str(), core["reportingComponent"].as_str()),
        (Some("Scaled up to 3"), Some("example.com/operator"))
    );
    assert_eq!(
        (core["involvedObject"]["kind"].as_str(), core["series"]["count"].as_i64()),
        (Some("Deployment"), Some(2))
    );
    let by_object = s.ok(&["get", "events", "--field-selector", "involvedObject.name=web", "-o", "name"]);
    assert_eq!(by_object.trim(), "event/scaled");
    let listed = s.ok(&["events"]);
    assert!(listed.contains("ScaledUp") && listed.contains("Scaled up to 3"), "{listed}");

    // A core Event read through events.k8s.io/v1.
    s.apply(CORE_EVENT, &[]);
    let v1: serde_json::Value =
        serde_json::from_str(&s.ok(&["get", "events.v1.events.k8s.io", "from-kubelet", "-o", "json"])).unwrap();
    assert_eq!(v1["apiVersion"], "events.k8s.io/v1");
    assert_eq!(
        (v1["note"].as_str(), v1["regarding"]["name"].as_str()),
        (Some("Successfully pulled image"), Some("web-0"))
    );
    assert_eq!((v1["deprecatedCount"].as_i64(), v1["reportingController"].as_str()), (Some(4), Some("kubelet")));
    assert_eq!(v1["deprecatedSource"]["host"], "n1");
    let table = s.ok(&["get", "events.v1.events.k8s.io"]);
    assert!(table.contains("Successfully pulled image") && table.contains("pod/web-0"), "{table}");

    let f = s.dir.path().join("incomplete.yaml");
    std::fs::write(&f, INCOMPLETE).unwrap();
    let err = s.fails(&["create", "-f", f.to_str().unwrap()]);
    for field in ["eventTime", "reportingController", "reportingInstance", "action", "reason"] {
        assert!(err.contains(&format!("{field}: Required value")), "{field}: {err}");
    }
    assert!(err.contains(r#"The Event "incomplete" is invalid"#), "{err}");
    assert!(s.fails(&["get", "events", "incomplete"]).contains("NotFound"));

    // Updates through events.k8s.io change the series; the rest is immutable.
    let ev = "events.v1.events.k8s.io/scaled";
    let series = r#"{"series": {"count": 3, "lastObservedTime": "2026-01-01T00:00:09.000000Z"}}"#;
    s.ok(&["patch", ev, "--type=merge", "-p", series]);
    assert_eq!(s.ok(&["get", ev, "-o", "jsonpath={.series.count}"]), "3");
    let err = s.fails(&["patch", ev, "--type=merge", "-p", r#"{"note": "rewritten", "action": "Other"}"#]);
    assert!(err.contains("message: Invalid value: field is immutable"), "{err}");
    assert!(err.contains("action: Invalid value: field is immutable"), "{err}");
    assert_eq!(s.ok(&["get", ev, "-o", "jsonpath={.note}"]), "Scaled up to 3");
    let err = s.fails(&["patch", ev, "--type=merge", "-p", r#"{"series": {"count": 1}}"#]);
    assert!(err.contains("series.count"), "{err}");
}

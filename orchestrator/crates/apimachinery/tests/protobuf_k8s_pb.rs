//! The protobuf transcoder against an independent encoder: objects built
//! with k8s-pb's prost types and `prost::Message::encode`, wrapped in the
//! `k8s\0` + runtime.Unknown envelope, decode to the JSON k8s-openapi
//! writes for the same object; and the reverse (a Go-less protobuf
//! client reading our encoding back with k8s-pb's types).

use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_pb::api::apps::v1 as pb_apps;
use k8s_pb::api::core::v1 as pb;
use k8s_pb::apimachinery::pkg::api::resource::Quantity as PbQuantity;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as pb_meta;
use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString as PbIntOrString;
use orchestrator_apimachinery::protobuf;
use prost::Message as _;
use std::collections::BTreeMap;

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
    let unknown = Unknown {
        type_meta: Some(TypeMeta { api_version: s(api_version), kind: s(kind) }),
        raw: Some(raw),
        content_encoding: s(""),
        content_type: s(""),
    };
    let mut body = b"k8s\0".to_vec();
    unknown.encode(&mut body).unwrap();
    body
}

/// Our encoding read back with k8s-pb's types.
fn open<M: prost::Message + Default>(body: &[u8], api_version: &str, kind: &str) -> M {
    let rest = body.strip_prefix(b"k8s\0").expect("magic");
    let unknown = Unknown::decode(rest).expect("runtime.Unknown");
    let tm = unknown.type_meta.expect("typeMeta");
    assert_eq!((tm.api_version.as_deref(), tm.kind.as_deref()), (Some(api_version), Some(kind)));
    M::decode(unknown.raw.unwrap_or_default().as_slice()).expect("message")
}

fn pb_meta(name: &str) -> pb_meta::ObjectMeta {
    pb_meta::ObjectMeta {
        name: s(name),
        namespace: s("d"),
        uid: s("u-1"),
        resource_version: s("7"),
        generation: Some(3),
        labels: BTreeMap::from([("app".into(), "web".into())]),
        annotations: BTreeMap::from([("a/b".into(), "c".into())]),
        creation_timestamp: Some(pb_meta::Time { seconds: Some(1_767_323_045), nanos: None }),
        owner_references: vec![pb_meta::OwnerReference {
            api_version: s("apps/v1"),
            kind: s("ReplicaSet"),
            name: s("web-1"),
            uid: s("u-0"),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }],
        finalizers: vec!["f/x".into()],
        ..Default::default()
    }
}

fn meta(name: &str) -> meta::ObjectMeta {
    meta::ObjectMeta {
        name: s(name),
        namespace: s("d"),
        uid: s("u-1"),
        resource_version: s("7"),
        generation: Some(3),
        labels: Some(BTreeMap::from([("app".into(), "web".into())])),
        annotations: Some(BTreeMap::from([("a/b".into(), "c".into())])),
        creation_timestamp: Some(meta::Time("2026-01-02T03:04:05Z".parse().unwrap())),
        owner_references: Some(vec![meta::OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: "web-1".into(),
            uid: "u-0".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]),
        finalizers: Some(vec!["f/x".into()]),
        ..Default::default()
    }
}

fn pb_pod_spec() -> pb::PodSpec {
    pb::PodSpec {
        volumes: vec![
            pb::Volume {
                name: s("data"),
                volume_source: Some(pb::VolumeSource {
                    empty_dir: Some(pb::EmptyDirVolumeSource {
                        medium: s("Memory"),
                        size_limit: Some(PbQuantity { string: s("64Mi") }),
                    }),
                    ..Default::default()
                }),
            },
            pb::Volume {
                name: s("cfg"),
                volume_source: Some(pb::VolumeSource {
                    config_map: Some(pb::ConfigMapVolumeSource {
                        local_object_reference: Some(pb::LocalObjectReference { name: s("cm") }),
                        default_mode: Some(0o644),
                        optional: Some(false),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
        ],
        containers: vec![pb::Container {
            name: s("c"),
            image: s("nginx:1.27"),
            command: vec!["sh".into(), "-c".into()],
            ports: vec![pb::ContainerPort {
                name: s("http"),
                container_port: Some(80),
                host_ip: s("10.0.0.1"),
                protocol: s("TCP"),
                ..Default::default()
            }],
            env: vec![pb::EnvVar {
                name: s("PASSWORD"),
                value_from: Some(pb::EnvVarSource {
                    secret_key_ref: Some(pb::SecretKeySelector {
                        local_object_reference: Some(pb::LocalObjectReference { name: s("sec") }),
                        key: s("pw"),
                        optional: Some(true),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            resources: Some(pb::ResourceRequirements {
                limits: BTreeMap::from([("cpu".into(), PbQuantity { string: s("500m") })]),
                requests: BTreeMap::from([("memory".into(), PbQuantity { string: s("64Mi") })]),
                ..Default::default()
            }),
            volume_mounts: vec![pb::VolumeMount {
                name: s("data"),
                mount_path: s("/data"),
                read_only: Some(true),
                ..Default::default()
            }],
            liveness_probe: Some(pb::Probe {
                handler: Some(pb::ProbeHandler {
                    http_get: Some(pb::HttpGetAction {
                        path: s("/healthz"),
                        port: Some(PbIntOrString { r#type: Some(1), int_val: None, str_val: s("http") }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                period_seconds: Some(3),
                failure_threshold: Some(2),
                ..Default::default()
            }),
            security_context: Some(pb::SecurityContext {
                run_as_user: Some(0),
                run_as_non_root: Some(false),
                allow_privilege_escalation: Some(false),
                capabilities: Some(pb::Capabilities { add: vec!["NET_ADMIN".into()], drop: vec!["ALL".into()] }),
                ..Default::default()
            }),
            ..Default::default()
        }],
        restart_policy: s("Always"),
        termination_grace_period_seconds: Some(0),
        node_selector: BTreeMap::from([("kubernetes.io/os".into(), "linux".into())]),
        service_account_name: s("sa"),
        service_account: s("sa"),
        host_network: Some(true),
        affinity: Some(pb::Affinity {
            node_affinity: Some(pb::NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(pb::NodeSelector {
                    node_selector_terms: vec![pb::NodeSelectorTerm {
                        match_expressions: vec![pb::NodeSelectorRequirement {
                            key: s("zone"),
                            operator: s("In"),
                            values: vec!["a".into(), "b".into()],
                        }],
                        ..Default::default()
                    }],
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        tolerations: vec![pb::Toleration {
            key: s("k"),
            operator: s("Exists"),
            effect: s("NoExecute"),
            toleration_seconds: Some(30),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn pod_spec() -> core::PodSpec {
    core::PodSpec {
        volumes: Some(vec![
            core::Volume {
                name: "data".into(),
                empty_dir: Some(core::EmptyDirVolumeSource {
                    medium: s("Memory"),
                    size_limit: Some(Quantity("64Mi".into())),
                }),
                ..Default::default()
            },
            core::Volume {
                name: "cfg".into(),
                config_map: Some(core::ConfigMapVolumeSource {
                    name: "cm".into(),
                    default_mode: Some(0o644),
                    optional: Some(false),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ]),
        containers: vec![core::Container {
            name: "c".into(),
            image: s("nginx:1.27"),
            command: Some(vec!["sh".into(), "-c".into()]),
            ports: Some(vec![core::ContainerPort {
                name: s("http"),
                container_port: 80,
                host_ip: s("10.0.0.1"),
                protocol: s("TCP"),
                ..Default::default()
            }]),
            env: Some(vec![core::EnvVar {
                name: "PASSWORD".into(),
                value_from: Some(core::EnvVarSource {
                    secret_key_ref: Some(core::SecretKeySelector {
                        name: "sec".into(),
                        key: "pw".into(),
                        optional: Some(true),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            resources: Some(core::ResourceRequirements {
                limits: Some(BTreeMap::from([("cpu".into(), Quantity("500m".into()))])),
                requests: Some(BTreeMap::from([("memory".into(), Quantity("64Mi".into()))])),
                ..Default::default()
            }),
            volume_mounts: Some(vec![core::VolumeMount {
                name: "data".into(),
                mount_path: "/data".into(),
                read_only: Some(true),
                ..Default::default()
            }]),
            liveness_probe: Some(core::Probe {
                http_get: Some(core::HTTPGetAction {
                    path: s("/healthz"),
                    port: IntOrString::String("http".into()),
                    ..Default::default()
                }),
                period_seconds: Some(3),
                failure_threshold: Some(2),
                ..Default::default()
            }),
            security_context: Some(core::SecurityContext {
                run_as_user: Some(0),
                run_as_non_root: Some(false),
                allow_privilege_escalation: Some(false),
                capabilities: Some(core::Capabilities {
                    add: Some(vec!["NET_ADMIN".into()]),
                    drop: Some(vec!["ALL".into()]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }],
        restart_policy: s("Always"),
        termination_grace_period_seconds: Some(0),
        node_selector: Some(BTreeMap::from([("kubernetes.io/os".into(), "linux".into())])),
        service_account_name: s("sa"),
        service_account: s("sa"),
        host_network: Some(true),
        affinity: Some(core::Affinity {
            node_affinity: Some(core::NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(core::NodeSelector {
                    node_selector_terms: vec![core::NodeSelectorTerm {
                        match_expressions: Some(vec![core::NodeSelectorRequirement {
                            key: "zone".into(),
                            operator: "In".into(),
                            values: Some(vec!["a".into(), "b".into()]),
                        }]),
                        ..Default::default()
                    }],
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        tolerations: Some(vec![core::Toleration {
            key: s("k"),
            operator: s("Exists"),
            effect: s("NoExecute"),
            toleration_seconds: Some(30),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

fn pb_pod() -> pb::Pod {
    pb::Pod {
        metadata: Some(pb_meta("web-1-x")),
        spec: Some(pb_pod_spec()),
        status: Some(pb::PodStatus {
            phase: s("Running"),
            host_ip: s("10.0.0.1"),
            host_ips: vec![pb::HostIp { ip: s("10.0.0.1") }],
            pod_ip: s("10.1.0.5"),
            start_time: Some(pb_meta::Time { seconds: Some(1_767_323_046), nanos: None }),
            conditions: vec![pb::PodCondition {
                r#type: s("Ready"),
                status: s("True"),
                last_transition_time: Some(pb_meta::Time { seconds: Some(1_767_323_047), nanos: None }),
                ..Default::default()
            }],
            container_statuses: vec![pb::ContainerStatus {
                name: s("c"),
                ready: Some(true),
                restart_count: Some(2),
                image: s("nginx:1.27"),
                image_id: s("sha256:1"),
                container_id: s("containerd://1"),
                state: Some(pb::ContainerState {
                    running: Some(pb::ContainerStateRunning {
                        started_at: Some(pb_meta::Time { seconds: Some(1_767_323_046), nanos: None }),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            qos_class: s("Burstable"),
            ..Default::default()
        }),
    }
}

fn pod() -> core::Pod {
    let t = |v: &str| meta::Time(v.parse().unwrap());
    core::Pod {
        metadata: meta("web-1-x"),
        spec: Some(pod_spec()),
        status: Some(core::PodStatus {
            phase: s("Running"),
            host_ip: s("10.0.0.1"),
            host_ips: Some(vec![core::HostIP { ip: "10.0.0.1".into() }]),
            pod_ip: s("10.1.0.5"),
            start_time: Some(t("2026-01-02T03:04:06Z")),
            conditions: Some(vec![core::PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                last_transition_time: Some(t("2026-01-02T03:04:07Z")),
                ..Default::default()
            }]),
            container_statuses: Some(vec![core::ContainerStatus {
                name: "c".into(),
                ready: true,
                restart_count: 2,
                image: "nginx:1.27".into(),
                image_id: "sha256:1".into(),
                container_id: s("containerd://1"),
                state: Some(core::ContainerState {
                    running: Some(core::ContainerStateRunning { started_at: Some(t("2026-01-02T03:04:06Z")) }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            qos_class: s("Burstable"),
            ..Default::default()
        }),
    }
}

fn pb_deployment() -> pb_apps::Deployment {
    pb_apps::Deployment {
        metadata: Some(pb_meta("web")),
        spec: Some(pb_apps::DeploymentSpec {
            replicas: Some(0),
            selector: Some(pb_meta::LabelSelector {
                match_labels: BTreeMap::from([("app".into(), "web".into())]),
                ..Default::default()
            }),
            template: Some(pb::PodTemplateSpec { metadata: Some(pb_meta("")), spec: Some(pb_pod_spec()) }),
            strategy: Some(pb_apps::DeploymentStrategy {
                r#type: s("RollingUpdate"),
                rolling_update: Some(pb_apps::RollingUpdateDeployment {
                    max_unavailable: Some(PbIntOrString { r#type: Some(0), int_val: Some(0), str_val: None }),
                    max_surge: Some(PbIntOrString { r#type: Some(1), int_val: None, str_val: s("25%") }),
                }),
            }),
            revision_history_limit: Some(0),
            ..Default::default()
        }),
        status: None,
    }
}

fn deployment() -> apps::Deployment {
    let mut template_meta = meta("");
    template_meta.name = None;
    apps::Deployment {
        metadata: meta("web"),
        spec: Some(apps::DeploymentSpec {
            replicas: Some(0),
            selector: meta::LabelSelector {
                match_labels: Some(BTreeMap::from([("app".into(), "web".into())])),
                ..Default::default()
            },
            template: core::PodTemplateSpec { metadata: Some(template_meta), spec: Some(pod_spec()) },
            strategy: Some(apps::DeploymentStrategy {
                type_: s("RollingUpdate"),
                rolling_update: Some(apps::RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::String("25%".into())),
                }),
            }),
            revision_history_limit: Some(0),
            ..Default::default()
        }),
        status: None,
    }
}

fn pb_node() -> pb::Node {
    pb::Node {
        metadata: Some(pb_meta("n1")),
        spec: Some(pb::NodeSpec {
            pod_cidr: s("10.1.0.0/24"),
            pod_cid_rs: vec!["10.1.0.0/24".into()],
            unschedulable: Some(true),
            taints: vec![pb::Taint { key: s("k"), effect: s("NoSchedule"), ..Default::default() }],
            ..Default::default()
        }),
        status: Some(pb::NodeStatus {
            capacity: BTreeMap::from([("cpu".into(), PbQuantity { string: s("2") })]),
            addresses: vec![pb::NodeAddress { r#type: s("InternalIP"), address: s("10.0.0.1") }],
            daemon_endpoints: Some(pb::NodeDaemonEndpoints {
                kubelet_endpoint: Some(pb::DaemonEndpoint { port: Some(10250) }),
            }),
            node_info: Some(pb::NodeSystemInfo {
                machine_id: s("m"),
                kubelet_version: s("v1.33.0"),
                architecture: s("amd64"),
                operating_system: s("linux"),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

fn node() -> core::Node {
    core::Node {
        metadata: meta("n1"),
        spec: Some(core::NodeSpec {
            pod_cidr: s("10.1.0.0/24"),
            pod_cidrs: Some(vec!["10.1.0.0/24".into()]),
            unschedulable: Some(true),
            taints: Some(vec![core::Taint { key: "k".into(), effect: "NoSchedule".into(), ..Default::default() }]),
            ..Default::default()
        }),
        status: Some(core::NodeStatus {
            capacity: Some(BTreeMap::from([("cpu".into(), Quantity("2".into()))])),
            addresses: Some(vec![core::NodeAddress { type_: "InternalIP".into(), address: "10.0.0.1".into() }]),
            daemon_endpoints: Some(core::NodeDaemonEndpoints {
                kubelet_endpoint: Some(core::DaemonEndpoint { port: 10250 }),
            }),
            node_info: Some(core::NodeSystemInfo {
                machine_id: "m".into(),
                kubelet_version: "v1.33.0".into(),
                architecture: "amd64".into(),
                operating_system: "linux".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

fn json_of<T: serde::Serialize>(v: &T) -> serde_json::Value {
    let mut v = serde_json::to_value(v).unwrap();
    strip_empty_strings(&mut v);
    v
}

/// k8s-openapi writes its required strings even when empty; Go's encoder
/// writes them too, and an empty string is "unset" on the wire.
fn strip_empty_strings(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.retain(|_, x| x.as_str() != Some(""));
            m.values_mut().for_each(strip_empty_strings);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_empty_strings),
        _ => {}
    }
}

#[test]
fn k8s_pb_bodies_decode_to_k8s_openapi_json() {
    let body = envelope("v1", "Pod", pb_pod().encode_to_vec());
    assert_eq!(protobuf::decode(&body).unwrap(), json_of(&pod()));
    let body = envelope("apps/v1", "Deployment", pb_deployment().encode_to_vec());
    assert_eq!(protobuf::decode(&body).unwrap(), json_of(&deployment()));
    let body = envelope("v1", "Node", pb_node().encode_to_vec());
    assert_eq!(protobuf::decode(&body).unwrap(), json_of(&node()));
    let options = pb_meta::DeleteOptions {
        grace_period_seconds: Some(0),
        propagation_policy: s("Background"),
        preconditions: Some(pb_meta::Preconditions { uid: s("u-1"), resource_version: None }),
        ..Default::default()
    };
    let decoded = protobuf::decode(&envelope("v1", "DeleteOptions", options.encode_to_vec())).unwrap();
    let expected = meta::DeleteOptions {
        api_version: s("v1"),
        kind: s("DeleteOptions"),
        grace_period_seconds: Some(0),
        propagation_policy: s("Background"),
        preconditions: Some(meta::Preconditions { uid: s("u-1"), resource_version: None }),
        ..Default::default()
    };
    assert_eq!(decoded, json_of(&expected));
}

#[test]
fn a_protobuf_client_reads_our_encoding_with_k8s_pb() {
    let body = protobuf::encode(&json_of(&pod())).unwrap();
    assert_eq!(open::<pb::Pod>(&body, "v1", "Pod"), pb_pod());
    let body = protobuf::encode(&json_of(&deployment())).unwrap();
    let mut expected = pb_deployment();
    // The template's metadata carries what the JSON has: no name.
    if let Some(t) = expected.spec.as_mut().and_then(|s| s.template.as_mut()).and_then(|t| t.metadata.as_mut()) {
        t.name = None;
    }
    assert_eq!(open::<pb_apps::Deployment>(&body, "apps/v1", "Deployment"), expected);
    let body = protobuf::encode(&json_of(&node())).unwrap();
    assert_eq!(open::<pb::Node>(&body, "v1", "Node"), pb_node());
    // A list: items without their own apiVersion/kind, as upstream writes them.
    let list = serde_json::json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "9"},
                                  "items": [json_of(&pod())]});
    let got: pb::PodList = open(&protobuf::encode(&list).unwrap(), "v1", "PodList");
    assert_eq!(got.metadata.and_then(|m| m.resource_version).as_deref(), Some("9"));
    assert_eq!(got.items, vec![pb_pod()]);
}

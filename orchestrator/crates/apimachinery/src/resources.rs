//! The resource types the API server serves: names and discovery facts,
//! the k8s-openapi type each one decodes through, and its storage keys.

use k8s_openapi::api::admissionregistration::v1 as admission;
use k8s_openapi::api::autoscaling::v2 as autoscaling;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::events::v1 as events;
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::api::policy::v1 as policy;
use k8s_openapi::api::scheduling::v1 as scheduling;
use k8s_openapi::api::storage::v1 as storage;
use k8s_openapi::api::{
    apps::v1 as apps, batch::v1 as batch, certificates::v1 as certificates, coordination::v1 as coordination,
    core::v1 as core, rbac::v1 as rbac,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1 as apiregistration;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use std::sync::Arc;

/// One served resource.
#[derive(Debug)]
pub struct ResourceType {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Served subresources: "status", "scale", "binding".
    pub subresources: &'static [&'static str],
    /// Field selector fields beyond metadata.name/namespace.
    pub fields: &'static [&'static str],
    /// Decodes through the typed struct and encodes back: checks types and
    /// drops what the type does not know.
    pub roundtrip: fn(Value) -> Result<Value, String>,
    /// A served version of a CustomResourceDefinition (`None` for the
    /// built-in kinds).
    pub custom: Option<Arc<CustomVersion>>,
}

/// What a served version of a CustomResourceDefinition adds to its
/// resource type: the schema objects are checked, pruned and defaulted
/// against, the printer columns, the scale paths.
#[derive(Debug)]
pub struct CustomVersion {
    /// `openAPIV3Schema` of this version.
    pub schema: Option<apiextensions::JSONSchemaProps>,
    pub columns: Vec<apiextensions::CustomResourceColumnDefinition>,
    pub scale: Option<apiextensions::CustomResourceSubresourceScale>,
    /// The CRD's name (`<plural>.<group>`).
    pub crd: String,
}

/// A resource type as a lookup hands it out: a built-in kind from the
/// static table, or a served version of an established CRD (shared with
/// the registry's cache, so a CRD deleted meanwhile only stops being found).
#[derive(Debug, Clone)]
pub enum Served {
    Builtin(&'static ResourceType),
    Custom(Arc<ResourceType>),
}

impl std::ops::Deref for Served {
    type Target = ResourceType;
    fn deref(&self) -> &ResourceType {
        match self {
            Served::Builtin(r) => r,
            Served::Custom(r) => r,
        }
    }
}

fn roundtrip<K: DeserializeOwned + Serialize>(v: Value) -> Result<Value, String> {
    let typed: K = serde_json::from_value(v).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

impl ResourceType {
    /// Whether an immediate delete answers with the object as it was, not
    /// a success Status: upstream's `ReturnDeletedObject`, as its OpenAPI
    /// DELETE responses say (typed clients decode into that type: the
    /// Python client's `delete_namespaced_pod` fails on a Status).
    pub fn returns_deleted_object(&self) -> bool {
        self.custom.is_none()
            && matches!(
                (self.group, self.kind),
                (
                    "",
                    "Pod"
                        | "Service"
                        | "PersistentVolume"
                        | "PersistentVolumeClaim"
                        | "PodTemplate"
                        | "ResourceQuota"
                        | "ServiceAccount"
                ) | (
                    "storage.k8s.io",
                    "StorageClass" | "CSIDriver" | "CSINode" | "VolumeAttachment" | "VolumeAttributesClass"
                ) | ("resource.k8s.io", _)
            )
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_string() } else { format!("{}/{}", self.group, self.version) }
    }

    /// The URL prefix of this resource's group version.
    pub fn gv_path(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }

    /// The storage key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{name}", self.prefix(namespace))
    }

    /// The key prefix of a collection (all namespaces when `None`). Custom
    /// resources are kept under their group, as upstream keeps them, so a
    /// CRD's plural never meets a built-in one's; every served version of
    /// a CRD shares its objects.
    pub fn prefix(&self, namespace: Option<&str>) -> String {
        let base = match self.custom {
            Some(_) => custom_prefix(self.group, self.plural),
            None => format!("/registry/{}/", self.plural),
        };
        match namespace.filter(|_| self.namespaced) {
            Some(ns) => format!("{base}{ns}/"),
            None => base,
        }
    }

    pub fn has_status(&self) -> bool {
        self.subresources.contains(&"status")
    }
}

/// Where a CRD's objects are stored (all namespaces).
pub fn custom_prefix(group: &str, plural: &str) -> String {
    format!("/registry/{group}/{plural}/")
}

const ALL: &[&str] = &["all"];
const NONE: &[&str] = &[];
const POD_FIELDS: &[&str] = &[
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.podIPs",
    "status.nominatedNodeName",
];
const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

macro_rules! rt {
    (@ $group:expr, $version:literal, $kind:literal, $ty:ty, $plural:literal, $singular:literal, $ns:expr, $short:expr, $cat:expr, $sub:expr, $fields:expr) => {
        ResourceType {
            group: $group,
            version: $version,
            kind: $kind,
            plural: $plural,
            singular: $singular,
            namespaced: $ns,
            short_names: $short,
            categories: $cat,
            subresources: $sub,
            fields: $fields,
            roundtrip: roundtrip::<$ty>,
            custom: None,
        }
    };
    ($group:expr, $kind:literal, $($rest:tt)*) => {
        rt!(@ $group, "v1", $kind, $($rest)*)
    };
}

pub static RESOURCES: &[ResourceType] = &[
    rt!(
        "",
        "Namespace",
        core::Namespace,
        "namespaces",
        "namespace",
        false,
        &["ns"],
        NONE,
        &["status"],
        &["status.phase"]
    ),
    rt!(
        "",
        "Pod",
        core::Pod,
        "pods",
        "pod",
        true,
        &["po"],
        ALL,
        &["status", "binding", "eviction", "ephemeralcontainers", "log", "exec", "attach", "portforward"],
        POD_FIELDS
    ),
    rt!("", "Node", core::Node, "nodes", "node", false, &["no"], NONE, &["status"], &["spec.unschedulable"]),
    rt!("", "Service", core::Service, "services", "service", true, &["svc"], ALL, &["status"], NONE),
    rt!("", "Endpoints", core::Endpoints, "endpoints", "endpoints", true, &["ep"], NONE, NONE, NONE),
    rt!("", "ConfigMap", core::ConfigMap, "configmaps", "configmap", true, &["cm"], NONE, NONE, NONE),
    rt!("", "Secret", core::Secret, "secrets", "secret", true, NONE, NONE, NONE, &["type"]),
    rt!(
        "",
        "ServiceAccount",
        core::ServiceAccount,
        "serviceaccounts",
        "serviceaccount",
        true,
        &["sa"],
        NONE,
        &["token"],
        NONE
    ),
    rt!("", "Event", core::Event, "events", "event", true, &["ev"], NONE, NONE, EVENT_FIELDS),
    // The same objects through events.k8s.io/v1 (`events.rs`; issue 14 item 6).
    rt!(EVENTS_GROUP, "Event", events::Event, "events", "event", true, &["ev"], NONE, NONE, NONE),
    rt!(
        "apps",
        "Deployment",
        apps::Deployment,
        "deployments",
        "deployment",
        true,
        &["deploy"],
        ALL,
        &["status", "scale"],
        NONE
    ),
    rt!(
        "apps",
        "ReplicaSet",
        apps::ReplicaSet,
        "replicasets",
        "replicaset",
        true,
        &["rs"],
        ALL,
        &["status", "scale"],
        &["status.replicas"]
    ),
    // The v1 ReplicationController (issue 14 item 6), kept by the ReplicaSet logic.
    rt!(
        "",
        "ReplicationController",
        core::ReplicationController,
        "replicationcontrollers",
        "replicationcontroller",
        true,
        &["rc"],
        ALL,
        &["status", "scale"],
        &["status.replicas"]
    ),
    rt!("apps", "DaemonSet", apps::DaemonSet, "daemonsets", "daemonset", true, &["ds"], ALL, &["status"], NONE),
    rt!("batch", "Job", batch::Job, "jobs", "job", true, NONE, ALL, &["status"], &["status.successful"]),
    // Workloads (issue 14 item 1).
    rt!("batch", "CronJob", batch::CronJob, "cronjobs", "cronjob", true, &["cj"], ALL, &["status"], NONE),
    rt!(
        "discovery.k8s.io",
        "EndpointSlice",
        discovery::EndpointSlice,
        "endpointslices",
        "endpointslice",
        true,
        NONE,
        NONE,
        NONE,
        NONE
    ),
    rt!("coordination.k8s.io", "Lease", coordination::Lease, "leases", "lease", true, NONE, NONE, NONE, NONE),
    // Issue 15: nodes join by token and ask for their certificates.
    rt!(
        CERTIFICATES_GROUP,
        "CertificateSigningRequest",
        certificates::CertificateSigningRequest,
        "certificatesigningrequests",
        "certificatesigningrequest",
        false,
        &["csr"],
        NONE,
        &["status", "approval"],
        &["spec.signerName"]
    ),
    rt!(RBAC_GROUP, "Role", rbac::Role, "roles", "role", true, NONE, NONE, NONE, NONE),
    rt!(RBAC_GROUP, "ClusterRole", rbac::ClusterRole, "clusterroles", "clusterrole", false, NONE, NONE, NONE, NONE),
    rt!(RBAC_GROUP, "RoleBinding", rbac::RoleBinding, "rolebindings", "rolebinding", true, NONE, NONE, NONE, NONE),
    rt!(
        RBAC_GROUP,
        "ClusterRoleBinding",
        rbac::ClusterRoleBinding,
        "clusterrolebindings",
        "clusterrolebinding",
        false,
        NONE,
        NONE,
        NONE,
        NONE
    ),
    // StatefulSets and storage (issue 14 items 1 and 2).
    rt!(
        "apps",
        "StatefulSet",
        apps::StatefulSet,
        "statefulsets",
        "statefulset",
        true,
        &["sts"],
        ALL,
        &["status", "scale"],
        NONE
    ),
    rt!(
        "apps",
        "ControllerRevision",
        apps::ControllerRevision,
        "controllerrevisions",
        "controllerrevision",
        true,
        NONE,
        NONE,
        NONE,
        NONE
    ),
    rt!(
        "",
        "PersistentVolume",
        core::PersistentVolume,
        "persistentvolumes",
        "persistentvolume",
        false,
        &["pv"],
        NONE,
        &["status"],
        NONE
    ),
    rt!(
        "",
        "PersistentVolumeClaim",
        core::PersistentVolumeClaim,
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        true,
        &["pvc"],
        NONE,
        &["status"],
        NONE
    ),
    rt!(
        STORAGE_GROUP,
        "StorageClass",
        storage::StorageClass,
        "storageclasses",
        "storageclass",
        false,
        &["sc"],
        NONE,
        NONE,
        NONE
    ),
    // Custom resources (issue 14 item 4).
    rt!(
        APIEXTENSIONS_GROUP,
        "CustomResourceDefinition",
        apiextensions::CustomResourceDefinition,
        "customresourcedefinitions",
        "customresourcedefinition",
        false,
        &["crd", "crds"],
        NONE,
        &["status"],
        NONE
    ),
    // What charts create alongside workloads (issue 14 item 5; `policy.rs`).
    rt!(
        POLICY_GROUP,
        "PodDisruptionBudget",
        policy::PodDisruptionBudget,
        "poddisruptionbudgets",
        "poddisruptionbudget",
        true,
        &["pdb"],
        NONE,
        &["status"],
        NONE
    ),
    rt!(
        @ AUTOSCALING_GROUP,
        "v2",
        "HorizontalPodAutoscaler",
        autoscaling::HorizontalPodAutoscaler,
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
        true,
        &["hpa"],
        ALL,
        &["status"],
        NONE
    ),
    rt!(
        NETWORKING_GROUP,
        "NetworkPolicy",
        networking::NetworkPolicy,
        "networkpolicies",
        "networkpolicy",
        true,
        &["netpol"],
        NONE,
        NONE,
        NONE
    ),
    rt!(
        NETWORKING_GROUP,
        "Ingress",
        networking::Ingress,
        "ingresses",
        "ingress",
        true,
        &["ing"],
        NONE,
        &["status"],
        NONE
    ),
    rt!(
        NETWORKING_GROUP,
        "IngressClass",
        networking::IngressClass,
        "ingressclasses",
        "ingressclass",
        false,
        NONE,
        NONE,
        NONE,
        NONE
    ),
    rt!(
        SCHEDULING_GROUP,
        "PriorityClass",
        scheduling::PriorityClass,
        "priorityclasses",
        "priorityclass",
        false,
        &["pc"],
        NONE,
        NONE,
        NONE
    ),
    rt!("", "LimitRange", core::LimitRange, "limitranges", "limitrange", true, &["limits"], NONE, NONE, NONE),
    rt!(
        "",
        "ResourceQuota",
        core::ResourceQuota,
        "resourcequotas",
        "resourcequota",
        true,
        &["quota"],
        NONE,
        &["status"],
        NONE
    ),
    rt!(
        ADMISSION_GROUP,
        "ValidatingWebhookConfiguration",
        admission::ValidatingWebhookConfiguration,
        "validatingwebhookconfigurations",
        "validatingwebhookconfiguration",
        false,
        NONE,
        &["api-extensions"],
        NONE,
        NONE
    ),
    rt!(
        ADMISSION_GROUP,
        "MutatingWebhookConfiguration",
        admission::MutatingWebhookConfiguration,
        "mutatingwebhookconfigurations",
        "mutatingwebhookconfiguration",
        false,
        NONE,
        &["api-extensions"],
        NONE,
        NONE
    ),
    rt!(
        APIREGISTRATION_GROUP,
        "APIService",
        apiregistration::APIService,
        "apiservices",
        "apiservice",
        false,
        NONE,
        &["api-extensions"],
        &["status"],
        NONE
    ),
];

pub const STORAGE_GROUP: &str = "storage.k8s.io";
pub const EVENTS_GROUP: &str = "events.k8s.io";

pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
pub const CERTIFICATES_GROUP: &str = "certificates.k8s.io";
pub const APIEXTENSIONS_GROUP: &str = "apiextensions.k8s.io";
pub const POLICY_GROUP: &str = "policy";
pub const AUTOSCALING_GROUP: &str = "autoscaling";
pub const NETWORKING_GROUP: &str = "networking.k8s.io";
pub const SCHEDULING_GROUP: &str = "scheduling.k8s.io";
pub const ADMISSION_GROUP: &str = "admissionregistration.k8s.io";
pub const APIREGISTRATION_GROUP: &str = "apiregistration.k8s.io";

/// The served API groups other than core, in discovery order.
pub const GROUPS: &[&str] = &[
    "apps",
    "batch",
    "discovery.k8s.io",
    "coordination.k8s.io",
    RBAC_GROUP,
    STORAGE_GROUP,
    CERTIFICATES_GROUP,
    APIEXTENSIONS_GROUP,
    POLICY_GROUP,
    AUTOSCALING_GROUP,
    NETWORKING_GROUP,
    SCHEDULING_GROUP,
    ADMISSION_GROUP,
    APIREGISTRATION_GROUP,
    EVENTS_GROUP,
];

/// The served version of a group ("v1" but for autoscaling's v2).
pub fn group_version(group: &str) -> &'static str {
    RESOURCES.iter().find(|r| r.group == group).map_or("v1", |r| r.version)
}

pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES.iter().find(|r| r.group == group && r.version == version && r.plural == plural)
}

pub fn by_kind(kind: &str) -> Option<&'static ResourceType> {
    RESOURCES.iter().find(|r| r.kind == kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_lookup() {
        let pods = find("", "v1", "pods").unwrap();
        assert_eq!(pods.key(Some("default"), "p"), "/registry/pods/default/p");
        assert_eq!(pods.prefix(None), "/registry/pods/");
        let ns = by_kind("Namespace").unwrap();
        assert_eq!(ns.key(Some("ignored"), "kube-system"), "/registry/namespaces/kube-system");
        assert_eq!(by_kind("Deployment").unwrap().api_version(), "apps/v1");
        assert!(find("apps", "v1", "pods").is_none());
    }

    #[test]
    fn roundtrip_checks_types() {
        let cm = by_kind("ConfigMap").unwrap();
        let ok = (cm.roundtrip)(serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a"}, "data": {"k": "v"}, "bogus": 1}))
        .unwrap();
        assert!(ok.get("bogus").is_none());
        assert!(
            (cm.roundtrip)(serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"k": 1}})).is_err()
        );
    }
}

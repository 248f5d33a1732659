//! PersistentVolumes and claims: the binder (a claim naming a volume, or
//! an Available volume of its class that is large enough, for classes that
//! bind at once), the built-in local-path provisioner (a claim of a
//! `WaitForFirstConsumer` class gets a volume when the scheduler places its
//! first pod: a directory under that node's local-path root, with a node
//! affinity to it), and reclaiming (a volume whose claim is gone is
//! Released; Retain keeps it so, Delete removes it — for local-path volumes
//! the kubelet of that node removes the directory and then the volume,
//! since only it sees the disk). A claim for a class that does not exist
//! stays Pending with a ProvisioningFailed event.

use std::collections::BTreeSet;

use k8s_openapi::Resource;
use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectReference, PersistentVolume,
    PersistentVolumeClaim, PersistentVolumeClaimStatus, PersistentVolumeSpec, PersistentVolumeStatus, Pod,
    VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::{create_typed, is_deleting, list_typed, modify_typed, name, reference, rt, uid};
use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::{DeleteOptions, Part, Registry};
use orchestrator_apimachinery::stateful::{LOCAL_PATH_PROVISIONER, LOCAL_PATH_ROOT, PROVISIONED_BY, parse_quantity};

/// Set on a claim by the scheduler: the node its first consumer goes to.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
const COMPONENT: &str = "persistentvolume-controller";

/// A claim as the scheduler sees it.
pub(crate) enum ClaimState {
    /// Bound: the node must match the volume's affinity (none: any node).
    Bound(Option<VolumeNodeAffinity>),
    /// Waits for its first consumer: provisioned on the node the pod gets.
    Delayed(Box<PersistentVolumeClaim>),
}

/// What the scheduler reads about claims, once per pass.
pub(crate) struct Volumes {
    claims: Vec<PersistentVolumeClaim>,
    volumes: Vec<PersistentVolume>,
    classes: Vec<StorageClass>,
}

impl Volumes {
    pub(crate) fn read(reg: &Registry) -> Result<Volumes, ApiError> {
        Ok(Volumes { claims: list_typed(reg)?, volumes: list_typed(reg)?, classes: list_typed(reg)? })
    }

    /// The claims of a pod, or why it cannot be scheduled yet (upstream's words).
    pub(crate) fn of_pod(&self, pod: &Pod) -> Result<Vec<ClaimState>, String> {
        let ns = pod.metadata.namespace.as_deref();
        let mut out = Vec::new();
        for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let Some(src) = &v.persistent_volume_claim else { continue };
            let claim = self
                .claims
                .iter()
                .find(|c| c.metadata.namespace.as_deref() == ns && name(&c.metadata) == src.claim_name)
                .ok_or_else(|| format!("persistentvolumeclaim \"{}\" not found", src.claim_name))?;
            if is_deleting(&claim.metadata) {
                return Err(format!("persistentvolumeclaim \"{}\" is being deleted", src.claim_name));
            }
            let volume_name = claim.spec.as_ref().and_then(|s| s.volume_name.as_deref()).unwrap_or_default();
            if !volume_name.is_empty() {
                let pv = self.volumes.iter().find(|v| name(&v.metadata) == volume_name);
                let affinity = pv.and_then(|v| v.spec.as_ref()).and_then(|s| s.node_affinity.clone());
                out.push(ClaimState::Bound(affinity));
            } else if class_of(claim)
                .and_then(|c| self.classes.iter().find(|sc| name(&sc.metadata) == c))
                .is_some_and(|sc| sc.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer"))
            {
                out.push(ClaimState::Delayed(Box::new(claim.clone())));
            } else {
                return Err("pod has unbound immediate PersistentVolumeClaims".into());
            }
        }
        Ok(out)
    }
}

/// Whether a node's labels satisfy a volume's node affinity.
pub(crate) fn affinity_allows(affinity: Option<&VolumeNodeAffinity>, node: &k8s_openapi::api::core::v1::Node) -> bool {
    let Some(required) = affinity.and_then(|a| a.required.as_ref()) else { return true };
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let mut hostname = labels.clone();
    hostname.entry("kubernetes.io/hostname".into()).or_insert_with(|| name(&node.metadata).to_string());
    required.node_selector_terms.iter().any(|t| {
        t.match_expressions.iter().flatten().all(|e| {
            let v = hostname.get(&e.key);
            let values = e.values.as_deref().unwrap_or_default();
            match e.operator.as_str() {
                "In" => v.is_some_and(|v| values.contains(v)),
                "NotIn" => v.is_none_or(|v| !values.contains(v)),
                "Exists" => v.is_some(),
                "DoesNotExist" => v.is_none(),
                _ => false,
            }
        })
    })
}

fn class_of(c: &PersistentVolumeClaim) -> Option<&str> {
    c.spec.as_ref().and_then(|s| s.storage_class_name.as_deref()).filter(|c| !c.is_empty())
}

fn request(c: &PersistentVolumeClaim) -> f64 {
    let q = c.spec.as_ref().and_then(|s| s.resources.as_ref()).and_then(|r| r.requests.as_ref());
    q.and_then(|r| r.get("storage")).and_then(|q| parse_quantity(&q.0)).unwrap_or(0.0)
}

fn capacity(v: &PersistentVolume) -> f64 {
    let q = v.spec.as_ref().and_then(|s| s.capacity.as_ref()).and_then(|c| c.get("storage"));
    q.and_then(|q| parse_quantity(&q.0)).unwrap_or(0.0)
}

fn phase_of_pv(v: &PersistentVolume) -> &str {
    v.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or_default()
}

fn phase_of_claim(c: &PersistentVolumeClaim) -> &str {
    c.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or_default()
}

/// The (claim uid, reason) pairs this process reported: a claim waits many
/// passes, and each would otherwise try its event again.
static REPORTED: std::sync::Mutex<BTreeSet<(String, &'static str)>> = std::sync::Mutex::new(BTreeSet::new());

/// An event about a claim, recorded once per claim and reason (named by
/// both, so a restarted controller does not repeat it either).
fn claim_event(reg: &Registry, c: &PersistentVolumeClaim, ty: &str, reason: &'static str, message: &str) {
    let key = (uid(&c.metadata).to_string(), reason);
    if !REPORTED.lock().unwrap_or_else(|e| e.into_inner()).insert(key) {
        return;
    }
    let short_uid: String = uid(&c.metadata).chars().filter(|c| c.is_ascii_hexdigit()).take(8).collect();
    let ev = k8s_openapi::api::core::v1::Event {
        metadata: ObjectMeta {
            name: Some(format!("{}.{short_uid}.{}", name(&c.metadata), reason.to_lowercase())),
            namespace: c.metadata.namespace.clone(),
            ..Default::default()
        },
        involved_object: reference(c),
        reason: Some(reason.into()),
        message: Some(message.into()),
        type_: Some(ty.into()),
        source: Some(k8s_openapi::api::core::v1::EventSource { component: Some(COMPONENT.into()), host: None }),
        first_timestamp: Some(crate::time_now()),
        last_timestamp: Some(crate::time_now()),
        count: Some(1),
        reporting_component: Some(COMPONENT.into()),
        reporting_instance: Some(COMPONENT.into()),
        ..Default::default()
    };
    match create_typed(reg, c.metadata.namespace.as_deref(), &ev) {
        Err(e) if e.reason != "AlreadyExists" => tracing::debug!("event: {e}"),
        _ => {}
    }
}

/// Binds `claim` to `volume` both ways (noting the node the scheduler chose, if it did).
fn bind(
    reg: &Registry,
    claim: &PersistentVolumeClaim,
    volume: &PersistentVolume,
    selected_node: Option<&str>,
) -> Result<(), ApiError> {
    let pv_name = name(&volume.metadata).to_string();
    let claim_ref = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        name: claim.metadata.name.clone(),
        namespace: claim.metadata.namespace.clone(),
        uid: claim.metadata.uid.clone(),
        resource_version: claim.metadata.resource_version.clone(),
        field_path: None,
    };
    modify_typed(reg, None, &pv_name, Part::Main, |v: &mut PersistentVolume| {
        let spec = v.spec.get_or_insert_default();
        let same = spec.claim_ref.as_ref().is_some_and(|r| r.uid == claim_ref.uid);
        spec.claim_ref = Some(claim_ref.clone());
        !same
    })?;
    modify_typed(reg, None, &pv_name, Part::Status, |v: &mut PersistentVolume| {
        let s = v.status.get_or_insert_default();
        let changed = s.phase.as_deref() != Some("Bound");
        s.phase = Some("Bound".into());
        changed
    })?;
    let ns = claim.metadata.namespace.as_deref();
    let claim_name = name(&claim.metadata);
    modify_typed(reg, ns, claim_name, Part::Main, |c: &mut PersistentVolumeClaim| {
        let a = c.metadata.annotations.get_or_insert_default();
        a.insert("pv.kubernetes.io/bind-completed".into(), "yes".into());
        a.insert("pv.kubernetes.io/bound-by-controller".into(), "yes".into());
        if let Some(n) = selected_node {
            a.insert(SELECTED_NODE.into(), n.into());
        }
        c.spec.get_or_insert_default().volume_name = Some(pv_name.clone());
        true
    })?;
    let spec = volume.spec.clone().unwrap_or_default();
    let status = PersistentVolumeClaimStatus {
        phase: Some("Bound".into()),
        access_modes: spec.access_modes.clone(),
        capacity: spec.capacity.clone(),
        ..Default::default()
    };
    modify_typed(reg, ns, claim_name, Part::Status, |c: &mut PersistentVolumeClaim| {
        c.status = Some(status.clone());
        true
    })
}

/// The local-path provisioner: a volume for `claim` on `node`, bound to it.
pub(crate) fn provision(
    reg: &Registry,
    claim: &PersistentVolumeClaim,
    node: &k8s_openapi::api::core::v1::Node,
) -> Result<(), ApiError> {
    let node_name = name(&node.metadata);
    let class_name = class_of(claim).unwrap_or_default();
    let class: StorageClass =
        orchestrator_apimachinery::typed::decode(reg.get(rt(StorageClass::KIND), None, class_name)?, "StorageClass")?;
    if class.provisioner != LOCAL_PATH_PROVISIONER {
        let m = format!(
            "Waiting for a volume to be created either by the external provisioner '{}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered.",
            class.provisioner
        );
        claim_event(reg, claim, "Normal", "ExternalProvisioning", &m);
        return Ok(());
    }
    let root = node.metadata.annotations.as_ref().and_then(|a| a.get(LOCAL_PATH_ROOT));
    let Some(root) = root else {
        let m = format!(
            "failed to provision volume with StorageClass \"{class_name}\": node {node_name} reports no local-path directory ({LOCAL_PATH_ROOT})"
        );
        claim_event(reg, claim, "Warning", "ProvisioningFailed", &m);
        return Err(ApiError::new(409, "Conflict", m));
    };
    let ns = claim.metadata.namespace.as_deref().unwrap_or_default();
    let pv_name = format!("pvc-{}", uid(&claim.metadata));
    let spec = claim.spec.clone().unwrap_or_default();
    let storage = spec.resources.as_ref().and_then(|r| r.requests.as_ref()).and_then(|r| r.get("storage")).cloned();
    let term = NodeSelectorTerm {
        match_expressions: Some(vec![NodeSelectorRequirement {
            key: "kubernetes.io/hostname".into(),
            operator: "In".into(),
            values: Some(vec![node_name.to_string()]),
        }]),
        match_fields: None,
    };
    let pv = PersistentVolume {
        metadata: ObjectMeta {
            name: Some(pv_name.clone()),
            annotations: Some([(PROVISIONED_BY.to_string(), LOCAL_PATH_PROVISIONER.to_string())].into_iter().collect()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: spec.access_modes.clone(),
            capacity: storage.map(|s| [("storage".to_string(), s)].into_iter().collect()),
            host_path: Some(HostPathVolumeSource {
                path: format!("{}/{pv_name}_{ns}_{}", root.trim_end_matches('/'), name(&claim.metadata)),
                type_: Some("DirectoryOrCreate".into()),
            }),
            node_affinity: Some(VolumeNodeAffinity {
                required: Some(NodeSelector { node_selector_terms: vec![term] }),
            }),
            persistent_volume_reclaim_policy: class.reclaim_policy.clone(),
            storage_class_name: Some(class_name.to_string()),
            volume_mode: spec.volume_mode.clone(),
            mount_options: class.mount_options.clone(),
            ..Default::default()
        }),
        status: None,
    };
    let created = match create_typed(reg, None, &pv) {
        Ok(v) => v,
        Err(e) if e.reason == "AlreadyExists" => {
            orchestrator_apimachinery::typed::decode(reg.get(rt(PersistentVolume::KIND), None, &pv_name)?, "PV")?
        }
        Err(e) => return Err(e),
    };
    let m = format!("Successfully provisioned volume {pv_name}");
    claim_event(reg, claim, "Normal", "ProvisioningSucceeded", &m);
    bind(reg, claim, &created, Some(node_name))
}

pub fn reconcile(reg: &Registry) -> Result<(), ApiError> {
    let Volumes { claims, volumes, classes } = Volumes::read(reg)?;
    {
        // Only claims that still wait keep their memory.
        let waiting: BTreeSet<&str> =
            claims.iter().filter(|c| phase_of_claim(c) != "Bound").map(|c| uid(&c.metadata)).collect();
        REPORTED.lock().unwrap_or_else(|e| e.into_inner()).retain(|(u, _)| waiting.contains(u.as_str()));
    }
    for c in claims.iter().filter(|c| !is_deleting(&c.metadata) && phase_of_claim(c) != "Bound") {
        let wanted = c.spec.as_ref().and_then(|s| s.volume_name.as_deref()).filter(|v| !v.is_empty());
        let class = class_of(c);
        let sc = class.and_then(|n| classes.iter().find(|sc| name(&sc.metadata) == n));
        if let Some(v) = wanted {
            // Pre-bound to a volume by name: bind it once it is there and free.
            if let Some(pv) = volumes.iter().find(|pv| name(&pv.metadata) == v && free_for(pv, c)) {
                bind(reg, c, pv, None)?;
            }
            continue;
        }
        match (class, sc) {
            (Some(n), None) => {
                let m = format!("storageclass.storage.k8s.io \"{n}\" not found");
                claim_event(reg, c, "Warning", "ProvisioningFailed", &m);
            }
            (_, Some(sc)) if sc.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer") => {
                // The scheduler provisions once a pod using the claim has a node.
                let m = "waiting for first consumer to be created before binding";
                claim_event(reg, c, "Normal", "WaitForFirstConsumer", m);
            }
            _ => {
                let fits = volumes.iter().filter(|pv| {
                    free_for(pv, c)
                        && pv.spec.as_ref().and_then(|s| s.storage_class_name.as_deref()).unwrap_or_default()
                            == class.unwrap_or_default()
                        && capacity(pv) >= request(c)
                });
                match fits.min_by(|a, b| capacity(a).total_cmp(&capacity(b))) {
                    Some(pv) => bind(reg, c, pv, None)?,
                    None if sc.is_some() => {
                        let p = sc.map(|s| s.provisioner.as_str()).unwrap_or_default();
                        let m = format!(
                            "Waiting for a volume to be created either by the external provisioner '{p}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered."
                        );
                        claim_event(reg, c, "Normal", "ExternalProvisioning", &m);
                    }
                    None => {
                        let m = "no persistent volumes available for this claim and no storage class is set";
                        claim_event(reg, c, "Normal", "FailedBinding", m);
                    }
                }
            }
        }
    }
    for pv in &volumes {
        let claim_ref = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
        let phase = phase_of_pv(pv);
        let next = match claim_ref {
            None if phase == "Pending" || phase.is_empty() => Some("Available"),
            None => None,
            Some(r) => {
                let claim = claims.iter().find(|c| {
                    c.metadata.namespace == r.namespace && c.metadata.name == r.name && c.metadata.uid == r.uid
                });
                match claim {
                    Some(_) if phase != "Bound" && phase != "Released" => Some("Bound"),
                    Some(_) => None,
                    None if phase != "Released" => Some("Released"),
                    None => None,
                }
            }
        };
        if let Some(next) = next {
            modify_typed(reg, None, name(&pv.metadata), Part::Status, |v: &mut PersistentVolume| {
                v.status = Some(PersistentVolumeStatus { phase: Some(next.into()), ..Default::default() });
                true
            })?;
        }
        let released = next == Some("Released") || (next.is_none() && phase == "Released");
        let delete = pv.spec.as_ref().and_then(|s| s.persistent_volume_reclaim_policy.as_deref()) == Some("Delete");
        let local = pv.metadata.annotations.as_ref().and_then(|a| a.get(PROVISIONED_BY)).map(String::as_str)
            == Some(LOCAL_PATH_PROVISIONER);
        // A local-path volume's directory is on its node: that kubelet deletes it.
        if released && delete && !local && !is_deleting(&pv.metadata) {
            match reg.delete(rt(PersistentVolume::KIND), None, name(&pv.metadata), &DeleteOptions::default()) {
                Err(e) if e.code != 404 => return Err(e),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Whether `pv` may be bound to `claim`: Available, or already promised to it.
fn free_for(pv: &PersistentVolume, claim: &PersistentVolumeClaim) -> bool {
    let r = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
    match r {
        Some(r) => r.uid == claim.metadata.uid || (r.uid.is_none() && r.name == claim.metadata.name),
        None => phase_of_pv(pv) == "Available",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_registry as registry;
    use orchestrator_apimachinery::registry::WriteOptions;
    use serde_json::json;

    fn create(reg: &Registry, kind: &str, ns: Option<&str>, o: serde_json::Value) {
        reg.create(rt(kind), ns, o, &WriteOptions::default()).unwrap();
    }

    fn claim(reg: &Registry, name_: &str) -> PersistentVolumeClaim {
        orchestrator_apimachinery::typed::decode(
            reg.get(rt(PersistentVolumeClaim::KIND), Some("default"), name_).unwrap(),
            "PVC",
        )
        .unwrap()
    }

    fn pv(reg: &Registry, name_: &str) -> Option<PersistentVolume> {
        let o = reg.get(rt(PersistentVolume::KIND), None, name_).ok()?;
        Some(orchestrator_apimachinery::typed::decode(o, "PV").unwrap())
    }

    fn events(reg: &Registry) -> Vec<String> {
        let es: Vec<k8s_openapi::api::core::v1::Event> = list_typed(reg).unwrap();
        es.into_iter().map(|e| format!("{}: {}", e.reason.unwrap_or_default(), e.message.unwrap_or_default())).collect()
    }

    fn node(reg: &Registry) -> k8s_openapi::api::core::v1::Node {
        create(
            reg,
            "Node",
            None,
            json!({"metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"},
            "annotations": {LOCAL_PATH_ROOT: "/var/lib/kubelet/storage"}}}),
        );
        orchestrator_apimachinery::typed::decode(reg.get(rt("Node"), None, "n1").unwrap(), "Node").unwrap()
    }

    const SPEC: &str = r#"{"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}"#;

    #[test]
    fn local_path_claims_wait_for_a_node_then_bind_and_release() {
        let d = tempfile::tempdir().unwrap();
        let reg = registry(&d);
        let n = node(&reg);
        create(
            &reg,
            "PersistentVolumeClaim",
            Some("default"),
            json!({"metadata": {"name": "data"},
            "spec": serde_json::from_str::<serde_json::Value>(SPEC).unwrap()}),
        );
        reconcile(&reg).unwrap();
        let c = claim(&reg, "data");
        assert_eq!(class_of(&c), Some("local-path"), "the default class");
        assert_eq!(phase_of_claim(&c), "Pending");
        assert!(events(&reg).iter().any(|e| e.starts_with("WaitForFirstConsumer")), "{:?}", events(&reg));
        provision(&reg, &c, &n).unwrap();
        let c = claim(&reg, "data");
        let pv_name = format!("pvc-{}", uid(&c.metadata));
        assert_eq!(phase_of_claim(&c), "Bound");
        assert_eq!(c.spec.as_ref().unwrap().volume_name.as_deref(), Some(pv_name.as_str()));
        let v = pv(&reg, &pv_name).unwrap();
        let host = v.spec.as_ref().unwrap().host_path.as_ref().unwrap();
        assert_eq!(host.path, format!("/var/lib/kubelet/storage/{pv_name}_default_data"));
        assert!(affinity_allows(v.spec.as_ref().unwrap().node_affinity.as_ref(), &n));
        assert_eq!(phase_of_pv(&v), "Bound");
        reg.delete(rt(PersistentVolumeClaim::KIND), Some("default"), "data", &DeleteOptions::default()).unwrap();
        reconcile(&reg).unwrap();
        let v = pv(&reg, &pv_name).unwrap();
        assert_eq!(phase_of_pv(&v), "Released");
        assert!(!is_deleting(&v.metadata), "a local-path volume waits for its kubelet");
    }

    #[test]
    fn static_volumes_bind_missing_classes_wait_and_released_volumes_are_reclaimed() {
        let d = tempfile::tempdir().unwrap();
        let reg = registry(&d);
        for (name_, policy) in [("small", "Retain"), ("big", "Delete")] {
            let size = if name_ == "small" { "1Gi" } else { "5Gi" };
            create(
                &reg,
                "PersistentVolume",
                None,
                json!({"metadata": {"name": name_}, "spec": {"capacity": {"storage": size},
                "accessModes": ["ReadWriteOnce"], "hostPath": {"path": format!("/srv/{name_}")}, "storageClassName": "",
                "persistentVolumeReclaimPolicy": policy}}),
            );
        }
        let mut spec: serde_json::Value = serde_json::from_str(SPEC).unwrap();
        spec["resources"]["requests"]["storage"] = "2Gi".into();
        spec["storageClassName"] = "".into();
        create(&reg, "PersistentVolumeClaim", Some("default"), json!({"metadata": {"name": "static"}, "spec": spec}));
        let mut missing: serde_json::Value = serde_json::from_str(SPEC).unwrap();
        missing["storageClassName"] = "gold".into();
        create(&reg, "PersistentVolumeClaim", Some("default"), json!({"metadata": {"name": "gold"}, "spec": missing}));
        reconcile(&reg).unwrap();
        reconcile(&reg).unwrap();
        assert_eq!(claim(&reg, "static").spec.unwrap().volume_name.as_deref(), Some("big"), "the smallest that fits");
        assert_eq!(phase_of_pv(&pv(&reg, "small").unwrap()), "Available");
        assert_eq!(phase_of_claim(&claim(&reg, "gold")), "Pending");
        let evs = events(&reg);
        assert!(
            evs.contains(&"ProvisioningFailed: storageclass.storage.k8s.io \"gold\" not found".to_string()),
            "{evs:?}"
        );
        reconcile(&reg).unwrap();
        assert_eq!(events(&reg).len(), evs.len(), "one event per claim and reason");
        reg.delete(rt(PersistentVolumeClaim::KIND), Some("default"), "static", &DeleteOptions::default()).unwrap();
        reconcile(&reg).unwrap();
        assert!(pv(&reg, "big").is_none(), "Delete: the volume goes");
    }
}

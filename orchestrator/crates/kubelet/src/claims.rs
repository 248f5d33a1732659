//! `persistentVolumeClaim` volumes: a claim resolves through its bound
//! PersistentVolume to a directory on this node (hostPath or local
//! volumes; local-path volumes live under `<kubelet-dir>/storage`, which the
//! node announces in its `storage.plinth.dev/local-path-root` annotation),
//! bind-mounted into the containers (read-only when the pod's volume says
//! so). A pod whose claim is missing or not bound waits, with a
//! FailedMount event, and is tried again. Reclaiming: a local-path volume
//! of this node that is Released with policy Delete has its directory
//! removed here, then the volume itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, PersistentVolume, PersistentVolumeClaim, Pod};
use orchestrator_apimachinery::stateful::{LOCAL_PATH_PROVISIONER, PROVISIONED_BY};
use orchestrator_apimachinery::typed;

use crate::Kubelet;
use crate::cri::v1;

/// Where local-path volumes of this node live.
pub fn local_path_root(kubelet_dir: &Path) -> PathBuf {
    std::path::absolute(kubelet_dir).unwrap_or_else(|_| kubelet_dir.to_path_buf()).join("storage")
}

/// The host directory of each claim volume of a pod, by volume name; or why
/// the pod must wait (upstream's words).
pub async fn resolve(k: &Kubelet, pod: &Pod) -> Result<BTreeMap<String, PathBuf>, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let mut out = BTreeMap::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let Some(src) = &v.persistent_volume_claim else { continue };
        let claim = match k.api.get("PersistentVolumeClaim", Some(ns), &src.claim_name).await {
            Ok(c) => typed::decode::<PersistentVolumeClaim>(c, "PersistentVolumeClaim").map_err(|e| e.message)?,
            Err(e) if e.code == 404 => return Err(format!("persistentvolumeclaim \"{}\" not found", src.claim_name)),
            Err(e) => return Err(e.message),
        };
        let volume_name = claim.spec.as_ref().and_then(|s| s.volume_name.clone()).unwrap_or_default();
        let phase = claim.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
        if volume_name.is_empty() || phase != "Bound" {
            return Err(format!(
                "PVC {ns}/{} has non-bound phase (\"{phase}\") or empty pvc.Spec.VolumeName (\"{volume_name}\")",
                src.claim_name
            ));
        }
        let pv: PersistentVolume = match k.api.get("PersistentVolume", None, &volume_name).await {
            Ok(o) => typed::decode(o, "PersistentVolume").map_err(|e| e.message)?,
            Err(e) => return Err(e.message),
        };
        let spec = pv.spec.unwrap_or_default();
        let path = match (&spec.host_path, &spec.local) {
            (Some(h), _) => PathBuf::from(&h.path),
            (None, Some(l)) => PathBuf::from(&l.path),
            _ => {
                return Err(format!(
                    "volume {volume_name}: only hostPath and local volumes can be mounted on this node"
                ));
            }
        };
        if spec.host_path.as_ref().and_then(|h| h.type_.as_deref()) == Some("DirectoryOrCreate") {
            std::fs::create_dir_all(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
        }
        if !path.is_dir() {
            return Err(format!("volume {volume_name}: {} is not a directory", path.display()));
        }
        out.insert(v.name.clone(), path);
    }
    Ok(out)
}

/// Marks read-only the mounts (in `volumeMounts` order) of claim volumes
/// the pod declares `readOnly`.
pub fn read_only(pod: &Pod, container: &Container, mounts: &mut [v1::Mount]) {
    let ro: Vec<&str> = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter(|v| v.persistent_volume_claim.as_ref().is_some_and(|c| c.read_only == Some(true)))
        .map(|v| v.name.as_str())
        .collect();
    for (m, n) in mounts.iter_mut().zip(container.volume_mounts.iter().flatten()) {
        if ro.contains(&n.name.as_str()) {
            m.readonly = true;
        }
    }
}

/// Whether a volume is this node's and local-path's, Released with policy
/// Delete, and its directory one directly under `root`.
fn to_reclaim<'a>(pv: &'a PersistentVolume, node: &str, root: &Path) -> Option<&'a str> {
    let local = pv.metadata.annotations.as_ref().and_then(|a| a.get(PROVISIONED_BY)).map(String::as_str)
        == Some(LOCAL_PATH_PROVISIONER);
    let spec = pv.spec.as_ref()?;
    let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
    let delete = spec.persistent_volume_reclaim_policy.as_deref() == Some("Delete");
    let terms = spec.node_affinity.as_ref()?.required.as_ref()?;
    let mine = terms.node_selector_terms.iter().flat_map(|t| t.match_expressions.iter().flatten()).any(|e| {
        e.key == "kubernetes.io/hostname" && e.operator == "In" && e.values.iter().flatten().any(|v| v == node)
    });
    let path = spec.host_path.as_ref()?.path.as_str();
    let inside = Path::new(path).parent() == Some(root) && !path.ends_with("/..");
    (local && released && delete && mine && inside).then_some(path)
}

/// Removes the directories of this node's released local-path volumes
/// (policy Delete), then the volumes; every few seconds.
pub async fn reclaim_forever(k: Arc<Kubelet>) {
    let root = local_path_root(&k.cfg.dir);
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let volumes = match k.api.list("PersistentVolume", "").await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!("reclaim: list volumes: {e}");
                continue;
            }
        };
        for o in volumes {
            let Ok(pv) = typed::decode::<PersistentVolume>(o, "PersistentVolume") else { continue };
            let Some(path) = to_reclaim(&pv, &k.cfg.node_name, &root) else { continue };
            match std::fs::remove_dir_all(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!("reclaim: remove {path}: {e}");
                    continue;
                }
                _ => {}
            }
            let (name, uid) =
                (pv.metadata.name.as_deref().unwrap_or_default(), pv.metadata.uid.as_deref().unwrap_or_default());
            if let Err(e) = k.api.delete_now("PersistentVolume", None, name, uid).await {
                tracing::warn!("reclaim: delete PersistentVolume {name}: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pv(path: &str, node: &str, phase: &str) -> PersistentVolume {
        serde_json::from_value(
            json!({"metadata": {"name": "pvc-1", "annotations": {PROVISIONED_BY: LOCAL_PATH_PROVISIONER}},
            "spec": {"hostPath": {"path": path}, "persistentVolumeReclaimPolicy": "Delete",
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}},
            "status": {"phase": phase}}),
        )
        .unwrap()
    }

    #[test]
    fn only_this_nodes_released_local_path_directories_are_reclaimed() {
        let root = Path::new("/var/lib/kubelet/storage");
        let ok = pv("/var/lib/kubelet/storage/pvc-1_default_data", "n1", "Released");
        assert_eq!(to_reclaim(&ok, "n1", root), Some("/var/lib/kubelet/storage/pvc-1_default_data"));
        assert_eq!(to_reclaim(&ok, "n2", root), None, "another node's");
        assert_eq!(to_reclaim(&pv("/var/lib/kubelet/storage/x", "n1", "Bound"), "n1", root), None, "in use");
        assert_eq!(to_reclaim(&pv("/etc", "n1", "Released"), "n1", root), None, "outside the root");
        assert_eq!(to_reclaim(&pv("/var/lib/kubelet/storage/..", "n1", "Released"), "n1", root), None);
        let mut retained = ok.clone();
        retained.spec.as_mut().unwrap().persistent_volume_reclaim_policy = Some("Retain".into());
        assert_eq!(to_reclaim(&retained, "n1", root), None, "Retain keeps it");
    }

    #[test]
    fn read_only_claims_make_read_only_mounts() {
        let pod: Pod = serde_json::from_value(json!({"spec": {"containers": [], "volumes": [
            {"name": "ro", "persistentVolumeClaim": {"claimName": "a", "readOnly": true}},
            {"name": "rw", "persistentVolumeClaim": {"claimName": "b"}}]}}))
        .unwrap();
        let c: Container = serde_json::from_value(
            json!({"volumeMounts": [{"name": "rw", "mountPath": "/rw"}, {"name": "ro", "mountPath": "/ro"}]}),
        )
        .unwrap();
        let mut mounts = vec![v1::Mount::default(), v1::Mount::default()];
        read_only(&pod, &c, &mut mounts);
        assert_eq!((mounts[0].readonly, mounts[1].readonly), (false, true));
    }
}

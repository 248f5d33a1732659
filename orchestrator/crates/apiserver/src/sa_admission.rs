//! Upstream's ServiceAccount admission for pods: `serviceAccountName`
//! (defaulted to `default`) must name an existing ServiceAccount, whose
//! imagePullSecrets a pod without any inherits; unless
//! `automountServiceAccountToken` is false (on the pod, else on the
//! ServiceAccount), the pod gets the projected `kube-api-access-<5>`
//! volume (a bound token for 3607 s, `kube-root-ca.crt`'s `ca.crt`, the
//! namespace) mounted read-only in every container at
//! `/var/run/secrets/kubernetes.io/serviceaccount`.

use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ConfigMapProjection, Container, DownwardAPIProjection, DownwardAPIVolumeFile, KeyToPath, ObjectFieldSelector, Pod,
    ProjectedVolumeSource, ServiceAccount, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use serde_json::Value;

use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::{Registry, random_suffix};
use orchestrator_apimachinery::resources::by_kind;

pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const VOLUME_PREFIX: &str = "kube-api-access-";
/// The ConfigMap of the cluster CA that every namespace has (upstream's root-ca-cert-publisher).
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
/// Upstream's: an hour and seven seconds, so the kubelet's request is told from others.
const TOKEN_SECONDS: i64 = 3607;
/// The `default` ServiceAccount is created by a controller right after its
/// namespace: a pod racing it waits a little (upstream retries 10 times).
const DEFAULT_RETRIES: u32 = 10;
const RETRY_EVERY: Duration = Duration::from_millis(150);

/// The ServiceAccount, `None` if it does not exist.
fn service_account(reg: &Registry, ns: &str, name: &str) -> Result<Option<ServiceAccount>, ApiError> {
    let rt = by_kind("ServiceAccount").expect("served");
    let tries = if name == "default" { DEFAULT_RETRIES } else { 1 };
    for i in 0..tries {
        if i > 0 {
            std::thread::sleep(RETRY_EVERY);
        }
        match reg.get(rt, Some(ns), name) {
            Ok(o) => {
                return serde_json::from_value(o)
                    .map(Some)
                    .map_err(|e| ApiError::internal(format!("ServiceAccount {ns}/{name} does not decode: {e}")));
            }
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// The admission of one pod about to be created in `ns`.
pub fn admit(reg: &Registry, ns: &str, obj: &mut Value) -> Result<(), ApiError> {
    let mut pod: Pod = serde_json::from_value(obj.clone()).map_err(|e| ApiError::bad_request(format!("Pod: {e}")))?;
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    if pod.metadata.annotations.as_ref().is_some_and(|a| a.contains_key("kubernetes.io/config.mirror")) {
        return Ok(());
    }
    let spec = pod.spec.get_or_insert_default();
    let sa_name = spec.service_account_name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into());
    let Some(sa) = service_account(reg, ns, &sa_name)? else {
        return Err(ApiError::forbidden(format!(
            "pods {pod_name:?} is forbidden: error looking up service account {ns}/{sa_name}: serviceaccount {sa_name:?} not found"
        )));
    };
    spec.service_account_name = Some(sa_name.clone());
    spec.service_account = Some(sa_name);
    if spec.image_pull_secrets.as_ref().is_none_or(Vec::is_empty)
        && let Some(secrets) = sa.image_pull_secrets.filter(|s| !s.is_empty())
    {
        spec.image_pull_secrets = Some(secrets);
    }
    if !spec.automount_service_account_token.or(sa.automount_service_account_token).unwrap_or(true) {
        *obj = encode(&pod)?;
        return Ok(());
    }
    let existing = spec.volumes.iter().flatten().find(|v| v.name.starts_with(VOLUME_PREFIX)).map(|v| v.name.clone());
    let name = existing.clone().unwrap_or_else(|| format!("{VOLUME_PREFIX}{}", random_suffix(5)));
    let mount = VolumeMount {
        name: name.clone(),
        read_only: Some(true),
        mount_path: TOKEN_MOUNT_PATH.into(),
        ..Default::default()
    };
    let mut needed = false;
    let mut add_mount = |c: &mut Container| {
        let mounts = c.volume_mounts.get_or_insert_default();
        if !mounts.iter().any(|m| m.mount_path == TOKEN_MOUNT_PATH) {
            mounts.push(mount.clone());
            needed = true;
        }
    };
    spec.init_containers.iter_mut().flatten().for_each(&mut add_mount);
    spec.containers.iter_mut().for_each(&mut add_mount);
    if needed && existing.is_none() {
        spec.volumes.get_or_insert_default().push(token_volume(name));
    }
    *obj = encode(&pod)?;
    Ok(())
}

fn encode(pod: &Pod) -> Result<Value, ApiError> {
    serde_json::to_value(pod).map_err(|e| ApiError::internal(format!("Pod: {e}")))
}

/// Upstream's projected token volume.
fn token_volume(name: String) -> Volume {
    let sources = vec![
        VolumeProjection {
            service_account_token: Some(ServiceAccountTokenProjection {
                path: "token".into(),
                expiration_seconds: Some(TOKEN_SECONDS),
                audience: None,
            }),
            ..Default::default()
        },
        VolumeProjection {
            config_map: Some(ConfigMapProjection {
                name: ROOT_CA_CONFIGMAP.into(),
                items: Some(vec![KeyToPath { key: "ca.crt".into(), path: "ca.crt".into(), mode: None }]),
                optional: None,
            }),
            ..Default::default()
        },
        VolumeProjection {
            downward_api: Some(DownwardAPIProjection {
                items: Some(vec![DownwardAPIVolumeFile {
                    path: "namespace".into(),
                    field_ref: Some(ObjectFieldSelector {
                        api_version: Some("v1".into()),
                        field_path: "metadata.namespace".into(),
                    }),
                    ..Default::default()
                }]),
            }),
            ..Default::default()
        },
    ];
    Volume {
        name,
        projected: Some(ProjectedVolumeSource { default_mode: Some(0o644), sources: Some(sources) }),
        ..Default::default()
    }
}

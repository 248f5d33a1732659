//! The ResourceQuota controller: `status.hard` follows `spec.hard` and
//! `status.used` is recounted from the objects stored in the quota's
//! namespace (finished pods use nothing), which gives back what deleted
//! objects held; admission (`apiserver/src/quota.rs`) raises `used` as it
//! admits.

use k8s_openapi::api::core::v1::{ResourceQuota, ResourceQuotaStatus};
use serde_json::json;

use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::quantity::Quantity;
use orchestrator_apimachinery::quota::{Usage, from_resource_list, pod_counts, to_resource_list, usage};
use orchestrator_apimachinery::registry::{ListOptions, Registry};
use orchestrator_apimachinery::resources::{RESOURCES, ResourceType};
use orchestrator_apimachinery::typed;

use crate::{list_typed, name, rt, write_status_as_read};

/// What the objects of `ns` use of the resources `hard` limits.
fn used_in(reg: &Registry, ns: &str, hard: &Usage) -> Result<Usage, ApiError> {
    let mut used: Usage = hard.keys().map(|k| (k.clone(), Quantity::ZERO)).collect();
    let relevant = |rt: &ResourceType| {
        let sample = usage(rt, &json!({"spec": {"type": "LoadBalancer"}}));
        rt.namespaced
            && (sample.keys().any(|k| hard.contains_key(k))
                || (rt.kind == "Pod"
                    && hard
                        .keys()
                        .any(|k| k.contains("cpu") || k.contains("memory") || k.contains("ephemeral-storage")))
                || (rt.kind == "PersistentVolumeClaim" && hard.contains_key("requests.storage")))
    };
    for rt in RESOURCES.iter().filter(|r| relevant(r)) {
        for o in reg.list(rt, Some(ns), &ListOptions::default())?.items {
            if rt.kind == "Pod" && !pod_counts(&o) {
                continue;
            }
            for (k, q) in usage(rt, &o) {
                if let Some(sum) = used.get_mut(&k) {
                    *sum = *sum + q;
                }
            }
        }
    }
    Ok(used)
}

pub fn reconcile(reg: &Registry) -> Result<(), ApiError> {
    let quotas_rt = rt("ResourceQuota");
    for q in list_typed::<ResourceQuota>(reg)? {
        let ns = q.metadata.namespace.as_deref().unwrap_or_default();
        let spec_hard = q.spec.as_ref().and_then(|s| s.hard.clone()).unwrap_or_default();
        let used = used_in(reg, ns, &from_resource_list(Some(&spec_hard)))?;
        let status = ResourceQuotaStatus { hard: Some(spec_hard), used: Some(to_resource_list(&used)) };
        if q.status.as_ref() == Some(&status) {
            continue;
        }
        // An admission that charged meanwhile makes this a conflict.
        let mut new = typed::encode(&q, "ResourceQuota")?;
        new["status"] = typed::encode(&status, "ResourceQuota status")?;
        write_status_as_read(reg, quotas_rt, Some(ns), name(&q.metadata), new)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchestrator_apimachinery::registry::WriteOptions;
    use orchestrator_apimachinery::resources::by_kind;

    #[test]
    fn used_counts_live_pods_and_objects() {
        let d = tempfile::tempdir().unwrap();
        let reg = crate::test_registry(&d);
        let opts = WriteOptions::default();
        let pod = |name: &str, cpu: &str| {
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                "spec": {"containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": cpu}}}]}})
        };
        reg.create(by_kind("Pod").unwrap(), Some("default"), pod("a", "250m"), &opts).unwrap();
        reg.create(by_kind("Pod").unwrap(), Some("default"), pod("b", "500m"), &opts).unwrap();
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}});
        reg.create(by_kind("ConfigMap").unwrap(), Some("default"), cm, &opts).unwrap();
        let quota = json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "q"},
            "spec": {"hard": {"pods": "10", "requests.cpu": "2", "count/configmaps": "5", "services": "1"}}});
        reg.create(by_kind("ResourceQuota").unwrap(), Some("default"), quota, &opts).unwrap();
        reconcile(&reg).unwrap();
        let q = reg.get(by_kind("ResourceQuota").unwrap(), Some("default"), "q").unwrap();
        // The bootstrap made the `kubernetes` Service.
        assert_eq!(
            q["status"]["used"],
            json!({"pods": "2", "requests.cpu": "750m", "count/configmaps": "1", "services": "1"})
        );
        assert_eq!(q["status"]["hard"]["pods"], "10");
    }
}

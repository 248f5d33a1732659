//! The ResourceQuota controller: `status.hard` follows `spec.hard` and
//! `status.used` is recounted from the objects stored in the quota's
//! namespace (finished pods use nothing), which gives back what deleted
//! objects held; admission (`apiserver/src/quota.rs`) raises `used` as it
//! admits.

use serde_json::{Map, Value, json};

use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::quantity::Quantity;
use orchestrator_apimachinery::quota::{Usage, parse_list, pod_counts, usage};
use orchestrator_apimachinery::registry::{ListOptions, Registry, name_of, namespace_of};
use orchestrator_apimachinery::resources::{RESOURCES, ResourceType};

use crate::{rt, write_status_as_read};

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

fn list_json(u: &Usage) -> Value {
    Value::Object(u.iter().map(|(k, v)| (k.clone(), v.to_string().into())).collect::<Map<_, _>>())
}

pub fn reconcile(reg: &Registry) -> Result<(), ApiError> {
    let quotas_rt = rt("ResourceQuota");
    for q in reg.list(quotas_rt, None, &ListOptions::default())?.items {
        let (ns, name) = (namespace_of(&q).unwrap_or_default().to_string(), name_of(&q).to_string());
        let hard = parse_list(q.pointer("/spec/hard"));
        let used = used_in(reg, &ns, &hard)?;
        let status = json!({"hard": q.pointer("/spec/hard").cloned().unwrap_or(json!({})), "used": list_json(&used)});
        if q.get("status") == Some(&status) {
            continue;
        }
        // An admission that charged meanwhile makes this a conflict.
        let mut new = q.clone();
        new["status"] = status;
        write_status_as_read(reg, quotas_rt, Some(&ns), &name, new)?;
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

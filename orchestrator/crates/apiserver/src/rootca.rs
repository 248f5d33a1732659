//! Upstream's root-ca-cert-publisher: every active namespace has the
//! ConfigMap `kube-root-ca.crt` with the cluster CA as `ca.crt` (what the
//! projected token volume mounts). The API server runs it because it holds
//! the CA; it follows Namespaces and that ConfigMap through watches
//! (`crate::spawn_reconciler`) and puts back what is missing or changed.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::{Part, Registry, WriteOptions};
use orchestrator_apimachinery::resources::by_kind;
use orchestrator_apimachinery::selector::FieldSelector;
use orchestrator_apimachinery::typed;

use crate::sa_admission::ROOT_CA_CONFIGMAP;

const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

fn wanted(ca_pem: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(ROOT_CA_CONFIGMAP.into()),
            annotations: Some(BTreeMap::from([("kubernetes.io/description".to_string(), DESCRIPTION.to_string())])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("ca.crt".to_string(), ca_pem.to_string())])),
        ..Default::default()
    }
}

/// One pass: creates or repairs the ConfigMap in every active namespace.
pub fn reconcile(reg: &Registry, ca_pem: &str) -> Result<(), ApiError> {
    let cm_rt = by_kind("ConfigMap").expect("served");
    let want = wanted(ca_pem);
    for ns in typed::list::<Namespace>(reg, by_kind("Namespace").expect("served"), None)? {
        if ns.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let ns = ns.metadata.name.unwrap_or_default();
        match reg.get(cm_rt, Some(&ns), ROOT_CA_CONFIGMAP) {
            Err(e) if e.code == 404 => {
                let o = typed::encode(&want, "ConfigMap")?;
                match reg.create(cm_rt, Some(&ns), o, &WriteOptions::default()) {
                    // Racing a namespace's deletion or another pass.
                    Err(e) if e.code == 409 || e.code == 403 => {}
                    r => {
                        r?;
                    }
                }
            }
            Err(e) => return Err(e),
            Ok(o) => {
                let cm: ConfigMap = typed::decode(o, "ConfigMap")?;
                if cm.data != want.data {
                    reg.modify(cm_rt, Some(&ns), ROOT_CA_CONFIGMAP, Part::Main, &WriteOptions::default(), |o| {
                        typed::change_as::<ConfigMap>(o, "ConfigMap", |c| {
                            c.data = want.data.clone();
                            true
                        })
                    })?;
                }
            }
        }
    }
    Ok(())
}

/// What the publisher follows: Namespaces and the `kube-root-ca.crt` ConfigMaps.
pub fn watched() -> Vec<(&'static str, FieldSelector)> {
    let name = FieldSelector::parse(&format!("metadata.name={ROOT_CA_CONFIGMAP}"), &[]).unwrap_or_default();
    vec![("Namespace", FieldSelector::default()), ("ConfigMap", name)]
}

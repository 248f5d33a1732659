//! Every active namespace has a `default` ServiceAccount (pods default to it).

use k8s_openapi::Resource;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::{create_typed, is_deleting, list_typed, name, rt};
use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::Registry;

pub fn reconcile(reg: &Registry) -> Result<(), ApiError> {
    for ns in list_typed::<Namespace>(reg)? {
        if is_deleting(&ns.metadata) {
            continue;
        }
        let ns = name(&ns.metadata);
        match reg.get(rt(ServiceAccount::KIND), Some(ns), "default") {
            Err(e) if e.code == 404 => {
                let sa = ServiceAccount {
                    metadata: ObjectMeta { name: Some("default".into()), ..Default::default() },
                    ..Default::default()
                };
                match create_typed(reg, Some(ns), &sa) {
                    Err(e) if e.code != 409 && e.code != 403 => return Err(e),
                    _ => {}
                }
            }
            Err(e) => return Err(e),
            Ok(_) => {}
        }
    }
    Ok(())
}

//! Upstream's token controller for legacy ServiceAccount token Secrets: a
//! Secret of type `kubernetes.io/service-account-token` annotated with
//! `kubernetes.io/service-account.name` gets `token`, `ca.crt` and
//! `namespace`, and the ServiceAccount's uid as
//! `kubernetes.io/service-account.uid`. Its token does not expire (as
//! upstream's legacy tokens) and is bound to the Secret: deleting the
//! Secret, or the ServiceAccount, ends it.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};

use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::{ListOptions, Part, Registry, WriteOptions};
use orchestrator_apimachinery::resources::by_kind;
use orchestrator_apimachinery::selector::FieldSelector;
use orchestrator_apimachinery::typed;

use crate::satoken::{self, Keys};

const TYPE: &str = "kubernetes.io/service-account-token";
const SA_NAME: &str = "kubernetes.io/service-account.name";
const SA_UID: &str = "kubernetes.io/service-account.uid";
/// "Does not expire": the longest lifetime TokenRequest allows.
const LIFETIME: i64 = 1 << 32;

fn type_selector() -> FieldSelector {
    FieldSelector::parse(&format!("type={TYPE}"), &["type"]).unwrap_or_default()
}

/// What the controller follows: these Secrets (and, through them, their ServiceAccounts).
pub fn watched() -> Vec<(&'static str, FieldSelector)> {
    vec![("Secret", type_selector())]
}

/// One pass: fills every such Secret that has no token yet.
pub fn reconcile(reg: &Registry, keys: &Keys, ca_pem: &str) -> Result<(), ApiError> {
    let rt = by_kind("Secret").expect("served");
    let opts = ListOptions { fields: type_selector(), ..Default::default() };
    for o in reg.list(rt, None, &opts)?.items {
        let secret: Secret = typed::decode(o, "Secret")?;
        if secret.data.as_ref().is_some_and(|d| d.contains_key("token")) {
            continue;
        }
        let meta = &secret.metadata;
        let (ns, name) = (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default());
        let Some(sa_name) = meta.annotations.as_ref().and_then(|a| a.get(SA_NAME)).cloned() else { continue };
        let sa = match reg.get(by_kind("ServiceAccount").expect("served"), Some(&ns), &sa_name) {
            Ok(o) => typed::decode::<ServiceAccount>(o, "ServiceAccount")?,
            // Filled once the ServiceAccount exists.
            Err(e) if e.code == 404 => continue,
            Err(e) => return Err(e),
        };
        let sa_uid = sa.metadata.uid.unwrap_or_default();
        let secret_ref = satoken::Ref { name: name.clone(), uid: meta.uid.clone().unwrap_or_default() };
        let token = keys.sign(&satoken::claims(&ns, &sa_name, &sa_uid, LIFETIME, None, Some(secret_ref)));
        reg.modify(rt, Some(&ns), &name, Part::Main, &WriteOptions::default(), |o| {
            typed::change_as::<Secret>(o, "Secret", |s| {
                let data = s.data.get_or_insert_default();
                if data.contains_key("token") {
                    return false;
                }
                data.insert("token".into(), ByteString(token.clone().into_bytes()));
                data.insert("ca.crt".into(), ByteString(ca_pem.as_bytes().to_vec()));
                data.insert("namespace".into(), ByteString(ns.clone().into_bytes()));
                s.metadata.annotations.get_or_insert_with(BTreeMap::new).insert(SA_UID.into(), sa_uid.clone());
                true
            })
        })?;
    }
    Ok(())
}

//! Upstream's ResourceQuota admission: an object created in a namespace
//! with quotas is charged to each quota that limits what it uses; the
//! quota's `status.used` is raised in the same compare-and-swap as the
//! check, so concurrent creates cannot both take the last unit. The quota
//! controller (`controllers/src/quota.rs`) recounts `used` from what is
//! stored, which gives back what deleted objects held. As upstream, the
//! limits are the quota's `status.hard` (the controller copies them from
//! `spec.hard`), and a limited resource without a `used` figure is refused
//! as "status unknown".

use k8s_openapi::api::core::v1::ResourceQuota;
use serde_json::Value;

use orchestrator_apimachinery::errors::{ApiError, qualified};
use orchestrator_apimachinery::quota::{charge, from_resource_list, missing, to_resource_list, usage};
use orchestrator_apimachinery::registry::{Part, Registry, WriteOptions, name_of};
use orchestrator_apimachinery::resources::{ResourceType, by_kind};
use orchestrator_apimachinery::typed;

fn forbidden(rt: &ResourceType, name: &str, why: &str) -> ApiError {
    ApiError::forbidden(format!("{} \"{name}\" is forbidden: {why}", qualified(rt)))
}

/// A quota's limits and use as its status states them.
fn hard_and_used(
    q: &ResourceQuota,
) -> (orchestrator_apimachinery::quota::Usage, orchestrator_apimachinery::quota::Usage) {
    let status = q.status.as_ref();
    (from_resource_list(status.and_then(|s| s.hard.as_ref())), from_resource_list(status.and_then(|s| s.used.as_ref())))
}

/// Charges `o` (of `rt`, created in `ns`) to the namespace's quotas.
/// `o` is the request's object, of any kind: [`usage`] reads what it uses as JSON.
pub fn admit(reg: &Registry, rt: &ResourceType, ns: &str, o: &Value, dry_run: bool) -> Result<(), ApiError> {
    let quotas_rt = by_kind("ResourceQuota").expect("served");
    let quotas: Vec<ResourceQuota> = typed::list(reg, quotas_rt, Some(ns))?;
    if quotas.is_empty() {
        return Ok(());
    }
    let name = name_of(o).to_string();
    let delta = usage(rt, o);
    for q in &quotas {
        let quota = q.metadata.name.clone().unwrap_or_default();
        let (hard, _) = hard_and_used(q);
        if !hard.keys().any(|k| delta.contains_key(k)) {
            continue;
        }
        let lacking = missing(rt, o, &hard);
        if !lacking.is_empty() {
            return Err(forbidden(rt, &name, &format!("failed quota: {quota}: must specify {}", lacking.join(","))));
        }
        let opts = WriteOptions { dry_run, ..Default::default() };
        let what = format!("ResourceQuota {quota}");
        reg.modify(quotas_rt, Some(ns), &quota, Part::Status, &opts, |cur| {
            let (hard, used) = hard_and_used(&typed::decode(cur.clone(), &what)?);
            let unknown: Vec<&str> =
                hard.keys().filter(|k| delta.contains_key(*k) && !used.contains_key(*k)).map(String::as_str).collect();
            if !unknown.is_empty() {
                let why = format!("status unknown for quota: {quota}, resources: {}", unknown.join(","));
                return Err(forbidden(rt, &name, &why));
            }
            let after = charge(&quota, &hard, &used, &delta).map_err(|why| forbidden(rt, &name, &why))?;
            let used = to_resource_list(&after.into_iter().filter(|(k, _)| hard.contains_key(k)).collect());
            typed::change_as(cur, &what, |q: &mut ResourceQuota| {
                q.status.get_or_insert_default().used = Some(used);
                true
            })
        })?;
    }
    Ok(())
}

//! Upstream's ResourceQuota admission: an object created in a namespace
//! with quotas is charged to each quota that limits what it uses; the
//! quota's `status.used` is raised in the same compare-and-swap as the
//! check, so concurrent creates cannot both take the last unit. The quota
//! controller (`controllers/src/quota.rs`) recounts `used` from what is
//! stored, which gives back what deleted objects held. As upstream, the
//! limits are the quota's `status.hard` (the controller copies them from
//! `spec.hard`), and a limited resource without a `used` figure is refused
//! as "status unknown".

use serde_json::Value;

use orchestrator_apimachinery::errors::{ApiError, qualified};
use orchestrator_apimachinery::quota::{charge, missing, parse_list, usage};
use orchestrator_apimachinery::registry::{ListOptions, Part, Registry, WriteOptions, name_of};
use orchestrator_apimachinery::resources::{ResourceType, by_kind};

fn forbidden(rt: &ResourceType, name: &str, why: &str) -> ApiError {
    ApiError::forbidden(format!("{} \"{name}\" is forbidden: {why}", qualified(rt)))
}

/// Charges `o` (of `rt`, created in `ns`) to the namespace's quotas.
pub fn admit(reg: &Registry, rt: &ResourceType, ns: &str, o: &Value, dry_run: bool) -> Result<(), ApiError> {
    let quotas_rt = by_kind("ResourceQuota").expect("served");
    let quotas = reg.list(quotas_rt, Some(ns), &ListOptions::default())?.items;
    if quotas.is_empty() {
        return Ok(());
    }
    let name = name_of(o).to_string();
    let delta = usage(rt, o);
    for q in &quotas {
        let quota = name_of(q).to_string();
        let hard = parse_list(q.pointer("/status/hard"));
        if !hard.keys().any(|k| delta.contains_key(k)) {
            continue;
        }
        let lacking = missing(rt, o, &hard);
        if !lacking.is_empty() {
            return Err(forbidden(rt, &name, &format!("failed quota: {quota}: must specify {}", lacking.join(","))));
        }
        let opts = WriteOptions { dry_run, ..Default::default() };
        reg.modify(quotas_rt, Some(ns), &quota, Part::Status, &opts, |cur| {
            let hard = parse_list(cur.pointer("/status/hard"));
            let used = parse_list(cur.pointer("/status/used"));
            let unknown: Vec<&str> =
                hard.keys().filter(|k| delta.contains_key(*k) && !used.contains_key(*k)).map(String::as_str).collect();
            if !unknown.is_empty() {
                let why = format!("status unknown for quota: {quota}, resources: {}", unknown.join(","));
                return Err(forbidden(rt, &name, &why));
            }
            let after = charge(&quota, &hard, &used, &delta).map_err(|why| forbidden(rt, &name, &why))?;
            let used: serde_json::Map<String, Value> = after
                .iter()
                .filter(|(k, _)| hard.contains_key(*k))
                .map(|(k, v)| (k.clone(), v.to_string().into()))
                .collect();
            cur["status"]["used"] = Value::Object(used);
            Ok(true)
        })?;
    }
    Ok(())
}

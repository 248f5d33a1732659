//! What the API server adds to CertificateSigningRequests beyond the
//! registry: the requester (`spec.username`, `groups`, `uid`) is the
//! authenticated user, whatever the body says, as upstream; and the
//! `approval` subresource, which changes only the Approved and Denied
//! conditions (`kubectl certificate approve|deny`).

use serde_json::Value;

use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::{Part, Registry, WriteOptions, Written};
use orchestrator_apimachinery::resources::ResourceType;

use crate::User;

const KIND: &str = "CertificateSigningRequest";
const DECISIONS: [&str; 2] = ["Approved", "Denied"];

/// Sets the requester of a CSR being created to `user`.
pub fn fill_requester(rt: &ResourceType, user: &User, o: &mut Value) {
    if rt.kind != KIND {
        return;
    }
    if !o.get("spec").is_some_and(Value::is_object) {
        o["spec"] = serde_json::json!({});
    }
    o["spec"]["username"] = user.name.clone().into();
    o["spec"]["groups"] = user.groups.clone().into();
    if let Some(spec) = o["spec"].as_object_mut() {
        spec.remove("uid");
        spec.remove("extra");
    }
}

fn decisions(o: &Value) -> impl Iterator<Item = &Value> {
    o.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| c["type"].as_str().is_some_and(|t| DECISIONS.contains(&t)))
}

/// `PUT …/certificatesigningrequests/NAME/approval`: the body's Approved
/// and Denied conditions replace the stored ones; everything else stays.
pub fn update_approval(
    reg: &Registry,
    rt: &ResourceType,
    name: &str,
    body: &Value,
    opts: &WriteOptions,
) -> Result<Written, ApiError> {
    let current = reg.get(rt, None, name)?;
    let mut new = current.clone();
    if let Some(rv) = body.pointer("/metadata/resourceVersion").and_then(Value::as_str).filter(|r| !r.is_empty()) {
        new["metadata"]["resourceVersion"] = rv.into();
    }
    let now = orchestrator_apimachinery::registry::now();
    let mut conditions: Vec<Value> = current
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| !c["type"].as_str().is_some_and(|t| DECISIONS.contains(&t)))
        .cloned()
        .collect();
    for c in decisions(body) {
        let mut c = c.clone();
        for t in ["lastUpdateTime", "lastTransitionTime"] {
            if c.get(t).is_none_or(Value::is_null) {
                c[t] = now.clone().into();
            }
        }
        if c.get("status").is_none_or(Value::is_null) {
            c["status"] = "True".into();
        }
        conditions.push(c);
    }
    if !new.get("status").is_some_and(Value::is_object) {
        new["status"] = serde_json::json!({});
    }
    new["status"]["conditions"] = conditions.into();
    reg.update(rt, None, name, new, Part::Status, opts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requester_is_the_authenticated_user() {
        let rt = orchestrator_apimachinery::resources::by_kind(KIND).unwrap();
        let user = User {
            name: "system:bootstrap:abcdef".into(),
            groups: vec!["system:bootstrappers".into()],
            ..Default::default()
        };
        let mut o = json!({"spec": {"username": "system:admin", "groups": ["system:masters"], "uid": "x"}});
        fill_requester(rt, &user, &mut o);
        assert_eq!(o["spec"], json!({"username": "system:bootstrap:abcdef", "groups": ["system:bootstrappers"]}));
    }
}

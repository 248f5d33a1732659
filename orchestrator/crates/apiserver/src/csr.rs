//! What the API server adds to CertificateSigningRequests beyond the
//! registry: the requester (`spec.username`, `groups`, `uid`) is the
//! authenticated user, whatever the body says, as upstream; and the
//! `approval` subresource, which changes only the Approved and Denied
//! conditions (`kubectl certificate approve|deny`).

use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::{Part, Registry, WriteOptions, Written};
use orchestrator_apimachinery::resources::ResourceType;
use orchestrator_apimachinery::typed;

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

fn is_decision(c: &CertificateSigningRequestCondition) -> bool {
    DECISIONS.contains(&c.type_.as_str())
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
    let body: CertificateSigningRequest = typed::from_body(rt, body)?;
    let now = Time(Timestamp::from_second(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap_or_default());
    let decided =
        body.status.and_then(|s| s.conditions).unwrap_or_default().into_iter().filter(is_decision).map(|mut c| {
            c.last_update_time.get_or_insert_with(|| now.clone());
            c.last_transition_time.get_or_insert_with(|| now.clone());
            if c.status.is_empty() {
                c.status = "True".into();
            }
            c
        });
    let decided: Vec<_> = decided.collect();
    let rv = body.metadata.resource_version.filter(|r| !r.is_empty());
    // The stored object, changed as its type: fields the type does not know stay.
    let mut new = reg.get(rt, None, name)?;
    typed::change_as(&mut new, &format!("{KIND} {name}"), |csr: &mut CertificateSigningRequest| {
        if rv.is_some() {
            csr.metadata.resource_version = rv;
        }
        let status = csr.status.get_or_insert_default();
        let mut conditions: Vec<_> = status.conditions.take().unwrap_or_default();
        conditions.retain(|c| !is_decision(c));
        conditions.extend(decided);
        status.conditions = Some(conditions);
        true
    })?;
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

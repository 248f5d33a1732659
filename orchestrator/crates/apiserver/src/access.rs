//! Impersonation (`Impersonate-User`/`-Group` headers, authorized by the
//! `impersonate` verb) and the access reviews answered from the RBAC
//! rules: SelfSubjectAccessReview, SubjectAccessReview,
//! LocalSubjectAccessReview, SelfSubjectRulesReview and SelfSubjectReview (`kubectl auth whoami`).

use http::HeaderMap;
use k8s_openapi::api::authorization::v1::{SelfSubjectRulesReviewSpec, SubjectAccessReviewSpec};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::namespace_of;

use crate::User;
use crate::rbac::{AUTHENTICATED, Attributes, Rbac};

pub(crate) const SA_PREFIX: &str = "system:serviceaccount:";

/// The groups every authenticated user has, added to `groups` (less
/// empty ones: a certificate with an empty O).
pub fn authenticated(name: String, mut groups: Vec<String>) -> User {
    groups.retain(|g| !g.is_empty());
    if let Some((ns, _)) = name.strip_prefix(SA_PREFIX).and_then(|r| r.split_once(':')) {
        for g in ["system:serviceaccounts".to_string(), format!("system:serviceaccounts:{ns}")] {
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
    }
    if name != "system:anonymous" && !groups.iter().any(|g| g == AUTHENTICATED) {
        groups.push(AUTHENTICATED.into());
    }
    User { name, groups, ..Default::default() }
}

fn header_values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect()
}

/// The user a request acts as: the authenticated one, or the one it
/// impersonates when it may (upstream's impersonation filter).
pub fn impersonate(rbac: &Rbac, user: Option<User>, headers: &HeaderMap) -> Result<Option<User>, ApiError> {
    let names = header_values(headers, "impersonate-user");
    let groups = header_values(headers, "impersonate-group");
    if names.is_empty() {
        if !groups.is_empty() {
            return Err(ApiError::bad_request(format!(
                "requested [{}] without impersonating a user",
                groups.iter().map(|g| format!("Impersonate-Group={g}")).collect::<Vec<_>>().join(" ")
            )));
        }
        return Ok(user);
    }
    let Some(user) = user else { return Ok(None) };
    let name = names[0];
    let (mut checks, ns) = match name.strip_prefix(SA_PREFIX).and_then(|r| r.split_once(':')) {
        Some((ns, sa)) => (vec![("serviceaccounts", sa)], Some(ns)),
        None => (vec![("users", name)], None),
    };
    checks.extend(groups.iter().map(|g| ("groups", *g)));
    for (resource, target) in checks {
        let ns = if resource == "serviceaccounts" { ns } else { None };
        if !rbac.allows(&user, &Attributes::resource("impersonate", ns, "", resource, Some(target))) {
            let scope = match ns {
                Some(ns) => format!("in the namespace {ns:?}"),
                None => "at the cluster scope".into(),
            };
            return Err(ApiError::forbidden(format!(
                "{resource} {target:?} is forbidden: User {:?} cannot impersonate resource {resource:?} in API group \"\" {scope}",
                user.name
            )));
        }
    }
    Ok(Some(authenticated(name.to_string(), groups.iter().map(|g| g.to_string()).collect())))
}

/// The attributes a review's spec asks about (a SelfSubjectAccessReview's
/// spec is a SubjectAccessReview's without the user).
fn review_attributes(spec: &SubjectAccessReviewSpec) -> Result<Attributes, ApiError> {
    let s = |v: &Option<String>| v.clone().unwrap_or_default();
    if let Some(r) = &spec.resource_attributes {
        let resource = match s(&r.subresource).as_str() {
            "" => s(&r.resource),
            sub => format!("{}/{sub}", s(&r.resource)),
        };
        let (ns, name) = (s(&r.namespace), s(&r.name));
        return Ok(Attributes::resource(&s(&r.verb), Some(&ns), &s(&r.group), &resource, Some(&name)));
    }
    if let Some(n) = &spec.non_resource_attributes {
        return Ok(Attributes::non_resource(&s(&n.verb), &s(&n.path)));
    }
    Err(ApiError::new(
        422,
        "Invalid",
        "spec.resourceAttributes: Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified",
    ))
}

/// A review's `spec`, typed (none: the default).
fn spec_as<T: DeserializeOwned + Default>(kind: &str, review: &Value) -> Result<T, ApiError> {
    match review.get("spec").filter(|s| !s.is_null()) {
        Some(spec) => <T as serde::Deserialize>::deserialize(spec)
            .map_err(|e| ApiError::bad_request(format!("{kind}: spec: {e}"))),
        None => Ok(T::default()),
    }
}

pub(crate) fn forbidden_create(user: &User, group: &str, resource: &str) -> ApiError {
    forbidden_create_in(user, group, None, resource)
}

fn forbidden_create_in(user: &User, group: &str, ns: Option<&str>, resource: &str) -> ApiError {
    let scope = match ns {
        Some(ns) => format!("in the namespace {ns:?}"),
        None => "at the cluster scope".into(),
    };
    ApiError::forbidden(format!(
        "{resource}.{group} is forbidden: User {:?} cannot create resource {resource:?} in API group {group:?} {scope}",
        user.name
    ))
}

/// Whether the authorizers let a user do something, and their reason
/// when they do (`None`: refused).
pub(crate) type Authorize<'a> = &'a dyn Fn(&User, &Attributes) -> Option<&'static str>;

/// Answers `POST /apis/<group>/v1/[namespaces/<ns>/]<resource>` for the
/// review kinds (access reviews asked of `authorize`); `None` for other resources.
pub(crate) fn review(
    rbac: &Rbac,
    authorize: Authorize<'_>,
    user: &User,
    group: &str,
    ns: Option<&str>,
    resource: &str,
    body: &[u8],
) -> Option<Result<Value, ApiError>> {
    let kind = match (group, ns.is_some(), resource) {
        ("authorization.k8s.io", false, "selfsubjectaccessreviews") => "SelfSubjectAccessReview",
        ("authorization.k8s.io", false, "subjectaccessreviews") => "SubjectAccessReview",
        ("authorization.k8s.io", true, "localsubjectaccessreviews") => "LocalSubjectAccessReview",
        ("authorization.k8s.io", false, "selfsubjectrulesreviews") => "SelfSubjectRulesReview",
        ("authentication.k8s.io", false, "selfsubjectreviews") => "SelfSubjectReview",
        _ => return None,
    };
    Some(answer(rbac, authorize, user, group, ns, resource, kind, body))
}

/// A LocalSubjectAccessReview asks about its own namespace only (upstream's
/// REST check and validation, in that order).
fn local_namespace(review: &mut Value, spec: &SubjectAccessReviewSpec, ns: &str) -> Result<(), ApiError> {
    let meta_ns = namespace_of(review).unwrap_or_default().to_string();
    if meta_ns.is_empty() {
        review["metadata"]["namespace"] = ns.into();
    } else if meta_ns != ns {
        return Err(ApiError::bad_request(format!("spec.resourceAttributes.namespace must match namespace: {ns}")));
    }
    let invalid = |field: &str, value: &str, why: &str| {
        ApiError::new(
            422,
            "Invalid",
            format!(
                "LocalSubjectAccessReview.authorization.k8s.io \"\" is invalid: {field}: Invalid value: {value}: {why}"
            ),
        )
    };
    if spec.non_resource_attributes.is_some() {
        return Err(invalid("spec.nonResourceAttributes", "\"\"", "disallowed on this kind of request"));
    }
    let attributes = spec.resource_attributes.as_ref();
    let attr_ns = attributes.and_then(|r| r.namespace.as_deref()).unwrap_or_default();
    if attributes.is_some() && attr_ns != ns {
        return Err(invalid(
            "spec.resourceAttributes.namespace",
            &format!("{attr_ns:?}"),
            "must match metadata.namespace",
        ));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn answer(
    rbac: &Rbac,
    authorize: Authorize<'_>,
    user: &User,
    group: &str,
    ns: Option<&str>,
    resource: &str,
    kind: &str,
    body: &[u8],
) -> Result<Value, ApiError> {
    if !rbac.allows(user, &Attributes::resource("create", ns, group, resource, None)) {
        return Err(forbidden_create_in(user, group, ns, resource));
    }
    // The body goes back as sent, with its status: kept as JSON, its spec read typed.
    let mut review: Value = if body.is_empty() { json!({}) } else { orchestrator_apimachinery::decode::json(body)? };
    review["kind"] = kind.into();
    review["apiVersion"] = format!("{group}/v1").into();
    let access = |review: &Value| spec_as::<SubjectAccessReviewSpec>(kind, review);
    if let Some(ns) = ns {
        let spec = access(&review)?;
        local_namespace(&mut review, &spec, ns)?;
    }
    review["status"] = match kind {
        "SelfSubjectAccessReview" => decision(authorize, user, &review_attributes(&access(&review)?)?),
        "SubjectAccessReview" | "LocalSubjectAccessReview" => {
            let spec = access(&review)?;
            let name = spec.user.clone().unwrap_or_default();
            let groups = spec.groups.clone().unwrap_or_default();
            if name.is_empty() && groups.is_empty() {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    "SubjectAccessReview.authorization.k8s.io \"\" is invalid: spec.user: Invalid value: \"\": at least one of user or group must be specified",
                ));
            }
            decision(authorize, &User { name, groups, ..Default::default() }, &review_attributes(&spec)?)
        }
        "SelfSubjectRulesReview" => {
            let spec: SelfSubjectRulesReviewSpec = spec_as(kind, &review)?;
            let ns = spec.namespace.as_deref().filter(|n| !n.is_empty());
            let rules = rbac.rules_for(user, ns);
            let (urls, resources): (Vec<_>, Vec<_>) = rules.iter().partition(|r| !r.non_resource_urls.is_empty());
            json!({
                "resourceRules": resources.iter().map(|r| r.to_json()).collect::<Vec<_>>(),
                "nonResourceRules": urls.iter().map(|r| r.to_json()).collect::<Vec<_>>(),
                "incomplete": false,
            })
        }
        _ => {
            let mut info = json!({"username": user.name, "groups": user.groups});
            if !user.uid.is_empty() {
                info["uid"] = user.uid.clone().into();
            }
            if !user.extra.is_empty() {
                info["extra"] = json!(user.extra);
            }
            json!({"userInfo": info})
        }
    };
    Ok(review)
}

fn decision(authorize: Authorize<'_>, user: &User, a: &Attributes) -> Value {
    match authorize(user, a) {
        Some("") => json!({"allowed": true}),
        Some(reason) => json!({"allowed": true, "reason": reason}),
        None => json!({"allowed": false}),
    }
}

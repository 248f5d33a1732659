//! API errors, shaped as Kubernetes `Status` objects.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ListMeta, Status, StatusCause, StatusDetails};

use crate::resources::ResourceType;
use orchestrator_store::StoreError;

/// An error answered to a client: HTTP code, `reason`, message, details.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Box<StatusDetails>>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.reason, self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

/// `deployments.apps` / `pods`: how upstream names a resource in messages.
pub fn qualified(rt: &ResourceType) -> String {
    if rt.group.is_empty() { rt.plural.to_string() } else { format!("{}.{}", rt.plural, rt.group) }
}

/// Upstream's 400 for a request body its kind's type cannot hold.
pub fn cannot_handle(rt: &ResourceType, e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("{} in version \"{}\" cannot be handled as a {}: {e}", rt.kind, rt.version, rt.kind))
}

fn details(rt: &ResourceType, name: &str) -> Option<Box<StatusDetails>> {
    Some(Box::new(StatusDetails {
        name: Some(name.to_string()),
        group: Some(rt.group.to_string()).filter(|g| !g.is_empty()),
        kind: Some(rt.plural.to_string()),
        ..Default::default()
    }))
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { code, reason, message: message.into(), details: None }
    }

    pub fn not_found(rt: &ResourceType, name: &str) -> ApiError {
        ApiError {
            details: details(rt, name),
            ..ApiError::new(404, "NotFound", format!("{} \"{name}\" not found", qualified(rt)))
        }
    }

    pub fn already_exists(rt: &ResourceType, name: &str) -> ApiError {
        ApiError {
            details: details(rt, name),
            ..ApiError::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", qualified(rt)))
        }
    }

    pub fn conflict(rt: &ResourceType, name: &str, why: &str) -> ApiError {
        ApiError {
            details: details(rt, name),
            ..ApiError::new(
                409,
                "Conflict",
                format!("Operation cannot be fulfilled on {} \"{name}\": {why}", qualified(rt)),
            )
        }
    }

    pub fn modified(rt: &ResourceType, name: &str) -> ApiError {
        ApiError::conflict(
            rt,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 422 with one cause per (field, message).
    pub fn invalid(rt: &ResourceType, name: &str, causes: Vec<(String, String)>) -> ApiError {
        let summary: Vec<String> = causes.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        let summary = if summary.len() == 1 { summary[0].clone() } else { format!("[{}]", summary.join(", ")) };
        let mut d = *details(rt, name).unwrap_or_default();
        d.kind = Some(rt.kind.to_string());
        d.causes = Some(
            causes
                .into_iter()
                .map(|(field, message)| StatusCause {
                    reason: Some(
                        match message.split(':').next() {
                            Some("Required value") => "FieldValueRequired",
                            Some("Forbidden") => "FieldValueForbidden",
                            Some("Unsupported value") => "FieldValueNotSupported",
                            Some("Too many") => "FieldValueTooMany",
                            Some("Too long") => "FieldValueTooLong",
                            Some("Duplicate value") => "FieldValueDuplicate",
                            Some("Not found") => "FieldValueNotFound",
                            _ => "FieldValueInvalid",
                        }
                        .into(),
                    ),
                    message: Some(message),
                    field: Some(field),
                })
                .collect(),
        );
        let kind = if rt.group.is_empty() { rt.kind.to_string() } else { format!("{}.{}", rt.kind, rt.group) };
        ApiError {
            details: Some(Box::new(d)),
            ..ApiError::new(422, "Invalid", format!("{kind} \"{name}\" is invalid: {summary}"))
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(403, "Forbidden", message)
    }

    pub fn gone(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message)
    }

    /// 413: a body or an object over the limits (upstream's reason).
    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(413, "RequestEntityTooLarge", message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, "InternalError", message)
    }

    pub fn status(&self) -> Status {
        Status {
            code: Some(self.code.into()),
            details: self.details.as_deref().cloned(),
            message: Some(self.message.clone()),
            metadata: ListMeta::default(),
            // An unknown reason (upstream's "") is left out, as upstream's JSON does.
            reason: Some(self.reason.to_string()).filter(|r| !r.is_empty()),
            status: Some("Failure".into()),
        }
    }

    /// The Status as JSON, with kind and apiVersion.
    pub fn to_json(&self) -> serde_json::Value {
        status_json(self.status())
    }

    /// Maps a store error on one object of `rt`.
    pub fn from_store(rt: &ResourceType, name: &str, e: StoreError) -> ApiError {
        match e {
            StoreError::AlreadyExists { .. } => ApiError::already_exists(rt, name),
            StoreError::NotFound { .. } => ApiError::not_found(rt, name),
            StoreError::Conflict { .. } => ApiError::modified(rt, name),
            StoreError::Compacted { requested, compacted } => {
                ApiError::gone(format!("too old resource version: {requested} ({compacted})"))
            }
            StoreError::Lagged(_) => ApiError::gone("the watch fell behind; re-list and watch again"),
            // What kubectl sees from upstream when etcd refuses a value.
            StoreError::TooLarge { .. } => ApiError::too_large("etcdserver: request is too large"),
            // No quorum or no etcd member: the request may succeed later.
            e @ StoreError::Unavailable { .. } => ApiError::new(503, "ServiceUnavailable", e.to_string()),
            // Upstream's answer when etcd is out of space: a 500 with no
            // reason (kubectl: "Error from server: etcdserver: mvcc:
            // database space exceeded"), here followed by the cause.
            e @ StoreError::NoSpace { .. } => {
                ApiError::new(500, "", format!("etcdserver: mvcc: database space exceeded: {e}"))
            }
            e => ApiError::internal(e.to_string()),
        }
    }
}

/// A `Status` serialised with its kind and apiVersion.
pub fn status_json(s: Status) -> serde_json::Value {
    let mut v = serde_json::to_value(s).unwrap_or_default();
    v["kind"] = "Status".into();
    v["apiVersion"] = "v1".into();
    v
}

/// A `Status` of success for an immediate delete.
pub fn success(rt: &ResourceType, name: &str, uid: &str) -> serde_json::Value {
    let mut d = *details(rt, name).unwrap_or_default();
    d.uid = Some(uid.to_string());
    status_json(Status {
        details: Some(d),
        status: Some("Success".into()),
        metadata: ListMeta::default(),
        ..Default::default()
    })
}

/// A `Status` (a JSON object of kind Status) written as upstream's Go
/// encoder writes it: its fields in the Go struct's order, not sorted,
/// and a newline at the end. Clients print an error's body as it came
/// (the Python client's `FailToCreateError`), and some compare it.
pub fn status_bytes(status: &serde_json::Value) -> Vec<u8> {
    const STATUS: &[&str] = &["kind", "apiVersion", "metadata", "status", "message", "reason", "details", "code"];
    const DETAILS: &[&str] = &["name", "group", "kind", "uid", "causes", "retryAfterSeconds"];
    const CAUSE: &[&str] = &["reason", "message", "field"];
    fn write(
        out: &mut String,
        v: &serde_json::Value,
        order: &[&str],
        nested: &dyn Fn(&str, &serde_json::Value, &mut String),
    ) {
        let serde_json::Value::Object(m) = v else {
            out.push_str(&v.to_string());
            return;
        };
        out.push('{');
        let known = order.iter().filter_map(|k| m.get_key_value(*k));
        let rest = m.iter().filter(|(k, _)| !order.contains(&k.as_str()));
        for (i, (k, v)) in known.chain(rest).enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&serde_json::Value::from(k.as_str()).to_string());
            out.push(':');
            nested(k, v, out);
        }
        out.push('}');
    }
    let cause = |_: &str, v: &serde_json::Value, out: &mut String| out.push_str(&v.to_string());
    let details = |k: &str, v: &serde_json::Value, out: &mut String| match (k, v) {
        ("causes", serde_json::Value::Array(items)) => {
            out.push('[');
            for (i, c) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(out, c, CAUSE, &cause);
            }
            out.push(']');
        }
        _ => out.push_str(&v.to_string()),
    };
    let top = |k: &str, v: &serde_json::Value, out: &mut String| match k {
        "details" => write(out, v, DETAILS, &details),
        _ => out.push_str(&v.to_string()),
    };
    let mut out = String::new();
    write(&mut out, status, STATUS, &top);
    out.push('\n');
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::by_kind;

    #[test]
    fn a_status_is_written_in_upstreams_field_order() {
        let svc = by_kind("Service").unwrap();
        let exists = String::from_utf8(status_bytes(&ApiError::already_exists(svc, "mock-2").to_json())).unwrap();
        assert_eq!(
            exists,
            concat!(
                r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","#,
                r#""message":"services \"mock-2\" already exists","reason":"AlreadyExists","#,
                r#""details":{"name":"mock-2","kind":"services"},"code":409}"#,
                "\n"
            )
        );
        let e = ApiError::invalid(
            by_kind("Deployment").unwrap(),
            "d",
            vec![("spec.replicas".into(), "Invalid value: -1: no".into())],
        );
        let invalid = String::from_utf8(status_bytes(&e.to_json())).unwrap();
        assert!(
            invalid.contains(r#""details":{"name":"d","group":"apps","kind":"Deployment","causes":[{"reason":"FieldValueInvalid","message":"Invalid value: -1: no","field":"spec.replicas"}]},"code":422}"#),
            "{invalid}"
        );
        assert_eq!(serde_json::from_str::<serde_json::Value>(&invalid).unwrap(), e.to_json());
    }

    #[test]
    fn invalid_has_causes_and_upstream_message() {
        let rt = by_kind("Deployment").unwrap();
        let e = ApiError::invalid(rt, "Bad", vec![("metadata.name".into(), "Invalid value: \"Bad\": no".into())]);
        let j = e.to_json();
        assert_eq!(j["kind"], "Status");
        assert_eq!(j["code"], 422);
        assert_eq!(j["message"], "Deployment.apps \"Bad\" is invalid: metadata.name: Invalid value: \"Bad\": no");
        assert_eq!(j["details"]["causes"][0]["field"], "metadata.name");
        let nf = ApiError::not_found(by_kind("Pod").unwrap(), "p").to_json();
        assert_eq!((nf["reason"].as_str(), nf["message"].as_str()), (Some("NotFound"), Some("pods \"p\" not found")));
    }

    #[test]
    fn a_full_disk_is_upstreams_500_naming_the_cause() {
        let full = StoreError::NoSpace { op: "commit", path: "/var/lib/plinth/orchestrator/state.db".into() };
        let j = ApiError::from_store(by_kind("ConfigMap").unwrap(), "c", full).to_json();
        assert_eq!(j["code"], 500);
        assert!(j.get("reason").is_none(), "upstream's unknown reason: {j}");
        assert_eq!(
            j["message"],
            "etcdserver: mvcc: database space exceeded: commit on /var/lib/plinth/orchestrator/state.db: no space left on device"
        );
        let nf = ApiError::not_found(by_kind("Pod").unwrap(), "p").to_json();
        assert_eq!((nf["reason"].as_str(), nf["message"].as_str()), (Some("NotFound"), Some("pods \"p\" not found")));
    }
}

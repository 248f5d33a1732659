//! Request bodies in Kubernetes' protobuf encoding (`k8s\0` + a
//! `runtime.Unknown` envelope), as kubectl ≥1.32 sends for `kubectl create
//! deployment|service|configmap|secret|namespace` without retrying JSON on
//! 415, and client-go's typed clients (helm's release storage) send for
//! Secret updates and DeleteOptions. Decoded to JSON with field tables for
//! the fields those commands set (from the upstream `generated.proto`
//! files); fields not in a table are dropped, as the JSON decoder drops
//! unknown fields.

use base64::Engine as _;
use serde_json::{Map, Value, json};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtobufError {
    #[error("not a Kubernetes protobuf body (no k8s\\0 prefix)")]
    NoMagic,
    #[error("malformed protobuf: {0}")]
    Malformed(&'static str),
    #[error(
        "protobuf bodies are accepted for Namespace, ConfigMap, Secret, Service, Deployment, ServiceAccount, the RBAC kinds, the access and token reviews, TokenRequest, CSR approvals and DeleteOptions, not {0}"
    )]
    Unsupported(String),
}

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    Msg(&'static [Field]),
    MapStr,
    MapBytes,
    MapQuantity,
    /// metav1.Time: seconds, nanos → RFC 3339 (zero → absent).
    Time,
    IntOrString,
}

#[derive(Clone, Copy)]
struct Field(u64, &'static str, Kind, bool);

use Kind::*;

const OBJECT_META: &[Field] = &[
    Field(1, "name", Str, false),
    Field(2, "generateName", Str, false),
    Field(3, "namespace", Str, false),
    Field(5, "uid", Str, false),
    Field(6, "resourceVersion", Str, false),
    Field(7, "generation", Int, false),
    Field(8, "creationTimestamp", Time, false),
    Field(11, "labels", MapStr, false),
    Field(12, "annotations", MapStr, false),
    Field(14, "finalizers", Str, true),
];
const LABEL_SELECTOR_REQ: &[Field] =
    &[Field(1, "key", Str, false), Field(2, "operator", Str, false), Field(3, "values", Str, true)];
const LABEL_SELECTOR: &[Field] =
    &[Field(1, "matchLabels", MapStr, false), Field(2, "matchExpressions", Msg(LABEL_SELECTOR_REQ), true)];
const CONTAINER_PORT: &[Field] = &[
    Field(1, "name", Str, false),
    Field(2, "hostPort", Int, false),
    Field(3, "containerPort", Int, false),
    Field(4, "protocol", Str, false),
    Field(5, "hostIP", Str, false),
];
const ENV_VAR: &[Field] = &[Field(1, "name", Str, false), Field(2, "value", Str, false)];
const RESOURCES: &[Field] = &[Field(1, "limits", MapQuantity, false), Field(2, "requests", MapQuantity, false)];
const CONTAINER: &[Field] = &[
    Field(1, "name", Str, false),
    Field(2, "image", Str, false),
    Field(3, "command", Str, true),
    Field(4, "args", Str, true),
    Field(5, "workingDir", Str, false),
    Field(6, "ports", Msg(CONTAINER_PORT), true),
    Field(7, "env", Msg(ENV_VAR), true),
    Field(8, "resources", Msg(RESOURCES), false),
    Field(13, "terminationMessagePath", Str, false),
    Field(14, "imagePullPolicy", Str, false),
    Field(20, "terminationMessagePolicy", Str, false),
];
const POD_SPEC: &[Field] = &[
    Field(2, "containers", Msg(CONTAINER), true),
    Field(3, "restartPolicy", Str, false),
    Field(4, "terminationGracePeriodSeconds", Int, false),
    Field(6, "dnsPolicy", Str, false),
    Field(7, "nodeSelector", MapStr, false),
    Field(8, "serviceAccountName", Str, false),
    Field(10, "nodeName", Str, false),
    Field(11, "hostNetwork", Bool, false),
];
const POD_TEMPLATE: &[Field] = &[Field(1, "metadata", Msg(OBJECT_META), false), Field(2, "spec", Msg(POD_SPEC), false)];
const ROLLING_UPDATE: &[Field] =
    &[Field(1, "maxUnavailable", IntOrString, false), Field(2, "maxSurge", IntOrString, false)];
const STRATEGY: &[Field] = &[Field(1, "type", Str, false), Field(2, "rollingUpdate", Msg(ROLLING_UPDATE), false)];
const DEPLOYMENT_SPEC: &[Field] = &[
    Field(1, "replicas", Int, false),
    Field(2, "selector", Msg(LABEL_SELECTOR), false),
    Field(3, "template", Msg(POD_TEMPLATE), false),
    Field(4, "strategy", Msg(STRATEGY), false),
    Field(5, "minReadySeconds", Int, false),
    Field(6, "revisionHistoryLimit", Int, false),
    Field(7, "paused", Bool, false),
    Field(9, "progressDeadlineSeconds", Int, false),
];
const SERVICE_PORT: &[Field] = &[
    Field(1, "name", Str, false),
    Field(2, "protocol", Str, false),
    Field(3, "port", Int, false),
    Field(4, "targetPort", IntOrString, false),
    Field(5, "nodePort", Int, false),
];
const SERVICE_SPEC: &[Field] = &[
    Field(1, "ports", Msg(SERVICE_PORT), true),
    Field(2, "selector", MapStr, false),
    Field(3, "clusterIP", Str, false),
    Field(4, "type", Str, false),
    Field(5, "externalIPs", Str, true),
    Field(10, "externalName", Str, false),
];
const NAMESPACE_SPEC: &[Field] = &[Field(1, "finalizers", Str, true)];
const RESOURCE_ATTRIBUTES: &[Field] = &[
    Field(1, "namespace", Str, false),
    Field(2, "verb", Str, false),
    Field(3, "group", Str, false),
    Field(4, "version", Str, false),
    Field(5, "resource", Str, false),
    Field(6, "subresource", Str, false),
    Field(7, "name", Str, false),
];
const NON_RESOURCE_ATTRIBUTES: &[Field] = &[Field(1, "path", Str, false), Field(2, "verb", Str, false)];
/// metav1.Preconditions and metav1.DeleteOptions: client-go's typed
/// clients (helm's release storage among them) send delete bodies in
/// protobuf.
const PRECONDITIONS: &[Field] = &[Field(1, "uid", Str, false), Field(2, "resourceVersion", Str, false)];
const DELETE_OPTIONS: &[Field] = &[
    Field(1, "gracePeriodSeconds", Int, false),
    Field(2, "preconditions", Msg(PRECONDITIONS), false),
    Field(3, "orphanDependents", Bool, false),
    Field(4, "propagationPolicy", Str, false),
    Field(5, "dryRun", Str, true),
];
const ACCESS_REVIEW_SPEC: &[Field] = &[
    Field(1, "resourceAttributes", Msg(RESOURCE_ATTRIBUTES), false),
    Field(2, "nonResourceAttributes", Msg(NON_RESOURCE_ATTRIBUTES), false),
];
const SUBJECT_ACCESS_REVIEW_SPEC: &[Field] = &[
    Field(1, "resourceAttributes", Msg(RESOURCE_ATTRIBUTES), false),
    Field(2, "nonResourceAttributes", Msg(NON_RESOURCE_ATTRIBUTES), false),
    Field(3, "user", Str, false),
    Field(4, "groups", Str, true),
    Field(6, "uid", Str, false),
];
const RULES_REVIEW_SPEC: &[Field] = &[Field(1, "namespace", Str, false)];
// ServiceAccounts and their tokens (`kubectl create serviceaccount|token`, TokenReview).
const OBJECT_REFERENCE: &[Field] = &[
    Field(1, "kind", Str, false),
    Field(2, "namespace", Str, false),
    Field(3, "name", Str, false),
    Field(4, "uid", Str, false),
    Field(5, "apiVersion", Str, false),
    Field(6, "resourceVersion", Str, false),
    Field(7, "fieldPath", Str, false),
];
const LOCAL_OBJECT_REFERENCE: &[Field] = &[Field(1, "name", Str, false)];
const BOUND_OBJECT_REFERENCE: &[Field] = &[
    Field(1, "kind", Str, false),
    Field(2, "apiVersion", Str, false),
    Field(3, "name", Str, false),
    Field(4, "uid", Str, false),
];
const TOKEN_REQUEST_SPEC: &[Field] = &[
    Field(1, "audiences", Str, true),
    Field(3, "boundObjectRef", Msg(BOUND_OBJECT_REFERENCE), false),
    Field(4, "expirationSeconds", Int, false),
];
const TOKEN_REVIEW_SPEC: &[Field] = &[Field(1, "token", Str, false), Field(2, "audiences", Str, true)];
// rbac.authorization.k8s.io/v1 (`kubectl create role|clusterrole|rolebinding|clusterrolebinding`).
const POLICY_RULE: &[Field] = &[
    Field(1, "verbs", Str, true),
    Field(2, "apiGroups", Str, true),
    Field(3, "resources", Str, true),
    Field(4, "resourceNames", Str, true),
    Field(5, "nonResourceURLs", Str, true),
];
const SUBJECT: &[Field] = &[
    Field(1, "kind", Str, false),
    Field(2, "apiGroup", Str, false),
    Field(3, "name", Str, false),
    Field(4, "namespace", Str, false),
];
const ROLE_REF: &[Field] =
    &[Field(1, "apiGroup", Str, false), Field(2, "kind", Str, false), Field(3, "name", Str, false)];

// certificates.k8s.io/v1: `kubectl certificate approve|deny` PUTs the approval subresource.
const CSR_CONDITION: &[Field] = &[
    Field(1, "type", Str, false),
    Field(6, "status", Str, false),
    Field(2, "reason", Str, false),
    Field(3, "message", Str, false),
    Field(4, "lastUpdateTime", Time, false),
    Field(5, "lastTransitionTime", Time, false),
];
const CSR_STATUS: &[Field] = &[Field(1, "conditions", Msg(CSR_CONDITION), true)];

/// Pointer fields, where a zero value is meant.
const POINTERS: &[&str] = &[
    "replicas",
    "revisionHistoryLimit",
    "progressDeadlineSeconds",
    "terminationGracePeriodSeconds",
    "immutable",
    "gracePeriodSeconds",
    "orphanDependents",
    "automountServiceAccountToken",
];

fn top_level(kind: &str) -> Option<&'static [Field]> {
    const META: Field = Field(1, "metadata", Msg(OBJECT_META), false);
    Some(match kind {
        "Namespace" => &[META, Field(2, "spec", Msg(NAMESPACE_SPEC), false)],
        "ConfigMap" => &[
            META,
            Field(2, "data", MapStr, false),
            Field(3, "binaryData", MapBytes, false),
            Field(4, "immutable", Bool, false),
        ],
        "Secret" => &[
            META,
            Field(2, "data", MapBytes, false),
            Field(3, "type", Str, false),
            Field(4, "stringData", MapStr, false),
            Field(5, "immutable", Bool, false),
        ],
        "Service" => &[META, Field(2, "spec", Msg(SERVICE_SPEC), false)],
        "Deployment" => &[META, Field(2, "spec", Msg(DEPLOYMENT_SPEC), false)],
        "SelfSubjectAccessReview" => &[META, Field(2, "spec", Msg(ACCESS_REVIEW_SPEC), false)],
        "DeleteOptions" => DELETE_OPTIONS,
        "SubjectAccessReview" | "LocalSubjectAccessReview" => {
            &[META, Field(2, "spec", Msg(SUBJECT_ACCESS_REVIEW_SPEC), false)]
        }
        "ServiceAccount" => &[
            META,
            Field(2, "secrets", Msg(OBJECT_REFERENCE), true),
            Field(3, "imagePullSecrets", Msg(LOCAL_OBJECT_REFERENCE), true),
            Field(4, "automountServiceAccountToken", Bool, false),
        ],
        "TokenRequest" => &[META, Field(2, "spec", Msg(TOKEN_REQUEST_SPEC), false)],
        "TokenReview" => &[META, Field(2, "spec", Msg(TOKEN_REVIEW_SPEC), false)],
        "SelfSubjectRulesReview" => &[META, Field(2, "spec", Msg(RULES_REVIEW_SPEC), false)],
        "SelfSubjectReview" => &[META],
        "Role" | "ClusterRole" => &[META, Field(2, "rules", Msg(POLICY_RULE), true)],
        "CertificateSigningRequest" => &[META, Field(3, "status", Msg(CSR_STATUS), false)],
        "RoleBinding" | "ClusterRoleBinding" => {
            &[META, Field(2, "subjects", Msg(SUBJECT), true), Field(3, "roleRef", Msg(ROLE_REF), false)]
        }
        _ => return None,
    })
}

/// One field of the wire format: (number, value).
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

fn varint(b: &[u8], pos: &mut usize) -> Result<u64, ProtobufError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos).ok_or(ProtobufError::Malformed("truncated varint"))?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(ProtobufError::Malformed("varint too long"))
}

fn fields(b: &[u8]) -> Result<Vec<(u64, Wire<'_>)>, ProtobufError> {
    let (mut pos, mut out) = (0, Vec::new());
    while pos < b.len() {
        let key = varint(b, &mut pos)?;
        let value = match key & 7 {
            0 => Wire::Varint(varint(b, &mut pos)?),
            2 => {
                let len = varint(b, &mut pos)? as usize;
                let end = pos
                    .checked_add(len)
                    .filter(|e| *e <= b.len())
                    .ok_or(ProtobufError::Malformed("length past the end"))?;
                let s = &b[pos..end];
                pos = end;
                Wire::Bytes(s)
            }
            1 => {
                pos += 8;
                Wire::Other
            }
            5 => {
                pos += 4;
                Wire::Other
            }
            _ => return Err(ProtobufError::Malformed("unsupported wire type")),
        };
        if pos > b.len() {
            return Err(ProtobufError::Malformed("truncated field"));
        }
        out.push((key >> 3, value));
    }
    Ok(out)
}

fn string(b: &[u8]) -> Value {
    Value::String(String::from_utf8_lossy(b).into_owned())
}

fn map_entry(b: &[u8], value: impl Fn(&[u8]) -> Value) -> Result<(String, Value), ProtobufError> {
    let (mut k, mut v) = (String::new(), value(&[]));
    for (n, w) in fields(b)? {
        match (n, w) {
            (1, Wire::Bytes(s)) => k = String::from_utf8_lossy(s).into_owned(),
            (2, Wire::Bytes(s)) => v = value(s),
            _ => {}
        }
    }
    Ok((k, v))
}

fn decode_value(kind: Kind, w: &Wire<'_>) -> Result<Option<Value>, ProtobufError> {
    Ok(match (kind, w) {
        (Str, Wire::Bytes(s)) => Some(string(s)),
        (Int, Wire::Varint(v)) => Some(json!(*v as i64)),
        (Bool, Wire::Varint(v)) => Some(json!(*v != 0)),
        (Msg(schema), Wire::Bytes(s)) => Some(message(schema, s)?),
        (Time, Wire::Bytes(s)) => {
            let mut secs = 0i64;
            for (n, w) in fields(s)? {
                if let (1, Wire::Varint(v)) = (n, w) {
                    secs = v as i64;
                }
            }
            (secs != 0).then(|| {
                let t = time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
                json!(crate::registry::format_time(t))
            })
        }
        (IntOrString, Wire::Bytes(s)) => {
            let (mut ty, mut i, mut st) = (0, 0i64, String::new());
            for (n, w) in fields(s)? {
                match (n, w) {
                    (1, Wire::Varint(v)) => ty = v,
                    (2, Wire::Varint(v)) => i = v as i64,
                    (3, Wire::Bytes(b)) => st = String::from_utf8_lossy(b).into_owned(),
                    _ => {}
                }
            }
            Some(if ty == 1 { json!(st) } else { json!(i) })
        }
        _ => None,
    })
}

fn message(schema: &[Field], b: &[u8]) -> Result<Value, ProtobufError> {
    let mut out = Map::new();
    for (n, w) in fields(b)? {
        let Some(&Field(_, name, kind, repeated)) = schema.iter().find(|f| f.0 == n) else { continue };
        match (kind, &w) {
            (MapStr | MapBytes | MapQuantity, Wire::Bytes(s)) => {
                let (k, v) = match kind {
                    MapStr => map_entry(s, string)?,
                    MapBytes => map_entry(s, |b| json!(base64::engine::general_purpose::STANDARD.encode(b)))?,
                    _ => map_entry(s, |b| {
                        // resource.Quantity { string = 1 }
                        fields(b)
                            .ok()
                            .and_then(|f| {
                                f.into_iter().find_map(|(n, w)| match (n, w) {
                                    (1, Wire::Bytes(s)) => Some(string(s)),
                                    _ => None,
                                })
                            })
                            .unwrap_or(json!("0"))
                    })?,
                };
                if let Some(m) = out.entry(name.to_string()).or_insert_with(|| json!({})).as_object_mut() {
                    m.insert(k, v);
                }
            }
            _ => {
                let Some(v) = decode_value(kind, &w)? else { continue };
                // Go's encoder writes every non-pointer field; zero means unset.
                let zero = v == json!("") || v == json!(0) || v == json!(false);
                if zero && !repeated && !POINTERS.contains(&name) {
                    continue;
                }
                if repeated {
                    if let Some(a) = out.entry(name.to_string()).or_insert_with(|| json!([])).as_array_mut() {
                        a.push(v);
                    }
                } else {
                    out.insert(name.to_string(), v);
                }
            }
        }
    }
    Ok(Value::Object(out))
}

/// Decodes a `k8s\0`-prefixed body into the JSON object it encodes.
pub fn decode(body: &[u8]) -> Result<Value, ProtobufError> {
    let rest = body.strip_prefix(b"k8s\0").ok_or(ProtobufError::NoMagic)?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for (n, w) in fields(rest)? {
        match (n, w) {
            (1, Wire::Bytes(tm)) => {
                for (n, w) in fields(tm)? {
                    match (n, w) {
                        (1, Wire::Bytes(s)) => api_version = String::from_utf8_lossy(s).into_owned(),
                        (2, Wire::Bytes(s)) => kind = String::from_utf8_lossy(s).into_owned(),
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(r)) => raw = r,
            _ => {}
        }
    }
    let schema = top_level(&kind).ok_or_else(|| ProtobufError::Unsupported(kind.clone()))?;
    let mut obj = message(schema, raw)?;
    obj["apiVersion"] = api_version.into();
    obj["kind"] = kind.into();
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(out: &mut Vec<u8>, n: u64, bytes: &[u8]) {
        out.push((n << 3 | 2) as u8);
        out.push(bytes.len() as u8);
        out.extend_from_slice(bytes);
    }

    /// A `k8s\0` + runtime.Unknown body of a v1 kind.
    fn envelope(kind: &[u8], raw: &[u8]) -> Vec<u8> {
        let mut tm = Vec::new();
        field(&mut tm, 1, b"v1");
        field(&mut tm, 2, kind);
        let mut body = b"k8s\0".to_vec();
        field(&mut body, 1, &tm);
        field(&mut body, 2, raw);
        body
    }

    #[test]
    fn decodes_a_configmap_envelope() {
        let mut meta = Vec::new();
        field(&mut meta, 1, b"cm");
        let mut entry = Vec::new();
        field(&mut entry, 1, b"k");
        field(&mut entry, 2, b"v");
        let mut raw = Vec::new();
        field(&mut raw, 1, &meta);
        field(&mut raw, 2, &entry);
        let body = envelope(b"ConfigMap", &raw);
        assert_eq!(
            decode(&body).unwrap(),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {"k": "v"}})
        );
        assert_eq!(decode(b"{}"), Err(ProtobufError::NoMagic));
        assert!(decode(b"k8s\0\x0a\xff").is_err());
    }

    fn varint_field(out: &mut Vec<u8>, n: u64, v: u8) {
        out.push((n << 3) as u8);
        out.push(v);
    }

    #[test]
    fn decodes_delete_options_with_a_zero_grace_period() {
        let mut pre = Vec::new();
        field(&mut pre, 1, b"u-1");
        let mut raw = Vec::new();
        varint_field(&mut raw, 1, 0);
        field(&mut raw, 2, &pre);
        field(&mut raw, 4, b"Foreground");
        field(&mut raw, 5, b"All");
        let body = envelope(b"DeleteOptions", &raw);
        assert_eq!(
            decode(&body).unwrap(),
            json!({"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                   "preconditions": {"uid": "u-1"}, "propagationPolicy": "Foreground", "dryRun": ["All"]})
        );
    }
}

//! Kubernetes' protobuf encoding (`k8s\0` + a `runtime.Unknown` envelope)
//! for every built-in kind, in both directions: request bodies (kubectl
//! ≥1.32 creates with protobuf bodies and does not retry JSON on 415;
//! client-go's typed clients — helm's release storage among them — send
//! updates and DeleteOptions in protobuf) and responses for clients that
//! prefer protobuf. Transcoded by descriptor: the upstream `generated.proto`
//! files of the served group versions are vendored under `proto/`
//! (`proto/vendor.py`) and compiled by `build.rs`; their field names are
//! the JSON names, so one walk maps any message to the JSON object the
//! registry decodes through k8s-openapi, and back. The types whose Go JSON
//! differs from their message (times, IntOrString, Quantity, raw JSON,
//! the `JSONSchemaProps…Or…` unions and JSONSchemaProps' `$ref` and
//! `x-kubernetes-*` names) are mapped by hand.
//!
//! Go writes every non-pointer field, so a zero on the wire may mean
//! "unset": the zero of a field upstream marks `+optional` (Go's
//! `omitempty`) is dropped unless the field is a pointer whose zero means
//! something (`POINTERS`); an empty string is dropped but for the pointers
//! where `""` is a value (`STRING_POINTERS`). Custom objects have no
//! protobuf form, as upstream.

use std::{collections::HashMap, sync::LazyLock};

use base64::Engine as _;
use prost::Message as _;
use prost_reflect::ReflectMessage as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, Value as PValue,
};
use serde_json::{Map, Value, json};

include!(concat!(env!("OUT_DIR"), "/optional.rs"));

/// The media type of protobuf bodies.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8] = b"k8s\0";

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(&include_bytes!(concat!(env!("OUT_DIR"), "/k8s.fds"))[..])
        .expect("build.rs compiled the vendored Kubernetes protos")
});

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtobufError {
    #[error("not a Kubernetes protobuf body (no k8s\\0 prefix)")]
    NoMagic,
    #[error("malformed protobuf: {0}")]
    Malformed(String),
    #[error("no protobuf encoding for {0} (custom resources and unserved kinds are JSON only)")]
    Unsupported(String),
    #[error("{path}: {message}")]
    Field { path: String, message: String },
}

const TIME: &str = "apimachinery.pkg.apis.meta.v1.Time";
const MICRO_TIME: &str = "apimachinery.pkg.apis.meta.v1.MicroTime";
const DURATION: &str = "apimachinery.pkg.apis.meta.v1.Duration";
const FIELDS_V1: &str = "apimachinery.pkg.apis.meta.v1.FieldsV1";
const INT_OR_STRING: &str = "apimachinery.pkg.util.intstr.IntOrString";
const QUANTITY: &str = "apimachinery.pkg.api.resource.Quantity";
const RAW_EXTENSION: &str = "apimachinery.pkg.runtime.RawExtension";
const UNKNOWN: &str = "apimachinery.pkg.runtime.Unknown";
const APIEXT: &str = "apiextensions_apiserver.pkg.apis.apiextensions.v1";

/// Embedded structs (Go's `json:",inline"`): a field of the message, its
/// fields in the parent's JSON object.
const INLINE: &[&str] = &[
    "api.core.v1.Volume.volumeSource",
    "api.core.v1.PersistentVolumeSpec.persistentVolumeSource",
    "api.core.v1.Probe.handler",
    "api.core.v1.EphemeralContainer.ephemeralContainerCommon",
    "api.core.v1.ConfigMapEnvSource.localObjectReference",
    "api.core.v1.ConfigMapKeySelector.localObjectReference",
    "api.core.v1.ConfigMapProjection.localObjectReference",
    "api.core.v1.ConfigMapVolumeSource.localObjectReference",
    "api.core.v1.SecretEnvSource.localObjectReference",
    "api.core.v1.SecretKeySelector.localObjectReference",
    "api.core.v1.SecretProjection.localObjectReference",
    "api.networking.v1.IngressRule.ingressRuleValue",
    "api.admissionregistration.v1.NamedRuleWithOperations.ruleWithOperations",
    "api.admissionregistration.v1.RuleWithOperations.rule",
];

/// Pointer fields whose zero is a value, not "unset".
const POINTERS: &[&str] = &[
    "replicas",
    "minReplicas",
    "parallelism",
    "completions",
    "backoffLimit",
    "backoffLimitPerIndex",
    "maxFailedIndexes",
    "activeDeadlineSeconds",
    "ttlSecondsAfterFinished",
    "startingDeadlineSeconds",
    "successfulJobsHistoryLimit",
    "failedJobsHistoryLimit",
    "suspend",
    "partition",
    "revisionHistoryLimit",
    "progressDeadlineSeconds",
    "terminationGracePeriodSeconds",
    "gracePeriodSeconds",
    "deletionGracePeriodSeconds",
    "orphanDependents",
    "runAsUser",
    "runAsGroup",
    "runAsNonRoot",
    "fsGroup",
    "privileged",
    "allowPrivilegeEscalation",
    "readOnlyRootFilesystem",
    "automountServiceAccountToken",
    "enableServiceLinks",
    "shareProcessNamespace",
    "hostUsers",
    "setHostnameAsFQDN",
    "immutable",
    "optional",
    "defaultMode",
    "mode",
    "expirationSeconds",
    "allocateLoadBalancerNodePorts",
    "stabilizationWindowSeconds",
    "selectPolicy",
    "timeoutSeconds",
    "priority",
    "value",
    "limit",
    "continue",
    "remainingItemCount",
    "externalTrafficPolicy",
    "ready",
    "serving",
    "terminating",
    "holderIdentity",
    "leaseDurationSeconds",
    "leaseTransitions",
    "unhealthyPodEvictionPolicy",
    "storageClassName",
    "volumeMode",
    "timeZone",
    "runtimeClassName",
];
/// Pointer strings whose `""` is a value (a claim of no class).
const STRING_POINTERS: &[&str] = &["storageClassName"];

/// The message of `kind` in `api_version` (`v1`, `apps/v1`, …; the
/// `meta.k8s.io` kinds such as DeleteOptions and Status under any).
pub fn descriptor(api_version: &str, kind: &str) -> Option<MessageDescriptor> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let package = match group {
        "" => format!("api.core.{version}"),
        "apiextensions.k8s.io" => format!("apiextensions_apiserver.pkg.apis.apiextensions.{version}"),
        "meta.k8s.io" => format!("apimachinery.pkg.apis.meta.{version}"),
        g => format!("api.{}.{version}", g.split('.').next().unwrap_or(g)),
    };
    POOL.get_message_by_name(&format!("{package}.{kind}"))
        .or_else(|| POOL.get_message_by_name(&format!("apimachinery.pkg.apis.meta.v1.{kind}")))
}

/// Decodes a `k8s\0`-prefixed body into the JSON object it encodes.
pub fn decode(body: &[u8]) -> Result<Value, ProtobufError> {
    let rest = body.strip_prefix(MAGIC).ok_or(ProtobufError::NoMagic)?;
    let unknown = POOL.get_message_by_name(UNKNOWN).expect("runtime.Unknown is vendored");
    let env = DynamicMessage::decode(unknown, rest).map_err(|e| ProtobufError::Malformed(e.to_string()))?;
    let type_meta = env.get_field_by_name("typeMeta").and_then(|v| v.as_message().cloned());
    let text = |name: &str| {
        type_meta
            .as_ref()
            .and_then(|t| t.get_field_by_name(name))
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    };
    let (api_version, kind) = (text("apiVersion"), text("kind"));
    let raw = env.get_field_by_name("raw").and_then(|v| v.as_bytes().cloned()).unwrap_or_default();
    let desc = descriptor(&api_version, &kind)
        .ok_or_else(|| ProtobufError::Unsupported(format!("{api_version:?} kind {kind:?}")))?;
    let msg = DynamicMessage::decode(desc, &raw[..]).map_err(|e| ProtobufError::Malformed(e.to_string()))?;
    let mut obj = to_json(&msg);
    if let Some(o) = obj.as_object_mut() {
        o.insert("apiVersion".into(), api_version.into());
        o.insert("kind".into(), kind.into());
    }
    Ok(obj)
}

/// Encodes a JSON object with `apiVersion` and `kind` as a `k8s\0` body.
pub fn encode(obj: &Value) -> Result<Vec<u8>, ProtobufError> {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    let desc = descriptor(api_version, kind)
        .ok_or_else(|| ProtobufError::Unsupported(format!("{api_version:?} kind {kind:?}")))?;
    let msg = from_json(&desc, obj, "")?;
    let unknown = POOL.get_message_by_name(UNKNOWN).expect("runtime.Unknown is vendored");
    let mut env = DynamicMessage::new(unknown.clone());
    let tm_field = unknown.get_field_by_name("typeMeta").expect("Unknown.typeMeta");
    let Kind::Message(tm_desc) = tm_field.kind() else { unreachable!("typeMeta is a message") };
    let mut tm = DynamicMessage::new(tm_desc);
    tm.set_field_by_name("apiVersion", PValue::String(api_version.into()));
    tm.set_field_by_name("kind", PValue::String(kind.into()));
    env.set_field(&tm_field, PValue::Message(tm));
    env.set_field_by_name("raw", PValue::Bytes(msg.encode_to_vec().into()));
    env.set_field_by_name("contentEncoding", PValue::String(String::new()));
    env.set_field_by_name("contentType", PValue::String(String::new()));
    let mut out = MAGIC.to_vec();
    out.extend(env.encode_to_vec());
    Ok(out)
}

fn format_time(seconds: i64, nanos: i32, micro: bool) -> Value {
    if seconds == 0 && nanos == 0 {
        return Value::Null;
    }
    let t = time::OffsetDateTime::from_unix_timestamp(seconds).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let s = crate::registry::format_time(t);
    if micro {
        let micros = nanos / 1000;
        return json!(format!("{}.{micros:06}Z", s.trim_end_matches('Z')));
    }
    json!(s)
}

/// Go's `time.Duration.String` for whole and fractional seconds.
fn format_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    if n < 1_000_000_000 {
        let (unit, div) = if n < 1_000 {
            ("ns", 1)
        } else if n < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{sign}{}{unit}", trim_fraction(n, div));
    }
    let (h, rest) = (n / 3_600_000_000_000, n % 3_600_000_000_000);
    let (m, rest) = (rest / 60_000_000_000, rest % 60_000_000_000);
    let s = trim_fraction(rest, 1_000_000_000);
    match (h, m) {
        (0, 0) => format!("{sign}{s}s"),
        (0, m) => format!("{sign}{m}m{s}s"),
        (h, m) => format!("{sign}{h}h{m}m{s}s"),
    }
}

fn trim_fraction(n: u64, div: u64) -> String {
    let (whole, frac) = (n / div, n % div);
    if frac == 0 {
        return whole.to_string();
    }
    let width = div.to_string().len() - 1;
    format!("{whole}.{}", format!("{frac:0width$}").trim_end_matches('0'))
}

fn parse_duration(s: &str) -> Option<i64> {
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Some(0);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let n: f64 = rest[..end].parse().ok()?;
        rest = &rest[end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_end..];
    }
    Some(if neg { -total as i64 } else { total as i64 })
}

fn raw_json(msg: &DynamicMessage, name: &str) -> Value {
    let raw = msg.get_field_by_name(name).and_then(|v| v.as_bytes().cloned()).unwrap_or_default();
    if raw.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(&raw).unwrap_or_else(|_| json!(base64::engine::general_purpose::STANDARD.encode(&raw)))
}

fn int_field(msg: &DynamicMessage, name: &str) -> i64 {
    msg.get_field_by_name(name).and_then(|v| v.as_i64().or_else(|| v.as_i32().map(i64::from))).unwrap_or(0)
}

fn str_field(msg: &DynamicMessage, name: &str) -> String {
    msg.get_field_by_name(name).and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

fn present(msg: &DynamicMessage, name: &str) -> Option<Value> {
    let desc = msg.descriptor().get_field_by_name(name)?;
    msg.has_field(&desc).then(|| field_json(&desc, &msg.get_field(&desc)))
}

/// JSONSchemaProps' JSON names that are not its field names.
fn schema_json_name(field: &str) -> String {
    match field {
        "ref" => "$ref".into(),
        "schema" => "$schema".into(),
        f if f.starts_with("xKubernetes") => {
            let mut out = String::from("x");
            for c in f[1..].chars() {
                if c.is_ascii_uppercase() {
                    out.push('-');
                    out.push(c.to_ascii_lowercase());
                } else {
                    out.push(c);
                }
            }
            out
        }
        f => f.into(),
    }
}

fn schema_field_name(json: &str) -> String {
    match json {
        "$ref" => "ref".into(),
        "$schema" => "schema".into(),
        j if j.starts_with("x-kubernetes-") => {
            let mut out = String::new();
            let mut upper = false;
            for c in j.chars() {
                if c == '-' {
                    upper = true;
                } else if upper {
                    out.push(c.to_ascii_uppercase());
                    upper = false;
                } else {
                    out.push(c);
                }
            }
            out
        }
        j => j.into(),
    }
}

/// The JSON object (or value, for the hand-mapped types) of a message.
fn to_json(msg: &DynamicMessage) -> Value {
    let desc = msg.descriptor();
    let name = desc.full_name();
    match name {
        TIME => return format_time(int_field(msg, "seconds"), int_field(msg, "nanos") as i32, false),
        MICRO_TIME => return format_time(int_field(msg, "seconds"), int_field(msg, "nanos") as i32, true),
        DURATION => return json!(format_duration(int_field(msg, "duration"))),
        INT_OR_STRING => {
            return if int_field(msg, "type") == 1 {
                json!(str_field(msg, "strVal"))
            } else {
                json!(int_field(msg, "intVal"))
            };
        }
        QUANTITY => return json!(str_field(msg, "string")),
        RAW_EXTENSION => return raw_json(msg, "raw"),
        FIELDS_V1 => return raw_json(msg, "Raw"),
        _ => {}
    }
    if let Some(local) = name.strip_prefix(APIEXT).and_then(|n| n.strip_prefix('.')) {
        match local {
            "JSON" => return raw_json(msg, "raw"),
            "JSONSchemaPropsOrArray" => {
                return present(msg, "schema").or_else(|| present(msg, "jSONSchemas")).unwrap_or(Value::Null);
            }
            "JSONSchemaPropsOrBool" => {
                return present(msg, "schema").unwrap_or_else(|| json!(bool_field(msg, "allows")));
            }
            "JSONSchemaPropsOrStringArray" => {
                return present(msg, "schema").or_else(|| present(msg, "property")).unwrap_or(Value::Null);
            }
            _ => {}
        }
    }
    let schema_props = name == format!("{APIEXT}.JSONSchemaProps");
    let mut out = Map::new();
    for field in desc.fields() {
        let optional = schema_props || OPTIONAL.binary_search(&field.full_name()).is_ok();
        let key = if schema_props { schema_json_name(field.name()) } else { field.name().to_string() };
        if !msg.has_field(&field) {
            // Absent, or an empty list or map: Go's JSON omits those too.
            continue;
        }
        let v = field_json(&field, &msg.get_field(&field));
        // A zero status (Go writes the struct whatever it holds) is no
        // status: a TokenRequest's would lack its required expiration.
        if v.is_null() || (field.name() == "status" && v.as_object().is_some_and(Map::is_empty)) {
            continue;
        }
        if INLINE.contains(&field.full_name()) {
            if let Value::Object(inner) = v {
                out.extend(inner);
            }
            continue;
        }
        let scalar = !field.is_list() && !field.is_map() && !matches!(field.kind(), Kind::Message(_));
        if scalar {
            let keep = match &v {
                Value::String(s) if s.is_empty() => STRING_POINTERS.contains(&field.name()),
                Value::Bool(false) => !optional || POINTERS.contains(&field.name()),
                Value::Number(n) if n.as_f64() == Some(0.0) => !optional || POINTERS.contains(&field.name()),
                _ => true,
            };
            if !keep {
                continue;
            }
        }
        out.insert(key, v);
    }
    Value::Object(out)
}

fn bool_field(msg: &DynamicMessage, name: &str) -> bool {
    msg.get_field_by_name(name).and_then(|v| v.as_bool()).unwrap_or(false)
}

fn field_json(field: &FieldDescriptor, v: &PValue) -> Value {
    match v {
        PValue::List(items) => Value::Array(items.iter().map(scalar_json).collect()),
        PValue::Map(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let key = match k {
                    MapKey::String(s) => s.clone(),
                    MapKey::Bool(b) => b.to_string(),
                    MapKey::I32(n) => n.to_string(),
                    MapKey::I64(n) => n.to_string(),
                    MapKey::U32(n) => n.to_string(),
                    MapKey::U64(n) => n.to_string(),
                };
                out.insert(key, scalar_json(v));
            }
            let _ = field;
            Value::Object(out)
        }
        v => scalar_json(v),
    }
}

fn scalar_json(v: &PValue) -> Value {
    match v {
        PValue::Bool(b) => json!(b),
        PValue::I32(n) => json!(n),
        PValue::I64(n) => json!(n),
        PValue::U32(n) => json!(n),
        PValue::U64(n) => json!(n),
        PValue::F32(n) => json!(n),
        PValue::F64(n) => json!(n),
        PValue::String(s) => json!(s),
        PValue::Bytes(b) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        PValue::EnumNumber(n) => json!(n),
        PValue::Message(m) => to_json(m),
        PValue::List(_) | PValue::Map(_) => Value::Null,
    }
}

fn wrong(path: &str, want: &str, got: &Value) -> ProtobufError {
    ProtobufError::Field {
        path: path.trim_start_matches('.').to_string(),
        message: format!("expected {want}, got {got}"),
    }
}

fn parse_time(s: &str) -> Option<(i64, i32)> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some((t.unix_timestamp(), t.nanosecond() as i32))
}

/// The message of `desc` that a JSON value encodes.
fn from_json(desc: &MessageDescriptor, v: &Value, path: &str) -> Result<DynamicMessage, ProtobufError> {
    let mut msg = DynamicMessage::new(desc.clone());
    let name = desc.full_name();
    let set = |msg: &mut DynamicMessage, field: &str, value: PValue| msg.set_field_by_name(field, value);
    match name {
        TIME | MICRO_TIME => {
            let s = v.as_str().ok_or_else(|| wrong(path, "an RFC 3339 time", v))?;
            let (secs, nanos) = parse_time(s).ok_or_else(|| wrong(path, "an RFC 3339 time", v))?;
            set(&mut msg, "seconds", PValue::I64(secs));
            set(&mut msg, "nanos", PValue::I32(if name == MICRO_TIME { nanos } else { 0 }));
            return Ok(msg);
        }
        DURATION => {
            let d = v.as_str().and_then(parse_duration).ok_or_else(|| wrong(path, "a duration", v))?;
            set(&mut msg, "duration", PValue::I64(d));
            return Ok(msg);
        }
        INT_OR_STRING => {
            match v {
                Value::String(s) => {
                    set(&mut msg, "type", PValue::I64(1));
                    set(&mut msg, "intVal", PValue::I32(0));
                    set(&mut msg, "strVal", PValue::String(s.clone()));
                }
                Value::Number(n) => {
                    set(&mut msg, "type", PValue::I64(0));
                    set(&mut msg, "intVal", PValue::I32(n.as_i64().unwrap_or(0) as i32));
                    set(&mut msg, "strVal", PValue::String(String::new()));
                }
                _ => return Err(wrong(path, "an integer or a string", v)),
            }
            return Ok(msg);
        }
        QUANTITY => {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return Err(wrong(path, "a quantity", v)),
            };
            set(&mut msg, "string", PValue::String(s));
            return Ok(msg);
        }
        RAW_EXTENSION | FIELDS_V1 => {
            let field = if name == FIELDS_V1 { "Raw" } else { "raw" };
            set(&mut msg, field, PValue::Bytes(serde_json::to_vec(v).unwrap_or_default().into()));
            return Ok(msg);
        }
        _ => {}
    }
    if let Some(local) = name.strip_prefix(APIEXT).and_then(|n| n.strip_prefix('.')) {
        let schema = || POOL.get_message_by_name(&format!("{APIEXT}.JSONSchemaProps")).expect("JSONSchemaProps");
        match (local, v) {
            ("JSON", v) => {
                set(&mut msg, "raw", PValue::Bytes(serde_json::to_vec(v).unwrap_or_default().into()));
                return Ok(msg);
            }
            ("JSONSchemaPropsOrArray" | "JSONSchemaPropsOrStringArray" | "JSONSchemaPropsOrBool", Value::Object(_)) => {
                set(&mut msg, "schema", PValue::Message(from_json(&schema(), v, path)?));
                if local == "JSONSchemaPropsOrBool" {
                    set(&mut msg, "allows", PValue::Bool(true));
                }
                return Ok(msg);
            }
            ("JSONSchemaPropsOrArray", Value::Array(items)) => {
                let list = items.iter().map(|i| from_json(&schema(), i, path).map(PValue::Message));
                set(&mut msg, "jSONSchemas", PValue::List(list.collect::<Result<_, _>>()?));
                return Ok(msg);
            }
            ("JSONSchemaPropsOrStringArray", Value::Array(items)) => {
                let list = items.iter().map(|i| PValue::String(i.as_str().unwrap_or_default().into()));
                set(&mut msg, "property", PValue::List(list.collect()));
                return Ok(msg);
            }
            ("JSONSchemaPropsOrBool", Value::Bool(b)) => {
                set(&mut msg, "allows", PValue::Bool(*b));
                return Ok(msg);
            }
            ("JSONSchemaPropsOrArray" | "JSONSchemaPropsOrStringArray" | "JSONSchemaPropsOrBool", _) => {
                return Err(wrong(path, "a schema", v));
            }
            _ => {}
        }
    }
    let obj = v.as_object().ok_or_else(|| wrong(path, "an object", v))?;
    for field in desc.fields().filter(|f| INLINE.contains(&f.full_name())) {
        if let Kind::Message(inner) = field.kind() {
            let m = from_json(&inner, v, path)?;
            if m.fields().next().is_some() {
                msg.set_field(&field, PValue::Message(m));
            }
        }
    }
    let schema_props = name == format!("{APIEXT}.JSONSchemaProps");
    for (key, value) in obj {
        if value.is_null() {
            continue;
        }
        let fname = if schema_props { schema_field_name(key) } else { key.clone() };
        let Some(field) = desc.get_field_by_name(&fname) else { continue };
        let fpath = format!("{path}.{key}");
        let pv = if field.is_map() {
            let Kind::Message(entry) = field.kind() else { continue };
            let vkind = entry.map_entry_value_field().kind();
            let m = value.as_object().ok_or_else(|| wrong(&fpath, "an object", value))?;
            let mut out = HashMap::new();
            for (k, v) in m {
                out.insert(MapKey::String(k.clone()), scalar_from_json(&vkind, v, &format!("{fpath}.{k}"))?);
            }
            PValue::Map(out)
        } else if field.is_list() {
            let items = value.as_array().ok_or_else(|| wrong(&fpath, "a list", value))?;
            let kind = field.kind();
            let list = items.iter().enumerate().map(|(i, v)| scalar_from_json(&kind, v, &format!("{fpath}[{i}]")));
            PValue::List(list.collect::<Result<_, _>>()?)
        } else {
            scalar_from_json(&field.kind(), value, &fpath)?
        };
        msg.set_field(&field, pv);
    }
    Ok(msg)
}

fn scalar_from_json(kind: &Kind, v: &Value, path: &str) -> Result<PValue, ProtobufError> {
    let int = || v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)).ok_or_else(|| wrong(path, "an integer", v));
    Ok(match kind {
        Kind::String => match v {
            Value::String(s) => PValue::String(s.clone()),
            Value::Number(_) | Value::Bool(_) => PValue::String(v.to_string()),
            _ => return Err(wrong(path, "a string", v)),
        },
        Kind::Bytes => {
            let s = v.as_str().ok_or_else(|| wrong(path, "base64 data", v))?;
            let b = base64::engine::general_purpose::STANDARD.decode(s).map_err(|_| wrong(path, "base64 data", v))?;
            PValue::Bytes(b.into())
        }
        Kind::Bool => PValue::Bool(v.as_bool().ok_or_else(|| wrong(path, "a boolean", v))?),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => PValue::I32(int()? as i32),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => PValue::I64(int()?),
        Kind::Uint32 | Kind::Fixed32 => PValue::U32(int()? as u32),
        Kind::Uint64 | Kind::Fixed64 => PValue::U64(int()? as u64),
        Kind::Double => PValue::F64(v.as_f64().ok_or_else(|| wrong(path, "a number", v))?),
        Kind::Float => PValue::F32(v.as_f64().ok_or_else(|| wrong(path, "a number", v))? as f32),
        Kind::Enum(_) => PValue::EnumNumber(int()? as i32),
        Kind::Message(m) => PValue::Message(from_json(m, v, path)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every served built-in kind has a message.
    #[test]
    fn every_built_in_kind_has_a_message() {
        for rt in crate::resources::RESOURCES {
            assert!(descriptor(&rt.api_version(), rt.kind).is_some(), "{} {}", rt.api_version(), rt.kind);
        }
        assert!(descriptor("v1", "DeleteOptions").is_some());
        assert!(descriptor("meta.k8s.io/v1", "DeleteOptions").is_some());
        assert!(descriptor("stable.example.com/v1", "CronTab").is_none());
    }

    fn roundtrip(obj: Value) {
        let body = encode(&obj).unwrap();
        assert!(body.starts_with(MAGIC));
        assert_eq!(decode(&body).unwrap(), obj);
    }

    #[test]
    fn round_trips_the_kinds_charts_create() {
        roundtrip(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "labels": {"a": "b"}},
                         "data": {"k": "v"}, "binaryData": {"b": "AAE="}}));
        roundtrip(json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "db", "namespace": "default", "creationTimestamp": "2026-12-03T18:00:00Z"},
            "spec": {"replicas": 0, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [
                    {"name": "c", "image": "busybox", "resources": {"limits": {"cpu": "100m"}},
                     "securityContext": {"runAsUser": 0}}]}},
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0, "maxUnavailable": "50%"}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"],
                    "storageClassName": "", "resources": {"requests": {"storage": "1Gi"}}}}]}}));
        roundtrip(json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly"},
            "spec": {"schedule": "0 3 * * *", "timeZone": "Europe/Paris", "suspend": false,
                "jobTemplate": {"spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "busybox", "command": ["true"]}]}}}}}}));
        roundtrip(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "r"}, "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}],
            "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"x": "y"}}]}}));
        roundtrip(json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"},
            "eventTime": "2026-12-03T18:00:00.123456Z", "reportingController": "c", "reportingInstance": "i",
            "action": "A", "reason": "R", "type": "Normal", "regarding": {"kind": "Pod", "name": "p"}}));
        roundtrip(json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "crontabs.stable.example.com"},
            "spec": {"group": "stable.example.com", "scope": "Namespaced",
                "names": {"plural": "crontabs", "kind": "CronTab", "shortNames": ["ct"]},
                "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                    "type": "object", "x-kubernetes-preserve-unknown-fields": true,
                    "properties": {"spec": {"type": "object", "required": ["cron"],
                        "properties": {"cron": {"type": "string", "default": "* * * * *"},
                                       "n": {"type": "integer", "maximum": 10.5}}},
                        "tags": {"type": "array", "items": {"type": "string"}},
                        "extra": {"type": "object", "additionalProperties": false}}}}}]}}));
        roundtrip(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {
            "containers": [{"name": "c", "image": "i", "readinessProbe": {"httpGet": {"path": "/", "port": "http"}},
                "env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}],
            "volumes": [{"name": "v", "emptyDir": {}}, {"name": "w", "configMap": {"name": "cm", "defaultMode": 420}}]}}));
        roundtrip(json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "web"},
            "spec": {"rules": [{"host": "web.example", "http": {"paths": [{"path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}}));
        roundtrip(json!({"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
            "preconditions": {"uid": "u-1"}, "propagationPolicy": "Foreground", "dryRun": ["All"]}));
    }

    #[test]
    fn drops_go_zero_values_of_optional_fields_only() {
        // A Go encoder writes non-pointer zeros: hostNetwork false, a
        // container's empty workingDir; dropped. `replicas: 0` is a pointer.
        let body =
            encode(&json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": ""},
            "spec": {"replicas": 0, "template": {"spec": {"hostNetwork": false,
                "containers": [{"name": "c", "image": "i", "workingDir": ""}]}}}}))
            .unwrap();
        assert_eq!(
            decode(&body).unwrap(),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
                "spec": {"replicas": 0, "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}})
        );
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert_eq!(decode(b"{}"), Err(ProtobufError::NoMagic));
        assert!(matches!(decode(b"k8s\0\x0a\xff"), Err(ProtobufError::Malformed(_))));
        let custom = encode(&json!({"apiVersion": "stable.example.com/v1", "kind": "CronTab"}));
        assert!(matches!(custom, Err(ProtobufError::Unsupported(_))), "{custom:?}");
        let bad =
            encode(&json!({"apiVersion": "v1", "kind": "Pod", "spec": {"containers": [{"name": 1, "ports": "x"}]}}));
        assert_eq!(bad.unwrap_err().to_string(), "spec.containers[0].ports: expected a list, got \"x\"");
        assert_eq!(format_duration(90_500_000_000), "1m30.5s");
        assert_eq!(parse_duration("1h2m3.5s"), Some(3_723_500_000_000));
    }
}

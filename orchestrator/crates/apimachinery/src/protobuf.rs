//! Kubernetes' protobuf encoding (`k8s\0` + a `runtime.Unknown` envelope)
//! in both directions, for every built-in kind and the meta types.
//!
//! The field tables (`MESSAGES`, `KINDS`) are generated at build time by
//! `build.rs` from the `k8s-pb` crate's prost structs (field numbers and
//! wire types) and k8s-openapi's serde names (JSON names), so every nested
//! message is covered. Requests are decoded to the JSON the API server
//! stores; responses are encoded from that JSON. Upstream's special wire
//! types: `Time`/`MicroTime` (seconds, nanos), `Quantity` (a string),
//! `IntOrString` (type, intVal, strVal), `RawExtension`/`JSON`/`FieldsV1`
//! (raw JSON bytes), `Duration` (nanoseconds), `map<string, X>` (entry
//! messages), `bytes` (base64 in JSON), `ExtraValue`/`Verbs` (a string list
//! in JSON) and the JSONSchemaProps unions (`…OrArray`, `…OrBool`,
//! `…OrStringArray`).
//!
//! Go's encoder writes every non-pointer field, so a zero scalar (`""`, `0`,
//! `false`) means "unset" and is dropped, as Go's JSON `omitempty` drops
//! it, except for the pointer fields in `POINTERS`, where zero is a value
//! (`replicas: 0`, `backoffLimit: 0`, `runAsUser: 0`, …). Unknown field
//! numbers are skipped, as the JSON decoder drops unknown keys.

use base64::Engine as _;
use serde_json::{Map, Value};

#[derive(Clone, Copy, Debug)]
enum Ty {
    Str,
    Bytes,
    Bool,
    I32,
    I64,
    F64,
    Msg(usize),
    Time,
    MicroTime,
    Duration,
    /// RawExtension, apiextensions JSON, FieldsV1: `bytes raw = 1` of JSON.
    Raw,
    /// ExtraValue, Verbs: `repeated string items = 1`, a JSON array.
    StrList,
    Quantity,
    IntOrString,
    SchemaOrArray(usize),
    SchemaOrBool(usize),
    SchemaOrStringArray(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Card {
    Single,
    Repeated,
    Map,
    /// A Go embedded struct (`json:",inline"`): its fields are the parent's in JSON.
    Inline,
}

#[derive(Debug)]
struct F {
    tag: u32,
    json: &'static str,
    ty: Ty,
    card: Card,
}

#[derive(Debug)]
struct Message {
    fields: &'static [F],
}

include!(concat!(env!("OUT_DIR"), "/protobuf_tables.rs"));

/// The magic prefix of upstream's protobuf serializer.
pub const MAGIC: &[u8] = b"k8s\0";
/// The media type of Kubernetes protobuf.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtobufError {
    #[error("not a Kubernetes protobuf body (no k8s\\0 prefix)")]
    NoMagic,
    /// A truncated or malformed body: where (message path and field number) and what.
    #[error("malformed protobuf at {path} (field {field}): {reason}")]
    Malformed { path: String, field: u64, reason: String },
    #[error("no protobuf encoding is known for kind {kind:?} of {api_version:?}")]
    Unsupported { api_version: String, kind: String },
    /// A JSON value that does not fit its field (encoding a response).
    #[error("cannot encode {path} as protobuf: {reason}")]
    Encode { path: String, reason: String },
}

/// Pointer fields (by JSON name): a zero value on the wire is a value.
const POINTERS: &[&str] = &[
    "activeDeadlineSeconds",
    "allocateLoadBalancerNodePorts",
    "allowPrivilegeEscalation",
    "automountServiceAccountToken",
    "backoffLimit",
    "backoffLimitPerIndex",
    "blockOwnerDeletion",
    "completions",
    "controller",
    "defaultMode",
    "enableServiceLinks",
    "expirationSeconds",
    "failedJobsHistoryLimit",
    "fsGroup",
    "gracePeriodSeconds",
    "hostUsers",
    "immutable",
    "leaseDurationSeconds",
    "leaseTransitions",
    "manualSelector",
    "maxFailedIndexes",
    "maxItems",
    "maxLength",
    "maxProperties",
    "minDomains",
    "minItems",
    "minLength",
    "minProperties",
    "minReplicas",
    "mode",
    "optional",
    "orphanDependents",
    "parallelism",
    "partition",
    "priority",
    "privileged",
    "progressDeadlineSeconds",
    "readOnlyRootFilesystem",
    "ready",
    "replicas",
    "revisionHistoryLimit",
    "runAsGroup",
    "runAsNonRoot",
    "runAsUser",
    "serving",
    "setHostnameAsFQDN",
    "shareProcessNamespace",
    "stabilizationWindowSeconds",
    "started",
    "startingDeadlineSeconds",
    "storageClassName",
    "successfulJobsHistoryLimit",
    "suspend",
    "terminating",
    "terminationGracePeriodSeconds",
    "ttlSecondsAfterFinished",
    "x-kubernetes-preserve-unknown-fields",
];

/// The message of a kind: the group-version's package first, then the
/// meta types (DeleteOptions, Status, WatchEvent … of any group).
fn message_of(api_version: &str, kind: &str) -> Option<usize> {
    let find = |v: &str| KINDS.iter().find(|(av, k, _)| *av == v && *k == kind).map(|(_, _, i)| *i);
    find(api_version).or_else(|| find("meta.k8s.io/v1"))
}

/// Whether objects of this kind have a protobuf encoding.
pub fn has_table(api_version: &str, kind: &str) -> bool {
    !matches!(kind, "Table" | "") && message_of(api_version, kind).is_some()
}

// ---- wire reading ----

enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32,
    Bytes(&'a [u8]),
}

impl Wire<'_> {
    fn name(&self) -> &'static str {
        match self {
            Wire::Varint(_) => "varint",
            Wire::Fixed64(_) => "fixed64",
            Wire::Fixed32 => "fixed32",
            Wire::Bytes(_) => "length-delimited",
        }
    }
}

/// Where the decoder is: the message path and its fields, for errors.
struct Path<'p> {
    text: &'p str,
    fields: &'static [F],
}

impl Path<'_> {
    fn of(text: &str) -> Path<'_> {
        Path { text, fields: &[] }
    }

    /// The path of field `n` (`Pod.spec`), or the message's where unnamed.
    fn field(&self, n: u64) -> String {
        match self.fields.iter().find(|f| u64::from(f.tag) == n) {
            Some(f) => format!("{}.{}", self.text, f.json),
            None => self.text.to_string(),
        }
    }
}

fn malformed(path: &str, field: u64, reason: impl Into<String>) -> ProtobufError {
    ProtobufError::Malformed { path: path.to_string(), field, reason: reason.into() }
}

fn varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The fields of one message, in wire order.
fn fields<'a>(b: &'a [u8], path: &Path<'_>) -> Result<Vec<(u64, Wire<'a>)>, ProtobufError> {
    let (mut pos, mut out) = (0, Vec::new());
    let mut last = 0;
    while pos < b.len() {
        let key = varint(b, &mut pos).ok_or_else(|| malformed(path.text, last, "truncated field key"))?;
        let n = key >> 3;
        if n == 0 {
            return Err(malformed(path.text, 0, "field number 0"));
        }
        last = n;
        let truncated = |what: &str| malformed(&path.field(n), n, format!("truncated {what}"));
        let value = match key & 7 {
            0 => Wire::Varint(varint(b, &mut pos).ok_or_else(|| truncated("varint"))?),
            1 => {
                let s = b.get(pos..pos + 8).ok_or_else(|| truncated("fixed64"))?;
                pos += 8;
                Wire::Fixed64(u64::from_le_bytes(s.try_into().unwrap_or_default()))
            }
            2 => {
                let len = varint(b, &mut pos).ok_or_else(|| truncated("length"))?;
                let end =
                    usize::try_from(len).ok().and_then(|l| pos.checked_add(l)).filter(|e| *e <= b.len()).ok_or_else(
                        || malformed(&path.field(n), n, format!("length {len} runs past the end of the message")),
                    )?;
                let s = &b[pos..end];
                pos = end;
                Wire::Bytes(s)
            }
            5 => {
                b.get(pos..pos + 4).ok_or_else(|| truncated("fixed32"))?;
                pos += 4;
                Wire::Fixed32
            }
            t => return Err(malformed(&path.field(n), n, format!("unsupported wire type {t}"))),
        };
        out.push((n, value));
    }
    Ok(out)
}

fn utf8(b: &[u8], path: &str, n: u64) -> Result<String, ProtobufError> {
    String::from_utf8(b.to_vec()).map_err(|_| malformed(path, n, "string is not UTF-8"))
}

fn format_time(secs: i64, nanos: i64, micro: bool) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp(secs).ok()?;
    let whole = crate::registry::format_time(t);
    if micro {
        Some(format!("{}.{:06}Z", whole.trim_end_matches('Z'), nanos / 1000))
    } else {
        Some(crate::registry::format_time(t))
    }
}

/// Go's `time.Duration.String()`.
fn format_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let neg = nanos < 0;
    let n = nanos.unsigned_abs();
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    if n < 1_000_000_000 {
        let (unit, div) = if n < 1_000 {
            ("ns", 1)
        } else if n < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        out.push_str(&trim_fraction(n, div));
        out.push_str(unit);
        return out;
    }
    let (h, rest) = (n / 3_600_000_000_000, n % 3_600_000_000_000);
    let (m, s) = (rest / 60_000_000_000, rest % 60_000_000_000);
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&trim_fraction(s, 1_000_000_000));
    out.push('s');
    out
}

fn trim_fraction(n: u64, div: u64) -> String {
    let (whole, frac) = (n / div, n % div);
    if frac == 0 {
        return whole.to_string();
    }
    let width = div.ilog10() as usize;
    let f = format!("{frac:0width$}");
    format!("{whole}.{}", f.trim_end_matches('0'))
}

/// Parses Go's duration syntax (`1h2m3.5s`, `300ms`).
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
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
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
    Some(if neg { -total } else { total } as i64)
}

// ---- decoding ----

/// Decodes a `k8s\0`-prefixed body into the JSON object it encodes.
pub fn decode(body: &[u8]) -> Result<Value, ProtobufError> {
    let rest = body.strip_prefix(MAGIC).ok_or(ProtobufError::NoMagic)?;
    let envelope = Path::of("Unknown");
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for (n, w) in fields(rest, &envelope)? {
        match (n, w) {
            (1, Wire::Bytes(tm)) => {
                let type_meta = Path::of("Unknown.typeMeta");
                for (n, w) in fields(tm, &type_meta)? {
                    match (n, w) {
                        (1, Wire::Bytes(s)) => api_version = utf8(s, type_meta.text, n)?,
                        (2, Wire::Bytes(s)) => kind = utf8(s, type_meta.text, n)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(r)) => raw = r,
            (3, Wire::Bytes(e)) if !e.is_empty() => {
                return Err(malformed(
                    "Unknown",
                    3,
                    format!("content encoding {:?} is not supported", utf8(e, "", 3)?),
                ));
            }
            _ => {}
        }
    }
    if kind.is_empty() {
        return Err(malformed("Unknown.typeMeta", 2, "no kind"));
    }
    let idx = message_of(&api_version, &kind)
        .ok_or_else(|| ProtobufError::Unsupported { api_version: api_version.clone(), kind: kind.clone() })?;
    let mut obj = message(idx, raw, &kind)?;
    if let Value::Object(m) = &mut obj {
        // Go writes a non-pointer `status` even when empty; as JSON `{}` it
        // would miss fields k8s-openapi requires (TokenRequest's
        // expirationTimestamp), and a request's empty status says nothing.
        if m.get("status").is_some_and(|s| s.as_object().is_some_and(Map::is_empty)) {
            m.remove("status");
        }
        // apiVersion and kind first, as a JSON body has them.
        let mut out = Map::new();
        out.insert("apiVersion".into(), api_version.into());
        out.insert("kind".into(), kind.into());
        out.extend(std::mem::take(m));
        *m = out;
    }
    Ok(obj)
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Bool(b) => !b,
        _ => false,
    }
}

fn message(idx: usize, b: &[u8], path: &str) -> Result<Value, ProtobufError> {
    let msg = &MESSAGES[idx];
    let mut out = Map::new();
    for (n, w) in fields(b, &Path { text: path, fields: msg.fields })? {
        let Some(f) = msg.fields.iter().find(|f| u64::from(f.tag) == n) else { continue };
        let here = format!("{path}.{}", f.json);
        match f.card {
            Card::Map => {
                let Wire::Bytes(entry) = w else {
                    return Err(malformed(path, n, format!("{} for a map entry", w.name())));
                };
                let (mut key, mut value) = (String::new(), None);
                for (en, ew) in fields(entry, &Path::of(&here))? {
                    match (en, ew) {
                        (1, Wire::Bytes(k)) => key = utf8(k, &here, 1)?,
                        (2, ew) => value = scalar(f.ty, &ew, &format!("{here}[{key:?}]"), 2)?,
                        _ => {}
                    }
                }
                let value = value.unwrap_or_else(|| zero_of(f.ty));
                if let Value::Object(m) = out.entry(f.json).or_insert_with(|| Value::Object(Map::new())) {
                    m.insert(key, value);
                }
            }
            Card::Repeated => {
                let arr = out.entry(f.json).or_insert_with(|| Value::Array(Vec::new()));
                let Value::Array(arr) = arr else { continue };
                // Packed numbers and bools: one length-delimited run.
                if let (Wire::Bytes(run), Ty::I32 | Ty::I64 | Ty::Bool) = (&w, f.ty) {
                    let mut pos = 0;
                    while pos < run.len() {
                        let v = varint(run, &mut pos).ok_or_else(|| malformed(path, n, "truncated packed varint"))?;
                        arr.push(scalar(f.ty, &Wire::Varint(v), &here, n)?.unwrap_or(Value::Null));
                    }
                    continue;
                }
                let at = format!("{here}[{}]", arr.len());
                if let Some(v) = scalar(f.ty, &w, &at, n)? {
                    arr.push(v);
                }
            }
            Card::Inline => {
                if let (Ty::Msg(i), Wire::Bytes(b)) = (f.ty, &w)
                    && let Value::Object(inner) = message(i, b, path)?
                {
                    out.extend(inner);
                }
            }
            Card::Single => {
                let Some(v) = scalar(f.ty, &w, &here, n)? else { continue };
                if is_zero(&v) && !matches!(f.ty, Ty::F64 | Ty::IntOrString) && !POINTERS.contains(&f.json) {
                    continue;
                }
                out.insert(f.json.to_string(), v);
            }
        }
    }
    Ok(Value::Object(out))
}

fn zero_of(ty: Ty) -> Value {
    match ty {
        Ty::Str | Ty::Bytes => Value::String(String::new()),
        Ty::Msg(_) => Value::Object(Map::new()),
        Ty::Quantity => Value::String("0".into()),
        _ => Value::Null,
    }
}

fn expect<'a>(w: &'a Wire<'a>, want: &str, path: &str, n: u64) -> Result<&'a [u8], ProtobufError> {
    match w {
        Wire::Bytes(b) => Ok(b),
        other => Err(malformed(path, n, format!("{} where {want} (length-delimited) was expected", other.name()))),
    }
}

/// One value of type `ty`; `None` for an absent time.
fn scalar(ty: Ty, w: &Wire<'_>, path: &str, n: u64) -> Result<Option<Value>, ProtobufError> {
    let varint_of = |what: &str| match w {
        Wire::Varint(v) => Ok(*v),
        other => Err(malformed(path, n, format!("{} where {what} (varint) was expected", other.name()))),
    };
    Ok(Some(match ty {
        Ty::Str => Value::String(utf8(expect(w, "a string", path, n)?, path, n)?),
        Ty::Bytes => Value::String(base64::engine::general_purpose::STANDARD.encode(expect(w, "bytes", path, n)?)),
        Ty::Bool => Value::Bool(varint_of("a bool")? != 0),
        Ty::I32 => Value::from(varint_of("an int32")? as i64 as i32),
        Ty::I64 => Value::from(varint_of("an int64")? as i64),
        Ty::F64 => match w {
            Wire::Fixed64(v) => serde_json::Number::from_f64(f64::from_bits(*v))
                .map(Value::Number)
                .ok_or_else(|| malformed(path, n, "a double that is not a finite number"))?,
            other => return Err(malformed(path, n, format!("{} where a double (fixed64) was expected", other.name()))),
        },
        Ty::Msg(i) => message(i, expect(w, "a message", path, n)?, path)?,
        Ty::Time | Ty::MicroTime => {
            let (mut secs, mut nanos) = (0i64, 0i64);
            for (tn, tw) in fields(expect(w, "a time", path, n)?, &Path::of(path))? {
                match (tn, tw) {
                    (1, Wire::Varint(v)) => secs = v as i64,
                    (2, Wire::Varint(v)) => nanos = i64::from(v as i64 as i32),
                    _ => {}
                }
            }
            if secs == 0 && nanos == 0 {
                return Ok(None);
            }
            let t = format_time(secs, nanos, matches!(ty, Ty::MicroTime))
                .ok_or_else(|| malformed(path, n, format!("time {secs}s is out of range")))?;
            Value::String(t)
        }
        Ty::Duration => {
            let mut d = 0i64;
            for (dn, dw) in fields(expect(w, "a duration", path, n)?, &Path::of(path))? {
                if let (1, Wire::Varint(v)) = (dn, dw) {
                    d = v as i64;
                }
            }
            Value::String(format_duration(d))
        }
        Ty::Raw => {
            let mut raw = &[][..];
            for (rn, rw) in fields(expect(w, "raw JSON", path, n)?, &Path::of(path))? {
                if let (1, Wire::Bytes(b)) = (rn, rw) {
                    raw = b;
                }
            }
            if raw.is_empty() {
                return Ok(None);
            }
            if raw.starts_with(MAGIC) {
                decode(raw)?
            } else {
                serde_json::from_slice(raw).map_err(|e| malformed(path, n, format!("raw JSON: {e}")))?
            }
        }
        Ty::StrList => {
            let mut items = Vec::new();
            for (ln, lw) in fields(expect(w, "a string list", path, n)?, &Path::of(path))? {
                if let (1, Wire::Bytes(b)) = (ln, lw) {
                    items.push(Value::String(utf8(b, path, 1)?));
                }
            }
            Value::Array(items)
        }
        Ty::Quantity => {
            let mut q = String::from("0");
            for (qn, qw) in fields(expect(w, "a quantity", path, n)?, &Path::of(path))? {
                if let (1, Wire::Bytes(b)) = (qn, qw) {
                    q = utf8(b, path, 1)?;
                }
            }
            Value::String(q)
        }
        Ty::IntOrString => {
            let (mut t, mut i, mut s) = (0, 0i64, String::new());
            for (xn, xw) in fields(expect(w, "an int-or-string", path, n)?, &Path::of(path))? {
                match (xn, xw) {
                    (1, Wire::Varint(v)) => t = v,
                    (2, Wire::Varint(v)) => i = i64::from(v as i64 as i32),
                    (3, Wire::Bytes(b)) => s = utf8(b, path, 3)?,
                    _ => {}
                }
            }
            if t == 1 { Value::String(s) } else { Value::from(i) }
        }
        Ty::SchemaOrArray(schema) => {
            let (mut one, mut many) = (None, Vec::new());
            for (sn, sw) in fields(expect(w, "a schema or array", path, n)?, &Path::of(path))? {
                match (sn, sw) {
                    (1, Wire::Bytes(b)) => one = Some(message(schema, b, path)?),
                    (2, Wire::Bytes(b)) => many.push(message(schema, b, path)?),
                    _ => {}
                }
            }
            if many.is_empty() { one.unwrap_or(Value::Null) } else { Value::Array(many) }
        }
        Ty::SchemaOrBool(schema) => {
            let (mut allows, mut one) = (false, None);
            for (sn, sw) in fields(expect(w, "a schema or bool", path, n)?, &Path::of(path))? {
                match (sn, sw) {
                    (1, Wire::Varint(v)) => allows = v != 0,
                    (2, Wire::Bytes(b)) => one = Some(message(schema, b, path)?),
                    _ => {}
                }
            }
            one.unwrap_or(Value::Bool(allows))
        }
        Ty::SchemaOrStringArray(schema) => {
            let (mut one, mut many) = (None, Vec::new());
            for (sn, sw) in fields(expect(w, "a schema or string array", path, n)?, &Path::of(path))? {
                match (sn, sw) {
                    (1, Wire::Bytes(b)) => one = Some(message(schema, b, path)?),
                    (2, Wire::Bytes(b)) => many.push(Value::String(utf8(b, path, 2)?)),
                    _ => {}
                }
            }
            if many.is_empty() { one.unwrap_or(Value::Null) } else { Value::Array(many) }
        }
    }))
}

// ---- encoding ----

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, tag: u32, wire: u8) {
    put_varint(out, u64::from(tag) << 3 | u64::from(wire));
}

fn put_bytes(out: &mut Vec<u8>, tag: u32, b: &[u8]) {
    put_key(out, tag, 2);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn encode_error(path: &str, reason: impl Into<String>) -> ProtobufError {
    ProtobufError::Encode { path: path.to_string(), reason: reason.into() }
}

/// Encodes a JSON object (with `apiVersion` and `kind`) as a `k8s\0` +
/// `runtime.Unknown` body, as upstream's protobuf serializer writes it.
pub fn encode(obj: &Value) -> Result<Vec<u8>, ProtobufError> {
    let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
    let idx = message_of(api_version, kind)
        .filter(|_| has_table(api_version, kind))
        .ok_or_else(|| ProtobufError::Unsupported { api_version: api_version.to_string(), kind: kind.to_string() })?;
    let raw = encode_raw(idx, obj, kind)?;
    let mut type_meta = Vec::new();
    put_bytes(&mut type_meta, 1, api_version.as_bytes());
    put_bytes(&mut type_meta, 2, kind.as_bytes());
    let mut out = MAGIC.to_vec();
    put_bytes(&mut out, 1, &type_meta);
    put_bytes(&mut out, 2, &raw);
    put_bytes(&mut out, 3, b"");
    put_bytes(&mut out, 4, b"");
    Ok(out)
}

/// Encodes a watch event as one frame of upstream's protobuf watch
/// stream: a 4-byte big-endian length, then a `WatchEvent` message
/// (without envelope) whose object is the object's own `k8s\0` body.
pub fn encode_watch_frame(event_type: &str, obj: &Value) -> Result<Vec<u8>, ProtobufError> {
    let inner = encode(obj)?;
    let mut raw_ext = Vec::new();
    put_bytes(&mut raw_ext, 1, &inner);
    let mut ev = Vec::new();
    put_bytes(&mut ev, 1, event_type.as_bytes());
    put_bytes(&mut ev, 2, &raw_ext);
    let mut out = (ev.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&ev);
    Ok(out)
}

fn encode_raw(idx: usize, obj: &Value, path: &str) -> Result<Vec<u8>, ProtobufError> {
    let Value::Object(m) = obj else {
        return Err(encode_error(path, "not an object"));
    };
    let mut out = Vec::new();
    for f in MESSAGES[idx].fields {
        if let (Card::Inline, Ty::Msg(i)) = (f.card, f.ty) {
            put_bytes(&mut out, f.tag, &encode_raw(i, obj, path)?);
            continue;
        }
        let Some(v) = m.get(f.json) else { continue };
        if v.is_null() {
            continue;
        }
        let here = format!("{path}.{}", f.json);
        match f.card {
            Card::Single | Card::Inline => put_value(&mut out, f.tag, f.ty, v, &here)?,
            Card::Repeated => {
                let Value::Array(items) = v else {
                    return Err(encode_error(&here, "not an array"));
                };
                for (i, item) in items.iter().enumerate() {
                    put_value(&mut out, f.tag, f.ty, item, &format!("{here}[{i}]"))?;
                }
            }
            Card::Map => {
                let Value::Object(entries) = v else {
                    return Err(encode_error(&here, "not an object"));
                };
                for (k, item) in entries {
                    let mut entry = Vec::new();
                    put_bytes(&mut entry, 1, k.as_bytes());
                    if !item.is_null() {
                        put_value(&mut entry, 2, f.ty, item, &format!("{here}[{k:?}]"))?;
                    }
                    put_bytes(&mut out, f.tag, &entry);
                }
            }
        }
    }
    Ok(out)
}

fn as_i64(v: &Value, path: &str) -> Result<i64, ProtobufError> {
    v.as_i64()
        .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
        .ok_or_else(|| encode_error(path, format!("{v} is not an integer")))
}

fn put_value(out: &mut Vec<u8>, tag: u32, ty: Ty, v: &Value, path: &str) -> Result<(), ProtobufError> {
    let str_of =
        |v: &Value| v.as_str().map(str::to_string).ok_or_else(|| encode_error(path, format!("{v} is not a string")));
    match ty {
        Ty::Str => put_bytes(out, tag, str_of(v)?.as_bytes()),
        Ty::Bytes => {
            let b = base64::engine::general_purpose::STANDARD
                .decode(str_of(v)?)
                .map_err(|e| encode_error(path, format!("not base64: {e}")))?;
            put_bytes(out, tag, &b);
        }
        Ty::Bool => {
            let b = v.as_bool().ok_or_else(|| encode_error(path, format!("{v} is not a bool")))?;
            put_key(out, tag, 0);
            put_varint(out, u64::from(b));
        }
        Ty::I32 | Ty::I64 => {
            put_key(out, tag, 0);
            put_varint(out, as_i64(v, path)? as u64);
        }
        Ty::F64 => {
            let f = v.as_f64().ok_or_else(|| encode_error(path, format!("{v} is not a number")))?;
            put_key(out, tag, 1);
            out.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        Ty::Msg(i) => put_bytes(out, tag, &encode_raw(i, v, path)?),
        Ty::Time | Ty::MicroTime => {
            let s = str_of(v)?;
            let t = time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
                .map_err(|e| encode_error(path, format!("{s:?} is not an RFC 3339 time: {e}")))?;
            let mut m = Vec::new();
            put_key(&mut m, 1, 0);
            put_varint(&mut m, t.unix_timestamp() as u64);
            if t.nanosecond() != 0 {
                put_key(&mut m, 2, 0);
                put_varint(&mut m, u64::from(t.nanosecond()));
            }
            put_bytes(out, tag, &m);
        }
        Ty::Duration => {
            let s = str_of(v)?;
            let d = parse_duration(&s).ok_or_else(|| encode_error(path, format!("{s:?} is not a duration")))?;
            let mut m = Vec::new();
            put_key(&mut m, 1, 0);
            put_varint(&mut m, d as u64);
            put_bytes(out, tag, &m);
        }
        Ty::Raw => {
            let mut m = Vec::new();
            put_bytes(&mut m, 1, &serde_json::to_vec(v).unwrap_or_default());
            put_bytes(out, tag, &m);
        }
        Ty::StrList => {
            let Value::Array(items) = v else {
                return Err(encode_error(path, "not an array"));
            };
            let mut m = Vec::new();
            for i in items {
                put_bytes(&mut m, 1, str_of(i)?.as_bytes());
            }
            put_bytes(out, tag, &m);
        }
        Ty::Quantity => {
            let s = match v {
                Value::Number(n) => n.to_string(),
                other => str_of(other)?,
            };
            let mut m = Vec::new();
            put_bytes(&mut m, 1, s.as_bytes());
            put_bytes(out, tag, &m);
        }
        Ty::IntOrString => {
            let mut m = Vec::new();
            match v {
                Value::String(s) => {
                    put_key(&mut m, 1, 0);
                    put_varint(&mut m, 1);
                    put_bytes(&mut m, 3, s.as_bytes());
                }
                other => {
                    put_key(&mut m, 1, 0);
                    put_varint(&mut m, 0);
                    put_key(&mut m, 2, 0);
                    put_varint(&mut m, as_i64(other, path)? as u64);
                }
            }
            put_bytes(out, tag, &m);
        }
        Ty::SchemaOrArray(schema) | Ty::SchemaOrStringArray(schema) => {
            let mut m = Vec::new();
            match v {
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let at = format!("{path}[{i}]");
                        if matches!(ty, Ty::SchemaOrArray(_)) {
                            put_bytes(&mut m, 2, &encode_raw(schema, item, &at)?);
                        } else {
                            put_bytes(&mut m, 2, str_of(item)?.as_bytes());
                        }
                    }
                }
                other => put_bytes(&mut m, 1, &encode_raw(schema, other, path)?),
            }
            put_bytes(out, tag, &m);
        }
        Ty::SchemaOrBool(schema) => {
            let mut m = Vec::new();
            match v {
                Value::Bool(b) => {
                    put_key(&mut m, 1, 0);
                    put_varint(&mut m, u64::from(*b));
                }
                other => {
                    put_key(&mut m, 1, 0);
                    put_varint(&mut m, 1);
                    put_bytes(&mut m, 2, &encode_raw(schema, other, path)?);
                }
            }
            put_bytes(out, tag, &m);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field(out: &mut Vec<u8>, n: u32, bytes: &[u8]) {
        put_bytes(out, n, bytes);
    }

    /// A `k8s\0` + runtime.Unknown body of a v1 kind.
    fn envelope(kind: &[u8], raw: &[u8]) -> Vec<u8> {
        let mut tm = Vec::new();
        field(&mut tm, 1, b"v1");
        field(&mut tm, 2, kind);
        let mut body = MAGIC.to_vec();
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

    #[test]
    fn decodes_delete_options_with_a_zero_grace_period() {
        let mut pre = Vec::new();
        field(&mut pre, 1, b"u-1");
        let mut raw = Vec::new();
        put_key(&mut raw, 1, 0);
        put_varint(&mut raw, 0);
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

    #[test]
    fn a_truncated_body_names_the_message_path_and_field() {
        let mut container = Vec::new();
        field(&mut container, 1, b"c");
        // image (field 2) claims 9 bytes and has 2.
        container.extend_from_slice(&[0x12, 9, b'x', b'y']);
        let mut spec = Vec::new();
        field(&mut spec, 2, &container);
        let mut raw = Vec::new();
        field(&mut raw, 2, &spec);
        let err = decode(&envelope(b"Pod", &raw)).unwrap_err();
        assert_eq!(
            err,
            ProtobufError::Malformed {
                path: "Pod.spec.containers[0].image".into(),
                field: 2,
                reason: "length 9 runs past the end of the message".into()
            }
        );
        // A varint where the string name belongs.
        let mut meta = Vec::new();
        put_key(&mut meta, 1, 0);
        put_varint(&mut meta, 7);
        let mut raw = Vec::new();
        field(&mut raw, 1, &meta);
        let err = decode(&envelope(b"Pod", &raw)).unwrap_err().to_string();
        assert!(err.contains("Pod.metadata.name (field 1)"), "{err}");
    }

    #[test]
    fn every_kind_round_trips_through_json() {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "d", "labels": {"a": "b"},
                         "creationTimestamp": "2026-01-02T03:04:05Z",
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "r", "uid": "u", "controller": true}]},
            "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80, "hostIP": "1.2.3.4"}],
                                     "resources": {"limits": {"cpu": "500m"}},
                                     "livenessProbe": {"httpGet": {"port": "http", "path": "/"}, "periodSeconds": 3},
                                     "securityContext": {"runAsUser": 0, "runAsNonRoot": false}}],
                     "tolerations": [{"key": "k", "operator": "Exists", "tolerationSeconds": 5}],
                     "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "k", "operator": "In", "values": ["v"]}]}]}}}},
            "status": {"phase": "Running", "hostIPs": [{"ip": "10.0.0.1"}], "podIP": "10.1.0.2"}
        });
        let body = encode(&pod).unwrap();
        assert_eq!(decode(&body).unwrap(), pod);
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
                         "spec": {"externalIPs": ["1.1.1.1"], "ports": [{"port": 80, "targetPort": 8080}], "clusterIPs": ["10.0.0.1"]}});
        assert_eq!(decode(&encode(&svc).unwrap()).unwrap(), svc);
    }

    #[test]
    fn an_empty_status_as_go_writes_it_is_dropped() {
        // kubectl create token: spec set, status {} (Go's non-pointer struct).
        let mut spec = Vec::new();
        field(&mut spec, 1, b"api");
        let mut raw = Vec::new();
        field(&mut raw, 1, b"");
        field(&mut raw, 2, &spec);
        field(&mut raw, 3, b"");
        let mut tm = Vec::new();
        field(&mut tm, 1, b"authentication.k8s.io/v1");
        field(&mut tm, 2, b"TokenRequest");
        let mut body = MAGIC.to_vec();
        field(&mut body, 1, &tm);
        field(&mut body, 2, &raw);
        assert_eq!(
            decode(&body).unwrap(),
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "metadata": {},
                   "spec": {"audiences": ["api"]}})
        );
    }

    #[test]
    fn go_durations() {
        for (n, s) in [(0, "0s"), (1_500_000_000, "1.5s"), (3_723_000_000_000, "1h2m3s"), (300_000_000, "300ms")] {
            assert_eq!(format_duration(n), s);
            assert_eq!(parse_duration(s), Some(n));
        }
    }

    #[test]
    fn the_tables_cover_the_served_kinds() {
        for (v, k) in [
            ("v1", "Pod"),
            ("apps/v1", "Deployment"),
            ("batch/v1", "CronJob"),
            ("batch/v1", "Job"),
            ("v1", "DeleteOptions"),
            ("meta.k8s.io/v1", "Status"),
            ("policy/v1", "Eviction"),
            ("autoscaling/v1", "Scale"),
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
            ("v1", "PodList"),
        ] {
            assert!(has_table(v, k), "{v} {k}");
        }
        for rt in crate::resources::RESOURCES {
            let v = rt.api_version();
            assert!(has_table(&v, rt.kind), "{v} {}", rt.kind);
            assert!(has_table(&v, &format!("{}List", rt.kind)), "{v} {}List", rt.kind);
        }
        assert!(!has_table("v1", "Table"));
        assert!(!has_table("example.com/v1", "Widget"));
    }
}

//! OpenAPI v2 as kubectl ≤1.27 reads it: a v3 schema rewritten in v2's
//! form (`to_v2`) and gnostic's `openapi.v2.Document` protobuf messages
//! (the `application/com.github.proto-openapi.spec.v2@v1.0+protobuf`
//! form of `/openapi/v2`), written by hand for the subset a Kubernetes
//! document uses: info, paths (put/post/patch operations with query
//! parameters and a response schema) and definitions (JSON Schema with
//! vendor extensions). A value gnostic keeps as `Any` (default, enum,
//! example, `x-…` extensions) carries its JSON text in `Any.yaml` (JSON
//! is YAML), which is what kube-openapi's proto reader parses.
//!
//! Depends on serde_json only: the build script includes this file too
//! (`build_openapi.rs` encodes the built-in schemas at build time).

use serde_json::{Map, Value};

const V3_REF: &str = "#/components/schemas/";
const V2_REF: &str = "#/definitions/";

/// Rewrites a v3 schema (as `/openapi/v3` serves it) in place into the
/// form of upstream's `/openapi/v2`, which kubectl ≤1.26 parses strictly
/// (kube-openapi's `proto` package refuses a definition it cannot model,
/// and with it the whole document): references under `#/definitions/`;
/// a single-reference `allOf` (a field's description beside its
/// reference) as `$ref` beside `description`; int-or-string as
/// `type: string, format: int-or-string`; `nullable`, `anyOf`, `oneOf`,
/// `not`, CEL rules and multi-reference `allOf` dropped (v2 has no
/// `nullable`, kubectl no union types); an object that keeps unknown
/// fields without its `properties` (else kubectl's validation would refuse
/// them); an array without `items`, or a type v2 lacks, left untyped.
pub fn to_v2(v: &mut Value) {
    let Value::Object(m) = v else { return };
    let single = match m.get("allOf") {
        Some(Value::Array(all)) if all.len() == 1 && all[0].as_object().is_some_and(|o| o.len() == 1) => {
            all[0]["$ref"].as_str().map(str::to_string)
        }
        _ => None,
    };
    if let Some(r) = single
        && !m.contains_key("$ref")
    {
        m.insert("$ref".into(), Value::String(r));
    }
    if let Some(Value::String(r)) = m.get_mut("$ref")
        && let Some(name) = r.strip_prefix(V3_REF)
    {
        *r = format!("{V2_REF}{name}");
    }
    for k in ["allOf", "anyOf", "oneOf", "not", "nullable", "x-kubernetes-validations"] {
        m.remove(k);
    }
    if m.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        m.insert("type".into(), Value::from("string"));
        m.insert("format".into(), Value::from("int-or-string"));
    }
    if m.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        m.remove("properties");
        m.remove("required");
    }
    let typed = match m.get("type") {
        None => true,
        Some(Value::String(t)) => match t.as_str() {
            "array" => m.get("items").is_some_and(Value::is_object),
            "object" | "string" | "integer" | "number" | "boolean" => true,
            _ => false,
        },
        Some(_) => false,
    };
    if !typed {
        m.remove("type");
        m.remove("items");
    }
    if let Some(Value::Object(props)) = m.get_mut("properties") {
        props.values_mut().for_each(to_v2);
    }
    for k in ["items", "additionalProperties"] {
        if let Some(sub @ Value::Object(_)) = m.get_mut(k) {
            to_v2(sub);
        }
    }
}

/// A protobuf message being written.
#[derive(Default)]
pub struct Pb(pub Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    /// A length-delimited field.
    pub fn bytes(&mut self, tag: u32, b: &[u8]) {
        self.varint(u64::from(tag) << 3 | 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }

    fn str(&mut self, tag: u32, s: &str) {
        self.bytes(tag, s.as_bytes());
    }

    fn msg(&mut self, tag: u32, f: impl FnOnce(&mut Pb)) {
        let mut inner = Pb::default();
        f(&mut inner);
        self.bytes(tag, &inner.0);
    }

    fn bool(&mut self, tag: u32, b: bool) {
        self.varint(u64::from(tag) << 3);
        self.varint(u64::from(b));
    }

    fn int(&mut self, tag: u32, v: i64) {
        self.varint(u64::from(tag) << 3);
        self.varint(v as u64);
    }

    fn double(&mut self, tag: u32, v: f64) {
        self.varint(u64::from(tag) << 3 | 1);
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    /// gnostic's `Any` with the value's JSON text as its `yaml`.
    fn any(&mut self, tag: u32, v: &Value) {
        self.msg(tag, |a| a.str(2, &v.to_string()));
    }

    /// A `NamedAny` vendor extension.
    fn extension(&mut self, tag: u32, name: &str, v: &Value) {
        self.msg(tag, |n| {
            n.str(1, name);
            n.any(2, v);
        });
    }
}

/// gnostic's `Schema` message of a v2 schema.
pub fn schema(v: &Value) -> Vec<u8> {
    let mut pb = Pb::default();
    let Value::Object(m) = v else { return pb.0 };
    for (k, x) in m {
        let num = || x.as_f64().unwrap_or_default();
        let int = || x.as_i64().unwrap_or_default();
        let flag = || x.as_bool().unwrap_or_default();
        match (k.as_str(), x) {
            ("$ref", Value::String(s)) => pb.str(1, s),
            ("format", Value::String(s)) => pb.str(2, s),
            ("title", Value::String(s)) => pb.str(3, s),
            ("description", Value::String(s)) => pb.str(4, s),
            ("default", _) => pb.any(5, x),
            ("multipleOf", _) => pb.double(6, num()),
            ("maximum", _) => pb.double(7, num()),
            ("exclusiveMaximum", _) => pb.bool(8, flag()),
            ("minimum", _) => pb.double(9, num()),
            ("exclusiveMinimum", _) => pb.bool(10, flag()),
            ("maxLength", _) => pb.int(11, int()),
            ("minLength", _) => pb.int(12, int()),
            ("pattern", Value::String(s)) => pb.str(13, s),
            ("maxItems", _) => pb.int(14, int()),
            ("minItems", _) => pb.int(15, int()),
            ("uniqueItems", _) => pb.bool(16, flag()),
            ("maxProperties", _) => pb.int(17, int()),
            ("minProperties", _) => pb.int(18, int()),
            ("required", Value::Array(a)) => a.iter().filter_map(Value::as_str).for_each(|r| pb.str(19, r)),
            ("enum", Value::Array(a)) => a.iter().for_each(|e| pb.any(20, e)),
            ("additionalProperties", Value::Bool(b)) => pb.msg(21, |i| i.bool(2, *b)),
            ("additionalProperties", Value::Object(_)) => pb.msg(21, |i| i.bytes(1, &schema(x))),
            ("type", Value::String(t)) => pb.msg(22, |i| i.str(1, t)),
            ("items", Value::Object(_)) => pb.msg(23, |i| i.bytes(1, &schema(x))),
            ("items", Value::Array(a)) => pb.msg(23, |i| a.iter().for_each(|s| i.bytes(1, &schema(s)))),
            ("allOf", Value::Array(a)) => a.iter().for_each(|s| pb.bytes(24, &schema(s))),
            ("properties", Value::Object(props)) => pb.msg(25, |p| {
                for (name, s) in props {
                    p.msg(1, |n| {
                        n.str(1, name);
                        n.bytes(2, &schema(s));
                    });
                }
            }),
            ("discriminator", Value::String(s)) => pb.str(26, s),
            ("readOnly", _) => pb.bool(27, flag()),
            ("example", _) => pb.any(30, x),
            (ext, _) if ext.starts_with("x-") => pb.extension(31, ext, x),
            _ => {}
        }
    }
    pb.0
}

/// One entry of `Definitions.additional_properties` (a `NamedSchema`),
/// ready to be concatenated with the others into the message's body.
pub fn definition(name: &str, v2: &Value) -> Vec<u8> {
    let mut pb = Pb::default();
    pb.msg(1, |n| {
        n.str(1, name);
        n.bytes(2, &schema(v2));
    });
    pb.0
}

/// gnostic's `Document`: `info`, the `paths` of a v2 document (JSON) and
/// the definitions' entries (`definition`), already encoded.
pub fn document(title: &str, version: &str, paths: &Map<String, Value>, definitions: &[&[u8]]) -> Vec<u8> {
    let len: usize = definitions.iter().map(|d| d.len()).sum();
    let mut encoded_paths = Pb::default();
    for (name, item) in paths {
        encoded_paths.msg(2, |n| {
            n.str(1, name);
            n.msg(2, |pi| path_item(pi, item));
        });
    }
    // One allocation of the final size (the document is ~1 MB).
    let mut doc = Pb(Vec::with_capacity(len + encoded_paths.0.len() + title.len() + version.len() + 64));
    doc.str(1, "2.0");
    doc.msg(2, |i| {
        i.str(1, title);
        i.str(2, version);
    });
    doc.bytes(8, &encoded_paths.0);
    doc.varint(9 << 3 | 2);
    doc.varint(len as u64);
    definitions.iter().for_each(|d| doc.0.extend_from_slice(d));
    doc.0
}

fn path_item(pb: &mut Pb, item: &Value) {
    let Value::Object(m) = item else { return };
    for (verb, op) in m {
        let tag = match verb.as_str() {
            "get" => 2,
            "put" => 3,
            "post" => 4,
            "delete" => 5,
            "patch" => 8,
            _ => continue,
        };
        pb.msg(tag, |o| operation(o, op));
    }
}

fn operation(pb: &mut Pb, op: &Value) {
    let Value::Object(m) = op else { return };
    fn strings(v: &Value) -> Vec<String> {
        v.as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_string).collect()
    }
    for (k, x) in m {
        match (k.as_str(), x) {
            ("description", Value::String(s)) => pb.str(3, s),
            ("operationId", Value::String(s)) => pb.str(5, s),
            ("produces", _) => strings(x).iter().for_each(|s| pb.str(6, s)),
            ("consumes", _) => strings(x).iter().for_each(|s| pb.str(7, s)),
            ("parameters", Value::Array(params)) => {
                for p in params {
                    pb.msg(8, |item| item.msg(1, |param| parameter(param, p)));
                }
            }
            ("responses", Value::Object(codes)) => pb.msg(9, |r| {
                for (code, resp) in codes {
                    r.msg(1, |n| {
                        n.str(1, code);
                        n.msg(2, |rv| {
                            rv.msg(1, |rs| {
                                rs.str(1, resp["description"].as_str().unwrap_or_default());
                                if resp.get("schema").is_some() {
                                    rs.msg(2, |si| si.bytes(1, &schema(&resp["schema"])));
                                }
                            });
                        });
                    });
                }
            }),
            (ext, _) if ext.starts_with("x-") => pb.extension(13, ext, x),
            _ => {}
        }
    }
}

/// A `Parameter`: a body parameter, else a query, path or header one.
fn parameter(pb: &mut Pb, p: &Value) {
    let s = |k: &str| p[k].as_str().unwrap_or_default().to_string();
    let required = p["required"].as_bool().unwrap_or_default();
    let unique = p["uniqueItems"].as_bool().unwrap_or_default();
    if s("in") == "body" {
        pb.msg(1, |b| {
            b.str(1, &s("description"));
            b.str(2, &s("name"));
            b.str(3, "body");
            b.bool(4, required);
            b.bytes(5, &schema(&p["schema"]));
        });
        return;
    }
    // NonBodyParameter's oneof: header 1, query 3, path 4; query has
    // `allow_empty_value` at 5, so its later fields are one further on.
    let (which, ty, uniq) = match s("in").as_str() {
        "query" => (3, 6, 20),
        "path" => (4, 5, 19),
        _ => (1, 5, 19),
    };
    pb.msg(2, |nb| {
        nb.msg(which, |q| {
            q.bool(1, required);
            q.str(2, &s("in"));
            q.str(3, &s("description"));
            q.str(4, &s("name"));
            q.str(ty, &s("type"));
            q.bool(uniq, unique);
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn v3_schemas_take_v2_form() {
        let mut s = json!({
            "type": "object",
            "properties": {
                "probe": {"description": "d", "allOf": [{"$ref": "#/components/schemas/io.k8s.api.core.v1.Probe"}]},
                "meta": {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
                "port": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                         "properties": {"a": {"type": "string"}}},
                "list": {"type": "array"},
                "tags": {"type": "array", "items": {"type": "string", "nullable": true}},
            },
        });
        to_v2(&mut s);
        let p = &s["properties"];
        assert_eq!(p["probe"], json!({"description": "d", "$ref": "#/definitions/io.k8s.api.core.v1.Probe"}));
        assert_eq!(p["meta"]["$ref"], "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta");
        assert_eq!(p["port"], json!({"type": "string", "format": "int-or-string", "x-kubernetes-int-or-string": true}));
        assert_eq!(p["free"], json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}));
        assert_eq!(p["list"], json!({}));
        assert_eq!(p["tags"]["items"], json!({"type": "string"}));
    }

    #[test]
    fn schemas_encode_as_gnostic_messages() {
        let s = json!({"type": "string", "description": "d", "enum": ["A"], "x-kubernetes-list-type": "map"});
        let pb = schema(&s);
        // description (4), enum (20: Any{yaml}), type (22: TypeItem), extension (31: NamedAny).
        assert!(pb.windows(3).any(|w| w == [0x22, 0x01, b'd']), "{pb:?}");
        assert!(pb.windows(6).any(|w| w == [0xa2, 0x01, 0x05, 0x12, 0x03, b'"']), "{pb:?}");
        assert!(pb.windows(5).any(|w| w == [0xb2, 0x01, 0x08, 0x0a, 0x06]), "{pb:?}");
        assert!(pb.windows(2).any(|w| w == [0xfa, 0x01]), "{pb:?}");
        let doc = document("Kubernetes", "v1.33.0", &Map::new(), &[&definition("x", &s)]);
        assert_eq!(&doc[..5], b"\x0a\x032.0");
        assert_eq!(doc[5], 0x12);
    }
}

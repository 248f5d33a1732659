//! Generates the OpenAPI schemas of every built-in type (`openapi.rs`)
//! from k8s-openapi's sources: each type's `JsonSchema` impl (behind its
//! `schemars` feature, which stays off: read as text, never compiled) is a
//! `json_schema!({...})` literal with upstream's descriptions, types,
//! formats and `required`, and `__gen.subschema_for::<crate::T>()` where a
//! field is another type. Each becomes a definition named by its
//! `schema_name()` with `$ref: #/components/schemas/<name>` for those
//! calls; a type implementing `crate::Resource` gets
//! `x-kubernetes-group-version-kind`. Only the enabled version's directory
//! (`DEP_K8S_OPENAPI_*_VERSION`) is read.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Map, Value};

/// Writes `openapi_schemas.json` (one object: schema name → schema) to `out`.
pub fn generate(openapi_src: &Path, out: &Path) {
    let version = enabled_version();
    let dir = openapi_src.join(format!("v1_{version}"));
    assert!(dir.is_dir(), "k8s-openapi has no {}", dir.display());
    let mut types: Vec<TypeText> = Vec::new();
    super::walk(&dir, &dir, &mut |module, text| {
        let module = module[..module.len().saturating_sub(1)].join("::");
        types.extend(type_texts(&module, text));
    });
    // crate::api::core::v1::Probe → io.k8s.api.core.v1.Probe
    let names: HashMap<String, String> =
        types.iter().map(|t| (format!("crate::{}::{}", t.module, t.rust), t.schema_name.clone())).collect();
    let mut defs = Map::new();
    for t in &types {
        let mut p = Parser { s: t.body.as_bytes(), i: 0, names: &names, what: &t.schema_name };
        let mut schema = p.value();
        if let Some(gvk) = &t.gvk {
            schema["x-kubernetes-group-version-kind"] = serde_json::json!([gvk]);
            // k8s-openapi's structs hold metadata unconditionally; upstream's
            // schemas do not require it (generateName, a list's items).
            if let Some(Value::Array(required)) = schema.get_mut("required") {
                required.retain(|r| r != "metadata");
                if required.is_empty() {
                    schema.as_object_mut().map(|o| o.remove("required"));
                }
            }
        }
        defs.insert(t.schema_name.clone(), schema);
    }
    assert!(defs.len() > 400, "only {} schemas found in {}", defs.len(), dir.display());
    let path = out.join("openapi_schemas.json");
    std::fs::write(&path, serde_json::to_vec(&Value::Object(defs)).expect("json"))
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// The minor version k8s-openapi was built for (its build script's
/// `cargo::metadata=version=0x0001MM00`).
fn enabled_version() -> u32 {
    let (_, v) = std::env::vars()
        .find(|(k, _)| k.starts_with("DEP_K8S_OPENAPI_") && k.ends_with("_VERSION"))
        .expect("k8s-openapi's DEP_K8S_OPENAPI_*_VERSION (is it a dependency?)");
    let v: u32 = v.parse().unwrap_or_else(|_| panic!("k8s-openapi version metadata {v:?}"));
    (v >> 8) & 0xff
}

struct TypeText {
    module: String,
    rust: String,
    schema_name: String,
    /// The `json_schema!( … )` argument.
    body: String,
    gvk: Option<Value>,
}

/// The `JsonSchema` impls in one file, with `Resource`'s group/version/kind.
fn type_texts(module: &str, text: &str) -> Vec<TypeText> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("impl crate::schemars::JsonSchema for ") {
        rest = &rest[at + "impl crate::schemars::JsonSchema for ".len()..];
        let rust: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        let Some(name_at) = rest.find("fn schema_name()") else { break };
        let after = &rest[name_at..];
        let Some(q) = after.find('"') else { break };
        let Some(schema_name) = after[q + 1..].split('"').next().map(str::to_string) else { break };
        let Some(m) = after.find("json_schema!(") else { break };
        let body_start = &after[m + "json_schema!(".len()..];
        let end = matching_paren(body_start);
        let body = body_start[..end].to_string();
        out.push(TypeText { module: module.to_string(), rust: rust.clone(), schema_name, body, gvk: gvk(text, &rust) });
        rest = &body_start[end..];
    }
    out
}

/// The byte offset of the `)` closing a `(` just before `s` (strings skipped).
fn matching_paren(s: &str) -> usize {
    let b = s.as_bytes();
    let (mut depth, mut i) = (1usize, 0usize);
    while i < b.len() {
        match b[i] {
            b'"' => i = skip_string(b, i),
            b'(' | b'{' | b'[' => depth += 1,
            b')' | b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
        i += 1;
    }
    panic!("unbalanced json_schema! body");
}

/// The index of the closing quote of the string opening at `i`.
fn skip_string(b: &[u8], mut i: usize) -> usize {
    i += 1;
    while i < b.len() && b[i] != b'"' {
        if b[i] == b'\\' {
            i += 1;
        }
        i += 1;
    }
    i
}

fn gvk(text: &str, rust: &str) -> Option<Value> {
    let at = text.find(&format!("impl crate::Resource for {rust} {{"))?;
    let block = &text[at..];
    let konst = |name: &str| {
        let k = block.find(&format!("const {name}: &'static str = \""))?;
        let v = &block[k..];
        let v = &v[v.find('"')? + 1..];
        Some(v[..v.find('"')?].to_string())
    };
    Some(serde_json::json!({"group": konst("GROUP")?, "version": konst("VERSION")?, "kind": konst("KIND")?}))
}

/// A recursive-descent reader of json_schema!'s JSON-like literal.
struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    names: &'a HashMap<String, String>,
    what: &'a str,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && (self.s[self.i].is_ascii_whitespace() || self.s[self.i] == b',') {
            self.i += 1;
        }
    }

    fn fail(&self, why: &str) -> ! {
        let ctx = String::from_utf8_lossy(&self.s[self.i..(self.i + 80).min(self.s.len())]);
        panic!("{}: {why} at {ctx:?}", self.what)
    }

    fn value(&mut self) -> Value {
        self.ws();
        match self.s.get(self.i) {
            Some(b'{') => {
                self.i += 1;
                let mut m = Map::new();
                loop {
                    self.ws();
                    if self.s.get(self.i) == Some(&b'}') {
                        self.i += 1;
                        return Value::Object(m);
                    }
                    let k = self.string();
                    self.ws();
                    if self.s.get(self.i) != Some(&b':') {
                        self.fail("expected ':'");
                    }
                    self.i += 1;
                    let v = self.value();
                    m.insert(k, v);
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut a = Vec::new();
                loop {
                    self.ws();
                    if self.s.get(self.i) == Some(&b']') {
                        self.i += 1;
                        return Value::Array(a);
                    }
                    a.push(self.value());
                }
            }
            Some(b'"') => Value::String(self.string()),
            Some(b'(') => self.expr(),
            Some(_) if self.s[self.i..].starts_with(b"__gen.subschema_for::<") => {
                let end = self.i + self.s[self.i..].windows(3).position(|w| w == b">()").unwrap_or(0) + 3;
                let text = String::from_utf8_lossy(&self.s[self.i..end]).into_owned();
                self.i = end;
                self.subschema(&text)
            }
            Some(_) => {
                let start = self.i;
                while self.i < self.s.len() && !matches!(self.s[self.i], b',' | b'}' | b']') {
                    self.i += 1;
                }
                let word = String::from_utf8_lossy(&self.s[start..self.i]).trim().to_string();
                serde_json::from_str(&word).unwrap_or_else(|_| self.fail("not a JSON literal"))
            }
            None => self.fail("unexpected end"),
        }
    }

    /// A Rust string literal.
    fn string(&mut self) -> String {
        if self.s.get(self.i) != Some(&b'"') {
            self.fail("expected a string");
        }
        let end = skip_string(self.s, self.i);
        let raw = std::str::from_utf8(&self.s[self.i + 1..end]).expect("utf-8");
        self.i = end + 1;
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some('0') => out.push('\0'),
                Some('u') => {
                    let hex: String = chars.by_ref().skip(1).take_while(|c| *c != '}').collect();
                    out.push(u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32).unwrap_or('\u{fffd}'));
                }
                Some(c) => out.push(c),
                None => {}
            }
        }
        out
    }

    /// `(__gen.subschema_for::<crate::T>())` or the block that also inserts
    /// keys (`description`) into it.
    fn expr(&mut self) -> Value {
        let start = self.i + 1;
        let end = start + matching_paren(std::str::from_utf8(&self.s[start..]).expect("utf-8"));
        let text = std::str::from_utf8(&self.s[start..end]).expect("utf-8").to_string();
        self.i = end + 1;
        self.subschema(&text)
    }

    fn subschema(&self, text: &str) -> Value {
        let Some(at) = text.find("subschema_for::<") else { self.fail("an expression without subschema_for") };
        let ty = &text[at + "subschema_for::<".len()..];
        let ty = &ty[..ty.find(">()").unwrap_or_else(|| self.fail("subschema_for without >()"))];
        let name = self.names.get(ty).unwrap_or_else(|| self.fail(&format!("no schema for {ty}")));
        let reference = Value::String(format!("#/components/schemas/{name}"));
        let mut m = Map::new();
        // .insert("key".into(), "value".into())
        let mut rest = text;
        while let Some(at) = rest.find(".insert(") {
            let args = &rest[at + ".insert(".len()..];
            let mut p = Parser { s: args.as_bytes(), i: 0, names: self.names, what: self.what };
            let k = p.string();
            let v = {
                let tail = &args[p.i..];
                let q = tail.find('"').unwrap_or_else(|| self.fail("insert of a non-string"));
                p.i += q;
                p.string()
            };
            m.insert(k, Value::String(v));
            rest = &args[p.i..];
        }
        // A field's own description beside a `$ref` is ignored by OpenAPI
        // 3.0: upstream wraps the reference in `allOf` as here.
        if m.is_empty() {
            m.insert("$ref".into(), reference);
        } else {
            m.insert("allOf".into(), serde_json::json!([{"$ref": reference}]));
        }
        Value::Object(m)
    }
}

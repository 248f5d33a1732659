//! Generates the protobuf field tables (`protobuf.rs`) from the `k8s-pb`
//! crate's prost structs: every message, its field numbers and wire types
//! come from `#[prost(..., tag = "N")]`; the JSON name of each field comes
//! from k8s-openapi's serde names for the same struct (prost's snake_case
//! cannot be turned back into `hostIP` or `$ref` reliably). Both crates'
//! sources are found with `cargo metadata`; k8s-pb is a
//! build-dependency only so that Cargo downloads it.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[path = "build_openapi.rs"]
mod build_openapi;
// The v2 form and gnostic protobuf of the built-in schemas (build_openapi).
#[allow(dead_code)]
#[path = "src/gnostic.rs"]
mod gnostic;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build_openapi.rs");
    println!("cargo:rerun-if-changed=src/gnostic.rs");
    let (pb, openapi) = locate();
    let out = std::env::var("OUT_DIR").expect("OUT_DIR");
    build_openapi::generate(&openapi.join("src"), &pb.join("src"), Path::new(&out));
    let names = openapi_names(&openapi.join("src"));
    let mut messages = Vec::new();
    walk(&pb.join("src"), &pb.join("src"), &mut |rel, text| parse_module(rel, text, &mut messages));
    messages.sort_by(|a, b| (&a.module, &a.name).cmp(&(&b.module, &b.name)));
    let out = generate(&messages, &names);
    let path = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("protobuf_tables.rs");
    std::fs::write(&path, out).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// The source directories of k8s-pb and k8s-openapi, from `cargo metadata`.
fn locate() -> (PathBuf, PathBuf) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    // Only the host's packages: the others need not be downloaded.
    let host = std::env::var("HOST").expect("HOST");
    let metadata = |offline: bool| {
        let mut cmd = std::process::Command::new(&cargo);
        cmd.args(["metadata", "--format-version", "1", "--filter-platform", &host, "--manifest-path"]).arg(&manifest);
        if offline {
            cmd.arg("--offline");
        }
        cmd.output().unwrap_or_else(|e| panic!("running {cargo} metadata: {e}"))
    };
    // Offline first. On a fresh machine the build has downloaded only the
    // packages it compiles, and the metadata also wants the workspace's
    // dev-dependencies: then cargo fetches them, as `cargo fetch` would.
    let mut out = metadata(true);
    if !out.status.success() {
        out = metadata(false);
    }
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let find = |krate: &str| {
        text.split("\"manifest_path\":\"")
            .skip(1)
            .filter_map(|s| s.split('"').next())
            .map(|p| PathBuf::from(p.replace("\\\\", "\\")))
            .filter_map(|p| p.parent().map(Path::to_path_buf))
            .find(|d| {
                d.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_prefix(krate))
                    .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit()))
            })
            .unwrap_or_else(|| panic!("cargo metadata lists no {krate} package (run `cargo fetch`)"))
    };
    (find("k8s-pb-"), find("k8s-openapi-"))
}

fn walk(root: &Path, dir: &Path, f: &mut dyn FnMut(&[String], &str)) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("read_dir").flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(root, &p, f);
        } else if p.extension().is_some_and(|e| e == "rs") {
            let rel = p.strip_prefix(root).expect("prefix");
            let mut module: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
            let file = module.pop().unwrap_or_default();
            if file != "mod.rs" && file != "lib.rs" {
                module.push(file.trim_end_matches(".rs").to_string());
            }
            let text = std::fs::read_to_string(&p).expect("read");
            f(&module, &text);
        }
    }
}

fn norm(s: &str) -> String {
    s.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect()
}

/// k8s-openapi: normalized struct name → its fields' JSON names, keyed by
/// the normalized JSON name, over every version directory (union).
type Names = HashMap<(String, String), HashMap<String, String>>;

fn openapi_names(src: &Path) -> Names {
    let mut names: Names = HashMap::new();
    let mut versions: Vec<_> = std::fs::read_dir(src).expect("read_dir").flatten().map(|e| e.path()).collect();
    versions.retain(|p| p.is_dir());
    versions.sort();
    for v in versions {
        walk(&v, &v, &mut |module, text| {
            // The module path without the file (api/core/v1/pod_spec.rs → api/core/v1).
            let module = module[..module.len().saturating_sub(1)].join("/");
            let mut current = None;
            for line in text.lines() {
                let t = line.trim();
                if let Some(rest) = t.strip_prefix("pub struct ") {
                    let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    current = Some((module.clone(), norm(&name)));
                } else if let (Some(key), Some(rest)) = (current.as_ref(), t.strip_prefix('"'))
                    && let Some((json, tail)) = rest.split_once('"')
                    && tail.trim_start().starts_with("=> Field::Key_")
                {
                    names.entry(key.clone()).or_default().insert(norm(json), json.to_string());
                }
            }
        });
    }
    names
}

struct FieldDef {
    tag: u32,
    rust: String,
    /// string, bytes, bool, int32, int64, double, message, map
    scalar: String,
    repeated: bool,
    map: bool,
    /// For messages and map values: (module, name) of the message type.
    msg: Option<(String, String)>,
    /// For maps: the value's scalar (string, bytes, message).
    map_value: String,
}

struct MessageDef {
    module: String,
    name: String,
    kind: Option<(String, String)>,
    fields: Vec<FieldDef>,
}

/// Resolves a Rust type path relative to `module` into (module, name).
fn resolve(module: &[String], ty: &str) -> (String, String) {
    let mut m: Vec<String> = module.to_vec();
    let mut parts: Vec<&str> = ty.split("::").filter(|s| !s.is_empty()).collect();
    let name = parts.pop().unwrap_or_default().to_string();
    let mut absolute = false;
    for p in parts {
        match p {
            "super" => {
                m.pop();
            }
            "crate" => {
                m.clear();
                absolute = true;
            }
            other => m.push(other.to_string()),
        }
    }
    let _ = absolute;
    (m.join("/"), name)
}

/// The innermost generic argument that names a type (Option<Box<T>> → T).
fn inner_type(decl: &str) -> String {
    let mut ty = decl.to_string();
    for wrapper in ["::core::option::Option<", "::prost::alloc::vec::Vec<", "::prost::alloc::boxed::Box<"] {
        while let Some(rest) = ty.strip_prefix(wrapper) {
            ty = rest.strip_suffix('>').unwrap_or(rest).to_string();
        }
    }
    ty
}

fn parse_module(module: &[String], text: &str, out: &mut Vec<MessageDef>) {
    let mut lines = text.lines().map(str::trim).peekable();
    let mut current: Option<MessageDef> = None;
    let mut pending: Option<String> = None;
    let mut impl_of: Option<String> = None;
    let mut api_version = String::new();
    let mut kinds: Vec<(String, String, String)> = Vec::new();
    while let Some(line) = lines.next() {
        if let Some(rest) = line.strip_prefix("pub struct ") {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            let def = MessageDef { module: module.join("/"), name, kind: None, fields: Vec::new() };
            if rest.trim_end().ends_with("{}") {
                out.push(def);
            } else if rest.trim_end().ends_with('{') {
                current = Some(def);
            }
            continue;
        }
        if line == "}"
            && let Some(m) = current.take()
        {
            out.push(m);
            continue;
        }
        if let Some(rest) = line.strip_prefix("impl crate::Resource for ") {
            impl_of = Some(rest.trim_end_matches(" {").trim().to_string());
            continue;
        }
        if let Some(target) = &impl_of {
            if let Some(v) = line.strip_prefix("const API_VERSION: &'static str = \"") {
                api_version = v.trim_end_matches("\";").to_string();
            } else if let Some(k) = line.strip_prefix("const KIND: &'static str = \"") {
                kinds.push((target.clone(), api_version.clone(), k.trim_end_matches("\";").to_string()));
                impl_of = None;
            }
            continue;
        }
        if current.is_none() {
            continue;
        }
        if let Some(attr) = line.strip_prefix("#[prost(") {
            pending = Some(attr.trim_end_matches(")]").to_string());
            continue;
        }
        let Some(attr) = pending.take() else { continue };
        // The declaration may wrap over several lines; it ends with a comma.
        let mut decl = line.to_string();
        let open = |d: &str| d.matches('<').count() > d.matches('>').count();
        while !decl.ends_with(',') || open(&decl) {
            match lines.next() {
                Some(l) => decl.push_str(l),
                None => break,
            }
        }
        let decl = decl.trim_end_matches(',');
        let (rust, ty) = decl.trim_start_matches("pub ").split_once(':').expect("field declaration");
        let rust = rust.trim().trim_start_matches("r#").to_string();
        let ty: String = ty.chars().filter(|c| !c.is_whitespace()).collect::<String>().replace(",>", ">");
        let tag: u32 = attr
            .split("tag = \"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no tag in #[prost({attr})]"));
        let repeated = attr.contains("repeated");
        let mut f =
            FieldDef { tag, rust, scalar: String::new(), repeated, map: false, msg: None, map_value: String::new() };
        if let Some(m) = attr.strip_prefix("btree_map = \"") {
            let value = m.split('"').next().unwrap_or_default().split(", ").nth(1).unwrap_or_default().to_string();
            f.map = true;
            f.scalar = "map".into();
            if value == "message" {
                let v = ty.rsplit_once(',').map(|(_, v)| v.trim_end_matches('>')).unwrap_or_default();
                f.msg = Some(resolve(module, v));
            }
            f.map_value = value;
        } else {
            let scalar = attr.split([',', ' ']).next().unwrap_or_default().to_string();
            if scalar == "message" {
                f.msg = Some(resolve(module, &inner_type(&ty)));
            }
            f.scalar = scalar;
        }
        if let Some(m) = current.as_mut() {
            m.fields.push(f);
        }
    }
    for (target, api_version, kind) in kinds {
        if let Some(m) = out.iter_mut().rev().find(|m| m.module == module.join("/") && m.name == target) {
            m.kind = Some((api_version, kind));
        }
    }
}

/// prost's snake_case back to lowerCamelCase (only where k8s-openapi has no
/// struct to name the field).
fn camel(s: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in s.chars() {
        if c == '_' {
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

/// The messages with a JSON form of their own (upstream's custom marshallers).
fn special(module: &str, name: &str) -> Option<&'static str> {
    Some(match (module, name) {
        ("apimachinery/pkg/apis/meta/v1", "Time") => "Time",
        ("apimachinery/pkg/apis/meta/v1", "MicroTime") => "MicroTime",
        ("apimachinery/pkg/apis/meta/v1", "Duration") => "Duration",
        ("apimachinery/pkg/apis/meta/v1", "FieldsV1") => "Raw",
        ("apimachinery/pkg/apis/meta/v1", "Verbs") => "StrList",
        ("apimachinery/pkg/api/resource", "Quantity") => "Quantity",
        ("apimachinery/pkg/util/intstr", "IntOrString") => "IntOrString",
        ("apimachinery/pkg/runtime", "RawExtension") => "Raw",
        (m, "Json") if m.starts_with("apiextensions_apiserver/") => "Raw",
        (m, "JsonSchemaPropsOrArray") if m.starts_with("apiextensions_apiserver/") => "SchemaOrArray",
        (m, "JsonSchemaPropsOrBool") if m.starts_with("apiextensions_apiserver/") => "SchemaOrBool",
        (m, "JsonSchemaPropsOrStringArray") if m.starts_with("apiextensions_apiserver/") => "SchemaOrStringArray",
        (_, "ExtraValue") => "StrList",
        _ => return None,
    })
}

fn generate(messages: &[MessageDef], names: &Names) -> String {
    let index: HashMap<(String, String), usize> =
        messages.iter().enumerate().map(|(i, m)| ((m.module.clone(), m.name.clone()), i)).collect();
    let mut out = String::from("// @generated by build.rs from the k8s-pb and k8s-openapi sources.\n");
    let mut guessed = 0usize;
    let mut guessed_list = String::new();
    let mut by_kind: BTreeMap<(String, String), usize> = BTreeMap::new();
    // Package → apiVersion, from any Resource impl in it.
    let mut package_version: HashMap<&str, &str> = HashMap::new();
    for m in messages {
        if let Some((v, _)) = &m.kind {
            package_version.insert(&m.module, v);
        }
    }
    // Aggregated discovery's lists, which k8s-pb gives no Resource impl.
    package_version.insert("api/apidiscovery/v2", "apidiscovery.k8s.io/v2");
    package_version.insert("api/apidiscovery/v2beta1", "apidiscovery.k8s.io/v2beta1");
    // Every JSON name of k8s-openapi by its normalized form, where that is
    // unambiguous (types of versions k8s-openapi does not carry: v1beta1 …).
    let mut global: HashMap<String, Option<String>> = HashMap::new();
    for fields in names.values() {
        for (n, j) in fields {
            let e = global.entry(n.clone()).or_insert_with(|| Some(j.clone()));
            if e.as_deref() != Some(j.as_str()) {
                *e = None;
            }
        }
    }
    // Go's embedded structs (`json:",inline"`): Volume.volumeSource,
    // Probe.handler, EphemeralContainer.ephemeralContainerCommon,
    // PersistentVolumeSpec.persistentVolumeSource. A message field whose
    // name the parent's JSON lacks, of a type k8s-openapi has no struct
    // for, whose fields all are the parent's: its fields are the parent's.
    // (SecretKeySelector's LocalObjectReference too.)
    let own = |m: &MessageDef| names.get(&(m.module.clone(), norm(&m.name)));
    let mut inline: HashMap<(usize, u32), usize> = HashMap::new();
    let mut alias: HashMap<usize, &HashMap<String, String>> = HashMap::new();
    for (i, m) in messages.iter().enumerate() {
        let Some(parent) = own(m) else { continue };
        for f in m.fields.iter().filter(|f| f.scalar == "message" && !f.repeated) {
            let Some(c) = f.msg.as_ref().and_then(|k| index.get(k)) else { continue };
            let child = &messages[*c];
            if parent.contains_key(&norm(&f.rust)) || child.fields.is_empty() {
                continue;
            }
            if child.fields.iter().all(|cf| parent.contains_key(&norm(&cf.rust))) {
                inline.insert((i, f.tag), *c);
                alias.insert(*c, parent);
            }
        }
    }
    writeln!(out, "static MESSAGES: &[Message] = &[").ok();
    for (i, m) in messages.iter().enumerate() {
        let json_names = own(m).or_else(|| alias.get(&i).copied());
        let mut fields = String::new();
        for f in &m.fields {
            let json = match (m.module.starts_with("apiextensions_apiserver/"), f.rust.as_str()) {
                // Go's field DeprecatedServiceAccount keeps its JSON name.
                (false, "deprecated_service_account") => "serviceAccount".to_string(),
                (true, "schema") if m.name == "JsonSchemaProps" => "$schema".to_string(),
                (true, "ref") if m.name == "JsonSchemaProps" => "$ref".to_string(),
                _ => match json_names
                    .and_then(|n| n.get(&norm(&f.rust)))
                    .or_else(|| global.get(&norm(&f.rust)).and_then(Option::as_ref))
                {
                    Some(j) => j.clone(),
                    None => {
                        guessed += 1;
                        writeln!(guessed_list, "{}.{}.{}", m.module, m.name, f.rust).ok();
                        camel(&f.rust)
                    }
                },
            };
            let ty = match f.scalar.as_str() {
                "string" => "Ty::Str".to_string(),
                "bytes" => "Ty::Bytes".to_string(),
                "bool" => "Ty::Bool".to_string(),
                "int32" => "Ty::I32".to_string(),
                "int64" => "Ty::I64".to_string(),
                "double" => "Ty::F64".to_string(),
                "message" | "map" => match (&f.msg, f.map_value.as_str()) {
                    (None, "string") => "Ty::Str".to_string(),
                    (None, "bytes") => "Ty::Bytes".to_string(),
                    (Some((module, name)), _) => {
                        let target = *index
                            .get(&(module.clone(), name.clone()))
                            .unwrap_or_else(|| panic!("{}.{}: message {module}::{name} not found", m.name, f.rust));
                        match special(module, name) {
                            Some(s @ ("SchemaOrArray" | "SchemaOrBool" | "SchemaOrStringArray")) => {
                                let schema = index[&(module.clone(), "JsonSchemaProps".to_string())];
                                format!("Ty::{s}({schema})")
                            }
                            Some(s) => format!("Ty::{s}"),
                            None => format!("Ty::Msg({target})"),
                        }
                    }
                    other => panic!("{}.{}: unsupported map value {other:?}", m.name, f.rust),
                },
                other => panic!("{}.{}: unsupported prost type {other}", m.name, f.rust),
            };
            let card = if inline.contains_key(&(i, f.tag)) {
                "Card::Inline"
            } else if f.map {
                "Card::Map"
            } else if f.repeated {
                "Card::Repeated"
            } else {
                "Card::Single"
            };
            write!(fields, "F {{ tag: {}, json: {:?}, ty: {ty}, card: {card} }}, ", f.tag, json).ok();
        }
        let full = format!("{}.{}", m.module.replace('/', "."), m.name);
        writeln!(out, "    // {i}: {full}\n    Message {{ fields: &[{fields}] }},").ok();
        let kind_name = match &m.kind {
            Some((_, k)) => k.clone(),
            None => m.name.clone(),
        };
        if let Some(v) = package_version.get(m.module.as_str()) {
            by_kind.insert((v.to_string(), kind_name.clone()), i);
        }
        if m.module == "apimachinery/pkg/apis/meta/v1" {
            by_kind.entry(("meta.k8s.io/v1".into(), kind_name)).or_insert(i);
        }
    }
    writeln!(out, "];").ok();
    // Names that prost spells differently from the Go kind (JSON → Json).
    let mut extra = Vec::new();
    for ((v, k), i) in &by_kind {
        let fixed = k.replace("Json", "JSON").replace("Api", "API");
        if fixed != *k {
            extra.push(((v.clone(), fixed), *i));
        }
    }
    by_kind.extend(extra);
    writeln!(out, "static KINDS: &[(&str, &str, usize)] = &[").ok();
    for ((v, k), i) in &by_kind {
        writeln!(out, "    ({v:?}, {k:?}, {i}),").ok();
    }
    writeln!(out, "];").ok();
    let list = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("guessed_names.txt");
    std::fs::write(list, &guessed_list).ok();
    // Types k8s-openapi does not carry (v1beta1 …, options, runtime.Unknown).
    writeln!(out, "// Fields whose JSON name was guessed from prost's snake_case: {guessed} (see guessed_names.txt).")
        .ok();
    out
}

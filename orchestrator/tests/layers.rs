//! The orchestrator's layering, as ARCHITECTURE.md writes it: which crate
//! may use which (read from the crates' Cargo.toml, every dependency
//! section, so a dev-dependency cannot run upwards either), and no import
//! circle between the files of one crate (read from `crate::` paths; the
//! crate root, which declares the modules, may be used by all of them).
//! `cargo test -p orchestrator --test layers`

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each crate and the orchestrator crates it may use; anything else is a
/// backwards or sideways import. Keep in step with ARCHITECTURE.md.
const LAYERS: &[(&str, &[&str])] = &[
    ("orchestrator-store", &[]),
    ("orchestrator-store-etcd", &["orchestrator-store"]),
    ("orchestrator-apimachinery", &["orchestrator-store"]),
    ("orchestrator-http", &["orchestrator-apimachinery"]),
    ("orchestrator-controllers", &["orchestrator-apimachinery", "orchestrator-store"]),
    (
        "orchestrator-apiserver",
        &["orchestrator-apimachinery", "orchestrator-http", "orchestrator-store", "orchestrator-store-etcd"],
    ),
    ("orchestrator-client", &["orchestrator-apimachinery", "orchestrator-http"]),
    ("orchestrator-node-net", &["orchestrator-apimachinery", "orchestrator-client"]),
    (
        "orchestrator-kubelet",
        &["orchestrator-apimachinery", "orchestrator-client", "orchestrator-http", "orchestrator-node-net"],
    ),
];

fn crates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("crates")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The package name and the `orchestrator-*` dependencies of a Cargo.toml.
fn manifest_edges(text: &str) -> (String, BTreeSet<String>) {
    let mut name = String::new();
    let mut deps = BTreeSet::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_string();
        } else if section == "[package]" && line.starts_with("name") {
            name = line.split('"').nth(1).unwrap_or_default().to_string();
        } else if section.contains("dependencies") && line.starts_with("orchestrator-") {
            let dep = line.split(['.', '=', ' ']).next().unwrap_or_default();
            deps.insert(dep.to_string());
        }
    }
    (name, deps)
}

/// The crate's own edges that the layer table does not allow.
fn forbidden(name: &str, deps: &BTreeSet<String>) -> Vec<String> {
    let Some((_, allowed)) = LAYERS.iter().find(|(n, _)| *n == name) else {
        return vec![format!("{name} is not in the layer table (tests/layers.rs, ARCHITECTURE.md)")];
    };
    deps.iter()
        .filter(|d| !allowed.contains(&d.as_str()))
        .map(|d| format!("{name} uses {d}, which the layers do not allow (may use: {allowed:?})"))
        .collect()
}

#[test]
fn crates_use_only_the_layers_below() {
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for entry in std::fs::read_dir(crates_dir()).expect("orchestrator/crates") {
        let manifest = entry.expect("a crate folder").path().join("Cargo.toml");
        let (name, deps) = manifest_edges(&read(&manifest));
        problems.extend(forbidden(&name, &deps));
        seen.insert(name);
    }
    for (name, _) in LAYERS {
        if !seen.contains(*name) {
            problems.push(format!("{name} is in the layer table but not under orchestrator/crates"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_check_sees_a_backwards_edge() {
    let (name, deps) = manifest_edges(
        "[package]\nname = \"orchestrator-store\"\n\n[dev-dependencies]\norchestrator-kubelet.workspace = true\n",
    );
    assert_eq!(name, "orchestrator-store");
    assert_eq!(forbidden(&name, &deps).len(), 1);
}

/// The first path segment of every `crate::` path in `text`, including
/// each item of `crate::{a, b::c}`.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    let mut out = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        if at > 0 && text[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &text[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Split at the group's own commas, up to its closing brace.
            let (mut depth, mut item) = (0, String::new());
            for c in group.chars() {
                match c {
                    '}' if depth == 0 => break,
                    ',' if depth == 0 => {
                        out.insert(ident(item.trim()));
                        item.clear();
                        continue;
                    }
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                item.push(c);
            }
            out.insert(ident(item.trim()));
        } else {
            out.insert(ident(rest));
        }
    }
    out
}

/// File → the files of the same crate it uses (`crate::m` → `m.rs`).
fn file_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeSet<String> = std::fs::read_dir(src)
        .unwrap_or_else(|e| panic!("read {}: {e}", src.display()))
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".rs").map(str::to_string))
        .filter(|m| m != "lib")
        .collect();
    modules
        .iter()
        .map(|m| {
            let uses = crate_paths(&read(&src.join(format!("{m}.rs"))));
            (m.clone(), uses.into_iter().filter(|u| u != m && modules.contains(u)).collect())
        })
        .collect()
}

/// One circle in `graph`, if there is one, as the files along it.
fn circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut c = path[at..].to_vec();
            c.push(node.to_string());
            return Some(c);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_import_circles_between_files() {
    let mut problems = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(crates_dir())
        .expect("orchestrator/crates")
        .map(|e| e.expect("a crate folder").path().join("src"))
        .collect();
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    for src in dirs {
        if let Some(c) = circle(&file_graph(&src)) {
            let files: Vec<String> = c.iter().map(|f| format!("{f}.rs")).collect();
            problems.push(format!("{}: {}", src.display(), files.join(" → ")));
        }
    }
    assert!(problems.is_empty(), "import circles:\n{}", problems.join("\n"));
}

#[test]
fn the_check_sees_a_circle() {
    let graph: BTreeMap<String, BTreeSet<String>> = [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")]
        .iter()
        .map(|(f, t)| (f.to_string(), BTreeSet::from([t.to_string()])))
        .collect();
    assert_eq!(circle(&graph), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
    assert_eq!(
        crate_paths("use crate::{Kubelet, pod::{A, B}, exec};\nlet x = crate::spdy::f();"),
        BTreeSet::from(["Kubelet".into(), "pod".into(), "exec".into(), "spdy".into()])
    );
}

//! The orchestrator's layering, as ARCHITECTURE.md writes it: which crate
//! may use which (from `cargo metadata`, every dependency kind, so a
//! dev-dependency cannot run upwards either, and nothing uses the
//! `orchestrator` binary's package), and no import circle between the
//! files of one crate (read from `crate::` paths; the crate root, which
//! declares the modules, may be used by all of them; a module with a
//! folder is one node at its level, and its folder is checked the same way
//! through `super::` paths).
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

/// Every workspace package under `orchestrator/` (by its manifest path) and
/// the orchestrator packages it depends on, as Cargo resolves its
/// manifest: every section (dev, build, per target), `package = …`
/// renames and `[dependencies.x]` tables alike.
fn crate_edges() -> BTreeMap<String, BTreeSet<String>> {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline", "--manifest-path"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let ours = Path::new(env!("CARGO_MANIFEST_DIR"));
    let orchestrator = |n: &str| n == "orchestrator" || n.starts_with("orchestrator-");
    // cargo metadata's own JSON: no typed model of it is a dependency here.
    meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter(|p| p["manifest_path"].as_str().is_some_and(|m| Path::new(m).starts_with(ours)))
        .map(|p| {
            let deps = p["dependencies"].as_array().into_iter().flatten();
            let names = deps.filter_map(|d| d["name"].as_str()).filter(|n| orchestrator(n)).map(str::to_string);
            (p["name"].as_str().unwrap_or_default().to_string(), names.collect())
        })
        .collect()
}

/// The crate's own edges that the layer table does not allow.
fn forbidden(name: &str, deps: &BTreeSet<String>) -> Vec<String> {
    if name == "orchestrator" {
        // The binary may use every crate; `crates_use_only_the_layers_below` keeps all others off it.
        return Vec::new();
    }
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
    let edges = crate_edges();
    let mut problems = Vec::new();
    for (name, deps) in &edges {
        problems.extend(forbidden(name, deps));
    }
    for entry in std::fs::read_dir(crates_dir()).expect("orchestrator/crates") {
        let manifest = entry.expect("a crate folder").path().join("Cargo.toml");
        let text = read(&manifest);
        let name = text.lines().find_map(|l| l.trim().strip_prefix("name = ")).unwrap_or_default().trim_matches('"');
        if !edges.contains_key(name) {
            problems.push(format!("{} is not a member of the workspace", manifest.display()));
        }
    }
    for (name, _) in LAYERS {
        if !edges.contains_key(*name) {
            problems.push(format!("{name} is in the layer table but not under orchestrator/crates"));
        }
    }
    assert!(edges.contains_key("orchestrator"), "the orchestrator package is read too");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_check_sees_a_backwards_edge() {
    let deps = BTreeSet::from(["orchestrator-kubelet".to_string()]);
    assert_eq!(forbidden("orchestrator-store", &deps).len(), 1);
    assert_eq!(forbidden("orchestrator-kubelet", &BTreeSet::from(["orchestrator".to_string()])).len(), 1);
    assert_eq!(forbidden("orchestrator-unknown", &BTreeSet::new()).len(), 1, "a crate outside the table");
    assert!(forbidden("orchestrator-kubelet", &BTreeSet::from(["orchestrator-client".to_string()])).is_empty());
}

/// The first path segment after `prefix` (`crate::`, `super::`,
/// `crate::scheduler::`) of every such path in `text`, including each item
/// of `prefix{a, b::c}`.
fn paths_after(text: &str, prefix: &str) -> BTreeSet<String> {
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    let mut out = BTreeSet::new();
    for (at, _) in text.match_indices(prefix) {
        if at > 0 && text[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let rest = &text[at + prefix.len()..];
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

fn crate_paths(text: &str) -> BTreeSet<String> {
    paths_after(text, "crate::")
}

/// The text of module `m` of folder `dir`: `m.rs` and, for a module with a
/// folder of its own, every file in it (one node at this level).
fn module_text(dir: &Path, m: &str) -> String {
    let mut text = read(&dir.join(format!("{m}.rs")));
    let sub = dir.join(m);
    if sub.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&sub)
            .unwrap_or_else(|e| panic!("read {}: {e}", sub.display()))
            .filter_map(|e| Some(e.ok()?.path()))
            .collect();
        files.sort();
        for f in files {
            if f.is_dir() {
                let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
                if !sub.join(format!("{name}.rs")).is_file() {
                    text.push_str(&module_text(&sub, &name));
                }
            } else if f.extension().is_some_and(|e| e == "rs") {
                let name = f.file_stem().and_then(|n| n.to_str()).unwrap_or_default().to_string();
                text.push_str(&module_text(&sub, &name));
            }
        }
    }
    text
}

/// File → the files of the same folder it uses. `prefixes` name a
/// sibling: `crate::` in `src/`, `super::` and `crate::<folder>::` in a
/// module's folder (whose parent file, like the crate root, declares them
/// and may be used by all).
fn file_graph(dir: &Path, prefixes: &[String]) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeSet<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".rs").map(str::to_string))
        .filter(|m| m != "lib" && m != "main" && m != "mod")
        .collect();
    modules
        .iter()
        .map(|m| {
            let text = module_text(dir, m);
            let uses: BTreeSet<String> = prefixes.iter().flat_map(|p| paths_after(&text, p)).collect();
            (m.clone(), uses.into_iter().filter(|u| u != m && modules.contains(u)).collect())
        })
        .collect()
}

/// Circles in `dir` and in each module folder under it.
fn circles_in(dir: &Path, prefixes: &[String], problems: &mut Vec<String>) {
    if let Some(c) = circle(&file_graph(dir, prefixes)) {
        let files: Vec<String> = c.iter().map(|f| format!("{f}.rs")).collect();
        problems.push(format!("{}: {}", dir.display(), files.join(" → ")));
    }
    let crate_prefix = prefixes.iter().find(|p| p.starts_with("crate::")).cloned().unwrap_or_default();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            circles_in(&path, &["super::".to_string(), format!("{crate_prefix}{name}::")], problems);
        }
    }
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
        circles_in(&src, &["crate::".to_string()], &mut problems);
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
    assert_eq!(
        paths_after("use super::{Cluster, affinity};\nsuper::spread::f(); crate::scheduler::x::g()", "super::"),
        BTreeSet::from(["Cluster".into(), "affinity".into(), "spread".into()])
    );
}

#[test]
fn the_check_sees_a_circle_through_a_module_folder() {
    let d = std::env::temp_dir().join(format!("layers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("scheduler")).unwrap();
    std::fs::write(d.join("lib.rs"), "mod quota; mod scheduler;").unwrap();
    std::fs::write(d.join("quota.rs"), "use crate::scheduler::spread::f;").unwrap();
    std::fs::write(d.join("scheduler.rs"), "mod spread; mod affinity;").unwrap();
    std::fs::write(d.join("scheduler/affinity.rs"), "use super::spread::g;").unwrap();
    // A nested file's `crate::` path counts for its folder's module at the top.
    std::fs::write(d.join("scheduler/spread.rs"), "use crate::quota::q;").unwrap();
    let mut problems = Vec::new();
    circles_in(&d, &["crate::".to_string()], &mut problems);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].ends_with("quota.rs → scheduler.rs → quota.rs"), "{problems:?}");
    // And a circle inside the folder.
    std::fs::write(d.join("quota.rs"), "").unwrap();
    std::fs::write(d.join("scheduler/affinity.rs"), "use super::spread::g;").unwrap();
    std::fs::write(d.join("scheduler/spread.rs"), "use crate::scheduler::affinity::a;").unwrap();
    problems.clear();
    circles_in(&d, &["crate::".to_string()], &mut problems);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].ends_with("affinity.rs → spread.rs → affinity.rs"), "{problems:?}");
    std::fs::remove_dir_all(&d).unwrap();
}

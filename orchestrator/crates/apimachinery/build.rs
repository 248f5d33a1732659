//! Compiles the vendored Kubernetes protos (`proto/`, see `proto/vendor.py`)
//! with protox (pure Rust, no `protoc`) into a descriptor set the protobuf
//! transcoder (`src/protobuf.rs`) loads, and lists the fields upstream marks
//! `+optional` (Go's `omitempty`: their zero value is not written to JSON).

use std::{fmt::Write as _, path::Path};

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut files = Vec::new();
    collect(Path::new("proto"), &mut files)?;
    files.sort();
    let names: Vec<String> =
        files.iter().map(|f| f.strip_prefix("proto/").unwrap_or(f).to_string_lossy().into_owned()).collect();
    let fds = protox::compile(&names, ["proto"])?;
    let out = std::env::var("OUT_DIR")?;
    std::fs::write(Path::new(&out).join("k8s.fds"), fds.encode_to_vec())?;

    let mut optional = Vec::new();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
        let (mut package, mut message) = (String::new(), String::new());
        for line in std::fs::read_to_string(f)?.lines() {
            let s = line.trim();
            if let Some(p) = s.strip_prefix("package ") {
                package = p.trim_end_matches(';').to_string();
            } else if let Some(m) = s.strip_prefix("message ") {
                message = m.trim_end_matches('{').trim().to_string();
            } else if s.ends_with("// +optional")
                && let Some(name) = s.split('=').next().and_then(|l| l.split_whitespace().last())
            {
                optional.push(format!("{package}.{message}.{name}"));
            }
        }
    }
    optional.sort();
    let mut src = String::from(
        "/// `package.Message.field` of every field upstream marks `+optional`, sorted.\npub static OPTIONAL: &[&str] = &[\n",
    );
    for o in &optional {
        writeln!(src, "    {o:?},")?;
    }
    src.push_str("];\n");
    std::fs::write(Path::new(&out).join("optional.rs"), src)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            collect(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "proto") {
            out.push(p);
        }
    }
    Ok(())
}

//! OCI image archives: the pod sandbox image written from our static
//! `plinth-pause`, and the check that an archive given to
//! `--preload-image` is one containerd can import.

use std::io::Read as _;
use std::path::Path;

use machinery::board::Arch;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::BuildError;

fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn append(tar: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]) -> std::io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, path, data)
}

/// What goes into an image's single layer.
#[derive(Debug, Clone)]
pub enum Entry {
    Dir { path: String },
    File { path: String, mode: u32, data: Vec<u8> },
    Symlink { path: String, target: String },
}

/// An image of one uncompressed layer.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// The name containerd gives it (`localhost/plinth/pause:1`).
    pub reference: String,
    pub arch: Arch,
    pub entries: Vec<Entry>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
}

fn layer(entries: &[Entry]) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            Entry::File { path, mode, data } => append(&mut tar, path, *mode, data)?,
            Entry::Dir { path } => {
                let mut h = tar::Header::new_ustar();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_mtime(0);
                h.set_size(0);
                tar.append_data(&mut h, format!("{}/", path.trim_end_matches('/')), std::io::empty())?;
            }
            Entry::Symlink { path, target } => {
                let mut h = tar::Header::new_ustar();
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_mtime(0);
                h.set_size(0);
                tar.append_link(&mut h, path, target)?;
            }
        }
    }
    tar.into_inner()
}

/// An OCI image archive (`oci-layout`, `index.json`, blobs) that
/// `ctr images import` takes, named by `spec.reference`.
pub fn archive(spec: &ImageSpec) -> std::io::Result<Vec<u8>> {
    let layer = layer(&spec.entries)?;
    let config = serde_json::to_vec(&json!({
        "architecture": spec.arch.debian(),
        "os": "linux",
        "config": {"Entrypoint": spec.entrypoint, "Cmd": spec.cmd, "Env": spec.env},
        "rootfs": {"type": "layers", "diff_ids": [digest(&layer)]},
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(&layer), "size": layer.len()}],
    }))?;
    let reference = &spec.reference;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(&manifest),
            "size": manifest.len(),
            "annotations": {"io.containerd.image.name": reference, "org.opencontainers.image.ref.name": reference},
        }],
    }))?;
    let mut out = tar::Builder::new(Vec::new());
    append(&mut out, "oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    append(&mut out, "index.json", 0o644, &index)?;
    for blob in [&layer, &config, &manifest] {
        let path = format!("blobs/sha256/{}", digest(blob).trim_start_matches("sha256:"));
        append(&mut out, &path, 0o644, blob)?;
    }
    out.into_inner()
}

/// An image of one program, `/<name>`, its entrypoint (the pod sandbox).
pub fn single_binary_image(program: &[u8], name: &str, reference: &str, arch: Arch) -> std::io::Result<Vec<u8>> {
    archive(&ImageSpec {
        reference: reference.to_string(),
        arch,
        entries: vec![Entry::File { path: name.to_string(), mode: 0o755, data: program.to_vec() }],
        entrypoint: vec![format!("/{name}")],
        cmd: Vec::new(),
        env: Vec::new(),
    })
}

/// Checks that `path` is an OCI (`index.json`) or docker-save
/// (`manifest.json`) archive: a wrong file fails the build, not the boot.
pub fn check_archive(path: &Path) -> Result<(), BuildError> {
    let bad = |why: String| BuildError::Preload { path: path.to_path_buf(), why };
    let file = std::fs::File::open(path).map_err(|e| BuildError::io("open", path, e))?;
    let mut archive = tar::Archive::new(file);
    let entries = archive.entries().map_err(|e| bad(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("not a tar archive: {e}")))?;
        let name = entry.path().map(|p| p.to_string_lossy().trim_start_matches("./").to_string()).unwrap_or_default();
        if name == "index.json" || name == "manifest.json" {
            let mut text = String::new();
            entry.read_to_string(&mut text).map_err(|e| bad(format!("{name}: {e}")))?;
            serde_json::from_str::<serde_json::Value>(&text).map_err(|e| bad(format!("{name}: {e}")))?;
            return Ok(());
        }
    }
    Err(bad("no index.json (OCI) or manifest.json (docker save) in it: make it with `skopeo copy … oci-archive:FILE:NAME` or `docker save`".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_binary_image_is_a_consistent_oci_layout() {
        let data = single_binary_image(b"\x7fELF-pause", "pause", "localhost/plinth/pause:1", Arch::X86_64).unwrap();
        let mut files = std::collections::BTreeMap::new();
        for e in tar::Archive::new(&data[..]).entries().unwrap() {
            let mut e = e.unwrap();
            let mut v = Vec::new();
            e.read_to_end(&mut v).unwrap();
            files.insert(e.path().unwrap().to_string_lossy().into_owned(), v);
        }
        let blob = |d: &str| &files[&format!("blobs/sha256/{}", d.trim_start_matches("sha256:"))];
        let json = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).unwrap();
        let index = json(&files["index.json"]);
        let m = &index["manifests"][0];
        assert_eq!(m["annotations"]["io.containerd.image.name"], "localhost/plinth/pause:1");
        // Every digest and size names a blob that is there and matches.
        let manifest_bytes = blob(m["digest"].as_str().unwrap());
        assert_eq!(digest(manifest_bytes), m["digest"]);
        assert_eq!(manifest_bytes.len() as u64, m["size"].as_u64().unwrap());
        let manifest = json(manifest_bytes);
        let config = json(blob(manifest["config"]["digest"].as_str().unwrap()));
        assert_eq!(config["config"]["Entrypoint"][0], "/pause");
        assert_eq!(config["architecture"], "amd64");
        let layer_digest = manifest["layers"][0]["digest"].as_str().unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], layer_digest);
        let layer = blob(layer_digest);
        let mut entries = tar::Archive::new(&layer[..]);
        let mut e = entries.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(e.path().unwrap().to_str(), Some("pause"));
        assert_eq!(e.header().mode().unwrap(), 0o755);
        let mut content = Vec::new();
        e.read_to_end(&mut content).unwrap();
        assert_eq!(content, b"\x7fELF-pause");
    }

    #[test]
    fn preload_archives_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.tar");
        std::fs::write(&good, single_binary_image(b"x", "x", "localhost/x:1", Arch::X86_64).unwrap()).unwrap();
        check_archive(&good).unwrap();
        let text = dir.path().join("notes.tar");
        std::fs::write(&text, "just some text, not an archive").unwrap();
        let e = check_archive(&text).unwrap_err().to_string();
        assert!(e.contains("notes.tar"), "{e}");
        let mut other = tar::Builder::new(Vec::new());
        append(&mut other, "readme", 0o644, b"hello").unwrap();
        let other_path = dir.path().join("other.tar");
        std::fs::write(&other_path, other.into_inner().unwrap()).unwrap();
        assert!(check_archive(&other_path).unwrap_err().to_string().contains("no index.json"));
    }
}

//! Air-gapped images: OCI (or docker) archives found in a directory are
//! imported into the runtime's `k8s.io` namespace at start, so pods run
//! with `imagePullPolicy: IfNotPresent` and no registry. The import goes
//! through containerd's own client (`ctr images import`, shipped with
//! containerd); an archive imported once is remembered by name, size and
//! modification time under the kubelet directory.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("ctr images import {path}: {message}")]
    Import { path: PathBuf, message: String },
}

/// The archives of `dir`, sorted by name.
pub fn archives(dir: &Path) -> Result<Vec<PathBuf>, ImportError> {
    let read = |source| ImportError::Read { path: dir.to_path_buf(), source };
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "tar"))
        .collect();
    out.sort();
    Ok(out)
}

fn marker(done_dir: &Path, archive: &Path) -> Option<PathBuf> {
    let m = std::fs::metadata(archive).ok()?;
    let mtime = m.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    let name = archive.file_name()?.to_string_lossy();
    Some(done_dir.join(format!("{name}.{}.{mtime}", m.len())))
}

/// Imports every archive not imported before; returns how many were imported.
pub async fn import_dir(dir: &Path, socket: &Path, kubelet_dir: &Path) -> Result<usize, ImportError> {
    let done_dir = kubelet_dir.join("imported-images");
    std::fs::create_dir_all(&done_dir).map_err(|source| ImportError::Read { path: done_dir.clone(), source })?;
    let mut n = 0;
    let mut failed = None;
    for archive in archives(dir)? {
        let mark = marker(&done_dir, &archive);
        if mark.as_ref().is_some_and(|m| m.exists()) {
            continue;
        }
        let out = tokio::process::Command::new("ctr")
            .arg("--address")
            .arg(socket)
            .args(["--namespace", "k8s.io", "images", "import"])
            .arg(&archive)
            .output()
            .await
            .map_err(|e| ImportError::Import { path: archive.clone(), message: e.to_string() })?;
        if !out.status.success() {
            let message = String::from_utf8_lossy(&out.stderr).trim().to_string();
            // The others are still imported; the first failure is reported.
            tracing::warn!(archive = %archive.display(), "import: {message}");
            failed.get_or_insert(ImportError::Import { path: archive, message });
            continue;
        }
        if let Some(m) = mark {
            let _ = std::fs::write(m, b"");
        }
        tracing::info!(archive = %archive.display(), "imported");
        n += 1;
    }
    failed.map_or(Ok(n), Err)
}

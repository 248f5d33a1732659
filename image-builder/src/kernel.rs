//! The kernel and its modules, from Debian's package: downloaded by name
//! with `apt-get download`, pinned by version and sha256, kept in a cache.

use std::path::{Path, PathBuf};
use std::process::Command;

use machinery::board::Kernel;
use sha2::{Digest as _, Sha256};

use crate::BuildError;
use crate::tools::{require, run};

/// An extracted kernel package.
#[derive(Debug)]
pub struct Extracted {
    /// The downloaded package.
    pub deb: PathBuf,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>/kernel`.
    pub modules_dir: PathBuf,
    pub deb_sha256: String,
}

pub fn sha256_file(path: &Path) -> Result<String, BuildError> {
    let data = std::fs::read(path).map_err(|e| BuildError::io("read", path, e))?;
    Ok(hex(&Sha256::digest(&data)))
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Downloads (unless cached), checks and extracts the board's kernel.
pub fn fetch(k: &Kernel, arch: &str, cache: &Path) -> Result<Extracted, BuildError> {
    std::fs::create_dir_all(cache).map_err(|e| BuildError::io("create", cache, e))?;
    let deb = cache.join(format!("{}_{}_{arch}.deb", k.package, k.version.replace(':', "%3a")));
    if !deb.exists() {
        let apt = require("apt-get", "apt")?;
        run(Command::new(apt).current_dir(cache).arg("download").arg(format!("{}={}", k.package, k.version))).map_err(
            |e| {
                BuildError::Package(format!(
                    "{e}\n(is the version still in the archive? `apt-get update`, or pin the version \
                     `apt-cache policy {}` shows)",
                    k.package
                ))
            },
        )?;
    }
    let sum = sha256_file(&deb)?;
    if sum != k.sha256 {
        return Err(BuildError::Checksum { path: deb, expected: k.sha256.clone(), found: sum });
    }
    let root = cache.join(format!("{}_{}", k.package, k.version));
    if !root.join("boot").exists() {
        // A private directory, renamed into place: builds running side by
        // side (tests do) never see a half-extracted tree.
        let tmp = cache.join(format!(".extract-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        run(Command::new(require("dpkg-deb", "dpkg")?).arg("-x").arg(&deb).arg(&tmp))?;
        if let Err(e) = std::fs::rename(&tmp, &root) {
            let _ = std::fs::remove_dir_all(&tmp);
            if !root.join("boot").exists() {
                return Err(BuildError::io("rename", &root, e));
            }
        }
    }
    let find = |dir: &Path, prefix: &str| -> Result<PathBuf, BuildError> {
        std::fs::read_dir(dir)
            .map_err(|e| BuildError::io("list", dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(prefix)))
            .ok_or_else(|| BuildError::Package(format!("{}: no {prefix}* in {}", k.package, dir.display())))
    };
    let vmlinuz = find(&root.join("boot"), "vmlinuz-")?;
    let modules_dir = find(&root.join("lib/modules"), "")?.join("kernel");
    Ok(Extracted { deb, vmlinuz, modules_dir, deb_sha256: sum })
}

/// Finds `<name>.ko` (or compressed) below the package's module tree.
pub fn find_module(modules_dir: &Path, name: &str) -> Result<PathBuf, BuildError> {
    fn walk(dir: &Path, name: &str) -> Option<PathBuf> {
        for e in std::fs::read_dir(dir).ok()?.flatten() {
            let p = e.path();
            if p.is_dir() {
                if let Some(found) = walk(&p, name) {
                    return Some(found);
                }
            } else if let Some(f) = p.file_name().map(|f| f.to_string_lossy().into_owned())
                && [".ko", ".ko.xz", ".ko.zst"].iter().any(|ext| f == format!("{name}{ext}"))
            {
                return Some(p);
            }
        }
        None
    }
    walk(modules_dir, name).ok_or_else(|| {
        BuildError::Package(format!("module {name:?} is not in {} (built in, or misspelt?)", modules_dir.display()))
    })
}

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

pub use machinery::bundle::hex;

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

/// The kernel's name for a module file name (`virtio-rng.ko` → `virtio_rng`).
pub fn module_name(file: &str) -> String {
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// A module's dependencies, from the `depends=` string of its `.modinfo`
/// section (NUL-separated `key=value` strings; no ELF parsing needed).
pub fn module_depends(ko: &[u8]) -> Vec<String> {
    ko.split(|&b| b == 0)
        .filter_map(|s| s.strip_prefix(b"depends="))
        .flat_map(|d| String::from_utf8_lossy(d).split(',').map(str::to_string).collect::<Vec<_>>())
        .filter(|d| !d.is_empty())
        .map(|d| d.replace('-', "_"))
        .collect()
}

/// Modules built into the kernel (`modules.builtin` beside `kernel/`).
pub fn builtin_modules(modules_dir: &Path) -> std::collections::BTreeSet<String> {
    let path = modules_dir.parent().map(|p| p.join("modules.builtin")).unwrap_or_default();
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .map(module_name)
        .collect()
}

/// Checks a load order: each module's dependencies must be built in or
/// loaded before it (`finit_module` does not resolve them). `modules` is
/// (file name, contents) in load order; the error is (module, dependency).
pub fn check_order(
    builtin: &std::collections::BTreeSet<String>,
    modules: &[(String, &[u8])],
) -> Result<(), (String, String)> {
    let mut loaded = builtin.clone();
    for (file, data) in modules {
        let name = module_name(file);
        if let Some(missing) = module_depends(data).into_iter().find(|d| !loaded.contains(d)) {
            return Err((name, missing));
        }
        loaded.insert(name);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_and_order() {
        let ko = |deps: &str| format!("\x7fELF...\0license=GPL\0depends={deps}\0name=x\0").into_bytes();
        assert_eq!(module_depends(&ko("net_failover,virtio")), ["net_failover", "virtio"]);
        assert!(module_depends(&ko("")).is_empty());
        assert_eq!(module_name("virtio-rng.ko"), "virtio_rng");
        let builtin: std::collections::BTreeSet<String> = ["ext4".to_string()].into();
        let (failover, net_failover, virtio_net) = (ko(""), ko("failover"), ko("net_failover,ext4"));
        let good = [("failover.ko".to_string(), &failover[..]), ("net_failover.ko".into(), &net_failover[..])];
        assert!(
            check_order(&builtin, &[good[0].clone(), good[1].clone(), ("virtio_net.ko".into(), &virtio_net)]).is_ok()
        );
        assert_eq!(
            check_order(&builtin, &[("virtio_net.ko".into(), &virtio_net), good[0].clone()]),
            Err(("virtio_net".into(), "net_failover".into()))
        );
    }
}

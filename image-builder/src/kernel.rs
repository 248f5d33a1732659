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
    /// The package's root: device trees are under
    /// `usr/lib/linux-image-<release>/`.
    pub root: PathBuf,
    pub deb_sha256: String,
}

pub fn sha256_file(path: &Path) -> Result<String, BuildError> {
    use std::io::Read as _;
    // Streamed: a whole image (hundreds of MiB, mostly zeros) is never
    // held in memory.
    let mut file = std::fs::File::open(path).map_err(|e| BuildError::io("open", path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| BuildError::io("read", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

pub use machinery::bundle::hex;

/// The build host's Debian architecture: its kernels come from the host's
/// own apt sources.
pub const HOST_ARCH: &str = "amd64";

impl Extracted {
    /// A device tree of the package (`broadcom/bcm2711-rpi-4-b.dtb`).
    pub fn devicetree(&self, rel: &str) -> Result<PathBuf, BuildError> {
        let lib = self.root.join("usr/lib");
        let dir = std::fs::read_dir(&lib)
            .map_err(|e| BuildError::io("list", &lib, e))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("linux-image-")))
            .ok_or_else(|| {
                BuildError::Package(format!("no device trees (usr/lib/linux-image-*) in {}", self.deb.display()))
            })?;
        let path = dir.join(rel);
        if path.is_file() {
            Ok(path)
        } else {
            Err(BuildError::Package(format!("{}: no device tree {rel} in {}", self.deb.display(), dir.display())))
        }
    }
}

/// Downloads (unless cached), checks and extracts the board's kernel.
pub fn fetch(k: &Kernel, arch: &str, cache: &Path) -> Result<Extracted, BuildError> {
    std::fs::create_dir_all(cache).map_err(|e| BuildError::io("create", cache, e))?;
    let deb = cache.join(format!("{}_{}_{arch}.deb", k.package, k.version.replace(':', "%3a")));
    let deb = if deb.exists() {
        deb
    } else if arch == HOST_ARCH {
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
        deb
    } else {
        // Another architecture: through a private apt state, nothing
        // changes on the host.
        crate::apt::Apt::new(cache.parent().unwrap_or(cache), arch).download(&k.package, &k.version, cache)?
    };
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
    Ok(Extracted { deb, vmlinuz, modules_dir, root, deb_sha256: sum })
}

/// The package's module files by module name (`virtio_rng` → `…/virtio-rng.ko`).
pub fn module_index(modules_dir: &Path) -> std::collections::BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, out: &mut std::collections::BTreeMap<String, PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if let Some(f) = p.file_name().map(|f| f.to_string_lossy().into_owned())
                && [".ko", ".ko.xz", ".ko.zst"].iter().any(|ext| f.ends_with(ext))
            {
                out.insert(module_name(&f), p);
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(modules_dir, &mut out);
    out
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

/// A module file: its name and contents.
pub type ModuleFile = (String, Vec<u8>);
/// Reads a module by name (`None`: the kernel package has no such module).
pub type ReadModule<'r> = &'r dyn Fn(&str) -> Option<ModuleFile>;

/// The load order of `wanted` (module names, in order) with every
/// dependency before the module needing it (`finit_module` does not
/// resolve them), built-in ones and repeats left out. `read` gives a
/// module's file name and contents; the error is (module, what it lacks).
pub fn load_order<'a>(
    builtin: &std::collections::BTreeSet<String>,
    wanted: impl IntoIterator<Item = &'a String>,
    read: ReadModule,
) -> Result<Vec<ModuleFile>, (String, String)> {
    fn visit(
        name: &str,
        needed_by: &str,
        builtin: &std::collections::BTreeSet<String>,
        read: ReadModule,
        seen: &mut std::collections::BTreeSet<String>,
        out: &mut Vec<ModuleFile>,
    ) -> Result<(), (String, String)> {
        let name = name.replace('-', "_");
        if builtin.contains(&name) || !seen.insert(name.clone()) {
            return Ok(());
        }
        let (file, data) = read(&name).ok_or_else(|| (needed_by.to_string(), name.clone()))?;
        for dep in module_depends(&data) {
            visit(&dep, &name, builtin, read, seen, out)?;
        }
        out.push((file, data));
        Ok(())
    }
    let (mut seen, mut out) = (std::collections::BTreeSet::new(), Vec::new());
    for m in wanted {
        visit(m, "the board", builtin, read, &mut seen, &mut out)?;
    }
    Ok(out)
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
        let modules: std::collections::BTreeMap<&str, Vec<u8>> = [
            ("failover", ko("")),
            ("net_failover", ko("failover")),
            ("virtio_net", ko("net_failover,ext4")),
            ("virtio_rng", ko("")),
            ("broken", ko("missing_one")),
        ]
        .into();
        let read = |n: &str| modules.get(n).map(|d| (format!("{}.ko", n.replace('_', "-")), d.clone()));
        let names = |v: Vec<ModuleFile>| v.into_iter().map(|(f, _)| f).collect::<Vec<_>>();
        // Dependencies come first, each module once, built-ins never.
        let wanted = ["virtio-rng".to_string(), "virtio_net".into(), "failover".into()];
        assert_eq!(
            names(load_order(&builtin, &wanted, &read).unwrap()),
            ["virtio-rng.ko", "failover.ko", "net-failover.ko", "virtio-net.ko"]
        );
        assert_eq!(
            load_order(&builtin, &["broken".to_string()], &read).unwrap_err(),
            ("broken".to_string(), "missing_one".to_string())
        );
        assert_eq!(
            load_order(&builtin, &["nope".to_string()], &read).unwrap_err(),
            ("the board".to_string(), "nope".to_string())
        );
    }
}

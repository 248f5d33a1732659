//! The few dynamically linked programs an image carries (mke2fs, the
//! container runtime) and exactly the shared libraries they need.
//!
//! - **Host** architecture: the build host's installed files; libraries
//!   from `ldd`.
//! - **Another** architecture (arm64 images built on amd64): the same
//!   Debian packages for the image's architecture, fetched through the
//!   private apt state ([`crate::apt`]) at the host's installed version
//!   when the archive still has it (else the archive's current one) and
//!   extracted under the cache; libraries resolved from the ELF files'
//!   `NEEDED` entries and interpreter (`readelf`) in [`LIBRARY_PACKAGES`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use machinery::board::Arch;

use crate::BuildError;
use crate::apt::Apt;
use crate::tools;

/// Where a foreign build finds the libraries of the programs it copies:
/// the C library, runc's seccomp, iptables' netlink and xtables, mke2fs's
/// e2fsprogs libraries.
pub const LIBRARY_PACKAGES: &[&str] = &[
    "libc6",
    "libseccomp2",
    "libxtables12",
    "libmnl0",
    "libnftnl11",
    "libnetfilter-conntrack3",
    "libnfnetlink0",
    "libext2fs2",
    "libcom-err2",
    "libblkid1",
    "libuuid1",
];

/// Programs of one architecture and their libraries.
pub struct Userland {
    arch: Arch,
    foreign: Option<Foreign>,
}

struct Foreign {
    apt: Apt,
    debs: PathBuf,
    trees: std::cell::RefCell<BTreeMap<String, PathBuf>>,
}

/// A file to put into the root: its path there and where to read it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Placed {
    pub at: PathBuf,
    pub from: PathBuf,
}

impl Userland {
    /// The host's programs for an image of the host's architecture, else
    /// packages for `arch` kept under `cache`.
    pub fn for_arch(arch: Arch, cache: &Path) -> Userland {
        let foreign = (arch.debian() != crate::kernel::HOST_ARCH).then(|| Foreign {
            apt: Apt::new(cache, arch.debian()),
            debs: cache.join(format!("userland-{}", arch.debian())),
            trees: Default::default(),
        });
        Userland { arch, foreign }
    }

    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// `path` (absolute) from `package`: the host's file, or the file in
    /// the extracted package for the image's architecture.
    pub fn file(&self, path: &str, package: &str) -> Result<PathBuf, BuildError> {
        let Some(f) = &self.foreign else { return tools::require(path, package) };
        let tree = f.tree(package)?;
        // Debian 12 packages still ship /sbin and /lib (the host may show
        // them under /usr): try both spellings.
        let rel = path.trim_start_matches('/');
        let alt = rel.strip_prefix("usr/").map_or_else(|| format!("usr/{rel}"), str::to_string);
        [rel.to_string(), alt]
            .iter()
            .find_map(|r| resolve_in(&tree, r))
            .ok_or_else(|| BuildError::Package(format!("{package} ({}) has no {path}", self.arch.debian())))
    }

    /// A directory of `package` (`/usr/lib/<triple>/xtables`).
    pub fn dir(&self, path: &str, package: &str) -> Result<PathBuf, BuildError> {
        match &self.foreign {
            None => Ok(PathBuf::from(path)),
            Some(f) => Ok(f.tree(package)?.join(path.trim_start_matches('/'))),
        }
    }

    /// The shared libraries `program` needs, all the way down, with where
    /// each goes in the root.
    pub fn libraries(&self, program: &Path) -> Result<Vec<Placed>, BuildError> {
        let Some(f) = &self.foreign else {
            return Ok(tools::shared_libraries(program)?
                .into_iter()
                .map(|l| Placed { at: l.clone(), from: l })
                .collect());
        };
        let dirs = [format!("lib/{}", self.arch.multiarch()), format!("usr/lib/{}", self.arch.multiarch())];
        let mut out = BTreeSet::new();
        let mut todo = vec![program.to_path_buf()];
        let mut seen = BTreeSet::new();
        while let Some(file) = todo.pop() {
            let (needed, interp) = elf_dependencies(&file)?;
            if let Some(interp) = interp {
                let rel = interp.trim_start_matches('/');
                let from = f.find(|tree| resolve_in(tree, rel))?.ok_or_else(|| {
                    BuildError::Package(format!(
                        "{}: its interpreter {interp} is in no package of {LIBRARY_PACKAGES:?}",
                        file.display()
                    ))
                })?;
                out.insert(Placed { at: PathBuf::from(&interp), from });
            }
            for soname in needed {
                if !seen.insert(soname.clone()) {
                    continue;
                }
                let found = f.find(|tree| {
                    dirs.iter().find_map(|d| {
                        resolve_in(tree, &format!("{d}/{soname}")).map(|from| (format!("/{d}/{soname}"), from))
                    })
                })?;
                let (at, from) = found.ok_or_else(|| {
                    BuildError::Package(format!(
                        "{} needs {soname}, which is in none of {LIBRARY_PACKAGES:?} ({}): add its package to userland::LIBRARY_PACKAGES",
                        file.display(),
                        self.arch.debian()
                    ))
                })?;
                todo.push(from.clone());
                out.insert(Placed { at: PathBuf::from(at), from });
            }
        }
        Ok(out.into_iter().collect())
    }
}

impl Foreign {
    /// The extracted package for the image's architecture.
    fn tree(&self, package: &str) -> Result<PathBuf, BuildError> {
        if let Some(t) = self.trees.borrow().get(package) {
            return Ok(t.clone());
        }
        let deb = match host_version(package) {
            Some(v) => self.apt.download_preferring(package, &v, &self.debs)?,
            None => self.apt.fetch_current(package, &self.debs)?,
        };
        let name = deb.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let tree = self.debs.join(name);
        crate::apt::extract(&deb, &tree)?;
        self.trees.borrow_mut().insert(package.to_string(), tree.clone());
        Ok(tree)
    }

    /// The first library package where `look` finds something.
    fn find<T>(&self, look: impl Fn(&Path) -> Option<T>) -> Result<Option<T>, BuildError> {
        for p in LIBRARY_PACKAGES {
            if let Some(t) = look(&self.tree(p)?) {
                return Ok(Some(t));
            }
        }
        Ok(None)
    }
}

/// The host's installed version of a package (`dpkg-query`), if any.
fn host_version(package: &str) -> Option<String> {
    let out = Command::new("dpkg-query").args(["-W", "-f=${Version}\n", package]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.lines().find(|l| !l.trim().is_empty())?.trim().to_string();
    (out.status.success() && !v.is_empty()).then_some(v)
}

/// `rel` inside `tree`, following symbolic links inside the tree (an
/// absolute link target is taken from the tree's root, not the host's).
pub fn resolve_in(tree: &Path, rel: &str) -> Option<PathBuf> {
    let mut path = tree.join(rel);
    for _ in 0..16 {
        let meta = std::fs::symlink_metadata(&path).ok()?;
        if !meta.file_type().is_symlink() {
            return meta.is_file().then_some(path);
        }
        let target = std::fs::read_link(&path).ok()?;
        path =
            if target.is_absolute() { tree.join(target.strip_prefix("/").ok()?) } else { path.parent()?.join(target) };
    }
    None
}

/// An ELF file's `NEEDED` libraries and its program interpreter
/// (`readelf`, which reads every architecture's ELF).
pub fn elf_dependencies(file: &Path) -> Result<(Vec<String>, Option<String>), BuildError> {
    let readelf = tools::require("readelf", "binutils")?;
    let out = Command::new(readelf)
        .args(["-d", "-l", "-W"])
        .arg(file)
        .output()
        .map_err(|e| BuildError::Tool { what: format!("readelf {}", file.display()), detail: e.to_string() })?;
    if !out.status.success() {
        return Err(BuildError::Tool {
            what: format!("readelf {}", file.display()),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(parse_readelf(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_readelf(text: &str) -> (Vec<String>, Option<String>) {
    let bracketed = |l: &str, key: &str| {
        let at = l.find(key)? + key.len();
        let rest = &l[at..];
        Some(rest[..rest.find(']')?].trim().to_string())
    };
    let needed =
        text.lines().filter(|l| l.contains("(NEEDED)")).filter_map(|l| bracketed(l, "Shared library: [")).collect();
    let interp = text.lines().find_map(|l| bracketed(l, "Requesting program interpreter:"));
    (needed, interp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readelf_output_parses() {
        let text = "\
  INTERP         0x000238 0x0000000000000238 0x0000000000000238 0x00001b 0x00001b R   0x1
      [Requesting program interpreter: /lib/ld-linux-aarch64.so.1]
 0x0000000000000001 (NEEDED)             Shared library: [libseccomp.so.2]
 0x0000000000000001 (NEEDED)             Shared library: [libc.so.6]
 0x000000000000000e (SONAME)             Library soname: [libfoo.so.1]
";
        let (needed, interp) = parse_readelf(text);
        assert_eq!(needed, ["libseccomp.so.2", "libc.so.6"]);
        assert_eq!(interp.as_deref(), Some("/lib/ld-linux-aarch64.so.1"));
        assert_eq!(parse_readelf("static\n"), (vec![], None));
    }

    #[test]
    fn links_resolve_inside_the_tree() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path();
        std::fs::create_dir_all(t.join("lib/aarch64-linux-gnu")).unwrap();
        std::fs::write(t.join("lib/aarch64-linux-gnu/libc.so.6"), b"elf").unwrap();
        std::os::unix::fs::symlink("aarch64-linux-gnu/libc.so.6", t.join("lib/rel.so")).unwrap();
        // An absolute target means the package's root, never the host's.
        std::os::unix::fs::symlink("/lib/aarch64-linux-gnu/libc.so.6", t.join("lib/abs.so")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", t.join("lib/host.so")).unwrap();
        assert_eq!(resolve_in(t, "lib/rel.so"), Some(t.join("lib/aarch64-linux-gnu/libc.so.6")));
        assert_eq!(resolve_in(t, "lib/abs.so"), Some(t.join("lib/aarch64-linux-gnu/libc.so.6")));
        assert_eq!(resolve_in(t, "lib/host.so"), None);
        assert_eq!(resolve_in(t, "lib/missing.so"), None);
    }
}

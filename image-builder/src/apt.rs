//! Debian packages for another architecture (arm64 images built on an
//! amd64 host) and from `non-free-firmware` (the Pi's `raspi-firmware`):
//! downloaded through a private apt state under the cache directory —
//! its own sources list, package lists and architecture — so the build
//! host's apt configuration, dpkg architectures and installed packages are
//! never touched. Packages are only downloaded and extracted, never
//! installed.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::BuildError;
use crate::tools::{require, run};

/// Debian 12's archive: the suites the kernels, firmware and runtime come
/// from (the host's own sources may be a snapshot or a mirror; these are
/// the archive's canonical names).
const SOURCES: &str = "\
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main non-free-firmware
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-updates main non-free-firmware
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main non-free-firmware
";

/// A private apt state for one Debian architecture.
pub struct Apt {
    dir: PathBuf,
    arch: String,
}

impl Apt {
    /// The state in `cache/apt-<arch>` (created on first use).
    pub fn new(cache: &Path, arch: &str) -> Apt {
        Apt { dir: cache.join(format!("apt-{arch}")), arch: arch.to_string() }
    }

    fn options(&self) -> Vec<String> {
        let d = &self.dir;
        vec![
            format!("-oDir::Etc::SourceList={}", d.join("sources.list").display()),
            "-oDir::Etc::SourceParts=-".into(),
            format!("-oDir::State::Lists={}", d.join("lists").display()),
            format!("-oDir::Cache={}", d.join("cache").display()),
            "-oDir::State::status=/dev/null".into(),
            format!("-oAPT::Architecture={}", self.arch),
            format!("-oAPT::Architectures={}", self.arch),
            // Downloads land in a directory the build user owns.
            "-oAPT::Sandbox::User=root".into(),
        ]
    }

    /// Fetches the package lists (once; again when a package is missing).
    fn update(&self) -> Result<(), BuildError> {
        for d in ["lists/partial", "cache/archives/partial"] {
            let p = self.dir.join(d);
            std::fs::create_dir_all(&p).map_err(|e| BuildError::io("create", &p, e))?;
        }
        crate::write(&self.dir.join("sources.list"), SOURCES.as_bytes())?;
        run(Command::new(require("apt-get", "apt")?).args(self.options()).args(["-q", "update"]))
    }

    /// Downloads `package=version` into `dest` unless it is there; returns
    /// the `.deb`'s path. Refreshes the lists once if apt does not know it.
    pub fn download(&self, package: &str, version: &str, dest: &Path) -> Result<PathBuf, BuildError> {
        self.fetch(package, Some(version), dest)
    }

    /// Downloads `package` at `version` when the archive still has it,
    /// else the archive's current version (security updates replace old
    /// ones); returns the `.deb`'s path.
    pub fn download_preferring(&self, package: &str, version: &str, dest: &Path) -> Result<PathBuf, BuildError> {
        self.fetch(package, Some(version), dest).or_else(|_| self.fetch(package, None, dest))
    }

    /// Downloads the archive's current version of `package`.
    pub fn fetch_current(&self, package: &str, dest: &Path) -> Result<PathBuf, BuildError> {
        self.fetch(package, None, dest)
    }

    fn fetch(&self, package: &str, version: Option<&str>, dest: &Path) -> Result<PathBuf, BuildError> {
        std::fs::create_dir_all(dest).map_err(|e| BuildError::io("create", dest, e))?;
        let find = || -> Option<PathBuf> {
            let prefix = match version {
                Some(v) => format!("{package}_{}_", v.replace(':', "%3a")),
                None => format!("{package}_"),
            };
            let mut found: Vec<PathBuf> = std::fs::read_dir(dest)
                .ok()?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&prefix)))
                .collect();
            found.sort();
            found.pop()
        };
        if let Some(deb) = find() {
            return Ok(deb);
        }
        if !self.dir.join("lists").exists() {
            self.update()?;
        }
        let spec = match version {
            Some(v) => format!("{package}={v}"),
            None => package.to_string(),
        };
        let get = || {
            run(Command::new(require("apt-get", "apt")?)
                .current_dir(dest)
                .args(self.options())
                .args(["-q", "download"])
                .arg(&spec))
        };
        if get().is_err() {
            self.update()?;
            get().map_err(|e| {
                BuildError::Package(format!(
                    "{spec} ({}): {e}\n(is the version still in Debian's archive? pin the one `apt-cache policy` \
                     shows for this architecture)",
                    self.arch
                ))
            })?;
        }
        find().ok_or_else(|| BuildError::Package(format!("apt-get download {spec} left no .deb in {}", dest.display())))
    }
}

/// Extracts a `.deb` into `cache/<name>` once (a private directory renamed
/// into place, so builds side by side never see half a tree).
pub fn extract(deb: &Path, into: &Path) -> Result<(), BuildError> {
    if into.exists() {
        return Ok(());
    }
    let parent = into.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| BuildError::io("create", parent, e))?;
    let tmp = parent.join(format!(".extract-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    run(Command::new(require("dpkg-deb", "dpkg")?).arg("-x").arg(deb).arg(&tmp))?;
    if let Err(e) = std::fs::rename(&tmp, into) {
        let _ = std::fs::remove_dir_all(&tmp);
        if !into.exists() {
            return Err(BuildError::io("rename", into, e));
        }
    }
    Ok(())
}

//! The host tools image-builder runs, and the errors that say which Debian
//! package to install when one is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::BuildError;

/// Finds `tool` on PATH (or at an absolute path), or names the package.
pub fn require(tool: &str, package: &str) -> Result<PathBuf, BuildError> {
    let found = if tool.starts_with('/') {
        Path::new(tool).exists().then(|| PathBuf::from(tool))
    } else {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .chain(["/usr/sbin".into(), "/sbin".into()])
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    };
    found.ok_or_else(|| BuildError::MissingTool { tool: tool.to_string(), package: package.to_string() })
}

/// Runs a command to completion; its stderr is in the error.
pub fn run(cmd: &mut Command) -> Result<(), BuildError> {
    let what = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| BuildError::Tool { what: what.clone(), detail: e.to_string() })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(BuildError::Tool {
            what,
            detail: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
        })
    }
}

/// Shared libraries a dynamically linked program needs (from `ldd`).
pub fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>, BuildError> {
    let ldd = require("ldd", "libc-bin")?;
    let out = Command::new(ldd)
        .arg(program)
        .output()
        .map_err(|e| BuildError::Tool { what: format!("ldd {}", program.display()), detail: e.to_string() })?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')).map(PathBuf::from)).collect())
}

/// Whether a program is statically linked: no program interpreter and no
/// shared libraries in its ELF headers (`readelf` reads any architecture's,
/// where `ldd` only knows the host's).
pub fn is_static(program: &Path) -> Result<bool, BuildError> {
    let (needed, interp) = crate::userland::elf_dependencies(program)?;
    Ok(needed.is_empty() && interp.is_none())
}

//! The client config (`osctlconfig`): named contexts, like talosconfig or
//! kubeconfig, so `-n`, `-e` and certificate flags are optional.
//!
//! ```toml
//! context = "demo"
//!
//! [contexts.demo]
//! endpoints = ["10.0.0.5"]      # where to connect (host or host:port)
//! nodes = ["10.0.0.5"]          # default targets
//! ca = "ca.crt"                 # paths are relative to this file
//! crt = "admin.crt"
//! key = "admin.key"
//! signing_key = "ops.key"       # signs configs for apply-config
//! ```
//!
//! Found at `--osctlconfig`, else `$OSCTLCONFIG`, else `~/.plinth/osctlconfig`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub context: String,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crt: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientConfigError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("{path}: no context named {name:?} (known: {known})")]
    NoContext { path: PathBuf, name: String, known: String },
}

/// Where the client config is looked for when no flag names it.
pub fn default_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OSCTLCONFIG") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".plinth/osctlconfig"))
}

impl ClientConfig {
    /// Loads a client config; a missing file at the default path is an
    /// empty config, a missing file named explicitly is an error.
    pub fn load(path: &Path, explicit: bool) -> Result<ClientConfig, ClientConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(ClientConfig::default());
            }
            Err(source) => {
                return Err(ClientConfigError::Read { path: path.to_path_buf(), source });
            }
        };
        let mut cfg: ClientConfig =
            toml::from_str(&text).map_err(|source| ClientConfigError::Parse { path: path.to_path_buf(), source })?;
        // Relative paths are relative to the file.
        let base = path.parent().unwrap_or(Path::new("."));
        for ctx in cfg.contexts.values_mut() {
            for p in [&mut ctx.ca, &mut ctx.crt, &mut ctx.key, &mut ctx.signing_key].into_iter().flatten() {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        Ok(cfg)
    }

    /// The named context, or the current one, or an empty one when the
    /// file has none.
    pub fn context(&self, name: Option<&str>, path: &Path) -> Result<Context, ClientConfigError> {
        let name = name.unwrap_or(&self.context);
        if name.is_empty() {
            return Ok(self.contexts.values().next().cloned().unwrap_or_default());
        }
        self.contexts.get(name).cloned().ok_or_else(|| ClientConfigError::NoContext {
            path: path.to_path_buf(),
            name: name.to_string(),
            known: self.contexts.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_resolve_against_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("osctlconfig");
        std::fs::write(
            &path,
            "context = \"a\"\n[contexts.a]\nnodes = [\"n1\"]\nca = \"ca.crt\"\ncrt = \"/abs/admin.crt\"\n",
        )
        .unwrap();
        let cfg = ClientConfig::load(&path, true).unwrap();
        let ctx = cfg.context(None, &path).unwrap();
        assert_eq!(ctx.ca.unwrap(), dir.path().join("ca.crt"));
        assert_eq!(ctx.crt.unwrap(), PathBuf::from("/abs/admin.crt"));
        assert!(matches!(cfg.context(Some("b"), &path), Err(ClientConfigError::NoContext { .. })));
        assert!(ClientConfig::load(&dir.path().join("missing"), false).unwrap().contexts.is_empty());
        assert!(ClientConfig::load(&dir.path().join("missing"), true).is_err());
    }
}

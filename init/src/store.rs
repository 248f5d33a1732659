//! The stored machine config on STATE (in host mode: the state directory).
//!
//! Each config is kept as one signed envelope (see `machinery::signing`):
//! the exact bytes the operator signed plus the signature, so init re-verifies
//! it at every start. Writes go to a temporary file, are fsynced, renamed
//! over the old file and the directory is fsynced: a crash leaves either the
//! old config or the new one, never half of one.
//!
//! | file             | what                                                   |
//! |------------------|--------------------------------------------------------|
//! | `config.signed`  | the applied config                                     |
//! | `staged.signed`  | a config applied with `--mode staged`, for next boot   |
//! | `previous.signed`| the config a `--mode try` apply returns to             |
//! | `last-good.signed`| the config the last boot loaded: the fallback when `config.signed` cannot be read |
//! | `trust.json`     | apid's TLS of the last configured boot (0600): safe mode's trust; a copy lives on EPHEMERAL (`layout::TRUST_COPY`) for a STATE that cannot be read |

use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use machinery::config::MachineConfig;
use machinery::signing::{self, Purpose, VerifyingKey};

/// A config that was verified and validated, with the bytes it came from.
#[derive(Debug, Clone)]
pub struct Signed {
    pub config: MachineConfig,
    pub bytes: Vec<u8>,
    pub signature: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Active,
    Staged,
    Previous,
    /// A copy of the config the last boot loaded.
    LastGood,
}

impl Slot {
    fn file(self) -> &'static str {
        match self {
            Slot::Active => "config.signed",
            Slot::Staged => "staged.signed",
            Slot::Previous => "previous.signed",
            Slot::LastGood => "last-good.signed",
        }
    }
}

/// What apid served with in the last configured boot: in safe mode (no
/// config can be read) it serves with the same certificates and still asks
/// for client certificates of the same CA, instead of falling open into
/// maintenance mode.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Trust {
    pub cert_pem: String,
    pub key_pem: String,
    pub client_ca_pem: String,
    pub listen_address: String,
    /// The config version then: a config applied in safe mode must be
    /// newer, as always.
    pub config_version: u64,
    /// The cluster the node belonged to (`cluster.id`): in safe mode a
    /// config of another cluster is refused, as always.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
}

/// Writes a trust record (0600, in a 0700 directory) unless it holds
/// the same already.
pub fn save_trust_at(path: &Path, t: &Trust) -> Result<(), StoreError> {
    if load_trust_at(path).ok().flatten().as_ref() == Some(t) {
        return Ok(());
    }
    let json = serde_json::to_vec(t).map_err(|e| StoreError::Corrupt { path: path.into(), reason: e.to_string() })?;
    if let Some(dir) = path.parent() {
        private_dir(dir).map_err(io("create directory (0700)", dir))?;
    }
    write_private(path, &json).map_err(io("write", path))
}

/// Reads a trust record; `None` when there is none.
pub fn load_trust_at(path: &Path) -> Result<Option<Trust>, StoreError> {
    match fs::read(path) {
        Ok(raw) => serde_json::from_slice(&raw)
            .map(Some)
            .map_err(|e| StoreError::Corrupt { path: path.into(), reason: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("read", path)(e)),
    }
}

const TRUST_FILE: &str = "trust.json";

#[derive(Debug)]
pub struct ConfigStore {
    dir: PathBuf,
    trusted: VerifyingKey,
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { op, path, source }
}

impl ConfigStore {
    pub fn open(dir: &Path, trusted: VerifyingKey) -> Result<Self, StoreError> {
        private_dir(dir).map_err(io("create directory (0700)", dir))?;
        Ok(ConfigStore { dir: dir.to_path_buf(), trusted })
    }

    pub fn trusted_key(&self) -> &VerifyingKey {
        &self.trusted
    }

    pub fn path(&self, slot: Slot) -> PathBuf {
        self.dir.join(slot.file())
    }

    /// Verifies `bytes` against the trusted key and validates it.
    pub fn verify(&self, name: &str, bytes: &[u8], signature: &[u8]) -> Result<Signed, VerifyFailure> {
        signing::verify(Purpose::Config, &self.trusted, bytes, signature).map_err(VerifyFailure::Signature)?;
        let text = std::str::from_utf8(bytes).map_err(|e| VerifyFailure::NotUtf8(e.valid_up_to()))?;
        let parsed = MachineConfig::parse_with_warnings(name, text).map_err(VerifyFailure::Invalid)?;
        // Keys of the next minor release (a rolled-back node), one CA for
        // the machine API and Kubernetes: logged, never a refusal.
        for w in &parsed.warnings {
            tracing::warn!("{w}");
        }
        Ok(Signed { config: parsed.config, bytes: bytes.to_vec(), signature: signature.to_vec() })
    }

    /// Loads and re-verifies a stored config; `None` when the slot is empty.
    pub fn load(&self, slot: Slot) -> Result<Option<Signed>, StoreError> {
        let path = self.path(slot);
        let raw = match fs::read(&path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("read", &path)(e)),
        };
        let corrupt = |reason: String| StoreError::Corrupt { path: path.clone(), reason };
        let (bytes, sig) = signing::envelope_decode(&raw).map_err(|e| corrupt(e.to_string()))?;
        self.verify(&path.display().to_string(), &bytes, &sig).map(Some).map_err(|e| corrupt(e.to_string()))
    }

    /// Writes a config into a slot atomically.
    pub fn save(&self, slot: Slot, signed: &Signed) -> Result<(), StoreError> {
        let path = self.path(slot);
        let tmp = self.dir.join(format!(".{}.tmp", slot.file()));
        let mut f = create_private(&tmp).map_err(io("create (0600)", &tmp))?;
        f.write_all(&signing::envelope_encode(&signed.bytes, &signed.signature)).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io("rename into place", &path))?;
        self.sync_dir()
    }

    /// Moves the config in `from` to `to` (replacing it) atomically.
    pub fn promote(&self, from: Slot, to: Slot) -> Result<(), StoreError> {
        let src = self.path(from);
        fs::rename(&src, self.path(to)).map_err(io("rename", &src))?;
        self.sync_dir()
    }

    pub fn clear(&self, slot: Slot) -> Result<(), StoreError> {
        let path = self.path(slot);
        match fs::remove_file(&path) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("remove", &path)(e)),
        }
    }

    /// Where apid's TLS material of the last configured boot is recorded
    /// ([`save_trust_at`]).
    pub fn trust_path(&self) -> PathBuf {
        self.dir.join(TRUST_FILE)
    }

    pub fn load_trust(&self) -> Result<Option<Trust>, StoreError> {
        load_trust_at(&self.trust_path())
    }

    fn sync_dir(&self) -> Result<(), StoreError> {
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io("fsync directory", &self.dir))
    }
}

/// Writes a file readable by root only, atomically (temp, fsync, rename).
/// The directory is synced after the rename, so the new name survives a
/// power cut.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = create_private(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// A new file only root may read (0600, whatever the umask). A leftover
/// temporary file from a crash is removed first: it would keep its mode.
pub fn create_private(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    fs::OpenOptions::new().create_new(true).write(true).mode(0o600).open(path)
}

/// A directory only root may enter (0700), created if missing and narrowed
/// if it exists with a wider mode.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyFailure {
    #[error("refused: {0}")]
    Signature(signing::VerifyError),
    #[error("the config is not UTF-8 text (invalid byte at offset {0})")]
    NotUtf8(usize),
    #[error("{0}")]
    Invalid(machinery::config::Diagnostics),
}

#[cfg(test)]
mod tests {
    use super::*;
    use machinery::signing::SigningKey;

    pub(crate) fn config_text(version: u64) -> String {
        let ca = machinery::pki::generate_ca("t").unwrap();
        format!(
            "version = {version}\n[machine]\nhostname = \"n1\"\n[cluster]\nname = \"demo\"\nrole = \"controlplane\"\n[api]\nca_cert = \"\"\"{}\"\"\"\nca_key = \"\"\"{}\"\"\"\n",
            ca.cert_pem, ca.key_pem
        )
    }

    #[test]
    fn save_load_promote_clear() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[9; 32]);
        let store = ConfigStore::open(dir.path(), key.verifying_key()).unwrap();
        assert!(store.load(Slot::Active).unwrap().is_none());
        let text = config_text(1);
        let sig = signing::sign(Purpose::Config, &key, text.as_bytes());
        let signed = store.verify("x", text.as_bytes(), &sig).unwrap();
        store.save(Slot::Staged, &signed).unwrap();
        store.promote(Slot::Staged, Slot::Active).unwrap();
        let back = store.load(Slot::Active).unwrap().unwrap();
        assert_eq!(back.bytes, text.as_bytes());
        assert!(store.load(Slot::Staged).unwrap().is_none());
        store.clear(Slot::Active).unwrap();
        assert!(store.load(Slot::Active).unwrap().is_none());
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn stored_configs_and_private_files_are_root_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let key = SigningKey::from_bytes(&[9; 32]);
        let store = ConfigStore::open(&dir, key.verifying_key()).unwrap();
        assert_eq!(mode(&dir), 0o700, "the state directory is narrowed");
        // A leftover world-readable temporary file from a crash.
        let leftover = dir.join(".config.signed.tmp");
        fs::write(&leftover, "old").unwrap();
        fs::set_permissions(&leftover, fs::Permissions::from_mode(0o644)).unwrap();
        let text = config_text(1);
        let sig = signing::sign(Purpose::Config, &key, text.as_bytes());
        store.save(Slot::Active, &store.verify("x", text.as_bytes(), &sig).unwrap()).unwrap();
        assert_eq!(mode(&store.path(Slot::Active)), 0o600);
        let k = dir.join("ca.key");
        fs::write(k.with_extension("tmp"), "old").unwrap();
        write_private(&k, b"secret").unwrap();
        assert_eq!((mode(&k), fs::read(&k).unwrap()), (0o600, b"secret".to_vec()));
    }

    #[test]
    fn tampered_file_on_disk_is_reported_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[9; 32]);
        let store = ConfigStore::open(dir.path(), key.verifying_key()).unwrap();
        let text = config_text(1);
        let sig = signing::sign(Purpose::Config, &key, text.as_bytes());
        store.save(Slot::Active, &store.verify("x", text.as_bytes(), &sig).unwrap()).unwrap();
        let p = store.path(Slot::Active);
        let tampered =
            String::from_utf8(fs::read(&p).unwrap()).unwrap().replace("hostname = \"n1\"", "hostname = \"n2\"");
        fs::write(&p, tampered).unwrap();
        let err = store.load(Slot::Active).unwrap_err().to_string();
        assert!(err.contains("config.signed") && err.contains("does not match"), "{err}");
    }
}

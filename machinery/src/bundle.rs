//! The upgrade bundle (`.osb`): one file, read front to back, so a node can
//! check everything it can before it writes a byte and hash the payload as
//! it streams past.
//!
//! The manifest's `security_version` is the rollback floor: a node keeps
//! the highest security version it has committed and refuses any bundle
//! below it, whatever the client asks (`allow_downgrade` only allows an
//! older *version* at the same or a higher security version).
//!
//! ```text
//! "plinth-osb v1\n"           14 bytes, the magic
//! manifest length             4 bytes, big endian (at most 64 KiB)
//! manifest                    JSON (BundleManifest)
//! signature                   96 bytes: signing::sign(Purpose::Bundle, manifest)
//! parts                       each part's bytes, in the manifest's order
//! ```
//!
//! The signature covers the manifest, which holds the sha256 and size of
//! every part: a node verifies the signature first, refuses a bundle for
//! another board or an older version, then hashes each part as it writes
//! it and reads it back before it arms the slot.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::signing::{self, Purpose, SigningKey, VerifyingKey};

pub const MAGIC: &[u8] = b"plinth-osb v1\n";
/// The largest manifest a node accepts.
pub const MAX_MANIFEST: usize = 64 * 1024;
/// Part names.
pub const PART_UKI: &str = "uki";
pub const PART_ROOT: &str = "root";
/// Raspberry Pi layout: the whole `BOOT-A` FAT partition image (firmware,
/// `config.txt`, kernel, initramfs, DTBs, `cmdline.txt` naming slot a); a
/// node writes it into the target slot's boot partition and sets the slot
/// in its `cmdline.txt`. Such a bundle carries `boot` instead of `uki`.
pub const PART_BOOT: &str = "boot";

/// What a bundle carries, signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    /// The Plinth version inside (what `version` reports once booted).
    pub version: String,
    /// The board it was built for (`board-configs/<board>.toml`).
    pub board: String,
    pub arch: String,
    pub kernel_version: String,
    /// Raised by a release that fixes a vulnerability: a node that
    /// committed security version N never installs or boots one below N.
    /// Absent (0) in bundles made before it existed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub security_version: u64,
    pub parts: Vec<BundlePart>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundlePart {
    pub name: String,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

impl BundleManifest {
    pub fn part(&self, name: &str) -> Option<&BundlePart> {
        self.parts.iter().find(|p| p.name == name)
    }

    /// Bytes after the header.
    pub fn payload_size(&self) -> u64 {
        self.parts.iter().map(|p| p.size).sum()
    }

    /// The part carrying the boot files: [`PART_UKI`] (UEFI) or
    /// [`PART_BOOT`] (Raspberry Pi), exactly one of them.
    pub fn boot_part(&self) -> Result<&'static str, BundleError> {
        match (self.part(PART_UKI), self.part(PART_BOOT)) {
            (Some(_), None) => Ok(PART_UKI),
            (None, Some(_)) => Ok(PART_BOOT),
            (None, None) => Err(BundleError::NoBootPart),
            (Some(_), Some(_)) => Err(BundleError::TwoBootParts),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleError {
    #[error("not a Plinth upgrade bundle (it does not start with {:?})", String::from_utf8_lossy(MAGIC).trim_end())]
    Magic,
    #[error("the bundle's manifest is {0} bytes, more than the {MAX_MANIFEST} a node accepts")]
    ManifestTooBig(usize),
    #[error("the bundle's manifest is not valid: {0}")]
    Manifest(String),
    #[error("the bundle's signature does not verify: {0}")]
    Signature(#[from] signing::VerifyError),
    #[error("the bundle is for board {bundle}, this node is a {node}")]
    WrongBoard { bundle: String, node: String },
    #[error(
        "the bundle holds version {bundle}, older than the running {running}: pass --allow-downgrade to install it"
    )]
    Downgrade { bundle: String, running: String },
    #[error(
        "the bundle holds version {version} at security version {security}, below this node's security floor {floor} \
         (the highest security version it has committed): it is refused even with --allow-downgrade"
    )]
    BelowFloor { version: String, security: u64, floor: u64 },
    #[error("the bundle has no {0:?} part")]
    MissingPart(&'static str),
    #[error("the bundle has no {PART_UKI:?} or {PART_BOOT:?} part (its boot files)")]
    NoBootPart,
    #[error("the bundle carries both a {PART_UKI:?} and a {PART_BOOT:?} part: it is for one boot method")]
    TwoBootParts,
    #[error("the bundle's boot files are a {bundle:?} part, this node boots from a {node:?} part (another board?)")]
    BootMethod { bundle: &'static str, node: &'static str },
    #[error("part {name}: {size} bytes do not fit its {room}-byte place on this node")]
    TooBig { name: String, size: u64, room: u64 },
    #[error("part {name}: sha256 is {found}, the signed manifest says {expected} (corrupted in transit?)")]
    Hash { name: String, expected: String, found: String },
    #[error("the bundle ended after {got} of {expected} payload bytes (truncated)")]
    Truncated { got: u64, expected: u64 },
    #[error("the bundle has {0} bytes after its last part")]
    Trailing(u64),
}

/// The signed header at the front of a bundle.
#[derive(Debug, Clone)]
pub struct Header {
    pub manifest: BundleManifest,
    pub manifest_bytes: Vec<u8>,
    pub signature: Vec<u8>,
}

impl Header {
    /// The header's encoding; the parts follow it.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&(self.manifest_bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.manifest_bytes);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Signs a manifest.
    pub fn sign(manifest: BundleManifest, key: &SigningKey) -> Header {
        let manifest_bytes = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
        let signature = signing::sign(Purpose::Bundle, key, &manifest_bytes);
        Header { manifest, manifest_bytes, signature }
    }

    /// Parses a header from the front of `bytes`: `Ok(None)` while more bytes
    /// are needed, else the header and how many bytes it took. The manifest
    /// is parsed only once its signature verifies against `trusted`.
    pub fn parse(bytes: &[u8], trusted: &VerifyingKey) -> Result<Option<(Header, usize)>, BundleError> {
        let have = bytes.len().min(MAGIC.len());
        if bytes[..have] != MAGIC[..have] {
            return Err(BundleError::Magic);
        }
        let Some(len) = bytes.get(MAGIC.len()..MAGIC.len() + 4) else { return Ok(None) };
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if len > MAX_MANIFEST {
            return Err(BundleError::ManifestTooBig(len));
        }
        let start = MAGIC.len() + 4;
        let end = start + len + signing::DETACHED_LEN;
        let Some(rest) = bytes.get(start..end) else { return Ok(None) };
        let (manifest_bytes, signature) = rest.split_at(len);
        // image-builder never writes an empty signature: zeros mean unsigned.
        if signature.iter().all(|&b| b == 0) {
            return Err(BundleError::Signature(signing::VerifyError::Unsigned));
        }
        signing::verify(Purpose::Bundle, trusted, manifest_bytes, signature)?;
        let manifest: BundleManifest =
            serde_json::from_slice(manifest_bytes).map_err(|e| BundleError::Manifest(e.to_string()))?;
        if manifest.part(PART_ROOT).is_none() {
            return Err(BundleError::MissingPart(PART_ROOT));
        }
        manifest.boot_part()?;
        let header = Header { manifest, manifest_bytes: manifest_bytes.to_vec(), signature: signature.to_vec() };
        Ok(Some((header, end)))
    }
}

/// The identity of a bundle (sha256 of its manifest bytes, hex) and the
/// length of its header, read without verifying anything: what a client
/// needs to ask a node how much of the bundle it already holds.
pub fn identify(bytes: &[u8]) -> Option<(String, usize)> {
    if !bytes.starts_with(MAGIC) {
        return None;
    }
    let len = bytes.get(MAGIC.len()..MAGIC.len() + 4)?;
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let start = MAGIC.len() + 4;
    let manifest = bytes.get(start..start + len.min(MAX_MANIFEST))?;
    let id = hex(&<sha2::Sha256 as sha2::Digest>::digest(manifest));
    Some((id, start + len + signing::DETACHED_LEN))
}

/// The manifest at the front of `bytes`, parsed without verifying its
/// signature: what a client needs to ask a node which parts it already
/// holds (the node verifies the signed one before it uses any of it).
pub fn unverified_manifest(bytes: &[u8]) -> Option<BundleManifest> {
    let (_, header_len) = identify(bytes)?;
    let start = MAGIC.len() + 4;
    serde_json::from_slice(bytes.get(start..header_len - signing::DETACHED_LEN)?).ok()
}

impl BundleManifest {
    /// Whether this node may install the bundle: same board, a security
    /// version at or above the node's `floor` (always), and not older than
    /// what runs unless a downgrade is asked for.
    pub fn check_for(&self, board: &str, running: &str, floor: u64, allow_downgrade: bool) -> Result<(), BundleError> {
        if self.board != board {
            return Err(BundleError::WrongBoard { bundle: self.board.clone(), node: board.to_string() });
        }
        if self.security_version < floor {
            return Err(BundleError::BelowFloor {
                version: self.version.clone(),
                security: self.security_version,
                floor,
            });
        }
        if !allow_downgrade && compare_versions(&self.version, running) == Ordering::Less {
            return Err(BundleError::Downgrade { bundle: self.version.clone(), running: running.to_string() });
        }
        Ok(())
    }
}

/// Compares dotted versions number by number (`0.10.0` > `0.9.1`); a part
/// that is not a number compares as text, and a pre-release suffix
/// (`1.2.0-rc1`) sorts before the release.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let split = |v: &str| -> (Vec<String>, Option<String>) {
        let (main, pre) = match v.split_once('-') {
            Some((m, p)) => (m.to_string(), Some(p.to_string())),
            None => (v.to_string(), None),
        };
        (main.split('.').map(str::to_string).collect(), pre)
    };
    let ((am, ap), (bm, bp)) = (split(a), split(b));
    for i in 0..am.len().max(bm.len()) {
        let (x, y) = (am.get(i).map_or("0", String::as_str), bm.get(i).map_or("0", String::as_str));
        let o = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => x.cmp(y),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    match (ap, bp) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => x.cmp(&y),
    }
}

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> BundleManifest {
        BundleManifest {
            version: "0.2.0".into(),
            board: "qemu-x86_64".into(),
            arch: "amd64".into(),
            kernel_version: "6.1".into(),
            security_version: 2,
            parts: vec![
                BundlePart { name: PART_UKI.into(), size: 3, sha256: "00".into() },
                BundlePart { name: PART_ROOT.into(), size: 5, sha256: "11".into() },
            ],
        }
    }

    #[test]
    fn header_round_trips_and_needs_whole_bytes() {
        let key = signing::generate_signing_key().unwrap();
        let header = Header::sign(manifest(), &key);
        let mut bytes = header.encode();
        let len = bytes.len();
        for cut in [0, 5, MAGIC.len() + 2, len - 1] {
            assert!(Header::parse(&bytes[..cut], &key.verifying_key()).unwrap().is_none(), "cut at {cut}");
        }
        bytes.extend_from_slice(b"payload");
        let (parsed, used) = Header::parse(&bytes, &key.verifying_key()).unwrap().unwrap();
        assert_eq!(used, len);
        assert_eq!(parsed.manifest, manifest());
        assert_eq!(parsed.manifest.payload_size(), 8);
        let (id, header_len) = identify(&bytes).unwrap();
        assert_eq!(header_len, len);
        assert_eq!(id, hex(&<sha2::Sha256 as sha2::Digest>::digest(&parsed.manifest_bytes)));
        assert_eq!(identify(b"PK\x03\x04"), None);
        assert_eq!(unverified_manifest(&bytes), Some(manifest()));
        assert_eq!(unverified_manifest(&bytes[..MAGIC.len() + 10]), None, "a cut manifest");
    }

    #[test]
    fn bad_headers_are_refused_before_the_manifest_is_read() {
        let key = signing::generate_signing_key().unwrap();
        let other = signing::generate_signing_key().unwrap();
        let trusted = key.verifying_key();
        assert_eq!(Header::parse(b"PK\x03\x04", &trusted).unwrap_err(), BundleError::Magic);
        // Signed by someone else.
        let foreign = Header::sign(manifest(), &other).encode();
        assert!(matches!(Header::parse(&foreign, &trusted), Err(BundleError::Signature(_))));
        // One manifest byte changed after signing.
        let mut tampered = Header::sign(manifest(), &key).encode();
        tampered[MAGIC.len() + 10] ^= 1;
        assert!(matches!(Header::parse(&tampered, &trusted), Err(BundleError::Signature(_))));
        // No signature at all.
        let mut unsigned = Header::sign(manifest(), &key);
        unsigned.signature = vec![0; signing::DETACHED_LEN];
        assert!(matches!(Header::parse(&unsigned.encode(), &trusted), Err(BundleError::Signature(_))));
        // A huge length is refused without waiting for the bytes.
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(Header::parse(&huge, &trusted).unwrap_err(), BundleError::ManifestTooBig(u32::MAX as usize));
        // Signed, but without a root part.
        let mut m = manifest();
        m.parts.pop();
        assert_eq!(
            Header::parse(&Header::sign(m, &key).encode(), &trusted).unwrap_err(),
            BundleError::MissingPart(PART_ROOT)
        );
    }

    #[test]
    fn a_bundle_carries_one_boot_part() {
        let key = signing::generate_signing_key().unwrap();
        let trusted = key.verifying_key();
        let parse = |m: BundleManifest| Header::parse(&Header::sign(m, &key).encode(), &trusted).map(|h| h.is_some());
        assert_eq!(manifest().boot_part(), Ok(PART_UKI));
        // A Pi bundle: its boot partition instead of a UKI.
        let mut pi = manifest();
        pi.parts[0].name = PART_BOOT.into();
        assert_eq!(pi.boot_part(), Ok(PART_BOOT));
        assert_eq!(parse(pi.clone()), Ok(true));
        let mut both = pi.clone();
        both.parts.push(BundlePart { name: PART_UKI.into(), size: 1, sha256: "22".into() });
        assert_eq!(parse(both), Err(BundleError::TwoBootParts));
        let mut neither = pi;
        neither.parts.remove(0);
        let e = parse(neither).unwrap_err();
        assert_eq!(e.to_string(), "the bundle has no \"uki\" or \"boot\" part (its boot files)");
    }

    #[test]
    fn board_and_downgrade_checks() {
        let m = manifest();
        assert!(m.check_for("qemu-x86_64", "0.1.0", 0, false).is_ok());
        assert!(m.check_for("qemu-x86_64", "0.2.0", 2, false).is_ok(), "the same version reinstalls");
        assert!(matches!(m.check_for("rpi4", "0.1.0", 0, false), Err(BundleError::WrongBoard { .. })));
        assert!(matches!(m.check_for("qemu-x86_64", "0.10.0", 0, false), Err(BundleError::Downgrade { .. })));
        assert!(m.check_for("qemu-x86_64", "0.10.0", 2, true).is_ok(), "an older version at the floor");
    }

    #[test]
    fn below_the_security_floor_is_refused_whatever_the_client_asks() {
        let m = manifest();
        for allow_downgrade in [false, true] {
            let e = m.check_for("qemu-x86_64", "0.1.0", 3, allow_downgrade).unwrap_err();
            assert_eq!(e, BundleError::BelowFloor { version: "0.2.0".into(), security: 2, floor: 3 });
            let text = e.to_string();
            assert!(text.contains("security version 2") && text.contains("security floor 3"), "{text}");
        }
    }

    #[test]
    fn bundles_without_a_security_version_still_parse_and_stay_readable_by_older_nodes() {
        let key = signing::generate_signing_key().unwrap();
        let mut m = manifest();
        m.security_version = 0;
        let header = Header::sign(m.clone(), &key);
        assert!(!String::from_utf8_lossy(&header.manifest_bytes).contains("security_version"));
        let (parsed, _) = Header::parse(&header.encode(), &key.verifying_key()).unwrap().unwrap();
        assert_eq!(parsed.manifest.security_version, 0);
    }

    #[test]
    fn versions_compare_by_number() {
        assert_eq!(compare_versions("0.10.0", "0.9.1"), Ordering::Greater);
        assert_eq!(compare_versions("1.2", "1.2.0"), Ordering::Equal);
        assert_eq!(compare_versions("1.2.0-rc1", "1.2.0"), Ordering::Less);
        assert_eq!(compare_versions("1.2.0-rc2", "1.2.0-rc1"), Ordering::Greater);
        assert_eq!(compare_versions("2.0.0", "10.0.0"), Ordering::Less);
    }
}

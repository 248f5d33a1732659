//! ed25519 signatures over configs (and, later, upgrade bundles).
//!
//! A signature never covers raw bytes directly: it covers
//! `context || sha256(payload)`, where the context names what is signed
//! (`Purpose`), so a signature made for one kind of document can never be
//! replayed as another.
//!
//! Key files are standard PEM: the private key as PKCS#8 (`PRIVATE KEY`),
//! the public key as SubjectPublicKeyInfo (`PUBLIC KEY`), the same files
//! `openssl genpkey -algorithm ed25519` writes.
//!
//! A **detached signature** is 96 bytes: the 32-byte SHA-256 fingerprint of
//! the signer's public key, then the 64-byte ed25519 signature. Carrying the
//! fingerprint lets a node tell "signed by another key" from "tampered".
//!
//! A **signed envelope** (how a node stores its config, and what
//! `osctl sign` writes) is a short text header, a blank line, then the
//! payload byte for byte:
//!
//! ```text
//! plinth-signed v1
//! key: SHA256:<base64 fingerprint>
//! signature: <base64 of the 64-byte signature>
//!
//! <payload>
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::Signer as _;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use sha2::{Digest as _, Sha256};

pub use ed25519_dalek::{SigningKey, VerifyingKey};

/// What a signature is for; part of the signed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Config,
    Bundle,
}

impl Purpose {
    fn context(self) -> &'static [u8] {
        match self {
            Purpose::Config => b"plinth machine config v1\0",
            Purpose::Bundle => b"plinth upgrade bundle v1\0",
        }
    }
}

/// Length of a detached signature: key fingerprint + ed25519 signature.
pub const DETACHED_LEN: usize = 32 + 64;
const ENVELOPE_MAGIC: &str = "plinth-signed v1";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not an ed25519 private key in PKCS#8 PEM form (expected \"-----BEGIN PRIVATE KEY-----\"): {0}")]
    Private(String),
    #[error("not an ed25519 public key in PEM form (expected \"-----BEGIN PUBLIC KEY-----\"): {0}")]
    Public(String),
    #[error("cannot encode key: {0}")]
    Encode(String),
    #[error("the system random source failed: {0}")]
    Random(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error(
        "the config is not signed (no signature was sent); sign it with `osctl apply-config --key` or `osctl sign`"
    )]
    Unsigned,
    #[error("the signature is malformed: expected {DETACHED_LEN} bytes, got {0}")]
    Malformed(usize),
    #[error("signed by key {signer}, but this node only trusts key {trusted}")]
    UnknownKey { signer: String, trusted: String },
    #[error("the signature does not match the content: it was changed after signing, or the signature is corrupt")]
    BadSignature,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("not a signed envelope: the first line must be \"{ENVELOPE_MAGIC}\"")]
    Magic,
    #[error("signed envelope header: {0}")]
    Header(String),
}

/// Generates a new signing key from the system's random source.
pub fn generate_signing_key() -> Result<SigningKey, KeyError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(SigningKey::from_bytes(&seed))
}

pub fn signing_key_from_pem(pem: &str) -> Result<SigningKey, KeyError> {
    SigningKey::from_pkcs8_pem(pem).map_err(|e| KeyError::Private(e.to_string()))
}

pub fn signing_key_to_pem(key: &SigningKey) -> Result<String, KeyError> {
    key.to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map(|s| s.to_string())
        .map_err(|e| KeyError::Encode(e.to_string()))
}

pub fn verifying_key_from_pem(pem: &str) -> Result<VerifyingKey, KeyError> {
    VerifyingKey::from_public_key_pem(pem).map_err(|e| KeyError::Public(e.to_string()))
}

pub fn verifying_key_to_pem(key: &VerifyingKey) -> Result<String, KeyError> {
    key.to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| KeyError::Encode(e.to_string()))
}

fn fingerprint_bytes(key: &VerifyingKey) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn format_fingerprint(fp: &[u8]) -> String {
    format!("SHA256:{}", B64.encode(fp))
}

/// The key's fingerprint as people see it: `SHA256:<base64>`.
pub fn key_id(key: &VerifyingKey) -> String {
    format_fingerprint(&fingerprint_bytes(key))
}

fn message(purpose: Purpose, payload: &[u8]) -> Vec<u8> {
    let mut m = purpose.context().to_vec();
    m.extend_from_slice(&Sha256::digest(payload));
    m
}

/// Signs `payload`; returns a detached signature of [`DETACHED_LEN`] bytes.
pub fn sign(purpose: Purpose, key: &SigningKey, payload: &[u8]) -> Vec<u8> {
    let mut out = fingerprint_bytes(&key.verifying_key()).to_vec();
    out.extend_from_slice(&key.sign(&message(purpose, payload)).to_bytes());
    out
}

/// Verifies a detached signature made by [`sign`] against the trusted key.
pub fn verify(purpose: Purpose, trusted: &VerifyingKey, payload: &[u8], detached: &[u8]) -> Result<(), VerifyError> {
    if detached.is_empty() {
        return Err(VerifyError::Unsigned);
    }
    if detached.len() != DETACHED_LEN {
        return Err(VerifyError::Malformed(detached.len()));
    }
    let (fp, sig) = detached.split_at(32);
    if fp != fingerprint_bytes(trusted) {
        return Err(VerifyError::UnknownKey { signer: format_fingerprint(fp), trusted: key_id(trusted) });
    }
    let sig = ed25519_dalek::Signature::from_slice(sig).map_err(|_| VerifyError::BadSignature)?;
    trusted.verify_strict(&message(purpose, payload), &sig).map_err(|_| VerifyError::BadSignature)
}

/// Wraps a payload and its detached signature into one envelope.
pub fn envelope_encode(payload: &[u8], detached: &[u8]) -> Vec<u8> {
    let (fp, sig) = detached.split_at(detached.len().min(32));
    let mut out =
        format!("{ENVELOPE_MAGIC}\nkey: {}\nsignature: {}\n\n", format_fingerprint(fp), B64.encode(sig)).into_bytes();
    out.extend_from_slice(payload);
    out
}

/// Splits an envelope into (payload, detached signature). Does not verify.
pub fn envelope_decode(bytes: &[u8]) -> Result<(Vec<u8>, Vec<u8>), EnvelopeError> {
    let sep = bytes
        .windows(2)
        .position(|w| w == b"\n\n")
        .ok_or_else(|| EnvelopeError::Header("no blank line ends the header".into()))?;
    let header = std::str::from_utf8(&bytes[..sep]).map_err(|_| EnvelopeError::Header("header is not UTF-8".into()))?;
    let mut lines = header.lines();
    if lines.next() != Some(ENVELOPE_MAGIC) {
        return Err(EnvelopeError::Magic);
    }
    let mut field = |name: &str| -> Result<Vec<u8>, EnvelopeError> {
        let line = lines.next().ok_or_else(|| EnvelopeError::Header(format!("missing \"{name}:\" line")))?;
        let value = line
            .strip_prefix(name)
            .and_then(|r| r.strip_prefix(": "))
            .ok_or_else(|| EnvelopeError::Header(format!("expected \"{name}: …\", found {line:?}")))?;
        let value = if name == "key" {
            value
                .strip_prefix("SHA256:")
                .ok_or_else(|| EnvelopeError::Header("key must be a fingerprint \"SHA256:…\"".into()))?
        } else {
            value
        };
        B64.decode(value).map_err(|e| EnvelopeError::Header(format!("{name}: not base64: {e}")))
    };
    let mut detached = field("key")?;
    detached.extend(field("signature")?);
    Ok((bytes[sep + 2..].to_vec(), detached))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn sign_then_verify() {
        let k = key(1);
        let sig = sign(Purpose::Config, &k, b"version = 1\n");
        assert_eq!(sig.len(), DETACHED_LEN);
        verify(Purpose::Config, &k.verifying_key(), b"version = 1\n", &sig).unwrap();
    }

    #[test]
    fn refuses_each_kind_of_bad_signature() {
        let k = key(1);
        let trusted = k.verifying_key();
        let sig = sign(Purpose::Config, &k, b"abc");
        assert_eq!(verify(Purpose::Config, &trusted, b"abc", &[]), Err(VerifyError::Unsigned));
        assert_eq!(verify(Purpose::Config, &trusted, b"abc", &sig[..10]), Err(VerifyError::Malformed(10)));
        assert_eq!(verify(Purpose::Config, &trusted, b"abd", &sig), Err(VerifyError::BadSignature));
        assert_eq!(verify(Purpose::Bundle, &trusted, b"abc", &sig), Err(VerifyError::BadSignature));
        let other = sign(Purpose::Config, &key(2), b"abc");
        assert!(matches!(verify(Purpose::Config, &trusted, b"abc", &other), Err(VerifyError::UnknownKey { .. })));
        let mut flipped = sig.clone();
        flipped[40] ^= 1;
        assert_eq!(verify(Purpose::Config, &trusted, b"abc", &flipped), Err(VerifyError::BadSignature));
    }

    #[test]
    fn pem_round_trip() {
        let k = generate_signing_key().unwrap();
        let pem = signing_key_to_pem(&k).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_eq!(signing_key_from_pem(&pem).unwrap().to_bytes(), k.to_bytes());
        let pubpem = verifying_key_to_pem(&k.verifying_key()).unwrap();
        assert!(pubpem.starts_with("-----BEGIN PUBLIC KEY-----"));
        assert_eq!(verifying_key_from_pem(&pubpem).unwrap(), k.verifying_key());
        assert!(matches!(verifying_key_from_pem(&pem), Err(KeyError::Public(_))));
        assert!(matches!(signing_key_from_pem(&pubpem), Err(KeyError::Private(_))));
    }

    #[test]
    fn envelope_round_trip_keeps_payload_bytes() {
        let k = key(3);
        let payload = b"version = 1\n\n# two blank lines above\r\n";
        let sig = sign(Purpose::Config, &k, payload);
        let env = envelope_encode(payload, &sig);
        let (p, s) = envelope_decode(&env).unwrap();
        assert_eq!(p, payload);
        assert_eq!(s, sig);
        assert_eq!(envelope_decode(b"hello\n\nx"), Err(EnvelopeError::Magic));
        assert!(matches!(envelope_decode(b"plinth-signed v1\nkey: nope\n\n"), Err(EnvelopeError::Header(_))));
    }

    proptest::proptest! {
        #[test]
        fn envelope_decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = envelope_decode(&bytes);
        }

        #[test]
        fn any_single_bit_flip_is_refused(payload in proptest::collection::vec(proptest::num::u8::ANY, 1..256), bit in 0usize..2048) {
            let k = key(7);
            let sig = sign(Purpose::Config, &k, &payload);
            let mut tampered = payload.clone();
            let i = bit % (tampered.len() * 8);
            tampered[i / 8] ^= 1 << (i % 8);
            proptest::prop_assert_eq!(verify(Purpose::Config, &k.verifying_key(), &tampered, &sig), Err(VerifyError::BadSignature));
        }
    }
}

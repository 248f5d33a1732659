//! The API server's certificates: the cluster CA (generated into the data
//! directory, or given), the serving certificate, client certificates that
//! carry a Kubernetes user (CN) and groups (O), and kubeconfig files.
//!
//! machinery's `pki` ties a client certificate's O to a machine-API role;
//! Kubernetes needs arbitrary groups, hence this small module over rcgen.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;

/// The group whose members may do everything.
pub const ADMIN_GROUP: &str = "system:masters";
/// The group whose members may only get, list and watch.
pub const READ_ONLY_GROUP: &str = "plinth:read-only";

/// The cluster CA's lifetime when Plinth generates it (docs/trust.md).
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// The lifetime of client certificates issued in process (kubeconfigs,
/// the API server's kubelet client) and the default of serving
/// certificates, which are renewed at 70–90 % of it.
pub const LEAF_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{path}: not a usable private key: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("cannot issue the certificate: {0}")]
    Issue(#[from] rcgen::Error),
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> PkiError + 'a {
    move |source| PkiError::Io { op, path: path.to_path_buf(), source }
}

fn dn(cn: &str, orgs: &[&str]) -> rcgen::DistinguishedName {
    let mut d = rcgen::DistinguishedName::new();
    d.push(DnType::CommonName, cn);
    for o in orgs {
        d.push(DnType::OrganizationName, *o);
    }
    d
}

/// Backdated by five minutes against clock skew (upstream's), or a tenth
/// of a short lifetime, so that 70–90 % of the validity still lies ahead.
pub fn backdate(lifetime: Duration) -> Duration {
    (lifetime / 10).min(Duration::from_secs(300))
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - backdate(lifetime);
    params.not_after = now + lifetime;
}

/// A new self-signed CA valid for [`CA_LIFETIME`].
pub fn generate_ca(name: &str) -> Result<CertKey, PkiError> {
    generate_ca_lasting(name, CA_LIFETIME)
}

/// A new self-signed CA valid for `lifetime`.
pub fn generate_ca_lasting(name: &str, lifetime: Duration) -> Result<CertKey, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(name, &[]);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut params, lifetime);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(CertKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

fn leaf(ca: &CertKey, mut params: CertificateParams, lifetime: Duration) -> Result<CertKey, PkiError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, lifetime);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(CertKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// A client certificate for user `user` in `group` (rcgen writes one O),
/// valid for [`LEAF_LIFETIME`].
pub fn issue_client(ca: &CertKey, user: &str, group: &str) -> Result<CertKey, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(user, &[group]);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    leaf(ca, params, LEAF_LIFETIME)
}

/// The API server's serving certificate for `names` (DNS names or IPs), valid for `lifetime`.
pub fn issue_server(ca: &CertKey, names: &[String], lifetime: Duration) -> Result<CertKey, PkiError> {
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name = dn("kube-apiserver", &[]);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf(ca, params, lifetime)
}

/// A self-signed serving certificate for `names`, valid for `lifetime`: a
/// kubelet's until its CertificateSigningRequest is signed.
pub fn self_signed_server(names: &[String], lifetime: Duration) -> Result<CertKey, PkiError> {
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name = dn("kubelet", &[]);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut params, lifetime);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(CertKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Reads the CA from `cert`/`key`, or generates one there if neither exists.
pub fn load_or_generate_ca(cert: &Path, key: &Path) -> Result<CertKey, PkiError> {
    if !cert.exists() && !key.exists() {
        let ca = generate_ca("plinth-cluster-ca")?;
        write_private(cert, &ca.cert_pem)?;
        write_private(key, &ca.key_pem)?;
        return Ok(ca);
    }
    load_ca(cert, key)
}

/// Reads the ServiceAccount token signing key (an ECDSA P-256 key, PEM
/// PKCS#8) from `path`, or generates one there (0600) if it does not exist.
/// Returns the PKCS#8 DER.
pub fn load_or_generate_signing_key(path: &Path) -> Result<Vec<u8>, PkiError> {
    let bad = |reason: String| PkiError::Key { path: path.to_path_buf(), reason };
    if !path.exists() {
        let key = KeyPair::generate()?;
        write_private(path, &key.serialize_pem())?;
        return Ok(key.serialize_der());
    }
    let pem = std::fs::read_to_string(path).map_err(io("read", path))?;
    let key = KeyPair::from_pem(&pem).map_err(|e| bad(e.to_string()))?;
    if key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
        return Err(bad("not an ECDSA P-256 key (ServiceAccount tokens are signed ES256)".into()));
    }
    Ok(key.serialize_der())
}

/// Reads a CA's certificate and key (PEM).
pub fn load_ca(cert: &Path, key: &Path) -> Result<CertKey, PkiError> {
    let cert_pem = std::fs::read_to_string(cert).map_err(io("read", cert))?;
    let key_pem = std::fs::read_to_string(key).map_err(io("read", key))?;
    KeyPair::from_pem(&key_pem).map_err(|e| PkiError::Key { path: key.to_path_buf(), reason: e.to_string() })?;
    Ok(CertKey { cert_pem, key_pem })
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &Path, text: &str) -> Result<(), PkiError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    f.write_all(text.as_bytes()).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("sync", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("rename", path))
}

/// A kubeconfig for `server` with the client certificate embedded.
pub fn kubeconfig(server: &str, ca: &CertKey, client: &CertKey, user: &str) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: plinth\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
         users:\n- name: {user}\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\n\
         contexts:\n- name: {user}@plinth\n  context:\n    cluster: plinth\n    user: {user}\n    namespace: default\n\
         current-context: {user}@plinth\npreferences: {{}}\n",
        ca = b64(&ca.cert_pem),
        cert = b64(&client.cert_pem),
        key = b64(&client.key_pem),
    )
}

/// The user (CN) and groups (O) of a DER client certificate.
pub fn user_of_cert(der: &[u8]) -> Option<(String, Vec<String>)> {
    use x509_parser::prelude::{FromDer as _, X509Certificate};
    let (_, c) = X509Certificate::from_der(der).ok()?;
    let subject = c.subject();
    let cn = subject.iter_common_name().next()?.as_str().ok()?.to_string();
    let groups = subject.iter_organization().filter_map(|a| a.as_str().ok().map(str::to_string)).collect();
    Some((cn, groups))
}

/// kubeadm's `--discovery-token-ca-cert-hash`: `sha256:` and the hex
/// SHA-256 of a CA certificate's SubjectPublicKeyInfo (PEM in).
pub fn ca_pin(cert_pem: &[u8]) -> Result<String, String> {
    use sha2::Digest as _;
    use x509_parser::prelude::{FromDer as _, X509Certificate};
    let (_, block) = x509_parser::pem::parse_x509_pem(cert_pem).map_err(|e| format!("not a PEM certificate: {e}"))?;
    let (_, c) = X509Certificate::from_der(&block.contents).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let digest = sha2::Sha256::digest(c.tbs_certificate.subject_pki.raw);
    Ok(format!("sha256:{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

/// A certificate's validity, Unix seconds (notBefore, notAfter).
pub fn validity_of(cert_pem: &[u8]) -> Option<(i64, i64)> {
    use x509_parser::prelude::{FromDer as _, X509Certificate};
    let (_, block) = x509_parser::pem::parse_x509_pem(cert_pem).ok()?;
    let (_, c) = X509Certificate::from_der(&block.contents).ok()?;
    Some((c.validity().not_before.timestamp(), c.validity().not_after.timestamp()))
}

/// Unix seconds as RFC 3339 (`2026-01-02T03:04:05Z`).
pub fn format_unix(t: i64) -> String {
    orchestrator_apimachinery::registry::format_time(
        OffsetDateTime::from_unix_timestamp(t).unwrap_or(OffsetDateTime::UNIX_EPOCH),
    )
}

/// A new key and a PKCS#10 request for `user` in `group` naming `sans`
/// (DNS names or IPs; PEM: request, key), as a kubelet asks for its client
/// certificate (no names) or its serving certificate.
pub fn request(user: &str, group: &str, sans: &[String]) -> Result<(String, String), PkiError> {
    let mut params = CertificateParams::new(sans.to_vec())?;
    params.distinguished_name = dn(user, &[group]);
    let key = KeyPair::generate()?;
    let csr = params.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject as _;

    #[test]
    fn client_certificate_carries_user_and_groups() {
        let ca = generate_ca("test").unwrap();
        let c = issue_client(&ca, "alice", ADMIN_GROUP).unwrap();
        let der = rustls::pki_types::CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).unwrap();
        assert_eq!(user_of_cert(&der), Some(("alice".into(), vec![ADMIN_GROUP.into()])));
        let cfg = kubeconfig("https://127.0.0.1:6443", &ca, &c, "alice");
        assert!(cfg.contains("current-context: alice@plinth"));
    }

    #[test]
    fn ca_is_generated_once_then_reused() {
        let d = tempfile::tempdir().unwrap();
        let (c, k) = (d.path().join("ca.crt"), d.path().join("ca.key"));
        let a = load_or_generate_ca(&c, &k).unwrap();
        let b = load_or_generate_ca(&c, &k).unwrap();
        assert_eq!(a.cert_pem, b.cert_pem);
    }

    #[test]
    fn pins_and_requests() {
        let ca = generate_ca("test").unwrap();
        let pin = ca_pin(ca.cert_pem.as_bytes()).unwrap();
        assert!(pin.starts_with("sha256:") && pin.len() == 7 + 64, "{pin}");
        assert_eq!(ca_pin(ca.cert_pem.as_bytes()).unwrap(), pin);
        assert_ne!(ca_pin(generate_ca("test").unwrap().cert_pem.as_bytes()).unwrap(), pin);
        assert!(ca_pin(b"junk").is_err());
        let (before, after) = validity_of(ca.cert_pem.as_bytes()).unwrap();
        assert!(after - before > 9 * 365 * 24 * 3600);
        let (csr, key) = request("system:node:n1", "system:nodes", &[]).unwrap();
        assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----") && key.contains("PRIVATE KEY"));
    }
}

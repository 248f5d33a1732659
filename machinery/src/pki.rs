//! X.509 for the machine API: the cluster CA, client certificates that
//! carry a role, and apid's serving certificates. Pure computation (the only
//! outside input is the system's random source for keys).
//!
//! Keys are ECDSA P-256: every TLS stack, kubectl included, speaks it.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use crate::roles::Role;

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("not a PEM certificate (expected \"-----BEGIN CERTIFICATE-----\")")]
    NotPem,
    #[error("the certificate cannot be parsed: {0}")]
    Parse(String),
    #[error("the certificate is not a CA (its basic constraints do not allow issuing)")]
    NotCa,
    #[error("not a PEM private key, or not one this node supports (ECDSA P-256/P-384, ed25519, RSA): {0}")]
    Key(String),
    #[error("cannot issue the certificate: {0}")]
    Issue(String),
    #[error("the private key is not the certificate's: it belongs to another key pair")]
    KeyMismatch,
}

fn issue_err(e: rcgen::Error) -> PkiError {
    PkiError::Issue(e.to_string())
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = OffsetDateTime::now_utc();
    // A little slack for clocks that disagree.
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + lifetime;
}

/// Ten years: the lifetime of a CA made by `osctl gen keys`.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// One year: client and serving certificates.
pub const LEAF_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

pub fn generate_ca(name: &str) -> Result<CertKey, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.distinguished_name.push(DnType::OrganizationName, "plinth");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut params, CA_LIFETIME);
    let key = KeyPair::generate().map_err(issue_err)?;
    let cert = params.self_signed(&key).map_err(issue_err)?;
    Ok(CertKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// A leaf's validity starts at its CA's: a node without a real-time clock
/// keeps its clock at least at the notBefore of the CA it trusts, so a
/// certificate issued later is never "not valid yet" there (the CA vouches
/// for it from then on anyway).
fn leaf(ca: &CertKey, mut params: CertificateParams, lifetime: Duration) -> Result<CertKey, PkiError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(|e| PkiError::Key(e.to_string()))?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(issue_err)?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, lifetime);
    let ca_start = OffsetDateTime::from_unix_timestamp(cert_info(&ca.cert_pem)?.not_before)
        .map_err(|e| PkiError::Parse(e.to_string()))?;
    params.not_before = params.not_before.min(ca_start);
    let key = KeyPair::generate().map_err(issue_err)?;
    let cert = params.signed_by(&key, &issuer).map_err(issue_err)?;
    Ok(CertKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// A client certificate for the machine API: CN = who, O = the role.
pub fn issue_client(ca: &CertKey, who: &str, role: Role, lifetime: Duration) -> Result<CertKey, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, who);
    params.distinguished_name.push(DnType::OrganizationName, role.organization());
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    leaf(ca, params, lifetime)
}

/// A serving certificate for a node, valid for `names` (DNS names or IPs) and `lifetime` ([`LEAF_LIFETIME`] unless it is renewed while it serves, as apid's).
pub fn issue_server(ca: &CertKey, hostname: &str, names: &[String], lifetime: Duration) -> Result<CertKey, PkiError> {
    let mut params = CertificateParams::new(names.to_vec()).map_err(issue_err)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, hostname);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf(ca, params, lifetime)
}

/// An etcd member's certificate, valid for `names` (its addresses): it
/// serves clients and peers and is the client of its peers and of the
/// orchestrator's requests, so it carries both purposes.
pub fn issue_etcd_member(ca: &CertKey, name: &str, names: &[String], lifetime: Duration) -> Result<CertKey, PkiError> {
    let mut params = CertificateParams::new(names.to_vec()).map_err(issue_err)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.distinguished_name.push(DnType::OrganizationName, "plinth:etcd");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    leaf(ca, params, lifetime)
}

/// The throw-away certificate a node in maintenance mode serves.
pub fn self_signed_server(names: &[String]) -> Result<CertKey, PkiError> {
    let mut params = CertificateParams::new(names.to_vec()).map_err(issue_err)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "plinth maintenance");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut params, LEAF_LIFETIME);
    let key = KeyPair::generate().map_err(issue_err)?;
    let cert = params.self_signed(&key).map_err(issue_err)?;
    Ok(CertKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// The DER of the first certificate in a PEM text.
pub fn pem_to_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.trim_start().as_bytes()).map_err(|_| PkiError::NotPem)?;
    if p.label != "CERTIFICATE" {
        return Err(PkiError::NotPem);
    }
    Ok(p.contents)
}

/// What a person needs to know about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub common_name: String,
    pub organizations: Vec<String>,
    pub is_ca: bool,
    pub not_before: i64,
    pub not_after: i64,
}

impl CertInfo {
    /// Whether the certificate is valid at `unix` seconds.
    pub fn valid_at(&self, unix: i64) -> bool {
        self.not_before <= unix && unix <= self.not_after
    }
}

pub fn cert_info_der(der: &[u8]) -> Result<CertInfo, PkiError> {
    let (_, c) = X509Certificate::from_der(der).map_err(|e| PkiError::Parse(e.to_string()))?;
    let names = |attrs: Vec<&x509_parser::x509::AttributeTypeAndValue<'_>>| {
        attrs.into_iter().filter_map(|a| a.as_str().ok().map(str::to_string)).collect::<Vec<_>>()
    };
    let subject = c.subject();
    Ok(CertInfo {
        subject: subject.to_string(),
        issuer: c.issuer().to_string(),
        common_name: names(subject.iter_common_name().collect()).into_iter().next().unwrap_or_default(),
        organizations: names(subject.iter_organization().collect()),
        is_ca: c.is_ca(),
        not_before: c.validity().not_before.timestamp(),
        not_after: c.validity().not_after.timestamp(),
    })
}

pub fn cert_info(pem: &str) -> Result<CertInfo, PkiError> {
    cert_info_der(&pem_to_der(pem)?)
}

pub fn check_cert(pem: &str) -> Result<CertInfo, PkiError> {
    cert_info(pem)
}

pub fn check_ca_cert(pem: &str) -> Result<CertInfo, PkiError> {
    let info = cert_info(pem)?;
    if !info.is_ca {
        return Err(PkiError::NotCa);
    }
    Ok(info)
}

pub fn check_key(pem: &str) -> Result<(), PkiError> {
    KeyPair::from_pem(pem).map(|_| ()).map_err(|e| PkiError::Key(e.to_string()))
}

/// Checks that `key_pem` is the private key of the certificate `cert_pem`
/// (their public keys are the same): a CA key that does not sign for its
/// CA certificate would issue certificates nobody trusts.
pub fn check_key_matches(cert_pem: &str, key_pem: &str) -> Result<(), PkiError> {
    let der = pem_to_der(cert_pem)?;
    let (_, c) = X509Certificate::from_der(&der).map_err(|e| PkiError::Parse(e.to_string()))?;
    let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::Key(e.to_string()))?;
    // The public key's bits, without the algorithm's parameters (encoded
    // differently by different tools).
    if rcgen::PublicKeyData::der_bytes(&key) != &*c.public_key().subject_public_key.data {
        return Err(PkiError::KeyMismatch);
    }
    Ok(())
}

/// The CA pin a worker's kubelet checks the control plane's CA against
/// (kubeadm's `--discovery-token-ca-cert-hash`): `sha256:` and the hex
/// SHA-256 of the certificate's SubjectPublicKeyInfo.
pub fn ca_pin(cert_pem: &str) -> Result<String, PkiError> {
    use sha2::Digest as _;
    let der = pem_to_der(cert_pem)?;
    let (_, c) = X509Certificate::from_der(&der).map_err(|e| PkiError::Parse(e.to_string()))?;
    let digest = sha2::Sha256::digest(c.tbs_certificate.subject_pki.raw);
    Ok(format!("sha256:{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_pins_are_of_the_public_key() {
        let ca = generate_ca("t").unwrap();
        let pin = ca_pin(&ca.cert_pem).unwrap();
        assert!(pin.starts_with("sha256:") && pin.len() == 71, "{pin}");
        assert_ne!(pin, ca_pin(&generate_ca("t").unwrap().cert_pem).unwrap());
        assert!(ca_pin("junk").is_err());
    }

    #[test]
    fn ca_issues_client_with_role_and_server_with_names() {
        let ca = generate_ca("demo").unwrap();
        let ca_info = check_ca_cert(&ca.cert_pem).unwrap();
        assert!(ca_info.is_ca);
        let c = issue_client(&ca, "alice", Role::Reader, LEAF_LIFETIME).unwrap();
        let info = cert_info(&c.cert_pem).unwrap();
        assert_eq!(info.common_name, "alice");
        assert_eq!(info.issuer, ca_info.subject);
        assert_eq!(crate::roles::role_from_cert_der(&pem_to_der(&c.cert_pem).unwrap()).unwrap(), Role::Reader);
        assert!(matches!(check_ca_cert(&c.cert_pem), Err(PkiError::NotCa)));
        let s = issue_server(&ca, "n1", &["127.0.0.1".into(), "n1.lan".into()], LEAF_LIFETIME).unwrap();
        check_key(&s.key_pem).unwrap();
        assert!(!cert_info(&s.cert_pem).unwrap().is_ca);
        // Leaves start when their CA does (a clockless node's floor).
        assert_eq!(info.not_before, ca_info.not_before);
        assert_eq!(cert_info(&s.cert_pem).unwrap().not_before, ca_info.not_before);
        assert!(info.not_after < ca_info.not_after);
    }

    #[test]
    fn key_must_belong_to_its_certificate() {
        let ca = generate_ca("demo").unwrap();
        let other = generate_ca("other").unwrap();
        check_key_matches(&ca.cert_pem, &ca.key_pem).unwrap();
        assert!(matches!(check_key_matches(&ca.cert_pem, &other.key_pem), Err(PkiError::KeyMismatch)));
        let s = issue_server(&ca, "n1", &[], LEAF_LIFETIME).unwrap();
        check_key_matches(&s.cert_pem, &s.key_pem).unwrap();
        assert!(matches!(check_key_matches(&s.cert_pem, &ca.key_pem), Err(PkiError::KeyMismatch)));
    }

    #[test]
    fn garbage_is_refused() {
        assert!(matches!(cert_info("hello"), Err(PkiError::NotPem)));
        assert!(check_key("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").is_err());
    }
}

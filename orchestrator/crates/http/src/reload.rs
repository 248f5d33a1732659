//! Certificates renewed while in use: a rustls certificate resolver (for
//! a server, or a client's own certificate) whose certificate is swapped
//! in place (new handshakes get the new one, established connections keep
//! theirs), and
//! the loop that renews it at a random point between 70 % and 90 % of its
//! lifetime, as upstream's certificate manager does. The API server and
//! the kubelet serve through it; what issues the next certificate (the
//! cluster CA in process, or a CertificateSigningRequest) is the caller's.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::pki::{self, CertKey};

/// The certificate a server (or client) presents, replaceable while in use.
#[derive(Debug)]
pub struct RenewedCert {
    current: RwLock<(Arc<CertifiedKey>, CertKey)>,
}

fn certified(c: &CertKey) -> Result<Arc<CertifiedKey>, String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(c.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the serving certificate: {e}"))?;
    if chain.is_empty() {
        return Err("the serving certificate: no CERTIFICATE block".into());
    }
    let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).map_err(|e| format!("the serving key: {e}"))?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider).map(Arc::new).map_err(|e| format!("the serving key: {e}"))
}

impl RenewedCert {
    pub fn new(c: &CertKey) -> Result<Arc<RenewedCert>, String> {
        Ok(Arc::new(RenewedCert { current: RwLock::new((certified(c)?, c.clone())) }))
    }

    /// Serves `c` from the next handshake on.
    pub fn set(&self, c: &CertKey) -> Result<(), String> {
        let key = certified(c)?;
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = (key, c.clone());
        Ok(())
    }

    /// The certificate and key served now (PEM).
    pub fn current(&self) -> CertKey {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).1.clone()
    }
}

impl RenewedCert {
    fn key(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).0.clone()
    }
}

impl ResolvesServerCert for RenewedCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }
}

impl ResolvesClientCert for RenewedCert {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// When to renew a certificate valid from `not_before` to `not_after`:
/// at `fraction` (0.7–0.9, upstream's jitter) of its lifetime.
pub fn renewal_at(not_before: i64, not_after: i64, fraction: f64) -> i64 {
    let lifetime = (not_after - not_before).max(0) as f64;
    not_before + (lifetime * fraction.clamp(0.7, 0.9)) as i64
}

/// A random fraction between 0.7 and 0.9.
pub fn jitter() -> f64 {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    0.7 + 0.2 * f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX)
}

/// Now, Unix seconds.
pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// How long to wait before renewing the certificate `cert_pem` (none
/// when it cannot be read: renew now).
pub fn wait_before_renewal(cert_pem: &str) -> Duration {
    let Some((not_before, not_after)) = pki::validity_of(cert_pem.as_bytes()) else { return Duration::ZERO };
    Duration::from_secs(u64::try_from(renewal_at(not_before, not_after, jitter()) - now()).unwrap_or(0))
}

/// After a failed renewal, wait a tenth of the validity left (1–30 s).
pub fn retry_pause(cert_pem: &str) -> Duration {
    let left = pki::validity_of(cert_pem.as_bytes()).map_or(0, |(_, after)| after - now());
    Duration::from_secs(u64::try_from((left / 10).clamp(1, 30)).unwrap_or(1))
}

/// A certificate issued in process by `issue` (from a CA held here) now,
/// and renewed by it at 70–90 % of each one's lifetime (must be called in
/// a tokio runtime).
pub fn issued_here<F>(what: &str, issue: F) -> Result<Arc<RenewedCert>, String>
where
    F: Fn() -> Result<CertKey, String> + Send + 'static,
{
    let cert = RenewedCert::new(&issue()?)?;
    tokio::spawn(renew_forever(what.to_string(), cert.clone(), move || std::future::ready(issue())));
    Ok(cert)
}

/// Renews `served` forever: before each renewal point `issue` is asked for
/// a new certificate, which is presented from the next handshake on; a
/// failure is logged (`what`: whose certificate) and retried.
pub async fn renew_forever<F, Fut>(what: String, served: Arc<RenewedCert>, mut issue: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<CertKey, String>>,
{
    loop {
        let current = served.current().cert_pem;
        tokio::time::sleep(wait_before_renewal(&current)).await;
        loop {
            match issue().await.and_then(|c| served.set(&c).map(|()| c)) {
                Ok(c) => {
                    let until = pki::validity_of(c.cert_pem.as_bytes()).map_or(0, |(_, a)| a);
                    tracing::info!("renewed the certificate of {what}, valid until {}", pki::format_unix(until));
                    break;
                }
                Err(e) => {
                    let left = pki::validity_of(current.as_bytes()).map_or(0, |(_, a)| a - now());
                    tracing::warn!("certificate renewal of {what} ({left} s of validity left): {e}");
                    tokio::time::sleep(retry_pause(&current)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_falls_between_70_and_90_percent() {
        assert_eq!(renewal_at(1000, 2000, 0.7), 1700);
        assert_eq!(renewal_at(1000, 2000, 0.9), 1900);
        assert_eq!(renewal_at(1000, 2000, 0.1), 1700, "clamped");
        for _ in 0..100 {
            let j = jitter();
            assert!((0.7..=0.9).contains(&j), "{j}");
        }
    }

    #[test]
    fn a_swapped_certificate_is_served_from_the_next_handshake() {
        let ca = pki::generate_ca("test").unwrap();
        let first = pki::issue_server(&ca, &["localhost".into()], Duration::from_secs(60)).unwrap();
        let served = RenewedCert::new(&first).unwrap();
        let second = pki::issue_server(&ca, &["localhost".into()], Duration::from_secs(60)).unwrap();
        served.set(&second).unwrap();
        assert_eq!(served.current().cert_pem, second.cert_pem);
        let junk = CertKey { cert_pem: "junk".into(), key_pem: second.key_pem.clone() };
        assert!(served.set(&junk).unwrap_err().contains("serving certificate"));
        assert_eq!(served.current().cert_pem, second.cert_pem, "a bad certificate changes nothing");
        // 60 s (and 5 min backdated): renewal well ahead, within the validity.
        let wait = wait_before_renewal(&second.cert_pem);
        assert!(wait < Duration::from_secs(60), "{wait:?}");
        assert_eq!(wait_before_renewal("junk"), Duration::ZERO);
    }
}

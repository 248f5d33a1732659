//! apid's TLS, done here rather than by tonic so that the serving
//! certificate can be renewed while apid serves: init issues it from the
//! machine config's CA (`ApidTls`); at a random 70–90 % of its lifetime
//! apid asks init again and presents the new certificate from the next
//! handshake on, while open connections (a `logs -f`, an upload) keep
//! theirs. A certificate init cannot re-issue (the config carries it, not
//! the CA key; maintenance mode's) comes back unchanged and is asked for
//! again hourly.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use machinery::api::{self, init_service_client::InitServiceClient};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tonic::transport::Channel;

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an unchanged certificate is asked for again.
const UNCHANGED_RETRY: Duration = Duration::from_secs(3600);

/// The certificate apid presents, replaceable while it serves.
#[derive(Debug)]
pub struct Served {
    current: RwLock<(Arc<CertifiedKey>, String)>,
}

fn certified(cert_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("apid's serving certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| format!("apid's serving key: {e}"))?;
    CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())
        .map(Arc::new)
        .map_err(|e| format!("apid's serving key: {e}"))
}

impl Served {
    fn new(cert_pem: &str, key_pem: &str) -> Result<Arc<Served>, String> {
        Ok(Arc::new(Served { current: RwLock::new((certified(cert_pem, key_pem)?, cert_pem.to_string())) }))
    }

    fn set(&self, cert_pem: &str, key_pem: &str) -> Result<(), String> {
        let key = certified(cert_pem, key_pem)?;
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = (key, cert_pem.to_string());
        Ok(())
    }

    fn cert_pem(&self) -> String {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).1.clone()
    }
}

impl ResolvesServerCert for Served {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).0.clone())
    }
}

/// The server config for init's answer: HTTP/2, and client certificates
/// of `client_ca_pem` required when it is given.
pub fn server_config(
    tls: &api::ApidTlsResponse,
    client_ca_pem: Option<&str>,
) -> Result<(rustls::ServerConfig, Arc<Served>), String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let served = Served::new(&tls.cert_pem, &tls.key_pem)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca_pem {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                roots.add(c.map_err(|e| format!("the client CA: {e}"))?).map_err(|e| format!("the client CA: {e}"))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("the client CA: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(served.clone());
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((config, served))
}

/// Accepted TLS connections, each handshake in its own task (a slow or
/// failed one holds up nobody).
pub fn incoming(
    listener: TcpListener,
    config: rustls::ServerConfig,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            // Once the server stops taking connections (SIGTERM), the
            // listener closes: a client is refused, never accepted and dropped.
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake: {e}"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake: none within {HANDSHAKE_TIMEOUT:?}"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// 0.7–0.9, from the clock's nanoseconds (spread, not secrecy, is the point).
fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    0.7 + 0.2 * f64::from(nanos % 1000) / 1000.0
}

/// How long to wait, from `now`, before renewing a certificate ending at
/// `not_after` (its life counted from when apid got it: init backdates).
fn renewal_wait(now: i64, not_after: i64, fraction: f64) -> Duration {
    let left = (not_after - now).max(0) as f64;
    Duration::from_secs_f64(left * fraction.clamp(0.7, 0.9))
}

/// Asks init for a new certificate before each renewal point, forever.
pub async fn renew_forever(init: Channel, served: Arc<Served>) {
    loop {
        let current = served.cert_pem();
        let wait = match machinery::pki::cert_info(&current) {
            Ok(info) => renewal_wait(now(), info.not_after, jitter()),
            Err(e) => {
                tracing::error!("apid's serving certificate: {e}: not renewed");
                return;
            }
        };
        tokio::time::sleep(wait).await;
        let answer = InitServiceClient::new(init.clone()).apid_tls(api::ApidTlsRequest {}).await;
        let pause = match answer {
            Ok(r) => {
                let r = r.into_inner();
                if r.cert_pem == current {
                    tracing::info!("apid's serving certificate cannot be renewed here (it comes with the config)");
                    UNCHANGED_RETRY
                } else {
                    match served.set(&r.cert_pem, &r.key_pem) {
                        Ok(()) => {
                            let until = machinery::pki::cert_info(&r.cert_pem).map_or(0, |i| i.not_after);
                            tracing::info!(until, "renewed apid's serving certificate");
                            Duration::ZERO
                        }
                        Err(e) => {
                            tracing::warn!("renewing apid's serving certificate: {e}");
                            Duration::from_secs(5)
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!("renewing apid's serving certificate: asking init: {}", e.message());
                Duration::from_secs(5)
            }
        };
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_at_70_to_90_percent_of_what_is_left() {
        assert_eq!(renewal_wait(1000, 2000, 0.7), Duration::from_secs(700));
        assert_eq!(renewal_wait(1000, 2000, 0.95), Duration::from_secs(900), "clamped");
        assert_eq!(renewal_wait(3000, 2000, 0.8), Duration::ZERO, "expired: now");
        for _ in 0..50 {
            assert!((0.7..=0.9).contains(&jitter()));
        }
    }
}

//! Connecting to a node's apid: gRPC over TLS, mutual unless `--insecure`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use machinery::api::machine_service_client::MachineServiceClient;
use machinery::config::DEFAULT_API_PORT;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tonic::transport::{Channel, Endpoint};

/// How to authenticate to a node.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// Maintenance mode: no client certificate, and the node's self-signed
    /// certificate is not checked (the config's signature is the trust).
    Insecure,
    Mutual {
        ca: PathBuf,
        crt: PathBuf,
        key: PathBuf,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("your client certificate {path} {reason}; issue a new one with `osctl gen cert`")]
    OwnCert { path: PathBuf, reason: String },
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{0:?} is not a host or host:port")]
    Address(String),
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
}

fn read(path: &Path) -> Result<Vec<u8>, ConnectError> {
    std::fs::read(path).map_err(|source| ConnectError::Read { path: path.to_path_buf(), source })
}

/// Splits `host[:port]` (IPv6 in brackets) and adds the default port.
pub fn host_port(addr: &str) -> Result<(String, u16), ConnectError> {
    let bad = || ConnectError::Address(addr.to_string());
    if let Some(rest) = addr.strip_prefix('[') {
        let (host, tail) = rest.split_once(']').ok_or_else(bad)?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if tail.is_empty() => DEFAULT_API_PORT,
            None => return Err(bad()),
        };
        return Ok((host.to_string(), port));
    }
    match addr.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Ok((h.to_string(), p.parse().map_err(|_| bad())?)),
        _ if addr.is_empty() => Err(bad()),
        _ => Ok((addr.to_string(), DEFAULT_API_PORT)),
    }
}

/// Whether osctl checks its own client certificate before connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalChecks {
    /// Refuse an expired certificate here, with a message naming the file.
    On,
    /// Send it anyway and let the node judge (to test the node's checks).
    Off,
}

fn tls_config(creds: &Credentials, checks: LocalChecks) -> Result<ClientConfig, ConnectError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let mut config = match creds {
        Credentials::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)))
            .with_no_client_auth(),
        Credentials::Mutual { ca, crt, key } => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&read(ca)?) {
                let c = c.map_err(|e| ConnectError::Pem { path: ca.clone(), reason: e.to_string() })?;
                roots.add(c).map_err(|e| ConnectError::Pem { path: ca.clone(), reason: e.to_string() })?;
            }
            let crt_pem = read(crt)?;
            if checks == LocalChecks::On {
                check_own_cert(crt, &crt_pem)?;
            }
            let chain = CertificateDer::pem_slice_iter(&crt_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ConnectError::Pem { path: crt.clone(), reason: e.to_string() })?;
            let key_der = PrivateKeyDer::from_pem_slice(&read(key)?)
                .map_err(|e| ConnectError::Pem { path: key.clone(), reason: e.to_string() })?;
            builder.with_root_certificates(roots).with_client_auth_cert(chain, key_der)?
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Catches an expired or not-yet-valid client certificate before the node
/// has to refuse it, with a message that names the file.
fn check_own_cert(path: &Path, pem: &[u8]) -> Result<(), ConnectError> {
    let own = |reason: String| ConnectError::OwnCert { path: path.to_path_buf(), reason };
    let info = machinery::pki::cert_info(&String::from_utf8_lossy(pem)).map_err(|e| own(e.to_string()))?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let date = |t: i64| {
        time::OffsetDateTime::from_unix_timestamp(t)
            .ok()
            .and_then(|d| d.format(&time::format_description::well_known::Rfc3339).ok())
            .unwrap_or_else(|| t.to_string())
    };
    if now > info.not_after {
        return Err(own(format!("expired on {}", date(info.not_after))));
    }
    if now < info.not_before {
        return Err(own(format!("is not valid before {}", date(info.not_before))));
    }
    Ok(())
}

fn server_name(addr: &str, host: &str) -> Result<ServerName<'static>, ConnectError> {
    ServerName::try_from(host.to_string()).map_err(|_| ConnectError::Address(addr.to_string()))
}

/// Opens a gRPC channel to `addr` (host or host:port).
pub async fn connect(
    addr: &str,
    creds: &Credentials,
    checks: LocalChecks,
) -> Result<MachineServiceClient<Channel>, ConnectError> {
    let (host, port) = host_port(addr)?;
    let server_name = server_name(addr, &host)?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config(creds, checks)?));
    let target = format!("{host}:{port}");
    let display = target.clone();
    // The connector does TLS itself, so tonic sees a plain-HTTP/2 URI.
    let channel = Endpoint::from_shared(format!(
        "http://{}",
        if host.contains(':') { format!("[{host}]:{port}") } else { target.clone() }
    ))
    .map_err(|_| ConnectError::Address(addr.to_string()))?
    .connect_timeout(std::time::Duration::from_secs(10))
    .initial_stream_window_size(machinery::H2_STREAM_WINDOW)
    .initial_connection_window_size(machinery::H2_CONNECTION_WINDOW)
    .connect_with_connector(tower::service_fn(move |_| {
        let connector = connector.clone();
        let server_name = server_name.clone();
        let target = target.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(&target).await?;
            // Small gRPC frames must not wait out Nagle + delayed ACK.
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    }))
    .await
    .map_err(|e| ConnectError::Connect { addr: display, reason: crate::explain_transport(&e) })?;
    Ok(MachineServiceClient::new(channel).max_decoding_message_size(64 << 20))
}

/// Why the node closed a connection. With TLS 1.3 a server judges the
/// client's certificate after the client considers the handshake done, so
/// its alert ("unknown CA", "certificate expired") reaches only the first
/// read — which the gRPC stack swallows as "connection closed". After such a
/// failure this opens one plain TLS connection and reads, to find the alert.
/// (It sends nothing: unread data would make the server's close a reset,
/// which can overtake the alert.)
pub async fn diagnose(addr: &str, creds: &Credentials, checks: LocalChecks) -> Option<String> {
    use tokio::io::AsyncReadExt as _;
    let (host, port) = host_port(addr).ok()?;
    let name = server_name(addr, &host).ok()?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config(creds, checks).ok()?));
    let probe = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        let mut tls = connector.connect(name, tcp).await?;
        let mut buf = [0u8; 64];
        tls.read(&mut buf).await.map(|_| ())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), probe).await {
        Ok(Err(e)) => Some(crate::explain_transport(&e)),
        _ => None,
    }
}

/// For maintenance mode only: accepts any server certificate, but still
/// checks that the server holds its key.
#[derive(Debug)]
struct AcceptAnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(host_port("10.0.0.5").unwrap(), ("10.0.0.5".into(), 50000));
        assert_eq!(host_port("10.0.0.5:123").unwrap(), ("10.0.0.5".into(), 123));
        assert_eq!(host_port("[::1]:7").unwrap(), ("::1".into(), 7));
        assert_eq!(host_port("::1").unwrap(), ("::1".into(), 50000));
        assert!(host_port("a:b").is_err());
        assert!(host_port("").is_err());
    }
}

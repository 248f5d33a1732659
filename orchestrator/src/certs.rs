//! `orchestrator certs`: the certificates the orchestrator of a data
//! directory presents and hands out, as PEM, for init to read (`osctl
//! certs`). The serving certificates live in memory only (renewed in
//! process): they are read the way a client sees them, from a TLS
//! handshake; the others from the files the orchestrator keeps.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;

/// One certificate found, or why it could not be read.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Found {
    pub name: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pem: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Found {
    fn of(name: &'static str, r: Result<String, String>) -> Found {
        match r {
            Ok(pem) => Found { name, pem: Some(pem), error: None },
            Err(e) => Found { name, pem: None, error: Some(e) },
        }
    }
}

fn pem_of(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap_or_default()).collect();
    format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", lines.join("\n"))
}

/// The address to dial for a listen address: its own, or loopback for
/// every address (`0.0.0.0`, `[::]`).
fn dial(listen: &str) -> String {
    match listen.rsplit_once(':') {
        Some(("0.0.0.0", port)) => format!("127.0.0.1:{port}"),
        Some(("[::]", port)) => format!("[::1]:{port}"),
        _ => listen.to_string(),
    }
}

/// The certificate presented at `listen` (a TLS handshake, nothing sent).
async fn presented(listen: &str) -> Result<String, String> {
    let addr = dial(listen);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(orchestrator_http::AnyServerCert(provider)))
        .with_no_client_auth();
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect(&addr).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("a valid name");
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await
    };
    let tls = tokio::time::timeout(Duration::from_secs(5), handshake)
        .await
        .map_err(|_| format!("{addr}: no TLS handshake in 5 s"))?
        .map_err(|e| format!("{addr}: {e}"))?;
    let der = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).ok_or(format!("{addr}: no certificate"))?;
    Ok(pem_of(der))
}

/// The client certificate of a kubeconfig with embedded data.
fn kubeconfig_cert(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let data = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("client-certificate-data:"))
        .ok_or_else(|| format!("{}: no client-certificate-data", path.display()))?;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| format!("{}: client-certificate-data: {e}", path.display()))?;
    String::from_utf8(pem).map_err(|e| format!("{}: client-certificate-data: {e}", path.display()))
}

/// The first certificate of a PEM file (certificate and key in one file).
fn file_cert(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let end = "-----END CERTIFICATE-----";
    let start =
        text.find("-----BEGIN CERTIFICATE-----").ok_or_else(|| format!("{}: no certificate", path.display()))?;
    let stop = text[start..].find(end).ok_or_else(|| format!("{}: no certificate", path.display()))? + start;
    Ok(format!("{}{end}\n", &text[start..stop]))
}

/// What a node's orchestrator has: with `api`, the API server's serving
/// certificate and the admin kubeconfig's; with `kubelet`, the kubelet's
/// serving certificate, and a joined kubelet's client certificate.
pub async fn list(data_dir: &Path, api: Option<&str>, kubelet: Option<&str>) -> Vec<Found> {
    let mut found = Vec::new();
    if let Some(api) = api {
        found.push(Found::of("kubernetes API server (serving)", presented(api).await));
        found.push(Found::of(
            "admin kubeconfig (osctl kubeconfig)",
            kubeconfig_cert(&data_dir.join("admin.kubeconfig")),
        ));
    }
    if let Some(kubelet) = kubelet {
        found.push(Found::of("kubelet (serving)", presented(kubelet).await));
        // A control plane's kubelet calls the API server in process: no client certificate.
        let client = data_dir.join("kubelet").join("pki").join("kubelet-client-current.pem");
        if api.is_none() {
            found.push(Found::of("kubelet (client)", file_cert(&client)));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_address_is_dialled_on_loopback() {
        assert_eq!(super::dial("0.0.0.0:6443"), "127.0.0.1:6443");
        assert_eq!(super::dial("[::]:10250"), "[::1]:10250");
        assert_eq!(super::dial("10.0.0.5:6443"), "10.0.0.5:6443");
    }

    #[test]
    fn a_kubeconfig_and_a_pem_file_give_their_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let both = dir.path().join("both.pem");
        std::fs::write(&both, format!("{cert}-----BEGIN PRIVATE KEY-----\nBBBB\n-----END PRIVATE KEY-----\n")).unwrap();
        assert_eq!(super::file_cert(&both).unwrap(), cert);
        let kc = dir.path().join("admin.kubeconfig");
        let data = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, cert);
        std::fs::write(&kc, format!("users:\n- name: admin\n  user:\n    client-certificate-data: {data}\n")).unwrap();
        assert_eq!(super::kubeconfig_cert(&kc).unwrap(), cert);
        assert!(super::file_cert(&dir.path().join("none")).unwrap_err().contains("none"));
    }
}

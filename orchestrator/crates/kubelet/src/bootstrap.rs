//! A worker's kubelet joins by token, as kubeadm's `join` and the
//! kubelet's TLS bootstrap do, and keeps its client certificate fresh:
//!
//! 1. Discovery: read `kube-public/cluster-info` without trusting the
//!    server yet, and check the CA found there against the pin
//!    (`sha256:<hex of its SubjectPublicKeyInfo>`); from then on the
//!    server must present a certificate from that CA.
//! 2. With the bootstrap token, send a CertificateSigningRequest for
//!    `system:node:<name>` (signer
//!    `kubernetes.io/kube-apiserver-client-kubelet`) and wait until it is
//!    issued, denied or failed.
//! 3. Keep the key and the certificate in `<dir>/pki/` (a restart reuses
//!    them while they are valid) and act with them.
//! 4. Renewal: at a random point between 70 % and 90 % of the
//!    certificate's lifetime, a new key and a new request, sent with the
//!    current certificate; the new one is used from the next request on
//!    (no restart, no pod touched).

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use orchestrator_apimachinery::bootstrap_token::Token;
use orchestrator_apimachinery::certificates::{KUBELET_CLIENT_SIGNER, NODE_USER_PREFIX, NODES_GROUP, condition};
use orchestrator_client::{Api, Credentials, Remote, Trust};
use orchestrator_http::{pki, reload};

/// How long a request may stay pending before the join gives up.
const APPROVAL_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("{0} (--token)")]
    Token(#[from] orchestrator_apimachinery::bootstrap_token::TokenError),
    #[error("--ca-cert-hash {0:?} is not sha256:<64 hex digits> (kubeadm's discovery-token-ca-cert-hash)")]
    Pin(String),
    #[error("{server} is not a Plinth control plane: reading kube-public/cluster-info: {reason}")]
    Discovery { server: String, reason: String },
    #[error(
        "the cluster CA of {server} has the pin {found}, not {wanted} (--ca-cert-hash): refusing to trust this server"
    )]
    WrongCa { server: String, found: String, wanted: String },
    #[error(
        "{server} refused bootstrap token {id} ({reason}): it is unknown, deleted or expired; create one on the control plane (`orchestrator token create`)"
    )]
    TokenRefused { server: String, id: String, reason: String },
    #[error("CertificateSigningRequest {csr} for {user} was denied: {message}")]
    Denied { csr: String, user: String, message: String },
    #[error("CertificateSigningRequest {csr} for {user} failed: {message}")]
    Failed { csr: String, user: String, message: String },
    #[error(
        "CertificateSigningRequest {csr} for {user} was not approved within {APPROVAL_TIMEOUT:?}: approve it with `kubectl certificate approve {csr}`"
    )]
    NotApproved { csr: String, user: String },
    #[error("{op} {server}: {reason}")]
    Api { op: String, server: String, reason: String },
    #[error("{op} {path}: {reason}")]
    File { op: &'static str, path: PathBuf, reason: String },
    #[error(
        "no valid client certificate in {path} ({why}) and no bootstrap token to join with: give --token and --ca-cert-hash"
    )]
    NoIdentity { path: PathBuf, why: String },
}

/// How to reach and join the cluster.
pub struct Join {
    /// `https://host:port`.
    pub server: String,
    pub token: Option<String>,
    /// `sha256:<hex>`.
    pub ca_pin: String,
    pub node_name: String,
    /// The kubelet's directory; credentials go to `pki/` under it.
    pub dir: PathBuf,
}

fn pki_dir(dir: &Path) -> PathBuf {
    dir.join("pki")
}

/// The files a joined kubelet keeps: the client certificate and its key
/// in one PEM (upstream's `kubelet-client-current.pem`), and the CA.
fn cert_file(dir: &Path) -> PathBuf {
    pki_dir(dir).join("kubelet-client-current.pem")
}

fn ca_file(dir: &Path) -> PathBuf {
    pki_dir(dir).join("ca.crt")
}

fn check_pin(pin: &str) -> Result<(), JoinError> {
    let hex = pin.strip_prefix("sha256:").unwrap_or_default();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
        return Err(JoinError::Pin(pin.to_string()));
    }
    Ok(())
}

/// The stored identity, if it is there, from this CA and still valid.
fn stored(dir: &Path, pin: &str) -> Result<(String, String), String> {
    let read = |p: PathBuf| std::fs::read_to_string(&p).map_err(|e| format!("read {}: {e}", p.display()));
    let both = read(cert_file(dir))?;
    let ca = read(ca_file(dir))?;
    if pki::ca_pin(ca.as_bytes())? != pin {
        return Err(format!("{} is not the CA --ca-cert-hash pins", ca_file(dir).display()));
    }
    let (_, not_after) = pki::validity_of(both.as_bytes()).ok_or("no certificate in it")?;
    if not_after <= reload::now() {
        return Err(format!("the certificate expired at {}", pki::format_unix(not_after)));
    }
    Ok((ca, both))
}

fn write(path: &Path, text: &str) -> Result<(), JoinError> {
    pki::write_private(path, text).map_err(|e| JoinError::File {
        op: "write",
        path: path.into(),
        reason: e.to_string(),
    })
}

/// Discovery: the cluster CA from `cluster-info`, checked against `pin`.
async fn discover(server: &str, pin: &str) -> Result<String, JoinError> {
    let discovery = |reason: String| JoinError::Discovery { server: server.to_string(), reason };
    let anonymous = Remote::new(server, Trust::Unverified, Credentials::Anonymous).map_err(discovery)?;
    let cm = Api::Remote(anonymous)
        .get("ConfigMap", Some("kube-public"), "cluster-info")
        .await
        .map_err(|e| discovery(e.message))?;
    // cluster-info is read anonymously before any trust: only these two strings are used, typed or not.
    let kubeconfig =
        cm.pointer("/data/kubeconfig").and_then(Value::as_str).ok_or_else(|| discovery("no data.kubeconfig".into()))?;
    let doc: Value = serde_norway::from_str(kubeconfig).map_err(|e| discovery(format!("data.kubeconfig: {e}")))?;
    // A kubeconfig document, not an API object: k8s-openapi has no type for it.
    let ca_b64 = doc
        .pointer("/clusters/0/cluster/certificate-authority-data")
        .and_then(Value::as_str)
        .ok_or_else(|| discovery("data.kubeconfig has no certificate-authority-data".into()))?;
    let ca = base64::engine::general_purpose::STANDARD
        .decode(ca_b64)
        .map_err(|_| discovery("certificate-authority-data is not base64".into()))?;
    let found = pki::ca_pin(&ca).map_err(|e| discovery(format!("certificate-authority-data: {e}")))?;
    if found != pin {
        return Err(JoinError::WrongCa { server: server.into(), found, wanted: pin.into() });
    }
    Ok(String::from_utf8_lossy(&ca).into_owned())
}

/// What a kubelet asks the cluster to sign: its client certificate, or
/// its serving certificate (module `serving`).
pub(crate) struct Ask<'a> {
    /// The request's `metadata.generateName` (upstream's).
    pub prefix: &'a str,
    pub signer: &'a str,
    pub usages: &'a [&'a str],
    /// Subject alternative names (DNS names or IPs).
    pub sans: &'a [String],
}

/// The client certificate: upstream's kubelet asks for exactly these.
const CLIENT: Ask<'static> = Ask {
    prefix: "node-csr-",
    signer: KUBELET_CLIENT_SIGNER,
    usages: &["digital signature", "client auth"],
    sans: &[],
};

/// Sends a request for `system:node:<node>` through `api` and waits for
/// the certificate; returns (certificate PEM, key PEM).
pub(crate) async fn request_certificate(
    api: &Api,
    server: &str,
    node: &str,
    ask: &Ask<'_>,
) -> Result<(String, String), RequestError> {
    let user = format!("{NODE_USER_PREFIX}{node}");
    let (csr_pem, key_pem) =
        pki::request(&user, NODES_GROUP, ask.sans).map_err(|e| RequestError::Other(e.to_string()))?;
    let body = json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"generateName": ask.prefix},
        "spec": {"signerName": ask.signer, "usages": ask.usages,
            "request": base64::engine::general_purpose::STANDARD.encode(&csr_pem)}});
    let created = api.create("CertificateSigningRequest", None, body).await.map_err(RequestError::Api)?;
    // The CSR is read as JSON here because `certificates::condition` (shared with the API server) reads JSON.
    let csr = created.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
    tracing::info!(csr, server, signer = ask.signer, "sent a certificate signing request for {user}");
    let deadline = tokio::time::Instant::now() + APPROVAL_TIMEOUT;
    loop {
        let o = api.get("CertificateSigningRequest", None, &csr).await.map_err(RequestError::Api)?;
        let message = |ty: &str| condition(&o, ty).and_then(|c| c["message"].as_str()).unwrap_or_default().to_string();
        if condition(&o, "Denied").is_some() {
            return Err(RequestError::Join(JoinError::Denied { csr, user, message: message("Denied") }));
        }
        if condition(&o, "Failed").is_some() {
            return Err(RequestError::Join(JoinError::Failed { csr, user, message: message("Failed") }));
        }
        if let Some(cert) = o.pointer("/status/certificate").and_then(Value::as_str).filter(|c| !c.is_empty()) {
            let cert = base64::engine::general_purpose::STANDARD
                .decode(cert)
                .map_err(|_| RequestError::Other(format!("{csr}: status.certificate is not base64")))?;
            return Ok((String::from_utf8_lossy(&cert).into_owned(), key_pem));
        }
        if tokio::time::Instant::now() > deadline {
            return Err(RequestError::Join(JoinError::NotApproved { csr, user }));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub(crate) enum RequestError {
    Api(orchestrator_apimachinery::errors::ApiError),
    Join(JoinError),
    Other(String),
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::Api(e) => f.write_str(&e.message),
            RequestError::Join(e) => e.fmt(f),
            RequestError::Other(e) => f.write_str(e),
        }
    }
}

/// A client acting as the joined node, with the certificate its kubelet
/// keeps under `dir` (for the node's own tools: the drain before an
/// upgrade, leaving the cluster at a reset).
pub fn node_client(server: &str, dir: &Path) -> Result<Remote, String> {
    let read = |p: PathBuf| std::fs::read_to_string(&p).map_err(|e| format!("read {}: {e}", p.display()));
    let (ca, both) = (read(ca_file(dir))?, read(cert_file(dir))?);
    Remote::new(
        server,
        Trust::Ca(ca.as_bytes()),
        Credentials::Certificate { cert_pem: both.as_bytes(), key_pem: both.as_bytes() },
    )
    .map_err(|e| format!("{}: {e}", cert_file(dir).display()))
}

/// The kubelet's API client: the stored certificate while valid, or a
/// new one got by joining with the token.
pub async fn identity(join: &Join) -> Result<Remote, JoinError> {
    check_pin(&join.ca_pin)?;
    let token = join.token.as_deref().map(Token::try_from).transpose()?;
    let why = match stored(&join.dir, &join.ca_pin) {
        Ok((ca, both)) => {
            let remote = Remote::new(
                &join.server,
                Trust::Ca(ca.as_bytes()),
                Credentials::Certificate { cert_pem: both.as_bytes(), key_pem: both.as_bytes() },
            )
            .map_err(|reason| JoinError::File { op: "use", path: cert_file(&join.dir), reason })?;
            tracing::info!("using the client certificate in {}", cert_file(&join.dir).display());
            return Ok(remote);
        }
        Err(why) => why,
    };
    let Some(token) = token else {
        return Err(JoinError::NoIdentity { path: cert_file(&join.dir), why });
    };
    tracing::warn!("joining {} with bootstrap token {}: {why}", join.server, token.id);
    let ca = discover(&join.server, &join.ca_pin).await?;
    let api_error = |op: &str, reason: String| JoinError::Api { op: op.into(), server: join.server.clone(), reason };
    let bootstrap = Remote::new(&join.server, Trust::Ca(ca.as_bytes()), Credentials::Bearer(&token.reveal()))
        .map_err(|e| api_error("connect to", e))?;
    let (cert, key) = match request_certificate(&Api::Remote(bootstrap), &join.server, &join.node_name, &CLIENT).await {
        Ok(issued) => issued,
        Err(RequestError::Api(e)) if e.code == 401 => {
            return Err(JoinError::TokenRefused { server: join.server.clone(), id: token.id, reason: e.message });
        }
        Err(RequestError::Api(e)) => return Err(api_error("certificate signing request to", e.message)),
        Err(RequestError::Join(e)) => return Err(e),
        Err(RequestError::Other(e)) => return Err(api_error("certificate signing request to", e)),
    };
    write(&ca_file(&join.dir), &ca)?;
    write(&cert_file(&join.dir), &format!("{cert}{key}"))?;
    tracing::warn!("joined {} as {NODE_USER_PREFIX}{}", join.server, join.node_name);
    Remote::new(
        &join.server,
        Trust::Ca(ca.as_bytes()),
        Credentials::Certificate { cert_pem: cert.as_bytes(), key_pem: key.as_bytes() },
    )
    .map_err(|e| api_error("connect to", e))
}

/// Renews the client certificate of `remote` before it expires, forever:
/// a new key and request sent with the current certificate, the result
/// written to `dir` and used from the next request on.
pub async fn renew_forever(remote: Remote, dir: PathBuf, node: String) {
    loop {
        let current = std::fs::read_to_string(cert_file(&dir)).unwrap_or_default();
        if pki::validity_of(current.as_bytes()).is_none() {
            tracing::error!("certificate renewal: no certificate in {}", cert_file(&dir).display());
            return;
        }
        tokio::time::sleep(reload::wait_before_renewal(&current)).await;
        loop {
            match request_certificate(&Api::Remote(remote.clone()), &remote.server(), &node, &CLIENT).await {
                Ok((cert, key)) => {
                    let stored = write(&cert_file(&dir), &format!("{cert}{key}"));
                    match stored
                        .map_err(|e| e.to_string())
                        .and_then(|()| remote.set_client_cert(cert.as_bytes(), key.as_bytes()))
                    {
                        Ok(()) => {
                            let until = pki::validity_of(cert.as_bytes()).map_or(0, |(_, a)| a);
                            tracing::info!(
                                "renewed the client certificate of {NODE_USER_PREFIX}{node}, valid until {}",
                                pki::format_unix(until)
                            );
                        }
                        Err(e) => tracing::error!("certificate renewal: {e}"),
                    }
                    break;
                }
                Err(e) => {
                    let left = pki::validity_of(current.as_bytes()).map_or(0, |(_, a)| a - reload::now());
                    tracing::warn!("certificate renewal ({left} s of validity left): {e}");
                    tokio::time::sleep(reload::retry_pause(&current)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_checked_before_any_contact() {
        assert!(check_pin(&format!("sha256:{}", "a".repeat(64))).is_ok());
        for bad in ["", "sha256:abc", &format!("md5:{}", "a".repeat(64)), &format!("sha256:{}", "A".repeat(64))] {
            assert!(check_pin(bad).unwrap_err().to_string().contains("--ca-cert-hash"));
        }
    }

    #[test]
    fn stored_identity_is_reused_only_from_the_pinned_ca_and_unexpired() {
        let d = tempfile::tempdir().unwrap();
        let ca = pki::generate_ca("c").unwrap();
        let pin = pki::ca_pin(ca.cert_pem.as_bytes()).unwrap();
        assert!(stored(d.path(), &pin).unwrap_err().contains("kubelet-client-current.pem"));
        let client = pki::issue_client(&ca, "system:node:n1", NODES_GROUP).unwrap();
        pki::write_private(&ca_file(d.path()), &ca.cert_pem).unwrap();
        pki::write_private(&cert_file(d.path()), &format!("{}{}", client.cert_pem, client.key_pem)).unwrap();
        assert!(stored(d.path(), &pin).is_ok());
        let other = pki::ca_pin(pki::generate_ca("x").unwrap().cert_pem.as_bytes()).unwrap();
        assert!(stored(d.path(), &other).unwrap_err().contains("not the CA"));
    }
}

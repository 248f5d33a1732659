//! The kubelet's serving certificate (port 10250), kept fresh without a
//! restart (upstream's `serverTLSBootstrap` and `rotateServerCertificates`):
//!
//! - A worker asks for it by CertificateSigningRequest with signer
//!   `kubernetes.io/kubelet-serving`, as `system:node:<name>`, naming its
//!   node name and address; the control plane approves a node asking for
//!   its own names (controllers' `certificates`). Until the first one is
//!   issued it serves a self-signed certificate (the API server does not
//!   verify kubelet serving certificates). The certificate and key are kept
//!   in `<dir>/pki/kubelet-server-current.pem`, reused after a restart
//!   while valid.
//! - The control plane's own kubelet runs in the API server's process with
//!   the cluster CA, which issues it directly.
//!
//! Either way it is renewed at 70–90 % of its lifetime (`reload`): new
//! handshakes get the new certificate, open streams (logs, exec) go on.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use orchestrator_apimachinery::certificates::KUBELET_SERVING_SIGNER;
use orchestrator_client::Api;
use orchestrator_http::pki::{self, CertKey};
use orchestrator_http::reload::{self, RenewedCert};

use crate::bootstrap::{Ask, request_certificate};

/// Where the kubelet's serving certificate comes from.
pub enum Identity {
    /// Issued by the cluster CA in process (the control plane's own
    /// kubelet), valid for `lifetime`.
    IssuedBy { ca: CertKey, lifetime: Duration },
    /// Requested by CSR through the kubelet's API client (a worker);
    /// clients are verified against `ca_pem`.
    Requested { ca_pem: String },
}

impl Identity {
    /// The CA the kubelet's clients (the API server) must come from.
    pub fn client_ca(&self) -> &str {
        match self {
            Identity::IssuedBy { ca, .. } => &ca.cert_pem,
            Identity::Requested { ca_pem } => ca_pem,
        }
    }
}

fn cert_file(dir: &Path) -> PathBuf {
    dir.join("pki").join("kubelet-server-current.pem")
}

/// A stored certificate and key (one PEM) that is still valid.
fn stored(dir: &Path) -> Option<CertKey> {
    let both = std::fs::read_to_string(cert_file(dir)).ok()?;
    let (_, not_after) = pki::validity_of(both.as_bytes())?;
    (not_after > reload::now()).then(|| CertKey { cert_pem: both.clone(), key_pem: both })
}

/// What a kubelet asks the kubelet-serving signer for.
const USAGES: &[&str] = &["digital signature", "server auth"];

/// The certificate to serve now, and the task that renews it.
pub fn start(
    api: Api,
    dir: PathBuf,
    node: String,
    names: Vec<String>,
    identity: &Identity,
) -> Result<Arc<RenewedCert>, String> {
    match identity {
        Identity::IssuedBy { ca, lifetime } => {
            let (ca, lifetime) = (ca.clone(), *lifetime);
            let issue = move || pki::issue_server(&ca, &names, lifetime).map_err(|e| e.to_string());
            reload::issued_here(&format!("the kubelet {node}"), issue)
        }
        Identity::Requested { .. } => {
            let (first, issued) = match stored(&dir) {
                Some(c) => (c, true),
                None => (pki::self_signed_server(&names, pki::LEAF_LIFETIME).map_err(|e| e.to_string())?, false),
            };
            let served = RenewedCert::new(&first)?;
            tokio::spawn(request_forever(api, dir, node, names, served.clone(), issued));
            Ok(served)
        }
    }
}

/// Asks for a serving certificate by CSR: at once when serving a
/// self-signed one, then at 70–90 % of each one's lifetime.
async fn request_forever(
    api: Api,
    dir: PathBuf,
    node: String,
    names: Vec<String>,
    served: Arc<RenewedCert>,
    issued: bool,
) {
    let server = match &api {
        Api::Remote(r) => r.server(),
        Api::Local(_) => "the local registry".into(),
    };
    let issue = move || {
        let (api, dir, node, names, server) = (api.clone(), dir.clone(), node.clone(), names.clone(), server.clone());
        async move {
            let ask = Ask { prefix: "csr-", signer: KUBELET_SERVING_SIGNER, usages: USAGES, sans: &names };
            let (cert, key) = request_certificate(&api, &server, &node, &ask).await.map_err(|e| e.to_string())?;
            let both = format!("{cert}{key}");
            pki::write_private(&cert_file(&dir), &both).map_err(|e| e.to_string())?;
            Ok(CertKey { cert_pem: cert, key_pem: key })
        }
    };
    if !issued {
        loop {
            match issue().await.and_then(|c| served.set(&c)) {
                Ok(()) => {
                    tracing::info!("the kubelet serves a certificate signed by {KUBELET_SERVING_SIGNER}");
                    break;
                }
                Err(e) => {
                    tracing::warn!("kubelet serving certificate (still self-signed): {e}");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }
    }
    reload::renew_forever("the kubelet".into(), served, issue).await;
}

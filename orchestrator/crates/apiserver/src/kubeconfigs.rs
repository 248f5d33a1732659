//! The kubeconfigs the API server writes into its data directory
//! (`admin.kubeconfig`, `read-only.kubeconfig`; init hands the first out
//! through the machine API's `Kubeconfig`, `osctl kubeconfig`): written at
//! start, and rewritten with a new client certificate at 70–90 % of the
//! current one's lifetime (a year), so what is handed out always has at
//! least a tenth of its life ahead. A copy taken earlier stops working at
//! its certificate's notAfter (the TLS handshake fails with "certificate
//! expired"); `osctl kubeconfig` then gives a fresh one.

use std::path::{Path, PathBuf};

use orchestrator_http::pki::{self, CertKey};
use orchestrator_http::reload;

/// Writes `path`: a kubeconfig for `server` with a new certificate for
/// `user` in `group`; returns the certificate.
fn write(path: &Path, server: &str, ca: &CertKey, user: &str, group: &str) -> Result<CertKey, pki::PkiError> {
    let client = pki::issue_client(ca, user, group)?;
    pki::write_private(path, &pki::kubeconfig(server, ca, &client, user))?;
    Ok(client)
}

/// Writes the kubeconfig now and keeps it fresh in the background.
pub fn write_and_renew(
    path: PathBuf,
    server: String,
    ca: CertKey,
    user: &'static str,
    group: &'static str,
) -> Result<(), pki::PkiError> {
    let mut current = write(&path, &server, &ca, user, group)?;
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(reload::wait_before_renewal(&current.cert_pem)).await;
            match write(&path, &server, &ca, user, group) {
                Ok(c) => {
                    let until = pki::validity_of(c.cert_pem.as_bytes()).map_or(0, |(_, a)| a);
                    tracing::info!("renewed {}, valid until {}", path.display(), pki::format_unix(until));
                    current = c;
                }
                Err(e) => {
                    tracing::warn!("certificate renewal of {}: {e}", path.display());
                    tokio::time::sleep(reload::retry_pause(&current.cert_pem)).await;
                }
            }
        }
    });
    Ok(())
}

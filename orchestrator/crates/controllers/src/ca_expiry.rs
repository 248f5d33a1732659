//! The cluster CA's own expiry: from a year before it ends, a Warning
//! Event (`CACertificateExpiring`, about the `kube-system` Namespace, in
//! `default` as upstream files Events of cluster-scoped objects) and a
//! log line, once an hour (Events live an hour by default, so one is always
//! there to see). A CA is not renewed in place: every certificate it
//! signed would have to follow; docs/trust.md says what to do.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;

use orchestrator_apimachinery::registry::Registry;

/// Warnings start this long before the CA's notAfter.
pub const WARN_BEFORE: Duration = Duration::from_secs(365 * 24 * 3600);
/// How often the warning is repeated.
pub const EVERY: Duration = Duration::from_secs(3600);

/// The warning for a CA certificate ending at `not_after` (Unix seconds)
/// seen at `now`, if it is due.
pub fn warning(subject: &str, not_after: i64, now: i64) -> Option<String> {
    let left = not_after - now;
    if left > i64::try_from(WARN_BEFORE.as_secs()).unwrap_or(i64::MAX) {
        return None;
    }
    let until = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let until = orchestrator_apimachinery::registry::format_time(until);
    Some(if left <= 0 {
        format!(
            "the cluster CA ({subject}) expired at {until}: no certificate it signed is accepted; replace the cluster CA (docs/trust.md)"
        )
    } else {
        format!(
            "the cluster CA ({subject}) expires at {until}, in {} days: every certificate it signed stops working then; replace the cluster CA before (docs/trust.md)",
            left / 86400
        )
    })
}

/// The subject and notAfter of a PEM certificate.
fn read(ca_pem: &str) -> Option<(String, i64)> {
    let (_, block) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes()).ok()?;
    let cert = block.parse_x509().ok()?;
    Some((cert.subject().to_string(), cert.validity().not_after.timestamp()))
}

/// Checks the CA now and every [`EVERY`].
pub fn spawn(reg: Arc<Registry>, ca_pem: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some((subject, not_after)) = read(&ca_pem) else {
            tracing::error!("the cluster CA certificate cannot be read: its expiry is not watched");
            return;
        };
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tick.tick().await;
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            if let Some(message) = warning(&subject, not_after, now) {
                tracing::warn!("{message}");
                let involved = ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Namespace".into()),
                    name: Some("kube-system".into()),
                    ..Default::default()
                };
                crate::event(&reg, &involved, "Warning", "CACertificateExpiring", &message, "certificate-controller");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warned_from_a_year_before() {
        let day = 86400;
        assert_eq!(warning("CN=ca", 1000 + 400 * day, 1000), None);
        let soon = warning("CN=ca", 1000 + 30 * day, 1000).unwrap();
        assert!(soon.contains("CN=ca") && soon.contains("in 30 days"), "{soon}");
        assert!(warning("CN=ca", 1000 + 365 * day, 1000).is_some());
        assert!(warning("CN=ca", 1000, 2000).unwrap().contains("expired at"));
    }
}

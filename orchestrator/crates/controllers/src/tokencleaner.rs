//! Removes expired bootstrap-token Secrets, as upstream's tokencleaner:
//! an expired token authenticates nobody already; this keeps
//! `kube-system` from filling with them.

use k8s_openapi::api::core::v1::Secret;

use orchestrator_apimachinery::bootstrap_token::{NAMESPACE, SECRET_TYPE, Stored};
use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::Registry;
use orchestrator_apimachinery::typed;

use crate::{name, rt};

pub fn reconcile(reg: &Registry) -> Result<(), ApiError> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let secrets: Vec<Secret> = typed::list(reg, rt("Secret"), Some(NAMESPACE))?;
    for s in secrets.iter().filter(|s| s.type_.as_deref() == Some(SECRET_TYPE)) {
        let expired = match Stored::from_secret(s) {
            Ok(t) => t.expired(now),
            Err(e) => {
                tracing::debug!("{e}");
                false
            }
        };
        if expired {
            tracing::info!(secret = name(&s.metadata), "removing an expired bootstrap token");
            match reg.delete(rt("Secret"), Some(NAMESPACE), name(&s.metadata), &Default::default()) {
                Err(e) if e.code != 404 => return Err(e),
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchestrator_apimachinery::bootstrap_token::Token;
    use orchestrator_apimachinery::registry::WriteOptions;
    use std::time::Duration;

    #[test]
    fn expired_tokens_go_others_stay() {
        let d = tempfile::tempdir().unwrap();
        let reg = crate::test_registry(&d);
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let (old, live, forever) = (Token::generate(), Token::generate(), Token::generate());
        for (t, at, ttl) in [(&old, now - 100, Some(10)), (&live, now, Some(3600)), (&forever, 0, None)] {
            let s = typed::encode(&t.to_secret(at, ttl.map(Duration::from_secs), ""), "t").unwrap();
            reg.create(rt("Secret"), Some(NAMESPACE), s, &WriteOptions::default()).unwrap();
        }
        reconcile(&reg).unwrap();
        assert_eq!(reg.get(rt("Secret"), Some(NAMESPACE), &old.secret_name()).unwrap_err().code, 404);
        for t in [&live, &forever] {
            reg.get(rt("Secret"), Some(NAMESPACE), &t.secret_name()).unwrap();
        }
    }
}

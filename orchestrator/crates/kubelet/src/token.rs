//! ServiceAccount tokens for projected volumes: requested through the
//! TokenRequest API, bound to the pod, and kept until 80 % of their life
//! or 24 hours have passed (upstream's kubelet token manager); the volume
//! is rewritten with the new token at the next sync.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::Pod;

use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::typed;

/// At most this long before a token is requested again.
const MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Which token: (pod uid, audience, lifetime in seconds).
type Key = (String, String, i64);

#[derive(Default)]
pub struct Tokens {
    cache: Mutex<HashMap<Key, (String, Instant)>>,
}

/// When a token that lives `life` from now is due again.
pub fn refresh_after(life: Duration) -> Duration {
    (life * 4 / 5).min(MAX_AGE)
}

impl Tokens {
    /// The cached token, if it is not due for rotation.
    fn cached(&self, key: &Key) -> Option<String> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.get(key).filter(|(_, due)| Instant::now() < *due).map(|(t, _)| t.clone())
    }

    /// A token for `pod`'s ServiceAccount for `audience` ("" for the API
    /// server's), requested through `api` when none is cached or it is due.
    pub async fn get(
        &self,
        api: &orchestrator_client::Api,
        pod: &Pod,
        audience: &str,
        seconds: i64,
    ) -> Result<String, ApiError> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let key = (uid.clone(), audience.to_string(), seconds);
        if let Some(t) = self.cached(&key) {
            return Ok(t);
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let sa = pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into());
        let req = TokenRequest {
            spec: TokenRequestSpec {
                audiences: if audience.is_empty() { Vec::new() } else { vec![audience.to_string()] },
                expiration_seconds: Some(seconds),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: pod.metadata.name.clone(),
                    uid: Some(uid),
                }),
            },
            ..Default::default()
        };
        let body = serde_json::to_value(&req).map_err(|e| ApiError::internal(format!("TokenRequest: {e}")))?;
        let answer: TokenRequest = typed::decode(api.request_token(&ns, &sa, body).await?, "TokenRequest")?;
        let (token, expires) =
            answer.status.map_or_else(Default::default, |s| (s.token, Some(s.expiration_timestamp.0.as_second())));
        let now = k8s_openapi::jiff::Timestamp::now().as_second();
        let life = match expires {
            Some(e) if e > now => Duration::from_secs((e - now) as u64),
            _ => Duration::from_secs(seconds.max(0) as u64),
        };
        let due = Instant::now() + refresh_after(life);
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(key, (token.clone(), due));
        Ok(token)
    }

    /// Drops a removed pod's tokens.
    pub fn forget(&self, pod_uid: &str) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).retain(|(uid, _, _), _| uid != pod_uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_rotate_at_four_fifths_of_their_life_or_a_day() {
        assert_eq!(refresh_after(Duration::from_secs(3607)), Duration::from_millis(2_885_600));
        assert_eq!(refresh_after(Duration::from_secs(7 * 24 * 3600)), MAX_AGE);
    }
}

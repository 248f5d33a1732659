//! Bearer-token authentication: `Authorization: Bearer <token>` checked by
//! a chain of token authenticators, the first to know the token wins (as
//! upstream's union authenticator). A client certificate is checked first
//! (at the TLS layer), so a request with both acts as the certificate's
//! user; a token no authenticator accepts is a 401. Also TokenReview
//! (`authentication.k8s.io/v1`), which runs the same chain.

use http::HeaderMap;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewStatus, UserInfo};
use serde_json::Value;

use orchestrator_apimachinery::errors::ApiError;

use crate::{State, User, satoken};

/// One kind of bearer token: the user of `token` if it is valid for one of
/// `audiences`, else `None`.
pub type TokenAuthenticator = fn(&State, &str, &[String]) -> Option<User>;

/// The chain, in order. Each kind of token adds its one entry here.
pub const TOKEN_AUTHENTICATORS: &[TokenAuthenticator] = &[service_account, bootstrap_token];

fn service_account(state: &State, token: &str, audiences: &[String]) -> Option<User> {
    satoken::authenticate(&state.sa_keys, &state.registry, token, audiences)
}

/// A kubeadm bootstrap token (`bootstrap`): audiences do not apply.
fn bootstrap_token(state: &State, token: &str, _audiences: &[String]) -> Option<User> {
    crate::bootstrap::authenticate(&state.registry, token)
}

/// The audiences the API server accepts (upstream's `--api-audiences`,
/// which default to the issuer).
pub fn api_audiences() -> Vec<String> {
    vec![satoken::issuer()]
}

/// The bearer token of a request, if it carries one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The user of `token` for `audiences`, by the first authenticator that accepts it.
pub fn authenticate(state: &State, token: &str, audiences: &[String]) -> Option<User> {
    TOKEN_AUTHENTICATORS.iter().find_map(|a| a(state, token, audiences))
}

/// The user of a request without a client certificate: `Ok(None)` with no
/// token, a 401 Status for a token nobody accepts.
pub fn request_user(state: &State, headers: &HeaderMap) -> Result<Option<User>, ApiError> {
    match bearer(headers) {
        None => Ok(None),
        Some(token) => match authenticate(state, token, &api_audiences()) {
            Some(u) => Ok(Some(u)),
            None => Err(ApiError::new(401, "Unauthorized", "Unauthorized")),
        },
    }
}

/// `POST /apis/authentication.k8s.io/v1/tokenreviews`: whether the token
/// in the spec is valid for the spec's audiences (the API server's when
/// none) and whose it is.
pub fn token_review(state: &State, body: &[u8]) -> Result<Value, ApiError> {
    let mut review: TokenReview = serde_json::from_value(orchestrator_apimachinery::decode::json(body)?)
        .map_err(|e| ApiError::bad_request(format!("TokenReview: {e}")))?;
    let token = review.spec.token.clone().unwrap_or_default();
    if token.is_empty() {
        return Err(ApiError::new(
            422,
            "Invalid",
            "TokenReview.authentication.k8s.io \"\" is invalid: spec.token: Required value: token must be specified",
        ));
    }
    let wanted = review.spec.audiences.clone().filter(|a| !a.is_empty()).unwrap_or_else(api_audiences);
    review.status = Some(match authenticate(state, &token, &wanted) {
        Some(u) => TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(wanted),
            user: Some(UserInfo {
                username: Some(u.name),
                uid: Some(u.uid).filter(|u| !u.is_empty()),
                groups: Some(u.groups),
                extra: Some(u.extra).filter(|e| !e.is_empty()),
            }),
            error: None,
        },
        None => TokenReviewStatus {
            authenticated: Some(false),
            error: Some("[invalid bearer token, token lookup failed]".into()),
            ..Default::default()
        },
    });
    let mut v = serde_json::to_value(&review).map_err(|e| ApiError::internal(format!("TokenReview: {e}")))?;
    v["kind"] = "TokenReview".into();
    v["apiVersion"] = "authentication.k8s.io/v1".into();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(http::header::AUTHORIZATION, "Bearer abc.def".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc.def"));
        h.insert(http::header::AUTHORIZATION, "bearer   xyz ".parse().unwrap());
        assert_eq!(bearer(&h), Some("xyz"));
        h.insert(http::header::AUTHORIZATION, "Basic dXNlcjpwYXNz".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert(http::header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}

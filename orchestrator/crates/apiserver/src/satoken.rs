//! ServiceAccount tokens: JWTs signed ES256 with the key the control plane
//! keeps beside its CA (`sa.key`), with the claims of upstream's bound
//! tokens; the TokenRequest API (`serviceaccounts/<name>/token`) that
//! issues them, and their validation as bearer tokens (a token whose
//! ServiceAccount or bound object is gone, by uid, is refused).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestStatus};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};
use serde_json::json;

use orchestrator_apimachinery::cluster::CLUSTER_DOMAIN;
use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::{Registry, format_time, new_uid, uid_of};
use orchestrator_apimachinery::resources::by_kind;
use orchestrator_http::pki;

use crate::User;
use crate::access::{SA_PREFIX, authenticated};

/// Upstream's default `--service-account-issuer` and `--api-audiences`.
pub fn issuer() -> String {
    format!("https://kubernetes.default.svc.{CLUSTER_DOMAIN}")
}

/// TokenRequest's default and least lifetime (upstream's: 1 hour, 10 minutes).
const DEFAULT_SECONDS: i64 = 3600;
const MIN_SECONDS: i64 = 600;
const MAX_SECONDS: i64 = 1 << 32;

/// The token signing key.
pub struct Keys {
    signing: EcdsaKeyPair,
    kid: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error("{path}: not an ECDSA P-256 PKCS#8 key: {reason}")]
    Key { path: String, reason: String },
}

impl Keys {
    /// Loads the key at `path`, creating it (0600) at first start.
    pub fn load_or_generate(path: &Path) -> Result<Keys, KeyError> {
        let der = pki::load_or_generate_signing_key(path)?;
        let signing = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &SystemRandom::new())
            .map_err(|e| KeyError::Key { path: path.display().to_string(), reason: e.to_string() })?;
        let kid = B64.encode(ring::digest::digest(&ring::digest::SHA256, signing.public_key().as_ref()));
        Ok(Keys { signing, kid })
    }

    /// A signed JWT of `claims`.
    pub fn sign(&self, claims: &Claims) -> String {
        let header = B64.encode(json!({"alg": "ES256", "kid": self.kid}).to_string());
        let payload = B64.encode(serde_json::to_vec(claims).unwrap_or_default());
        let input = format!("{header}.{payload}");
        // Signing with a valid key and the system random source does not fail.
        let sig = self.signing.sign(&SystemRandom::new(), input.as_bytes()).expect("ECDSA signing works");
        format!("{input}.{}", B64.encode(sig.as_ref()))
    }

    /// The claims of a token this key signed, if its signature holds.
    pub fn verify(&self, token: &str) -> Result<Claims, &'static str> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not a JWT");
        };
        let header: serde_json::Value = B64
            .decode(header)
            .ok()
            .and_then(|h| serde_json::from_slice(&h).ok())
            .ok_or("a JWT header that is not base64url JSON")?;
        if header["alg"] != "ES256" {
            return Err("a JWT not signed ES256");
        }
        let sig = B64.decode(sig).map_err(|_| "a signature that is not base64url")?;
        let public =
            ring::signature::UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.signing.public_key().as_ref());
        let signed = &token[..header_len(token)];
        public.verify(signed.as_bytes(), &sig).map_err(|_| "a signature this server did not make")?;
        let payload = B64.decode(payload).map_err(|_| "claims that are not base64url")?;
        serde_json::from_slice(&payload).map_err(|_| "claims that are not those of a ServiceAccount token")
    }
}

/// The length of `header.payload` in a JWT.
fn header_len(token: &str) -> usize {
    token.rfind('.').unwrap_or(0)
}

/// The claims of upstream's bound ServiceAccount tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: Private,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Private {
    pub namespace: String,
    pub serviceaccount: Ref,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Ref>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Ref>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ref {
    pub name: String,
    pub uid: String,
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default()
}

/// Why a token is refused (logged; clients get a bare 401).
fn check(reg: &Registry, c: &Claims, audiences: &[String]) -> Result<(), String> {
    let now = unix_now();
    if c.iss != issuer() {
        return Err(format!("issuer {:?} is not {:?}", c.iss, issuer()));
    }
    if !c.aud.iter().any(|a| audiences.contains(a)) {
        return Err(format!("audiences {:?} are none of {audiences:?}", c.aud));
    }
    if now >= c.exp {
        return Err("service account token has expired".into());
    }
    if now < c.nbf {
        return Err("service account token is not valid yet".into());
    }
    let ns = &c.kubernetes.namespace;
    let sa = &c.kubernetes.serviceaccount;
    if c.sub != format!("{SA_PREFIX}{ns}:{}", sa.name) {
        return Err(format!("subject {:?} does not name the ServiceAccount {ns}/{}", c.sub, sa.name));
    }
    let live = |kind: &str, r: &Ref| -> Result<(), String> {
        let rt = by_kind(kind).expect("served");
        match reg.get(rt, Some(ns), &r.name) {
            Ok(o) if uid_of(&o) == r.uid => Ok(()),
            Ok(o) => Err(format!("{kind} {ns}/{} has uid {} (the token's: {})", r.name, uid_of(&o), r.uid)),
            Err(e) => Err(format!("{kind} {ns}/{}: {}", r.name, e.message)),
        }
    };
    live("ServiceAccount", sa)?;
    if let Some(p) = &c.kubernetes.pod {
        live("Pod", p)?;
    }
    if let Some(s) = &c.kubernetes.secret {
        live("Secret", s)?;
    }
    Ok(())
}

/// The user of a valid ServiceAccount token for one of `audiences`.
pub fn authenticate(keys: &Keys, reg: &Registry, token: &str, audiences: &[String]) -> Option<User> {
    let claims = match keys.verify(token) {
        Ok(c) => c,
        Err(why) => {
            tracing::debug!("bearer token refused: {why}");
            return None;
        }
    };
    if let Err(why) = check(reg, &claims, audiences) {
        tracing::debug!(sub = %claims.sub, "ServiceAccount token refused: {why}");
        return None;
    }
    let k = &claims.kubernetes;
    let mut user = authenticated(claims.sub.clone(), Vec::new());
    user.uid = k.serviceaccount.uid.clone();
    user.extra.insert("authentication.kubernetes.io/credential-id".into(), vec![format!("JTI={}", claims.jti)]);
    if let Some(p) = &k.pod {
        user.extra.insert("authentication.kubernetes.io/pod-name".into(), vec![p.name.clone()]);
        user.extra.insert("authentication.kubernetes.io/pod-uid".into(), vec![p.uid.clone()]);
    }
    Some(user)
}

/// The claims of a token for the API server's audience, valid from now
/// for `seconds`, bound to a pod or a secret if given.
pub fn claims(ns: &str, sa: &str, sa_uid: &str, seconds: i64, pod: Option<Ref>, secret: Option<Ref>) -> Claims {
    let now = unix_now();
    Claims {
        iss: issuer(),
        sub: format!("{SA_PREFIX}{ns}:{sa}"),
        aud: vec![issuer()],
        exp: now + seconds,
        iat: now,
        nbf: now,
        jti: new_uid(),
        kubernetes: Private {
            namespace: ns.to_string(),
            serviceaccount: Ref { name: sa.to_string(), uid: sa_uid.to_string() },
            pod,
            secret,
        },
    }
}

fn invalid(name: &str, field: &str, value: &str, why: &str) -> ApiError {
    ApiError::new(
        422,
        "Invalid",
        format!("TokenRequest.authentication.k8s.io {name:?} is invalid: {field}: Invalid value: {value}: {why}"),
    )
}

/// `POST serviceaccounts/<name>/token`: a token for the ServiceAccount,
/// bound to a Pod or Secret when the request names one.
pub fn token_request(keys: &Keys, reg: &Registry, ns: &str, name: &str, body: &[u8]) -> Result<TokenRequest, ApiError> {
    let mut req: TokenRequest = if body.is_empty() {
        TokenRequest::default()
    } else {
        serde_json::from_value(orchestrator_apimachinery::decode::json(body)?)
            .map_err(|e| ApiError::bad_request(format!("TokenRequest: {e}")))?
    };
    let seconds = req.spec.expiration_seconds.unwrap_or(DEFAULT_SECONDS);
    if seconds < MIN_SECONDS {
        return Err(invalid(
            name,
            "spec.expirationSeconds",
            &seconds.to_string(),
            "may not specify a duration less than 10 minutes",
        ));
    }
    if seconds > MAX_SECONDS {
        return Err(invalid(
            name,
            "spec.expirationSeconds",
            &seconds.to_string(),
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    let sa: ServiceAccount = typed(reg.get(by_kind("ServiceAccount").expect("served"), Some(ns), name)?)?;
    let sa_uid = sa.metadata.uid.clone().unwrap_or_default();
    let (mut pod, mut secret) = (None, None);
    if let Some(b) = &mut req.spec.bound_object_ref {
        bind(reg, ns, name, b, &mut pod, &mut secret)?;
    }
    if req.spec.audiences.is_empty() {
        req.spec.audiences = vec![issuer()];
    }
    req.spec.expiration_seconds = Some(seconds);
    let mut claims = claims(ns, name, &sa_uid, seconds, pod, secret);
    claims.aud = req.spec.audiences.clone();
    let expires = time::OffsetDateTime::from_unix_timestamp(claims.exp)
        .map_err(|e| ApiError::internal(format!("token expiry {}: {e}", claims.exp)))?;
    req.metadata.name = Some(name.to_string());
    req.metadata.namespace = Some(ns.to_string());
    req.metadata.creation_timestamp = None;
    req.status = Some(TokenRequestStatus {
        token: keys.sign(&claims),
        expiration_timestamp: serde_json::from_value(json!(format_time(expires)))
            .map_err(|e| ApiError::internal(format!("token expiry: {e}")))?,
    });
    Ok(req)
}

/// Checks a TokenRequest's bound object (it exists, its uid matches, a
/// Pod runs as this ServiceAccount) and fills in its uid.
fn bind(
    reg: &Registry,
    ns: &str,
    sa: &str,
    b: &mut BoundObjectReference,
    pod: &mut Option<Ref>,
    secret: &mut Option<Ref>,
) -> Result<(), ApiError> {
    let kind = b.kind.clone().unwrap_or_default();
    let api_version = b.api_version.clone().unwrap_or_default();
    if !matches!(kind.as_str(), "Pod" | "Secret") || api_version != "v1" {
        return Err(ApiError::bad_request(format!(
            "cannot bind token for serviceaccount {sa:?} to object of kind {:?}",
            format!("{api_version}, Kind={kind}")
        )));
    }
    let name = b.name.clone().unwrap_or_default();
    let o = reg.get(by_kind(&kind).expect("served"), Some(ns), &name)?;
    let uid = uid_of(&o).to_string();
    if let Some(want) = b.uid.as_deref().filter(|u| !u.is_empty())
        && want != uid
    {
        return Err(ApiError::new(
            409,
            "Conflict",
            format!(
                "the UID in the bound object reference ({want}) does not match the UID in record. The object might have been deleted and then recreated"
            ),
        ));
    }
    b.uid = Some(uid.clone());
    let r = Ref { name, uid };
    if kind == "Pod" {
        let p: Pod = typed(o)?;
        let runs_as = p.spec.and_then(|s| s.service_account_name).unwrap_or_else(|| "default".into());
        if runs_as != sa {
            return Err(ApiError::bad_request(format!(
                "cannot bind token for serviceaccount {sa:?} to pod running with different serviceaccount name."
            )));
        }
        *pod = Some(r);
    } else {
        *secret = Some(r);
    }
    Ok(())
}

fn typed<T: serde::de::DeserializeOwned>(o: serde_json::Value) -> Result<T, ApiError> {
    serde_json::from_value(o).map_err(|e| ApiError::internal(format!("a stored object does not decode: {e}")))
}

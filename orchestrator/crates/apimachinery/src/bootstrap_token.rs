//! Bootstrap tokens as kubeadm makes them: `[a-z0-9]{6}.[a-z0-9]{16}`,
//! stored as the Secret `kube-system/bootstrap-token-<id>` of type
//! `bootstrap.kubernetes.io/token` with `token-id`, `token-secret`,
//! `expiration` (RFC 3339), `usage-bootstrap-authentication`,
//! `usage-bootstrap-signing` and `auth-extra-groups`. The API server
//! authenticates with them (`system:bootstrap:<id>`), the token cleaner
//! removes expired ones, the CLI creates, lists and deletes them.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
pub const NAMESPACE: &str = "kube-system";
pub const SECRET_PREFIX: &str = "bootstrap-token-";
pub const USER_PREFIX: &str = "system:bootstrap:";
/// The group of every bootstrap-token user; extra groups must start with `system:bootstrappers:`.
pub const GROUP: &str = "system:bootstrappers";

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TokenError {
    #[error("bootstrap token {shown:?} does not match the format [a-z0-9]{{6}}.[a-z0-9]{{16}}")]
    Format { shown: String },
    #[error("Secret {NAMESPACE}/{name}: {what}")]
    Secret { name: String, what: String },
}

/// A token as given on a command line or in a config.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub id: String,
    pub secret: String,
}

impl std::fmt::Debug for Token {
    // The secret half stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({}.<redacted>)", self.id)
    }
}

fn is_part(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| ALPHABET.contains(&b))
}

impl TryFrom<&str> for Token {
    type Error = TokenError;

    fn try_from(s: &str) -> Result<Token, TokenError> {
        match s.split_once('.') {
            Some((id, secret)) if is_part(id, 6) && is_part(secret, 16) => {
                Ok(Token { id: id.to_string(), secret: secret.to_string() })
            }
            // Never echo a whole secret: the id part (or its start) is enough to say which.
            _ => Err(TokenError::Format { shown: format!("{}…", s.chars().take(6).collect::<String>()) }),
        }
    }
}

impl Token {
    /// A new random token.
    pub fn generate() -> Token {
        let mut b = [0u8; 22];
        getrandom::fill(&mut b).expect("the system random source works");
        // 36 does not divide 256: reject the top of the range to keep every character equally likely.
        let mut chars = Vec::with_capacity(22);
        let mut pool = b.to_vec();
        while chars.len() < 22 {
            if pool.is_empty() {
                let mut more = [0u8; 22];
                getrandom::fill(&mut more).expect("the system random source works");
                pool = more.to_vec();
            }
            let x = pool.pop().expect("refilled");
            if x < 252 {
                chars.push(ALPHABET[usize::from(x) % ALPHABET.len()] as char);
            }
        }
        let s: String = chars.into_iter().collect();
        Token { id: s[..6].to_string(), secret: s[6..].to_string() }
    }

    pub fn secret_name(&self) -> String {
        format!("{SECRET_PREFIX}{}", self.id)
    }

    /// The whole token, `<id>.<secret>`.
    pub fn reveal(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    /// The Secret that stores this token, for authentication (and signing,
    /// as kubeadm's default), expiring `ttl` after `now` (Unix seconds).
    pub fn to_secret(&self, now: i64, ttl: Option<Duration>, description: &str) -> Secret {
        let mut data = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            data.insert(k.to_string(), ByteString(v.into_bytes()));
        };
        put("token-id", self.id.clone());
        put("token-secret", self.secret.clone());
        put("usage-bootstrap-authentication", "true".into());
        put("usage-bootstrap-signing", "true".into());
        if !description.is_empty() {
            put("description", description.to_string());
        }
        if let Some(ttl) = ttl {
            let at = now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
            put("expiration", crate::registry::format_time(time_at(at)));
        }
        Secret {
            metadata: ObjectMeta {
                name: Some(self.secret_name()),
                namespace: Some(NAMESPACE.into()),
                ..Default::default()
            },
            type_: Some(SECRET_TYPE.into()),
            data: Some(data),
            ..Default::default()
        }
    }
}

fn time_at(unix: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// A token as stored in its Secret.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub token: Token,
    /// Unix seconds; `None`: never expires.
    pub expiration: Option<i64>,
    pub authentication: bool,
    pub signing: bool,
    pub extra_groups: Vec<String>,
    pub description: String,
}

impl Stored {
    /// Reads a bootstrap-token Secret; `Err` names what is wrong with it.
    pub fn from_secret(s: &Secret) -> Result<Stored, TokenError> {
        let name = s.metadata.name.clone().unwrap_or_default();
        let bad = |what: String| TokenError::Secret { name: name.clone(), what };
        if s.type_.as_deref() != Some(SECRET_TYPE) {
            return Err(bad(format!("type is {:?}, not {SECRET_TYPE:?}", s.type_.as_deref().unwrap_or_default())));
        }
        let get = |k: &str| -> Option<String> {
            s.data.as_ref().and_then(|d| d.get(k)).map(|b| String::from_utf8_lossy(&b.0).into_owned())
        };
        let id = get("token-id").ok_or_else(|| bad("data.token-id: Required value".into()))?;
        let secret = get("token-secret").ok_or_else(|| bad("data.token-secret: Required value".into()))?;
        if !is_part(&id, 6) || !is_part(&secret, 16) {
            return Err(bad("data.token-id/token-secret: not [a-z0-9]{6} and [a-z0-9]{16}".into()));
        }
        if name != format!("{SECRET_PREFIX}{id}") {
            return Err(bad(format!("the name does not match data.token-id {id:?}")));
        }
        let expiration = match get("expiration") {
            None => None,
            Some(t) => Some(
                crate::registry::parse_time(&t)
                    .ok_or_else(|| bad(format!("data.expiration: {t:?} is not an RFC 3339 time")))?,
            ),
        };
        let extra_groups: Vec<String> = get("auth-extra-groups")
            .map(|g| g.split(',').map(str::trim).filter(|g| !g.is_empty()).map(str::to_string).collect())
            .unwrap_or_default();
        if let Some(g) = extra_groups.iter().find(|g| !g.starts_with(&format!("{GROUP}:"))) {
            return Err(bad(format!("data.auth-extra-groups: {g:?} does not start with \"{GROUP}:\"")));
        }
        Ok(Stored {
            token: Token { id, secret },
            expiration,
            authentication: get("usage-bootstrap-authentication").as_deref() == Some("true"),
            signing: get("usage-bootstrap-signing").as_deref() == Some("true"),
            extra_groups,
            description: get("description").unwrap_or_default(),
        })
    }

    pub fn expired(&self, now: i64) -> bool {
        self.expiration.is_some_and(|e| e <= now)
    }

    /// The user this token authenticates as, with `presented` (the whole
    /// token a client sent) compared in constant time; `None` when it does
    /// not match, is not for authentication, or has expired.
    pub fn authenticates(&self, presented: &Token, now: i64) -> Option<(String, Vec<String>)> {
        let same = presented.id == self.token.id
            && presented.secret.len() == self.token.secret.len()
            && presented.secret.bytes().zip(self.token.secret.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        if !same || !self.authentication || self.expired(now) {
            return None;
        }
        let mut groups = vec![GROUP.to_string()];
        groups.extend(self.extra_groups.iter().cloned());
        Some((format!("{USER_PREFIX}{}", self.token.id), groups))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_is_kubeadms() {
        let t = Token::try_from("abcdef.0123456789abcdef").unwrap();
        assert_eq!((t.id.as_str(), t.secret_name().as_str()), ("abcdef", "bootstrap-token-abcdef"));
        for bad in ["abcdef0123456789abcdef", "ABCDEF.0123456789abcdef", "abcde.0123456789abcdef", "abcdef.0123", ""] {
            let e = Token::try_from(bad).unwrap_err();
            assert!(e.to_string().contains("[a-z0-9]{6}.[a-z0-9]{16}"), "{e}");
            assert!(!e.to_string().contains("0123456789"), "the secret is not echoed: {e}");
        }
        let g = Token::generate();
        assert_eq!(Token::try_from(g.reveal().as_str()).unwrap(), g);
        assert_ne!(Token::generate(), g);
        assert!(!format!("{g:?}").contains(&g.secret));
    }

    #[test]
    fn secret_round_trip_expiry_and_authentication() {
        let t = Token::try_from("abcdef.0123456789abcdef").unwrap();
        let s = t.to_secret(1_000, Some(Duration::from_secs(60)), "for node-2");
        let stored = Stored::from_secret(&s).unwrap();
        assert_eq!(stored.expiration, Some(1_060));
        assert!(stored.authentication && stored.signing);
        let (user, groups) = stored.authenticates(&t, 1_059).unwrap();
        assert_eq!((user.as_str(), groups), ("system:bootstrap:abcdef", vec![GROUP.to_string()]));
        assert!(stored.authenticates(&t, 1_060).is_none(), "expired at its expiration");
        let wrong = Token::try_from("abcdef.0123456789abcdee").unwrap();
        assert!(stored.authenticates(&wrong, 1_000).is_none());
        assert!(Stored::from_secret(&t.to_secret(0, None, "")).unwrap().authenticates(&t, i64::MAX).is_some());
    }

    #[test]
    fn bad_secrets_say_what_is_wrong() {
        let t = Token::try_from("abcdef.0123456789abcdef").unwrap();
        let mut s = t.to_secret(0, None, "");
        s.type_ = Some("Opaque".into());
        assert!(Stored::from_secret(&s).unwrap_err().to_string().contains("type is \"Opaque\""));
        let mut s = t.to_secret(0, None, "");
        s.data.as_mut().unwrap().insert("auth-extra-groups".into(), ByteString(b"system:masters".to_vec()));
        assert!(Stored::from_secret(&s).unwrap_err().to_string().contains("auth-extra-groups"));
        let mut s = t.to_secret(0, None, "");
        s.data.as_mut().unwrap().insert("auth-extra-groups".into(), ByteString(b"system:bootstrappers:edge".to_vec()));
        s.data.as_mut().unwrap().insert("usage-bootstrap-authentication".into(), ByteString(b"false".to_vec()));
        let stored = Stored::from_secret(&s).unwrap();
        assert_eq!(stored.extra_groups, vec!["system:bootstrappers:edge".to_string()]);
        assert!(stored.authenticates(&t, 0).is_none(), "not for authentication");
        let mut s = t.to_secret(0, None, "");
        s.data.as_mut().unwrap().insert("expiration".into(), ByteString(b"tomorrow".to_vec()));
        assert!(Stored::from_secret(&s).unwrap_err().to_string().contains("data.expiration"));
    }
}

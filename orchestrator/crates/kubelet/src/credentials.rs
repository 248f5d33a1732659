//! `imagePullSecrets`: the credentials of `kubernetes.io/dockerconfigjson`
//! (`.dockerconfigjson`: `{"auths": {REGISTRY: {username, password, auth}}}`)
//! and legacy `kubernetes.io/dockercfg` (`.dockercfg`: `{REGISTRY: {…}}`)
//! Secrets that match an image, as CRI `AuthConfig`s to try in turn (as
//! upstream's keyring: the secrets in order, a more specific key first).
//!
//! A key matches an image when its host is the image's registry (with
//! `*.` matching one label, and docker.io's aliases folded together) and
//! its path, if any, is a prefix of the image's repository. Keys may carry
//! a scheme and docker's `/v1/`/`/v2/` suffix. `server_address` is the
//! image's registry as a URL: containerd parses it as one and gives the
//! credentials to that host only.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::Value;

use crate::cri::v1;

/// The registry host of an image reference and the repository path in it.
pub fn registry_of(image: &str) -> (String, String) {
    let (first, rest) = image.split_once('/').unwrap_or(("", image));
    let (host, path) = if first.contains(['.', ':']) || first == "localhost" {
        (first.to_string(), rest.to_string())
    } else {
        ("docker.io".to_string(), image.to_string())
    };
    // The repository without tag or digest.
    let path = path.split('@').next().unwrap_or_default();
    let path = match path.rsplit_once(':') {
        Some((p, tag)) if !tag.contains('/') => p,
        _ => path,
    };
    (fold_docker_io(&host), path.to_string())
}

fn fold_docker_io(host: &str) -> String {
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".into(),
        h => h.to_ascii_lowercase(),
    }
}

/// A key of a docker config as (host, path prefix).
fn parse_key(key: &str) -> (String, String) {
    let k = key.trim();
    let k = k.strip_prefix("https://").or_else(|| k.strip_prefix("http://")).unwrap_or(k);
    let (host, path) = k.split_once('/').unwrap_or((k, ""));
    let path = path.trim_end_matches('/');
    let path = if matches!(path, "v1" | "v2") { "" } else { path };
    (fold_docker_io(host), path.to_string())
}

fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host.split_once('.').is_some_and(|(_, rest)| rest == suffix),
        None => pattern == host,
    }
}

/// One registry's entry as a CRI AuthConfig (`auth` decoded into user and password when they are absent).
fn auth_config(server_address: &str, entry: &Value) -> Option<v1::AuthConfig> {
    let s = |f: &str| entry.get(f).and_then(Value::as_str).unwrap_or_default().to_string();
    let (mut username, mut password) = (s("username"), s("password"));
    let auth = s("auth");
    if username.is_empty() && !auth.is_empty() {
        let decoded = base64::engine::general_purpose::STANDARD.decode(auth.trim()).ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (u, p) = decoded.split_once(':')?;
        (username, password) = (u.to_string(), p.to_string());
    }
    if username.is_empty() && s("identitytoken").is_empty() && s("registrytoken").is_empty() {
        return None;
    }
    Some(v1::AuthConfig {
        username,
        password,
        auth,
        server_address: server_address.to_string(),
        identity_token: s("identitytoken"),
        registry_token: s("registrytoken"),
    })
}

/// The credentials for `image` in the given Secrets' data, in the order to try them.
pub fn for_image(image: &str, secrets: &[BTreeMap<String, Vec<u8>>]) -> Vec<v1::AuthConfig> {
    let (host, repo) = registry_of(image);
    // containerd hands credentials only to the host of this URL (it parses it as one; docker.io is served by registry-1).
    let server = format!("https://{}", if host == "docker.io" { "registry-1.docker.io" } else { host.as_str() });
    let mut out = Vec::new();
    for data in secrets {
        let entries: Option<serde_json::Map<String, Value>> = if let Some(json) = data.get(".dockerconfigjson") {
            serde_json::from_slice::<Value>(json).ok().and_then(|v| v.get("auths").and_then(Value::as_object).cloned())
        } else if let Some(json) = data.get(".dockercfg") {
            serde_json::from_slice::<Value>(json).ok().and_then(|v| v.as_object().cloned())
        } else {
            None
        };
        let mut matched: Vec<(usize, v1::AuthConfig)> = entries
            .into_iter()
            .flatten()
            .filter_map(|(key, entry)| {
                let (h, path) = parse_key(&key);
                let path_ok = path.is_empty() || repo == path || repo.starts_with(&format!("{path}/"));
                (host_matches(&h, &host) && path_ok).then(|| auth_config(&server, &entry).map(|a| (path.len(), a)))?
            })
            .collect();
        // Longer (more specific) paths first, as upstream's keyring.
        matched.sort_by_key(|m| std::cmp::Reverse(m.0));
        out.extend(matched.into_iter().map(|(_, a)| a));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(key: &str, json: &str) -> BTreeMap<String, Vec<u8>> {
        BTreeMap::from([(key.to_string(), json.as_bytes().to_vec())])
    }

    #[test]
    fn registries_of_images() {
        assert_eq!(registry_of("busybox"), ("docker.io".into(), "busybox".into()));
        assert_eq!(registry_of("library/busybox:1.36"), ("docker.io".into(), "library/busybox".into()));
        assert_eq!(registry_of("127.0.0.1:5000/team/app:v1"), ("127.0.0.1:5000".into(), "team/app".into()));
        assert_eq!(registry_of("localhost/app@sha256:abc"), ("localhost".into(), "app".into()));
        assert_eq!(registry_of("index.docker.io/library/x"), ("docker.io".into(), "library/x".into()));
        assert_eq!(registry_of("reg.example.com/a/b"), ("reg.example.com".into(), "a/b".into()));
    }

    #[test]
    fn dockerconfigjson_maps_to_auth_configs() {
        let json = r#"{"auths": {
            "127.0.0.1:5000": {"username": "alice", "password": "s3cret"},
            "https://127.0.0.1:5000/team/": {"auth": "Ym9iOmh1bnRlcjI="},
            "https://index.docker.io/v1/": {"auth": "ZG9jazpwdw=="},
            "*.example.com": {"username": "wild", "password": "card"},
            "other:5000": {"username": "nobody", "password": "x"}
        }}"#;
        let s = [secret(".dockerconfigjson", json)];
        let users =
            |image: &str| for_image(image, &s).into_iter().map(|a| (a.username, a.password)).collect::<Vec<_>>();
        // The more specific path first, then the whole registry.
        assert_eq!(
            users("127.0.0.1:5000/team/app:1"),
            [("bob".to_string(), "hunter2".to_string()), ("alice".into(), "s3cret".into())]
        );
        assert_eq!(users("127.0.0.1:5000/teamx/app"), [("alice".to_string(), "s3cret".to_string())]);
        assert_eq!(users("busybox:1"), [("dock".to_string(), "pw".to_string())]);
        assert_eq!(users("reg.example.com/app"), [("wild".to_string(), "card".to_string())]);
        assert!(users("a.b.example.com/app").is_empty(), "a wildcard matches one label");
        assert!(users("quay.io/app").is_empty());
        let a = &for_image("127.0.0.1:5000/x", &s)[0];
        assert_eq!(a.server_address, "https://127.0.0.1:5000");
        assert_eq!(for_image("busybox", &s)[0].server_address, "https://registry-1.docker.io");
    }

    #[test]
    fn legacy_dockercfg_and_secrets_in_order() {
        let first = secret(".dockercfg", r#"{"reg.local": {"username": "one", "password": "1"}}"#);
        let second = secret(".dockerconfigjson", r#"{"auths": {"reg.local": {"username": "two", "password": "2"}}}"#);
        let broken = secret(".dockerconfigjson", "not json");
        let other = secret("token", "not a registry secret");
        let users: Vec<String> =
            for_image("reg.local/app", &[first, broken, other, second]).into_iter().map(|a| a.username).collect();
        assert_eq!(users, ["one", "two"]);
    }
}

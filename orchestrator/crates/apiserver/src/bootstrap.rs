//! Joining the cluster: bootstrap-token bearer authentication (as
//! upstream's `--enable-bootstrap-token-auth`: user `system:bootstrap:<id>`
//! in `system:bootstrappers` and the token's extra groups, only while the
//! token's Secret exists, is for authentication and has not expired), and
//! the `kube-public/cluster-info` ConfigMap (the cluster CA and the API's
//! address) that anyone may read, as kubeadm publishes it: a joining node
//! checks the CA there against its pin before it trusts this server.

use http::Method;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use serde_json::json;

use orchestrator_apimachinery::bootstrap_token::{NAMESPACE, Stored, Token};
use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::{Part, Registry, WriteOptions};
use orchestrator_apimachinery::resources::by_kind;
use orchestrator_apimachinery::typed;
use orchestrator_http::pki;

use crate::User;

pub const CLUSTER_INFO_NAMESPACE: &str = "kube-public";
pub const CLUSTER_INFO: &str = "cluster-info";
const CLUSTER_INFO_ROLE: &str = "kubeadm:bootstrap-signer-clusterinfo";
pub const ANONYMOUS: &str = "system:anonymous";
pub const UNAUTHENTICATED: &str = "system:unauthenticated";

/// The user a bootstrap token authenticates as; `None` for anything else
/// (not the format, no such Secret, expired, not for authentication).
pub fn authenticate(registry: &Registry, token: &str) -> Option<User> {
    let token = Token::try_from(token).ok()?;
    let secret = registry.get(by_kind("Secret")?, Some(NAMESPACE), &token.secret_name()).ok()?;
    let secret: Secret = typed::decode(secret, "bootstrap token Secret").ok()?;
    let stored = match Stored::from_secret(&secret) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("bootstrap token {}: {e}", token.id);
            return None;
        }
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let (name, groups) = stored.authenticates(&token, now)?;
    Some(crate::access::authenticated(name, groups))
}

/// The anonymous user, for the one resource it may read (`cluster-info`).
pub fn anonymous(method: &Method, path: &str) -> Option<User> {
    let want = format!("/api/v1/namespaces/{CLUSTER_INFO_NAMESPACE}/configmaps/{CLUSTER_INFO}");
    (method == Method::GET && path == want).then(|| User {
        name: ANONYMOUS.into(),
        groups: vec![UNAUTHENTICATED.into()],
        ..Default::default()
    })
}

fn create_or_replace(
    registry: &Registry,
    kind: &str,
    ns: Option<&str>,
    obj: serde_json::Value,
) -> Result<(), ApiError> {
    let rt = by_kind(kind).expect("served");
    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
    match registry.create(rt, ns, obj.clone(), &WriteOptions::default()) {
        Err(e) if e.reason == "AlreadyExists" => {
            registry.modify(rt, ns, &name, Part::Main, &WriteOptions::default(), |o| {
                let mut changed = false;
                for field in ["data", "rules", "roleRef", "subjects"] {
                    if let Some(v) = obj.get(field)
                        && o.get(field) != Some(v)
                    {
                        o[field] = v.clone();
                        changed = true;
                    }
                }
                Ok(changed)
            })?;
            Ok(())
        }
        r => r.map(|_| ()),
    }
}

/// Writes `kube-public/cluster-info` (a kubeconfig with the server and
/// the CA, no credentials) and the Role and RoleBinding that let
/// `system:anonymous` read it, as kubeadm does.
pub fn publish_cluster_info(registry: &Registry, url: &str, ca: &pki::CertKey) -> Result<(), ApiError> {
    use base64::Engine as _;
    let ca_data = base64::engine::general_purpose::STANDARD.encode(&ca.cert_pem);
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: \"\"\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca_data}\n\
         contexts: []\ncurrent-context: \"\"\npreferences: {{}}\nusers: []\n"
    );
    let cm = ConfigMap {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(CLUSTER_INFO.into()),
            namespace: Some(CLUSTER_INFO_NAMESPACE.into()),
            ..Default::default()
        },
        data: Some([("kubeconfig".to_string(), kubeconfig)].into()),
        ..Default::default()
    };
    let ns = Some(CLUSTER_INFO_NAMESPACE);
    create_or_replace(registry, "ConfigMap", ns, typed::encode(&cm, "cluster-info")?)?;
    let role = json!({"metadata": {"name": CLUSTER_INFO_ROLE, "namespace": CLUSTER_INFO_NAMESPACE},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [CLUSTER_INFO], "verbs": ["get"]}]});
    create_or_replace(registry, "Role", ns, role)?;
    let binding = json!({"metadata": {"name": CLUSTER_INFO_ROLE, "namespace": CLUSTER_INFO_NAMESPACE},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": CLUSTER_INFO_ROLE},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": ANONYMOUS}]});
    create_or_replace(registry, "RoleBinding", ns, binding)
}

/// Stores `token` (from the machine config) if its Secret does not exist yet.
pub fn ensure_token(registry: &Registry, token: &Token) -> Result<(), ApiError> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let secret = typed::encode(&token.to_secret(now, None, "from the machine config"), "bootstrap token")?;
    match registry.create(by_kind("Secret").expect("served"), Some(NAMESPACE), secret, &WriteOptions::default()) {
        Err(e) if e.reason == "AlreadyExists" => Ok(()),
        r => r.map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn registry() -> (tempfile::TempDir, Registry) {
        let d = tempfile::tempdir().unwrap();
        let store =
            orchestrator_store::SqliteStore::open(&d.path().join("s.db"), orchestrator_store::Durability::Normal)
                .unwrap();
        let r = Registry::new(Arc::new(store));
        r.bootstrap("127.0.0.1:6443").unwrap();
        (d, r)
    }

    fn store(r: &Registry, t: &Token, ttl: Option<Duration>) {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let s = typed::encode(&t.to_secret(now, ttl, ""), "t").unwrap();
        r.create(by_kind("Secret").unwrap(), Some(NAMESPACE), s, &WriteOptions::default()).unwrap();
    }

    #[test]
    fn bearer_tokens_authenticate_while_stored_and_unexpired() {
        let (_d, r) = registry();
        let t = Token::generate();
        assert!(authenticate(&r, &t.reveal()).is_none(), "no Secret yet");
        store(&r, &t, Some(Duration::from_secs(3600)));
        let u = authenticate(&r, &t.reveal()).unwrap();
        assert_eq!(u.name, format!("system:bootstrap:{}", t.id));
        assert!(u.groups.contains(&"system:bootstrappers".to_string()));
        assert!(u.groups.contains(&"system:authenticated".to_string()));
        assert!(authenticate(&r, &format!("{}.0000000000000000", t.id)).is_none(), "wrong secret");
        assert!(authenticate(&r, "not-a-token").is_none());
        r.delete(by_kind("Secret").unwrap(), Some(NAMESPACE), &t.secret_name(), &Default::default()).unwrap();
        assert!(authenticate(&r, &t.reveal()).is_none(), "deleted");
        let expired = Token::generate();
        let past = typed::encode(&expired.to_secret(1_000, Some(Duration::from_secs(1)), ""), "t").unwrap();
        r.create(by_kind("Secret").unwrap(), Some(NAMESPACE), past, &WriteOptions::default()).unwrap();
        assert!(authenticate(&r, &expired.reveal()).is_none(), "expired");
    }

    #[test]
    fn the_anonymous_path() {
        assert!(anonymous(&Method::GET, "/api/v1/namespaces/kube-public/configmaps/cluster-info").is_some());
        assert!(anonymous(&Method::GET, "/api/v1/namespaces/kube-public/configmaps/other").is_none());
        assert!(anonymous(&Method::PUT, "/api/v1/namespaces/kube-public/configmaps/cluster-info").is_none());
    }
}

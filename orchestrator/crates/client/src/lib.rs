//! How the kubelet reaches the API: in the same process (a control-plane
//! node: calls on the [`Registry`]), or over HTTPS with a kubeconfig's
//! client certificate (a worker node). Both offer the few calls the
//! kubelet makes: get, list by field selector, create, read-modify-write
//! with conflict retries, delete, and watch.

pub mod drain;
mod failover;
pub mod health;
mod resume;

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, header};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::mpsc;

use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::{
    DeleteOptions, ListOptions, ObjectWatch, Part, Registry, WriteOptions, resource_version_of,
};
use orchestrator_apimachinery::resources::{ResourceType, by_kind};
use orchestrator_apimachinery::selector::FieldSelector;
use orchestrator_http::Body;

fn rt(kind: &str) -> &'static ResourceType {
    by_kind(kind).expect("a kind the server serves")
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("a registry call does not panic")
}

#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error("read {path}: {source}")]
    Read { path: std::path::PathBuf, source: std::io::Error },
    #[error("{path}: {what}")]
    Invalid { path: std::path::PathBuf, what: String },
}

/// API servers over HTTPS: their addresses (one, or every control plane's),
/// the TLS set-up from a kubeconfig. Each request opens its connection
/// with the TLS set-up of that moment, so a renewed client certificate
/// ([`Remote::set_client_cert`]) is used from the next request on, with no
/// restart. A request goes to the endpoint in use; when that one does not
/// answer (refused, reset, timed out) or answers 503, the client moves to
/// the next and stays there (module `failover`).
#[derive(Clone)]
pub struct Remote {
    endpoints: failover::Endpoints,
    tls: Arc<std::sync::RwLock<Arc<rustls::ClientConfig>>>,
    /// A bearer token sent with every request (a bootstrap token while joining).
    bearer: Option<String>,
    /// The cluster CA (PEM), which also signs the API server's client certificate towards kubelets.
    pub ca_pem: String,
}

/// How a [`Remote`] proves who it is.
pub enum Credentials<'a> {
    /// A client certificate and its key (PEM).
    Certificate { cert_pem: &'a [u8], key_pem: &'a [u8] },
    /// A bearer token, no certificate.
    Bearer(&'a str),
    /// Nobody: anonymous requests.
    Anonymous,
}

/// How a [`Remote`] checks the server.
pub enum Trust<'a> {
    /// Its chain must lead to this CA (PEM).
    Ca(&'a [u8]),
    /// Any certificate: only to read `cluster-info`, whose CA is then checked against a pin.
    Unverified,
}

fn client_config(trust: &Trust<'_>, creds: &Credentials<'_>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|x| e(&x))?;
    let builder = match trust {
        Trust::Ca(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(CertificateDer::from_pem_slice(ca).map_err(|x| e(&x))?).map_err(|x| e(&x))?;
            builder.with_root_certificates(roots)
        }
        Trust::Unverified => {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(orchestrator_http::AnyServerCert(provider)))
        }
    };
    match creds {
        Credentials::Certificate { cert_pem, key_pem } => {
            let chain = vec![CertificateDer::from_pem_slice(cert_pem).map_err(|x| e(&x))?];
            let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|x| e(&x))?;
            builder.with_client_auth_cert(chain, key).map_err(|x| e(&x))
        }
        Credentials::Bearer(_) | Credentials::Anonymous => Ok(builder.with_no_client_auth()),
    }
}

impl Remote {
    /// Reads the first cluster and user of a kubeconfig (embedded certificate data).
    pub fn from_kubeconfig(path: &Path) -> Result<Remote, KubeconfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| KubeconfigError::Read { path: path.into(), source })?;
        let bad = |what: &str| KubeconfigError::Invalid { path: path.into(), what: what.to_string() };
        let doc: Value = serde_norway::from_str(&text).map_err(|e| bad(&format!("not YAML: {e}")))?;
        // A kubeconfig document, not an API object: k8s-openapi has no type for it.
        let field = |ptr: &str| -> Result<String, KubeconfigError> {
            doc.pointer(ptr).and_then(Value::as_str).map(str::to_string).ok_or_else(|| bad(&format!("missing {ptr}")))
        };
        let decode = |ptr: &str| -> Result<Vec<u8>, KubeconfigError> {
            base64::engine::general_purpose::STANDARD
                .decode(field(ptr)?)
                .map_err(|_| bad(&format!("{ptr} is not base64")))
        };
        let server = field("/clusters/0/cluster/server")?;
        let ca = decode("/clusters/0/cluster/certificate-authority-data")?;
        let cert = decode("/users/0/user/client-certificate-data")?;
        let key = decode("/users/0/user/client-key-data")?;
        Remote::new(&server, Trust::Ca(&ca), Credentials::Certificate { cert_pem: &cert, key_pem: &key })
            .map_err(|e| bad(&format!("clusters[0].cluster.server or certificates: {e}")))
    }

    /// The API server at `server` (`https://host:port`), or the first of
    /// several (`https://a:6443,https://b:6443`: every control plane's),
    /// the others taken over when it stops answering.
    pub fn new(server: &str, trust: Trust<'_>, creds: Credentials<'_>) -> Result<Remote, String> {
        let endpoints = failover::Endpoints::parse(server)?;
        let tls = client_config(&trust, &creds)?;
        let ca_pem = match trust {
            Trust::Ca(ca) => String::from_utf8_lossy(ca).into_owned(),
            Trust::Unverified => String::new(),
        };
        let bearer = match creds {
            Credentials::Bearer(t) => Some(t.to_string()),
            _ => None,
        };
        Ok(Remote { endpoints, tls: Arc::new(std::sync::RwLock::new(Arc::new(tls))), bearer, ca_pem })
    }

    /// `https://host:port` of the endpoint in use.
    pub fn server(&self) -> String {
        self.endpoints.current().url()
    }

    /// Uses this client certificate from the next request on (a renewal).
    pub fn set_client_cert(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<(), String> {
        let tls = client_config(&Trust::Ca(self.ca_pem.as_bytes()), &Credentials::Certificate { cert_pem, key_pem })?;
        *self.tls.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(tls);
        Ok(())
    }

    fn path(kind: &str, ns: Option<&str>, name: Option<&str>, sub: Option<&str>) -> String {
        let r = rt(kind);
        let mut p = r.gv_path();
        if let Some(ns) = ns.filter(|_| r.namespaced) {
            p.push_str(&format!("/namespaces/{ns}"));
        }
        p.push_str(&format!("/{}", r.plural));
        for s in [name, sub].into_iter().flatten() {
            p.push_str(&format!("/{s}"));
        }
        p
    }

    /// Sends to the endpoint in use, moving on to the others as module
    /// `failover` says; a watch (`watch`: no time limit on the answer).
    async fn send(
        &self,
        method: Method,
        uri: &str,
        body: Option<&Value>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ApiError> {
        let body = body.map(|b| Bytes::from(serde_json::to_vec(b).unwrap_or_default()));
        self.endpoints.send(&method, |ep| self.send_to(ep, method.clone(), uri, body.clone())).await
    }

    async fn send_to(
        &self,
        ep: failover::Endpoint,
        method: Method,
        uri: &str,
        body: Option<Bytes>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, failover::Failure> {
        use failover::Failure;
        let fail = |e: &dyn std::fmt::Display| format!("{method} {}{uri}: {e}", ep.url());
        let tcp = tokio::time::timeout(
            failover::CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((ep.host.as_str(), ep.port)),
        )
        .await
        .map_err(|e| Failure::Unreached(fail(&e)))?
        .map_err(|e| Failure::Unreached(fail(&e)))?;
        let _ = tcp.set_nodelay(true);
        let name =
            rustls::pki_types::ServerName::try_from(ep.host.clone()).map_err(|e| Failure::Unreached(fail(&e)))?;
        let config = self.tls.read().unwrap_or_else(|e| e.into_inner()).clone();
        let connect = async {
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| fail(&e))?;
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| fail(&e))
        };
        let (mut sender, conn) = tokio::time::timeout(failover::CONNECT_TIMEOUT, connect)
            .await
            .map_err(|e| Failure::Unreached(fail(&e)))?
            .map_err(Failure::Unreached)?;
        tokio::spawn(conn);
        let mut req = Request::builder();
        if let Some(token) = &self.bearer {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req
            .method(method.clone())
            .uri(uri)
            .header(header::HOST, ep.authority())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json")
            .body(Body::Full(body))
            .map_err(|e| Failure::Unreached(fail(&e)))?;
        match tokio::time::timeout(failover::RESPONSE_TIMEOUT, sender.send_request(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) if e.is_canceled() => Err(Failure::Unreached(fail(&e))),
            Ok(Err(e)) => Err(Failure::Lost(fail(&e))),
            Err(e) => Err(Failure::Lost(fail(&e))),
        }
    }

    async fn call(&self, method: Method, uri: &str, body: Option<&Value>) -> Result<Value, ApiError> {
        let resp = self.send(method, uri, body).await?;
        let status = resp.status();
        let bytes = orchestrator_http::read_body(resp.into_body()).await?;
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(v);
        }
        const REASONS: [&str; 10] = [
            "NotFound",
            "AlreadyExists",
            "Conflict",
            "Invalid",
            "BadRequest",
            "Forbidden",
            "Unauthorized",
            "Gone",
            "MethodNotAllowed",
            "InternalError",
        ];
        let reason = REASONS.into_iter().find(|r| v["reason"] == *r).unwrap_or("Unknown");
        let message =
            v["message"].as_str().map(str::to_string).unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        Err(ApiError::new(status.as_u16(), reason, message))
    }
}

/// The API, in process or remote.
#[derive(Clone)]
pub enum Api {
    Local(Arc<Registry>),
    Remote(Remote),
}

/// A watch's events (objects; the kind of event does not matter to the
/// kubelet: it relists). A remote watch whose API server goes away is
/// resumed from its last resourceVersion (module `resume`), on another
/// endpoint if need be: it ends only when that revision is compacted or
/// the server refuses it.
pub enum Watch {
    Local(ObjectWatch),
    Remote(mpsc::Receiver<Value>),
}

impl Watch {
    /// The next changed object; `None` when the watch ended (watch again).
    pub async fn next(&mut self) -> Option<Value> {
        match self {
            Watch::Local(w) => w.next().await.ok().map(|e| e.object),
            Watch::Remote(rx) => rx.recv().await,
        }
    }
}

fn query(field_selector: &str) -> String {
    field_selector.replace('=', "%3D").replace(',', "%2C")
}

impl Api {
    pub async fn get(&self, kind: &'static str, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
        match self {
            Api::Local(reg) => {
                let (reg, ns, name) = (reg.clone(), ns.map(str::to_string), name.to_string());
                blocking(move || reg.get(rt(kind), ns.as_deref(), &name)).await
            }
            Api::Remote(r) => r.call(Method::GET, &Remote::path(kind, ns, Some(name), None), None).await,
        }
    }

    /// All objects of a kind (all namespaces) matching a field selector such as `spec.nodeName=n1`.
    pub async fn list(&self, kind: &'static str, field_selector: &str) -> Result<Vec<Value>, ApiError> {
        match self {
            Api::Local(reg) => {
                let fields = FieldSelector::parse(field_selector, rt(kind).fields)
                    .map_err(|e| ApiError::bad_request(e.to_string()))?;
                let reg = reg.clone();
                let opts = ListOptions { fields, ..Default::default() };
                Ok(blocking(move || reg.list(rt(kind), None, &opts)).await?.items)
            }
            Api::Remote(r) => {
                let uri = format!("{}?fieldSelector={}", Remote::path(kind, None, None, None), query(field_selector));
                let list = r.call(Method::GET, &uri, None).await?;
                Ok(list["items"].as_array().cloned().unwrap_or_default())
            }
        }
    }

    /// [`Api::get`], decoded as `K`.
    pub async fn get_as<K: serde::de::DeserializeOwned>(
        &self,
        kind: &'static str,
        ns: Option<&str>,
        name: &str,
    ) -> Result<K, ApiError> {
        orchestrator_apimachinery::typed::decode(self.get(kind, ns, name).await?, kind)
    }

    /// [`Api::list`], each object decoded as `K`.
    pub async fn list_as<K: serde::de::DeserializeOwned>(
        &self,
        kind: &'static str,
        field_selector: &str,
    ) -> Result<Vec<K>, ApiError> {
        let items = self.list(kind, field_selector).await?;
        items.into_iter().map(|o| orchestrator_apimachinery::typed::decode(o, kind)).collect()
    }

    /// A token for a ServiceAccount (`serviceaccounts/<name>/token`, a TokenRequest in and out).
    pub async fn request_token(&self, ns: &str, name: &str, request: Value) -> Result<Value, ApiError> {
        match self {
            Api::Local(reg) => {
                let (reg, ns, name) = (reg.clone(), ns.to_string(), name.to_string());
                let body = serde_json::to_vec(&request).unwrap_or_default();
                blocking(move || reg.request_token(&ns, &name, &body)).await
            }
            Api::Remote(r) => {
                r.call(
                    Method::POST,
                    &Remote::path("ServiceAccount", Some(ns), Some(name), Some("token")),
                    Some(&request),
                )
                .await
            }
        }
    }

    pub async fn create(&self, kind: &'static str, ns: Option<&str>, obj: Value) -> Result<Value, ApiError> {
        match self {
            Api::Local(reg) => {
                let (reg, ns) = (reg.clone(), ns.map(str::to_string));
                blocking(move || reg.create(rt(kind), ns.as_deref(), obj, &WriteOptions::default()).map(|w| w.object))
                    .await
            }
            Api::Remote(r) => r.call(Method::POST, &Remote::path(kind, ns, None, None), Some(&obj)).await,
        }
    }

    /// Reads, changes with `f` (false: nothing to change), writes; retries on conflicts.
    pub async fn modify(
        &self,
        kind: &'static str,
        ns: Option<&str>,
        name: &str,
        part: Part,
        f: impl FnMut(&mut Value) -> bool + Send + 'static,
    ) -> Result<(), ApiError> {
        self.modify_read(kind, ns, name, part, f).await.map(|_| ())
    }

    /// [`Api::modify`], returning the object as stored afterwards (as read
    /// when `f` changed nothing): its resourceVersion is the write's.
    pub async fn modify_read(
        &self,
        kind: &'static str,
        ns: Option<&str>,
        name: &str,
        part: Part,
        f: impl FnMut(&mut Value) -> bool + Send + 'static,
    ) -> Result<Value, ApiError> {
        match self {
            Api::Local(reg) => {
                let (reg, ns, name) = (reg.clone(), ns.map(str::to_string), name.to_string());
                let mut f = f;
                blocking(move || {
                    reg.modify(rt(kind), ns.as_deref(), &name, part, &WriteOptions::default(), |o| Ok(f(o)))
                        .map(|w| w.object)
                })
                .await
            }
            Api::Remote(r) => {
                let mut f = f;
                let sub = (part == Part::Status).then_some("status");
                for _ in 0..8 {
                    let mut o = r.call(Method::GET, &Remote::path(kind, ns, Some(name), None), None).await?;
                    if !f(&mut o) {
                        return Ok(o);
                    }
                    match r.call(Method::PUT, &Remote::path(kind, ns, Some(name), sub), Some(&o)).await {
                        Err(e) if e.code == 409 => continue,
                        r => return r,
                    }
                }
                Err(ApiError::new(409, "Conflict", format!("{kind} {name}: too many conflicting writes")))
            }
        }
    }

    /// Deletes at once (grace period 0), only the object with `uid`.
    pub async fn delete_now(
        &self,
        kind: &'static str,
        ns: Option<&str>,
        name: &str,
        uid: &str,
    ) -> Result<(), ApiError> {
        match self {
            Api::Local(reg) => {
                let (reg, ns, name) = (reg.clone(), ns.map(str::to_string), name.to_string());
                let opts = DeleteOptions {
                    grace_period: Some(0),
                    precondition_uid: Some(uid.to_string()),
                    ..Default::default()
                };
                blocking(move || reg.delete(rt(kind), ns.as_deref(), &name, &opts).map(|_| ())).await
            }
            Api::Remote(r) => {
                let body = serde_json::json!({"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0, "preconditions": {"uid": uid}});
                r.call(Method::DELETE, &Remote::path(kind, ns, Some(name), None), Some(&body)).await.map(|_| ())
            }
        }
    }

    /// Asks to evict a pod (`pods/<name>/eviction`, policy/v1): the API
    /// server deletes it unless a PodDisruptionBudget forbids (429). Only
    /// over HTTPS: the eviction subresource is the API server's, not the
    /// registry's.
    pub async fn evict(&self, ns: &str, name: &str) -> Result<(), ApiError> {
        match self {
            Api::Local(_) => Err(ApiError::new(
                405,
                "MethodNotAllowed",
                "evictions are served by the API server: use a client over HTTPS".to_string(),
            )),
            Api::Remote(r) => {
                let body = serde_json::json!({"apiVersion": "policy/v1", "kind": "Eviction",
                    "metadata": {"name": name, "namespace": ns}});
                r.call(Method::POST, &Remote::path("Pod", Some(ns), Some(name), Some("eviction")), Some(&body))
                    .await
                    .map(|_| ())
            }
        }
    }

    /// Watches a kind (all namespaces) from now on, filtered by a field selector.
    pub async fn watch(&self, kind: &'static str, field_selector: &str) -> Option<Watch> {
        self.watch_in(kind, None, field_selector).await
    }

    /// Watches a kind in `ns` (all namespaces when `None`) from now on, filtered by a field selector.
    pub async fn watch_in(&self, kind: &'static str, ns: Option<&str>, field_selector: &str) -> Option<Watch> {
        match self {
            Api::Local(reg) => {
                let fields = FieldSelector::parse(field_selector, rt(kind).fields).ok()?;
                let (reg, ns) = (reg.clone(), ns.map(str::to_string));
                blocking(move || {
                    let rev = reg.store.current_revision().ok()?;
                    reg.watch(rt(kind), ns.as_deref(), rev, Default::default(), fields).ok()
                })
                .await
                .map(Watch::Local)
            }
            Api::Remote(r) => {
                // From the current revision: a list's resourceVersion, then the watch.
                let path = Remote::path(kind, ns, None, None);
                let list = r
                    .call(Method::GET, &format!("{path}?limit=1&fieldSelector={}", query(field_selector)), None)
                    .await
                    .ok()?;
                let rv = resource_version_of(&list)?.to_string();
                let resumed = resume::Resumed::new(r.clone(), path, query(field_selector), rv);
                let first = resumed.open().await?;
                let (tx, rx) = mpsc::channel(64);
                tokio::spawn(resumed.follow(first, tx));
                Some(Watch::Remote(rx))
            }
        }
    }
}

//! The HTTPS transport: TLS with client certificates (CN = user, O =
//! groups) or bearer tokens (`authn`, ServiceAccount tokens in `satoken`), impersonation and RBAC authorization (`rbac`, `access`), and the translation of
//! Kubernetes REST requests into [`Registry`] calls. Watches stream
//! newline-delimited JSON events from a task per watch.
//!
//! Against hostile clients: connections are budgeted (`connections`); the
//! TLS handshake, the headers and the body each have a deadline; a client
//! is authenticated (its certificate, at the TLS layer) before any body is
//! read; bodies are read up to 3 MiB and YAML is parsed off the async
//! threads within depth and size bounds (`decode`).

mod access;
mod aggregated;
mod authn;
pub mod bootstrap;
mod connections;
mod csr;
mod eviction;
mod keepalive;
mod kubeconfigs;
mod legacy_tokens;
mod metrics;
mod negotiate;
mod node_authz;
mod node_restriction;
mod pod_policy;
mod quota;
pub mod rbac;
mod rootca;
mod sa_admission;
pub mod satoken;
mod streaming;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use orchestrator_apimachinery::decode;
use orchestrator_apimachinery::discovery;
use orchestrator_apimachinery::errors::{self, ApiError};
use orchestrator_apimachinery::housekeeping;
use orchestrator_apimachinery::patch;
use orchestrator_apimachinery::registry::{
    DeleteOptions, FieldValidation, ListOptions, Part, Propagation, Registry, WriteOptions,
};
use orchestrator_apimachinery::resources::{self, ResourceType, Served};
use orchestrator_apimachinery::selector::{FieldSelector, LabelSelector};
use orchestrator_apimachinery::table::{self, IncludeObject};
use orchestrator_http::pki::{self, ADMIN_GROUP, READ_ONLY_GROUP};
use orchestrator_http::reload::{self, RenewedCert};
use orchestrator_http::{Body, flag, param, parse_query, read_body};
use orchestrator_store::backup::Snapshots;
use orchestrator_store::{Durability, SqliteStore, Store, StoreError};
use orchestrator_store_etcd::{EtcdConfig, EtcdStore};

#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub ca_cert: Option<PathBuf>,
    pub ca_key: Option<PathBuf>,
    pub durability: Durability,
    /// More names and addresses for the serving certificate (the node's
    /// host name and LAN addresses, a load balancer's name).
    pub cert_sans: Vec<String>,
    /// The store on etcd (an HA control plane); `None`: SQLite in `data_dir`.
    pub etcd: Option<EtcdConfig>,
    /// How long an Event lives after its last write (`--event-ttl`).
    pub event_ttl: Duration,
    /// A bootstrap token stored at start (the control plane's machine config carries it).
    pub bootstrap_token: Option<orchestrator_apimachinery::bootstrap_token::Token>,
    /// The serving certificate's lifetime; renewed at 70–90 % of it while serving.
    pub serving_lifetime: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("TLS set-up: {0}")]
    Tls(String),
    #[error("listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("bootstrap objects: {0}")]
    Bootstrap(ApiError),
    #[error("ServiceAccount token key: {0}")]
    TokenKey(#[from] satoken::KeyError),
}

/// Deadlines, as upstream's: a TLS handshake (Go's `TLSHandshakeTimeout`,
/// 10 s) and a request's body (the 60 s `--request-timeout`); a request's
/// head and an idle keep-alive connection have theirs in [`keepalive`].
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `pass` over the registry at start and after every change of the
/// `watched` kinds (with their field selectors): a level-triggered
/// controller the API server runs because it holds keys the controllers do not.
fn spawn_reconciler(
    reg: Arc<Registry>,
    name: &'static str,
    watched: Vec<(&'static str, FieldSelector)>,
    pass: impl Fn(&Registry) -> Result<(), ApiError> + Send + Sync + 'static,
) {
    let pass = Arc::new(pass);
    tokio::spawn(async move {
        loop {
            let from = reg.store.current_revision().unwrap_or(0);
            let mut watches = Vec::new();
            for (kind, fields) in &watched {
                let rt = resources::by_kind(kind).expect("a served kind");
                match reg.watch(rt, None, from, LabelSelector::default(), fields.clone()) {
                    Ok(w) => watches.push(w),
                    Err(e) => tracing::warn!("{name}: watching {kind}s: {e}"),
                }
            }
            if watches.len() < watched.len() {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            loop {
                let (r, p) = (reg.clone(), pass.clone());
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || p(&r)).await
                    && e.code != 409
                    && e.code != 404
                {
                    tracing::warn!("{name}: {e}");
                }
                let next = futures_util::future::select_all(watches.iter_mut().map(|w| Box::pin(w.next())));
                if next.await.0.is_err() {
                    break;
                }
            }
        }
    });
}

/// Every five minutes: expire Events, compact, give the space back
/// (`housekeeping`; watches from before the kept window get 410 Gone),
/// and once a day an automatic snapshot of the SQLite database beside it
/// (`db`; `None` on etcd, whose snapshots are its own).
fn spawn_housekeeping(registry: Arc<Registry>, event_ttl: Duration, db: Option<PathBuf>) {
    let settings = housekeeping::Settings { event_ttl, ..Default::default() };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(housekeeping::EVERY);
        loop {
            tick.tick().await;
            let reg = registry.clone();
            let db = db.clone();
            let done = tokio::task::spawn_blocking(move || {
                let report = housekeeping::run(&*reg.store, &settings, jiff::Timestamp::now())?;
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                let snapshot = match &db {
                    Some(db) => Snapshots::beside(db).take_if_due(db, now)?,
                    None => None,
                };
                Ok::<_, StoreError>((report, snapshot))
            })
            .await;
            match done {
                Ok(Ok((report, snapshot))) => tracing::debug!(?report, ?snapshot, "housekeeping"),
                Ok(Err(e)) => tracing::warn!("housekeeping (Event expiry, compaction, vacuum, snapshot): {e}"),
                Err(e) => tracing::warn!("housekeeping: {e}"),
            }
        }
    });
}

/// An authenticated client.
#[derive(Debug, Clone, Default)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
    /// A ServiceAccount's uid (empty for certificate users).
    pub uid: String,
    /// What a token says beyond name and groups (the bound pod, the token id).
    pub extra: std::collections::BTreeMap<String, Vec<String>>,
}

pub struct State {
    pub registry: Arc<Registry>,
    pub address: String,
    /// TLS to kubelets (the cluster CA, a client certificate in the admin group), for `pods/log`.
    pub kubelet_client: Arc<rustls::ClientConfig>,
    connections: Arc<connections::Budgets>,
    rbac: Arc<rbac::Rbac>,
    sa_keys: Arc<satoken::Keys>,
    metrics: metrics::Samples,
}

/// A running server.
pub struct Running {
    pub address: SocketAddr,
    pub admin_kubeconfig: PathBuf,
    pub read_only_kubeconfig: PathBuf,
    pub registry: Arc<Registry>,
    /// The cluster CA (a kubelet in this process issues its serving certificate from it).
    pub ca: pki::CertKey,
    pub task: tokio::task::JoinHandle<()>,
}

/// The API server's client side towards kubelets: an admin client
/// certificate from the cluster CA, renewed at 70–90 % of its lifetime.
fn kubelet_client(ca: &pki::CertKey) -> Result<rustls::ClientConfig, ServerError> {
    let tls = |e: &dyn std::fmt::Display| ServerError::Tls(e.to_string());
    let ca = ca.clone();
    let issue = move || pki::issue_client(&ca, "kube-apiserver-kubelet-client", ADMIN_GROUP).map_err(|e| e.to_string());
    let cert = reload::issued_here("the API server's kubelet client", issue).map_err(ServerError::Tls)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(orchestrator_http::AnyServerCert(provider)))
        .with_client_cert_resolver(cert))
}

/// The names and addresses of the API server's serving certificate.
fn serving_names(addr: SocketAddr, extra: &[String]) -> Vec<String> {
    let mut names = vec![
        "localhost".to_string(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        "127.0.0.1".into(),
        "10.96.0.1".into(),
    ];
    if !addr.ip().is_unspecified() {
        names.push(addr.ip().to_string());
    }
    names.extend(extra.iter().cloned());
    names.sort();
    names.dedup();
    names
}

/// The serving certificate, issued now and renewed at 70–90 % of `lifetime` while serving.
fn serving_cert(ca: &pki::CertKey, names: Vec<String>, lifetime: Duration) -> Result<Arc<RenewedCert>, ServerError> {
    let ca = ca.clone();
    let issue = move || pki::issue_server(&ca, &names, lifetime).map_err(|e| e.to_string());
    reload::issued_here("the API server", issue).map_err(ServerError::Tls)
}

fn tls_config(ca: &pki::CertKey, served: Arc<RenewedCert>) -> Result<rustls::ServerConfig, ServerError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let tls = |e: &dyn std::fmt::Display| ServerError::Tls(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| tls(&e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(served);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The address the `kubernetes` Endpoints name, so that pods reach the API
/// through 10.96.0.1: the listen address, or when it is every address, the
/// first other address of the serving certificate (the node's LAN
/// address), else loopback (which pods cannot reach).
fn advertise_address(listen: std::net::IpAddr, cert_sans: &[String]) -> std::net::IpAddr {
    if !listen.is_unspecified() {
        return listen;
    }
    cert_sans
        .iter()
        .filter_map(|s| s.parse::<std::net::IpAddr>().ok())
        .find(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
}

/// Opens the store, prepares certificates and kubeconfigs, binds and
/// serves in the background.
pub async fn start(cfg: Config) -> Result<Running, ServerError> {
    let dir = &cfg.data_dir;
    std::fs::create_dir_all(dir).map_err(|source| pki::PkiError::Io { op: "create", path: dir.clone(), source })?;
    let ca = pki::load_or_generate_ca(
        &cfg.ca_cert.clone().unwrap_or_else(|| dir.join("ca.crt")),
        &cfg.ca_key.clone().unwrap_or_else(|| dir.join("ca.key")),
    )?;
    let store: Arc<dyn Store> = match &cfg.etcd {
        Some(etcd) => Arc::new(EtcdStore::connect(etcd)?),
        None => Arc::new(SqliteStore::open(&dir.join("state.db"), cfg.durability)?),
    };
    let registry = Arc::new(Registry::new(store));
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServerError::Listen { addr: cfg.listen, source })?;
    let address = listener.local_addr().map_err(|source| ServerError::Listen { addr: cfg.listen, source })?;
    let host = if address.ip().is_unspecified() { "127.0.0.1".to_string() } else { address.ip().to_string() };
    let url = format!("https://{host}:{}", address.port());
    let advertise = advertise_address(address.ip(), &cfg.cert_sans);
    registry.bootstrap(&format!("{advertise}:{}", address.port())).map_err(ServerError::Bootstrap)?;
    let rbac = rbac::Rbac::start(registry.clone()).map_err(ServerError::Bootstrap)?;
    let sa_keys = Arc::new(satoken::Keys::load_or_generate(&dir.join("sa.key"))?);
    let keys = sa_keys.clone();
    registry.set_hooks(orchestrator_apimachinery::registry::Hooks {
        admit_pod: Box::new(|reg, ns, pod| {
            pod_policy::admit(reg, ns, pod)?;
            sa_admission::admit(reg, ns, pod)
        }),
        admit_create: Box::new(quota::admit),
        issue_token: Box::new(move |reg, ns, name, body| {
            let r = satoken::token_request(&keys, reg, ns, name, body)?;
            serde_json::to_value(r).map_err(|e| ApiError::internal(format!("TokenRequest: {e}")))
        }),
    });
    pod_policy::ensure_system_classes(&registry).map_err(ServerError::Bootstrap)?;
    let pem = ca.cert_pem.clone();
    spawn_reconciler(registry.clone(), "kube-root-ca.crt publisher", rootca::watched(), move |r| {
        rootca::reconcile(r, &pem)
    });
    let (keys, pem) = (sa_keys.clone(), ca.cert_pem.clone());
    spawn_reconciler(registry.clone(), "ServiceAccount token Secrets", legacy_tokens::watched(), move |r| {
        legacy_tokens::reconcile(r, &keys, &pem)
    });
    // CRDs written through another API server (etcd) change what this one serves.
    let crds = vec![(orchestrator_apimachinery::crd::KIND, FieldSelector::default())];
    spawn_reconciler(registry.clone(), "CustomResourceDefinitions", crds, Registry::refresh_crds);
    bootstrap::publish_cluster_info(&registry, &url, &ca).map_err(ServerError::Bootstrap)?;
    if let Some(t) = &cfg.bootstrap_token {
        bootstrap::ensure_token(&registry, t).map_err(ServerError::Bootstrap)?;
    }
    let admin_kubeconfig = dir.join("admin.kubeconfig");
    kubeconfigs::write_and_renew(admin_kubeconfig.clone(), url.clone(), ca.clone(), "admin", ADMIN_GROUP)?;
    let read_only_kubeconfig = dir.join("read-only.kubeconfig");
    kubeconfigs::write_and_renew(read_only_kubeconfig.clone(), url, ca.clone(), "viewer", READ_ONLY_GROUP)?;
    let served = serving_cert(&ca, serving_names(address, &cfg.cert_sans), cfg.serving_lifetime)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(&ca, served)?));
    let state = Arc::new(State {
        registry: registry.clone(),
        address: format!("{host}:{}", address.port()),
        kubelet_client: Arc::new(kubelet_client(&ca)?),
        connections: Arc::default(),
        rbac,
        sa_keys,
        metrics: metrics::Samples::default(),
    });
    let db = cfg.etcd.is_none().then(|| dir.join("state.db"));
    spawn_housekeeping(registry.clone(), cfg.event_ttl, db);
    let task = tokio::spawn(accept_loop(listener, acceptor, state));
    Ok(Running { address, admin_kubeconfig, read_only_kubeconfig, registry, ca, task })
}

async fn accept_loop(listener: tokio::net::TcpListener, acceptor: tokio_rustls::TlsAcceptor, state: Arc<State>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let state = state.clone();
        let mut ticket = state.connections.admit(peer.ip());
        let evicted = ticket.evicted.clone();
        let serve = async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "TLS handshake: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake: no handshake within {HANDSHAKE_TIMEOUT:?}");
                    return;
                }
            };
            let user = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| pki::user_of_cert(c))
                .map(|(name, groups)| access::authenticated(name, groups));
            if user.is_some() && !ticket.authenticate() {
                tracing::warn!(%peer, "closed: over the budget of authenticated connections");
                return;
            }
            let ticket = Arc::new(std::sync::Mutex::new(ticket));
            let held = ticket.clone();
            let activity = keepalive::Activity::new(keepalive::HEADER_TIMEOUT, keepalive::IDLE_TIMEOUT);
            let tls = keepalive::Timed::new(tls, activity.clone());
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                let user = user.clone();
                let ticket = ticket.clone();
                let activity = activity.clone();
                let open = activity.request();
                let response = async move {
                    // Without a certificate, a bearer token (a bad one is a
                    // 401); a valid one moves the connection to the
                    // authenticated budget, as a certificate does.
                    let user = match user {
                        Some(u) => Some(u),
                        None => match authn::request_user(&state, req.headers()) {
                            Ok(None) => None,
                            Ok(Some(u)) => {
                                let mut t = ticket.lock().unwrap_or_else(|e| e.into_inner());
                                if !t.is_authenticated() && !t.authenticate() {
                                    tracing::warn!(%peer, "closed: over the budget of authenticated connections");
                                    let e = ApiError::new(
                                        429,
                                        "TooManyRequests",
                                        "too many authenticated connections from this address",
                                    );
                                    let mut r = error_response(&e);
                                    r.headers_mut()
                                        .insert(header::CONNECTION, header::HeaderValue::from_static("close"));
                                    return Ok(r);
                                }
                                Some(u)
                            }
                            Err(e) => return Ok(error_response(&e)),
                        },
                    };
                    Ok::<_, Infallible>(handle(state, user, req).await)
                };
                async move {
                    let r = response.await?;
                    if r.status() == StatusCode::SWITCHING_PROTOCOLS {
                        activity.upgraded();
                    }
                    Ok::<_, Infallible>(r.map(|body| keepalive::Tracked { body, _open: open }))
                }
            });
            // hyper's header deadline would also cut idle keep-alive
            // connections (see `keepalive`): off, `Timed` keeps both.
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(None)
                .serve_connection(TokioIo::new(tls), service)
                .with_upgrades()
                .await
            {
                tracing::debug!(%peer, "connection: {e}");
            }
            drop(held);
        };
        tokio::spawn(async move {
            tokio::select! {
                () = serve => {}
                () = evicted.notified() => tracing::debug!(%peer, "closed: the oldest anonymous connection, to make room"),
            }
        });
    }
}

fn respond(code: u16, body: &Value, warnings: &[String]) -> Response<Body> {
    let bytes = if body["kind"] == "Status" {
        errors::status_bytes(body)
    } else {
        serde_json::to_vec(body).unwrap_or_default()
    };
    let mut r = Response::new(Body::Full(Some(Bytes::from(bytes))));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    for w in warnings {
        let text = format!("299 - {}", serde_json::Value::String(w.clone()));
        if let Ok(v) = header::HeaderValue::from_str(&text) {
            r.headers_mut().append("warning", v);
        }
    }
    r
}

fn error_response(e: &ApiError) -> Response<Body> {
    respond(e.code, &e.to_json(), &[])
}

/// Serves one request of `user` (authenticated by its certificate or bearer token, if at all).
pub async fn handle(state: Arc<State>, user: Option<User>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    // Anonymous clients (no certificate, no token) may read cluster-info.
    let user = user.or_else(|| bootstrap::anonymous(req.method(), path));
    // Anonymous clients get the public paths and otherwise a 401, before
    // any body of theirs is read.
    if user.is_none() && !is_public(path) {
        return error_response(&ApiError::new(401, "Unauthorized", "Unauthorized"));
    }
    let user = match access::impersonate(&state.rbac, user, req.headers()) {
        Ok(u) => u,
        Err(e) => return error_response(&e),
    };
    if path.ends_with("/portforward") && req.headers().contains_key(header::UPGRADE) {
        return match streaming::port_forward(state, user, req).await {
            Ok(r) => r,
            Err(e) => error_response(&e),
        };
    }
    if (path.ends_with("/exec") || path.ends_with("/attach")) && req.headers().contains_key(header::UPGRADE) {
        return match streaming::exec(state, user, req).await {
            Ok(r) => r,
            Err(e) => error_response(&e),
        };
    }
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query = parse_query(parts.uri.query().unwrap_or_default());
    let span = tracing::debug_span!("request", method = %parts.method, %path);
    let _enter = span.enter();
    let body = match tokio::time::timeout(BODY_TIMEOUT, read_body(body)).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return error_response(&e),
        Err(_) => {
            let e = ApiError::new(408, "Timeout", format!("the request body was not received within {BODY_TIMEOUT:?}"));
            return error_response(&e);
        }
    };
    let response = match route(&state, user.as_ref(), &parts.method, &parts.headers, &path, &query, body).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(code = e.code, "{}", e.message);
            error_response(&e)
        }
    };
    match negotiate::format(&parts.headers) {
        Ok(negotiate::Format::Protobuf { json_fallback }) if is_resource_path(&path) => {
            to_protobuf(response, json_fallback)
        }
        _ => response,
    }
}

/// `/api/v1/<resource>…` and `/apis/<group>/<version>/<resource>…` (not discovery).
fn is_resource_path(path: &str) -> bool {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    matches!((segs.first(), segs.len()), (Some(&"api"), 3..) | (Some(&"apis"), 4..))
}

/// Re-encodes a JSON resource response (objects, lists, Status errors)
/// in protobuf when content negotiation chose it. Kinds without an
/// encoding (custom objects, Tables) stay JSON when the client accepts
/// JSON, else they are upstream's 406. Streams (watch, logs) are not
/// touched: the watch encodes its own frames.
fn to_protobuf(response: Response<Body>, json_fallback: bool) -> Response<Body> {
    let is_json = response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v == "application/json");
    let (mut parts, body) = response.into_parts();
    let Body::Full(Some(bytes)) = body else {
        return Response::from_parts(parts, body);
    };
    let value = if is_json { serde_json::from_slice::<Value>(&bytes).ok() } else { None };
    let Some(value) = value else {
        return Response::from_parts(parts, Body::Full(Some(bytes)));
    };
    match orchestrator_apimachinery::protobuf::encode(&value) {
        Ok(pb) => {
            parts.headers.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(orchestrator_apimachinery::protobuf::MEDIA_TYPE),
            );
            Response::from_parts(parts, Body::Full(Some(Bytes::from(pb))))
        }
        Err(_) if json_fallback => Response::from_parts(parts, Body::Full(Some(bytes))),
        Err(e) => {
            let kind = value.get("kind").and_then(Value::as_str).unwrap_or_default();
            let e = ApiError::new(
                406,
                "NotAcceptable",
                format!(
                    "{kind} has no protobuf encoding ({e}); only the following media types are accepted: application/json"
                ),
            );
            error_response(&e)
        }
    }
}

/// The paths anyone may read (probes and the version).
fn is_public(path: &str) -> bool {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or_default();
    matches!(first, "version" | "healthz" | "livez" | "readyz")
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT).iter().any(|v| v.to_str().unwrap_or_default().contains("as=Table"))
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_string())
        .unwrap_or_default()
}

/// A protobuf request body as JSON: a malformed body is a 400 naming the
/// message path and field number; a kind without an encoding is a 415.
fn decode_protobuf(body: &[u8]) -> Result<Value, ApiError> {
    use orchestrator_apimachinery::protobuf::{ProtobufError, decode};
    decode(body).map_err(|e| match e {
        ProtobufError::Unsupported { .. } => ApiError::new(415, "UnsupportedMediaType", e.to_string()),
        _ => ApiError::bad_request(e.to_string()),
    })
}

fn unsupported_media(ct: &str) -> ApiError {
    ApiError::new(
        415,
        "UnsupportedMediaType",
        format!(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {ct:?})"
        ),
    )
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    decode::json(body)
}

/// YAML bodies are parsed on the blocking pool: bounded work, but not
/// work for the threads that serve every other request.
async fn parse_yaml(body: &Bytes) -> Result<Value, ApiError> {
    let body = body.clone();
    tokio::task::spawn_blocking(move || decode::yaml(&body))
        .await
        .map_err(|e| ApiError::internal(format!("parsing a YAML body: {e}")))?
}

fn write_options(q: &[(String, String)]) -> Result<WriteOptions, ApiError> {
    let validation = match param(q, "fieldValidation") {
        None | Some("") | Some("Warn") => FieldValidation::Warn,
        Some("Strict") => FieldValidation::Strict,
        Some("Ignore") => FieldValidation::Ignore,
        Some(v) => {
            return Err(ApiError::bad_request(format!("fieldValidation {v:?} is not one of Ignore, Warn, Strict")));
        }
    };
    Ok(WriteOptions {
        dry_run: param(q, "dryRun") == Some("All"),
        validation,
        field_manager: param(q, "fieldManager").filter(|m| !m.is_empty()).map(str::to_string),
        subresource: false,
    })
}

/// The non-resource paths every authenticated user may read.
async fn non_resource(state: &State, headers: &HeaderMap, segs: &[&str]) -> Option<Result<Response<Body>, ApiError>> {
    let found = |v: Option<Value>| {
        Some(
            v.map(|v| respond(200, &v, &[]))
                .ok_or_else(|| ApiError::new(404, "NotFound", "the server could not find the requested resource")),
        )
    };
    match segs {
        [root @ ("api" | "apis")] => {
            Some(aggregated::serve(headers, *root == "api", &state.address, &state.registry.custom_types()))
        }
        ["apis", g] => found(discovery::api_group(g, &state.registry.custom_types())),
        ["api", v] => found(discovery::resource_list("", v, &[])),
        ["apis", g, v] => found(discovery::resource_list(g, v, &state.registry.custom_types())),
        ["openapi", "v3"] => found(Some(discovery::openapi_v3_index(&state.registry.custom_types()))),
        ["openapi", "v3", rest @ ..] => Some(
            discovery::openapi_v3(&rest.join("/"), &state.registry.custom_types())
                .map(|doc| {
                    let mut r = Response::new(Body::Full(Some(Bytes::from(doc))));
                    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
                    r
                })
                .ok_or_else(|| ApiError::new(404, "NotFound", "the server could not find the requested resource")),
        ),
        ["openapi", "v2"] => {
            // gnostic's protobuf when asked for (kubectl ≤1.27), else JSON.
            let accept = headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>();
            let pb = accept.iter().any(|a| a.contains("com.github.proto-openapi.spec.v2"));
            let (format, content_type) = if pb {
                (discovery::OpenApiV2::Protobuf, "application/com.github.proto-openapi.spec.v2.v1.0+protobuf")
            } else {
                (discovery::OpenApiV2::Json, "application/json")
            };
            let doc = discovery::openapi_v2(&state.registry.custom_types(), format);
            Some(Ok(aggregated::cached(headers, doc, content_type)))
        }
        [] => found(Some(
            json!({"paths": ["/api", "/api/v1", "/apis", "/healthz", "/livez", "/openapi/v2", "/openapi/v3", "/readyz", "/version"]}),
        )),
        _ => None,
    }
}

fn text(code: u16, s: &str) -> Response<Body> {
    let mut r = Response::new(Body::Full(Some(Bytes::from(s.to_string()))));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// The namespace (for LocalSubjectAccessReview) and resource of a review's
/// path after `/apis/<group>/v1/`.
fn review_target<'a>(rest: &[&'a str]) -> Option<(Option<&'a str>, &'a str)> {
    match rest {
        [resource] => Some((None, resource)),
        ["namespaces", ns, resource] => Some((Some(ns), resource)),
        _ => None,
    }
}

/// A parsed resource request.
struct Target<'a> {
    rt: Served,
    namespace: Option<&'a str>,
    name: Option<&'a str>,
    sub: Option<&'a str>,
}

/// `find` looks a group, version and plural up (the registry's `resource`).
fn parse_target<'a>(segs: &[&'a str], find: impl Fn(&str, &str, &str) -> Option<Served>) -> Option<Target<'a>> {
    let (group, version, rest) = match segs {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    if rest.is_empty() || rest.len() > 5 {
        return None;
    }
    if rest[0] == "namespaces"
        && rest.len() >= 3
        && let Some(rt) = find(group, version, rest[2]).filter(|r| r.namespaced)
    {
        if rest.len() > 5 {
            return None;
        }
        return Some(Target { rt, namespace: Some(rest[1]), name: rest.get(3).copied(), sub: rest.get(4).copied() });
    }
    if rest.len() > 3 {
        return None;
    }
    let rt = find(group, version, rest[0])?;
    Some(Target { rt, namespace: None, name: rest.get(1).copied(), sub: rest.get(2).copied() })
}

fn verb(method: &Method, t: &Target<'_>, q: &[(String, String)]) -> &'static str {
    match (method.as_str(), t.name.is_some()) {
        ("GET", true) => "get",
        ("GET", false) if flag(q, "watch") => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    }
}

/// Whether the RBAC rules let `user` do `verb` on `resource` (the plural,
/// with `/subresource` if any).
pub(crate) fn allowed(
    state: &State,
    user: &User,
    verb: &str,
    ns: Option<&str>,
    group: &str,
    resource: &str,
    name: Option<&str>,
) -> bool {
    decide(state, user, &rbac::Attributes::resource(verb, ns, group, resource, name)).is_ok()
}

/// The Node authorizer, then RBAC (`--authorization-mode=Node,RBAC`); a
/// refusal carries the Node authorizer's reason (maybe empty).
fn decide(state: &State, user: &User, a: &rbac::Attributes) -> Result<(), String> {
    let reason = match node_authz::authorize(&state.registry, user, a) {
        node_authz::Decision::Allow => return Ok(()),
        node_authz::Decision::NoOpinion(reason) => reason,
    };
    if state.rbac.allows(user, a) { Ok(()) } else { Err(reason) }
}

fn authorize(state: &State, user: &User, verb: &str, t: &Target<'_>, q: &[(String, String)]) -> Result<(), ApiError> {
    let resource = match t.sub {
        Some(s) => format!("{}/{s}", t.rt.plural),
        None => t.rt.plural.to_string(),
    };
    // As upstream's request info: a list or watch of one name (the
    // `metadata.name` field selector) is authorized as that name.
    let selected = param(q, "fieldSelector")
        .and_then(|f| f.split(',').find_map(|t| t.trim().strip_prefix("metadata.name=")))
        .filter(|_| t.name.is_none() && matches!(verb, "list" | "watch"));
    let a = rbac::Attributes::resource(verb, t.namespace, t.rt.group, &resource, t.name.or(selected));
    let Err(reason) = decide(state, user, &a) else { return Ok(()) };
    let scope = match t.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".into(),
    };
    let what = match t.name {
        Some(n) => format!("{} \"{n}\"", errors::qualified(&t.rt)),
        None => errors::qualified(&t.rt),
    };
    let reason = if reason.is_empty() { reason } else { format!(": {reason}") };
    let mut e = ApiError::forbidden(format!(
        "{what} is forbidden: User \"{}\" cannot {verb} resource \"{resource}\" in API group \"{}\" {scope}{reason}",
        user.name, t.rt.group
    ));
    e.details = Some(Box::new(k8s_openapi::apimachinery::pkg::apis::meta::v1::StatusDetails {
        name: t.name.map(str::to_string),
        group: Some(t.rt.group.to_string()).filter(|g| !g.is_empty()),
        kind: Some(t.rt.plural.to_string()),
        ..Default::default()
    }));
    Err(e)
}

#[allow(clippy::too_many_arguments)]
async fn route(
    state: &Arc<State>,
    user: Option<&User>,
    method: &Method,
    headers: &HeaderMap,
    path: &str,
    q: &[(String, String)],
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["version"] => return Ok(respond(200, &discovery::version(), &[])),
        ["healthz" | "livez" | "readyz", ..] => return Ok(text(200, "ok")),
        _ => {}
    }
    let Some(user) = user else {
        return Err(ApiError::new(401, "Unauthorized", "Unauthorized"));
    };
    if method == Method::GET
        && let ["apis", discovery::METRICS_GROUP, discovery::METRICS_VERSION, rest @ ..] = segs.as_slice()
        && !rest.is_empty()
    {
        return metrics::serve(state, &state.metrics, user, rest, q).await;
    }
    let target = parse_target(&segs, |g, v, p| state.registry.resource(g, v, p));
    if method == Method::GET && target.is_none() {
        let path = format!("/{}", segs.join("/"));
        if !state.rbac.allows(user, &rbac::Attributes::non_resource("get", &path)) {
            return Err(ApiError::forbidden(format!("forbidden: User {:?} cannot get path {path:?}", user.name)));
        }
        if let Some(r) = non_resource(state, headers, &segs).await {
            return r;
        }
    }
    if method == Method::POST
        && let ["apis", group @ ("authorization.k8s.io" | "authentication.k8s.io"), "v1", rest @ ..] = segs.as_slice()
        && let Some((ns, resource)) = review_target(rest)
    {
        let review = if content_type(headers) == "application/vnd.kubernetes.protobuf" {
            Bytes::from(serde_json::to_vec(&decode_protobuf(&body)?).unwrap_or_default())
        } else {
            body.clone()
        };
        if (*group, resource) == ("authentication.k8s.io", "tokenreviews") {
            if !allowed(state, user, "create", None, group, resource, None) {
                return Err(access::forbidden_create(user, group, resource));
            }
            return authn::token_review(state, &review).map(|v| respond(201, &v, &[]));
        }
        let authorize = |u: &User, a: &rbac::Attributes| match node_authz::authorize(&state.registry, u, a) {
            node_authz::Decision::Allow => Some(""),
            node_authz::Decision::NoOpinion(_) => state.rbac.allows(u, a).then_some("RBAC: allowed"),
        };
        if let Some(r) = access::review(&state.rbac, &authorize, user, group, ns, resource, &review) {
            return r.map(|v| respond(201, &v, &[]));
        }
    }
    let t = target.ok_or_else(|| ApiError::new(404, "NotFound", "the server could not find the requested resource"))?;
    let verb = verb(method, &t, q);
    authorize(state, user, verb, &t, q)?;
    // pods/log answers text/plain whatever the request accepts, as upstream.
    if t.sub != Some("log") {
        negotiate::check_accept(headers)?;
    }
    let reg = &state.registry;
    let rt = &*t.rt;
    let ns = t.namespace;
    if rt.namespaced && ns.is_none() && t.name.is_some() {
        return Err(ApiError::new(404, "NotFound", "the server could not find the requested resource"));
    }
    if let Some(sub) = t.sub
        && !rt.subresources.contains(&sub)
    {
        return Err(ApiError::new(404, "NotFound", "the server could not find the requested resource"));
    }
    let table = wants_table(headers);
    // Metadata only (`as=PartialObjectMetadata[List]`): informers' and
    // garbage collectors' reads, of any kind, custom ones included.
    let metadata = !table && negotiate::wants_metadata(headers);
    let include = match param(q, "includeObject") {
        Some("None") => IncludeObject::None,
        Some("Object") => IncludeObject::Object,
        _ => IncludeObject::Metadata,
    };
    let ct = content_type(headers);
    // kubectl ≥1.32 creates some kinds with protobuf bodies; client-go's
    // typed clients (helm's release storage) update Secrets and send
    // DeleteOptions in protobuf.
    let protobuf_body = match verb {
        "create" | "update" => true,
        "delete" | "deletecollection" => !body.is_empty(),
        _ => false,
    };
    // Custom objects are JSON only, as upstream: a protobuf object is a 415.
    let custom_object = rt.custom.is_some() && matches!(verb, "create" | "update");
    let body = if ct == "application/vnd.kubernetes.protobuf" && protobuf_body && !custom_object {
        Bytes::from(serde_json::to_vec(&decode_protobuf(&body)?).unwrap_or_default())
    } else {
        if !body.is_empty() && matches!(verb, "create" | "update") && ct == "application/yaml" {
            Bytes::from(serde_json::to_vec(&parse_yaml(&body).await?).unwrap_or_default())
        } else {
            if !body.is_empty()
                && matches!(verb, "create" | "update")
                && !(ct.is_empty() || ct == "application/json" || ct == "*/*")
            {
                return Err(unsupported_media(&ct));
            }
            body
        }
    };
    if matches!(verb, "create" | "update" | "delete") && node_authz::node_of(user).is_some() {
        let new = if verb == "delete" { None } else { Some(parse_json(&body)?) };
        node_restriction::admit(reg, user, verb, rt, ns, t.name, t.sub, new.as_ref())?;
    }
    match (verb, t.name, t.sub) {
        ("get", Some(name), Some("log")) => streaming::pod_log(state, ns, name, q).await,
        (_, Some(_), Some("exec" | "attach" | "portforward")) => Err(ApiError::bad_request("Upgrade request required")),
        ("get", Some(name), sub) => {
            let o = reg.get(rt, ns, name)?;
            if sub == Some("scale") {
                return Ok(respond(200, &patch::scale_of(rt, &o), &[]));
            }
            if table && sub.is_none() {
                let meta = json!({"resourceVersion": o["metadata"]["resourceVersion"]});
                return Ok(respond(200, &table::table(rt, &[o], include, meta, true), &[]));
            }
            if metadata && sub.is_none() {
                return Ok(respond(200, &partial_metadata(&o), &[]));
            }
            Ok(respond(200, &o, &[]))
        }
        ("list", None, None) => {
            let opts = list_options(rt, q)?;
            let r = reg.list(rt, ns, &opts)?;
            let mut meta = json!({"resourceVersion": r.revision.to_string()});
            if let Some(c) = &r.continue_token {
                meta["continue"] = c.clone().into();
            }
            if table {
                return Ok(respond(200, &table::table(rt, &r.items, include, meta, true), &[]));
            }
            if metadata {
                let items: Vec<Value> = r.items.iter().map(partial_metadata).collect();
                let list = json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "items": items});
                return Ok(respond(200, &list, &[]));
            }
            let list = json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": meta, "items": r.items});
            Ok(respond(200, &list, &[]))
        }
        ("watch", None, None) => {
            let protobuf = match negotiate::format(headers)? {
                negotiate::Format::Protobuf { json_fallback } if !table => {
                    let (api_version, kind) = if metadata {
                        ("meta.k8s.io/v1".into(), "PartialObjectMetadata")
                    } else {
                        (rt.api_version(), rt.kind)
                    };
                    let encoded = orchestrator_apimachinery::protobuf::has_table(&api_version, kind);
                    if !encoded && !json_fallback {
                        return Err(ApiError::new(
                            406,
                            "NotAcceptable",
                            format!("{} has no protobuf encoding", rt.kind),
                        ));
                    }
                    encoded
                }
                _ => false,
            };
            let shape = match (table, metadata) {
                (true, _) => Shape::Table(include),
                (false, true) => Shape::Metadata,
                (false, false) => Shape::Object,
            };
            watch(state, t.rt.clone(), ns, q, shape, protobuf)
        }
        ("create", None, None) => {
            let mut o = parse_json(&body)?;
            csr::fill_requester(rt, user, &mut o);
            state.rbac.check_write(user, rt, ns, &o)?;
            let w = reg.create(rt, ns, o, &write_options(q)?)?;
            Ok(respond(201, &w.object, &w.warnings))
        }
        ("create", Some(name), Some("token")) => {
            Ok(respond(201, &reg.request_token(ns.unwrap_or_default(), name, &body)?, &[]))
        }
        ("create", Some(name), Some("eviction")) => {
            let options = eviction::parse(name, &parse_json(&body)?)?;
            let opts = delete_options(&[], &serde_json::to_vec(&options).unwrap_or_default())?;
            Ok(respond(201, &eviction::evict(reg, ns.unwrap_or_default(), name, opts)?, &[]))
        }
        ("create", Some(name), Some("binding")) => {
            let b = parse_json(&body)?;
            patch::bind(reg, ns, name, &b)?;
            Ok(respond(
                201,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
                &[],
            ))
        }
        ("update", Some(name), Some("approval")) => {
            let w = csr::update_approval(reg, rt, name, &parse_json(&body)?, &write_options(q)?)?;
            Ok(respond(200, &w.object, &w.warnings))
        }
        ("update", Some(name), sub) => {
            let o = parse_json(&body)?;
            state.rbac.check_write(user, rt, ns, &o)?;
            let opts = write_options(q)?;
            let w = match sub {
                Some("scale") => patch::update_scale(reg, rt, ns, name, &o, &opts)?,
                Some("status") => reg.update(rt, ns, name, o, Part::Status, &opts)?,
                Some("ephemeralcontainers") => patch::update_ephemeral(reg, rt, ns, name, &o, &opts)?,
                _ => reg.update(rt, ns, name, o, Part::Main, &opts)?,
            };
            Ok(respond(200, &w.object, &w.warnings))
        }
        ("patch", Some(name), sub) => {
            // Server-side apply bodies are YAML (JSON is YAML too).
            let p = if ct == "application/apply-patch+yaml" { parse_yaml(&body).await? } else { parse_json(&body)? };
            let opts = write_options(q)?;
            let force = flag(q, "force");
            if rt.group == resources::RBAC_GROUP || node_authz::node_of(user).is_some() {
                let dry = WriteOptions { dry_run: true, ..opts.clone() };
                let after = patch::patch(reg, rt, ns, name, sub, &ct, &p, &dry, force)?;
                state.rbac.check_write(user, rt, ns, &after.object)?;
                node_restriction::admit(reg, user, verb, rt, ns, Some(name), sub, Some(&after.object))?;
            }
            let w = patch::patch(reg, rt, ns, name, sub, &ct, &p, &opts, force)?;
            Ok(respond(if w.created { 201 } else { 200 }, &w.object, &w.warnings))
        }
        ("delete", Some(name), None) => {
            let opts = delete_options(q, &body)?;
            Ok(respond(200, &reg.delete(rt, ns, name, &opts)?, &[]))
        }
        ("deletecollection", None, None) => {
            let opts = delete_options(q, &body)?;
            let list = reg.list(rt, ns, &list_options(rt, q)?)?;
            let mut items = Vec::new();
            for o in list.items {
                let (ons, name) = (
                    orchestrator_apimachinery::registry::namespace_of(&o).map(str::to_string),
                    orchestrator_apimachinery::registry::name_of(&o).to_string(),
                );
                match reg.delete(rt, ons.as_deref(), &name, &opts) {
                    Ok(_) => items.push(o),
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
            let list = json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": {}, "items": items});
            Ok(respond(200, &list, &[]))
        }
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({verb})"),
        )),
    }
}

fn list_options(rt: &ResourceType, q: &[(String, String)]) -> Result<ListOptions, ApiError> {
    let labels = LabelSelector::parse(param(q, "labelSelector").unwrap_or_default())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let fields = FieldSelector::parse(param(q, "fieldSelector").unwrap_or_default(), rt.fields)
        .map_err(|e| ApiError::bad_request(e.0))?;
    let limit = match param(q, "limit") {
        Some(l) if !l.is_empty() => {
            l.parse().map_err(|_| ApiError::bad_request(format!("limit {l:?} is not a number")))?
        }
        _ => 0,
    };
    let exact = match (param(q, "resourceVersion"), param(q, "resourceVersionMatch")) {
        (Some(rv), Some("Exact")) => {
            Some(rv.parse().map_err(|_| ApiError::bad_request(format!("resourceVersion {rv:?} is not a number")))?)
        }
        _ => None,
    };
    Ok(ListOptions {
        labels,
        fields,
        limit,
        continue_token: param(q, "continue").filter(|c| !c.is_empty()).map(str::to_string),
        exact_revision: exact,
    })
}

fn delete_options(q: &[(String, String)], body: &[u8]) -> Result<DeleteOptions, ApiError> {
    // No body, or `null` (an Eviction without deleteOptions): the defaults.
    let b: k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions = match body {
        [] => Default::default(),
        body => match parse_json(body)? {
            Value::Null => Default::default(),
            o => serde_json::from_value(o).map_err(|e| ApiError::bad_request(format!("DeleteOptions: {e}")))?,
        },
    };
    let policy = b.propagation_policy.as_deref().or(param(q, "propagationPolicy"));
    let propagation = match policy {
        None | Some("") => None,
        Some("Background") => Some(Propagation::Background),
        Some("Foreground") => Some(Propagation::Foreground),
        Some("Orphan") => Some(Propagation::Orphan),
        Some(p) => {
            return Err(ApiError::bad_request(format!(
                "propagationPolicy {p:?} is not one of Background, Foreground, Orphan"
            )));
        }
    };
    let propagation = propagation.or(match b.orphan_dependents {
        Some(true) => Some(Propagation::Orphan),
        _ => None,
    });
    let grace = b.grace_period_seconds.or(param(q, "gracePeriodSeconds").and_then(|g| g.parse().ok()));
    let preconditions = b.preconditions.unwrap_or_default();
    Ok(DeleteOptions {
        propagation,
        grace_period: grace,
        precondition_uid: preconditions.uid,
        precondition_rv: preconditions.resource_version,
        dry_run: b.dry_run.is_some_and(|a| a.iter().any(|v| v == "All")) || param(q, "dryRun") == Some("All"),
    })
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn bookmark(rt: &ResourceType, rev: i64, initial_end: bool) -> Value {
    let mut meta = json!({"resourceVersion": rev.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": meta})
}

/// `meta.k8s.io/v1` `PartialObjectMetadata`: an object's metadata only.
fn partial_metadata(o: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or(json!({}))})
}

/// What each watch event carries.
#[derive(Clone, Copy)]
enum Shape {
    Object,
    /// One-row Tables (the first with its columns).
    Table(IncludeObject),
    /// `PartialObjectMetadata`, bookmarks included (as upstream converts every event).
    Metadata,
}

fn watch(
    state: &Arc<State>,
    rt: Served,
    ns: Option<&str>,
    q: &[(String, String)],
    shape: Shape,
    protobuf: bool,
) -> Result<Response<Body>, ApiError> {
    // Protobuf watches are upstream's length-prefixed WatchEvent frames.
    let event_line = move |kind: &str, object: &Value| -> Bytes {
        if protobuf {
            match orchestrator_apimachinery::protobuf::encode_watch_frame(kind, object) {
                Ok(frame) => return Bytes::from(frame),
                Err(e) => tracing::warn!("watch event not encodable as protobuf: {e}"),
            }
        }
        event_line(kind, object)
    };
    let opts = list_options(&rt, q)?;
    let rv = param(q, "resourceVersion").unwrap_or_default();
    let send_initial = flag(q, "sendInitialEvents");
    let bookmarks = flag(q, "allowWatchBookmarks");
    let timeout = param(q, "timeoutSeconds").and_then(|t| t.parse::<u64>().ok()).unwrap_or(1800).clamp(1, 3600);
    let reg = state.registry.clone();
    // Initial state: when asked, or when no revision is given (upstream's
    // "start at most recent" sends the current objects as ADDED first).
    let (initial, from) = if send_initial || rv.is_empty() || rv == "0" {
        let all = ListOptions { labels: opts.labels.clone(), fields: opts.fields.clone(), ..Default::default() };
        let r = reg.list(&rt, ns, &all)?;
        (Some(r.items), r.revision)
    } else {
        (None, rv.parse::<i64>().map_err(|_| ApiError::bad_request(format!("resourceVersion {rv:?} is not a number")))?)
    };
    let watch = reg.watch(&rt, ns, from, opts.labels.clone(), opts.fields.clone());
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let ns_owned = ns.map(str::to_string);
    tokio::spawn(async move {
        let _ns = ns_owned;
        let mut first_table = true;
        let mut render = |o: &Value| -> Value {
            match shape {
                Shape::Table(include) => {
                    let meta = json!({"resourceVersion": o["metadata"]["resourceVersion"]});
                    let t = table::table(&rt, std::slice::from_ref(o), include, meta, first_table);
                    first_table = false;
                    t
                }
                Shape::Metadata => partial_metadata(o),
                Shape::Object => o.clone(),
            }
        };
        let mark = |o: Value| if matches!(shape, Shape::Metadata) { partial_metadata(&o) } else { o };
        let mut watch = match watch {
            Ok(w) => w,
            Err(e) => {
                let e = ApiError::from_store(&rt, "", e);
                let _ = tx.send(event_line("ERROR", &e.to_json())).await;
                return;
            }
        };
        for o in initial.into_iter().flatten() {
            if tx.send(event_line("ADDED", &render(&o))).await.is_err() {
                return;
            }
        }
        if send_initial && bookmarks && tx.send(event_line("BOOKMARK", &mark(bookmark(&rt, from, true)))).await.is_err()
        {
            return;
        }
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        tick.tick().await;
        let mut last = from;
        loop {
            tokio::select! {
                e = watch.next() => match e {
                    Ok(ev) => {
                        last = ev.object["metadata"]["resourceVersion"].as_str().and_then(|r| r.parse().ok()).unwrap_or(last);
                        if tx.send(event_line(ev.kind, &render(&ev.object))).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let e = ApiError::from_store(&rt, "", e);
                        let _ = tx.send(event_line("ERROR", &e.to_json())).await;
                        return;
                    }
                },
                _ = tick.tick(), if bookmarks => {
                    if tx.send(event_line("BOOKMARK", &mark(bookmark(&rt, last, false)))).await.is_err() {
                        return;
                    }
                }
                _ = &mut deadline => return,
                _ = tx.closed() => return,
            }
        }
    });
    let mut r = Response::new(Body::Stream(rx));
    let ct = if protobuf { "application/vnd.kubernetes.protobuf;stream=watch" } else { "application/json" };
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(ct));
    r.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-cache, private"));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_is_advertised_at_an_address_pods_reach() {
        let sans = ["node-1".to_string(), "127.0.0.1".into(), "10.0.2.15".into()];
        assert_eq!(advertise_address("0.0.0.0".parse().unwrap(), &sans).to_string(), "10.0.2.15");
        assert_eq!(advertise_address("192.0.2.1".parse().unwrap(), &sans).to_string(), "192.0.2.1");
        assert_eq!(advertise_address("0.0.0.0".parse().unwrap(), &sans[..2]).to_string(), "127.0.0.1");
    }

    #[test]
    fn query_and_targets() {
        let builtin = |g: &str, v: &str, p: &str| resources::find(g, v, p).map(Served::Builtin);
        let q = parse_query("labelSelector=app%3Dweb%2Ctier+in+%28a%29&watch=1");
        assert_eq!(param(&q, "labelSelector"), Some("app=web,tier in (a)"));
        assert!(flag(&q, "watch"));
        let t =
            parse_target(&["apis", "apps", "v1", "namespaces", "d", "deployments", "web", "scale"], builtin).unwrap();
        assert_eq!((t.rt.kind, t.namespace, t.name, t.sub), ("Deployment", Some("d"), Some("web"), Some("scale")));
        let t = parse_target(&["api", "v1", "namespaces", "d", "status"], builtin).unwrap();
        assert_eq!((t.rt.kind, t.namespace, t.name, t.sub), ("Namespace", None, Some("d"), Some("status")));
        let t = parse_target(&["api", "v1", "pods"], builtin).unwrap();
        assert_eq!((t.rt.kind, t.namespace, t.name), ("Pod", None, None));
        assert!(parse_target(&["api", "v1", "bogus"], builtin).is_none());
    }
}

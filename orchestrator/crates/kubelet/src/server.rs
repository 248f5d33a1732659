//! The kubelet's HTTPS endpoint (10250): `GET /containerLogs/{ns}/{pod}/{container}`
//! for the API server's `pods/log` proxy, and the WebSocket upgrades of
//! `/exec/…` and `/attach/…` (module `exec`) and `/portForward/…` (module
//! `portforward`) it pipes `pods/exec`, `pods/attach` and `pods/portforward` to. TLS with a serving certificate
//! from the cluster CA; clients must present a certificate of that CA in the
//! admin group (the API server's kubelet client).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use tokio::sync::mpsc;

use crate::cri::v1;
use crate::logs::{self, Options};
use crate::pod::{LABEL_CONTAINER_NAME, LABEL_POD_UID};
use crate::{Kubelet, KubeletError};
use orchestrator_http::Body;
use orchestrator_http::pki::{self, ADMIN_GROUP, CertKey};

/// The kubelet's TLS identity: a serving certificate issued by the cluster
/// CA (in the control plane's process, which holds the CA), or self-signed
/// (a worker; the API server does not verify kubelet serving certificates,
/// as upstream without `--kubelet-certificate-authority`). Clients are
/// verified against the cluster CA either way.
pub enum Identity {
    IssuedBy(CertKey),
    SelfSigned { ca_pem: String },
}

fn tls_config(identity: &Identity, names: &[String]) -> Result<rustls::ServerConfig, String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let s = |e: &dyn std::fmt::Display| e.to_string();
    let (serving, ca_pem) = match identity {
        Identity::IssuedBy(ca) => (pki::issue_server(ca, names).map_err(|e| s(&e))?, ca.cert_pem.as_str()),
        Identity::SelfSigned { ca_pem } => (pki::self_signed_server(names).map_err(|e| s(&e))?, ca_pem.as_str()),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| s(&e))?).map_err(|e| s(&e))?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| s(&e))?;
    let chain = vec![CertificateDer::from_pem_slice(serving.cert_pem.as_bytes()).map_err(|e| s(&e))?];
    let key = PrivateKeyDer::from_pem_slice(serving.key_pem.as_bytes()).map_err(|e| s(&e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| s(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| s(&e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Binds the endpoint; returns the bound address (the port goes into the Node's daemonEndpoints).
pub async fn start(k: Arc<Kubelet>, listen: SocketAddr, identity: Identity) -> Result<SocketAddr, KubeletError> {
    let io =
        |source: std::io::Error| KubeletError::Io { op: "listen", path: PathBuf::from(listen.to_string()), source };
    let mut names = vec![k.cfg.node_name.clone(), k.host_ip.clone(), "localhost".into(), "127.0.0.1".into()];
    names.dedup();
    let tls = tls_config(&identity, &names).map_err(|e| io(std::io::Error::other(e)))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(io)?;
    let addr = listener.local_addr().map_err(io)?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let (acceptor, k) = (acceptor.clone(), k.clone());
            tokio::spawn(async move {
                let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await else {
                    return;
                };
                let admin = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| pki::user_of_cert(c))
                    .is_some_and(|(_, groups)| groups.iter().any(|g| g == ADMIN_GROUP));
                let service = hyper::service::service_fn(move |req| {
                    let k = k.clone();
                    async move { Ok::<_, std::convert::Infallible>(handle(k, admin, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Ok(addr)
}

fn text(code: StatusCode, s: String) -> Response<Body> {
    let mut r = Response::new(Body::Full(Some(Bytes::from(s))));
    *r.status_mut() = code;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

async fn handle(k: Arc<Kubelet>, admin: bool, req: Request<Incoming>) -> Response<Body> {
    if !admin {
        return text(StatusCode::FORBIDDEN, "Forbidden: the kubelet API is for the API server\n".into());
    }
    let path = req.uri().path().to_string();
    let q = orchestrator_http::parse_query(req.uri().query().unwrap_or_default());
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["healthz"] => text(StatusCode::OK, "ok".into()),
        ["containerLogs", ns, pod, container] => container_logs(k, ns, pod, container, Options::from_query(&q)).await,
        [kind @ ("exec" | "attach"), ns, pod, container] => {
            let opts = crate::exec::Options::from_query(*kind == "attach", &q);
            let (ns, pod, container) = (ns.to_string(), pod.to_string(), container.to_string());
            crate::exec::serve(k, &ns, &pod, &container, opts, req).await
        }
        ["portForward", ns, pod] => {
            let (ns, pod) = (ns.to_string(), pod.to_string());
            crate::portforward::serve(k, &ns, &pod, req).await
        }
        _ => text(StatusCode::NOT_FOUND, "404 page not found\n".into()),
    }
}

/// Whether the newest attempt of a container is still running (a followed log ends when it stops).
async fn running(k: &Kubelet, uid: &str, container: &str) -> bool {
    let labels = HashMap::from([
        (LABEL_POD_UID.to_string(), uid.to_string()),
        (LABEL_CONTAINER_NAME.to_string(), container.to_string()),
    ]);
    let list = k
        .cri
        .runtime
        .clone()
        .list_containers(v1::ListContainersRequest {
            filter: Some(v1::ContainerFilter { label_selector: labels, ..Default::default() }),
        })
        .await;
    list.map(|l| l.into_inner().containers)
        .unwrap_or_default()
        .into_iter()
        .max_by_key(|c| (c.metadata.as_ref().map_or(0, |m| m.attempt), c.created_at))
        .is_some_and(|c| c.state == v1::ContainerState::ContainerRunning as i32)
}

async fn container_logs(k: Arc<Kubelet>, ns: &str, pod: &str, container: &str, opts: Options) -> Response<Body> {
    let Some(dir) = logs::pod_dir(&k.cfg.dir.join("logs"), ns, pod) else {
        return text(StatusCode::NOT_FOUND, format!("pod \"{pod}\" in namespace \"{ns}\" has no logs on this node\n"));
    };
    let uid = dir.file_name().unwrap_or_default().to_string_lossy().rsplit('_').next().unwrap_or_default().to_string();
    let files = logs::files(&dir, container);
    let file = match (opts.previous, files.as_slice()) {
        (false, [newest, ..]) => newest.clone(),
        (true, [_, previous, ..]) => previous.clone(),
        (true, _) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("previous terminated container \"{container}\" in pod \"{pod}\" not found\n"),
            );
        }
        (false, []) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("container \"{container}\" in pod \"{pod}\" is waiting to start: ContainerCreating\n"),
            );
        }
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut f = match tokio::fs::File::open(&file).await {
        Ok(f) => f,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("open {}: {e}\n", file.display())),
    };
    let mut buf = Vec::new();
    if let Err(e) = f.read_to_end(&mut buf).await {
        return text(StatusCode::INTERNAL_SERVER_ERROR, format!("read {}: {e}\n", file.display()));
    }
    // Only whole lines now; a line being written is picked up by the follow loop.
    let whole = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let first: String = logs::render(&String::from_utf8_lossy(&buf[..whole]), &opts, now).concat();
    if !opts.follow || opts.previous {
        return text(StatusCode::OK, first);
    }
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let container = container.to_string();
    tokio::spawn(async move {
        if tx.send(Bytes::from(first)).await.is_err() {
            return;
        }
        let mut offset = whole as u64;
        let mut rest = String::new();
        let follow_opts = Options { timestamps: opts.timestamps, ..Default::default() };
        let mut idle = 0u32;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = tx.closed() => return,
            }
            let mut chunk = Vec::new();
            if f.seek(std::io::SeekFrom::Start(offset)).await.is_err() || f.read_to_end(&mut chunk).await.is_err() {
                return;
            }
            offset += chunk.len() as u64;
            rest.push_str(&String::from_utf8_lossy(&chunk));
            if let Some(i) = rest.rfind('\n') {
                let out: String = logs::render(&rest[..=i], &follow_opts, 0).concat();
                rest.drain(..=i);
                if tx.send(Bytes::from(out)).await.is_err() {
                    return;
                }
                idle = 0;
            } else {
                idle += 1;
                // Every second without output: stop once the container has.
                if idle.is_multiple_of(10) && !running(&k, &uid, &container).await {
                    return;
                }
            }
        }
    });
    let mut r = Response::new(Body::Stream(rx));
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

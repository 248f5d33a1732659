//! The kubelet's HTTPS endpoint (10250): `GET /containerLogs/{ns}/{pod}/{container}`
//! for the API server's `pods/log` proxy, and the WebSocket upgrades of
//! `/exec/…` and `/attach/…` (module `exec`) and `/portForward/…` (module
//! `portforward`) it pipes `pods/exec`, `pods/attach` and `pods/portforward` to. TLS with the
//! serving certificate of module `serving` (renewed while serving); clients
//! must present a certificate of the cluster CA in the admin group (the API
//! server's kubelet client).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncSeekExt as _;
use tokio::sync::mpsc;

use crate::cri::v1;
use crate::logs::{self, Options};
use crate::pod::{LABEL_CONTAINER_NAME, LABEL_POD_UID};
use crate::{Kubelet, KubeletError};
use orchestrator_http::Body;
use orchestrator_http::pki::{self, ADMIN_GROUP};
use orchestrator_http::reload::RenewedCert;

pub use crate::serving::Identity;

fn tls_config(served: Arc<RenewedCert>, client_ca: &str) -> Result<rustls::ServerConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let s = |e: &dyn std::fmt::Display| e.to_string();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(client_ca.as_bytes()).map_err(|e| s(&e))?).map_err(|e| s(&e))?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| s(&e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| s(&e))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(served);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Binds the endpoint; returns the bound address (the port goes into the Node's daemonEndpoints).
pub async fn start(k: Arc<Kubelet>, listen: SocketAddr, identity: Identity) -> Result<SocketAddr, KubeletError> {
    let io =
        |source: std::io::Error| KubeletError::Io { op: "listen", path: PathBuf::from(listen.to_string()), source };
    // The Node's name and address, as upstream's kubelet asks for.
    let mut names = vec![k.cfg.node_name.clone(), k.host_ip.clone()];
    names.dedup();
    let (dir, node) = (k.cfg.dir.clone(), k.cfg.node_name.clone());
    let tls = crate::serving::start(k.api.clone(), dir, node, names, &identity)
        .and_then(|served| tls_config(served, identity.client_ca()))
        .map_err(|e| io(std::io::Error::other(e)))?;
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
        ["metrics", "resource"] => match k.resource_metrics().await {
            Ok(doc) => text(StatusCode::OK, doc),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        },
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
    let f = match tokio::fs::File::open(&file).await {
        Ok(f) => f,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("open {}: {e}\n", file.display())),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let container = container.to_string();
    tokio::spawn(async move {
        let mut out = Output { tx, buf: Vec::new(), left: opts.limit_bytes };
        if let Err(e) = stream(&k, &file, f, &opts, now, &uid, &container, &mut out).await {
            tracing::debug!("logs of {}: {e}", file.display());
        }
        out.flush().await;
    });
    let mut r = Response::new(Body::Stream(rx));
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// Where rendered log lines go: to the response in chunks, until the client
/// leaves or `limitBytes` is reached.
struct Output {
    tx: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
    left: Option<u64>,
}

impl Output {
    /// Whether to go on (false: the client is gone or the byte limit reached).
    async fn line(&mut self, line: &str) -> bool {
        let mut bytes = line.as_bytes();
        if let Some(left) = self.left {
            bytes = &bytes[..bytes.len().min(usize::try_from(left).unwrap_or(usize::MAX))];
            self.left = Some(left - bytes.len() as u64);
        }
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= 32 * 1024 && !self.flush().await {
            return false;
        }
        self.left != Some(0)
    }

    async fn flush(&mut self) -> bool {
        self.buf.is_empty() || self.tx.send(Bytes::from(std::mem::take(&mut self.buf))).await.is_ok()
    }
}

/// Reads whole lines of `f` from where it is, rendering each into `out`
/// (through `tail` when set); returns the bytes consumed (a last line
/// without its newline is left for later) and whether to go on.
async fn read_lines(
    f: &mut tokio::fs::File,
    r: &mut logs::Renderer,
    tail: &mut logs::Tail,
    out: &mut Output,
) -> std::io::Result<(u64, bool)> {
    use tokio::io::AsyncBufReadExt as _;
    let mut reader = tokio::io::BufReader::new(f);
    let (mut consumed, mut raw) = (0u64, Vec::new());
    loop {
        raw.clear();
        let n = reader.read_until(b'\n', &mut raw).await?;
        if n == 0 || raw.last() != Some(&b'\n') {
            return Ok((consumed, true));
        }
        consumed += n as u64;
        if let Some(line) = r.line(&String::from_utf8_lossy(&raw)).and_then(|l| tail.push(l))
            && !out.line(&line).await
        {
            return Ok((consumed, false));
        }
    }
}

/// A container's log as kubectl asked: the rotated files of the attempt
/// and `current` (opened as `f`), a line at a time (`tailLines` holds only
/// that many), then, with `follow`, what is written next — across
/// rotations — until the container stops or the client leaves.
#[allow(clippy::too_many_arguments)]
async fn stream(
    k: &Kubelet,
    current: &std::path::Path,
    mut f: tokio::fs::File,
    opts: &Options,
    now: i64,
    uid: &str,
    container: &str,
    out: &mut Output,
) -> std::io::Result<()> {
    let mut r = logs::Renderer::new(opts, now);
    let mut tail = logs::Tail::new(opts.tail_lines);
    for older in logs::segments(current).iter().filter(|p| p.as_path() != current) {
        let Ok(mut old) = tokio::fs::File::open(older).await else { continue };
        if !read_lines(&mut old, &mut r, &mut tail, out).await?.1 {
            return Ok(());
        }
    }
    let (mut offset, go_on) = read_lines(&mut f, &mut r, &mut tail, out).await?;
    for line in tail.into_lines() {
        if !out.line(&line).await {
            return Ok(());
        }
    }
    if !go_on || !opts.follow || opts.previous || !out.flush().await {
        return Ok(());
    }
    let follow_opts = Options { timestamps: opts.timestamps, ..Default::default() };
    let mut r = logs::Renderer::new(&follow_opts, 0);
    let mut idle = 0u32;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = out.tx.closed() => return Ok(()),
        }
        f.seek(std::io::SeekFrom::Start(offset)).await?;
        let (n, go_on) = read_lines(&mut f, &mut r, &mut logs::Tail::new(None), out).await?;
        if !go_on || !out.flush().await {
            return Ok(());
        }
        offset += n;
        if n > 0 {
            idle = 0;
            continue;
        }
        idle += 1;
        // Rotated: what was left in the old file is read; go on in the new one.
        if let (Ok(now), Ok(ours)) = (tokio::fs::metadata(current).await, f.metadata().await)
            && std::os::unix::fs::MetadataExt::ino(&now) != std::os::unix::fs::MetadataExt::ino(&ours)
        {
            f = tokio::fs::File::open(current).await?;
            offset = 0;
            continue;
        }
        // Every second without output: stop once the container has.
        if idle.is_multiple_of(10) && !running(k, uid, container).await {
            return Ok(());
        }
    }
}

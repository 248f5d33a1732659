//! `port-forward` at the kubelet's endpoint: `/portForward/{ns}/{pod}`
//! with `Upgrade: SPDY/3.1` and `X-Stream-Protocol-Version:
//! portforward.k8s.io`. The kubelet asks CRI PortForward for the pod
//! sandbox's streaming URL, makes the same upgrade to containerd's
//! streaming server there, and only then switches protocols itself; from
//! then on it pipes bytes. The SPDY session (a data and an error stream
//! per forwarded connection, `port` and `requestID` headers) runs end to
//! end between kubectl and containerd: neither the API server nor the
//! kubelet parses it.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::Kubelet;
use crate::cri::v1;
use crate::pod::{LABEL_POD_NAME, LABEL_POD_NAMESPACE};
use orchestrator_http::{Body, PORT_FORWARD_PROTOCOL};

fn text(code: StatusCode, s: String) -> Response<Body> {
    let mut r = Response::new(Body::Full(Some(Bytes::from(s))));
    *r.status_mut() = code;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// The id of the pod's ready sandbox.
async fn ready_sandbox(k: &Kubelet, ns: &str, pod: &str) -> Option<String> {
    let labels = HashMap::from([
        (LABEL_POD_NAMESPACE.to_string(), ns.to_string()),
        (LABEL_POD_NAME.to_string(), pod.to_string()),
    ]);
    let list = k
        .cri
        .runtime
        .clone()
        .list_pod_sandbox(v1::ListPodSandboxRequest {
            filter: Some(v1::PodSandboxFilter {
                label_selector: labels,
                state: Some(v1::PodSandboxStateValue { state: v1::PodSandboxState::SandboxReady as i32 }),
                ..Default::default()
            }),
        })
        .await;
    list.ok().and_then(|l| l.into_inner().items.into_iter().max_by_key(|s| s.created_at)).map(|s| s.id)
}

/// Upgrades a connection to containerd's streaming `url` to SPDY for port-forward.
async fn upgrade_runtime(url: &str) -> Result<hyper::upgrade::Upgraded, String> {
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what} {url}: {e}");
    let uri: http::Uri = url.parse().map_err(|e| fail("parse", &e))?;
    let host = uri.host().unwrap_or("127.0.0.1").trim_matches(['[', ']']).to_string();
    let tcp = tokio::net::TcpStream::connect((host.as_str(), uri.port_u16().unwrap_or(80)))
        .await
        .map_err(|e| fail("connect", &e))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(|e| fail("handshake", &e))?;
    tokio::spawn(conn.with_upgrades());
    let req = Request::post(uri.path())
        .header(header::HOST, uri.authority().map(|a| a.as_str()).unwrap_or_default())
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "SPDY/3.1")
        .header("X-Stream-Protocol-Version", PORT_FORWARD_PROTOCOL)
        .body(Body::Full(None))
        .map_err(|e| fail("request", &e))?;
    let resp = sender.send_request(req).await.map_err(|e| fail("POST", &e))?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = resp.status();
        let body = orchestrator_http::read_body(resp.into_body()).await.unwrap_or_default();
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body).trim()));
    }
    hyper::upgrade::on(resp).await.map_err(|e| fail("upgrade", &e))
}

/// Answers the SPDY upgrade for `/portForward/{ns}/{pod}`.
pub async fn serve(k: Arc<Kubelet>, ns: &str, pod: &str, req: Request<Incoming>) -> Response<Body> {
    let spdy = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("SPDY/3.1"));
    let offered = req.headers().get("X-Stream-Protocol-Version").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !spdy || !offered.split(',').any(|p| p.trim() == PORT_FORWARD_PROTOCOL) {
        return text(
            StatusCode::BAD_REQUEST,
            format!("Upgrade request required (SPDY/3.1, {PORT_FORWARD_PROTOCOL})\n"),
        );
    }
    let Some(sandbox) = ready_sandbox(&k, ns, pod).await else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod \"{pod}\" in namespace \"{ns}\" is not running on this node\n"),
        );
    };
    let url = match k
        .cri
        .runtime
        .clone()
        .port_forward(v1::PortForwardRequest { pod_sandbox_id: sandbox, port: vec![] })
        .await
    {
        Ok(r) => r.into_inner().url,
        Err(s) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{}\n", s.message())),
    };
    let runtime = match upgrade_runtime(&url).await {
        Ok(io) => io,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    };
    tokio::spawn(async move {
        let Ok(client) = hyper::upgrade::on(req).await else { return };
        let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(runtime)).await;
    });
    let mut r = Response::new(Body::Full(None));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, header::HeaderValue::from_static("SPDY/3.1"));
    h.insert(header::CONNECTION, header::HeaderValue::from_static("Upgrade"));
    h.insert("X-Stream-Protocol-Version", header::HeaderValue::from_static(PORT_FORWARD_PROTOCOL));
    r
}

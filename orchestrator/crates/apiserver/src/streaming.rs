//! The API server's streaming subresources, proxied to the kubelet of the
//! pod's node over HTTPS (cluster CA, an admin client certificate):
//! `pods/log` (streamed as the kubelet writes it), and `pods/exec` and
//! `pods/attach` as WebSocket upgrades (`v5.channel.k8s.io` /
//! `v4.channel.k8s.io`, what current kubectl and client libraries speak)
//! forwarded to the kubelet and then piped byte for byte: the kubelet
//! terminates the channel protocol (`kubelet::exec`). `pods/portforward`
//! (kubectl ≥1.31: SPDY tunnelled in a WebSocket) is unwrapped here and
//! carried to the kubelet's SPDY upgrade, which reaches containerd.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Node, Pod};
use tokio::sync::mpsc;

use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::{resources, typed};
use orchestrator_http::{
    Body, EXEC_PROTOCOLS, PORT_FORWARD_PROTOCOL, flag, is_websocket, offered_subprotocols, param, parse_query,
    read_body, switching_protocols, websocket_accept,
};

use crate::{State, User, allowed};

/// Where a pod's container is served: its kubelet's address and the container's name.
struct Target {
    ip: String,
    port: u16,
    container: String,
}

fn target(state: &State, ns: &str, name: &str, container: Option<&str>) -> Result<Target, ApiError> {
    let pod: Pod = typed::get(&state.registry, resources::by_kind("Pod").expect("served"), Some(ns), name)?;
    let spec = pod.spec.clone().unwrap_or_default();
    let apps: Vec<String> = spec.containers.iter().map(|c| c.name.clone()).collect();
    let container = match container.filter(|c| !c.is_empty()) {
        Some(c)
            if spec.init_containers.iter().flatten().any(|i| i.name == c)
                || apps.iter().any(|n| n == c)
                || spec.ephemeral_containers.iter().flatten().any(|e| e.name == c) =>
        {
            c.to_string()
        }
        Some(c) => return Err(ApiError::bad_request(format!("container {c} is not valid for pod {name}"))),
        None => match apps.as_slice() {
            [one] => one.clone(),
            apps => {
                return Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    apps.join(" ")
                )));
            }
        },
    };
    if spec.node_name.as_deref().unwrap_or_default().is_empty() {
        return Err(ApiError::bad_request(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: the pod is not scheduled"
        )));
    }
    let (ip, port) = kubelet_of(state, &pod, name)?;
    Ok(Target { ip, port, container })
}

/// The address of the kubelet of a pod's node (its InternalIP and `daemonEndpoints.kubeletEndpoint.Port`).
fn kubelet_of(state: &State, pod: &Pod, name: &str) -> Result<(String, u16), ApiError> {
    let node_name = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).unwrap_or_default();
    if node_name.is_empty() {
        return Err(ApiError::bad_request(format!("pod \"{name}\" is not scheduled to a node yet")));
    }
    let node: Node = typed::get(&state.registry, resources::by_kind("Node").expect("served"), None, node_name)?;
    Ok(node_kubelet(&node))
}

/// A Node's kubelet address: its InternalIP and `daemonEndpoints.kubeletEndpoint.Port`.
fn node_kubelet(node: &Node) -> (String, u16) {
    let status = node.status.as_ref();
    let ip = status
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .find(|a| a.type_ == "InternalIP")
        .map(|a| a.address.clone())
        .unwrap_or_default();
    let port = status
        .and_then(|s| s.daemon_endpoints.as_ref())
        .and_then(|d| d.kubelet_endpoint.as_ref())
        .map_or(10250, |e| e.port);
    (ip, port as u16)
}

/// The body of `GET uri` from a Node's kubelet (`metrics.k8s.io` reads `/metrics/resource`).
pub(crate) async fn kubelet_get(state: &State, node: &Node, uri: &str) -> Result<Bytes, ApiError> {
    let (ip, port) = node_kubelet(node);
    let t = Target { ip, port, container: String::new() };
    read_body(kubelet_request(state, &t, "GET", uri).await?).await
}

/// Sends one request to a kubelet over HTTPS (the connection allows an upgrade).
async fn kubelet_send(state: &State, t: &Target, req: Request<Body>) -> Result<Response<Incoming>, ApiError> {
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let fail = |e: &dyn std::fmt::Display| {
        ApiError::new(500, "InternalError", format!("{method} \"https://{}:{}{uri}\": {e}", t.ip, t.port))
    };
    let tcp = tokio::net::TcpStream::connect((t.ip.as_str(), t.port)).await.map_err(|e| fail(&e))?;
    let server_name = rustls::pki_types::ServerName::try_from(t.ip.clone()).map_err(|e| fail(&e))?;
    let tls = tokio_rustls::TlsConnector::from(state.kubelet_client.clone())
        .connect(server_name, tcp)
        .await
        .map_err(|e| fail(&e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| fail(&e))?;
    tokio::spawn(conn.with_upgrades());
    sender.send_request(req).await.map_err(|e| fail(&e))
}

/// The kubelet's message in a refused request, as upstream: a 400 carrying it.
async fn refused(resp: Response<Incoming>) -> ApiError {
    let text = read_body(resp.into_body()).await.map(|b| String::from_utf8_lossy(&b).trim().to_string());
    ApiError::bad_request(text.unwrap_or_default())
}

/// One request to a kubelet; a non-200 answer becomes a 400 carrying the kubelet's message (as upstream).
async fn kubelet_request(state: &State, t: &Target, method: &str, uri: &str) -> Result<Incoming, ApiError> {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, format!("{}:{}", t.ip, t.port))
        .body(Body::Full(None))
        .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?;
    let resp = kubelet_send(state, t, req).await?;
    if resp.status() != StatusCode::OK {
        return Err(refused(resp).await);
    }
    Ok(resp.into_body())
}

fn encode_query(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    pairs.iter().map(|(k, v)| format!("{k}={}", enc(v))).collect::<Vec<_>>().join("&")
}

/// `GET pods/{name}/log`: `/containerLogs/...` on the kubelet, streamed back.
pub async fn pod_log(
    state: &State,
    ns: Option<&str>,
    name: &str,
    q: &[(String, String)],
) -> Result<Response<Body>, ApiError> {
    let ns = ns.unwrap_or("default");
    let t = target(state, ns, name, param(q, "container"))?;
    let forwarded: Vec<(&str, &str)> = ["follow", "tailLines", "timestamps", "previous", "sinceSeconds", "limitBytes"]
        .iter()
        .filter_map(|k| param(q, k).filter(|v| !v.is_empty()).map(|v| (*k, v)))
        .collect();
    let uri = format!("/containerLogs/{ns}/{name}/{}?{}", t.container, encode_query(&forwarded));
    let mut body = kubelet_request(state, &t, "GET", &uri).await?;
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        use hyper::body::Body as _;
        while let Some(Ok(frame)) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            if let Ok(data) = frame.into_data()
                && tx.send(data).await.is_err()
            {
                return;
            }
        }
    });
    let mut r = Response::new(Body::Stream(rx));
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain"));
    Ok(r)
}

/// The kubelet's query for `pods/exec` or `pods/attach` (upstream's names: input, output, error, tty).
fn kubelet_query(q: &[(String, String)], exec: bool) -> String {
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    if exec {
        pairs.extend(q.iter().filter(|(k, _)| k == "command").map(|(_, v)| ("command", v.as_str())));
    }
    for (theirs, ours) in [("stdin", "input"), ("stdout", "output"), ("stderr", "error"), ("tty", "tty")] {
        if flag(q, theirs) {
            pairs.push((ours, "1"));
        }
    }
    encode_query(&pairs)
}

/// A pod subresource asked for with an upgrade: where, and what was offered.
struct Upgrade {
    ns: String,
    name: String,
    sub: String,
    /// `Upgrade: websocket`.
    websocket: bool,
    /// The WebSocket subprotocols offered.
    offered: Vec<String>,
}

/// Parses `/api/v1/namespaces/NS/pods/NAME/SUB` for one of `subs` and
/// checks that the user may create it.
fn upgrade_request(
    state: &State,
    user: Option<User>,
    req: &Request<Incoming>,
    subs: &[&str],
) -> Result<Upgrade, ApiError> {
    let user = user.ok_or_else(|| ApiError::new(401, "Unauthorized", "Unauthorized"))?;
    let segs: Vec<&str> = req.uri().path().split('/').filter(|s| !s.is_empty()).collect();
    let (ns, name, sub) = match segs.as_slice() {
        ["api", "v1", "namespaces", ns, "pods", name, sub] if subs.contains(sub) => {
            (ns.to_string(), name.to_string(), sub.to_string())
        }
        _ => return Err(ApiError::new(404, "NotFound", "the server could not find the requested resource")),
    };
    if !allowed(state, &user, "create", Some(&ns), "", &format!("pods/{sub}"), Some(&name)) {
        return Err(ApiError::forbidden(format!(
            "pods \"{name}\" is forbidden: User \"{}\" cannot create resource \"pods/{sub}\" in API group \"\" in the namespace \"{ns}\"",
            user.name
        )));
    }
    let (websocket, offered) = (is_websocket(req.headers()), offered_subprotocols(req.headers()));
    Ok(Upgrade { ns, name, sub, websocket, offered })
}

/// `pods/{name}/exec` and `pods/{name}/attach` with `Upgrade: websocket`:
/// the upgrade goes to the pod's kubelet (`/exec/…`, `/attach/…`) with
/// kubectl's key and subprotocols; once the kubelet switches protocols,
/// so does this answer, and the two connections are piped together. The
/// kubelet speaks the channel protocol; a refusal before the switch
/// reaches kubectl as a Status.
pub async fn exec(state: Arc<State>, user: Option<User>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let Upgrade { ns, name, sub, websocket, offered } = upgrade_request(&state, user, &req, &["exec", "attach"])?;
    if !websocket || !EXEC_PROTOCOLS.iter().any(|p| offered.iter().any(|o| o == *p)) {
        return Err(ApiError::bad_request(format!(
            "none of the offered WebSocket subprotocols {offered:?} is supported (want one of {EXEC_PROTOCOLS:?}; SPDY is not served)"
        )));
    }
    let q = parse_query(req.uri().query().unwrap_or_default());
    let t = target(&state, &ns, &name, param(&q, "container"))?;
    let uri = format!("/{sub}/{ns}/{name}/{}?{}", t.container, kubelet_query(&q, sub == "exec"));
    let mut up = Request::builder()
        .method("GET")
        .uri(&uri)
        .header(header::HOST, format!("{}:{}", t.ip, t.port))
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .header(header::SEC_WEBSOCKET_PROTOCOL, offered.join(", "));
    if let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) {
        up = up.header(header::SEC_WEBSOCKET_KEY, key);
    }
    let up = up.body(Body::Full(None)).map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?;
    let resp = kubelet_send(&state, &t, up).await?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(refused(resp).await);
    }
    let mut response = Response::new(Body::Full(None));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for h in [header::UPGRADE, header::CONNECTION, header::SEC_WEBSOCKET_PROTOCOL, header::SEC_WEBSOCKET_ACCEPT] {
        if let Some(v) = resp.headers().get(&h) {
            response.headers_mut().insert(h, v.clone());
        }
    }
    tokio::spawn(async move {
        let (Ok(client), Ok(kubelet)) = tokio::join!(hyper::upgrade::on(req), hyper::upgrade::on(resp)) else {
            return;
        };
        let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(kubelet)).await;
    });
    Ok(response)
}

/// The WebSocket subprotocol of kubectl ≥1.31's port-forward: SPDY/3.1 tunnelled in binary messages.
const WEBSOCKET_PORT_FORWARD_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// `pods/{name}/portforward` with `Upgrade: websocket` (kubectl ≥1.31): the
/// kubelet's `/portForward/…` is upgraded to SPDY first (it reaches the
/// runtime before agreeing); then this end answers kubectl's WebSocket and
/// carries the SPDY bytes, each binary message's payload one piece of the
/// stream in either direction. The SPDY session itself is kubectl's with
/// containerd's streaming server.
pub async fn port_forward(
    state: Arc<State>,
    user: Option<User>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, frame::coding::CloseCode};
    let Upgrade { ns, name, websocket, offered, .. } = upgrade_request(&state, user, &req, &["portforward"])?;
    let offered = offered.iter().any(|p| p == WEBSOCKET_PORT_FORWARD_PROTOCOL);
    if !websocket || !offered {
        return Err(ApiError::bad_request(format!(
            "port-forward needs a WebSocket with subprotocol {WEBSOCKET_PORT_FORWARD_PROTOCOL} (kubectl 1.31 or newer; SPDY is not served)"
        )));
    }
    let pod: Pod = typed::get(&state.registry, resources::by_kind("Pod").expect("served"), Some(&ns), &name)?;
    let (ip, port) = kubelet_of(&state, &pod, &name)?;
    let t = Target { ip, port, container: String::new() };
    let up = Request::builder()
        .method("POST")
        .uri(format!("/portForward/{ns}/{name}"))
        .header(header::HOST, format!("{}:{}", t.ip, t.port))
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "SPDY/3.1")
        .header("X-Stream-Protocol-Version", PORT_FORWARD_PROTOCOL)
        .body(Body::Full(None))
        .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?;
    let resp = kubelet_send(&state, &t, up).await?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(refused(resp).await);
    }
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let accept = websocket_accept(key);
    tokio::spawn(async move {
        let (Ok(client), Ok(kubelet)) = tokio::join!(hyper::upgrade::on(req), hyper::upgrade::on(resp)) else {
            return;
        };
        let mut ws =
            tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(client), Role::Server, None).await;
        let (mut rd, mut wr) = tokio::io::split(TokioIo::new(kubelet));
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            tokio::select! {
                m = ws.next() => match m {
                    Some(Ok(Message::Binary(b))) => {
                        if wr.write_all(&b).await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
                n = rd.read(&mut buf) => match n {
                    Ok(n) if n > 0 => {
                        if ws.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                            break;
                        }
                    }
                    _ => break,
                },
            }
        }
        let _ = wr.shutdown().await;
        let _ = ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() })).await;
    });
    Ok(switching_protocols(WEBSOCKET_PORT_FORWARD_PROTOCOL, &accept))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_pieces() {
        // RFC 6455's example.
        assert_eq!(websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(encode_query(&[("command", "a b/c")]), "command=a%20b%2Fc");
        let q: Vec<(String, String)> = [
            ("command", "sh"),
            ("command", "-c"),
            ("stdin", "true"),
            ("stdout", "true"),
            ("tty", "false"),
            ("container", "c"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(kubelet_query(&q, true), "command=sh&command=-c&input=1&output=1");
        assert_eq!(kubelet_query(&q, false), "input=1&output=1");
    }
}

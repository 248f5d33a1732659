//! The API server's streaming subresources, proxied to the kubelet of the
//! pod's node over HTTPS (cluster CA, an admin client certificate):
//! `pods/log` (streamed as the kubelet writes it) and `pods/exec` over a
//! WebSocket with the `v5.channel.k8s.io`/`v4.channel.k8s.io` framing that
//! current kubectl and client libraries speak. Exec is non-interactive:
//! the command runs to completion in the container (the kubelet's
//! `/exec-sync`, CRI ExecSync), then its stdout, stderr and exit status
//! are sent on channels 1, 2 and 3; stdin and tty are refused with a
//! status message.

use std::pin::Pin;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use crate::errors::ApiError;
use crate::resources;
use crate::server::{Body, State, User, allowed, flag, param, parse_query, read_body};

/// Where a pod's container is served: its kubelet's address and the container's name.
struct Target {
    ip: String,
    port: u16,
    container: String,
}

fn target(state: &State, ns: &str, name: &str, container: Option<&str>) -> Result<Target, ApiError> {
    let reg = &state.registry;
    let pod = reg.get(resources::by_kind("Pod").expect("served"), Some(ns), name)?;
    let names = |fields: &[&str]| -> Vec<String> {
        fields
            .iter()
            .filter_map(|p| pod.pointer(p).and_then(Value::as_array))
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect()
    };
    let container = match container.filter(|c| !c.is_empty()) {
        Some(c) if names(&["/spec/initContainers", "/spec/containers"]).iter().any(|n| n == c) => c.to_string(),
        Some(c) => return Err(ApiError::bad_request(format!("container {c} is not valid for pod {name}"))),
        None => match names(&["/spec/containers"]).as_slice() {
            [one] => one.clone(),
            apps => {
                return Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    apps.join(" ")
                )));
            }
        },
    };
    let node_name = pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or_default();
    if node_name.is_empty() {
        return Err(ApiError::bad_request(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: the pod is not scheduled"
        )));
    }
    let node = reg.get(resources::by_kind("Node").expect("served"), None, node_name)?;
    let ip = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str())
        .unwrap_or_default()
        .to_string();
    let port = node.pointer("/status/daemonEndpoints/kubeletEndpoint/Port").and_then(Value::as_u64).unwrap_or(10250);
    Ok(Target { ip, port: port as u16, container })
}

/// One request to a kubelet; a non-200 answer becomes a 400 carrying the kubelet's message (as upstream).
async fn kubelet_request(state: &State, t: &Target, method: &str, uri: &str) -> Result<Incoming, ApiError> {
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
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, format!("{}:{}", t.ip, t.port))
        .body(Body::Full(None))
        .map_err(|e| fail(&e))?;
    let resp = sender.send_request(req).await.map_err(|e| fail(&e))?;
    if resp.status() != StatusCode::OK {
        let text = read_body(resp.into_body()).await.map(|b| String::from_utf8_lossy(&b).trim().to_string());
        return Err(ApiError::bad_request(text.unwrap_or_default()));
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
    let forwarded: Vec<(&str, &str)> = ["follow", "tailLines", "timestamps", "previous", "sinceSeconds"]
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

/// The channel protocols offered, best first.
const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// `Sec-WebSocket-Accept` for a client's key (RFC 6455).
pub fn websocket_accept(key: &str) -> String {
    use sha1::Digest as _;
    let mut h = sha1::Sha1::new();
    h.update(key.trim().as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// One unmasked binary frame (server to client), `channel` first.
pub fn frame(channel: u8, data: &[u8]) -> Vec<u8> {
    let len = data.len() + 1;
    let mut f = vec![0x82];
    match len {
        0..=125 => f.push(len as u8),
        126..=65535 => {
            f.push(126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            f.push(127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    f.push(channel);
    f.extend_from_slice(data);
    f
}

/// The status sent on the error channel (3) when the command has ended.
pub fn exit_status(cmd: &[String], code: i64) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {}, "status": "Failure",
        "message": format!("command terminated with non-zero exit code: error executing command {cmd:?}, exit code {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

/// `pods/{name}/exec` with `Upgrade: websocket`.
pub async fn exec(state: Arc<State>, user: Option<User>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let user = user.ok_or_else(|| ApiError::new(401, "Unauthorized", "Unauthorized"))?;
    let segs: Vec<String> = req.uri().path().split('/').filter(|s| !s.is_empty()).map(str::to_string).collect();
    let (ns, name) = match segs.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["api", "v1", "namespaces", ns, "pods", name, "exec"] => (ns.to_string(), name.to_string()),
        _ => return Err(ApiError::new(404, "NotFound", "the server could not find the requested resource")),
    };
    if !allowed(&user, "create") {
        return Err(ApiError::forbidden(format!(
            "pods \"{name}\" is forbidden: User \"{}\" cannot create resource \"pods/exec\" in API group \"\" in the namespace \"{ns}\"",
            user.name
        )));
    }
    let q = parse_query(req.uri().query().unwrap_or_default());
    let offered: Vec<String> = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
        .collect();
    let Some(protocol) = PROTOCOLS.iter().find(|p| offered.iter().any(|o| o == *p)) else {
        return Err(ApiError::bad_request(format!(
            "none of the offered WebSocket subprotocols {offered:?} is supported (want one of {PROTOCOLS:?})"
        )));
    };
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let accept = websocket_accept(key);
    let t = target(&state, &ns, &name, param(&q, "container"))?;
    let cmd: Vec<String> = q.iter().filter(|(k, _)| k == "command").map(|(_, v)| v.clone()).collect();
    let interactive = flag(&q, "stdin") || flag(&q, "tty");
    let mut response = Response::new(Body::Full(None));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, header::HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, header::HeaderValue::from_static("Upgrade"));
    h.insert(header::SEC_WEBSOCKET_PROTOCOL, header::HeaderValue::from_static(protocol));
    if let Ok(v) = header::HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else { return };
        let mut io = TokioIo::new(upgraded);
        let mut out = Vec::new();
        let status = if interactive {
            json!({"metadata": {}, "status": "Failure", "reason": "BadRequest",
                   "message": "interactive exec (stdin or tty) is not supported by this kubelet yet; run the command without -i/-t"})
        } else {
            let pairs: Vec<(&str, &str)> = cmd.iter().map(|c| ("command", c.as_str())).collect();
            let uri = format!("/exec-sync/{ns}/{name}/{}?{}", t.container, encode_query(&pairs));
            match kubelet_request(&state, &t, "POST", &uri).await {
                Ok(body) => {
                    let r: Value =
                        read_body(body).await.ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
                    let b64 = |f: &str| {
                        base64::engine::general_purpose::STANDARD
                            .decode(r[f].as_str().unwrap_or_default())
                            .unwrap_or_default()
                    };
                    for (channel, field) in [(1u8, "stdout"), (2, "stderr")] {
                        let data = b64(field);
                        if !data.is_empty() {
                            out.extend(frame(channel, &data));
                        }
                    }
                    exit_status(&cmd, r["exitCode"].as_i64().unwrap_or(-1))
                }
                Err(e) => json!({"metadata": {}, "status": "Failure", "reason": e.reason, "message": e.message}),
            }
        };
        out.extend(frame(3, status.to_string().as_bytes()));
        out.extend([0x88, 0x02, 0x03, 0xe8]);
        if io.write_all(&out).await.is_err() {
            return;
        }
        let _ = io.flush().await;
        // Let the client read and answer the close before the connection goes.
        let mut sink = [0u8; 512];
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            while matches!(io.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    });
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_pieces() {
        // RFC 6455's example.
        assert_eq!(websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(frame(1, b"hi"), [0x82, 3, 1, b'h', b'i']);
        let big = frame(2, &[0u8; 300]);
        assert_eq!(&big[..5], &[0x82, 126, 1, 45, 2]);
        assert_eq!(exit_status(&["true".into()], 0)["status"], "Success");
        let s = exit_status(&["sh".into()], 3);
        assert_eq!(
            (s["reason"].as_str(), s["details"]["causes"][0]["message"].as_str()),
            (Some("NonZeroExitCode"), Some("3"))
        );
        assert_eq!(encode_query(&[("command", "a b/c")]), "command=a%20b%2Fc");
    }
}

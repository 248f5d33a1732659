//! `exec` and `attach` at the kubelet's endpoint: the API server pipes
//! kubectl's WebSocket upgrade here unchanged, so this end terminates the
//! `v5.channel.k8s.io` / `v4.channel.k8s.io` framing (channel 0 stdin, 1
//! stdout, 2 stderr, 3 the final Status, 4 terminal size; v5's 255 closes
//! stdin). The kubelet asks CRI Exec or Attach for a streaming URL and
//! speaks SPDY to containerd's streaming server there (`spdy`), one stream
//! per channel. Frames flow both ways until containerd ends the session
//! (after the Status) or kubectl goes away.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, frame::coding::CloseCode};

use crate::Kubelet;
use crate::cri::v1;
use crate::pod::{LABEL_CONTAINER_NAME, LABEL_POD_NAME, LABEL_POD_NAMESPACE};
use crate::spdy;
use orchestrator_http::{Body, EXEC_PROTOCOLS};

/// What was asked for: exec (with its command) or attach, and which streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The command for exec; `None` for attach.
    pub command: Option<Vec<String>>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl Options {
    /// From the kubelet's query (`command=…&input=1&output=1&error=1&tty=1`, upstream's names).
    pub fn from_query(attach: bool, q: &[(String, String)]) -> Options {
        let on = |k: &str| q.iter().any(|(n, v)| n == k && matches!(v.as_str(), "1" | "true"));
        let tty = on("tty");
        Options {
            command: (!attach).then(|| q.iter().filter(|(n, _)| n == "command").map(|(_, v)| v.clone()).collect()),
            stdin: on("input"),
            stdout: on("output"),
            // With a terminal, stderr is the terminal too (CRI refuses both).
            stderr: on("error") && !tty,
            tty,
        }
    }

    /// The SPDY streams containerd's server waits for, in the order client-go opens them, with their channels.
    fn streams(&self) -> Vec<(&'static str, u8)> {
        let mut s = vec![("error", 3)];
        for (on, name, channel) in
            [(self.stdin, "stdin", 0), (self.stdout, "stdout", 1), (self.stderr, "stderr", 2), (self.tty, "resize", 4)]
        {
            if on {
                s.push((name, channel));
            }
        }
        s
    }
}

fn text(code: StatusCode, s: String) -> Response<Body> {
    let mut r = Response::new(Body::Full(Some(Bytes::from(s))));
    *r.status_mut() = code;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// Answers the WebSocket upgrade for `/exec/{ns}/{pod}/{container}` or `/attach/…`.
pub async fn serve(
    k: Arc<Kubelet>,
    ns: &str,
    pod: &str,
    container: &str,
    opts: Options,
    req: Request<Incoming>,
) -> Response<Body> {
    if !orchestrator_http::is_websocket(req.headers()) {
        return text(StatusCode::BAD_REQUEST, "Upgrade request required (WebSocket)\n".into());
    }
    let offered = orchestrator_http::offered_subprotocols(req.headers());
    let Some(protocol) = EXEC_PROTOCOLS.iter().find(|p| offered.iter().any(|o| o == *p)) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("none of the offered subprotocols {offered:?} is supported (want one of {EXEC_PROTOCOLS:?})\n"),
        );
    };
    if opts.command.as_ref().is_some_and(Vec::is_empty) {
        return text(StatusCode::BAD_REQUEST, "you must specify at least 1 command\n".into());
    }
    if !(opts.stdin || opts.stdout || opts.stderr) {
        return text(StatusCode::BAD_REQUEST, "you must specify at least 1 of stdin, stdout, stderr\n".into());
    }
    let Some(id) = running_container(&k, ns, pod, container).await else {
        return text(StatusCode::NOT_FOUND, format!("container \"{container}\" in pod \"{pod}\" is not running\n"));
    };
    let mut rt = k.cri.runtime.clone();
    let url = match &opts.command {
        Some(cmd) => rt
            .exec(v1::ExecRequest {
                container_id: id,
                cmd: cmd.clone(),
                tty: opts.tty,
                stdin: opts.stdin,
                stdout: opts.stdout,
                stderr: opts.stderr,
            })
            .await
            .map(|r| r.into_inner().url),
        None => rt
            .attach(v1::AttachRequest {
                container_id: id,
                stdin: opts.stdin,
                tty: opts.tty,
                stdout: opts.stdout,
                stderr: opts.stderr,
            })
            .await
            .map(|r| r.into_inner().url),
    };
    let url = match url {
        Ok(u) => u,
        Err(s) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{}\n", s.message())),
    };
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let accept = orchestrator_http::websocket_accept(key);
    let v5 = *protocol == EXEC_PROTOCOLS[0];
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else { return };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        bridge(ws, &url, &opts, v5).await;
    });
    orchestrator_http::switching_protocols(protocol, &accept)
}

fn fail(what: &str, url: &str, err: impl std::fmt::Display) -> String {
    format!("{what} {url}: {err}")
}

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

fn message(channel: u8, data: &[u8]) -> Message {
    let mut m = Vec::with_capacity(data.len() + 1);
    m.push(channel);
    m.extend_from_slice(data);
    Message::Binary(m.into())
}

/// Runs one session; a failure to reach the runtime's stream becomes a Status on channel 3.
async fn bridge(mut ws: Ws, url: &str, opts: &Options, v5: bool) {
    if let Err(e) = session(&mut ws, url, opts, v5).await {
        tracing::debug!(url, "stream: {e}");
        let status = serde_json::json!({"metadata": {}, "status": "Failure", "reason": "InternalError",
            "message": format!("error streaming from the container runtime: {e}")});
        let _ = ws.send(message(3, status.to_string().as_bytes())).await;
    }
    let _ = ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() })).await;
    // Let kubectl read the close and answer it before the connection goes.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async { while ws.next().await.is_some() {} }).await;
}

async fn session(ws: &mut Ws, url: &str, opts: &Options, v5: bool) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("streaming URL {url:?}: {e}"))?;
    let host = uri.host().unwrap_or("127.0.0.1").trim_matches(['[', ']']).to_string();
    let port = uri.port_u16().unwrap_or(80);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|x| fail("connect", url, x))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(|x| fail("handshake", url, x))?;
    tokio::spawn(conn.with_upgrades());
    let req = Request::post(uri.path())
        .header(header::HOST, uri.authority().map(|a| a.as_str()).unwrap_or_default())
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "SPDY/3.1")
        .header("X-Stream-Protocol-Version", "v4.channel.k8s.io")
        .body(Body::Full(None))
        .map_err(|x| fail("request", url, x))?;
    let resp = sender.send_request(req).await.map_err(|x| fail("POST", url, x))?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = resp.status();
        let body = orchestrator_http::read_body(resp.into_body()).await.unwrap_or_default();
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body).trim()));
    }
    let io = TokioIo::new(hyper::upgrade::on(resp).await.map_err(|x| fail("upgrade", url, x))?);
    let (mut rd, mut wr) = tokio::io::split(io);

    // Open the streams; remember which channel each carries.
    let mut enc = spdy::HeaderEncoder::default();
    let mut channels: HashMap<u32, u8> = HashMap::new();
    let mut open = Vec::new();
    for (i, (name, channel)) in opts.streams().into_iter().enumerate() {
        let id = 1 + 2 * i as u32;
        open.extend(spdy::syn_stream(&mut enc, id, &[("streamtype", name)], false));
        channels.insert(id, channel);
    }
    let stream_of = |channel: u8| channels.iter().find(|(_, c)| **c == channel).map(|(id, _)| *id);
    let (stdin, resize) = (stream_of(0), stream_of(4));
    wr.write_all(&open).await.map_err(|x| fail("write", url, x))?;

    let (tx, mut rx) = mpsc::channel::<spdy::Frame>(64);
    let reader = tokio::spawn(async move {
        while let Ok(Some(f)) = spdy::read_frame(&mut rd).await {
            if tx.send(f).await.is_err() {
                return;
            }
        }
    });
    let result = loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Binary(b))) => {
                    let frame = match (b.first(), stdin, resize) {
                        (Some(0), Some(id), _) if b.len() > 1 => spdy::data(id, &b[1..], false),
                        (Some(4), _, Some(id)) => spdy::data(id, &b[1..], false),
                        // v5: the client closed a channel; 0 is stdin.
                        (Some(255), Some(id), _) if v5 && b.get(1) == Some(&0) => spdy::data(id, &[], true),
                        _ => continue,
                    };
                    if let Err(x) = wr.write_all(&frame).await {
                        break Err(fail("write", url, x));
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break Ok(()),
                Some(Ok(_)) => {}
            },
            f = rx.recv() => match f {
                Some(spdy::Frame::Data { stream, data, .. }) if !data.is_empty() => {
                    if let Some(channel) = channels.get(&stream)
                        && ws.send(message(*channel, &data)).await.is_err()
                    {
                        break Ok(());
                    }
                }
                Some(spdy::Frame::Ping(id)) => {
                    if let Err(x) = wr.write_all(&spdy::ping(id)).await {
                        break Err(fail("write", url, x));
                    }
                }
                // containerd closes the session once the Status is sent (or reset it).
                Some(spdy::Frame::GoAway) | None => break Ok(()),
                Some(_) => {}
            },
        }
    };
    reader.abort();
    let _ = wr.shutdown().await;
    result
}

/// The id of the newest running attempt of a pod's container.
async fn running_container(k: &Kubelet, ns: &str, pod: &str, container: &str) -> Option<String> {
    let labels = HashMap::from([
        (LABEL_POD_NAMESPACE.to_string(), ns.to_string()),
        (LABEL_POD_NAME.to_string(), pod.to_string()),
        (LABEL_CONTAINER_NAME.to_string(), container.to_string()),
    ]);
    let list = k
        .cri
        .runtime
        .clone()
        .list_containers(v1::ListContainersRequest {
            filter: Some(v1::ContainerFilter {
                label_selector: labels,
                state: Some(v1::ContainerStateValue { state: v1::ContainerState::ContainerRunning as i32 }),
                ..Default::default()
            }),
        })
        .await;
    list.ok().and_then(|l| l.into_inner().containers.into_iter().max_by_key(|c| c.created_at)).map(|c| c.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn options_and_streams() {
        let exec = Options::from_query(
            false,
            &q(&[("command", "sh"), ("command", "-c"), ("input", "1"), ("output", "1"), ("error", "1")]),
        );
        assert_eq!(exec.command.as_deref(), Some(&["sh".to_string(), "-c".to_string()][..]));
        assert_eq!(exec.streams(), [("error", 3), ("stdin", 0), ("stdout", 1), ("stderr", 2)]);
        // A terminal: no stderr stream (CRI refuses tty with stderr), a resize stream.
        let tty = Options::from_query(true, &q(&[("input", "1"), ("output", "1"), ("error", "1"), ("tty", "1")]));
        assert_eq!(tty.command, None);
        assert!(!tty.stderr);
        assert_eq!(tty.streams(), [("error", 3), ("stdin", 0), ("stdout", 1), ("resize", 4)]);
        let out = Options::from_query(false, &q(&[("command", "ls"), ("output", "true")]));
        assert_eq!(out.streams(), [("error", 3), ("stdout", 1)]);
    }
}

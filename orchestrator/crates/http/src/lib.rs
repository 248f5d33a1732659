//! HTTP plumbing shared by the API server and the kubelet, owned by
//! neither: the response body, request bodies and queries, the WebSocket
//! handshake, and the names of the streaming protocols both ends speak.
//! `pki` holds the cluster's certificates and kubeconfigs, `reload` the
//! serving certificates renewed while serving.

pub mod pki;
pub mod reload;

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::Bytes;
use http::{Response, StatusCode, header};
use hyper::body::Incoming;
use orchestrator_apimachinery::errors::ApiError;
use tokio::sync::mpsc;

/// The channel protocols of exec and attach the kubelet speaks, best first.
pub const EXEC_PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// The SPDY subprotocol of the kubelet's port-forward upgrade.
pub const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";

/// Request bodies above this size are refused (as upstream's 3 MiB).
pub const MAX_BODY: usize = orchestrator_apimachinery::decode::MAX_REQUEST_BYTES;

/// The response body: all at once, or a stream of chunks (watches).
pub enum Body {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        match &mut *self {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(http_body::Frame::data(b)))),
            Body::Stream(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(http_body::Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Body::Full(b) => http_body::SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Stream(_) => http_body::SizeHint::default(),
        }
    }
}

/// Reads a request body of at most [`MAX_BODY`] bytes, growing with what
/// arrives (not with what is announced); 413 once it passes the limit.
/// A body announced as larger is still read, as upstream does: clients
/// such as kubectl report a closed connection, not the 413, when the
/// answer comes before they have sent their body. What passes the limit
/// is discarded (memory stays at the limit), and after another
/// [`MAX_BODY`] bytes the 413 goes out whatever the client is still sending.
pub async fn read_body(mut body: Incoming) -> Result<Bytes, ApiError> {
    use hyper::body::Body as _;
    let mut buf = Vec::new();
    let mut discarded = 0usize;
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        if discarded > 0 || buf.len() + data.len() > MAX_BODY {
            discarded += data.len();
            if discarded > MAX_BODY {
                break;
            }
        } else {
            buf.extend_from_slice(&data);
        }
    }
    if discarded > 0 {
        return Err(orchestrator_apimachinery::decode::body_too_large());
    }
    Ok(Bytes::from(buf))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

pub fn param<'a>(q: &'a [(String, String)], k: &str) -> Option<&'a str> {
    q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

pub fn flag(q: &[(String, String)], k: &str) -> bool {
    matches!(param(q, k), Some("1" | "true" | "True"))
}

/// `Sec-WebSocket-Accept` for a client's key (RFC 6455).
pub fn websocket_accept(key: &str) -> String {
    use sha1::Digest as _;
    let mut h = sha1::Sha1::new();
    h.update(key.trim().as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Whether a request asks for `Upgrade: websocket`.
pub fn is_websocket(headers: &header::HeaderMap) -> bool {
    headers.get(header::UPGRADE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// The WebSocket subprotocols a request offers, in its order.
pub fn offered_subprotocols(headers: &header::HeaderMap) -> Vec<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
        .collect()
}

/// The 101 answer that accepts a WebSocket with `protocol`; `accept` is
/// [`websocket_accept`] of the client's key.
pub fn switching_protocols(protocol: &'static str, accept: &str) -> Response<Body> {
    let mut response = Response::new(Body::Full(None));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, header::HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, header::HeaderValue::from_static("Upgrade"));
    h.insert(header::SEC_WEBSOCKET_PROTOCOL, header::HeaderValue::from_static(protocol));
    if let Ok(v) = header::HeaderValue::from_str(accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    response
}

/// A server-certificate verifier that accepts any certificate (signatures
/// are still checked). The API server towards kubelets: their serving
/// certificates are not verified (as upstream without
/// `--kubelet-certificate-authority`), a worker's kubelet holds no CA key
/// and serves a self-signed certificate, and the kubelet verifies *us*. A
/// joining kubelet reading `cluster-info`: the CA found there is checked
/// against the operator's pin before anything else is trusted.
#[derive(Debug)]
pub struct AnyServerCert(pub std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

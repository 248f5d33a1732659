//! Every control plane's endpoint in one client (issue 19 item 5): a
//! request goes to the endpoint in use; when it is not reached (refused,
//! reset before the request went out, connect or TLS timed out) the next
//! is tried at once, and the client stays on the one that answered. A
//! request that went out and got no answer (reset, timed out), or an
//! answer `503`, is tried on the next endpoint only when repeating it is
//! harmless: every method but POST (the kubelet's PUTs carry the
//! resourceVersion they read, its DELETEs a uid precondition; a POST
//! might have created its object already). A POST that failed so moves
//! the client on for the next request and returns its error.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Method, StatusCode};
use orchestrator_apimachinery::errors::ApiError;

/// Connecting and the TLS handshake, each: a powered-off host gives no
/// refusal, only silence.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// From the request sent to the response's head (a watch's head comes at once).
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// A watch with nothing for this long is taken for dead and resumed
/// elsewhere: the API server sends a bookmark every 30 s.
pub(crate) const WATCH_IDLE: Duration = Duration::from_secs(75);

/// One API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    fn parse(server: &str) -> Result<Endpoint, String> {
        let authority = server.strip_prefix("https://").ok_or_else(|| format!("{server:?} is not https://"))?;
        let authority = authority.trim_end_matches('/');
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (h, after) = v6.split_once(']').ok_or_else(|| format!("{server:?}: no ']' after the address"))?;
                (h, after.strip_prefix(':'))
            }
            None => match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            },
        };
        let port = match port {
            Some(p) => p.parse().map_err(|_| format!("{server:?}: bad port {p:?}"))?,
            None => 443,
        };
        if host.is_empty() {
            return Err(format!("{server:?} has no host"));
        }
        Ok(Endpoint { host: host.to_string(), port })
    }

    /// `host:port` (`[v6]:port`), the Host header.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.authority())
    }
}

/// Why one endpoint did not answer.
pub(crate) enum Failure {
    /// The request did not leave: harmless to send elsewhere.
    Unreached(String),
    /// It left and no answer came: it may have been carried out.
    Lost(String),
}

/// An answer whose status says whether the server can serve.
pub(crate) trait Answer {
    fn unavailable(&self) -> bool;
}

impl<B> Answer for http::Response<B> {
    fn unavailable(&self) -> bool {
        self.status() == StatusCode::SERVICE_UNAVAILABLE
    }
}

/// The endpoints and the one in use, shared by a client's clones.
#[derive(Clone)]
pub(crate) struct Endpoints {
    list: Arc<[Endpoint]>,
    in_use: Arc<AtomicUsize>,
}

impl Endpoints {
    /// `https://host:port`, or several joined by commas.
    pub fn parse(servers: &str) -> Result<Endpoints, String> {
        let parts: Vec<&str> = servers.split(',').map(str::trim).collect();
        let many = parts.len() > 1;
        let list = parts
            .iter()
            .enumerate()
            .map(|(i, s)| Endpoint::parse(s).map_err(|e| if many { format!("server {}: {e}", i + 1) } else { e }))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Endpoints { list: list.into(), in_use: Arc::new(AtomicUsize::new(0)) })
    }

    pub fn current(&self) -> &Endpoint {
        &self.list[self.in_use.load(Ordering::Relaxed) % self.list.len()]
    }

    /// From now on `to` (unless another request moved the client meanwhile).
    fn move_to(&self, from: usize, to: usize) {
        if from != to && self.in_use.compare_exchange(from, to, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            tracing::warn!("API server {} does not answer: using {}", self.list[from].url(), self.list[to].url());
        }
    }

    /// `attempt` on the endpoint in use, then on the others as the module
    /// says; all failing, a 503 naming each endpoint's failure.
    pub async fn send<R: Answer, Fut: Future<Output = Result<R, Failure>>>(
        &self,
        method: &Method,
        mut attempt: impl FnMut(Endpoint) -> Fut,
    ) -> Result<R, ApiError> {
        let n = self.list.len();
        let start = self.in_use.load(Ordering::Relaxed) % n;
        let repeatable = *method != Method::POST;
        let mut failures = Vec::new();
        for i in 0..n {
            let at = (start + i) % n;
            let ep = &self.list[at];
            let last = i + 1 == n;
            match attempt(ep.clone()).await {
                Ok(answer) if answer.unavailable() && !last => {
                    if !repeatable {
                        self.move_to(start, (at + 1) % n);
                        return Ok(answer);
                    }
                    failures.push(format!("{}: 503 Service Unavailable", ep.url()));
                }
                Ok(answer) => {
                    self.move_to(start, at);
                    return Ok(answer);
                }
                Err(Failure::Unreached(e)) => failures.push(e),
                Err(Failure::Lost(e)) if repeatable => failures.push(e),
                Err(Failure::Lost(e)) => {
                    self.move_to(start, (at + 1) % n);
                    failures.push(e);
                    break;
                }
            }
        }
        Err(ApiError::new(503, "ServiceUnavailable", failures.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Status(u16);
    impl Answer for Status {
        fn unavailable(&self) -> bool {
            self.0 == 503
        }
    }

    /// Sends with each endpoint (by port) answering as `script` says; returns the result and the ports tried.
    fn run(
        eps: &Endpoints,
        method: Method,
        script: impl Fn(u16) -> Result<u16, Failure>,
    ) -> (Result<u16, ApiError>, Vec<u16>) {
        let tried = Mutex::new(Vec::new());
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let r = rt.block_on(eps.send(&method, |ep| {
            tried.lock().unwrap().push(ep.port);
            let r = script(ep.port).map(Status);
            async move { r }
        }));
        (r.map(|s| s.0), tried.into_inner().unwrap())
    }

    #[test]
    fn endpoints_parse_with_the_faulty_one_named() {
        let e = Endpoints::parse("https://10.0.0.1:6443,https://[fd00::2]:6443/, https://cp3").unwrap();
        let urls: Vec<String> = e.list.iter().map(Endpoint::url).collect();
        assert_eq!(urls, ["https://10.0.0.1:6443", "https://[fd00::2]:6443", "https://cp3:443"]);
        assert_eq!(e.current().url(), "https://10.0.0.1:6443");
        assert_eq!(
            Endpoints::parse("https://a:6443,http://b:6443").err().unwrap(),
            "server 2: \"http://b:6443\" is not https://"
        );
        assert_eq!(Endpoints::parse("https://a:x").err().unwrap(), "\"https://a:x\": bad port \"x\"");
        assert!(Endpoints::parse("https://a:6443,").is_err());
    }

    #[test]
    fn an_unreached_endpoint_is_left_for_the_next_and_the_client_stays_there() {
        let eps = Endpoints::parse("https://a:1,https://b:2,https://c:3").unwrap();
        let (r, tried) =
            run(&eps, Method::POST, |p| if p == 1 { Err(Failure::Unreached("refused".into())) } else { Ok(201) });
        assert_eq!((r.unwrap(), tried), (201, vec![1, 2]));
        assert_eq!(eps.current().port, 2);
        // The next request starts there.
        let (_, tried) = run(&eps, Method::GET, |_| Ok(200));
        assert_eq!(tried, [2]);
    }

    #[test]
    fn a_lost_or_refused_post_is_not_repeated_but_a_get_is() {
        let eps = Endpoints::parse("https://a:1,https://b:2").unwrap();
        let lost = |p: u16| if p == 1 { Err(Failure::Lost("reset".into())) } else { Ok(200) };
        let (r, tried) = run(&eps, Method::POST, lost);
        let e = r.unwrap_err();
        assert_eq!((e.code, e.message.as_str(), tried), (503, "reset", vec![1]));
        assert_eq!(eps.current().port, 2, "the next request goes to the other");
        let eps = Endpoints::parse("https://a:1,https://b:2").unwrap();
        let (r, tried) = run(&eps, Method::GET, lost);
        assert_eq!((r.unwrap(), tried), (200, vec![1, 2]));
        // 503: a GET moves on; a POST returns the answer and the client moves.
        let eps = Endpoints::parse("https://a:1,https://b:2").unwrap();
        let unavailable = |p: u16| Ok(if p == 1 { 503 } else { 200 });
        let (r, tried) = run(&eps, Method::GET, unavailable);
        assert_eq!((r.unwrap(), tried), (200, vec![1, 2]));
        let eps = Endpoints::parse("https://a:1,https://b:2").unwrap();
        let (r, tried) = run(&eps, Method::POST, unavailable);
        assert_eq!((r.unwrap(), tried), (503, vec![1]));
        assert_eq!(eps.current().port, 2);
    }

    #[test]
    fn all_failing_is_one_503_naming_each_and_the_last_503_is_the_answer() {
        let eps = Endpoints::parse("https://a:1,https://b:2").unwrap();
        let (r, _) = run(&eps, Method::GET, |p| Err(Failure::Unreached(format!("{p} refused"))));
        let e = r.unwrap_err();
        assert_eq!((e.code, e.reason, e.message.as_str()), (503, "ServiceUnavailable", "1 refused; 2 refused"));
        let (r, tried) = run(&eps, Method::GET, |_| Ok(503));
        assert_eq!((r.unwrap(), tried), (503, vec![1, 2]));
        // One endpoint: tried once, its own error.
        let one = Endpoints::parse("https://a:1").unwrap();
        let (r, tried) = run(&one, Method::GET, |_| Err(Failure::Unreached("refused".into())));
        assert_eq!((r.unwrap_err().message, tried), ("refused".to_string(), vec![1]));
    }
}

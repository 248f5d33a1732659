//! A remote watch that outlives its API server: it keeps the last
//! resourceVersion it saw (events and bookmarks) and, when the stream ends
//! (the server died, closed the watch at its time-out, or went silent past
//! [`WATCH_IDLE`]), watches again from there through [`Remote`], which
//! picks an endpoint that answers. Nothing is listed again and no event is
//! missed; only a compacted revision or an error event ends the watch
//! (then its consumer lists and watches anew).

use std::pin::Pin;
use std::time::Duration;

use http::{Method, StatusCode};
use hyper::body::Incoming;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::WatchEvent;
use orchestrator_apimachinery::registry::resource_version_of;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::Remote;
use crate::failover::WATCH_IDLE;

/// Between attempts to watch again while no endpoint answers: from this, doubling.
const FIRST_PAUSE: Duration = Duration::from_millis(500);
const MAX_PAUSE: Duration = Duration::from_secs(8);

pub(crate) struct Resumed {
    remote: Remote,
    path: String,
    /// The field selector, query-encoded.
    selector: String,
    /// The last resourceVersion seen.
    rv: String,
}

/// How one stream ended.
enum End {
    /// The consumer is gone or the server sent an error: the watch is over.
    Over,
    /// The connection ended: watch again from the last revision.
    Dropped(String),
}

impl Resumed {
    pub fn new(remote: Remote, path: String, selector: String, rv: String) -> Resumed {
        Resumed { remote, path, selector, rv }
    }

    fn uri(&self) -> String {
        format!(
            "{}?watch=1&allowWatchBookmarks=true&resourceVersion={}&fieldSelector={}",
            self.path, self.rv, self.selector
        )
    }

    /// The watch from the last revision: `None` when the server refused it.
    pub async fn open(&self) -> Option<Incoming> {
        let resp = self.remote.send(Method::GET, &self.uri(), None).await.ok()?;
        (resp.status() == StatusCode::OK).then(|| resp.into_body())
    }

    /// Forwards the objects of `body`, then of each resumed watch, to `tx`.
    pub async fn follow(mut self, body: Incoming, tx: mpsc::Sender<Value>) {
        let mut body = Some(body);
        let mut pause = Duration::ZERO;
        loop {
            let stream = match body.take() {
                Some(b) => b,
                None => {
                    tokio::select! {
                        biased;
                        () = tx.closed() => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                    match self.remote.send(Method::GET, &self.uri(), None).await {
                        Ok(resp) if resp.status() == StatusCode::OK => {
                            pause = Duration::ZERO;
                            resp.into_body()
                        }
                        Ok(resp) if resp.status().is_server_error() => {
                            tracing::warn!("watching {} again from {}: {}", self.path, self.rv, resp.status());
                            pause = (pause * 2).clamp(FIRST_PAUSE, MAX_PAUSE);
                            continue;
                        }
                        // Compacted (410) or refused: the consumer starts over.
                        Ok(_) => return,
                        Err(e) => {
                            tracing::warn!("watching {} again from {}: {}", self.path, self.rv, e.message);
                            pause = (pause * 2).clamp(FIRST_PAUSE, MAX_PAUSE);
                            continue;
                        }
                    }
                }
            };
            match self.stream(stream, &tx).await {
                End::Over => return,
                End::Dropped(why) => tracing::info!("watch of {} ended at {} ({why}): resuming", self.path, self.rv),
            }
        }
    }

    async fn stream(&mut self, mut body: Incoming, tx: &mpsc::Sender<Value>) -> End {
        use hyper::body::Body as _;
        let mut buf = Vec::new();
        loop {
            let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx));
            let frame = tokio::select! {
                f = tokio::time::timeout(WATCH_IDLE, frame) => f,
                // The consumer dropped the watch: close it now, not at the next event.
                () = tx.closed() => return End::Over,
            };
            let frame = match frame {
                Err(_) => return End::Dropped(format!("nothing for {WATCH_IDLE:?}")),
                Ok(None) => return End::Dropped("closed".into()),
                Ok(Some(Err(e))) => return End::Dropped(e.to_string()),
                Ok(Some(Ok(f))) => f,
            };
            let Ok(data) = frame.into_data() else { continue };
            buf.extend_from_slice(&data);
            while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                // The object stays JSON: the watch is of any kind.
                let Ok(ev) = serde_json::from_slice::<WatchEvent<Value>>(&line) else { continue };
                let object = match ev {
                    WatchEvent::ErrorStatus(_) | WatchEvent::ErrorOther(_) => return End::Over,
                    WatchEvent::Bookmark { resource_version, .. } => {
                        self.rv = resource_version;
                        continue;
                    }
                    WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => o,
                };
                if let Some(rv) = resource_version_of(&object) {
                    self.rv = rv.to_string();
                }
                if tx.send(object).await.is_err() {
                    return End::Over;
                }
            }
        }
    }
}

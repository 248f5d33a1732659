//! The deadlines of a keep-alive connection between requests, as Go's
//! `net/http` server keeps them for kube-apiserver:
//! - a request's head must arrive within [`HEADER_TIMEOUT`] of its first
//!   byte, and the first request's within [`HEADER_TIMEOUT`] of the
//!   handshake (`ReadHeaderTimeout`, 32 s);
//! - a connection idle after a response (no byte of the next request yet)
//!   is closed after [`IDLE_TIMEOUT`] (`IdleTimeout`, 90 s, as long as
//!   client-go's and Go's default transport keep idle connections).
//!
//! hyper's own `header_read_timeout` runs whenever it waits for a head, so
//! it closed idle keep-alive connections after 32 s (as an error of the
//! connection): a client that reused one after half a minute found it
//! cut. It is off; [`Timed`] wraps the TLS stream instead and,
//! when a deadline passes between requests, ends the read side (EOF), on
//! which hyper closes the connection cleanly (TLS close_notify). While a
//! request is open (its response, a watch's stream, not yet done) or after
//! an upgrade (exec, attach, port-forward) no deadline applies here:
//! bodies have their own (`BODY_TIMEOUT`, in the crate root).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// kube-apiserver's `ReadHeaderTimeout`.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(32);
/// kube-apiserver's `IdleTimeout` (Go's default transport's `IdleConnTimeout`).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// What the service tells the stream about the requests of one connection.
pub struct Activity {
    state: Mutex<State>,
    header: Duration,
    idle: Duration,
}

struct State {
    /// Requests whose response has not finished.
    open: usize,
    /// Switched protocols: the stream is not HTTP any more.
    upgraded: bool,
    /// When the wait for the next head began (the last response's end,
    /// or the handshake).
    since: Instant,
    /// The first byte of the next head has arrived (or, for the first
    /// request, the head is due from the handshake).
    head_started: bool,
    /// The reader to wake when the last open request finishes, so that it
    /// arms the idle deadline.
    reader: Option<Waker>,
}

impl Activity {
    pub fn new(header: Duration, idle: Duration) -> Arc<Activity> {
        let state = State { open: 0, upgraded: false, since: Instant::now(), head_started: true, reader: None };
        Arc::new(Activity { state: Mutex::new(state), header, idle })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request's head has been read; the returned guard, dropped with
    /// the response's body, ends it.
    pub fn request(self: &Arc<Self>) -> Open {
        self.lock().open += 1;
        Open(self.clone())
    }

    /// The connection switched protocols (101).
    pub fn upgraded(&self) {
        self.lock().upgraded = true;
    }

    /// When the read side is due to end, if it is waiting between requests.
    fn deadline(&self) -> Option<Instant> {
        let s = self.lock();
        if s.open > 0 || s.upgraded {
            return None;
        }
        Some(s.since + if s.head_started { self.header } else { self.idle })
    }
}

/// One open request; its drop ends it.
pub struct Open(Arc<Activity>);

impl Drop for Open {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.open -= 1;
        if s.open == 0 {
            s.since = Instant::now();
            s.head_started = false;
            if let Some(w) = s.reader.take() {
                w.wake();
            }
        }
    }
}

/// A response body that ends its request when it is dropped (after its
/// last byte is written, or with the connection).
pub struct Tracked<B> {
    pub body: B,
    /// Ends the request when dropped.
    pub _open: Open,
}

impl<B: http_body::Body<Data = Bytes> + Unpin> http_body::Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The connection's stream with the deadlines of [`Activity`] on its read side.
pub struct Timed<T> {
    io: T,
    activity: Arc<Activity>,
    sleep: Pin<Box<Sleep>>,
}

impl<T> Timed<T> {
    pub fn new(io: T, activity: Arc<Activity>) -> Timed<T> {
        let sleep = Box::pin(tokio::time::sleep(activity.header));
        Timed { io, activity, sleep }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Timed<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let mut s = this.activity.lock();
                    if s.open == 0 && !s.head_started {
                        s.head_started = true;
                        s.since = Instant::now();
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                this.activity.lock().reader = Some(cx.waker().clone());
                let Some(deadline) = this.activity.deadline() else { return Poll::Pending };
                if this.sleep.deadline() != deadline {
                    this.sleep.as_mut().reset(deadline);
                }
                match this.sleep.as_mut().poll(cx) {
                    // Nothing filled: end of stream, which hyper takes as
                    // the client's close and answers with its own.
                    Poll::Ready(()) => Poll::Ready(Ok(())),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Timed<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// With the clock paused: the first head is due from the start; after
    /// a response the idle deadline applies, and from a head's first byte
    /// the header deadline; an open request or an upgrade has none.
    #[tokio::test(start_paused = true)]
    async fn deadlines_between_requests_only() {
        let header = Duration::from_secs(32);
        let idle = Duration::from_secs(90);
        // No first request: read side ends at the header deadline.
        let (client, server) = tokio::io::duplex(64);
        let activity = Activity::new(header, idle);
        let mut timed = Timed::new(server, activity.clone());
        let t = Instant::now();
        assert_eq!(timed.read(&mut [0; 8]).await.unwrap(), 0);
        assert_eq!(t.elapsed(), header);
        drop(client);

        // A request, its response done: idle for 90 s, not 32.
        let (mut client, server) = tokio::io::duplex(64);
        let activity = Activity::new(header, idle);
        let mut timed = Timed::new(server, activity.clone());
        client.write_all(b"GET").await.unwrap();
        assert_eq!(timed.read(&mut [0; 8]).await.unwrap(), 3);
        drop(activity.request());
        let t = Instant::now();
        assert_eq!(timed.read(&mut [0; 8]).await.unwrap(), 0);
        assert_eq!(t.elapsed(), idle);

        // A head's first byte after 60 s idle: the header deadline from it.
        let (mut client, server) = tokio::io::duplex(64);
        let activity = Activity::new(header, idle);
        let mut timed = Timed::new(server, activity.clone());
        drop(activity.request());
        tokio::time::sleep(Duration::from_secs(60)).await;
        client.write_all(b"G").await.unwrap();
        assert_eq!(timed.read(&mut [0; 8]).await.unwrap(), 1);
        let t = Instant::now();
        assert_eq!(timed.read(&mut [0; 8]).await.unwrap(), 0);
        assert_eq!(t.elapsed(), header);

        // An open request (a watch) and an upgraded stream wait as long as it takes.
        for upgrade in [false, true] {
            let (mut client, server) = tokio::io::duplex(64);
            let activity = Activity::new(header, idle);
            let mut timed = Timed::new(server, activity.clone());
            let open = activity.request();
            if upgrade {
                activity.upgraded();
                drop(open);
            }
            let reader = tokio::spawn(async move { timed.read(&mut [0; 8]).await.unwrap() });
            tokio::time::sleep(Duration::from_secs(3600)).await;
            client.write_all(b"x").await.unwrap();
            assert_eq!(reader.await.unwrap(), 1);
        }
    }
}

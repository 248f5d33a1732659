//! The orchestrator's [`Store`] over etcd's v3 API, for a highly available
//! control plane: etcd's revision is the revision (`resourceVersion`),
//! compare-and-swap writes are transactions on a key's `mod_revision`,
//! watches start at a revision on the server (no gap, in order) and resume
//! on another member when theirs dies, lists read at a revision with
//! etcd's own paging, and compaction is etcd's.
//!
//! The trait is synchronous and the API server calls it from its async
//! handlers, so the gRPC client runs on a runtime of its own, on its own
//! thread: a call sends its future there and waits for the answer, inside
//! `block_in_place` when the caller is a worker of a multi-thread runtime,
//! so the API server's other tasks move to another worker meanwhile.
//! Every request has a deadline; a store that cannot answer (no quorum, no
//! member reachable) is [`StoreError::Unavailable`], which the API answers
//! with 503.

pub mod admin;
pub mod local;
pub mod restore;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tonic::Code;

use orchestrator_store::{Event, EventKind, KeyValue, ListPage, MAX_VALUE_BYTES, Store, StoreError, Watch};

/// Client TLS to etcd: the CA that signed the members' serving
/// certificates, and this client's certificate and key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How to reach etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `host:port` of each member (the client URLs).
    pub endpoints: Vec<String>,
    pub tls: Option<ClientTls>,
    /// The deadline of one request; past it the store is `Unavailable`.
    pub timeout: Duration,
}

/// A request's deadline by default: over etcd's election timeout (1 s) and
/// a leader change, under kubectl's patience.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--store {0:?}: expected etcd://HOST:PORT[,HOST:PORT...]")]
    NotEtcd(String),
    #[error("--store {url:?}: endpoint {endpoint:?} is not HOST:PORT")]
    Endpoint { url: String, endpoint: String },
}

impl EtcdConfig {
    /// Parses `etcd://HOST:PORT[,HOST:PORT...]` (the `--store` option).
    pub fn from_url(url: &str, tls: Option<ClientTls>) -> Result<EtcdConfig, ConfigError> {
        let list = url.strip_prefix("etcd://").ok_or_else(|| ConfigError::NotEtcd(url.to_string()))?;
        let endpoints: Vec<String> = list.split(',').map(str::trim).map(String::from).collect();
        for e in &endpoints {
            let port = e.rsplit_once(':').map(|(host, port)| (host, port.parse::<u16>()));
            if !matches!(port, Some((host, Ok(_))) if !host.is_empty()) {
                return Err(ConfigError::Endpoint { url: url.to_string(), endpoint: e.clone() });
            }
        }
        Ok(EtcdConfig { endpoints, tls, timeout: DEFAULT_TIMEOUT })
    }

    fn urls(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        self.endpoints.iter().map(|e| format!("{scheme}://{e}")).collect()
    }
}

/// The runtime the gRPC client runs on, on a thread of its own; it stops
/// when this is dropped (the runtime is dropped on its own thread, never
/// inside the caller's).
struct Bridge {
    handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Bridge {
    fn start() -> std::io::Result<Bridge> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("etcd-client")
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new().name("etcd-client".into()).spawn(move || {
            let _ = rt.block_on(stopped);
        })?;
        Ok(Bridge { handle, _stop: stop })
    }

    /// Runs the request `make` builds on the client's runtime, through
    /// the endpoint [`Endpoints::pick`] chooses, and waits for it, for at
    /// most `timeout`. A request that never reached a member (its endpoint
    /// refused the connection, or the member has no leader) is sent again
    /// within the same deadline, at once to another endpoint when one is
    /// not known to be down; the endpoint that failed is left until its
    /// probe sees it answer again. When a majority of the members refuse
    /// connections the answer is at once [`Failure::NoQuorum`], and after
    /// [`QUORUM_CHECK_AFTER`] waiting for one member when the others say
    /// no majority is left; when the deadline passes, the members are
    /// asked (for at most [`EXPLAIN_WITHIN`] more) whether it is for want
    /// of a quorum.
    fn run<T, F>(
        &self,
        eps: &Arc<Endpoints>,
        timeout: Duration,
        mut make: impl FnMut(usize, Client) -> F + Send + 'static,
    ) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, etcd_client::Error>> + Send,
    {
        let eps = eps.clone();
        let answer = self.wait(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            // Why each endpoint did not take this request, when it did not.
            let mut said: Vec<Option<Said>> = vec![None; eps.names.len()];
            let mut attempt = 0;
            loop {
                let i = eps.pick(attempt);
                eps.sent[i].fetch_add(1, Ordering::Relaxed);
                let mut sent = std::pin::pin!(tokio::time::timeout_at(deadline, make(i, eps.client(i))));
                let answer = match tokio::time::timeout(QUORUM_CHECK_AFTER, &mut sent).await {
                    Ok(answer) => answer,
                    Err(_) => match eps.no_quorum_without(i, &said).await {
                        Some(no_quorum) => return Err(no_quorum),
                        None => sent.await,
                    },
                };
                match answer {
                    Ok(Err(e)) if not_sent(&e) => {
                        let (mark, no_leader) = (unreachable(&e), said_no_leader(&e));
                        let why = Failure::Etcd(e).message();
                        if mark {
                            eps.failed(i, &why);
                        }
                        said[i] = Some(if no_leader { Said::NoLeader(why) } else { Said::Down(why) });
                        if eps.majority_down(&said) {
                            return Err(Failure::NoQuorum(eps.summary(&said)));
                        }
                        if deadline - tokio::time::Instant::now() <= RESEND_AFTER {
                            return Err(eps.explain(said, Failure::Timeout(timeout)).await);
                        }
                        attempt += 1;
                        // Nowhere else to go (every endpoint is down, or the
                        // cluster is electing a leader): a pause first.
                        if eps.all_down() || !eps.down[i].load(Ordering::Relaxed) {
                            tokio::time::sleep(RESEND_AFTER).await;
                        }
                    }
                    Ok(Err(e)) => {
                        // Perhaps applied, so not sent again; but its
                        // connection is gone: the next request goes elsewhere.
                        let (lost, failure) = (connection_lost(&e), Failure::Etcd(e));
                        if lost {
                            eps.failed(i, &failure.message());
                        }
                        return Err(failure);
                    }
                    Ok(Ok(r)) => return Ok(r),
                    Err(_) => {
                        eps.failed(i, &format!("no answer within {timeout:?}"));
                        said[i] =
                            Some(Said::Down(format!("no answer within {timeout:?} (a write may yet be applied)")));
                        return Err(eps.explain(said, Failure::Timeout(timeout)).await);
                    }
                }
            }
        });
        answer.unwrap_or(Err(Failure::Stopped))
    }

    /// Runs `fut` on the client's runtime and waits for its output; `Err`
    /// when the runtime stopped first.
    fn wait<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> Result<T, ()> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        let wait = move || rx.recv().map_err(|_| ());
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        }
    }
}

/// The pause before a request that reached no member is sent again, when
/// no other endpoint is there to take it.
const RESEND_AFTER: Duration = Duration::from_millis(50);

/// How long a request that failed for want of a member waits for the
/// members to say whether they have a quorum (past its own deadline).
const EXPLAIN_WITHIN: Duration = Duration::from_millis(500);

/// What an endpoint said to a request it did not take, or to a question.
#[derive(Debug, Clone)]
enum Said {
    /// It answered, with a leader.
    Leader,
    /// It answered that it has no leader.
    NoLeader(String),
    /// It refused the connection or did not answer.
    Down(String),
}

/// How long a request waits for its member before the others are asked
/// whether a quorum is left at all.
const QUORUM_CHECK_AFTER: Duration = Duration::from_secs(1);

/// How often an endpoint that failed is asked whether it answers again.
const PROBE_EVERY: Duration = Duration::from_millis(500);

/// A member's connection attempt past this is a failure (a powered-off
/// machine answers no SYN): the request goes to another endpoint well
/// within its deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Asks one member, within `within`, a question only a member with a
/// leader answers (a serializable count of one key): a probe's and
/// [`Endpoints::ask`]'s.
fn ask_leader(
    c: &Client,
    within: Duration,
) -> impl Future<Output = Result<Result<etcd_client::GetResponse, etcd_client::Error>, tokio::time::error::Elapsed>>
+ Send
+ 'static {
    let mut kv = c.kv_client();
    let question = GetOptions::new().with_count_only().with_serializable();
    async move { tokio::time::timeout(within, kv.get(vec![0u8], Some(question))).await }
}

/// The members' endpoints, a client of each, and which of them are down.
///
/// Requests go to the first endpoint in the configured order that is not
/// known to be down (init lists a control plane's own member first), not
/// through etcd-client's balancer over all of them: tonic's balancer keeps
/// offering a dead member's endpoint as ready, so after a follower was
/// killed about one request in two went there first and was refused (a
/// writer fell from ~500 to ~40 writes/s). A request that cannot reach an
/// endpoint marks it down and goes to the next at once; a probe task then
/// asks the marked endpoint every [`PROBE_EVERY`] (a serializable read
/// that needs the member to have a leader) and clears the mark when it
/// answers, so requests return to it.
struct Endpoints {
    names: Vec<String>,
    /// Made again when the client TLS files change ([`reload_tls`]).
    clients: std::sync::RwLock<Vec<Client>>,
    down: Vec<AtomicBool>,
    /// Requests (attempts) sent through each endpoint; probes not counted.
    sent: Vec<AtomicU64>,
    /// The client's runtime, for the probes.
    handle: tokio::runtime::Handle,
    timeout: Duration,
}

impl Endpoints {
    fn client(&self, i: usize) -> Client {
        self.clients.read().unwrap_or_else(std::sync::PoisonError::into_inner)[i].clone()
    }

    /// The first endpoint not known to be down; when all are, each in
    /// turn, by `attempt` (one of them may be back before its probe says so).
    fn pick(&self, attempt: usize) -> usize {
        self.down.iter().position(|d| !d.load(Ordering::Relaxed)).unwrap_or(attempt % self.names.len())
    }

    fn all_down(&self) -> bool {
        self.down.iter().all(|d| d.load(Ordering::Relaxed))
    }

    /// Whether so many endpoints refused a request that no majority of
    /// the members is left to take it (three endpoints or more: with one,
    /// a member restarting is waited for until the deadline).
    fn majority_down(&self, said: &[Option<Said>]) -> bool {
        let down = said.iter().filter(|s| matches!(s, Some(Said::Down(_)))).count();
        self.names.len() >= 3 && down >= quorum(self.names.len())
    }

    /// Each endpoint with what it said: `host:port: why`, `; `-separated,
    /// and how many of the members have a leader against the majority needed.
    fn summary(&self, said: &[Option<Said>]) -> String {
        let leading = said.iter().filter(|s| matches!(s, Some(Said::Leader))).count();
        let each: Vec<String> = self
            .names
            .iter()
            .zip(said)
            .map(|(n, s)| match s {
                Some(Said::Leader) => format!("{n}: has a leader"),
                Some(Said::NoLeader(why) | Said::Down(why)) => format!("{n}: {why}"),
                None => format!("{n}: not asked"),
            })
            .collect();
        let n = self.names.len();
        format!(
            "no quorum: {leading} of the {n} etcd members answer with a leader, {} needed ({})",
            quorum(n),
            each.join("; ")
        )
    }

    /// Why a request failed that found no member to take it: the members
    /// not heard from yet are asked, at once, whether they have a leader.
    /// Fewer than a majority with one: [`Failure::NoQuorum`]; else `other`
    /// (a member too slow, not the cluster down).
    async fn explain(&self, mut said: Vec<Option<Said>>, other: Failure) -> Failure {
        self.ask(&mut said).await;
        let leading = said.iter().filter(|s| matches!(s, Some(Said::Leader))).count();
        if leading < quorum(self.names.len()) { Failure::NoQuorum(self.summary(&said)) } else { other }
    }

    /// A request to endpoint `i` has waited [`QUORUM_CHECK_AFTER`]: when
    /// so many of the others do not answer at all that even with `i` no
    /// majority is left (two of three members down: the survivor, a
    /// leader that has not noticed yet, holds the request until the
    /// deadline), the answer need not wait for it. Members that answer
    /// without a leader count as there: an election after a leader died
    /// is waited for.
    async fn no_quorum_without(&self, i: usize, said: &[Option<Said>]) -> Option<Failure> {
        if self.names.len() < 3 {
            return None;
        }
        let mut said = said.to_vec();
        said[i] = Some(Said::Down(format!("no answer within {QUORUM_CHECK_AFTER:?} (a write may yet be applied)")));
        self.ask(&mut said).await;
        let there = said.iter().filter(|s| matches!(s, Some(Said::Leader | Said::NoLeader(_)))).count();
        (there + 1 < quorum(self.names.len())).then(|| Failure::NoQuorum(self.summary(&said)))
    }

    /// Asks each endpoint not heard from in `said`, at once, whether it
    /// answers with a leader.
    async fn ask(&self, said: &mut [Option<Said>]) {
        let mut asked = tokio::task::JoinSet::new();
        let clients = self.clients.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        for (i, c) in clients.iter().enumerate().filter(|(i, _)| said[*i].is_none()) {
            let answer = ask_leader(c, EXPLAIN_WITHIN);
            asked.spawn(async move { (i, answer.await) });
        }
        while let Some(Ok((i, answer))) = asked.join_next().await {
            said[i] = Some(match answer {
                Ok(Ok(_)) => Said::Leader,
                Ok(Err(e)) if said_no_leader(&e) => Said::NoLeader(Failure::Etcd(e).message()),
                Ok(Err(e)) => Said::Down(Failure::Etcd(e).message()),
                Err(_) => Said::Down(format!("no answer within {EXPLAIN_WITHIN:?}")),
            });
        }
    }

    /// Endpoint `i` did not answer: marked down (once), probed until it does.
    fn failed(self: &Arc<Self>, i: usize, reason: &str) {
        if self.names.len() < 2 || self.down[i].swap(true, Ordering::SeqCst) {
            return;
        }
        let next = self.down.iter().position(|d| !d.load(Ordering::Relaxed));
        let next = next.map_or("none answers".to_string(), |n| format!("using {}", self.names[n]));
        tracing::warn!("etcd endpoint {} does not answer ({reason}): {next} until it does", self.names[i]);
        let eps = self.clone();
        self.handle.spawn(async move { eps.probe(i).await });
    }

    async fn probe(self: Arc<Self>, i: usize) {
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            if matches!(ask_leader(&self.client(i), self.timeout).await, Ok(Ok(_))) {
                self.down[i].store(false, Ordering::SeqCst);
                tracing::warn!("etcd endpoint {} answers again", self.names[i]);
                return;
            }
        }
    }
}

/// Whether the request failed before anything was applied, so that
/// sending it again cannot apply it twice: a refused connection, or an
/// election under way — "no leader" is refused before any proposal, and
/// "leader changed" ends only a linearizable read (etcd's write path says
/// "request timed out" instead, and is not resent). Without this, every
/// read during the second or so of an election after a leader died was a
/// 503.
fn not_sent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == Code::Unavailable
                && (s.message().contains("connect")
                    || s.message() == "etcdserver: no leader"
                    || s.message() == "etcdserver: leader changed")
        }
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    }
}

/// Whether a request failed because its connection broke under it (the
/// member died with the request sent, or about to be).
fn connection_lost(e: &etcd_client::Error) -> bool {
    match e {
        // tonic's words vary with the moment the connection broke:
        // "transport error: connection error: stream closed because of a
        // broken pipe", "… connection reset", "operation was canceled:
        // transport error: connection closed".
        etcd_client::Error::GRpcStatus(s) => {
            let mut words = s.message().to_string();
            let mut cause = std::error::Error::source(s);
            while let Some(c) = cause {
                words.push_str(&c.to_string());
                cause = c.source();
            }
            words.contains("transport error")
        }
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

/// A majority of `members`, which etcd needs to elect a leader and commit.
fn quorum(members: usize) -> usize {
    members / 2 + 1
}

/// Whether the member answered that it has no leader (a minority cut off
/// from the others, or an election under way).
fn said_no_leader(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message() == "etcdserver: no leader")
}

/// Whether a request that was not sent failed because of its endpoint
/// (unreachable, or a member cut off from its leader), not because the
/// whole cluster is electing: then another endpoint should take it.
fn unreachable(e: &etcd_client::Error) -> bool {
    !matches!(e, etcd_client::Error::GRpcStatus(s) if s.message() == "etcdserver: leader changed")
}

/// Why a request failed, before it becomes a [`StoreError`].
#[derive(Debug)]
enum Failure {
    Etcd(etcd_client::Error),
    Timeout(Duration),
    /// Fewer than a majority of the members answer with a leader: why.
    NoQuorum(String),
    Stopped,
}

impl Failure {
    /// etcd's words, with the causes under them (a TLS alert under a
    /// "transport error").
    fn message(&self) -> String {
        let chain = |top: String, mut cause: Option<&(dyn std::error::Error + 'static)>| {
            let mut m = top;
            while let Some(c) = cause {
                // tonic repeats a cause in the words of the error above it.
                let c_text = c.to_string();
                if !m.contains(&c_text) {
                    m = format!("{m}: {c_text}");
                }
                cause = c.source();
            }
            m
        };
        match self {
            Failure::Etcd(etcd_client::Error::GRpcStatus(s)) => {
                chain(s.message().to_string(), std::error::Error::source(s))
            }
            Failure::Etcd(e) => chain(e.to_string(), std::error::Error::source(e)),
            Failure::Timeout(t) => format!("no answer within {t:?} (a write may yet be applied)"),
            // A write that timed out on the way here may yet be applied, too.
            Failure::NoQuorum(why) => why.clone(),
            Failure::Stopped => "the etcd client stopped".into(),
        }
    }

    /// No quorum, no leader, no member reachable, or no answer in time.
    fn unavailable(&self) -> bool {
        match self {
            Failure::Etcd(etcd_client::Error::GRpcStatus(s)) => {
                matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled)
                    || [
                        "transport error",
                        "no leader",
                        "timed out",
                        "leader changed",
                        "not capable",
                        "unhealthy cluster",
                    ]
                    .iter()
                    .any(|m| s.message().contains(m))
            }
            Failure::Etcd(etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_)) => true,
            Failure::Timeout(_) | Failure::NoQuorum(_) | Failure::Stopped => true,
            Failure::Etcd(_) => false,
        }
    }

    fn compacted(&self) -> bool {
        self.message().contains("required revision has been compacted")
    }

    fn future_revision(&self) -> bool {
        self.message().contains("required revision is a future revision")
    }
}

/// The store on etcd. Keys and values are the registry's, byte for byte:
/// an object reads the same from etcd as from SQLite.
pub struct EtcdStore {
    eps: Arc<Endpoints>,
    bridge: Bridge,
    /// The endpoints, for errors.
    names: String,
    timeout: Duration,
}

/// Why the clients could not be made.
struct ClientsError {
    op: &'static str,
    reason: String,
}

/// A client of each of `cfg`'s endpoints (each connects when first used),
/// with the TLS files as they are now.
async fn clients(cfg: EtcdConfig) -> Result<Vec<Client>, ClientsError> {
    // No per-request timeout in the client: every request runs under
    // the store's own deadline (`Bridge::run`), which then asks the
    // members why; tonic's, firing at the same moment, said only
    // "Timeout expired".
    let mut options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT.min(cfg.timeout))
        .with_keep_alive(Duration::from_secs(2), cfg.timeout)
        .with_keep_alive_while_idle(true)
        // A member cut off from the others fails requests and watches
        // at once ("no leader"): the client retries on another.
        .with_require_leader(true);
    if let Some(tls) = &cfg.tls {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| ClientsError {
                op: "read the etcd client TLS files",
                reason: format!("{}: {e}", path.display()),
            })
        };
        options = options.with_tls(
            etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(read(&tls.ca)?))
                .identity(etcd_client::Identity::from_pem(read(&tls.cert)?, read(&tls.key)?)),
        );
    }
    let mut clients = Vec::new();
    for url in cfg.urls() {
        let c = Client::connect([url], Some(options.clone())).await;
        clients.push(c.map_err(|e| ClientsError { op: "connect to etcd", reason: Failure::Etcd(e).message() })?);
    }
    Ok(clients)
}

/// How often the client TLS files are looked at for a renewed certificate.
const TLS_RELOAD_EVERY: Duration = Duration::from_secs(5);

/// The TLS files' modification times (`None`: unreadable).
fn modified(tls: &ClientTls) -> Vec<Option<std::time::SystemTime>> {
    [&tls.ca, &tls.cert, &tls.key].iter().map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()).collect()
}

/// Makes the clients again when the TLS files change (init renews the
/// member's certificate, which is also the orchestrator's client
/// certificate, before it expires): the certificate a client presents is
/// the one read when it was made, and a connection made after its expiry
/// would be refused. Connections of the old clients stay up until their
/// requests end. Stops with the store.
async fn reload_tls(eps: std::sync::Weak<Endpoints>, cfg: EtcdConfig, mut seen: Vec<Option<std::time::SystemTime>>) {
    let Some(tls) = cfg.tls.clone() else { return };
    loop {
        tokio::time::sleep(TLS_RELOAD_EVERY).await;
        let now = modified(&tls);
        if now == seen {
            continue;
        }
        // A renewal writes three files: read them once they stay as they
        // are (a key read with the previous certificate would not be
        // noticed again).
        tokio::time::sleep(Duration::from_millis(200)).await;
        if modified(&tls) != now {
            continue;
        }
        let Some(eps) = eps.upgrade() else { return };
        match clients(cfg.clone()).await {
            Ok(fresh) => {
                *eps.clients.write().unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
                seen = now;
                tracing::warn!("etcd client certificate reloaded from {}", tls.cert.display());
            }
            Err(e) => tracing::warn!("etcd client TLS files changed, kept the old ones: {}: {}", e.op, e.reason),
        }
    }
}

/// The end of the key range of everything under `prefix` (etcd's
/// `WithPrefix`): the prefix with its last byte below 0xff incremented;
/// `\0` (every key) for an empty prefix.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn key_value(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    }
}

/// An etcd event as the store's: a delete carries the deleted value and
/// its create revision at the tombstone's revision, as SQLite's does.
fn event(e: &etcd_client::Event) -> Option<Event> {
    let kv = e.kv()?;
    let prev = e.prev_kv().map(key_value);
    Some(match e.event_type() {
        EventType::Put => Event { kind: EventKind::Put, kv: key_value(kv), prev },
        EventType::Delete => {
            let old = prev.clone().unwrap_or_else(|| key_value(kv));
            Event { kind: EventKind::Delete, kv: KeyValue { mod_revision: kv.mod_revision(), ..old }, prev }
        }
    })
}

fn revision(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.map_or(0, etcd_client::ResponseHeader::revision)
}

/// The kv a transaction's `or_else` read, when its compare failed.
fn read_back(r: &etcd_client::TxnResponse) -> Option<KeyValue> {
    r.op_responses().iter().find_map(|op| match op {
        TxnOpResponse::Get(g) => g.kvs().first().map(key_value),
        _ => None,
    })
}

impl EtcdStore {
    /// Connects, and checks that the cluster answers.
    pub fn connect(cfg: &EtcdConfig) -> Result<EtcdStore, StoreError> {
        let names = cfg.endpoints.join(",");
        let unavailable = |op, reason: String| StoreError::Unavailable { op, endpoints: names.clone(), reason };
        let bridge = Bridge::start().map_err(|e| unavailable("start the etcd client", e.to_string()))?;
        let clients = bridge
            .wait(clients(cfg.clone()))
            .map_err(|()| unavailable("connect to etcd", Failure::Stopped.message()))?
            .map_err(|e| unavailable(e.op, e.reason))?;
        let eps = Arc::new(Endpoints {
            names: cfg.endpoints.clone(),
            down: clients.iter().map(|_| AtomicBool::new(false)).collect(),
            sent: clients.iter().map(|_| AtomicU64::new(0)).collect(),
            clients: std::sync::RwLock::new(clients),
            handle: bridge.handle.clone(),
            timeout: cfg.timeout,
        });
        if let Some(tls) = &cfg.tls {
            bridge.handle.spawn(reload_tls(Arc::downgrade(&eps), cfg.clone(), modified(tls)));
        }
        let store = EtcdStore { eps, bridge, names, timeout: cfg.timeout };
        store.current_revision()?;
        Ok(store)
    }

    /// How many requests were sent through each endpoint (the configured
    /// `host:port`), retries included: which members a store uses.
    pub fn requests_sent(&self) -> Vec<(String, u64)> {
        self.eps.names.iter().zip(&self.eps.sent).map(|(n, c)| (n.clone(), c.load(Ordering::Relaxed))).collect()
    }

    fn run<T, F>(&self, make: impl FnMut(usize, Client) -> F + Send + 'static) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, etcd_client::Error>> + Send,
    {
        self.bridge.run(&self.eps, self.timeout, make)
    }

    fn error(&self, op: &'static str, f: &Failure) -> StoreError {
        let (endpoints, reason) = (self.names.clone(), f.message());
        if f.unavailable() {
            StoreError::Unavailable { op, endpoints, reason }
        } else {
            StoreError::Remote { op, endpoints, reason }
        }
    }

    /// The revision etcd compacted at, read from a watch of the past (etcd
    /// tells a watch the compaction point; no other request does).
    fn compaction_point(&self, op: &'static str) -> Result<i64, StoreError> {
        self.run(move |_, mut client| async move {
            let mut stream = client.watch(vec![0u8], Some(WatchOptions::new().with_start_revision(1))).await?;
            while let Some(r) = stream.message().await? {
                if r.compact_revision() > 0 || r.canceled() {
                    return Ok(r.compact_revision());
                }
            }
            Ok(0)
        })
        .map_err(|f| self.error(op, &f))
    }

    fn compacted(&self, op: &'static str, requested: i64) -> StoreError {
        match self.compaction_point(op) {
            Ok(compacted) => StoreError::Compacted { requested, compacted },
            Err(e) => e,
        }
    }

    fn too_large(key: &str, value: &[u8]) -> Result<(), StoreError> {
        if value.len() > MAX_VALUE_BYTES {
            return Err(StoreError::TooLarge { key: key.to_string(), size: value.len(), limit: MAX_VALUE_BYTES });
        }
        Ok(())
    }

    /// A transaction: `then` when every compare holds, else read the key.
    fn txn(
        &self,
        op: &'static str,
        key: &str,
        when: Vec<Compare>,
        then: TxnOp,
    ) -> Result<etcd_client::TxnResponse, StoreError> {
        let txn = Txn::new().when(when).and_then(vec![then]).or_else(vec![TxnOp::get(key, None)]);
        self.run(move |_, c| {
            let (mut kv, txn) = (c.kv_client().max_decoding_message_size(usize::MAX), txn.clone());
            async move { kv.txn(txn).await }
        })
        .map_err(|f| match &f {
            Failure::Etcd(_) if f.message().contains("request is too large") => {
                StoreError::Remote { op, endpoints: self.names.clone(), reason: format!("{key}: {}", f.message()) }
            }
            _ => self.error(op, &f),
        })
    }

    /// The answer to a failed compare: absent or at another revision.
    fn refused(key: &str, expected: i64, found: Option<KeyValue>) -> StoreError {
        match found {
            None => StoreError::NotFound { key: key.to_string() },
            Some(kv) => StoreError::Conflict { key: key.to_string(), expected, found: kv.mod_revision },
        }
    }
}

/// Forwards an etcd watch, served through endpoint `at`, to a [`Watch`]'s
/// channel, in order; when the member serving it dies or loses its leader,
/// its endpoint is marked down and the watch starts again from the
/// revision after the last event sent, through another member, until
/// `patience` passes without one answering.
#[allow(clippy::too_many_arguments)]
async fn forward(
    eps: Arc<Endpoints>,
    mut at: usize,
    prefix: String,
    mut last: i64,
    mut stream: etcd_client::WatchStream,
    tx: tokio::sync::mpsc::Sender<Result<Event, StoreError>>,
    names: String,
    patience: Duration,
) {
    // Since when the watch has been failing without delivering an event.
    let mut stalled: Option<tokio::time::Instant> = None;
    loop {
        let reason = loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                () = tx.closed() => return,
            };
            let r = match msg {
                Ok(Some(r)) => r,
                Ok(None) => break "the watch stream ended".to_string(),
                Err(e) => break e.to_string(),
            };
            if r.compact_revision() > 0 {
                let _ = tx.send(Err(StoreError::Compacted { requested: last, compacted: r.compact_revision() })).await;
                return;
            }
            for e in r.events().iter().filter_map(event) {
                (last, stalled) = (e.kv.mod_revision, None);
                if tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
            if r.canceled() {
                break format!("etcd cancelled the watch: {}", r.cancel_reason());
            }
        };
        tracing::debug!(%prefix, last, "etcd watch interrupted ({reason}); resuming");
        eps.failed(at, &reason);
        let started = *stalled.get_or_insert_with(tokio::time::Instant::now);
        let mut attempt = 0;
        stream = loop {
            let opts =
                WatchOptions::new().with_range(prefix_end(&prefix)).with_start_revision(last + 1).with_prev_key();
            at = eps.pick(attempt);
            let mut client = eps.client(at).watch_client().max_decoding_message_size(usize::MAX);
            match tokio::time::timeout(patience, client.watch(prefix.clone(), Some(opts))).await {
                Ok(Ok(s)) if started.elapsed() < patience => break s,
                Ok(Err(e)) if started.elapsed() < patience => {
                    tracing::debug!(%prefix, "etcd watch: {e}; retrying");
                    if not_sent(&e) && unreachable(&e) {
                        eps.failed(at, &Failure::Etcd(e).message());
                    }
                    attempt += 1;
                    if eps.all_down() || !eps.down[at].load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                failed => {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        Ok(Ok(_)) => format!("the watch failed for {patience:?} without an event: {reason}"),
                        Err(_) => format!("no member answered within {patience:?}"),
                    };
                    let _ = tx.send(Err(StoreError::Unavailable { op: "watch", endpoints: names, reason: why })).await;
                    return;
                }
            }
        };
    }
}

impl Store for EtcdStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let k = key.to_string();
        let r = self
            .run(move |_, c| {
                let (mut kv, k) = (c.kv_client(), k.clone());
                async move { kv.get(k, None).await }
            })
            .map_err(|f| self.error("get", &f))?;
        Ok(r.kvs().first().map(key_value))
    }

    fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        revision: Option<i64>,
    ) -> Result<ListPage, StoreError> {
        let start = match start_after {
            Some(after) if after >= prefix => format!("{after}\0"),
            _ => prefix.to_string(),
        };
        let opts = GetOptions::new()
            .with_range(prefix_end(prefix))
            .with_limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .with_revision(revision.unwrap_or(0));
        let r = self
            .run(move |_, c| {
                let mut kv = c.kv_client().max_decoding_message_size(usize::MAX);
                let (start, opts) = (start.clone(), opts.clone());
                async move { kv.get(start, Some(opts)).await }
            })
            .map_err(|f| match revision {
                Some(at) if f.compacted() => self.compacted("list", at),
                _ => self.error("list", &f),
            })?;
        Ok(ListPage {
            items: r.kvs().iter().map(key_value).collect(),
            revision: revision.unwrap_or_else(|| revision_of(&r)),
            more: r.more(),
        })
    }

    fn create(&self, key: &str, value: &[u8]) -> Result<i64, StoreError> {
        Self::too_large(key, value)?;
        let put = TxnOp::put(key, value, None);
        let r = self.txn("create", key, vec![Compare::create_revision(key, CompareOp::Equal, 0)], put)?;
        if !r.succeeded() {
            return Err(StoreError::AlreadyExists { key: key.to_string() });
        }
        Ok(revision(r.header()))
    }

    fn update(&self, key: &str, value: &[u8], expected: i64) -> Result<i64, StoreError> {
        Self::too_large(key, value)?;
        let when =
            vec![Compare::version(key, CompareOp::Greater, 0), Compare::mod_revision(key, CompareOp::Equal, expected)];
        let r = self.txn("update", key, when, TxnOp::put(key, value, None))?;
        if !r.succeeded() {
            return Err(Self::refused(key, expected, read_back(&r)));
        }
        Ok(revision(r.header()))
    }

    fn delete(&self, key: &str, expected: Option<i64>) -> Result<i64, StoreError> {
        let mut when = vec![Compare::version(key, CompareOp::Greater, 0)];
        if let Some(e) = expected {
            when.push(Compare::mod_revision(key, CompareOp::Equal, e));
        }
        let r = self.txn("delete", key, when, TxnOp::delete(key, None))?;
        if !r.succeeded() {
            return Err(Self::refused(key, expected.unwrap_or(0), read_back(&r)));
        }
        Ok(revision(r.header()))
    }

    fn watch(&self, prefix: &str, from: i64) -> Result<Watch, StoreError> {
        // etcd says a watch's start is compacted only once it streams;
        // a read at that revision says it now, as SQLite's watch does.
        let probe = GetOptions::new().with_range(prefix_end(prefix)).with_revision(from + 1).with_count_only();
        let p = prefix.to_string();
        let probed = self.run(move |_, c| {
            let (mut kv, p, probe) = (c.kv_client(), p.clone(), probe.clone());
            async move { kv.get(p, Some(probe)).await }
        });
        match probed {
            Ok(_) => {}
            Err(f) if f.future_revision() => {}
            Err(f) if f.compacted() => return Err(self.compacted("watch", from)),
            Err(f) => return Err(self.error("watch", &f)),
        }
        let opts = WatchOptions::new().with_range(prefix_end(prefix)).with_start_revision(from + 1).with_prev_key();
        // A watch from the past may bring many events in one response.
        let p = prefix.to_string();
        let (at, stream) = self
            .run(move |i, c| {
                let (mut c, p, opts) =
                    (c.watch_client().max_decoding_message_size(usize::MAX), p.clone(), opts.clone());
                async move { c.watch(p, Some(opts)).await.map(|s| (i, s)) }
            })
            .map_err(|f| self.error("watch", &f))?;
        // Bounded: a slow watcher slows its own stream (etcd holds the
        // rest), never the store or the other watchers.
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let task =
            forward(self.eps.clone(), at, prefix.to_string(), from, stream, tx, self.names.clone(), self.timeout);
        self.bridge.handle.spawn(task);
        Ok(Watch::feed(rx))
    }

    fn compact(&self, revision: i64) -> Result<(), StoreError> {
        let compacted = self.run(move |_, c| {
            let mut kv = c.kv_client();
            async move { kv.compact(revision, Some(etcd_client::CompactionOptions::new().with_physical())).await }
        });
        match compacted {
            Ok(_) => Ok(()),
            // Already compacted at or past it: nothing to do, as SQLite's.
            Err(f) if f.compacted() => Ok(()),
            Err(f) => Err(self.error("compact", &f)),
        }
    }

    fn current_revision(&self) -> Result<i64, StoreError> {
        let r = self
            .run(move |_, c| {
                let mut kv = c.kv_client();
                async move { kv.get(vec![0u8], Some(GetOptions::new().with_count_only())).await }
            })
            .map_err(|f| self.error("read revision", &f))?;
        Ok(revision_of(&r))
    }
}

fn revision_of(r: &etcd_client::GetResponse) -> i64 {
    revision(r.header())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end("/pods/"), b"/pods0");
        assert_eq!(prefix_end(""), [0]);
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80");
    }

    #[test]
    fn store_urls_parse_and_bad_ones_say_why() {
        let c = EtcdConfig::from_url("etcd://10.0.0.1:2379,10.0.0.2:2379", None).unwrap();
        assert_eq!(c.endpoints, ["10.0.0.1:2379", "10.0.0.2:2379"]);
        assert_eq!(c.urls()[1], "http://10.0.0.2:2379");
        assert_eq!(EtcdConfig::from_url("sqlite:///x", None), Err(ConfigError::NotEtcd("sqlite:///x".into())));
        let e = EtcdConfig::from_url("etcd://10.0.0.1", None).unwrap_err();
        assert_eq!(e.to_string(), r#"--store "etcd://10.0.0.1": endpoint "10.0.0.1" is not HOST:PORT"#);
    }
}

//! The kubelet: registers this machine as a Node, heartbeats its Lease,
//! and runs the pods bound to it through the container runtime (CRI).
//!
//! One loop relists the runtime every second (as upstream's PLEG) and
//! follows a watch of the node's pods; a pod whose object or runtime state
//! changed, or whose timer (back-off, retry) is due, is synced by its own
//! task: volumes, sandbox (with CNI), image pulls, containers in order,
//! restarts with back-off, then its status written when it changed. Pods
//! being deleted are stopped within their grace period and removed; the
//! sandboxes of pods that no longer exist are removed. Everything the loop
//! needs to decide is read back from the runtime (attempt numbers, exit
//! times), so a restarted kubelet adopts running containers.

pub mod bootstrap;
pub mod claims;
pub mod cni;
pub mod credentials;
pub mod cri;
pub mod disk;
pub mod ephemeral;
pub mod exec;
pub mod images;
pub mod logs;
pub mod metrics;
pub mod node;
mod offline;
pub mod pod;
pub mod portforward;
pub mod probe;
pub mod projected;
pub mod server;
pub mod serving;
pub mod spdy;
pub mod timing;
pub mod token;
pub mod volumes;
pub mod watched;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash as _, Hasher as _};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt as _;
use k8s_openapi::api::core::v1::{Container, ContainerStatus, HostIP, Pod, PodIP, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::cri::{Cri, CriError, v1};
use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::Part;
use orchestrator_apimachinery::registry::str_at;
use orchestrator_apimachinery::typed;
use pod::{Observed, Waiting};

#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    /// containerd's socket (CRI).
    pub cri_socket: PathBuf,
    /// Pod volumes and logs live under here.
    pub dir: PathBuf,
    /// Where the runtime reads CNI configs; the kubelet writes its own there.
    pub cni_conf_dir: PathBuf,
    /// The node's pod range; empty: the Node's `spec.podCIDR`, assigned by the control plane's IPAM.
    pub pod_cidr: String,
    pub bridge: String,
    /// The node's address (default: the address of the default route).
    pub node_ip: Option<IpAddr>,
    /// The kubelet's HTTPS endpoint (logs for the API server).
    pub listen: std::net::SocketAddr,
    /// OCI archives to import into the runtime at start (air-gapped images).
    pub image_dir: Option<PathBuf>,
    /// When container logs are rotated (upstream's defaults: 10 MiB × 5 files).
    pub log_rotation: logs::Rotation,
    /// Routes Services' cluster IPs and node ports to their endpoints (`orchestrator_node_net::proxy`).
    pub service_proxy: bool,
    /// How the other nodes' pods are reached: direct routes, VXLAN, or each as fits (`orchestrator_node_net::routes::Mode`).
    pub pod_network: orchestrator_node_net::routes::Mode,
}

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error(transparent)]
    Cri(#[from] CriError),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
}

/// What the kubelet remembers of a pod between syncs (all else is read back).
#[derive(Default)]
struct PodMemory {
    /// The pod's resourceVersion and runtime digest at the last sync.
    seen: Option<(String, u64)>,
    in_flight: bool,
    /// A back-off or retry ends then: sync again.
    due: Option<Instant>,
    namespace: String,
    /// Events already reported for this pod (a retried failure is reported once).
    reported: HashSet<String>,
    /// Container name → failed pulls in a row, and when the next may start.
    pulls: HashMap<String, (u32, Instant)>,
    /// Failed sandbox creations in a row, and until when the pod is left
    /// alone for them (unless its spec changes or it is deleted): the
    /// kubelet's own status write must not trigger the next attempt.
    sandbox_failures: (u32, Option<(Instant, i64)>),
}

pub struct Kubelet {
    cfg: Config,
    api: orchestrator_client::Api,
    cri: Cri,
    host_ip: String,
    /// The cluster DNS pods are pointed at (ClusterFirst), when this node answers it.
    cluster_dns: Option<std::net::Ipv4Addr>,
    pods: Mutex<HashMap<String, PodMemory>>,
    /// Container id → what its probes found.
    probes: Mutex<HashMap<String, probe::Results>>,
    /// The port of the HTTPS endpoint, once bound.
    port: std::sync::atomic::AtomicU16,
    /// ServiceAccount tokens of projected volumes, until they are due.
    tokens: token::Tokens,
    /// What the API server last said, to run on when it does not answer.
    last_known: Mutex<offline::LastKnown>,
    /// Watches of the ConfigMaps and Secrets the pods use.
    watched: watched::Watched,
    /// Turns to create sandboxes, and to create and start containers (module `timing`'s figures: why).
    turns: Turns,
}

/// How many sandboxes (RunPodSandbox: its CNI ADD, the pause container) and
/// how many container creations and starts run at once. The runtime's work
/// is CPU- and lock-bound (runc, shims, CNI plugins, containerd's database):
/// thirty at once all finish together, late; a few at a time, in turn
/// (first come, first served), finish one after another at the same
/// throughput, so most pods run far sooner. Image pulls and everything else
/// are outside the turns; a turn not given within [`TURN_WAIT`] is not
/// waited for (a runtime call that hangs holds up others only that long).
/// Two sandboxes at once: with the CNI plugins' iptables gone, 2 gave a
/// 30-pod burst p50 ~0.1 s sooner than 3, and 5 or 8 ~0.4 s later (their
/// containers then wait for turns); KUBELET.md has the runs.
struct Turns {
    sandboxes: Arc<tokio::sync::Semaphore>,
    containers: Arc<tokio::sync::Semaphore>,
}

const SANDBOXES_AT_ONCE: usize = 2;
const CONTAINERS_AT_ONCE: usize = 3;
const TURN_WAIT: Duration = Duration::from_secs(10);

impl Turns {
    fn new() -> Turns {
        Turns {
            sandboxes: Arc::new(tokio::sync::Semaphore::new(SANDBOXES_AT_ONCE)),
            containers: Arc::new(tokio::sync::Semaphore::new(CONTAINERS_AT_ONCE)),
        }
    }

    /// Waits for a turn of `of` (at most [`TURN_WAIT`]); the turn ends when the permit drops.
    async fn take(of: &Arc<tokio::sync::Semaphore>) -> Option<tokio::sync::OwnedSemaphorePermit> {
        tokio::time::timeout(TURN_WAIT, of.clone().acquire_owned()).await.ok().and_then(Result::ok)
    }
}

/// The ConfigMaps and Secrets a pod refers to (env and volumes), its
/// ServiceAccount tokens by (audience, lifetime), and the API server's
/// Service, fetched before a sync.
struct Prefetched {
    objects: HashMap<(&'static str, String), Option<Data>>,
    tokens: HashMap<(String, i64), String>,
    api_service: Option<(String, i32)>,
}

/// The decoded data of a ConfigMap or Secret.
type Data = BTreeMap<String, Vec<u8>>;

impl pod::Lookup for Prefetched {
    fn data(&self, kind: &str, _namespace: &str, name: &str) -> Option<Data> {
        self.objects.iter().find(|((k, n), _)| *k == kind && n == name).and_then(|(_, d)| d.clone())
    }

    fn token(&self, audience: &str, seconds: i64) -> Option<String> {
        self.tokens.get(&(audience.to_string(), seconds)).cloned()
    }

    fn api_service(&self) -> Option<(String, i32)> {
        self.api_service.clone()
    }
}

/// The names of the ConfigMaps and Secrets a pod refers to.
fn references(p: &Pod) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let mut add = |kind: &'static str, name: Option<&str>| {
        if let Some(n) = name.filter(|n| !n.is_empty())
            && !out.iter().any(|(k, x)| *k == kind && x == n)
        {
            out.push((kind, n.to_string()));
        }
    };
    let spec = p.spec.as_ref();
    for c in spec.into_iter().flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers)) {
        for e in c.env.iter().flatten() {
            let from = e.value_from.as_ref();
            add("ConfigMap", from.and_then(|f| f.config_map_key_ref.as_ref()).map(|r| r.name.as_str()));
            add("Secret", from.and_then(|f| f.secret_key_ref.as_ref()).map(|r| r.name.as_str()));
        }
        for e in c.env_from.iter().flatten() {
            add("ConfigMap", e.config_map_ref.as_ref().map(|r| r.name.as_str()));
            add("Secret", e.secret_ref.as_ref().map(|r| r.name.as_str()));
        }
    }
    for v in spec.into_iter().flat_map(|s| s.volumes.iter().flatten()) {
        add("ConfigMap", v.config_map.as_ref().map(|c| c.name.as_str()));
        add("Secret", v.secret.as_ref().and_then(|s| s.secret_name.as_deref()));
        for s in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            add("ConfigMap", s.config_map.as_ref().map(|c| c.name.as_str()));
            add("Secret", s.secret.as_ref().map(|c| c.name.as_str()));
        }
    }
    out
}

/// Per pod uid, a digest of its sandboxes' and containers' ids and states.
/// The runtime lists them in no fixed order (containerd walks a map): the
/// digest does not depend on it, so an unchanged pod keeps its digest.
fn runtime_digests<'a>(sandboxes: &'a [v1::PodSandbox], containers: &'a [v1::Container]) -> HashMap<&'a str, u64> {
    let mut items: HashMap<&str, Vec<(&str, i32)>> = HashMap::new();
    let uid = |labels: &'a HashMap<String, String>| labels.get(pod::LABEL_POD_UID).map_or("", String::as_str);
    for s in sandboxes {
        items.entry(uid(&s.labels)).or_default().push((&s.id, s.state));
    }
    for c in containers {
        items.entry(uid(&c.labels)).or_default().push((&c.id, c.state));
    }
    items
        .into_iter()
        .map(|(uid, mut v)| {
            v.sort_unstable();
            let mut h = std::collections::hash_map::DefaultHasher::new();
            v.hash(&mut h);
            (uid, h.finish())
        })
        .collect()
}

/// What one sync task works on: a pod of this node, or the sandboxes of
/// a pod (by uid) that is gone.
enum Work {
    Pod(Box<Pod>),
    Orphan(String),
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("file work does not panic")
}

/// Starts the node's DNS responder on the pod network's gateway; `None`
/// (pods then use the node's resolver) when it cannot listen there.
fn start_cluster_dns(cfg: &Config) -> Option<orchestrator_node_net::proxy::ClusterDns> {
    let local = std::net::SocketAddrV4::new(cni::gateway(&cfg.pod_cidr)?, 53);
    match orchestrator_node_net::dns::bind(local.into()) {
        Ok(sockets) => {
            let zone = Arc::default();
            tokio::spawn(orchestrator_node_net::dns::serve(
                sockets,
                Arc::clone(&zone),
                orchestrator_node_net::dns::node_upstream(),
            ));
            Some(orchestrator_node_net::proxy::ClusterDns { zone, local, pod_cidr: cfg.pod_cidr.clone() })
        }
        Err(e) => {
            tracing::warn!("cluster DNS: listen on {local}: {e}");
            None
        }
    }
}

/// Routes the other nodes' pod CIDRs via their addresses (`orchestrator_node_net::routes`).
fn start_pod_routes(cfg: &Config, api: &orchestrator_client::Api, chains: orchestrator_node_net::proxy::Chains) {
    match cfg.pod_cidr.parse::<ipnet::Ipv4Net>() {
        Ok(own) => {
            let local = match cfg.node_ip.unwrap_or_else(node::default_ip) {
                IpAddr::V4(a) => a,
                IpAddr::V6(a) => {
                    tracing::warn!("pod routes: the node address {a} is not IPv4; no routes to other nodes' pods");
                    return;
                }
            };
            let (me, mode) = (cfg.node_name.clone(), cfg.pod_network);
            let routes = orchestrator_node_net::routes::run_forever(api.clone(), me, chains, own, mode, local);
            tokio::spawn(routes);
        }
        Err(e) => tracing::warn!("pod routes: the pod CIDR {:?}: {e}; no routes to other nodes' pods", cfg.pod_cidr),
    }
}

/// The pods' MTU for the node's pod network mode (`Mode::pod_mtu`) over
/// the interface holding the node's address; none (the CNI plugin's
/// default) for a loopback address (a node alone, or a test: loopback's
/// 65,536 is no link's) or when the MTU cannot be read, with a warning.
async fn pod_mtu(cfg: &Config) -> Option<u32> {
    use orchestrator_node_net::{overlay, routes};
    let local = match cfg.node_ip.unwrap_or_else(node::default_ip) {
        IpAddr::V4(a) if !a.is_loopback() => a,
        _ => return None,
    };
    let underlay = match routes::netlink() {
        Ok(h) => overlay::underlay_mtu(&h, local).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match underlay {
        Ok(u) => Some(cfg.pod_network.pod_mtu(u)),
        Err(e) => {
            tracing::warn!("pod MTU: {e}; the CNI plugin's default");
            None
        }
    }
}

/// Masquerades the pods' traffic leaving the pod CIDR (the CNI bridge's
/// `ipMasq` is off: `cni.rs`), before any sandbox starts, and keeps the
/// rule in place. A failure is logged: pods still reach each other and
/// the node, and the rule is written again within 30 s.
async fn start_pod_masquerade(cfg: &Config) {
    use orchestrator_node_net::{masquerade, proxy::Chains};
    let own = match cfg.pod_cidr.parse::<ipnet::Ipv4Net>() {
        Ok(own) => own.trunc(),
        Err(e) => {
            tracing::warn!("pod masquerade: the pod CIDR {:?}: {e}; pods' traffic leaves unmasqueraded", cfg.pod_cidr);
            return;
        }
    };
    let chains = Chains::new(&cfg.bridge);
    if let Err(e) = masquerade::ensure(&chains, own).await {
        tracing::warn!("pod masquerade for {own}: {e}");
    }
    tokio::spawn(masquerade::run_forever(chains, own));
}

/// Starts the kubelet: connects to the runtime, writes the CNI config,
/// registers the node and runs the sync loop, lease and node status in the background.
pub async fn start(
    mut cfg: Config,
    api: orchestrator_client::Api,
    identity: server::Identity,
) -> Result<Arc<Kubelet>, KubeletError> {
    let cri = Cri::connect(&cfg.cri_socket, Duration::from_secs(30)).await?;
    if cfg.pod_cidr.is_empty() {
        cfg.pod_cidr = node::assigned_pod_cidr(&api, &cfg).await;
    }
    for d in [cfg.dir.join("pods"), cfg.dir.join("logs")] {
        std::fs::create_dir_all(&d).map_err(|source| KubeletError::Io { op: "create", path: d.clone(), source })?;
    }
    cni::write_config(&cfg, pod_mtu(&cfg).await).map_err(|(path, source)| KubeletError::Io {
        op: "write",
        path,
        source,
    })?;
    start_pod_masquerade(&cfg).await;
    // A bad archive is reported and skipped: the node still runs what it can.
    if let Some(dir) = &cfg.image_dir
        && let Err(e) = images::import_dir(dir, &cfg.cri_socket, &cfg.dir).await
    {
        tracing::warn!("air-gapped images: {e}");
    }
    let cluster_dns = if cfg.service_proxy { start_cluster_dns(&cfg) } else { None };
    if cfg.service_proxy {
        let chains = orchestrator_node_net::proxy::Chains::new(&cfg.bridge);
        tokio::spawn(orchestrator_node_net::proxy::run_forever(api.clone(), chains.clone(), cluster_dns.clone()));
        start_pod_routes(&cfg, &api, chains);
    }
    let host_ip = cfg.node_ip.unwrap_or_else(node::default_ip).to_string();
    let listen = cfg.listen;
    let k = Arc::new(Kubelet {
        cfg,
        api,
        cri,
        host_ip,
        cluster_dns: cluster_dns.map(|_| orchestrator_apimachinery::cluster::CLUSTER_DNS_IP),
        pods: Mutex::default(),
        probes: Mutex::default(),
        port: Default::default(),
        tokens: token::Tokens::default(),
        last_known: Mutex::default(),
        watched: watched::Watched::default(),
        turns: Turns::new(),
    });
    let bound = server::start(k.clone(), listen, identity).await?;
    k.port.store(bound.port(), std::sync::atomic::Ordering::Relaxed);
    node::register(&k).await?;
    tokio::spawn(node::heartbeat(k.clone()));
    tokio::spawn(logs::rotate_forever(k.clone()));
    tokio::spawn(claims::reclaim_forever(k.clone()));
    tokio::spawn(k.clone().run());
    Ok(k)
}

impl Kubelet {
    pub fn node_name(&self) -> &str {
        &self.cfg.node_name
    }

    fn node_selector(&self) -> String {
        format!("spec.nodeName={}", self.cfg.node_name)
    }

    /// Fetches what a pod refers to (a missing object is recorded as missing).
    async fn prefetch(&self, p: &Pod) -> Result<Prefetched, KubeletError> {
        let (ns, name, _) = pod::ids(p);
        let mut out = HashMap::new();
        for (kind, name) in references(p) {
            let data = match self.api.get(kind, Some(ns), &name).await {
                Ok(o) => Some(pod::object_data(kind, &o)),
                Err(e) if e.code == 404 => None,
                Err(e) => return Err(e.into()),
            };
            out.insert((kind, name), data);
        }
        let mut tokens = HashMap::new();
        for v in p.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            for t in v
                .projected
                .iter()
                .flat_map(|p| p.sources.iter().flatten())
                .filter_map(|s| s.service_account_token.as_ref())
            {
                let audience = t.audience.clone().unwrap_or_default();
                let seconds = t.expiration_seconds.unwrap_or(3600);
                // A refused request leaves the volume unprepared: FailedMount, retried.
                match self.tokens.get(&self.api, p, &audience, seconds).await {
                    Ok(token) => {
                        tokens.insert((audience, seconds), token);
                    }
                    Err(e) => tracing::warn!(pod = name, "ServiceAccount token: {e}"),
                }
            }
        }
        let api_service = match self.api.get("Service", Some("default"), "kubernetes").await {
            Ok(s) => {
                let s: k8s_openapi::api::core::v1::Service = serde_json::from_value(s)
                    .map_err(|e| ApiError::internal(format!("Service default/kubernetes: {e}")))?;
                let spec = s.spec.unwrap_or_default();
                let port = spec.ports.iter().flatten().find(|p| p.name.as_deref() == Some("https")).map(|p| p.port);
                spec.cluster_ip.filter(|ip| !ip.is_empty() && ip != "None").zip(port)
            }
            Err(e) if e.code == 404 => None,
            Err(e) => return Err(e.into()),
        };
        Ok(Prefetched { objects: out, tokens, api_service })
    }

    async fn run(self: Arc<Self>) {
        let mut pods = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        async fn next(w: &mut Option<orchestrator_client::Watch>) -> Option<Value> {
            let r = w.as_mut().expect("guarded").next().await;
            if r.is_none() {
                // Compacted or closed: watch again from now on the next turn.
                *w = None;
            }
            r
        }
        loop {
            if pods.is_none() {
                pods = self.api.watch("Pod", &self.node_selector()).await;
            }
            tokio::select! {
                _ = next(&mut pods), if pods.is_some() => {
                    // Let a burst of changes settle into one pass: the pass
                    // relists everything, so the events that queued up
                    // meanwhile (a burst of binds, the status writes) are
                    // taken now rather than each costing a pass of its own.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    let mut taken = 0;
                    while taken < 10_000 && pods.is_some() && next(&mut pods).now_or_never().is_some() {
                        taken += 1;
                    }
                }
                _ = tick.tick() => {}
            }
            if let Err(e) = self.pass().await {
                tracing::warn!("kubelet pass: {e}");
            }
        }
    }

    /// One relist: syncs the pods that changed or are due, removes orphans.
    async fn pass(self: &Arc<Self>) -> Result<(), KubeletError> {
        let pods = self.pods_or_last(self.api.list("Pod", &self.node_selector()).await)?;
        let used = pods.iter().flat_map(|p| {
            let ns = pod::ids(p).0.to_string();
            references(p).into_iter().map(move |(kind, name)| (kind, ns.clone(), name))
        });
        self.watched.sync(self, used.collect());
        let (sandboxes, containers) = self.relist().await?;
        let digests = runtime_digests(&sandboxes, &containers);
        let running: HashSet<&str> = containers
            .iter()
            .filter(|c| c.state == v1::ContainerState::ContainerRunning as i32)
            .map(|c| c.id.as_str())
            .collect();
        let exited: HashSet<&str> =
            containers.iter().filter(|c| !running.contains(c.id.as_str())).map(|c| c.id.as_str()).collect();
        let live_uids: HashSet<&str> = pods.iter().map(|p| pod::ids(p).2).collect();
        self.probes
            .lock()
            .expect("not poisoned")
            .retain(|id, r| !exited.contains(id.as_str()) && live_uids.contains(r.uid.as_str()));
        let now = Instant::now();
        let mut to_sync = Vec::new();
        {
            let mut mem = self.pods.lock().expect("not poisoned");
            mem.retain(|uid, m| live_uids.contains(uid.as_str()) || m.in_flight);
            for p in &pods {
                let (ns, _, uid) = pod::ids(p);
                let digest = digests.get(uid).copied().unwrap_or(0);
                let seen = (p.metadata.resource_version.clone().unwrap_or_default(), digest);
                let m = mem.entry(uid.to_string()).or_default();
                m.namespace = ns.to_string();
                let due = m.due.is_some_and(|d| d <= now);
                let generation = p.metadata.generation.unwrap_or(0);
                let held = m.sandbox_failures.1.is_some_and(|(until, g)| {
                    now < until && g == generation && p.metadata.deletion_timestamp.is_none()
                });
                if !m.in_flight && !held && (m.seen.as_ref() != Some(&seen) || due) {
                    m.seen = Some(seen);
                    m.in_flight = true;
                    m.due = None;
                    to_sync.push(Work::Pod(Box::new(p.clone())));
                }
            }
            for s in &sandboxes {
                let uid = s.labels.get(pod::LABEL_POD_UID).cloned().unwrap_or_default();
                if !live_uids.contains(uid.as_str()) && !mem.get(&uid).is_some_and(|m| m.in_flight) {
                    mem.entry(uid.clone()).or_default().in_flight = true;
                    to_sync.push(Work::Orphan(uid));
                }
            }
        }
        for work in to_sync {
            let k = self.clone();
            let queued = std::time::Instant::now();
            let (name, uid) = match &work {
                Work::Pod(p) => (pod::ids(p).1.to_string(), pod::ids(p).2.to_string()),
                Work::Orphan(uid) => (String::new(), uid.clone()),
            };
            // A span per sync, entered only while the task runs (instrument, not enter, across awaits).
            let span = tracing::debug_span!("sync pod", pod = %name, %uid);
            let sync = async move {
                let result = match &work {
                    Work::Orphan(uid) => k.remove_pod(uid).await,
                    Work::Pod(p) if p.metadata.deletion_timestamp.is_some() => k.terminate(p).await,
                    Work::Pod(p) => timing::scope(&name, queued.elapsed(), k.sync_pod(p)).await,
                };
                let failed = result.is_err();
                if let Err(e) = result {
                    tracing::warn!(pod = %name, "sync: {e}");
                }
                let mut mem = k.pods.lock().expect("not poisoned");
                if let Some(m) = mem.get_mut(&uid) {
                    m.in_flight = false;
                    if failed && m.due.is_none() {
                        m.due = Some(Instant::now() + Duration::from_secs(2));
                    }
                }
            };
            tokio::spawn(tracing::Instrument::instrument(sync, span));
        }
        Ok(())
    }

    async fn relist(&self) -> Result<(Vec<v1::PodSandbox>, Vec<v1::Container>), KubeletError> {
        let managed = HashMap::from([(pod::LABEL_MANAGED.to_string(), "true".to_string())]);
        let sandboxes = self
            .cri
            .runtime
            .clone()
            .list_pod_sandbox(v1::ListPodSandboxRequest {
                filter: Some(v1::PodSandboxFilter { label_selector: managed.clone(), ..Default::default() }),
            })
            .await
            .map_err(CriError::call("ListPodSandbox"))?
            .into_inner()
            .items;
        let containers = self.list_containers(managed).await?;
        Ok((sandboxes, containers))
    }

    async fn list_containers(&self, labels: HashMap<String, String>) -> Result<Vec<v1::Container>, KubeletError> {
        Ok(self
            .cri
            .runtime
            .clone()
            .list_containers(v1::ListContainersRequest {
                filter: Some(v1::ContainerFilter { label_selector: labels, ..Default::default() }),
            })
            .await
            .map_err(CriError::call("ListContainers"))?
            .into_inner()
            .containers)
    }

    async fn sandboxes_of(&self, uid: &str) -> Result<Vec<v1::PodSandbox>, KubeletError> {
        let labels = HashMap::from([(pod::LABEL_POD_UID.to_string(), uid.to_string())]);
        Ok(self
            .cri
            .runtime
            .clone()
            .list_pod_sandbox(v1::ListPodSandboxRequest {
                filter: Some(v1::PodSandboxFilter { label_selector: labels, ..Default::default() }),
            })
            .await
            .map_err(CriError::call("ListPodSandbox"))?
            .into_inner()
            .items)
    }

    /// A ConfigMap or Secret changed: the pods of its namespace sync again (volumes, as upstream, follow it).
    fn namespace_due(&self, changed: Option<Value>) {
        // One field of a ConfigMap or a Secret, whichever changed: read as it is stored.
        let Some(ns) = changed.as_ref().map(|o| str_at(o, "/metadata/namespace")) else { return };
        let now = Instant::now();
        for m in self.pods.lock().expect("not poisoned").values_mut().filter(|m| m.namespace == ns) {
            m.due = Some(now);
        }
    }

    /// Records an Event about a pod (in the background: a sync does not wait for it).
    pub fn event(&self, ns: &str, pod: &str, uid: &str, ty: &str, reason: &str, message: &str) {
        let t = orchestrator_apimachinery::registry::now();
        let suffix = &orchestrator_apimachinery::registry::new_uid().replace('-', "")[..16];
        let e = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": format!("{pod}.{suffix}"), "namespace": ns},
            "involvedObject": {"kind": "Pod", "apiVersion": "v1", "namespace": ns, "name": pod, "uid": uid},
            "reason": reason, "message": message, "type": ty,
            "source": {"component": "kubelet", "host": self.cfg.node_name},
            "firstTimestamp": t, "lastTimestamp": t, "count": 1,
            "reportingComponent": "kubelet", "reportingInstance": self.cfg.node_name,
        });
        let (api, ns) = (self.api.clone(), ns.to_string());
        tokio::spawn(async move {
            if let Err(e) = api.create("Event", Some(&ns), e).await {
                tracing::debug!("event: {e}");
            }
        });
    }

    /// An Event about `p`; with `once`, only the first time this pod sees the same reason and message.
    fn event_for(&self, p: &Pod, ty: &str, reason: &str, message: &str, once: bool) {
        let (ns, name, uid) = pod::ids(p);
        if once {
            let key = format!("{reason}\n{message}");
            let mut pods = self.pods.lock().expect("not poisoned");
            if !pods.entry(uid.to_string()).or_default().reported.insert(key) {
                return;
            }
        }
        self.event(ns, name, uid, ty, reason, message);
    }

    pub fn probe_results(&self, container_id: &str) -> probe::Results {
        self.probes.lock().expect("not poisoned").get(container_id).cloned().unwrap_or_default()
    }

    /// Records a probe's finding; a change makes the pod's next sync due at once.
    pub fn set_probe_result(&self, uid: &str, container_id: &str, f: impl FnOnce(&mut probe::Results)) {
        let changed = {
            let mut probes = self.probes.lock().expect("not poisoned");
            let r = probes.entry(container_id.to_string()).or_default();
            let before = (r.ready, r.started);
            f(r);
            before != (r.ready, r.started)
        };
        if changed {
            self.remember(uid, |m| m.due = Some(Instant::now()));
        }
    }

    /// Starts the probe tasks of a running container once.
    fn ensure_probes(self: &Arc<Self>, p: &Pod, c: &Container, container_id: &str, ip: &str) {
        let (ns, name, uid) = pod::ids(p);
        let kinds = probe::kinds(c);
        {
            let mut probes = self.probes.lock().expect("not poisoned");
            let r = probes.entry(container_id.to_string()).or_default();
            if r.running {
                return;
            }
            r.running = true;
            r.uid = uid.to_string();
            // Without a startup probe the container counts as started, without readiness as ready.
            r.started = !kinds.iter().any(|(k, _)| *k == probe::Kind::Startup);
            r.ready = !kinds.iter().any(|(k, _)| *k == probe::Kind::Readiness);
        }
        let grace = pod::grace_period(p, None);
        for (kind, spec) in kinds {
            let target = probe::Probe {
                namespace: ns.to_string(),
                pod: name.to_string(),
                uid: uid.to_string(),
                container_id: container_id.to_string(),
                kind,
                container: c.clone(),
                spec,
                pod_ip: ip.to_string(),
                grace,
            };
            tokio::spawn(probe::run(self.clone(), target));
        }
    }

    fn remember(&self, uid: &str, f: impl FnOnce(&mut PodMemory)) {
        f(self.pods.lock().expect("not poisoned").entry(uid.to_string()).or_default());
    }

    fn log_dir(&self, p: &Pod) -> PathBuf {
        self.cfg.dir.join("logs").join(pod::pod_dir_name(p))
    }

    /// Stops and removes every sandbox of a pod (its containers with them), its volumes and logs.
    async fn remove_pod(&self, uid: &str) -> Result<(), KubeletError> {
        for s in self.sandboxes_of(uid).await? {
            self.remove_sandbox(&s.id).await?;
        }
        self.tokens.forget(uid);
        volumes::remove(&self.cfg.dir, uid).map_err(|e| KubeletError::Io {
            op: "remove volumes",
            path: volumes::pod_volumes_dir(&self.cfg.dir, uid),
            source: std::io::Error::other(e.to_string()),
        })?;
        if let Some(d) = pod_log_dir_of(&self.cfg.dir.join("logs"), uid) {
            let _ = std::fs::remove_dir_all(d);
        }
        Ok(())
    }

    async fn remove_sandbox(&self, id: &str) -> Result<(), KubeletError> {
        let mut rs = self.cri.runtime.clone();
        let mut r = rs.stop_pod_sandbox(v1::StopPodSandboxRequest { pod_sandbox_id: id.to_string() }).await;
        // A power cut can leave libcni's cached result of this sandbox cut
        // short; every network teardown then fails on it. Drop what does
        // not parse and stop again (the plugins' DEL needs only the config).
        if let Err(s) = &r
            && cni::is_unreadable_cached_result(s.message())
        {
            let dropped = cni::drop_unreadable_results(std::path::Path::new(cni::RESULTS_DIR), id);
            if !dropped.is_empty() {
                tracing::warn!(
                    sandbox = id,
                    ?dropped,
                    "removed unreadable CNI cached results; stopping the sandbox again"
                );
                r = rs.stop_pod_sandbox(v1::StopPodSandboxRequest { pod_sandbox_id: id.to_string() }).await;
            }
        }
        if let Err(s) = r.map_err(CriError::call("StopPodSandbox"))
            && !s.is_not_found()
        {
            return Err(s.into());
        }
        let r = rs.remove_pod_sandbox(v1::RemovePodSandboxRequest { pod_sandbox_id: id.to_string() }).await;
        match r.map_err(CriError::call("RemovePodSandbox")) {
            Err(s) if !s.is_not_found() => Err(s.into()),
            _ => Ok(()),
        }
    }

    /// A pod being deleted: SIGTERM its containers, SIGKILL after the grace
    /// period, remove the sandbox, then delete the object for good.
    async fn terminate(&self, p: &Pod) -> Result<(), KubeletError> {
        let (ns, name, uid) = pod::ids(p);
        let uid = uid.to_string();
        let grace = pod::grace_period(p, Some(()));
        let labels = HashMap::from([(pod::LABEL_POD_UID.to_string(), uid.clone())]);
        let mut stops = tokio::task::JoinSet::new();
        for c in self.list_containers(labels).await? {
            if c.state == v1::ContainerState::ContainerRunning as i32 {
                let name = c.labels.get(pod::LABEL_CONTAINER_NAME).cloned().unwrap_or_default();
                self.event_for(p, "Normal", "Killing", &format!("Stopping container {name}"), false);
                let mut rs = self.cri.runtime.clone();
                stops.spawn(async move {
                    rs.stop_container(v1::StopContainerRequest { container_id: c.id, timeout: grace }).await
                });
            }
        }
        while let Some(r) = stops.join_next().await {
            if let Ok(Err(s)) = r {
                tracing::debug!("stop container: {s}");
            }
        }
        self.remove_pod(&uid).await?;
        match self.api.delete_now("Pod", Some(ns), name, &uid).await {
            Err(e) if e.code != 404 && e.code != 409 => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// The runtime's view of a pod's containers in one sandbox, newest attempt first per name.
    async fn observe(&self, sandbox: &str) -> Result<HashMap<String, Vec<Observed>>, KubeletError> {
        let list = self
            .cri
            .runtime
            .clone()
            .list_containers(v1::ListContainersRequest {
                filter: Some(v1::ContainerFilter { pod_sandbox_id: sandbox.to_string(), ..Default::default() }),
            })
            .await
            .map_err(CriError::call("ListContainers"))?
            .into_inner()
            .containers;
        let mut out: HashMap<String, Vec<Observed>> = HashMap::new();
        for c in list {
            let r = self
                .cri
                .runtime
                .clone()
                .container_status(v1::ContainerStatusRequest { container_id: c.id.clone(), verbose: false })
                .await;
            let Some(s) = r.ok().and_then(|r| r.into_inner().status) else { continue };
            let name = s.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
            out.entry(name).or_default().push(Observed::from_status(&s));
        }
        for v in out.values_mut() {
            v.sort_by(|a, b| b.attempt.cmp(&a.attempt).then(b.created_at.cmp(&a.created_at)));
        }
        Ok(out)
    }

    /// Makes sure the image is present under the container's pull policy; returns its reference.
    async fn ensure_image(&self, p: &Pod, c: &Container) -> Result<String, Waiting> {
        let uid = pod::ids(p).2;
        let image = c.image.clone().unwrap_or_default();
        let name = c.name.clone();
        let spec = v1::ImageSpec { image: image.clone(), ..Default::default() };
        let mut is = self.cri.images.clone();
        let present = is
            .image_status(v1::ImageStatusRequest { image: Some(spec.clone()), verbose: false })
            .await
            .ok()
            .and_then(|r| r.into_inner().image)
            .map(|i| i.id);
        let policy = pod::pull_policy(c);
        match (policy, present) {
            ("Never", None) => {
                return Err(Waiting {
                    reason: "ErrImageNeverPull".into(),
                    message: format!("Container image \"{image}\" is not present with pull policy of Never"),
                });
            }
            ("Never" | "IfNotPresent", Some(id)) => {
                self.event_for(
                    p,
                    "Normal",
                    "Pulled",
                    &format!("Container image \"{image}\" already present on machine"),
                    false,
                );
                return Ok(id);
            }
            _ => {}
        }
        let backoff = self.pods.lock().expect("not poisoned").get(uid).and_then(|m| m.pulls.get(&name).copied());
        if let Some((n, until)) = backoff
            && Instant::now() < until
        {
            return Err(Waiting {
                reason: "ImagePullBackOff".into(),
                message: format!("Back-off pulling image \"{image}\" (failed {n} times)"),
            });
        }
        // Each matching credential in turn, anonymous when none matches (as upstream).
        let auths = self.pull_credentials(p, &image).await;
        let attempts: Vec<Option<v1::AuthConfig>> =
            if auths.is_empty() { vec![None] } else { auths.into_iter().map(Some).collect() };
        let mut pulled = Err(tonic::Status::invalid_argument("no pull attempted"));
        for auth in attempts {
            pulled =
                is.pull_image(v1::PullImageRequest { image: Some(spec.clone()), auth, sandbox_config: None }).await;
            if pulled.is_ok() {
                break;
            }
        }
        match pulled {
            Ok(r) => {
                self.remember(uid, |m| {
                    m.pulls.remove(&name);
                });
                self.event_for(p, "Normal", "Pulled", &format!("Successfully pulled image \"{image}\""), false);
                Ok(r.into_inner().image_ref)
            }
            Err(s) => {
                let n = backoff.map_or(1, |(n, _)| n + 1);
                let delay = Duration::from_secs(pod::backoff_seconds(n));
                self.remember(uid, |m| {
                    m.pulls.insert(name.clone(), (n, Instant::now() + delay));
                    m.due = Some(Instant::now() + delay);
                });
                let message = format!("failed to pull image \"{image}\": {}", s.message());
                self.event_for(
                    p,
                    "Warning",
                    "Failed",
                    &format!("Failed to pull image \"{image}\": {}", s.message()),
                    false,
                );
                Err(Waiting { reason: "ErrImagePull".into(), message })
            }
        }
    }

    /// The credentials of the pod's imagePullSecrets for `image`; a Secret that
    /// cannot be read is reported and skipped (as upstream).
    async fn pull_credentials(&self, p: &Pod, image: &str) -> Vec<v1::AuthConfig> {
        let ns = pod::ids(p).0;
        let mut secrets = Vec::new();
        let names = p.spec.iter().flat_map(|s| s.image_pull_secrets.iter().flatten()).map(|s| s.name.as_str());
        for name in names.filter(|n| !n.is_empty()) {
            match self.api.get("Secret", Some(ns), name).await {
                Ok(o) => secrets.push(pod::object_data("Secret", &o)),
                Err(e) => self.event_for(
                    p,
                    "Warning",
                    "FailedToRetrieveImagePullSecret",
                    &format!(
                        "Unable to retrieve some image pull secrets ({name}); attempting to pull the image may not succeed: {}",
                        e.message
                    ),
                    true,
                ),
            }
        }
        credentials::for_image(image, &secrets)
    }

    /// Pull, create and start one attempt of a container; `target`: the
    /// container whose PID namespace it joins (an ephemeral container's target).
    #[allow(clippy::too_many_arguments)]
    async fn start_container(
        &self,
        p: &Pod,
        c: &Container,
        sandbox_id: &str,
        sandbox_cfg: &v1::PodSandboxConfig,
        attempt: u32,
        vols: &BTreeMap<String, PathBuf>,
        target: Option<&str>,
    ) -> Result<(), Waiting> {
        let image = self.ensure_image(p, c).await;
        timing::mark("image");
        let image = match image {
            Ok(i) => i,
            Err(w) => {
                if w.reason == "ErrImageNeverPull" {
                    self.event_for(p, "Warning", "ErrImageNeverPull", &w.message, true);
                }
                return Err(w);
            }
        };
        let config_err = |e: pod::ConfigError| {
            self.event_for(p, "Warning", "Failed", &format!("Error: {}", e.0), true);
            Waiting { reason: "CreateContainerConfigError".into(), message: e.0 }
        };
        let refs = self
            .prefetch_or_last(p)
            .await
            .map_err(|e| Waiting { reason: "CreateContainerConfigError".into(), message: e.to_string() })?;
        timing::mark("lookups");
        let env = pod::environment(p, c, &*refs).map_err(config_err)?;
        let mut mounts = volumes::mounts(c, vols).map_err(config_err)?;
        claims::read_only(p, c, &mut mounts);
        let mut config = pod::container_config(p, c, sandbox_cfg, &image, attempt, &env, mounts).map_err(config_err)?;
        if let Some(id) = target {
            ephemeral::share_pid(&mut config, id);
        }
        let mut rs = self.cri.runtime.clone();
        let create_err =
            |s: tonic::Status| Waiting { reason: "CreateContainerError".into(), message: s.message().to_string() };
        let turn = Turns::take(&self.turns.containers).await;
        timing::mark("container-turn");
        let id = rs
            .create_container(v1::CreateContainerRequest {
                pod_sandbox_id: sandbox_id.to_string(),
                config: Some(config),
                sandbox_config: Some(sandbox_cfg.clone()),
            })
            .await
            .map_err(create_err);
        timing::mark("CreateContainer");
        let id = id?.into_inner().container_id;
        let name = &c.name;
        self.event_for(p, "Normal", "Created", &format!("Created container {name}"), false);
        let started = rs.start_container(v1::StartContainerRequest { container_id: id.clone() }).await;
        drop(turn);
        timing::mark("StartContainer");
        timing::worked();
        match started {
            Ok(_) => self.event_for(p, "Normal", "Started", &format!("Started container {name}"), false),
            // A container that cannot start (bad command…) is reported as exited by the runtime; keep it.
            Err(s) => self.event_for(p, "Warning", "Failed", &format!("Error: {}", s.message()), false),
        }
        Ok(())
    }

    async fn sync_pod(self: &Arc<Self>, p: &Pod) -> Result<(), KubeletError> {
        let uid = pod::ids(p).2.to_string();
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or_default();
        let sandboxes = self.sandboxes_of(&uid).await?;
        timing::mark("ListPodSandbox");
        if phase == "Succeeded" || phase == "Failed" {
            for s in sandboxes.iter().filter(|s| s.state == v1::PodSandboxState::SandboxReady as i32) {
                let mut rs = self.cri.runtime.clone();
                let r = rs.stop_pod_sandbox(v1::StopPodSandboxRequest { pod_sandbox_id: s.id.clone() }).await;
                r.map_err(CriError::call("StopPodSandbox"))?;
            }
            return Ok(());
        }
        let refs = self.prefetch_or_last(p).await?;
        let claimed = self.claims_or_last(p).await;
        timing::mark("lookups");
        let claimed = match claimed {
            Ok(c) => c,
            Err(why) => {
                // As upstream: the pod waits for its claims, tried again shortly.
                let message = format!("Unable to attach or mount volumes: {why}");
                self.event_for(p, "Warning", "FailedMount", &message, true);
                self.remember(&uid, |m| m.due = Some(Instant::now() + Duration::from_secs(2)));
                let w = Waiting { reason: "ContainerCreating".into(), message };
                return self.write_status(p, None, &HashMap::new(), &all_waiting(p, w)).await;
            }
        };
        let (pc, dir) = (p.clone(), self.cfg.dir.clone());
        let vols = blocking(move || volumes::prepare(&dir, &pc, &*refs)).await;
        timing::mark("volumes");
        let vols = match vols {
            Ok(mut v) => {
                v.extend(claimed);
                v
            }
            Err(e) => {
                let w =
                    Waiting { reason: "ContainerCreating".into(), message: format!("MountVolume.SetUp failed: {e}") };
                self.event_for(p, "Warning", "FailedMount", &w.message, true);
                return self.write_status(p, None, &HashMap::new(), &all_waiting(p, w)).await;
            }
        };
        let attempt = sandboxes.iter().filter_map(|s| s.metadata.as_ref().map(|m| m.attempt + 1)).max().unwrap_or(0);
        let ready = sandboxes
            .iter()
            .filter(|s| s.state == v1::PodSandboxState::SandboxReady as i32)
            .max_by_key(|s| s.created_at);
        let log_dir = self.log_dir(p);
        let sandbox_cfg = pod::sandbox_config(
            p,
            &log_dir.to_string_lossy(),
            ready.and_then(|s| s.metadata.as_ref()).map_or(attempt, |m| m.attempt),
            pod::dns_config(p, self.cluster_dns, || std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()),
        );
        let sandbox_id = match ready {
            Some(s) => s.id.clone(),
            None => {
                for s in &sandboxes {
                    self.remove_sandbox(&s.id).await?;
                }
                std::fs::create_dir_all(&log_dir).map_err(|source| KubeletError::Io {
                    op: "create",
                    path: log_dir.clone(),
                    source,
                })?;
                let turn = Turns::take(&self.turns.sandboxes).await;
                timing::mark("sandbox-turn");
                let r = self
                    .cri
                    .runtime
                    .clone()
                    .run_pod_sandbox(v1::RunPodSandboxRequest {
                        config: Some(sandbox_cfg.clone()),
                        runtime_handler: String::new(),
                    })
                    .await;
                drop(turn);
                timing::mark("RunPodSandbox");
                timing::worked();
                match r {
                    Ok(r) => {
                        self.remember(&uid, |m| m.sandbox_failures = (0, None));
                        r.into_inner().pod_sandbox_id
                    }
                    Err(s) => {
                        let w = Waiting {
                            reason: "ContainerCreating".into(),
                            message: format!("failed to create pod sandbox: {}", s.message()),
                        };
                        self.event_for(p, "Warning", "FailedCreatePodSandBox", &w.message, true);
                        let generation = p.metadata.generation.unwrap_or(0);
                        self.remember(&uid, |m| {
                            m.sandbox_failures.0 += 1;
                            let until = Instant::now() + pod::sandbox_backoff(m.sandbox_failures.0);
                            m.sandbox_failures.1 = Some((until, generation));
                            m.due = Some(until);
                        });
                        return self.write_status(p, None, &HashMap::new(), &all_waiting(p, w)).await;
                    }
                }
            }
        };
        let observed = self.observe(&sandbox_id).await?;
        timing::mark("observe");
        let spec = p.spec.clone().unwrap_or_default();
        let policy = match spec.restart_policy.as_deref().unwrap_or_default() {
            "" => "Always",
            r => r,
        };
        let mut waiting: HashMap<String, Waiting> = HashMap::new();
        let now_ns = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64;
        let mut due: Option<Duration> = None;
        let mut init_done = true;
        let init = spec.init_containers.as_deref().unwrap_or_default();
        for (is_init, c) in init.iter().map(|c| (true, c)).chain(spec.containers.iter().map(|c| (false, c))) {
            if !is_init && !init_done {
                break;
            }
            let name = c.name.clone();
            let history = observed.get(&name).map(Vec::as_slice).unwrap_or_default();
            let latest = history.first();
            let start_attempt = match latest {
                None => Some(0),
                Some(o) if o.state == v1::ContainerState::ContainerExited => {
                    let succeeded_init = is_init && o.exit_code == 0;
                    let restart = !succeeded_init
                        && pod::should_restart(
                            if is_init && policy == "Always" { "OnFailure" } else { policy },
                            o.exit_code,
                        );
                    if restart {
                        let wait =
                            if o.attempt == 0 { 0 } else { pod::backoff_seconds(o.attempt) as i64 * 1_000_000_000 };
                        let left = o.finished_at + wait - now_ns;
                        if left > 0 {
                            let msg = format!(
                                "back-off {}s restarting failed container={name} pod={}_{}({uid})",
                                wait / 1_000_000_000,
                                pod::ids(p).1,
                                pod::ids(p).0
                            );
                            let text = format!("Back-off restarting failed container {name} (restart {})", o.attempt);
                            self.event_for(p, "Warning", "BackOff", &text, true);
                            waiting.insert(name.clone(), Waiting { reason: "CrashLoopBackOff".into(), message: msg });
                            let d = Duration::from_nanos(left as u64);
                            due = Some(due.map_or(d, |x| x.min(d)));
                            None
                        } else {
                            Some(o.attempt + 1)
                        }
                    } else {
                        None
                    }
                }
                Some(o) if o.state == v1::ContainerState::ContainerCreated => {
                    // Created but never started (an earlier sync was cut short): start it now.
                    let mut rs = self.cri.runtime.clone();
                    if let Err(s) = rs.start_container(v1::StartContainerRequest { container_id: o.id.clone() }).await {
                        tracing::debug!("start container {}: {}", o.id, s.message());
                    }
                    None
                }
                Some(_) => None,
            };
            if let Some(attempt) = start_attempt
                && let Err(w) = self.start_container(p, c, &sandbox_id, &sandbox_cfg, attempt, &vols, None).await
            {
                if w.reason != "ImagePullBackOff" && w.reason != "ErrImagePull" {
                    due = Some(due.map_or(Duration::from_secs(2), |x| x.min(Duration::from_secs(2))));
                }
                waiting.insert(name.clone(), w);
            }
            // Older attempts beyond the previous one are of no more use (logs --previous needs one).
            for old in history.iter().skip(2) {
                let mut rs = self.cri.runtime.clone();
                let _ = rs.remove_container(v1::RemoveContainerRequest { container_id: old.id.clone() }).await;
            }
            if is_init {
                let done = latest.is_some_and(|o| o.state == v1::ContainerState::ContainerExited && o.exit_code == 0)
                    && start_attempt.is_none();
                init_done &= done;
            }
        }
        self.start_ephemeral(p, &sandbox_id, &sandbox_cfg, &observed, &vols, &mut waiting).await;
        if let Some(d) = due {
            self.remember(&uid, |m| m.due = Some(Instant::now() + d));
        }
        timing::mark("ephemeral");
        // The runtime's state as this sync leaves it, taken before the
        // read-back the status is made of: what changes after it differs
        // from it, and the pod syncs again.
        let left = self.runtime_digest(&uid).await;
        // Read back what the starts did, for the status.
        let observed = self.observe(&sandbox_id).await?;
        let status = self
            .cri
            .runtime
            .clone()
            .pod_sandbox_status(v1::PodSandboxStatusRequest { pod_sandbox_id: sandbox_id.clone(), verbose: false })
            .await
            .map_err(CriError::call("PodSandboxStatus"))?
            .into_inner()
            .status;
        timing::mark("read-back");
        let ip = status.and_then(|s| s.network).map(|n| n.ip).filter(|ip| !ip.is_empty());
        let ip = if spec.host_network == Some(true) { Some(self.host_ip.clone()) } else { ip };
        if let Some(ip) = &ip {
            for c in &spec.containers {
                let latest = observed.get(&c.name).and_then(|h| h.first());
                if let Some(o) = latest.filter(|o| o.state == v1::ContainerState::ContainerRunning) {
                    self.ensure_probes(p, c, &o.id, ip);
                }
            }
        }
        let settled = waiting.is_empty();
        let stored = self.write_status_read(p, ip, &observed, &waiting).await?;
        // A pod this sync left Running with every container running (read
        // back after `left`: none can have exited before it) and nothing
        // waiting: its own status
        // write (and the starts) would make the next pass sync it again for
        // nothing, so remember the pod as written and the runtime as left —
        // unless someone else changed the pod meanwhile. Anything else
        // (a wait, a back-off shown on the next sync, a finished pod whose
        // sandbox the next sync stops) syncs again as before.
        if let (Some(stored), Some(left)) = (stored, left)
            && settled
            && all_running(&stored)
            && same_but_status(p, &stored)
        {
            let rv = stored.metadata.resource_version.clone().unwrap_or_default();
            self.remember(&uid, |m| m.seen = Some((rv, left)));
        }
        Ok(())
    }

    /// The digest of one pod's sandboxes and containers (as [`runtime_digests`]); `None` when the runtime does not answer.
    async fn runtime_digest(&self, uid: &str) -> Option<u64> {
        let labels = HashMap::from([(pod::LABEL_POD_UID.to_string(), uid.to_string())]);
        let sandboxes = self.sandboxes_of(uid).await.ok()?;
        let containers = self.list_containers(labels).await.ok()?;
        Some(runtime_digests(&sandboxes, &containers).get(uid).copied().unwrap_or(0))
    }

    /// Computes the pod's status and writes it when it differs.
    async fn write_status(
        &self,
        p: &Pod,
        ip: Option<String>,
        observed: &HashMap<String, Vec<Observed>>,
        waiting: &HashMap<String, Waiting>,
    ) -> Result<(), KubeletError> {
        self.write_status_read(p, ip, observed, waiting).await.map(|_| ())
    }

    /// [`Kubelet::write_status`], returning the pod as stored afterwards (`None`: gone, or not readable).
    async fn write_status_read(
        &self,
        p: &Pod,
        ip: Option<String>,
        observed: &HashMap<String, Vec<Observed>>,
        waiting: &HashMap<String, Waiting>,
    ) -> Result<Option<Pod>, KubeletError> {
        let spec = p.spec.clone().unwrap_or_default();
        let statuses = |containers: &[Container]| -> Vec<ContainerStatus> {
            containers
                .iter()
                .map(|c| {
                    let name = c.name.as_str();
                    let h = observed.get(name).map(Vec::as_slice).unwrap_or_default();
                    let running = h.first().filter(|o| o.state == v1::ContainerState::ContainerRunning);
                    let probes = running.map(|o| self.probe_results(&o.id)).unwrap_or_default();
                    let ready = running.is_some() && probes.ready && probes.started && !waiting.contains_key(name);
                    let started = running.is_some() && probes.started;
                    pod::container_status(c, h.first(), h.get(1), waiting.get(name), ready, started)
                })
                .collect()
        };
        let init = statuses(spec.init_containers.as_deref().unwrap_or_default());
        let apps = statuses(&spec.containers);
        let debug = ephemeral::statuses(statuses(&ephemeral::containers(p)));
        let init_done = init.iter().all(|s| pod::exit_code(s) == Some(0));
        let init_failed = spec.restart_policy.as_deref() == Some("Never")
            && init.iter().any(|s| pod::exit_code(s).is_some_and(|c| c != 0));
        let apps: Vec<ContainerStatus> = if init_done {
            apps
        } else {
            apps.into_iter()
                .map(|mut s| {
                    if s.container_id.is_none() {
                        s.state = Some(pod::pod_initializing());
                    }
                    s
                })
                .collect()
        };
        let phase = if init_failed { "Failed" } else { pod::phase(p, &apps, init_done) };
        let all_ready = !apps.is_empty() && apps.iter().all(|s| s.ready);
        // API times are whole seconds.
        let now = Timestamp::now();
        let now = Time(Timestamp::from_second(now.as_second()).unwrap_or(now));
        let conditions = vec![
            pod::condition(p, "PodReadyToStartContainers", ip.is_some(), None, &now),
            pod::condition(p, "Initialized", init_done, Some("ContainersNotInitialized"), &now),
            pod::condition(p, "Ready", all_ready, Some("ContainersNotReady"), &now),
            pod::condition(p, "ContainersReady", all_ready, Some("ContainersNotReady"), &now),
            pod::condition(p, "PodScheduled", true, None, &now),
        ];
        let status = PodStatus {
            phase: Some(phase.to_string()),
            conditions: Some(conditions),
            host_ip: Some(self.host_ip.clone()),
            host_ips: Some(vec![HostIP { ip: self.host_ip.clone() }]),
            qos_class: Some(pod::qos_class(p).to_string()),
            container_statuses: Some(apps),
            init_container_statuses: Some(init).filter(|i| !i.is_empty()),
            ephemeral_container_statuses: Some(debug).filter(|d| !d.is_empty()),
            pod_ips: ip.clone().map(|ip| vec![PodIP { ip }]),
            pod_ip: ip,
            ..Default::default()
        };
        let (ns, name, uid) = pod::ids(p);
        let uid = uid.to_string();
        let r = self
            .api
            .modify_read("Pod", Some(ns), name, Part::Status, move |o| {
                let changed = typed::change_as(o, "Pod", |stored: &mut Pod| {
                    // Another pod of the same name, or one being deleted, is left alone.
                    if stored.metadata.uid.as_deref() != Some(uid.as_str())
                        || stored.metadata.deletion_timestamp.is_some()
                    {
                        return false;
                    }
                    let old = stored.status.take();
                    let start_time = old.as_ref().and_then(|s| s.start_time.clone()).unwrap_or_else(|| now.clone());
                    let new = PodStatus { start_time: Some(start_time), ..status.clone() };
                    let differs = old.as_ref() != Some(&new);
                    stored.status = Some(new);
                    differs
                });
                changed.unwrap_or_else(|e| {
                    tracing::warn!("pod status: {e}");
                    false
                })
            })
            .await;
        timing::mark("status");
        if r.is_ok() && phase == "Running" {
            node::boot_step(&node::FIRST_POD_RUNNING, "first-pod-running");
        }
        match r {
            Err(e) if e.code != 404 => Err(e.into()),
            Err(_) => Ok(None),
            Ok(o) => Ok(typed::decode::<Pod>(o, "Pod").ok()),
        }
    }
}

/// Whether the pod is Running with every (app) container running.
fn all_running(p: &Pod) -> bool {
    let status = p.status.as_ref();
    let containers = status.and_then(|s| s.container_statuses.as_deref()).unwrap_or_default();
    status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && !containers.is_empty()
        && containers.iter().all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
}

/// Whether `after` is `before` with only its status (and so its
/// resourceVersion and managed fields) changed: the kubelet's own write.
fn same_but_status(before: &Pod, after: &Pod) -> bool {
    let meta = |p: &Pod| {
        let mut m = p.metadata.clone();
        m.resource_version = None;
        m.managed_fields = None;
        m
    };
    before.spec == after.spec && meta(before) == meta(after)
}

fn all_waiting(p: &Pod, w: Waiting) -> HashMap<String, Waiting> {
    let spec = p.spec.iter();
    spec.flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
        .map(|c| (c.name.clone(), w.clone()))
        .collect()
}

/// The log directory of a pod by uid (`<ns>_<name>_<uid>`).
fn pod_log_dir_of(logs: &std::path::Path, uid: &str) -> Option<PathBuf> {
    std::fs::read_dir(logs)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(&format!("_{uid}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(id: &str, uid: &str, state: v1::PodSandboxState) -> v1::PodSandbox {
        v1::PodSandbox {
            id: id.into(),
            state: state as i32,
            labels: HashMap::from([(pod::LABEL_POD_UID.to_string(), uid.to_string())]),
            ..Default::default()
        }
    }

    fn container(id: &str, uid: &str, state: v1::ContainerState) -> v1::Container {
        v1::Container {
            id: id.into(),
            state: state as i32,
            labels: HashMap::from([(pod::LABEL_POD_UID.to_string(), uid.to_string())]),
            ..Default::default()
        }
    }

    /// containerd lists in no fixed order: a pod whose sandboxes and
    /// containers did not change keeps its digest (else every relist would
    /// sync a pod of several containers again), and a changed state changes it.
    #[test]
    fn runtime_digests_do_not_depend_on_the_listing_order() {
        use v1::ContainerState::{ContainerExited, ContainerRunning};
        let sandboxes = vec![
            sandbox("s1", "a", v1::PodSandboxState::SandboxReady),
            sandbox("s2", "b", v1::PodSandboxState::SandboxReady),
        ];
        let mut containers = vec![
            container("c1", "a", ContainerRunning),
            container("c2", "a", ContainerRunning),
            container("c3", "a", ContainerExited),
            container("c4", "b", ContainerRunning),
        ];
        let first: HashMap<String, u64> =
            runtime_digests(&sandboxes, &containers).into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        containers.reverse();
        let mut sandboxes_reversed = sandboxes.clone();
        sandboxes_reversed.reverse();
        let second: HashMap<String, u64> =
            runtime_digests(&sandboxes_reversed, &containers).into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_eq!(first, second);
        assert_ne!(first["a"], first["b"]);
        containers[0].state = ContainerExited as i32; // c4, pod b
        let third = runtime_digests(&sandboxes, &containers);
        assert_eq!(third["a"], first["a"]);
        assert_ne!(third["b"], first["b"]);
    }

    /// The kubelet's own status write is not a change to sync again for;
    /// a label, a deletion or a spec change made meanwhile is.
    #[test]
    fn only_a_status_change_is_the_kubelets_own_write() {
        let before: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u1", "resourceVersion": "10"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        }))
        .unwrap();
        let mut after = before.clone();
        after.metadata.resource_version = Some("11".into());
        after.status = Some(PodStatus { phase: Some("Running".into()), ..Default::default() });
        assert!(same_but_status(&before, &after));
        let mut labelled = after.clone();
        labelled.metadata.labels = Some(BTreeMap::from([("x".to_string(), "y".to_string())]));
        assert!(!same_but_status(&before, &labelled));
        let mut deleted = after.clone();
        deleted.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        assert!(!same_but_status(&before, &deleted));
        let mut respecced = after;
        respecced.spec.as_mut().unwrap().containers[0].image = Some("busybox:2".into());
        assert!(!same_but_status(&before, &respecced));
    }
}

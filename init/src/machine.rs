//! init's side of the machine API, served on its Unix socket: the work
//! behind every RPC that apid forwards, and the config lifecycle.
//!
//! Applying a config is planned in memory first (verify the signature,
//! validate, check the version, compute the diff and whether a reboot is
//! needed) and only then written, in one atomic rename.

mod certs;
mod cluster_store;
pub mod etcd;

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use machinery::api::{self, ApplyMode, NodeMode, machine_service_server::MachineService};
use machinery::config::{self, MachineConfig};
use machinery::slots::View;
use machinery::slots::rpi::AtBoot;
use machinery::{boot_steps, layout};
use tokio::sync::{Mutex, broadcast, mpsc, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::InitError;
use crate::journal::Journal;
use crate::kmsg::KernelLog;
use crate::store::{ConfigStore, Signed, Slot, VerifyFailure};
use crate::supervisor::{ServiceSpec, Supervisor, SupervisorError, event, proc_field, rss_kib, write_bytes};
use crate::upgrade::{self, Slots};

/// What the main loop does once the RPC has answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    Reboot,
    /// Reboot into the armed trial slot (a Raspberry Pi's `"0 tryboot"`);
    /// only the end of `serve` turns a [`PowerAction::Reboot`] into this.
    Tryboot,
    PowerOff,
}

/// Settings that do not come from the machine config.
#[derive(Debug, Clone, Default)]
pub struct NodeSettings {
    /// Overrides where apid listens (host mode, tests).
    pub api_listen: Option<String>,
    /// Extra names for apid's serving certificate.
    pub extra_sans: Vec<String>,
    /// The lifetime of apid's serving certificate when init issues it
    /// (none: `machinery::pki::LEAF_LIFETIME`); apid asks for a new one at
    /// 70–90 % of it.
    pub apid_cert_lifetime: Option<std::time::Duration>,
    /// PID 1: keep the clock, with the image's build time here as its
    /// first floor (`layout::ROOT_BUILD_TIME`).
    pub clock_floor: Option<std::path::PathBuf>,
    /// The A/B disk, when the node has one (PID 1, or host mode with --disk).
    pub slots: Option<crate::upgrade::SlotSettings>,
    /// The control plane, run on a `controlplane` node.
    pub orchestrator: Option<OrchestratorSettings>,
    /// What PID 1 found of its data partitions.
    pub storage: Storage,
    /// Where this boot's steps are recorded (its services get the path in
    /// `machinery::boot_steps::ENV`).
    pub boot_steps: Option<crate::steps::StepLog>,
    /// PID 1: the file that tells the last step of the reboot to wipe
    /// EPHEMERAL (`reset::RESET_REQUESTED`); host mode has none (its state
    /// directory holds everything).
    pub reset_marker: Option<std::path::PathBuf>,
}

/// What PID 1 found of STATE and EPHEMERAL, and where the copy of the
/// machine API's trust is kept (host mode: all well; no copy unless asked).
#[derive(Debug, Clone, Default)]
pub struct Storage {
    /// Why STATE could not be mounted (nothing was formatted): safe mode.
    pub state_lost: Option<String>,
    /// What was done to the partitions, reported as events (repairs, a
    /// tmpfs in place of EPHEMERAL).
    pub notes: Vec<String>,
    /// The copy of the trust record outside STATE (`layout::TRUST_COPY`).
    pub trust_copy: Option<std::path::PathBuf>,
}

/// What PID 1 (or host mode's stand-ins) gives the machine besides its
/// config: the A/B disk, and the clock it keeps.
#[derive(Default)]
pub struct Hardware {
    pub slots: Option<Arc<Slots>>,
    pub clock: Option<Arc<crate::clock::Keeper>>,
}

/// How init runs the orchestrator.
#[derive(Debug, Clone)]
pub struct OrchestratorSettings {
    pub program: std::path::PathBuf,
    /// Its store, CA and admin kubeconfig.
    pub data_dir: std::path::PathBuf,
    /// host:port of the Kubernetes API.
    pub listen: String,
    /// The kubelet and its container runtime, where the node has them.
    pub kubelet: Option<KubeletSettings>,
    /// etcd, where the image carries it (an HA control plane's store).
    pub etcd: Option<etcd::EtcdSettings>,
}

/// The container runtime init runs for the kubelet, and where the kubelet
/// finds what it needs (paths from `machinery::layout` in an image).
#[derive(Debug, Clone)]
pub struct KubeletSettings {
    pub containerd: std::path::PathBuf,
    pub containerd_config: std::path::PathBuf,
    pub cri_socket: std::path::PathBuf,
    pub cni_conf_dir: std::path::PathBuf,
    /// Image archives imported into containerd when the kubelet starts.
    pub image_dir: std::path::PathBuf,
}

/// The service name of the control plane (and of the kubelet with it).
pub const ORCHESTRATOR: &str = "orchestrator";
/// The service name of the container runtime.
pub const CONTAINERD: &str = "containerd";
/// A worker's kubelet directory (`orchestrator kubelet`'s default, on
/// EPHEMERAL): its `pki/` holds the node's own certificate.
const WORKER_KUBELET_DIR: &str = "/var/lib/plinth/kubelet";
/// In the orchestrator's data directory: an upgrade drained this node.
const DRAINED_FOR_UPGRADE: &str = "drained-for-upgrade";
/// How long a drain may take by default (an upgrade's, a reset's).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

struct TryState {
    id: u64,
    deadline: Instant,
}

struct State {
    active: Option<Signed>,
    staged_version: u64,
    trying: Option<TryState>,
    next_try_id: u64,
    /// No config could be read at boot: safe mode, until one is applied.
    safe: Option<Safe>,
}

/// Safe mode: why, and the last configured boot's trust (if recorded).
#[derive(Debug, Clone)]
struct Safe {
    reason: String,
    trust: Option<crate::store::Trust>,
}

pub struct Machine {
    /// `None` when STATE cannot be read (safe mode, no config accepted).
    store: Option<ConfigStore>,
    state: Mutex<State>,
    supervisor: Supervisor,
    events: Arc<Journal<api::Event>>,
    kernel_log: Arc<dyn KernelLog>,
    power: mpsc::Sender<PowerAction>,
    settings: NodeSettings,
    started: Instant,
    maintenance_cert: machinery::pki::CertKey,
    slots: Option<Arc<Slots>>,
    /// PID 1 keeps the clock (no real-time clock on some boards).
    clock: Option<Arc<crate::clock::Keeper>>,
    /// Whether the network is up (or there is none to bring up).
    network_up: watch::Sender<bool>,
    /// Held while the cluster services are being started (or the store
    /// restored): one caller at a time.
    cluster_starting: Mutex<()>,
    /// The serving certificate init last gave apid (PEM), for `Certificates`.
    apid_cert: Mutex<Option<String>>,
    /// `Reset` was asked: STATE is wiped once the services have stopped.
    reset_requested: std::sync::atomic::AtomicBool,
}

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn status_from_verify(e: VerifyFailure) -> Status {
    match e {
        VerifyFailure::Signature(_) => Status::permission_denied(e.to_string()),
        VerifyFailure::NotUtf8(_) | VerifyFailure::Invalid(_) => Status::invalid_argument(e.to_string()),
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

impl From<SupervisorError> for Status {
    fn from(e: SupervisorError) -> Self {
        match e {
            SupervisorError::Unknown(_) => Status::not_found(e.to_string()),
            SupervisorError::Signal(_) => Status::internal(e.to_string()),
        }
    }
}

/// Reads the stored configs at boot: a `try` left pending by a reboot is
/// reverted, a staged config is promoted; a damaged config falls back to
/// the last good copy, then to safe mode; with none, the seed config (a
/// flashed card's first boot) or maintenance mode — unless the node was
/// configured before (a trust record), or the config is of another cluster
/// than the one the node belonged to: safe mode.
fn load_config(
    store: &ConfigStore,
    events: &Journal<api::Event>,
    settings: &NodeSettings,
) -> Result<(Option<Signed>, Option<Safe>), InitError> {
    // A stored config that cannot be read never stops the boot (that
    // would reboot for ever): it is reported and set aside.
    let unreadable = |what: &str, e: &dyn std::fmt::Display| {
        event(events, "config", format!("the {what} config cannot be used: {e}"));
    };
    match store.load(Slot::Previous) {
        Ok(Some(_)) => {
            store.promote(Slot::Previous, Slot::Active)?;
            event(
                events,
                "config",
                "a `try` config was not confirmed before the reboot: reverted to the previous config".into(),
            );
        }
        Ok(None) => {}
        Err(e) => {
            unreadable("previous (try)", &e);
            store.clear(Slot::Previous)?;
        }
    }
    match store.load(Slot::Staged) {
        Ok(Some(staged)) => {
            store.promote(Slot::Staged, Slot::Active)?;
            event(events, "config", format!("staged config version {} is now applied", staged.config.version));
        }
        Ok(None) => {}
        Err(e) => {
            unreadable("staged", &e);
            store.clear(Slot::Staged)?;
        }
    }
    let trust = last_trust(Some(store), events, settings);
    const RECOVER: &str = "apply a config to recover";
    let (mut active, mut safe) = match store.load(Slot::Active) {
        Ok(active) => (active, None),
        Err(e) => {
            unreadable("stored", &e);
            match store.load(Slot::LastGood) {
                Ok(Some(good)) => {
                    event(
                        events,
                        "config",
                        format!("running the last good config (version {}) instead", good.config.version),
                    );
                    store.save(Slot::Active, &good)?;
                    (Some(good), None)
                }
                last => {
                    if let Err(e2) = &last {
                        unreadable("last good", e2);
                    }
                    let reason = format!("the stored config cannot be used ({e}) and there is no good copy");
                    (None, Some(safe_mode(events, reason, trust.clone(), RECOVER)))
                }
            }
        }
    };
    // First boot of a flashed card: the signed config `osctl image
    // flash --config` put on the boot partition (never in safe mode).
    if active.is_none()
        && safe.is_none()
        && let Some(s) = &settings.slots
    {
        active = crate::seed::adopt(&s.disk, store).unwrap_or_else(|e| {
            event(events, "config", format!("seed config not adopted, staying in maintenance mode: {e}"));
            None
        });
        if let Some(a) = &active {
            event(events, "config", format!("config version {} adopted from the seed config", a.config.version));
        }
    }
    let pinned = trust.as_ref().and_then(|t| t.cluster_id.as_deref());
    if let Some(a) = &active
        && let Err(why) = same_cluster(pinned, &a.config)
    {
        let reason = format!("the stored config version {} is refused: {why}", a.config.version);
        return Ok((None, Some(safe_mode(events, reason, trust, RECOVER))));
    }
    match &active {
        Some(s) => {
            event(events, "config", format!("config version {} loaded", s.config.version));
            // The copy a damaged config.signed falls back to.
            let same = matches!(store.load(Slot::LastGood), Ok(Some(g)) if g.bytes == s.bytes);
            if !same && let Err(e) = store.save(Slot::LastGood, s) {
                event(events, "config", format!("keeping a copy of the config: {e}"));
            }
        }
        // No config, but this node was configured before (its STATE lost
        // its files, or was blank and formatted): never maintenance mode.
        None if safe.is_none() && trust.is_some() => {
            let reason = "no stored config, but this node was configured before (its trust record is kept)".into();
            safe = Some(safe_mode(events, reason, trust, RECOVER));
        }
        None if safe.is_none() => {
            event(events, "config", "no config: maintenance mode, waiting for apply-config".into())
        }
        None => {}
    }
    Ok((active, safe))
}

/// The last configured boot's trust: STATE's record, else its copy on
/// EPHEMERAL.
fn last_trust(
    store: Option<&ConfigStore>,
    events: &Journal<api::Event>,
    settings: &NodeSettings,
) -> Option<crate::store::Trust> {
    let unreadable = |e: crate::store::StoreError| {
        event(events, "config", format!("the trust record cannot be used: {e}"));
        None
    };
    let on_state = store.and_then(|s| s.load_trust().unwrap_or_else(unreadable));
    on_state.or_else(|| {
        settings.storage.trust_copy.as_deref().and_then(|p| crate::store::load_trust_at(p).unwrap_or_else(unreadable))
    })
}

/// Enters safe mode, saying why and with what trust (on the console too).
fn safe_mode(events: &Journal<api::Event>, reason: String, trust: Option<crate::store::Trust>, recover: &str) -> Safe {
    let api = if trust.is_some() {
        "keeps its certificates and requires client certificates of the cluster CA"
    } else {
        "has no record of its trust: it trusts no client and answers only `version`"
    };
    event(events, "config", format!("safe mode: {reason}; the machine API {api}; {recover}"));
    Safe { reason, trust }
}

/// Refuses a config of another cluster than the one the node belongs to
/// (`pinned`, from the first applied config that carried a `cluster.id`).
fn same_cluster(pinned: Option<&str>, new: &MachineConfig) -> Result<(), String> {
    match (pinned, new.cluster.id.as_deref()) {
        (Some(p), Some(n)) if p != n => {
            Err(format!("it is a config of cluster {n:?}, and this node belongs to cluster {p:?}"))
        }
        (Some(p), None) => Err(format!(
            "it carries no cluster.id, and this node belongs to cluster {p:?} (add id = {p:?} to [cluster])"
        )),
        _ => Ok(()),
    }
}

impl Machine {
    /// Loads the stored config: a `try` left pending by a reboot is reverted,
    /// a staged config is promoted. `store` is the config store on STATE, or
    /// why STATE cannot be read: then the node comes up in safe mode.
    pub fn boot(
        store: Result<ConfigStore, String>,
        supervisor: Supervisor,
        events: Arc<Journal<api::Event>>,
        kernel_log: Arc<dyn KernelLog>,
        power: mpsc::Sender<PowerAction>,
        settings: NodeSettings,
        hardware: Hardware,
    ) -> Result<Arc<Machine>, InitError> {
        let Hardware { slots, clock } = hardware;
        for note in &settings.storage.notes {
            event(&events, "storage", note.clone());
        }
        let (store, active, safe) = match store {
            Ok(store) => {
                let (active, safe) = load_config(&store, &events, &settings)?;
                (Some(store), active, safe)
            }
            Err(why) => {
                let trust = last_trust(None, &events, &settings);
                let safe = safe_mode(
                    &events,
                    format!("STATE cannot be read ({why})"),
                    trust,
                    "no config is accepted until STATE is repaired or the disk replaced",
                );
                (None, None, Some(safe))
            }
        };
        let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
        names.extend(settings.extra_sans.iter().cloned());
        let maintenance_cert = machinery::pki::self_signed_server(&names)?;
        Ok(Arc::new(Machine {
            store,
            state: Mutex::new(State { active, staged_version: 0, trying: None, next_try_id: 1, safe }),
            supervisor,
            events,
            kernel_log,
            power,
            settings,
            started: Instant::now(),
            maintenance_cert,
            slots,
            clock,
            network_up: watch::Sender::new(false),
            cluster_starting: Mutex::new(()),
            apid_cert: Mutex::new(None),
            reset_requested: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// The network is up: the orchestrator may start.
    pub fn network_is_up(&self) {
        self.network_up.send_replace(true);
    }

    /// Supervises `spec`, telling it where this boot's steps are recorded.
    pub fn supervise(&self, mut spec: ServiceSpec) {
        if let Some(steps) = &self.settings.boot_steps {
            spec.env.push((boot_steps::ENV.into(), steps.path().display().to_string()));
        }
        self.supervisor.add(spec);
    }

    fn supervises(&self, name: &str) -> bool {
        self.supervisor.list().iter().any(|s| s.name == name)
    }

    /// Records the containerd step once its socket accepts a connection.
    fn watch_containerd(&self, socket: std::path::PathBuf) {
        let Some(steps) = self.settings.boot_steps.clone() else { return };
        tokio::spawn(async move {
            // As long as the kubelet waits for it, and then some.
            let deadline = Instant::now() + Duration::from_secs(120);
            while tokio::net::UnixStream::connect(&socket).await.is_err() {
                if Instant::now() >= deadline {
                    tracing::warn!("containerd's socket {} did not answer in 120 s", socket.display());
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            steps.record(boot_steps::CONTAINERD);
        });
    }

    /// Raises the clock to the applied config's CA's notBefore (PID 1):
    /// before the orchestrator or apid checks a certificate it issued.
    pub async fn clock_floor_from_ca(&self) {
        let st = self.state.lock().await;
        if let (Some(clock), Some(active)) = (&self.clock, &st.active) {
            clock.raise_to_ca(&active.config.api.ca_cert);
            clock.raise_to_ca(active.config.kube_ca().cert_pem);
        }
    }

    /// The NTP servers of the applied config (the default without one).
    pub async fn ntp_servers(&self) -> Vec<String> {
        let st = self.state.lock().await;
        st.active.as_ref().map_or_else(
            || config::DEFAULT_NTP.iter().map(|s| s.to_string()).collect(),
            |a| a.config.machine.ntp_servers(),
        )
    }

    /// The applied config's network section, if a config is applied.
    pub async fn active_network(&self) -> Option<config::Network> {
        self.state.lock().await.active.as_ref().map(|s| s.config.machine.network.clone())
    }

    /// Starts the services the applied config asks for that are not running
    /// yet: containerd and the orchestrator — on a `controlplane` node the
    /// control plane with the kubelet in the same process, on a `worker`
    /// the kubelet alone, joined to the cluster endpoint.
    pub async fn start_cluster_services(self: &Arc<Self>) {
        let Some(o) = &self.settings.orchestrator else { return };
        let Some(config) = self.state.lock().await.active.as_ref().map(|a| a.config.clone()) else { return };
        let _one = self.cluster_starting.lock().await;
        if self.supervises(ORCHESTRATOR) {
            return;
        }
        let mut ca_files = None;
        if let Some(ca) = orchestrator_ca(&config) {
            let (cert_path, key_path) = (o.data_dir.join("ca.crt"), o.data_dir.join("ca.key"));
            // 0700: the CA key, the store and the admin kubeconfig live here.
            let written = crate::store::private_dir(&o.data_dir)
                .and_then(|_| crate::store::write_private(&cert_path, ca.cert_pem.as_bytes()))
                .and_then(|_| crate::store::write_private(&key_path, ca.key_pem.as_bytes()));
            match written {
                Ok(()) => ca_files = Some((cert_path, key_path)),
                Err(e) => event(&self.events, "service", format!("writing the cluster CA for the orchestrator: {e}")),
            }
        }
        // The bootstrap token: a control plane stores it, a worker joins with it.
        let token_file = config.cluster.token.as_ref().and_then(|t| {
            let path = o.data_dir.join("bootstrap-token");
            match crate::store::private_dir(&o.data_dir).and_then(|_| crate::store::write_private(&path, t.as_bytes()))
            {
                Ok(()) => Some(path),
                Err(e) => {
                    event(&self.events, "service", format!("writing the bootstrap token for the orchestrator: {e}"));
                    None
                }
            }
        });
        let mut files = ClusterFiles { ca: ca_files, token: token_file, store: Vec::new() };
        // containerd needs neither the network nor the API server: it starts
        // now, while the network comes up.
        match cluster_services(&config, o, &[], &files) {
            Ok(specs) => {
                for s in specs.into_iter().filter(|s| s.name == CONTAINERD && !self.supervises(CONTAINERD)) {
                    self.supervise(s);
                    if let Some(k) = &o.kubelet {
                        self.watch_containerd(k.cri_socket.clone());
                    }
                }
            }
            Err(why) => {
                event(&self.events, "service", why);
                return;
            }
        }
        // The API server's certificate names the addresses the node has.
        let _ = self.network_up.subscribe().wait_for(|up| *up).await;
        if let Some(member) = etcd::plan(&config) {
            match self.start_etcd(&config, o, &member).await {
                Ok(store) => files.store = store,
                Err(why) => {
                    event(&self.events, "service", why);
                    return;
                }
            }
        }
        let names = kube_serving_names(&config, &self.settings);
        match cluster_services(&config, o, &names, &files) {
            Ok(specs) => specs.into_iter().filter(|s| s.name != CONTAINERD).for_each(|s| self.supervise(s)),
            Err(why) => event(&self.events, "service", why),
        }
        if config.cluster.role == config::Role::Controlplane {
            cluster_store::watch_damage(self.events.clone(), o.data_dir.clone());
        }
    }

    /// Starts this control plane's etcd member (joined to the others, or
    /// forming the cluster) and returns the orchestrator's store options.
    async fn start_etcd(
        self: &Arc<Self>,
        config: &MachineConfig,
        o: &OrchestratorSettings,
        member: &etcd::Member,
    ) -> Result<Vec<String>, String> {
        let settings = o.etcd.as_ref().ok_or(
            "cluster.datastore is \"etcd\" but this image carries no etcd (image-builder copies Debian's etcd-server)",
        )?;
        let ca = orchestrator_ca(config).ok_or("an etcd member needs the Kubernetes CA's key (cluster.ca_key)")?;
        let files = etcd::Files::under(&settings.dir);
        let lifetime = settings.cert_lifetime.unwrap_or(machinery::pki::LEAF_LIFETIME);
        etcd::write_certs(member, &ca, &files, lifetime)?;
        if !self.supervises(etcd::ETCD) {
            self.renew_etcd_certs(files.clone(), lifetime);
            let events = self.events.clone();
            let start = etcd::prepare(member, &files, &o.program, |m| event(&events, etcd::ETCD, m)).await;
            event(&self.events, etcd::ETCD, format!("etcd member {} starts ({start:?})", member.name));
            self.supervise(ServiceSpec {
                name: etcd::ETCD.into(),
                program: settings.program.clone(),
                args: etcd::args(member, &files, &start),
                env: vec![("PATH".into(), layout::SERVICE_PATH.into())],
            });
        }
        Ok(etcd::store_args(member, &files))
    }

    /// Renews the etcd member's certificate at [`etcd::renew_after`] its
    /// lifetime, for as long as init runs, from the config applied then
    /// (its CA, the node's name and address). etcd and the orchestrator
    /// take the new files without a restart. Started once, with etcd.
    fn renew_etcd_certs(self: &Arc<Self>, files: etcd::Files, lifetime: Duration) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(etcd::renew_after(lifetime)).await;
                let config = me.state.lock().await.active.as_ref().map(|a| a.config.clone());
                let planned = config.as_ref().and_then(|c| Some((etcd::plan(c)?, orchestrator_ca(c)?)));
                let Some((member, ca)) = planned else {
                    event(
                        &me.events,
                        etcd::ETCD,
                        "etcd's certificate not renewed: the node is no etcd member now".into(),
                    );
                    return;
                };
                let line = match etcd::write_certs(&member, &ca, &files, lifetime) {
                    Ok(()) => format!("etcd member {}'s certificate renewed (valid for {lifetime:?})", member.name),
                    Err(why) => format!("etcd's certificate not renewed: {why}"),
                };
                event(&me.events, etcd::ETCD, line);
            }
        });
    }

    /// Where the pods running before an upgrade are recorded, when this
    /// node runs the kubelet with the control plane.
    fn pods_before_upgrade(&self) -> Option<std::path::PathBuf> {
        let o = self.settings.orchestrator.as_ref().filter(|o| o.kubelet.is_some())?;
        self.supervisor
            .list()
            .iter()
            .any(|s| s.name == ORCHESTRATOR)
            .then(|| o.data_dir.join("pods-before-upgrade.json"))
    }

    /// Runs `orchestrator health` for this node with `args`: Ok when the
    /// node is back at work (or runs no kubelet), else what is missing.
    async fn orchestrator_health(&self, args: &[String]) -> Result<String, String> {
        let Some(o) = self.settings.orchestrator.as_ref().filter(|o| o.kubelet.is_some()) else {
            return Ok(String::new());
        };
        let node = match &self.state.lock().await.active {
            Some(a) if a.config.cluster.role == config::Role::Controlplane => a.config.machine.hostname.clone(),
            _ => return Ok(String::new()),
        };
        let mut cmd = std::process::Command::new(&o.program);
        cmd.arg("health")
            .arg("--kubeconfig")
            .arg(o.data_dir.join("admin.kubeconfig"))
            .args(["--node", &node])
            .args(args);
        let out = crate::supervisor::output(cmd).await.map_err(|e| format!("{}: {e}", o.program.display()))?;
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let said = said.trim().to_string();
        if out.status.success() { Ok(said) } else { Err(said) }
    }

    /// How `orchestrator drain`/`uncordon` reach the API as this node, and
    /// its Node's name: a control plane with its admin kubeconfig, a worker
    /// with its kubelet's own certificate. `None` when the node runs no
    /// kubelet (no pods to move) or has no config.
    async fn node_api(&self) -> Option<(Vec<String>, String)> {
        let o = self.settings.orchestrator.as_ref().filter(|o| o.kubelet.is_some())?;
        let st = self.state.lock().await;
        let c = &st.active.as_ref()?.config;
        let args = match c.cluster.role {
            config::Role::Controlplane => {
                vec!["--kubeconfig".into(), o.data_dir.join("admin.kubeconfig").display().to_string()]
            }
            config::Role::Worker => {
                let endpoints = c.kube_endpoints();
                if endpoints.is_empty() {
                    return None;
                }
                vec!["--server".into(), endpoints.join(","), "--kubelet-dir".into(), WORKER_KUBELET_DIR.into()]
            }
        };
        Some((args, c.machine.hostname.clone()))
    }

    /// Runs `orchestrator <command> --node NAME` as this node with `extra`
    /// arguments: Ok with what it said, Err with why not. Ok("") when the
    /// node runs no kubelet.
    async fn node_tool(&self, command: &str, extra: &[String]) -> Result<String, String> {
        let Some(o) = self.settings.orchestrator.as_ref() else { return Ok(String::new()) };
        let Some((api, node)) = self.node_api().await else { return Ok(String::new()) };
        let mut cmd = std::process::Command::new(&o.program);
        cmd.arg(command).args(&api).args(["--node", &node]).args(extra);
        let out = crate::supervisor::output(cmd).await.map_err(|e| format!("{}: {e}", o.program.display()))?;
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let said = said.trim().to_string();
        if out.status.success() { Ok(said) } else { Err(said) }
    }

    /// Where an upgrade's drain is recorded until the node is uncordoned
    /// (on EPHEMERAL, beside the orchestrator's data: it survives the
    /// reboot, and goes with a reset).
    fn drained_marker(&self) -> Option<std::path::PathBuf> {
        self.settings.orchestrator.as_ref().map(|o| o.data_dir.join(DRAINED_FOR_UPGRADE))
    }

    /// Before an upgrade's reboot: cordons the node and evicts its pods
    /// (none when no other node can take them), recording that it did.
    async fn drain_for_upgrade(&self, timeout: Duration) -> Result<String, String> {
        let args = ["--timeout".to_string(), format!("{}s", timeout.as_secs()), "--only-if-others".into()];
        // Recorded before the node is cordoned: whatever happens next, the
        // node is made schedulable again (a failed drain, the next boot).
        if self.node_api().await.is_some()
            && let Some(marker) = self.drained_marker()
            && let Err(e) = std::fs::write(&marker, b"")
        {
            return Err(format!("write {}: {e}", marker.display()));
        }
        self.node_tool("drain", &args).await
    }

    /// Once the slot the node runs is committed (after an upgrade's trial,
    /// or back on the old slot after a failed one): makes the node
    /// schedulable again if an upgrade drained it. Done by init, not by
    /// osctl, so it happens whether or not the client is still there;
    /// tried every 5 s until the API answers (the kubelet and, on a
    /// control plane, the API server are starting too).
    pub fn uncordon_if_drained(self: &Arc<Self>) {
        let Some(marker) = self.drained_marker().filter(|m| m.exists()) else { return };
        let me = self.clone();
        tokio::spawn(async move {
            let mut last = String::new();
            for _ in 0..180 {
                match me.node_tool("uncordon", &[]).await {
                    Ok(said) => {
                        let _ = std::fs::remove_file(&marker);
                        if !said.is_empty() {
                            event(&me.events, "upgrade", said);
                        }
                        return;
                    }
                    Err(why) => last = why,
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            event(&me.events, "upgrade", format!("cannot uncordon this node after its upgrade: {last}"));
        });
    }

    /// `Reset`: leaves the cluster (drain, delete the Node) unless not
    /// graceful, then asks for the reboot that wipes STATE and EPHEMERAL.
    async fn reset(&self, req: api::ResetRequest) -> Result<api::ResetResponse, Status> {
        let configured = {
            let st = self.state.lock().await;
            if st.active.is_none() && st.safe.is_none() {
                return Err(Status::failed_precondition(
                    "this node is in maintenance mode: it has no config and no cluster state, nothing to reset",
                ));
            }
            st.active.is_some()
        };
        let mut done = Vec::new();
        let refuse = |events: &Journal<api::Event>, why: String| {
            let msg = format!(
                "reset refused: leaving the cluster failed, nothing was wiped: {why} (run it again, or with \
                 --graceful=false when the cluster is gone)"
            );
            event(events, "reset", msg.clone());
            Status::failed_precondition(msg)
        };
        if req.graceful && configured {
            // A control plane's etcd member must be able to leave before
            // anything changes: the others keep their quorum, it is not the last.
            if let Err(why) = self.etcd_leave(req.force, true).await {
                return Err(refuse(&self.events, why));
            }
            let timeout = match req.drain_timeout_seconds {
                0 => DRAIN_TIMEOUT,
                s => Duration::from_secs(u64::from(s)),
            };
            let args = ["--timeout".to_string(), format!("{}s", timeout.as_secs()), "--delete".into()];
            match self.node_tool("drain", &args).await {
                Ok(said) if said.is_empty() => {}
                Ok(said) => done.push(said.replace('\n', "; ")),
                Err(why) => return Err(refuse(&self.events, why)),
            }
            // Then it leaves etcd's member list, through the members that stay.
            match self.etcd_leave(req.force, false).await {
                Ok(Some(said)) => done.push(said),
                Ok(None) => {}
                Err(why) => return Err(refuse(&self.events, why)),
            }
        } else if !req.graceful {
            done.push("not graceful: the cluster was not told".into());
        }
        if let Some(marker) = &self.settings.reset_marker {
            let written =
                marker.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|_| std::fs::write(marker, b""));
            written.map_err(|e| Status::internal(format!("write {}: {e}", marker.display())))?;
        }
        self.reset_requested.store(true, std::sync::atomic::Ordering::SeqCst);
        done.push(
            "STATE and EPHEMERAL are wiped as the node reboots (the slots and the security floor are kept); it comes \
             back in maintenance mode"
                .into(),
        );
        let summary = done.join("; ");
        event(&self.events, "reset", summary.clone());
        self.power.send(PowerAction::Reboot).await.map_err(internal)?;
        Ok(api::ResetResponse { summary })
    }

    /// Whether `Reset` was asked (the wipe happens once services stopped).
    pub fn reset_requested(&self) -> bool {
        self.reset_requested.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Before an upgrade's reboot: records the pods running now, which the
    /// trial boot must run again before it is committed.
    async fn record_pods(&self) {
        let Some(file) = self.pods_before_upgrade() else { return };
        let args = ["--record".to_string(), file.display().to_string()];
        match self.orchestrator_health(&args).await {
            Ok(said) if !said.is_empty() => event(&self.events, "upgrade", said),
            Ok(_) => {}
            Err(e) => event(&self.events, "upgrade", format!("cannot record the running pods: {e}")),
        }
    }

    /// The admin kubeconfig the control plane wrote.
    async fn kubeconfig(&self) -> Result<Vec<u8>, Status> {
        let o = self.settings.orchestrator.as_ref().ok_or_else(|| {
            Status::failed_precondition("this node runs no control plane (no orchestrator on this node)")
        })?;
        let controlplane = self
            .state
            .lock()
            .await
            .active
            .as_ref()
            .is_some_and(|a| a.config.cluster.role == config::Role::Controlplane);
        if !controlplane || !self.supervisor.list().iter().any(|s| s.name == ORCHESTRATOR) {
            return Err(Status::failed_precondition(
                "this node runs no control plane: its config's cluster.role is not controlplane, or no config is applied",
            ));
        }
        let path = o.data_dir.join("admin.kubeconfig");
        std::fs::read(&path).map_err(|e| {
            Status::unavailable(format!("{}: {e} (the control plane is still starting? try again)", path.display()))
        })
    }

    /// apid must pick up new TLS material and listen address.
    fn reload_apid(&self) {
        if let Err(e) = self.supervisor.restart("apid") {
            tracing::warn!("cannot restart apid: {e}");
        }
    }

    async fn apply(self: &Arc<Self>, req: api::ApplyConfigRequest) -> Result<api::ApplyConfigResponse, Status> {
        let mode = ApplyMode::try_from(req.mode)
            .map_err(|_| Status::invalid_argument(format!("unknown apply mode {}", req.mode)))?;
        let mut st = self.state.lock().await;
        let store = self.store(st.safe.as_ref())?;
        let new = store.verify("config", &req.config, &req.signature).map_err(status_from_verify)?;
        // Once a config with a cluster.id is applied, the node is that
        // cluster's (in safe mode: as its trust record says).
        let pinned = match (&st.active, &st.safe) {
            (Some(a), _) => a.config.cluster.id.clone(),
            (None, Some(safe)) => safe.trust.as_ref().and_then(|t| t.cluster_id.clone()),
            (None, None) => None,
        };
        same_cluster(pinned.as_deref(), &new.config)
            .map_err(|why| Status::failed_precondition(format!("refusing this config: {why}")))?;
        let current = st.active.as_ref().map(|s| &s.config);
        // In safe mode the last configured boot's version is the floor.
        let current_version = current.map_or_else(
            || st.safe.as_ref().and_then(|s| s.trust.as_ref()).map_or(0, |t| t.config_version),
            |c| c.version,
        );
        let diff = config::diff(current, &new.config);
        let reboot_fields = current.map(|c| config::reboot_required(c, &new.config)).unwrap_or_default();
        let v = new.config.version;

        // Re-applying the very config on trial confirms it.
        if st.trying.is_some() && st.active.as_ref().is_some_and(|a| a.bytes == new.bytes) && mode != ApplyMode::Try {
            if req.dry_run {
                return Ok(api::ApplyConfigResponse {
                    diff,
                    summary: format!("would confirm config version {v}"),
                    reboot_required: false,
                    applied_version: v,
                });
            }
            store.clear(Slot::Previous).map_err(internal)?;
            st.trying = None;
            event(&self.events, "config", format!("config version {v} confirmed"));
            return Ok(api::ApplyConfigResponse {
                diff,
                summary: format!("config version {v} confirmed; it stays applied"),
                reboot_required: false,
                applied_version: v,
            });
        }
        let floor = current_version.max(st.staged_version);
        if v <= floor {
            return Err(Status::failed_precondition(format!(
                "config version {v} is not newer than version {floor} already on the node: refusing a replayed or stale config (raise `version` and sign again)"
            )));
        }
        let needs_reboot = !reboot_fields.is_empty();
        let live_impossible = || {
            format!(
                "these changes need a reboot: {}; apply with --mode reboot, auto or staged",
                reboot_fields.join(", ")
            )
        };
        match mode {
            ApplyMode::NoReboot | ApplyMode::Try if needs_reboot => {
                return Err(Status::failed_precondition(live_impossible()));
            }
            ApplyMode::Try if current.is_none() => {
                return Err(Status::failed_precondition(
                    "--mode try needs an applied config to return to; this node has none yet",
                ));
            }
            _ => {}
        }
        let reboot = match mode {
            ApplyMode::Reboot => true,
            ApplyMode::Auto => needs_reboot,
            _ => false,
        };
        let summary = match mode {
            ApplyMode::Staged => {
                format!("config version {v} staged; it applies at the next reboot")
            }
            ApplyMode::Try => format!(
                "config version {v} applied on trial: it reverts to version {current_version} in {}s unless confirmed by applying it again",
                req.try_timeout_seconds
            ),
            _ if reboot => format!("config version {v} applied; rebooting"),
            _ => format!("config version {v} applied without a reboot"),
        };
        if req.dry_run {
            return Ok(api::ApplyConfigResponse {
                diff,
                summary: format!("dry run, nothing changed; otherwise: {summary}"),
                reboot_required: reboot,
                applied_version: current_version,
            });
        }
        let apid_changed = current.is_none_or(|c| apid_inputs(c) != apid_inputs(&new.config));

        match mode {
            ApplyMode::Staged => {
                store.save(Slot::Staged, &new).map_err(internal)?;
                st.staged_version = v;
            }
            ApplyMode::Try => {
                let timeout = Duration::from_secs(u64::from(req.try_timeout_seconds.max(1)));
                if st.trying.is_none()
                    && let Some(prev) = &st.active
                {
                    store.save(Slot::Previous, prev).map_err(internal)?;
                }
                store.save(Slot::Active, &new).map_err(internal)?;
                let id = st.next_try_id;
                st.next_try_id += 1;
                st.trying = Some(TryState { id, deadline: Instant::now() + timeout });
                st.active = Some(new);
                let me = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(timeout).await;
                    me.revert_try(id).await;
                });
            }
            _ => {
                store.save(Slot::Active, &new).map_err(internal)?;
                // A newer config ends a pending trial and any staged one.
                store.clear(Slot::Previous).map_err(internal)?;
                store.clear(Slot::Staged).map_err(internal)?;
                st.trying = None;
                st.staged_version = 0;
                // The copy a damaged config.signed falls back to.
                if let Err(e) = store.save(Slot::LastGood, &new) {
                    event(&self.events, "config", format!("keeping a copy of the config: {e}"));
                }
                st.active = Some(new);
                st.safe = None;
            }
        }
        event(&self.events, "config", summary.clone());
        drop(st);
        if reboot {
            let _ = self.power.send(PowerAction::Reboot).await;
        } else if mode != ApplyMode::Staged {
            if apid_changed {
                self.reload_apid();
            }
            // Not awaited: the orchestrator may wait for the network.
            let me = self.clone();
            tokio::spawn(async move { me.start_cluster_services().await });
        }
        Ok(api::ApplyConfigResponse { diff, summary, reboot_required: reboot, applied_version: v })
    }

    async fn revert_try(&self, id: u64) {
        let mut st = self.state.lock().await;
        if st.trying.as_ref().map(|t| t.id) != Some(id) {
            return;
        }
        let Some(store) = &self.store else { return };
        let result = store.load(Slot::Previous).and_then(|prev| {
            store.promote(Slot::Previous, Slot::Active)?;
            Ok(prev)
        });
        match result {
            Ok(prev) => {
                let v = prev.as_ref().map_or(0, |p| p.config.version);
                let changed = match (&st.active, &prev) {
                    (Some(a), Some(p)) => apid_inputs(&a.config) != apid_inputs(&p.config),
                    _ => true,
                };
                st.active = prev;
                st.trying = None;
                event(&self.events, "config", format!("trial not confirmed in time: reverted to config version {v}"));
                drop(st);
                if changed {
                    self.reload_apid();
                }
            }
            Err(e) => event(&self.events, "config", format!("cannot revert the trial config: {e}")),
        }
    }

    async fn apid_tls(&self) -> Result<api::ApidTlsResponse, Status> {
        let st = self.state.lock().await;
        let listen = |port: u16| self.settings.api_listen.clone().unwrap_or_else(|| format!("0.0.0.0:{port}"));
        if let (None, Some(safe)) = (&st.active, &st.safe) {
            return Ok(match &safe.trust {
                Some(t) => api::ApidTlsResponse {
                    mode: NodeMode::Safe as i32,
                    cert_pem: t.cert_pem.clone(),
                    key_pem: t.key_pem.clone(),
                    client_ca_pem: t.client_ca_pem.clone(),
                    listen_address: t.listen_address.clone(),
                },
                // No trust to check clients against: apid answers only Version.
                None => api::ApidTlsResponse {
                    mode: NodeMode::Safe as i32,
                    cert_pem: self.maintenance_cert.cert_pem.clone(),
                    key_pem: self.maintenance_cert.key_pem.clone(),
                    client_ca_pem: String::new(),
                    listen_address: listen(config::DEFAULT_API_PORT),
                },
            });
        }
        let Some(active) = &st.active else {
            return Ok(api::ApidTlsResponse {
                mode: NodeMode::Maintenance as i32,
                cert_pem: self.maintenance_cert.cert_pem.clone(),
                key_pem: self.maintenance_cert.key_pem.clone(),
                client_ca_pem: String::new(),
                listen_address: listen(config::DEFAULT_API_PORT),
            });
        };
        let c = &active.config;
        // Before apid checks a client certificate: not before its CA.
        if let Some(clock) = &self.clock {
            clock.raise_to_ca(&c.api.ca_cert);
        }
        let serving = match (&c.api.cert, &c.api.key, &c.api.ca_key) {
            (Some(cert), Some(key), _) => machinery::pki::CertKey { cert_pem: cert.clone(), key_pem: key.clone() },
            (_, _, Some(ca_key)) => {
                let ca = machinery::pki::CertKey { cert_pem: c.api.ca_cert.clone(), key_pem: ca_key.clone() };
                let lifetime = self.settings.apid_cert_lifetime.unwrap_or(machinery::pki::LEAF_LIFETIME);
                let names = serving_names(c, &self.settings);
                machinery::pki::issue_server(&ca, &c.machine.hostname, &names, lifetime).map_err(internal)?
            }
            // Validation guarantees one of the two.
            _ => {
                return Err(Status::internal("the config has no serving certificate and no CA key"));
            }
        };
        let trust = crate::store::Trust {
            cert_pem: serving.cert_pem,
            key_pem: serving.key_pem,
            client_ca_pem: c.api.ca_cert.clone(),
            listen_address: listen(c.api.port),
            config_version: c.version,
            cluster_id: c.cluster.id.clone(),
        };
        // On STATE, and a copy outside it (a STATE that cannot be read).
        let stores = self
            .store
            .as_ref()
            .map(ConfigStore::trust_path)
            .into_iter()
            .chain(self.settings.storage.trust_copy.clone());
        for path in stores {
            if let Err(e) = crate::store::save_trust_at(&path, &trust) {
                event(&self.events, "config", format!("recording the machine API's trust for safe mode: {e}"));
            }
        }
        Ok(api::ApidTlsResponse {
            mode: NodeMode::Configured as i32,
            cert_pem: trust.cert_pem,
            key_pem: trust.key_pem,
            client_ca_pem: trust.client_ca_pem,
            listen_address: trust.listen_address,
        })
    }
}

/// What apid's TLS and listener are made from: apid restarts only when
/// these change, so an unrelated change does not drop connections.
fn apid_inputs(c: &MachineConfig) -> (&config::Api, &str, &[config::Interface]) {
    (&c.api, &c.machine.hostname, &c.machine.network.interfaces)
}

/// Names and addresses apid's issued certificate is valid for.
fn serving_names(c: &MachineConfig, settings: &NodeSettings) -> Vec<String> {
    let mut names = vec![c.machine.hostname.clone(), "localhost".into(), "127.0.0.1".into(), "::1".into()];
    for iface in &c.machine.network.interfaces {
        for a in &iface.addresses {
            if let Some((ip, _)) = a.split_once('/') {
                names.push(ip.to_string());
            }
        }
    }
    names.extend(c.api.cert_sans.iter().cloned());
    names.extend(settings.extra_sans.iter().cloned());
    names.sort();
    names.dedup();
    names
}

/// Names and addresses the Kubernetes API's serving certificate is valid
/// for: apid's, the addresses the node has now (DHCP), and the host of the
/// cluster endpoint.
fn kube_serving_names(c: &MachineConfig, settings: &NodeSettings) -> Vec<String> {
    let mut names = serving_names(c, settings);
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let Some(sa) = a.address else { continue };
            let ip = sa
                .as_sockaddr_in()
                .map(|s| std::net::IpAddr::V4(s.ip()))
                .or_else(|| sa.as_sockaddr_in6().map(|s| std::net::IpAddr::V6(s.ip())));
            if let Some(ip) = ip
                .filter(|ip| !ip.is_loopback() && !matches!(ip, std::net::IpAddr::V6(v6) if v6.is_unicast_link_local()))
            {
                names.push(ip.to_string());
            }
        }
    }
    let endpoint_host = c.cluster.endpoint.as_deref().and_then(|e| {
        let rest = e.split_once("://").map_or(e, |(_, r)| r);
        let host = rest.split('/').next()?;
        let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
        Some(host.trim_start_matches('[').trim_end_matches(']').to_string())
    });
    names.extend(endpoint_host.filter(|h| !h.is_empty()));
    names.sort();
    names.dedup();
    names
}

/// The size of each node's share of the cluster's pod CIDR, handed out
/// by the control plane's node IPAM: a /24, or the whole range when it
/// is narrower.
fn node_cidr_mask_size(cluster: &str) -> u8 {
    cluster.parse::<ipnet::Ipv4Net>().map_or(24, |n| n.prefix_len().max(24))
}

/// The CA init hands the orchestrator (`--ca-cert`, `--ca-key`): the
/// Kubernetes CA, on a control plane whose config carries its key. Never
/// the machine API's own (unless the config is of the one-CA form), and
/// never to a worker, whose kubelet joins by token.
fn orchestrator_ca(c: &MachineConfig) -> Option<machinery::pki::CertKey> {
    let kube = c.kube_ca();
    match (c.cluster.role, kube.key_pem) {
        (config::Role::Controlplane, Some(key)) => {
            Some(machinery::pki::CertKey { cert_pem: kube.cert_pem.to_string(), key_pem: key.to_string() })
        }
        _ => None,
    }
}

/// The node's address toward the other nodes (its Node InternalIP): the
/// config's static address on the same network as the cluster endpoint's
/// host (on a control plane, the endpoint is its own first static
/// address). `None` (the kubelet takes the default route's address) when
/// the endpoint is a name or on no network of the config's: with QEMU's
/// user network on eth0, every guest's default-route address is the same
/// 10.0.2.15, so nodes on a cluster network need this.
fn node_ip(c: &MachineConfig) -> Option<std::net::IpAddr> {
    let endpoint = c.kube_endpoint()?;
    let host = endpoint.strip_prefix("https://")?.rsplit_once(':').map_or(endpoint.as_str(), |(h, _)| h);
    let host: std::net::IpAddr = host.trim_start_matches('[').trim_end_matches(']').parse().ok()?;
    c.machine
        .network
        .interfaces
        .iter()
        .flat_map(|i| &i.addresses)
        .filter_map(|a| a.parse::<ipnet::IpNet>().ok())
        .find(|net| net.contains(&host))
        .map(|net| net.addr())
}

/// What init wrote for the orchestrator: the cluster CA (certificate, key)
/// on a control plane, the bootstrap token file when the config has one.
struct ClusterFiles {
    ca: Option<(std::path::PathBuf, std::path::PathBuf)>,
    token: Option<std::path::PathBuf>,
    /// The store options (`--store etcd://…` and its client TLS) on an
    /// etcd control plane; empty on SQLite.
    store: Vec<String>,
}

/// The services a config asks for: containerd when the node has the
/// kubelet, and the orchestrator (`server [--kubelet]` on a control plane,
/// with the config's token stored; `kubelet --server` on a worker, which
/// joins with the token and pins the Kubernetes CA, and holds no CA key).
/// The error says why a worker cannot join.
fn cluster_services(
    c: &MachineConfig,
    o: &OrchestratorSettings,
    cert_sans: &[String],
    files: &ClusterFiles,
) -> Result<Vec<ServiceSpec>, String> {
    let env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k == "PLINTH_LOG")
        .chain([("PATH".to_string(), layout::SERVICE_PATH.to_string())])
        .collect();
    let ca_args = |(cert, key): &(std::path::PathBuf, std::path::PathBuf)| {
        ["--ca-cert".to_string(), cert.display().to_string(), "--ca-key".into(), key.display().to_string()]
    };
    let mut args: Vec<String> = match c.cluster.role {
        config::Role::Controlplane => {
            let mut a = vec!["server".into(), "--data-dir".into(), o.data_dir.display().to_string()];
            a.extend(["--listen".into(), o.listen.clone()]);
            a.extend(["--cluster-cidr".into(), c.cluster.pod_cidr.clone()]);
            a.extend(["--node-cidr-mask-size".into(), node_cidr_mask_size(&c.cluster.pod_cidr).to_string()]);
            for n in cert_sans {
                a.extend(["--cert-san".into(), n.clone()]);
            }
            a.extend(files.ca.iter().flat_map(ca_args));
            if let Some(t) = &files.token {
                a.extend(["--bootstrap-token-file".into(), t.display().to_string()]);
            }
            a.extend(files.store.iter().cloned());
            a
        }
        config::Role::Worker => {
            if o.kubelet.is_none() {
                return Ok(Vec::new());
            }
            // Every control plane's: the kubelet moves to another when one stops answering.
            let endpoints = c.kube_endpoints();
            if endpoints.is_empty() {
                return Err("a worker needs cluster.endpoint or cluster.endpoints".into());
            }
            let endpoint = endpoints.join(",");
            let token = files.token.as_ref().ok_or("this worker cannot join: its config carries no cluster.token")?;
            let kube = c.kube_ca();
            let pin = machinery::pki::ca_pin(kube.cert_pem).map_err(|e| format!("{}: {e}", kube.field))?;
            let mut a = vec!["kubelet".into(), "--server".into(), endpoint, "--ca-cert-hash".into(), pin];
            a.extend(["--token-file".into(), token.display().to_string()]);
            a
        }
    };
    let mut specs = Vec::new();
    if let Some(k) = &o.kubelet {
        specs.push(ServiceSpec {
            name: CONTAINERD.into(),
            program: k.containerd.clone(),
            args: vec!["--config".into(), k.containerd_config.display().to_string()],
            env: env.clone(),
        });
        if c.cluster.role == config::Role::Controlplane {
            args.push("--kubelet".into());
        }
        args.extend([
            "--node-name".into(),
            c.machine.hostname.clone(),
            "--cri-socket".into(),
            k.cri_socket.display().to_string(),
            "--cni-conf-dir".into(),
            k.cni_conf_dir.display().to_string(),
            "--image-dir".into(),
            k.image_dir.display().to_string(),
        ]);
        if let Some(ip) = node_ip(c) {
            args.extend(["--node-ip".into(), ip.to_string()]);
        }
        args.extend(["--pod-network".into(), c.cluster.pod_network.as_str().into()]);
    }
    specs.push(ServiceSpec { name: ORCHESTRATOR.into(), program: o.program.clone(), args, env });
    Ok(specs)
}

/// Turns a broadcast follower into a gRPC stream, after the backlog.
fn follow<T: Clone + Send + 'static>(backlog: Vec<T>, rx: Option<broadcast::Receiver<T>>) -> Stream_<T> {
    let (tx, out) = mpsc::channel::<Result<T, Status>>(256);
    tokio::spawn(async move {
        for item in backlog {
            if tx.send(Ok(item)).await.is_err() {
                return;
            }
        }
        let Some(mut rx) = rx else { return };
        loop {
            tokio::select! {
                item = rx.recv() => match item {
                    Ok(item) => if tx.send(Ok(item)).await.is_err() { return },
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let _ = tx.send(Err(Status::data_loss(format!("the follower fell behind and {n} entries were skipped")))).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tx.closed() => return,
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(out))
}

/// The `MachineService` init serves on its Unix socket.
#[derive(Clone)]
pub struct InitApi(pub Arc<Machine>);

#[tonic::async_trait]
impl MachineService for InitApi {
    async fn version(&self, _: Request<api::VersionRequest>) -> Result<Response<api::VersionResponse>, Status> {
        let m = &self.0;
        let st = m.state.lock().await;
        let active = st.active.as_ref().map(|s| &s.config);
        Ok(Response::new(api::VersionResponse {
            plinth_version: m.settings.slots.as_ref().map_or(machinery::VERSION, |s| s.version.as_str()).to_string(),
            arch: std::env::consts::ARCH.to_string(),
            mode: match (active, &st.safe) {
                (Some(_), _) => NodeMode::Configured,
                (None, Some(_)) => NodeMode::Safe,
                (None, None) => NodeMode::Maintenance,
            } as i32,
            safe_reason: st.safe.as_ref().map(|s| s.reason.clone()).unwrap_or_default(),
            config_version: active.map_or(0, |c| c.version),
            hostname: active.map_or_else(String::new, |c| c.machine.hostname.clone()),
            uptime_seconds: m.started.elapsed().as_secs(),
            staged_config_version: st.staged_version,
            try_seconds_left: st
                .trying
                .as_ref()
                .map_or(0, |t| t.deadline.saturating_duration_since(Instant::now()).as_secs()),
            memory_total_kib: proc_field("/proc/meminfo", "MemTotal:"),
            memory_available_kib: proc_field("/proc/meminfo", "MemAvailable:"),
            init_rss_kib: rss_kib("/proc/self/status"),
            init_write_bytes: write_bytes("/proc/self/io"),
            disks: crate::diskstats::read(),
            slots: m.slots.as_ref().map(|s| s.infos()).unwrap_or_default(),
            boot_id: crate::steps::boot_id(),
            store_problem: m
                .settings
                .orchestrator
                .as_ref()
                .and_then(|o| cluster_store::damaged_report(&o.data_dir))
                .unwrap_or_default(),
            boot_steps: m.settings.boot_steps.as_ref().map_or_else(Vec::new, |steps| {
                // Version answers in every mode: a damaged record is logged, not fatal.
                steps.read().unwrap_or_else(|e| {
                    tracing::warn!("{e}");
                    Vec::new()
                })
            }),
        }))
    }

    async fn apply_config(
        &self,
        req: Request<api::ApplyConfigRequest>,
    ) -> Result<Response<api::ApplyConfigResponse>, Status> {
        let result = self.0.apply(req.into_inner()).await;
        if let Err(e) = &result {
            event(&self.0.events, "config", format!("apply-config refused: {}", e.message()));
        }
        result.map(Response::new)
    }

    async fn get_config(&self, _: Request<api::GetConfigRequest>) -> Result<Response<api::GetConfigResponse>, Status> {
        let st = self.0.state.lock().await;
        let active =
            st.active.as_ref().ok_or_else(|| Status::not_found("this node has no config yet (maintenance mode)"))?;
        // Never the secrets (CA key, serving key, join token): whoever may
        // read the config must not be able to mint certificates from it.
        let config = active.config.redacted().to_toml().into_bytes();
        Ok(Response::new(api::GetConfigResponse { config, version: active.config.version }))
    }

    async fn reboot(&self, _: Request<api::RebootRequest>) -> Result<Response<api::RebootResponse>, Status> {
        event(&self.0.events, "power", "reboot requested".into());
        self.0.power.send(PowerAction::Reboot).await.map_err(internal)?;
        Ok(Response::new(api::RebootResponse {}))
    }

    async fn shutdown(&self, _: Request<api::ShutdownRequest>) -> Result<Response<api::ShutdownResponse>, Status> {
        event(&self.0.events, "power", "shutdown requested".into());
        self.0.power.send(PowerAction::PowerOff).await.map_err(internal)?;
        Ok(Response::new(api::ShutdownResponse {}))
    }

    async fn service_list(
        &self,
        _: Request<api::ServiceListRequest>,
    ) -> Result<Response<api::ServiceListResponse>, Status> {
        Ok(Response::new(api::ServiceListResponse { services: self.0.supervisor.list() }))
    }

    async fn service_restart(
        &self,
        req: Request<api::ServiceRestartRequest>,
    ) -> Result<Response<api::ServiceRestartResponse>, Status> {
        let name = req.into_inner().name;
        self.0.supervisor.restart(&name)?;
        event(&self.0.events, "service", format!("{name}: restart requested"));
        Ok(Response::new(api::ServiceRestartResponse {}))
    }

    type LogsStream = Stream_<api::LogLine>;
    async fn logs(&self, req: Request<api::LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        let req = req.into_inner();
        let (backlog, rx) = self.0.supervisor.logs(&req.service, req.tail_lines as usize)?;
        Ok(Response::new(follow(backlog, req.follow.then_some(rx))))
    }

    type DmesgStream = Stream_<api::DmesgRecord>;
    async fn dmesg(&self, req: Request<api::DmesgRequest>) -> Result<Response<Self::DmesgStream>, Status> {
        let rx = self
            .0
            .kernel_log
            .records(req.into_inner().follow)
            .map_err(|e| Status::unavailable(format!("cannot read the kernel log: {e}")))?;
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok))))
    }

    async fn upgrade(
        &self,
        req: Request<tonic::Streaming<api::UpgradeChunk>>,
    ) -> Result<Response<api::UpgradeResponse>, Status> {
        let slots = self.0.slots()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut chunks = req.into_inner();
        // The options ride on the first message; the stream is handed on
        // with that message put back in front.
        let first = tokio_stream::StreamExt::next(&mut chunks).await;
        let (no_drain, drain_timeout) =
            match first.as_ref().and_then(|r| r.as_ref().ok()).and_then(|c| c.chunk.as_ref()) {
                Some(api::upgrade_chunk::Chunk::Options(o)) => (
                    o.no_drain,
                    match o.drain_timeout_seconds {
                        0 => DRAIN_TIMEOUT,
                        s => Duration::from_secs(u64::from(s)),
                    },
                ),
                _ => (false, DRAIN_TIMEOUT),
            };
        let stream = tokio_stream::StreamExt::chain(tokio_stream::iter(first), chunks);
        let result = slots.upgrade(Box::pin(stream)).await;
        match result {
            Ok((mut resp, reboot)) => {
                if reboot {
                    // Drained and rebooted by a task of its own: a client
                    // that goes away does not stop the node half-way.
                    let m = self.0.clone();
                    tokio::spawn(async move {
                        let outcome = async {
                            if !no_drain {
                                match m.drain_for_upgrade(drain_timeout).await {
                                    Ok(said) if !said.is_empty() => {
                                        event(&m.events, "upgrade", said.clone());
                                        Ok(Some(said))
                                    }
                                    Ok(_) => Ok(None),
                                    Err(why) => {
                                        let msg = format!(
                                            "not rebooting: the drain failed: {why}; the new slot stays armed and \
                                             boots at the next reboot (osctl reboot, or upgrade again with --no-drain)"
                                        );
                                        event(&m.events, "upgrade", msg.clone());
                                        m.uncordon_if_drained();
                                        return Err(Status::failed_precondition(msg));
                                    }
                                }
                            } else {
                                Ok(None)
                            }
                        }
                        .await;
                        if outcome.is_ok() {
                            m.record_pods().await;
                            let _ = m.power.send(PowerAction::Reboot).await;
                        }
                        let _ = tx.send(outcome);
                    });
                    match rx.await.map_err(internal)? {
                        Ok(Some(drained)) => resp.summary = format!("{}; {drained}", resp.summary),
                        Ok(None) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(Response::new(resp))
            }
            Err(e) => {
                event(&self.0.events, "upgrade", e.message().to_string());
                Err(e)
            }
        }
    }

    async fn upgrade_resume(
        &self,
        req: Request<api::UpgradeResumeRequest>,
    ) -> Result<Response<api::UpgradeResumeResponse>, Status> {
        let req = req.into_inner();
        let slots = self.0.slots()?;
        let local_parts = tokio::task::block_in_place(|| slots.local_parts(&req.parts));
        let offset = slots.staged_offset(&crate::upgrade::stage_id(&req.manifest_sha256, &local_parts));
        Ok(Response::new(api::UpgradeResumeResponse { offset, local_parts }))
    }

    async fn kubeconfig(
        &self,
        _: Request<api::KubeconfigRequest>,
    ) -> Result<Response<api::KubeconfigResponse>, Status> {
        Ok(Response::new(api::KubeconfigResponse { kubeconfig: self.0.kubeconfig().await? }))
    }

    async fn reset(&self, req: Request<api::ResetRequest>) -> Result<Response<api::ResetResponse>, Status> {
        self.0.reset(req.into_inner()).await.map(Response::new)
    }

    async fn rollback(&self, _: Request<api::RollbackRequest>) -> Result<Response<api::RollbackResponse>, Status> {
        let slots = self.0.slots()?;
        let target = tokio::task::block_in_place(|| slots.rollback())?;
        let summary = format!("slot {} boots next; rebooting into it", target.name());
        event(&self.0.events, "upgrade", format!("rollback: {summary}"));
        self.0.power.send(PowerAction::Reboot).await.map_err(internal)?;
        Ok(Response::new(api::RollbackResponse { slot: target.name().into(), summary }))
    }

    type EventsStream = Stream_<api::Event>;
    async fn events(&self, req: Request<api::EventsRequest>) -> Result<Response<Self::EventsStream>, Status> {
        let req = req.into_inner();
        let (backlog, rx) = self.0.events.tail_and_follow(req.tail_events as usize);
        Ok(Response::new(follow(backlog, req.follow.then_some(rx))))
    }

    async fn certificates(
        &self,
        _: Request<api::CertificatesRequest>,
    ) -> Result<Response<api::CertificatesResponse>, Status> {
        Ok(Response::new(api::CertificatesResponse { certificates: self.0.certificates().await }))
    }

    type BackupStream = Stream_<api::BackupChunk>;
    async fn backup(&self, _: Request<api::BackupRequest>) -> Result<Response<Self::BackupStream>, Status> {
        self.0.backup().await.map(Response::new)
    }

    async fn restore(
        &self,
        req: Request<tonic::Streaming<api::RestoreChunk>>,
    ) -> Result<Response<api::RestoreResponse>, Status> {
        self.0.restore(req.into_inner()).await.map(Response::new)
    }
    async fn etcd_members(
        &self,
        _: Request<api::EtcdMembersRequest>,
    ) -> Result<Response<api::EtcdMembersResponse>, Status> {
        self.0.etcd_members().await.map(Response::new)
    }
    type EtcdSnapshotStream = Stream_<api::BackupChunk>;
    async fn etcd_snapshot(
        &self,
        _: Request<api::EtcdSnapshotRequest>,
    ) -> Result<Response<Self::EtcdSnapshotStream>, Status> {
        self.0.etcd_snapshot().await.map(Response::new)
    }
    async fn etcd_remove_member(
        &self,
        req: Request<api::EtcdRemoveMemberRequest>,
    ) -> Result<Response<api::EtcdRemoveMemberResponse>, Status> {
        self.0.etcd_remove_member(&req.into_inner().name).await.map(Response::new)
    }
}

impl Machine {
    fn store(&self, safe: Option<&Safe>) -> Result<&ConfigStore, Status> {
        self.store.as_ref().ok_or_else(|| {
            Status::failed_precondition(format!(
                "{}: a config applied now would not survive a reboot; repair STATE or replace the disk (osctl events, osctl dmesg)",
                safe.map_or("STATE cannot be read", |s| s.reason.as_str())
            ))
        })
    }

    fn slots(&self) -> Result<&Arc<Slots>, Status> {
        self.slots.as_ref().ok_or_else(|| {
            Status::unimplemented("this node has no A/B boot disk (host mode without --disk): nothing to upgrade")
        })
    }

    /// At boot: finishes what a power cut interrupted (on a Pi, launches a
    /// cut-off trial again while it has tries), then commits a slot on
    /// trial once the services have run for [`upgrade::HEALTHY_FOR`]
    /// without a restart; otherwise marks the trial failed and reboots
    /// after its health timeout, and the boot loader falls back.
    pub fn gate_trial(self: &Arc<Self>) {
        let Some(slots) = self.slots.clone() else { return };
        let booted = slots.booted().name();
        match tokio::task::block_in_place(|| slots.at_boot()) {
            Ok(AtBoot::Relaunch { slot, left, done }) => {
                event(
                    &self.events,
                    "upgrade",
                    format!(
                        "slot {}'s trial boot ended without a commit (power cut, crash or watchdog; {done} tried, \
                         {left} left): launching it again",
                        slot.name()
                    ),
                );
                let _ = self.power.try_send(PowerAction::Reboot);
                return;
            }
            Ok(AtBoot::Stray) => {
                event(
                    &self.events,
                    "upgrade",
                    format!("slot {booted} is neither committed nor on trial: rebooting into the committed slot"),
                );
                let _ = self.power.try_send(PowerAction::Reboot);
                return;
            }
            Ok(_) => {}
            Err(e) => event(&self.events, "upgrade", format!("cannot settle the boot state: {e}")),
        }
        let (this, other) = match slots.boot_view() {
            Ok(v) => v,
            Err(e) => {
                event(&self.events, "upgrade", format!("cannot read the boot state: {e}"));
                return;
            }
        };
        if other == View::Failed {
            event(
                &self.events,
                "upgrade",
                format!(
                    "slot {} failed its trial boot: the boot loader fell back to slot {booted}",
                    slots.booted().other().name()
                ),
            );
        }
        if this == View::Committed {
            // Back on a committed slot after an upgrade's drain (a trial
            // that failed, or one never launched): schedulable again.
            self.uncordon_if_drained();
            match tokio::task::block_in_place(|| slots.raise_floor()) {
                Ok(Some(floor)) => event(&self.events, "upgrade", format!("security floor raised to {floor}")),
                Ok(None) => {}
                Err(e) => event(&self.events, "upgrade", format!("cannot raise the security floor: {e}")),
            }
        }
        if this != View::TrialBooted {
            return;
        }
        event(&self.events, "upgrade", format!("slot {booted} is on trial: committing it once the node is healthy"));
        let me = self.clone();
        tokio::spawn(async move {
            let timeout = slots.health_timeout();
            let deadline = Instant::now() + timeout;
            let mut last = String::from("services not running yet");
            // Status written from now on is this boot's.
            let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            while Instant::now() < deadline {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let services = me.supervisor.list();
                let services_ok = !services.is_empty()
                    && services.iter().all(|s| {
                        s.state == api::ServiceState::Running as i32
                            && s.restarts == 0
                            && s.uptime_seconds >= upgrade::HEALTHY_FOR.as_secs()
                    });
                if !services_ok {
                    last = "a service is not running, or restarted".into();
                }
                // A slot that cannot read STATE is not one to commit.
                if me.store.is_none() {
                    last = "STATE cannot be read".into();
                }
                let healthy = services_ok && me.store.is_some();
                // The cluster too: the node Ready, and the pods it ran
                // before the upgrade running again.
                let mut cluster = String::new();
                let healthy = healthy && {
                    let mut args = vec!["--since".to_string(), since.to_string()];
                    if let Some(f) = me.pods_before_upgrade().filter(|f| f.exists()) {
                        args.extend(["--expect".to_string(), f.display().to_string()]);
                    }
                    match me.orchestrator_health(&args).await {
                        Ok(said) => {
                            cluster = said;
                            true
                        }
                        Err(why) => {
                            last = why;
                            false
                        }
                    }
                };
                if healthy {
                    if let Some(f) = me.pods_before_upgrade() {
                        let _ = std::fs::remove_file(f);
                    }
                    let how = if cluster.is_empty() { String::new() } else { format!(" ({cluster})") };
                    match tokio::task::block_in_place(|| slots.commit()) {
                        Ok(()) => {
                            event(&me.events, "upgrade", format!("slot {booted} is healthy{how}: committed"));
                            me.uncordon_if_drained();
                        }
                        Err(e) => event(&me.events, "upgrade", format!("cannot commit slot {booted}: {e}")),
                    }
                    return;
                }
            }
            if let Err(e) = tokio::task::block_in_place(|| slots.give_up()) {
                event(&me.events, "upgrade", format!("cannot mark slot {booted}'s trial failed: {e}"));
            }
            event(
                &me.events,
                "upgrade",
                format!("slot {booted} did not become healthy in {timeout:?} ({last}): rebooting to fall back"),
            );
            let _ = me.power.send(PowerAction::Reboot).await;
        });
    }
}

#[tonic::async_trait]
impl api::init_service_server::InitService for InitApi {
    async fn apid_tls(&self, _: Request<api::ApidTlsRequest>) -> Result<Response<api::ApidTlsResponse>, Status> {
        let tls = self.0.apid_tls().await?;
        *self.0.apid_cert.lock().await = Some(tls.cert_pem.clone());
        Ok(Response::new(tls))
    }

    async fn apid_serving(
        &self,
        _: Request<api::ApidServingRequest>,
    ) -> Result<Response<api::ApidServingResponse>, Status> {
        if let Some(steps) = &self.0.settings.boot_steps {
            steps.record(boot_steps::APID);
        }
        Ok(Response::new(api::ApidServingResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use machinery::pki::CertKey;

    use super::*;

    fn settings(kubelet: bool) -> OrchestratorSettings {
        OrchestratorSettings {
            program: "/usr/bin/orchestrator".into(),
            data_dir: "/var/lib/plinth/orchestrator".into(),
            listen: "0.0.0.0:6443".into(),
            kubelet: kubelet.then(|| KubeletSettings {
                containerd: layout::ROOT_CONTAINERD.into(),
                containerd_config: layout::ROOT_CONTAINERD_CONFIG.into(),
                cri_socket: layout::CONTAINERD_SOCKET.into(),
                cni_conf_dir: layout::CNI_CONF_DIR.into(),
                image_dir: layout::ROOT_IMAGES.into(),
            }),
            etcd: None,
        }
    }

    fn config(role: &str, extra: &str) -> MachineConfig {
        let ca = machinery::pki::generate_ca("t").unwrap();
        let text = format!(
            "version = 1\n[machine]\nhostname = \"n1\"\n[cluster]\nname = \"demo\"\nrole = \"{role}\"\n{extra}\n\
             [api]\nca_cert = \"\"\"{}\"\"\"\nca_key = \"\"\"{}\"\"\"\n",
            ca.cert_pem, ca.key_pem
        );
        MachineConfig::parse("node.toml", &text).unwrap()
    }

    fn arg<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
        args.iter().position(|a| a == flag).map(|i| args[i + 1].as_str())
    }

    #[test]
    fn a_control_plane_runs_containerd_and_the_server_with_its_kubelet() {
        let files = ClusterFiles {
            ca: Some(("/d/ca.crt".into(), "/d/ca.key".into())),
            token: Some("/d/t".into()),
            store: Vec::new(),
        };
        let specs =
            cluster_services(&config("controlplane", ""), &settings(true), &["10.0.2.15".into()], &files).unwrap();
        assert_eq!(specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), [CONTAINERD, ORCHESTRATOR]);
        assert_eq!(specs[0].args, ["--config", layout::ROOT_CONTAINERD_CONFIG]);
        let a = &specs[1].args;
        assert_eq!(a[0], "server");
        assert!(a.contains(&"--kubelet".to_string()), "{a:?}");
        assert_eq!(arg(a, "--cert-san"), Some("10.0.2.15"));
        assert_eq!(arg(a, "--ca-key"), Some("/d/ca.key"));
        assert_eq!(arg(a, "--bootstrap-token-file"), Some("/d/t"));
        assert_eq!(arg(a, "--node-name"), Some("n1"));
        // Its kubelet's range, as every node's, is assigned by the control plane's IPAM.
        assert_eq!(arg(a, "--cluster-cidr"), Some("10.244.0.0/16"));
        assert_eq!(arg(a, "--node-cidr-mask-size"), Some("24"));
        assert_eq!(arg(a, "--pod-cidr"), None);
        assert_eq!(arg(a, "--cri-socket"), Some(layout::CONTAINERD_SOCKET));
        // Both find runc, the shim, the CNI plugins, iptables and ctr on PATH.
        assert!(specs.iter().all(|s| s.env.contains(&("PATH".into(), layout::SERVICE_PATH.into()))));
        // Without the runtime in the image (host mode): the control plane alone.
        let none = ClusterFiles { ca: None, token: None, store: Vec::new() };
        let specs = cluster_services(&config("controlplane", ""), &settings(false), &[], &none).unwrap();
        assert_eq!(specs.len(), 1);
        assert!(!specs[0].args.contains(&"--kubelet".to_string()));
    }

    #[test]
    fn a_worker_runs_the_kubelet_alone_joined_to_the_endpoint() {
        let endpoint = "endpoint = \"https://10.0.0.1:6443\"\ntoken = \"abcdef.0123456789abcdef\"";
        let c = config("worker", endpoint);
        // The CA key is not handed to a worker's orchestrator, even when the config has it.
        let files = ClusterFiles { ca: None, token: Some("/d/bootstrap-token".into()), store: Vec::new() };
        let specs = cluster_services(&c, &settings(true), &[], &files).unwrap();
        let a = &specs[1].args;
        assert_eq!((a[0].as_str(), arg(a, "--server")), ("kubelet", Some("https://10.0.0.1:6443")));
        assert_eq!(arg(a, "--token-file"), Some("/d/bootstrap-token"));
        assert_eq!(arg(a, "--ca-cert-hash"), Some(machinery::pki::ca_pin(&c.api.ca_cert).unwrap().as_str()));
        assert!(!a.iter().any(|x| x.starts_with("--ca-key") || x.starts_with("--ca-cert=")), "{a:?}");
        assert!(!a.contains(&"--kubelet".to_string()) && !a.contains(&"--listen".to_string()));
        assert_eq!(arg(a, "--pod-cidr"), None, "its Node's spec.podCIDR, from the control plane");
        assert_eq!(arg(a, "--cluster-cidr"), None);
        assert_eq!(arg(a, "--node-ip"), None, "no static address: the default route's");
        assert_eq!(arg(a, "--pod-network"), Some("auto"), "the default: direct where it can, VXLAN elsewhere");
        let mut forced = c.clone();
        forced.cluster.pod_network = machinery::config::PodNetwork::Vxlan;
        let specs = cluster_services(&forced, &settings(true), &[], &files).unwrap();
        assert_eq!(arg(&specs[1].args, "--pod-network"), Some("vxlan"));
        // Without a token it cannot join: said, nothing started.
        let e = cluster_services(&c, &settings(true), &[], &ClusterFiles { ca: None, token: None, store: Vec::new() })
            .unwrap_err();
        assert!(e.contains("cluster.token"), "{e}");
        // An HA control plane: the kubelet is given every endpoint, `endpoint` first.
        let ha = config(
            "worker",
            &format!("{endpoint}\nendpoints = [\"https://10.0.0.2:6443\", \"https://10.0.0.1:6443\"]"),
        );
        let specs = cluster_services(&ha, &settings(true), &[], &files).unwrap();
        assert_eq!(arg(&specs[1].args, "--server"), Some("https://10.0.0.1:6443,https://10.0.0.2:6443"));
    }

    /// Nodes on a cluster network (DHCP on eth0, a static address on eth1):
    /// each kubelet's Node InternalIP is its eth1 address, the one on the
    /// endpoint's network.
    #[test]
    fn the_node_address_is_the_one_on_the_endpoints_network() {
        let net = |addr: &str| {
            format!(
                "[[machine.network.interfaces]]\nname = \"eth0\"\ndhcp = true\n\
                 [[machine.network.interfaces]]\nname = \"eth1\"\naddresses = [\"{addr}\"]\n"
            )
        };
        let with_net = |role: &str, addr: &str, cluster: &str| {
            let c = config(role, cluster);
            let text = c.to_toml().replacen("[cluster]", &format!("{}\n[cluster]", net(addr)), 1);
            MachineConfig::parse("node.toml", &text).unwrap()
        };
        let files = ClusterFiles { ca: None, token: Some("/d/t".into()), store: Vec::new() };
        let ip = |c: &MachineConfig| {
            let specs = cluster_services(c, &settings(true), &[], &files).unwrap();
            arg(&specs[1].args, "--node-ip").map(str::to_string)
        };
        let cp = with_net("controlplane", "10.5.0.1/24", "");
        assert_eq!(ip(&cp).as_deref(), Some("10.5.0.1"), "its own endpoint's address");
        let join = "endpoint = \"https://10.5.0.1:6443\"\ntoken = \"abcdef.0123456789abcdef\"";
        assert_eq!(ip(&with_net("worker", "10.5.0.2/24", join)).as_deref(), Some("10.5.0.2"));
        let elsewhere = "endpoint = \"https://192.168.9.1:6443\"\ntoken = \"abcdef.0123456789abcdef\"";
        assert_eq!(ip(&with_net("worker", "10.5.0.2/24", elsewhere)), None, "endpoint on no network of ours");
        let by_name = "endpoint = \"https://cp.example:6443\"\ntoken = \"abcdef.0123456789abcdef\"";
        assert_eq!(ip(&with_net("worker", "10.5.0.2/24", by_name)), None);
    }

    /// A config with separate roots: `[api]` the machine-API CA, `[cluster]`
    /// the Kubernetes CA (its key on a control plane only).
    fn split_config(role: &str, machine: &CertKey, kube: &CertKey) -> MachineConfig {
        let (kube_key, join) = match role {
            "controlplane" => (format!("ca_key = \"\"\"{}\"\"\"\n", kube.key_pem), ""),
            _ => (String::new(), "endpoint = \"https://10.0.0.1:6443\"\ntoken = \"abcdef.0123456789abcdef\"\n"),
        };
        let text = format!(
            "version = 1\n[machine]\nhostname = \"n1\"\n[cluster]\nname = \"demo\"\nrole = \"{role}\"\n{join}\
             ca_cert = \"\"\"{}\"\"\"\n{kube_key}[api]\nca_cert = \"\"\"{}\"\"\"\nca_key = \"\"\"{}\"\"\"\n",
            kube.cert_pem, machine.cert_pem, machine.key_pem
        );
        MachineConfig::parse("node.toml", &text).unwrap()
    }

    #[test]
    fn the_orchestrator_gets_the_kubernetes_ca_and_a_worker_pins_it() {
        let (machine, kube) = (machinery::pki::generate_ca("m").unwrap(), machinery::pki::generate_ca("k").unwrap());
        let cp = orchestrator_ca(&split_config("controlplane", &machine, &kube)).unwrap();
        assert_eq!((cp.cert_pem.as_str(), cp.key_pem.as_str()), (kube.cert_pem.as_str(), kube.key_pem.as_str()));
        let worker = split_config("worker", &machine, &kube);
        assert!(orchestrator_ca(&worker).is_none(), "a worker's orchestrator gets no CA");
        let files = ClusterFiles { ca: None, token: Some("/d/bootstrap-token".into()), store: Vec::new() };
        let specs = cluster_services(&worker, &settings(true), &[], &files).unwrap();
        let pin = arg(&specs[1].args, "--ca-cert-hash").unwrap().to_string();
        assert_eq!(pin, machinery::pki::ca_pin(&kube.cert_pem).unwrap(), "the kubelet pins the Kubernetes CA");
        assert_ne!(pin, machinery::pki::ca_pin(&machine.cert_pem).unwrap());
        // A config of the one-CA form (a node running since before the
        // split): its one CA stays the Kubernetes CA, nothing to redo.
        let old = config("controlplane", "");
        let ca = orchestrator_ca(&old).unwrap();
        assert_eq!(
            (ca.cert_pem.as_str(), Some(ca.key_pem.as_str())),
            (old.api.ca_cert.as_str(), old.api.ca_key.as_deref())
        );
        let old_worker = config("worker", "endpoint = \"https://10.0.0.1:6443\"\ntoken = \"abcdef.0123456789abcdef\"");
        assert!(orchestrator_ca(&old_worker).is_none(), "not even from an old worker config with the key");
    }

    #[test]
    fn nodes_get_a_slash_24_of_the_pod_cidr_or_all_of_a_narrower_one() {
        assert_eq!(node_cidr_mask_size("10.244.0.0/16"), 24);
        assert_eq!(node_cidr_mask_size("10.9.8.0/24"), 24);
        assert_eq!(node_cidr_mask_size("10.9.8.0/26"), 26);
    }
}

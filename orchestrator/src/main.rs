//! `orchestrator server --data-dir DIR [--kubelet]`: Plinth's control plane
//! on a host, with the kubelet in the same process on a control-plane node;
//! `orchestrator kubelet --kubeconfig F`: the kubelet alone, on a worker;
//! `orchestrator health`: whether a node is back at work (upgrade health gate);
//! `orchestrator drain`/`uncordon`: a node's pods evicted before an upgrade
//! or a reset, and the node schedulable again;
//! `orchestrator token`: bootstrap tokens that let workers join;
//! `orchestrator migrate`: a SQLite store copied into etcd (one node to HA);
//! `orchestrator backup`/`restore`: the store's backups (what init runs for
//! `osctl backup`/`restore`); `orchestrator certs`: the certificates it
//! presents and hands out (for `osctl certs`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

mod backup;
mod certs;
mod migrate;

use clap::{Args, Parser, Subcommand};
use orchestrator_client::Api;
use orchestrator_kubelet::{self as kubelet, server::Identity};

#[derive(Parser)]
#[command(version, about = "Plinth's embedded control plane (a Kubernetes-compatible API server) and kubelet")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
// Parsed once at start: the size of the server's variant does not matter.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Serves the Kubernetes API over HTTPS; writes DATA-DIR/admin.kubeconfig.
    Server {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:6443")]
        listen: SocketAddr,
        /// The cluster CA (PEM); generated into DATA-DIR when not given.
        #[arg(long, requires = "ca_key")]
        ca_cert: Option<PathBuf>,
        #[arg(long, requires = "ca_cert")]
        ca_key: Option<PathBuf>,
        /// fsync every write (an acknowledged write survives power loss); off: survives a crash only.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        fsync: bool,
        /// Run the controllers and the scheduler (off: a bare API server).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        controllers: bool,
        /// Also run the kubelet: this machine becomes a node running pods through containerd.
        #[arg(long)]
        kubelet: bool,
        /// Another name or address for the API's serving certificate (repeatable).
        #[arg(long = "cert-san", value_name = "NAME")]
        cert_sans: Vec<String>,
        /// How long an Event is kept after its last write (as kube-apiserver's: `1h`, `1h0m0s`, `90s`).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        event_ttl: std::time::Duration,
        /// A file holding a bootstrap token (`[a-z0-9]{6}.[a-z0-9]{16}`) stored at start, without expiry.
        #[arg(long)]
        bootstrap_token_file: Option<PathBuf>,
        /// How long the certificates the cluster CA signs for CSRs live (upstream's flag; e.g. 8760h, 30s).
        #[arg(long, default_value = "8760h", value_parser = humantime::parse_duration)]
        cluster_signing_duration: std::time::Duration,
        /// The pods' addresses: each Node without `spec.podCIDR` gets a
        /// subnet of it (kube-controller-manager's node IPAM; off when not given).
        #[arg(long, value_name = "CIDR")]
        cluster_cidr: Option<String>,
        /// The prefix length of each Node's subnet of --cluster-cidr.
        #[arg(long, default_value_t = 24)]
        node_cidr_mask_size: u8,
        /// How long the API server's serving certificate (and the in-process kubelet's) lives; renewed at 70–90 % of it.
        #[arg(long, default_value = "8760h", value_parser = humantime::parse_duration)]
        serving_cert_lifetime: std::time::Duration,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        node: Box<NodeArgs>,
    },
    /// Bootstrap tokens (Secrets `kube-system/bootstrap-token-<id>`), as `kubeadm token`.
    Token {
        /// An admin kubeconfig (embedded data).
        #[arg(long)]
        kubeconfig: PathBuf,
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Whether NODE is back at work: exits 0 when its Node is Ready and the
    /// pods of --expect are running and ready again, 1 (saying what is not)
    /// otherwise; --record writes the pods running and ready now.
    Health {
        /// An admin kubeconfig (embedded data).
        #[arg(long)]
        kubeconfig: PathBuf,
        #[arg(long)]
        node: String,
        /// Write the node's running, ready pods here (JSON) and exit.
        #[arg(long, conflicts_with = "expect")]
        record: Option<PathBuf>,
        /// The pods that must be running and ready again (from --record).
        #[arg(long)]
        expect: Option<PathBuf>,
        /// Only count the Node's heartbeats and containers' starts from
        /// this time on (Unix seconds; the boot, after a reboot).
        #[arg(long)]
        since: Option<i64>,
    },
    /// Cordons NODE and evicts its pods through the eviction subresource
    /// (PodDisruptionBudgets honoured; DaemonSet and mirror pods left), as
    /// init does before an upgrade's reboot; exits 1 saying which pods did
    /// not go within --timeout.
    Drain {
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long)]
        node: String,
        #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// Leave the node as it is when no other node is Ready and
        /// schedulable (a single node: its pods would have nowhere to go).
        #[arg(long)]
        only_if_others: bool,
        /// Then delete the Node (leaving the cluster: its pod CIDR is freed, its name free to join again).
        #[arg(long)]
        delete: bool,
    },
    /// Makes NODE schedulable again (after an upgrade's drain).
    Uncordon {
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long)]
        node: String,
    },
    /// Writes a consistent backup of the store of DATA-DIR (serving or not)
    /// to OUT: a header (Plinth version, cluster CA's sha256, time, the
    /// copy's sha256) and the database copy.
    Backup {
        #[arg(long)]
        data_dir: PathBuf,
        /// The cluster CA certificate (default: DATA-DIR/ca.crt).
        #[arg(long)]
        ca_cert: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Brings back FROM (a backup, or an automatic snapshot under
    /// DATA-DIR/snapshots) as the store of DATA-DIR; the server must be
    /// stopped. A backup of another cluster, or a damaged one, is refused.
    Restore {
        #[arg(long)]
        data_dir: PathBuf,
        /// The cluster CA certificate (default: DATA-DIR/ca.crt).
        #[arg(long)]
        ca_cert: Option<PathBuf>,
        /// Only check FROM as a restore would; change nothing.
        #[arg(long)]
        check: bool,
        /// FROM must be a backup file (not a snapshot).
        #[arg(long)]
        backup: bool,
        from: PathBuf,
    },
    /// Copies every object of DATA-DIR's SQLite store into etcd (--store
    /// etcd://…): a single node becomes the first member of an HA control
    /// plane. The server must be stopped, etcd empty (unless --force);
    /// then start `orchestrator server --data-dir DATA-DIR --store etcd://…`.
    Migrate {
        #[arg(long)]
        data_dir: PathBuf,
        /// Write over the keys etcd holds already.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Administers the etcd cluster of an HA control plane (init runs
    /// these): its members, a member added before it starts, a member
    /// removed, a consistent snapshot.
    Etcd {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        action: EtcdAction,
    },
    /// Prints, as JSON, the certificates this node's orchestrator presents
    /// and hands out (PEM): the API server's serving certificate and the
    /// admin kubeconfig's (with --api), the kubelet's (with --kubelet).
    Certs {
        #[arg(long)]
        data_dir: PathBuf,
        /// The API server's listen address.
        #[arg(long)]
        api: Option<String>,
        /// The kubelet's listen address.
        #[arg(long)]
        kubelet: Option<String>,
    },
    /// Runs the kubelet alone against a remote API server (a worker node).
    Kubelet {
        /// The API server and this node's client certificate (embedded data).
        #[arg(long, required_unless_present = "server")]
        kubeconfig: Option<PathBuf>,
        /// Or the API server's URL, or every control plane's joined by
        /// commas (`https://a:6443,https://b:6443`: the kubelet moves to
        /// another when the one it uses stops answering); the kubelet
        /// joins with a bootstrap token, or reuses the certificate it got
        /// when it joined.
        #[arg(long, conflicts_with = "kubeconfig", requires = "ca_cert_hash")]
        server: Option<String>,
        /// The pin of the cluster CA: `sha256:<hex of its SubjectPublicKeyInfo>` (kubeadm's discovery-token-ca-cert-hash).
        #[arg(long)]
        ca_cert_hash: Option<String>,
        /// A file holding the bootstrap token to join with (needed only until the node has its certificate).
        #[arg(long)]
        token_file: Option<PathBuf>,
        #[command(flatten)]
        node: NodeArgs,
    },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Creates a token and prints it (with the CA pin workers need).
    Create {
        /// How long it authenticates (e.g. 24h; 0: forever).
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Lists tokens: id, expiry, description.
    List,
    /// Deletes a token (by id or whole token): it joins nothing more.
    Delete { token: String },
}

async fn token(kubeconfig: &std::path::Path, action: TokenAction) -> anyhow::Result<()> {
    use orchestrator_apimachinery::bootstrap_token::{NAMESPACE, SECRET_TYPE, Stored, Token};
    let remote = orchestrator_client::Remote::from_kubeconfig(kubeconfig)?;
    let pin = orchestrator_http::pki::ca_pin(remote.ca_pem.as_bytes()).map_err(anyhow::Error::msg)?;
    let api = Api::Remote(remote);
    match action {
        TokenAction::Create { ttl, description } => {
            let t = Token::generate();
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
            let secret = t.to_secret(i64::try_from(now)?, (!ttl.is_zero()).then_some(ttl), &description);
            api.create("Secret", Some(NAMESPACE), serde_json::to_value(&secret)?).await?;
            println!("{}\n--ca-cert-hash {pin}", t.reveal());
        }
        TokenAction::List => {
            println!("{:<8} {:<22} DESCRIPTION", "TOKEN", "EXPIRES");
            for s in api.list("Secret", &format!("type={SECRET_TYPE}")).await? {
                let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(s)?;
                if secret.metadata.namespace.as_deref() != Some(NAMESPACE) {
                    continue;
                }
                match Stored::from_secret(&secret) {
                    Ok(t) => {
                        let expires = t.expiration.map_or("<forever>".into(), |e| {
                            orchestrator_apimachinery::registry::format_time(
                                time::OffsetDateTime::from_unix_timestamp(e)
                                    .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
                            )
                        });
                        println!("{:<8} {expires:<22} {}", t.token.id, t.description);
                    }
                    Err(e) => eprintln!("{e}"),
                }
            }
        }
        TokenAction::Delete { token } => {
            let id = token.split('.').next().unwrap_or_default().to_string();
            let name = format!("bootstrap-token-{id}");
            let s = api.get("Secret", Some(NAMESPACE), &name).await?;
            let uid = s.pointer("/metadata/uid").and_then(serde_json::Value::as_str).unwrap_or_default();
            api.delete_now("Secret", Some(NAMESPACE), &name, uid).await?;
            println!("bootstrap token {id} deleted");
        }
    }
    Ok(())
}

/// How a node tool reaches the API: a control plane's admin kubeconfig,
/// or a worker's own kubelet certificate.
#[derive(Args)]
struct ApiArgs {
    /// An admin kubeconfig (embedded data).
    #[arg(long, required_unless_present = "server")]
    kubeconfig: Option<PathBuf>,
    /// Or the API server (or every control plane's, comma-separated) with
    /// the node's own certificate, from the kubelet directory's `pki/`.
    #[arg(long, conflicts_with = "kubeconfig", requires = "kubelet_dir")]
    server: Option<String>,
    /// The kubelet directory of a joined worker.
    #[arg(long, requires = "server")]
    kubelet_dir: Option<PathBuf>,
}

impl ApiArgs {
    fn api(self) -> anyhow::Result<Api> {
        let remote = match (self.kubeconfig, self.server, self.kubelet_dir) {
            (Some(k), ..) => orchestrator_client::Remote::from_kubeconfig(&k)?,
            (None, Some(server), Some(dir)) => {
                kubelet::bootstrap::node_client(&server, &dir).map_err(anyhow::Error::msg)?
            }
            _ => anyhow::bail!("give --kubeconfig, or --server with --kubelet-dir"),
        };
        Ok(Api::Remote(remote))
    }
}

/// The etcd member list for the controller that removes a deleted Node's member.
struct EtcdMembers(orchestrator_store_etcd::EtcdConfig);

impl orchestrator_controllers::etcd_members::Members for EtcdMembers {
    fn leave(&self, name: &str) -> Result<Option<String>, String> {
        use orchestrator_store_etcd::admin::{self, Left};
        match admin::leave(&self.0, name, false, false) {
            Ok(Left::NotAMember(_)) => Ok(None),
            Ok(left) => Ok(Some(left.to_string())),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[derive(Subcommand)]
enum EtcdAction {
    /// The members, as JSON.
    Members,
    /// Adds the member NAME serving its peers at PEER-URL (unless it is
    /// listed already) and prints its `--initial-cluster`.
    MemberAdd {
        #[arg(long)]
        name: String,
        #[arg(long)]
        peer_url: String,
    },
    /// Removes the member NAME.
    MemberRemove { name: String },
    /// The member NAME leaves the cluster (a reset node): removed through
    /// the others, refused when it is the last member or too few of the
    /// others answer to keep a quorum, unless --force (then kept, saying
    /// why). A name not listed is not an error (removed already).
    Leave {
        #[arg(long)]
        name: String,
        /// Go ahead without a quorum or as the last member.
        #[arg(long)]
        force: bool,
        /// Only check that it may leave; change nothing.
        #[arg(long)]
        check: bool,
    },
    /// Checks the snapshot FILE (with --check) or writes it as the data of
    /// a new one-member cluster under DATA-DIR (etcd's --data-dir, which
    /// must hold no member): its etcd then starts with
    /// `--initial-cluster-state new` and only itself in `--initial-cluster`.
    Restore {
        file: PathBuf,
        #[arg(long)]
        check: bool,
        #[arg(long, required_unless_present = "check")]
        data_dir: Option<PathBuf>,
    },
    /// Writes a consistent snapshot to OUT (checked before it is renamed into place).
    Snapshot {
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args)]
struct StoreArgs {
    /// Keep objects in etcd (an HA control plane):
    /// etcd://HOST:PORT[,HOST:PORT...]; default: SQLite in DATA-DIR.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Client TLS to etcd: the CA of its members' certificates (PEM).
    #[arg(long, requires_all = ["store", "etcd_cert", "etcd_key"])]
    etcd_ca: Option<PathBuf>,
    /// This server's client certificate for etcd (PEM).
    #[arg(long, requires = "etcd_ca")]
    etcd_cert: Option<PathBuf>,
    #[arg(long, requires = "etcd_ca")]
    etcd_key: Option<PathBuf>,
}

impl StoreArgs {
    fn etcd(self) -> anyhow::Result<Option<orchestrator_store_etcd::EtcdConfig>> {
        let Some(url) = self.store else { return Ok(None) };
        let tls = match (self.etcd_ca, self.etcd_cert, self.etcd_key) {
            (Some(ca), Some(cert), Some(key)) => Some(orchestrator_store_etcd::ClientTls { ca, cert, key }),
            _ => None,
        };
        Ok(Some(orchestrator_store_etcd::EtcdConfig::from_url(&url, tls)?))
    }
}

#[derive(Args)]
struct NodeArgs {
    /// The node's name (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    cri_socket: PathBuf,
    /// Pod volumes and logs (default: DATA-DIR/kubelet with `server`, /var/lib/plinth/kubelet alone).
    #[arg(long)]
    kubelet_dir: Option<PathBuf>,
    /// Where containerd's CRI plugin reads CNI configs.
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// The node's pod range, overriding the Node's `spec.podCIDR` (for a
    /// kubelet whose control plane runs no node IPAM: `server` without --cluster-cidr).
    #[arg(long, value_name = "CIDR")]
    pod_cidr: Option<String>,
    /// The CNI bridge's name.
    #[arg(long, default_value = "plinth0")]
    cni_bridge: String,
    /// The node's address (default: the address of the default route).
    #[arg(long)]
    node_ip: Option<std::net::IpAddr>,
    /// The kubelet's HTTPS endpoint (container logs and exec for the API server).
    #[arg(long, default_value = "0.0.0.0:10250")]
    kubelet_listen: SocketAddr,
    /// OCI image archives (*.tar) imported into containerd at start: images without a registry.
    #[arg(long)]
    image_dir: Option<PathBuf>,
    /// Don't route Services' cluster IPs and node ports to their endpoints (iptables rules, as kube-proxy).
    #[arg(long)]
    disable_service_proxy: bool,
    /// How other nodes' pods are reached: `host-gw` (direct routes), `vxlan` (the overlay), or `auto` (direct on a shared network, else VXLAN).
    #[arg(long, default_value = "auto")]
    pod_network: orchestrator_node_net::routes::Mode,
    /// A container's log file is rotated once over this many bytes (upstream's `--container-log-max-size`, 10Mi).
    #[arg(long, default_value_t = kubelet::logs::MAX_LOG_SIZE)]
    container_log_max_size: u64,
    /// Log files kept per container, the one being written included (upstream's `--container-log-max-files`).
    #[arg(long, default_value_t = kubelet::logs::MAX_LOG_FILES as u64, value_parser = clap::value_parser!(u64).range(2..))]
    container_log_max_files: u64,
}

impl NodeArgs {
    fn config(self, default_dir: PathBuf) -> kubelet::Config {
        kubelet::Config {
            node_name: self.node_name.unwrap_or_else(|| {
                nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "node".into())
            }),
            cri_socket: self.cri_socket,
            dir: self.kubelet_dir.unwrap_or(default_dir),
            cni_conf_dir: self.cni_conf_dir,
            pod_cidr: self.pod_cidr.unwrap_or_default(),
            bridge: self.cni_bridge,
            node_ip: self.node_ip,
            listen: self.kubelet_listen,
            image_dir: self.image_dir,
            service_proxy: !self.disable_service_proxy,
            pod_network: self.pod_network,
            log_rotation: kubelet::logs::Rotation {
                max_size: self.container_log_max_size,
                max_files: usize::try_from(self.container_log_max_files).unwrap_or(usize::MAX),
            },
        }
    }
}

/// The soft open-file limit up to the hard one: a service of PID 1 starts
/// with 1,024, fewer than the API server's connection budgets need.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!("raising the open-file limit from {soft} to {hard}: {e}");
    }
}

/// The tracing target of a boot step the crates reach (field `step`, e.g.
/// the kubelet's first Ready status).
const BOOT_STEP: &str = "boot_step";

/// Appends the boot steps logged under [`BOOT_STEP`] to the file init names
/// in `PLINTH_BOOT_STEPS` (`machinery::boot_steps`: `<step> <µs since boot>`).
struct BootSteps(PathBuf);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for BootSteps {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Step(Option<String>);
        impl tracing::field::Visit for Step {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "step" {
                    self.0 = Some(value.to_string());
                }
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        let mut step = Step(None);
        event.record(&mut step);
        let Some(name) = step.0 else { return };
        record_step(&self.0, &name);
    }
}

fn record_step(path: &std::path::Path, name: &str) {
    use std::io::Write as _;
    let at = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map_or(std::time::Duration::ZERO, std::time::Duration::from);
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(format!("{name} {}\n", at.as_micros()).as_bytes()));
    if let Err(e) = written {
        eprintln!("recording boot step {name} in {}: {e}", path.display());
    }
}

fn main() -> anyhow::Result<()> {
    use tracing_subscriber::prelude::*;
    // Warnings by default: they are how a node says what it cannot do.
    let filter = tracing_subscriber::EnvFilter::try_from_env("PLINTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let steps = std::env::var_os("PLINTH_BOOT_STEPS").map(|p| {
        BootSteps(PathBuf::from(p))
            .with_filter(tracing_subscriber::filter::Targets::new().with_target(BOOT_STEP, tracing::Level::INFO))
    });
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr)
                .with_filter(filter),
        )
        .with(steps)
        .init();
    raise_open_file_limit();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    match Cli::parse().command {
        Command::Server {
            data_dir,
            listen,
            ca_cert,
            ca_key,
            fsync,
            controllers,
            kubelet,
            cert_sans,
            event_ttl,
            store,
            bootstrap_token_file,
            cluster_signing_duration,
            cluster_cidr,
            node_cidr_mask_size,
            serving_cert_lifetime,
            node,
        } => {
            if let Some(cidr) = &cluster_cidr {
                let pool = orchestrator_controllers::ipam::Pool::new(cidr, node_cidr_mask_size)?;
                orchestrator_controllers::ipam::configure(pool);
            }
            let bootstrap_token = match &bootstrap_token_file {
                Some(path) => {
                    let text =
                        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("read {}: {e}", path.display()))?;
                    let t = orchestrator_apimachinery::bootstrap_token::Token::try_from(text.trim())
                        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                    Some(t)
                }
                None => None,
            };
            let durability =
                if fsync { orchestrator_store::Durability::Full } else { orchestrator_store::Durability::Normal };
            let node = kubelet.then(|| node.config(data_dir.join("kubelet")));
            let dir = data_dir.clone();
            let etcd = store.etcd()?;
            let on_etcd = etcd.is_some();
            let members = etcd.clone().map(|e| Arc::new(EtcdMembers(e)));
            let cfg = orchestrator_apiserver::Config {
                data_dir,
                listen,
                ca_cert,
                ca_key,
                durability,
                cert_sans,
                event_ttl,
                etcd,
                bootstrap_token,
                serving_lifetime: serving_cert_lifetime,
            };
            rt.block_on(async {
                let running = match orchestrator_apiserver::start(cfg).await {
                    Err(orchestrator_apiserver::ServerError::Store(
                        e @ orchestrator_store::StoreError::Corrupt { .. },
                    )) => {
                        let offer = backup::corrupt_offer(&dir, &e);
                        backup::report_damaged(&dir, &e);
                        tracing::error!("{offer}");
                        eprintln!("{offer}");
                        // Restarting would find the same damage: wait for the operator.
                        std::future::pending::<()>().await;
                        unreachable!("pending never completes")
                    }
                    r => r?,
                };
                backup::clear_damaged(&dir);
                if let Some(m) = members {
                    orchestrator_controllers::etcd_members::spawn(running.registry.clone(), m);
                }
                tracing::info!(target: BOOT_STEP, step = "apiserver", "the API server is serving");
                if controllers {
                    if on_etcd {
                        // Several API servers share the store: one runs the controllers.
                        let host = nix::unistd::gethostname()
                            .map_or_else(|_| "orchestrator".into(), |h| h.to_string_lossy().into_owned());
                        let election = orchestrator_controllers::leader::Election::new(&host);
                        orchestrator_controllers::leader::spawn_elected(running.registry.clone(), election);
                    } else {
                        orchestrator_controllers::spawn_all(running.registry.clone());
                    }
                    // CSRs are approved and signed by every control plane (a
                    // second approval or signature of the same request is a 409).
                    let signer = orchestrator_controllers::certificates::Signer {
                        ca_cert_pem: running.ca.cert_pem.clone(),
                        ca_key_pem: running.ca.key_pem.clone(),
                        lifetime: cluster_signing_duration,
                    };
                    orchestrator_controllers::certificates::spawn(running.registry.clone(), signer);
                    orchestrator_controllers::ca_expiry::spawn(running.registry.clone(), running.ca.cert_pem.clone());
                }
                if let Some(k) = node {
                    let identity = Identity::IssuedBy { ca: running.ca.clone(), lifetime: serving_cert_lifetime };
                    kubelet::start(k, Api::Local(running.registry.clone()), identity).await?;
                }
                let kubeconfig = running.admin_kubeconfig.display();
                println!("listening on https://{} (admin kubeconfig: {kubeconfig})", running.address);
                running.task.await?;
                Ok(())
            })
        }
        Command::Health { kubeconfig, node, record, expect, since } => rt.block_on(async {
            use orchestrator_client::health;
            let api = Api::Remote(orchestrator_client::Remote::from_kubeconfig(&kubeconfig)?);
            if let Some(path) = record {
                let pods = health::ready_pods(&api, &node).await?;
                std::fs::write(&path, serde_json::to_vec(&pods)?)
                    .map_err(|e| anyhow::anyhow!("write {}: {e}", path.display()))?;
                println!("{} running pods recorded in {}", pods.len(), path.display());
                return Ok(());
            }
            let expected: Vec<health::PodRef> = match &expect {
                Some(path) => {
                    let text = std::fs::read(path).map_err(|e| anyhow::anyhow!("read {}: {e}", path.display()))?;
                    serde_json::from_slice(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
                }
                None => Vec::new(),
            };
            let missing = health::not_ready(&api, &node, &expected, since).await?;
            if missing.is_empty() {
                println!("node {node} is Ready and its {} pods are running", expected.len());
                return Ok(());
            }
            println!("{}", missing.join("; "));
            std::process::exit(1);
        }),
        Command::Drain { api, node, timeout, only_if_others, delete } => rt.block_on(async {
            use orchestrator_client::drain;
            let api = api.api()?;
            match drain::drain(&api, &node, timeout, only_if_others && !delete).await {
                Ok(done) => println!("node {node}: {done}"),
                // Leaving: a Node already gone is what was asked.
                Err(drain::DrainError::NoNode { .. }) if delete => {}
                Err(e) => return Err(e.into()),
            }
            if delete {
                match api.get("Node", None, &node).await {
                    Ok(n) => {
                        let n: k8s_openapi::api::core::v1::Node = orchestrator_apimachinery::typed::decode(n, "Node")?;
                        api.delete_now("Node", None, &node, n.metadata.uid.as_deref().unwrap_or_default()).await?;
                        println!("node {node}: Node deleted");
                    }
                    Err(e) if e.code == 404 => println!("node {node}: no Node to delete"),
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        }),
        Command::Uncordon { api, node } => rt.block_on(async {
            let api = api.api()?;
            let changed = orchestrator_client::drain::cordon(&api, &node, false).await?;
            println!("node {node}: {}", if changed { "uncordoned" } else { "already schedulable" });
            Ok(())
        }),
        Command::Backup { data_dir, ca_cert, out } => {
            let h = backup::backup(&data_dir, ca_cert.as_deref(), &out)?;
            println!("{}: {} bytes, sha256 {}, cluster {}", out.display(), h.size, h.sha256, h.cluster);
            Ok(())
        }
        Command::Restore { data_dir, ca_cert, check: true, backup, from } => {
            println!("{}", backup::check(&data_dir, ca_cert.as_deref(), &from, backup)?);
            Ok(())
        }
        Command::Restore { data_dir, ca_cert, check: false, backup, from } => {
            println!("{}", backup::restore(&data_dir, ca_cert.as_deref(), &from, backup)?);
            Ok(())
        }
        Command::Certs { data_dir, api, kubelet } => {
            let found = rt.block_on(certs::list(&data_dir, api.as_deref(), kubelet.as_deref()));
            println!("{}", serde_json::to_string(&found)?);
            Ok(())
        }
        Command::Etcd { action: EtcdAction::Restore { file, check, data_dir }, .. } => {
            use orchestrator_store_etcd::restore;
            match data_dir.filter(|_| !check) {
                None => println!("{}: {}", file.display(), restore::check(&file)?),
                Some(dir) => println!("restored {} into {}", restore::restore(&file, &dir)?, dir.display()),
            }
            Ok(())
        }
        Command::Etcd { store, action } => {
            use orchestrator_store_etcd::admin;
            let etcd = store.etcd()?.ok_or_else(|| anyhow::anyhow!("give --store etcd://HOST:PORT[,HOST:PORT...]"))?;
            match action {
                EtcdAction::Members => println!("{}", serde_json::to_string(&admin::members(&etcd)?)?),
                EtcdAction::MemberAdd { name, peer_url } => println!("{}", admin::member_add(&etcd, &name, &peer_url)?),
                EtcdAction::MemberRemove { name } => {
                    let m = admin::member_remove(&etcd, &name)?;
                    println!("member {} ({}) removed", m.name, m.id);
                }
                EtcdAction::Leave { name, force, check } => println!("{}", admin::leave(&etcd, &name, force, check)?),
                EtcdAction::Snapshot { out } => {
                    let size = admin::snapshot(&etcd, &out)?;
                    println!("{size}");
                }
                EtcdAction::Restore { .. } => anyhow::bail!("etcd restore needs no --store (handled above)"),
            }
            Ok(())
        }
        Command::Migrate { data_dir, force, store } => {
            let url = store.store.clone().unwrap_or_default();
            let etcd = store.etcd()?.ok_or_else(|| anyhow::anyhow!("give --store etcd://HOST:PORT[,HOST:PORT...]"))?;
            println!("{}", migrate::migrate(&data_dir, &url, &etcd, force)?);
            Ok(())
        }
        Command::Token { kubeconfig, action } => rt.block_on(token(&kubeconfig, action)),
        Command::Kubelet { kubeconfig, server, ca_cert_hash, token_file, node } => rt.block_on(async {
            let cfg = node.config("/var/lib/plinth/kubelet".into());
            let remote = match (kubeconfig, server, ca_cert_hash) {
                (Some(k), ..) => orchestrator_client::Remote::from_kubeconfig(&k)?,
                (None, Some(server), Some(ca_pin)) => {
                    let token = match &token_file {
                        Some(p) => Some(
                            std::fs::read_to_string(p)
                                .map_err(|e| anyhow::anyhow!("read {}: {e}", p.display()))?
                                .trim()
                                .to_string(),
                        ),
                        None => None,
                    };
                    let join = kubelet::bootstrap::Join {
                        server,
                        token,
                        ca_pin,
                        node_name: cfg.node_name.clone(),
                        dir: cfg.dir.clone(),
                    };
                    let remote = kubelet::bootstrap::identity(&join).await?;
                    tokio::spawn(kubelet::bootstrap::renew_forever(remote.clone(), join.dir, join.node_name));
                    remote
                }
                _ => anyhow::bail!("give --kubeconfig, or --server with --ca-cert-hash (and --token-file to join)"),
            };
            let identity = Identity::Requested { ca_pem: remote.ca_pem.clone() };
            let k = kubelet::start(cfg, Api::Remote(remote), identity).await?;
            println!("kubelet {} running", k.node_name());
            std::future::pending::<()>().await;
            Ok(())
        }),
    }
}

//! osctl: the operator CLI for Plinth nodes.
//!
//! Exit codes: 0 success; 1 failure; 2 bad usage; 3 invalid config (nothing
//! was sent or written); 4 refused by the node (signature, role, version,
//! mode) or by `image flash`'s checks (nothing written); 5 node unreachable
//! or TLS refused.

pub mod clientconfig;
pub mod connect;
pub mod flash;
mod generate;
mod kubeconfig;
mod output;
mod store_transfer;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use machinery::api::{self, ApplyMode, machine_service_client::MachineServiceClient};
use machinery::config::MachineConfig;
use machinery::signing::{self, Purpose};
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

use crate::clientconfig::{ClientConfig, Context};
use crate::connect::{Credentials, LocalChecks};
use crate::output::Format;

#[derive(Parser, Debug)]
#[command(name = "osctl", version, about = "Operate Plinth nodes", propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Target nodes (comma-separated or repeated); default: the context's.
    #[arg(short, long, global = true, value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// Where to connect, when it differs from the node address.
    #[arg(short, long, global = true, value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Context of the client config to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Client config file (default: $OSCTLCONFIG or ~/.plinth/osctlconfig).
    #[arg(long, global = true)]
    pub osctlconfig: Option<PathBuf>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Talk to a node in maintenance mode: no client certificate, and the
    /// node's self-signed certificate is not checked.
    #[arg(short, long, global = true)]
    pub insecure: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate keys, certificates and configs.
    #[command(subcommand)]
    Gen(generate::GenCommand),
    /// Check a machine config and print every problem found.
    Validate {
        #[arg(short, long)]
        file: PathBuf,
    },
    /// Sign a machine config into an envelope file (for offline signing).
    Sign {
        #[arg(short, long)]
        file: PathBuf,
        /// Signing key (PKCS#8 PEM); default: the context's signing_key.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Output file (default: FILE.signed).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Sign and apply a machine config (TOML, or an envelope from `sign`).
    ApplyConfig {
        #[arg(short, long)]
        file: PathBuf,
        #[arg(short, long, value_enum, default_value_t = Mode::Auto)]
        mode: Mode,
        /// For --mode try: how long before the node reverts (e.g. 1m).
        #[arg(long, default_value = "1m")]
        timeout: humantime::Duration,
        /// Show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Signing key (PKCS#8 PEM); default: the context's signing_key.
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Print the node's config as applied.
    GetConfig,
    /// Plinth version and node state.
    Version,
    /// This boot's steps (kernel → PID 1 → … → Node Ready), timed on the
    /// node's own clock since the kernel started.
    BootTimes,
    /// List the node's services.
    Services,
    /// Act on one service.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// A service's logs.
    Logs {
        service: String,
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long, default_value_t = 0)]
        tail: u32,
    },
    /// The kernel log.
    Dmesg {
        #[arg(short, long)]
        follow: bool,
    },
    /// Node events: services starting and stopping, configs applied.
    Events {
        #[arg(short, long)]
        follow: bool,
        #[arg(long, default_value_t = 0)]
        tail: u32,
    },
    /// Install a signed upgrade bundle (.osb) into the slot that is not
    /// running; the node boots it once and keeps it only if it is healthy.
    Upgrade {
        /// The bundle (`image-builder bundle`).
        #[arg(long)]
        bundle: PathBuf,
        /// Write and arm the slot; boot it at the next reboot.
        #[arg(long, visible_alias = "no-reboot")]
        stage: bool,
        /// Install a bundle older than the running version.
        #[arg(long)]
        allow_downgrade: bool,
        /// Don't cordon and drain the node before its reboot (by default
        /// its pods are evicted to other nodes, PodDisruptionBudgets
        /// honoured, and it is uncordoned once the new slot is committed).
        #[arg(long)]
        no_drain: bool,
        /// How long the drain may take before the node gives up rebooting.
        #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
        drain_timeout: std::time::Duration,
    },
    /// Boot the other (committed) slot again.
    Rollback,
    /// Leave the cluster and wipe the node, as `talosctl reset`: drain it,
    /// delete its Node, remove a control plane's etcd member (refused
    /// before anything changes when the other members would lose their
    /// quorum or it is the last one, unless --force), wipe STATE and EPHEMERAL (the boot slots and the
    /// security floor are kept) and reboot into maintenance mode, ready
    /// for `apply-config` with another cluster's config.
    Reset {
        /// Leave the cluster first (drain, delete the Node); false for a
        /// node whose cluster is gone: only wipe and reboot.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        graceful: bool,
        /// How long the drain may take.
        #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
        drain_timeout: std::time::Duration,
        /// Don't ask (needed when the input is not a terminal).
        #[arg(long)]
        yes: bool,
        /// Reset a control plane even when its etcd member cannot leave
        /// (the others would lose their quorum, or it is the last member).
        #[arg(long)]
        force: bool,
    },
    /// An admin kubeconfig for the node's Kubernetes API (printed, or
    /// written to --out). Given several control planes (`-n a -n b`), one
    /// kubeconfig with a context per control plane (the first current);
    /// with --server (a virtual IP or load balancer in front of them all),
    /// that one server.
    Kubeconfig {
        /// The API server URL in the kubeconfig (default: https://NODE:6443).
        #[arg(long)]
        server: Option<String>,
        /// Write it to this file (mode 0600) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Every certificate Plinth issues on the node, its expiry, and whether
    /// the node renews it; warns of one that ends within 30 days unrenewed.
    Certs,
    /// Write a consistent backup of the cluster store (a control plane) to
    /// FILE: Plinth version, cluster identity and checksum in its header.
    Backup {
        #[arg(long)]
        out: PathBuf,
    },
    /// Put a backup (or, with --snapshot, one of the node's automatic
    /// snapshots) in place of the cluster store: the node checks it, stops
    /// the orchestrator, restores and starts it again.
    Restore {
        /// A file written by `osctl backup`.
        #[arg(required_unless_present = "snapshot", conflicts_with = "snapshot")]
        file: Option<PathBuf>,
        /// An automatic snapshot on the node, by file name (as `osctl
        /// version` names it when the store is damaged).
        #[arg(long)]
        snapshot: Option<String>,
    },
    /// Reboot the node.
    Reboot,
    /// Stop the node's services and power it off.
    Shutdown,
    /// Work with disk images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// The etcd cluster of an HA control plane (cluster.datastore = "etcd").
    #[command(subcommand)]
    Etcd(EtcdCommand),
}

#[derive(Subcommand, Debug)]
pub enum EtcdCommand {
    /// The members of the etcd cluster, as each node's member sees them.
    Members,
    /// Write a consistent snapshot of etcd (its maintenance API, checked on
    /// the node) to FILE.
    Snapshot {
        #[arg(long)]
        out: PathBuf,
    },
    /// Remove the member NAME (a control plane's hostname) from the etcd
    /// cluster: a control plane that is gone for good.
    RemoveMember { name: String },
    /// Restore a snapshot (`osctl etcd snapshot`'s file) onto a control
    /// plane listed alone in its cluster.endpoints: its etcd member starts
    /// on it as a new cluster of one member, with every object of the
    /// snapshot (the member's previous data is kept aside on the node). A
    /// damaged file is refused and changes nothing. The other control
    /// planes join afterwards, after a reset.
    Restore { file: PathBuf },
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Write an image to an SD card or USB stick, verify it, and optionally
    /// put a signed config on it for the first boot (docs/flashing.md).
    Flash(FlashArgs),
}

#[derive(Args, Debug)]
pub struct FlashArgs {
    /// The image (`image-builder build`): `.img`, `.img.zst` or `.img.xz`.
    #[arg(long, required_unless_present = "list")]
    pub image: Option<PathBuf>,
    /// The whole SD card or USB stick: /dev/sdX, /dev/mmcblkN, /dev/disk/by-id/….
    #[arg(long, required_unless_present = "list")]
    pub device: Option<PathBuf>,
    /// A machine config for the node's first boot: TOML (validated and
    /// signed with the context's key) or an envelope from `osctl sign`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Signing key for --config (PKCS#8 PEM); default: the context's.
    #[arg(long, requires = "config")]
    pub key: Option<PathBuf>,
    /// Refuse an image not built for this board (from its manifest).
    #[arg(long)]
    pub board: Option<String>,
    /// Flash a disk that is not removable or is bigger than 256 GiB.
    #[arg(long)]
    pub force: bool,
    /// Do not ask before overwriting the device.
    #[arg(short, long)]
    pub yes: bool,
    /// List the disks that could take an image, and why others cannot.
    #[arg(long, conflicts_with_all = ["image", "device", "config", "board"])]
    pub list: bool,
    /// Tests only: --device is a regular file standing in for a disk.
    #[arg(long, hide = true)]
    pub device_is_file: bool,
}

#[derive(Subcommand, Debug)]
pub enum ServiceCommand {
    /// Restart a service now.
    Restart { name: String },
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum Mode {
    Auto,
    NoReboot,
    Reboot,
    Staged,
    Try,
}

impl From<Mode> for ApplyMode {
    fn from(m: Mode) -> Self {
        match m {
            Mode::Auto => ApplyMode::Auto,
            Mode::NoReboot => ApplyMode::NoReboot,
            Mode::Reboot => ApplyMode::Reboot,
            Mode::Staged => ApplyMode::Staged,
            Mode::Try => ApplyMode::Try,
        }
    }
}

/// A failure, with the exit code a script can test.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Other(String),
}

impl Failure {
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            Failure::Other(_) => 1,
            Failure::Usage(_) => 2,
            Failure::Invalid(_) => 3,
            Failure::Refused(_) => 4,
            Failure::Unreachable(_) => 5,
        })
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(format!("{e:#}"))
    }
}

impl From<connect::ConnectError> for Failure {
    fn from(e: connect::ConnectError) -> Self {
        match e {
            connect::ConnectError::Connect { .. } => Failure::Unreachable(e.to_string()),
            other => Failure::Other(other.to_string()),
        }
    }
}

impl From<flash::FlashError> for Failure {
    fn from(e: flash::FlashError) -> Self {
        match e {
            flash::FlashError::Usage(_) => Failure::Usage(e.to_string()),
            e if e.is_refusal() => Failure::Refused(e.to_string()),
            e => Failure::Other(e.to_string()),
        }
    }
}

/// Every message in an error's source chain, joined, without repeats.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        let t = x.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = x.source();
    }
    s
}

/// A TLS or connection failure in words a person can act on.
pub fn explain_transport(e: &(dyn std::error::Error + 'static)) -> String {
    let raw = chain(e);
    let lower = raw.to_lowercase();
    let known = [
        ("unknownca", "the node does not trust your client certificate: it was issued by another CA than the node's"),
        // The node found a CA of the same name whose signature does not match.
        (
            "decrypterror",
            "the node does not trust your client certificate: it was issued by another CA than the node's (one with the same name)",
        ),
        ("certificateexpired", "the node refused your client certificate: it has expired"),
        (
            "certificaterequired",
            "the node requires a client certificate (it has a config): set crt and key in your osctlconfig context",
        ),
        ("badcertificate", "the node refused your client certificate"),
        (
            "unknownissuer",
            "the node's certificate is not signed by your context's CA (a node in maintenance mode needs --insecure)",
        ),
        ("notvalidforname", "the node's certificate is not valid for the address you used"),
        ("connection refused", "connection refused: is the node up, and is the port right?"),
    ];
    match known.iter().find(|(k, _)| lower.contains(k)) {
        Some((_, friendly)) => format!("{friendly} ({raw})"),
        None => raw,
    }
}

/// A gRPC error from a node, classified.
fn from_status(node: &str, s: tonic::Status) -> Failure {
    use tonic::Code;
    let msg = if s.message().is_empty() { s.code().description().to_string() } else { s.message().to_string() };
    let transport = std::error::Error::source(&s).map(explain_transport);
    let text = format!("{node}: {}", transport.clone().unwrap_or(msg));
    match s.code() {
        Code::PermissionDenied | Code::Unauthenticated | Code::FailedPrecondition => Failure::Refused(text),
        Code::InvalidArgument => Failure::Invalid(text),
        _ if transport.is_some() => Failure::Unreachable(text),
        _ => Failure::Other(text),
    }
}

/// What a command runs against: the resolved context and targets.
pub(crate) struct Session {
    global: Global,
    context: Context,
}

impl Session {
    fn open(global: Global) -> Result<Session, Failure> {
        let (path, explicit) = match &global.osctlconfig {
            Some(p) => (p.clone(), true),
            None => (clientconfig::default_path().unwrap_or_default(), false),
        };
        let cfg = ClientConfig::load(&path, explicit).map_err(|e| Failure::Other(e.to_string()))?;
        let context = cfg.context(global.context.as_deref(), &path).map_err(|e| Failure::Other(e.to_string()))?;
        Ok(Session { global, context })
    }

    /// (node name, address to connect to) pairs.
    fn targets(&self) -> Result<Vec<(String, String)>, Failure> {
        let nodes = if self.global.nodes.is_empty() { &self.context.nodes } else { &self.global.nodes };
        let endpoints = if self.global.endpoints.is_empty() { &self.context.endpoints } else { &self.global.endpoints };
        match (nodes.as_slice(), endpoints.as_slice()) {
            ([], []) => {
                Err(Failure::Other("no node given: use -n NODE, or set nodes in your osctlconfig context".into()))
            }
            ([], eps) => Ok(eps.iter().map(|e| (e.clone(), e.clone())).collect()),
            (ns, []) => Ok(ns.iter().map(|n| (n.clone(), n.clone())).collect()),
            ([n], [e]) => Ok(vec![(n.clone(), e.clone())]),
            (ns, [e]) if ns.iter().all(|n| n == e) => Ok(vec![(e.clone(), e.clone())]),
            _ => Err(Failure::Other(
                "reaching several nodes through an endpoint is not supported yet: give each node with -n and no -e"
                    .into(),
            )),
        }
    }

    fn credentials(&self) -> Result<Credentials, Failure> {
        if self.global.insecure {
            return Ok(Credentials::Insecure);
        }
        let c = &self.context;
        match (&c.ca, &c.crt, &c.key) {
            (Some(ca), Some(crt), Some(key)) => Ok(Credentials::Mutual { ca: ca.clone(), crt: crt.clone(), key: key.clone() }),
            _ => Err(Failure::Other(
                "no client certificate: set ca, crt and key in your osctlconfig context (see `osctl gen keys`), or use --insecure for a node in maintenance mode".into(),
            )),
        }
    }

    async fn client(&self, addr: &str) -> Result<MachineServiceClient<Channel>, Failure> {
        Ok(connect::connect(addr, &self.credentials()?, LocalChecks::On).await?)
    }

    /// Classifies a failed call; a dropped connection is diagnosed.
    async fn failure(&self, node: &str, addr: &str, s: tonic::Status) -> Failure {
        let dropped = std::error::Error::source(&s).is_some();
        if dropped
            && let Ok(creds) = self.credentials()
            && let Some(why) = connect::diagnose(addr, &creds, LocalChecks::On).await
        {
            return Failure::Unreachable(format!("{node}: {why}"));
        }
        from_status(node, s)
    }

    fn signing_key(&self, flag: Option<&PathBuf>) -> Result<signing::SigningKey, Failure> {
        let path = flag.or(self.context.signing_key.as_ref()).ok_or_else(|| {
            Failure::Other("no signing key: pass --key ops.key, or set signing_key in your osctlconfig context".into())
        })?;
        let pem =
            std::fs::read_to_string(path).map_err(|e| Failure::Other(format!("reading {}: {e}", path.display())))?;
        signing::signing_key_from_pem(&pem).map_err(|e| Failure::Other(format!("{}: {e}", path.display())))
    }

    /// Runs `f` against every target; reports each failure and returns the
    /// last one, so one bad node does not hide the others' answers.
    async fn each<T, F, Fut>(&self, f: F) -> Result<Vec<(String, T)>, Failure>
    where
        F: Fn(String, MachineServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let targets = self.targets()?;
        let many = targets.len() > 1;
        let mut ok = Vec::new();
        let mut failed = None;
        for (node, addr) in targets {
            let result = match self.client(&addr).await {
                Ok(client) => match f(node.clone(), client).await {
                    Ok(v) => Ok(v),
                    Err(s) => Err(self.failure(&node, &addr, s).await),
                },
                Err(e) => Err(e),
            };
            match result {
                Ok(v) => ok.push((node, v)),
                Err(e) if many => {
                    eprintln!("error: {e}");
                    failed = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        match failed {
            Some(e) if ok.is_empty() => Err(e),
            _ => Ok(ok),
        }
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| Failure::Other(format!("reading {}: {e}", path.display())))
}

/// Validates a config file locally; the diagnostics are the error.
fn validate_file(path: &Path, bytes: &[u8]) -> Result<MachineConfig, Failure> {
    let name = path.display().to_string();
    let text = std::str::from_utf8(bytes).map_err(|e| Failure::Invalid(format!("{name}: not UTF-8 text: {e}")))?;
    let parsed = MachineConfig::parse_with_warnings(&name, text).map_err(|d| Failure::Invalid(d.to_string()))?;
    for w in &parsed.warnings {
        eprintln!("warning: {w}");
    }
    Ok(parsed.config)
}

/// The config bytes and signature to send: an envelope as it is, a TOML
/// file validated and signed here.
fn config_and_signature(session: &Session, file: &Path, key: Option<&PathBuf>) -> Result<(Vec<u8>, Vec<u8>), Failure> {
    let bytes = read_file(file)?;
    if bytes.starts_with(b"plinth-signed v1\n") {
        return signing::envelope_decode(&bytes).map_err(|e| Failure::Invalid(format!("{}: {e}", file.display())));
    }
    validate_file(file, &bytes)?;
    let key = session.signing_key(key)?;
    let sig = signing::sign(Purpose::Config, &key, &bytes);
    Ok((bytes, sig))
}

pub async fn run(cli: Cli) -> Result<(), Failure> {
    let fmt = cli.global.output;
    match cli.command {
        Command::Gen(cmd) => generate::run(cmd, fmt),
        Command::Validate { file } => {
            let bytes = read_file(&file)?;
            let c = validate_file(&file, &bytes)?;
            match fmt {
                Format::Json => output::json(&serde_json::json!({"file": file, "valid": true, "version": c.version})),
                Format::Table => println!("{}: valid (version {})", file.display(), c.version),
            }
            Ok(())
        }
        Command::Sign { file, key, out } => {
            let session = Session::open(cli.global)?;
            let bytes = read_file(&file)?;
            validate_file(&file, &bytes)?;
            let key = session.signing_key(key.as_ref())?;
            let sig = signing::sign(Purpose::Config, &key, &bytes);
            let out = out.unwrap_or_else(|| PathBuf::from(format!("{}.signed", file.display())));
            std::fs::write(&out, signing::envelope_encode(&bytes, &sig))
                .map_err(|e| Failure::Other(format!("writing {}: {e}", out.display())))?;
            println!(
                "signed {} with key {} → {}",
                file.display(),
                signing::key_id(&key.verifying_key()),
                out.display()
            );
            Ok(())
        }
        Command::ApplyConfig { file, mode, timeout, dry_run, key } => {
            let session = Session::open(cli.global)?;
            let (config, signature) = config_and_signature(&session, &file, key.as_ref())?;
            let req = api::ApplyConfigRequest {
                config,
                signature,
                mode: ApplyMode::from(mode) as i32,
                try_timeout_seconds: u32::try_from(timeout.as_secs()).unwrap_or(u32::MAX),
                dry_run,
            };
            let results = session
                .each(|_, mut c| {
                    let req = req.clone();
                    async move { c.apply_config(req).await.map(|r| r.into_inner()) }
                })
                .await?;
            for (node, r) in results {
                match fmt {
                    Format::Json => output::json(&serde_json::json!({
                        "node": node, "summary": r.summary, "diff": r.diff,
                        "reboot_required": r.reboot_required, "applied_version": r.applied_version,
                    })),
                    Format::Table => {
                        if dry_run {
                            print!("{}", r.diff);
                        }
                        println!("{node}: {}", r.summary);
                    }
                }
            }
            Ok(())
        }
        Command::GetConfig => {
            let session = Session::open(cli.global)?;
            let results = session
                .each(|_, mut c| async move { c.get_config(api::GetConfigRequest {}).await.map(|r| r.into_inner()) })
                .await?;
            for (node, r) in results {
                let text = String::from_utf8_lossy(&r.config);
                match fmt {
                    Format::Json => {
                        output::json(&serde_json::json!({"node": node, "version": r.version, "config": text}))
                    }
                    Format::Table => print!("{text}"),
                }
            }
            Ok(())
        }
        command @ (Command::Version | Command::BootTimes) => {
            let session = Session::open(cli.global)?;
            let results = session
                .each(|_, mut c| async move { c.version(api::VersionRequest {}).await.map(|r| r.into_inner()) })
                .await?;
            match command {
                Command::BootTimes => output::boot_times(fmt, &results),
                _ => output::version(fmt, &results),
            }
            Ok(())
        }
        Command::Services => {
            let session = Session::open(cli.global)?;
            let results = session
                .each(|_, mut c| async move {
                    c.service_list(api::ServiceListRequest {}).await.map(|r| r.into_inner().services)
                })
                .await?;
            output::services(fmt, &results);
            Ok(())
        }
        Command::Service(ServiceCommand::Restart { name }) => {
            let session = Session::open(cli.global)?;
            let results = session
                .each(|_, mut c| {
                    let name = name.clone();
                    async move { c.service_restart(api::ServiceRestartRequest { name }).await.map(|_| ()) }
                })
                .await?;
            for (node, ()) in results {
                println!("{node}: {name} restarting");
            }
            Ok(())
        }
        Command::Logs { service, follow, tail } => {
            let session = Session::open(cli.global)?;
            let targets = session.targets()?;
            let prefix = targets.len() > 1;
            for (node, addr) in targets {
                let mut c = session.client(&addr).await?;
                let req = api::LogsRequest { service: service.clone(), follow, tail_lines: tail };
                let mut stream = match c.logs(req).await {
                    Ok(r) => r.into_inner(),
                    Err(s) => return Err(session.failure(&node, &addr, s).await),
                };
                while let Some(item) = stream.next().await {
                    let line = item.map_err(|s| from_status(&node, s))?;
                    output::log_line(fmt, prefix.then_some(node.as_str()), &line);
                }
            }
            Ok(())
        }
        Command::Dmesg { follow } => {
            let session = Session::open(cli.global)?;
            for (node, addr) in session.targets()? {
                let mut c = session.client(&addr).await?;
                let mut stream = match c.dmesg(api::DmesgRequest { follow }).await {
                    Ok(r) => r.into_inner(),
                    Err(s) => return Err(session.failure(&node, &addr, s).await),
                };
                while let Some(item) = stream.next().await {
                    output::dmesg(fmt, &item.map_err(|s| from_status(&node, s))?);
                }
            }
            Ok(())
        }
        Command::Events { follow, tail } => {
            let session = Session::open(cli.global)?;
            for (node, addr) in session.targets()? {
                let mut c = session.client(&addr).await?;
                let mut stream = match c.events(api::EventsRequest { tail_events: tail, follow }).await {
                    Ok(r) => r.into_inner(),
                    Err(s) => return Err(session.failure(&node, &addr, s).await),
                };
                while let Some(item) = stream.next().await {
                    output::event(fmt, &node, &item.map_err(|s| from_status(&node, s))?);
                }
            }
            Ok(())
        }
        Command::Upgrade { bundle, stage, allow_downgrade, no_drain, drain_timeout } => {
            let drain = (!no_drain).then_some(drain_timeout);
            upgrade(cli.global, &bundle, stage, allow_downgrade, drain).await
        }
        Command::Reset { graceful, drain_timeout, yes, force } => {
            let session = Session::open(cli.global)?;
            let targets: Vec<String> = session.targets()?.into_iter().map(|(n, _)| n).collect();
            if !yes {
                confirm_reset(&targets)?;
            }
            let drain_timeout_seconds = u32::try_from(drain_timeout.as_secs()).unwrap_or(u32::MAX);
            let results = session
                .each(|_, mut c| async move {
                    c.reset(api::ResetRequest { graceful, drain_timeout_seconds, force }).await.map(|r| r.into_inner())
                })
                .await?;
            for (node, r) in results {
                match fmt {
                    Format::Json => output::json(&serde_json::json!({"node": node, "summary": r.summary})),
                    Format::Table => println!("{node}: {}", r.summary),
                }
            }
            Ok(())
        }
        Command::Rollback => {
            let session = Session::open(cli.global)?;
            let results = session
                .each(|_, mut c| async move { c.rollback(api::RollbackRequest {}).await.map(|r| r.into_inner()) })
                .await?;
            for (node, r) in results {
                match fmt {
                    Format::Json => {
                        output::json(&serde_json::json!({"node": node, "slot": r.slot, "summary": r.summary}))
                    }
                    Format::Table => println!("{node}: {}", r.summary),
                }
            }
            Ok(())
        }
        Command::Kubeconfig { server, out } => {
            let session = Session::open(cli.global)?;
            let results = session
                .each(|_, mut c| async move { c.kubeconfig(api::KubeconfigRequest {}).await.map(|r| r.into_inner()) })
                .await?;
            let each: Vec<(String, String, String)> = results
                .into_iter()
                .map(|(node, r)| {
                    let host = node.rsplit_once(':').map_or(node.as_str(), |(h, _)| h).to_string();
                    let url = format!("https://{host}:{}", machinery::layout::KUBE_API_PORT);
                    (host, url, String::from_utf8_lossy(&r.kubeconfig).into_owned())
                })
                .collect();
            // Several control planes and no --server (a VIP or load balancer):
            // one kubeconfig, a context per control plane (kubectl has no failover).
            let merged = match (&server, each.len()) {
                (None, 2..) => Some(kubeconfig::per_control_plane(&each).map_err(Failure::Other)?),
                _ => None,
            };
            let documents = match merged {
                Some(text) => vec![(
                    each.iter().map(|e| e.0.as_str()).collect::<Vec<_>>().join(", "),
                    "each control plane".to_string(),
                    text,
                )],
                None => each
                    .iter()
                    .map(|(host, url, text)| {
                        let url = server.clone().unwrap_or_else(|| url.clone());
                        (host.clone(), url.clone(), with_server(text, &url))
                    })
                    .collect(),
            };
            for (node, url, text) in documents {
                match &out {
                    Some(path) => {
                        write_private(path, text.as_bytes())
                            .map_err(|e| Failure::Other(format!("writing {}: {e}", path.display())))?;
                        eprintln!("{node}: kubeconfig for {url} written to {}", path.display());
                    }
                    None => print!("{text}"),
                }
            }
            Ok(())
        }
        Command::Certs => {
            let session = Session::open(cli.global)?;
            let results = session
                .each(|_, mut c| async move {
                    c.certificates(api::CertificatesRequest {}).await.map(|r| r.into_inner().certificates)
                })
                .await?;
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            output::certificates(fmt, &results, now as i64);
            Ok(())
        }
        Command::Backup { out } => store_transfer::backup(cli.global, &out).await,
        Command::Restore { file, snapshot } => {
            store_transfer::restore(cli.global, file.as_deref(), snapshot, false).await
        }
        Command::Etcd(EtcdCommand::Restore { file }) => {
            store_transfer::restore(cli.global, Some(&file), None, true).await
        }
        Command::Reboot => power(cli.global, true).await,
        Command::Shutdown => power(cli.global, false).await,
        Command::Image(ImageCommand::Flash(args)) => image_flash(cli.global, &args),
        Command::Etcd(EtcdCommand::Members) => {
            let session = Session::open(cli.global)?;
            let results = session
                .each(|_, mut c| async move {
                    c.etcd_members(api::EtcdMembersRequest {}).await.map(|r| r.into_inner().members)
                })
                .await?;
            output::etcd_members(fmt, &results);
            Ok(())
        }
        Command::Etcd(EtcdCommand::Snapshot { out }) => store_transfer::etcd_snapshot(cli.global, &out).await,
        Command::Etcd(EtcdCommand::RemoveMember { name }) => {
            let session = Session::open(cli.global)?;
            let results = session
                .each(|_, mut c| {
                    let name = name.clone();
                    async move {
                        c.etcd_remove_member(api::EtcdRemoveMemberRequest { name })
                            .await
                            .map(|r| r.into_inner().summary)
                    }
                })
                .await?;
            for (node, summary) in results {
                match fmt {
                    output::Format::Json => output::json(&serde_json::json!({"node": node, "summary": summary})),
                    output::Format::Table => println!("{node}: {summary}"),
                }
            }
            Ok(())
        }
    }
}

/// The envelope `image flash --config` puts on the device: a TOML config
/// validated and signed here, or an envelope whose config is validated.
fn seed_envelope(global: Global, file: &Path, key: Option<&PathBuf>) -> Result<(Vec<u8>, MachineConfig), Failure> {
    let bytes = read_file(file)?;
    if bytes.starts_with(b"plinth-signed v1\n") {
        let (config, _) =
            signing::envelope_decode(&bytes).map_err(|e| Failure::Invalid(format!("{}: {e}", file.display())))?;
        let parsed = validate_file(file, &config)?;
        return Ok((bytes, parsed));
    }
    let parsed = validate_file(file, &bytes)?;
    let key = Session::open(global)?.signing_key(key)?;
    let sig = signing::sign(Purpose::Config, &key, &bytes);
    Ok((signing::envelope_encode(&bytes, &sig), parsed))
}

fn image_flash(global: Global, args: &FlashArgs) -> Result<(), Failure> {
    let fmt = global.output;
    let host = flash::Host::real();
    if args.list {
        output::disks(fmt, &host.list());
        return Ok(());
    }
    let (Some(image), Some(device)) = (&args.image, &args.device) else {
        return Err(Failure::Usage("--image and --device are required (or --list)".into()));
    };
    let seed = args.config.as_ref().map(|c| seed_envelope(global, c, args.key.as_ref())).transpose()?;
    let plan = flash::plan(&host, image, device, args.board.as_deref(), args.force, args.device_is_file)?;
    if !args.yes {
        confirm(&plan)?;
    }
    let report = flash::execute(&plan, seed.as_ref().map(|(env, _)| env.as_slice()))?;
    match fmt {
        Format::Json => output::json(&serde_json::to_value(&report).unwrap_or_default()),
        Format::Table => {
            let mib = report.bytes as f64 / (1 << 20) as f64;
            println!(
                "wrote {} ({:.0} MiB, {}) to {} in {:.1}s ({:.0} MiB/s), read back and verified in {:.1}s",
                report.image.display(),
                mib,
                report.format,
                report.device.display(),
                report.write_seconds,
                mib / report.write_seconds.max(0.001),
                report.verify_seconds
            );
            if let (Some(at), Some((_, c))) = (&report.seed, &seed) {
                println!(
                    "config version {} for {} put at {at}: the node adopts it at first boot",
                    c.version, c.machine.hostname
                );
            }
        }
    }
    Ok(())
}

/// Asks before overwriting a device (on a terminal; elsewhere --yes is needed).
fn confirm(plan: &flash::Plan) -> Result<(), Failure> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    if !std::io::stdin().is_terminal() {
        return Err(Failure::Usage(format!(
            "not asking on a non-interactive input: pass --yes to overwrite {}",
            plan.device.display()
        )));
    }
    let what = plan
        .disk
        .as_ref()
        .map(|d| {
            format!(
                " ({}, {} MiB, {})",
                if d.model.is_empty() { "no model" } else { &d.model },
                d.size >> 20,
                d.transport
            )
        })
        .unwrap_or_default();
    eprint!(
        "Write {} ({} MiB) to {}{what}? Everything on it is lost. [y/N] ",
        plan.image.path.display(),
        plan.image.size >> 20,
        plan.device.display()
    );
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    match answer.trim() {
        "y" | "Y" | "yes" => Ok(()),
        _ => Err(Failure::Other("not confirmed: nothing was written".into())),
    }
}

/// Asks before a reset (on a terminal; elsewhere --yes is needed).
fn confirm_reset(nodes: &[String]) -> Result<(), Failure> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    let which = nodes.join(", ");
    if !std::io::stdin().is_terminal() {
        return Err(Failure::Usage(format!("not asking on a non-interactive input: pass --yes to reset {which}")));
    }
    eprint!("Reset {which}? It leaves its cluster and loses its config, keys and data. [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    match answer.trim() {
        "y" | "Y" | "yes" => Ok(()),
        _ => Err(Failure::Other("not confirmed: nothing was reset".into())),
    }
}

async fn power(global: Global, reboot: bool) -> Result<(), Failure> {
    let session = Session::open(global)?;
    let results = session
        .each(|_, mut c| async move {
            if reboot {
                c.reboot(api::RebootRequest {}).await.map(|_| ())
            } else {
                c.shutdown(api::ShutdownRequest {}).await.map(|_| ())
            }
        })
        .await?;
    for (node, ()) in results {
        println!("{node}: {}", if reboot { "rebooting" } else { "shutting down" });
    }
    Ok(())
}

/// Chunks of the bundle on the wire.
const UPGRADE_CHUNK: usize = 1 << 20;

/// The byte ranges (start, length) of a bundle file to send: the header,
/// then each part the node does not hold (`local`), in manifest order,
/// less the first `offset` payload bytes the node already staged. Without
/// a manifest (not a bundle), the whole file: the node says what is wrong.
fn upload_ranges(
    size: u64,
    header_len: u64,
    parts: &[machinery::bundle::BundlePart],
    local: &[String],
    offset: u64,
) -> Vec<(u64, u64)> {
    if parts.is_empty() {
        return vec![(0, size)];
    }
    let mut ranges = vec![(0, header_len)];
    let (mut at, mut skip) = (header_len, offset);
    for p in parts {
        if !local.contains(&p.name) {
            let skipped = skip.min(p.size);
            skip -= skipped;
            if skipped < p.size {
                ranges.push((at + skipped, p.size - skipped));
            }
        }
        at += p.size;
    }
    ranges
}

/// Streams a bundle to each node with a progress bar (rate and ETA),
/// sending only the parts the node's running slot does not hold and
/// resuming where an interrupted upload of the same bundle stopped.
async fn upgrade(
    global: Global,
    bundle: &Path,
    stage: bool,
    allow_downgrade: bool,
    drain: Option<std::time::Duration>,
) -> Result<(), Failure> {
    use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
    let fmt = global.output;
    let session = Session::open(global)?;
    let read_err = |e: std::io::Error| Failure::Other(format!("reading {}: {e}", bundle.display()));
    let size = std::fs::metadata(bundle).map_err(read_err)?.len();
    let mut head = vec![0u8; (machinery::bundle::MAX_MANIFEST + 4096).min(size as usize)];
    std::io::Read::read_exact(&mut std::fs::File::open(bundle).map_err(read_err)?, &mut head).map_err(read_err)?;
    // Not a bundle: send it anyway, the node says what is wrong with it.
    let (id, header_len) = machinery::bundle::identify(&head).unwrap_or_else(|| (String::new(), 0));
    let parts = machinery::bundle::unverified_manifest(&head).map(|m| m.parts).unwrap_or_default();
    let digests: Vec<api::PartDigest> = parts
        .iter()
        .map(|p| api::PartDigest { name: p.name.clone(), size: p.size, sha256: p.sha256.clone() })
        .collect();
    for (node, addr) in session.targets()? {
        let mut c = session.client(&addr).await?;
        let ask = api::UpgradeResumeRequest { manifest_sha256: id.clone(), parts: digests.clone() };
        let (offset, local) = match c.upgrade_resume(ask).await {
            Ok(r) => {
                let r = r.into_inner();
                (r.offset.min(size.saturating_sub(header_len as u64)), r.local_parts)
            }
            Err(s) => return Err(session.failure(&node, &addr, s).await),
        };
        if fmt == Format::Table {
            if !local.is_empty() {
                eprintln!("{node}: the running slot holds {}: not sent", local.join(", "));
            }
            if offset > 0 {
                eprintln!("{node}: resuming: the node holds {} MiB of this bundle", offset >> 20);
            }
        }
        let ranges = upload_ranges(size, header_len as u64, &parts, &local, offset);
        let sent: u64 = ranges.iter().map(|r| r.1).sum();
        let mut file = tokio::fs::File::open(bundle).await.map_err(read_err)?;
        let bar = output::progress(sent, &format!("{node}: uploading"));
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let opts = api::UpgradeOptions {
            stage,
            allow_downgrade,
            size,
            resume_offset: offset,
            local_parts: local.clone(),
            no_drain: drain.is_none(),
            drain_timeout_seconds: drain.map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX)),
        };
        let _ = tx.send(api::UpgradeChunk { chunk: Some(api::upgrade_chunk::Chunk::Options(opts)) }).await;
        let reader_bar = bar.clone();
        let reader = tokio::spawn(async move {
            let send = |data: Vec<u8>| api::UpgradeChunk { chunk: Some(api::upgrade_chunk::Chunk::Data(data)) };
            let mut buf = vec![0u8; UPGRADE_CHUNK];
            for (start, len) in ranges {
                file.seek(std::io::SeekFrom::Start(start)).await?;
                let mut left = len;
                while left > 0 {
                    let n = file.read(&mut buf[..left.min(UPGRADE_CHUNK as u64) as usize]).await?;
                    if n == 0 {
                        // A truncated bundle: the node says so, and keeps
                        // what came for a resume.
                        return Ok(());
                    }
                    if tx.send(send(buf[..n].to_vec())).await.is_err() {
                        return Ok(());
                    }
                    reader_bar.inc(n as u64);
                    left -= n as u64;
                }
            }
            Ok::<(), std::io::Error>(())
        });
        let t = std::time::Instant::now();
        let result = c.upgrade(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
        bar.finish_and_clear();
        reader.await.map_err(|e| Failure::Other(e.to_string()))?.map_err(read_err)?;
        let r = match result {
            Ok(r) => r.into_inner(),
            Err(s) => return Err(session.failure(&node, &addr, s).await),
        };
        match fmt {
            Format::Json => output::json(&serde_json::json!({
                "node": node, "slot": r.slot, "version": r.version, "summary": r.summary,
                "rebooting": r.rebooting, "write_seconds": r.write_seconds, "resumed_from": r.resumed_from,
                "local_parts": r.local_parts, "seconds": t.elapsed().as_secs_f64(), "bytes": size, "sent_bytes": sent,
            })),
            Format::Table => println!("{node}: {}", r.summary),
        }
    }
    Ok(())
}

/// A kubeconfig with every cluster's `server:` set to `url`.
fn with_server(kubeconfig: &str, url: &str) -> String {
    kubeconfig
        .lines()
        .map(|l| match l.trim_start().strip_prefix("server:") {
            Some(_) => format!("{}server: {url}\n", &l[..l.len() - l.trim_start().len()]),
            None => format!("{l}\n"),
        })
        .collect()
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    create_private(path)?.write_all(data)
}

/// A file only its owner reads (0600), emptied if it exists.
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(path)
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_upload_sends_the_header_and_the_parts_the_node_lacks_from_the_resume_offset() {
        let part = |name: &str, size| machinery::bundle::BundlePart { name: name.into(), size, sha256: String::new() };
        let parts = [part("uki", 10), part("root", 100)];
        let local = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(super::upload_ranges(150, 40, &parts, &[], 0), [(0, 40), (40, 10), (50, 100)]);
        assert_eq!(super::upload_ranges(150, 40, &parts, &local(&["uki"]), 0), [(0, 40), (50, 100)]);
        assert_eq!(super::upload_ranges(150, 40, &parts, &local(&["uki", "root"]), 0), [(0, 40)]);
        // Resumed: the offset counts only the parts that are sent.
        assert_eq!(super::upload_ranges(150, 40, &parts, &local(&["uki"]), 30), [(0, 40), (80, 70)]);
        assert_eq!(super::upload_ranges(150, 40, &parts, &[], 15), [(0, 40), (55, 95)]);
        // Not a bundle: all of it.
        assert_eq!(super::upload_ranges(7, 0, &[], &[], 0), [(0, 7)]);
    }

    #[test]
    fn kubeconfig_server_is_rewritten_keeping_indentation() {
        let kc = "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: AAAA\n    server: https://0.0.0.0:6443\n  name: plinth\n";
        let out = super::with_server(kc, "https://127.0.0.1:40000");
        assert_eq!(out, kc.replace("https://0.0.0.0:6443", "https://127.0.0.1:40000"));
    }
}

use std::path::PathBuf;

use clap::Parser;

/// Plinth's init. As PID 1 it boots the machine and takes no arguments;
/// otherwise it runs in host mode: an ordinary process with a state
/// directory standing in for the STATE partition.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Directory standing in for the STATE partition.
    #[arg(long)]
    state_dir: PathBuf,
    /// PEM public key that machine configs must be signed with.
    #[arg(long)]
    trusted_key: PathBuf,
    /// apid binary (default: `apid` next to this binary).
    #[arg(long)]
    apid: Option<PathBuf>,
    /// Where apid listens, overriding the config's port (e.g. 127.0.0.1:50000).
    #[arg(long)]
    api_listen: Option<String>,
    /// Extra DNS name or IP for apid's certificate (repeatable).
    #[arg(long = "cert-san")]
    cert_sans: Vec<String>,
    /// Lifetime of apid's serving certificate (e.g. 20s; default a year); apid renews it at 70–90 %.
    #[arg(long)]
    apid_cert_lifetime: Option<humantime::Duration>,
    /// Lifetime of the etcd member's certificate (e.g. 30s; default a year); init renews it at 80 %.
    #[arg(long)]
    etcd_cert_lifetime: Option<humantime::Duration>,
    /// A Plinth disk image standing in for the boot disk: enables A/B
    /// upgrades and rollback on it (init plays the boot loader at start).
    #[arg(long)]
    disk: Option<PathBuf>,
    /// The board the --disk image was built for.
    #[arg(long, default_value = "qemu-x86_64")]
    board: String,
    /// The orchestrator binary: run as the control plane when the config's
    /// cluster.role is controlplane (data under STATE-DIR/orchestrator).
    #[arg(long)]
    orchestrator: Option<PathBuf>,
    /// The etcd binary: run as the cluster's store on a control plane whose
    /// config says `datastore = "etcd"` (data under STATE-DIR/etcd).
    #[arg(long, requires = "orchestrator")]
    etcd: Option<PathBuf>,
    /// Where the Kubernetes API listens.
    #[arg(long, default_value = "127.0.0.1:6443")]
    kube_listen: String,
    /// How long a slot on trial has to become healthy (e.g. 2m).
    #[arg(long, default_value = "2m")]
    health_timeout: humantime::Duration,
    /// Where to keep the copy of the machine API's trust that outlives a
    /// STATE-DIR that cannot be read (a node keeps it on EPHEMERAL).
    #[arg(long)]
    trust_copy: Option<PathBuf>,
}

fn main() {
    if init::pid1::is_pid1() {
        init::pid1::run();
    }
    host();
}

#[tokio::main]
async fn host() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let apid = args.apid.unwrap_or_else(|| {
        std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.join("apid"))).unwrap_or_else(|| "apid".into())
    });
    let slots = match args.disk {
        None => None,
        Some(disk) => match init::upgrade::host_slots(disk, &args.state_dir, args.board, args.health_timeout.into()) {
            Ok(slots) => Some(slots),
            Err(e) => {
                eprintln!("plinth-init: {e}");
                std::process::exit(1);
            }
        },
    };
    let orchestrator = args.orchestrator.map(|program| init::machine::OrchestratorSettings {
        program,
        data_dir: args.state_dir.join("orchestrator"),
        listen: args.kube_listen,
        kubelet: None,
        etcd: args.etcd.map(|program| init::machine::etcd::EtcdSettings {
            program,
            dir: args.state_dir.join("etcd"),
            cert_lifetime: args.etcd_cert_lifetime.map(Into::into),
        }),
    });
    let boot_steps = init::steps::StepLog::new(args.state_dir.join(init::BOOT_STEPS));
    let opts = init::HostOptions {
        state_dir: args.state_dir,
        trusted_key: args.trusted_key,
        apid,
        settings: init::machine::NodeSettings {
            api_listen: args.api_listen,
            extra_sans: args.cert_sans,
            apid_cert_lifetime: args.apid_cert_lifetime.map(Into::into),
            slots,
            orchestrator,
            // Host mode never sets the host's clock.
            clock_floor: None,
            storage: init::machine::Storage { trust_copy: args.trust_copy, ..Default::default() },
            boot_steps: Some(boot_steps),
            // The state directory stands for EPHEMERAL too: a reset wipes it whole.
            reset_marker: None,
        },
    };
    if let Err(e) = init::run_host(opts).await {
        eprintln!("plinth-init: {e}");
        std::process::exit(1);
    }
}

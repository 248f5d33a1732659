//! `orchestrator server --data-dir DIR [--kubelet]`: Plinth's control plane
//! on a host, with the kubelet in the same process on a control-plane node.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "Plinth's embedded control plane (a Kubernetes-compatible API server)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
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
        #[command(flatten)]
        kubelet: KubeletArgs,
    },
}

#[derive(Args)]
struct KubeletArgs {
    /// Also run the kubelet: this machine becomes a node running pods through containerd.
    #[arg(long)]
    kubelet: bool,
    /// The node's name (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    cri_socket: PathBuf,
    /// Pod volumes and logs (default: DATA-DIR/kubelet).
    #[arg(long)]
    kubelet_dir: Option<PathBuf>,
    /// Where containerd's CRI plugin reads CNI configs.
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    #[arg(long, default_value = "10.244.0.0/24")]
    pod_cidr: String,
    /// The CNI bridge's name.
    #[arg(long, default_value = "plinth0")]
    cni_bridge: String,
    /// The node's address (default: the address of the default route).
    #[arg(long)]
    node_ip: Option<std::net::IpAddr>,
    /// The kubelet's HTTPS endpoint (container logs for the API server).
    #[arg(long, default_value = "0.0.0.0:10250")]
    kubelet_listen: SocketAddr,
    /// OCI image archives (*.tar) imported into containerd at start: images without a registry.
    #[arg(long)]
    image_dir: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("PLINTH_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let Command::Server { data_dir, listen, ca_cert, ca_key, fsync, controllers, kubelet } = Cli::parse().command;
    let kubelet_cfg = kubelet.kubelet.then(|| orchestrator::kubelet::Config {
        node_name: kubelet.node_name.unwrap_or_else(|| {
            nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "node".into())
        }),
        cri_socket: kubelet.cri_socket,
        dir: kubelet.kubelet_dir.unwrap_or_else(|| data_dir.join("kubelet")),
        cni_conf_dir: kubelet.cni_conf_dir,
        pod_cidr: kubelet.pod_cidr,
        bridge: kubelet.cni_bridge,
        node_ip: kubelet.node_ip,
        listen: kubelet.kubelet_listen,
        image_dir: kubelet.image_dir,
    });
    let durability =
        if fsync { orchestrator::store::Durability::Full } else { orchestrator::store::Durability::Normal };
    let cfg = orchestrator::server::Config { data_dir, listen, ca_cert, ca_key, durability, controllers };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let running = orchestrator::server::start(cfg).await?;
        if let Some(k) = kubelet_cfg {
            orchestrator::kubelet::start(k, running.registry.clone(), &running.ca).await?;
        }
        println!("listening on https://{} (admin kubeconfig: {})", running.address, running.admin_kubeconfig.display());
        running.task.await?;
        Ok(())
    })
}

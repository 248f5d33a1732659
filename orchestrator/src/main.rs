//! `orchestrator server --data-dir DIR`: Plinth's control plane on a host.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("PLINTH_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let Command::Server { data_dir, listen, ca_cert, ca_key, fsync, controllers } = Cli::parse().command;
    let durability =
        if fsync { orchestrator::store::Durability::Full } else { orchestrator::store::Durability::Normal };
    let cfg = orchestrator::server::Config { data_dir, listen, ca_cert, ca_key, durability, controllers };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let running = orchestrator::server::start(cfg).await?;
        println!("listening on https://{} (admin kubeconfig: {})", running.address, running.admin_kubeconfig.display());
        running.task.await?;
        Ok(())
    })
}

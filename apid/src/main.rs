use std::path::PathBuf;

use clap::Parser;

/// apid: the node's mutual-TLS gRPC gateway. Started by init.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// init's Unix socket.
    #[arg(long)]
    init_socket: PathBuf,
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let args = Args::parse();
    // apid is init's child: if init dies, apid must not linger holding the port.
    if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM) {
        eprintln!("apid: cannot ask to die with init: {e}");
    }
    if let Err(e) = apid::run(&args.init_socket).await {
        eprintln!("apid: {e}");
        std::process::exit(1);
    }
}

//! Plinth's PID 1, as a library. `run_host` runs it in **host mode**: an
//! ordinary process whose state directory stands in for the STATE partition.
//! The real PID 1 (mounts, slots, reboot(2)) plugs in behind the same
//! traits: [`power::Power`], [`kmsg::KernelLog`].

pub mod boot;
pub mod clock;
pub mod dhcp;
pub mod disk;
pub mod diskstats;
pub mod dm;
pub mod journal;
pub mod kmsg;
pub mod loader;
pub mod machine;
pub mod net;
pub mod pid1;
pub mod power;
pub mod reset;
pub mod seed;
pub mod sntp;
pub mod steps;
pub mod store;
pub mod supervisor;
pub mod system;
pub mod upgrade;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use machinery::api::{init_service_server::InitServiceServer, machine_service_server::MachineServiceServer};
use tokio::net::UnixListener;
use tokio::sync::mpsc;

use crate::journal::Journal;
use crate::machine::{InitApi, Machine, NodeSettings, PowerAction};
use crate::power::Power;
use crate::store::ConfigStore;
use crate::supervisor::{ServiceSpec, Supervisor, event};

/// Where init's Unix socket lives, relative to the state directory.
pub const SOCKET: &str = "run/init.sock";
/// Host mode: where the boot steps are recorded, relative to the state directory.
pub const BOOT_STEPS: &str = "run/boot-steps";

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("reading the trusted config-signing key {path}: {source}")]
    TrustedKeyRead { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    TrustedKey { path: PathBuf, source: machinery::signing::KeyError },
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Supervisor(#[from] supervisor::SupervisorError),
    #[error("making the maintenance-mode certificate: {0}")]
    Pki(#[from] machinery::pki::PkiError),
    #[error("{op} {path}: {source}")]
    Socket { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error("becoming the child subreaper: {0}")]
    Subreaper(nix::errno::Errno),
}

#[derive(Debug, Clone)]
pub struct HostOptions {
    pub state_dir: PathBuf,
    /// PEM public key that configs must be signed with.
    pub trusted_key: PathBuf,
    /// The apid binary to supervise.
    pub apid: PathBuf,
    pub settings: NodeSettings,
}

fn socket_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InitError {
    let path = path.to_path_buf();
    move |source| InitError::Socket { op, path, source }
}

/// What both modes need to serve: where state lives and what to trust.
#[derive(Clone)]
struct Core {
    state_dir: PathBuf,
    trusted_key: PathBuf,
    apid: PathBuf,
    settings: NodeSettings,
    log_dir: PathBuf,
}

/// Runs init in host mode until a shutdown (returns) or a reboot (re-execs).
pub async fn run_host(opts: HostOptions) -> Result<(), InitError> {
    // Orphans of our services are re-parented to us, and reaped.
    nix::sys::prctl::set_child_subreaper(true).map_err(InitError::Subreaper)?;
    // This run's steps only (an image's /run starts empty each boot).
    if let Some(steps) = &opts.settings.boot_steps {
        let path = steps.path();
        steps.clear().map_err(socket_err("remove the last run's boot steps", path))?;
    }
    let disk = opts.settings.slots.as_ref().map(|s| s.disk.clone());
    let core = Core {
        log_dir: opts.state_dir.join("logs"),
        state_dir: opts.state_dir,
        trusted_key: opts.trusted_key,
        apid: opts.apid,
        settings: opts.settings,
    };
    let (action, _) = serve(core, Bring::Nothing).await?;
    match action {
        PowerAction::Reboot => power::HostPower.reboot(),
        PowerAction::Tryboot => {
            // The firmware's one-shot flag, for the next start's stand-in.
            if let Some(disk) = disk {
                let flag = loader::tryboot_flag(&disk);
                std::fs::write(&flag, b"").map_err(socket_err("write the tryboot flag", &flag))?;
            }
            power::HostPower.reboot()
        }
        PowerAction::PowerOff => Ok(()),
    }
}

/// What to bring up once the stored config is known.
enum Bring {
    Nothing,
    /// PID 1: the network, from the config (DHCP in maintenance mode).
    Network,
}

/// The root image links /etc/resolv.conf to /run/resolv.conf.
fn write_resolv_conf(events: &Journal<machinery::api::Event>, nameservers: &[std::net::IpAddr]) {
    if let Err(e) = std::fs::write("/run/resolv.conf", net::resolv_conf(nameservers)) {
        event(events, "network", format!("writing /run/resolv.conf: {e}"));
    }
}

/// Loads the config, serves the machine API, supervises apid, and returns
/// the power action requested once every service has stopped.
async fn serve(core: Core, bring: Bring) -> Result<(PowerAction, Arc<Journal<machinery::api::Event>>), InitError> {
    let pem = std::fs::read_to_string(&core.trusted_key)
        .map_err(|source| InitError::TrustedKeyRead { path: core.trusted_key.clone(), source })?;
    let trusted = machinery::signing::verifying_key_from_pem(&pem)
        .map_err(|source| InitError::TrustedKey { path: core.trusted_key.clone(), source })?;

    let events = Arc::new(Journal::new(1000));
    // Before anything checks a certificate: the clock's floor.
    let clock = core.settings.clock_floor.as_ref().map(|build_time| {
        let k = clock::Keeper::new(Arc::new(clock::SystemClock), core.state_dir.join(clock::SAVED), events.clone());
        k.apply_floor(build_time);
        Arc::new(k)
    });
    let supervisor = Supervisor::start(events.clone(), Some(core.log_dir.clone()))?;
    // A STATE that cannot be read (PID 1 could not mount it; its config
    // directory cannot be opened) is safe mode, never a stop.
    let store = match &core.settings.storage.state_lost {
        Some(why) => Err(why.clone()),
        None => ConfigStore::open(&core.state_dir.join("config"), trusted).map_err(|e| e.to_string()),
    };
    let (power_tx, mut power_rx) = mpsc::channel(4);
    let slots = core.settings.slots.clone().map(|s| Arc::new(upgrade::Slots::new(s, trusted, events.clone())));
    let machine = Machine::boot(
        store,
        supervisor.clone(),
        events.clone(),
        Arc::new(kmsg::Kmsg::default()),
        power_tx,
        core.settings.clone(),
        machine::Hardware { slots: slots.clone(), clock: clock.clone() },
    )?;
    machine.clock_floor_from_ca().await;
    // The trial's clock starts now: a boot that hangs later (the network,
    // a service) still ends in a fallback.
    machine.gate_trial();

    let socket = core.state_dir.join(SOCKET);
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(socket_err("create directory", dir))?;
    }
    match std::fs::remove_file(&socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(socket_err("remove stale socket", &socket)(e));
        }
        _ => {}
    }
    let listener = UnixListener::bind(&socket).map_err(socket_err("bind", &socket))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
            .map_err(socket_err("chmod", &socket))?;
    }
    let api = InitApi(machine.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .initial_stream_window_size(machinery::H2_STREAM_WINDOW)
            .initial_connection_window_size(machinery::H2_CONNECTION_WINDOW)
            .add_service(MachineServiceServer::new(api.clone()))
            .add_service(InitServiceServer::new(api))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );

    // apid listens on every address: it needs none of the network.
    machine.supervise(ServiceSpec {
        name: "apid".into(),
        program: core.apid.clone(),
        args: vec!["--init-socket".into(), socket.display().to_string()],
        env: std::env::vars().filter(|(k, _)| k == "RUST_LOG").collect(),
    });
    // containerd starts now, the orchestrator once the network is up.
    let m = machine.clone();
    tokio::spawn(async move { m.start_cluster_services().await });

    if let Bring::Network = bring {
        let network = machine.active_network().await;
        match net::configure(network.as_ref()).await {
            Ok(done) => {
                if let Some(steps) = &core.settings.boot_steps {
                    steps.record(machinery::boot_steps::NETWORK);
                }
                done.report.into_iter().for_each(|line| event(&events, "network", line));
                write_resolv_conf(&events, &done.nameservers);
                // Leases are kept from now on; configured name servers win
                // over those a lease brings.
                let fixed_dns = network.as_ref().is_some_and(|n| !n.nameservers.is_empty());
                for d in done.dhcp {
                    let events = events.clone();
                    tokio::spawn(net::keep_lease(d, move |line, dns| {
                        event(&events, "network", line);
                        if !fixed_dns && !dns.is_empty() {
                            write_resolv_conf(&events, &dns);
                        }
                    }));
                }
                if let Some(clock) = &clock {
                    tokio::spawn(clock.clone().keep(machine.ntp_servers().await, done.nameservers.clone()));
                }
            }
            Err(e) => event(&events, "network", format!("network bring-up failed: {e}")),
        }
    }
    // The API server's certificate names the node's addresses: it waits for this.
    machine.network_is_up();

    let action = match bring {
        // PID 1 takes orders only from the API.
        Bring::Network => power_rx.recv().await.unwrap_or(PowerAction::Reboot),
        Bring::Nothing => {
            let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .map_err(socket_err("install SIGTERM handler for", &socket))?;
            tokio::select! {
                a = power_rx.recv() => a.unwrap_or(PowerAction::PowerOff),
                _ = sigterm.recv() => PowerAction::PowerOff,
                _ = tokio::signal::ctrl_c() => PowerAction::PowerOff,
            }
        }
    };
    event(&events, "power", format!("{action:?}: stopping services"));
    supervisor.stop_all().await;
    let _ = std::fs::remove_file(&socket);
    if machine.reset_requested() {
        // STATE (host mode: the whole state directory) loses everything
        // but the slots' records; PID 1 wipes EPHEMERAL once unmounted.
        match reset::wipe_dir(&core.state_dir) {
            Ok(gone) => tracing::warn!("reset: removed {} from {}", gone.join(", "), core.state_dir.display()),
            Err(e) => tracing::error!("reset: {e}"),
        }
        // The trust's copy outside STATE (PID 1: on EPHEMERAL, wiped too).
        if let Some(copy) = &core.settings.storage.trust_copy {
            let _ = std::fs::remove_file(copy);
        }
    }
    if let Some(Err(e)) = clock.as_ref().map(|c| c.save()) {
        event(&events, "clock", e.to_string());
    }
    let action = match (action, &slots) {
        // A Pi with a trial armed: count the try, then reboot into it.
        (PowerAction::Reboot, Some(slots)) => match tokio::task::block_in_place(|| slots.prepare_reboot()) {
            Ok(machinery::slots::rpi::Reboot::Tryboot) => {
                event(&events, "upgrade", format!("rebooting into slot {}'s trial", slots.booted().other().name()));
                PowerAction::Tryboot
            }
            Ok(machinery::slots::rpi::Reboot::Normal) => PowerAction::Reboot,
            Err(e) => {
                event(&events, "upgrade", format!("cannot launch the armed trial: {e}; a plain reboot"));
                PowerAction::Reboot
            }
        },
        (a, _) => a,
    };
    Ok((action, events))
}

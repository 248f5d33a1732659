//! apid: the node's only network entry point.
//!
//! It asks init (over init's Unix socket) how to serve, then serves
//! `MachineService` over TLS on TCP. In **maintenance mode** (no config yet)
//! it uses a self-signed certificate, asks for no client certificate and
//! forwards only `Version` and `ApplyConfig` — whose signature init checks
//! against the trusted key. Once configured it requires a client certificate that chains
//! to the config's CA, reads the caller's role from it and forwards only the
//! calls that role may make. apid holds no privileged logic and writes no
//! disk: every call is init's to carry out. Its serving certificate is
//! renewed while it serves (`tls`).

mod tls;

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use machinery::api::{
    self, NodeMode,
    init_service_client::InitServiceClient,
    machine_service_client::MachineServiceClient,
    machine_service_server::{MachineService, MachineServiceServer},
};
use machinery::roles::{Role, Rpc, role_from_cert_der};
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status, Streaming};

#[derive(Debug, thiserror::Error)]
pub enum ApidError {
    #[error("connecting to init at {path}: {source}")]
    Init { path: PathBuf, source: tonic::transport::Error },
    #[error("asking init for TLS material: {0}")]
    Tls(Status),
    #[error("TLS set-up: {0}")]
    TlsConfig(String),
    #[error("listen address {0:?} from init is not host:port")]
    Listen(String),
    #[error("installing the SIGTERM handler: {0}")]
    Signal(std::io::Error),
    #[error("serving on {addr}: {source}")]
    Serve { addr: String, source: tonic::transport::Error },
    #[error("listening on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
}

/// Connects to init's Unix socket, retrying while init starts up.
pub async fn connect_init(path: &Path) -> Result<Channel, ApidError> {
    let mut attempt = 0;
    loop {
        let p = path.to_path_buf();
        let result = Endpoint::from_static("http://init.sock")
            .initial_stream_window_size(machinery::H2_STREAM_WINDOW)
            .initial_connection_window_size(machinery::H2_CONNECTION_WINDOW)
            .connect_with_connector(tower::service_fn(move |_| {
                let p = p.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?)) }
            }))
            .await;
        match result {
            Ok(ch) => return Ok(ch),
            Err(source) if attempt >= 50 => {
                return Err(ApidError::Init { path: path.to_path_buf(), source });
            }
            Err(_) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The TCP-facing `MachineService`: authorise, then forward to init.
#[derive(Clone)]
pub struct Gateway {
    init: MachineServiceClient<Channel>,
    mode: NodeMode,
    /// Whether TLS asks for client certificates of a CA.
    client_certs: bool,
}

impl Gateway {
    pub fn new(init: Channel, mode: NodeMode, client_certs: bool) -> Self {
        Gateway { init: MachineServiceClient::new(init), mode, client_certs }
    }

    /// Who is calling and whether they may make this call.
    fn authorize<T>(&self, req: &Request<T>, rpc: Rpc) -> Result<(), Status> {
        // Safe mode with no trust: no client can be authenticated, so
        // `version` (which says why) is all anyone gets.
        if self.mode == NodeMode::Safe && !self.client_certs {
            if rpc == Rpc::Version {
                return Ok(());
            }
            return Err(Status::failed_precondition(format!(
                "this node is in safe mode with no record of its trust: it answers only version, not {} (see its console)",
                rpc.name()
            )));
        }
        if self.mode == NodeMode::Maintenance {
            if matches!(rpc, Rpc::ApplyConfig | Rpc::Version) {
                tracing::info!(rpc = rpc.name(), "maintenance mode call");
                return Ok(());
            }
            return Err(Status::failed_precondition(format!(
                "this node is in maintenance mode: it accepts only apply-config and version until a config is applied, not {}",
                rpc.name()
            )));
        }
        let certs = req.peer_certs().ok_or_else(|| Status::unauthenticated("no client certificate was presented"))?;
        let leaf = certs.first().ok_or_else(|| Status::unauthenticated("no client certificate was presented"))?;
        let role = role_from_cert_der(leaf).map_err(|e| Status::permission_denied(e.to_string()))?;
        let who = machinery::pki::cert_info_der(leaf).map(|i| i.common_name).unwrap_or_default();
        if !role.may_call(rpc) {
            tracing::warn!(rpc = rpc.name(), %role, who, "refused");
            return Err(Status::permission_denied(format!(
                "role {role} may not call {}: it needs the {} role{}",
                rpc.name(),
                rpc.minimum_role(),
                if rpc.minimum_role() == Role::Admin { "" } else { " or above" }
            )));
        }
        tracing::info!(rpc = rpc.name(), %role, who, "call");
        Ok(())
    }
}

/// Authorises and forwards one call to init.
macro_rules! forward {
    ($self:ident, $req:ident, $rpc:expr, $method:ident) => {{
        $self.authorize(&$req, $rpc)?;
        $self.init.clone().$method(Request::new($req.into_inner())).await
    }};
}

#[tonic::async_trait]
impl MachineService for Gateway {
    async fn version(&self, req: Request<api::VersionRequest>) -> Result<Response<api::VersionResponse>, Status> {
        forward!(self, req, Rpc::Version, version)
    }
    async fn apply_config(
        &self,
        req: Request<api::ApplyConfigRequest>,
    ) -> Result<Response<api::ApplyConfigResponse>, Status> {
        forward!(self, req, Rpc::ApplyConfig, apply_config)
    }
    async fn get_config(
        &self,
        req: Request<api::GetConfigRequest>,
    ) -> Result<Response<api::GetConfigResponse>, Status> {
        forward!(self, req, Rpc::GetConfig, get_config)
    }
    async fn reboot(&self, req: Request<api::RebootRequest>) -> Result<Response<api::RebootResponse>, Status> {
        forward!(self, req, Rpc::Reboot, reboot)
    }
    async fn shutdown(&self, req: Request<api::ShutdownRequest>) -> Result<Response<api::ShutdownResponse>, Status> {
        forward!(self, req, Rpc::Shutdown, shutdown)
    }
    async fn service_list(
        &self,
        req: Request<api::ServiceListRequest>,
    ) -> Result<Response<api::ServiceListResponse>, Status> {
        forward!(self, req, Rpc::ServiceList, service_list)
    }
    async fn service_restart(
        &self,
        req: Request<api::ServiceRestartRequest>,
    ) -> Result<Response<api::ServiceRestartResponse>, Status> {
        forward!(self, req, Rpc::ServiceRestart, service_restart)
    }
    type LogsStream = Streaming<api::LogLine>;
    async fn logs(&self, req: Request<api::LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        forward!(self, req, Rpc::Logs, logs)
    }
    type DmesgStream = Streaming<api::DmesgRecord>;
    async fn dmesg(&self, req: Request<api::DmesgRequest>) -> Result<Response<Self::DmesgStream>, Status> {
        forward!(self, req, Rpc::Dmesg, dmesg)
    }
    async fn upgrade(
        &self,
        req: Request<Streaming<api::UpgradeChunk>>,
    ) -> Result<Response<api::UpgradeResponse>, Status> {
        self.authorize(&req, Rpc::Upgrade)?;
        // Passed through as it arrives; a broken upload ends the stream
        // early, and init refuses the truncated bundle.
        let chunks = tokio_stream::StreamExt::map_while(req.into_inner(), Result::ok);
        self.init.clone().upgrade(Request::new(chunks)).await
    }
    async fn upgrade_resume(
        &self,
        req: Request<api::UpgradeResumeRequest>,
    ) -> Result<Response<api::UpgradeResumeResponse>, Status> {
        forward!(self, req, Rpc::UpgradeResume, upgrade_resume)
    }
    async fn kubeconfig(
        &self,
        req: Request<api::KubeconfigRequest>,
    ) -> Result<Response<api::KubeconfigResponse>, Status> {
        forward!(self, req, Rpc::Kubeconfig, kubeconfig)
    }
    async fn rollback(&self, req: Request<api::RollbackRequest>) -> Result<Response<api::RollbackResponse>, Status> {
        forward!(self, req, Rpc::Rollback, rollback)
    }
    async fn reset(&self, req: Request<api::ResetRequest>) -> Result<Response<api::ResetResponse>, Status> {
        forward!(self, req, Rpc::Reset, reset)
    }
    async fn certificates(
        &self,
        req: Request<api::CertificatesRequest>,
    ) -> Result<Response<api::CertificatesResponse>, Status> {
        forward!(self, req, Rpc::Certificates, certificates)
    }
    type BackupStream = Streaming<api::BackupChunk>;
    async fn backup(&self, req: Request<api::BackupRequest>) -> Result<Response<Self::BackupStream>, Status> {
        forward!(self, req, Rpc::Backup, backup)
    }
    async fn restore(
        &self,
        req: Request<Streaming<api::RestoreChunk>>,
    ) -> Result<Response<api::RestoreResponse>, Status> {
        self.authorize(&req, Rpc::Restore)?;
        // As an upgrade's: a broken upload ends the stream early, and init
        // refuses the truncated file (its size and checksum).
        let chunks = tokio_stream::StreamExt::map_while(req.into_inner(), Result::ok);
        self.init.clone().restore(Request::new(chunks)).await
    }
    async fn etcd_members(
        &self,
        req: Request<api::EtcdMembersRequest>,
    ) -> Result<Response<api::EtcdMembersResponse>, Status> {
        forward!(self, req, Rpc::EtcdMembers, etcd_members)
    }
    type EtcdSnapshotStream = Streaming<api::BackupChunk>;
    async fn etcd_snapshot(
        &self,
        req: Request<api::EtcdSnapshotRequest>,
    ) -> Result<Response<Self::EtcdSnapshotStream>, Status> {
        forward!(self, req, Rpc::EtcdSnapshot, etcd_snapshot)
    }
    async fn etcd_remove_member(
        &self,
        req: Request<api::EtcdRemoveMemberRequest>,
    ) -> Result<Response<api::EtcdRemoveMemberResponse>, Status> {
        forward!(self, req, Rpc::EtcdRemoveMember, etcd_remove_member)
    }
    type EventsStream = Streaming<api::Event>;
    async fn events(&self, req: Request<api::EventsRequest>) -> Result<Response<Self::EventsStream>, Status> {
        forward!(self, req, Rpc::Events, events)
    }
}

/// Runs apid until SIGTERM (then finishes in-flight calls and returns).
pub async fn run(init_socket: &Path) -> Result<(), ApidError> {
    let channel = connect_init(init_socket).await?;
    let tls = InitServiceClient::new(channel.clone())
        .apid_tls(api::ApidTlsRequest {})
        .await
        .map_err(ApidError::Tls)?
        .into_inner();
    let mode = NodeMode::try_from(tls.mode).unwrap_or(NodeMode::Maintenance);
    // Configured, and safe mode with the last configured boot's trust.
    let client_certs = mode != NodeMode::Maintenance && !tls.client_ca_pem.is_empty();
    let (tls_config, served) =
        tls::server_config(&tls, client_certs.then_some(tls.client_ca_pem.as_str())).map_err(ApidError::TlsConfig)?;
    let addr: std::net::SocketAddr =
        tls.listen_address.parse().map_err(|_| ApidError::Listen(tls.listen_address.clone()))?;
    let serve_err = |source| ApidError::Serve { addr: tls.listen_address.clone(), source };
    let mut sigterm =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(ApidError::Signal)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ApidError::Bind { addr: tls.listen_address.clone(), source })?;
    tracing::info!(?mode, %addr, "serving the machine API");
    // For the boot's record (`osctl boot-times`); serving does not depend on it.
    if let Err(e) = InitServiceClient::new(channel.clone()).apid_serving(api::ApidServingRequest {}).await {
        tracing::warn!("telling init that apid serves: {}", e.message());
    }
    tokio::spawn(tls::renew_forever(channel.clone(), served));
    Server::builder()
        .initial_stream_window_size(machinery::H2_STREAM_WINDOW)
        .initial_connection_window_size(machinery::H2_CONNECTION_WINDOW)
        .add_service(MachineServiceServer::new(Gateway::new(channel, mode, client_certs)))
        .serve_with_incoming_shutdown(tls::incoming(listener, tls_config), async move {
            sigterm.recv().await;
            tracing::info!("SIGTERM: finishing in-flight calls");
        })
        .await
        .map_err(serve_err)
}

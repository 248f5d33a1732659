//! The Container Runtime Interface (CRI v1) client: the generated gRPC
//! stubs and a connection over containerd's Unix socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("runtime.v1");
}

pub use v1::image_service_client::ImageServiceClient;
pub use v1::runtime_service_client::RuntimeServiceClient;

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("connect to the container runtime at {path}: {source}")]
    Connect { path: PathBuf, source: tonic::transport::Error },
    #[error("CRI {op}: {status}")]
    Call { op: &'static str, status: Box<tonic::Status> },
}

impl CriError {
    pub fn call(op: &'static str) -> impl FnOnce(tonic::Status) -> CriError {
        move |status| CriError::Call { op, status: Box::new(status) }
    }

    /// The gRPC status message (what the runtime said), for pod events and status.
    pub fn message(&self) -> String {
        match self {
            CriError::Call { status, .. } => status.message().to_string(),
            e => e.to_string(),
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, CriError::Call { status, .. } if status.code() == tonic::Code::NotFound)
    }
}

/// Both CRI services over one channel (cheap to clone).
#[derive(Clone)]
pub struct Cri {
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
}

impl Cri {
    /// Connects to the runtime's socket, retrying for up to `wait` while it starts.
    pub async fn connect(path: &Path, wait: Duration) -> Result<Cri, CriError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let p = path.to_path_buf();
            let result = Endpoint::from_static("http://cri.sock")
                .connect_with_connector(tower::service_fn(move |_| {
                    let p = p.clone();
                    async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?)) }
                }))
                .await;
            match result {
                Ok(ch) => {
                    let max = 16 * 1024 * 1024;
                    return Ok(Cri {
                        runtime: RuntimeServiceClient::new(ch.clone()).max_decoding_message_size(max),
                        images: ImageServiceClient::new(ch).max_decoding_message_size(max),
                    });
                }
                Err(source) if tokio::time::Instant::now() >= deadline => {
                    return Err(CriError::Connect { path: path.to_path_buf(), source });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// The runtime's name and version (`containerd://1.6.20`), which also proves it answers.
    pub async fn version(&self) -> Result<String, CriError> {
        let v = self
            .runtime
            .clone()
            .version(v1::VersionRequest { version: "v1".into() })
            .await
            .map_err(CriError::call("Version"))?
            .into_inner();
        Ok(format!("{}://{}", v.runtime_name, v.runtime_version))
    }
}

//! The edge inference daemon: the KServe v2 / Open Inference Protocol REST API over a model
//! repository of signed bundles, plus signed sensor readings.
//!
//! Requests run through the same path as the library: bundle verification at load, input
//! validation, the sandbox, output checks and the output policy. Inference runs on blocking
//! threads; each model's instance pool bounds how many run at once.

mod api;
mod repository;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use repository::Repository;

use crate::runtime::Runtime;
use crate::trust::ReadingVerifier;

/// How the daemon serves.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to listen on. By default `127.0.0.1:8000`, as Triton's HTTP port.
    pub listen: SocketAddr,
    /// The model repository (`<repo>/<name>/<version>/`).
    pub repo: PathBuf,
    /// Largest request body, in bytes. By default 8 MiB.
    pub max_body_bytes: usize,
    /// Readings with a timestamp must be within this of the host clock.
    pub freshness: Duration,
    /// Serve plain HTTP on a non-loopback address. By default `false`: plain HTTP only on
    /// loopback (TLS is not implemented yet).
    pub dangerous_plain_http_on_network: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            repo: PathBuf::from("models/repo"),
            max_body_bytes: 8 << 20,
            freshness: Duration::from_secs(300),
            dangerous_plain_http_on_network: false,
        }
    }
}

/// Everything a request handler needs.
#[derive(Debug)]
pub struct AppState {
    /// Loaded models.
    pub repository: Repository,
    /// Signed-reading verification.
    pub verifier: ReadingVerifier,
    /// Every inference request, accepted or refused, is recorded here before it is answered.
    pub audit: crate::audit::AuditLog,
    /// Settings.
    pub config: ServerConfig,
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Plain HTTP on a network address without the dangerous opt-in.
    #[error(
        "refusing plain HTTP on {0}: only loopback addresses are served without TLS (dangerous_plain_http_on_network overrides)"
    )]
    PlainHttpOnNetwork(SocketAddr),
    /// The audit log could not be opened (or its chain is broken before the last record).
    #[error("audit log: {0}")]
    Audit(#[from] crate::audit::AuditError),
    /// Listening or serving failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// State could not be opened.
    #[error("{0}")]
    Warden(#[from] crate::Error),
}

/// Loads the repository and readies the state; call [`serve`] next.
pub fn prepare(runtime: Arc<Runtime>, config: ServerConfig) -> Result<Arc<AppState>, ServeError> {
    if !config.listen.ip().is_loopback() && !config.dangerous_plain_http_on_network {
        return Err(ServeError::PlainHttpOnNetwork(config.listen));
    }
    let verifier = ReadingVerifier::open(runtime.state_dir(), config.freshness)?;
    let audit = crate::audit::AuditLog::open(runtime.state_dir().join("audit.log"))?;
    let repository = Repository::load(runtime, &config.repo);
    Ok(Arc::new(AppState { repository, verifier, audit, config }))
}

/// Serves on `listener` until `shutdown` completes, then drains in-flight requests.
pub async fn serve(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let app = api::router(state);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    Ok(())
}

//! The edge inference daemon: the KServe v2 / Open Inference Protocol REST API over a model
//! repository of signed bundles, plus signed sensor readings.
//!
//! Requests run through the same path as the library: bundle verification at load, input
//! validation, the sandbox, output checks and the output policy. A model runs in a runner
//! task of its own, which takes the requests queued for it back to back (`Model::infer_async`,
//! whose guest calls yield at every epoch tick; `serve` builds the runtime with `async_calls`);
//! each model's instance pool bounds how many run at once.

mod api;
pub mod limits;
pub mod metrics;
mod repository;
pub mod tls;
pub mod tokens;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use limits::{HostLimits, LimitError, Limits};
pub use repository::{ReloadReport, Repository};
pub use tls::TlsFiles;
pub use tokens::{Authenticator, TokenStore};

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
    /// Serve HTTPS with these files. By default `None`: plain HTTP, on loopback only.
    pub tls: Option<TlsFiles>,
    /// Require a bearer token on every model request even when no token store exists yet. By
    /// default `false`; tokens are required anyway once `warden token create` has made the store
    /// (a running daemon notices within a second). On a non-loopback address the daemon does not
    /// start without a store unless `dangerous_no_auth_on_network` is set.
    pub require_tokens: bool,
    /// Host-wide rate limits and queue depth.
    pub limits: HostLimits,
    /// Under load (after an audit batch of four or more records), the least time between the
    /// starts of two audit-log writes, each with its sync; the records that arrive meanwhile share
    /// the next one ([`crate::audit::AuditLog::space_syncs`]). By default 1 ms; zero syncs again
    /// as soon as the last sync returns.
    pub audit_sync_spacing: Duration,
    /// Serve plain HTTP on a non-loopback address. By default `false`.
    pub dangerous_plain_http_on_network: bool,
    /// Serve a non-loopback address before any token exists, so without requiring tokens. By
    /// default `false`. Creating the first token turns them on all the same.
    pub dangerous_no_auth_on_network: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            repo: PathBuf::from("models/repo"),
            max_body_bytes: 8 << 20,
            freshness: Duration::from_secs(300),
            tls: None,
            require_tokens: false,
            limits: HostLimits::default(),
            audit_sync_spacing: Duration::from_millis(1),
            dangerous_plain_http_on_network: false,
            dangerous_no_auth_on_network: false,
        }
    }
}

impl ServerConfig {
    /// The checks that need no state: plain HTTP only on loopback (unless dangerously allowed),
    /// and TLS files that load.
    pub fn check(&self) -> Result<(), ServeError> {
        if !self.listen.ip().is_loopback() && self.tls.is_none() && !self.dangerous_plain_http_on_network {
            return Err(ServeError::PlainHttpOnNetwork(self.listen));
        }
        if let Some(files) = &self.tls {
            tls::server_config(files)?;
        }
        Ok(())
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
    pub audit: Arc<crate::audit::AuditLog>,
    /// Client tokens.
    pub auth: Authenticator,
    /// Rate limits, budgets and queues.
    pub limits: Limits,
    /// Prometheus metrics.
    pub metrics: metrics::Metrics,
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
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// A network address without tokens required, without the dangerous opt-in.
    #[error(
        "refusing to serve {0} without client tokens: create one with `warden token create` (dangerous_no_auth_on_network overrides)"
    )]
    NoAuthOnNetwork(SocketAddr),
    /// Listening or serving failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// State could not be opened.
    #[error("{0}")]
    Warden(#[from] crate::Error),
    /// Device counters could not be restored from the audit log.
    #[error("restoring device counters from the audit log: {0}")]
    Counters(#[from] crate::trust::ReadingError),
}

/// Loads the repository and readies the state; call [`serve`] next.
pub fn prepare(runtime: Arc<Runtime>, config: ServerConfig) -> Result<Arc<AppState>, ServeError> {
    config.check()?;
    let network = !config.listen.ip().is_loopback();
    // Tokens are required once a token store exists. On a network address, a daemon with none
    // would be open to anyone there, so it does not start unless told to, dangerously.
    let auth = Authenticator::open(runtime.state_dir(), config.require_tokens)?;
    if network && !auth.required() && !config.dangerous_no_auth_on_network {
        return Err(ServeError::NoAuthOnNetwork(config.listen));
    }
    let verifier = ReadingVerifier::open(runtime.state_dir(), config.freshness)?;
    let audit = Arc::new(crate::audit::AuditLog::open(runtime.state_dir().join("audit.log"))?);
    let limits = Limits::new(config.limits, audit.answered_queries());
    // Readings' counters are durable in their audit records (the counter log is written without
    // a sync): a counter the log missed before a crash comes back from there.
    let restored = verifier.restore_counters(&audit.device_counters())?;
    if restored > 0 {
        tracing::info!(devices = restored, "device counters restored from the audit log");
    }
    // The counters' lines are written before each audit batch: one write per batch, not per reading.
    audit.before_each_write(verifier.counter_writer());
    audit.space_syncs(config.audit_sync_spacing);
    let repository = Repository::load(runtime, &config.repo);
    let metrics = metrics::Metrics::default();
    metrics.models_loaded.set(repository.index().len() as i64);
    Ok(Arc::new(AppState { repository, verifier, audit, auth, limits, metrics, config }))
}

/// Serves on `listener` (TLS when the config says so) until `shutdown` completes, then drains
/// in-flight requests.
pub async fn serve(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let tls = state.config.tls.as_ref().map(tls::server_config).transpose()?;
    let app = api::router(state);
    match tls {
        Some(config) => {
            let listener = tls::TlsListener::new(listener, config)?;
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
        }
        None => axum::serve(listener, app).with_graceful_shutdown(shutdown).await?,
    }
    Ok(())
}

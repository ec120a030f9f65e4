use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Deserialize;
use warden::server::{HostLimits, ServerConfig, TlsFiles, prepare, serve};

use super::Global;

/// Every `warden serve` option. Each is a flag and a key of the `--config` TOML file (same name,
/// `_` for `-`); a flag wins over the file, the file over the default.
#[derive(Debug, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ServeArgs {
    /// TOML file with any of these options (see `dist/warden.toml`).
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8000, Triton's HTTP port]. Plain HTTP is served
    /// only on loopback addresses.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The model repository: <repo>/<name>/<version>/{model.onnx,manifest.toml,manifest.sig}
    /// [default: models/repo].
    #[arg(long)]
    repo: Option<PathBuf>,
    /// Directory of trusted publisher keys [default: models/dev-trust, DEV-ONLY].
    #[arg(long)]
    trust: Option<PathBuf>,
    /// Largest request body in bytes [default: 8 MiB].
    #[arg(long)]
    max_body_bytes: Option<usize>,
    /// Readings with a timestamp must be within this many seconds of the host clock [default: 300].
    #[arg(long)]
    freshness_secs: Option<u64>,
    /// PEM certificate chain: serve HTTPS (with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA certificates: require client certificates that chain to one (mTLS).
    #[arg(long)]
    tls_client_ca: Option<PathBuf>,
    /// Require a bearer token on model requests even before any token exists. Tokens are
    /// required anyway once `warden token create` has been run (a running daemon notices within
    /// a second); on a non-loopback address the daemon does not start before then (unless
    /// --dangerous-no-auth-on-network).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    require_tokens: Option<bool>,
    /// Requests per minute one client token may make across all models [default: unlimited; the
    /// manifests' limits apply per model].
    #[arg(long)]
    client_requests_per_minute: Option<u32>,
    /// Readings per minute one device may send [default: 600].
    #[arg(long)]
    device_readings_per_minute: Option<u32>,
    /// Requests that may wait per model beyond those running [default: 64]; more get 503.
    #[arg(long)]
    queue_depth: Option<usize>,
    /// Under load (after an audit batch of four or more records), the least microseconds between
    /// the starts of two audit-log syncs; the records that arrive meanwhile share the next one
    /// [default: 1000; 0 syncs again as soon as the last returns]. See benches/README.md,
    /// "Spaced audit syncs".
    #[arg(long)]
    audit_sync_spacing_us: Option<u64>,
    /// Threads that serve requests and run models on idle instances [default: twice the CPUs;
    /// see benches/README.md, "Model runs in the request's task"].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    worker_threads: Option<u16>,
    /// Log format: text or json [default: text].
    #[arg(long)]
    log_format: Option<LogFormat>,
    /// Serve plain HTTP on a non-loopback address: anyone on the network can read and forge
    /// traffic.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    dangerous_plain_http_on_network: Option<bool>,
    /// Serve a non-loopback address before any client token exists, so to anyone there (the
    /// first `warden token create` still turns tokens on).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    dangerous_no_auth_on_network: Option<bool>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum LogFormat {
    #[default]
    Text,
    Json,
}

impl ServeArgs {
    /// The flags over the config file's values.
    fn merged(self) -> Result<ServeArgs> {
        let Some(path) = self.config.clone() else { return Ok(self) };
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let file: ServeArgs = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        // Relative paths in the file are relative to the file.
        let rel = |p: Option<PathBuf>| p.map(|p| if p.is_relative() { base.join(p) } else { p });
        Ok(ServeArgs {
            config: self.config,
            listen: self.listen.or(file.listen),
            repo: self.repo.or(rel(file.repo)),
            trust: self.trust.or(rel(file.trust)),
            max_body_bytes: self.max_body_bytes.or(file.max_body_bytes),
            freshness_secs: self.freshness_secs.or(file.freshness_secs),
            tls_cert: self.tls_cert.or(rel(file.tls_cert)),
            tls_key: self.tls_key.or(rel(file.tls_key)),
            tls_client_ca: self.tls_client_ca.or(rel(file.tls_client_ca)),
            require_tokens: self.require_tokens.or(file.require_tokens),
            client_requests_per_minute: self.client_requests_per_minute.or(file.client_requests_per_minute),
            device_readings_per_minute: self.device_readings_per_minute.or(file.device_readings_per_minute),
            queue_depth: self.queue_depth.or(file.queue_depth),
            audit_sync_spacing_us: self.audit_sync_spacing_us.or(file.audit_sync_spacing_us),
            worker_threads: self.worker_threads.or(file.worker_threads),
            log_format: self.log_format.or(file.log_format),
            dangerous_plain_http_on_network: self
                .dangerous_plain_http_on_network
                .or(file.dangerous_plain_http_on_network),
            dangerous_no_auth_on_network: self
                .dangerous_no_auth_on_network
                .or(file.dangerous_no_auth_on_network),
        })
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WARDEN_LOG").unwrap_or_else(|_| "info".into());
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

pub(super) fn run(global: &Global, args: ServeArgs) -> Result<()> {
    let args = args.merged()?;
    init_logging(args.log_format.unwrap_or_default());
    let defaults = ServerConfig::default();
    let trust = args.trust.clone().unwrap_or_else(|| PathBuf::from("models/dev-trust"));
    let repo = args.repo.clone().unwrap_or(defaults.repo.clone());
    if trust.ends_with("dev-trust") {
        eprintln!(
            "WARNING: serving with the DEV-ONLY trust directory {}: anyone can sign models it accepts.",
            trust.display()
        );
        eprintln!(
            "WARNING: pass --trust DIR with your own publisher keys for anything but trying Warden out."
        );
    }
    let tls = match (args.tls_cert.clone(), args.tls_key.clone()) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key, client_ca: args.tls_client_ca.clone() }),
        (None, None) if args.tls_client_ca.is_some() => {
            bail!("--tls-client-ca needs --tls-cert and --tls-key")
        }
        (None, None) => None,
        _ => bail!("--tls-cert and --tls-key go together"),
    };
    let config = ServerConfig {
        listen: args.listen.unwrap_or(defaults.listen),
        repo: repo.clone(),
        max_body_bytes: args.max_body_bytes.unwrap_or(defaults.max_body_bytes),
        freshness: args.freshness_secs.map_or(defaults.freshness, Duration::from_secs),
        tls,
        require_tokens: args.require_tokens.unwrap_or(false),
        limits: HostLimits {
            client_requests_per_minute: args.client_requests_per_minute,
            device_readings_per_minute: args
                .device_readings_per_minute
                .or(defaults.limits.device_readings_per_minute),
            queue_depth: args.queue_depth.unwrap_or(defaults.limits.queue_depth),
        },
        audit_sync_spacing: args
            .audit_sync_spacing_us
            .map_or(defaults.audit_sync_spacing, Duration::from_micros),
        dangerous_plain_http_on_network: args.dangerous_plain_http_on_network.unwrap_or(false),
        dangerous_no_auth_on_network: args.dangerous_no_auth_on_network.unwrap_or(false),
    };
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    let listen = config.listen;
    config.check()?;
    // Models run in runner tasks of their own (`Model::infer_async`), not on blocking threads.
    let runtime = Arc::new(global.runtime_with(Some(&trust), |b| b.async_calls(true))?);
    let state = prepare(runtime, config)?;
    for (bundle, reason) in state.repository.refused() {
        eprintln!("warden: refused {bundle}: {reason}");
    }
    if !state.auth.required() {
        eprintln!(
            "WARNING: no client tokens (none created yet): every local client may call every model. \
             `warden token create --name NAME --models a,b` turns tokens on."
        );
    }
    // Models run in the workers' tasks (`Model::infer_async`), so a worker may be busy with a run
    // while requests wait; with more workers than CPUs the CPUs stay busy (measured in
    // benches/README.md; 2 workers instead of 4 measured again in its twenty-first session).
    let workers = match args.worker_threads {
        Some(0) => bail!("worker_threads must be at least 1"),
        Some(n) => usize::from(n),
        None => std::thread::available_parallelism().map_or(2, |n| n.get().saturating_mul(2)),
    };
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build()?;
    tokio.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
        let addr = listener.local_addr()?;
        // Signal handlers first: a signal that arrives once readiness is announced must find them.
        let signals = Signals::install()?;
        let served: Vec<String> =
            state.repository.index().into_iter().map(|(n, v)| format!("{n}/{v}")).collect();
        println!("warden: serving {} on {scheme}://{addr} ({})", repo.display(), served.join(", "));
        use std::io::Write as _;
        std::io::stdout().flush()?;
        tokio::spawn(reload_on_sighup(state.clone(), signals.hangup));
        tokio::spawn(shrink_limiters(state.clone()));
        notify_systemd(sd_notify::NotifyState::Ready);
        serve(state, listener, shutdown_signal(signals.terminate)).await?;
        eprintln!("warden: shut down");
        Ok(())
    })
}

fn notify_systemd(what: sd_notify::NotifyState<'_>) {
    // A no-op unless started by systemd with Type=notify (NOTIFY_SOCKET set).
    if let Err(e) = sd_notify::notify(false, &[what]) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// The daemon's signal streams, installed before readiness is announced.
struct Signals {
    #[cfg(unix)]
    hangup: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(not(unix))]
    hangup: (),
    #[cfg(not(unix))]
    terminate: (),
}

impl Signals {
    #[cfg(unix)]
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals { hangup: signal(SignalKind::hangup())?, terminate: signal(SignalKind::terminate())? })
    }

    #[cfg(not(unix))]
    fn install() -> std::io::Result<Signals> {
        Ok(Signals { hangup: (), terminate: () })
    }
}

/// SIGHUP: reload the model repository. New and changed bundles are verified and loaded; a bad
/// one is refused and whatever served under its name and version keeps serving.
#[cfg(unix)]
async fn reload_on_sighup(state: Arc<warden::server::AppState>, mut hup: tokio::signal::unix::Signal) {
    while hup.recv().await.is_some() {
        notify_systemd(sd_notify::NotifyState::Reloading);
        tracing::info!("SIGHUP: reloading the model repository");
        let state2 = state.clone();
        match tokio::task::spawn_blocking(move || state2.repository.reload()).await {
            Ok(report) => {
                for (bundle, reason) in &report.refused {
                    eprintln!("warden: refused {bundle}: {reason}");
                }
                tracing::info!(
                    loaded = ?report.loaded,
                    removed = ?report.removed,
                    refused = report.refused.len(),
                    serving = ?state.repository.index(),
                    "reload done"
                );
            }
            Err(e) => tracing::error!(error = %e, "reload failed"),
        }
        notify_systemd(sd_notify::NotifyState::Ready);
    }
}

#[cfg(not(unix))]
async fn reload_on_sighup(_state: Arc<warden::server::AppState>, _hup: ()) {}

/// Forgets idle clients' rate-limiter state now and then, so memory stays bounded.
async fn shrink_limiters(state: Arc<warden::server::AppState>) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    loop {
        every.tick().await;
        state.limits.shrink();
    }
}

/// SIGTERM or Ctrl-C: stop accepting, drain in-flight requests, exit.
#[cfg(unix)]
async fn shutdown_signal(mut terminate: tokio::signal::unix::Signal) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        terminate.recv().await;
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    notify_systemd(sd_notify::NotifyState::Stopping);
    tracing::info!("shutting down: draining in-flight requests");
}

#[cfg(not(unix))]
async fn shutdown_signal(_terminate: ()) {
    let _ = tokio::signal::ctrl_c().await;
    notify_systemd(sd_notify::NotifyState::Stopping);
}

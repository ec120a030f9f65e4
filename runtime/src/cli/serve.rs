use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use warden::server::{ServerConfig, prepare, serve};

use super::Global;

#[derive(Debug, Args)]
pub(super) struct ServeArgs {
    /// Address to listen on (Triton's HTTP port by default). Plain HTTP is served only on
    /// loopback addresses.
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// The model repository: <repo>/<name>/<version>/{model.onnx,manifest.toml,manifest.sig}.
    #[arg(long, default_value = "models/repo")]
    repo: PathBuf,
    /// Directory of trusted publisher keys.
    #[arg(long, default_value = "models/dev-trust")]
    trust: PathBuf,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 8 << 20)]
    max_body_bytes: usize,
    /// Readings with a timestamp must be within this many seconds of the host clock.
    #[arg(long, default_value_t = 300)]
    freshness_secs: u64,
    /// Serve plain HTTP on a non-loopback address (no TLS yet): anyone on the network can read
    /// and forge traffic.
    #[arg(long)]
    dangerous_plain_http_on_network: bool,
}

pub(super) fn run(global: &Global, args: ServeArgs) -> Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WARDEN_LOG").unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let dev_keys = args.trust.ends_with("dev-trust");
    if dev_keys {
        eprintln!(
            "WARNING: serving with the DEV-ONLY trust directory {}: anyone can sign models it accepts.",
            args.trust.display()
        );
        eprintln!(
            "WARNING: pass --trust DIR with your own publisher keys for anything but trying Warden out."
        );
    }
    let runtime = Arc::new(global.runtime(Some(&args.trust))?);
    let config = ServerConfig {
        listen: args.listen,
        repo: args.repo.clone(),
        max_body_bytes: args.max_body_bytes,
        freshness: Duration::from_secs(args.freshness_secs),
        dangerous_plain_http_on_network: args.dangerous_plain_http_on_network,
    };
    let state = prepare(runtime, config)?;
    for (bundle, reason) in state.repository.refused() {
        eprintln!("warden: refused {bundle}: {reason}");
    }
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    tokio.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let addr = listener.local_addr()?;
        let served: Vec<String> =
            state.repository.index().into_iter().map(|(n, v)| format!("{n}/{v}")).collect();
        println!("warden: serving {} on http://{addr} ({})", args.repo.display(), served.join(", "));
        use std::io::Write as _;
        std::io::stdout().flush()?;
        serve(state, listener, shutdown_signal()).await?;
        eprintln!("warden: shut down");
        Ok(())
    })
}

/// SIGTERM or Ctrl-C: stop accepting, drain in-flight requests, exit.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

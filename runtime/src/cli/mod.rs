//! Command-line parsing and the commands themselves.

mod audit;
mod device;
mod model;
mod serve;
mod token;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use warden::kserve::{InferRequest, InferResponse, ResponseTensor};
use warden::{Error, Progress, Runtime, RuntimeBuilder};

/// Signed ONNX models, run by tract inside a wasmtime sandbox.
#[derive(Debug, Parser)]
#[command(name = "warden", version, about)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Global {
    /// Mutable state (accepted model versions). Default: $XDG_STATE_HOME/warden.
    #[arg(long, global = true, env = "WARDEN_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Compiled-guest cache. Default: $XDG_CACHE_HOME/warden. Its files are loaded as native
    /// code: it must be writable by this user only (its checksum catches corruption, not a
    /// writer who recomputes it).
    #[arg(long, global = true, env = "WARDEN_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Compile the sandboxed engine on every start instead of caching it.
    #[arg(long, global = true)]
    no_cache: bool,
    /// Memory cap of one sandbox instance, in MiB.
    #[arg(long, global = true, default_value_t = 512)]
    memory_mib: u64,
    /// Deadline of one inference, in milliseconds.
    #[arg(long, global = true, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Deadline for loading one model into the sandbox, in milliseconds.
    #[arg(long, global = true, default_value_t = 60_000)]
    load_timeout_ms: u64,
    /// Let the guest's relaxed-SIMD instructions use the host's fused multiply-add (for a guest
    /// built with +relaxed-simd; see benches/README.md).
    #[arg(long, global = true, hide = true)]
    relaxed_simd: bool,
    /// Compute every matrix product and depthwise convolution in WebAssembly instead of with
    /// this CPU's native kernels (about 1.5-3x slower on conv- and matmul-heavy models; see
    /// ARCHITECTURE.md, "Trust boundary").
    #[arg(long, global = true)]
    wasm_kernels_only: bool,
    /// Run this guest module instead of the built-in one (for comparing guest builds).
    #[arg(long, global = true, hide = true)]
    guest_wasm: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate a publisher key pair: PATH.key (mode 0600) and PATH.pub.
    Keygen {
        /// Path prefix of the two files.
        #[arg(long)]
        out: PathBuf,
    },
    /// Create, sign, verify and inspect model bundles.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Register, revoke and list sensor devices.
    #[command(subcommand)]
    Device(device::DeviceCommand),
    /// Check or inspect the hash-chained audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Read signed sensor frames (COBS-delimited) from a file, a serial device, stdin (`-`) or
    /// `tcp:HOST:PORT`; print one JSON line per frame: the inference, or the refusal and why.
    Ingest {
        /// Directory of trusted publisher keys.
        #[arg(long)]
        trust: PathBuf,
        /// The bundle of the model readings feed (its manifest has a [readings] section).
        bundle_dir: PathBuf,
        /// Frame source: a path (file, serial device), `-` for stdin, or `tcp:HOST:PORT`.
        #[arg(long, default_value = "-")]
        from: String,
        /// Readings with a timestamp must be within this many seconds of the host clock.
        #[arg(long, default_value_t = 300)]
        freshness_secs: u64,
    },
    /// Serve the model repository over the KServe v2 / Open Inference Protocol REST API.
    Serve(serve::ServeArgs),
    /// Create, revoke and list the client tokens `warden serve` accepts.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Make TLS certificates.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Measure a signed model in the sandbox: load time, then per-inference median and p99.
    Bench {
        /// Directory of trusted publisher keys.
        #[arg(long)]
        trust: PathBuf,
        /// The bundle directory.
        bundle_dir: PathBuf,
        /// KServe v2 request JSON with the inputs to run.
        #[arg(long)]
        input: PathBuf,
        /// Timed inferences (after 10% warm-up).
        #[arg(short = 'n', long, default_value_t = 200)]
        iterations: usize,
        /// Print `{"load_ms":..,"median_us":..,"p99_us":..}` instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run one KServe v2 inference request against a signed bundle; the response goes to stdout.
    Infer {
        /// Directory of trusted publisher keys.
        #[arg(long)]
        trust: PathBuf,
        /// The bundle directory (model.onnx, manifest.toml, manifest.sig).
        bundle_dir: PathBuf,
        /// KServe v2 request JSON (`-` for stdin).
        #[arg(long)]
        input: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum CertCommand {
    /// Write a self-signed certificate and key (cert.pem, key.pem) for localhost, to try TLS out.
    Dev {
        /// Directory to write them to.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
}

/// Exit codes: 1 other failures, 3 a refused bundle or key, 4 a refused request, 5 the sandbox
/// stopped the model (trap, timeout, memory cap) or its outputs broke the manifest. (clap exits
/// with 2 on a bad command line before this runs.)
pub fn exit_code(e: &anyhow::Error) -> u8 {
    match e.chain().find_map(|c| c.downcast_ref::<Error>()) {
        Some(Error::Bundle { .. } | Error::Key(_)) => 3,
        Some(Error::Input(_) | Error::Request(_)) => 4,
        Some(Error::Sandbox(_) | Error::Output(_)) => 5,
        _ => 1,
    }
}

impl Global {
    /// `--state-dir`, else the default one.
    fn state_dir(&self) -> Result<PathBuf> {
        self.state_dir
            .clone()
            .or_else(warden::default_state_dir)
            .context("no state directory: pass --state-dir or set HOME")
    }

    fn runtime(&self, trust: Option<&Path>) -> Result<Runtime> {
        self.runtime_with(trust, |b| b)
    }

    /// `runtime`, with `f` setting what the command needs on top of the flags.
    fn runtime_with(
        &self,
        trust: Option<&Path>,
        f: impl FnOnce(RuntimeBuilder) -> RuntimeBuilder,
    ) -> Result<Runtime> {
        let mut b: RuntimeBuilder = Runtime::builder()
            .memory_limit(usize::try_from(self.memory_mib << 20).context("--memory-mib too large")?)
            .timeout(Duration::from_millis(self.timeout_ms))
            .load_timeout(Duration::from_millis(self.load_timeout_ms));
        if let Some(t) = trust {
            b = b.trust_dir(t);
        }
        if let Some(s) = &self.state_dir {
            b = b.state_dir(s);
        }
        if let Some(c) = &self.cache_dir {
            b = b.cache_dir(c);
        }
        if self.no_cache {
            b = b.no_cache();
        }
        if let Some(path) = &self.guest_wasm {
            let wasm = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            b = b.guest_module(wasm);
        }
        b = f(b.relaxed_simd(self.relaxed_simd).native_kernels(!self.wasm_kernels_only));
        let spinner = Arc::new(std::sync::Mutex::new(None::<indicatif::ProgressBar>));
        let shown = spinner.clone();
        b = b.on_progress(move |p| {
            if let Progress::CompilingGuest = p {
                let bar = indicatif::ProgressBar::new_spinner().with_message(
                    "compiling the sandboxed inference engine to native code (first start only; cached after)",
                );
                bar.enable_steady_tick(Duration::from_millis(120));
                *shown.lock().unwrap_or_else(|p| p.into_inner()) = Some(bar);
            }
        });
        let runtime = b.build();
        if let Some(bar) = spinner.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let took = runtime.as_ref().map(|r| r.guest_compile().1).unwrap_or_default();
            bar.finish_with_message(format!(
                "compiled the sandboxed inference engine in {:.1} s",
                took.as_secs_f64()
            ));
        }
        Ok(runtime?)
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Keygen { out } => {
            let id = warden::trust::generate_keypair(&out)?;
            println!("wrote {0}.key (secret, mode 0600) and {0}.pub (key id {id})", out.display());
            Ok(())
        }
        Command::Model(cmd) => model::run(&cli.global, cmd),
        Command::Device(cmd) => device::run(&cli.global, cmd),
        Command::Audit(cmd) => audit::run(&cli.global, cmd),
        Command::Ingest { trust, bundle_dir, from, freshness_secs } => {
            device::ingest(&cli.global, trust, bundle_dir, from, freshness_secs)
        }
        Command::Serve(args) => serve::run(&cli.global, args),
        Command::Token(cmd) => token::run(&cli.global, cmd),
        Command::Cert(CertCommand::Dev { out }) => token::dev_cert(&out),
        Command::Bench { trust, bundle_dir, input, iterations, json } => {
            bench(&cli.global, &trust, &bundle_dir, &input, iterations.max(1), json)
        }
        Command::Infer { trust, bundle_dir, input } => {
            let request = read_input(&input)?;
            let request = InferRequest::from_json(&request)?;
            let tensors = request.tensors()?;
            let runtime = cli.global.runtime(Some(&trust))?;
            let model = runtime.load_bundle(&bundle_dir)?;
            let mut outputs = model.infer(tensors)?;
            if let Some(wanted) = &request.outputs {
                for w in wanted {
                    if !outputs.iter().any(|o| o.name == w.name) {
                        bail!(Error::Request(format!("unknown output {:?}", w.name)));
                    }
                }
                outputs.retain(|o| wanted.iter().any(|w| w.name == o.name));
            }
            let response = InferResponse {
                model_name: model.manifest().name.clone(),
                model_version: model.manifest().version.to_string(),
                id: request.id.clone(),
                outputs: outputs.iter().map(ResponseTensor::from_tensor).collect(),
            };
            let mut out = std::io::stdout().lock();
            serde_json::to_writer(&mut out, &response)?;
            writeln!(out)?;
            Ok(())
        }
    }
}

fn read_input(path: &Path) -> Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
        return Ok(buf);
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn bench(global: &Global, trust: &Path, bundle_dir: &Path, input: &Path, n: usize, json: bool) -> Result<()> {
    let request = InferRequest::from_json(&read_input(input)?)?;
    let tensors = request.tensors()?;
    let runtime = global.runtime(Some(trust))?;
    let started = std::time::Instant::now();
    let model = runtime.load_bundle(bundle_dir)?;
    let load = started.elapsed();
    for _ in 0..n.div_ceil(10) {
        model.infer(tensors.clone())?;
    }
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = std::time::Instant::now();
        model.infer(tensors.clone())?;
        times.push(t.elapsed());
    }
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1];
    let (median, p99) = (pct(0.5), pct(0.99));
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    if json {
        println!(
            "{}",
            serde_json::json!({"load_ms": load.as_secs_f64() * 1e3, "median_us": us(median), "p99_us": us(p99), "iterations": n})
        );
    } else {
        let m = model.manifest();
        println!(
            "{} v{}: load (verify + parse + optimize in the sandbox) {:.1} ms",
            m.name,
            m.version,
            load.as_secs_f64() * 1e3
        );
        println!(
            "{n} inferences: median {:.1} us, p99 {:.1} us, min {:.1} us",
            us(median),
            us(p99),
            us(times[0])
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_line_definition_is_consistent() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}

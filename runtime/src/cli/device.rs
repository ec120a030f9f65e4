use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde_json::json;
use warden::kserve::ResponseTensor;
use warden::trust::{DeviceRegistry, ReadingVerifier, reading_to_input};
use warden::wire::reading::{MAX_FRAME_LEN, SignedReading};

use super::Global;

#[derive(Debug, Subcommand)]
pub(super) enum DeviceCommand {
    /// Make a key pair for a new device: writes OUT/ID.keyblob (the secret, to flash into the
    /// board's key page; mode 0600) and OUT/ID.pub, and registers the device.
    Provision {
        /// Device id (1-32 of [A-Za-z0-9._-]).
        #[arg(long)]
        id: String,
        /// Directory for the key blob.
        #[arg(long)]
        out: PathBuf,
    },
    /// Revoke a device: its readings are refused from now on (a running `warden serve` or
    /// `warden ingest` notices within a second).
    Revoke {
        /// Device id.
        id: String,
    },
    /// List registered devices.
    List,
}

pub(super) fn run(global: &Global, cmd: DeviceCommand) -> Result<()> {
    let mut registry = DeviceRegistry::open(&global.state_dir()?)?;
    match cmd {
        DeviceCommand::Provision { id, out } => {
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let blob_path = out.join(format!("{id}.keyblob"));
            if blob_path.exists() {
                bail!("{} exists; refusing to overwrite a device key", blob_path.display());
            }
            let blob = registry.provision(&id)?;
            write_private(&blob_path, &blob.to_bytes())?;
            let public = ed25519_dalek::SigningKey::from_bytes(&blob.seed).verifying_key();
            std::fs::write(out.join(format!("{id}.pub")), format!("{}\n", hex::encode(public.as_bytes())))?;
            println!(
                "provisioned {id}: key id {}; flash {} into the board's key page",
                hex::encode(warden::wire::provision::key_id(public.as_bytes())),
                blob_path.display()
            );
        }
        DeviceCommand::Revoke { id } => {
            registry.revoke(&id)?;
            println!("revoked {id}");
        }
        DeviceCommand::List => {
            for d in registry.list() {
                println!("{}\t{}\t{}", d.id, d.key_id, if d.revoked { "revoked" } else { "active" });
            }
        }
    }
    Ok(())
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// Where frames come from.
fn open_source(from: &str) -> Result<Box<dyn Read>> {
    if from == "-" {
        return Ok(Box::new(std::io::stdin()));
    }
    if let Some(addr) = from.strip_prefix("tcp:") {
        let stream = std::net::TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        return Ok(Box::new(stream));
    }
    let file = std::fs::File::open(from).with_context(|| format!("opening {from}"))?;
    Ok(Box::new(file))
}

/// `warden ingest`: verify each frame, run the model, print one JSON line per frame.
pub(super) fn ingest(
    global: &Global,
    trust: PathBuf,
    bundle_dir: PathBuf,
    from: String,
    freshness_secs: u64,
) -> Result<()> {
    let runtime = global.runtime(Some(&trust))?;
    let model = runtime.load_bundle(&bundle_dir)?;
    if model.manifest().readings.is_none() {
        bail!("{} takes no sensor readings (its manifest has no [readings] section)", bundle_dir.display());
    }
    let verifier = ReadingVerifier::open(runtime.state_dir(), Duration::from_secs(freshness_secs))?;
    let mut reader = BufReader::new(open_source(&from)?);
    let mut out = std::io::stdout().lock();
    let mut frame = Vec::with_capacity(MAX_FRAME_LEN);
    loop {
        frame.clear();
        let n = reader.by_ref().take(MAX_FRAME_LEN as u64 + 1).read_until(0, &mut frame)?;
        if n == 0 {
            break;
        }
        if frame.last() != Some(&0) {
            if frame.len() > MAX_FRAME_LEN {
                writeln!(out, "{}", json!({"outcome": "refused", "reason": "frame too long"}))?;
                // Skip to the next delimiter.
                let mut skip = Vec::new();
                reader.read_until(0, &mut skip)?;
                continue;
            }
            if frame.iter().all(|b| b.is_ascii_whitespace()) {
                break;
            }
        }
        if frame == [0] {
            continue;
        }
        let line = match SignedReading::decode_frame(&mut frame) {
            Err(e) => json!({"outcome": "refused", "reason": e.to_string()}),
            Ok(signed) => {
                let (device, counter) = (signed.reading.device_id.to_string(), signed.reading.counter);
                let result = verifier
                    .verify(&signed, SystemTime::now())
                    .map_err(|e| e.to_string())
                    .and_then(|()| reading_to_input(model.manifest(), &signed).map_err(|e| e.to_string()))
                    .and_then(|input| model.infer(vec![input]).map_err(|e| e.to_string()));
                match result {
                    Ok(outputs) => json!({
                        "device": device, "counter": counter, "outcome": "ok",
                        "model_name": model.manifest().name, "model_version": model.manifest().version.to_string(),
                        "outputs": outputs.iter().map(ResponseTensor::from_tensor).collect::<Vec<_>>(),
                    }),
                    Err(reason) => {
                        json!({"device": device, "counter": counter, "outcome": "refused", "reason": reason})
                    }
                }
            }
        };
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    Ok(())
}

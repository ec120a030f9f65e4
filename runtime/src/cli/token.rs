use anyhow::{Context, Result};
use clap::Subcommand;
use warden::server::TokenStore;

use super::Global;

#[derive(Debug, Subcommand)]
pub(super) enum TokenCommand {
    /// Create a client token scoped to some models; the token is printed once, only its SHA-256
    /// is stored. Once a token exists, `warden serve` requires one on every model request.
    Create {
        /// Who holds it (recorded in the audit log as the client).
        #[arg(long)]
        name: String,
        /// Models it may call, comma-separated; `*` for all.
        #[arg(long, value_delimiter = ',', required = true)]
        models: Vec<String>,
    },
    /// Revoke the active token with this name (a running daemon notices within a second).
    Revoke {
        /// The token's name.
        name: String,
    },
    /// List tokens (names, scopes, state; never the tokens).
    List,
}

pub(super) fn run(global: &Global, cmd: TokenCommand) -> Result<()> {
    let dir = global.state_dir()?;
    let mut store = TokenStore::open(&dir)?;
    match cmd {
        TokenCommand::Create { name, models } => {
            let token = store.create(&name, &models)?;
            println!("{token}");
            eprintln!(
                "created token {name:?} for {}; it is shown only now. Send it as `Authorization: Bearer <token>`.",
                models.join(",")
            );
        }
        TokenCommand::Revoke { name } => {
            store.revoke(&name)?;
            println!("revoked token {name:?}");
        }
        TokenCommand::List => {
            for r in store.records() {
                println!(
                    "{}\t{}\t{}\t{}",
                    r.name,
                    r.id,
                    r.models.join(","),
                    if r.revoked { "revoked" } else { "active" }
                );
            }
        }
    }
    Ok(())
}

/// `warden cert dev --out DIR`: a self-signed certificate and key for trying TLS out.
pub(super) fn dev_cert(out: &std::path::Path) -> Result<()> {
    let (cert, key) = warden::server::tls::dev_certificate()?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let cert_path = out.join("cert.pem");
    let key_path = out.join("key.pem");
    std::fs::write(&cert_path, cert).with_context(|| format!("writing {}", cert_path.display()))?;
    write_secret(&key_path, key.as_bytes())?;
    println!(
        "wrote {} and {} (mode 0600): a self-signed certificate for localhost, 127.0.0.1 and ::1, for trying TLS out",
        cert_path.display(),
        key_path.display()
    );
    println!(
        "serve with: warden serve --tls-cert {} --tls-key {}; clients must trust {}",
        cert_path.display(),
        key_path.display(),
        cert_path.display()
    );
    Ok(())
}

fn write_secret(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).with_context(|| format!("writing {}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use warden::audit::{AuditEntry, AuditLog};

use super::Global;

#[derive(Debug, Subcommand)]
pub(super) enum AuditCommand {
    /// Check the whole chain (sequence, links, hashes) and name the first bad record.
    Verify {
        /// The log. Default: audit.log in the state directory.
        file: Option<PathBuf>,
    },
    /// Append COUNT synthetic records from THREADS threads, printing each acknowledged (durable)
    /// seq on its own line. For crash tests.
    #[command(hide = true)]
    Stress {
        /// The log.
        file: PathBuf,
        /// Records to append in total.
        count: u64,
        /// Appending threads.
        threads: usize,
    },
}

pub(super) fn run(global: &Global, cmd: AuditCommand) -> Result<()> {
    match cmd {
        AuditCommand::Verify { file } => {
            let file = match file {
                Some(f) => f,
                None => global
                    .state_dir
                    .clone()
                    .or_else(warden::default_state_dir)
                    .context("no state directory: pass FILE or --state-dir, or set HOME")?
                    .join("audit.log"),
            };
            let report = warden::audit::verify(&file)?;
            println!("OK: {} records, chain intact (last hash {})", report.records, report.last_hash);
            Ok(())
        }
        AuditCommand::Stress { file, count, threads } => stress(file, count, threads.max(1)),
    }
}

fn stress(file: PathBuf, count: u64, threads: usize) -> Result<()> {
    let log = AuditLog::open(&file)?;
    let threads = threads as u64;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let log = &log;
                s.spawn(move || -> Result<()> {
                    let mine = count / threads + u64::from(t < count % threads);
                    for i in 0..mine {
                        let seq = log.append(&AuditEntry {
                            client: Some(format!("stress-{t}")),
                            input_sha256: Some(format!("{i:064x}")),
                            outcome: "ok".to_owned(),
                            ..AuditEntry::default()
                        })?;
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "{seq}")?;
                        out.flush()?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("an appending thread panicked"))??;
        }
        Ok(())
    })
}

//! The tamper-evident audit log: an append-only, hash-chained JSON Lines file.
//!
//! # Record format
//!
//! One record per line, each line terminated by `\n`. A record is a JSON object with exactly these
//! members, in this order, compact (no whitespace), as `serde_json` writes them (absent values
//! are `null`, except `counter`, which is left out when absent; strings are escaped as
//! `serde_json` escapes them; non-ASCII is written as UTF-8):
//!
//! | member          | type            | meaning                                                     |
//! |-----------------|-----------------|-------------------------------------------------------------|
//! | `seq`           | integer         | 1 for the first record, then +1 per record                  |
//! | `time_ms`       | integer         | Unix time in milliseconds when the record was queued        |
//! | `client`        | string or null  | the authenticated client (token name)                       |
//! | `device`        | string or null  | the device id of a signed reading                           |
//! | `counter`       | integer, or no member | the reading's counter, once taken (restored at start) |
//! | `model`         | string or null  | model name                                                  |
//! | `version`       | string or null  | model version                                               |
//! | `model_sha256`  | string or null  | hex SHA-256 of the model                                    |
//! | `input_sha256`  | string or null  | hex SHA-256 of the request body                             |
//! | `outcome`       | string          | what happened (`ok`, or the refusal and why)                |
//! | `output_sha256` | string or null  | hex SHA-256 of the response body                            |
//! | `prev`          | string          | the previous record's `hash`; 64 `0`s for the first record  |
//! | `hash`          | string          | see below                                                   |
//!
//! `hash` is the lowercase hex SHA-256 of the record serialized *without* the `hash` member:
//! every member above but `hash`, in that order, in the same compact form. Since `hash` is always the
//! last member, this is exactly: take the line without its `\n`, remove the final 75 bytes
//! (`,"hash":"` + 64 hex digits + `"}`), append `}`, hash those bytes.
//!
//! A line is valid only if it is byte for byte the serialization of the values it holds (so any
//! change to any byte of a line is detected, even one that still parses), its `seq` is one more
//! than the previous line's, its `prev` is the previous line's `hash`, and its `hash` matches.
//! Everything is checked by [`verify`], which names the first bad record.
//!
//! # Durability, group commit, poisoning
//!
//! - [`AuditLog::append`] returns only after the record is written and `sync_data` has returned:
//!   a record is durable before `append` returns, so a caller can append, then answer.
//! - Group commit: appenders queue their serialized records under a mutex; whichever appender
//!   finds no write in progress becomes the writer: it writes everything queued with one `write`
//!   and one `sync_data` and wakes the others, whose records that write covered. So `n`
//!   concurrent appends cost about one fsync, not `n`.
//! - Under load the writer can space its syncs ([`AuditLog::space_syncs`]): after a batch of at
//!   least four records, the next starts no sooner than the set time after that one did, so the
//!   records that arrive meanwhile share its write and sync. A record that finds no write in
//!   progress is written at once, and so is a batch after a smaller one.
//! - [`AuditLog::append_async`] is the same for async callers (the daemon), whose waiters hold no
//!   thread: they are woken by a watch channel, not the condition variable. Their writer runs on
//!   Tokio's blocking pool and goes on, batch after batch, until the queue is empty; a sync
//!   writer goes on until the async records queued before it stops are durable too.
//! - If a write or an fsync fails, the log is poisoned: the appends covered by that write and every
//!   later append return an error, because the file may or may not hold those records (after a
//!   failed fsync the kernel may have dropped the dirty pages). A record is never reported durable
//!   when it might not be. Reopening the log (a restart) verifies the file and continues from
//!   what is really there.
//! - The file is locked (an exclusive advisory lock) while an [`AuditLog`] holds it, so two
//!   processes cannot interleave chains.
//!
//! # Recovery
//!
//! [`AuditLog::open`] verifies the whole chain. A crash can tear only the last write, and only
//! unacknowledged records are in it, so if (and only if) the *last* line is bad (no trailing
//! newline, not parseable, or a wrong hash), `open` truncates the file to the end of the last valid
//! record, fsyncs, and continues the chain from there. A bad record anywhere before the last line
//! is an [`AuditError::BadRecord`]; `open` never truncates it away. (After a power loss a
//! file system may also leave garbage spanning several lines at the tail; `open` refuses such a
//! file and leaves it to an operator.)

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `prev` of the first record: 64 zeros.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Length of the `,"hash":"<64 hex>"}` suffix that ends every line (before its `\n`).
const HASH_SUFFIX_LEN: usize = 75;

/// What a caller records about one request; [`AuditLog::append`] adds `seq`, `time_ms`, `prev`
/// and `hash`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditEntry {
    /// The authenticated client (token name), if any.
    pub client: Option<String>,
    /// The device id of a signed reading, if any.
    pub device: Option<String>,
    /// The reading's counter, once it has been taken (the reading is then never accepted
    /// again). Records with one restore the device counters at start.
    pub counter: Option<u64>,
    /// The model name, if the request named one.
    pub model: Option<String>,
    /// The model version, if a model was resolved.
    pub version: Option<String>,
    /// Hex SHA-256 of the model, if a model was resolved.
    pub model_sha256: Option<String>,
    /// Hex SHA-256 of the request body.
    pub input_sha256: Option<String>,
    /// What happened: `ok`, or the refusal and why.
    pub outcome: String,
    /// Hex SHA-256 of the response body, if one was produced.
    pub output_sha256: Option<String>,
}

/// The hashed part of a record: every member except `hash`, in the file's order.
#[derive(Serialize)]
struct Body<'a> {
    seq: u64,
    time_ms: u64,
    client: Option<&'a str>,
    device: Option<&'a str>,
    /// Absent rather than `null` when unset, so records written before it existed still
    /// serialize to their exact bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    counter: Option<u64>,
    model: Option<&'a str>,
    version: Option<&'a str>,
    model_sha256: Option<&'a str>,
    input_sha256: Option<&'a str>,
    outcome: &'a str,
    output_sha256: Option<&'a str>,
    prev: &'a str,
}

/// A whole record as read back from the file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    seq: u64,
    time_ms: u64,
    client: Option<String>,
    device: Option<String>,
    #[serde(default)]
    counter: Option<u64>,
    model: Option<String>,
    version: Option<String>,
    model_sha256: Option<String>,
    input_sha256: Option<String>,
    outcome: String,
    output_sha256: Option<String>,
    prev: String,
    hash: String,
}

/// The client name budgets and rate limits use for requests without a token.
pub const ANONYMOUS: &str = "anonymous";

/// Answered queries per (client, model, version): what query budgets are charged with.
pub type AnsweredQueries = HashMap<(String, String, u64), u64>;

/// The highest reading counter taken per device, as the log records them.
pub type DeviceCounters = BTreeMap<String, u64>;

impl Record {
    /// The (client, model, version) of an answered (`ok`) model query.
    fn answered_query(&self) -> Option<(String, String, u64)> {
        if self.outcome != "ok" {
            return None;
        }
        let client = match (&self.client, &self.device) {
            (Some(c), _) => c.clone(),
            (None, Some(d)) => format!("device:{d}"),
            (None, None) => ANONYMOUS.to_owned(),
        };
        Some((client, self.model.clone()?, self.version.as_deref()?.parse().ok()?))
    }

    fn body(&self) -> Body<'_> {
        Body {
            seq: self.seq,
            time_ms: self.time_ms,
            client: self.client.as_deref(),
            device: self.device.as_deref(),
            counter: self.counter,
            model: self.model.as_deref(),
            version: self.version.as_deref(),
            model_sha256: self.model_sha256.as_deref(),
            input_sha256: self.input_sha256.as_deref(),
            outcome: &self.outcome,
            output_sha256: self.output_sha256.as_deref(),
            prev: &self.prev,
        }
    }
}

/// The lowercase hex SHA-256 of `bytes`, as the records hold digests. (`hex::encode` goes
/// through an iterator of `char`s: several times slower, for the three digests of a request.)
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    let mut hex = [0u8; 64];
    // 32 bytes fill the 64 digits exactly, so this cannot fail; the digits are ASCII.
    let _ = hex::encode_to_slice(Sha256::digest(bytes), &mut hex);
    String::from_utf8_lossy(&hex).into_owned()
}

/// Serializes `body` into its line (with `hash` and the `\n`); returns the line and the hash.
fn encode(body: &Body<'_>) -> Result<(Vec<u8>, String), serde_json::Error> {
    let mut line = serde_json::to_vec(body)?;
    let hash = sha256_hex(&line);
    line.pop();
    line.extend_from_slice(b",\"hash\":\"");
    line.extend_from_slice(hash.as_bytes());
    line.extend_from_slice(b"\"}\n");
    debug_assert!(line.len() > HASH_SUFFIX_LEN);
    Ok((line, hash))
}

/// Why a record is bad.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordFault {
    /// The file ends without the line's `\n`.
    Unterminated,
    /// The line is not a record (not JSON, or missing, extra or mistyped members).
    Malformed(String),
    /// The line holds a record but is not its exact serialization.
    NotCanonical,
    /// `seq` is not one more than the previous record's.
    Sequence {
        /// The `seq` in the line.
        found: u64,
    },
    /// `prev` is not the previous record's `hash`.
    BrokenLink,
    /// `hash` does not match the record.
    HashMismatch,
}

impl fmt::Display for RecordFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordFault::Unterminated => f.write_str("torn: no terminating newline"),
            RecordFault::Malformed(why) => write!(f, "malformed: {why}"),
            RecordFault::NotCanonical => f.write_str("not in canonical form (bytes altered)"),
            RecordFault::Sequence { found } => write!(f, "out of sequence (seq {found} in the line)"),
            RecordFault::BrokenLink => f.write_str("prev does not match the previous record's hash"),
            RecordFault::HashMismatch => f.write_str("hash does not match the record"),
        }
    }
}

/// Everything that can go wrong with an audit log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The file or its directory could not be read, written or synced.
    #[error("audit log {}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A record fails verification. `seq` is the sequence number the record at that position
    /// must have (records are numbered from 1, one per line, so it equals `line`).
    #[error("audit log {}: bad record seq {seq} (line {line}): {fault}", path.display())]
    BadRecord {
        /// The path.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// The record's position in the chain.
        seq: u64,
        /// What is wrong with it.
        fault: RecordFault,
    },
    /// Another [`AuditLog`] (in this or another process) holds the file.
    #[error("audit log {} is in use by another writer", path.display())]
    Locked {
        /// The path.
        path: PathBuf,
    },
    /// An append's write or its fsync failed (`step` says which); the log is poisoned from then on.
    #[error("audit log {}: {step} failed: {source}", path.display())]
    Append {
        /// The path.
        path: PathBuf,
        /// `"write"` or `"fsync"`.
        step: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An earlier write or fsync failed; the log refuses appends until it is reopened.
    #[error("audit log {}: refusing to append after a failed write or fsync ({reason})", path.display())]
    Poisoned {
        /// The path.
        path: PathBuf,
        /// The first failure.
        reason: String,
    },
    /// A record could not be serialized.
    #[error("audit log {}: cannot encode a record: {reason}", path.display())]
    Encode {
        /// The path.
        path: PathBuf,
        /// The serializer's message.
        reason: String,
    },
}

/// What [`verify`] found in a valid log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Number of records.
    pub records: u64,
    /// Hex `hash` of the last record ([`GENESIS_PREV`] for an empty log).
    pub last_hash: String,
}

/// The result of reading a log from the start.
struct Scan {
    /// Valid records before the first bad line (or all of them).
    records: u64,
    /// Hash of the last valid record.
    last_hash: String,
    /// Byte length of the valid prefix.
    valid_len: u64,
    /// Answered queries per (client, model, version) in the valid records.
    answered: AnsweredQueries,
    /// Highest counter per device in the valid records.
    counters: DeviceCounters,
    /// The first bad line, and whether it is the last line of the file.
    bad: Option<(u64, RecordFault, bool)>,
}

fn scan(path: &Path, file: &File) -> Result<Scan, AuditError> {
    let io = |source| AuditError::Io { path: path.to_path_buf(), source };
    let mut reader = BufReader::new(file);
    let mut scan = Scan {
        records: 0,
        last_hash: GENESIS_PREV.to_owned(),
        valid_len: 0,
        bad: None,
        answered: HashMap::new(),
        counters: BTreeMap::new(),
    };
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(io)?;
        if n == 0 {
            return Ok(scan);
        }
        let seq = scan.records + 1;
        match check_line(&line, seq, &scan.last_hash) {
            Ok((hash, record)) => {
                if let Some(key) = record.answered_query() {
                    *scan.answered.entry(key).or_insert(0) += 1;
                }
                if let (Some(device), Some(counter)) = (&record.device, record.counter) {
                    let last = scan.counters.entry(device.clone()).or_insert(counter);
                    *last = (*last).max(counter);
                }
                scan.records = seq;
                scan.last_hash = hash;
                scan.valid_len += n as u64;
            }
            Err(fault) => {
                let last = reader.fill_buf().map_err(io)?.is_empty();
                scan.bad = Some((seq, fault, last));
                return Ok(scan);
            }
        }
    }
}

/// Checks one line (with its `\n`, if any) at chain position `seq`; returns its hash.
fn check_line(line: &[u8], seq: u64, prev: &str) -> Result<(String, Record), RecordFault> {
    let Some(text) = line.strip_suffix(b"\n") else {
        return Err(RecordFault::Unterminated);
    };
    let record: Record = serde_json::from_slice(text).map_err(|e| RecordFault::Malformed(e.to_string()))?;
    if record.seq != seq {
        return Err(RecordFault::Sequence { found: record.seq });
    }
    if record.prev != prev {
        return Err(RecordFault::BrokenLink);
    }
    let (expected, hash) = encode(&record.body()).map_err(|e| RecordFault::Malformed(e.to_string()))?;
    if hash != record.hash {
        return Err(RecordFault::HashMismatch);
    }
    if expected != line {
        return Err(RecordFault::NotCanonical);
    }
    Ok((hash, record))
}

/// Checks a whole log: every line a canonical record, `seq` continuous from 1, every `prev` the
/// previous `hash`, every `hash` right. Read-only and strict: a torn last line is reported too
/// (only [`AuditLog::open`] repairs one). The error names the first bad record.
pub fn verify(path: impl AsRef<Path>) -> Result<VerifyReport, AuditError> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|source| AuditError::Io { path: path.to_path_buf(), source })?;
    let scan = scan(path, &file)?;
    match scan.bad {
        None => Ok(VerifyReport { records: scan.records, last_hash: scan.last_hash }),
        Some((seq, fault, _)) => {
            Err(AuditError::BadRecord { path: path.to_path_buf(), line: seq, seq, fault })
        }
    }
}

/// A batch of at least this many records is a sign of load: only after one does the writer
/// space its next batch ([`AuditLog::space_syncs`]).
const SPACED_AFTER: u64 = 4;

/// State shared by appenders, under the mutex.
#[derive(Debug)]
struct State {
    /// `seq` of the next record to queue.
    next_seq: u64,
    /// Hash of the last queued record (written or not).
    last_hash: String,
    /// Serialized records queued for the next write.
    queue: Vec<u8>,
    /// Highest `seq` known to be written and synced.
    durable: u64,
    /// A leader is writing (outside the lock).
    writing: bool,
    /// `seq` of the last record queued by [`AuditLog::append_async`] (0 for none): a sync
    /// writer goes on until it is durable, since no async appender writes while it does.
    async_queued: u64,
    /// Set for good by the first failed write or fsync.
    poisoned: Option<String>,
    /// Least time from the start of one batch's write to the next ([`AuditLog::space_syncs`]).
    spacing: Duration,
}

/// How far the log is durable, as async appenders watch it.
#[derive(Debug, Clone, Copy)]
struct Durable {
    /// [`State::durable`].
    seq: u64,
    /// [`State::poisoned`] is set.
    poisoned: bool,
}

/// An open audit log: appends records durably, from any number of threads.
///
/// Holds an exclusive advisory lock on the file while it is open.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: File,
    state: Mutex<State>,
    /// Wakes [`AuditLog::append`]'s waiters after each write.
    wake: Condvar,
    /// The same news for [`AuditLog::append_async`]'s waiters.
    durable: tokio::sync::watch::Sender<Durable>,
    answered: Mutex<AnsweredQueries>,
    counters: Mutex<DeviceCounters>,
    /// Called by the writer before each batch (see [`AuditLog::before_each_write`]).
    before_write: std::sync::OnceLock<BeforeWrite>,
    /// Batches written and synced ([`AuditLog::syncs`]).
    syncs: AtomicU64,
}

/// A function the writer calls before each batch.
struct BeforeWrite(Box<dyn Fn() + Send + Sync>);

impl fmt::Debug for BeforeWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BeforeWrite")
    }
}

impl AuditLog {
    /// Opens the log at `path`, creating it (mode 0600, parent directory 0700) if it is missing.
    ///
    /// An existing file is verified from the start; a bad *last* line (a torn write) is truncated
    /// away and the chain continues from the last valid record. A bad record before the last line
    /// is an [`AuditError::BadRecord`], and the file is left as it is.
    pub fn open(path: impl AsRef<Path>) -> Result<AuditLog, AuditError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| AuditError::Io { path: path.clone(), source };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.exists() {
            create_private_dir(&dir).map_err(io)?;
        }
        let existed = path.exists();
        let file = open_file(&path).map_err(io)?;
        if let Err(e) = file.try_lock() {
            return Err(match e {
                fs::TryLockError::WouldBlock => AuditError::Locked { path },
                fs::TryLockError::Error(source) => io(source),
            });
        }
        if !existed {
            file.sync_all().map_err(io)?;
            File::open(&dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        let scan = scan(&path, &file)?;
        if let Some((seq, fault, last)) = scan.bad {
            if !last {
                return Err(AuditError::BadRecord { path, line: seq, seq, fault });
            }
            tracing::warn!(
                path = %path.display(),
                seq,
                %fault,
                "audit log: truncating a torn last record"
            );
            file.set_len(scan.valid_len).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        let durable = tokio::sync::watch::Sender::new(Durable { seq: scan.records, poisoned: false });
        let state = State {
            next_seq: scan.records + 1,
            last_hash: scan.last_hash,
            queue: Vec::new(),
            durable: scan.records,
            writing: false,
            async_queued: 0,
            poisoned: None,
            spacing: Duration::ZERO,
        };
        Ok(AuditLog {
            path,
            file,
            state: Mutex::new(state),
            wake: Condvar::new(),
            durable,
            answered: Mutex::new(scan.answered),
            counters: Mutex::new(scan.counters),
            before_write: std::sync::OnceLock::new(),
            syncs: AtomicU64::new(0),
        })
    }

    /// Sets a function for the writer to call before each batch it writes (outside the log's
    /// lock): the daemon writes the device counters' lines there, one write per batch instead of
    /// one per reading. It may be set once; returns whether it was set by this call.
    pub fn before_each_write(&self, f: impl Fn() + Send + Sync + 'static) -> bool {
        self.before_write.set(BeforeWrite(Box::new(f))).is_ok()
    }

    /// Spaces the writer's batches under load: after a batch of at least four records, the
    /// records that queued meanwhile are written (and synced) no sooner than `spacing` after that
    /// batch started, so more records share each sync. A record that finds no write in progress
    /// is written at once, and so is a batch after a smaller one: a lone appender, or a few,
    /// never wait. The daemon sets it (`warden serve --audit-sync-spacing-us`): on the virtual
    /// disks measured in benches/README.md ("Spaced audit syncs"), frequent syncs while the CPUs
    /// are busy meet stalls of 15-26 ms. Zero (the default) writes each batch as soon as the last
    /// sync returns.
    pub fn space_syncs(&self, spacing: Duration) {
        if let Ok(mut state) = self.lock() {
            state.spacing = spacing;
        }
    }

    /// Answered (`ok`) model queries per (client, model, version) found when the log was opened;
    /// taken once (later calls return an empty map). Query budgets are charged from this, so they
    /// survive restarts.
    pub fn answered_queries(&self) -> AnsweredQueries {
        std::mem::take(&mut *self.answered.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The highest reading counter per device found when the log was opened; taken once (later
    /// calls return an empty map). The daemon restores device counters from this, so a reading
    /// it answered is a replay after a restart even if the counter log lost it.
    pub fn device_counters(&self) -> DeviceCounters {
        std::mem::take(&mut *self.counters.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Batches written and synced since the log was opened (each one `write` and one
    /// `sync_data`): records appended over syncs is how many records shared a sync.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Number of records durably in the log.
    pub fn records(&self) -> u64 {
        self.lock().map(|s| s.durable).unwrap_or(0)
    }

    /// Appends a record and returns its `seq` once it is written and synced (group commit with
    /// concurrent appenders). After a failed write or fsync this and every later call fail with
    /// [`AuditError::Poisoned`] (the call whose write or fsync failed gets the [`AuditError::Append`]).
    pub fn append(&self, entry: &AuditEntry) -> Result<u64, AuditError> {
        let mut state = self.lock()?;
        let seq = self.enqueue(&mut state, entry)?;
        loop {
            if state.durable >= seq {
                return Ok(seq);
            }
            self.check_poison(&state)?;
            if state.writing {
                state = self.wake.wait(state).map_err(|_| self.mutex_poisoned())?;
                continue;
            }
            state.writing = true;
            let (next, failure) = self.drain(state, Some(seq));
            state = next?;
            if let Some(e) = failure.filter(|_| state.durable < seq) {
                return Err(e);
            }
        }
    }

    /// As [`AuditLog::append`], for async callers: resolves once the record is durable without
    /// holding a thread while it waits. The first appender that finds no write in progress
    /// starts one on Tokio's blocking pool, which writes and syncs everything queued, batch after
    /// batch, until the queue is empty; the others only wait for it. A failed write or fsync
    /// poisons the log as with `append`; here every caller it covers gets
    /// [`AuditError::Poisoned`], whose reason names the step that failed.
    ///
    /// Must be called from within a Tokio runtime.
    pub async fn append_async(self: &Arc<Self>, entry: &AuditEntry) -> Result<u64, AuditError> {
        let mut durable = self.durable.subscribe();
        let seq = {
            let mut state = self.lock()?;
            let seq = self.enqueue(&mut state, entry)?;
            state.async_queued = seq;
            if !state.writing {
                state.writing = true;
                let log = Arc::clone(self);
                tokio::task::spawn_blocking(move || match log.lock() {
                    Ok(state) => drop(log.drain(state, None)),
                    Err(e) => log.lock_lost(&e),
                });
            }
            seq
        };
        let reached = durable.wait_for(|d| d.seq >= seq || d.poisoned).await.map(|d| *d);
        if matches!(reached, Ok(d) if d.seq >= seq) {
            return Ok(seq);
        }
        // Poisoned (the sender lives as long as `self`, so the wait cannot end otherwise).
        self.check_poison(&*self.lock()?)?;
        Err(self.mutex_poisoned())
    }

    /// Serializes `entry` as the next record, chained to the last one, and queues it. Returns its
    /// `seq`.
    fn enqueue(&self, state: &mut State, entry: &AuditEntry) -> Result<u64, AuditError> {
        self.check_poison(state)?;
        let seq = state.next_seq;
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let body = Body {
            seq,
            time_ms,
            client: entry.client.as_deref(),
            device: entry.device.as_deref(),
            counter: entry.counter,
            model: entry.model.as_deref(),
            version: entry.version.as_deref(),
            model_sha256: entry.model_sha256.as_deref(),
            input_sha256: entry.input_sha256.as_deref(),
            outcome: &entry.outcome,
            output_sha256: entry.output_sha256.as_deref(),
            prev: &state.last_hash,
        };
        let (line, hash) = encode(&body)
            .map_err(|e| AuditError::Encode { path: self.path.clone(), reason: e.to_string() })?;
        state.queue.extend_from_slice(&line);
        state.last_hash = hash;
        state.next_seq += 1;
        Ok(seq)
    }

    /// The writer (the caller set `writing`): writes and syncs the queue, batch after batch,
    /// outside the lock, until it is empty or the log is poisoned; after each batch it wakes the
    /// waiting appenders, sync and async. A sync appender (`until` its own record) stops once its
    /// record and every async appender's queued so far are durable, as before async appenders
    /// existed: the sync appenders still waiting take over, one batch each. Returns the lock
    /// (taken again) and the failure of the batch that poisoned the log, if one did.
    fn drain<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        until: Option<u64>,
    ) -> (Result<MutexGuard<'a, State>, AuditError>, Option<AuditError>) {
        let mut failure = None;
        let more = |state: &State| {
            !state.queue.is_empty()
                && state.poisoned.is_none()
                && until.is_none_or(|seq| state.durable < seq || state.async_queued > state.durable)
        };
        // When the last batch started, and how many records it took.
        let mut last_batch: Option<(Instant, u64)> = None;
        while more(&state) {
            let wait = last_batch
                .filter(|&(_, records)| records >= SPACED_AFTER)
                .map_or(Duration::ZERO, |(t, _)| state.spacing.saturating_sub(t.elapsed()));
            if !wait.is_zero() {
                // Only appenders run meanwhile, and they only add to the queue: `more` still holds.
                drop(state);
                std::thread::sleep(wait);
                state = match self.relock() {
                    Ok(state) => state,
                    Err(e) => return (Err(e), failure),
                };
            }
            let batch = std::mem::take(&mut state.queue);
            let upto = state.next_seq - 1;
            // Every batch before this one is durable (a failed one ends the loop).
            last_batch = Some((Instant::now(), upto - state.durable));
            drop(state);
            if let Some(BeforeWrite(f)) = self.before_write.get() {
                f();
            }
            let result = (&self.file)
                .write_all(&batch)
                .map_err(|e| ("write", e))
                .and_then(|()| self.file.sync_data().map_err(|e| ("fsync", e)));
            state = match self.relock() {
                Ok(state) => state,
                Err(e) => return (Err(e), failure),
            };
            match result {
                Ok(()) => {
                    state.durable = upto;
                    self.syncs.fetch_add(1, Ordering::Relaxed);
                }
                Err((step, source)) => {
                    state.poisoned = Some(format!("{step} failed: {source}"));
                    failure = Some(AuditError::Append { path: self.path.clone(), step, source });
                }
            }
            self.publish(&state);
        }
        state.writing = false;
        self.publish(&state);
        (Ok(state), failure)
    }

    /// The writer takes the lock again; if its mutex was poisoned, wakes every waiter first.
    fn relock(&self) -> Result<MutexGuard<'_, State>, AuditError> {
        self.lock().inspect_err(|e| self.lock_lost(e))
    }

    /// The state's mutex was poisoned (a thread panicked holding it): wakes every waiter, each of
    /// which then fails to take the lock too and returns the error.
    fn lock_lost(&self, e: &AuditError) {
        tracing::error!(error = %e, "audit log: the writer cannot take the lock");
        self.wake.notify_all();
        self.durable.send_replace(Durable { seq: 0, poisoned: true });
    }

    /// Wakes every appender waiting on the log's progress.
    fn publish(&self, state: &State) {
        self.wake.notify_all();
        self.durable.send_replace(Durable { seq: state.durable, poisoned: state.poisoned.is_some() });
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, AuditError> {
        self.state.lock().map_err(|_| self.mutex_poisoned())
    }

    fn mutex_poisoned(&self) -> AuditError {
        AuditError::Poisoned { path: self.path.clone(), reason: "an appender panicked".to_owned() }
    }

    fn check_poison(&self, state: &State) -> Result<(), AuditError> {
        match &state.poisoned {
            Some(reason) => Err(AuditError::Poisoned { path: self.path.clone(), reason: reason.clone() }),
            None => Ok(()),
        }
    }
}

#[cfg(unix)]
fn open_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().read(true).append(true).create(true).mode(0o600).open(path)
}

#[cfg(not(unix))]
fn open_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().read(true).append(true).create(true).open(path)
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(i: usize) -> AuditEntry {
        AuditEntry {
            client: Some(format!("client-{i}")),
            device: i.is_multiple_of(2).then(|| "dev\"1\u{e9}".to_owned()),
            counter: i.is_multiple_of(4).then_some(i as u64),
            model: Some("iris".to_owned()),
            version: Some("3".to_owned()),
            model_sha256: Some(hex::encode(Sha256::digest(b"model"))),
            input_sha256: Some(hex::encode(Sha256::digest(i.to_le_bytes()))),
            outcome: if i.is_multiple_of(3) {
                "refused: shape [1,5] not [1,4]".to_owned()
            } else {
                "ok".to_owned()
            },
            output_sha256: (!i.is_multiple_of(3)).then(|| hex::encode(Sha256::digest(b"out"))),
        }
    }

    /// Counters are restored from the records that carry one (the highest per device); records
    /// without one serialize without the member, as before it existed.
    #[test]
    fn reopening_restores_the_highest_counter_per_device() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        for (device, counter) in [("a", Some(7)), ("b", Some(3)), ("a", Some(5)), ("a", None), ("c", None)] {
            let entry = AuditEntry {
                device: Some(device.to_owned()),
                counter,
                outcome: "ok".to_owned(),
                ..AuditEntry::default()
            };
            log.append(&entry).unwrap();
        }
        drop(log);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.matches("\"counter\":").count(), 3, "{text}");
        let reopened = AuditLog::open(&path).unwrap();
        let counters = reopened.device_counters();
        assert_eq!(counters, [("a".to_owned(), 7), ("b".to_owned(), 3)].into());
        assert!(reopened.device_counters().is_empty(), "taken once");
        assert_eq!(verify(&path).unwrap().records, 5);
    }

    fn write_log(path: &Path, n: usize) -> Vec<u8> {
        let log = AuditLog::open(path).unwrap();
        for i in 0..n {
            assert_eq!(log.append(&entry(i)).unwrap(), i as u64 + 1);
        }
        drop(log);
        fs::read(path).unwrap()
    }

    fn bad_seq(e: AuditError) -> u64 {
        match e {
            AuditError::BadRecord { seq, line, .. } => {
                assert_eq!(seq, line);
                seq
            }
            other => panic!("expected BadRecord, got {other}"),
        }
    }

    #[test]
    fn append_then_verify() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/audit.log");
        let bytes = write_log(&path, 3);
        let report = verify(&path).unwrap();
        assert_eq!(report.records, 3);
        let lines: Vec<&[u8]> = bytes.split_inclusive(|b| *b == b'\n').collect();
        assert_eq!(lines.len(), 3);
        let mut prev = GENESIS_PREV.to_owned();
        for (i, line) in lines.iter().enumerate() {
            let v: serde_json::Value = serde_json::from_slice(line).unwrap();
            assert_eq!(v["seq"], i as u64 + 1);
            assert_eq!(v["prev"], prev.as_str());
            // The documented rule: drop the 75-byte hash suffix, close the object, hash.
            let text = &line[..line.len() - 1];
            let mut body = text[..text.len() - HASH_SUFFIX_LEN].to_vec();
            body.push(b'}');
            assert_eq!(v["hash"], hex::encode(Sha256::digest(&body)).as_str());
            assert_eq!(sha256_hex(&body), hex::encode(Sha256::digest(&body)));
            prev = v["hash"].as_str().unwrap().to_owned();
        }
        assert_eq!(report.last_hash, prev);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
            assert_eq!(fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        }
        let log = AuditLog::open(&path).unwrap();
        assert_eq!(log.records(), 3);
        assert_eq!(log.append(&AuditEntry::default()).unwrap(), 4);
        drop(log);
        assert_eq!(verify(&path).unwrap().records, 4);
    }

    #[test]
    fn empty_log_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        drop(AuditLog::open(&path).unwrap());
        assert_eq!(verify(&path).unwrap(), VerifyReport { records: 0, last_hash: GENESIS_PREV.to_owned() });
    }

    #[test]
    fn second_writer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let _log = AuditLog::open(&path).unwrap();
        assert!(matches!(AuditLog::open(&path), Err(AuditError::Locked { .. })));
    }

    #[test]
    fn every_flipped_bit_names_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let bytes = write_log(&path, 3);
        let mut record_of = Vec::with_capacity(bytes.len());
        let mut seq = 1;
        for b in &bytes {
            record_of.push(seq);
            if *b == b'\n' {
                seq += 1;
            }
        }
        let mut checked = 0;
        for pos in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[pos] ^= 1 << bit;
                fs::write(&path, &bad).unwrap();
                let e = verify(&path).expect_err(&format!("flip at {pos} bit {bit} went unnoticed"));
                assert_eq!(bad_seq(e), record_of[pos], "flip at byte {pos} bit {bit}");
                checked += 1;
            }
        }
        assert_eq!(checked, bytes.len() * 8);
    }

    #[test]
    fn corruption_before_the_last_record_is_not_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut bytes = write_log(&path, 3);
        let first_nl = bytes.iter().position(|b| *b == b'\n').unwrap();
        bytes[first_nl + 10] ^= 0x20;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(bad_seq(AuditLog::open(&path).unwrap_err()), 2);
        assert_eq!(fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn torn_tail_at_every_offset_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let bytes = write_log(&path, 3);
        let end_of_two = bytes[..bytes.len() - 1].iter().rposition(|b| *b == b'\n').unwrap() + 1;
        let two = verify_prefix(&path, &bytes[..end_of_two]);
        for cut in end_of_two..bytes.len() {
            fs::write(&path, &bytes[..cut]).unwrap();
            if cut > end_of_two {
                assert_eq!(bad_seq(verify(&path).unwrap_err()), 3, "cut at {cut}");
            }
            let log = AuditLog::open(&path).unwrap();
            assert_eq!(fs::read(&path).unwrap(), &bytes[..end_of_two], "cut at {cut}");
            assert_eq!(log.append(&entry(7)).unwrap(), 3);
            drop(log);
            let report = verify(&path).unwrap();
            assert_eq!(report.records, 3);
            let text = fs::read_to_string(&path).unwrap();
            let third: serde_json::Value = serde_json::from_str(text.lines().nth(2).unwrap()).unwrap();
            assert_eq!(third["prev"], two.as_str());
        }
        // A complete last line with a wrong hash is torn too.
        let mut bad = bytes.clone();
        let at = bad.len() - 5;
        bad[at] = if bad[at] == b'0' { b'1' } else { b'0' };
        fs::write(&path, &bad).unwrap();
        let log = AuditLog::open(&path).unwrap();
        assert_eq!(log.records(), 2);
    }

    fn verify_prefix(path: &Path, prefix: &[u8]) -> String {
        fs::write(path, prefix).unwrap();
        verify(path).unwrap().last_hash
    }

    #[test]
    fn concurrent_appends_group_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        let mut seqs: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|t| {
                    let log = &log;
                    s.spawn(move || {
                        (0..200).map(|i| log.append(&entry(t * 1000 + i)).unwrap()).collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        drop(log);
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=800).collect::<Vec<_>>());
        let report = verify(&path).unwrap();
        assert_eq!(report.records, 800);
    }

    /// Async appenders (many tasks) and sync appenders (threads) on one log at once: every record
    /// gets its own `seq`, each is durable when its append returns (the file then holds at least
    /// that many records), and the chain verifies.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_and_sync_appends_group_commit_together() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = Arc::new(AuditLog::open(&path).unwrap());
        let tasks: Vec<_> = (0..32)
            .map(|t| {
                let (log, path) = (log.clone(), path.clone());
                tokio::spawn(async move {
                    let mut seqs = Vec::new();
                    for i in 0..25 {
                        let seq = log.append_async(&entry(t * 1000 + i)).await.unwrap();
                        let lines = fs::read(&path).unwrap().iter().filter(|&&b| b == b'\n').count() as u64;
                        assert!(lines >= seq, "seq {seq} returned with {lines} records in the file");
                        seqs.push(seq);
                    }
                    seqs
                })
            })
            .collect();
        let threads: Vec<_> = (0..2)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    (0..50).map(|i| log.append(&entry(90_000 + t * 100 + i)).unwrap()).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seqs: Vec<u64> = Vec::new();
        for task in tasks {
            seqs.extend(task.await.unwrap());
        }
        for thread in threads {
            seqs.extend(thread.join().unwrap());
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=900).collect::<Vec<_>>());
        assert_eq!(log.records(), 900);
        drop(log);
        assert_eq!(verify(&path).unwrap().records, 900);
    }

    /// A log whose every write fails: /dev/full accepts opens and fails every write with ENOSPC.
    #[cfg(target_os = "linux")]
    fn log_on_dev_full() -> AuditLog {
        AuditLog {
            path: PathBuf::from("/dev/full"),
            file: OpenOptions::new().write(true).open("/dev/full").unwrap(),
            state: Mutex::new(State {
                next_seq: 1,
                last_hash: GENESIS_PREV.to_owned(),
                queue: Vec::new(),
                durable: 0,
                writing: false,
                async_queued: 0,
                poisoned: None,
                spacing: Duration::ZERO,
            }),
            wake: Condvar::new(),
            durable: tokio::sync::watch::Sender::new(Durable { seq: 0, poisoned: false }),
            answered: Mutex::new(HashMap::new()),
            counters: Mutex::new(BTreeMap::new()),
            before_write: std::sync::OnceLock::new(),
            syncs: AtomicU64::new(0),
        }
    }

    #[test]
    fn the_hook_runs_before_each_batch_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        // The hook sees the file as it was before the batch: each call finds one record less.
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (p, s) = (path.clone(), Arc::clone(&seen));
        assert!(log.before_each_write(move || {
            let lines = std::fs::read_to_string(&p).unwrap().lines().count();
            s.lock().unwrap().push(lines);
        }));
        assert!(!log.before_each_write(|| {}), "set once");
        for i in 0..3 {
            log.append(&entry(i)).unwrap();
        }
        assert_eq!(*seen.lock().unwrap(), vec![0, 1, 2]);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn failed_write_poisons_the_log() {
        let log = log_on_dev_full();
        let first = log.append(&entry(0)).unwrap_err();
        assert!(matches!(first, AuditError::Append { step: "write", .. }), "{first}");
        assert!(first.to_string().contains("write failed: No space left on device"), "{first}");
        let next = log.append(&entry(1)).unwrap_err();
        assert!(
            matches!(&next, AuditError::Poisoned { reason, .. } if reason.starts_with("write failed")),
            "{next}"
        );
    }

    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_write_poisons_async_appends() {
        let log = Arc::new(log_on_dev_full());
        let appends: Vec<_> = (0..8)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { log.append_async(&entry(i)).await })
            })
            .collect();
        for append in appends {
            let e = append.await.unwrap().unwrap_err();
            assert!(
                matches!(&e, AuditError::Poisoned { reason, .. } if reason.starts_with("write failed: No space left")),
                "{e}"
            );
        }
        assert!(matches!(log.append(&entry(9)).unwrap_err(), AuditError::Poisoned { .. }));
        assert_eq!(log.records(), 0);
    }

    /// With syncs spaced, the records that arrive after a batch of four or more share the next
    /// batch, which waits for the spacing. The writer's hook (run once per batch) holds each of
    /// the first two batches for 200 ms: a first record, then eight 10 ms apart (the second
    /// batch), then five more 50 ms apart. Spaced 2 s, those five make one batch: three in all.
    /// Unspaced they would make more; and were the second batch spaced after the one-record first,
    /// all thirteen would make one (two in all).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spaced_syncs_gather_the_records_that_arrive_after_a_large_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = Arc::new(AuditLog::open(&path).unwrap());
        let batches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = batches.clone();
        log.before_each_write(move || {
            if counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 {
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let spacing = Duration::from_secs(2);
        log.space_syncs(spacing);
        let started = tokio::time::Instant::now();
        let offsets_ms = [0, 10, 20, 30, 40, 50, 60, 70, 80, 250, 300, 350, 400, 450];
        let mut appends = Vec::new();
        for (i, ms) in offsets_ms.into_iter().enumerate() {
            tokio::time::sleep_until(started + Duration::from_millis(ms)).await;
            let log = log.clone();
            appends.push(tokio::spawn(async move { log.append_async(&entry(i)).await }));
        }
        let mut seqs = Vec::new();
        for append in appends {
            seqs.push(append.await.unwrap().unwrap());
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=14).collect::<Vec<_>>());
        assert!(
            started.elapsed() >= spacing,
            "the third batch started {:?} after the first",
            started.elapsed()
        );
        assert_eq!(batches.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert_eq!(verify(&path).unwrap().records, 14);
    }

    /// A lone appender, sync or async, never waits for the spacing: each of its records finds no
    /// write in progress.
    #[tokio::test]
    async fn spaced_syncs_do_not_hold_back_a_lone_appender() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(AuditLog::open(dir.path().join("audit.log")).unwrap());
        let spacing = Duration::from_secs(2);
        log.space_syncs(spacing);
        let started = Instant::now();
        for i in 0..3 {
            log.append(&entry(i)).unwrap();
            log.append_async(&entry(10 + i)).await.unwrap();
        }
        assert!(started.elapsed() < spacing, "six appends in a row took {:?}", started.elapsed());
        assert_eq!(log.records(), 6);
    }
}

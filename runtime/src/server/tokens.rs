//! Client bearer tokens, stored hashed in the state directory, each scoped to the models it may
//! call.
//!
//! A token is `wdn_<id>_<secret>`: `id` is 16 hex digits that name the record, `secret` 64 hex
//! digits (32 random bytes). The store keeps the SHA-256 of the whole token, never the token; the
//! token is shown once, when it is created. Since tokens are random 256-bit values, a fast hash is
//! enough (nothing to brute-force), and lookups compare digests in constant time.

use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{Error, Result};
use crate::trust::fsutil::{FileStamp, FileWatch, create_private_dir, file_stamp, write_atomic};

/// The token store's file in the state directory.
pub const TOKENS_FILE: &str = "tokens.json";

/// The scope that grants every model.
pub const ALL_MODELS: &str = "*";

/// One token's record (never the token itself).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    /// Who holds it; recorded in the audit log as the client.
    pub name: String,
    /// The token's public id (the `<id>` part).
    pub id: String,
    /// Hex SHA-256 of the whole token.
    pub sha256: String,
    /// Model names it may call; `*` for all.
    pub models: Vec<String>,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: u64,
    /// Revoked tokens are kept so their names stay in the history, and never authenticate.
    #[serde(default)]
    pub revoked: bool,
}

impl TokenRecord {
    /// Whether the token may call `model`.
    pub fn allows(&self, model: &str) -> bool {
        self.models.iter().any(|m| m == ALL_MODELS || m == model)
    }
}

/// Why a token store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// A name or model list that cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// An active token already has this name.
    #[error("an active token is already named {0:?} (revoke it first)")]
    Exists(String),
    /// No active token has this name.
    #[error("no active token named {0:?}")]
    NotFound(String),
    /// The store could not be read or written.
    #[error(transparent)]
    Store(#[from] Error),
}

/// The token store: `<state dir>/tokens.json`, mode 0600, rewritten atomically.
#[derive(Debug)]
pub struct TokenStore {
    path: PathBuf,
    records: Vec<TokenRecord>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0))
}

fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn read_records(path: &Path) -> Result<Option<Vec<TokenRecord>>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::io(path, std::io::Error::new(std::io::ErrorKind::InvalidData, e))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

impl TokenStore {
    /// Opens the store in `state_dir` (empty if the file does not exist yet).
    pub fn open(state_dir: &Path) -> Result<TokenStore> {
        let path = state_dir.join(TOKENS_FILE);
        let records = read_records(&path)?.unwrap_or_default();
        Ok(TokenStore { path, records })
    }

    /// Every record, revoked ones included.
    pub fn records(&self) -> &[TokenRecord] {
        &self.records
    }

    /// Creates a token for `name` scoped to `models` and returns it; only its digest is stored.
    pub fn create(&mut self, name: &str, models: &[String]) -> std::result::Result<String, TokenError> {
        let valid = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
        };
        if !valid(name) {
            return Err(TokenError::Invalid(format!(
                "bad token name {name:?}: 1-64 characters of A-Z a-z 0-9 - _ . @"
            )));
        }
        if models.is_empty() {
            return Err(TokenError::Invalid("a token needs at least one model (or `*`)".into()));
        }
        if let Some(m) = models.iter().find(|m| m.as_str() != ALL_MODELS && !valid(m)) {
            return Err(TokenError::Invalid(format!("bad model name {m:?}")));
        }
        if self.records.iter().any(|r| !r.revoked && r.name == name) {
            return Err(TokenError::Exists(name.to_owned()));
        }
        let mut id = [0u8; 8];
        let mut secret = [0u8; 32];
        OsRng.fill_bytes(&mut id);
        OsRng.fill_bytes(&mut secret);
        let token = format!("wdn_{}_{}", hex::encode(id), hex::encode(secret));
        self.records.push(TokenRecord {
            name: name.to_owned(),
            id: hex::encode(id),
            sha256: digest(&token),
            models: models.to_vec(),
            created_ms: now_ms(),
            revoked: false,
        });
        self.save()?;
        Ok(token)
    }

    /// Revokes the active token named `name`.
    pub fn revoke(&mut self, name: &str) -> std::result::Result<(), TokenError> {
        let record = self
            .records
            .iter_mut()
            .find(|r| !r.revoked && r.name == name)
            .ok_or_else(|| TokenError::NotFound(name.to_owned()))?;
        record.revoked = true;
        self.save()?;
        Ok(())
    }

    fn save(&self) -> Result<()> {
        if let Some(dir) = self.path.parent() {
            create_private_dir(dir)?;
        }
        let bytes = serde_json::to_vec_pretty(&self.records)
            .map_err(|e| Error::io(&self.path, std::io::Error::other(e)))?;
        write_atomic(&self.path, &bytes, 0o600)
    }
}

/// Why a request was not authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("missing bearer token (Authorization: Bearer <token>)")]
    Missing,
    /// A token that is not in the store, is malformed or is revoked.
    #[error("invalid or revoked token")]
    Invalid,
}

/// The daemon's view of the token store: re-read when the file changes (checked at most once a
/// second), so `warden token create|revoke` take effect on a running daemon, the first token
/// created included.
#[derive(Debug)]
pub struct Authenticator {
    path: PathBuf,
    /// Set once and never cleared: by `require`, or once the store exists.
    required: AtomicBool,
    active: RwLock<Snapshot>,
    watch: FileWatch,
}

#[derive(Debug, Default)]
struct Snapshot {
    stamp: FileStamp,
    records: Vec<TokenRecord>,
}

impl Authenticator {
    /// Reads the store in `state_dir`. Tokens are required when `require` is set or the store
    /// file exists; a store created later, by the first `warden token create`, turns them on
    /// within a second. Once on, they stay on (revoking the last token never opens the daemon).
    pub fn open(state_dir: &Path, require: bool) -> Result<Authenticator> {
        let path = state_dir.join(TOKENS_FILE);
        let stamp = file_stamp(&path);
        let records = read_records(&path)?;
        let required = require || records.is_some();
        let snapshot = Snapshot { stamp, records: active(records.unwrap_or_default()) };
        Ok(Authenticator {
            path,
            required: AtomicBool::new(required),
            active: RwLock::new(snapshot),
            watch: FileWatch::new(),
        })
    }

    /// Whether requests must carry a token.
    pub fn required(&self) -> bool {
        if !self.required.load(Ordering::Acquire) {
            self.refresh();
        }
        self.required.load(Ordering::Acquire)
    }

    /// The record of the token in an `Authorization` header value.
    pub fn authenticate(&self, authorization: Option<&str>) -> std::result::Result<TokenRecord, AuthError> {
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or(AuthError::Missing)?;
        let id = token.strip_prefix("wdn_").and_then(|t| t.split('_').next()).ok_or(AuthError::Invalid)?;
        self.refresh();
        let wanted = digest(token);
        let snapshot = self.active.read().unwrap_or_else(|p| p.into_inner());
        snapshot
            .records
            .iter()
            .find(|r| r.id == id && bool::from(r.sha256.as_bytes().ct_eq(wanted.as_bytes())))
            .cloned()
            .ok_or(AuthError::Invalid)
    }

    /// Re-reads the store if the file changed (at most once a second). A store that cannot be
    /// read keeps the last good snapshot and is logged.
    fn refresh(&self) {
        let seen = self.active.read().unwrap_or_else(|p| p.into_inner()).stamp;
        let Some(current) = self.watch.changed(&self.path, &seen) else {
            return;
        };
        // A store exists, readable or not: tokens are on from now (one this daemon cannot read
        // accepts no token, rather than leave the daemon open).
        if current.is_some() && !self.required.swap(true, Ordering::AcqRel) {
            tracing::warn!("a token store was created: client tokens are required from now on");
        }
        match read_records(&self.path) {
            Ok(records) => {
                let records = active(records.unwrap_or_default());
                tracing::info!(active = records.len(), "token store changed; reloaded");
                *self.active.write().unwrap_or_else(|p| p.into_inner()) =
                    Snapshot { stamp: current, records };
            }
            Err(e) => tracing::error!(error = %e, "token store unreadable; keeping the previous tokens"),
        }
    }
}

fn active(records: Vec<TokenRecord>) -> Vec<TokenRecord> {
    records.into_iter().filter(|r| !r.revoked).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tokens_authenticate_until_revoked_and_only_by_exact_value() {
        let dir = tempfile::tempdir().unwrap();
        let open = Authenticator::open(dir.path(), false).unwrap();
        assert!(!open.required(), "no store, not required");
        let mut store = TokenStore::open(dir.path()).unwrap();
        let token = store.create("alice", &["digits".into()]).unwrap();
        assert!(matches!(store.create("alice", &["x".into()]), Err(TokenError::Exists(_))));
        assert!(matches!(store.create("bad name", &["x".into()]), Err(TokenError::Invalid(_))));
        let stored = std::fs::read_to_string(dir.path().join(TOKENS_FILE)).unwrap();
        assert!(!stored.contains(&token[20..]), "the secret is never stored");

        let auth = Authenticator::open(dir.path(), false).unwrap();
        assert!(auth.required());
        let record = auth.authenticate(Some(&format!("Bearer {token}"))).unwrap();
        assert_eq!(record.name, "alice");
        assert!(record.allows("digits") && !record.allows("motion"));
        assert_eq!(auth.authenticate(None), Err(AuthError::Missing));
        assert_eq!(auth.authenticate(Some(&token)), Err(AuthError::Missing));
        let mut wrong = token.clone().into_bytes();
        let last = wrong.len() - 1;
        wrong[last] = if wrong[last] == b'0' { b'1' } else { b'0' };
        let wrong = String::from_utf8(wrong).unwrap();
        assert_eq!(auth.authenticate(Some(&format!("Bearer {wrong}"))), Err(AuthError::Invalid));

        store.revoke("alice").unwrap();
        assert!(matches!(store.revoke("alice"), Err(TokenError::NotFound(_))));
        let auth = Authenticator::open(dir.path(), false).unwrap();
        assert!(auth.required(), "revoking the last token keeps tokens required");
        assert_eq!(auth.authenticate(Some(&format!("Bearer {token}"))), Err(AuthError::Invalid));
    }

    #[test]
    fn the_first_token_created_turns_tokens_on_in_a_running_reader() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Authenticator::open(dir.path(), false).unwrap();
        assert!(!auth.required(), "no store, not required");
        let token = TokenStore::open(dir.path()).unwrap().create("alice", &["digits".into()]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(FileWatch::INTERVAL_MS + 100));
        assert!(auth.required(), "the new store is noticed within the watch's interval");
        assert_eq!(auth.authenticate(None), Err(AuthError::Missing));
        assert_eq!(auth.authenticate(Some(&format!("Bearer {token}"))).unwrap().name, "alice");
        // A store that cannot be read turns tokens on too (here in a second reader that had none).
        let other = tempfile::tempdir().unwrap();
        let unreadable = Authenticator::open(other.path(), false).unwrap();
        std::fs::write(other.path().join(TOKENS_FILE), b"not json").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(FileWatch::INTERVAL_MS + 100));
        assert!(unreadable.required(), "an unreadable store turns tokens on");
        assert_eq!(unreadable.authenticate(Some(&format!("Bearer {token}"))), Err(AuthError::Invalid));
        // Removing the store does not open the reader again.
        std::fs::remove_file(dir.path().join(TOKENS_FILE)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(FileWatch::INTERVAL_MS + 100));
        assert!(auth.required());
        assert_eq!(auth.authenticate(Some(&format!("Bearer {token}"))), Err(AuthError::Invalid));
    }
}

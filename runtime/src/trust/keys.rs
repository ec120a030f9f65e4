use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use warden_wire::signing::KEY_ID_LEN;

use super::fsutil::write_atomic;
use crate::error::{Error, KeyError, Result};

const PUBLIC_PREFIX: &str = "warden-ed25519-public ";
const SECRET_PREFIX: &str = "warden-ed25519-secret ";

/// A key id: the first 8 bytes of SHA-256 of the public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// The key id of a public key.
pub fn key_id(key: &VerifyingKey) -> KeyId {
    let digest = Sha256::digest(key.as_bytes());
    let mut id = [0; KEY_ID_LEN];
    id.copy_from_slice(&digest[..KEY_ID_LEN]);
    KeyId(id)
}

/// A publisher's secret key, used to sign bundles.
pub struct PublisherKey {
    signing: SigningKey,
}

impl fmt::Debug for PublisherKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublisherKey({})", self.id())
    }
}

impl PublisherKey {
    /// Reads a `.key` file written by [`generate_keypair`]; refuses one others can read.
    pub fn load(path: &Path) -> Result<PublisherKey> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(KeyError::Permissions { path: path.into() }.into());
            }
        }
        let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let seed = parse_hex32(&text, SECRET_PREFIX)
            .ok_or_else(|| KeyError::Malformed { path: path.into(), what: "secret" })?;
        Ok(PublisherKey { signing: SigningKey::from_bytes(&seed) })
    }

    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// Its key id.
    pub fn id(&self) -> KeyId {
        key_id(&self.verifying_key())
    }

    /// Signs `context || payload`.
    pub fn sign(&self, context: &[u8], payload: &[u8]) -> Signature {
        self.signing.sign(&[context, payload].concat())
    }
}

fn parse_hex32(text: &str, prefix: &str) -> Option<[u8; 32]> {
    let hex_part = text.strip_prefix(prefix)?.strip_suffix('\n')?;
    if hex_part.len() != 64 || !hex_part.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let mut out = [0; 32];
    hex::decode_to_slice(hex_part, &mut out).ok()?;
    Some(out)
}

/// Parses a `.pub` file's text.
pub(crate) fn parse_public(path: &Path, text: &str) -> Result<VerifyingKey> {
    let bytes = parse_hex32(text, PUBLIC_PREFIX)
        .ok_or_else(|| KeyError::Malformed { path: path.into(), what: "public" })?;
    let key = VerifyingKey::from_bytes(&bytes)
        .map_err(|_| KeyError::Malformed { path: path.into(), what: "public" })?;
    if key.is_weak() {
        return Err(KeyError::Weak { path: path.into() }.into());
    }
    Ok(key)
}

/// Writes a new key pair: `<out>.key` (mode 0600) and `<out>.pub`. Refuses to overwrite.
pub fn generate_keypair(out: &Path) -> Result<KeyId> {
    let key_path = with_suffix(out, "key");
    let pub_path = with_suffix(out, "pub");
    for p in [&key_path, &pub_path] {
        if p.exists() {
            return Err(Error::io(
                p,
                std::io::Error::new(std::io::ErrorKind::AlreadyExists, "refusing to overwrite"),
            ));
        }
    }
    let signing = SigningKey::generate(&mut rand_core::OsRng);
    let public = signing.verifying_key();
    write_atomic(
        &key_path,
        format!("{SECRET_PREFIX}{}\n", hex::encode(signing.to_bytes())).as_bytes(),
        0o600,
    )?;
    write_atomic(
        &pub_path,
        format!("{PUBLIC_PREFIX}{}\n", hex::encode(public.as_bytes())).as_bytes(),
        0o644,
    )?;
    Ok(key_id(&public))
}

fn with_suffix(path: &Path, ext: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

/// The lines of a `revoked` file that name a key: comments (`#` on) and blank lines dropped.
fn revocation_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().map(|l| l.split('#').next().unwrap_or("").trim()).filter(|l| !l.is_empty())
}

fn parse_key_id(hex_id: &str) -> Option<KeyId> {
    let mut id = [0; KEY_ID_LEN];
    hex::decode_to_slice(hex_id, &mut id).ok()?;
    Some(KeyId(id))
}

/// The publisher keys a host trusts: every `*.pub` file in a trust directory, minus the key ids
/// listed in its `revoked` file (one hex key id per line, `#` comments).
#[derive(Clone, Debug, Default)]
pub struct TrustStore {
    keys: HashMap<KeyId, VerifyingKey>,
    revoked: HashSet<KeyId>,
    dir: PathBuf,
}

impl TrustStore {
    /// Loads a trust directory.
    pub fn load(dir: &Path) -> Result<TrustStore> {
        let mut store = TrustStore { dir: dir.to_path_buf(), ..TrustStore::default() };
        let entries = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        for entry in entries {
            let path = entry.map_err(|e| Error::io(dir, e))?.path();
            if path.extension().is_some_and(|e| e == "pub") {
                let text = fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
                let key = parse_public(&path, &text)?;
                store.keys.insert(key_id(&key), key);
            }
        }
        let revoked = dir.join("revoked");
        if revoked.exists() {
            let text = fs::read_to_string(&revoked).map_err(|e| Error::io(&revoked, e))?;
            for line in revocation_lines(&text) {
                let id = parse_key_id(line)
                    .ok_or_else(|| KeyError::Malformed { path: revoked.clone(), what: "revocation" })?;
                store.revoked.insert(id);
            }
        }
        if store.keys.is_empty() {
            return Err(KeyError::EmptyTrust { path: dir.into() }.into());
        }
        Ok(store)
    }

    /// This store narrowed by what its directory, which no longer loads, still says: every key
    /// id in a line of its `revoked` file that parses is revoked, and with no `.pub` file left
    /// no key is trusted. What a reload falls back to, so that a typo beside a revocation does
    /// not keep the revoked key trusted.
    pub(crate) fn narrowed(&self) -> TrustStore {
        let mut store = self.clone();
        let dir = &self.dir;
        let any_key = fs::read_dir(dir).is_ok_and(|entries| {
            entries.filter_map(|e| e.ok()).any(|e| e.path().extension().is_some_and(|x| x == "pub"))
        });
        if !any_key {
            store.keys.clear();
        }
        if let Ok(text) = fs::read_to_string(dir.join("revoked")) {
            store.revoked.extend(revocation_lines(&text).filter_map(parse_key_id));
        }
        store
    }

    /// The directory it was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A trusted key by id, or why not.
    pub(crate) fn lookup(&self, id: KeyId) -> std::result::Result<&VerifyingKey, crate::error::BundleError> {
        if self.revoked.contains(&id) {
            return Err(crate::error::BundleError::RevokedKey(id.to_string()));
        }
        self.keys.get(&id).ok_or_else(|| crate::error::BundleError::UnknownKey(id.to_string()))
    }

    /// Ids of the trusted (non-revoked) keys.
    pub fn key_ids(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.keys.keys().copied().filter(|k| !self.revoked.contains(k))
    }
}

//! Domain separation for every signature Warden makes or checks.
//!
//! A signed message is always `CONTEXT || payload`, where each purpose has its own fixed,
//! NUL-terminated context string. A signature over a model manifest can therefore never be
//! replayed as a signature over a sensor reading, or the other way round.

/// Context for a model bundle signature: the payload is the exact bytes of `manifest.toml`.
pub const MODEL_MANIFEST_CONTEXT: &[u8] = b"warden/model-manifest/v1\0";

/// Context for a sensor reading signature: the payload is format, key id and the postcard bytes
/// of the reading (see [`crate::reading`]).
pub const READING_CONTEXT: &[u8] = b"warden/sensor-reading/v1\0";

/// Magic bytes that start a `manifest.sig` file (format version 1).
pub const MANIFEST_SIG_MAGIC: &[u8; 8] = b"WRDNSIG1";

/// Length of a key id: the first bytes of the SHA-256 of the 32-byte ed25519 public key.
pub const KEY_ID_LEN: usize = 8;

/// Length of a `manifest.sig` file: magic, key id, ed25519 signature.
pub const MANIFEST_SIG_LEN: usize = MANIFEST_SIG_MAGIC.len() + KEY_ID_LEN + 64;

/// A parsed `manifest.sig`: which key signed, and the signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManifestSignature {
    /// Key id of the signing publisher key.
    pub key_id: [u8; KEY_ID_LEN],
    /// The ed25519 signature over `MODEL_MANIFEST_CONTEXT || manifest.toml`.
    pub signature: [u8; 64],
}

impl ManifestSignature {
    /// Parses the exact `manifest.sig` layout; anything else (length, magic) is `None`.
    pub fn from_bytes(bytes: &[u8]) -> Option<ManifestSignature> {
        if bytes.len() != MANIFEST_SIG_LEN || !bytes.starts_with(MANIFEST_SIG_MAGIC) {
            return None;
        }
        let rest = &bytes[MANIFEST_SIG_MAGIC.len()..];
        let mut key_id = [0; KEY_ID_LEN];
        key_id.copy_from_slice(&rest[..KEY_ID_LEN]);
        let mut signature = [0; 64];
        signature.copy_from_slice(&rest[KEY_ID_LEN..]);
        Some(ManifestSignature { key_id, signature })
    }

    /// The bytes of a `manifest.sig` file.
    pub fn to_bytes(&self) -> [u8; MANIFEST_SIG_LEN] {
        let mut out = [0; MANIFEST_SIG_LEN];
        out[..MANIFEST_SIG_MAGIC.len()].copy_from_slice(MANIFEST_SIG_MAGIC);
        out[MANIFEST_SIG_MAGIC.len()..][..KEY_ID_LEN].copy_from_slice(&self.key_id);
        out[MANIFEST_SIG_MAGIC.len() + KEY_ID_LEN..].copy_from_slice(&self.signature);
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn signature_file_round_trips_and_rejects_other_layouts() {
        let sig = ManifestSignature { key_id: [7; KEY_ID_LEN], signature: [9; 64] };
        let bytes = sig.to_bytes();
        assert_eq!(ManifestSignature::from_bytes(&bytes), Some(sig));
        assert_eq!(ManifestSignature::from_bytes(&bytes[1..]), None);
        let mut wrong_magic = bytes;
        wrong_magic[0] ^= 1;
        assert_eq!(ManifestSignature::from_bytes(&wrong_magic), None);
    }
}

//! The device key blob that provisioning writes into a board's key flash page.
//!
//! Layout (81 bytes, little-endian where it matters):
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `WRDNKEY1` |
//! | 8 | 1 | device id length `n` (1..=32) |
//! | 9 | 32 | device id, UTF-8, `n` bytes then zero padding |
//! | 41 | 32 | ed25519 secret key seed |
//! | 73 | 8 | first 8 bytes of SHA-256 of bytes 0..73 |
//!
//! The checksum catches an erased or half-written page; it is not a secret.

use sha2::{Digest, Sha256};

use crate::reading::MAX_DEVICE_ID;

/// Magic bytes starting a key blob.
pub const KEY_BLOB_MAGIC: &[u8; 8] = b"WRDNKEY1";
/// Length of a key blob.
pub const KEY_BLOB_LEN: usize = 81;

/// A device's identity as stored on the board.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyBlob {
    /// The device id.
    pub device_id: heapless::String<MAX_DEVICE_ID>,
    /// The ed25519 secret key seed.
    pub seed: [u8; 32],
}

impl core::fmt::Debug for KeyBlob {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KeyBlob").field("device_id", &self.device_id).finish_non_exhaustive()
    }
}

/// Why a key page could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyBlobError {
    /// No magic: the page was never provisioned (or is erased).
    NotProvisioned,
    /// Bad length byte, bad UTF-8 or bad checksum.
    Corrupt,
}

impl KeyBlob {
    /// The 81 bytes to write to the key page.
    pub fn to_bytes(&self) -> [u8; KEY_BLOB_LEN] {
        let mut out = [0u8; KEY_BLOB_LEN];
        out[..8].copy_from_slice(KEY_BLOB_MAGIC);
        let id = self.device_id.as_bytes();
        out[8] = id.len() as u8;
        out[9..9 + id.len()].copy_from_slice(id);
        out[41..73].copy_from_slice(&self.seed);
        let sum = Sha256::digest(&out[..73]);
        out[73..].copy_from_slice(&sum[..8]);
        out
    }

    /// Parses a key page (at least 81 bytes; the rest is ignored).
    pub fn parse(page: &[u8]) -> Result<KeyBlob, KeyBlobError> {
        let page = page.get(..KEY_BLOB_LEN).ok_or(KeyBlobError::Corrupt)?;
        if &page[..8] != KEY_BLOB_MAGIC {
            return Err(KeyBlobError::NotProvisioned);
        }
        if Sha256::digest(&page[..73])[..8] != page[73..] {
            return Err(KeyBlobError::Corrupt);
        }
        let n = page[8] as usize;
        if n == 0 || n > MAX_DEVICE_ID || page[9 + n..41].iter().any(|b| *b != 0) {
            return Err(KeyBlobError::Corrupt);
        }
        let id = core::str::from_utf8(&page[9..9 + n]).map_err(|_| KeyBlobError::Corrupt)?;
        let device_id = heapless::String::try_from(id).map_err(|_| KeyBlobError::Corrupt)?;
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&page[41..73]);
        Ok(KeyBlob { device_id, seed })
    }
}

/// The key id of an ed25519 public key: the first 8 bytes of its SHA-256.
pub fn key_id(public_key: &[u8; 32]) -> [u8; crate::signing::KEY_ID_LEN] {
    let digest = Sha256::digest(public_key);
    let mut id = [0u8; crate::signing::KEY_ID_LEN];
    id.copy_from_slice(&digest[..crate::signing::KEY_ID_LEN]);
    id
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn blob_round_trips_and_detects_damage() {
        let blob = KeyBlob { device_id: heapless::String::try_from("board-7").unwrap(), seed: [9; 32] };
        let bytes = blob.to_bytes();
        assert_eq!(KeyBlob::parse(&bytes), Ok(blob));
        assert_eq!(KeyBlob::parse(&[0xff; KEY_BLOB_LEN]), Err(KeyBlobError::NotProvisioned));
        for i in 8..KEY_BLOB_LEN {
            let mut damaged = bytes;
            damaged[i] ^= 1;
            assert_eq!(KeyBlob::parse(&damaged), Err(KeyBlobError::Corrupt), "byte {i}");
        }
    }
}

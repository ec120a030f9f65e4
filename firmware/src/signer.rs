//! Signing readings with the device key.
//!
//! The signature is plain ed25519 (RFC 8032, pure Ed25519, no pre-hash, no context) over the bytes
//! of [`reading_message`], which already carries Warden's domain-separation context
//! (`warden/sensor-reading/v1\0`). The host checks it with `verify_strict`.

use ed25519_dalek::{Signer as _, SigningKey};
use warden_wire::provision::{KeyBlob, key_id};
use warden_wire::reading::{
    FrameError, MAX_DEVICE_ID, MAX_MESSAGE_LEN, READING_FORMAT, Reading, Signature64, SignedReading,
    reading_message,
};
use warden_wire::signing::KEY_ID_LEN;

/// The device's signing identity: its ed25519 key (wiped on drop), key id and device id.
pub struct Signer {
    key: SigningKey,
    key_id: [u8; KEY_ID_LEN],
    device_id: heapless::String<MAX_DEVICE_ID>,
}

impl core::fmt::Debug for Signer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Never print the key.
        f.debug_struct("Signer")
            .field("device_id", &self.device_id)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// The signer for a provisioned key blob.
    pub fn new(blob: &KeyBlob) -> Signer {
        let key = SigningKey::from_bytes(&blob.seed);
        let key_id = key_id(key.verifying_key().as_bytes());
        Signer { key, key_id, device_id: blob.device_id.clone() }
    }

    /// The device id from the key blob; readings carry it.
    pub fn device_id(&self) -> &str {
        self.device_id.as_str()
    }

    /// The key id (first 8 bytes of SHA-256 of the public key).
    pub fn key_id(&self) -> [u8; KEY_ID_LEN] {
        self.key_id
    }

    /// The 32-byte ed25519 public key, as the host registers it.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Signs arbitrary bytes with the device key (pure Ed25519). Readings go through
    /// [`Signer::sign`]; this is the primitive, exposed so the RFC 8032 vectors can test it.
    pub fn sign_raw(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }

    /// Signs a reading: ed25519 over [`reading_message`] (built in a stack buffer of
    /// [`MAX_MESSAGE_LEN`] bytes), with format [`READING_FORMAT`] and this key's id.
    ///
    /// Fails only if the reading cannot be encoded (it cannot: every `Reading` fits the bounds).
    pub fn sign(&self, reading: Reading) -> Result<SignedReading, FrameError> {
        let mut buf = [0u8; MAX_MESSAGE_LEN];
        let message = reading_message(READING_FORMAT, &self.key_id, &reading, &mut buf)?;
        let signature = Signature64(self.sign_raw(message));
        Ok(SignedReading { format: READING_FORMAT, key_id: self.key_id, reading, signature })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, VerifyingKey};
    use warden_wire::reading::{MAX_FRAME_LEN, SensorKind, Unit};

    fn from_hex<const N: usize>(s: &str) -> [u8; N] {
        let v = hex::decode(s).expect("hex");
        v.try_into().expect("length")
    }

    fn blob(seed: [u8; 32]) -> KeyBlob {
        KeyBlob { device_id: heapless::String::try_from("board-7").expect("id"), seed }
    }

    /// RFC 8032 section 7.1: TEST 1, TEST 2, TEST 3 and TEST SHA(abc).
    const VECTORS: [(&str, &str, &str, &str); 4] = [
        (
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        ),
        (
            "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            "72",
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        ),
        (
            "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
            "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
            "af82",
            "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
        ),
        (
            "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
            "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
            "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b58909351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
        ),
    ];

    #[test]
    fn rfc8032_vectors_sign_bit_exact() {
        for (i, (seed, public, message, signature)) in VECTORS.iter().enumerate() {
            let signer = Signer::new(&blob(from_hex(seed)));
            assert_eq!(signer.public_key(), from_hex::<32>(public), "vector {i}: public key");
            let message = hex::decode(message).expect("hex");
            let sig = signer.sign_raw(&message);
            assert_eq!(sig, from_hex::<64>(signature), "vector {i}: signature");
            let vk = VerifyingKey::from_bytes(&signer.public_key()).expect("key");
            vk.verify_strict(&message, &Signature::from_bytes(&sig)).expect("verifies");
        }
        // The SHA(abc) vector's message really is SHA-512("abc").
        use sha2::Digest;
        assert_eq!(hex::encode(sha2::Sha512::digest(b"abc")), VECTORS[3].2);
    }

    fn reading(counter: u64) -> Reading {
        crate::reading_from_samples("board-7", counter, None, &[[12, -8, 1003], [10, -9, 998], [-4, 2, 1001]])
            .expect("fits")
    }

    fn verify_frame(vk: &VerifyingKey, frame: &[u8]) -> bool {
        let mut copy = [0u8; MAX_FRAME_LEN];
        let Some(copy) = copy.get_mut(..frame.len()) else { return false };
        copy.copy_from_slice(frame);
        let Ok(signed) = SignedReading::decode_frame(copy) else { return false };
        let mut buf = [0u8; MAX_MESSAGE_LEN];
        let Ok(message) = reading_message(signed.format, &signed.key_id, &signed.reading, &mut buf) else {
            return false;
        };
        signed.key_id == warden_wire::provision::key_id(vk.as_bytes())
            && vk.verify_strict(message, &Signature::from_bytes(&signed.signature.0)).is_ok()
    }

    #[test]
    fn signed_frame_verifies_strictly_and_any_flipped_bit_fails() {
        let signer = Signer::new(&blob([7; 32]));
        let vk = VerifyingKey::from_bytes(&signer.public_key()).expect("key");
        let signed = signer.sign(reading(41)).expect("sign");
        assert_eq!(signed.reading.sensor, SensorKind::Accelerometer);
        assert_eq!(signed.reading.unit, Unit::MilliG);
        assert_eq!(signed.key_id, signer.key_id());
        let mut buf = [0u8; MAX_FRAME_LEN];
        let frame = signed.encode_frame(&mut buf).expect("encode").to_vec();
        assert!(verify_frame(&vk, &frame));
        let mut checked = 0;
        for byte in 0..frame.len() {
            for bit in 0..8 {
                let mut bad = frame.clone();
                bad[byte] ^= 1 << bit;
                assert!(!verify_frame(&vk, &bad), "flipping bit {bit} of byte {byte} still verifies");
                checked += 1;
            }
        }
        assert_eq!(checked, frame.len() * 8);
        // Another key's signature does not verify either.
        let other = Signer::new(&blob([8; 32]));
        let forged = other.sign(reading(41)).expect("sign");
        let mut buf = [0u8; MAX_FRAME_LEN];
        assert!(!verify_frame(&vk, forged.encode_frame(&mut buf).expect("encode")));
    }

    #[test]
    fn debug_never_prints_the_seed() {
        let signer = Signer::new(&blob([0xab; 32]));
        let text = format!("{signer:?}");
        assert!(text.contains("board-7"));
        assert!(!text.contains("171, 171") && !text.contains("abab"));
    }
}

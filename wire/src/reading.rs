//! Signed sensor readings: what a board sends and the host verifies. No heap needed.
//!
//! A [`SignedReading`] travels as one postcard-encoded, COBS-framed frame (ending in `0x00`) on a
//! byte stream. The signature is ed25519 over [`reading_message`]:
//! `READING_CONTEXT || format || key_id || postcard(reading)`, so it can never be mistaken for a
//! model-manifest signature (see [`crate::signing`]). See `wire/FORMAT.md` for a worked example.

use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::signing::{KEY_ID_LEN, READING_CONTEXT};

/// The reading format this crate reads and writes.
pub const READING_FORMAT: u8 = 1;
/// Most samples one reading carries (e.g. 32 three-axis accelerometer samples).
pub const MAX_SAMPLES: usize = 96;
/// Longest device id, in bytes.
pub const MAX_DEVICE_ID: usize = 32;
/// Largest encoded reading: every field at its maximum (varints at their longest).
pub const MAX_READING_LEN: usize = 1 + MAX_DEVICE_ID + 10 + 1 + 10 + 3 + 3 + 4 + 1 + 1 + MAX_SAMPLES * 5;
/// Largest signing message ([`reading_message`]).
pub const MAX_MESSAGE_LEN: usize = READING_CONTEXT.len() + 1 + KEY_ID_LEN + MAX_READING_LEN;
/// Largest frame on the wire, COBS overhead and the `0x00` delimiter included.
pub const MAX_FRAME_LEN: usize = {
    let body = 1 + KEY_ID_LEN + MAX_READING_LEN + 64;
    body + body / 254 + 2
};

/// What kind of sensor produced the samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SensorKind {
    /// Three-axis accelerometer; samples interleaved x, y, z.
    Accelerometer,
    /// Temperature / humidity / pressure.
    Environment,
    /// Audio samples.
    Microphone,
    /// Anything else, by a deployment-defined code.
    Other(u16),
}

/// The unit of `sample * scale`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Unit {
    /// Thousandths of standard gravity.
    MilliG,
    /// Degrees Celsius.
    Celsius,
    /// Pascal.
    Pascal,
    /// Relative humidity, percent.
    PercentRh,
    /// No physical unit (e.g. PCM audio).
    Raw,
}

/// One reading from one device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// The device's id, as provisioned.
    pub device_id: heapless::String<MAX_DEVICE_ID>,
    /// Strictly increasing per device; never reused, even across power loss.
    pub counter: u64,
    /// Milliseconds since the Unix epoch, if the board has a clock.
    pub timestamp_ms: Option<u64>,
    /// What produced the samples.
    pub sensor: SensorKind,
    /// Unit of `sample * scale`.
    pub unit: Unit,
    /// Multiply a raw sample by this to get `unit`.
    pub scale: f32,
    /// Samples per time step, interleaved (3 for x, y, z).
    pub channels: u8,
    /// Raw samples.
    pub samples: heapless::Vec<i32, MAX_SAMPLES>,
}

/// An ed25519 signature (64 bytes), serialized as a fixed-size tuple.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature64(pub [u8; 64]);

impl core::fmt::Debug for Signature64 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Signature64(")?;
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "..)")
    }
}

impl Serialize for Signature64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(64)?;
        for b in &self.0 {
            t.serialize_element(b)?;
        }
        t.end()
    }
}

impl<'de> Deserialize<'de> for Signature64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Signature64;
            fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str("64 signature bytes")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Signature64, A::Error> {
                let mut out = [0u8; 64];
                for (i, b) in out.iter_mut().enumerate() {
                    *b = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(i, &self))?;
                }
                Ok(Signature64(out))
            }
        }
        d.deserialize_tuple(64, V)
    }
}

/// A reading with its envelope: format version, signing key id and signature.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignedReading {
    /// [`READING_FORMAT`].
    pub format: u8,
    /// Key id of the device key (first 8 bytes of SHA-256 of its public key).
    pub key_id: [u8; KEY_ID_LEN],
    /// The reading.
    pub reading: Reading,
    /// ed25519 over [`reading_message`].
    pub signature: Signature64,
}

/// Why a frame could not be encoded or decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Not valid COBS/postcard for a [`SignedReading`], or trailing bytes.
    Malformed,
    /// A format version this crate does not read.
    UnknownFormat(u8),
    /// The output buffer is too small.
    BufferTooSmall,
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FrameError::Malformed => f.write_str("malformed frame"),
            FrameError::UnknownFormat(v) => write!(f, "unknown reading format {v}"),
            FrameError::BufferTooSmall => f.write_str("buffer too small"),
        }
    }
}

/// Writes the bytes a reading signature covers into `buf` and returns them:
/// `READING_CONTEXT || format || key_id || postcard(reading)`.
pub fn reading_message<'b>(
    format: u8,
    key_id: &[u8; KEY_ID_LEN],
    reading: &Reading,
    buf: &'b mut [u8],
) -> Result<&'b [u8], FrameError> {
    let head = READING_CONTEXT.len() + 1 + KEY_ID_LEN;
    if buf.len() < head {
        return Err(FrameError::BufferTooSmall);
    }
    buf[..READING_CONTEXT.len()].copy_from_slice(READING_CONTEXT);
    buf[READING_CONTEXT.len()] = format;
    buf[READING_CONTEXT.len() + 1..head].copy_from_slice(key_id);
    let body = postcard::to_slice(reading, &mut buf[head..]).map_err(|_| FrameError::BufferTooSmall)?.len();
    Ok(&buf[..head + body])
}

impl SignedReading {
    /// Encodes as one COBS frame, `0x00` delimiter included.
    pub fn encode_frame<'b>(&self, buf: &'b mut [u8]) -> Result<&'b mut [u8], FrameError> {
        postcard::to_slice_cobs(self, buf).map_err(|_| FrameError::BufferTooSmall)
    }

    /// Decodes one COBS frame (with or without its trailing `0x00`), in place.
    pub fn decode_frame(frame: &mut [u8]) -> Result<SignedReading, FrameError> {
        let frame = match frame.split_last_mut() {
            Some((0, body)) => body,
            _ => frame,
        };
        if frame.is_empty() || frame.contains(&0) {
            return Err(FrameError::Malformed);
        }
        let len = cobs::decode_in_place(frame).map_err(|_| FrameError::Malformed)?;
        SignedReading::decode(&frame[..len])
    }

    /// Decodes the raw postcard bytes of a signed reading (no COBS); refuses trailing bytes, and
    /// any encoding but the one [`SignedReading::encode_frame`] writes (postcard also reads
    /// overlong varints, `0x80 0x00` for 0, so one signed reading would have many byte forms,
    /// each with its own hash in a host's log).
    pub fn decode(bytes: &[u8]) -> Result<SignedReading, FrameError> {
        if let Some(&format) = bytes.first()
            && format != READING_FORMAT
        {
            return Err(FrameError::UnknownFormat(format));
        }
        let (signed, rest): (SignedReading, _) =
            postcard::take_from_bytes(bytes).map_err(|_| FrameError::Malformed)?;
        if !rest.is_empty() {
            return Err(FrameError::Malformed);
        }
        let mut again = [0u8; MAX_FRAME_LEN];
        let canonical = postcard::to_slice(&signed, &mut again).map_err(|_| FrameError::Malformed)?;
        if *canonical != *bytes {
            return Err(FrameError::Malformed);
        }
        Ok(signed)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn reading() -> Reading {
        Reading {
            device_id: heapless::String::try_from("board-7").unwrap(),
            counter: 42,
            timestamp_ms: Some(1_764_000_000_000),
            sensor: SensorKind::Accelerometer,
            unit: Unit::MilliG,
            scale: 1.0,
            channels: 3,
            samples: heapless::Vec::from_slice(&[12, -8, 1003, 10, -9, 998]).unwrap(),
        }
    }

    fn signed() -> SignedReading {
        SignedReading {
            format: READING_FORMAT,
            key_id: [1; 8],
            reading: reading(),
            signature: Signature64([7; 64]),
        }
    }

    #[test]
    fn frames_round_trip_and_refuse_garbage() {
        let signed = signed();
        let mut buf = [0u8; MAX_FRAME_LEN];
        let frame = signed.encode_frame(&mut buf).unwrap();
        assert_eq!(frame.last(), Some(&0));
        assert!(frame[..frame.len() - 1].iter().all(|b| *b != 0), "COBS leaves no zero inside a frame");
        let mut copy = [0u8; MAX_FRAME_LEN];
        copy[..frame.len()].copy_from_slice(frame);
        assert_eq!(SignedReading::decode_frame(&mut copy[..frame.len()]).unwrap(), signed);
        assert_eq!(SignedReading::decode_frame(&mut [5, 1, 2, 0]), Err(FrameError::Malformed));
    }

    #[test]
    fn only_the_canonical_encoding_decodes() {
        let signed = signed();
        let mut buf = [0u8; MAX_FRAME_LEN];
        let bytes = postcard::to_slice(&signed, &mut buf).unwrap().to_vec();
        assert_eq!(SignedReading::decode(&bytes).unwrap(), signed);
        // The counter, 42, is one varint byte after the format, the key id and the device id.
        let at = 1 + 8 + 1 + signed.reading.device_id.len();
        assert_eq!(bytes[at], 42);
        let overlong = [&bytes[..at], &[42 | 0x80, 0], &bytes[at + 1..]].concat();
        let (lenient, rest): (SignedReading, _) = postcard::take_from_bytes(&overlong).unwrap();
        assert!(lenient == signed && rest.is_empty(), "postcard reads the overlong counter as 42");
        assert_eq!(SignedReading::decode(&overlong), Err(FrameError::Malformed));
    }

    #[test]
    fn largest_reading_fits_the_declared_bounds() {
        let mut r = reading();
        r.device_id = heapless::String::try_from("x".repeat(MAX_DEVICE_ID).as_str()).unwrap();
        r.counter = u64::MAX;
        r.timestamp_ms = Some(u64::MAX);
        r.sensor = SensorKind::Other(u16::MAX);
        r.samples = heapless::Vec::from_slice(&[i32::MIN; MAX_SAMPLES]).unwrap();
        let signed = SignedReading {
            format: READING_FORMAT,
            key_id: [0xff; 8],
            reading: r,
            signature: Signature64([0xff; 64]),
        };
        let mut msg = [0u8; MAX_MESSAGE_LEN];
        reading_message(signed.format, &signed.key_id, &signed.reading, &mut msg).unwrap();
        let mut buf = [0u8; MAX_FRAME_LEN];
        signed.encode_frame(&mut buf).unwrap();
    }

    #[test]
    fn message_is_domain_separated() {
        let mut buf = [0u8; MAX_MESSAGE_LEN];
        let msg = reading_message(READING_FORMAT, &[3; 8], &reading(), &mut buf).unwrap();
        assert!(msg.starts_with(READING_CONTEXT));
        assert_ne!(READING_CONTEXT, crate::signing::MODEL_MANIFEST_CONTEXT);
    }
}

/// The worked example in `wire/FORMAT.md`, checked byte for byte.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod format_example {
    use ed25519_dalek::{Signer, SigningKey};

    use super::*;
    use crate::provision::key_id;

    fn hex(bytes: &[u8]) -> std::string::String {
        bytes.iter().map(|b| std::format!("{b:02x}")).collect()
    }

    #[test]
    fn worked_example_matches_format_md() {
        // RFC 8032 section 7.1, TEST 1 secret key.
        let seed: [u8; 32] = [
            0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec, 0x2c, 0xc4,
            0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32, 0x69, 0x19, 0x70, 0x3b, 0xac, 0x03, 0x1c, 0xae, 0x7f, 0x60,
        ];
        let key = SigningKey::from_bytes(&seed);
        let kid = key_id(key.verifying_key().as_bytes());
        let reading = Reading {
            device_id: heapless::String::try_from("board-7").unwrap(),
            counter: 300,
            timestamp_ms: None,
            sensor: SensorKind::Accelerometer,
            unit: Unit::MilliG,
            scale: 1.0,
            channels: 3,
            samples: heapless::Vec::from_slice(&[12, -8, 1003]).unwrap(),
        };
        let mut buf = [0u8; MAX_MESSAGE_LEN];
        let message = reading_message(READING_FORMAT, &kid, &reading, &mut buf).unwrap();
        let signature = Signature64(key.sign(message).to_bytes());
        let signed =
            SignedReading { format: READING_FORMAT, key_id: kid, reading: reading.clone(), signature };
        let mut frame_buf = [0u8; MAX_FRAME_LEN];
        let frame = signed.encode_frame(&mut frame_buf).unwrap();
        let body = postcard::to_slice(&signed, &mut [0u8; MAX_FRAME_LEN]).unwrap().to_vec();
        std::println!("key id   {}", hex(&kid));
        std::println!("reading  {}", hex(&postcard::to_allocvec(&reading).unwrap()));
        std::println!("message  {}", hex(message));
        std::println!("body     {}", hex(&body));
        std::println!("frame    {}", hex(frame));
        assert_eq!(hex(&kid), EXPECTED_KEY_ID);
        assert_eq!(hex(&body), EXPECTED_BODY);
        assert_eq!(hex(frame), EXPECTED_FRAME);
    }

    const EXPECTED_KEY_ID: &str = "21fe31dfa154a261";
    const EXPECTED_BODY: &str = concat!(
        "0121fe31dfa154a26107626f6172642d37ac020000000000803f0303180fd60f",
        "df9390d7c009adf3a9636793b1fa44f91581026d3fdd620f2fbe18488de65ffd",
        "097d6b366ea7036f23bb3e607e7974eb5021271f4a0ddd6dec2e4b683c305903"
    );
    const EXPECTED_FRAME: &str = concat!(
        "140121fe31dfa154a26107626f6172642d37ac020101010149803f0303180fd60f",
        "df9390d7c009adf3a9636793b1fa44f91581026d3fdd620f2fbe18488de65ffd",
        "097d6b366ea7036f23bb3e607e7974eb5021271f4a0ddd6dec2e4b683c30590300"
    );
}

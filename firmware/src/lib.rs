//! Warden's board-independent firmware logic. `no_std`, no heap, no `unsafe`.
//!
//! A board reads its sensor through a driver generic over embedded-hal 1.0, takes a counter from
//! a [`counter::CounterStore`] (persisted before it is handed out), packs the samples into a
//! [`Reading`] with [`reading_from_samples`], signs it with its provisioned key
//! ([`signer::Signer`], ed25519) and writes the COBS frame
//! ([`warden_wire::reading::SignedReading::encode_frame`]) to a serial port. The host verifies it
//! with `verify_strict`, checks the counter went up, and feeds the samples to a model.
//!
//! * [`signer`]: the device key and reading signatures.
//! * [`counter`]: the [`counter::Flash`] trait (NOR semantics) and the power-loss-safe counter.
//! * [`lis3dh`]: ST LIS3DH accelerometer driver over I2C.
//! * [`sim`]: a simulated LIS3DH (an `I2c` implementation) for QEMU and host tests.
//!
//! Board binaries live in `firmware/boards/` (QEMU mps2-an386 and nRF52840-DK), outside the
//! workspace; see `firmware/README.md`.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![forbid(unsafe_code)]

pub use warden_wire;

pub mod counter;
pub mod lis3dh;
pub mod signer;
pub mod sim;

pub use warden_wire::provision::{KEY_BLOB_LEN, KeyBlob, KeyBlobError};
pub use warden_wire::reading::{MAX_FRAME_LEN, MAX_SAMPLES, Reading, SensorKind, SignedReading, Unit};

/// Why samples could not be packed into a [`Reading`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadingError {
    /// The device id is longer than [`warden_wire::reading::MAX_DEVICE_ID`] bytes.
    DeviceIdTooLong,
    /// More than [`MAX_SAMPLES`] / 3 three-axis samples.
    TooManySamples,
}

/// Packs three-axis accelerometer samples (milli-g, e.g. from
/// [`lis3dh::Lis3dh::read_accel_mg`]) into an accelerometer [`Reading`]: channels 3, samples
/// interleaved x, y, z, unit milli-g, scale 1.
pub fn reading_from_samples(
    device_id: &str,
    counter: u64,
    timestamp_ms: Option<u64>,
    samples: &[[i16; 3]],
) -> Result<Reading, ReadingError> {
    let device_id = heapless::String::try_from(device_id).map_err(|_| ReadingError::DeviceIdTooLong)?;
    let mut out = heapless::Vec::new();
    for sample in samples {
        for v in sample {
            out.push(i32::from(*v)).map_err(|_| ReadingError::TooManySamples)?;
        }
    }
    Ok(Reading {
        device_id,
        counter,
        timestamp_ms,
        sensor: SensorKind::Accelerometer,
        unit: Unit::MilliG,
        scale: 1.0,
        channels: 3,
        samples: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_interleaved_and_bounded() {
        let r = reading_from_samples("board-7", 9, Some(5), &[[1, 2, 3], [4, 5, 6]]).expect("fits");
        assert_eq!(r.samples.as_slice(), &[1, 2, 3, 4, 5, 6]);
        assert_eq!((r.counter, r.timestamp_ms, r.channels), (9, Some(5), 3));
        assert!(reading_from_samples("board-7", 0, None, &[[0; 3]; MAX_SAMPLES / 3]).is_ok());
        assert_eq!(
            reading_from_samples("board-7", 0, None, &[[0; 3]; MAX_SAMPLES / 3 + 1]),
            Err(ReadingError::TooManySamples)
        );
        assert_eq!(reading_from_samples(&"x".repeat(33), 0, None, &[]), Err(ReadingError::DeviceIdTooLong));
    }
}

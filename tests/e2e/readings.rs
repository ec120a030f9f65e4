//! Signed sensor readings on the host: forged, replayed, stale, revoked and unknown-key readings
//! are refused; replays stay refused after a restart; good readings feed the motion model.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signer, SigningKey};
use warden::trust::{DeviceRegistry, ReadingError, ReadingVerifier, reading_to_input};
use warden::wire::provision::{KeyBlob, key_id};
use warden::wire::reading::{
    MAX_FRAME_LEN, MAX_MESSAGE_LEN, READING_FORMAT, Reading, SensorKind, Signature64, SignedReading, Unit,
    reading_message,
};
use warden_tests::{builder, root};

const FRESH: Duration = Duration::from_secs(300);

pub(crate) fn sign(
    blob: &KeyBlob,
    counter: u64,
    timestamp_ms: Option<u64>,
    samples: &[i32],
) -> SignedReading {
    let key = SigningKey::from_bytes(&blob.seed);
    let kid = key_id(key.verifying_key().as_bytes());
    let reading = Reading {
        device_id: blob.device_id.clone(),
        counter,
        timestamp_ms,
        sensor: SensorKind::Accelerometer,
        unit: Unit::MilliG,
        scale: 1.0,
        channels: 3,
        samples: heapless::Vec::from_slice(samples).unwrap(),
    };
    let mut buf = [0u8; MAX_MESSAGE_LEN];
    let msg = reading_message(READING_FORMAT, &kid, &reading, &mut buf).unwrap();
    SignedReading {
        format: READING_FORMAT,
        key_id: kid,
        reading,
        signature: Signature64(key.sign(msg).to_bytes()),
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

pub(crate) fn still(n: usize) -> Vec<i32> {
    (0..n).map(|i| if i % 3 == 2 { 1000 + (i as i32 % 5) } else { i as i32 % 4 }).collect()
}

#[test]
fn readings_are_verified_replays_refused_across_restarts_and_fed_to_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let blob = DeviceRegistry::open(&state).unwrap().provision("board-1").unwrap();
    let runtime = builder(&state, &root().join("models/dev-trust")).build().unwrap();
    let model = runtime.load_bundle(root().join("models/repo/motion/1")).unwrap();

    {
        let verifier = ReadingVerifier::open(&state, FRESH).unwrap();
        for counter in 1..=3 {
            let signed = sign(&blob, counter, Some(now_ms()), &still(24));
            // Through the wire format, as a board sends it.
            let mut buf = [0u8; MAX_FRAME_LEN];
            let frame = signed.encode_frame(&mut buf).unwrap();
            let decoded = SignedReading::decode_frame(frame).unwrap();
            verifier.verify(&decoded, SystemTime::now()).unwrap();
            let out = model.infer(vec![reading_to_input(model.manifest(), &decoded).unwrap()]).unwrap();
            let p = out[1].to_f32().unwrap();
            assert!(p[0] > 0.9, "a still board reads as still: {p:?}");
        }
        let replay = sign(&blob, 3, Some(now_ms()), &still(24));
        assert_eq!(
            verifier.verify(&replay, SystemTime::now()),
            Err(ReadingError::Replay { device: "board-1".into(), counter: 3, last: 3 })
        );
        let older = sign(&blob, 2, Some(now_ms()), &still(24));
        assert!(matches!(verifier.verify(&older, SystemTime::now()), Err(ReadingError::Replay { .. })));
    }
    // Restart: the counter was persisted.
    let verifier = ReadingVerifier::open(&state, FRESH).unwrap();
    let replay = sign(&blob, 3, Some(now_ms()), &still(24));
    assert!(matches!(verifier.verify(&replay, SystemTime::now()), Err(ReadingError::Replay { last: 3, .. })));
    verifier.verify(&sign(&blob, 4, None, &still(24)), SystemTime::now()).unwrap();

    // Forged: any flipped bit of the encoded reading breaks it.
    let good = sign(&blob, 10, Some(now_ms()), &still(24));
    let bytes = postcard::to_allocvec(&good).unwrap();
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut tampered = bytes.clone();
            tampered[i] ^= 1 << bit;
            if let Ok(decoded) = SignedReading::decode(&tampered) {
                assert!(verifier.verify(&decoded, SystemTime::now()).is_err(), "byte {i} bit {bit} accepted");
            }
        }
    }
    verifier.verify(&good, SystemTime::now()).unwrap();

    // Stale and future timestamps.
    let stale = sign(&blob, 11, Some(now_ms() - 3_600_000), &still(24));
    assert!(matches!(verifier.verify(&stale, SystemTime::now()), Err(ReadingError::Stale { .. })));
    let future = sign(&blob, 12, Some(now_ms() + 3_600_000), &still(24));
    assert!(matches!(verifier.verify(&future, SystemTime::now()), Err(ReadingError::Stale { .. })));

    // A key that is not the device's, an unknown device.
    let impostor = KeyBlob { device_id: blob.device_id.clone(), seed: [7; 32] };
    assert_eq!(
        verifier.verify(&sign(&impostor, 20, None, &still(24)), SystemTime::now()),
        Err(ReadingError::UnknownKey("board-1".into()))
    );
    let stranger = KeyBlob { device_id: heapless::String::try_from("board-x").unwrap(), seed: [8; 32] };
    assert_eq!(
        verifier.verify(&sign(&stranger, 1, None, &still(24)), SystemTime::now()),
        Err(ReadingError::UnknownDevice("board-x".into()))
    );

    // Revoked.
    DeviceRegistry::open(&state).unwrap().revoke("board-1").unwrap();
    let verifier = ReadingVerifier::open(&state, FRESH).unwrap();
    assert_eq!(
        verifier.verify(&sign(&blob, 30, None, &still(24)), SystemTime::now()),
        Err(ReadingError::RevokedDevice("board-1".into()))
    );
}

#[test]
fn readings_that_do_not_fit_the_model_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = builder(dir.path(), &root().join("models/dev-trust")).build().unwrap();
    let model = runtime.load_bundle(root().join("models/repo/motion/1")).unwrap();
    let blob = KeyBlob { device_id: heapless::String::try_from("b").unwrap(), seed: [1; 32] };
    let short = sign(&blob, 1, None, &still(12));
    assert!(matches!(reading_to_input(model.manifest(), &short), Err(ReadingError::Shape(_))));
    let mut other = sign(&blob, 1, None, &still(24));
    other.reading.sensor = SensorKind::Microphone;
    assert!(matches!(reading_to_input(model.manifest(), &other), Err(ReadingError::Shape(_))));
    // Out of the manifest's bounds: refused by input validation, as any request.
    let wild = sign(&blob, 1, None, &[5000; 24]);
    let input = reading_to_input(model.manifest(), &wild).unwrap();
    assert!(matches!(
        model.infer(vec![input]),
        Err(warden::Error::Input(warden::InputError::OutOfBounds { .. }))
    ));
}

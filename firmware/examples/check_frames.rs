//! Decodes and verifies the frames a board wrote (e.g. QEMU's `-serial file:FRAMES`).
//!
//! ```text
//! cargo run -p warden-firmware --example check_frames -- FRAMES KEY.keyblob
//! ```
//!
//! Splits the byte stream on `0x00`, decodes each COBS frame, checks the key id and the strict
//! ed25519 signature against the key blob's public key, and that counters strictly increase.
//! Prints one line per frame and exits non-zero on the first bad one.

use ed25519_dalek::{Signature, VerifyingKey};
use warden_firmware::signer::Signer;
use warden_wire::provision::KeyBlob;
use warden_wire::reading::{MAX_MESSAGE_LEN, SignedReading, reading_message};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(frames), Some(key)) = (args.first(), args.get(1)) else {
        return Err("usage: check_frames FRAMES KEY.keyblob".into());
    };
    let mut stream = std::fs::read(frames)?;
    let blob = KeyBlob::parse(&std::fs::read(key)?).map_err(|e| format!("{key}: {e:?}"))?;
    let signer = Signer::new(&blob);
    let vk = VerifyingKey::from_bytes(&signer.public_key()).map_err(|e| e.to_string())?;
    let mut last = None;
    let mut count = 0;
    for frame in stream.split_mut(|b| *b == 0).filter(|f| !f.is_empty()) {
        let signed = SignedReading::decode_frame(frame).map_err(|e| format!("frame {count}: {e}"))?;
        if signed.key_id != signer.key_id() {
            return Err(format!("frame {count}: key id {:02x?}", signed.key_id).into());
        }
        let mut buf = [0u8; MAX_MESSAGE_LEN];
        let message = reading_message(signed.format, &signed.key_id, &signed.reading, &mut buf)
            .map_err(|e| format!("frame {count}: {e}"))?;
        vk.verify_strict(message, &Signature::from_bytes(&signed.signature.0))
            .map_err(|e| format!("frame {count}: {e}"))?;
        let r = &signed.reading;
        if last.is_some_and(|l| r.counter <= l) {
            return Err(format!("frame {count}: counter {} not above {last:?}", r.counter).into());
        }
        last = Some(r.counter);
        println!(
            "frame {count}: device {} counter {} {:?} {} samples, first {:?}: signature ok",
            r.device_id,
            r.counter,
            r.sensor,
            r.samples.len(),
            &r.samples[..r.samples.len().min(3)]
        );
        count += 1;
    }
    if count == 0 {
        return Err("no frames".into());
    }
    println!("{count} frames verified");
    Ok(())
}

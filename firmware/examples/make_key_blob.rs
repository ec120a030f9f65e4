//! Writes a device key blob (and optionally a counter image) for a test board.
//!
//! ```text
//! cargo run -p warden-firmware --example make_key_blob -- DEVICE_ID OUT.keyblob [SEED_HEX] [COUNTER.bin START]
//! ```
//!
//! Without `SEED_HEX` (64 hex digits) the seed comes from `/dev/urandom`. Prints the public key
//! and key id. `COUNTER.bin START` also writes an 8 KiB counter region (two 4 KiB sectors, see
//! `warden_firmware::counter`) whose next counter is `START`, for QEMU's loader.
//! Production keys come from `warden device provision`; this is for development.

use std::io::Read;

use warden_firmware::counter::{CounterStore, RamFlash};
use warden_firmware::signer::Signer;
use warden_wire::provision::KeyBlob;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(id), Some(out)) = (args.first(), args.get(1)) else {
        return Err("usage: make_key_blob DEVICE_ID OUT.keyblob [SEED_HEX] [COUNTER.bin START]".into());
    };
    let mut seed = [0u8; 32];
    match args.get(2) {
        Some(hex_seed) => {
            let bytes = hex::decode(hex_seed)?;
            seed = bytes.try_into().map_err(|_| "the seed is 32 bytes (64 hex digits)")?;
        }
        None => std::fs::File::open("/dev/urandom")?.read_exact(&mut seed)?,
    }
    let device_id = heapless::String::try_from(id.as_str()).map_err(|_| "device id longer than 32 bytes")?;
    let blob = KeyBlob { device_id, seed };
    std::fs::write(out, blob.to_bytes())?;
    let signer = Signer::new(&blob);
    println!("wrote {out}: device {id}");
    println!("public key {}", hex::encode(signer.public_key()));
    println!("key id     {}", hex::encode(signer.key_id()));
    if let (Some(path), Some(start)) = (args.get(3), args.get(4)) {
        let start: u64 = start.parse()?;
        let mut mem = vec![0xFFu8; 2 * 4096];
        CounterStore::open(RamFlash::new(&mut mem, 4096))
            .and_then(|mut store| store.ensure_at_least(start))
            .map_err(|e| format!("{e:?}"))?;
        std::fs::write(path, &mem)?;
        println!("wrote {path}: the next counter is {start}");
    }
    Ok(())
}

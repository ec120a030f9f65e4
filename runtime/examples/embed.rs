//! Embedding Warden in a Rust program: verify a signed model bundle, run it in the sandbox.
//!
//! ```text
//! cargo run -p warden --example embed -- models/dev-trust models/repo/digits/1
//! ```

use warden::{Error, Runtime, Tensor};

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let trust = args.next().unwrap_or_else(|| "models/dev-trust".into());
    let bundle = args.next().unwrap_or_else(|| "models/repo/digits/1".into());

    // Secure defaults: 512 MiB per sandbox instance, 10 s per call, no capabilities for the guest.
    let runtime = Runtime::builder().trust_dir(trust).build()?;
    // Refuses a bad signature, an unknown or revoked key, a digest mismatch or a rollback.
    let model = runtime.load_bundle(&bundle)?;
    println!("loaded {} v{} (signed by {})", model.manifest().name, model.manifest().version, model.key_id());

    // An 8x8 "1": a vertical stroke of full intensity.
    let mut pixels = [0.0f32; 64];
    for row in 0..8 {
        pixels[row * 8 + 4] = 16.0;
    }
    let outputs = model.infer(vec![Tensor::from_f32("input", &[1, 64], &pixels)])?;
    for t in &outputs {
        match t.to_i64() {
            Some(v) => println!("{} = {v:?}", t.name),
            None => println!("{} = {:?}", t.name, t.to_f32().unwrap_or_default()),
        }
    }

    // Bad input never reaches the sandbox: a typed error, and the model keeps serving.
    pixels[0] = f32::NAN;
    match model.infer(vec![Tensor::from_f32("input", &[1, 64], &pixels)]) {
        Err(Error::Input(e)) => println!("refused as expected: {e}"),
        other => println!("unexpected: {other:?}"),
    }
    Ok(())
}

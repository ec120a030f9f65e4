//! Cold start: compiling the guest (empty cache) against loading it from the cache, then the
//! per-model load (verify + parse + optimize in the sandbox). Medians of several runs.
//!
//! `cargo run --release -p warden-benches --bin coldstart [-- RUNS]`
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use warden::Runtime;
use warden_tests::{Fixture, TestPublisher, root};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let runs: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let publisher = TestPublisher::new(dir.path());
    let mut compile = Vec::new();
    let mut cached = Vec::new();
    for i in 0..runs {
        let cache = dir.path().join(format!("cache-{i}"));
        let t = Instant::now();
        drop(Runtime::builder().cache_dir(&cache).state_dir(dir.path().join("s")).build().unwrap());
        compile.push(t.elapsed());
        let t = Instant::now();
        drop(Runtime::builder().cache_dir(&cache).state_dir(dir.path().join("s")).build().unwrap());
        cached.push(t.elapsed());
    }
    println!("guest .wasm: {} bytes", warden::sandbox::guest_wasm_len());
    println!("runtime start, guest compiled (no cache): median {:?} of {runs}", median(compile));
    println!("runtime start, guest from cache:          median {:?} of {runs}", median(cached));

    let cache = dir.path().join("cache-0");
    let runtime = Runtime::builder()
        .cache_dir(&cache)
        .state_dir(dir.path().join("s"))
        .trust_dir(&publisher.trust)
        .build()
        .unwrap();
    for name in [
        "models/fixtures/digits",
        "models/fixtures/breast_cancer",
        "models/public/silero_vad",
        "models/public/ppocr_cls",
        "models/public/ppocr_rec",
    ] {
        let path = root().join(format!("{name}.reference.json"));
        if !path.exists() {
            continue;
        }
        let fixture = Fixture::load(&path);
        let mut times = Vec::new();
        for i in 0..runs {
            let mut m = fixture.manifest();
            m.name = format!("{}-{i}", fixture.model);
            let bundle = publisher.bundle(&dir.path().join("repo"), &m, &fixture.model_bytes());
            let t = Instant::now();
            drop(runtime.load_bundle(&bundle).unwrap());
            times.push(t.elapsed());
        }
        println!(
            "load {:<14} (verify + parse + optimize in the sandbox): median {:?}",
            fixture.model,
            median(times)
        );
    }
}

//! Profiling aid: native tract on one fixture's first case, in a loop.
#![allow(clippy::unwrap_used)]
use std::time::Instant;
use warden::guest::LoadRequest;
use warden_tests::{Fixture, root, tensors};

fn main() {
    let mut args = std::env::args().skip(1);
    let fixture = Fixture::load(&root().join(args.next().unwrap()));
    let n: usize = args.next().map_or(1000, |s| s.parse().unwrap());
    let bytes = fixture.model_bytes();
    let inputs = tensors(&fixture.cases[0].inputs);
    let mut engine =
        warden_guest::Engine::load(&LoadRequest { model: &bytes, inputs: fixture.manifest().input_facts() })
            .unwrap();
    let request = warden::Tensor::run_request(&inputs);
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        drop(std::hint::black_box(engine.run(&request).unwrap()));
        v.push(t.elapsed().as_secs_f64() * 1e6);
    }
    v.sort_by(f64::total_cmp);
    println!("median {:.1} us", v[n / 2]);
}

//! Per-inference latency: Warden's sandbox (the library path: validation, wasm guest, output
//! checks; blocking, and from a task) against native tract running the same engine code, on
//! every model with a fixture.
//!
//! `cargo bench -p warden-benches --bench inference`
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use warden::guest::LoadRequest;
use warden_tests::{Fixture, TestPublisher, builder, root, tensors};

const FIXTURES: &[&str] = &[
    "models/fixtures/digits.reference.json",
    "models/fixtures/breast_cancer.reference.json",
    "models/public/silero_vad.reference.json",
    "models/public/ppocr_cls.reference.json",
    "models/public/ppocr_rec.reference.json",
];

fn inference(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let publisher = TestPublisher::new(dir.path());
    let runtime =
        builder(&dir.path().join("state"), &publisher.trust).instances_per_model(1).build().unwrap();
    // `warden serve`'s setup: guest calls on fibers, made from the request's task.
    let yielding = builder(&dir.path().join("state-in-task"), &publisher.trust)
        .instances_per_model(1)
        .async_calls(true)
        .build()
        .unwrap();
    let tokio = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut group = c.benchmark_group("inference");
    group.sample_size(30).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    for path in FIXTURES {
        let path = root().join(path);
        if !path.exists() {
            eprintln!("skipping {}: run python3 models/fetch_public_models.py", path.display());
            continue;
        }
        let fixture = Fixture::load(&path);
        let manifest = fixture.manifest();
        let bundle = publisher.bundle(&dir.path().join("repo"), &manifest, &fixture.model_bytes());
        let model = runtime.load_bundle(&bundle).unwrap();
        let inputs = tensors(&fixture.cases[0].inputs);

        let bytes = fixture.model_bytes();
        let facts = manifest.input_facts();
        // Native tract runs on its own thread: its AVX-512 kernels leave vector state behind
        // that slows the sandbox's code down on the same thread (see warden_benches).
        let (to_native, native_rx) = std::sync::mpsc::channel::<u64>();
        let (native_tx, from_native) = std::sync::mpsc::channel::<Duration>();
        let native_inputs = inputs.clone();
        let native = std::thread::spawn(move || {
            let mut engine =
                warden_guest::Engine::load(&LoadRequest { model: &bytes, inputs: facts }).unwrap();
            let request = warden::Tensor::run_request(&native_inputs);
            for iters in native_rx {
                let start = std::time::Instant::now();
                for _ in 0..iters {
                    std::hint::black_box(engine.run(&request).unwrap());
                }
                native_tx.send(start.elapsed()).unwrap();
            }
        });
        group.bench_function(BenchmarkId::new("native_tract", &fixture.model), |b| {
            b.iter_custom(|iters| {
                to_native.send(iters).unwrap();
                from_native.recv().unwrap()
            })
        });
        drop(to_native);
        native.join().unwrap();
        group.bench_function(BenchmarkId::new("warden_sandbox", &fixture.model), |b| {
            b.iter(|| model.infer(inputs.clone()).unwrap())
        });
        let in_task = yielding.load_bundle(&bundle).unwrap();
        let outputs = model.infer(inputs.clone()).unwrap();
        assert_eq!(
            tokio.block_on(in_task.infer_async(inputs.clone())).unwrap(),
            outputs,
            "{}",
            fixture.model
        );
        group.bench_function(BenchmarkId::new("warden_sandbox_in_task", &fixture.model), |b| {
            b.iter(|| tokio.block_on(in_task.infer_async(inputs.clone())).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, inference);
criterion_main!(benches);

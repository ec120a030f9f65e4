//! Outputs equal ONNX Runtime's (fixtures made by models/*.py) for every sample model, the
//! public models and the generated benchmark models, through signed bundles in the sandbox (with
//! the host's native kernels, and with WebAssembly kernels only); and equal native tract's. With
//! the native kernels, rows of tiles per host call give the same bits as one tile per call.

use warden_tests::{Fixture, TestPublisher, assert_close, builder, root, tensors};

const TOLERANCE: f64 = 1e-4;

/// Whether a model's products go to the host a row of tiles at a time (at least three columns and
/// eight tiles of the kernel the host picks).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Rows {
    /// On every CPU: products many tiles wide and tall whatever the kernel's shape.
    Always,
    /// On none: vector products (the MLPs, digits), or no host call at all.
    Never,
    /// Depending on the CPU's kernels: silero's small convolutions fill fewer than eight tiles
    /// of the AVX-512 kernels (16 to 80 rows), and more of the FMA kernels' 8 x 8.
    ByKernels,
}

/// `large`: the model has f32 products big enough for the host's native kernels (digits' 64 x 64
/// is; breast_cancer's 16 x 30 stays in WebAssembly, where a host call per tile would cost more
/// than it saves). `rows`: whether some of them go to the host a row at a time.
fn check_against_onnx_runtime(fixture_path: &str, large: bool, rows: Rows) {
    let fixture = Fixture::load(&root().join(fixture_path));
    let dir = tempfile::tempdir().unwrap();
    let publisher = TestPublisher::new(dir.path());
    let bundle = publisher.bundle(&dir.path().join("repo"), &fixture.manifest(), &fixture.model_bytes());
    let runtime = builder(&dir.path().join("state"), &publisher.trust).build().unwrap();
    let model = runtime.load_bundle(&bundle).unwrap();
    let wasm_only =
        builder(&dir.path().join("state-wasm"), &publisher.trust).native_kernels(false).build().unwrap();
    let wasm_model = wasm_only.load_bundle(&bundle).unwrap();
    assert!(wasm_only.native_kernels().is_empty());
    let tile_by_tile =
        builder(&dir.path().join("state-tiles"), &publisher.trust).tile_batches(false).build().unwrap();
    let tile_model = tile_by_tile.load_bundle(&bundle).unwrap();

    let manifest = fixture.manifest();
    let facts = manifest.input_facts();
    // Native tract runs on its own thread: its AVX-512 kernels leave vector state behind that
    // slows the sandbox's code down badly on the same thread (see benches/README.md).
    let bytes = fixture.model_bytes();
    let native_cases: Vec<Vec<warden::Tensor>> = fixture.cases.iter().map(|c| tensors(&c.inputs)).collect();
    let native_outputs = std::thread::spawn(move || {
        let mut native =
            warden_guest::Engine::load(&warden::guest::LoadRequest { model: &bytes, inputs: facts }).unwrap();
        native_cases
            .iter()
            .map(|inputs| {
                let request = warden::Tensor::run_request(inputs);
                native
                    .run(&request)
                    .unwrap()
                    .into_iter()
                    .map(|n| warden::Tensor { name: n.name, dtype: n.dtype, shape: n.shape, data: n.data })
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    })
    .join()
    .unwrap();

    let batches = runtime.native_tile_batches();
    for (i, (case, native_out)) in fixture.cases.iter().zip(&native_outputs).enumerate() {
        let what = format!("{} case {i}", fixture.model);
        let tiles = runtime.native_kernel_calls();
        let outputs = model.infer(tensors(&case.inputs)).unwrap();
        // On a CPU tract has kernels for, the host's kernels did the large products, and only
        // those.
        if !runtime.native_kernels().is_empty() {
            let ran = runtime.native_kernel_calls() > tiles;
            assert_eq!(ran, large, "{what}: tiles ran on native kernels: {ran}");
        }
        let expected = tensors(&case.outputs);
        assert_eq!(outputs.len(), expected.len(), "{what}");
        for (got, want) in outputs.iter().zip(&expected) {
            assert_close(got, want, TOLERANCE, &format!("{what} (sandbox vs ONNX Runtime)"));
        }
        // One tile per host call: the same tiles, the same bits.
        let single = tile_by_tile.native_kernel_calls();
        let single_outputs = tile_model.infer(tensors(&case.inputs)).unwrap();
        assert_eq!(
            tile_by_tile.native_kernel_calls() - single,
            runtime.native_kernel_calls() - tiles,
            "{what}: tiles run one per call and in rows"
        );
        for (got, want) in outputs.iter().zip(&single_outputs) {
            assert!(got.data == want.data, "{what}: rows of tiles changed {}'s bits", got.name);
        }
        assert_eq!(tile_by_tile.native_tile_batches(), 0, "{what}: batches ran though refused");
        let wasm_outputs = wasm_model.infer(tensors(&case.inputs)).unwrap();
        assert_eq!(wasm_only.native_kernel_calls(), 0);
        for (got, want) in wasm_outputs.iter().zip(&expected) {
            assert_close(got, want, TOLERANCE, &format!("{what} (wasm kernels only vs ONNX Runtime)"));
        }
        // Same tract, other kernels (wasm simd128 vs native AVX2/FMA): rounding differs slightly.
        for (got, n) in outputs.iter().zip(native_out) {
            assert_close(got, n, TOLERANCE, &format!("{what} (sandbox vs native tract)"));
        }
    }
    if !runtime.native_kernels().is_empty() && rows != Rows::ByKernels {
        let ran = runtime.native_tile_batches() > batches;
        assert_eq!(ran, rows == Rows::Always, "{}: rows of tiles ran: {ran}", fixture.model);
    }
}

#[test]
fn digits_matches_onnx_runtime() {
    check_against_onnx_runtime("models/fixtures/digits.reference.json", true, Rows::Never);
}

#[test]
fn breast_cancer_matches_onnx_runtime() {
    check_against_onnx_runtime("models/fixtures/breast_cancer.reference.json", false, Rows::Never);
}

/// No products; its window means are sums over a middle axis (the guest's `reducesum` swap).
#[test]
fn motion_matches_onnx_runtime() {
    check_against_onnx_runtime("models/fixtures/motion.reference.json", false, Rows::Never);
}

#[test]
fn silero_vad_matches_onnx_runtime() {
    check_against_onnx_runtime("models/public/silero_vad.reference.json", true, Rows::ByKernels);
}

#[test]
fn ppocr_recognition_matches_onnx_runtime() {
    check_against_onnx_runtime("models/public/ppocr_rec.reference.json", true, Rows::Always);
}

#[test]
fn ppocr_orientation_matches_onnx_runtime() {
    check_against_onnx_runtime("models/public/ppocr_cls.reference.json", true, Rows::Always);
}

#[test]
fn bench_mlp_matches_onnx_runtime() {
    check_against_onnx_runtime("models/bench/mlp.reference.json", true, Rows::Never);
}

#[test]
fn bench_cnn_matches_onnx_runtime() {
    check_against_onnx_runtime("models/bench/cnn.reference.json", true, Rows::Always);
}

/// The committed sample bundles verify with the dev trust directory, and their policy-coarsened
/// outputs agree with ONNX Runtime: same label, top-k scores rounded to the step, others zero.
#[test]
fn sample_bundles_serve_with_output_policy() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = builder(dir.path(), &root().join("models/dev-trust")).build().unwrap();
    for name in ["digits", "breast_cancer"] {
        let fixture = Fixture::load(&root().join(format!("models/fixtures/{name}.reference.json")));
        let model = runtime.load_bundle(root().join(format!("models/repo/{name}/1"))).unwrap();
        let policy = model.manifest().output_policy.clone();
        let (k, step) = (policy.top_k.unwrap() as usize, policy.step.unwrap());
        for case in &fixture.cases {
            let outputs = model.infer(tensors(&case.inputs)).unwrap();
            let expected = tensors(&case.outputs);
            assert_eq!(outputs[0].to_i64(), expected[0].to_i64(), "{name}: label");
            let got = outputs[1].to_f32().unwrap();
            let want = expected[1].to_f32().unwrap();
            let mut order: Vec<usize> = (0..want.len()).collect();
            order.sort_by(|a, b| want[*b].total_cmp(&want[*a]));
            for (rank, &i) in order.iter().enumerate() {
                if rank < k {
                    assert!(
                        (got[i] - want[i]).abs() as f64 <= step / 2.0 + 1e-6,
                        "{name}: score {i}: {} vs {}",
                        got[i],
                        want[i]
                    );
                    let steps = f64::from(got[i]) / step;
                    assert!(
                        (steps - steps.round()).abs() < 1e-3,
                        "{name}: {} is not on the {step} grid",
                        got[i]
                    );
                } else {
                    assert_eq!(got[i], 0.0, "{name}: score {i} outside the top {k} must be hidden");
                }
            }
        }
    }
}

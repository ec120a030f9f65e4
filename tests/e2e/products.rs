//! Matrix products whose tiles the host's kernels run every way the guest sends them
//! (`guest/wasm/src/kernels.rs`, `HostMmm`): rows of tiles, columns of tiles (pointwise
//! convolutions with few output channels over many positions), a partial last row of tiles
//! after two or more full rows (a row per call, through padded copies), products smaller than a
//! tile, and tile by tile. (A partial last row after a single full row goes tract's way; no
//! shape tried reaches it with the AMD EPYC machine's kernel picks: benches/README.md, "The
//! one-full-row case".) Models: `tests/fixtures/products/`,
//! made by its `make_products.py`. Batched, the outputs are bit for bit those of one tile per
//! host call, and they match native tract's.

use warden::DType;
use warden_tests::{TestPublisher, assert_close, builder, manifest, root};

/// The fixtures, as `make_products.py` names them: name, input shape, output shape.
fn products() -> Vec<(String, Vec<u64>, Vec<u64>)> {
    let dir = root().join("tests/fixtures/products");
    let mut all: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.strip_suffix(".onnx").map(str::to_owned))
        .map(|name| {
            let dims: Vec<u64> = name
                .split(['_', 'x'])
                .skip(1)
                .map(|d| d.parse().unwrap_or_else(|_| panic!("{name}")))
                .collect();
            let (input, output) = match (name.split('_').next(), dims.as_slice()) {
                (Some("conv"), &[cin, cout, h, w]) => (vec![1, cin, h, w], vec![1, cout, h, w]),
                (Some("matmul"), &[rows, k, n]) => (vec![rows, k], vec![rows, n]),
                _ => panic!("fixture {name} is named neither conv_CIN_COUT_HxW nor matmul_ROWS_K_N"),
            };
            (name, input, output)
        })
        .collect();
    all.sort();
    assert!(all.len() >= 14, "{} fixtures in {}", all.len(), dir.display());
    all
}

/// Inputs of both signs and several magnitudes, no two alike in a row.
fn input(shape: &[u64]) -> warden::Tensor {
    let len: u64 = shape.iter().product();
    let values: Vec<f32> = (0..len)
        .map(|i| ((i * 7919 % 1009) as f32 / 1009.0 - 0.45) * if i % 7 == 0 { 10.0 } else { 1.0 })
        .collect();
    warden::Tensor::from_f32("x", shape, &values)
}

#[test]
fn every_way_of_running_tiles_gives_the_same_products() {
    let dir = tempfile::tempdir().unwrap();
    let publisher = TestPublisher::new(dir.path());
    let runtime = builder(&dir.path().join("state"), &publisher.trust).build().unwrap();
    let tile_by_tile =
        builder(&dir.path().join("state-tiles"), &publisher.trust).tile_batches(false).build().unwrap();
    for (name, in_shape, out_shape) in products() {
        let bytes = std::fs::read(root().join(format!("tests/fixtures/products/{name}.onnx"))).unwrap();
        let m = manifest(&name, &[("x", DType::F32, &in_shape)], &[("y", DType::F32, &out_shape)]);
        let bundle = publisher.bundle(&dir.path().join("repo"), &m, &bytes);
        let model = runtime.load_bundle(&bundle).unwrap();
        let single_model = tile_by_tile.load_bundle(&bundle).unwrap();
        let x = input(&in_shape);

        let tiles = runtime.native_kernel_calls();
        let batched = model.infer(vec![x.clone()]).unwrap();
        let single_tiles = tile_by_tile.native_kernel_calls();
        let single = single_model.infer(vec![x.clone()]).unwrap();
        assert_eq!(
            tile_by_tile.native_kernel_calls() - single_tiles,
            runtime.native_kernel_calls() - tiles,
            "{name}: the same tiles one per call and batched"
        );
        assert!(batched[0].data == single[0].data, "{name}: batching changed the bits");

        // Native tract on its own thread (its AVX-512 state slows the sandbox's thread down).
        let facts = m.input_facts();
        let request_inputs = vec![x];
        let native = std::thread::spawn(move || {
            let mut engine =
                warden_guest::Engine::load(&warden::guest::LoadRequest { model: &bytes, inputs: facts })
                    .unwrap();
            let out = engine.run(&warden::Tensor::run_request(&request_inputs)).unwrap();
            out.into_iter()
                .map(|n| warden::Tensor { name: n.name, dtype: n.dtype, shape: n.shape, data: n.data })
                .collect::<Vec<_>>()
        })
        .join()
        .unwrap();
        assert_close(&batched[0], &native[0], 1e-4, &format!("{name} (sandbox vs native tract)"));
    }
    assert_eq!(tile_by_tile.native_tile_batches(), 0, "batches ran though refused");
    if !runtime.native_kernels().is_empty() {
        assert!(runtime.native_tile_batches() > 0, "no product went to the host in batches");
    }
}

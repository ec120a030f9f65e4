//! Every element type of the guest contract crosses the sandbox both ways: f32, f64, i64, i32,
//! u8, i8 and bool, in one model with seven inputs and seven outputs.

use warden::{DType, Tensor};
use warden_tests::{TestPublisher, builder, manifest, root};

#[test]
fn every_dtype_crosses_the_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let publisher = TestPublisher::new(dir.path());
    let types = [DType::F32, DType::F64, DType::I64, DType::I32, DType::U8, DType::I8, DType::Bool];
    let ins: Vec<String> = types.iter().map(|t| format!("in_{t}")).collect();
    let outs: Vec<String> = types.iter().map(|t| format!("out_{t}")).collect();
    let shape: &[u64] = &[2, 3];
    let m = manifest(
        "dtypes",
        &ins.iter().zip(types).map(|(n, t)| (n.as_str(), t, shape)).collect::<Vec<_>>(),
        &outs.iter().zip(types).map(|(n, t)| (n.as_str(), t, shape)).collect::<Vec<_>>(),
    );
    let bytes = std::fs::read(root().join("tests/fixtures/dtypes/dtypes.onnx")).unwrap();
    let bundle = publisher.bundle(&dir.path().join("repo"), &m, &bytes);
    let runtime = builder(&dir.path().join("state"), &publisher.trust).build().unwrap();
    let model = runtime.load_bundle(&bundle).unwrap();

    let out = model
        .infer(vec![
            // Inputs in a different order than the manifest's: matched by name.
            Tensor::from_bool("in_bool", shape, &[true, false, true, true, false, false]),
            Tensor::from_f32("in_f32", shape, &[0.0, 1.0, -2.5, 3.25, 1e6, -1e-3]),
            Tensor::from_f64("in_f64", shape, &[0.5, -1.0, 1e300, 2.0, -0.0, 3.0]),
            Tensor::from_i64("in_i64", shape, &[0, -7, i64::MAX - 7, 1, 2, 3]),
            Tensor::from_i32("in_i32", shape, &[1, -2, i32::MAX, 0, 5, -6]),
            Tensor::from_u8("in_u8", shape, &[0, 1, 254, 9, 100, 3]),
            Tensor::from_i8("in_i8", shape, &[1, -1, 127, 0, -127, 5]),
        ])
        .unwrap();
    let names: Vec<&str> = out.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, outs.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out[0].to_f32().unwrap(), vec![1.5, 2.5, -1.0, 4.75, 1e6 + 1.5, 1.5 - 1e-3]);
    assert_eq!(out[1].to_f64().unwrap(), vec![1.0, -2.0, 2e300, 4.0, -0.0, 6.0]);
    assert_eq!(out[2].to_i64().unwrap(), vec![7, 0, i64::MAX, 8, 9, 10]);
    assert_eq!(out[3].to_i32().unwrap(), vec![-1, 2, -i32::MAX, 0, -5, 6]);
    assert_eq!(out[4].to_u8().unwrap(), vec![1, 2, 255, 10, 101, 4]);
    assert_eq!(out[5].to_i8().unwrap(), vec![-1, 1, -127, 0, 127, -5]);
    assert_eq!(out[6].data, vec![0, 1, 0, 0, 1, 1]);
    assert!(out.iter().all(|t| t.shape == shape));
}

/// An int64 output that passes through a `Cast`, as a classifier's label does, comes back whole.
/// tract-onnx makes that cast one to its `TDim` type, whose round trip keeps 32 bits (the sandbox
/// answered 0 for `1 << 62` before the guest passed such casts through; `guest/src/label.rs`).
#[test]
fn int64_outputs_beyond_32_bits_survive_a_cast() {
    let dir = tempfile::tempdir().unwrap();
    let publisher = TestPublisher::new(dir.path());
    let m = manifest("cast_i64", &[("label", DType::I64, &[1, 4])], &[("out", DType::I64, &[4])]);
    let bytes = std::fs::read(root().join("tests/fixtures/dtypes/cast_i64.onnx")).unwrap();
    let bundle = publisher.bundle(&dir.path().join("repo"), &m, &bytes);
    let runtime = builder(&dir.path().join("state"), &publisher.trust).build().unwrap();
    let model = runtime.load_bundle(&bundle).unwrap();
    let values = [1 << 62, -(1 << 40), 7, i64::MIN];
    let out = model.infer(vec![Tensor::from_i64("label", &[1, 4], &values)]).unwrap();
    assert_eq!(out[0].to_i64().unwrap(), values);
}

//! Bad inputs are refused in the host, before the guest runs; the model keeps serving.

use warden::{DType, Error, InputError, Tensor};
use warden_tests::{builder, root};

fn digits() -> (tempfile::TempDir, warden::Runtime) {
    let dir = tempfile::tempdir().unwrap();
    let runtime = builder(dir.path(), &root().join("models/dev-trust")).build().unwrap();
    (dir, runtime)
}

fn refused(model: &warden::Model, inputs: Vec<Tensor>) -> InputError {
    let before = model.sandbox_runs();
    let err = match model.infer(inputs) {
        Err(Error::Input(e)) => e,
        other => panic!("expected an input refusal, got {other:?}"),
    };
    assert_eq!(model.sandbox_runs(), before, "the guest ran for a refused input");
    err
}

#[test]
fn nan_bounds_shape_dtype_and_names_are_refused_before_the_guest_runs() {
    let (_dir, runtime) = digits();
    let model = runtime.load_bundle(root().join("models/repo/digits/1")).unwrap();
    let good = vec![3.0f32; 64];

    let mut nan = good.clone();
    nan[5] = f32::NAN;
    assert_eq!(
        refused(&model, vec![Tensor::from_f32("input", &[1, 64], &nan)]),
        InputError::NotFinite { name: "input".into(), index: 5 }
    );
    let mut inf = good.clone();
    inf[0] = f32::INFINITY;
    assert!(matches!(
        refused(&model, vec![Tensor::from_f32("input", &[1, 64], &inf)]),
        InputError::NotFinite { index: 0, .. }
    ));

    let mut high = good.clone();
    high[63] = 16.5;
    assert!(matches!(
        refused(&model, vec![Tensor::from_f32("input", &[1, 64], &high)]),
        InputError::OutOfBounds { index: 63, .. }
    ));
    let mut low = good.clone();
    low[1] = -0.1;
    assert!(matches!(
        refused(&model, vec![Tensor::from_f32("input", &[1, 64], &low)]),
        InputError::OutOfBounds { index: 1, .. }
    ));

    assert!(matches!(
        refused(&model, vec![Tensor::from_f32("input", &[64, 1], &good)]),
        InputError::Shape { .. }
    ));
    assert!(matches!(
        refused(&model, vec![Tensor::from_f32("input", &[1, 32], &good[..32])]),
        InputError::Shape { .. }
    ));
    let as_f64: Vec<f64> = good.iter().map(|v| f64::from(*v)).collect();
    assert!(matches!(
        refused(&model, vec![Tensor::from_f64("input", &[1, 64], &as_f64)]),
        InputError::DType { expected: DType::F32, actual: DType::F64, .. }
    ));
    let mut short = Tensor::from_f32("input", &[1, 64], &good);
    short.data.truncate(255);
    assert!(matches!(refused(&model, vec![short]), InputError::DataLength { .. }));

    assert_eq!(refused(&model, vec![]), InputError::Missing("input".into()));
    let extra = vec![Tensor::from_f32("input", &[1, 64], &good), Tensor::from_f32("other", &[1], &[1.0])];
    assert!(matches!(refused(&model, extra), InputError::Unexpected(_)));
    let twice = vec![Tensor::from_f32("input", &[1, 64], &good), Tensor::from_f32("input", &[1, 64], &good)];
    assert!(matches!(refused(&model, twice), InputError::Duplicate(_)));
    let big = vec![Tensor::from_f32("input", &[1, 1000], &[0.0; 1000])];
    assert!(matches!(refused(&model, big), InputError::Shape { .. }));

    let before = model.sandbox_runs();
    model.infer(vec![Tensor::from_f32("input", &[1, 64], &good)]).unwrap();
    assert_eq!(model.sandbox_runs(), before + 1);
}

#[test]
fn per_feature_bounds_apply_along_the_last_axis() {
    let (_dir, runtime) = digits();
    let model = runtime.load_bundle(root().join("models/repo/breast_cancer/1")).unwrap();
    let request = warden::kserve::InferRequest::from_json(
        &std::fs::read(root().join("models/requests/breast_cancer.json")).unwrap(),
    )
    .unwrap();
    let good = request.tensors().unwrap();
    model.infer(good.clone()).unwrap();
    // Feature 4 (smoothness) is bounded by 0.3268; 1.0 is fine for feature 0 but not for 4.
    let mut values = good[0].to_f32().unwrap();
    values[4] = 1.0;
    let err = refused(&model, vec![Tensor::from_f32("input", &[1, 30], &values)]);
    assert!(
        matches!(err, InputError::OutOfBounds { index: 4, max, .. } if (max - 0.3268).abs() < 1e-9),
        "{err:?}"
    );
}

#[test]
fn byte_caps_apply_before_values_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = builder(dir.path(), &root().join("models/dev-trust")).max_input_bytes(100).build().unwrap();
    let model = runtime.load_bundle(root().join("models/repo/digits/1")).unwrap();
    let err = refused(&model, vec![Tensor::from_f32("input", &[1, 64], &[f32::NAN; 64])]);
    assert_eq!(err, InputError::TooLarge { actual: 256, limit: 100 });
}

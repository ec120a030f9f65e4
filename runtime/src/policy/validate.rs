use std::collections::HashMap;

use warden_wire::DType;
use warden_wire::manifest::{Bound, DimSpec, InputSpec, Manifest};

use crate::error::InputError;
use crate::tensor::{Tensor, element_count};

/// Input byte cap when the manifest sets none: 16 MiB.
pub const DEFAULT_MAX_INPUT_BYTES: u64 = 16 << 20;

pub(crate) fn render_shape(shape: &[DimSpec]) -> String {
    let dims: Vec<String> = shape
        .iter()
        .map(|d| match d {
            DimSpec::Fixed(n) => n.to_string(),
            DimSpec::Named(s) => s.clone(),
        })
        .collect();
    format!("[{}]", dims.join(", "))
}

/// Checks a request's tensors against the manifest's input specs and returns them in manifest
/// order: names (each exactly once), dtypes, shapes (named dims consistent across inputs),
/// data length, total size, finite floats, bools, and per-feature bounds.
pub fn validate_inputs(
    manifest: &Manifest,
    mut inputs: Vec<Tensor>,
    host_cap: u64,
) -> Result<Vec<Tensor>, InputError> {
    for (i, t) in inputs.iter().enumerate() {
        if inputs[..i].iter().any(|o| o.name == t.name) {
            return Err(InputError::Duplicate(t.name.clone()));
        }
        if !manifest.inputs.iter().any(|s| s.name == t.name) {
            return Err(InputError::Unexpected(t.name.clone()));
        }
    }
    // Put into the manifest's order in place, by swaps: no second vector per request. Every
    // tensor is a declared input and none comes twice (checked above), so once each declared
    // input has found its place, `inputs` holds exactly the manifest's, in its order.
    let mut symbols: HashMap<&str, u64> = HashMap::new();
    for (i, spec) in manifest.inputs.iter().enumerate() {
        let pos = inputs
            .iter()
            .skip(i)
            .position(|t| t.name == spec.name)
            .ok_or_else(|| InputError::Missing(spec.name.clone()))?;
        inputs.swap(i, i + pos);
        check_structure(spec, &inputs[i], &mut symbols)?;
    }
    let limit = manifest.limits.max_input_bytes.unwrap_or(DEFAULT_MAX_INPUT_BYTES).min(host_cap);
    let total: u64 = inputs.iter().map(|t| t.data.len() as u64).sum();
    if total > limit {
        return Err(InputError::TooLarge { actual: total, limit });
    }
    for (spec, t) in manifest.inputs.iter().zip(&inputs) {
        check_values(spec, t)?;
    }
    Ok(inputs)
}

/// Names, dtype, shape and data length: cheap checks that need no pass over the values.
fn check_structure<'a>(
    spec: &'a InputSpec,
    t: &Tensor,
    symbols: &mut HashMap<&'a str, u64>,
) -> Result<(), InputError> {
    if t.dtype != spec.dtype {
        return Err(InputError::DType { name: t.name.clone(), expected: spec.dtype, actual: t.dtype });
    }
    let shape_err = || InputError::Shape {
        name: t.name.clone(),
        expected: render_shape(&spec.shape),
        actual: t.shape.clone(),
    };
    if t.shape.len() != spec.shape.len() {
        return Err(shape_err());
    }
    for (d, s) in t.shape.iter().zip(&spec.shape) {
        match s {
            DimSpec::Fixed(n) if n != d => return Err(shape_err()),
            DimSpec::Fixed(_) => {}
            DimSpec::Named(name) => {
                if *d == 0 || *symbols.entry(name.as_str()).or_insert(*d) != *d {
                    return Err(shape_err());
                }
            }
        }
    }
    let count = element_count(&t.shape).ok_or_else(shape_err)?;
    let expected = count.checked_mul(t.dtype.size()).ok_or_else(shape_err)?;
    if t.data.len() != expected {
        return Err(InputError::DataLength { name: t.name.clone(), expected, actual: t.data.len() });
    }
    Ok(())
}

/// Bools are 0 or 1, floats finite, every value within the manifest's bounds.
fn check_values(spec: &InputSpec, t: &Tensor) -> Result<(), InputError> {
    if t.dtype == DType::Bool {
        if let Some(index) = t.data.iter().position(|b| *b > 1) {
            return Err(InputError::NotBool { name: t.name.clone(), index, value: t.data[index] });
        }
        return Ok(());
    }
    let bounded = spec.min.is_some() || spec.max.is_some();
    if !bounded && !t.dtype.is_float() {
        return Ok(());
    }
    // The bounds of each feature (the last axis): value `i` has feature `i % features`, and a
    // per-feature list shorter than the axis leaves the rest unbounded.
    let features = t.shape.last().copied().unwrap_or(1).max(1) as usize;
    let (mins, maxs) =
        (Bounds::of(&spec.min, f64::NEG_INFINITY, features), Bounds::of(&spec.max, f64::INFINITY, features));
    let (mins, maxs) = (mins.as_slice(), maxs.as_slice());
    let refuse = |index: usize, value: f64| {
        let (min, max) = (mins[index % mins.len()], maxs[index % maxs.len()]);
        if !value.is_finite() {
            InputError::NotFinite { name: t.name.clone(), index }
        } else {
            InputError::OutOfBounds { name: t.name.clone(), index, value, min, max }
        }
    };
    // f32, the common case: first a branch-free pass that the compiler vectorizes (no index, no
    // early exit), and only if it finds a bad value the pass that names the first one.
    if t.dtype == DType::F32 {
        let values =
            || t.data.chunks_exact(4).map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
        if f32_all_good(&t.data, mins, maxs) {
            return Ok(());
        }
        return first_bad(values(), mins, maxs).map_or(Ok(()), |(index, value)| Err(refuse(index, value)));
    }
    let values = (0..t.data.len() / t.dtype.size()).map(|i| t.value_f64(i).unwrap_or(f64::NAN));
    first_bad(values, mins, maxs).map_or(Ok(()), |(index, value)| Err(refuse(index, value)))
}

/// One bound for every value, or one per feature: the manifest's list, or (when it is shorter
/// than the axis) that list padded with the default. Only the padded one allocates.
enum Bounds<'a> {
    One([f64; 1]),
    Listed(&'a [f64]),
    Each(Vec<f64>),
}

impl Bounds<'_> {
    /// A manifest bound for an axis of `features` values; `default` where it sets none.
    fn of(bound: &Option<Bound>, default: f64, features: usize) -> Bounds<'_> {
        match bound {
            None => Bounds::One([default]),
            Some(Bound::All(v)) => Bounds::One([*v]),
            // The manifest's own list when it covers the axis (the common case): nothing to copy.
            Some(Bound::PerFeature(vs)) if vs.len() >= features => Bounds::Listed(&vs[..features]),
            Some(Bound::PerFeature(vs)) => {
                Bounds::Each((0..features).map(|i| vs.get(i).copied().unwrap_or(default)).collect())
            }
        }
    }

    fn as_slice(&self) -> &[f64] {
        match self {
            Bounds::One(b) => b,
            Bounds::Listed(bs) => bs,
            Bounds::Each(bs) => bs,
        }
    }
}

/// Whether every f32 of `data` (little-endian) is finite and within its bounds, as [`first_bad`]
/// states them; `mins` and `maxs` have one entry or one per feature (the same number when both
/// have more than one). No early exit and no index, so the loops vectorize; nothing allocated.
fn f32_all_good(data: &[u8], mins: &[f64], maxs: &[f64]) -> bool {
    let good = |b: &[u8], min: f64, max: f64| {
        let v = f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        // NaN fails both comparisons; the infinities fail `is_finite`.
        v.is_finite() & (v >= min) & (v <= max)
    };
    if let ([min], [max]) = (mins, maxs) {
        return data.chunks_exact(4).fold(true, |ok, b| ok & good(b, *min, *max));
    }
    // Rows of one value per feature; a single bound on one side repeats along the row.
    let features = mins.len().max(maxs.len());
    data.chunks(4 * features).fold(true, |ok, row| {
        row.chunks_exact(4)
            .zip(mins.iter().cycle().zip(maxs.iter().cycle()))
            .fold(ok, |ok, (b, (min, max))| ok & good(b, *min, *max))
    })
}

/// The index and value of the first value that is not finite or lies outside its bounds; value
/// `i` has the bounds `mins[i % mins.len()]` and `maxs[i % maxs.len()]`.
fn first_bad(values: impl Iterator<Item = f64>, mins: &[f64], maxs: &[f64]) -> Option<(usize, f64)> {
    let bounds = mins.iter().cycle().zip(maxs.iter().cycle());
    values
        .zip(bounds)
        .enumerate()
        .find_map(|(i, (v, (min, max)))| (!(v.is_finite() && v >= *min && v <= *max)).then_some((i, v)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec(dtype: DType, min: Option<Bound>, max: Option<Bound>) -> InputSpec {
        InputSpec { name: "x".into(), dtype, shape: Vec::new(), min, max }
    }

    /// Inputs come back in the manifest's order whatever order they were sent in (they are put
    /// in place by swaps), each checked against its own spec; a missing one is named.
    #[test]
    fn inputs_come_back_in_the_manifests_order() {
        let manifest: Manifest = toml::from_str(
            r#"
            format = 1
            name = "m"
            version = 1
            model_sha256 = "00"
            outputs = []
            [[inputs]]
            name = "a"
            dtype = "f32"
            shape = ["n", 2]
            [[inputs]]
            name = "b"
            dtype = "i64"
            shape = [1]
            max = 5.0
            [[inputs]]
            name = "c"
            dtype = "f32"
            shape = ["n"]
            [output_policy]
            "#,
        )
        .unwrap();
        let (a, b, c) = (
            Tensor::from_f32("a", &[3, 2], &[0.0; 6]),
            Tensor::from_i64("b", &[1], &[4]),
            Tensor::from_f32("c", &[3], &[1.0; 3]),
        );
        let names = |ts: &[Tensor]| ts.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
        for sent in [
            vec![a.clone(), b.clone(), c.clone()],
            vec![c.clone(), a.clone(), b.clone()],
            vec![b.clone(), c.clone(), a.clone()],
            vec![c.clone(), b.clone(), a.clone()],
        ] {
            let got = validate_inputs(&manifest, sent, u64::MAX).unwrap();
            assert_eq!(names(&got), ["a", "b", "c"]);
            assert_eq!(got, [a.clone(), b.clone(), c.clone()]);
        }
        let err = validate_inputs(&manifest, vec![c.clone(), a.clone()], u64::MAX).unwrap_err();
        assert_eq!(err, InputError::Missing("b".into()));
        // Each tensor is checked against its own spec after the swaps: `b`'s bound, `c`'s `n`.
        let over = Tensor::from_i64("b", &[1], &[6]);
        let err = validate_inputs(&manifest, vec![c.clone(), over, a.clone()], u64::MAX).unwrap_err();
        assert!(matches!(err, InputError::OutOfBounds { ref name, index: 0, .. } if name == "b"), "{err:?}");
        let short = Tensor::from_f32("c", &[2], &[1.0; 2]);
        let err = validate_inputs(&manifest, vec![short, b.clone(), a.clone()], u64::MAX).unwrap_err();
        assert!(matches!(err, InputError::Shape { ref name, .. } if name == "c"), "{err:?}");
    }

    /// The first bad value is reported, with the bounds of its own feature (its index modulo
    /// the last axis), for f32 (the fast pass) and for other dtypes alike.
    #[test]
    fn reports_the_first_bad_value_with_its_features_bounds() {
        let per = |v: &[f64]| Some(Bound::PerFeature(v.to_vec()));
        let s = spec(DType::F32, per(&[0.0, -1.0, 0.0, 0.0]), per(&[1.0, 1.0, 5.0]));
        let mut v = vec![0.5f32; 12];
        assert_eq!(check_values(&s, &Tensor::from_f32("x", &[3, 4], &v)), Ok(()));
        v[3] = 1e9; // feature 3 has no upper bound (the list is shorter): fine
        v[6] = 4.0; // feature 2: max 5
        v[9] = -0.5; // feature 1: min -1
        assert_eq!(check_values(&s, &Tensor::from_f32("x", &[3, 4], &v)), Ok(()));
        v[10] = 6.0; // feature 2 again: over its max
        v[11] = f32::NAN;
        let err = check_values(&s, &Tensor::from_f32("x", &[3, 4], &v)).unwrap_err();
        assert_eq!(
            err,
            InputError::OutOfBounds { name: "x".into(), index: 10, value: 6.0, min: 0.0, max: 5.0 }
        );
        v[5] = f32::INFINITY;
        let err = check_values(&s, &Tensor::from_f32("x", &[3, 4], &v)).unwrap_err();
        assert_eq!(err, InputError::NotFinite { name: "x".into(), index: 5 });
        let unbounded = spec(DType::F32, None, None);
        let err = check_values(&unbounded, &Tensor::from_f32("x", &[3, 4], &v)).unwrap_err();
        assert_eq!(err, InputError::NotFinite { name: "x".into(), index: 5 });

        let s = spec(DType::I64, Some(Bound::All(-2.0)), per(&[10.0, 3.0]));
        let err = check_values(&s, &Tensor::from_i64("x", &[2, 2], &[1, 3, 4, 4])).unwrap_err();
        assert_eq!(
            err,
            InputError::OutOfBounds { name: "x".into(), index: 3, value: 4.0, min: -2.0, max: 3.0 }
        );
        let err = check_values(&s, &Tensor::from_i64("x", &[2, 2], &[1, 3, -3, 0])).unwrap_err();
        assert_eq!(
            err,
            InputError::OutOfBounds { name: "x".into(), index: 2, value: -3.0, min: -2.0, max: 10.0 }
        );
        assert_eq!(
            check_values(&spec(DType::I64, None, None), &Tensor::from_i64("x", &[1], &[i64::MAX])),
            Ok(())
        );
    }

    /// The vectorized pass agrees with the one that names the bad value: every value, at every
    /// place, under one bound for all and under bounds per feature (on both sides, or on one
    /// side with a single bound on the other), edges included.
    #[test]
    fn the_fast_pass_agrees_with_the_naming_pass_everywhere() {
        let bounds: [(&[f64], &[f64]); 4] = [
            (&[-1.0], &[1.0]),
            (&[-1.0, 0.0, 2.0], &[1.0, 0.5, 3.0]),
            (&[0.0, -2.0, 2.0], &[1.0]),
            (&[f64::NEG_INFINITY], &[0.25, 1.0, f64::INFINITY]),
        ];
        let values = [-1.0, 1.0, 0.0, 0.25, 2.5, 3.0, -2.0, 1.5, f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
        for (mins, maxs) in bounds {
            for place in 0..12 {
                for value in values {
                    // The others sit at a value every bound admits, so the one at `place` decides.
                    let mut v = [0.5f32; 12];
                    v[place] = value;
                    let data: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    let named = first_bad(v.iter().map(|x| f64::from(*x)), mins, maxs);
                    assert_eq!(
                        f32_all_good(&data, mins, maxs),
                        named.is_none(),
                        "{value} at {place}, mins {mins:?}, maxs {maxs:?}"
                    );
                }
            }
        }
    }
}

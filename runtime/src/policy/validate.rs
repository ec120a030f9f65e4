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
    let mut symbols: HashMap<&str, u64> = HashMap::new();
    let mut ordered = Vec::with_capacity(manifest.inputs.len());
    for spec in &manifest.inputs {
        let pos = inputs
            .iter()
            .position(|t| t.name == spec.name)
            .ok_or_else(|| InputError::Missing(spec.name.clone()))?;
        let t = inputs.swap_remove(pos);
        check_structure(spec, &t, &mut symbols)?;
        ordered.push((spec, t));
    }
    let limit = manifest.limits.max_input_bytes.unwrap_or(DEFAULT_MAX_INPUT_BYTES).min(host_cap);
    let total: u64 = ordered.iter().map(|(_, t)| t.data.len() as u64).sum();
    if total > limit {
        return Err(InputError::TooLarge { actual: total, limit });
    }
    ordered.into_iter().map(|(spec, t)| check_values(spec, &t).map(|()| t)).collect()
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
    let count = t.data.len() / t.dtype.size();
    if t.dtype == DType::Bool {
        if let Some(index) = t.data.iter().position(|b| *b > 1) {
            return Err(InputError::NotBool { name: t.name.clone(), index, value: t.data[index] });
        }
        return Ok(());
    }
    let features = t.shape.last().copied().unwrap_or(1).max(1) as usize;
    let bound = |b: &Option<Bound>, i: usize, default: f64| match b {
        None => default,
        Some(Bound::All(v)) => *v,
        Some(Bound::PerFeature(vs)) => vs.get(i % features).copied().unwrap_or(default),
    };
    let bounded = spec.min.is_some() || spec.max.is_some();
    if !bounded && !t.dtype.is_float() {
        return Ok(());
    }
    for index in 0..count {
        let value = t.value_f64(index).unwrap_or(f64::NAN);
        if !value.is_finite() {
            return Err(InputError::NotFinite { name: t.name.clone(), index });
        }
        if bounded {
            let (min, max) =
                (bound(&spec.min, index, f64::NEG_INFINITY), bound(&spec.max, index, f64::INFINITY));
            if value < min || value > max {
                return Err(InputError::OutOfBounds { name: t.name.clone(), index, value, min, max });
            }
        }
    }
    Ok(())
}

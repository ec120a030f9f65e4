use warden_wire::DType;
use warden_wire::manifest::{DimSpec, Manifest, OutputPolicy};

use super::validate::render_shape;
use crate::tensor::{Tensor, element_count};

/// Checks the guest's outputs (untrusted) against the manifest: the declared outputs, in order,
/// with their dtypes, shapes and consistent lengths. Outputs the manifest does not declare are
/// dropped here, so they never leave the host.
pub fn check_outputs(manifest: &Manifest, outputs: Vec<Tensor>) -> Result<Vec<Tensor>, String> {
    let mut outputs: Vec<Option<Tensor>> = outputs.into_iter().map(Some).collect();
    let mut checked = Vec::with_capacity(manifest.outputs.len());
    for spec in &manifest.outputs {
        let t = outputs
            .iter_mut()
            .find(|t| t.as_ref().is_some_and(|t| t.name == spec.name))
            .and_then(Option::take)
            .ok_or_else(|| format!("the model produced no output {:?}", spec.name))?;
        if t.dtype != spec.dtype {
            return Err(format!("output {:?} is {}, the manifest says {}", spec.name, t.dtype, spec.dtype));
        }
        let fits = t.shape.len() == spec.shape.len()
            && t.shape.iter().zip(&spec.shape).all(|(d, s)| match s {
                DimSpec::Fixed(n) => n == d,
                DimSpec::Named(_) => true,
            });
        if !fits {
            return Err(format!(
                "output {:?} has shape {:?}, the manifest says {}",
                spec.name,
                t.shape,
                render_shape(&spec.shape)
            ));
        }
        let len = element_count(&t.shape).and_then(|n| n.checked_mul(t.dtype.size()));
        if len != Some(t.data.len()) {
            return Err(format!("output {:?} has {} bytes for shape {:?}", spec.name, t.data.len(), t.shape));
        }
        checked.push(t);
    }
    Ok(checked)
}

/// Coarsens floating-point outputs as the policy says: keep the `top_k` largest values along the
/// last axis (others become 0), then round to multiples of `step`. Integer and bool outputs
/// (labels) pass unchanged. With `dangerous_full_precision` and no `top_k`/`step`, nothing changes.
pub fn apply_output_policy(policy: &OutputPolicy, outputs: &mut [Tensor]) {
    for t in outputs.iter_mut().filter(|t| t.dtype.is_float()) {
        let mut values: Vec<f64> =
            (0..element_count(&t.shape).unwrap_or(0)).filter_map(|i| t.value_f64(i)).collect();
        if let (Some(k), Some(&row)) = (policy.top_k, t.shape.last()) {
            let (k, row) = (k as usize, row as usize);
            if row > k {
                let mut order: Vec<usize> = Vec::with_capacity(row);
                for chunk in values.chunks_mut(row) {
                    keep_top_k(chunk, k, &mut order);
                }
            }
        }
        if let Some(step) = policy.step {
            for v in &mut values {
                *v = (*v / step).round() * step;
            }
        }
        t.data = match t.dtype {
            DType::F32 => values.iter().flat_map(|v| (*v as f32).to_le_bytes()).collect(),
            _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
    }
}

/// Sets all but the `k` largest values of `row` to 0 (`k < row.len()`); of equal values the
/// earlier ones are kept. A selection, not a sort: linear in the row, which matters for rows of
/// thousands of classes (PP-OCR recognition: 40 rows of 6,625). `order` is scratch space.
fn keep_top_k(row: &mut [f64], k: usize, order: &mut Vec<usize>) {
    order.clear();
    order.extend(0..row.len());
    // Largest first, then by index: a total order, so the first k are exactly the kept set.
    order.select_nth_unstable_by(k, |a, b| row[*b].total_cmp(&row[*a]).then(a.cmp(b)));
    for &i in &order[k..] {
        row[i] = 0.0;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn top_k_keeps_what_a_full_sort_keeps() {
        // Rows with many ties, negative values and infinities, every k: the selection must keep
        // the same entries as sorting the whole row (largest first, earlier index on ties).
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut order = Vec::new();
        for len in [2usize, 3, 7, 64, 6625] {
            let row: Vec<f64> = (0..len)
                .map(|_| match next() % 10 {
                    0 => f64::INFINITY,
                    1 => f64::NEG_INFINITY,
                    n => (n % 4) as f64 - 1.5,
                })
                .collect();
            for k in (0..len).step_by((len / 7).max(1)) {
                let mut sorted: Vec<usize> = (0..len).collect();
                sorted.sort_by(|a, b| row[*b].total_cmp(&row[*a]).then(a.cmp(b)));
                let mut want = row.clone();
                for &i in &sorted[k..] {
                    want[i] = 0.0;
                }
                let mut got = row.clone();
                keep_top_k(&mut got, k, &mut order);
                assert_eq!(got, want, "len {len}, k {k}");
            }
        }
    }

    #[test]
    fn top_k_and_step_coarsen_each_row() {
        let policy = OutputPolicy { top_k: Some(2), step: Some(0.05), dangerous_full_precision: false };
        let mut t = [Tensor::from_f32("p", &[2, 4], &[0.12, 0.5, 0.31, 0.07, 0.9, 0.01, 0.02, 0.07])];
        apply_output_policy(&policy, &mut t);
        let got = t[0].to_f32().unwrap();
        let want = [0.0, 0.5, 0.3, 0.0, 0.9, 0.0, 0.0, 0.05];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?}");
        }
    }

    #[test]
    fn labels_pass_unchanged() {
        let policy = OutputPolicy { top_k: Some(1), step: Some(0.5), dangerous_full_precision: false };
        let mut t = [Tensor::from_i64("label", &[3], &[7, 1, 3])];
        apply_output_policy(&policy, &mut t);
        assert_eq!(t[0].to_i64().unwrap(), vec![7, 1, 3]);
    }
}

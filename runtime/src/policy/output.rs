use warden_wire::DType;
use warden_wire::manifest::{DimSpec, Manifest, OutputPolicy};

use super::validate::render_shape;
use crate::tensor::{Tensor, element_count};

/// Checks the guest's outputs (untrusted) against the manifest: the declared outputs, in order,
/// with their dtypes, shapes and consistent lengths. Outputs the manifest does not declare are
/// dropped here, so they never leave the host.
pub fn check_outputs(manifest: &Manifest, mut outputs: Vec<Tensor>) -> Result<Vec<Tensor>, String> {
    // The guest reports the outputs in graph order, which is usually the manifest's: then they
    // are checked where they are. Otherwise (or with extra outputs) they are put in order first.
    let in_order = outputs.len() == manifest.outputs.len()
        && outputs.iter().zip(&manifest.outputs).all(|(t, spec)| t.name == spec.name);
    if !in_order {
        let mut pool: Vec<Option<Tensor>> = outputs.into_iter().map(Some).collect();
        outputs = manifest
            .outputs
            .iter()
            .map(|spec| {
                pool.iter_mut()
                    .find(|t| t.as_ref().is_some_and(|t| t.name == spec.name))
                    .and_then(Option::take)
                    .ok_or_else(|| format!("the model produced no output {:?}", spec.name))
            })
            .collect::<Result<_, _>>()?;
    }
    for (t, spec) in outputs.iter().zip(&manifest.outputs) {
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
    }
    Ok(outputs)
}

/// Coarsens floating-point outputs as the policy says: keep the `top_k` largest values along the
/// last axis (others become 0), then round to multiples of `step`. Integer and bool outputs
/// (labels) pass unchanged. With `dangerous_full_precision` and no `top_k`/`step`, nothing changes.
pub fn apply_output_policy(policy: &OutputPolicy, outputs: &mut [Tensor]) {
    if policy.top_k.is_none() && policy.step.is_none() {
        // Full precision: nothing to change, so nothing is decoded or copied.
        return;
    }
    // One row (or block of values) at a time, read as f64 and encoded back in place: no copy of
    // the whole output, and the same f64 arithmetic as on whole tensors.
    let round = |v: f64| policy.step.map_or(v, |step| (v / step).round() * step);
    // What every value outside a row's top k becomes: 0, rounded like any other value.
    let dropped = round(0.0);
    let (mut line, mut order) = (Vec::new(), Vec::new());
    for t in outputs.iter_mut().filter(|t| t.dtype.is_float()) {
        let (dtype, size) = (t.dtype, t.dtype.size());
        let encode = |v: f64, b: &mut [u8]| match dtype {
            DType::F32 => b.copy_from_slice(&(v as f32).to_le_bytes()),
            _ => b.copy_from_slice(&v.to_le_bytes()),
        };
        let top_k = match (policy.top_k, t.shape.last()) {
            (Some(k), Some(&row)) if row > u64::from(k) => {
                usize::try_from(row).ok().map(|row| (k as usize, row))
            }
            _ => None,
        };
        let block = top_k.map_or(4096, |(_, row)| row);
        let read = |b: &[u8]| match dtype {
            DType::F32 => f64::from(f32::from_le_bytes(b.try_into().expect("four bytes"))),
            _ => f64::from_le_bytes(b.try_into().expect("eight bytes")),
        };
        for bytes in t.data.chunks_mut(block * size) {
            match top_k {
                // A small k (a classifier's top 3): the best k are kept in a stack array while
                // the row is read in place, so nothing is decoded into `line` or allocated.
                Some((k, _)) if k <= SMALL_K => {
                    let len = bytes.len() / size;
                    let (kept, n) = top_k_small(len, k, |i| read(&bytes[i * size..(i + 1) * size]));
                    fill_dropped(bytes, dropped, encode, size);
                    for &(i, v) in &kept[..n] {
                        encode(round(v), &mut bytes[i * size..(i + 1) * size]);
                    }
                }
                Some((k, _)) => {
                    line.clear();
                    line.extend(bytes.chunks_exact(size).map(read));
                    fill_dropped(bytes, dropped, encode, size);
                    for &i in top_k_indices(&line, k, &mut order) {
                        encode(round(line[i]), &mut bytes[i * size..(i + 1) * size]);
                    }
                }
                None => {
                    for b in bytes.chunks_exact_mut(size) {
                        let v = read(b);
                        encode(round(v), b);
                    }
                }
            }
        }
    }
}

/// Writes `dropped` (what a value outside a row's top k becomes) into every value of `bytes`.
fn fill_dropped(bytes: &mut [u8], dropped: f64, encode: impl Fn(f64, &mut [u8]), size: usize) {
    if dropped.to_bits() == 0 {
        bytes.fill(0);
    } else {
        bytes.chunks_exact_mut(size).for_each(|b| encode(dropped, b));
    }
}

/// Up to this `k`, the policy keeps a sorted list of the best `k` in one pass over the row
/// ([`top_k_small`]); above it, it selects over an index array ([`top_k_indices`]).
const SMALL_K: usize = 16;

/// The indices of the `k` largest values of `row` (`k < row.len()`), in no set order; of equal
/// values the earlier ones are kept. A selection, not a sort: linear in the row, which matters
/// for rows of thousands of classes (PP-OCR recognition: 40 rows of 6,625). `order` is scratch
/// space.
fn top_k_indices<'o>(row: &[f64], k: usize, order: &'o mut Vec<usize>) -> &'o [usize] {
    order.clear();
    if k == 0 {
        return order;
    }
    order.extend(0..row.len());
    // Largest first, then by index: a total order, so the first k are exactly the kept set.
    order.select_nth_unstable_by(k, |a, b| row[*b].total_cmp(&row[*a]).then(a.cmp(b)));
    &order[..k]
}

/// The `k <= SMALL_K` largest of the `len` values `value(0..len)` and where they are, in one
/// pass: the best so far, largest first and, among equal values, earlier first, in a stack
/// array (the answer is its first `k` entries, fewer only if `len < k`). A later value enters
/// only if strictly larger than the last kept, so ties keep the earlier.
fn top_k_small(len: usize, k: usize, value: impl Fn(usize) -> f64) -> ([(usize, f64); SMALL_K], usize) {
    use std::cmp::Ordering::{Greater, Less};
    let mut kept = [(0, 0.0); SMALL_K];
    let mut n = 0;
    if k == 0 {
        return (kept, 0);
    }
    for i in 0..len {
        let v = value(i);
        if n == k {
            if v.total_cmp(&kept[k - 1].1) != Greater {
                continue;
            }
            n -= 1;
        }
        let at = kept[..n].iter().position(|(_, w)| w.total_cmp(&v) == Less).unwrap_or(n);
        kept.copy_within(at..n, at + 1);
        kept[at] = (i, v);
        n += 1;
    }
    (kept, n)
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
        for len in [2usize, 3, 7, 17, 64, 6625] {
            let row: Vec<f64> = (0..len)
                .map(|_| match next() % 10 {
                    0 => f64::INFINITY,
                    1 => f64::NEG_INFINITY,
                    n => (n % 4) as f64 - 1.5,
                })
                .collect();
            // Every k up to past the one-pass limit, then a spread of larger ones.
            let ks = (0..len.min(SMALL_K + 3)).chain((0..len).step_by((len / 7).max(1)));
            for k in ks {
                let mut sorted: Vec<usize> = (0..len).collect();
                sorted.sort_by(|a, b| row[*b].total_cmp(&row[*a]).then(a.cmp(b)));
                let mut want = row.clone();
                for &i in &sorted[k..] {
                    want[i] = 0.0;
                }
                // The selection for every k, and the one-pass list where the policy uses it.
                let mut lists = vec![top_k_indices(&row, k, &mut order).to_vec()];
                if k <= SMALL_K {
                    let (kept, n) = top_k_small(len, k, |i| row[i]);
                    lists.push(kept[..n].iter().map(|&(i, _)| i).collect());
                }
                for kept in lists {
                    let mut got = vec![0.0; len];
                    for i in kept {
                        got[i] = row[i];
                    }
                    assert_eq!(got, want, "len {len}, k {k}");
                }
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

    /// Step alone, over more values than one block, f32 and f64: each value rounded on its own.
    #[test]
    fn step_rounds_every_value_in_every_block() {
        let policy = OutputPolicy { top_k: None, step: Some(0.25), dangerous_full_precision: false };
        let values: Vec<f64> = (0..10_007).map(|i| (i as f64 * 0.37).sin() * 3.0).collect();
        let f32_data = values.iter().flat_map(|v| (*v as f32).to_le_bytes()).collect();
        let f64_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let shape = vec![values.len() as u64];
        let mut t = [
            Tensor { name: "a".into(), dtype: DType::F32, shape: shape.clone(), data: f32_data },
            Tensor { name: "b".into(), dtype: DType::F64, shape, data: f64_data },
        ];
        apply_output_policy(&policy, &mut t);
        for (i, v) in values.iter().enumerate() {
            let want32 = ((f64::from(*v as f32) / 0.25).round() * 0.25) as f32;
            assert_eq!(t[0].value_f64(i), Some(f64::from(want32)), "f32 {i}");
            assert_eq!(t[1].value_f64(i), Some((v / 0.25).round() * 0.25), "f64 {i}");
        }
    }

    /// Without top-k or step, outputs keep their exact bits (a signalling NaN included).
    #[test]
    fn full_precision_leaves_outputs_untouched() {
        let policy = OutputPolicy { top_k: None, step: None, dangerous_full_precision: true };
        let data: Vec<u8> =
            [0x7fa0_0001u32, 0x3f80_0000, 0xff80_0000].iter().flat_map(|b| b.to_le_bytes()).collect();
        let mut t = [Tensor { name: "p".into(), dtype: DType::F32, shape: vec![3], data: data.clone() }];
        apply_output_policy(&policy, &mut t);
        assert_eq!(t[0].data, data);
    }

    #[test]
    fn labels_pass_unchanged() {
        let policy = OutputPolicy { top_k: Some(1), step: Some(0.5), dangerous_full_precision: false };
        let mut t = [Tensor::from_i64("label", &[3], &[7, 1, 3])];
        apply_output_policy(&policy, &mut t);
        assert_eq!(t[0].to_i64().unwrap(), vec![7, 1, 3]);
    }

    /// A manifest declaring `label` (i64 [1]) then `scores` (f32 [batch, 3]).
    fn two_outputs() -> Manifest {
        toml::from_str(
            r#"
            format = 1
            name = "m"
            version = 1
            model_sha256 = "00"
            inputs = []
            [[outputs]]
            name = "label"
            dtype = "i64"
            shape = [1]
            [[outputs]]
            name = "scores"
            dtype = "f32"
            shape = ["batch", 3]
            [output_policy]
            "#,
        )
        .unwrap()
    }

    /// Outputs in the manifest's order are checked where they are; in another order, or with an
    /// output the manifest does not declare, they come back in its order without the extra one.
    /// Either way a missing output, a wrong dtype, a wrong shape or a wrong length is refused.
    #[test]
    fn outputs_come_back_in_the_manifests_order_and_only_declared_ones() {
        let m = two_outputs();
        let label = || Tensor::from_i64("label", &[1], &[4]);
        let scores = || Tensor::from_f32("scores", &[2, 3], &[0.5; 6]);
        let names = |ts: &[Tensor]| ts.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
        let want = vec!["label".to_string(), "scores".to_string()];
        assert_eq!(names(&check_outputs(&m, vec![label(), scores()]).unwrap()), want);
        assert_eq!(names(&check_outputs(&m, vec![scores(), label()]).unwrap()), want);
        let extra = Tensor::from_f32("hidden", &[1], &[1.0]);
        assert_eq!(names(&check_outputs(&m, vec![extra.clone(), scores(), label()]).unwrap()), want);
        assert_eq!(names(&check_outputs(&m, vec![label(), scores(), extra]).unwrap()), want);

        let err = check_outputs(&m, vec![scores()]).unwrap_err();
        assert!(err.contains("no output \"label\""), "{err}");
        for reorder in [false, true] {
            let refused = |label: Tensor, scores: Tensor| {
                let outputs = if reorder { vec![scores, label] } else { vec![label, scores] };
                check_outputs(&m, outputs).unwrap_err()
            };
            let err = refused(Tensor::from_i32("label", &[1], &[4]), scores());
            assert!(err.contains("is i32, the manifest says i64"), "{err}");
            let err = refused(label(), Tensor::from_f32("scores", &[2, 4], &[0.5; 8]));
            assert!(err.contains("has shape [2, 4]"), "{err}");
            let mut short = scores();
            short.data.pop();
            let err = refused(label(), short);
            assert!(err.contains("has 23 bytes"), "{err}");
        }
    }
}

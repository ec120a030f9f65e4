//! f32 sums over a run of middle axes (`[outer, reduced, inner]`), as one loop.
//!
//! tract-core 0.23.9's `Reduce<Sum>` has fast paths for a sum over the last axis (its linalg
//! kernel) and over leading axes (a column sum), but a sum over axes with kept axes on both
//! sides, such as a `ReduceMean` over time of a `[1, time, channels]` window, goes through
//! ndarray's `sum_axis`: one whole-array add per reduced position, each re-checking shapes
//! (`memcmp`, a byte loop in WebAssembly) and contiguity before it adds a row. In the `motion`
//! sample model that bookkeeping was about 29% of the sandbox's samples. [`AxisSum`] wraps
//! tract's op and runs that case as `out[o][i] += x[o][r][i]` for `r` in order, from zero: per
//! output the same IEEE additions in the same order as `sum_axis`'s path, so tract's results bit
//! for bit. Every other case (other types, the two fast paths, sums over separated axes, and
//! the ones ndarray takes along lanes) runs tract's own code. Like the other swaps, only the
//! WebAssembly build makes it ([`swapped_in`]).
//!
//! tract fuses a square, a `ReduceMean` and its scale into `Reduce<MeanOfSquares>`, which squares
//! a copy of its input and sums it by the same path (`motion`'s variance over its window: about
//! 20% of its samples after the plain sums were swapped). [`AxisSum`] takes that reducer too:
//! each value squared as it is added (the same f32 product tract stores first), then tract's
//! scale, `outputs / inputs` as an f32, applied the same way.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::nn::{Reduce, Reducer};

/// tract's [`Reduce`] `Sum` or `MeanOfSquares`, with the f32 sum over one run of middle axes as
/// one loop.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AxisSum {
    inner: Reduce,
}

/// `model` with every `Reduce<Sum>` and `Reduce<MeanOfSquares>` replaced by an [`AxisSum`].
pub fn swapped_in(mut model: TypedModel) -> TypedModel {
    for node in &mut model.nodes {
        if let Some(reduce) = node.op_as::<Reduce>()
            && matches!(reduce.reducer, Reducer::Sum | Reducer::MeanOfSquares)
        {
            node.op = Box::new(AxisSum { inner: reduce.clone() });
        }
    }
    model
}

impl Op for AxisSum {
    fn name(&self) -> StaticName {
        format!("Warden{}", self.inner.name()).into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        self.inner.info()
    }

    op_as_typed_op!();
}

impl EvalOp for AxisSum {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        if let [x] = &inputs[..]
            && x.datum_type() == f32::datum_type()
            && let Some(geometry) = middle_run(x.shape(), &self.inner.axes)
        {
            let squares = self.inner.reducer == Reducer::MeanOfSquares;
            return Ok(tvec!(sum(x, &self.inner.axes, geometry, squares)?.into_tvalue()));
        }
        self.inner.eval(ctx, inputs)
    }
}

impl TypedOp for AxisSum {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.inner.output_facts(inputs)
    }

    as_op!();
}

/// A sum's `[outer, reduced, inner]` view of its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    outer: usize,
    reduced: usize,
    inner: usize,
}

/// The geometry if tract would sum `axes` of `shape` through ndarray's subview-by-subview
/// `sum_axis`: the axes are one consecutive run (so one axis once tract merges them) with a kept
/// axis before it (else tract's column sum runs) and one after it (else tract's last-axis kernel
/// or ndarray's lane sum runs), and nothing is empty. `None` for any other case.
fn middle_run(shape: &[usize], axes: &[usize]) -> Option<Geometry> {
    let (&first, &last) = (axes.first()?, axes.last()?);
    let consecutive = axes.windows(2).all(|w| w[1] == w[0] + 1);
    if !consecutive || first == 0 || last + 1 >= shape.len() || shape.contains(&0) {
        return None;
    }
    Some(Geometry {
        outer: shape[..first].iter().product(),
        reduced: shape[first..=last].iter().product(),
        inner: shape[last + 1..].iter().product(),
    })
}

/// `x` summed over `axes` (its middle run): the shape with them set to 1, each output the sum
/// from zero in the order of the reduced positions. With `squares`, tract's mean of squares:
/// the sum of each value times itself, times `outputs / inputs` (tract's `mean_of_squares`).
fn sum(x: &TValue, axes: &[usize], g: Geometry, squares: bool) -> TractResult<Tensor> {
    let plain = x.try_as_plain_ram()?;
    let xs = plain.as_slice::<f32>()?;
    ensure!(xs.len() == g.outer * g.reduced * g.inner, "sum geometry");
    let mut out = vec![0f32; g.outer * g.inner];
    let add = |out: &mut [f32], square: fn(f32) -> f32| {
        for (o, block) in out.chunks_exact_mut(g.inner).zip(xs.chunks_exact(g.reduced * g.inner)) {
            for row in block.chunks_exact(g.inner) {
                for (o, v) in o.iter_mut().zip(row) {
                    *o += square(*v);
                }
            }
        }
    };
    if squares {
        add(&mut out, |v| v * v);
        let norm = out.len() as f32 / xs.len() as f32;
        out.iter_mut().for_each(|o| *o *= norm);
    } else {
        add(&mut out, |v| v);
    }
    let mut shape: TVec<usize> = x.shape().into();
    for &axis in axes {
        shape[axis] = 1;
    }
    Tensor::from_shape(&shape, &out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::probe::tests::bits;

    fn values(shape: &[usize], seed: u32) -> Tensor {
        let n: usize = shape.iter().product();
        let special = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 0.0, f32::MIN_POSITIVE / 8.0, 1e30];
        let v: Vec<f32> = (0..n as u32)
            .map(|i| {
                let k = i.wrapping_mul(2_654_435_761).wrapping_add(seed);
                if k % 29 == 0 {
                    special[(k as usize / 29) % special.len()]
                } else {
                    (k % 20011) as f32 / 77.0 - 130.0
                }
            })
            .collect();
        Tensor::from_shape(shape, &v).unwrap()
    }

    #[test]
    fn middle_run_takes_only_what_tract_sums_by_subviews() {
        let g = |outer, reduced, inner| Some(Geometry { outer, reduced, inner });
        assert_eq!(middle_run(&[1, 8, 3], &[1]), g(1, 8, 3));
        assert_eq!(middle_run(&[2, 4, 5, 6, 7], &[2, 3]), g(8, 30, 7));
        assert_eq!(middle_run(&[2, 4, 1], &[1]), g(2, 4, 1), "a kept axis of 1 after the run");
        assert_eq!(middle_run(&[1, 8, 3], &[2]), None, "last axis: tract's kernel");
        assert_eq!(middle_run(&[1, 8, 3], &[1, 2]), None, "run to the end: ndarray's lane sum");
        assert_eq!(middle_run(&[4, 8, 3], &[0]), None, "leading axes: tract's column sum");
        assert_eq!(middle_run(&[4, 8, 3, 2], &[1, 3]), None, "two runs");
        assert_eq!(middle_run(&[4, 0, 3], &[1]), None, "empty");
        assert_eq!(middle_run(&[4, 8, 3], &[]), None, "no axes");
    }

    /// The swapped model against tract's own, bit for bit, on sums it takes and sums it leaves
    /// to tract; the input the caller holds comes back unchanged.
    #[test]
    fn matches_tracts_reduce_sum_bit_for_bit() {
        let cases: [(&[usize], &[usize]); 12] = [
            (&[1, 8, 3], &[1]),
            (&[1, 64, 17], &[1]),
            (&[3, 5, 4, 33], &[1, 2]),
            (&[2, 7, 1], &[1]),
            (&[2, 3, 1000, 6], &[2]),
            (&[2, 1, 9], &[1]),
            (&[1, 8, 3], &[2]),
            (&[1, 8, 3], &[1, 2]),
            (&[6, 8, 3], &[0]),
            (&[6, 8, 3], &[0, 1]),
            (&[4, 8, 3, 2], &[1, 3]),
            (&[4, 8, 3, 2], &[0, 2]),
        ];
        let mut taken = 0;
        let reducers = [Reducer::Sum, Reducer::MeanOfSquares];
        for (seed, ((shape, axes), reducer)) in
            cases.iter().flat_map(|c| reducers.map(|r| (c, r))).enumerate()
        {
            let x = values(shape, seed as u32);
            let mut model = TypedModel::default();
            let s = model.add_source("x", f32::fact(*shape)).unwrap();
            let op = Reduce::new((*axes).into(), reducer);
            let out = model.wire_node("sum", op, &[s]).unwrap();
            model.select_output_outlets(&out).unwrap();
            let want = model.clone().into_runnable().unwrap().run(tvec!(x.clone().into())).unwrap();
            let swapped = swapped_in(model);
            assert!(swapped.nodes.iter().any(|n| n.op_is::<AxisSum>()), "nothing swapped");
            taken += usize::from(middle_run(shape, axes).is_some());
            let held = x.clone().into_tvalue();
            let got = swapped.into_runnable().unwrap().run(tvec!(held.clone())).unwrap();
            let case = format!("{reducer:?} of {shape:?} over {axes:?}");
            assert_eq!(got[0].shape(), want[0].shape(), "{case}");
            assert_eq!(bits(&got[0]), bits(&want[0]), "{case}");
            assert_eq!(bits(&held), bits(&x.clone().into_tvalue()), "{case}: the input was written to");
        }
        assert_eq!(taken, 12, "the first six cases run the loop, for both reducers");
    }

    #[test]
    fn other_types_and_reducers_stay_tracts() {
        let mut model = TypedModel::default();
        let s = model.add_source("x", f32::fact([1, 8, 3])).unwrap();
        let max = model.wire_node("max", Reduce::new(tvec![1], Reducer::Max), &[s]).unwrap();
        model.select_output_outlets(&max).unwrap();
        assert!(!swapped_in(model).nodes.iter().any(|n| n.op_is::<AxisSum>()));

        let mut model = TypedModel::default();
        let s = model.add_source("x", i32::fact([2, 5, 3])).unwrap();
        let sum = model.wire_node("sum", Reduce::new(tvec![1], Reducer::Sum), &[s]).unwrap();
        model.select_output_outlets(&sum).unwrap();
        let x = Tensor::from_shape(&[2, 5, 3], &(0..30).collect::<Vec<i32>>()).unwrap();
        let got = swapped_in(model).into_runnable().unwrap().run(tvec!(x.into())).unwrap();
        let want: Vec<i32> =
            (0..2).flat_map(|o| (0..3).map(move |i| (0..5).map(|r| o * 15 + r * 3 + i).sum())).collect();
        assert_eq!(got[0].try_as_plain_ram().unwrap().as_slice::<i32>().unwrap(), &want[..]);
        assert_eq!(got[0].shape(), &[2, 1, 3]);
    }
}

//! tract's f32 `Pad` as row copies: constant, reflect and edge modes.
//!
//! tract 0.23.9 pads by filling an ndarray with the constant and assigning the input into a
//! sliced view of it: ndarray's generic `Zip`, one element at a time. tract puts an explicit
//! `Pad` in front of each lazy im2col (a 3x3 convolution's zero border), so the generated CNN
//! paid it on every convolution: 3.9% of its sandbox samples. [`RowPad`] wraps tract's op and
//! copies the input one innermost row at a time into an output filled with the constant: the
//! same values at the same places, bit for bit. A reflect or edge pad (silero VAD's STFT pads
//! its audio by reflection) then fills each padded hyperplane with one slice copy where tract
//! assigns a one-wide ndarray view per padded place, re-checking shapes and contiguity each
//! time: about 10% of silero's samples on the AMD EPYC machine. Every other case (other types,
//! reflect pads as long as their axis) runs tract's own code. Like the max-pool, only the
//! WebAssembly build swaps it in ([`swapped_in`]).

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::array::{Pad, PadMode};

/// tract's [`Pad`], with the f32 cases done by row and slice copies.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct RowPad(pub Pad);

/// `model` with every `Pad` replaced by [`RowPad`].
pub fn swapped_in(mut model: TypedModel) -> TypedModel {
    for node in &mut model.nodes {
        if let Some(pad) = node.op_as::<Pad>() {
            node.op = Box::new(RowPad(pad.clone()));
        }
    }
    model
}

impl Op for RowPad {
    fn name(&self) -> StaticName {
        "WardenPad".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        self.0.info()
    }

    op_as_typed_op!();
}

impl EvalOp for RowPad {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        if let [input] = &inputs[..]
            && input.datum_type() == f32::datum_type()
            && self.0.pads.len() == input.rank()
            && input.rank() > 0
        {
            match &self.0.mode {
                PadMode::Constant(value) => {
                    let value = value.cast_to_scalar::<f32>()?;
                    return Ok(tvec!(pad_rows(input, &self.0.pads, value)?.into_tvalue()));
                }
                mode @ (PadMode::Reflect | PadMode::Edge)
                    if mirrorable(input.shape(), &self.0.pads, mode) =>
                {
                    // tract fills with `T::default()`, then overwrites every padded place.
                    let mut output = pad_rows(input, &self.0.pads, 0.0)?;
                    mirror(&mut output, &self.0.pads, mode)?;
                    return Ok(tvec!(output.into_tvalue()));
                }
                _ => {}
            }
        }
        self.0.eval(ctx, inputs)
    }
}

impl TypedOp for RowPad {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.0.output_facts(inputs)
    }

    as_op!();
}

/// `input` (f32, rank >= 1, one `(before, after)` per axis) padded with `value`.
fn pad_rows(input: &Tensor, pads: &[(usize, usize)], value: f32) -> TractResult<Tensor> {
    let shape = input.shape();
    let out_shape: TVec<usize> = shape.iter().zip(pads).map(|(d, (a, b))| d + a + b).collect();
    let mut output = if value.to_bits() == 0 {
        Tensor::zero::<f32>(&out_shape)?
    } else {
        tract_ndarray::ArrayD::from_elem(tract_ndarray::IxDyn(&out_shape), value).into_tensor()
    };
    let x = input.try_as_plain_ram()?.as_slice::<f32>()?;
    let mut view = output.try_as_plain_ram_mut()?;
    let out = view.as_slice_mut::<f32>()?;
    let rank = shape.len();
    let row = shape[rank - 1];
    if x.is_empty() || row == 0 {
        return Ok(output);
    }
    // Row-major strides of the output, in elements.
    let mut strides: TVec<usize> = tvec![1; rank];
    for axis in (0..rank - 1).rev() {
        strides[axis] = strides[axis + 1] * out_shape[axis + 1];
    }
    // The output offset of input row 0's first element; each input row then steps an odometer
    // over the leading axes.
    let mut at: usize = pads.iter().zip(&strides).map(|((before, _), s)| before * s).sum();
    let mut index: TVec<usize> = tvec![0; rank - 1];
    for src in x.chunks_exact(row) {
        out[at..at + row].copy_from_slice(src);
        for axis in (0..rank - 1).rev() {
            index[axis] += 1;
            at += strides[axis];
            if index[axis] < shape[axis] {
                break;
            }
            index[axis] = 0;
            at -= shape[axis] * strides[axis];
        }
    }
    Ok(output)
}

/// Whether every padded place of a reflect or edge pad copies from the input's own span of its
/// axis (`before` and `after` under the axis's length for reflect, a non-empty axis for edge),
/// as in ONNX and numpy. tract's loop would read other places, or panic, otherwise; those
/// cases run tract's own code.
fn mirrorable(shape: &[usize], pads: &[(usize, usize)], mode: &PadMode) -> bool {
    !shape.contains(&0)
        && shape.iter().zip(pads).all(|(&d, &(before, after))| match mode {
            PadMode::Reflect => before < d && after < d,
            _ => true,
        })
}

/// Fills the padded places of `output` (the input already copied into its middle) as tract's
/// reflect or edge pad does: axis by axis in order, the `before` hyperplanes from first to last,
/// then the `after` ones, each a copy of one hyperplane of the axis's middle span, whole (so
/// later axes copy what earlier ones wrote, and corners come out as in tract's).
fn mirror(output: &mut Tensor, pads: &[(usize, usize)], mode: &PadMode) -> TractResult<()> {
    let shape: TVec<usize> = output.shape().into();
    let mut view = output.try_as_plain_ram_mut()?;
    let out = view.as_slice_mut::<f32>()?;
    for (axis, &(before, after)) in pads.iter().enumerate() {
        let n = shape[axis];
        let inner: usize = shape[axis + 1..].iter().product();
        let reflect = matches!(mode, PadMode::Reflect);
        // (target, source) places along the axis, in tract's order.
        let heads = (0..before).map(|i| (i, if reflect { 2 * before - i } else { before }));
        let tails =
            (0..after).map(|i| (n - after + i, if reflect { n - after - 2 - i } else { n - after - 1 }));
        let places: TVec<(usize, usize)> = heads.chain(tails).collect();
        if places.is_empty() {
            continue;
        }
        for block in out.chunks_exact_mut(n * inner) {
            for &(target, source) in &places {
                block.copy_within(source * inner..(source + 1) * inner, target * inner);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::probe::tests::bits;

    /// Reflect and edge pads against tract's own op, bit for bit: ranks 1 to 4, pads on one
    /// axis and on several (corners), pads up to one under the axis's length, and cases the
    /// swap leaves to tract (a reflect pad as long as its axis, an empty axis).
    #[test]
    fn matches_tracts_reflect_and_edge_pads() {
        type Case<'a> = (&'a [usize], &'a [(usize, usize)]);
        let cases: &[Case] = &[
            (&[8], &[(3, 2)]),
            (&[1, 576], &[(0, 0), (64, 64)]),
            (&[1, 1, 10], &[(0, 0), (0, 0), (9, 9)]),
            (&[3, 4], &[(2, 1), (3, 3)]),
            (&[2, 3, 4], &[(1, 1), (2, 0), (0, 3)]),
            (&[2, 3, 2, 5], &[(1, 0), (0, 2), (1, 1), (4, 1)]),
            (&[4, 5], &[(0, 0), (5, 0)]),
            (&[2, 0, 3], &[(0, 0), (0, 0), (1, 1)]),
        ];
        let mut swapped_cases = 0;
        for (shape, pads) in cases {
            for mode in [PadMode::Reflect, PadMode::Edge] {
                let len: usize = shape.iter().product();
                let values: Vec<f32> = (0..len)
                    .map(|i| match i % 11 {
                        3 => f32::NAN,
                        7 => -0.0,
                        k => i as f32 * 0.5 - k as f32,
                    })
                    .collect();
                let input = Tensor::from_shape(shape, &values).unwrap();
                swapped_cases += usize::from(mirrorable(shape, pads, &mode));
                let pad = Pad::new(pads.to_vec(), mode.clone());
                let mut model = TypedModel::default();
                let source = model.add_source("x", f32::fact(*shape)).unwrap();
                let out = model.wire_node("pad", pad, &[source]).unwrap();
                model.select_output_outlets(&out).unwrap();
                let runnable = model.clone().into_runnable().unwrap();
                // tract panics where a reflect reads past its own data; so must the swap not.
                let want = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    runnable.run(tvec!(input.clone().into()))
                }));
                let swapped = swapped_in(model);
                assert!(swapped.nodes.iter().any(|n| n.op_is::<RowPad>()), "no pad to swap");
                let swapped = swapped.into_runnable().unwrap();
                let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    swapped.run(tvec!(input.clone().into()))
                }));
                let case = format!("{shape:?} {pads:?} {mode:?}");
                match (want, got) {
                    (Ok(want), Ok(got)) => {
                        let (want, got) = (want.unwrap(), got.unwrap());
                        assert_eq!(got[0].shape(), want[0].shape(), "{case}");
                        assert_eq!(bits(&got[0]), bits(&want[0]), "{case}");
                    }
                    (Err(_), Err(_)) => {}
                    (want, got) => panic!("{case}: tract ok {}, swap ok {}", want.is_ok(), got.is_ok()),
                }
            }
        }
        assert_eq!(swapped_cases, 2 * 6 + 1, "reflect takes six cases, edge seven");
    }

    /// The row copies against tract's own op: every rank from 1 to 4, zero and non-zero pads on
    /// each axis, empty axes, a zero and a non-zero constant, and NaN and signed-zero values
    /// carried through unchanged.
    #[test]
    fn matches_tracts_pad_on_every_axis() {
        type Case<'a> = (&'a [usize], &'a [(usize, usize)]);
        let cases: &[Case] = &[
            (&[5], &[(2, 1)]),
            (&[5], &[(0, 0)]),
            (&[3, 4], &[(1, 0), (0, 2)]),
            (&[3, 4], &[(0, 0), (3, 3)]),
            (&[2, 3, 4], &[(1, 1), (0, 1), (2, 0)]),
            (&[1, 2, 5, 6], &[(0, 0), (0, 0), (1, 1), (1, 1)]),
            (&[2, 3, 2, 3], &[(1, 0), (0, 2), (0, 1), (2, 2)]),
            (&[2, 0, 3], &[(1, 1), (1, 0), (0, 1)]),
        ];
        for (shape, pads) in cases {
            for value in [0.0f32, -1.5] {
                let len: usize = shape.iter().product();
                let values: Vec<f32> = (0..len)
                    .map(|i| match i % 7 {
                        2 => f32::NAN,
                        4 => -0.0,
                        k => k as f32 * 0.25 - 1.0,
                    })
                    .collect();
                let input = Tensor::from_shape(shape, &values).unwrap();
                let pad = Pad::new(pads.to_vec(), PadMode::Constant(Arc::new(value.into())));
                let mut model = TypedModel::default();
                let source = model.add_source("x", f32::fact(*shape)).unwrap();
                let out = model.wire_node("pad", pad, &[source]).unwrap();
                model.select_output_outlets(&out).unwrap();
                let want = model.clone().into_runnable().unwrap().run(tvec!(input.clone().into())).unwrap();
                let swapped = swapped_in(model);
                assert!(swapped.nodes.iter().any(|n| n.op_is::<RowPad>()), "no pad to swap");
                let got = swapped.into_runnable().unwrap().run(tvec!(input.into())).unwrap();
                assert_eq!(got[0].shape(), want[0].shape(), "{shape:?} {pads:?}");
                assert_eq!(bits(&got[0]), bits(&want[0]), "{shape:?} {pads:?} {value}");
            }
        }
    }
}

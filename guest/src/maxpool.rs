//! tract's 2x2, stride-2 f32 max-pool over NCHW, vectorized for WebAssembly.
//!
//! tract 0.23.9 pools that case one output at a time with `f32::max`, which WebAssembly has no
//! instruction for (its `f32.max` propagates NaN): each `max` is a call to `fmaxf`, and each
//! call pays the sandbox's epoch check on entry. It took about a third of the generated CNN's
//! time. [`StridedMaxPool`] wraps tract's optimized op and computes that one case four outputs
//! at a time with `f32x4.pmax`, in tract's order and with its NaN rule (a NaN input never wins,
//! as with `f32::max`); every other case runs tract's own code. Only the WebAssembly build
//! swaps it in ([`swapped_in`]), so native tract stays what the benchmarks compare against.
//!
//! A ReLU right before the pool (tract's by-scalar `max` with `+0.0`, whose only reader is the
//! pool) is folded into it: the pool then starts its fold from `+0.0` instead of `f32::MIN`.
//! The ReLU is monotone, so pooling first gives the same values, and with the rules of
//! tract's WebAssembly ReLU (`pmax(0, v)`: a NaN or a -0.0 gives +0.0) the same bits; the ReLU's own pass over the
//! pool's four-times-larger input is gone (2.8% of the generated CNN's sandbox samples: tract
//! cannot fuse it into the convolution's kernel across the reshape between them).

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::OptBinByScalar;
use tract_onnx::tract_core::ops::cnn::OptMaxPool;
use tract_onnx::tract_core::ops::cnn::pools::ConcretePoolGeometry;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::nn::DataShape;
use tract_onnx::tract_core::tract_linalg::BinOp;

/// tract's [`OptMaxPool`], with the 2x2 stride-2 f32 NCHW case vectorized, and the ReLU
/// before it folded in when `relu` is set.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct StridedMaxPool {
    pub pool: OptMaxPool,
    pub relu: bool,
}

/// `model` with every optimized max-pool replaced by [`StridedMaxPool`], and each ReLU that
/// only feeds one of them folded into it.
pub fn swapped_in(mut model: TypedModel) -> TypedModel {
    let mut folded = false;
    for id in 0..model.nodes.len() {
        let Some(pool) = model.nodes[id].op_as::<OptMaxPool>() else { continue };
        let pool = pool.clone();
        let relu = pool.with_index_outputs.is_none() && fold_relu(&mut model, id);
        folded |= relu;
        model.nodes[id].op = Box::new(StridedMaxPool { pool, relu });
    }
    // Drops the ReLUs no one reads any more.
    if folded { crate::graph::compacted(model) } else { model }
}

/// Rewires the pool `pool` to read past a ReLU in front of it, if there is one it may fold:
/// tract's by-scalar f32 `max` with a constant `+0.0`, read by this pool alone and not a model
/// output.
fn fold_relu(model: &mut TypedModel, pool: usize) -> bool {
    let [input] = model.nodes[pool].inputs[..] else { return false };
    let relu = &model.nodes[input.node];
    let is_relu = relu.op_as::<OptBinByScalar>().is_some_and(|op| op.linalg_op == BinOp::Max)
        && relu.outputs.len() == 1
        && relu.outputs[0].successors.len() == 1
        && relu.outputs[0].fact.datum_type == f32::datum_type()
        && !model.outputs.contains(&input);
    let zero = |outlet: &OutletId| {
        model.nodes[outlet.node].op_as::<Const>().is_some_and(|c| {
            let t = c.val();
            t.datum_type() == f32::datum_type()
                && t.len() == 1
                && t.try_as_plain_ram().is_ok_and(|r| r.as_slice::<f32>().is_ok_and(|v| v[0].to_bits() == 0))
        })
    };
    let [data, scalar] = relu.inputs[..] else { return false };
    if !is_relu || !zero(&scalar) || !model.outlet_fact(data).is_ok_and(|f| f.datum_type == f32::datum_type())
    {
        return false;
    }
    crate::graph::rewire(model, pool, &[data]);
    true
}

impl Op for StridedMaxPool {
    fn name(&self) -> StaticName {
        "WardenMaxPool".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let mut info = self.pool.info()?;
        if self.relu {
            info.push("ReLU folded in".into());
        }
        Ok(info)
    }

    op_as_typed_op!();
}

impl EvalOp for StridedMaxPool {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        if self.pool.with_index_outputs.is_none()
            && inputs.len() == 1
            && inputs[0].datum_type() == f32::datum_type()
        {
            let geo = self.pool.geometry.to_concrete(inputs[0].shape())?;
            let start = if self.relu { 0.0 } else { f32::MIN };
            if let Some(out) = pool_2x2_s2(&inputs[0], &geo, start)? {
                return Ok(tvec!(out.into_tvalue()));
            }
        }
        let mut outputs = self.pool.eval(ctx, inputs)?;
        if self.relu {
            let mut out = outputs.remove(0).into_tensor();
            // tract's ReLU in WebAssembly, `pmax(0, v)`: a NaN gives +0.0, and so does -0.0.
            let relu = |v: &mut f32| *v = if 0.0 < *v { *v } else { 0.0 };
            out.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?.iter_mut().for_each(relu);
            outputs.insert(0, out.into_tvalue());
        }
        Ok(outputs)
    }
}

impl TypedOp for StridedMaxPool {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.pool.output_facts(inputs)
    }

    as_op!();
}

/// The pool of `input` if it is the case this op vectorizes: a 2x2 kernel, strides 2, no
/// dilation or padding, channels before the spatial axes, and every window inside the image.
/// Each output folds its window from `start`: `f32::MIN`, or `+0.0` for a folded ReLU.
fn pool_2x2_s2(input: &Tensor, geo: &ConcretePoolGeometry, start: f32) -> TractResult<Option<Tensor>> {
    let spec = &geo.patch.spec;
    let plain = spec.kernel_shape[..] == [2, 2]
        && spec.strides[..] == [2, 2]
        && spec.dilations.iter().all(|d| *d == 1)
        && geo.patch.pad_before.iter().all(|p| *p == 0)
        && !geo.input_shape.fmt.c_is_last()
        && geo.input_shape.hw_dims().len() == 2;
    if !plain {
        return Ok(None);
    }
    let (h, w) = (geo.input_shape.hw_dims()[0], geo.input_shape.hw_dims()[1]);
    let (oh, ow) = (geo.patch.output_shape[0], geo.patch.output_shape[1]);
    let unit_w = |shape: &DataShape| shape.hw_strides().last() == Some(&1);
    let empty = oh == 0 || ow == 0;
    if empty || oh * 2 > h || ow * 2 > w || !unit_w(&geo.input_shape) || !unit_w(&geo.output_shape) {
        return Ok(None);
    }
    let planes = geo.input_shape.n().unwrap_or(&1) * geo.input_shape.c();
    let (in_plane, out_plane) = (h * w, oh * ow);
    // Each (n, c) plane must be contiguous, planes one after another, in and out.
    let packed = |shape: &DataShape, plane: usize| {
        *shape.c_stride() == plane && shape.n_stride().is_none_or(|s| *s == plane * shape.c())
    };
    if !packed(&geo.input_shape, in_plane) || !packed(&geo.output_shape, out_plane) {
        return Ok(None);
    }
    let x = input.try_as_plain_ram()?.as_slice::<f32>()?;
    // Pooled straight into the output tensor: no second buffer to copy from.
    let mut output = Tensor::zero::<f32>(&geo.output_shape.shape)?;
    let mut view = output.try_as_plain_ram_mut()?;
    let out = view.as_slice_mut::<f32>()?;
    ensure!(out.len() == planes * out_plane && x.len() == planes * in_plane, "max-pool geometry");
    for (src, dst) in x.chunks_exact(in_plane).zip(out.chunks_exact_mut(out_plane)) {
        for (oy, row) in dst.chunks_exact_mut(ow).enumerate() {
            let r0 = &src[2 * oy * w..][..2 * ow];
            let r1 = &src[(2 * oy + 1) * w..][..2 * ow];
            pool_row(r0, r1, row, start);
        }
    }
    Ok(Some(output))
}

/// `out[x]` = the max of `r0[2x]`, `r0[2x + 1]`, `r1[2x]`, `r1[2x + 1]`, folded from `start`
/// in that order with `m = if m < v { v } else { m }`: tract's fold, where a NaN never wins.
fn pool_row(r0: &[f32], r1: &[f32], out: &mut [f32], start: f32) {
    for x in vectorized(r0, r1, out, start)..out.len() {
        let taps = [r0[2 * x], r0[2 * x + 1], r1[2 * x], r1[2 * x + 1]];
        out[x] = taps.into_iter().fold(start, |m, v| if m < v { v } else { m });
    }
}

/// [`pool_row`] four outputs at a time; returns how many it wrote. A row whose length is not a
/// multiple of four ends with one overlapping step over its last four outputs (each output is a
/// function of its own taps, so writing one twice writes the same value), so that no scalar
/// tail is left: the CNN's rows are 14 and 7 outputs long.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn vectorized(r0: &[f32], r1: &[f32], out: &mut [f32], start: f32) -> usize {
    use std::arch::wasm32::*;
    // Eight taps as two contiguous loads, then split into even and odd lanes. `step` only
    // takes `x <= n - 4`, and both rows hold `2n` taps.
    let split = |v: &[f32]| {
        let v: &[f32; 8] = v.try_into().expect("eight taps");
        let lo = f32x4(v[0], v[1], v[2], v[3]);
        let hi = f32x4(v[4], v[5], v[6], v[7]);
        (i32x4_shuffle::<0, 2, 4, 6>(lo, hi), i32x4_shuffle::<1, 3, 5, 7>(lo, hi))
    };
    let step = |x: usize, out: &mut [f32]| {
        let (a_even, a_odd) = split(&r0[2 * x..2 * x + 8]);
        let (b_even, b_odd) = split(&r1[2 * x..2 * x + 8]);
        // `f32x4_pmax(m, v)` is `m < v ? v : m`, lane by lane: the same fold, in the same order.
        let mut m = f32x4_splat(start);
        m = f32x4_pmax(m, a_even);
        m = f32x4_pmax(m, a_odd);
        m = f32x4_pmax(m, b_even);
        m = f32x4_pmax(m, b_odd);
        let lanes = [
            f32x4_extract_lane::<0>(m),
            f32x4_extract_lane::<1>(m),
            f32x4_extract_lane::<2>(m),
            f32x4_extract_lane::<3>(m),
        ];
        out[x..x + 4].copy_from_slice(&lanes);
    };
    let n = out.len();
    if n < 4 {
        return 0;
    }
    let mut x = 0;
    while x + 4 <= n {
        step(x, out);
        x += 4;
    }
    if x < n {
        step(n - 4, out);
    }
    n
}

#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
fn vectorized(_: &[f32], _: &[f32], _: &mut [f32], _: f32) -> usize {
    0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::probe::tests::bits;
    use tract_onnx::tract_core::ops::cnn::{MaxPool, PaddingSpec, PoolSpec};
    use tract_onnx::tract_core::ops::nn::DataFormat;

    /// The vectorized pool against tract's own op, natively (where `pool_row` runs its scalar
    /// fold; the WebAssembly lanes are checked against ONNX Runtime by the reference tests).
    #[test]
    fn matches_tracts_max_pool_with_nans_and_odd_sizes() {
        // Sizes that pool to nothing (1x1, 3x1) are left to tract's op, which panics on them
        // (`chunks_mut(0)` in tract-core 0.23.9's 2x2 path), so they cannot be compared here.
        for (h, w) in [(4usize, 8usize), (5, 9), (6, 14), (2, 2)] {
            let values: Vec<f32> = (0..2 * 3 * h * w)
                .map(|i| match i % 11 {
                    3 => f32::NAN,
                    7 => f32::NEG_INFINITY,
                    k => (k as f32 - 5.0) * 0.37 * if i % 2 == 0 { 1.0 } else { -1.0 },
                })
                .collect();
            let input = Tensor::from_shape(&[2, 3, h, w], &values).unwrap();
            let mut model = TypedModel::default();
            let source = model.add_source("x", f32::fact([2, 3, h, w])).unwrap();
            let spec = PoolSpec::new(
                DataFormat::NCHW,
                tvec!(2, 2),
                PaddingSpec::Valid,
                None,
                Some(tvec!(2, 2)),
                3,
                3,
            );
            let pool = MaxPool::new(spec, None);
            let out = model.wire_node("pool", pool, &[source]).unwrap();
            model.select_output_outlets(&out).unwrap();
            let optimized = model.into_optimized().unwrap();
            let want = optimized.clone().into_runnable().unwrap().run(tvec!(input.clone().into())).unwrap();
            let swapped = swapped_in(optimized);
            assert!(swapped.nodes.iter().any(|n| n.op_is::<StridedMaxPool>()), "no max-pool to swap");
            let got = swapped.into_runnable().unwrap().run(tvec!(input.into())).unwrap();
            assert_eq!(bits(&got[0]), bits(&want[0]), "{h}x{w}");
        }
    }

    /// An optimized ReLU (`max(x, 0)`) and then a max-pool of `kernel` and `stride`, with the
    /// ReLU's output also a model output when `relu_is_output`.
    fn relu_then_pool(shape: [usize; 4], kernel: usize, stride: usize, relu_is_output: bool) -> TypedModel {
        let mut model = TypedModel::default();
        let source = model.add_source("x", f32::fact(shape)).unwrap();
        let zero = model.add_const("zero", tensor4(&[[[[0f32]]]])).unwrap();
        let relu =
            model.wire_node("relu", tract_onnx::tract_core::ops::math::max(), &[source, zero]).unwrap();
        let spec = PoolSpec::new(
            DataFormat::NCHW,
            tvec!(kernel, kernel),
            PaddingSpec::Valid,
            None,
            Some(tvec!(stride, stride)),
            shape[1],
            shape[1],
        );
        let pool = model.wire_node("pool", MaxPool::new(spec, None), &relu).unwrap();
        let outputs = if relu_is_output { vec![pool[0], relu[0]] } else { pool.to_vec() };
        model.select_output_outlets(&outputs).unwrap();
        model.into_optimized().unwrap()
    }

    /// The ReLU folded into the pool against tract's ReLU and pool, bit for bit but for the sign
    /// of zero, on the vectorized 2x2 path and tract's own (3x3, stride 1): NaNs, infinities,
    /// signed zeros,
    /// windows of only negatives, only NaNs, only -0.0. A ReLU that is also a model output
    /// stays.
    #[test]
    fn a_relu_before_the_pool_folds_into_it_bit_for_bit() {
        for (kernel, stride) in [(2usize, 2usize), (3, 1)] {
            let (h, w) = (6usize, 10usize);
            let mut values: Vec<f32> = (0..2 * 3 * h * w)
                .map(|i| match i % 13 {
                    3 => f32::NAN,
                    5 => f32::NEG_INFINITY,
                    8 => -0.0,
                    11 => f32::INFINITY,
                    k => (k as f32 - 6.0) * 0.41 * if i % 2 == 0 { 1.0 } else { -1.0 },
                })
                .collect();
            // Whole windows of one kind in the first plane: negatives, NaNs, -0.0.
            for (x, v) in [(0, -1.0), (2, f32::NAN), (4, -0.0)] {
                for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                    values[dy * w + x + dx] = v;
                }
            }
            let input = Tensor::from_shape(&[2, 3, h, w], &values).unwrap();
            let model = relu_then_pool([2, 3, h, w], kernel, stride, false);
            let want = model.clone().into_runnable().unwrap().run(tvec!(input.clone().into())).unwrap();
            let swapped = swapped_in(model);
            let pool = swapped.nodes.iter().find_map(|n| n.op_as::<StridedMaxPool>()).unwrap();
            assert!(pool.relu, "the ReLU was not folded ({kernel}x{kernel})");
            assert!(!swapped.nodes.iter().any(|n| n.op_is::<OptBinByScalar>()), "the ReLU is still run");
            let got = swapped.into_runnable().unwrap().run(tvec!(input.clone().into())).unwrap();
            // The sign of a zero is the one difference: natively tract's ReLU keeps -0.0 (x86's
            // `maxps`), in WebAssembly `f32::max` is `fmaxf`, which gives +0.0, as the fold does.
            let unsigned_zero = |t: &TValue| {
                bits(t).into_iter().map(|b| if b == (-0.0f32).to_bits() { 0 } else { b }).collect::<Vec<_>>()
            };
            assert_eq!(unsigned_zero(&got[0]), unsigned_zero(&want[0]), "{kernel}x{kernel} stride {stride}");
            assert!(bits(&got[0]).iter().all(|b| *b != (-0.0f32).to_bits()), "a -0.0 out of a folded ReLU");

            let kept = swapped_in(relu_then_pool([2, 3, h, w], kernel, stride, true));
            assert!(kept.nodes.iter().any(|n| n.op_is::<OptBinByScalar>()), "a ReLU that is an output went");
            assert!(kept.nodes.iter().all(|n| n.op_as::<StridedMaxPool>().is_none_or(|p| !p.relu)));
        }
    }
}

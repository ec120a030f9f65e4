//! Reading what one of tract's packing ops does by running it once on a probe input.
//!
//! `im2col` and `pack` replace ops whose types tract keeps private, so their parameters cannot
//! be read. Instead, [`probe`] runs the op on an f32 input of the same shape whose every element
//! holds its own index: each packed place then names the input element it came from, and the
//! replacement's plan is read off that map and proven against all of it before the swap.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::tract_linalg::mmm::PackedMatrixStorage;

/// Inputs larger than this (4 MiB of f32) are not probed, and keep tract's op: a probe costs
/// about one run of the op at load, and the load has a deadline. PP-OCR's largest packed
/// activation is a few hundred thousand values; a hostile chain of 200 products of 2048 x 2048
/// activations (`tests/fixtures/hostile/slow_matmul_chain.onnx`) must still load in time.
/// (Probe values are input indices stored as f32, exact up to 2^24, plus at most one.)
const MAX_PROBE_ELEMENTS: usize = 1 << 20;

/// `model` with every node whose op tract names `name` replaced by the op `swap` derives from
/// it, where it derives one (`None` or an error keeps tract's op). Equal ops on equal input
/// facts (a stack of identical layers) are probed once.
pub fn swap_ops<O: TypedOp + Clone>(
    mut model: TypedModel,
    name: &str,
    swap: impl Fn(&TypedModel, usize) -> TractResult<Option<O>>,
) -> TypedModel {
    let mut probed: Vec<(Box<dyn TypedOp>, TypedFact, Option<O>)> = Vec::new();
    for id in 0..model.nodes.len() {
        if model.nodes[id].op.name() != name {
            continue;
        }
        let Some(input) = model.nodes[id].inputs.first().and_then(|i| model.outlet_fact(*i).ok()) else {
            continue;
        };
        let op = &model.nodes[id].op;
        let known = probed.iter().find(|(o, fact, _)| o == op && fact == input);
        let swapped = match known {
            Some((_, _, swapped)) => swapped.clone(),
            None => {
                let swapped = swap(&model, id).ok().flatten();
                probed.push((op.clone(), input.clone(), swapped.clone()));
                swapped
            }
        };
        if let Some(op) = swapped {
            model.nodes[id].op = Box::new(op);
        }
    }
    model
}

/// What node `id`'s op made of the probe input.
pub struct Probe {
    /// Elements in the input (and the largest index it holds, plus one).
    pub len: usize,
    /// The op's output: packed matrices.
    pub output: TValue,
    /// tract's fact for that output, for the replacement to declare unchanged.
    pub fact: TypedFact,
}

impl Probe {
    /// The packed matrices the op produced.
    pub fn storage(&self) -> TractResult<&PackedMatrixStorage> {
        self.output.try_storage_as::<PackedMatrixStorage>()
    }
}

/// Runs node `id`'s op on the probe input; `None` unless the node has one f32 input of a
/// concrete shape small enough for exact indices, and one output.
pub fn probe(model: &TypedModel, id: usize) -> TractResult<Option<Probe>> {
    probe_from(model, id, 0)
}

/// [`probe`], with element `i` of the probe input holding `first + i` (so that, from 1, an
/// index can be told from a zero the op wrote itself).
pub fn probe_from(model: &TypedModel, id: usize, first: usize) -> TractResult<Option<Probe>> {
    let node = &model.nodes[id];
    let ([input], [output]) = (&node.inputs[..], &node.outputs[..]) else { return Ok(None) };
    let input_fact = model.outlet_fact(*input)?;
    let Some(shape) = input_fact.shape.as_concrete() else { return Ok(None) };
    let len: usize = shape.iter().product();
    if input_fact.datum_type != f32::datum_type() || len == 0 || len > MAX_PROBE_ELEMENTS {
        return Ok(None);
    }
    let indices = Tensor::from_shape(shape, &(first..first + len).map(|i| i as f32).collect::<Vec<f32>>())?;
    let Some(mut out) = node.op.eval_out_of_plan(tvec!(indices.into_tvalue()))? else { return Ok(None) };
    if out.len() != 1 {
        return Ok(None);
    }
    Ok(Some(Probe { len, output: out.remove(0), fact: output.fact.clone() }))
}

/// Test helpers shared by the swapped-in ops' tests.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec, PoolSpec};
    use tract_onnx::tract_core::ops::nn::DataFormat;

    /// The bits of an f32 output, so that NaNs and signed zeros compare exactly.
    pub fn bits(t: &TValue) -> Vec<u32> {
        t.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
    }

    /// Deterministic weights, mixed signs.
    pub fn weights(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 7 % 23) as f32 - 11.0) * 0.125).collect()
    }

    /// A convolution of a `[c, h, w]` image (batch 1, in `format`) with a `kernel`, the same
    /// stride and dilation on both axes; with the shape of its input.
    #[allow(clippy::too_many_arguments)]
    pub fn conv(
        format: DataFormat,
        [c, h, w]: [usize; 3],
        [kh, kw]: [usize; 2],
        stride: usize,
        dilation: usize,
        padding: PaddingSpec,
        group: usize,
        co: usize,
    ) -> (TypedModel, Vec<usize>) {
        let shape = if format == DataFormat::NHWC { vec![1, h, w, c] } else { vec![1, c, h, w] };
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact(&shape)).unwrap();
        let kernel =
            Tensor::from_shape(&[co, c / group, kh, kw], &weights(co * c / group * kh * kw)).unwrap();
        let kernel = model.add_const("w", kernel).unwrap();
        let bias = model.add_const("b", Tensor::from_shape(&[co], &weights(co)).unwrap()).unwrap();
        let spec = PoolSpec::new(
            format,
            tvec!(kh, kw),
            padding,
            Some(tvec!(dilation, dilation)),
            Some(tvec!(stride, stride)),
            c,
            co,
        );
        let conv = Conv { pool_spec: spec, kernel_fmt: KernelFormat::OIHW, group, q_params: None };
        let out = model.wire_node("conv", conv, &[x, kernel, bias]).unwrap();
        model.select_output_outlets(&out).unwrap();
        (model, shape)
    }

    /// Optimizes `model`, checks that `swapped_in` replaces every op tract names `tract_op` (at
    /// least one), and that the model gives the same outputs bit for bit on an input of
    /// `shape` with mixed values and negative zeros.
    pub fn swaps_all_and_matches(
        what: &str,
        model: TypedModel,
        shape: &[usize],
        tract_op: &str,
        swapped_in: fn(TypedModel) -> TypedModel,
    ) {
        let optimized = model.into_optimized().unwrap();
        let count = |m: &TypedModel| m.nodes.iter().filter(|n| n.op.name() == tract_op).count();
        let len: usize = shape.iter().product();
        let values: Vec<f32> = (0..len)
            .map(|i| match i % 13 {
                5 => -0.0,
                k => (k as f32 - 6.0) * 0.3 + (i / 13) as f32 * 0.01,
            })
            .collect();
        let input = Tensor::from_shape(shape, &values).unwrap();
        let want = optimized.clone().into_runnable().unwrap().run(tvec!(input.clone().into())).unwrap();
        let before = count(&optimized);
        let swapped = swapped_in(optimized);
        assert!(
            before > 0 && count(&swapped) == 0,
            "{what}: {} of {before} {tract_op} swapped",
            before - count(&swapped)
        );
        let got = swapped.into_runnable().unwrap().run(tvec!(input.into())).unwrap();
        assert_eq!(bits(&got[0]), bits(&want[0]), "{what}");
    }
}

//! tract's two-chain hard-swish, `x * clip(x + 3, 0, 6) * (1/6)`, in one loop.
//!
//! tract-core 0.23.9 fuses runs of element-wise steps into `OptBinChain`s, but a hard-swish
//! reads its input twice, so it becomes two chains: a gate `g = min(max(x + 3, 0), 6)`, then
//! `x * g * (1/6)` (in PP-OCR recognition followed by an add). The gate chain first copies `x`,
//! which the second still reads, and each chain then makes its own passes, a step at a time
//! over cache-sized blocks, in WebAssembly's four lanes. [`HardSwish`] computes the whole
//! thing per element in one loop that LLVM vectorizes, reading `x` once and writing the result
//! over it (in place when nothing else holds `x`). The steps are tract's, in tract's order,
//! with its WebAssembly kernels' rules (`max`/`min` by a scalar keep the scalar on a tie or a
//! NaN value), so the results are tract's bit for bit. Only these step lists are taken: the
//! gate `[add, max, min]` by scalars, then `[mul by the gate, mul]`, optionally followed by an
//! add of a scalar and an add of a same-shaped tensor; any other pair of chains stays tract's
//! (a general version that ran any steps through block buffers was slower than tract's own
//! chains: orientation 1.033x). A runtime case the loop cannot take (an operand that is not
//! one value) runs tract's two chains. Like the other swaps, only the WebAssembly build makes it
//! ([`swapped_in`]).

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::OptBinChain;
use tract_onnx::tract_core::tract_linalg::BinOp;
use tract_onnx::tract_core::tract_linalg::multithread::BShare;

/// tract's chain `b` whose first step multiplies its input by chain `a`'s result on the same
/// input, where `a` is a hard-swish gate. Inputs: `x`, then `a`'s three operands, then `b`'s
/// operands after its first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HardSwish {
    a: OptBinChain,
    b: OptBinChain,
    /// What `b` does after its multiply by the scalar, read off its steps at load.
    after: After,
}

/// The steps of the second chain after `* m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Nothing,
    /// `+ c`, a scalar.
    Shift,
    /// `+ r`, one value per element.
    Residual,
    /// `+ c`, then `+ r`.
    ShiftResidual,
}

/// `model` with every hard-swish pair of chains (the gate read by nothing else) replaced by a
/// [`HardSwish`].
pub fn swapped_in(mut model: TypedModel) -> TypedModel {
    let mut fused = false;
    for id in 0..model.nodes.len() {
        let Some((op, inputs)) = gated(&model, id) else { continue };
        crate::graph::rewire(&mut model, id, &inputs);
        model.nodes[id].op = Box::new(op);
        fused = true;
    }
    // Drops the gate chains no one reads any more.
    if fused { crate::graph::compacted(model) } else { model }
}

/// The fused op and its inputs for node `id`, if it is the second chain of a hard-swish.
fn gated(model: &TypedModel, id: usize) -> Option<(HardSwish, Vec<OutletId>)> {
    let node = &model.nodes[id];
    let b = node.op_as::<OptBinChain>()?;
    let (x, gate) = (*node.inputs.first()?, *node.inputs.get(1)?);
    let gate_node = &model.nodes[gate.node];
    let a = gate_node.op_as::<OptBinChain>()?;
    let gate_read_once = gate_node.outputs.len() == 1
        && gate_node.outputs[0].successors.len() == 1
        && !model.outputs.contains(&gate);
    let f32_input = model.outlet_fact(x).is_ok_and(|f| f.datum_type == f32::datum_type());
    let after = steps(a, b)?;
    if gate_node.inputs.first() != Some(&x) || !gate_read_once || !f32_input {
        return None;
    }
    let inputs = std::iter::once(x)
        .chain(gate_node.inputs[1..].iter().copied())
        .chain(node.inputs[2..].iter().copied())
        .collect();
    Some((HardSwish { a: a.clone(), b: b.clone(), after }, inputs))
}

/// What `b` does after its multiply, if `a` and `b` have the step lists [`HardSwish`] computes.
fn steps(a: &OptBinChain, b: &OptBinChain) -> Option<After> {
    use BShare::{Lockstep, PerBlock};
    use BinOp::{Add, Max, Min, Mul};
    let steps = |c: &OptBinChain| c.steps.iter().map(|s| (s.linalg_op, s.share)).collect::<Vec<_>>();
    if steps(a) != [(Add, PerBlock), (Max, PerBlock), (Min, PerBlock)] {
        return None;
    }
    match &steps(b)[..] {
        [(Mul, Lockstep), (Mul, PerBlock)] => Some(After::Nothing),
        [(Mul, Lockstep), (Mul, PerBlock), (Add, PerBlock)] => Some(After::Shift),
        [(Mul, Lockstep), (Mul, PerBlock), (Add, Lockstep)] => Some(After::Residual),
        [(Mul, Lockstep), (Mul, PerBlock), (Add, PerBlock), (Add, Lockstep)] => Some(After::ShiftResidual),
        _ => None,
    }
}

impl Op for HardSwish {
    fn name(&self) -> StaticName {
        "WardenHardSwish".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{:?} gating {:?}", self.a, self.b)])
    }

    op_as_typed_op!();
}

impl EvalOp for HardSwish {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, mut inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let split = self.a.steps.len();
        ensure!(inputs.len() == 1 + split + self.b.steps.len() - 1, "hard-swish inputs");
        let operands: TVec<TValue> = inputs.drain(1..).collect();
        let x = inputs.remove(0);
        let x = match self.fused(x, &operands)? {
            Ok(y) => return Ok(tvec!(y.into_tvalue())),
            Err(x) => x,
        };
        // tract's two chains, as they were.
        let a_inputs = std::iter::once(x.clone()).chain(operands[..split].iter().cloned()).collect();
        let gate = self.a.eval(ctx, a_inputs)?.remove(0);
        let b_inputs = [x, gate].into_iter().chain(operands[split..].iter().cloned()).collect();
        self.b.eval(ctx, b_inputs)
    }
}

impl TypedOp for HardSwish {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].without_value()))
    }

    as_op!();
}

impl HardSwish {
    /// `x * min(max(x + s1, s2), s3) * m`, then `+ c` and `+ r[i]` where the chain has them, in
    /// one loop over `x` (in place when nothing else holds it); or `x` back when an operand does
    /// not fit (a per-block operand of more than one value, another type, another length).
    fn fused(&self, x: TValue, operands: &[TValue]) -> TractResult<Result<Tensor, TValue>> {
        let f32s = |t: &Tensor| {
            t.datum_type() == f32::datum_type()
                && t.len() == t.shape().iter().product::<usize>()
                && t.strides() == &*Tensor::natural_strides(t.shape())
        };
        if !f32s(&x) || !operands.iter().all(|t| f32s(t)) {
            return Ok(Err(x));
        }
        let n = x.len();
        let scalar = |i: usize| -> TractResult<Option<f32>> {
            let v = operands[i].try_as_plain_ram()?.as_slice::<f32>()?;
            Ok(if let [v] = v { Some(*v) } else { None })
        };
        let (Some(s1), Some(s2), Some(s3), Some(m)) = (scalar(0)?, scalar(1)?, scalar(2)?, scalar(3)?) else {
            return Ok(Err(x));
        };
        // A NaN bound leaves the values as they were in tract's kernels; not worth a loop here.
        if s2.is_nan() || s3.is_nan() {
            return Ok(Err(x));
        }
        let gated = |x: f32| {
            let g = x + s1;
            let g = if s2 < g { g } else { s2 };
            x * if g < s3 { g } else { s3 }
        };
        // The operands after the multiply's, checked before `x` is taken.
        let values = |i: usize| -> TractResult<&[f32]> { operands[i].try_as_plain_ram()?.as_slice::<f32>() };
        let (c, r) = match self.after {
            After::Nothing => (None, None),
            After::Shift => (scalar(4)?, None),
            After::Residual => (None, Some(values(4)?)),
            After::ShiftResidual => (scalar(4)?, Some(values(5)?)),
        };
        let shift_fits = c.is_some() == matches!(self.after, After::Shift | After::ShiftResidual);
        if !shift_fits || r.is_some_and(|r| r.len() != n) {
            return Ok(Err(x));
        }
        let mut y = x.into_tensor();
        let mut view = y.try_as_plain_ram_mut()?;
        let out = view.as_slice_mut::<f32>()?;
        match (c, r) {
            (None, None) => out.iter_mut().for_each(|v| *v = gated(*v) * m),
            (Some(c), None) => out.iter_mut().for_each(|v| *v = gated(*v) * m + c),
            (None, Some(r)) => out.iter_mut().zip(r).for_each(|(v, r)| *v = gated(*v) * m + r),
            (Some(c), Some(r)) => out.iter_mut().zip(r).for_each(|(v, r)| *v = gated(*v) * m + c + r),
        }
        Ok(Ok(y))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::probe::tests::bits;
    use tract_onnx::tract_core::ops::math;

    /// What follows the hard-swish.
    #[derive(Clone, Copy, Debug)]
    enum Tail {
        None,
        /// `+ 0.25`.
        Shift,
        /// `+ r`.
        Residual,
        /// `+ 0.25`, then `+ r`: the one-loop path.
        ShiftAndResidual,
        /// `- 0.25`, `0.25 - y`, `- r`: not a tail the loop computes.
        Subtractions,
    }

    /// A hard-swish over `shape` as ONNX graphs spell it (`x * clip(x + 3, 0, 6) * (1/6)`),
    /// then `tail`, optimized by tract; with the gate also read by a second output when
    /// `gate_is_output`.
    fn hard_swish(shape: &[usize], tail: Tail, gate_is_output: bool) -> TypedModel {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact(shape)).unwrap();
        let r = model.add_source("r", f32::fact(shape)).unwrap();
        let rank = shape.len();
        let scalar = |model: &mut TypedModel, name: &str, v: f32| {
            let t = Tensor::from_shape(&vec![1; rank], &[v]).unwrap();
            model.add_const(name, t).unwrap()
        };
        let (three, zero, six, sixth) = (
            scalar(&mut model, "three", 3.0),
            scalar(&mut model, "zero", 0.0),
            scalar(&mut model, "six", 6.0),
            scalar(&mut model, "sixth", 1.0 / 6.0),
        );
        let g = model.wire_node("add3", math::add(), &[x, three]).unwrap();
        let g = model.wire_node("relu", math::max(), &[g[0], zero]).unwrap();
        let g = model.wire_node("relu6", math::min(), &[g[0], six]).unwrap();
        let y = model.wire_node("gate", math::mul(), &[x, g[0]]).unwrap();
        let mut y = model.wire_node("scale", math::mul(), &[y[0], sixth]).unwrap();
        let quarter = scalar(&mut model, "quarter", 0.25);
        match tail {
            Tail::None => {}
            Tail::Shift => y = model.wire_node("shift", math::add(), &[y[0], quarter]).unwrap(),
            Tail::Residual => y = model.wire_node("residual", math::add(), &[y[0], r]).unwrap(),
            Tail::ShiftAndResidual => {
                y = model.wire_node("shift", math::add(), &[y[0], quarter]).unwrap();
                y = model.wire_node("residual", math::add(), &[y[0], r]).unwrap();
            }
            Tail::Subtractions => {
                y = model.wire_node("sub", math::sub(), &[y[0], quarter]).unwrap();
                y = model.wire_node("subf", math::sub(), &[quarter, y[0]]).unwrap();
                y = model.wire_node("residual", math::sub(), &[y[0], r]).unwrap();
            }
        }
        let mut outputs = vec![y[0]];
        if gate_is_output {
            outputs.push(g[0]);
        }
        model.select_output_outlets(&outputs).unwrap();
        model.into_optimized().unwrap()
    }

    fn inputs(shape: &[usize]) -> TVec<TValue> {
        let n: usize = shape.iter().product();
        let x: Vec<f32> = (0..n)
            .map(|i| match i % 17 {
                0 => -3.0,
                1 => -0.0,
                2 => f32::INFINITY,
                3 => f32::NEG_INFINITY,
                4 => 1e30,
                k => (k as f32 - 9.0) * 0.77 + (i % 5) as f32 * 0.013,
            })
            .collect();
        let r: Vec<f32> = (0..n).map(|i| (i % 13) as f32 * 0.5 - 3.0).collect();
        tvec!(Tensor::from_shape(shape, &x).unwrap().into(), Tensor::from_shape(shape, &r).unwrap().into())
    }

    /// The one loop against tract's two chains, bit for bit: the hard-swish alone and with a
    /// shift and a residual after it, on two sizes; infinities, -0.0 and a value that makes the
    /// gate exactly 0 included (a NaN in the gate is where tract's native x86 kernels and its
    /// WebAssembly ones differ, so none is made here). A tail the loop does not compute stays
    /// tract's two chains.
    #[test]
    fn runs_tracts_two_chains_in_one_loop_bit_for_bit() {
        for shape in [vec![1usize, 4, 3, 5], vec![1, 7, 37, 29]] {
            for tail in [Tail::None, Tail::Shift, Tail::Residual, Tail::ShiftAndResidual, Tail::Subtractions]
            {
                let model = hard_swish(&shape, tail, false);
                let chains = model.nodes.iter().filter(|n| n.op_is::<OptBinChain>()).count();
                assert!(chains >= 2, "tract no longer makes two chains ({chains})");
                let want = model.clone().into_runnable().unwrap().run(inputs(&shape)).unwrap();
                let swapped = swapped_in(model);
                let fused = swapped.nodes.iter().any(|n| n.op_is::<HardSwish>());
                assert_eq!(fused, !matches!(tail, Tail::Subtractions), "{shape:?} {tail:?}");
                let got = swapped.into_runnable().unwrap().run(inputs(&shape)).unwrap();
                assert_eq!(bits(&got[0]), bits(&want[0]), "{shape:?} {tail:?}");
            }
        }
    }

    /// A gate that something else also reads stays tract's.
    #[test]
    fn a_gate_read_twice_is_left_alone() {
        let swapped = swapped_in(hard_swish(&[1, 4, 3, 5], Tail::None, true));
        assert!(!swapped.nodes.iter().any(|n| n.op_is::<HardSwish>()));
    }
}

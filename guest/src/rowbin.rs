//! f32 add, subtract and multiply of a tensor by one row repeated over its leading axes,
//! as plain loops.
//!
//! tract turns most binary ops into its linalg kernels when it optimizes, but not a
//! `[.., H, W, C] op [1, .., 1, C]` broadcast whose `C` is not a multiple of the vector size
//! (tract-core 0.23.9, `OptBinUnicast::check_b_alignement`). Those keep the generic path: an
//! ndarray `Zip` calling the op through a function pointer once per element. In the WebAssembly
//! build that path matters: tract lays depthwise convolutions out channel-last there (it has a
//! channel-inner depthwise kernel for wasm, none for x86), so the per-channel scale and shift
//! of a batch norm that did not fold into its convolution become exactly that broadcast. In
//! PP-OCR's orientation model they took about 40% of the sandbox's time. [`RowBroadcastBin`]
//! wraps tract's op and runs that case row by row, in loops LLVM vectorizes (a row shorter than
//! 256 values repeated into a block of whole rows first, so that each pass of the loop, and of
//! the epoch check wasmtime puts in it, covers a few hundred values); the results are the same
//! IEEE operations on the same pairs, so bit for bit tract's. Every other case runs
//! tract's own code. Like the max-pool, only the WebAssembly build swaps it in ([`swapped_in`]).

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::tract_linalg::BinOp;

/// tract's [`TypedBinOp`], with the f32 row-broadcast case run as plain loops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowBroadcastBin {
    inner: TypedBinOp,
    op: BinOp,
}

/// `model` with every f32-capable add, subtract and multiply replaced by [`RowBroadcastBin`].
pub fn swapped_in(mut model: TypedModel) -> TypedModel {
    for node in &mut model.nodes {
        if let Some(bin) = node.op_as::<TypedBinOp>()
            && let Some(op @ (BinOp::Add | BinOp::Mul | BinOp::Sub | BinOp::SubF)) = bin.0.as_linalg_binop()
        {
            node.op = Box::new(RowBroadcastBin { inner: bin.clone(), op });
        }
    }
    model
}

impl Op for RowBroadcastBin {
    fn name(&self) -> StaticName {
        format!("Warden{}", self.inner.name()).into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        self.inner.info()
    }

    op_as_typed_op!();
}

impl EvalOp for RowBroadcastBin {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let out_f32 = self.inner.1.is_none_or(|dt| dt == f32::datum_type());
        if out_f32
            && let [a, b] = &inputs[..]
            && a.datum_type() == f32::datum_type()
            && b.datum_type() == f32::datum_type()
        {
            // The operand of the full shape is computed in place, the other is the row.
            if let Some(row) = row_len(a.shape(), b.shape()) {
                let (a, b) = args_2!(inputs);
                return Ok(tvec!(apply(a, &b, row, self.op)?.into_tvalue()));
            }
            if let Some(row) = row_len(b.shape(), a.shape()) {
                let (a, b) = args_2!(inputs);
                return Ok(tvec!(apply(b, &a, row, self.op.flip())?.into_tvalue()));
            }
        }
        self.inner.eval(ctx, inputs)
    }
}

impl TypedOp for RowBroadcastBin {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.inner.output_facts(inputs)
    }

    as_op!();
}

/// The row length if `small` is one row of `full` repeated over `full`'s leading axes: the
/// same rank, leading dimensions of 1, then `full`'s own trailing dimensions (at least one,
/// and at least one leading axis to repeat over). `None` for any other pair.
fn row_len(full: &[usize], small: &[usize]) -> Option<usize> {
    if full.len() != small.len() || full == small {
        return None;
    }
    let lead = small.iter().take_while(|d| **d == 1).count();
    let row: usize = small[lead..].iter().product();
    (lead > 0 && small[lead..] == full[lead..] && row > 0).then_some(row)
}

/// `full op row`, row by row, written over `full` (a copy when another node still holds it).
/// `op` is applied as `x = op(x, s)`, `x` from `full` and `s` from the row.
fn apply(full: TValue, row: &Tensor, len: usize, op: BinOp) -> TractResult<Tensor> {
    let mut full = full.into_tensor();
    let mut view = full.try_as_plain_ram_mut()?;
    let xs = view.as_slice_mut::<f32>()?;
    let plain = row.try_as_plain_ram()?;
    let ss = plain.as_slice::<f32>()?;
    ensure!(ss.len() == len && xs.len().is_multiple_of(len), "row broadcast geometry");
    // One loop per op: a closure picked per element would be a call per element again.
    fn each(xs: &mut [f32], ss: &[f32], f: impl Fn(f32, f32) -> f32) {
        // A short row is first repeated into a block of at least `BLOCK` values, and the
        // tensor is run block by block: a row of 8 would otherwise be too short for the
        // vectorized loop, and every pass of a loop pays wasmtime's epoch check. The pairs
        // are the same: a block starts on a row boundary and holds whole rows, and the tensor
        // is whole rows, so the last, shorter, chunk pairs with the block's first rows. Only
        // tensors of two blocks or more: the block costs a few copies to build.
        const BLOCK: usize = 256;
        let mut repeated: [f32; 2 * BLOCK];
        let ss = if ss.len() < BLOCK && xs.len() >= 2 * BLOCK {
            repeated = [0f32; 2 * BLOCK];
            let block = &mut repeated[..BLOCK.div_ceil(ss.len()) * ss.len()];
            block[..ss.len()].copy_from_slice(ss);
            let mut filled = ss.len();
            while filled < block.len() {
                let n = filled.min(block.len() - filled);
                block.copy_within(..n, filled);
                filled += n;
            }
            &*block
        } else {
            ss
        };
        for chunk in xs.chunks_mut(ss.len()) {
            for (x, s) in chunk.iter_mut().zip(ss) {
                *x = f(*x, *s);
            }
        }
    }
    match op {
        BinOp::Add => each(xs, ss, |x, s| x + s),
        BinOp::Mul => each(xs, ss, |x, s| x * s),
        BinOp::Sub => each(xs, ss, |x, s| x - s),
        BinOp::SubF => each(xs, ss, |x, s| s - x),
        BinOp::Min | BinOp::Max => bail!("row broadcast of {op:?}"),
    }
    Ok(full)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tract_onnx::tract_core::ops::binary::BinMiniOp;
    use tract_onnx::tract_core::ops::math;

    use super::*;

    fn values(shape: &[usize], seed: u32) -> Tensor {
        let n: usize = shape.iter().product();
        let special = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 0.0, f32::MIN_POSITIVE / 8.0];
        let v: Vec<f32> = (0..n as u32)
            .map(|i| {
                let k = i.wrapping_mul(2_654_435_761).wrapping_add(seed);
                if k % 23 == 0 {
                    special[(k as usize / 23) % special.len()]
                } else {
                    (k % 2001) as f32 / 77.0 - 13.0
                }
            })
            .collect();
        Tensor::from_shape(shape, &v).unwrap()
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        t.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn row_len_accepts_only_a_repeated_row() {
        assert_eq!(row_len(&[1, 3, 96, 88], &[1, 1, 1, 88]), Some(88));
        assert_eq!(row_len(&[3, 96, 88], &[1, 96, 88]), Some(96 * 88));
        assert_eq!(row_len(&[3, 96, 1], &[1, 96, 1]), Some(96));
        assert_eq!(row_len(&[3, 96, 88], &[1, 1, 1]), Some(1), "a scalar is a row of one");
        assert_eq!(row_len(&[3, 96, 88], &[1, 96, 1]), None);
        assert_eq!(row_len(&[3, 96, 88], &[3, 96, 88]), None, "same shapes are tract's unicast");
        assert_eq!(row_len(&[3, 96, 88], &[3, 1, 88]), None);
        assert_eq!(row_len(&[96, 88], &[1, 1, 88]), None, "ranks differ");
        assert_eq!(row_len(&[3, 0, 88], &[1, 0, 88]), None, "empty rows");
    }

    /// The swapped model against tract's own, bit for bit: every op, both operand orders, rows
    /// of every length around the vector width, shapes the fast path leaves to tract, and an
    /// input the caller still holds (which must come back unchanged).
    #[test]
    fn matches_tracts_binary_ops_bit_for_bit() {
        let ops: [fn() -> Box<dyn BinMiniOp>; 4] =
            [|| Box::new(math::Add), || Box::new(math::Mul), || Box::new(math::Sub), || Box::new(math::SubF)];
        let mut swapped_cases = 0;
        for mini in ops {
            for c in [1, 3, 4, 5, 15, 16, 17, 40, 88, 200] {
                let cases = [
                    (vec![1, 3, 7, c], vec![1, 1, 1, c]),
                    (vec![3, 241, c], vec![1, 1, c]), // many rows: blocks and a shorter last chunk
                    (vec![2, 5, c], vec![1, 5, c]),
                    (vec![2, 5, c], vec![1, 1, 1]),
                    (vec![2, 5, c], vec![2, 1, c]), // not a row: tract's path
                    (vec![2, 5, c], vec![2, 5, c]), // same shapes: tract's path
                ];
                for (full, small) in cases {
                    for swap in [false, true] {
                        let (x, y) = (values(&full, c as u32), values(&small, 7 * c as u32));
                        let (a, b) = if swap { (y, x) } else { (x, y) };
                        let mut model = TypedModel::default();
                        let sa = model.add_source("a", f32::fact(a.shape())).unwrap();
                        let sb = model.add_source("b", f32::fact(b.shape())).unwrap();
                        let out = model.wire_node("bin", TypedBinOp(mini(), None), &[sa, sb]).unwrap();
                        model.select_output_outlets(&out).unwrap();
                        let want = model.clone().into_runnable().unwrap();
                        let want = want.run(tvec!(a.clone().into(), b.clone().into())).unwrap();
                        let swapped = swapped_in(model);
                        assert!(
                            swapped.nodes.iter().any(|n| n.op_is::<RowBroadcastBin>()),
                            "nothing swapped"
                        );
                        swapped_cases += 1;
                        let (held_a, held_b) = (a.clone().into_tvalue(), b.clone().into_tvalue());
                        let got = swapped
                            .into_runnable()
                            .unwrap()
                            .run(tvec!(held_a.clone(), held_b.clone()))
                            .unwrap();
                        let case = format!("{} c={c} {full:?} {small:?} swap={swap}", mini().name());
                        assert_eq!(bits(&got[0]), bits(&want[0]), "{case}");
                        assert_eq!(got[0].shape(), want[0].shape(), "{case}");
                        assert_eq!(
                            (bits(&held_a), bits(&held_b)),
                            (bits(&a), bits(&b)),
                            "{case}: an input was written to"
                        );
                    }
                }
            }
        }
        assert_eq!(swapped_cases, 4 * 10 * 6 * 2);
    }
}

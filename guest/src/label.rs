//! Integer model outputs that tract casts to `TDim`, passed through as `i64` instead.
//!
//! tract-onnx 0.23.9 turns an ONNX `Cast` to int64 into a cast to `TDim`, its symbolic
//! dimension type: a classifier's label (`ArgMax`, then a reshape and a cast, as skl2onnx
//! writes it) leaves the graph as a tensor of `TDim`s, which [`crate::Engine`] casts back to
//! `i64` for the reply. The two casts (an allocation and a `TDim` per value each way) took
//! about 5% of digits' time in the sandbox. When such a cast reads an `i64` tensor and feeds
//! only the model's output (directly or through reshapes), [`swapped_in`] replaces it with
//! tract's `Identity`: the output is the same integers, already `i64`. Like the other swaps, only the WebAssembly build makes it.
//!
//! It also fixes such outputs beyond 32 bits: tract's round trip through `TDim` keeps only a
//! value's low 32 bits (`i64::MAX` comes back as -1, `1 << 40` as 0; the test pins it), so
//! before, a model whose int64 output passed through a `Cast` answered wrongly for those.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::cast::Cast;
use tract_onnx::tract_core::ops::change_axes::{AxisOp, IntoShape};
use tract_onnx::tract_core::ops::identity::Identity;

/// `model` with every `i64` -> `TDim` cast whose values only reach a model output (directly or
/// through reshapes) made an identity, and the facts on the way `i64`.
pub fn swapped_in(mut model: TypedModel) -> TypedModel {
    for id in 0..model.nodes.len() {
        let node = &model.nodes[id];
        if node.op_as::<Cast>().is_none_or(|c| c.to != DatumType::TDim) || node.inputs.len() != 1 {
            continue;
        }
        let is_i64 = model.outlet_fact(node.inputs[0]).is_ok_and(|f| f.datum_type == DatumType::I64);
        let Some(path) = path_to_output(&model, id).filter(|_| is_i64) else { continue };
        model.nodes[id].op = Box::new(Identity);
        for node in path {
            model.nodes[node].outputs[0].fact.datum_type = DatumType::I64;
        }
    }
    model
}

/// The nodes from `from` to a model output, if `from`'s values go only there: each has one
/// output, read by nothing or by exactly one reshape (which keeps its element type), and the
/// last is a model output read by nothing.
fn path_to_output(model: &TypedModel, from: usize) -> Option<Vec<usize>> {
    let mut path = vec![from];
    let mut at = from;
    loop {
        let node = &model.nodes[at];
        if node.outputs.len() != 1 {
            return None;
        }
        match node.outputs[0].successors[..] {
            [] => return model.outputs.contains(&OutletId::new(at, 0)).then_some(path),
            [next] if !model.outputs.contains(&OutletId::new(at, 0)) => {
                let next = &model.nodes[next.node];
                if !(next.op_is::<IntoShape>() || next.op_is::<AxisOp>()) || next.inputs.len() != 1 {
                    return None;
                }
                at = next.id;
                path.push(at);
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// An `i64` input cast to `TDim` as the model's output, and also through a second cast that
    /// has a reader: only the first becomes an identity. Small values come out as tract's own
    /// path gives them; large ones come out whole, where tract's round trip through `TDim`
    /// keeps only their low 32 bits.
    #[test]
    fn an_i64_label_cast_to_tdim_passes_through_as_i64() {
        let values = [7i64, -2, 0, i64::MAX, i64::MAX - 1, i64::MIN, 1 << 40];
        let mut model = TypedModel::default();
        let source = model.add_source("label", i64::fact([values.len()])).unwrap();
        let out = model.wire_node("cast", Cast { to: DatumType::TDim }, &[source]).unwrap();
        let inner = model.wire_node("inner", Cast { to: DatumType::TDim }, &[source]).unwrap();
        let back = model.wire_node("back", Cast { to: DatumType::I64 }, &inner).unwrap();
        model.select_output_outlets(&[out[0], back[0]]).unwrap();
        let input = tensor1(&values);
        let want = model.clone().into_runnable().unwrap().run(tvec!(input.clone().into())).unwrap();
        assert_eq!(want[0].datum_type(), DatumType::TDim, "tract's cast is no longer to TDim");

        let swapped = swapped_in(model);
        assert!(swapped.node(out[0].node).op_is::<Identity>(), "the output cast stayed");
        assert!(swapped.node(inner[0].node).op_is::<Cast>(), "a cast with a reader was replaced");
        let got = swapped.into_runnable().unwrap().run(tvec!(input.into())).unwrap();
        assert_eq!(got[0].datum_type(), DatumType::I64);
        let ints = |t: &Tensor| t.try_as_plain_ram().unwrap().as_slice::<i64>().unwrap().to_vec();
        assert_eq!(ints(&got[0]), values);
        let tracts = ints(&want[0].cast_to_dt(DatumType::I64).unwrap());
        for (v, t) in values.iter().zip(&tracts) {
            assert!(i32::try_from(*v).is_err() || v == t, "{v} comes out of tract's path as {t}");
        }
        assert_eq!(tracts, values.map(|v| i64::from(v as i32)), "tract's TDim round trip changed");
        assert_eq!(ints(&got[1]), tracts, "the cast that was left is not tract's");
    }

    /// The label path as skl2onnx writes it (`Reshape`, then `Cast` to int64), which tract
    /// optimizes to a cast to `TDim` followed by a reshape: the cast becomes an identity and
    /// the values come out whole.
    #[test]
    fn a_label_cast_before_a_reshape_passes_through_too() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/dtypes/cast_i64.onnx");
        let model = tract_onnx::onnx().model_for_path(path).unwrap().into_optimized().unwrap();
        assert!(model.nodes.iter().any(|n| n.op_as::<Cast>().is_some_and(|c| c.to == DatumType::TDim)));
        let swapped = swapped_in(model);
        assert!(!swapped.nodes.iter().any(|n| n.op_is::<Cast>()), "the cast stayed");
        let values = [1i64 << 62, -(1 << 40), 7, i64::MIN];
        let input = Tensor::from_shape(&[1, 4], &values).unwrap();
        let got = swapped.into_runnable().unwrap().run(tvec!(input.into())).unwrap();
        assert_eq!(got[0].datum_type(), DatumType::I64);
        assert_eq!(got[0].try_as_plain_ram().unwrap().as_slice::<i64>().unwrap(), values);
    }
}

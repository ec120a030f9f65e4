//! tract's eager im2col (`Im2col`) as one gather through a table.
//!
//! For a convolution whose kernel covers fewer than six taps, tract 0.23.9 builds the whole
//! packed im2col matrix before the product: its `Patcher` walks the kernel rows (one per input
//! channel and tap) and writes each row's values one at a time through tract's packing writer,
//! with two calls and a few divisions per row for the padded stretches at either end. silero
//! VAD's 1-D convolutions have rows of two to four values, so that per-row bookkeeping is most
//! of the work: about 14% of silero's samples on the AMD EPYC machine.
//!
//! [`TableIm2Col`] replaces tract's op. Like `im2col`, it does not recompute the geometry: at
//! load it runs tract's op once on a probe input whose element `i` holds `i + 1`, so every
//! packed place reads back either an input element's index plus one or `0` (a padded place,
//! tract's pad value being zero). That is the table; at run time each packed value is
//! `[0, input...][table[place]]`, one pass with no per-row work. Places outside the `k x r`
//! records of each panel (alignment and end padding, which the product never reads as
//! operands) are written as zeros. If the probe finds anything but zeros and in-range
//! indices, or the op has a second input (a pad value), tract's op stays. Only the WebAssembly
//! build swaps it in ([`swapped_in`]).

use std::alloc::Layout;
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::tract_linalg::mmm::{
    EagerPackedInput, MMMInputValue, PackedExoticFact, PackedMatrixStorage,
};

/// The name tract 0.23.9 gives its op (the type itself is private to tract-core).
const TRACT_OP: &str = "Im2col";

/// Tables larger than this many places (four bytes each, kept for the model's life; tract's op
/// writes as many floats at every run) keep tract's op.
const MAX_PLACES: usize = 1 << 20;

/// `model` with every eager im2col op that passes the probe replaced by [`TableIm2Col`].
pub fn swapped_in(model: TypedModel) -> TypedModel {
    crate::probe::swap_ops(model, TRACT_OP, TableIm2Col::probe)
}

/// One packed matrix (one batch item and group) of the output.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct Packed {
    /// tract's fact for it (format, `k`, `mn`), cloned into each run's output.
    fact: PackedExoticFact,
    /// Bytes from one panel to the next.
    panel_bytes: usize,
    mn: usize,
    /// The whole buffer's size and alignment, as tract's op allocates it.
    layout: Layout,
    /// Per panel, the `k * r` places' sources: `0` for a zero, `i + 1` for input element `i`.
    table: Vec<u32>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct Plan {
    /// Elements in the input tensor.
    len: usize,
    /// Values per panel record (`r`) times records (`k`).
    record_places: usize,
    packed: Vec<Packed>,
    batch_shape: TVec<usize>,
}

/// tract's eager `Im2col`, gathered through a table read off tract's own op.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct TableIm2Col {
    plan: Arc<Plan>,
    fact: TypedFact,
}

impl TableIm2Col {
    /// Runs node `id`'s op (tract's eager im2col) on a probe input and reads the table off its
    /// output; `None` if anything in it is not a zero or an input index.
    fn probe(model: &TypedModel, id: usize) -> TractResult<Option<TableIm2Col>> {
        let Some(probe) = crate::probe::probe_from(model, id, 1)? else { return Ok(None) };
        let storage = probe.storage()?;
        let mut packed = Vec::new();
        let mut record_places = None;
        for value in storage.values() {
            let Some(eager) = value.downcast_ref::<EagerPackedInput>() else { return Ok(None) };
            let (r, k, mn) = (eager.format().r(), eager.k(), eager.mn());
            let panels = mn.div_ceil(r.max(1));
            let places = k * r;
            if r == 0
                || k == 0
                || mn == 0
                || eager.panel_bytes < places * 4
                || eager.packed.len() < panels * eager.panel_bytes
                || panels * places > MAX_PLACES
                || record_places.is_some_and(|p| p != places)
            {
                return Ok(None);
            }
            record_places = Some(places);
            let bytes = eager.packed.as_bytes();
            let mut table = Vec::with_capacity(panels * places);
            for panel in 0..panels {
                let record = &bytes[panel * eager.panel_bytes..][..places * 4];
                for v in record.chunks_exact(4) {
                    let v = f32::from_ne_bytes(v.try_into().expect("four bytes"));
                    if !(v >= 0.0 && v <= probe.len as f32 && v.fract() == 0.0) {
                        return Ok(None);
                    }
                    table.push(v as u32);
                }
            }
            packed.push(Packed {
                fact: eager.fact.clone(),
                panel_bytes: eager.panel_bytes,
                mn: eager.mn,
                layout: Layout::from_size_align(bytes.len(), eager.packed.layout().align())?,
                table,
            });
        }
        let Some(record_places) = record_places else { return Ok(None) };
        let plan = Plan { len: probe.len, record_places, packed, batch_shape: storage.batch_shape().into() };
        Ok(Some(TableIm2Col { plan: Arc::new(plan), fact: probe.fact.clone() }))
    }
}

impl Op for TableIm2Col {
    fn name(&self) -> StaticName {
        "WardenIm2col".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let places: usize = self.plan.packed.iter().map(|p| p.table.len()).sum();
        Ok(vec![format!("matrices={} places={places}", self.plan.packed.len())])
    }

    op_as_typed_op!();
}

impl EvalOp for TableIm2Col {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        ensure!(
            input.datum_type() == f32::datum_type() && input.len() == self.plan.len,
            "im2col planned for {} f32 values, given {} {:?}",
            self.plan.len,
            input.len(),
            input.datum_type()
        );
        let plain = input.try_as_plain_ram()?;
        // Source 0 is the zero; source `i + 1` is element `i`.
        let mut sources = Vec::with_capacity(self.plan.len + 1);
        sources.push(0f32);
        sources.extend_from_slice(plain.as_slice::<f32>()?);
        let values = self
            .plan
            .packed
            .iter()
            .map(|p| {
                gathered(p, self.plan.record_places, &sources).map(|v| Box::new(v) as Box<dyn MMMInputValue>)
            })
            .collect::<TractResult<TVec<_>>>()?;
        let output =
            PackedMatrixStorage::new_batched(&self.plan.batch_shape, values).into_tensor(f32::datum_type());
        Ok(tvec!(output.into_tvalue()))
    }
}

/// One packed matrix: every panel's records gathered from `sources`, the rest of the buffer
/// zero.
fn gathered(p: &Packed, record_places: usize, sources: &[f32]) -> TractResult<EagerPackedInput> {
    let mut buffer = Tensor::zero_aligned::<f32>(&[p.layout.size() / 4], p.layout.align())?;
    let mut view = buffer.try_as_plain_ram_mut()?;
    let out = view.as_slice_mut::<f32>()?;
    let stride = p.panel_bytes / 4;
    for (panel, table) in out.chunks_mut(stride).zip(p.table.chunks_exact(record_places)) {
        for (o, &s) in panel.iter_mut().zip(table) {
            *o = sources[s as usize];
        }
    }
    Ok(EagerPackedInput {
        fact: p.fact.clone(),
        packed: Arc::new(buffer.into_blob()?),
        panel_bytes: p.panel_bytes,
        mn: p.mn,
    })
}

impl TypedOp for TableIm2Col {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        // tract's own fact, kept from the node replaced: what the matrix product was wired for.
        Ok(tvec!(self.fact.clone()))
    }

    as_op!();
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tract_onnx::tract_core::ops::cnn::PaddingSpec;
    use tract_onnx::tract_core::ops::nn::DataFormat;

    use super::*;
    use crate::probe::tests::{conv, swaps_all_and_matches};

    /// silero-like 1-D convolutions (as `[c, 1, w]` images with a `1 x kw` kernel) and 2-D ones
    /// with kernels of two to three taps, padded at either end and not, strides 1 and 2, both
    /// layouts, against tract's own op, bit for bit. (tract runs some such convolutions without
    /// an eager im2col, e.g. grouped ones; every case here has one.)
    #[test]
    fn matches_tracts_eager_im2col() {
        let cases = [
            ([129, 1, 4], [1, 3], 1, PaddingSpec::Explicit(tvec!(0, 1), tvec!(0, 1)), 1, 128),
            ([128, 1, 4], [1, 3], 2, PaddingSpec::Explicit(tvec!(0, 1), tvec!(0, 1)), 1, 64),
            ([64, 1, 2], [1, 3], 1, PaddingSpec::Explicit(tvec!(0, 1), tvec!(0, 1)), 1, 64),
            ([32, 1, 9], [1, 3], 1, PaddingSpec::Valid, 1, 32),
            ([64, 1, 6], [1, 2], 1, PaddingSpec::Explicit(tvec!(0, 1), tvec!(0, 0)), 1, 32),
            ([48, 3, 5], [3, 1], 1, PaddingSpec::Explicit(tvec!(1, 0), tvec!(1, 0)), 1, 16),
            ([64, 2, 3], [2, 2], 1, PaddingSpec::Valid, 1, 32),
        ];
        let mut skipped = Vec::new();
        for (i, (chw, kernel, stride, padding, group, co)) in cases.into_iter().enumerate() {
            for format in [DataFormat::NCHW, DataFormat::NHWC] {
                let (model, shape) = conv(format, chw, kernel, stride, 1, padding.clone(), group, co);
                let optimized = model.clone().into_optimized().unwrap();
                if !optimized.nodes.iter().any(|n| n.op.name() == TRACT_OP) {
                    skipped.push((i, format));
                    continue;
                }
                swaps_all_and_matches(&format!("case {i} {format:?}"), model, &shape, TRACT_OP, swapped_in);
            }
        }
        assert_eq!(skipped, vec![], "cases tract runs without an eager im2col");
    }
}

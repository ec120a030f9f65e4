//! tract's lazy im2col gather, with regular runs copied four floats at a time.
//!
//! For a convolution whose kernel covers six taps or more, tract 0.23.9 does not build the
//! im2col matrix: the matrix product asks for one packed panel of it at a time (`k` rows of
//! `r` columns), and tract's `LazyIm2Col` gathers each value of the panel from its own pair of
//! offsets, one scalar load and store at a time. In WebAssembly that gather took about a
//! quarter of the generated CNN's time. Yet most of a panel row is a contiguous stretch of the
//! input: neighbouring output pixels on one image row read neighbouring input pixels.
//!
//! [`SpanIm2Col`] replaces tract's op. It does not recompute the convolution's geometry: at
//! load it runs tract's own op once on a probe input whose every element holds its own index,
//! reads back which input element lands in each place of each panel, and proves that the map
//! is `row_offset[k] + column_offset[n]` everywhere before it keeps anything. From the column
//! offsets it builds each panel's runs (stretches of input elements one apart, or two apart for
//! a stride-2 convolution), and at run time it copies each run into every row of the panel
//! with 128-bit loads and stores. The values written, and where, are tract's, bit for
//! bit; if the probe finds anything it does not expect, tract's op stays. Only the
//! WebAssembly build swaps it in ([`swapped_in`]), so native tract stays what the benchmarks
//! compare against.
#![allow(unsafe_code)]

use std::alloc::Layout;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::tract_linalg::WeightType;
use tract_onnx::tract_core::tract_linalg::mmm::{
    EagerPackedInput, MMMInputFormat, MMMInputValue, PackedMatrixStorage,
};

/// The name tract 0.23.9 gives its op (the type itself is private to tract-core).
const TRACT_OP: &str = "LazyIm2col";

/// `model` with every lazy im2col op that passes the probe replaced by [`SpanIm2Col`].
pub fn swapped_in(model: TypedModel) -> TypedModel {
    crate::probe::swap_ops(model, TRACT_OP, SpanIm2Col::probe)
}

/// One stretch of a panel row: `len` values from input elements `src`, `src + step`, ... (plus
/// the row's offset), written from column `dst` on. `step` is 1 for a stride-1 convolution's
/// neighbouring pixels, 2 for a stride-2 one's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Run {
    dst: usize,
    len: usize,
    src: isize,
    step: isize,
}

/// Where every panel of one group's packed matrix comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Panels {
    /// Panel `i`'s runs are `runs[starts[i]..starts[i + 1]]`.
    starts: Vec<usize>,
    runs: Vec<Run>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Plan {
    format: SpanFormat,
    /// Elements in the input tensor.
    len: usize,
    /// Element offset of each of the `k` rows, relative to row 0.
    rows: Vec<isize>,
    /// One per group, in the order of tract's batched storage.
    groups: Vec<Panels>,
    batch_shape: TVec<usize>,
}

/// tract's [`LazyIm2Col`](https://docs.rs/tract-core) with panels gathered run by run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanIm2Col {
    plan: Arc<Plan>,
    fact: TypedFact,
}

impl Hash for SpanIm2Col {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.plan.hash(state);
    }
}

impl SpanIm2Col {
    /// Runs node `id`'s op (tract's lazy im2col) on a probe input and derives the plan that
    /// writes the same panels; `None` if the node is not a case the plan can express exactly.
    fn probe(model: &TypedModel, id: usize) -> TractResult<Option<SpanIm2Col>> {
        let Some(probe) = crate::probe::probe(model, id)? else { return Ok(None) };
        let storage = probe.storage()?;
        let values = storage.values();
        let Some(first) = values.first() else { return Ok(None) };
        let (r, k, mn) = (first.format().r(), first.k(), first.mn());
        let Some(layout) = first.scratch_panel_buffer_layout() else { return Ok(None) };
        if r == 0 || k == 0 || mn == 0 || layout.size() < k * r * 4 {
            return Ok(None);
        }
        let mut rows = None;
        let mut groups = Vec::with_capacity(values.len());
        for value in values {
            if (value.format().r(), value.k(), value.mn()) != (r, k, mn)
                || value.scratch_panel_buffer_layout() != Some(layout)
            {
                return Ok(None);
            }
            let panel = |i, buffer| value.panel_bytes(i, Some(buffer));
            let Some((offsets, column)) = decomposed(panel, (r, k, mn), layout, probe.len)? else {
                return Ok(None);
            };
            if rows.as_ref().is_some_and(|rows| *rows != offsets) {
                return Ok(None);
            }
            rows = Some(offsets);
            groups.push(panels_of(&column, r));
        }
        let Some(rows) = rows else { return Ok(None) };
        let format = SpanFormat { r, k, mn, panel_bytes: layout.size(), panel_align: layout.align() };
        let plan = Plan { format, len: probe.len, rows, groups, batch_shape: storage.batch_shape().into() };
        Ok(Some(SpanIm2Col { plan: Arc::new(plan), fact: probe.fact.clone() }))
    }
}

/// Reads the panels `panel_bytes` packs from the probe input (tract's op), and returns the row
/// offsets (relative to row 0) and column offsets such that the place at row `kk`, column `n`
/// holds input index `rows[kk] + column[n]`; `None` unless every place holds an index of the
/// input and the sum matches everywhere. Checked a panel at a time, so that no more than one
/// panel of the im2col matrix is ever held (lazy im2col exists not to hold it all).
#[allow(clippy::type_complexity)]
fn decomposed(
    panel_bytes: impl Fn(usize, *mut u8) -> TractResult<*const u8>,
    (r, k, mn): (usize, usize, usize),
    layout: Layout,
    len: usize,
) -> TractResult<Option<(Vec<isize>, Vec<isize>)>> {
    let (mut rows, mut column) = (Vec::with_capacity(k), Vec::with_capacity(mn));
    let mut buf = vec![0u8; layout.size() + layout.align()];
    let start = buf.as_ptr().align_offset(layout.align());
    for panel in 0..mn.div_ceil(r) {
        // All NaN first: a place tract's op left unwritten fails the check below.
        buf.fill(0xff);
        let ptr = buf.as_mut_ptr().wrapping_add(start);
        let got = panel_bytes(panel, ptr)?;
        if got != ptr.cast_const() {
            return Ok(None);
        }
        let width = r.min(mn - panel * r);
        for (row, line) in buf[start..start + k * r * 4].chunks_exact(r * 4).enumerate() {
            for (j, v) in line.chunks_exact(4).take(width).enumerate() {
                let v = f32::from_ne_bytes(v.try_into().expect("four bytes"));
                if !(v >= 0.0 && v < len as f32 && v.fract() == 0.0) {
                    return Ok(None);
                }
                let v = v as isize;
                if row == 0 {
                    column.push(v);
                }
                if panel == 0 && j == 0 {
                    rows.push(v - column[0]);
                }
                if v != rows[row] + column[panel * r + j] {
                    return Ok(None);
                }
            }
        }
    }
    Ok(Some((rows, column)))
}

/// The runs of each panel of width `r` over the columns' input offsets: a run goes on while
/// the offsets keep the step its first two set, if that step is 1 or 2.
fn panels_of(column: &[isize], r: usize) -> Panels {
    let mut starts = vec![0];
    let mut runs: Vec<Run> = Vec::new();
    for cols in column.chunks(r) {
        let first = runs.len();
        for (j, &src) in cols.iter().enumerate() {
            let in_panel = runs.len() > first;
            match runs.last_mut() {
                Some(run) if in_panel && run.len == 1 && matches!(src - run.src, 1 | 2) => {
                    run.step = src - run.src;
                    run.len = 2;
                }
                Some(run) if in_panel && run.len > 1 && run.src + run.len as isize * run.step == src => {
                    run.len += 1;
                }
                _ => runs.push(Run { dst: j, len: 1, src, step: 1 }),
            }
        }
        starts.push(runs.len());
    }
    Panels { starts, runs }
}

impl Op for SpanIm2Col {
    fn name(&self) -> StaticName {
        "WardenLazyIm2col".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let f = &self.plan.format;
        let runs: usize = self.plan.groups.iter().map(|g| g.runs.len()).sum();
        Ok(vec![format!("k={} mn={} r={} groups={} runs={runs}", f.k, f.mn, f.r, self.plan.groups.len())])
    }

    op_as_typed_op!();
}

impl EvalOp for SpanIm2Col {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        ensure!(
            input.datum_type() == f32::datum_type() && input.len() == self.plan.len,
            "lazy im2col planned for {} f32 values, given {} {:?}",
            self.plan.len,
            input.len(),
            input.datum_type()
        );
        let values: TVec<Box<dyn MMMInputValue>> = (0..self.plan.groups.len())
            .map(|group| {
                Box::new(SpanInput { tensor: input.clone(), plan: self.plan.clone(), group })
                    as Box<dyn MMMInputValue>
            })
            .collect();
        let output =
            PackedMatrixStorage::new_batched(&self.plan.batch_shape, values).into_tensor(f32::datum_type());
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for SpanIm2Col {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        // tract's own fact, kept from the node replaced: what the matrix product was wired for.
        Ok(tvec!(self.fact.clone()))
    }

    as_op!();
}

/// The packed-matrix format of [`SpanInput`]: tract's panel layout (`k` rows of `r` columns),
/// produced lazily. Deliberately not a `PackedFormat`: tract's matrix product walks the tiles
/// column-major when B is lazy, so that each B panel is gathered once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SpanFormat {
    r: usize,
    k: usize,
    mn: usize,
    panel_bytes: usize,
    panel_align: usize,
}

impl fmt::Display for SpanFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WardenLazyIm2col")
    }
}

impl MMMInputFormat for SpanFormat {
    fn prepare_tensor(&self, _t: &Tensor, _k_axis: usize, _mn_axis: usize) -> TractResult<Tensor> {
        bail!("lazy im2col is produced by its op, not packed from a tensor")
    }

    fn prepare_one_view(
        &self,
        _t: &TensorView,
        _k_axis: usize,
        _mn_axis: usize,
    ) -> TractResult<Box<dyn MMMInputValue>> {
        bail!("lazy im2col is produced by its op, not packed from a tensor")
    }

    fn precursor(&self) -> WeightType {
        WeightType::Plain(f32::datum_type())
    }

    fn r(&self) -> usize {
        self.r
    }

    fn k_alignment(&self) -> usize {
        1
    }

    fn mem_size(&self, k: TDim, mn: TDim) -> TDim {
        k * mn * 4
    }

    fn extract_at_mn_f16(&self, _: &EagerPackedInput, _: usize, _: &mut [f16]) -> TractResult<()> {
        bail!("lazy im2col has no eager data")
    }

    fn extract_at_mn_f32(&self, _: &EagerPackedInput, _: usize, _: &mut [f32]) -> TractResult<()> {
        bail!("lazy im2col has no eager data")
    }
}

impl ExoticFact for SpanFormat {
    fn buffer_sizes(&self) -> TVec<TDim> {
        tvec!((self.k * self.mn * 4).to_dim())
    }
}

/// One group's im2col matrix of one input, gathered a panel at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SpanInput {
    tensor: TValue,
    plan: Arc<Plan>,
    group: usize,
}

impl Hash for SpanInput {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self.tensor.as_bytes(), &self.plan, self.group).hash(state);
    }
}

impl fmt::Display for SpanInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WardenLazyIm2col input (group {})", self.group)
    }
}

impl MMMInputValue for SpanInput {
    fn format(&self) -> &dyn MMMInputFormat {
        &self.plan.format
    }

    fn scratch_panel_buffer_layout(&self) -> Option<Layout> {
        Layout::from_size_align(self.plan.format.panel_bytes, self.plan.format.panel_align).ok()
    }

    fn panel_bytes(&self, i: usize, buffer: Option<*mut u8>) -> TractResult<*const u8> {
        let plan = &*self.plan;
        let r = plan.format.r;
        let buffer = buffer.context("lazy im2col needs a panel buffer")?;
        let panels = &plan.groups[self.group];
        let runs = panels
            .starts
            .get(i..i + 2)
            .and_then(|ends| panels.runs.get(ends[0]..ends[1]))
            .with_context(|| format!("lazy im2col has no panel {i}"))?;
        let x = self.tensor.try_as_plain_ram()?.as_slice::<f32>()?;
        ensure!(
            x.len() == plan.len && buffer.align_offset(align_of::<f32>()) == 0,
            "lazy im2col input or panel buffer"
        );
        let out = buffer.cast::<f32>();
        // SAFETY: the reads: the probe proved, for every row `k` and column `n` of this group,
        // that `rows[k] + column[n]` is an index of an input of `plan.len` elements, and `x` has
        // that many. Each run stands for the columns `src + t * step`, `t < len`, and
        // `gather_run` reads nothing else. The writes: tract's matrix product hands each panel
        // a buffer of the layout `scratch_panel_buffer_layout` gives, at least `k * r` f32s
        // (checked when the plan was made) and aligned for f32 (checked above), that nothing else touches until this returns;
        // `gather_run` writes `line * r + dst + t` for `line < k` and `dst + t < r`.
        for run in runs {
            unsafe { gather_run(x.as_ptr(), out, r, &plan.rows, run) };
        }
        Ok(buffer.cast_const())
    }

    fn mn(&self) -> usize {
        self.plan.format.mn
    }

    fn k(&self) -> usize {
        self.plan.format.k
    }

    fn exotic_fact(&self) -> &dyn ExoticFact {
        &self.plan.format
    }

    fn extract_at_mn_f16(&self, _mn: usize, _slice: &mut [f16]) -> TractResult<()> {
        bail!("lazy im2col values are only read by panel")
    }

    fn extract_at_mn_f32(&self, _mn: usize, _slice: &mut [f32]) -> TractResult<()> {
        bail!("lazy im2col values are only read by panel")
    }
}

/// Writes one run into every row of a panel: `out[line * r + dst + t] = x[rows[line] + src +
/// t * step]`. The copy for the run's length and step is picked once, outside the loop over
/// rows: four values at a time (one 128-bit load and store in WebAssembly; two loads and a
/// shuffle for a step of 2), two at a time, or one. A run that is not a multiple of the width
/// ends with one overlapping copy of its last values. No copy reads an element the run does not
/// stand for.
///
/// # Safety
/// Every index named above must be inside `x`'s and `out`'s allocations.
#[inline]
unsafe fn gather_run(x: *const f32, out: *mut f32, r: usize, rows: &[isize], run: &Run) {
    /// `copy(s, d)` for every row's source and destination.
    #[inline(always)]
    unsafe fn each_row(
        src: *const f32,
        mut dst: *mut f32,
        r: usize,
        rows: &[isize],
        copy: impl Fn(*const f32, *mut f32),
    ) {
        for &row in rows {
            copy(unsafe { src.offset(row) }, dst);
            dst = unsafe { dst.add(r) };
        }
    }
    unsafe {
        let (src, dst, len) = (x.offset(run.src), out.add(run.dst), run.len);
        match (run.step, len) {
            (1, 1) => each_row(src, dst, r, rows, |s, d| *d = *s),
            (1, 2..=3) => each_row(src, dst, r, rows, |s, d| {
                copy2(s, d);
                copy2(s.add(len - 2), d.add(len - 2));
            }),
            (1, 4..=8) => each_row(src, dst, r, rows, |s, d| {
                copy4(s, d);
                copy4(s.add(len - 4), d.add(len - 4));
            }),
            (1, 9..=12) => each_row(src, dst, r, rows, |s, d| {
                copy4(s, d);
                copy4(s.add(4), d.add(4));
                copy4(s.add(len - 4), d.add(len - 4));
            }),
            (1, _) => each_row(src, dst, r, rows, |s, d| {
                let mut t = 0;
                while t + 4 <= len {
                    copy4(s.add(t), d.add(t));
                    t += 4;
                }
                copy4(s.add(len - 4), d.add(len - 4));
            }),
            (2, 4..=8) => each_row(src, dst, r, rows, |s, d| {
                copy4_every_other(s, d);
                copy4_every_other(s.add(2 * (len - 4)), d.add(len - 4));
            }),
            (2, 9..) => each_row(src, dst, r, rows, |s, d| {
                let mut t = 0;
                while t + 4 <= len {
                    copy4_every_other(s.add(2 * t), d.add(t));
                    t += 4;
                }
                copy4_every_other(s.add(2 * (len - 4)), d.add(len - 4));
            }),
            (step, _) => each_row(src, dst, r, rows, |s, d| {
                for t in 0..len {
                    *d.add(t) = *s.add(t * step as usize);
                }
            }),
        }
    }
}

/// Two f32s from `s` to `d`, unaligned, as one 64-bit load and store (bits unchanged).
#[inline(always)]
unsafe fn copy2(s: *const f32, d: *mut f32) {
    unsafe { d.cast::<u64>().write_unaligned(s.cast::<u64>().read_unaligned()) }
}

/// Four f32s from `s` to `d`, unaligned (also the pack's row copies, `crate::pack`).
#[inline(always)]
pub(crate) unsafe fn copy4(s: *const f32, d: *mut f32) {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    unsafe {
        use std::arch::wasm32::{v128, v128_load, v128_store};
        v128_store(d.cast::<v128>(), v128_load(s.cast::<v128>()));
    }
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    unsafe {
        std::ptr::copy_nonoverlapping(s, d, 4);
    }
}

/// `s[0]`, `s[2]`, `s[4]`, `s[6]` to `d[0..4]`: in WebAssembly two loads, of `s[0..4]` and
/// `s[3..7]`, and one shuffle, so that nothing past `s[6]` is read.
#[inline(always)]
unsafe fn copy4_every_other(s: *const f32, d: *mut f32) {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    unsafe {
        use std::arch::wasm32::{i32x4_shuffle, v128, v128_load, v128_store};
        let (a, b) = (v128_load(s.cast::<v128>()), v128_load(s.add(3).cast::<v128>()));
        v128_store(d.cast::<v128>(), i32x4_shuffle::<0, 2, 5, 7>(a, b));
    }
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    unsafe {
        for t in 0..4 {
            *d.add(t) = *s.add(2 * t);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::probe::tests::{conv, swaps_all_and_matches};
    use tract_onnx::tract_core::ops::cnn::PaddingSpec::{SameUpper, Valid};
    use tract_onnx::tract_core::ops::nn::DataFormat::{NCHW, NHWC};

    /// Each convolution through tract's lazy im2col and through [`SpanIm2Col`], natively: the
    /// same outputs bit for bit (the matrix products are the same, so any misplaced value would
    /// show). The geometries cover the generated CNN's and PP-OCR's first convolutions, strides,
    /// dilations, padding, groups, channel-last data and rows narrower and wider than a panel.
    #[test]
    fn gathers_what_tracts_lazy_im2col_gathers() {
        let cases = [
            ("CNN conv 1", conv(NCHW, [1, 28, 28], [3, 3], 1, 1, SameUpper, 1, 32)),
            ("CNN conv 2", conv(NCHW, [32, 14, 14], [3, 3], 1, 1, SameUpper, 1, 64)),
            ("PP-OCR first", conv(NCHW, [3, 48, 64], [3, 3], 2, 1, SameUpper, 1, 8)),
            ("dilated", conv(NCHW, [4, 9, 11], [3, 3], 1, 2, Valid, 1, 6)),
            ("wide row", conv(NCHW, [2, 5, 33], [1, 7], 1, 1, Valid, 1, 3)),
            ("grouped", conv(NCHW, [4, 10, 10], [3, 3], 1, 1, Valid, 2, 8)),
            ("channel-last", conv(NHWC, [3, 9, 10], [3, 3], 1, 1, Valid, 1, 5)),
        ];
        for (what, (model, shape)) in cases {
            swaps_all_and_matches(what, model, &shape, TRACT_OP, swapped_in);
        }
    }

    /// The proof the copies rely on refuses any panel that is not `rows[kk] + column[n]`
    /// everywhere, holds anything but an index of the input, or leaves a place unwritten; and
    /// reads the offsets off one that is, partial last panel included.
    #[test]
    fn the_probe_refuses_panels_that_do_not_decompose() {
        /// Changes the value packed at panel, row, column, or leaves the place unwritten.
        type Spoil = fn(usize, usize, usize, f32) -> Option<f32>;
        let (r, k, mn, len) = (4usize, 3usize, 6usize, 100usize);
        let layout = Layout::from_size_align(k * r * 4, 16).unwrap();
        let index = |kk: usize, n: usize| (kk * 20 + n * 2) as f32;
        // Packs panel `p` as the index map says, then lets `spoil` change one place.
        let packer = |spoil: Spoil| {
            move |p: usize, buffer: *mut u8| -> TractResult<*const u8> {
                let out = buffer.cast::<f32>();
                for kk in 0..k {
                    for x in 0..r.min(mn - p * r) {
                        let v = index(kk, p * r + x);
                        if let Some(v) = spoil(p, kk, x, v) {
                            unsafe { out.add(kk * r + x).write(v) };
                        }
                    }
                }
                Ok(buffer.cast_const())
            }
        };
        let (rows, column) =
            decomposed(packer(|_, _, _, v| Some(v)), (r, k, mn), layout, len).unwrap().unwrap();
        assert_eq!(rows, vec![0, 20, 40]);
        assert_eq!(column, vec![0, 2, 4, 6, 8, 10]);
        let spoiled: [(&str, Spoil); 5] = [
            ("one place off by one", |p, kk, x, v| Some(if (p, kk, x) == (1, 2, 1) { v + 1.0 } else { v })),
            ("an index past the input", |p, kk, x, v| Some(if (p, kk, x) == (0, 1, 3) { 100.0 } else { v })),
            ("a negative index", |p, kk, x, v| Some(if (p, kk, x) == (0, 0, 0) { -2.0 } else { v })),
            ("a fraction", |p, kk, x, v| Some(if (p, kk, x) == (1, 0, 0) { v + 0.5 } else { v })),
            ("a place left unwritten", |p, kk, x, v| if (p, kk, x) == (1, 1, 1) { None } else { Some(v) }),
        ];
        for (what, spoil) in spoiled {
            assert!(decomposed(packer(spoil), (r, k, mn), layout, len).unwrap().is_none(), "{what}");
        }
    }

    /// Runs break where the columns stop reading input elements one or two apart, and at every
    /// panel boundary.
    #[test]
    fn runs_follow_regular_columns_within_each_panel() {
        // Two output rows of 5 pixels over an input row stride of 7, panels of 4 columns.
        let column: Vec<isize> = (0..2).flat_map(|y| (0..5).map(move |x| y * 7 + x)).collect();
        let panels = panels_of(&column, 4);
        assert_eq!(panels.starts, vec![0, 1, 3, 4]);
        let run = |dst, len, src, step| Run { dst, len, src, step };
        assert_eq!(panels.runs, vec![run(0, 4, 0, 1), run(0, 1, 4, 1), run(1, 3, 7, 1), run(0, 2, 10, 1)]);
        // Stride 2, then a gap of 3 that no run spans.
        let panels = panels_of(&[0, 2, 4, 6, 9, 11, 14], 8);
        assert_eq!(panels.runs, vec![run(0, 4, 0, 2), run(4, 2, 9, 2), run(6, 1, 14, 1)]);
    }

    /// Every way a run can end: shorter than four, a multiple of four, an overlapping tail, and
    /// a strided run; over several rows, with nothing written outside the run's columns.
    #[test]
    fn gather_run_writes_exactly_its_columns_in_every_row() {
        let x: Vec<f32> = (0..200).map(|i| i as f32 + 0.5).collect();
        let (r, rows) = (24usize, [0isize, 40, 90]);
        for step in [1isize, 2] {
            for len in 1..=20 {
                let run = Run { dst: 1, len, src: 3, step };
                let mut out = vec![-1.0f32; rows.len() * r];
                unsafe { gather_run(x.as_ptr(), out.as_mut_ptr(), r, &rows, &run) };
                for (line, row) in out.chunks_exact(r).zip(rows) {
                    for (j, v) in line.iter().enumerate() {
                        let want = if (1..1 + len).contains(&j) {
                            x[(row + 3 + (j as isize - 1) * step) as usize]
                        } else {
                            -1.0
                        };
                        assert_eq!(*v, want, "step {step} len {len} row {row} column {j}");
                    }
                }
            }
        }
    }
}

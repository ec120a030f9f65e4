//! tract's pack of a matrix product's operand, with 128-bit 4x4 transposes and row copies.
//!
//! Before a matrix product, tract packs its activation operand into panels of `r` columns, `k`
//! rows each. When the operand's `k` axis is the contiguous one (a pointwise convolution over
//! channel-last data, the layout tract picks in WebAssembly around depthwise convolutions),
//! the pack is a transpose, which tract 0.23.9 does in 4x4 tiles: with NEON on ARM, and one
//! value at a time in WebAssembly. It took about 3% of PP-OCR recognition's time. When the
//! operand's `mn` axis is the contiguous one, each panel row is `r` neighbouring values: tract
//! copies them as one block for a few panel widths (4 to 32 f32s), and one value at a time
//! otherwise, as for the host's 48-, 64- and 80-row kernels' A operand (4.3% of PP-OCR
//! orientation's time, in `pack_t`'s own per-value loop).
//!
//! [`TransposePack`] replaces tract's `OptMatMulPack` in those two cases, found the same way
//! as in `im2col`: at load it runs tract's op once on a probe input whose every element holds
//! its own index and proves that every packed place holds `base + column * stride + row` (the
//! transposing layout) or `base + column + row * stride` (the row layout). It then packs with
//! the same tiles and tails as tract, each tile four 128-bit loads, eight shuffles and four
//! stores (a full panel 4, 6, 8, 12, 16, 24 or 32 columns wide with its width a constant, so
//! that one pass of the loop, and of wasmtime's epoch check in it, packs a whole band of four
//! rows), or copies each panel row four values at a time. The values written, and where, are
//! tract's, bit for bit; any other case keeps tract's op. Only the WebAssembly build swaps it
//! in ([`swapped_in`]), so native tract stays what the benchmarks compare against.
#![allow(unsafe_code)]

use std::sync::Arc;

use crate::im2col::copy4;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::tract_linalg::mmm::{
    EagerPackedInput, MMMInputValue, PackedExoticFact, PackedMatrixStorage,
};
use tract_onnx::tract_core::tract_linalg::pack::PackedFormat;

/// The name tract 0.23.9 gives its op.
const TRACT_OP: &str = "OptMatMulPack";

/// `model` with every transposing pack that passes the probe replaced by [`TransposePack`].
pub fn swapped_in(model: TypedModel) -> TypedModel {
    crate::probe::swap_ops(model, TRACT_OP, TransposePack::probe)
}

/// One packed matrix: panel `p`, row `kk`, column `x` holds input element
/// `base + (p * r + x) * stride + kk`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Matrix {
    base: usize,
    fact: PackedExoticFact,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Plan {
    /// Elements in the input tensor.
    len: usize,
    r: usize,
    k: usize,
    mn: usize,
    /// Input elements between two columns (the `mn` axis) when `transposed`, else between two
    /// rows (the `k` axis).
    stride: usize,
    /// Whether `k` is the contiguous axis (the transposing layout) or `mn` is (the row layout).
    transposed: bool,
    /// f32s from one panel to the next.
    panel_len: usize,
    align: usize,
    matrices: Vec<Matrix>,
    batch_shape: TVec<usize>,
}

/// tract's `OptMatMulPack`, for an operand whose `k` or `mn` axis is contiguous, with vector
/// transposes or row copies.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TransposePack {
    plan: Arc<Plan>,
    fact: TypedFact,
}

impl TransposePack {
    /// Runs node `id`'s op (tract's pack) on a probe input; `Some` if every packed place holds
    /// what the transposing layout says.
    fn probe(model: &TypedModel, id: usize) -> TractResult<Option<TransposePack>> {
        let Some(probe) = crate::probe::probe(model, id)? else { return Ok(None) };
        let (storage, len) = (probe.storage()?, probe.len);
        let mut plan: Option<Plan> = None;
        for value in storage.values() {
            let Some(packed) = value.downcast_ref::<EagerPackedInput>() else { return Ok(None) };
            let Some(format) = packed.fact.format.downcast_ref::<PackedFormat>() else { return Ok(None) };
            let (r, k, mn) = (format.r, packed.fact.k, packed.mn);
            let panel_len = format.single_panel_len(k);
            let bytes = packed.packed.as_bytes();
            if format.dt != f32::datum_type() || packed.panel_bytes != panel_len * 4 {
                return Ok(None);
            }
            let Some((base, stride, transposed)) = layout(bytes, (r, k, mn), panel_len, len) else {
                return Ok(None);
            };
            let matrix = Matrix { base, fact: packed.fact.clone() };
            let plan = plan.get_or_insert_with(|| Plan {
                len,
                r,
                k,
                mn,
                stride,
                transposed,
                panel_len,
                align: format.alignment_bytes.max(align_of::<f32>()),
                matrices: Vec::new(),
                batch_shape: storage.batch_shape().into(),
            });
            if (plan.r, plan.k, plan.mn, plan.stride, plan.transposed, plan.panel_len)
                != (r, k, mn, stride, transposed, panel_len)
            {
                return Ok(None);
            }
            plan.matrices.push(matrix);
        }
        Ok(plan.map(|plan| TransposePack { plan: Arc::new(plan), fact: probe.fact.clone() }))
    }
}

/// The base, the stride and whether the layout is the transposing one, if `bytes` (panels packed
/// from the probe input) hold input index `base + (p * r + x) * stride + kk` at every real place
/// (panel `p`, row `kk < k`, column `x <` the panel's width: the transposing layout, `true`) or
/// `base + (p * r + x) + kk * stride` (the row layout, `false`), each an index of an input of
/// `len` elements. Needs `k`, `mn` and `r` above 1, and panels of `panel_len` f32s in `bytes`.
fn layout(
    bytes: &[u8],
    (r, k, mn): (usize, usize, usize),
    panel_len: usize,
    len: usize,
) -> Option<(usize, usize, bool)> {
    if r < 2 || k < 2 || mn < 2 || bytes.len() < mn.div_ceil(r) * panel_len * 4 {
        return None;
    }
    let at = |p: usize, kk: usize, x: usize| {
        let b = &bytes[(p * panel_len + kk * r + x) * 4..][..4];
        f32::from_ne_bytes(b.try_into().expect("four bytes"))
    };
    let (base, next, below) = (at(0, 0, 0), at(0, 0, 1), at(0, 1, 0));
    // All false for NaN: an unwritten place fails here too.
    let (stride, transposed) = if base >= 0.0 && next > base + 1.0 && below == base + 1.0 {
        (next - base, true)
    } else if base >= 0.0 && next == base + 1.0 && below > base + 1.0 {
        (below - base, false)
    } else {
        return None;
    };
    let (base, stride) = (base as usize, stride as usize);
    let (x_step, k_step) = if transposed { (stride, 1) } else { (1, stride) };
    for p in 0..mn.div_ceil(r) {
        for kk in 0..k {
            for x in 0..r.min(mn - p * r) {
                let want = base + (p * r + x) * x_step + kk * k_step;
                if want >= len || at(p, kk, x) != want as f32 {
                    return None;
                }
            }
        }
    }
    Some((base, stride, transposed))
}

impl Op for TransposePack {
    fn name(&self) -> StaticName {
        "WardenTransposePack".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let p = &self.plan;
        let axis = if p.transposed { "columns" } else { "rows" };
        Ok(vec![format!(
            "k={} mn={} r={} stride={} between {axis} matrices={}",
            p.k,
            p.mn,
            p.r,
            p.stride,
            p.matrices.len()
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for TransposePack {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let plan = &*self.plan;
        let x = input.try_as_plain_ram()?.as_slice::<f32>()?;
        ensure!(
            x.len() == plan.len,
            "transposing pack planned for {} f32 values, given {}",
            plan.len,
            x.len()
        );
        let panels = plan.mn.div_ceil(plan.r);
        let size = panels * plan.panel_len * 4;
        let mut values: TVec<Box<dyn MMMInputValue>> = TVec::with_capacity(plan.matrices.len());
        for matrix in &plan.matrices {
            // SAFETY: `Blob` hands out uninitialized bytes; each is written below before
            // anything reads it: the places no value goes to are zeroed first (as tract zeroes
            // a partial last panel), then `pack_panel` writes every other one.
            let mut blob = unsafe { Blob::new_for_size_and_align(size, plan.align) };
            let bytes = blob.as_bytes_mut();
            for p in 0..panels {
                let (start, width) = (p * plan.panel_len, plan.r.min(plan.mn - p * plan.r));
                bytes[(start + plan.k * plan.r) * 4..(start + plan.panel_len) * 4].fill(0);
                if width < plan.r {
                    for line in bytes[start * 4..(start + plan.k * plan.r) * 4].chunks_exact_mut(plan.r * 4) {
                        line[width * 4..].fill(0);
                    }
                }
            }
            let out = bytes.as_mut_ptr().cast::<f32>();
            ensure!(out.align_offset(align_of::<f32>()) == 0, "transposing pack buffer");
            for p in 0..panels {
                // SAFETY: the probe proved that for every panel `p`, row `kk < k` and column
                // `x <` the panel's width, `base + (p * r + x) * stride + kk` (transposed) or
                // `base + (p * r + x) + kk * stride` (rows) is an index of an input of
                // `plan.len` elements, which `x` has; `pack_panel` and `copy_panel` read only
                // those. They write `p * panel_len + kk * r + x` for the same ranges, inside
                // `size`.
                unsafe {
                    let width = plan.r.min(plan.mn - p * plan.r);
                    let dst = out.add(p * plan.panel_len);
                    if plan.transposed {
                        pack_panel(x.as_ptr().add(matrix.base + p * plan.r * plan.stride), dst, plan, width)
                    } else {
                        copy_panel(x.as_ptr().add(matrix.base + p * plan.r), dst, plan, width)
                    }
                };
            }
            values.push(Box::new(EagerPackedInput {
                fact: matrix.fact.clone(),
                packed: Arc::new(blob),
                panel_bytes: plan.panel_len * 4,
                mn: plan.mn,
            }));
        }
        let output =
            PackedMatrixStorage::new_batched(&plan.batch_shape, values).into_tensor(f32::datum_type());
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for TransposePack {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        // tract's own fact, kept from the node replaced.
        Ok(tvec!(self.fact.clone()))
    }

    as_op!();
}

/// One panel, as tract's `pack_k_major` lays it out: `dst[kk * r + x] = src[x * stride + kk]`
/// for `kk < k`, `x < width`; 4x4 tiles first, then the rows and columns left over.
///
/// # Safety
/// Every index named above must be inside `src`'s and `dst`'s allocations.
unsafe fn pack_panel(src: *const f32, dst: *mut f32, plan: &Plan, width: usize) {
    let (r, k, stride) = (plan.r, plan.k, plan.stride);
    // A full panel of a common width runs with the width a constant, so that each pass of the
    // loop over `k` does a whole 4-row band (every 4x4 tile of it, then its last columns)
    // instead of one tile: every pass of a WebAssembly loop pays wasmtime's epoch check.
    if width == r {
        // SAFETY: the caller's contract, for `width == r`.
        unsafe {
            match r {
                4 => return pack_full::<4>(src, dst, k, stride),
                6 => return pack_full::<6>(src, dst, k, stride),
                8 => return pack_full::<8>(src, dst, k, stride),
                12 => return pack_full::<12>(src, dst, k, stride),
                16 => return pack_full::<16>(src, dst, k, stride),
                24 => return pack_full::<24>(src, dst, k, stride),
                32 => return pack_full::<32>(src, dst, k, stride),
                _ => {}
            }
        }
    }
    let (tiled_k, tiled_x) = (k / 4 * 4, width / 4 * 4);
    unsafe {
        for kk in (0..tiled_k).step_by(4) {
            for x in (0..tiled_x).step_by(4) {
                transpose4x4(src.add(x * stride + kk), stride, dst.add(kk * r + x), r);
            }
        }
        for kk in tiled_k..k {
            for x in 0..tiled_x {
                *dst.add(kk * r + x) = *src.add(x * stride + kk);
            }
        }
        for x in tiled_x..width {
            let column = src.add(x * stride);
            for kk in 0..k {
                *dst.add(kk * r + x) = *column.add(kk);
            }
        }
    }
}

/// A full panel of `R` columns, as [`pack_panel`] packs it: `dst[kk * R + x] = src[x * stride +
/// kk]` for `kk < k`, `x < R`.
///
/// # Safety
/// Every index named above must be inside `src`'s and `dst`'s allocations.
#[inline(always)]
unsafe fn pack_full<const R: usize>(src: *const f32, dst: *mut f32, k: usize, stride: usize) {
    let tiled_k = k / 4 * 4;
    unsafe {
        for kk in (0..tiled_k).step_by(4) {
            for x in (0..R / 4 * 4).step_by(4) {
                transpose4x4(src.add(x * stride + kk), stride, dst.add(kk * R + x), R);
            }
            for x in R / 4 * 4..R {
                let column = src.add(x * stride + kk);
                for i in 0..4 {
                    *dst.add((kk + i) * R + x) = *column.add(i);
                }
            }
        }
        for kk in tiled_k..k {
            for x in 0..R {
                *dst.add(kk * R + x) = *src.add(x * stride + kk);
            }
        }
    }
}

/// One panel of the row layout, as tract's `pack_t` lays it out: `dst[kk * r + x] = src[kk *
/// stride + x]` for `kk < k`, `x < width`; four values at a time, then the rest one by one.
///
/// # Safety
/// Every index named above must be inside `src`'s and `dst`'s allocations.
unsafe fn copy_panel(src: *const f32, dst: *mut f32, plan: &Plan, width: usize) {
    let (r, k, stride) = (plan.r, plan.k, plan.stride);
    let quads = width / 4 * 4;
    unsafe {
        for kk in 0..k {
            let (from, to) = (src.add(kk * stride), dst.add(kk * r));
            for x in (0..quads).step_by(4) {
                copy4(from.add(x), to.add(x));
            }
            for x in quads..width {
                *to.add(x) = *from.add(x);
            }
        }
    }
}

/// `dst[j * dst_stride + i] = src[i * src_stride + j]` for `i, j < 4`.
#[inline(always)]
unsafe fn transpose4x4(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize) {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    unsafe {
        use std::arch::wasm32::{i32x4_shuffle, i64x2_shuffle, v128, v128_load, v128_store};
        let load = |i: usize| v128_load(src.add(i * src_stride).cast::<v128>());
        let (a, b, c, d) = (load(0), load(1), load(2), load(3));
        let ab_lo = i32x4_shuffle::<0, 4, 1, 5>(a, b); // a0 b0 a1 b1
        let ab_hi = i32x4_shuffle::<2, 6, 3, 7>(a, b); // a2 b2 a3 b3
        let cd_lo = i32x4_shuffle::<0, 4, 1, 5>(c, d);
        let cd_hi = i32x4_shuffle::<2, 6, 3, 7>(c, d);
        let store = |j: usize, v: v128| v128_store(dst.add(j * dst_stride).cast::<v128>(), v);
        store(0, i64x2_shuffle::<0, 2>(ab_lo, cd_lo));
        store(1, i64x2_shuffle::<1, 3>(ab_lo, cd_lo));
        store(2, i64x2_shuffle::<0, 2>(ab_hi, cd_hi));
        store(3, i64x2_shuffle::<1, 3>(ab_hi, cd_hi));
    }
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    unsafe {
        for i in 0..4 {
            for j in 0..4 {
                *dst.add(j * dst_stride + i) = *src.add(i * src_stride + j);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::probe::tests::{conv, swaps_all_and_matches, weights};
    use tract_onnx::tract_core::ops::cnn::PaddingSpec::Valid;
    use tract_onnx::tract_core::ops::einsum::EinSum;
    use tract_onnx::tract_core::ops::nn::DataFormat::NHWC;

    /// `W[m, k] . X[n, k]^T`: the operand's `k` axis is its contiguous one.
    fn product(m: usize, k: usize, n: usize) -> (TypedModel, Vec<usize>) {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([n, k])).unwrap();
        let w = model.add_const("w", Tensor::from_shape(&[m, k], &weights(m * k)).unwrap()).unwrap();
        let einsum = EinSum::new("mk,nk->mn".parse().unwrap(), f32::datum_type());
        let out = model.wire_node("mm", einsum, &[w, x]).unwrap();
        model.select_output_outlets(&out).unwrap();
        (model, vec![n, k])
    }

    /// `W[m, k] . X[k, n]`: the operand's `mn` axis is its contiguous one.
    fn product_rows(m: usize, k: usize, n: usize) -> (TypedModel, Vec<usize>) {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([k, n])).unwrap();
        let w = model.add_const("w", Tensor::from_shape(&[m, k], &weights(m * k)).unwrap()).unwrap();
        let einsum = EinSum::new("mk,kn->mn".parse().unwrap(), f32::datum_type());
        let out = model.wire_node("mm", einsum, &[w, x]).unwrap();
        model.select_output_outlets(&out).unwrap();
        (model, vec![k, n])
    }

    /// Each product through tract's pack and through [`TransposePack`], natively: the same
    /// outputs bit for bit. Sizes with and without a partial last panel, with `k` a multiple of
    /// four and not, and wider and narrower than a tile; pointwise convolutions over
    /// channel-last data are PP-OCR's case in WebAssembly.
    #[test]
    fn packs_what_tracts_transposing_pack_packs() {
        let cases = [
            ("product 64x96x40", product(64, 96, 40)),
            ("product 16x7x13", product(16, 7, 13)),
            ("product 33x130x5", product(33, 130, 5)),
            ("pointwise 16 -> 32 over 6x10", conv(NHWC, [16, 6, 10], [1, 1], 1, 1, Valid, 1, 32)),
            ("pointwise 10 -> 24 over 3x7", conv(NHWC, [10, 3, 7], [1, 1], 1, 1, Valid, 1, 24)),
            ("rows 64x96x40", product_rows(64, 96, 40)),
            ("rows 16x7x13", product_rows(16, 7, 13)),
            ("rows 33x130x5", product_rows(33, 130, 5)),
        ];
        for (what, (model, shape)) in cases {
            swaps_all_and_matches(what, model, &shape, TRACT_OP, swapped_in);
        }
    }

    /// The proof the transposes rely on refuses a packed place that is off, past the input or
    /// unwritten, and reads base and stride off a layout that holds everywhere (partial last
    /// panel included).
    #[test]
    fn the_probe_refuses_layouts_that_are_not_a_transpose() {
        /// The value packed at panel, row, column in place of the index, if any.
        type Spoil<'s> = &'s dyn Fn(usize, usize, usize) -> Option<f32>;
        let (r, k, mn, stride, base, len) = (4usize, 3usize, 6usize, 5usize, 2usize, 40usize);
        let panel_len = k * r;
        let packed = |spoil: Spoil| {
            let mut bytes = vec![0xffu8; mn.div_ceil(r) * panel_len * 4];
            for p in 0..mn.div_ceil(r) {
                for kk in 0..k {
                    for x in 0..r.min(mn - p * r) {
                        let v = spoil(p, kk, x).unwrap_or((base + (p * r + x) * stride + kk) as f32);
                        let at = (p * panel_len + kk * r + x) * 4;
                        bytes[at..at + 4].copy_from_slice(&v.to_ne_bytes());
                    }
                }
            }
            bytes
        };
        assert_eq!(layout(&packed(&|_, _, _| None), (r, k, mn), panel_len, len), Some((base, stride, true)));
        let nan = f32::from_ne_bytes([0xff; 4]);
        let spoiled: [(&str, Spoil); 4] = [
            ("one place off by one", &|p, kk, x| ((p, kk, x) == (1, 2, 1)).then_some(33.0)),
            ("an index past the input", &|p, kk, x| ((p, kk, x) == (1, 0, 0)).then_some(40.0)),
            ("a negative base", &|p, kk, x| ((p, kk, x) == (0, 0, 0)).then_some(-1.0)),
            ("a place left unwritten", &|p, kk, x| ((p, kk, x) == (0, 2, 3)).then_some(nan)),
        ];
        for (what, spoil) in spoiled {
            assert_eq!(layout(&packed(spoil), (r, k, mn), panel_len, len), None, "{what}");
        }
    }

    /// A plan for one panel of `width` columns of an input of `len` values.
    fn panel_plan(len: usize, (r, k, width): (usize, usize, usize), stride: usize, transposed: bool) -> Plan {
        Plan {
            len,
            r,
            k,
            mn: width,
            stride,
            transposed,
            panel_len: k * r,
            align: 4,
            matrices: Vec::new(),
            batch_shape: tvec!(),
        }
    }

    /// The tile and both tails against the definition, with nothing written outside the panel's
    /// places.
    #[test]
    fn pack_panel_transposes_every_place_once() {
        // Full panels of the widths with a constant-width path (and of two without), partial
        // panels, and depths around the 4-row bands.
        let mut full = 0;
        for r in [4usize, 5, 6, 8, 10, 12, 16, 24, 32] {
            for k in [1usize, 3, 4, 7, 8, 9, 13] {
                for width in [r, r - 1, 3, 1] {
                    let stride = r + k + 3;
                    let src: Vec<f32> = (0..width * stride + k).map(|i| i as f32).collect();
                    let plan = panel_plan(src.len(), (r, k, width), stride, true);
                    let mut dst = vec![-1.0f32; k * r];
                    unsafe { pack_panel(src.as_ptr(), dst.as_mut_ptr(), &plan, width) };
                    for kk in 0..k {
                        for x in 0..r {
                            let want = if x < width { src[x * stride + kk] } else { -1.0 };
                            assert_eq!(
                                dst[kk * r + x],
                                want,
                                "r {r} k {k} width {width}: row {kk} column {x}"
                            );
                        }
                    }
                    full += usize::from(width == r);
                }
            }
        }
        assert_eq!(full, 9 * 7);
    }

    /// The row layout is read off panels that hold it (partial last panel included), and a
    /// place off by one refuses it.
    #[test]
    fn the_probe_reads_the_row_layout() {
        let (r, k, mn, stride, base, len) = (4usize, 3usize, 6usize, 9usize, 1usize, 40usize);
        let panel_len = k * r;
        let packed = |off: Option<(usize, usize, usize)>| {
            let mut bytes = vec![0xffu8; mn.div_ceil(r) * panel_len * 4];
            for p in 0..mn.div_ceil(r) {
                for kk in 0..k {
                    for x in 0..r.min(mn - p * r) {
                        let v = (base + p * r + x + kk * stride) as f32
                            + if off == Some((p, kk, x)) { 1.0 } else { 0.0 };
                        let at = (p * panel_len + kk * r + x) * 4;
                        bytes[at..at + 4].copy_from_slice(&v.to_ne_bytes());
                    }
                }
            }
            bytes
        };
        assert_eq!(layout(&packed(None), (r, k, mn), panel_len, len), Some((base, stride, false)));
        assert_eq!(layout(&packed(Some((1, 2, 1))), (r, k, mn), panel_len, len), None);
    }

    /// The copies and the tail against the definition, with nothing written outside the
    /// panel's places.
    #[test]
    fn copy_panel_copies_every_place_once() {
        for (k, width) in [(8, 8), (7, 6), (4, 3), (3, 13), (9, 1)] {
            let (r, stride) = (16usize, 21usize);
            let src: Vec<f32> = (0..k * stride + width).map(|i| i as f32).collect();
            let plan = panel_plan(src.len(), (r, k, width), stride, false);
            let mut dst = vec![-1.0f32; k * r];
            unsafe { copy_panel(src.as_ptr(), dst.as_mut_ptr(), &plan, width) };
            for kk in 0..k {
                for x in 0..r {
                    let want = if x < width { src[kk * stride + x] } else { -1.0 };
                    assert_eq!(dst[kk * r + x], want, "k {k} width {width}: row {kk} column {x}");
                }
            }
        }
    }
}

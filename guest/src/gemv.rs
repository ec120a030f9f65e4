//! Matrix-vector products run straight through their kernel, tile by tile.
//!
//! A small classifier's layers are products of a constant weight matrix by one vector
//! (`n == 1`): `OptMatMulPack` packs the vector, then `OptMatMul` resolves its fused ops
//! (bias, ReLU), finds its per-session scratch space in a hash map, prepares a per-thread
//! op-list blob, and runs the kernel on each tile, border tiles through a copy. For digits'
//! 64 x 64 and 10 x 64 products that bookkeeping, with the pack and the reshape between the
//! layers, took over a third of an inference in the sandbox: more than the arithmetic.
//!
//! [`Gemv`] replaces such an `OptMatMul` and reads the vector from ahead of its pack (and of
//! any reshapes), which then run no more. Each run copies the vector into one packed panel
//! (the kernel's own B format, padding zeroed) and, for each panel of the constant A, builds the
//! op list tract's driver would build for that tile (`ScratchSpaceImpl::prepare`,
//! `for_valid_tile`, and `for_border_tile` for the last, partial, panel: per-row operands and
//! the stored tile go through zero-padded copies) and hands it to the same kernel: tract's own
//! (its `DynKernel` function) or one the embedding registered ([`register_foreign_kernels`]:
//! the host's native kernels, in the WebAssembly build). The kernel does the arithmetic, so the
//! results are tract's bit for bit. Products of any other shape, with fused ops other than
//! scalar, per-row, per-column and unicast ones, with a lazily packed A, or whose kernel is
//! unknown, keep tract's op. Like the other swaps, only the WebAssembly build makes it.
#![allow(unsafe_code)]

use std::any::Any;
use std::sync::{Arc, OnceLock};

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::change_axes::IntoShape;
use tract_onnx::tract_core::ops::matmul::optimized::{MatMulOperand, OptMatMul, ProtoFusedSpec};
use tract_onnx::tract_core::ops::matmul::pack::{DynPackedExoticFact, OptMatMulPack};
use tract_onnx::tract_core::tract_linalg::BinOp;
use tract_onnx::tract_core::tract_linalg::mmm::{
    DynKernel, FusedKerSpec, MatMatMul, OutputStoreKer, OutputStoreSpec,
};
use tract_onnx::tract_core::tract_linalg::pack::PackedFormat;

/// A kernel that is not one of tract's own `DynKernel`s (the embedding's): runs one tile's op
/// list, as `MatMatMulKer::kernel` does, and answers 0 on success.
pub trait TileKernel: Send + Sync + std::fmt::Debug {
    fn run(&self, ops: &[FusedKerSpec<f32>]) -> isize;
}

/// Finds the tile kernel behind a matrix product of the embedding's, if it is one.
pub type ForeignKernels = fn(&dyn MatMatMul) -> Option<Arc<dyn TileKernel>>;

static FOREIGN: OnceLock<ForeignKernels> = OnceLock::new();

/// Lets [`Gemv`] run the embedding's kernels too. The first registration stays.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
pub fn register_foreign_kernels(find: ForeignKernels) {
    let _ = FOREIGN.set(find);
}

/// Tiles taller than this keep tract's op (the border copies are sized by it).
const MAX_MR: usize = 256;

#[derive(Clone, Debug)]
enum Kernel {
    Tract(unsafe fn(&[FusedKerSpec<f32>]) -> isize),
    Foreign(Arc<dyn TileKernel>),
}

impl Kernel {
    /// The kernel of `mmm`: tract's own gemv kernels by their tile height, else the embedding's.
    fn of(mmm: &dyn MatMatMul) -> Option<Kernel> {
        let any: &dyn Any = mmm;
        macro_rules! tract_kernels {
            ($($mr:literal)*) => {
                $( if let Some(k) = any.downcast_ref::<DynKernel<$mr, 1, f32>>() {
                    return Some(Kernel::Tract(k.kernel));
                } )*
            };
        }
        tract_kernels!(1 2 4 8 12 16 24 32 48 64 96 128 256);
        FOREIGN.get().and_then(|find| find(mmm)).map(Kernel::Foreign)
    }

    /// # Safety
    /// Every pointer in `ops` must be valid for what the kernel reads and writes at its tile.
    unsafe fn run(&self, ops: &[FusedKerSpec<f32>]) -> isize {
        match self {
            // SAFETY: the caller's contract is the kernel's.
            Kernel::Tract(kernel) => unsafe { kernel(ops) },
            Kernel::Foreign(kernel) => kernel.run(ops),
        }
    }
}

/// Which operand of the product the vector is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// B, by a constant A of `m` rows: a panel of one column.
    B,
    /// A, by a constant B of one column, for a single output (`m == 1`): tract packs the
    /// vector as the first row of an `mr`-row panel.
    A,
}

/// tract's `OptMatMul` for an `m x k` constant by a `k` vector, run without its driver.
#[derive(Clone, Debug)]
pub struct Gemv {
    inner: OptMatMul,
    /// The input slot of the vector (now unpacked) and which operand it is.
    slot: usize,
    side: Side,
    m: usize,
    k: usize,
    mr: usize,
    /// The vector's packed panel in the kernel's format: its record length (`mr` or 1), its
    /// length in values and its alignment in bytes.
    record: usize,
    panel_len: usize,
    panel_align: usize,
    kernel: Kernel,
}

impl PartialEq for Gemv {
    fn eq(&self, other: &Self) -> bool {
        // Equal products have equal kernels and panels: all are derived from `inner`.
        self.inner == other.inner && self.slot == other.slot
    }
}

impl Eq for Gemv {}

/// `model` with every matrix-vector product [`Gemv`] can run swapped for it, its vector read
/// from ahead of its pack.
pub fn swapped_in(mut model: TypedModel) -> TypedModel {
    for id in 0..model.nodes.len() {
        let Some((gemv, source)) = plan(&model, id) else { continue };
        let inlet = InletId::new(id, gemv.slot);
        let packed = model.nodes[id].inputs[gemv.slot];
        model.nodes[packed.node].outputs[packed.slot].successors.retain(|s| *s != inlet);
        model.nodes[source.node].outputs[source.slot].successors.push(inlet);
        model.nodes[id].inputs[gemv.slot] = source;
        model.nodes[id].op = Box::new(gemv);
    }
    model
}

/// The [`Gemv`] for node `id` and the outlet its vector comes from, if it qualifies.
fn plan(model: &TypedModel, id: usize) -> Option<(Gemv, OutletId)> {
    let node = &model.nodes[id];
    let op = node.op_as::<OptMatMul>()?;
    if !op.trivial_path || op.mmm.len() != 1 || op.c_fact.datum_type != DatumType::F32 {
        return None;
    }
    let shape: TVec<usize> = op.c_fact.shape.as_concrete()?.into();
    let dim = |axis: Option<usize>| axis.map_or(Some(1), |ax| shape.get(ax).copied());
    let (m, n) = (dim(op.c_m_axis)?, dim(op.c_n_axis)?);
    if n != 1 || m == 0 || shape.iter().product::<usize>() != m {
        return None;
    }
    let mmm = &*op.mmm[0];
    let (mr, nr) = (mmm.mr(), mmm.nr());
    if nr != 1 || mr == 0 || mr > MAX_MR {
        return None;
    }
    let kernel = Kernel::of(mmm)?;
    let fact = |slot: usize| node.inputs.get(slot).and_then(|o| model.outlet_fact(*o).ok());
    let values = |slot: usize| {
        fact(slot)
            .filter(|f| f.datum_type == DatumType::F32 && f.exotic_fact.is_none())
            .and_then(|f| f.shape.as_concrete().map(|s| s.iter().product::<usize>()))
    };
    let [ProtoFusedSpec::AddMatMul { geo, a, b, packings }, ops @ .., ProtoFusedSpec::Store(stores)] =
        &op.micro_ops[..]
    else {
        return None;
    };
    let (side, slot, weights) = match (a, b) {
        (MatMulOperand::Const(w), MatMulOperand::Input(v)) => (Side::B, *v, w),
        (MatMulOperand::Input(v), MatMulOperand::Const(w)) if m == 1 => (Side::A, *v, w),
        _ => return None,
    };
    let k = usize::try_from(geo.k.as_i64()?).ok()?;
    let (a_format, b_format) = mmm.packings().get(packings.first()?.0)?;
    let (a_format, b_format) =
        (a_format.downcast_ref::<PackedFormat>()?, b_format.downcast_ref::<PackedFormat>()?);
    let (weights_format, vector_format, weights_mn) = match side {
        Side::B => (a_format, b_format, m),
        Side::A => (b_format, a_format, 1),
    };
    let stored = weights.format().downcast_ref::<PackedFormat>()?;
    if k == 0
        || stores.len() != 1
        || packings.len() != 1
        || packings[0].1.is_some()
        || weights.scratch_panel_buffer_layout().is_some()
        || weights.k() != k
        || weights.mn() < weights_mn
        || stored.r != weights_format.r
        || stored.dt != DatumType::F32
        || a_format.r != mr
        || b_format.r != 1
        || [a_format.dt, b_format.dt] != [DatumType::F32; 2]
    {
        return None;
    }
    for spec in ops {
        let fits = match spec {
            ProtoFusedSpec::BinScalar(v, _) | ProtoFusedSpec::LeakyRelu(v) => values(*v) == Some(1),
            ProtoFusedSpec::BinPerRow(v, _, _) => values(*v) == Some(m),
            ProtoFusedSpec::BinPerCol(v, _, _) => values(*v) == Some(1),
            ProtoFusedSpec::AddUnicast(OutputStoreSpec::View { .. }, v, _) => {
                fact(*v).and_then(|f| f.shape.as_concrete().map(|s| s == &*shape)) == Some(true)
                    && values(*v) == Some(m)
            }
            _ => false,
        };
        if !fits {
            return None;
        }
    }
    // The vector: the single-vector pack of a tensor of `k` values, through any reshapes
    // before it.
    let packed = *node.inputs.get(slot)?;
    let pack = model.node(packed.node);
    pack.op_as::<OptMatMulPack>()?;
    let packed_fact = model.outlet_fact(packed).ok()?;
    let dyn_fact = packed_fact.exotic_fact.as_ref()?.downcast_ref::<DynPackedExoticFact>()?;
    if dyn_fact.k.as_i64() != Some(k as i64) || dyn_fact.mn.as_i64() != Some(1) || pack.inputs.len() != 1 {
        return None;
    }
    let mut source = pack.inputs[0];
    while let Some(reshape) = model.node(source.node).op_as::<IntoShape>().map(|_| model.node(source.node))
        && reshape.inputs.len() == 1
    {
        source = reshape.inputs[0];
    }
    let source_fact = model.outlet_fact(source).ok()?;
    if source_fact.datum_type != DatumType::F32
        || source_fact.exotic_fact.is_some()
        || source_fact.shape.as_concrete()?.iter().product::<usize>() != k
    {
        return None;
    }
    let gemv = Gemv {
        inner: op.clone(),
        slot,
        side,
        m,
        k,
        mr,
        record: vector_format.r,
        panel_len: vector_format.single_panel_len(k),
        panel_align: vector_format.alignment_bytes.max(4),
        kernel,
    };
    Some((gemv, source))
}

impl Op for Gemv {
    fn name(&self) -> StaticName {
        "WardenGemv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        self.inner.info()
    }

    op_as_typed_op!();
}

impl EvalOp for Gemv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (m, k, mr) = (self.m, self.k, self.mr);
        let x = inputs.get(self.slot).context("gemv: no vector")?.try_as_plain_ram()?;
        let x = x.as_slice::<f32>()?;
        ensure!(x.len() == k, "gemv: a vector of {} values for k = {k}", x.len());
        // The vector packed as the kernel reads it: record `i` starts with `x[i]`; the rest of
        // each record (the panel rows past the one output, for A) and the end padding are zeros.
        let record = self.record;
        ensure!(k * record <= self.panel_len, "gemv: a panel of {} values", self.panel_len);
        // SAFETY: every value is written below.
        let mut panel =
            unsafe { Tensor::uninitialized_aligned_dt(DatumType::F32, &[self.panel_len], self.panel_align)? };
        {
            let mut plain = panel.try_as_plain_ram_mut()?;
            let values = plain.as_slice_mut::<f32>()?;
            if record == 1 {
                values[..k].copy_from_slice(x);
                values[k..].fill(0.0);
            } else {
                values.fill(0.0);
                for (at, x) in values.iter_mut().step_by(record).zip(x) {
                    *at = *x;
                }
            }
        }
        let vector = panel.try_as_plain_ram()?.as_slice::<f32>()?.as_ptr().cast::<u8>();
        let shape = self.inner.c_fact.shape.as_concrete().context("gemv: a symbolic shape")?;
        // SAFETY: every value is written below, by the kernel or from a border tile.
        let mut out = unsafe { Tensor::uninitialized_dt(DatumType::F32, shape)? };
        let mut c_plain = out.try_as_plain_ram_mut()?;
        let c = c_plain.as_slice_mut::<f32>()?;
        ensure!(c.len() == m, "gemv: an output of {} values for m = {m}", c.len());
        let micro_ops = &self.inner.micro_ops;
        let ProtoFusedSpec::AddMatMul { a, b, packings, .. } = &micro_ops[0] else {
            bail!("gemv: the product is not first");
        };
        let weights = match (self.side, a, b) {
            (Side::B, MatMulOperand::Const(w), _) | (Side::A, _, MatMulOperand::Const(w)) => w,
            _ => bail!("gemv: no constant operand"),
        };
        let packing = packings[0].0;
        let f32s = |slot: usize| -> TractResult<&[f32]> {
            let t = inputs.get(slot).context("gemv: missing operand")?;
            t.try_as_plain_ram()?.as_slice::<f32>()
        };
        let scalar =
            |slot: usize| -> TractResult<f32> { f32s(slot)?.first().copied().context("gemv: empty scalar") };
        // The last panel's rows past `m`: per-row operands and the stored tile go through
        // copies, zero-padded as tract's border tiles are.
        let full = m / mr;
        let rem = m % mr;
        let mut border = if rem > 0 { vec![0f32; micro_ops.len() * mr] } else { Vec::new() };
        let mut ker: TVec<FusedKerSpec<f32>> = TVec::with_capacity(micro_ops.len() + 2);
        for panel in 0..m.div_ceil(mr) {
            let is_border = panel == full;
            let rows = if is_border { rem } else { mr };
            let start = panel * mr;
            ker.clear();
            ker.push(FusedKerSpec::Clear);
            for (ix, spec) in micro_ops.iter().enumerate() {
                let scratch = if is_border {
                    border[ix * mr..(ix + 1) * mr].as_mut_ptr()
                } else {
                    std::ptr::null_mut()
                };
                // Per-row values for this panel: in place, or copied into `scratch` and padded.
                let per_row = |v: &[f32]| -> TractResult<*const f32> {
                    ensure!(v.len() == m, "gemv: {} per-row values for m = {m}", v.len());
                    if is_border {
                        // SAFETY: `scratch` is this op's `mr` values of `border`, which outlives the run.
                        let buf = unsafe { std::slice::from_raw_parts_mut(scratch, mr) };
                        buf[..rows].copy_from_slice(&v[start..start + rows]);
                        buf[rows..].fill(0.0);
                        Ok(buf.as_ptr())
                    } else {
                        Ok(v[start..start + mr].as_ptr())
                    }
                };
                let tile = |ptr: *mut f32| OutputStoreKer {
                    ptr: ptr.cast(),
                    row_byte_stride: 4,
                    col_byte_stride: 4 * mr as isize,
                    item_size: 4,
                };
                ker.push(match spec {
                    ProtoFusedSpec::AddMatMul { .. } => {
                        let (pa, pb) = match self.side {
                            Side::B => (weights.panel_bytes(panel, None)?, vector),
                            Side::A => (vector, weights.panel_bytes(0, None)?),
                        };
                        FusedKerSpec::AddMatMul { k, pa, pb, packing }
                    }
                    ProtoFusedSpec::BinScalar(v, op) => {
                        let s = scalar(*v)?;
                        match op {
                            BinOp::Min => FusedKerSpec::ScalarMin(s),
                            BinOp::Max => FusedKerSpec::ScalarMax(s),
                            BinOp::Mul => FusedKerSpec::ScalarMul(s),
                            BinOp::Add => FusedKerSpec::ScalarAdd(s),
                            BinOp::Sub => FusedKerSpec::ScalarSub(s),
                            BinOp::SubF => FusedKerSpec::ScalarSubF(s),
                        }
                    }
                    ProtoFusedSpec::LeakyRelu(v) => FusedKerSpec::LeakyRelu(scalar(*v)?),
                    ProtoFusedSpec::BinPerRow(v, op, _) => {
                        let p = per_row(f32s(*v)?)?;
                        match op {
                            BinOp::Min => FusedKerSpec::PerRowMin(p),
                            BinOp::Max => FusedKerSpec::PerRowMax(p),
                            BinOp::Add => FusedKerSpec::PerRowAdd(p),
                            BinOp::Mul => FusedKerSpec::PerRowMul(p),
                            BinOp::Sub => FusedKerSpec::PerRowSub(p),
                            BinOp::SubF => FusedKerSpec::PerRowSubF(p),
                        }
                    }
                    ProtoFusedSpec::BinPerCol(v, op, _) => {
                        let v = f32s(*v)?;
                        ensure!(v.len() == 1, "gemv: {} per-column values for n = 1", v.len());
                        let p = v.as_ptr();
                        match op {
                            BinOp::Min => FusedKerSpec::PerColMin(p),
                            BinOp::Max => FusedKerSpec::PerColMax(p),
                            BinOp::Add => FusedKerSpec::PerColAdd(p),
                            BinOp::Mul => FusedKerSpec::PerColMul(p),
                            BinOp::Sub => FusedKerSpec::PerColSub(p),
                            BinOp::SubF => FusedKerSpec::PerColSubF(p),
                        }
                    }
                    ProtoFusedSpec::AddUnicast(_, v, _) => {
                        FusedKerSpec::AddUnicast(tile(per_row(f32s(*v)?)?.cast_mut()))
                    }
                    ProtoFusedSpec::Store(_) => {
                        FusedKerSpec::Store(tile(if is_border { scratch } else { c[start..].as_mut_ptr() }))
                    }
                    other => bail!("gemv: unexpected fused op {other:?}"),
                });
            }
            ker.push(FusedKerSpec::Done);
            // SAFETY: A's panel holds `k` records of `mr` values and B's `k` records of one
            // (tract's packing, or `panel`, checked above to hold them); per-row operands and
            // tiles are `mr` values, in place for full panels (`start + mr <= m`) or in
            // `border`; scalars are read by value.
            let err = unsafe { self.kernel.run(&ker) };
            ensure!(err == 0, "gemv: kernel returned {err}");
            if is_border {
                let store = micro_ops.len() - 1;
                c[start..].copy_from_slice(&border[store * mr..store * mr + rows]);
            }
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for Gemv {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(self.inner.c_fact.clone()))
    }

    as_op!();
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tract_onnx::tract_core::ops::binary::TypedBinOp;
    use tract_onnx::tract_core::ops::einsum::EinSum;
    use tract_onnx::tract_core::ops::math;

    use super::*;
    use crate::probe::tests::{bits, weights};

    /// What follows a layer's product, as an ONNX exporter writes it.
    #[derive(Clone, Copy, Debug)]
    enum Tail {
        Bias,
        BiasRelu,
        ScaleShiftClip,
        SubFromBias,
        SubBias,
        None,
    }

    fn konst(model: &mut TypedModel, name: &str, shape: &[usize], seed: usize) -> OutletId {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = weights(n + seed)[seed..].to_vec();
        model.add_const(name, Tensor::from_shape(shape, &v).unwrap()).unwrap()
    }

    fn bin(model: &mut TypedModel, name: &str, op: TypedBinOp, a: OutletId, b: OutletId) -> OutletId {
        model.wire_node(name, op, &[a, b]).unwrap()[0]
    }

    /// `x[1, k] . W[k, m]` then `tail`, for each `(k, m, tail)` in turn: an MLP on `[1, k0]`.
    fn mlp(k0: usize, layers: &[(usize, Tail)]) -> TypedModel {
        let mut model = TypedModel::default();
        let mut x = model.add_source("x", f32::fact([1, k0])).unwrap();
        let mut k = k0;
        for (i, &(m, tail)) in layers.iter().enumerate() {
            let w = konst(&mut model, &format!("w{i}"), &[k, m], i);
            let einsum = EinSum::new("ak,km->am".parse().unwrap(), f32::datum_type());
            x = model.wire_node(format!("mm{i}"), einsum, &[x, w]).unwrap()[0];
            let row =
                |model: &mut TypedModel, name: &str, seed| konst(model, &format!("{name}{i}"), &[1, m], seed);
            let scalar = |model: &mut TypedModel, name: &str, v: f32| {
                model.add_const(format!("{name}{i}"), tensor2(&[[v]])).unwrap()
            };
            match tail {
                Tail::Bias | Tail::BiasRelu => {
                    let b = row(&mut model, "b", 3);
                    x = bin(&mut model, &format!("add{i}"), math::add(), x, b);
                    if let Tail::BiasRelu = tail {
                        let zero = scalar(&mut model, "zero", 0.0);
                        x = bin(&mut model, &format!("relu{i}"), math::max(), x, zero);
                    }
                }
                Tail::ScaleShiftClip => {
                    let s = row(&mut model, "s", 5);
                    x = bin(&mut model, &format!("mul{i}"), math::mul(), x, s);
                    let b = row(&mut model, "b", 7);
                    x = bin(&mut model, &format!("add{i}"), math::add(), x, b);
                    let six = scalar(&mut model, "six", 6.0);
                    x = bin(&mut model, &format!("clip{i}"), math::min(), x, six);
                }
                Tail::SubFromBias => {
                    let b = row(&mut model, "b", 9);
                    x = bin(&mut model, &format!("sub{i}"), math::sub(), b, x);
                }
                Tail::SubBias => {
                    let b = row(&mut model, "b", 11);
                    x = bin(&mut model, &format!("sub{i}"), math::sub(), x, b);
                }
                Tail::None => {}
            }
            k = m;
        }
        model.select_output_outlets(&[x]).unwrap();
        model
    }

    /// Inputs with the values that show a difference in order or rounding: NaN, infinities,
    /// signed zeros, subnormals and a spread of magnitudes.
    fn input(k: usize, seed: u32) -> Tensor {
        let special = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 0.0, f32::MIN_POSITIVE / 8.0];
        let v: Vec<f32> = (0..k as u32)
            .map(|i| {
                let h = i.wrapping_mul(2_654_435_761).wrapping_add(seed);
                if seed.is_multiple_of(3) && h.is_multiple_of(29) {
                    special[(h as usize / 29) % special.len()]
                } else {
                    ((h % 4001) as f32 / 97.0 - 20.0) * if h % 5 == 0 { 1e-3 } else { 1.0 }
                }
            })
            .collect();
        Tensor::from_shape(&[1, k], &v).unwrap()
    }

    fn count(model: &TypedModel, name: &str) -> usize {
        model.nodes.iter().filter(|n| n.op.name() == name).count()
    }

    /// Each MLP through tract's products and through [`Gemv`], natively: every product is
    /// swapped (its pack and reshapes then run no more) and the outputs are the same bit for
    /// bit. Heights with and without a partial last panel (around native tract's 64-row gemv
    /// tiles), depths from 1, a single output (the vector then packed as A), and every fused
    /// tail: bias by row and as a matrix, ReLU, scale-shift-clip, and subtractions both ways.
    #[test]
    fn runs_tracts_products_bit_for_bit() {
        let cases: Vec<(&str, TypedModel, usize)> = vec![
            ("digits 64-64-10", mlp(64, &[(64, Tail::BiasRelu), (10, Tail::Bias)]), 64),
            ("breast 30-16-2", mlp(30, &[(16, Tail::BiasRelu), (2, Tail::Bias)]), 30),
            ("depth one", mlp(1, &[(65, Tail::BiasRelu)]), 1),
            (
                "partial panels 100-130-63",
                mlp(100, &[(130, Tail::ScaleShiftClip), (63, Tail::SubFromBias)]),
                100,
            ),
            ("bare 33-128", mlp(33, &[(128, Tail::None)]), 33),
            ("minus a bias 40-70-12", mlp(40, &[(70, Tail::SubBias), (12, Tail::SubBias)]), 40),
            ("one output 7-1", mlp(7, &[(1, Tail::Bias)]), 7),
            ("logistic 30-16-1", mlp(30, &[(16, Tail::BiasRelu), (1, Tail::SubFromBias)]), 30),
            (
                "deep 3-5-200-17",
                mlp(3, &[(5, Tail::BiasRelu), (200, Tail::ScaleShiftClip), (17, Tail::Bias)]),
                3,
            ),
        ];
        for (what, model, k) in cases {
            let optimized = model.into_optimized().unwrap();
            let products = count(&optimized, "OptMatMul");
            assert!(products > 0, "{what}: no product to swap");
            let tract = optimized.clone().into_runnable().unwrap();
            let swapped = swapped_in(optimized);
            assert_eq!(count(&swapped, "WardenGemv"), products, "{what}: not every product swapped");
            let plan = swapped.into_runnable().unwrap();
            let order = plan.order_without_consts();
            assert!(
                order.iter().all(|n| plan.model().node(*n).op.name() != "OptMatMulPack"),
                "{what}: a pack still runs"
            );
            for seed in 0..6 {
                let x = input(k, seed);
                let want = tract.run(tvec!(x.clone().into())).unwrap();
                let got = plan.run(tvec!(x.into())).unwrap();
                assert_eq!(bits(&got[0]), bits(&want[0]), "{what}, seed {seed}");
                assert_eq!(got[0].shape(), want[0].shape(), "{what}");
            }
        }
    }

    /// Products [`Gemv`] does not run keep tract's op: more than one column, and no constant
    /// operand.
    #[test]
    fn leaves_other_products_to_tract() {
        let product = |x_shape: [usize; 2], w: Option<[usize; 2]>| {
            let mut model = TypedModel::default();
            let x = model.add_source("x", f32::fact(x_shape)).unwrap();
            let w = match w {
                Some(shape) => konst(&mut model, "w", &shape, 0),
                None => model.add_source("w", f32::fact([x_shape[1], 8])).unwrap(),
            };
            let einsum = EinSum::new("ak,km->am".parse().unwrap(), f32::datum_type());
            let y = model.wire_node("mm", einsum, &[x, w]).unwrap();
            model.select_output_outlets(&y).unwrap();
            model
        };
        let cases =
            [("three columns", product([3, 20], Some([20, 8]))), ("no constant", product([1, 20], None))];
        for (what, model) in cases {
            let optimized = model.into_optimized().unwrap();
            let products = count(&optimized, "OptMatMul");
            assert!(products > 0, "{what}");
            let swapped = swapped_in(optimized);
            assert_eq!(count(&swapped, "OptMatMul"), products, "{what}");
            assert_eq!(count(&swapped, "WardenGemv"), 0, "{what}");
        }
    }
}

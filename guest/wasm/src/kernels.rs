//! The host's native matrix-multiply and depthwise kernels as tract kernels (see
//! `warden_wire::guest::kernels`).
//!
//! At the first matrix product, tract asks its kernel registry what it can run; the
//! [`MmmRoutine`] slots below answer with the kernels the host offers (`mmm_kernels`), each with
//! the host kernel's own tile size and packing, so panels packed here are laid out exactly as
//! the native kernel reads them. The [`MmmTier`] below, ahead of tract's own wasm tier, names the
//! kernel the host chooses for the same product (`mmm_pick`). Every tile then goes
//! through [`HostKer::kernel`]: the tile's op list, with guest addresses, crosses to the host
//! (`mmm_run`), which checks each range it touches before its native kernel runs on it.
//!
//! When the host offers no kernel (another architecture, or switched off), no slot is runnable,
//! the tier has no opinion, and tract uses its own simd128 kernels as before.
//!
//! Depthwise convolutions, which tract lays out channel-last in WebAssembly, go through a
//! channel-inner kernel registered ahead of tract's own (`host_depthwise_c`): each run crosses
//! to the host (`depthwise_c`), which checks it and runs a native kernel; a host that offers
//! none answers `-1` once, and from then on tract's wasm kernel runs them.

use std::borrow::Cow;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use tract_data::prelude::DatumType;
use tract_linalg::WeightType;
use tract_linalg::isa::{Arch, IsaReq, IsaSet};
use tract_linalg::mmm::{FusedKerSpec, MMMInputFormat, MatMatMul, MatMatMulKer, Query, Suitable};
use tract_linalg::mmm_routines::MmmRoutine;
use tract_linalg::mmm_tiers::MmmTier;
use tract_linalg::pack::PackedFormat;
use tract_linalg::routines::{DepthwiseCF32, Func, Routine, RoutineFactory};
use warden_wire::guest::kernels::{HostKernel, MAX_OPS, Packing, WORDS_PER_OP, depthwise_pieces, op};

#[link(wasm_import_module = "warden")]
unsafe extern "C" {
    fn mmm_kernels(buf: *mut u8, cap: u32) -> u32;
    fn mmm_pick(m: i64, k: i64, n: i64) -> i32;
    fn mmm_run(kernel: u32, ops: *const u32, count: u32) -> i32;
}

/// One host kernel as tract sees it.
#[derive(Clone, Debug)]
struct HostKer {
    index: u32,
    name: &'static str,
    mr: usize,
    nr: usize,
    packings: Vec<(Box<dyn MMMInputFormat>, Box<dyn MMMInputFormat>)>,
    row_major_store: bool,
    available: bool,
}

const F32_ONLY: &[DatumType] = &[DatumType::F32];

fn packed(r: u32, p: Packing) -> PackedFormat {
    PackedFormat {
        dt: DatumType::F32,
        r: r as usize,
        alignment_bytes: p.alignment as usize,
        end_padding_record: p.end_padding as usize,
    }
}

impl HostKer {
    fn offered(index: u32, k: &HostKernel) -> HostKer {
        let name: &'static str = Box::leak(format!("warden_host_{}", k.name).into_boxed_str());
        HostKer {
            index,
            name,
            mr: k.mr as usize,
            nr: k.nr as usize,
            packings: vec![(Box::new(packed(k.mr, k.a)), Box::new(packed(k.nr, k.b)))],
            row_major_store: k.row_major_store,
            available: true,
        }
    }

    /// A slot the host left empty: declared, never runnable.
    fn empty(index: u32) -> HostKer {
        let none = Packing { alignment: 16, end_padding: 0 };
        HostKer {
            index,
            name: "warden_host_none",
            mr: 1,
            nr: 1,
            packings: vec![(Box::new(packed(1, none)), Box::new(packed(1, none)))],
            row_major_store: false,
            available: false,
        }
    }
}

fn word(ptr: *const f32) -> u32 {
    ptr as usize as u32
}

impl MatMatMulKer for HostKer {
    type Acc = f32;

    fn name(&self) -> &str {
        self.name
    }

    fn kernel(&self, spec: &[FusedKerSpec<f32>]) -> isize {
        let mut words = [0u32; MAX_OPS * WORDS_PER_OP];
        let mut count = 0;
        for spec in spec {
            let w: [u32; WORDS_PER_OP] = match *spec {
                FusedKerSpec::Done => break,
                FusedKerSpec::Clear => [op::CLEAR, 0, 0, 0, 0],
                FusedKerSpec::LoadTile(col, row) => [op::LOAD_TILE, word(col), word(row), 0, 0],
                FusedKerSpec::ScalarMin(x) => [op::SCALAR_MIN, x.to_bits(), 0, 0, 0],
                FusedKerSpec::ScalarMax(x) => [op::SCALAR_MAX, x.to_bits(), 0, 0, 0],
                FusedKerSpec::ScalarAdd(x) => [op::SCALAR_ADD, x.to_bits(), 0, 0, 0],
                FusedKerSpec::ScalarMul(x) => [op::SCALAR_MUL, x.to_bits(), 0, 0, 0],
                FusedKerSpec::ScalarSub(x) => [op::SCALAR_SUB, x.to_bits(), 0, 0, 0],
                FusedKerSpec::ScalarSubF(x) => [op::SCALAR_SUB_F, x.to_bits(), 0, 0, 0],
                FusedKerSpec::LeakyRelu(x) => [op::LEAKY_RELU, x.to_bits(), 0, 0, 0],
                FusedKerSpec::PerRowMin(p) => [op::PER_ROW_MIN, word(p), 0, 0, 0],
                FusedKerSpec::PerRowMax(p) => [op::PER_ROW_MAX, word(p), 0, 0, 0],
                FusedKerSpec::PerRowAdd(p) => [op::PER_ROW_ADD, word(p), 0, 0, 0],
                FusedKerSpec::PerRowMul(p) => [op::PER_ROW_MUL, word(p), 0, 0, 0],
                FusedKerSpec::PerRowSub(p) => [op::PER_ROW_SUB, word(p), 0, 0, 0],
                FusedKerSpec::PerRowSubF(p) => [op::PER_ROW_SUB_F, word(p), 0, 0, 0],
                FusedKerSpec::PerColMin(p) => [op::PER_COL_MIN, word(p), 0, 0, 0],
                FusedKerSpec::PerColMax(p) => [op::PER_COL_MAX, word(p), 0, 0, 0],
                FusedKerSpec::PerColAdd(p) => [op::PER_COL_ADD, word(p), 0, 0, 0],
                FusedKerSpec::PerColMul(p) => [op::PER_COL_MUL, word(p), 0, 0, 0],
                FusedKerSpec::PerColSub(p) => [op::PER_COL_SUB, word(p), 0, 0, 0],
                FusedKerSpec::PerColSubF(p) => [op::PER_COL_SUB_F, word(p), 0, 0, 0],
                FusedKerSpec::AddRowColProducts(rows, cols) => {
                    [op::ADD_ROW_COL_PRODUCTS, word(rows), word(cols), 0, 0]
                }
                FusedKerSpec::AddUnicast(s) | FusedKerSpec::Store(s) => [
                    if matches!(spec, FusedKerSpec::Store(_)) { op::STORE } else { op::ADD_UNICAST },
                    s.ptr as usize as u32,
                    s.row_byte_stride as i32 as u32,
                    s.col_byte_stride as i32 as u32,
                    s.item_size as u32,
                ],
                FusedKerSpec::AddMatMul { k, pa, pb, packing } => {
                    [op::ADD_MAT_MUL, k as u32, pa as usize as u32, pb as usize as u32, packing as u32]
                }
                // Quantization ops never reach an f32 kernel; the host traps on opcode 0.
                FusedKerSpec::QScale(..)
                | FusedKerSpec::RoundingShiftRight(..)
                | FusedKerSpec::ShiftLeft(..) => [0; WORDS_PER_OP],
            };
            let Some(slot) = words.get_mut(count * WORDS_PER_OP..(count + 1) * WORDS_PER_OP) else {
                panic!("a tile of more than {MAX_OPS} fused ops");
            };
            slot.copy_from_slice(&w);
            count += 1;
        }
        // SAFETY: an import of the host; it reads `count` ops from `words`, which lives until it
        // returns, and checks every guest address in them itself.
        unsafe { mmm_run(self.index, words.as_ptr(), count as u32) as isize }
    }

    fn mr(&self) -> usize {
        self.mr
    }

    fn nr(&self) -> usize {
        self.nr
    }

    fn arch(&self) -> Option<Arch> {
        Some(Arch::Wasm32Simd128)
    }

    fn boost(&self) -> isize {
        0
    }

    fn packings(&self) -> &[(Box<dyn MMMInputFormat>, Box<dyn MMMInputFormat>)] {
        &self.packings
    }

    fn stores(&self) -> Cow<'_, [DatumType]> {
        Cow::Borrowed(F32_ONLY)
    }

    fn runnable_on(&self, isa: &IsaSet) -> bool {
        self.available && isa.arch() == Some(Arch::Wasm32Simd128)
    }

    fn built(&self) -> bool {
        self.available
    }

    fn stores_row_major_tile(&self) -> bool {
        self.row_major_store
    }
}

/// The host's kernels, asked once.
fn offered() -> &'static [HostKer] {
    static OFFERED: OnceLock<Vec<HostKer>> = OnceLock::new();
    OFFERED.get_or_init(|| {
        let mut buf = vec![0u8; 4096];
        // SAFETY: an import of the host, writing at most `buf.len()` bytes into `buf`.
        let mut len = unsafe { mmm_kernels(buf.as_mut_ptr(), buf.len() as u32) } as usize;
        if len > buf.len() {
            buf.resize(len, 0);
            // SAFETY: as above, with the larger buffer.
            len = unsafe { mmm_kernels(buf.as_mut_ptr(), buf.len() as u32) } as usize;
        }
        let list: Vec<HostKernel> =
            buf.get(..len).and_then(|b| postcard::from_bytes(b).ok()).unwrap_or_default();
        // The host's kernels read the padded panels from now on: see `Zeroed`.
        crate::zero_allocations(list.is_empty());
        list.iter().take(SLOTS).enumerate().map(|(i, k)| HostKer::offered(i as u32, k)).collect()
    })
}

const SLOTS: usize = 32;

fn slot(index: usize) -> Box<dyn MatMatMul> {
    match offered().get(index) {
        Some(k) => Box::new(k.clone()),
        None => Box::new(HostKer::empty(index as u32)),
    }
}

macro_rules! slots {
    ($($i:literal)*) => {
        $( inventory::submit! { MmmRoutine { make: || slot($i) } } )*
    };
}
slots!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31);

fn dim(d: Option<usize>) -> i64 {
    d.map_or(-1, |d| i64::try_from(d).unwrap_or(i64::MAX))
}

/// The kernel the host would run natively for this product, if it offers it.
fn host_preferred(
    _isa: &IsaSet,
    dt: DatumType,
    query: &Query,
    _suitable: &[Suitable],
) -> Option<&'static str> {
    let plain_f32 = matches!(query.weight, WeightType::Plain(DatumType::F32));
    if dt != DatumType::F32 || query.activation != DatumType::F32 || !plain_f32 || offered().is_empty() {
        return None;
    }
    // SAFETY: an import of the host taking plain integers.
    let index = unsafe { mmm_pick(dim(query.m), dim(query.k), dim(query.n)) };
    offered().get(usize::try_from(index).ok()?).map(|k| k.name)
}

inventory::submit! {
    MmmTier {
        arch: Some(Arch::Wasm32Simd128),
        precedence: 2,
        name: "warden-host",
        applies: |_| true,
        preferred: host_preferred,
    }
}

// The channel-inner depthwise kernel: the host's native one when it offers it.

#[link(wasm_import_module = "warden")]
unsafe extern "C" {
    fn depthwise_c(
        input: *const f32,
        output: *mut f32,
        kernel: *const f32,
        tap_indices: *const usize,
        offsets: *const isize,
        taps: u32,
        bias: *const f32,
        channels: u32,
        k_stride: u32,
        len: u32,
        in_stride: i32,
        out_stride: i32,
    ) -> i32;
}

/// Whether the host still might run depthwise calls: cleared at its first refusal (`-1`).
static HOST_DEPTHWISE: AtomicBool = AtomicBool::new(true);

/// tract's own WebAssembly channel-inner kernel, for a host that offers none.
fn wasm_depthwise_c() -> Option<DepthwiseCF32> {
    static OWN: OnceLock<Option<DepthwiseCF32>> = OnceLock::new();
    *OWN.get_or_init(|| {
        tract_linalg::routines::declared().find_map(|r| match r.factory {
            RoutineFactory::DepthwiseCF32 { name: "wasm_simd128_depthwise_c_f32", run } => Some(run),
            _ => None,
        })
    })
}

/// tract-linalg's `DepthwiseCF32` contract, run by the host when it offers the kernel, else by
/// tract's own wasm kernel.
///
/// # Safety
/// The contract's (see `DepthwiseCF32`); the host checks every range it touches anyway.
#[allow(clippy::too_many_arguments)]
unsafe fn host_depthwise_c(
    input: *const f32,
    output: *mut f32,
    kernel: *const f32,
    tap_indices: &[usize],
    offsets: &[isize],
    bias: *const f32,
    channels: usize,
    k_stride: usize,
    len: usize,
    in_stride: isize,
    out_stride: isize,
) {
    if HOST_DEPTHWISE.load(Ordering::Relaxed) {
        let taps = tap_indices.len().min(offsets.len());
        // At most MAX_DEPTHWISE_WORK multiply-adds per call, so the deadline's epoch checks
        // here in the guest come around between calls.
        let mut done = 0;
        for p in depthwise_pieces(len, channels, taps) {
            let at = |ptr: *const f32, stride: isize| {
                ptr.wrapping_offset(p.first as isize * stride).wrapping_add(p.c0)
            };
            // SAFETY: an import of the host; it reads the tap lists and the operands at these
            // guest addresses after checking them against this memory, and writes only the run.
            done = unsafe {
                depthwise_c(
                    at(input, in_stride),
                    at(output.cast_const(), out_stride).cast_mut(),
                    kernel.wrapping_add(p.c0),
                    tap_indices.as_ptr(),
                    offsets.as_ptr(),
                    taps as u32,
                    bias.wrapping_add(p.c0),
                    p.channels as u32,
                    k_stride as u32,
                    p.len as u32,
                    in_stride as i32,
                    out_stride as i32,
                )
            };
            if done != 0 {
                break;
            }
        }
        if done == 0 {
            return;
        }
        // Only the first call can be refused this way (the host offers the kernel or not), so
        // nothing was written yet: the whole run goes to tract's own kernel below.
        HOST_DEPTHWISE.store(false, Ordering::Relaxed);
    }
    let own = wasm_depthwise_c().expect("tract-linalg has a wasm depthwise_c_f32 kernel");
    // SAFETY: the caller's contract, passed on unchanged.
    unsafe {
        own(input, output, kernel, tap_indices, offsets, bias, channels, k_stride, len, in_stride, out_stride)
    }
}

inventory::submit! {
    Routine {
        func: Func::DepthwiseC,
        arch: Some(Arch::Wasm32Simd128),
        isa: IsaReq::ANY,
        // Ahead of tract's own wasm kernel (boost 0), which it falls back on.
        boost: 1,
        round_trip: false,
        factory: RoutineFactory::DepthwiseCF32 { name: "warden_host_depthwise_c_f32", run: host_depthwise_c },
    }
}

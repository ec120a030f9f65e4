//! The host's native matrix-multiply and depthwise kernels as tract kernels (see
//! `warden_wire::guest::kernels`).
//!
//! At the first matrix product, tract asks its kernel registry what it can run; the
//! [`MmmRoutine`] slots below answer with the kernels the host offers (`mmm_kernels`), each with
//! the host kernel's own tile size and packing, so panels packed here are laid out exactly as
//! the native kernel reads them. The [`MmmTier`] below, ahead of tract's own wasm tier, names the
//! kernel the host chooses for the same product (`mmm_pick`). Every tile then goes
//! through [`HostKer::kernel`]: the tile's op list, with guest addresses, crosses to the host
//! (`mmm_run`), which checks each range it touches before its native kernel runs on it. The
//! tiles a product fills go a row per call instead ([`HostMmm`], `mmm_run_tiles`), each still
//! checked by the host.
//!
//! When the host offers no kernel (another architecture, or switched off), no slot is runnable,
//! the tier has no opinion, and tract uses its own simd128 kernels as before.
//!
//! Depthwise convolutions, which tract lays out channel-last in WebAssembly, go through a
//! channel-inner kernel registered ahead of tract's own (`host_depthwise_c`): each run crosses
//! to the host (`depthwise_c`), which checks it and runs a native kernel; a host that offers
//! none answers `-1` once, and from then on tract's wasm kernel runs them.

use std::alloc::Layout;
use std::borrow::Cow;
use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use tract_data::internal::{ExoticFact, TractResult, bail, ensure, f16};
use tract_data::prelude::DatumType;
use tract_linalg::WeightType;
use tract_linalg::isa::{Arch, IsaReq, IsaSet};
use tract_linalg::mmm::{
    AsInputValue, FusedKerSpec, FusedSpec, MMMInputFormat, MMMInputValue, MatMatMul, MatMatMulKer,
    OutputStoreSpec, PackedExoticFact, Query, ScratchSpace, ScratchSpaceImpl, Suitable,
};
use tract_linalg::mmm_routines::MmmRoutine;
use tract_linalg::mmm_tiers::MmmTier;
use tract_linalg::pack::PackedFormat;
use tract_linalg::routines::{DepthwiseCF32, Func, Routine, RoutineFactory};
use warden_wire::guest::kernels::{
    HostKernel, MAX_OPS, MAX_TILE_WORK, Packing, WORDS_PER_OP, depthwise_pieces, op, tile_work,
};

#[link(wasm_import_module = "warden")]
unsafe extern "C" {
    fn mmm_kernels(buf: *mut u8, cap: u32) -> u32;
    fn mmm_pick(m: i64, k: i64, n: i64) -> i32;
    fn mmm_run(kernel: u32, ops: *const u32, count: u32) -> i32;
    fn mmm_run_tiles(kernel: u32, ops: *const u32, count: u32, tiles: u32, deltas: *const u32) -> i32;
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

/// One tile's op list as the host reads it: `count` ops of [`WORDS_PER_OP`] words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ops {
    words: [u32; MAX_OPS * WORDS_PER_OP],
    count: usize,
}

/// tract's op list for one tile, with guest addresses.
fn encode(spec: &[FusedKerSpec<f32>]) -> Ops {
    let mut words = [0u32; MAX_OPS * WORDS_PER_OP];
    let count = encode_each(spec, |at, w| words[at..at + WORDS_PER_OP].copy_from_slice(&w));
    Ops { words, count }
}

/// Hands `put` each op of tract's list for one tile, with the index of its first word; answers
/// the number of ops (at most [`MAX_OPS`]).
fn encode_each(spec: &[FusedKerSpec<f32>], mut put: impl FnMut(usize, [u32; WORDS_PER_OP])) -> usize {
    let mut count = 0;
    for w in spec.iter().map_while(op_words) {
        assert!(count < MAX_OPS, "a tile of more than {MAX_OPS} fused ops");
        put(count * WORDS_PER_OP, w);
        count += 1;
    }
    count
}

/// One op of a tile's list as the host reads it; `None` at the end of the list.
#[inline(always)]
fn op_words(spec: &FusedKerSpec<f32>) -> Option<[u32; WORDS_PER_OP]> {
    Some(match *spec {
        FusedKerSpec::Done => return None,
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
        FusedKerSpec::QScale(..) | FusedKerSpec::RoundingShiftRight(..) | FusedKerSpec::ShiftLeft(..) => {
            [0; WORDS_PER_OP]
        }
    })
}

thread_local! {
    /// While it holds `Some`, [`HostKer::kernel`] records its tile's op list there instead of
    /// running it (see [`HostMmm::captured`]).
    static CAPTURE: RefCell<Option<Option<Ops>>> = const { RefCell::new(None) };
}

impl MatMatMulKer for HostKer {
    type Acc = f32;

    fn name(&self) -> &str {
        self.name
    }

    fn kernel(&self, spec: &[FusedKerSpec<f32>]) -> isize {
        if CAPTURE.with_borrow_mut(|c| c.as_mut().map(|c| *c = Some(encode(spec))).is_some()) {
            return 0;
        }
        // The words are written as they are encoded, without zeroing or copying a whole `Ops`
        // first (memsets and copies of 640 bytes per tile, a few percent of PP-OCR orientation).
        let mut words = [MaybeUninit::<u32>::uninit(); MAX_OPS * WORDS_PER_OP];
        let count = encode_each(spec, |at, w| {
            for (slot, w) in words[at..at + WORDS_PER_OP].iter_mut().zip(w) {
                slot.write(w);
            }
        });
        // SAFETY: an import of the host; it reads `count` ops from `words`, all of them written
        // above, which live until it returns, and checks every guest address in them itself.
        unsafe { mmm_run(self.index, words.as_ptr().cast(), count as u32) as isize }
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

impl warden_guest::TileKernel for HostKer {
    fn run(&self, ops: &[FusedKerSpec<f32>]) -> isize {
        MatMatMulKer::kernel(self, ops)
    }
}

/// Lets the guest's matrix-vector products (`warden_guest`'s `gemv`) run their tiles on the
/// host's kernels, through [`HostKer::kernel`] and so through the host's checks, as tract's
/// driver does.
pub(crate) fn register_gemv() {
    warden_guest::register_foreign_kernels(|mmm| {
        let any: &dyn std::any::Any = mmm;
        any.downcast_ref::<HostMmm>().map(|h| Arc::new(h.0.clone()) as Arc<dyn warden_guest::TileKernel>)
    });
}

/// A host kernel as a whole matrix product: tract's own driver ([`HostKer`]'s blanket
/// `MatMatMul`), except that the tiles a product fills go to the host a row of tiles per call
/// (`mmm_run_tiles`) instead of one per call (CNN 0.932x, PP-OCR recognition 0.941x and
/// orientation 0.970x; benches/README.md), or a column per call for a product with more rows of
/// tiles than columns.
///
/// tract resolves each tile's op list from the product's fused ops; every address in it is an
/// affine function of the tile's place (packed panels, bias slices and output tiles at fixed
/// strides). [`HostMmm::full_tiles`] has tract resolve up to three tiles without running them
/// (`CAPTURE`), takes the differences as the steps between rows and between columns, checks them
/// against one more tile (the far corner) and hands the host the first tile of each row with the
/// step between columns (or of each column, with the step between rows). The host checks every
/// tile it derives in full, as it checks a tile from `mmm_run`. The last row of tiles, when the
/// product fills it only partly, goes the same way ([`HostMmm::border_row`]), through padded
/// copies; the other border tiles (a last, partial, column) still run one at a time through
/// tract's own code, which copies them out of scratch space. A lazily packed B operand (tract's
/// im2col) is packed ahead, every panel once, into one buffer ([`Prepacked`]) that all tiles
/// read. A product with an op this does not handle, with fewer than eight full tiles or three a
/// line (the captures would cost more than the calls they save), or whose captured steps do
/// not check, runs as tract runs it.
#[derive(Clone, Debug)]
struct HostMmm(HostKer);

/// A product's first full tile's op list, and the steps from one tile to the next down and
/// right.
struct Steps {
    first: Ops,
    down: Ops,
    right: Ops,
}

/// Whether the host still might run rows of tiles: cleared at its first refusal (`-1`).
static HOST_TILE_BATCHES: AtomicBool = AtomicBool::new(true);

/// Largest buffer of packed B panels [`HostMmm`] builds for a lazily packed operand; beyond it
/// the product runs tract's way.
const MAX_PACKED_B: usize = 16 << 20;

impl HostMmm {
    /// The op list tract resolves for the full tile at (`down`, `right`), without running it.
    ///
    /// # Safety
    /// tract's contract for `ScratchSpaceImpl::run`: `scratch` was prepared for `specs` and
    /// this kernel, and the tile is inside the product.
    unsafe fn captured(
        &self,
        scratch: &ScratchSpaceImpl<f32>,
        specs: &[FusedSpec],
        down: usize,
        right: usize,
    ) -> TractResult<Ops> {
        CAPTURE.with_borrow_mut(|c| *c = Some(None));
        // SAFETY: the caller's contract.
        let ran = unsafe { scratch.run(&self.0, specs, down, right) };
        let ops = CAPTURE.with_borrow_mut(|c| c.take().flatten());
        ran?;
        match ops {
            Some(ops) => Ok(ops),
            None => bail!("tract resolved no op list for tile ({down}, {right})"),
        }
    }

    /// Runs the product's full tiles a row (or a column) at a time (see [`HostMmm`]), and
    /// answers the first tile's op list with the steps between rows and between columns; `None`
    /// if it cannot (then none ran).
    ///
    /// # Safety
    /// tract's contract for `run_with_scratch_space`, with `scratch` prepared for `specs`.
    unsafe fn full_tiles(
        &self,
        m: usize,
        n: usize,
        scratch: &ScratchSpaceImpl<f32>,
        specs: &[FusedSpec],
    ) -> TractResult<Option<Steps>> {
        let (mr, nr) = (self.0.mr, self.0.nr);
        let (rows, cols) = (m / mr, n / nr);
        // SAFETY (the captures): the caller's contract; each tile is a full tile of the product.
        let first = unsafe { self.captured(scratch, specs, 0, 0)? };
        let step = |ops: Ops| {
            let mut d = ops;
            for (d, f) in d.words.iter_mut().zip(&first.words) {
                *d = d.wrapping_sub(*f);
            }
            d
        };
        let zero = Ops { words: [0; MAX_OPS * WORDS_PER_OP], count: first.count };
        let down = if rows > 1 { step(unsafe { self.captured(scratch, specs, 1, 0)? }) } else { zero };
        let right = if cols > 1 { step(unsafe { self.captured(scratch, specs, 0, 1)? }) } else { zero };
        let corner = unsafe { self.captured(scratch, specs, rows - 1, cols - 1)? };
        // Only the live words (`count` ops) are stepped and compared, in word loops, into one
        // `Ops` reused for every call: whole arrays would be copies and a `memcmp` of 640
        // bytes, a byte loop in WebAssembly with an epoch check per byte.
        let live = (first.count * WORDS_PER_OP).min(first.words.len());
        let at = |ops: &mut Ops, row: usize, col: usize| {
            let (row, col) = (row as u32, col as u32);
            let steps = first.words.iter().zip(&down.words).zip(&right.words);
            for (w, ((f, d), r)) in ops.words[..live].iter_mut().zip(steps) {
                *w = f.wrapping_add(d.wrapping_mul(row)).wrapping_add(r.wrapping_mul(col));
            }
        };
        let mut ops = first;
        at(&mut ops, rows - 1, cols - 1);
        if [down.count, right.count, corner.count].iter().any(|c| *c != first.count)
            || !ops.words[..live].iter().zip(&corner.words[..live]).all(|(a, b)| a == b)
        {
            return Ok(None);
        }
        // A call per row of tiles, or per column for a product narrower than it is tall (a
        // channel-last pointwise convolution with few output channels: 1 or 2 columns of
        // tiles, hundreds of rows).
        let by_rows = cols >= rows;
        let (along, len, lines) = if by_rows { (&right, cols, rows) } else { (&down, rows, cols) };
        for i in 0..lines {
            if by_rows {
                at(&mut ops, i, 0)
            } else {
                at(&mut ops, 0, i)
            }
            if !self.run_line(&ops, along, len, i == 0)? {
                return Ok(None);
            }
        }
        Ok(Some(Steps { first, down, right }))
    }

    /// Runs `len` tiles of one row (or column), from `ops` (its first tile) stepping by `along`,
    /// in calls of at most `MAX_TILE_WORK` multiply-adds (the host refuses more). `false` if the
    /// host refused the first call of a product's first line (then nothing ran, and tiles go
    /// one at a time from now on).
    fn run_line(&self, ops: &Ops, along: &Ops, len: usize, first_line: bool) -> TractResult<bool> {
        let (mr, nr) = (self.0.mr, self.0.nr);
        let per_tile = tile_work(mr as u64, nr as u64, &ops.words[..ops.count * WORDS_PER_OP]);
        let chunk = usize::try_from(MAX_TILE_WORK / per_tile.max(1)).unwrap_or(usize::MAX).max(1);
        let mut ops = *ops;
        let live = ops.count * WORDS_PER_OP;
        let mut done_tiles = 0;
        while done_tiles < len {
            let tiles = chunk.min(len - done_tiles);
            // SAFETY: an import of the host; it reads `ops.count` ops from `ops.words` and as
            // many from `along.words`, which live until it returns, and checks every guest
            // address of every tile it derives from them itself.
            let done = unsafe {
                mmm_run_tiles(
                    self.0.index,
                    ops.words.as_ptr(),
                    ops.count as u32,
                    tiles as u32,
                    along.words.as_ptr(),
                )
            };
            if done == -1 && first_line && done_tiles == 0 {
                // Only the first call can be refused this way (the host runs batches or not),
                // so nothing ran yet: every tile goes one at a time from now on.
                HOST_TILE_BATCHES.store(false, Ordering::Relaxed);
                return Ok(false);
            }
            ensure!(done == 0, "Kernel {} returned error {done}", self.0.name);
            for (w, r) in ops.words[..live].iter_mut().zip(&along.words) {
                *w = w.wrapping_add(r.wrapping_mul(tiles as u32));
            }
            done_tiles += tiles;
        }
        Ok(true)
    }

    /// Runs the full-width tiles of the product's last, partial, row of tiles (`m % mr` rows)
    /// a row per call, as [`HostMmm::full_tiles`] runs the full rows, instead of one call and
    /// two copies per tile: the row's op list is the full rows' stepped once more, with each
    /// per-row operand read from a zero-padded copy of its `m % mr` values (tract's
    /// `for_border_tile` pads them the same way) and the tiles stored into a buffer, whose live
    /// rows are then copied into C (as tract's `set_from_tile` does per tile). The kernel sees
    /// the same operands as tract's border tiles, so the values are the same. `false` (nothing
    /// ran) for an op this cannot redirect: a unicast add, a tile load or row-and-column
    /// products, which read operands past `m`; also for no partial row, for fewer than three
    /// tiles (the copies and buffers cost about what the calls they save do), and after a
    /// single full row (the step down is captured only between two full rows: with one it is
    /// zeros, and the last row's op list would be the first row's).
    ///
    /// # Safety
    /// `steps` are [`HostMmm::full_tiles`]'s for this product, whose C is still alive.
    unsafe fn border_row(&self, m: usize, n: usize, steps: &Steps) -> TractResult<bool> {
        let (mr, nr) = (self.0.mr, self.0.nr);
        let (rows, cols, height) = (m / mr, n / nr, m % mr);
        if height == 0 || cols < 3 || rows < 2 {
            return Ok(false);
        }
        let Steps { first, down, right } = steps;
        let live = first.count * WORDS_PER_OP;
        let mut ops = *first;
        let mut step = *right;
        for (w, d) in ops.words[..live].iter_mut().zip(&down.words) {
            *w = w.wrapping_add(d.wrapping_mul(rows as u32));
        }
        let tile_len = mr * nr;
        let mut tiles = vec![0f32; tile_len * cols];
        // The per-row operands' padded copies, `mr` values each, at most one per op: allocated
        // once, so the addresses written into `ops` stay valid until the call.
        let mut padded = vec![0f32; first.count * mr];
        let mut copies = padded.chunks_exact_mut(mr);
        let mut c = None;
        for (w, r) in
            ops.words[..live].chunks_exact_mut(WORDS_PER_OP).zip(step.words.chunks_exact_mut(WORDS_PER_OP))
        {
            match w[0] {
                op::PER_ROW_MIN..=op::PER_ROW_SUB_F => {
                    if r[1] != 0 {
                        return Ok(false);
                    }
                    // SAFETY: tract's per-row operand holds `m` values; this row's start, at
                    // `rows * mr`, is followed by `height` of them.
                    let values = unsafe { std::slice::from_raw_parts(w[1] as usize as *const f32, height) };
                    let Some(copy) = copies.next() else { bail!("more per-row ops than ops") };
                    copy[..height].copy_from_slice(values);
                    w[1] = word(copy.as_ptr());
                }
                op::STORE => {
                    if w[4] != 4 || c.is_some() {
                        return Ok(false);
                    }
                    c = Some((w[1], w[2] as i32 as isize, w[3] as i32 as isize, r[1]));
                    // Tile `j` at `j * mr * nr` in `tiles`, column-major, like tract's scratch.
                    w[1] = tiles.as_mut_ptr() as usize as u32;
                    w[2] = 4;
                    w[3] = (4 * mr) as u32;
                    r[1] = (4 * tile_len) as u32;
                    r[2] = 0;
                    r[3] = 0;
                }
                op::ADD_UNICAST | op::LOAD_TILE | op::ADD_ROW_COL_PRODUCTS => return Ok(false),
                _ => {}
            }
        }
        let Some((c0, rs, cs, c_step)) = c else { return Ok(false) };
        if !self.run_line(&ops, &step, cols, false)? {
            return Ok(false);
        }
        for (j, tile) in tiles.chunks_exact(tile_len).enumerate() {
            let base = c0.wrapping_add(c_step.wrapping_mul(j as u32)) as usize as *mut u8;
            for y in 0..height {
                for x in 0..nr {
                    // SAFETY: the live rows of C's tile (`rows`, `j`): tract's own store
                    // addresses for them, the tile's place stepped as the host checked it.
                    unsafe {
                        base.offset(y as isize * rs + x as isize * cs).cast::<f32>().write(tile[y + x * mr]);
                    }
                }
            }
        }
        drop(padded);
        Ok(true)
    }

    /// The product over `specs` (prepared in `scratch`): full tiles by rows if `full_tiles`
    /// can, every other tile (or all of them) one at a time the way tract runs it.
    ///
    /// # Safety
    /// tract's contract for `run_with_scratch_space`.
    unsafe fn run_rows(
        &self,
        m: usize,
        n: usize,
        scratch: &mut ScratchSpaceImpl<f32>,
        specs: &[FusedSpec],
    ) -> TractResult<()> {
        let (mr, nr) = (self.0.mr, self.0.nr);
        // SAFETY: tract's contract for `prepare`, passed on; then the scratch is prepared for
        // `specs` and this kernel, as `full_tiles` and `ScratchSpaceImpl::run` require.
        unsafe {
            scratch.prepare(&self.0, m, n, specs)?;
            let steps = self.full_tiles(m, n, scratch, specs)?;
            let border = match &steps {
                Some(steps) => self.border_row(m, n, steps)?,
                None => false,
            };
            let (rows, cols) = (m / mr, n / nr);
            for down in 0..m.div_ceil(mr) {
                for right in 0..n.div_ceil(nr) {
                    let done = steps.is_some() && right < cols && (down < rows || border);
                    if !done {
                        scratch.run(&self.0, specs, down, right)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// `Some` if every fused op is one whose addresses [`HostMmm`] can step (scalar, per-row and
/// per-column ops, unicast adds, the store, and one product whose A operand is packed ahead of
/// time), holding the product's B operand if tract packs it lazily.
fn batchable<'s>(specs: &'s [FusedSpec<'s>]) -> Option<Option<&'s dyn MMMInputValue>> {
    let mut product = None;
    for spec in specs {
        match spec {
            FusedSpec::BinScalar(..)
            | FusedSpec::LeakyRelu(..)
            | FusedSpec::BinPerRow(..)
            | FusedSpec::BinPerCol(..)
            | FusedSpec::AddUnicast(..)
            | FusedSpec::Store(..) => {}
            FusedSpec::AddMatMul { a, b, .. }
                if product.is_none() && a.scratch_panel_buffer_layout().is_none() =>
            {
                let b: &dyn MMMInputValue = &**b;
                product = Some(b.scratch_panel_buffer_layout().map(|_| b));
            }
            _ => return None,
        }
    }
    product
}

/// An aligned buffer of packed panels, freed on drop.
#[derive(Debug)]
struct PanelBuffer {
    ptr: *mut u8,
    layout: Layout,
}

impl PanelBuffer {
    fn new(layout: Layout) -> TractResult<PanelBuffer> {
        // SAFETY: `layout` has a non-zero size (the caller's `max(1)`).
        let ptr = unsafe { std::alloc::alloc(layout) };
        ensure!(!ptr.is_null(), "no memory for {} bytes of packed panels", layout.size());
        Ok(PanelBuffer { ptr, layout })
    }
}

// SAFETY: the buffer is written only while it is being built, by its owner, and only read
// after (and the guest has one thread).
unsafe impl Send for PanelBuffer {}
// SAFETY: as above.
unsafe impl Sync for PanelBuffer {}

impl Drop for PanelBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// A lazily packed B operand (tract's im2col), packed ahead: every panel once, one after the
/// other, so that each tile's panel address is a step from the first and no tile packs again.
#[derive(Clone, Debug)]
struct Prepacked {
    buffer: Arc<PanelBuffer>,
    stride: usize,
    mn: usize,
    fact: PackedExoticFact,
}

impl Prepacked {
    /// `b`'s `panels` panels, packed with `b`'s own code; `None` if they would take more than
    /// [`MAX_PACKED_B`] bytes. `format` is the kernel's packing of B, which `b` packs to.
    fn new(b: &dyn MMMInputValue, panels: usize, format: &PackedFormat) -> TractResult<Option<Prepacked>> {
        let Some(layout) = b.scratch_panel_buffer_layout() else { return Ok(None) };
        let stride = layout.size().next_multiple_of(layout.align());
        let Some(size) = stride.checked_mul(panels).filter(|s| *s <= MAX_PACKED_B) else {
            return Ok(None);
        };
        let buffer = PanelBuffer::new(Layout::from_size_align(size.max(1), layout.align())?)?;
        for panel in 0..panels {
            let at = buffer.ptr.wrapping_add(panel * stride);
            let packed = b.panel_bytes(panel, Some(at))?;
            ensure!(packed == at.cast_const(), "a lazy panel packed outside its buffer");
        }
        let fact = PackedExoticFact { format: Box::new(format.clone()), mn: b.mn().into(), k: b.k() };
        Ok(Some(Prepacked { buffer: Arc::new(buffer), stride, mn: b.mn(), fact }))
    }
}

impl PartialEq for Prepacked {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.buffer, &other.buffer)
    }
}

impl Eq for Prepacked {}

impl std::hash::Hash for Prepacked {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.buffer.ptr as usize, self.stride, self.mn).hash(state);
    }
}

impl std::fmt::Display for Prepacked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Warden's packed-ahead B ({})", self.fact)
    }
}

impl MMMInputValue for Prepacked {
    fn format(&self) -> &dyn MMMInputFormat {
        &*self.fact.format
    }
    fn scratch_panel_buffer_layout(&self) -> Option<Layout> {
        None
    }
    fn panel_bytes(&self, i: usize, _: Option<*mut u8>) -> TractResult<*const u8> {
        ensure!(i * self.stride < self.buffer.layout.size(), "no packed panel {i}");
        Ok(self.buffer.ptr.wrapping_add(i * self.stride).cast_const())
    }
    fn mn(&self) -> usize {
        self.mn
    }
    fn k(&self) -> usize {
        self.fact.k
    }
    fn exotic_fact(&self) -> &dyn ExoticFact {
        &self.fact
    }
    fn extract_at_mn_f16(&self, _: usize, _: &mut [f16]) -> TractResult<()> {
        bail!("packed-ahead panels are only read by panel")
    }
    fn extract_at_mn_f32(&self, _: usize, _: &mut [f32]) -> TractResult<()> {
        bail!("packed-ahead panels are only read by panel")
    }
}

impl MatMatMul for HostMmm {
    fn name(&self) -> &str {
        MatMatMul::name(&self.0)
    }
    fn mr(&self) -> usize {
        self.0.mr
    }
    fn nr(&self) -> usize {
        self.0.nr
    }
    fn arch(&self) -> Option<Arch> {
        MatMatMul::arch(&self.0)
    }
    fn emulated(&self) -> bool {
        MatMatMul::emulated(&self.0)
    }
    fn boost(&self) -> isize {
        MatMatMul::boost(&self.0)
    }
    fn preference(&self) -> isize {
        MatMatMul::preference(&self.0)
    }
    fn runnable_on(&self, isa: &IsaSet) -> bool {
        MatMatMul::runnable_on(&self.0, isa)
    }
    fn runnable(&self) -> bool {
        MatMatMul::runnable(&self.0)
    }
    fn built(&self) -> bool {
        MatMatMul::built(&self.0)
    }
    fn isa(&self) -> IsaReq {
        MatMatMul::isa(&self.0)
    }
    fn packings(&self) -> &[(Box<dyn MMMInputFormat>, Box<dyn MMMInputFormat>)] {
        &self.0.packings
    }
    fn internal_type(&self) -> DatumType {
        MatMatMul::internal_type(&self.0)
    }
    fn can_fuse(&self, spec: &FusedSpec) -> bool {
        MatMatMul::can_fuse(&self.0, spec)
    }
    unsafe fn c_view(&self, m_axis: Option<usize>, n_axis: Option<usize>) -> OutputStoreSpec {
        // SAFETY: passed on.
        unsafe { MatMatMul::c_view(&self.0, m_axis, n_axis) }
    }
    unsafe fn c_from_data_and_strides(
        &self,
        item_size: usize,
        row_stride: isize,
        col_stride: isize,
    ) -> OutputStoreSpec {
        // SAFETY: passed on.
        unsafe { MatMatMul::c_from_data_and_strides(&self.0, item_size, row_stride, col_stride) }
    }
    fn stores(&self) -> Cow<'_, [DatumType]> {
        MatMatMul::stores(&self.0)
    }
    unsafe fn allocate_scratch_space(&self) -> Box<dyn ScratchSpace> {
        // SAFETY: passed on.
        unsafe { MatMatMul::allocate_scratch_space(&self.0) }
    }
    unsafe fn can_use_scratch_space(&self, scratch: &dyn ScratchSpace) -> bool {
        // SAFETY: passed on.
        unsafe { MatMatMul::can_use_scratch_space(&self.0, scratch) }
    }
    unsafe fn run_with_scratch_space(
        &self,
        m: usize,
        n: usize,
        scratch: &mut dyn ScratchSpace,
        specs: &[FusedSpec],
    ) -> TractResult<()> {
        let (mr, nr) = (self.0.mr, self.0.nr);
        let (rows, cols) = (m / mr, n / nr);
        // Three or four op lists resolved without running, and a host call per row (or column)
        // of tiles: worth it from three tiles a call and eight tiles on.
        let worth = cols.max(rows) >= 3 && rows * cols >= 8 && HOST_TILE_BATCHES.load(Ordering::Relaxed);
        let plan = if worth { batchable(specs) } else { None };
        let Some(lazy_b) = plan else {
            // SAFETY: passed on.
            return unsafe { MatMatMul::run_with_scratch_space(&self.0, m, n, scratch, specs) };
        };
        let Some(scratch) = scratch.downcast_mut::<ScratchSpaceImpl<f32>>() else {
            bail!("wrong scratch space for {}", self.0.name);
        };
        let Some(b) = lazy_b else {
            // SAFETY: passed on.
            return unsafe { self.run_rows(m, n, scratch, specs) };
        };
        let Some(format) = self.0.packings[0].1.downcast_ref::<PackedFormat>() else {
            bail!("{} packs B other than as f32 panels", self.0.name);
        };
        let Some(packed) = Prepacked::new(b, n.div_ceil(nr), format)? else {
            // SAFETY: passed on.
            return unsafe { MatMatMul::run_with_scratch_space(&self.0, m, n, scratch, specs) };
        };
        let specs: Vec<FusedSpec> = specs
            .iter()
            .map(|spec| match spec {
                FusedSpec::AddMatMul { a, packing, .. } => FusedSpec::AddMatMul {
                    a: AsInputValue::Borrowed(&**a),
                    b: AsInputValue::Borrowed(&packed),
                    packing: *packing,
                },
                other => other.clone(),
            })
            .collect();
        // SAFETY: tract's contract, with B's panels now read from `packed`, which holds the same
        // values at the kernel's packing and outlives the product.
        unsafe { self.run_rows(m, n, scratch, &specs) }
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
        Some(k) => Box::new(HostMmm(k.clone())),
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

//! The host's native matrix-multiply kernels, offered to the guest (`warden_wire::guest::kernels`).
//!
//! The guest keeps everything that parses and plans (tract's graph code, where its known crashes
//! live) and hands only the arithmetic of one output tile at a time to a native tract kernel:
//! the same kernel native tract would run for that product on this CPU. Each call names a
//! kernel and lists its ops with guest addresses; [`HostKernels::run`] checks every byte range
//! each op will read or write against the guest's linear memory, and the alignment of the packed
//! panels, before building the native op list with host pointers into that memory. Anything
//! else (an unknown opcode, a range outside memory, a misaligned panel, too many ops) traps the
//! guest. This is the one place where guest-chosen addresses reach native code; see
//! ARCHITECTURE.md, "Trust boundary", for what it trusts.

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};

use tract_data::prelude::DatumType;
use tract_linalg::mmm::{DynKernel, FusedKerSpec, MatMatMul, MmmDispatch, OutputStoreKer, Query};
use tract_linalg::pack::PackedFormat;
use warden_wire::guest::kernels::{HostKernel, MAX_OPS, MAX_TILE_WORK, Packing, WORDS_PER_OP, op, tile_work};

use super::depthwise::{Args, DepthwiseC};

type KernelFn = unsafe fn(&[FusedKerSpec<f32>]) -> isize;

/// Warden's own run of a kernel's op lists (`avx512_tiles`), for the ops it does.
type TileFn = unsafe fn(&[FusedKerSpec<f32>]);

/// Products with fewer multiply-adds stay in WebAssembly: a host call per tile costs more than
/// it saves there. Measured (benches/README.md): breast_cancer's 16 x 30 x 1 product (480) took
/// 1.106x the time natively, digits' 10 x 64 x 1 (640) about 1.05x; digits' 64 x 64 x 1 (4,096)
/// 0.965x and silero's 64 x 192 x 1 (12,288) 0.934x.
const MIN_NATIVE_MACS: usize = 2_048;

/// One native kernel: its name, tile, packings and entry point.
struct Native {
    name: String,
    mr: usize,
    nr: usize,
    a: PackedFormat,
    b: PackedFormat,
    row_major_store: bool,
    run: KernelFn,
    /// The same arithmetic with a faster store (`avx512_tiles`), where Warden has one for this
    /// kernel: used for every op list it does, tract's `run` for the others.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    tiles: Option<TileFn>,
}

impl std::fmt::Debug for Native {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}x{})", self.name, self.mr, self.nr)
    }
}

/// The kernels offered to guests of one sandbox.
#[derive(Debug, Default)]
pub(crate) struct HostKernels {
    kernels: Vec<Native>,
    /// The channel-inner depthwise kernel (`depthwise_c`), if this CPU has one.
    depthwise: Option<DepthwiseC>,
    /// The postcard list the guest reads with `mmm_kernels`.
    listing: Vec<u8>,
    /// Whether `mmm_run_tiles` runs (else it answers `-1`, having touched nothing).
    tile_batches: bool,
    calls: AtomicU64,
    /// `mmm_run_tiles` calls that ran.
    batches: AtomicU64,
}

/// A kernel's entry point and packings, if it is an f32 `DynKernel` of one of these tile
/// shapes (the shapes of tract's x86_64 and aarch64 f32 kernels).
fn entry_point(mmm: &dyn MatMatMul) -> Option<(KernelFn, PackedFormat, PackedFormat, bool)> {
    let any: &dyn Any = mmm;
    macro_rules! shapes {
        ($(($mr:literal $nr:literal))*) => {
            $(
                if let Some(k) = any.downcast_ref::<DynKernel<$mr, $nr, f32>>() {
                    let (a, b) = k.packings.first()?;
                    let a = a.downcast_ref::<PackedFormat>()?.clone();
                    let b = b.downcast_ref::<PackedFormat>()?.clone();
                    return Some((k.kernel, a, b, k.row_major_store));
                }
            )*
        };
    }
    shapes!((8 8) (16 5) (16 6) (24 4) (32 3) (40 2) (64 1) (32 1) (128 1) (16 1) (16 12) (16 8) (32 6)
        (32 5) (48 4) (64 3) (80 2) (12 8) (16 4) (24 8) (8 1) (4 4) (4 1));
    None
}

impl HostKernels {
    /// No kernels: the guest uses its own wasm kernels.
    pub(crate) fn none() -> HostKernels {
        let listing = postcard::to_allocvec(&Vec::<HostKernel>::new()).unwrap_or_default();
        HostKernels {
            kernels: Vec::new(),
            depthwise: None,
            listing,
            tile_batches: true,
            calls: AtomicU64::new(0),
            batches: AtomicU64::new(0),
        }
    }

    /// Every f32 kernel with plain packed operands that this CPU runs natively.
    pub(crate) fn native() -> HostKernels {
        let mut kernels = Vec::new();
        for mmm in MmmDispatch::native().runnable() {
            if mmm.internal_type() != DatumType::F32 {
                continue;
            }
            let Some((run, a, b, row_major_store)) = entry_point(&**mmm) else { continue };
            if a.dt != DatumType::F32 || b.dt != DatumType::F32 || a.r != mmm.mr() || b.r != mmm.nr() {
                continue;
            }
            let (name, mr, nr) = (mmm.name().to_owned(), mmm.mr(), mmm.nr());
            let tiles = tiles_for(&name);
            kernels.push(Native { name, mr, nr, a, b, row_major_store, run, tiles });
        }
        let listing: Vec<HostKernel> = kernels
            .iter()
            .map(|k| HostKernel {
                name: k.name.clone(),
                mr: k.mr as u32,
                nr: k.nr as u32,
                a: packing(&k.a),
                b: packing(&k.b),
                row_major_store: k.row_major_store,
            })
            .collect();
        let listing = postcard::to_allocvec(&listing).unwrap_or_default();
        HostKernels {
            kernels,
            depthwise: DepthwiseC::native(),
            listing,
            tile_batches: true,
            calls: AtomicU64::new(0),
            batches: AtomicU64::new(0),
        }
    }

    /// With `false`, `mmm_run_tiles` refuses every call with `-1` (see `run_tiles`).
    pub(crate) fn with_tile_batches(mut self, on: bool) -> HostKernels {
        self.tile_batches = on;
        self
    }

    /// Names of the kernels offered.
    pub(crate) fn names(&self) -> Vec<&str> {
        self.kernels
            .iter()
            .map(|k| k.name.as_str())
            .chain(self.depthwise.as_ref().map(DepthwiseC::name))
            .collect()
    }

    /// `depthwise_c`: runs one checked channel-inner depthwise run; `-1` if none is offered.
    pub(crate) fn depthwise_c(&self, memory: &mut [u8], args: &Args) -> Result<i32, KernelFault> {
        let Some(depthwise) = &self.depthwise else { return Ok(-1) };
        depthwise.run(memory, args)?;
        Ok(0)
    }

    /// Tiles and depthwise runs done so far, as added by [`HostKernels::add_calls`].
    pub(crate) fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// `mmm_run_tiles` calls that ran, so far.
    pub(crate) fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Adds one guest call's count of tiles and depthwise runs (counted in its store).
    pub(crate) fn add_calls(&self, n: u64) {
        if n > 0 {
            self.calls.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// `mmm_kernels`: the listing's length, written to `buf` if it fits.
    pub(crate) fn list(&self, memory: &mut [u8], buf: u32, cap: u32) -> Result<u32, KernelFault> {
        let len = self.listing.len();
        if len <= cap as usize {
            let dst = span(memory, buf, len as u64)?;
            memory[dst..dst + len].copy_from_slice(&self.listing);
        }
        u32::try_from(len).map_err(|_| KernelFault("kernel listing above 4 GiB".into()))
    }

    /// `mmm_pick`: the index of the kernel for this f32 product (native tract's choice, unless
    /// another costs the sandbox much less: `cheapest_in_the_sandbox`), or -1 (the guest's own
    /// kernels) for none, or for a product smaller than [`MIN_NATIVE_MACS`].
    pub(crate) fn pick(&self, m: i64, k: i64, n: i64) -> i32 {
        if self.kernels.is_empty() {
            return -1;
        }
        let dim = |d: i64| usize::try_from(d).ok();
        let (m, k, n) = (dim(m), dim(k), dim(n));
        if let (Some(m), Some(k), Some(n)) = (m, k, n)
            && m.saturating_mul(k).saturating_mul(n) < MIN_NATIVE_MACS
        {
            return -1;
        }
        // The dimensions come from the guest. No operand or result of a product that fits in a
        // 32-bit guest's memory has more than 2^32 elements; anything larger is refused here,
        // before tract's cost model (or ours) multiplies them in `usize`.
        let (dm, dk, dn) = (m.unwrap_or(1), k.unwrap_or(1), n.unwrap_or(1));
        if [dm.saturating_mul(dk), dk.saturating_mul(dn), dm.saturating_mul(dn)].iter().any(|e| *e > 1 << 32)
        {
            return -1;
        }
        let query = Query::plain(DatumType::F32, m, k, n);
        let Some((mmm, packing, extractor)) = MmmDispatch::native().pick(&query) else { return -1 };
        if packing != 0 || extractor.is_some() {
            return -1;
        }
        let Some(native) = self.kernels.iter().position(|ker| ker.name == mmm.name()) else { return -1 };
        let chosen = match (m, k, n) {
            (Some(m), Some(k), Some(n)) => self.cheapest_in_the_sandbox(native, m, k, n),
            _ => native,
        };
        i32::try_from(chosen).unwrap_or(-1)
    }

    /// The kernel to use in the sandbox for an `m x k x n` product: native tract's choice
    /// (`native`) unless another offered kernel costs less than 0.7 of it by [`sandbox_cost`].
    /// Natively a border tile (one the product does not fill) costs little; in the sandbox every
    /// tile is a host call and every border tile's copy into the output runs in wasm, so a
    /// kernel taller than the product (tract picks 40x2 for the CNN's 32-channel first conv:
    /// 392 tiles, all of them border tiles) can cost several times a squarer one.
    ///
    /// The other kernel comes from native tract's tier or a better one ([`tier`]): never one
    /// tract keeps for older CPUs (its AVX kernels without FMA, its generic Rust ones). Those
    /// cost the same per multiply-add in [`sandbox_cost`] and came first among equals, so the
    /// AMD EPYC machine ran silero VAD's products with AVX kernels while native tract used FMA.
    fn cheapest_in_the_sandbox(&self, native: usize, m: usize, k: usize, n: usize) -> usize {
        let cost = |i: usize| sandbox_cost(&self.kernels[i], m, k, n);
        let floor = tier(&self.kernels[native].name).min(Tier::Fma);
        let best = (0..self.kernels.len())
            .filter(|i| tier(&self.kernels[*i].name) >= floor)
            .min_by(|a, b| cost(*a).total_cmp(&cost(*b)))
            .unwrap_or(native);
        if cost(best) < 0.7 * cost(native) { best } else { native }
    }

    /// `mmm_run`: checks the op list at `ops` and runs it with the native kernel.
    pub(crate) fn run(
        &self,
        memory: &mut [u8],
        kernel: u32,
        ops: u32,
        count: u32,
    ) -> Result<i32, KernelFault> {
        let ker = self.kernel(kernel)?;
        let (at, len) = op_list(memory, ops, count)?;
        // Each op is read, checked and decoded straight from guest memory, without a copy of
        // the whole list first (this runs once per tile: small products run thousands a call).
        let (mem_len, base) = (memory.len(), memory.as_mut_ptr());
        let mut spec = [FusedKerSpec::<f32>::Done; MAX_OPS + 1];
        for (s, bytes) in spec.iter_mut().zip(memory[at..at + len].chunks_exact(WORDS_PER_OP * 4)) {
            let mut w = [0u32; WORDS_PER_OP];
            read_words(bytes, &mut w);
            *s = decode(mem_len, base, ker, &w)?;
        }
        Ok(run_spec(ker, &spec[..=count as usize]))
    }

    /// `mmm_run_tiles`: runs `tiles` tiles, tile `t`'s op list being the words at `ops` plus `t`
    /// times the words at `deltas` (wrapping `u32` arithmetic). Each tile's list is checked in
    /// full, exactly as `mmm_run` checks one: the deltas only save the guest a call per tile.
    /// The tiles' multiply-adds, padded to whole tiles and counting each tile as at least one
    /// record, may not exceed [`MAX_TILE_WORK`]: a host call is not interrupted by the deadline.
    /// Stops at the first refused tile (or one whose kernel fails); the tiles before it have
    /// run. Answers `-1`, having touched nothing, only when tile batches are switched off
    /// (`with_tile_batches`).
    pub(crate) fn run_tiles(
        &self,
        memory: &mut [u8],
        kernel: u32,
        ops: u32,
        count: u32,
        tiles: u32,
        deltas: u32,
    ) -> Result<i32, KernelFault> {
        if !self.tile_batches {
            return Ok(-1);
        }
        let ker = self.kernel(kernel)?;
        let n = count as usize * WORDS_PER_OP;
        let first = read_ops(memory, ops, count)?;
        let deltas = read_ops(memory, deltas, count)?;
        let (first, deltas) = (&first[..n], &deltas[..n]);
        let work_of = |words: &[u32]| tile_work(ker.mr as u64, ker.nr as u64, words);
        // Refused before any tile runs when the first tile's work times the count is too much
        // already; the running total below catches depths that grow from tile to tile.
        if u64::from(tiles).saturating_mul(work_of(first)) > MAX_TILE_WORK {
            return Err(too_much(tiles, ker));
        }
        // When no product's depth (nor any op code) steps, every tile does the first one's work,
        // which the check above has already bounded for all of them.
        let same_work = first
            .chunks_exact(WORDS_PER_OP)
            .zip(deltas.chunks_exact(WORDS_PER_OP))
            .all(|(f, d)| d[0] == 0 && (f[0] != op::ADD_MAT_MUL || d[1] == 0));
        // An op whose deltas are all zero is the same words in every tile (guest memory cannot
        // change or move during this call): it is checked and decoded once, here, exactly as it
        // would be for each tile. The others are checked and decoded afresh for every tile.
        let (mem_len, base) = (memory.len(), memory.as_mut_ptr());
        let mut spec = [FusedKerSpec::<f32>::Done; MAX_OPS + 1];
        let mut stepping = [0usize; MAX_OPS];
        let mut steps = 0;
        for (i, (f, d)) in first.chunks_exact(WORDS_PER_OP).zip(deltas.chunks_exact(WORDS_PER_OP)).enumerate()
        {
            if d.iter().all(|&d| d == 0) {
                spec[i] = decode(mem_len, base, ker, f)?;
            } else {
                stepping[steps] = i;
                steps += 1;
            }
        }
        let (spec, stepping) = (&mut spec[..=count as usize], &stepping[..steps]);
        let step = |words: &mut [u32], at: usize, t: u32| {
            let (f, d) = (&first[at..][..words.len()], &deltas[at..][..words.len()]);
            for ((w, f), d) in words.iter_mut().zip(f).zip(d) {
                *w = f.wrapping_add(d.wrapping_mul(t));
            }
        };
        let mut work = 0u64;
        for t in 0..tiles {
            if !same_work {
                let mut words = [0u32; MAX_OPS * WORDS_PER_OP];
                step(&mut words[..n], 0, t);
                work = work.saturating_add(work_of(&words[..n]));
                if work > MAX_TILE_WORK {
                    return Err(too_much(tiles, ker));
                }
            }
            for &i in stepping {
                let mut words = [0u32; WORDS_PER_OP];
                step(&mut words, i * WORDS_PER_OP, t);
                spec[i] = decode(mem_len, base, ker, &words)?;
            }
            // A kernel's own error ends the call as a fault, so that `-1` only ever means
            // "refused, nothing ran" (the guest then sends the same tiles one by one, and a
            // unicast add run twice would be wrong).
            let done = run_spec(ker, spec);
            if done != 0 {
                return Err(KernelFault(format!("{} returned {done} at tile {t} of {tiles}", ker.name)));
            }
        }
        self.batches.fetch_add(1, Ordering::Relaxed);
        Ok(0)
    }

    fn kernel(&self, kernel: u32) -> Result<&Native, KernelFault> {
        self.kernels.get(kernel as usize).ok_or_else(|| KernelFault(format!("no host kernel {kernel}")))
    }
}

/// tract's x86-64 kernel tiers, from its fallbacks up. tract treats its FMA kernels as peers of
/// its AVX-512 ones (they cover tiles AVX-512 has none for), and so does the sandbox's pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tier {
    /// Generic Rust kernels, and anything not named below.
    Generic,
    /// AVX without FMA (tract's tier for pre-Haswell CPUs).
    Avx,
    Fma,
    Avx512,
}

fn tier(name: &str) -> Tier {
    if name.starts_with("avx512") {
        Tier::Avx512
    } else if name.starts_with("fma_") {
        Tier::Fma
    } else if name.starts_with("avx_") {
        Tier::Avx
    } else {
        Tier::Generic
    }
}

fn too_much(tiles: u32, ker: &Native) -> KernelFault {
    KernelFault(format!("{tiles} tiles of {} do more than {MAX_TILE_WORK} multiply-adds", ker.name))
}

/// The offset and length in bytes of the `count` ops at guest address `ops`, if they are at
/// most [`MAX_OPS`] and all in memory.
fn op_list(memory: &[u8], ops: u32, count: u32) -> Result<(usize, usize), KernelFault> {
    let count = count as usize;
    if count > MAX_OPS {
        return Err(KernelFault(format!("{count} ops in one tile (at most {MAX_OPS})")));
    }
    let len = count * WORDS_PER_OP * 4;
    Ok((span(memory, ops, len as u64)?, len))
}

/// The `count` ops at guest address `ops`, as words.
fn read_ops(memory: &[u8], ops: u32, count: u32) -> Result<[u32; MAX_OPS * WORDS_PER_OP], KernelFault> {
    let (at, len) = op_list(memory, ops, count)?;
    let mut words = [0u32; MAX_OPS * WORDS_PER_OP];
    read_words(&memory[at..at + len], &mut words);
    Ok(words)
}

/// Little-endian `u32`s from `bytes` into `words`, as many as both hold.
fn read_words(bytes: &[u8], words: &mut [u32]) {
    for (w, b) in words.iter_mut().zip(bytes.chunks_exact(4)) {
        *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

/// Runs a checked op list (ending with `Done`) on `ker`: Warden's version of the kernel where it
/// has one that does these ops, else tract's.
fn run_spec(ker: &Native, spec: &[FusedKerSpec<f32>]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if let Some(tiles) = ker.tiles
        && super::avx512_tiles::supported(spec)
    {
        call_tiles(tiles, spec);
        return 0;
    }
    call_native(ker.run, spec)
}

/// Runs Warden's version of a kernel (`avx512_tiles`) on a checked op list it supports.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
fn call_tiles(tiles: TileFn, spec: &[FusedKerSpec<f32>]) {
    // SAFETY: as in `call_native`: `decode` checked every op against the kernel's contract,
    // which `tiles` keeps (`avx512_tiles`); `tiles_for` gave it only with AVX-512F present.
    unsafe { tiles(spec) };
    clear_upper_state();
}

/// Warden's run of tract's kernel `name` (`avx512_tiles`), if it has one and the CPU has
/// AVX-512F: tract's AVX-512 kernels 16 to 80 rows tall.
#[cfg(target_arch = "x86_64")]
fn tiles_for(name: &str) -> Option<TileFn> {
    use super::avx512_tiles::run;
    if !std::arch::is_x86_feature_detected!("avx512f") {
        return None;
    }
    let tiles: TileFn = match name.strip_prefix("avx512_mmm_f32_")? {
        "16x12" => run::<1, 12>,
        "16x8" => run::<1, 8>,
        "32x6" => run::<2, 6>,
        "32x5" => run::<2, 5>,
        "48x4" => run::<3, 4>,
        "64x3" => run::<4, 3>,
        "80x2" => run::<5, 2>,
        _ => return None,
    };
    Some(tiles)
}

#[cfg(not(target_arch = "x86_64"))]
fn tiles_for(_: &str) -> Option<TileFn> {
    None
}

/// A rough cost in nanoseconds of an `m x k x n` product with `ker` in the sandbox: a host call
/// per tile, the wasm copy of every border tile's live elements out of its scratch tile, and the
/// kernel's multiply-adds, padded to whole tiles (AVX-512 kernels about twice as many per ns as
/// the others). Calibrated on a profile of the generated CNN: about 60 ns per call and 2 ns per
/// copied element.
fn sandbox_cost(ker: &Native, m: usize, k: usize, n: usize) -> f64 {
    const CALL_NS: f64 = 60.0;
    const COPY_NS: f64 = 2.0;
    let (mr, nr) = (ker.mr, ker.nr);
    let (rows, cols) = (m.div_ceil(mr), n.div_ceil(nr));
    let tiles = (rows * cols) as f64;
    let full = (m / mr) * (n / nr);
    let border_elements = (m * n - full * mr * nr) as f64;
    let mac_ns = if ker.name.starts_with("avx512") { 1.0 / 96.0 } else { 1.0 / 48.0 };
    tiles * CALL_NS + border_elements * COPY_NS + tiles * (mr * nr * k) as f64 * mac_ns
}

/// Runs a native kernel on a checked op list.
#[allow(unsafe_code)]
fn call_native(run: KernelFn, spec: &[FusedKerSpec<f32>]) -> i32 {
    // SAFETY: `spec` ends with `Done`, and `decode` checked every op in it: each pointer is the
    // guest memory's base plus an offset such that every byte the op reads or writes (per
    // tract's kernel contract: `k` packed records of the kernel's own packings for AddMatMul,
    // `mr`/`nr` values for per-row/per-column operands, `mr x nr` items at the given strides for
    // tiles) lies inside the guest's memory, and packed panels have their packing's alignment.
    // The memory cannot move or shrink while the guest is suspended in this call.
    let result = unsafe { run(spec) };
    clear_upper_state();
    result as i32
}

/// Leaves the vector registers clean after an AVX or AVX-512 kernel. With upper bits dirty, each
/// legacy-SSE instruction (Cranelift emits some) pays a transition penalty: the sandbox measured
/// up to 200x slower after native AVX-512 kernels on its thread (benches/README.md). `vzeroupper`
/// cleans zmm0-15 only, and tract's AVX-512 kernels also use zmm16-31, so those are zeroed first.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub(crate) fn clear_upper_state() {
    // `is_x86_feature_detected!` caches its answer: two loads and a test.
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F is present (checked above).
        unsafe { clear_avx512() }
    } else if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: AVX is present (checked above).
        unsafe { std::arch::x86_64::_mm256_zeroupper() }
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn clear_upper_state() {}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(unsafe_code)]
unsafe fn clear_avx512() {
    // SAFETY: zeroes registers declared as clobbered; touches no memory.
    unsafe {
        std::arch::asm!(
            "vpxord zmm16, zmm16, zmm16", "vpxord zmm17, zmm17, zmm17", "vpxord zmm18, zmm18, zmm18",
            "vpxord zmm19, zmm19, zmm19", "vpxord zmm20, zmm20, zmm20", "vpxord zmm21, zmm21, zmm21",
            "vpxord zmm22, zmm22, zmm22", "vpxord zmm23, zmm23, zmm23", "vpxord zmm24, zmm24, zmm24",
            "vpxord zmm25, zmm25, zmm25", "vpxord zmm26, zmm26, zmm26", "vpxord zmm27, zmm27, zmm27",
            "vpxord zmm28, zmm28, zmm28", "vpxord zmm29, zmm29, zmm29", "vpxord zmm30, zmm30, zmm30",
            "vpxord zmm31, zmm31, zmm31", "vzeroupper",
            out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _, out("zmm20") _,
            out("zmm21") _, out("zmm22") _, out("zmm23") _, out("zmm24") _, out("zmm25") _,
            out("zmm26") _, out("zmm27") _, out("zmm28") _, out("zmm29") _, out("zmm30") _,
            out("zmm31") _, out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
            out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _, out("ymm8") _,
            out("ymm9") _, out("ymm10") _, out("ymm11") _, out("ymm12") _, out("ymm13") _,
            out("ymm14") _, out("ymm15") _,
            options(nostack, nomem, preserves_flags),
        );
    }
}

/// The guest broke the kernel contract; the guest is trapped with this message.
#[derive(Debug)]
pub(crate) struct KernelFault(pub(crate) String);

impl std::fmt::Display for KernelFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "host kernel call refused: {}", self.0)
    }
}

impl std::error::Error for KernelFault {}

fn packing(p: &PackedFormat) -> Packing {
    Packing { alignment: p.alignment_bytes as u32, end_padding: p.end_padding_record as u32 }
}

/// The offset of `len` bytes at guest address `addr`, if they all lie in `memory`.
fn span(memory: &[u8], addr: u32, len: u64) -> Result<usize, KernelFault> {
    in_memory(memory.len(), addr, len)
}

/// The offset of `len` bytes at guest address `addr`, if they all lie in a memory of `mem_len`.
pub(crate) fn in_memory(mem_len: usize, addr: u32, len: u64) -> Result<usize, KernelFault> {
    match u64::from(addr).checked_add(len) {
        Some(end) if end <= mem_len as u64 => Ok(addr as usize),
        _ => Err(KernelFault(format!("{len} bytes at {addr:#x} are outside guest memory"))),
    }
}

/// A host pointer to `len` bytes at guest address `addr`, aligned to `align` bytes.
fn pointer(mem_len: usize, base: *mut u8, addr: u32, len: u64, align: usize) -> Result<*mut u8, KernelFault> {
    let ptr = base.wrapping_add(in_memory(mem_len, addr, len)?);
    // tract's packings align to powers of two: a mask, not a 64-bit division per panel (4.7%
    // of the import's own time in a profile of recognition).
    let misaligned = if align.is_power_of_two() {
        ptr as usize & (align - 1) != 0
    } else {
        !(ptr as usize).is_multiple_of(align.max(1))
    };
    if misaligned {
        return Err(KernelFault(format!("address {addr:#x} is not aligned to {align} bytes")));
    }
    Ok(ptr)
}

/// A strided `mr x nr` tile of f32 items: a host pointer after checking all of it is in memory.
fn tile(mem_len: usize, base: *mut u8, ker: &Native, w: &[u32]) -> Result<OutputStoreKer, KernelFault> {
    let (addr, rs, cs, item) = (w[1], i64::from(w[2] as i32), i64::from(w[3] as i32), w[4]);
    if item != 4 {
        return Err(KernelFault(format!("tile items of {item} bytes (f32 tiles only)")));
    }
    let (last_r, last_c) = ((ker.mr - 1) as i64 * rs, (ker.nr - 1) as i64 * cs);
    let lo = i64::from(addr) + last_r.min(0) + last_c.min(0);
    let hi = i64::from(addr) + last_r.max(0) + last_c.max(0) + 4;
    if lo < 0 || hi > mem_len as i64 {
        return Err(KernelFault(format!("a tile at {addr:#x} (strides {rs}, {cs}) leaves guest memory")));
    }
    // Kernels may form element offsets as 32-bit gather indices (AVX2 `vgatherdps`): keep every
    // `i * rs + j * cs` representable, or a wrapped index could land outside the checked span.
    if hi - lo > i64::from(i32::MAX) {
        return Err(KernelFault(format!("a tile at {addr:#x} (strides {rs}, {cs}) spans more than 2 GiB")));
    }
    Ok(OutputStoreKer {
        ptr: base.wrapping_add(addr as usize),
        row_byte_stride: rs as isize,
        col_byte_stride: cs as isize,
        item_size: 4,
    })
}

/// One op, with host pointers, after checking every range it touches. Inlined into its two
/// callers: called per tile, its result read back through memory stalled the row loop (over half
/// of `run_tiles`' own samples in a profile of PP-OCR orientation on the AMD EPYC machine).
#[inline(always)]
fn decode(mem_len: usize, base: *mut u8, ker: &Native, w: &[u32]) -> Result<FusedKerSpec<f32>, KernelFault> {
    let values = |addr: u32, n: usize| -> Result<*const f32, KernelFault> {
        Ok(pointer(mem_len, base, addr, n as u64 * 4, 1)?.cast_const().cast())
    };
    let rows = |addr| values(addr, ker.mr);
    let cols = |addr| values(addr, ker.nr);
    let scalar = f32::from_bits(w[1]);
    Ok(match w[0] {
        op::CLEAR => FusedKerSpec::Clear,
        op::LOAD_TILE => {
            FusedKerSpec::LoadTile(values(w[1], ker.mr * ker.nr)?, values(w[2], ker.mr * ker.nr)?)
        }
        op::SCALAR_MIN => FusedKerSpec::ScalarMin(scalar),
        op::SCALAR_MAX => FusedKerSpec::ScalarMax(scalar),
        op::SCALAR_ADD => FusedKerSpec::ScalarAdd(scalar),
        op::SCALAR_MUL => FusedKerSpec::ScalarMul(scalar),
        op::SCALAR_SUB => FusedKerSpec::ScalarSub(scalar),
        op::SCALAR_SUB_F => FusedKerSpec::ScalarSubF(scalar),
        op::LEAKY_RELU => FusedKerSpec::LeakyRelu(scalar),
        op::PER_ROW_MIN => FusedKerSpec::PerRowMin(rows(w[1])?),
        op::PER_ROW_MAX => FusedKerSpec::PerRowMax(rows(w[1])?),
        op::PER_ROW_ADD => FusedKerSpec::PerRowAdd(rows(w[1])?),
        op::PER_ROW_MUL => FusedKerSpec::PerRowMul(rows(w[1])?),
        op::PER_ROW_SUB => FusedKerSpec::PerRowSub(rows(w[1])?),
        op::PER_ROW_SUB_F => FusedKerSpec::PerRowSubF(rows(w[1])?),
        op::PER_COL_MIN => FusedKerSpec::PerColMin(cols(w[1])?),
        op::PER_COL_MAX => FusedKerSpec::PerColMax(cols(w[1])?),
        op::PER_COL_ADD => FusedKerSpec::PerColAdd(cols(w[1])?),
        op::PER_COL_MUL => FusedKerSpec::PerColMul(cols(w[1])?),
        op::PER_COL_SUB => FusedKerSpec::PerColSub(cols(w[1])?),
        op::PER_COL_SUB_F => FusedKerSpec::PerColSubF(cols(w[1])?),
        op::ADD_ROW_COL_PRODUCTS => FusedKerSpec::AddRowColProducts(rows(w[1])?, cols(w[2])?),
        op::ADD_UNICAST => FusedKerSpec::AddUnicast(tile(mem_len, base, ker, w)?),
        op::STORE => FusedKerSpec::Store(tile(mem_len, base, ker, w)?),
        op::ADD_MAT_MUL => {
            let (k, packing) = (w[1] as usize, w[4]);
            if packing != 0 {
                return Err(KernelFault(format!("packing {packing} (host kernels have one)")));
            }
            let a_len = ker.a.single_panel_len(k) as u64 * 4;
            let b_len = ker.b.single_panel_len(k) as u64 * 4;
            let pa = pointer(mem_len, base, w[2], a_len, ker.a.alignment_bytes)?;
            let pb = pointer(mem_len, base, w[3], b_len, ker.b.alignment_bytes)?;
            FusedKerSpec::AddMatMul { k, pa: pa.cast_const(), pb: pb.cast_const(), packing: 0 }
        }
        other => return Err(KernelFault(format!("unknown op {other}"))),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A guest memory of `len` bytes whose base is 4 KiB-aligned, like wasmtime's.
    fn memory(len: usize) -> Vec<u8> {
        vec![0u8; len + 4096]
    }

    fn aligned(mem: &mut [u8]) -> &mut [u8] {
        let skip = mem.as_ptr().align_offset(4096);
        let len = mem.len() - 4096;
        &mut mem[skip..skip + len]
    }

    fn write_ops(mem: &mut [u8], at: usize, ops: &[[u32; WORDS_PER_OP]]) -> u32 {
        for (i, w) in ops.iter().flatten().enumerate() {
            mem[at + 4 * i..at + 4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        ops.len() as u32
    }

    /// A real product through the checked path equals the plain one, and every kind of bad
    /// address is refused before the native kernel runs.
    #[test]
    fn runs_a_checked_tile_and_refuses_bad_ranges() {
        let kernels = HostKernels::native();
        let Some(index) = usize::try_from(kernels.pick(64, 32, 64)).ok() else {
            eprintln!("no native f32 kernel on this CPU; nothing to check");
            return;
        };
        let ker = &kernels.kernels[index];
        let (mr, nr, k) = (ker.mr, ker.nr, 32usize);
        let mut backing = memory(1 << 20);
        let mem = aligned(&mut backing);
        let (pa, pb, c, ops) = (0x1000usize, 0x4_0000usize, 0x8_0000usize, 0x9_0000usize);
        // Packed A: k records of mr values; packed B: k records of nr values.
        let a = |kk: usize, i: usize| (kk * 7 + i * 3) as f32 % 5.0 - 2.0;
        let b = |kk: usize, j: usize| (kk * 5 + j * 11) as f32 % 7.0 - 3.0;
        for kk in 0..k {
            for i in 0..mr {
                mem[pa + 4 * (kk * mr + i)..][..4].copy_from_slice(&a(kk, i).to_le_bytes());
            }
            for j in 0..nr {
                mem[pb + 4 * (kk * nr + j)..][..4].copy_from_slice(&b(kk, j).to_le_bytes());
            }
        }
        let row_stride = (nr * 4) as u32;
        let good = [
            [op::CLEAR, 0, 0, 0, 0],
            [op::ADD_MAT_MUL, k as u32, pa as u32, pb as u32, 0],
            [op::SCALAR_ADD, 0.5f32.to_bits(), 0, 0, 0],
            [op::STORE, c as u32, row_stride, 4, 4],
        ];
        let count = write_ops(mem, ops, &good);
        assert_eq!(kernels.run(mem, index as u32, ops as u32, count).unwrap(), 0);
        for i in 0..mr {
            for j in 0..nr {
                let want: f32 = (0..k).map(|kk| a(kk, i) * b(kk, j)).sum::<f32>() + 0.5;
                let got = f32::from_le_bytes(mem[c + 4 * (i * nr + j)..][..4].try_into().unwrap());
                assert!((got - want).abs() < 1e-3, "c[{i}][{j}] = {got}, want {want}");
            }
        }
        let top = mem.len() as u32;
        let refused = [
            ("a panel past the end", [op::ADD_MAT_MUL, k as u32, top - 64, pb as u32, 0]),
            ("a huge k", [op::ADD_MAT_MUL, u32::MAX, pa as u32, pb as u32, 0]),
            ("a misaligned panel", [op::ADD_MAT_MUL, k as u32, pa as u32 + 4, pb as u32, 0]),
            ("a second packing", [op::ADD_MAT_MUL, k as u32, pa as u32, pb as u32, 1]),
            ("a store past the end", [op::STORE, top - 8, row_stride, 4, 4]),
            ("a negative stride below 0", [op::STORE, 0, (-(row_stride as i32)) as u32, 4, 4]),
            ("a store of f64", [op::STORE, c as u32, row_stride, 4, 8]),
            ("a per-row operand past the end", [op::PER_ROW_ADD, top - 4, 0, 0, 0]),
            ("an unknown op", [77, 0, 0, 0, 0]),
        ];
        for (what, bad) in refused {
            let before = mem[c..c + 4 * mr * nr].to_vec();
            let count = write_ops(mem, ops, &[[op::CLEAR, 0, 0, 0, 0], bad]);
            let err = kernels.run(mem, index as u32, ops as u32, count);
            assert!(err.is_err(), "{what} was accepted");
            assert_eq!(before, mem[c..c + 4 * mr * nr], "{what} wrote to memory");
        }
        assert!(kernels.run(mem, index as u32, top - 8, 1).is_err(), "an op list past the end");
        assert!(kernels.run(mem, index as u32, ops as u32, 33).is_err(), "too many ops");
        assert!(kernels.run(mem, 9999, ops as u32, 1).is_err(), "no such kernel");
    }

    /// A row of tiles in one `run_tiles` call writes exactly what the same tiles run one by one
    /// with `run` write, with ops that step (B panel, per-column operand, store) and ops that do
    /// not (A panel, per-row operand, scalar). A stepping op that leaves memory at tile `j`
    /// stops the row there, the tiles before `j` having run; an op that does not step and is
    /// out of range is refused before any tile runs; a depth that steps past the work cap stops
    /// the row at the tile that would pass it.
    #[test]
    fn a_row_of_tiles_equals_its_tiles_one_by_one() {
        let kernels = HostKernels::native();
        let Some(index) = u32::try_from(kernels.pick(64, 32, 64)).ok() else {
            eprintln!("no native f32 kernel on this CPU; nothing to check");
            return;
        };
        let ker = &kernels.kernels[index as usize];
        let (mr, nr, k, tiles) = (ker.mr, ker.nr, 16usize, 5usize);
        let mut backing = memory(1 << 20);
        let mem = aligned(&mut backing);
        let (pa, pb, rows, cols) = (0x1000u32, 0x2_0000u32, 0x6_0000u32, 0x6_1000u32);
        let (ops, deltas, c_row, c_one) = (0x7_0000usize, 0x7_1000usize, 0x8_0000usize, 0xc_0000usize);
        for i in 0..(0x7_0000 - 0x1000) / 4 {
            let value = (i * 37 % 101) as f32 / 8.0 - 6.0;
            mem[0x1000 + 4 * i..][..4].copy_from_slice(&value.to_le_bytes());
        }
        // Tiles side by side, row-major, as a guest stores an `mr x (tiles * nr)` block.
        let row_stride = tiles * nr * 4;
        let list = |c: usize| {
            [
                [op::CLEAR, 0, 0, 0, 0],
                [op::ADD_MAT_MUL, k as u32, pa, pb, 0],
                [op::PER_ROW_ADD, rows, 0, 0, 0],
                [op::PER_COL_MUL, cols, 0, 0, 0],
                [op::SCALAR_MAX, (-1.5f32).to_bits(), 0, 0, 0],
                [op::STORE, c as u32, row_stride as u32, 4, 4],
            ]
        };
        let col = (nr * 4) as u32;
        let steps =
            [[0; 5], [0, 0, 0, (k * nr * 4) as u32, 0], [0; 5], [0, col, 0, 0, 0], [0; 5], [0, col, 0, 0, 0]];
        write_ops(mem, deltas, &steps);
        let row = |mem: &mut [u8], c: usize| {
            let count = write_ops(mem, ops, &list(c));
            kernels.run_tiles(mem, index, ops as u32, count, tiles as u32, deltas as u32)
        };
        let batches = kernels.batches();
        assert_eq!(row(mem, c_row).unwrap(), 0);
        assert_eq!(kernels.batches(), batches + 1);
        for t in 0..tiles as u32 {
            let mut one = list(c_one);
            for (op, step) in one.iter_mut().zip(&steps) {
                for (w, d) in op.iter_mut().zip(step) {
                    *w = w.wrapping_add(d * t);
                }
            }
            let count = write_ops(mem, ops, &one);
            assert_eq!(kernels.run(mem, index, ops as u32, count).unwrap(), 0);
        }
        let block = mr * row_stride;
        assert_eq!(mem[c_row..c_row + block], mem[c_one..c_one + block], "a row differs from its tiles");
        assert!(mem[c_row..c_row + block].iter().any(|&b| b != 0), "nothing was stored");
        // Which of the tiles stored at `c` hold anything, by rows of the block.
        let stored = |mem: &[u8], c: usize, t: usize| {
            (0..mr)
                .filter(|r| c + r * row_stride + (t + 1) * nr * 4 <= mem.len())
                .any(|r| mem[c + r * row_stride + t * nr * 4..][..nr * 4].iter().any(|&b| b != 0))
        };

        // The store steps out of memory at tile 3: tiles 0 to 2 ran, 3 and 4 did not.
        let top = mem.len();
        let c_edge = top - 3 * nr * 4 - (mr - 1) * row_stride;
        mem[c_edge..].fill(0);
        let err = row(mem, c_edge).unwrap_err();
        assert!(err.0.contains("leaves guest memory"), "{err}");
        let ran: Vec<bool> = (0..tiles).map(|t| stored(mem, c_edge, t)).collect();
        assert_eq!(ran, [true, true, true, false, false]);

        // A per-row operand out of range, which does not step: nothing runs.
        mem[c_row..c_row + block].fill(0);
        let mut bad = list(c_row);
        bad[2][1] = (top - 4) as u32;
        let count = write_ops(mem, ops, &bad);
        assert!(kernels.run_tiles(mem, index, ops as u32, count, tiles as u32, deltas as u32).is_err());
        assert!(mem[c_row..c_row + block].iter().all(|&b| b == 0), "a refused row wrote to memory");

        // A depth stepping past the cap at tile 1: tile 0 ran, no other.
        let mut deep = steps;
        deep[1][1] = u32::MAX / 2;
        write_ops(mem, deltas, &deep);
        let err = row(mem, c_row).unwrap_err();
        assert!(err.0.contains("multiply-adds"), "{err}");
        let ran: Vec<bool> = (0..tiles).map(|t| stored(mem, c_row, t)).collect();
        assert_eq!(ran, [true, false, false, false, false]);
    }

    /// Warden's runs of tract's AVX-512 kernels (`avx512_tiles`) against tract's own, bit for
    /// bit (a NaN's payload and sign aside): every op it takes, alone after a product and chained, with
    /// NaNs, infinities, signed zeros and ties among the operands, stored row-major,
    /// column-major and at other strides; op lists it does not take are left to tract.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn warden_tiles_equal_tracts_kernels_bit_for_bit() {
        use FusedKerSpec as F;
        let kernels = HostKernels::native();
        let taken: Vec<&Native> = kernels.kernels.iter().filter(|k| k.tiles.is_some()).collect();
        if taken.is_empty() {
            eprintln!("no AVX-512 kernels on this CPU; nothing to check");
            return;
        }
        let special = |i: usize| match i % 23 {
            3 => f32::NAN,
            7 => -0.0,
            11 => f32::INFINITY,
            13 => 0.0,
            17 => f32::NEG_INFINITY,
            k => (k as f32 - 11.0) * 0.37 + (i % 5) as f32 * 1e-3,
        };
        // 64-byte aligned f32 buffers (tract's kernels load packed A with aligned loads).
        let aligned_vec = |n: usize, f: &dyn Fn(usize) -> f32| -> (Vec<f32>, usize) {
            let mut v = vec![0f32; n + 16];
            let skip = v.as_ptr().align_offset(64);
            for i in 0..n {
                v[skip + i] = f(i);
            }
            (v, skip)
        };
        for ker in taken {
            let (mr, nr) = (ker.mr, ker.nr);
            let tiles = ker.tiles.unwrap();
            for k in [1usize, 9, 32] {
                let (a, ao) = aligned_vec(ker.a.single_panel_len(k), &|i| special(i * 7 + 1));
                let (b, bo) = aligned_vec(ker.b.single_panel_len(k), &|i| special(i * 5 + 2));
                let (rows, ro) = aligned_vec(mr, &|i| special(i * 3 + 4));
                let (cols, co) = aligned_vec(nr, &|i| special(i * 11 + 6));
                let mm =
                    F::AddMatMul { k, pa: a[ao..].as_ptr().cast(), pb: b[bo..].as_ptr().cast(), packing: 0 };
                let (pr, pc) = (rows[ro..].as_ptr(), cols[co..].as_ptr());
                let ops: Vec<(&str, Vec<F<f32>>)> = vec![
                    ("product", vec![]),
                    ("scalar min", vec![F::ScalarMin(0.5)]),
                    ("scalar max", vec![F::ScalarMax(0.0)]),
                    ("scalar max -0", vec![F::ScalarMax(-0.0)]),
                    ("scalar add", vec![F::ScalarAdd(-1.25)]),
                    ("scalar mul", vec![F::ScalarMul(3.0)]),
                    ("scalar sub", vec![F::ScalarSub(2.0)]),
                    ("scalar subf", vec![F::ScalarSubF(2.0)]),
                    ("leaky relu", vec![F::LeakyRelu(0.1)]),
                    ("per row", vec![F::PerRowMin(pr), F::PerRowMax(pr), F::PerRowAdd(pr)]),
                    ("per row 2", vec![F::PerRowMul(pr), F::PerRowSub(pr), F::PerRowSubF(pr)]),
                    ("per col", vec![F::PerColMin(pc), F::PerColMax(pc), F::PerColAdd(pc)]),
                    ("per col 2", vec![F::PerColMul(pc), F::PerColSub(pc), F::PerColSubF(pc)]),
                    ("two products", vec![mm]),
                    ("cleared", vec![F::Clear]),
                ];
                // (row stride, column stride) in items: row-major, column-major, padded.
                for (rs, cs) in [(nr, 1), (1, mr), (nr + 3, 1), (2 * nr + 1, 2)] {
                    let len = (mr - 1) * rs + (nr - 1) * cs + 1;
                    let mut addend: Vec<f32> = (0..len).map(|i| special(i * 13 + 5)).collect();
                    let unicast = F::AddUnicast(OutputStoreKer {
                        ptr: addend.as_mut_ptr().cast(),
                        row_byte_stride: (rs * 4) as isize,
                        col_byte_stride: (cs * 4) as isize,
                        item_size: 4,
                    });
                    let with_unicast = [("add unicast", vec![unicast, F::ScalarMax(0.0)])];
                    for (what, middle) in ops.iter().chain(&with_unicast) {
                        let mut outs =
                            [vec![f32::from_bits(0x7fc0_1234); len], vec![f32::from_bits(0x7fc0_1234); len]];
                        for (o, out) in outs.iter_mut().enumerate() {
                            let store = OutputStoreKer {
                                ptr: out.as_mut_ptr().cast(),
                                row_byte_stride: (rs * 4) as isize,
                                col_byte_stride: (cs * 4) as isize,
                                item_size: 4,
                            };
                            let mut spec = vec![F::Clear, mm];
                            spec.extend(middle.iter().copied());
                            spec.extend([F::Store(store), F::Done]);
                            assert!(super::super::avx512_tiles::supported(&spec), "{what}");
                            if o == 0 {
                                call_native(ker.run, &spec);
                            } else {
                                call_tiles(tiles, &spec);
                            }
                        }
                        // A NaN as a NaN: which operand's payload and sign an add or multiply
                        // passes on is not fixed (LLVM commutes them), as in WebAssembly.
                        let bits = |v: &[f32]| {
                            v.iter()
                                .map(|x| if x.is_nan() { u32::MAX } else { x.to_bits() })
                                .collect::<Vec<_>>()
                        };
                        let (ours, theirs) = (bits(&outs[1]), bits(&outs[0]));
                        if let Some(at) = ours.iter().zip(&theirs).position(|(x, y)| x != y) {
                            let (i, j) = if cs == 1 { (at / rs, at % rs) } else { (at % rs, at / cs) };
                            panic!(
                                "{ker:?} k={k} {what}, strides {rs}x{cs}: item {at} (row {i} col {j}): ours {:#x} tract {:#x}; col operand {:#x} row operand {:#x}",
                                ours[at],
                                theirs[at],
                                cols[co + j.min(nr - 1)].to_bits(),
                                rows[ro + i.min(mr - 1)].to_bits()
                            );
                        }
                    }
                }
            }
            // Ops it does not take.
            let tile = [0f32; 256];
            for op in [
                F::LoadTile(tile.as_ptr(), tile.as_ptr()),
                F::AddRowColProducts(tile.as_ptr(), tile.as_ptr()),
            ] {
                assert!(!super::super::avx512_tiles::supported(&[F::Clear, op, F::Done]), "{op:?}");
            }
        }
    }

    /// A tile spanning more than 2 GiB is refused even inside a 4 GiB memory: a kernel's 32-bit
    /// gather index could wrap. Only addresses are computed here; nothing is dereferenced.
    #[test]
    fn tiles_spanning_more_than_2_gib_are_refused() {
        let kernels = HostKernels::native();
        let Some(ker) = kernels.kernels.iter().find(|k| k.mr > 1) else { return };
        let mem_len = u32::MAX as usize;
        let base = std::ptr::NonNull::<u8>::dangling().as_ptr();
        let stride = |span: i64| (span / (ker.mr as i64 - 1)) as i32 as u32;
        let fits = [op::STORE, 0, stride(i64::from(i32::MAX) - 64), 4, 4];
        assert!(tile(mem_len, base, ker, &fits).is_ok());
        let too_far = [op::STORE, 0, stride(i64::from(i32::MAX) + 4096), 4, 4];
        let err = tile(mem_len, base, ker, &too_far).unwrap_err();
        assert!(err.0.contains("2 GiB"), "{err}");
    }

    #[test]
    fn no_kernels_lists_nothing_and_picks_nothing() {
        let none = HostKernels::none();
        assert_eq!(none.pick(64, 64, 64), -1);
        let native = HostKernels::native();
        assert_eq!(native.pick(16, 30, 1), -1, "a product too small for a host call");
        if !native.kernels.is_empty() {
            assert_ne!(native.pick(64, 64, 1), -1, "a product worth a host call");
        }
        for d in [1i64 << 31, 1 << 40, i64::MAX] {
            assert_eq!(native.pick(d, d, d), -1, "a product no guest memory can hold: {d}");
            assert_eq!(native.pick(1, d, d), -1, "an operand no guest memory can hold: {d}");
        }
        let mut mem = vec![0u8; 64];
        let len = none.list(&mut mem, 0, 64).unwrap() as usize;
        assert_eq!(postcard::from_bytes::<Vec<HostKernel>>(&mem[..len]).unwrap(), vec![]);
    }

    /// Where native tract's kernel would make the sandbox pay for many border tiles (the CNN's
    /// first conv: 32 x 9 x 784, for which tract picks 40x2 on AVX-512 machines), the pick costs
    /// less and makes fewer host calls; where the multiply-adds dominate, it is tract's own.
    #[test]
    fn picks_for_the_sandbox_only_where_tracts_kernel_would_cost_it_much_more() {
        let kernels = HostKernels::native();
        let native = |m: usize, k: usize, n: usize| {
            let query = Query::plain(DatumType::F32, Some(m), Some(k), Some(n));
            let (mmm, ..) = MmmDispatch::native().pick(&query).unwrap();
            kernels.kernels.iter().position(|ker| ker.name == mmm.name())
        };
        let Some(tracts) = native(32, 9, 784) else {
            eprintln!("no native f32 kernel on this CPU; nothing to check");
            return;
        };
        let ours = usize::try_from(kernels.pick(32, 9, 784)).unwrap();
        let (a, b) = (&kernels.kernels[ours], &kernels.kernels[tracts]);
        assert!(sandbox_cost(a, 32, 9, 784) <= sandbox_cost(b, 32, 9, 784), "{a:?} against {b:?}");
        let tiles = |k: &Native| 32usize.div_ceil(k.mr) * 784usize.div_ceil(k.nr);
        assert!(tiles(a) <= tiles(b), "{a:?}: {} tiles against {b:?}: {}", tiles(a), tiles(b));
        if b.mr > 32 {
            assert!(
                tiles(a) < tiles(b),
                "tract's {b:?} is taller than the product, ours {a:?} is not better"
            );
        }
        // Never a kernel of a tier below native tract's choice (nor below FMA when tract's is
        // above it), over products of every shape class: matrix-vector, thin, square, tall.
        for m in [1, 3, 4, 8, 24, 64, 65, 200] {
            for n in [1, 2, 3, 4, 5, 7, 64, 301] {
                let Ok(ours) = usize::try_from(kernels.pick(m as i64, 64, n as i64)) else { continue };
                let tracts = native(m, 64, n).unwrap();
                let (ours, tracts) = (&kernels.kernels[ours], &kernels.kernels[tracts]);
                assert!(
                    tier(&ours.name) >= tier(&tracts.name).min(Tier::Fma),
                    "{m}x64x{n}: {ours:?} against tract's {tracts:?}"
                );
            }
        }
        for (m, k, n) in [(1024, 1024, 64), (512, 512, 512)] {
            let ours = usize::try_from(kernels.pick(m as i64, k as i64, n as i64)).unwrap();
            assert_eq!(
                Some(ours),
                native(m, k, n),
                "{m}x{k}x{n}: the multiply-adds dominate, tract's choice stands"
            );
        }
    }
}

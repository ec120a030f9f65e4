//! The exports of the guest contract (see `warden_wire::guest`) over [`warden_guest::Engine`]:
//! the WebAssembly module the runtime embeds. The only crate with `no_mangle` items; its other
//! unsafe code is the allocator (zeroing, small blocks recycled) and the calls to the host's
//! kernels (`kernels`).
//! Natively it is empty.
#![cfg(target_family = "wasm")]
#![allow(unsafe_code)]

mod kernels;

use std::alloc::{GlobalAlloc, Layout};
use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, Ordering};

use warden_wire::guest::{
    ABI_VERSION, GuestError, GuestErrorKind, InspectRequest, LoadRequest, Reply, RunRequest, RunResponse,
};

use warden_guest::Engine;

/// Hands out zeroed memory while the guest computes matrix products itself. tract computes on
/// some bytes whose results it never reads (the padding of packed panels, scratch space);
/// left-over bytes there (integers, pointers) read as f32 are often subnormal numbers, and
/// arithmetic on those is 10-100x slower in the wasm kernels' SSE code on x86. Which bytes are
/// left over depends on the order of allocations, so without zeroing about one load in ten of
/// silero VAD ran 5-10x slower than the others, for the life of the instance. Once the host
/// offers its native kernels (`kernels::offered`), the padded panels go to those, and zeroing
/// is switched off: it cost PP-OCR 3-4% (memsets of output tensors that are fully written
/// anyway), and 20 loads each of silero VAD and the small models showed no slow load without it
/// (benches/README.md).
struct Zeroed;

/// Whether [`Zeroed`] zeroes: until the host's kernels are known, and for good if it has none.
static ZEROING: AtomicBool = AtomicBool::new(true);

/// Switches zeroing on or off for allocations from now on.
pub(crate) fn zero_allocations(on: bool) {
    ZEROING.store(on, Ordering::Relaxed);
}

/// The allocator underneath: talc, in place of wasi-libc's dlmalloc (`System`), whose `malloc`
/// and `free` took a tenth of a small model's time in the guest (benches/README.md).
static TALC: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

/// Blocks up to this size are recycled by [`Bins`] rather than returned to talc. Small blocks
/// are where an allocation costs most per byte; with bins up to 64 KiB the bench MLP took 1.066x
/// the time (4 rounds; its 4 KiB activations then sit in power-of-two blocks, a guess is 4 KiB
/// aliasing in the host kernel), with bins up to 1 KiB 0.999x (benches/README.md).
const BIN_MAX: usize = 1 << 10;
/// Size classes: powers of two from 16 bytes (`1 << BIN_MIN_LOG`) to [`BIN_MAX`].
const BIN_MIN_LOG: u32 = 4;
const BIN_CLASSES: usize = (BIN_MAX.trailing_zeros() - BIN_MIN_LOG + 1) as usize;
/// Alignment every recycled block of a class of at least this size has.
const BIN_ALIGN: usize = 128;

/// Freed small blocks, one free list per power-of-two size class, each list threaded through
/// the blocks' first bytes. An inference allocates and frees the same small tensors and vectors
/// every time; with these lists each of those allocations after the first is a pop, where talc
/// searched its free blocks (talc's `allocate`, `dealloc` and the wrapper took 10.6% of
/// digits' samples). A block of class `c` (`1 << (c + BIN_MIN_LOG)` bytes) serves any request of
/// up to that size and alignment; blocks are never handed back to talc, so the memory the lists
/// hold is at most the peak use of each class.
struct Bins([Cell<*mut u8>; BIN_CLASSES]);

// SAFETY: the guest is single-threaded (wasm32-wasip1 without threads): no two threads ever
// touch the lists.
unsafe impl Sync for Bins {}

static BINS: Bins = Bins([const { Cell::new(std::ptr::null_mut()) }; BIN_CLASSES]);

impl Bins {
    /// The class serving `layout`, if it is small enough to recycle.
    #[inline(always)]
    fn class(layout: Layout) -> Option<usize> {
        if layout.size() > BIN_MAX || layout.align() > BIN_ALIGN {
            return None;
        }
        let size = layout.size().max(layout.align()).max(1 << BIN_MIN_LOG).next_power_of_two();
        Some((size.trailing_zeros() - BIN_MIN_LOG) as usize)
    }

    /// The layout talc allocates a class's blocks with: aligned for any request of the class.
    #[inline(always)]
    fn block(class: usize) -> Layout {
        let size = 1usize << (class as u32 + BIN_MIN_LOG);
        // SAFETY: a power of two up to `BIN_MAX`, aligned to a power of two no larger.
        unsafe { Layout::from_size_align_unchecked(size, size.min(BIN_ALIGN)) }
    }

    /// A freed block of `class`, if the list has one.
    #[inline(always)]
    fn pop(&self, class: usize) -> Option<*mut u8> {
        let head = self.0[class].get();
        if head.is_null() {
            return None;
        }
        // SAFETY: `head` is a freed block of this class, at least 16 bytes and aligned for a
        // pointer, whose first bytes `push` wrote the next block's address into.
        self.0[class].set(unsafe { head.cast::<*mut u8>().read() });
        Some(head)
    }

    /// Puts a block of `class` back; nothing may use it afterwards.
    #[inline(always)]
    unsafe fn push(&self, class: usize, block: *mut u8) {
        // SAFETY: the caller hands over a block of this class: at least 16 bytes, aligned.
        unsafe { block.cast::<*mut u8>().write(self.0[class].get()) };
        self.0[class].set(block);
    }
}

/// A block for `layout`: a recycled one of its class, or a new one from talc; zeroed if `zero`.
///
/// # Safety
/// As `GlobalAlloc::alloc`: `layout` has a non-zero size.
#[inline(always)]
unsafe fn alloc_block(layout: Layout, zero: bool) -> *mut u8 {
    // SAFETY: see `GlobalAlloc for Zeroed` below.
    unsafe {
        match Bins::class(layout) {
            Some(class) => match BINS.pop(class) {
                Some(block) => {
                    if zero {
                        block.write_bytes(0, layout.size());
                    }
                    block
                }
                None if zero => TALC.alloc_zeroed(Bins::block(class)),
                None => TALC.alloc(Bins::block(class)),
            },
            None if zero => TALC.alloc_zeroed(layout),
            None => TALC.alloc(layout),
        }
    }
}

// SAFETY: large blocks forward to `TALC` with the caller's own arguments, so its guarantees
// hold. A small layout maps to one class both when allocated and when freed (`Bins::class` is
// a function of the layout, which the caller passes unchanged to `dealloc`), and that class's
// blocks come from talc with `Bins::block`, at least as large and as aligned as any layout of
// the class. `realloc` keeps the block when the class does not change, and otherwise
// allocates, copies `min(old, new)` bytes and frees; zeroing writes only inside the block.
unsafe impl GlobalAlloc for Zeroed {
    #[inline(never)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see above.
        unsafe { alloc_block(layout, ZEROING.load(Ordering::Relaxed)) }
    }

    #[inline(never)]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see above.
        unsafe { alloc_block(layout, true) }
    }

    #[inline(never)]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: see above.
        unsafe {
            match Bins::class(layout) {
                Some(class) => BINS.push(class, ptr),
                None => TALC.dealloc(ptr, layout),
            }
        }
    }

    #[inline(never)]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: see above. `new_size` rounded up to `layout.align()` does not overflow (the
        // caller's promise), so `new_layout` is valid.
        unsafe {
            let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
            let zero = ZEROING.load(Ordering::Relaxed);
            match (Bins::class(layout), Bins::class(new_layout)) {
                (Some(old), Some(new)) if old == new => {
                    if zero && new_size > layout.size() {
                        ptr.add(layout.size()).write_bytes(0, new_size - layout.size());
                    }
                    ptr
                }
                (None, None) => {
                    let new = TALC.realloc(ptr, layout, new_size);
                    if !new.is_null() && new_size > layout.size() && zero {
                        new.add(layout.size()).write_bytes(0, new_size - layout.size());
                    }
                    new
                }
                _ => {
                    // `alloc` zeroes the whole new block when zeroing is on, so what lies
                    // past the copied bytes is zero.
                    let new = self.alloc(new_layout);
                    if !new.is_null() {
                        std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                    new
                }
            }
        }
    }
}

#[global_allocator]
static ALLOCATOR: Zeroed = Zeroed;

/// `fmaxf`, which LLVM calls for every scalar `f32::max` on wasm (WebAssembly's `f32.max`
/// propagates NaN, so `maxnum` cannot be one instruction). wasi-libc's version took 22% of the
/// CNN's time, called four times per output of tract's stride-2 max-pool loop. This one is one
/// `f32x4.pmax` (a single x86 `maxps`, no data-dependent branch) and a NaN test that is
/// predictable. Same result as `maxnum`: the larger operand, a NaN operand ignored (of two
/// zeros either may be returned, as C allows).
// SAFETY: `no_mangle` is unsafe because two items may export one symbol; defining `fmaxf` here
// is the point: the linker takes it instead of wasi-libc's, whose object (`fmin-fmax.c`, which
// also holds `fminf`, `fmax` and `fmin`) is then never pulled in.
#[unsafe(no_mangle)]
pub extern "C" fn fmaxf(x: f32, y: f32) -> f32 {
    use std::arch::wasm32::{f32x4_extract_lane, f32x4_pmax, f32x4_splat};
    // pmax(a, b) is `if a < b { b } else { a }`: y if x < y, else x (x also when y is NaN).
    let larger = f32x4_extract_lane::<0>(f32x4_pmax(f32x4_splat(x), f32x4_splat(y)));
    if x.is_nan() { y } else { larger }
}

/// `fminf`, as [`fmaxf`]: the smaller operand, a NaN operand ignored.
// SAFETY: as for `fmaxf`.
#[unsafe(no_mangle)]
pub extern "C" fn fminf(x: f32, y: f32) -> f32 {
    use std::arch::wasm32::{f32x4_extract_lane, f32x4_pmin, f32x4_splat};
    // pmin(a, b) is `if b < a { b } else { a }`.
    let smaller = f32x4_extract_lane::<0>(f32x4_pmin(f32x4_splat(x), f32x4_splat(y)));
    if x.is_nan() { y } else { smaller }
}

/// `fmax` for f64, as [`fmaxf`]. wasi-libc defines all four in one object, so all four are
/// defined here or the linker pulls that object in and finds two of each.
// SAFETY: as for `fmaxf`.
#[unsafe(no_mangle)]
pub extern "C" fn fmax(x: f64, y: f64) -> f64 {
    use std::arch::wasm32::{f64x2_extract_lane, f64x2_pmax, f64x2_splat};
    let larger = f64x2_extract_lane::<0>(f64x2_pmax(f64x2_splat(x), f64x2_splat(y)));
    if x.is_nan() { y } else { larger }
}

/// `fmin` for f64, as [`fminf`].
// SAFETY: as for `fmaxf`.
#[unsafe(no_mangle)]
pub extern "C" fn fmin(x: f64, y: f64) -> f64 {
    use std::arch::wasm32::{f64x2_extract_lane, f64x2_pmin, f64x2_splat};
    let smaller = f64x2_extract_lane::<0>(f64x2_pmin(f64x2_splat(x), f64x2_splat(y)));
    if x.is_nan() { y } else { smaller }
}

#[derive(Default)]
struct Guest {
    request: Vec<u8>,
    reply: Vec<u8>,
    engine: Option<Engine>,
}

thread_local! {
    static GUEST: RefCell<Guest> = RefCell::new(Guest::default());
}

fn bad_request(e: postcard::Error) -> GuestError {
    GuestError { kind: GuestErrorKind::BadRequest, message: format!("undecodable request: {e}") }
}

/// Encodes a reply (`value` serializes as a [`Reply`]) into the reply buffer, reusing its
/// allocation, and returns `(ptr << 32) | len`.
fn encode(buf: &mut Vec<u8>, value: &impl serde::Serialize) -> u64 {
    buf.clear();
    let bytes = postcard::to_extend(value, std::mem::take(buf)).unwrap_or_else(|e| {
        postcard::to_allocvec(&Reply::<()>::Err(GuestError {
            kind: GuestErrorKind::Output,
            message: format!("cannot encode reply: {e}"),
        }))
        .unwrap_or_default()
    });
    *buf = bytes;
    ((buf.as_ptr() as u64) << 32) | buf.len() as u64
}

unsafe extern "C" {
    /// The linker-made function that runs every static constructor (tract's kernel registries
    /// are `inventory` constructors).
    fn __wasm_call_ctors();
}

/// Runs the static constructors once; the host calls it right after instantiation. Without an
/// explicit call to `__wasm_call_ctors`, wasm-ld wraps *every* export to run all constructors
/// first, so each `warden_run` re-registered tract's whole kernel inventory (8% of a digits
/// inference in a profile).
// SAFETY: `no_mangle` is unsafe because two items may export one symbol; `_initialize` is defined
// only here (wasi-libc's reactor startup is not linked into this cdylib).
#[unsafe(no_mangle)]
pub extern "C" fn _initialize() {
    // SAFETY: the host calls `_initialize` once, before any other export (`warden_wire::guest`).
    unsafe { __wasm_call_ctors() }
}

/// The contract version.
// SAFETY: `no_mangle` is unsafe because two items may export one symbol; `warden_*` names are
// defined only here, and the host calls them one at a time, as `warden_wire::guest` documents.
#[unsafe(no_mangle)]
pub extern "C" fn warden_abi_version() -> u32 {
    ABI_VERSION
}

/// A buffer of at least `len` bytes for the next request.
// SAFETY: `no_mangle` is unsafe because two items may export one symbol; `warden_*` names are
// defined only here, and the host calls them one at a time, as `warden_wire::guest` documents.
#[unsafe(no_mangle)]
pub extern "C" fn warden_reserve(len: u32) -> u32 {
    GUEST.with_borrow_mut(|g| {
        g.request.clear();
        if g.request.try_reserve_exact(len as usize).is_err() {
            return 0;
        }
        g.request.resize(len as usize, 0);
        g.request.as_mut_ptr() as u32
    })
}

fn request(g: &Guest, len: u32) -> Result<&[u8], GuestError> {
    g.request.get(..len as usize).ok_or_else(|| GuestError {
        kind: GuestErrorKind::BadRequest,
        message: format!("request of {len} bytes exceeds the reserved buffer"),
    })
}

/// Parses and optimizes the model in the request buffer.
// SAFETY: `no_mangle` is unsafe because two items may export one symbol; `warden_*` names are
// defined only here, and the host calls them one at a time, as `warden_wire::guest` documents.
#[unsafe(no_mangle)]
pub extern "C" fn warden_load(len: u32) -> u64 {
    kernels::register_gemv();
    GUEST.with_borrow_mut(|g| {
        g.engine = None;
        let result = request(g, len).and_then(|bytes| {
            let req: LoadRequest<'_> = postcard::from_bytes(bytes).map_err(bad_request)?;
            Engine::load(&req)
        });
        g.request = Vec::new();
        let result = result.map(|engine| g.engine = Some(engine));
        encode(&mut g.reply, &result)
    })
}

/// Runs the loaded model on the inputs in the request buffer.
// SAFETY: `no_mangle` is unsafe because two items may export one symbol; `warden_*` names are
// defined only here, and the host calls them one at a time, as `warden_wire::guest` documents.
#[unsafe(no_mangle)]
pub extern "C" fn warden_run(len: u32) -> u64 {
    GUEST.with_borrow_mut(|g| {
        let Guest { request: buf, reply: reply_buf, engine } = &mut *g;
        let result = match engine {
            None => Err(GuestError { kind: GuestErrorKind::NotLoaded, message: "no model loaded".into() }),
            Some(engine) => buf
                .get(..len as usize)
                .ok_or_else(|| GuestError {
                    kind: GuestErrorKind::BadRequest,
                    message: format!("request of {len} bytes exceeds the reserved buffer"),
                })
                .and_then(|bytes| {
                    let req: RunRequest<'_> = postcard::from_bytes(bytes).map_err(bad_request)?;
                    engine.run_borrowed(&req)
                }),
        };
        match result {
            // Encoded straight from tract's tensors as `Reply::<RunResponse>::Ok`: no copy of the
            // outputs, their shapes or a list of them before the reply.
            Ok(outputs) => encode(reply_buf, &outputs),
            Err(e) => encode(reply_buf, &Reply::<RunResponse<'_>>::Err(e)),
        }
    })
}

/// Describes the model in the request buffer without loading it.
// SAFETY: `no_mangle` is unsafe because two items may export one symbol; `warden_*` names are
// defined only here, and the host calls them one at a time, as `warden_wire::guest` documents.
#[unsafe(no_mangle)]
pub extern "C" fn warden_inspect(len: u32) -> u64 {
    GUEST.with_borrow_mut(|g| {
        let result = request(g, len).and_then(|bytes| {
            let req: InspectRequest<'_> = postcard::from_bytes(bytes).map_err(bad_request)?;
            warden_guest::inspect(req.model)
        });
        encode(&mut g.reply, &result)
    })
}

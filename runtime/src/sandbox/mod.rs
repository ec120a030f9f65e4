//! The sandbox: a wasmtime engine running the tract guest with no capabilities, under a memory
//! cap, a stack cap and a per-call deadline.

#[cfg(target_arch = "x86_64")]
mod avx512_tiles;
mod cache;
mod depthwise;
mod kernels;

use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use serde::Serialize;
use warden_wire::guest::{
    ABI_VERSION, InspectRequest, LoadRequest, ModelInfo, Reply, RunResponse, TensorParts,
};
use wasmtime::{
    Caller, Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Memory, PoolingAllocationConfig,
    ResourceLimiter, Store, Trap, TypedFunc, UpdateDeadline, WasmParams, WasmResults,
};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

pub use cache::CompileOutcome;

use self::kernels::{HostKernels, KernelFault};
use crate::error::SandboxError;
use crate::tensor::Tensor;

/// The guest module, built from `guest/` by `build.rs`.
pub(crate) static GUEST_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/warden_guest.wasm"));
/// Its SHA-256, computed at build time.
pub(crate) const GUEST_SHA256: &str = env!("WARDEN_GUEST_SHA256");

/// Size of the embedded guest module in bytes.
pub fn guest_wasm_len() -> usize {
    GUEST_WASM.len()
}

/// Bytes of guest stdout/stderr kept for diagnostics.
const DIAGNOSTICS_CAPACITY: usize = 64 << 10;
/// The guest's function table has a few thousand entries; leave room.
const TABLE_ELEMENTS: usize = 64 << 10;
/// Stack for the host functions a yielding guest call makes, on top of the guest's own.
const ASYNC_STACK_HEADROOM: usize = 1 << 20;

/// How the sandbox is set up.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// Most bytes of linear memory any instance may have (each model may ask for less).
    pub max_memory: usize,
    /// Most bytes of native stack wasm may use. By default 1 MiB.
    pub max_wasm_stack: usize,
    /// Most instances alive at once (pooling allocator slots).
    pub max_instances: u32,
    /// Use the pooling instance allocator. By default `true`.
    pub pooling: bool,
    /// Where compiled guests are cached; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    /// Epoch tick: the granularity of deadlines, and how long a guest call made from an async
    /// task runs before it yields to the executor. By default 5 ms.
    pub epoch_tick: Duration,
    /// The guest module to run. By default `None`: the one built into this binary. Meant for
    /// comparing guest builds; any module must still speak the guest contract, and whatever it
    /// returns is checked like the built-in one's.
    pub guest: Option<Arc<[u8]>>,
    /// Let the guest's relaxed-SIMD instructions use the host's fused multiply-add (results
    /// may then differ in the last bits between hosts). By default `false`.
    pub relaxed_simd: bool,
    /// Make guest calls on wasmtime's fiber stacks, yielding to the executor at every epoch
    /// tick, so that models can run in async tasks (`Model::infer_async`) without a hand-off
    /// to another thread. Blocking calls then run the fiber on an executor of their own, about
    /// 1 us more per call. By default `false`.
    pub async_calls: bool,
    /// Offer the guest this CPU's native matrix-multiply kernels (tract's) and depthwise kernel,
    /// run on checked ranges of the guest's memory; see ARCHITECTURE.md, "Trust boundary". By
    /// default `true`. With `false` the guest computes everything with its own WebAssembly
    /// kernels.
    pub native_kernels: bool,
    /// Run rows of tiles per host call (`mmm_run_tiles`); with `false` the host refuses such
    /// calls and the guest sends one tile per call. By default `true`.
    pub tile_batches: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            max_memory: 1 << 30,
            max_wasm_stack: 1 << 20,
            max_instances: 64,
            pooling: true,
            cache_dir: None,
            epoch_tick: Duration::from_millis(5),
            guest: None,
            relaxed_simd: false,
            async_calls: false,
            native_kernels: true,
            tile_batches: true,
        }
    }
}

/// The engine, the pre-linked guest and the epoch ticker that enforces deadlines.
pub struct Sandbox {
    engine: Engine,
    pre: InstancePre<StoreState>,
    config: SandboxConfig,
    stop_ticker: Arc<AtomicBool>,
    compile: (CompileOutcome, Duration),
    kernels: Arc<HostKernels>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").field("config", &self.config).field("compile", &self.compile).finish()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

struct Limiter {
    memory_limit: usize,
    hit_memory_cap: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            self.hit_memory_cap = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= TABLE_ELEMENTS)
    }
}

struct StoreState {
    wasi: WasiP1Ctx,
    limiter: Limiter,
    stderr: MemoryOutputPipe,
    /// The guest's memory, once instantiated: what the kernel imports read and write.
    memory: Option<Memory>,
    kernels: Arc<HostKernels>,
    /// Host kernel calls in the current guest call, added to the sandbox's count when it
    /// returns: an atomic add on one counter shared by every instance cost each tile a locked
    /// instruction (the largest single item of the import's own time).
    kernel_calls: u64,
    /// When the current guest call is stopped with a timeout.
    deadline: Instant,
    /// How this store's guest calls are made.
    calls: Calls,
}

/// How a sandbox's guest calls are made (`SandboxConfig::async_calls`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Calls {
    /// On the calling thread, which a call holds until it returns or its deadline passes.
    Blocking,
    /// On wasmtime's fiber stacks, so that they can be made from async tasks: at every epoch
    /// tick a call yields to the executor, and a long or hostile guest holds an executor thread
    /// for one tick at a time.
    Yielding,
}

impl Calls {
    /// Runs guest calls made this way to completion on this thread. Blocking ones never
    /// suspend: their future is ready at its first poll, and needs no executor.
    pub(crate) fn finish<T>(
        self,
        calls: impl Future<Output = Result<T, SandboxError>>,
    ) -> Result<T, SandboxError> {
        match self {
            Calls::Blocking => match pin!(calls).poll(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(result) => result,
                Poll::Pending => Err(SandboxError::Contract("a blocking guest call was suspended".into())),
            },
            Calls::Yielding => futures_executor::block_on(calls),
        }
    }
}

/// At every epoch tick of a guest call: stop it once its deadline has passed (a
/// `Trap::Interrupt`), or go on for one more tick, yielding first if it is made on a fiber.
fn on_tick(state: &StoreState) -> UpdateDeadline {
    if Instant::now() >= state.deadline {
        UpdateDeadline::Interrupt
    } else if state.calls == Calls::Yielding {
        // tokio's yield lets its worker run every other task ready there, and poll for I/O
        // and timers, before this call goes on (outside tokio it resumes at once).
        UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now()))
    } else {
        UpdateDeadline::Continue(1)
    }
}

/// Calls `func` the way the store's calls are made.
async fn invoke<P: WasmParams + Sync, R: WasmResults + Sync>(
    store: &mut Store<StoreState>,
    func: &TypedFunc<P, R>,
    params: P,
) -> wasmtime::Result<R> {
    match store.data().calls {
        Calls::Blocking => func.call(store, params),
        Calls::Yielding => func.call_async(store, params).await,
    }
}

/// The guest's memory and the store's state, for one import call.
fn kernel_env<'a>(
    caller: &'a mut Caller<'_, StoreState>,
) -> Result<(&'a mut [u8], &'a mut StoreState), KernelFault> {
    let memory =
        caller.data().memory.ok_or_else(|| KernelFault("called before the instance was set up".into()))?;
    Ok(memory.data_and_store_mut(caller))
}

/// Defines the kernel imports (`warden_wire::guest::kernels`).
fn link_kernels(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    use warden_wire::guest::kernels::{DEPTHWISE_C, LIST, MODULE, PICK, RUN, RUN_TILES};
    linker.func_wrap(MODULE, LIST, |mut caller: Caller<'_, StoreState>, buf: u32, cap: u32| {
        let (memory, state) = kernel_env(&mut caller)?;
        Ok(state.kernels.list(memory, buf, cap)?)
    })?;
    linker.func_wrap(MODULE, PICK, |caller: Caller<'_, StoreState>, m: i64, k: i64, n: i64| {
        caller.data().kernels.pick(m, k, n)
    })?;
    linker.func_wrap(
        MODULE,
        RUN,
        |mut caller: Caller<'_, StoreState>, kernel: u32, ops: u32, count: u32| {
            let (memory, state) = kernel_env(&mut caller)?;
            let done = state.kernels.run(memory, kernel, ops, count)?;
            state.kernel_calls += 1;
            Ok(done)
        },
    )?;
    linker.func_wrap(
        MODULE,
        RUN_TILES,
        |mut caller: Caller<'_, StoreState>, kernel: u32, ops: u32, count: u32, tiles: u32, deltas: u32| {
            let (memory, state) = kernel_env(&mut caller)?;
            let done = state.kernels.run_tiles(memory, kernel, ops, count, tiles, deltas)?;
            state.kernel_calls += if done == 0 { u64::from(tiles) } else { 0 };
            Ok(done)
        },
    )?;
    #[allow(clippy::too_many_arguments)]
    linker.func_wrap(
        MODULE,
        DEPTHWISE_C,
        |mut caller: Caller<'_, StoreState>,
         input: u32,
         output: u32,
         kernel: u32,
         tap_indices: u32,
         offsets: u32,
         taps: u32,
         bias: u32,
         channels: u32,
         k_stride: u32,
         len: u32,
         in_stride: i32,
         out_stride: i32| {
            let args = depthwise::Args {
                input,
                output,
                kernel,
                tap_indices,
                offsets,
                taps,
                bias,
                channels,
                k_stride,
                len,
                in_stride,
                out_stride,
            };
            let (memory, state) = kernel_env(&mut caller)?;
            let done = state.kernels.depthwise_c(memory, &args)?;
            state.kernel_calls += u64::from(done == 0);
            Ok(done)
        },
    )?;
    Ok(())
}

impl Sandbox {
    /// Builds the engine and links the guest, compiling it or loading it from the cache.
    /// `on_compile` is called before a compile that takes seconds.
    pub fn new(config: SandboxConfig, on_compile: &dyn Fn()) -> Result<Sandbox, SandboxError> {
        let setup = |e: wasmtime::Error| SandboxError::Setup(format!("{e:#}"));
        let mut wasm_config = Config::new();
        wasm_config
            .epoch_interruption(true)
            .max_wasm_stack(config.max_wasm_stack)
            // Yielding calls run on a stack of their own: the guest's plus room for the host
            // functions it calls (the native kernels).
            .async_stack_size(config.max_wasm_stack.saturating_add(ASYNC_STACK_HEADROOM))
            .wasm_simd(true)
            .wasm_relaxed_simd(config.relaxed_simd)
            .relaxed_simd_deterministic(false)
            .cranelift_opt_level(wasmtime::OptLevel::Speed);
        // For profiling the guest with `perf` (benches/README.md): /tmp/perf-PID.map names the
        // compiled guest functions. Off unless asked for.
        if std::env::var_os("WARDEN_PERF_MAP").is_some_and(|v| v == "1") {
            wasm_config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        if config.pooling {
            let mut pool = PoolingAllocationConfig::new();
            pool.total_core_instances(config.max_instances)
                .total_memories(config.max_instances)
                .total_tables(config.max_instances)
                .max_memory_size(config.max_memory)
                .table_elements(TABLE_ELEMENTS)
                .total_stacks(config.max_instances);
            wasm_config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&wasm_config).map_err(setup)?;
        let custom_sha256;
        let (wasm, wasm_sha256) = match &config.guest {
            Some(bytes) => {
                use sha2::Digest as _;
                custom_sha256 = hex::encode(sha2::Sha256::digest(bytes));
                (&bytes[..], custom_sha256.as_str())
            }
            None => (GUEST_WASM, GUEST_SHA256),
        };
        let (module, outcome, elapsed) =
            cache::load_or_compile(&engine, wasm, wasm_sha256, config.cache_dir.as_deref(), on_compile)?;
        let mut linker: Linker<StoreState> = Linker::new(&engine);
        // WASI's sync functions block on a tokio runtime of their own, which they cannot do on a
        // thread that runs async tasks: calls made from tasks need its async ones.
        if config.async_calls {
            wasmtime_wasi::p1::add_to_linker_async(&mut linker, |s| &mut s.wasi).map_err(setup)?;
        } else {
            wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s| &mut s.wasi).map_err(setup)?;
        }
        link_kernels(&mut linker).map_err(setup)?;
        let pre = linker.instantiate_pre(&module).map_err(setup)?;

        let stop_ticker = Arc::new(AtomicBool::new(false));
        let (ticker_engine, stop, tick) = (engine.clone(), stop_ticker.clone(), config.epoch_tick);
        std::thread::Builder::new()
            .name("warden-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    ticker_engine.increment_epoch();
                }
            })
            .map_err(|e| SandboxError::Setup(format!("starting the epoch thread: {e}")))?;
        let kernels = Arc::new(
            if config.native_kernels { HostKernels::native() } else { HostKernels::none() }
                .with_tile_batches(config.tile_batches),
        );
        Ok(Sandbox { engine, pre, config, stop_ticker, compile: (outcome, elapsed), kernels })
    }

    /// The native kernels offered to guests, by name (empty when `native_kernels` is off or
    /// tract has none for this CPU).
    pub fn native_kernels(&self) -> Vec<&str> {
        self.kernels.names()
    }

    /// How many host kernel calls (matrix tiles, depthwise runs) guests have made so far.
    pub fn native_kernel_calls(&self) -> u64 {
        self.kernels.calls()
    }

    /// How many of those tiles came in rows (`mmm_run_tiles` calls) so far.
    pub fn native_tile_batches(&self) -> u64 {
        self.kernels.batches()
    }

    /// Whether the guest came from the cache, and how long getting it took.
    pub fn compile_outcome(&self) -> (CompileOutcome, Duration) {
        self.compile
    }

    /// The configuration in force.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// How guest calls are made.
    pub(crate) fn calls(&self) -> Calls {
        if self.config.async_calls { Calls::Yielding } else { Calls::Blocking }
    }

    /// A fresh guest instance with no model loaded, capped at `memory_limit` bytes.
    pub(crate) fn instantiate(
        &self,
        memory_limit: usize,
        timeout: Duration,
    ) -> Result<GuestInstance, SandboxError> {
        let stderr = MemoryOutputPipe::new(DIAGNOSTICS_CAPACITY);
        let wasi = WasiCtxBuilder::new()
            .stdout(MemoryOutputPipe::new(DIAGNOSTICS_CAPACITY))
            .stderr(stderr.clone())
            .build_p1();
        let memory_limit = memory_limit.min(self.config.max_memory);
        let calls = self.calls();
        let state = StoreState {
            wasi,
            limiter: Limiter { memory_limit, hit_memory_cap: false },
            stderr,
            memory: None,
            kernels: self.kernels.clone(),
            kernel_calls: 0,
            deadline: Instant::now() + timeout,
            calls,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_callback(|store| Ok(on_tick(store.data())));
        store.set_epoch_deadline(1);
        let mut guest = GuestInstance::partial(store, memory_limit);
        let instance = match calls {
            Calls::Blocking => self.pre.instantiate(&mut guest.store),
            Calls::Yielding => futures_executor::block_on(self.pre.instantiate_async(&mut guest.store)),
        }
        .map_err(|e| guest.classify(e, timeout))?;
        let contract = |what: &str| SandboxError::Contract(format!("the guest does not export {what}"));
        let memory = instance.get_memory(&mut guest.store, "memory").ok_or_else(|| contract("memory"))?;
        guest.store.data_mut().memory = Some(memory);
        advise_huge_pages(memory.data_ptr(&guest.store), memory_limit);
        let init = instance.get_typed_func::<(), ()>(&mut guest.store, "_initialize").ok();
        let version: TypedFunc<(), u32> = instance
            .get_typed_func(&mut guest.store, "warden_abi_version")
            .map_err(|_| contract("warden_abi_version"))?;
        let reserve = instance
            .get_typed_func(&mut guest.store, "warden_reserve")
            .map_err(|_| contract("warden_reserve"))?;
        let load =
            instance.get_typed_func(&mut guest.store, "warden_load").map_err(|_| contract("warden_load"))?;
        let run =
            instance.get_typed_func(&mut guest.store, "warden_run").map_err(|_| contract("warden_run"))?;
        let inspect = instance
            .get_typed_func(&mut guest.store, "warden_inspect")
            .map_err(|_| contract("warden_inspect"))?;
        if let Some(init) = init {
            calls.finish(async {
                invoke(&mut guest.store, &init, ()).await.map_err(|e| guest.classify(e, timeout))
            })?;
        }
        let abi = calls.finish(async {
            invoke(&mut guest.store, &version, ()).await.map_err(|e| guest.classify(e, timeout))
        })?;
        if abi != ABI_VERSION {
            return Err(SandboxError::Contract(format!(
                "guest contract version {abi}, host speaks {ABI_VERSION}"
            )));
        }
        guest.funcs = Some(Funcs { memory, reserve, load, run, inspect });
        Ok(guest)
    }
}

/// Asks Linux to back the guest's linear memory with transparent huge pages, from its base to
/// its cap (inside the reservation wasmtime made for it: the whole 4 GiB of a 32-bit memory, or
/// a pooling slot of the engine's maximum, which the cap never exceeds). With the usual
/// `madvise` THP setting nothing is huge unless asked for, and a model's weights in 4 KiB pages
/// (6 MB for the bench MLP, streamed once per inference) miss the TLB all the way through. The
/// advice changes no byte and no protection, only how the kernel may back the pages it maps
/// later; where it is refused or THP is off, nothing changes.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn advise_huge_pages(base: *mut u8, len: usize) {
    // SAFETY: `MADV_HUGEPAGE` neither reads nor writes memory nor changes its protection: it only
    // marks the mappings in the range, all of them this memory's own reservation, as eligible
    // for huge pages. An error (a range the kernel does not map) is harmless and ignored.
    let _ = unsafe { libc::madvise(base.cast(), len, libc::MADV_HUGEPAGE) };
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_base: *mut u8, _len: usize) {}

struct Funcs {
    memory: Memory,
    reserve: TypedFunc<u32, u32>,
    load: TypedFunc<u32, u64>,
    run: TypedFunc<u32, u64>,
    inspect: TypedFunc<u32, u64>,
}

/// One guest instance: its own store, memory and (once loaded) model. Not shared between threads
/// at once; after any trap it must be dropped.
pub(crate) struct GuestInstance {
    store: Store<StoreState>,
    funcs: Option<Funcs>,
    memory_limit: usize,
    /// The guest's request buffer from the last `warden_reserve`: its address and length. The
    /// guest keeps that buffer until the next `warden_reserve` or `warden_load`
    /// (`warden_wire::guest`), so a run request that fits is written straight into it, without
    /// a call to reserve again.
    reserved: Option<(usize, usize)>,
}

impl GuestInstance {
    fn partial(store: Store<StoreState>, memory_limit: usize) -> GuestInstance {
        GuestInstance { store, funcs: None, memory_limit, reserved: None }
    }

    fn set_deadline(&mut self, timeout: Duration) {
        self.store.set_epoch_deadline(1);
        let state = self.store.data_mut();
        state.deadline = Instant::now() + timeout;
        state.limiter.hit_memory_cap = false;
    }

    /// How this instance's guest calls are made.
    pub(crate) fn calls(&self) -> Calls {
        self.store.data().calls
    }

    fn classify(&self, e: wasmtime::Error, timeout: Duration) -> SandboxError {
        if self.store.data().limiter.hit_memory_cap {
            return SandboxError::MemoryCap(self.memory_limit);
        }
        if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
            return SandboxError::Timeout(timeout);
        }
        let stderr = self.store.data().stderr.contents();
        let stderr = String::from_utf8_lossy(&stderr);
        let detail: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = bounded(detail[detail.len().saturating_sub(3)..].join(" | "));
        let trap = e.downcast_ref::<Trap>().map_or_else(|| e.root_cause().to_string(), |t| t.to_string());
        if tail.is_empty() {
            SandboxError::Trap(trap)
        } else {
            SandboxError::Trap(format!("{trap}; guest said: {tail}"))
        }
    }

    /// Encodes `request` straight into the guest's buffer, calls `func`, and returns the reply's
    /// bytes range in guest memory after bounds checks.
    async fn call(
        &mut self,
        which: fn(&Funcs) -> &TypedFunc<u32, u64>,
        request: &(impl Serialize + Sync),
        timeout: Duration,
    ) -> Result<std::ops::Range<usize>, SandboxError> {
        // Taken out for the call and put back, rather than cloned: a `TypedFunc` clone registers
        // its type again (about 1% of a small model's inference).
        let funcs =
            self.funcs.take().ok_or_else(|| SandboxError::Contract("instance not initialised".into()))?;
        let result = self.call_with(&funcs, which(&funcs), request, timeout).await;
        self.funcs = Some(funcs);
        let state = self.store.data_mut();
        state.kernels.add_calls(std::mem::take(&mut state.kernel_calls));
        result
    }

    async fn call_with(
        &mut self,
        funcs: &Funcs,
        func: &TypedFunc<u32, u64>,
        request: &(impl Serialize + Sync),
        timeout: Duration,
    ) -> Result<std::ops::Range<usize>, SandboxError> {
        let (memory, reserve) = (funcs.memory, &funcs.reserve);
        let len = postcard::serialize_with_flavor(request, postcard::ser_flavors::Size::default())
            .map_err(|e| SandboxError::Contract(format!("encoding the request: {e}")))?;
        let len32 = u32::try_from(len).map_err(|_| SandboxError::Contract("request above 4 GiB".into()))?;
        self.set_deadline(timeout);
        let ptr = match self.reserved {
            Some((ptr, reserved)) if len <= reserved => ptr,
            _ => {
                self.reserved = None;
                let ptr = invoke(&mut self.store, reserve, len32)
                    .await
                    .map_err(|e| self.classify(e, timeout))? as usize;
                if ptr == 0 {
                    return Err(if self.store.data().limiter.hit_memory_cap {
                        SandboxError::MemoryCap(self.memory_limit)
                    } else {
                        SandboxError::Contract(format!("the guest could not reserve {len} bytes"))
                    });
                }
                self.reserved = Some((ptr, len));
                ptr
            }
        };
        let buf = memory
            .data_mut(&mut self.store)
            .get_mut(ptr..ptr.saturating_add(len))
            .ok_or_else(|| SandboxError::Contract("reserved buffer outside guest memory".into()))?;
        postcard::to_slice(request, buf)
            .map_err(|e| SandboxError::Contract(format!("encoding the request: {e}")))?;
        let packed = invoke(&mut self.store, func, len32).await.map_err(|e| self.classify(e, timeout))?;
        let (ptr, len) = ((packed >> 32) as usize, (packed & 0xffff_ffff) as usize);
        let end = ptr.checked_add(len).filter(|end| *end <= memory.data_size(&self.store));
        end.map(|end| ptr..end).ok_or_else(|| SandboxError::Contract("reply outside guest memory".into()))
    }

    fn memory(&self) -> Result<&[u8], SandboxError> {
        let funcs =
            self.funcs.as_ref().ok_or_else(|| SandboxError::Contract("instance not initialised".into()))?;
        Ok(funcs.memory.data(&self.store))
    }

    /// Parses and optimizes a model inside the guest.
    pub(crate) fn load(&mut self, request: &LoadRequest<'_>, timeout: Duration) -> Result<(), SandboxError> {
        let range = self.calls().finish(self.call(|f| &f.load, request, timeout));
        // The guest drops its request buffer after a load (it held the model's bytes).
        self.reserved = None;
        let range = range?;
        let reply: Reply<()> = postcard::from_bytes(&self.memory()?[range])
            .map_err(|e| SandboxError::Contract(format!("undecodable load reply: {e}")))?;
        reply.map_err(|e| self.guest_error(e.kind, e.message))
    }

    /// Describes a model's declared interface (parsing it in the sandbox, not optimizing it).
    pub(crate) fn inspect(&mut self, model: &[u8], timeout: Duration) -> Result<ModelInfo, SandboxError> {
        let request = InspectRequest { model };
        let range = self.calls().finish(self.call(|f| &f.inspect, &request, timeout))?;
        let reply: Reply<ModelInfo> = postcard::from_bytes(&self.memory()?[range])
            .map_err(|e| SandboxError::Contract(format!("undecodable inspect reply: {e}")))?;
        reply.map_err(|e| self.guest_error(e.kind, e.message))
    }

    /// Runs the loaded model. Returns the outputs as the guest reported them (untrusted: the
    /// caller checks them against the manifest).
    pub(crate) async fn run(
        &mut self,
        inputs: &[Tensor],
        timeout: Duration,
    ) -> Result<Vec<Tensor>, SandboxError> {
        let range = self.call(|f| &f.run, &RunInputs(inputs), timeout).await?;
        let reply: Reply<RunResponse<'_>> = postcard::from_bytes(&self.memory()?[range])
            .map_err(|e| SandboxError::Contract(format!("undecodable run reply: {e}")))?;
        match reply {
            Ok(response) => Ok(response
                .outputs
                .into_iter()
                .map(|t| Tensor {
                    name: t.name.to_owned(),
                    dtype: t.dtype,
                    shape: t.shape,
                    data: t.data.to_vec(),
                })
                .collect()),
            Err(e) => Err(self.guest_error(e.kind, e.message)),
        }
    }

    fn guest_error(&self, kind: warden_wire::guest::GuestErrorKind, message: String) -> SandboxError {
        if self.store.data().limiter.hit_memory_cap {
            return SandboxError::MemoryCap(self.memory_limit);
        }
        SandboxError::Guest { kind, message: bounded(message) }
    }
}

/// Guest text (an error message, the tail of its stderr) cut to `MAX_ERROR_MESSAGE` bytes on the
/// host: it reaches the client and the audit log, and the guest's own cap is the guest's word.
fn bounded(mut text: String) -> String {
    if text.len() > warden_wire::guest::MAX_ERROR_MESSAGE {
        let mut end = warden_wire::guest::MAX_ERROR_MESSAGE;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("... (cut)");
    }
    text
}

/// A `warden_wire::guest::RunRequest` over the host's own tensors: encoded byte for byte as one
/// (postcard writes neither struct nor field names; a test compares the bytes), without building
/// one, so neither a vector of references nor a copy of each shape is made per run.
struct RunInputs<'a>(&'a [Tensor]);

impl Serialize for RunInputs<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        struct All<'a>(&'a [Tensor]);
        impl Serialize for All<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(self.0.iter().map(|t| TensorParts {
                    name: &t.name,
                    dtype: t.dtype,
                    shape: &t.shape,
                    data: &t.data,
                }))
            }
        }
        let mut s = serializer.serialize_struct("RunRequest", 1)?;
        s.serialize_field("inputs", &All(self.0))?;
        s.end()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// `RunInputs` is the contract's `RunRequest` to the byte, for every dtype, shapes of any
    /// rank (empty included) and inputs of any size.
    #[test]
    fn run_inputs_encode_as_a_run_request() {
        let inputs = [
            Tensor::from_f32("x", &[2, 3], &[0.5, -1.0, 2.0, 3.0, f32::NAN, 1e30]),
            Tensor::from_i64("a long input name, é", &[1], &[i64::MIN]),
            Tensor::from_u8("scalar", &[], &[7]),
            Tensor::from_bool("flags", &[0, 4], &[]),
            Tensor::from_f64("big", &[300], &vec![0.25; 300]),
        ];
        for n in 0..=inputs.len() {
            let reference = Tensor::run_request(&inputs[..n]);
            assert_eq!(
                postcard::to_allocvec(&RunInputs(&inputs[..n])).unwrap(),
                postcard::to_allocvec(&reference).unwrap(),
                "{n} inputs"
            );
        }
    }
}

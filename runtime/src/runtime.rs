use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use warden_wire::guest::{InputFact, LoadRequest, ModelInfo};
use warden_wire::manifest::Manifest;

use crate::error::{Error, Result, SandboxError};
use crate::policy::{DEFAULT_MAX_INPUT_BYTES, apply_output_policy, check_outputs, validate_inputs};
use crate::sandbox::{Calls, CompileOutcome, GuestInstance, Sandbox, SandboxConfig};
use crate::tensor::Tensor;
use crate::trust::{KeyId, TrustStore, VerifiedBundle, VersionLedger, verify_bundle};

/// Something worth telling a user while the runtime starts.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Progress {
    /// The guest is being compiled to native code (seconds; once per guest and engine config).
    CompilingGuest,
}

type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// Builds a [`Runtime`]. Every default is the secure one.
pub struct RuntimeBuilder {
    trust_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    no_cache: bool,
    memory_limit: usize,
    timeout: Duration,
    load_timeout: Duration,
    instances_per_model: usize,
    max_input_bytes: u64,
    pooling: bool,
    relaxed_simd: bool,
    native_kernels: bool,
    tile_batches: bool,
    async_calls: bool,
    guest: Option<Arc<[u8]>>,
    progress: Option<ProgressFn>,
}

impl std::fmt::Debug for RuntimeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeBuilder")
            .field("trust_dir", &self.trust_dir)
            .field("state_dir", &self.state_dir)
            .field("cache_dir", &self.cache_dir)
            .field("memory_limit", &self.memory_limit)
            .field("timeout", &self.timeout)
            .field("load_timeout", &self.load_timeout)
            .finish_non_exhaustive()
    }
}

fn xdg_dir(var: &str, fallback: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(fallback)))
        .map(|d| d.join("warden"))
}

/// `$XDG_STATE_HOME/warden` (or `~/.local/state/warden`).
pub fn default_state_dir() -> Option<PathBuf> {
    xdg_dir("XDG_STATE_HOME", ".local/state")
}

/// `$XDG_CACHE_HOME/warden` (or `~/.cache/warden`).
pub fn default_cache_dir() -> Option<PathBuf> {
    xdg_dir("XDG_CACHE_HOME", ".cache")
}

impl RuntimeBuilder {
    /// The directory of trusted publisher keys (`*.pub`, optional `revoked`). Without one, no
    /// bundle loads.
    pub fn trust_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.trust_dir = Some(dir.into());
        self
    }

    /// Where accepted model versions are recorded. By default [`default_state_dir`].
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// Where the compiled guest is cached. By default [`default_cache_dir`].
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Compile the guest on every start instead of caching it. By default the cache is used.
    pub fn no_cache(mut self) -> Self {
        self.no_cache = true;
        self
    }

    /// Memory cap of one sandbox instance, in bytes. By default 512 MiB; a manifest may ask for
    /// less, never more.
    pub fn memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = bytes;
        self
    }

    /// Deadline of one inference. By default 10 s; a manifest may ask for less, never more.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Deadline for parsing and optimizing one model in the sandbox. By default 60 s.
    pub fn load_timeout(mut self, timeout: Duration) -> Self {
        self.load_timeout = timeout;
        self
    }

    /// Ready instances kept per model (one inference per instance at a time). By default the
    /// number of cores.
    pub fn instances_per_model(mut self, n: usize) -> Self {
        self.instances_per_model = n.max(1);
        self
    }

    /// Host-wide cap on one request's input bytes. By default 16 MiB.
    pub fn max_input_bytes(mut self, bytes: u64) -> Self {
        self.max_input_bytes = bytes;
        self
    }

    /// Use wasmtime's pooling allocator. By default `true`.
    pub fn pooling(mut self, on: bool) -> Self {
        self.pooling = on;
        self
    }

    /// Let the guest's relaxed-SIMD instructions use the host's fused multiply-add. By default
    /// `false`.
    pub fn relaxed_simd(mut self, on: bool) -> Self {
        self.relaxed_simd = on;
        self
    }

    /// Offer the guest this CPU's native matrix-multiply and depthwise kernels, run on checked
    /// ranges of the guest's memory (see ARCHITECTURE.md, "Trust boundary"). By default `true`;
    /// with `false` all arithmetic runs as WebAssembly, about 1.5-3x slower on conv- and
    /// matmul-heavy models.
    pub fn native_kernels(mut self, on: bool) -> Self {
        self.native_kernels = on;
        self
    }

    /// Let the guest hand the host's kernels a row of tiles per call (`mmm_run_tiles`) rather
    /// than one tile per call. By default `true`; the results are the same bits either way
    /// (tests compare the two), `false` only costs time.
    pub fn tile_batches(mut self, on: bool) -> Self {
        self.tile_batches = on;
        self
    }

    /// Make guest calls on wasmtime's fiber stacks, so that [`Model::infer_async`] runs a model
    /// in the calling task (yielding to the executor at every epoch tick) rather than handing it
    /// to tokio's blocking pool. For servers that answer from async tasks, as `warden serve`
    /// does. By default `false`: a blocking [`Model::infer`] then costs about 1 us less.
    pub fn async_calls(mut self, on: bool) -> Self {
        self.async_calls = on;
        self
    }

    /// Run this guest module instead of the one built in (for comparing guest builds).
    pub fn guest_module(mut self, wasm: impl Into<Arc<[u8]>>) -> Self {
        self.guest = Some(wasm.into());
        self
    }

    /// Called with progress events (the first compile of the guest takes seconds).
    pub fn on_progress(mut self, f: impl Fn(Progress) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(f));
        self
    }

    /// Loads the trust directory, opens the state directory, and sets up the sandbox.
    pub fn build(self) -> Result<Runtime> {
        let trust = self.trust_dir.as_deref().map(TrustStore::load).transpose()?;
        let state_dir = self.state_dir.or_else(default_state_dir).ok_or_else(|| {
            Error::Sandbox(SandboxError::Setup("no state directory: set one or HOME".into()))
        })?;
        let ledger = VersionLedger::open(&state_dir)?;
        let cache_dir = if self.no_cache { None } else { self.cache_dir.or_else(default_cache_dir) };
        let config = SandboxConfig {
            max_memory: self.memory_limit,
            pooling: self.pooling,
            cache_dir,
            guest: self.guest.clone(),
            relaxed_simd: self.relaxed_simd,
            native_kernels: self.native_kernels,
            tile_batches: self.tile_batches,
            async_calls: self.async_calls,
            ..SandboxConfig::default()
        };
        let progress = self.progress.clone();
        let sandbox = Sandbox::new(config, &|| {
            if let Some(p) = &progress {
                p(Progress::CompilingGuest);
            }
        })?;
        Ok(Runtime {
            sandbox: Arc::new(sandbox),
            trust,
            ledger,
            state_dir,
            timeout: self.timeout,
            load_timeout: self.load_timeout,
            instances_per_model: self.instances_per_model,
            max_input_bytes: self.max_input_bytes,
        })
    }
}

/// The embedding entry point: verifies signed model bundles and runs them in the sandbox.
///
/// ```no_run
/// # fn main() -> warden::Result<()> {
/// use warden::{Runtime, Tensor};
/// let runtime = Runtime::builder().trust_dir("models/dev-trust").build()?;
/// let model = runtime.load_bundle("models/repo/digits/1")?;
/// let outputs = model.infer(vec![Tensor::from_f32("input", &[1, 64], &[0.0; 64])])?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Runtime {
    sandbox: Arc<Sandbox>,
    trust: Option<TrustStore>,
    ledger: VersionLedger,
    state_dir: PathBuf,
    timeout: Duration,
    load_timeout: Duration,
    instances_per_model: usize,
    max_input_bytes: u64,
}

impl Runtime {
    /// A builder with secure defaults.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder {
            trust_dir: None,
            state_dir: None,
            cache_dir: None,
            no_cache: false,
            memory_limit: 512 << 20,
            timeout: Duration::from_secs(10),
            load_timeout: Duration::from_secs(60),
            instances_per_model: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_input_bytes: DEFAULT_MAX_INPUT_BYTES,
            pooling: true,
            relaxed_simd: false,
            native_kernels: true,
            tile_batches: true,
            async_calls: false,
            guest: None,
            progress: None,
        }
    }

    /// The native kernels offered to the guest, by name (empty when switched off or when tract
    /// has none for this CPU).
    pub fn native_kernels(&self) -> Vec<&str> {
        self.sandbox.native_kernels()
    }

    /// How many host kernel calls (matrix tiles, depthwise runs) guests have made so far.
    pub fn native_kernel_calls(&self) -> u64 {
        self.sandbox.native_kernel_calls()
    }

    /// How many host calls brought a row of tiles rather than one (see
    /// [`RuntimeBuilder::tile_batches`]).
    pub fn native_tile_batches(&self) -> u64 {
        self.sandbox.native_tile_batches()
    }

    /// Whether the guest was compiled on this start or loaded from the cache, and how long it took.
    pub fn guest_compile(&self) -> (CompileOutcome, Duration) {
        self.sandbox.compile_outcome()
    }

    /// The trusted keys, if a trust directory was given.
    pub fn trust(&self) -> Option<&TrustStore> {
        self.trust.as_ref()
    }

    /// The state directory in use.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Describes an ONNX model's declared inputs and outputs. The bytes are unverified, so they
    /// are parsed inside the sandbox, under the load deadline and memory cap.
    pub fn inspect_onnx(&self, model: &[u8]) -> Result<ModelInfo> {
        let mut instance = self.sandbox.instantiate(self.sandbox.config().max_memory, self.load_timeout)?;
        Ok(instance.inspect(model, self.load_timeout)?)
    }

    /// Verifies a bundle directory (signature, key, digest, rollback), loads the model into a
    /// sandbox instance under the load deadline, and records its version as accepted.
    pub fn load_bundle(&self, dir: impl AsRef<Path>) -> Result<Model> {
        let trust = self.trust.as_ref().ok_or_else(|| Error::Bundle {
            path: dir.as_ref().to_path_buf(),
            kind: crate::error::BundleError::UnknownKey("(no trust directory configured)".into()),
        })?;
        let bundle = verify_bundle(dir.as_ref(), trust)?;
        self.ledger.check(&bundle)?;
        let model = self.load_verified(bundle)?;
        self.ledger.accept(&model.inner.bundle)?;
        Ok(model)
    }

    fn load_verified(&self, bundle: VerifiedBundle) -> Result<Model> {
        let m = &bundle.manifest;
        let limits = &m.limits;
        let timeout =
            limits.timeout_ms.map_or(self.timeout, |ms| Duration::from_millis(ms).min(self.timeout));
        let memory_limit = limits
            .max_memory_mib
            .and_then(|mib| usize::try_from(mib.saturating_mul(1 << 20)).ok())
            .map_or(self.sandbox.config().max_memory, |b| b.min(self.sandbox.config().max_memory));
        let facts = m.input_facts();
        let inner = Arc::new(ModelInner {
            sandbox: self.sandbox.clone(),
            facts,
            timeout,
            load_timeout: self.load_timeout,
            memory_limit,
            max_instances: self.instances_per_model,
            max_input_bytes: self.max_input_bytes,
            pool: Mutex::new(Pool { idle: Vec::new(), live: 0, waiting: 0 }),
            freed: Condvar::new(),
            runs: AtomicU64::new(0),
            bundle,
        });
        let started = Instant::now();
        let first = inner.new_instance()?;
        inner.release(first, true, true);
        let load_time = started.elapsed();
        Ok(Model { inner, load_time })
    }
}

struct Pool {
    idle: Vec<GuestInstance>,
    live: usize,
    /// Callers blocked in `acquire`: `release` wakes one only if there are any, since a
    /// condition variable's notify is a futex syscall even with nobody waiting.
    waiting: usize,
}

struct ModelInner {
    sandbox: Arc<Sandbox>,
    bundle: VerifiedBundle,
    facts: Vec<InputFact>,
    timeout: Duration,
    load_timeout: Duration,
    memory_limit: usize,
    max_instances: usize,
    max_input_bytes: u64,
    pool: Mutex<Pool>,
    freed: Condvar,
    runs: AtomicU64,
}

impl ModelInner {
    fn new_instance(&self) -> Result<GuestInstance, SandboxError> {
        let mut instance = self.sandbox.instantiate(self.memory_limit, self.load_timeout)?;
        instance.load(
            &LoadRequest { model: &self.bundle.model, inputs: self.facts.clone() },
            self.load_timeout,
        )?;
        Ok(instance)
    }

    fn acquire(&self) -> Result<GuestInstance, SandboxError> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(instance) = pool.idle.pop() {
                return Ok(instance);
            }
            if pool.live < self.max_instances {
                pool.live += 1;
                drop(pool);
                return self.new_instance().inspect_err(|_| {
                    let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
                    pool.live -= 1;
                    self.unlock_and_wake(pool);
                });
            }
            pool.waiting += 1;
            pool = self.freed.wait(pool).unwrap_or_else(|p| p.into_inner());
            pool.waiting -= 1;
        }
    }

    /// An idle instance, if there is one: never waits for one, nor loads one.
    fn try_acquire_idle(&self) -> Option<GuestInstance> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).idle.pop()
    }

    /// Runs the inputs on `instance` (taken from this pool) and gives it back: to the idle ones
    /// unless the sandbox stopped it.
    async fn run(&self, mut instance: GuestInstance, inputs: &[Tensor]) -> Result<Vec<Tensor>, SandboxError> {
        let mut slot = Slot { model: self, held: true };
        self.runs.fetch_add(1, Ordering::Relaxed);
        let result = instance.run(inputs, self.timeout).await;
        let healthy = match &result {
            Ok(_) | Err(SandboxError::Guest { .. }) => true,
            Err(_) => false,
        };
        slot.held = false;
        self.release(instance, healthy, false);
        result
    }

    fn release(&self, instance: GuestInstance, healthy: bool, fresh: bool) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if fresh {
            pool.live += 1;
        }
        if healthy {
            pool.idle.push(instance);
        } else {
            pool.live -= 1;
        }
        self.unlock_and_wake(pool);
    }

    /// Releases the pool's lock and wakes one caller blocked in `acquire`, if any is.
    fn unlock_and_wake(&self, pool: MutexGuard<'_, Pool>) {
        let wake = pool.waiting > 0;
        drop(pool);
        if wake {
            self.freed.notify_one();
        }
    }
}

/// A run's place in its model's pool, given up if the run is dropped midway (a yielding run
/// whose task was cancelled): the instance, stopped in the middle of a call, goes with it.
struct Slot<'a> {
    model: &'a ModelInner,
    held: bool,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if self.held {
            let mut pool = self.model.pool.lock().unwrap_or_else(|p| p.into_inner());
            pool.live -= 1;
            self.model.unlock_and_wake(pool);
        }
    }
}

/// A verified model loaded in the sandbox. Cheap to clone; calls from several threads run on
/// separate instances, up to the configured number per model.
#[derive(Clone)]
pub struct Model {
    inner: Arc<ModelInner>,
    load_time: Duration,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.manifest().name)
            .field("version", &self.manifest().version)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// The signed manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.inner.bundle.manifest
    }

    /// The key that signed it.
    pub fn key_id(&self) -> KeyId {
        self.inner.bundle.key_id
    }

    /// Time taken to verify nothing more: parse and optimize the model in the first instance.
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// Most inferences this model runs at once (its pool of sandbox instances).
    pub fn max_instances(&self) -> usize {
        self.inner.max_instances
    }

    /// How many inferences reached the sandbox (refused inputs never do).
    pub fn sandbox_runs(&self) -> u64 {
        self.inner.runs.load(Ordering::Relaxed)
    }

    /// Validates the inputs against the manifest, runs the model in the sandbox, checks its
    /// outputs against the manifest and applies the output policy.
    pub fn infer(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let inputs = validate_inputs(self.manifest(), inputs, self.inner.max_input_bytes)?;
        self.run_blocking(&inputs)
    }

    /// [`Model::infer`] for a task of a [tokio] runtime, without handing the run to another
    /// thread when it need not be.
    ///
    /// With [`RuntimeBuilder::async_calls`] on, a model with an idle instance runs in this
    /// task, and its guest call yields to the executor at every epoch tick (5 ms): a long or
    /// hostile model holds an executor thread for one tick at a time, and is stopped at its
    /// deadline all the same. Otherwise (or with no instance idle) the run, with the wait for
    /// an instance or the load of a new one, goes to tokio's blocking pool; outside a tokio
    /// runtime it blocks the caller, as [`Model::infer`] does. Dropping the future stops a run
    /// in this task and discards its instance.
    ///
    /// A run in a task holds its instance while it yields, so a blocking [`Model::infer`] made
    /// on a thread of the same tokio runtime may wait for an instance whose run needs that very
    /// thread: from tasks, call only this.
    pub async fn infer_async(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let inputs = validate_inputs(self.manifest(), inputs, self.inner.max_input_bytes)?;
        let idle = match self.inner.sandbox.calls() {
            Calls::Yielding => self.inner.try_acquire_idle(),
            // A blocking guest call would hold this task's thread until its deadline.
            Calls::Blocking => None,
        };
        let Some(instance) = idle else {
            let Ok(tokio) = tokio::runtime::Handle::try_current() else {
                return self.run_blocking(&inputs);
            };
            let model = self.clone();
            return match tokio.spawn_blocking(move || model.run_blocking(&inputs)).await {
                Ok(result) => result,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => Err(SandboxError::Trap(format!("the model's run was cancelled: {e}")).into()),
            };
        };
        let outputs = self.inner.run(instance, &inputs).await?;
        self.checked(outputs)
    }

    /// Runs validated inputs on this thread, waiting for an instance if none is idle.
    fn run_blocking(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let instance = self.inner.acquire()?;
        let outputs = instance.calls().finish(self.inner.run(instance, inputs))?;
        self.checked(outputs)
    }

    /// The guest's outputs checked against the manifest, with the output policy applied.
    fn checked(&self, outputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let manifest = self.manifest();
        let mut outputs = check_outputs(manifest, outputs).map_err(Error::Output)?;
        apply_output_policy(&manifest.output_policy, &mut outputs);
        Ok(outputs)
    }
}

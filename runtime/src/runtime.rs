use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
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
    /// in a task (yielding to the executor at every epoch tick), with the calls queued
    /// meanwhile back to back, rather than handing each to tokio's blocking pool. For servers
    /// that answer from async tasks, as `warden serve` does. By default `false`: a blocking
    /// [`Model::infer`] then costs about 1 us less.
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
            trust: RwLock::new(trust.map(Arc::new)),
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
    /// Replaced whole by [`Runtime::reload_trust`].
    trust: RwLock<Option<Arc<TrustStore>>>,
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

    /// The trusted keys, if a trust directory was given: as it was read last.
    pub fn trust(&self) -> Option<Arc<TrustStore>> {
        self.trust.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the trust directory again (its keys and its `revoked` file), so that bundles verified
    /// from now on are checked against it; `warden serve` does so on SIGHUP and then drops the
    /// models whose key is no longer trusted. A directory that does not load (a bad key file or
    /// line, no keys left) is the error, and fails closed: the keys read before stay trusted
    /// less every key id its `revoked` file still names in a line that parses, and none at all
    /// if no `.pub` file is left.
    pub fn reload_trust(&self) -> Result<()> {
        let Some(current) = self.trust() else {
            return Ok(());
        };
        let (store, result) = match TrustStore::load(current.dir()) {
            Ok(store) => (store, Ok(())),
            Err(e) => (current.narrowed(), Err(e)),
        };
        *self.trust.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(store));
        result
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
        let trust = self.trust().ok_or_else(|| Error::Bundle {
            path: dir.as_ref().to_path_buf(),
            kind: crate::error::BundleError::UnknownKey("(no trust directory configured)".into()),
        })?;
        let bundle = verify_bundle(dir.as_ref(), &trust)?;
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
            pool: Mutex::new(Pool { idle: Vec::new(), live: 0, waiting: 0, queue: VecDeque::new() }),
            freed: Condvar::new(),
            runs: AtomicU64::new(0),
            runs_in_a_row: AtomicU64::new(0),
            bundle,
        });
        let started = Instant::now();
        let first = inner.new_instance()?;
        {
            let mut pool = inner.lock();
            pool.live = 1;
            pool.idle.push(first);
        }
        let load_time = started.elapsed();
        Ok(Model { inner, load_time })
    }
}

struct Pool {
    idle: Vec<GuestInstance>,
    /// Instances in use, idle, or being loaded: at most `max_instances`.
    live: usize,
    /// Callers blocked in `acquire`: `put_back` wakes one only if there are any, since a
    /// condition variable's notify is a futex syscall even with nobody waiting.
    waiting: usize,
    /// Runs from tasks that found every instance in use, in arrival order. Whoever gives a
    /// place back gives it to the first of these, so a queued run is never stranded: while this
    /// is not empty, every place in the pool is held by a run (a runner, or a blocking call).
    queue: VecDeque<Job>,
}

/// A run asked for from a task ([`Model::infer_async`]): its inputs, and where its outputs go.
struct Job {
    inputs: Vec<Tensor>,
    reply: oneshot::Sender<Result<Vec<Tensor>, SandboxError>>,
    /// The runtime of the task that asked, on which its runner is spawned.
    tokio: tokio::runtime::Handle,
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
    /// Runs made on an instance right after another run on it, by one runner.
    runs_in_a_row: AtomicU64,
}

impl ModelInner {
    fn lock(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn new_instance(&self) -> Result<GuestInstance, SandboxError> {
        let mut instance = self.sandbox.instantiate(self.memory_limit, self.load_timeout)?;
        instance.load(
            &LoadRequest { model: &self.bundle.model, inputs: self.facts.clone() },
            self.load_timeout,
        )?;
        Ok(instance)
    }

    /// An instance for a blocking run: an idle one, a new one while the pool has room, or the
    /// next one given back.
    fn acquire(self: &Arc<Self>) -> Result<GuestInstance, SandboxError> {
        let mut pool = self.lock();
        loop {
            if let Some(instance) = pool.idle.pop() {
                return Ok(instance);
            }
            if pool.live < self.max_instances {
                pool.live += 1;
                drop(pool);
                return self.new_instance().inspect_err(|_| self.give_back(None));
            }
            pool.waiting += 1;
            pool = self.freed.wait(pool).unwrap_or_else(|p| p.into_inner());
            pool.waiting -= 1;
        }
    }

    /// An idle instance, if there is one: never waits for one, nor loads one.
    fn try_acquire_idle(&self) -> Option<GuestInstance> {
        self.lock().idle.pop()
    }

    /// Runs the inputs on this thread, waiting for an instance if none is idle.
    fn run_blocking(self: &Arc<Self>, inputs: &[Tensor]) -> Result<Vec<Tensor>, SandboxError> {
        // Taken before the run's executor starts: loading a new instance runs one of its own.
        let instance = self.acquire()?;
        self.sandbox.calls().finish(self.run_on(instance, inputs))
    }

    /// Runs the inputs on `instance` (taken from this pool) and gives it back unless the
    /// sandbox stopped it. Dropped midway, the run gives up its place, and its instance with it.
    async fn run_on(
        self: &Arc<Self>,
        mut instance: GuestInstance,
        inputs: &[Tensor],
    ) -> Result<Vec<Tensor>, SandboxError> {
        let mut slot = Slot { model: self, held: true };
        self.runs.fetch_add(1, Ordering::Relaxed);
        let result = instance.run(inputs, self.timeout).await;
        slot.held = false;
        self.give_back(healthy(&result).then_some(instance));
        result
    }

    /// Starts a run from a task: at once, on an idle instance or a new one while the pool has
    /// room, in a runner task of its own; or else queued, for the next instance given back.
    /// The runner waits for the calls ready beside it only when this took the last idle
    /// instance: under a lighter load, that wait would only add to the call's latency.
    fn submit(self: &Arc<Self>, job: Job) {
        let mut pool = self.lock();
        let (instance, gather) = match pool.idle.pop() {
            Some(instance) => (Some(instance), pool.idle.is_empty()),
            None if pool.live < self.max_instances => {
                pool.live += 1;
                (None, false)
            }
            None => {
                pool.queue.push_back(job);
                return;
            }
        };
        drop(pool);
        Runner::spawn(self.clone(), instance, job, gather);
    }

    /// Gives back a place in the pool, with its instance unless the sandbox stopped it (then a
    /// new one is loaded when needed): to the first queued run, if there is one, else to the
    /// idle instances (or the room for a new one), waking a blocked caller.
    fn give_back(self: &Arc<Self>, instance: Option<GuestInstance>) {
        let mut pool = self.lock();
        if let Some(job) = pool.queue.pop_front() {
            drop(pool);
            Runner::spawn(self.clone(), instance, job, true);
            return;
        }
        self.put_back(pool, instance);
    }

    /// With no run queued: `instance` joins the idle ones (or, if the sandbox stopped it, its
    /// room is freed) and a caller blocked in `acquire`, if any, is woken.
    fn put_back(&self, mut pool: MutexGuard<'_, Pool>, instance: Option<GuestInstance>) {
        match instance {
            Some(instance) => pool.idle.push(instance),
            None => pool.live -= 1,
        }
        let wake = pool.waiting > 0;
        drop(pool);
        if wake {
            self.freed.notify_one();
        }
    }
}

/// Whether an instance is still sound after a run with this result: the guest's own errors
/// leave it so; a trap, a deadline or the memory cap do not.
fn healthy<T>(result: &Result<T, SandboxError>) -> bool {
    matches!(result, Ok(_) | Err(SandboxError::Guest { .. }))
}

/// A run's place in its model's pool, given up if the run is dropped midway.
struct Slot<'a> {
    model: &'a Arc<ModelInner>,
    held: bool,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if self.held {
            self.model.give_back(None);
        }
    }
}

/// A task that holds one place in a model's pool (an instance, or the room to load one) and
/// runs jobs on it back to back: its first, then the queued ones, until the queue is empty.
///
/// Runs that follow one another on one instance find its code and data still in the CPU's
/// caches; a run made between other requests' work found them evicted and took about twice as
/// long (benches/README.md). So under load (its call took the model's last idle instance, or
/// was queued) a runner yields once before its first run: tokio defers a yielded task until
/// its worker has polled every task ready there, and the calls among those queue behind it
/// meanwhile.
///
/// A job whose caller has gone (its future dropped: a client that hung up) is skipped, and
/// one whose caller goes while it runs is stopped at the guest's next yield, its instance
/// discarded. If the runner itself is dropped midway (its runtime shutting down) or panics, its
/// place goes to the next queued job, as when it ends.
struct Runner {
    model: Arc<ModelInner>,
    instance: Option<GuestInstance>,
    /// False once the place has been given back.
    held: bool,
}

impl Runner {
    /// Spawns a runner for `job`, which first lets the tasks ready beside it queue their calls
    /// if `gather` is set.
    fn spawn(model: Arc<ModelInner>, instance: Option<GuestInstance>, job: Job, gather: bool) {
        let tokio = job.tokio.clone();
        let runner = Runner { model, instance, held: true };
        tokio.spawn(runner.serve(job, gather));
    }

    async fn serve(mut self, mut job: Job, gather: bool) {
        if gather {
            tokio::task::yield_now().await;
        }
        let mut after_a_run = false;
        loop {
            if !job.reply.is_closed() {
                if after_a_run && self.instance.is_some() {
                    self.model.runs_in_a_row.fetch_add(1, Ordering::Relaxed);
                }
                let result = tokio::select! {
                    biased;
                    result = self.run(&job.inputs) => Some(result),
                    () = job.reply.closed() => None,
                };
                match result {
                    Some(result) => {
                        // The caller may have gone since: its outputs are dropped.
                        let _ = job.reply.send(result);
                        after_a_run = true;
                    }
                    None => {
                        // Stopped midway: the instance is discarded with its call.
                        self.instance = None;
                        after_a_run = false;
                    }
                }
            }
            let mut pool = self.model.lock();
            match pool.queue.pop_front() {
                Some(next) => job = next,
                None => {
                    self.held = false;
                    self.model.put_back(pool, self.instance.take());
                    return;
                }
            }
        }
    }

    /// One run on this runner's instance, loaded first (on tokio's blocking pool) if it has
    /// none. An instance the sandbox stopped is dropped; the place stays, for the next run.
    async fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, SandboxError> {
        let instance = match &mut self.instance {
            Some(instance) => instance,
            None => {
                let model = self.model.clone();
                let loaded =
                    tokio::task::spawn_blocking(move || model.new_instance()).await.unwrap_or_else(|e| {
                        Err(SandboxError::Trap(format!("loading an instance failed: {e}")))
                    })?;
                self.instance.insert(loaded)
            }
        };
        self.model.runs.fetch_add(1, Ordering::Relaxed);
        let result = instance.run(inputs, self.model.timeout).await;
        if !healthy(&result) {
            self.instance = None;
        }
        result
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        if self.held {
            // Dropped midway: the instance may be stopped in the middle of a call.
            self.instance = None;
            self.model.give_back(None);
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

    /// How many runs followed another on the same instance, back to back, because they were
    /// queued behind it ([`Model::infer_async`]).
    pub fn runs_in_a_row(&self) -> u64 {
        self.inner.runs_in_a_row.load(Ordering::Relaxed)
    }

    /// Validates the inputs against the manifest, runs the model in the sandbox, checks its
    /// outputs against the manifest and applies the output policy.
    pub fn infer(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let inputs = validate_inputs(self.manifest(), inputs, self.inner.max_input_bytes)?;
        let outputs = self.inner.run_blocking(&inputs)?;
        self.checked(outputs)
    }

    /// [`Model::infer`] for a task of a [tokio] runtime, without holding its thread.
    ///
    /// With [`RuntimeBuilder::async_calls`] on, the run goes to a task of the model's own (a
    /// runner), on an idle instance, a new one while the pool has room, or else the first one
    /// given back. A runner runs the calls that queue meanwhile back to back, while the model's
    /// code and data are still in the CPU's caches: under load, that is most of them. Its guest
    /// calls yield to the executor at every epoch tick (5 ms), so a long or hostile model holds
    /// an executor thread for one tick at a time, and is stopped at its deadline all the same.
    /// Dropping the future stops its run (at the next tick; the instance is discarded) or
    /// takes it out of the queue.
    ///
    /// Otherwise the run, with the wait for an instance or the load of a new one, goes to
    /// tokio's blocking pool; outside a tokio runtime it blocks the caller, as [`Model::infer`]
    /// does.
    ///
    /// A run in a task holds its instance while it yields, so a blocking [`Model::infer`] made
    /// on a thread of the same tokio runtime may wait for an instance whose run needs that very
    /// thread: from tasks, call only this.
    pub async fn infer_async(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let inputs = validate_inputs(self.manifest(), inputs, self.inner.max_input_bytes)?;
        let Ok(tokio) = tokio::runtime::Handle::try_current() else {
            // Outside tokio: on an idle instance, in this future (another executor's, maybe,
            // which must not be blocked on here); else as `infer` does.
            let outputs = match self.inner.try_acquire_idle() {
                Some(instance) => self.inner.run_on(instance, &inputs).await?,
                None => self.inner.run_blocking(&inputs)?,
            };
            return self.checked(outputs);
        };
        let outputs = match self.inner.sandbox.calls() {
            Calls::Yielding => {
                let (reply, outputs) = oneshot::channel();
                self.inner.submit(Job { inputs, reply, tokio });
                outputs.await.unwrap_or_else(|_| {
                    Err(SandboxError::Trap("the model's run was cancelled: its runner stopped".into()))
                })?
            }
            // A blocking guest call would hold this task's thread until its deadline.
            Calls::Blocking => {
                let inner = self.inner.clone();
                match tokio.spawn_blocking(move || inner.run_blocking(&inputs)).await {
                    Ok(result) => result?,
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(e) => {
                        return Err(SandboxError::Trap(format!("the model's run was cancelled: {e}")).into());
                    }
                }
            }
        };
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

//! Hostile models are contained: each ends as a typed error within its deadline, and the same
//! runtime then serves a good model.

use std::path::Path;
use std::time::{Duration, Instant};

use warden::{DType, Error, GuestErrorKind, Runtime, SandboxError, Tensor};
use warden_tests::{Fixture, TestPublisher, assert_close, builder, manifest, root, tensors};

pub(crate) const LOAD_TIMEOUT: Duration = Duration::from_secs(3);
pub(crate) const RUN_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadlines are enforced at epoch ticks; leave room for a loaded machine.
pub(crate) const SLACK: Duration = Duration::from_secs(3);

pub(crate) struct Harness {
    dir: tempfile::TempDir,
    publisher: TestPublisher,
    runtime: Runtime,
}

impl Harness {
    /// A runtime with blocking guest calls, the library's default.
    pub(crate) fn new() -> Harness {
        Harness::with_calls(false)
    }

    /// A runtime whose guest calls can be made from async tasks, as `warden serve`'s.
    pub(crate) fn yielding() -> Harness {
        Harness::with_calls(true)
    }

    fn with_calls(async_calls: bool) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let publisher = TestPublisher::new(dir.path());
        let runtime = builder(&dir.path().join("state"), &publisher.trust)
            .load_timeout(LOAD_TIMEOUT)
            .timeout(RUN_TIMEOUT)
            .memory_limit(256 << 20)
            .async_calls(async_calls)
            .build()
            .unwrap();
        Harness { dir, publisher, runtime }
    }

    pub(crate) fn load_hostile(
        &self,
        file: &str,
        input: &[u64],
        output: &[u64],
    ) -> warden::Result<warden::Model> {
        let bytes = std::fs::read(root().join("tests/fixtures/hostile").join(file)).unwrap();
        let name = file.trim_end_matches(".onnx").replace('_', "-");
        let m = manifest(&name, &[("x", DType::F32, input)], &[("y", DType::F32, output)]);
        let bundle = self.publisher.bundle(&self.dir.path().join("repo"), &m, &bytes);
        self.runtime.load_bundle(bundle)
    }

    /// After each attack, a good model still loads and answers correctly.
    pub(crate) fn still_serves(&self) {
        let fixture = Fixture::load(&root().join("models/fixtures/digits.reference.json"));
        let mut m = fixture.manifest();
        m.name = format!("digits-{}", std::process::id());
        let bundle = self.publisher.bundle(&self.dir.path().join("good"), &m, &fixture.model_bytes());
        let model = self.runtime.load_bundle(bundle).unwrap();
        let case = &fixture.cases[0];
        let out = model.infer(tensors(&case.inputs)).unwrap();
        assert_close(&out[1], &tensors(&case.outputs)[1], 1e-4, "digits after an attack");
    }
}

pub(crate) fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

#[test]
fn model_that_computes_for_minutes_is_interrupted_at_the_run_deadline() {
    let h = Harness::new();
    let model = h.load_hostile("slow_matmul_chain.onnx", &[1, 1], &[1, 1]).unwrap();
    let (result, took) = timed(|| model.infer(vec![Tensor::from_f32("x", &[1, 1], &[0.5])]));
    assert!(matches!(result, Err(Error::Sandbox(SandboxError::Timeout(_)))), "{result:?}");
    assert!(took < RUN_TIMEOUT + SLACK, "interrupted only after {took:?}");
    // The interrupted instance was discarded; the model itself is still there and still bounded.
    let (again, _) = timed(|| model.infer(vec![Tensor::from_f32("x", &[1, 1], &[0.25])]));
    assert!(matches!(again, Err(Error::Sandbox(SandboxError::Timeout(_)))), "{again:?}");
    h.still_serves();
}

/// From an async task, an endless model yields to the executor at every epoch tick: on a
/// single-threaded runtime, another task keeps running beside it, and it still ends at its
/// deadline.
#[test]
fn model_run_from_an_async_task_yields_to_others_and_ends_at_its_deadline() {
    let h = Harness::yielding();
    let model = h.load_hostile("slow_matmul_chain.onnx", &[1, 1], &[1, 1]).unwrap();
    let tokio = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let (result, took, ticks) = tokio.block_on(async {
        let ticks = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        let start = Instant::now();
        let result = model.infer_async(vec![Tensor::from_f32("x", &[1, 1], &[0.5])]).await;
        let took = start.elapsed();
        ticker.abort();
        (result, took, ticks.load(std::sync::atomic::Ordering::Relaxed))
    });
    assert!(matches!(result, Err(Error::Sandbox(SandboxError::Timeout(_)))), "{result:?}");
    assert!(took < RUN_TIMEOUT + SLACK, "interrupted only after {took:?}");
    // 10 ms ticks through a 2 s run: a run that held the thread would let none through.
    assert!(ticks >= 20, "the other task ran {ticks} times in {took:?}");
    h.still_serves();
}

/// The endless model, in a runtime whose calls yield, with one instance per model (and the
/// directory that holds its state).
fn endless_model_on_one_instance() -> (tempfile::TempDir, warden::Model) {
    let dir = tempfile::tempdir().unwrap();
    let publisher = TestPublisher::new(dir.path());
    let runtime = builder(&dir.path().join("state"), &publisher.trust)
        .timeout(RUN_TIMEOUT)
        .instances_per_model(1)
        .async_calls(true)
        .build()
        .unwrap();
    let bytes = std::fs::read(root().join("tests/fixtures/hostile/slow_matmul_chain.onnx")).unwrap();
    let m = manifest("slow", &[("x", DType::F32, &[1, 1])], &[("y", DType::F32, &[1, 1])]);
    let model = runtime.load_bundle(publisher.bundle(&dir.path().join("repo"), &m, &bytes)).unwrap();
    (dir, model)
}

/// A run from an async task that is dropped midway (its task cancelled, say, by a client that
/// hung up) gives its place in the model's pool back: with one instance per model, the next
/// call still gets one, and ends at its own deadline.
#[test]
fn a_dropped_async_run_gives_its_instance_back() {
    let (_dir, model) = endless_model_on_one_instance();
    let x = || vec![Tensor::from_f32("x", &[1, 1], &[0.5])];
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_time().build().unwrap();
    let (cut, next) = tokio.block_on(async {
        let cut = tokio::time::timeout(Duration::from_millis(100), model.infer_async(x())).await;
        let next = tokio::time::timeout(RUN_TIMEOUT + SLACK, model.infer_async(x())).await;
        (cut, next)
    });
    tokio.shutdown_background();
    assert!(cut.is_err(), "the first run was not cut: {cut:?}");
    let next = next.expect("the next run found no instance");
    assert!(matches!(next, Err(Error::Sandbox(SandboxError::Timeout(_)))), "{next:?}");
    assert_eq!(model.sandbox_runs(), 2);
}

/// Runs from tasks that find every instance busy queue behind the running one. A queued run
/// whose caller gives up is skipped; the run behind it still gets an instance (a fresh one:
/// the endless model's deadline discarded the first) and ends at its own deadline.
#[test]
fn a_queued_run_whose_caller_left_is_skipped_and_the_next_one_runs() {
    let (_dir, model) = endless_model_on_one_instance();
    let x = || vec![Tensor::from_f32("x", &[1, 1], &[0.5])];
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_time().build().unwrap();
    let start = Instant::now();
    let (first, left, last) = tokio.block_on(async {
        let first = tokio::spawn({
            let model = model.clone();
            async move { model.infer_async(x()).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let left = tokio::time::timeout(Duration::from_millis(100), model.infer_async(x())).await;
        let last = tokio::spawn({
            let model = model.clone();
            async move { model.infer_async(x()).await }
        });
        (first.await.unwrap(), left, last.await.unwrap())
    });
    let took = start.elapsed();
    tokio.shutdown_background();
    assert!(matches!(first, Err(Error::Sandbox(SandboxError::Timeout(_)))), "{first:?}");
    assert!(left.is_err(), "the queued run was answered before its caller left: {left:?}");
    assert!(matches!(last, Err(Error::Sandbox(SandboxError::Timeout(_)))), "{last:?}");
    // The run whose caller left never reached the sandbox.
    assert_eq!(model.sandbox_runs(), 2);
    assert!(took < 2 * RUN_TIMEOUT + SLACK, "two runs took {took:?}");
}

#[test]
fn model_whose_constant_folding_takes_minutes_is_interrupted_at_load_or_at_run() {
    // Whether tract folds the constant chain while optimizing depends on the order its passes
    // visit nodes (hash-map order, seeded per instance): either the load or the first run must
    // hit its deadline.
    let h = Harness::new();
    let (result, took) = timed(|| h.load_hostile("slow_constant_fold.onnx", &[1, 1], &[1, 1]));
    match result {
        Err(Error::Sandbox(SandboxError::Timeout(t))) => {
            assert_eq!(t, LOAD_TIMEOUT);
            assert!(took < LOAD_TIMEOUT + SLACK, "interrupted only after {took:?}");
        }
        Ok(model) => {
            let (run, took) = timed(|| model.infer(vec![Tensor::from_f32("x", &[1, 1], &[0.5])]));
            assert!(matches!(run, Err(Error::Sandbox(SandboxError::Timeout(_)))), "{run:?}");
            assert!(took < RUN_TIMEOUT + SLACK, "interrupted only after {took:?}");
        }
        Err(other) => panic!("expected a deadline, got {other:?}"),
    }
    h.still_serves();
}

#[test]
fn loading_is_bounded_by_the_load_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let publisher = TestPublisher::new(dir.path());
    let fixture = Fixture::load(&root().join("models/public/ppocr_rec.reference.json"));
    let bundle = publisher.bundle(&dir.path().join("repo"), &fixture.manifest(), &fixture.model_bytes());
    let load_timeout = Duration::from_millis(50);
    let runtime =
        builder(&dir.path().join("state"), &publisher.trust).load_timeout(load_timeout).build().unwrap();
    let (result, took) = timed(|| runtime.load_bundle(&bundle));
    match result {
        Err(Error::Sandbox(SandboxError::Timeout(t))) => assert_eq!(t, load_timeout),
        other => panic!("optimizing PP-OCR in 50 ms? {other:?}"),
    }
    assert!(took < load_timeout + SLACK, "interrupted only after {took:?}");
}

#[test]
fn constant_of_shape_asking_for_terabytes_is_refused() {
    let h = Harness::new();
    let (result, took) =
        timed(|| h.load_hostile("constant_of_shape_terabytes.onnx", &[1, 1], &[1_000_000, 1_000_000]));
    // tract 0.23.9 checks the size before allocating (older tract panicked); either way, a typed
    // error for this model only.
    match result {
        Err(Error::Sandbox(SandboxError::Guest { kind: GuestErrorKind::Model, message })) => {
            assert!(message.contains("too large"), "{message}");
        }
        Err(Error::Sandbox(SandboxError::MemoryCap(_))) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(took < LOAD_TIMEOUT + SLACK);
    h.still_serves();
}

#[test]
fn gigabyte_tensors_hit_the_memory_cap_at_load_and_at_run() {
    let h = Harness::new();
    let (result, took) = timed(|| h.load_hostile("memory_bomb_load.onnx", &[1, 1], &[1, 1]));
    assert!(
        matches!(result, Err(Error::Sandbox(SandboxError::MemoryCap(cap))) if cap == 256 << 20),
        "{result:?}"
    );
    assert!(took < LOAD_TIMEOUT + SLACK);

    let model = h.load_hostile("memory_bomb_run.onnx", &[1, 1], &[1, 1]).unwrap();
    for _ in 0..2 {
        let result = model.infer(vec![Tensor::from_f32("x", &[1, 1], &[1.0])]);
        assert!(
            matches!(result, Err(Error::Sandbox(SandboxError::MemoryCap(cap))) if cap == 256 << 20),
            "{result:?}"
        );
    }
    h.still_serves();
}

/// The same bomb in a runtime whose guest calls are made on fibers (the guest's allocation
/// failure goes through WASI's stderr, whose functions are then the async ones): refused at
/// the cap from a task and from a blocking call alike.
#[test]
fn memory_bomb_hits_the_cap_in_a_task_and_in_a_blocking_call_of_a_yielding_runtime() {
    let h = Harness::yielding();
    let model = h.load_hostile("memory_bomb_run.onnx", &[1, 1], &[1, 1]).unwrap();
    let tokio = tokio::runtime::Builder::new_current_thread().build().unwrap();
    for call in ["task", "blocking", "task"] {
        let x = vec![Tensor::from_f32("x", &[1, 1], &[1.0])];
        let result = if call == "task" { tokio.block_on(model.infer_async(x)) } else { model.infer(x) };
        assert!(
            matches!(result, Err(Error::Sandbox(SandboxError::MemoryCap(cap))) if cap == 256 << 20),
            "{call}: {result:?}"
        );
    }
    h.still_serves();
}

#[test]
fn external_data_never_reads_host_files() {
    let h = Harness::new();
    for file in ["external_data_passwd.onnx", "external_data_parent.onnx"] {
        match h.load_hostile(file, &[1, 16], &[1, 16]) {
            Err(Error::Sandbox(SandboxError::Guest { kind: GuestErrorKind::Model, message })) => {
                assert!(!message.contains("root:"), "{file}: host file content leaked: {message}");
            }
            other => panic!("{file}: expected a model error, got {other:?}"),
        }
    }
    h.still_serves();
}

#[test]
fn random_and_truncated_bytes_are_model_errors() {
    let h = Harness::new();
    for file in ["random_bytes.onnx", "truncated.onnx"] {
        match h.load_hostile(file, &[1, 1], &[1, 1]) {
            Err(Error::Sandbox(SandboxError::Guest { kind: GuestErrorKind::Model, .. })) => {}
            other => panic!("{file}: expected a model error, got {other:?}"),
        }
    }
    h.still_serves();
}

/// A guest that abuses the host-kernel imports (a compromised tract, say): one WebAssembly module
/// per abuse, each calling `warden.mmm_run` with an op list that would make the native kernel
/// read or write outside the guest's memory, or misaligned. Every one traps that instance with a
/// refusal that names the fault, and the host stays up: the same process then serves a real
/// model with the real guest.
#[test]
fn guest_abusing_the_kernel_imports_is_trapped_before_native_code_runs() {
    use warden::guest::kernels::op;
    let fixture = Fixture::load(&root().join("models/fixtures/digits.reference.json"));
    let dir = tempfile::tempdir().unwrap();
    let publisher = TestPublisher::new(dir.path());
    let bundle = publisher.bundle(&dir.path().join("repo"), &fixture.manifest(), &fixture.model_bytes());
    let top = 16 * 65536u32; // the module's 16 pages
    // (what, op words, op count, the refusal expected)
    let abuses: [(&str, [u32; 5], u32, &str); 6] = [
        ("A panel far past memory", [op::ADD_MAT_MUL, 1 << 24, 0, 0, 0], 1, "outside guest memory"),
        ("a tile stored past the end", [op::STORE, top - 16, 64, 4, 4], 1, "leaves guest memory"),
        ("a tile stored below 0", [op::STORE, 0, (-64i32) as u32, 4, 4], 1, "leaves guest memory"),
        ("a misaligned panel", [op::ADD_MAT_MUL, 4, 4, 4096, 0], 1, "not aligned"),
        ("an unknown op", [0xdead, 0, 0, 0, 0], 1, "unknown op"),
        ("too many ops", [op::CLEAR, 0, 0, 0, 0], 1000, "ops in one tile"),
    ];
    for (what, words, count, refusal) in abuses {
        let runtime = hostile_runtime(dir.path(), &publisher, mmm_run_guest(0, &words, count));
        let expected = if runtime.native_kernels().is_empty() { "no host kernel" } else { refusal };
        assert_refused_before_native_code(&runtime, &bundle, what, expected);
    }
    serves_digits_after_the_abuse(dir.path(), &publisher, &bundle, &fixture);
}

/// The same for rows of tiles (`warden.mmm_run_tiles`): the host derives each tile's op list
/// from the first and the step between tiles, and checks each one in full before running it. A
/// row that walks out of memory, or wraps around the address space, traps at the first tile
/// outside (the ones before it, inside, ran); a row with more work than one call may do (the
/// deadline cannot interrupt it) or too long an op list traps before any tile runs. The process
/// then serves the real guest.
#[test]
fn guest_abusing_rows_of_tiles_is_trapped_before_native_code_leaves_its_memory() {
    use warden::guest::kernels::op;
    let fixture = Fixture::load(&root().join("models/fixtures/digits.reference.json"));
    let dir = tempfile::tempdir().unwrap();
    let publisher = TestPublisher::new(dir.path());
    let bundle = publisher.bundle(&dir.path().join("repo"), &fixture.manifest(), &fixture.model_bytes());
    let top = 16 * 65536u32; // the module's 16 pages
    let store = [op::STORE, 65536, 4, 256, 4];
    // (what, op words, steps, op count, tiles, the refusal expected, whether a first tile ran)
    type Abuse = (&'static str, [u32; 5], [u32; 5], u32, u32, &'static str, bool);
    let abuses: [Abuse; 4] = [
        (
            "a row walking past the end",
            store,
            [0, top - 16 - 65536, 0, 0, 0],
            1,
            2,
            "leaves guest memory",
            true,
        ),
        ("a row wrapping around", store, [0, 1 << 31, 0, 0, 0], 1, 3, "a tile at 0x80010000", true),
        ("more work than a call may do", [op::CLEAR, 0, 0, 0, 0], [0; 5], 1, 1 << 24, "multiply-adds", false),
        ("too many ops", [op::CLEAR, 0, 0, 0, 0], [0; 5], 1000, 2, "ops in one tile", false),
    ];
    for (what, words, steps, count, tiles, refusal, first_ran) in abuses {
        let wat = mmm_run_tiles_guest(&words, &steps, count, tiles);
        let runtime = hostile_runtime(dir.path(), &publisher, wat);
        if runtime.native_kernels().is_empty() {
            assert_refused_before_native_code(&runtime, &bundle, what, "no host kernel");
        } else if first_ran {
            match runtime.load_bundle(&bundle) {
                Err(Error::Sandbox(SandboxError::Trap(message))) => {
                    assert!(message.contains("host kernel call refused"), "{what}: {message}");
                    assert!(message.contains(refusal), "{what}: {message}");
                }
                other => panic!("{what}: expected a trap, got {other:?}"),
            }
        } else {
            assert_refused_before_native_code(&runtime, &bundle, what, refusal);
        }
    }
    serves_digits_after_the_abuse(dir.path(), &publisher, &bundle, &fixture);
}

/// A hostile guest whose `warden_load` writes the op words `words` at address 8192 and the
/// steps `steps` at 12288, and calls `warden.mmm_run_tiles` once on them with kernel 0, `count`
/// ops and `tiles` tiles, ignoring its answer.
fn mmm_run_tiles_guest(words: &[u32], steps: &[u32], count: u32, tiles: u32) -> String {
    let store = |at: usize, ws: &[u32]| -> String {
        ws.iter()
            .enumerate()
            .map(|(i, w)| format!("(i32.store (i32.const {}) (i32.const {}))", at + 4 * i, *w as i32))
            .collect()
    };
    format!(
        r#"(module
            (import "warden" "mmm_run_tiles" (func $run (param i32 i32 i32 i32 i32) (result i32)))
            (memory (export "memory") 16)
            (func (export "warden_abi_version") (result i32) (i32.const {abi}))
            (func (export "warden_reserve") (param i32) (result i32) (i32.const 16384))
            (func (export "warden_load") (param i32) (result i64)
                {words} {steps}
                (drop (call $run (i32.const 0) (i32.const 8192) (i32.const {count}) (i32.const {tiles})
                    (i32.const 12288)))
                (i64.const 0))
            (func (export "warden_run") (param i32) (result i64) (i64.const 0))
            (func (export "warden_inspect") (param i32) (result i64) (i64.const 0)))"#,
        abi = warden::guest::ABI_VERSION,
        words = store(8192, words),
        steps = store(12288, steps),
        tiles = tiles as i32,
    )
}

/// A guest whose valid op lists put a tile in the last bytes of its memory, stored and added to
/// by whole columns, by whole rows and item by item: the host's own run of tract's AVX-512
/// kernels (`avx512_tiles`, with its transposed and item-by-item paths) and tract's own AVX-512
/// and FMA kernels must touch nothing past the tile. A read or write past the end of the guest's
/// memory would fault in host code and take the process down; instead each call runs, and the
/// process then serves the real guest. Every such kernel this CPU has is tried.
#[test]
fn tiles_in_the_last_bytes_of_guest_memory_touch_nothing_past_them() {
    use warden::guest::kernels::op;
    let fixture = Fixture::load(&root().join("models/fixtures/digits.reference.json"));
    let dir = tempfile::tempdir().unwrap();
    let publisher = TestPublisher::new(dir.path());
    let bundle = publisher.bundle(&dir.path().join("repo"), &fixture.manifest(), &fixture.model_bytes());
    let probe = builder(&dir.path().join("state"), &publisher.trust).build().unwrap();
    let shapes: Vec<(usize, u32, u32)> = probe
        .native_kernels()
        .iter()
        .enumerate()
        .filter_map(|(index, name)| {
            let shape = name.strip_prefix("avx512_mmm_f32_").or_else(|| name.strip_prefix("fma_mmm_f32_"))?;
            let (mr, nr) = shape.split_once('x')?;
            Some((index, mr.parse().ok()?, nr.parse().ok()?))
        })
        .collect();
    drop(probe);
    if shapes.is_empty() {
        eprintln!("no AVX-512 or FMA kernel on this CPU; nothing to check");
        return;
    }
    let top = 16 * 65536u32; // the module's 16 pages
    for (kernel, mr, nr) in shapes {
        // An mr x nr tile of f32 ending at the last byte, contiguous, then with items two apart.
        let (tile, sparse) = (top - mr * nr * 4, top - (8 * mr * nr - 4));
        let lists: [&[[u32; 5]]; 3] = [
            &[
                [op::CLEAR, 0, 0, 0, 0],
                [op::ADD_UNICAST, tile, 4, mr * 4, 4],
                [op::STORE, tile, 4, mr * 4, 4],
            ],
            &[
                [op::CLEAR, 0, 0, 0, 0],
                [op::ADD_UNICAST, tile, nr * 4, 4, 4],
                [op::STORE, tile, nr * 4, 4, 4],
            ],
            &[
                [op::CLEAR, 0, 0, 0, 0],
                [op::ADD_UNICAST, sparse, 8, mr * 8, 4],
                [op::STORE, sparse, 8, mr * 8, 4],
            ],
        ];
        for (layout, ops) in ["column-major", "row-major", "items two apart"].iter().zip(lists) {
            let words: Vec<u32> = ops.iter().flatten().copied().collect();
            let runtime = hostile_runtime(
                dir.path(),
                &publisher,
                mmm_run_guest(kernel as u32, &words, ops.len() as u32),
            );
            // The guest's reply after the call is no model; what matters is that the call ran
            // and returned.
            let outcome = runtime.load_bundle(&bundle);
            let what = format!("{mr}x{nr}, {layout}");
            assert!(!matches!(outcome, Err(Error::Sandbox(SandboxError::Trap(_)))), "{what}: {outcome:?}");
            assert_eq!(runtime.native_kernel_calls(), 1, "{what}: the tile did not run");
        }
    }
    serves_digits_after_the_abuse(dir.path(), &publisher, &bundle, &fixture);
}

/// A hostile guest whose `warden_load` writes the op words `words` at address 8192 and calls
/// `warden.mmm_run` once on them, with kernel `kernel` and `count` ops, ignoring its answer.
fn mmm_run_guest(kernel: u32, words: &[u32], count: u32) -> String {
    let stores: String = words
        .iter()
        .enumerate()
        .map(|(i, w)| format!("(i32.store (i32.const {}) (i32.const {}))", 8192 + 4 * i, *w as i32))
        .collect();
    format!(
        r#"(module
            (import "warden" "mmm_run" (func $run (param i32 i32 i32) (result i32)))
            (memory (export "memory") 16)
            (func (export "warden_abi_version") (result i32) (i32.const {abi}))
            (func (export "warden_reserve") (param i32) (result i32) (i32.const 16384))
            (func (export "warden_load") (param i32) (result i64)
                {stores}
                (drop (call $run (i32.const {kernel}) (i32.const 8192) (i32.const {count})))
                (i64.const 0))
            (func (export "warden_run") (param i32) (result i64) (i64.const 0))
            (func (export "warden_inspect") (param i32) (result i64) (i64.const 0)))"#,
        abi = warden::guest::ABI_VERSION,
    )
}

/// A runtime whose guest is the hostile module `wat`.
fn hostile_runtime(dir: &Path, publisher: &TestPublisher, wat: String) -> Runtime {
    builder(&dir.join("state"), &publisher.trust).guest_module(wat.into_bytes()).no_cache().build().unwrap()
}

/// Loading `bundle` traps with a host kernel refusal naming `refusal`, and no native kernel ran.
fn assert_refused_before_native_code(runtime: &Runtime, bundle: &Path, what: &str, refusal: &str) {
    match runtime.load_bundle(bundle) {
        Err(Error::Sandbox(SandboxError::Trap(message))) => {
            assert!(message.contains("host kernel call refused"), "{what}: {message}");
            assert!(message.contains(refusal), "{what}: {message}");
        }
        other => panic!("{what}: expected a trap, got {other:?}"),
    }
    assert_eq!(runtime.native_kernel_calls(), 0, "{what}: the native kernel ran");
}

/// The same process, with the real guest, still serves digits correctly.
fn serves_digits_after_the_abuse(dir: &Path, publisher: &TestPublisher, bundle: &Path, fixture: &Fixture) {
    let runtime = builder(&dir.join("state"), &publisher.trust).build().unwrap();
    let model = runtime.load_bundle(bundle).unwrap();
    let outputs = model.infer(tensors(&fixture.cases[0].inputs)).unwrap();
    assert_close(&outputs[1], &tensors(&fixture.cases[0].outputs)[1], 1e-4, "digits after the abuse");
}

/// A guest that fills its stderr (64 KiB on one line) and traps: the trap's message, which
/// reaches the client and the audit log, carries at most `MAX_ERROR_MESSAGE` bytes of it.
#[test]
fn a_guest_flooding_its_stderr_before_a_trap_gets_a_bounded_message() {
    let fixture = Fixture::load(&root().join("models/fixtures/digits.reference.json"));
    let dir = tempfile::tempdir().unwrap();
    let publisher = TestPublisher::new(dir.path());
    let bundle = publisher.bundle(&dir.path().join("repo"), &fixture.manifest(), &fixture.model_bytes());
    let wat = format!(
        r#"(module
            (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
            (memory (export "memory") 4)
            ;; one iovec at 0: 65,536 bytes from address 16
            (data (i32.const 0) "\10\00\00\00\00\00\01\00")
            (func (export "warden_abi_version") (result i32) (i32.const {abi}))
            (func (export "warden_reserve") (param i32) (result i32) (i32.const 131072))
            (func (export "warden_load") (param i32) (result i64)
                (memory.fill (i32.const 16) (i32.const 120) (i32.const 65536))
                (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
                unreachable)
            (func (export "warden_run") (param i32) (result i64) (i64.const 0))
            (func (export "warden_inspect") (param i32) (result i64) (i64.const 0)))"#,
        abi = warden::guest::ABI_VERSION,
    );
    let runtime = hostile_runtime(dir.path(), &publisher, wat);
    match runtime.load_bundle(&bundle) {
        Err(Error::Sandbox(SandboxError::Trap(message))) => {
            assert!(message.contains("guest said: xxxx"), "{}", &message[..message.len().min(200)]);
            assert!(
                message.len() <= warden::guest::MAX_ERROR_MESSAGE + 100,
                "a trap message of {} bytes",
                message.len()
            );
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    serves_digits_after_the_abuse(dir.path(), &publisher, &bundle, &fixture);
}

/// The same for the depthwise import: `warden.depthwise_c` calls whose runs would read or write
/// outside the guest's memory (past the end, below 0, through a far tap or a long stride), or
/// misaligned, or with a tap list out of bounds or too long, or more work than one call may do
/// (the deadline cannot interrupt it). Each traps before the native kernel runs, and the process
/// then serves the real guest.
#[test]
fn guest_abusing_the_depthwise_import_is_trapped_before_native_code_runs() {
    let fixture = Fixture::load(&root().join("models/fixtures/digits.reference.json"));
    let dir = tempfile::tempdir().unwrap();
    let publisher = TestPublisher::new(dir.path());
    let bundle = publisher.bundle(&dir.path().join("repo"), &fixture.manifest(), &fixture.model_bytes());
    // The module's 1,024 pages (64 MiB): room for a run whose 2^23 channels all lie inside it.
    let pages = 1024i64;
    let top = pages * 65536;
    let (taps_at, offsets_at) = (8192i64, 12288i64);
    // (what, [input, output, kernel, tap_indices, offsets, taps, bias, channels, k_stride, len,
    //  in_stride, out_stride], tap index and offset of every tap, the refusal expected)
    type Abuse = (&'static str, [i64; 12], (i64, i64), &'static str);
    let fine = [65536, 131072, 196608, taps_at, offsets_at, 1, 262144, 8, 8, 4, 8, 8];
    let with = |changes: &[(usize, i64)]| {
        let mut a = fine;
        for (i, v) in changes {
            a[*i] = *v;
        }
        a
    };
    let abuses: [Abuse; 11] = [
        ("an output run past the end", with(&[(1, top - 16)]), (0, 0), "output"),
        ("an input read below 0", with(&[(0, 0)]), (0, -64), "input"),
        ("a long input stride", with(&[(9, 1 << 20), (10, 1 << 12)]), (0, 0), "input"),
        ("a far kernel tap", with(&[]), (1 << 26, 0), "kernel"),
        ("a misaligned bias", with(&[(6, 262146)]), (0, 0), "not f32-aligned"),
        ("a kernel stride below the channels", with(&[(8, 4)]), (0, 0), "kernel stride"),
        ("a tap list past the end", with(&[(3, top - 4), (5, 4)]), (0, 0), "outside guest memory"),
        ("too many taps", with(&[(5, 5000)]), (0, 0), "depthwise taps"),
        ("a negative output stride below 0", with(&[(1, 64), (11, -64)]), (0, 0), "output"),
        ("a run too long for one call", with(&[(9, 1 << 22), (10, 0), (11, 0)]), (0, 0), "multiply-adds"),
        // 2^31 positions x 2^23 channels x 1,024 taps is 2^64 multiply-adds, which a u64 count
        // wrapped to 0; every operand in memory, so only the work cap stands in the way.
        (
            "a run whose work wraps a u64",
            with(&[
                (0, 65536),
                (1, 65536),
                (2, 65536),
                (5, 1024),
                (6, 65536),
                (7, 1 << 23),
                (8, 1 << 23),
                (9, 1 << 31),
                (10, 0),
                (11, 0),
            ]),
            (0, 0),
            "multiply-adds",
        ),
    ];
    for (what, args, (tap, offset), refusal) in abuses {
        let args: String =
            args.iter().map(|a| format!("(i32.const {})", *a as i32)).collect::<Vec<_>>().join(" ");
        let wat = format!(
            r#"(module
                (import "warden" "depthwise_c" (func $dw
                    (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
                (memory (export "memory") {pages})
                (func (export "warden_abi_version") (result i32) (i32.const {abi}))
                (func (export "warden_reserve") (param i32) (result i32) (i32.const 16384))
                (func (export "warden_load") (param i32) (result i64)
                    (i32.store (i32.const {taps_at}) (i32.const {tap}))
                    (i32.store (i32.const {offsets_at}) (i32.const {offset}))
                    (drop (call $dw {args}))
                    (i64.const 0))
                (func (export "warden_run") (param i32) (result i64) (i64.const 0))
                (func (export "warden_inspect") (param i32) (result i64) (i64.const 0)))"#,
            abi = warden::guest::ABI_VERSION,
            tap = tap as i32,
            offset = offset as i32,
        );
        let runtime = hostile_runtime(dir.path(), &publisher, wat);
        if !runtime.native_kernels().iter().any(|k| k.contains("depthwise")) {
            eprintln!("no native depthwise kernel on this CPU; nothing to check");
            return;
        }
        assert_refused_before_native_code(&runtime, &bundle, what, refusal);
    }
    serves_digits_after_the_abuse(dir.path(), &publisher, &bundle, &fixture);
}

//! The sandbox's own machinery: the compiled-guest cache is integrity-checked before use, and
//! one model serves concurrent callers from its instance pool, and requests of any size reach it;
//! guest memory is advised for huge pages; `infer_async` answers as `infer` does, and runs the
//! calls that queue back to back.

use std::sync::Arc;

use warden::manifest::{DimSpec, InputSpec, OutputSpec};
use warden::sandbox::CompileOutcome;
use warden::{DType, Runtime, Tensor};
use warden_tests::{Fixture, TestPublisher, builder, cache_dir, manifest, root, tensors};

#[test]
fn corrupted_compiled_guest_is_detected_and_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    // Warm the shared cache, then work on a private copy of it.
    drop(builder(&dir.path().join("state"), &root().join("models/dev-trust")).build().unwrap());
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let mut copied = 0;
    for entry in std::fs::read_dir(cache_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "cwasm") {
            std::fs::copy(&path, cache.join(path.file_name().unwrap())).unwrap();
            copied += 1;
        }
    }
    assert!(copied >= 1);
    let start =
        |state: &str| Runtime::builder().cache_dir(&cache).state_dir(dir.path().join(state)).build().unwrap();
    assert_eq!(start("a").guest_compile().0, CompileOutcome::CacheHit);

    for entry in std::fs::read_dir(&cache).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(&path, bytes).unwrap();
    }
    let rebuilt = start("b");
    assert_eq!(rebuilt.guest_compile().0, CompileOutcome::Compiled, "a corrupted cache entry was used");
    assert_eq!(start("c").guest_compile().0, CompileOutcome::CacheHit, "the entry was not rewritten");
}

#[test]
fn one_model_serves_concurrent_callers() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = builder(dir.path(), &root().join("models/dev-trust")).build().unwrap();
    let model = runtime.load_bundle(root().join("models/repo/digits/1")).unwrap();
    let fixture = Arc::new(Fixture::load(&root().join("models/fixtures/digits.reference.json")));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (model, fixture) = (model.clone(), fixture.clone());
            std::thread::spawn(move || {
                for i in 0..25 {
                    let case = &fixture.cases[(t + i) % fixture.cases.len()];
                    let out = model.infer(tensors(&case.inputs)).unwrap();
                    assert_eq!(out[0].to_i64(), tensors(&case.outputs)[0].to_i64());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(model.sandbox_runs(), 100);
}

/// `Model::infer_async` answers as `infer` does, on a runtime of either kind of guest calls:
/// from many tasks at once (more than the model has instances, so some wait on the blocking
/// pool), and outside any tokio runtime.
#[test]
fn infer_async_answers_from_tasks_and_outside_a_runtime() {
    let fixture = Arc::new(Fixture::load(&root().join("models/fixtures/digits.reference.json")));
    for async_calls in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let runtime =
            builder(dir.path(), &root().join("models/dev-trust")).async_calls(async_calls).build().unwrap();
        let model = runtime.load_bundle(root().join("models/repo/digits/1")).unwrap();
        // Whole, output policy applied: what the blocking call gives.
        let expected: Arc<Vec<Vec<Tensor>>> =
            Arc::new(fixture.cases.iter().map(|c| model.infer(tensors(&c.inputs)).unwrap()).collect());
        let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let (model, fixture, expected) = (model.clone(), fixture.clone(), expected.clone());
                tokio.spawn(async move {
                    for i in 0..10 {
                        let n = (t + i) % fixture.cases.len();
                        let out = model.infer_async(tensors(&fixture.cases[n].inputs)).await.unwrap();
                        assert_eq!(out, expected[n], "async_calls {async_calls}");
                        assert_eq!(out[0].to_i64(), tensors(&fixture.cases[n].outputs)[0].to_i64());
                    }
                })
            })
            .collect();
        for task in tasks {
            tokio.block_on(task).unwrap();
        }
        let outside =
            futures_executor::block_on(model.infer_async(tensors(&fixture.cases[0].inputs))).unwrap();
        assert_eq!(outside, expected[0], "async_calls {async_calls}");
        assert_eq!(model.sandbox_runs(), fixture.cases.len() as u64 + 81, "async_calls {async_calls}");
    }
}

/// Calls from tasks that find the model's one instance busy queue behind the run in progress,
/// and its runner takes them back to back: each still gets its own answer (the cases differ),
/// and blocking calls made meanwhile from other threads are served too.
#[test]
fn queued_async_calls_run_back_to_back_and_each_gets_its_own_answer() {
    let fixture = Arc::new(Fixture::load(&root().join("models/fixtures/digits.reference.json")));
    let dir = tempfile::tempdir().unwrap();
    let runtime = builder(dir.path(), &root().join("models/dev-trust"))
        .async_calls(true)
        .instances_per_model(1)
        .build()
        .unwrap();
    let model = runtime.load_bundle(root().join("models/repo/digits/1")).unwrap();
    let expected: Arc<Vec<Vec<Tensor>>> =
        Arc::new(fixture.cases.iter().map(|c| model.infer(tensors(&c.inputs)).unwrap()).collect());
    let blocking = std::thread::spawn({
        let (model, fixture, expected) = (model.clone(), fixture.clone(), expected.clone());
        move || {
            for n in 0..20 {
                let n = n % fixture.cases.len();
                assert_eq!(model.infer(tensors(&fixture.cases[n].inputs)).unwrap(), expected[n]);
            }
        }
    });
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
    let tasks: Vec<_> = (0..64)
        .map(|t| {
            let (model, fixture, expected) = (model.clone(), fixture.clone(), expected.clone());
            tokio.spawn(async move {
                for i in 0..4 {
                    let n = (t * 7 + i) % fixture.cases.len();
                    let out = model.infer_async(tensors(&fixture.cases[n].inputs)).await.unwrap();
                    assert_eq!(out, expected[n], "task {t}, call {i}");
                }
            })
        })
        .collect();
    for task in tasks {
        tokio.block_on(task).unwrap();
    }
    blocking.join().unwrap();
    assert_eq!(model.sandbox_runs(), fixture.cases.len() as u64 + 20 + 256);
    // 64 tasks at once on one instance: most runs waited in the queue and followed another.
    let in_a_row = model.runs_in_a_row();
    assert!(in_a_row >= 128, "only {in_a_row} of 256 runs followed another on the same instance");
}

/// The host writes a run request straight into the guest's buffer from the last reserve while it
/// fits, and reserves again when a request outgrows it: requests of changing sizes on one
/// instance (the dtypes model with a named first dimension), growing and shrinking, each give
/// their own answer.
#[test]
fn requests_of_changing_sizes_on_one_instance_each_get_their_own_answer() {
    let dir = tempfile::tempdir().unwrap();
    let publisher = TestPublisher::new(dir.path());
    let types = [DType::F32, DType::F64, DType::I64, DType::I32, DType::U8, DType::I8, DType::Bool];
    let mut m = manifest("dtypes", &[], &[]);
    let spec = |name: String, dtype| InputSpec {
        name,
        dtype,
        shape: vec![DimSpec::Named("n".into()), DimSpec::Fixed(3)],
        min: None,
        max: None,
    };
    m.inputs = types.iter().map(|t| spec(format!("in_{t}"), *t)).collect();
    m.outputs = types
        .iter()
        .map(|t| OutputSpec {
            name: format!("out_{t}"),
            dtype: *t,
            shape: vec![DimSpec::Named("n".into()), DimSpec::Fixed(3)],
        })
        .collect();
    let bytes = std::fs::read(root().join("tests/fixtures/dtypes/dtypes.onnx")).unwrap();
    let bundle = publisher.bundle(&dir.path().join("repo"), &m, &bytes);
    let runtime =
        builder(&dir.path().join("state"), &publisher.trust).instances_per_model(1).build().unwrap();
    let model = runtime.load_bundle(&bundle).unwrap();

    for rows in [1u64, 4, 2, 2, 9, 1] {
        let n = (rows * 3) as usize;
        let shape: &[u64] = &[rows, 3];
        let f: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 + rows as f32).collect();
        let l: Vec<i64> = (0..n).map(|i| i as i64 * 3 - rows as i64).collect();
        let inputs = vec![
            Tensor::from_f32("in_f32", shape, &f),
            Tensor::from_f64("in_f64", shape, &vec![1.0; n]),
            Tensor::from_i64("in_i64", shape, &l),
            Tensor::from_i32("in_i32", shape, &vec![1; n]),
            Tensor::from_u8("in_u8", shape, &vec![1; n]),
            Tensor::from_i8("in_i8", shape, &vec![1; n]),
            Tensor::from_bool("in_bool", shape, &vec![true; n]),
        ];
        let out = model.infer(inputs).unwrap();
        assert!(out.iter().all(|t| t.shape == shape), "{rows} rows: {:?}", out[0].shape);
        assert_eq!(out[0].to_f32().unwrap(), f.iter().map(|x| x + 1.5).collect::<Vec<_>>(), "{rows} rows");
        assert_eq!(out[2].to_i64().unwrap(), l.iter().map(|x| x + 7).collect::<Vec<_>>(), "{rows} rows");
    }
    assert_eq!(model.sandbox_runs(), 6);
}

/// Every guest's linear memory is advised for transparent huge pages (`MADV_HUGEPAGE`), so a
/// model's weights do not sit in thousands of 4 KiB pages (the bench MLP streams 6 MB of them
/// per inference). After the MLP is loaded and run, this process has mappings with the `hg` flag,
/// and where the kernel's THP setting allows it (`always` or `madvise`), some of them are backed
/// by huge pages. Nothing else in the process asks for huge pages: without the advice there are
/// no such mappings.
#[test]
#[cfg(target_os = "linux")]
fn guest_memory_is_advised_for_huge_pages() {
    let Ok(thp) = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled") else {
        eprintln!("this kernel has no transparent huge pages; nothing to check");
        return;
    };
    let fixture = Fixture::load(&root().join("models/bench/mlp.reference.json"));
    let dir = tempfile::tempdir().unwrap();
    let publisher = TestPublisher::new(dir.path());
    let bundle = publisher.bundle(&dir.path().join("repo"), &fixture.manifest(), &fixture.model_bytes());
    let runtime = builder(&dir.path().join("state"), &publisher.trust).build().unwrap();
    let model = runtime.load_bundle(&bundle).unwrap();
    model.infer(tensors(&fixture.cases[0].inputs)).unwrap();

    // /proc/self/smaps: a header line per mapping, then its fields, `VmFlags` last.
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let (mut advised, mut huge_kb, mut mapping_huge_kb) = (0, 0u64, 0u64);
    for line in smaps.lines() {
        if let Some(kb) = line.strip_prefix("AnonHugePages:") {
            mapping_huge_kb = kb.trim().trim_end_matches("kB").trim().parse().unwrap();
        } else if let Some(flags) = line.strip_prefix("VmFlags:") {
            if flags.split_whitespace().any(|f| f == "hg") {
                advised += 1;
                huge_kb += mapping_huge_kb;
            }
            mapping_huge_kb = 0;
        }
    }
    assert!(advised > 0, "no mapping in this process is advised for huge pages");
    if thp.contains("[never]") {
        eprintln!("transparent huge pages are off ({}); only the advice is checked", thp.trim());
    } else {
        assert!(
            huge_kb >= 2048,
            "the advised mappings hold {huge_kb} kB of huge pages (THP: {})",
            thp.trim()
        );
    }
}

//! The sandbox's own machinery: the compiled-guest cache is integrity-checked before use, and
//! one model serves concurrent callers from its instance pool.

use std::sync::Arc;

use warden::Runtime;
use warden::sandbox::CompileOutcome;
use warden_tests::{Fixture, builder, cache_dir, root, tensors};

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

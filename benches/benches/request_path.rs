//! The host's work around one request, outside the sandbox: reading signatures (one at a time,
//! with and without the device key's table, with the constant-time tables used before, and
//! batched with ed25519-dalek's `verify_batch`), a reading's full authentication, input
//! validation, output checks and policy, and a durable audit append.
//!
//! `cargo bench -p warden-benches --bench request_path`
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use curve25519_dalek::constants::ED25519_BASEPOINT_TABLE;
use curve25519_dalek::edwards::EdwardsBasepointTable;
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::BasepointTable as _;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha512};
use warden::audit::{AuditEntry, AuditLog};
use warden::policy::{apply_output_policy, check_outputs, validate_inputs};
use warden::trust::{DeviceKey, DeviceRegistry, MAX_KEY_TABLES, ReadingVerifier, TableBudget, verify_bundle};
use warden::wire::manifest::OutputPolicy;
use warden::wire::reading::{MAX_MESSAGE_LEN, SignedReading, reading_message};
use warden::{Tensor, trust::TrustStore};
use warden_tests::{Fixture, motion_reading, root, tensors};

/// Largest batch measured: 64 readings in flight is what 16-32 connections keep queued.
const BATCH_SIZES: &[usize] = &[1, 4, 16, 64];

/// `n` readings from `n` freshly provisioned devices in `state` (counter 1 each, 24 samples,
/// like `loadgen --readings`), signed by the firmware crate's own signer.
fn signed_readings(state: &std::path::Path, n: usize) -> Vec<(SignedReading, VerifyingKey)> {
    let mut registry = DeviceRegistry::open(state).unwrap();
    (0..n)
        .map(|i| {
            let blob = registry.provision(&format!("bench-{i}")).unwrap();
            let reading = motion_reading(&blob.device_id, 1);
            let signed = warden_firmware::signer::Signer::new(&blob).sign(reading).unwrap();
            (signed, SigningKey::from_bytes(&blob.seed).verifying_key())
        })
        .collect()
}

/// The strict check as the daemon made it until the nineteenth session, kept here for the
/// side-by-side figure: `[s]B - [k]A` from curve25519-dalek's constant-time radix-16 tables.
fn constant_time_table_check(
    table: &EdwardsBasepointTable,
    key: &VerifyingKey,
    message: &[u8],
    sig: &Signature,
) -> bool {
    let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(*sig.s_bytes())) else {
        return false;
    };
    let k = Scalar::from_hash(
        Sha512::new().chain_update(sig.r_bytes()).chain_update(key.as_bytes()).chain_update(message),
    );
    let r = ED25519_BASEPOINT_TABLE.mul_base(&s) - table.mul_base(&k);
    // (The key's own order was checked once, when it was wrapped, not per check.)
    r.compress().to_bytes() == *sig.r_bytes() && !r.is_small_order()
}

fn signatures(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let readings = signed_readings(dir.path(), *BATCH_SIZES.iter().max().unwrap());
    let mut buf = vec![[0u8; MAX_MESSAGE_LEN]; readings.len()];
    let mut messages: Vec<&[u8]> = Vec::new();
    for ((signed, _), buf) in readings.iter().zip(buf.iter_mut()) {
        messages.push(reading_message(signed.format, &signed.key_id, &signed.reading, buf).unwrap());
    }
    let sigs: Vec<Signature> = readings.iter().map(|(s, _)| Signature::from_bytes(&s.signature.0)).collect();
    let keys: Vec<VerifyingKey> = readings.iter().map(|(_, k)| *k).collect();
    let device_keys: Vec<DeviceKey> = keys.iter().map(|k| DeviceKey::new(*k)).collect();
    let budget = TableBudget::new(MAX_KEY_TABLES);
    let ct_tables: Vec<EdwardsBasepointTable> =
        keys.iter().map(|k| EdwardsBasepointTable::create(&k.to_edwards())).collect();

    let mut group = c.benchmark_group("reading_signatures");
    group.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    for &n in BATCH_SIZES {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::new("verify_strict_each", n), |b| {
            b.iter(|| {
                for i in 0..n {
                    keys[i].verify_strict(messages[i], &sigs[i]).unwrap();
                }
            })
        });
        // As the daemon checks them: the same result as `verify_strict`, with each key's table
        // (built at its first check, during the warm-up).
        group.bench_function(BenchmarkId::new("device_key_table_each", n), |b| {
            b.iter(|| {
                for i in 0..n {
                    device_keys[i].verify_strict(messages[i], &sigs[i], &budget).unwrap();
                }
            })
        });
        group.bench_function(BenchmarkId::new("constant_time_tables_each", n), |b| {
            b.iter(|| {
                for i in 0..n {
                    assert!(constant_time_table_check(&ct_tables[i], &keys[i], messages[i], &sigs[i]));
                }
            })
        });
        group.bench_function(BenchmarkId::new("verify_batch", n), |b| {
            b.iter(|| ed25519_dalek::verify_batch(&messages[..n], &sigs[..n], &keys[..n]).unwrap())
        });
    }
    group.finish();

    // A device's first reading: its key's table built, then the check.
    c.bench_function("reading_signatures/device_key_table_first", |b| {
        b.iter_batched(
            || DeviceKey::new(keys[0]),
            |key| key.verify_strict(messages[0], &sigs[0], &TableBudget::new(1)).unwrap(),
            BatchSize::SmallInput,
        )
    });

    // The whole check of one reading as the daemon runs it: format, registry lookup, key id,
    // strict signature, freshness (no state changes).
    let verifier = ReadingVerifier::open(dir.path(), Duration::from_secs(300)).unwrap();
    let (signed, _) = &readings[0];
    c.bench_function("reading_authenticate", |b| {
        b.iter(|| verifier.authenticate(signed, SystemTime::now()).unwrap())
    });
}

fn policy(c: &mut Criterion) {
    let mut group = c.benchmark_group("policy");
    // The signed sample bundle: its real manifest, bounds and output policy (top 3, step 0.01).
    let trust = TrustStore::load(&root().join("models/dev-trust")).unwrap();
    let digits = verify_bundle(&root().join("models/repo/digits/1"), &trust).unwrap();
    let fixture = Fixture::load(&root().join("models/fixtures/digits.reference.json"));
    let inputs = tensors(&fixture.cases[0].inputs);
    group.bench_function("validate_inputs/digits", |b| {
        b.iter_batched(
            || inputs.clone(),
            |inputs| validate_inputs(&digits.manifest, inputs, u64::MAX).unwrap(),
            BatchSize::SmallInput,
        )
    });
    let outputs = vec![
        Tensor::from_i64("label", &[1], &[3]),
        Tensor::from_f32(
            "probabilities",
            &[1, 10],
            &[0.01, 0.02, 0.0, 0.9, 0.03, 0.0, 0.01, 0.02, 0.0, 0.01],
        ),
    ];
    group.bench_function("check_outputs_and_policy/digits", |b| {
        b.iter_batched(
            || outputs.clone(),
            |outputs| {
                let mut checked = check_outputs(&digits.manifest, outputs).unwrap();
                apply_output_policy(&digits.manifest.output_policy, &mut checked);
                checked
            },
            BatchSize::SmallInput,
        )
    });
    // The largest input in the suite: PP-OCR recognition's 1x3x48x320 image (46,080 floats).
    let rec = root().join("models/public/ppocr_rec.reference.json");
    if rec.exists() {
        let fixture = Fixture::load(&rec);
        let manifest = fixture.manifest();
        let inputs = tensors(&fixture.cases[0].inputs);
        group.bench_function("validate_inputs/ppocr_rec", |b| {
            b.iter_batched(
                || inputs.clone(),
                |inputs| validate_inputs(&manifest, inputs, u64::MAX).unwrap(),
                BatchSize::LargeInput,
            )
        });
        // Its output, 40 rows of 6,625 class scores: at full precision (what `compare` serves)
        // and under the sample bundle's policy (top 3 per row, step 0.01).
        let outputs = tensors(&fixture.cases[0].outputs);
        let top3 = OutputPolicy { top_k: Some(3), step: Some(0.01), dangerous_full_precision: false };
        for (what, policy) in [("full_precision", &manifest.output_policy), ("top3_step", &top3)] {
            group.bench_function(format!("check_outputs_and_policy/ppocr_rec_{what}"), |b| {
                b.iter_batched(
                    || outputs.clone(),
                    |outputs| {
                        let mut checked = check_outputs(&manifest, outputs).unwrap();
                        apply_output_policy(policy, &mut checked);
                        checked
                    },
                    BatchSize::LargeInput,
                )
            });
        }
    } else {
        eprintln!("skipping {}: run python3 models/fetch_public_models.py", rec.display());
    }
    group.bench_function("verify_bundle/digits", |b| {
        b.iter(|| verify_bundle(&root().join("models/repo/digits/1"), &trust).unwrap())
    });
    group.finish();
}

fn audit(c: &mut Criterion) {
    // In the target directory rather than /tmp, which may be a tmpfs where fsync costs nothing.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let log = AuditLog::open(dir.path().join("audit.jsonl")).unwrap();
    let entry = AuditEntry {
        client: Some("bench".into()),
        device: Some("bench-0".into()),
        counter: Some(1),
        model: Some("motion".into()),
        version: Some("1".into()),
        model_sha256: Some("ab".repeat(32)),
        input_sha256: Some("cd".repeat(32)),
        outcome: "ok".into(),
        output_sha256: Some("ef".repeat(32)),
    };
    let mut group = c.benchmark_group("audit");
    group.sample_size(30).measurement_time(Duration::from_secs(4));
    group.bench_function("append_durable", |b| b.iter(|| log.append(&entry).unwrap()));
    group.finish();
}

criterion_group!(benches, signatures, policy, audit);
criterion_main!(benches);

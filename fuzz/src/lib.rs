//! What each fuzz target runs. The targets in `fuzz/fuzz_targets/` are one-line wrappers over
//! these functions, and `runtime/tests/fuzz_regressions.rs` includes this very file (with
//! `#[path]`) to replay saved crash inputs through the same code. It uses only `warden`'s public
//! API, `std` and crates `warden` itself depends on, so it compiles in both places.
//!
//! Every function returns `Ok` or a typed error; a panic, an abort, a hang or a runaway allocation
//! is a bug. The `expect`/`assert` calls below state invariants of the code under test (a decoded
//! reading re-encodes within the declared maximum, Warden's own responses parse back), not
//! properties of the input.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use warden::guest::{DeclaredTensor, Dim, ModelInfo};
use warden::kserve::{InferRequest, InferResponse};
use warden::manifest::{DimSpec, InputSpec, Limits, MANIFEST_FORMAT, Manifest, OutputPolicy, OutputSpec};
use warden::policy::{DEFAULT_MAX_INPUT_BYTES, apply_output_policy, check_outputs, validate_inputs};
use warden::trust::{
    MANIFEST_FILE, MODEL_FILE, PublisherKey, SIGNATURE_FILE, TrustStore, VersionLedger, reading_to_input,
    verify_bundle,
};
use warden::wire::reading::{
    FrameError, MAX_FRAME_LEN, MAX_MESSAGE_LEN, Reading, SensorKind, Signature64, SignedReading, Unit,
    reading_message,
};
use warden::wire::signing::{MODEL_MANIFEST_CONTEXT, ManifestSignature};
use warden::{DType, Error, Runtime, Tensor};

/// The one publisher key of the fuzz trust store: the repository's DEV-ONLY key, so the sample
/// bundles in `models/repo` (the seeds of the `manifest` target) verify as they are.
const SECRET_KEY: &str = include_str!("../../models/dev-keys/DEV-ONLY-publisher.key");
const PUBLIC_KEY: &str = include_str!("../../models/dev-keys/DEV-ONLY-publisher.pub");
const SAMPLE_MANIFESTS: [&str; 3] = [
    include_str!("../../models/repo/digits/1/manifest.toml"),
    include_str!("../../models/repo/breast_cancer/1/manifest.toml"),
    include_str!("../../models/repo/motion/1/manifest.toml"),
];

/// Sandbox limits for `onnx_sandbox`: small, so a hostile model hits them quickly.
pub const SANDBOX_MEMORY: usize = 64 << 20;
/// Deadline for instantiating, parsing and optimizing one model.
pub const SANDBOX_LOAD_TIMEOUT: Duration = Duration::from_millis(500);
/// Deadline for one run.
pub const SANDBOX_RUN_TIMEOUT: Duration = Duration::from_millis(200);
/// A model is only loaded and run when its zero inputs take at most this many bytes.
pub const MAX_RUN_INPUT_BYTES: usize = 1 << 20;
/// Largest tensor the manifest target materialises (bigger declared shapes get no data).
const MAX_FILL_BYTES: usize = 64 << 10;

/// This process's scratch directory: trust store, state, bundle directories. Under `$TMPDIR`
/// when fuzzing (`fuzz/run.sh` points it at a tmpfs), under the target directory's `tmp` when the
/// regression tests include this file.
pub fn work_dir() -> PathBuf {
    option_env!("CARGO_TARGET_TMPDIR")
        .map_or_else(std::env::temp_dir, PathBuf::from)
        .join(format!("warden-fuzz-{}", std::process::id()))
}

/// The harness writes its bundle directories in place: one input at a time per process (the
/// regression tests run on several threads).
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug)]
struct Fixture {
    dir: PathBuf,
    trust: TrustStore,
    key: PublisherKey,
    ledger: VersionLedger,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = work_dir();
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("trust")).expect("creating the fuzz work directory");
        fs::write(dir.join("trust/publisher.pub"), PUBLIC_KEY).expect("writing the trust store");
        let key_path = dir.join("publisher.key");
        write_private(&key_path, SECRET_KEY.as_bytes());
        Fixture {
            key: PublisherKey::load(&key_path).expect("loading the fixed test key"),
            trust: TrustStore::load(&dir.join("trust")).expect("loading the trust store"),
            ledger: VersionLedger::open(&dir.join("state")).expect("opening the version ledger"),
            dir,
        }
    })
}

fn write_private(path: &Path, bytes: &[u8]) {
    use std::io::Write as _;
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).expect("creating the key file");
    file.write_all(bytes).expect("writing the key file");
}

fn sample_manifests() -> &'static [Manifest] {
    static PARSED: OnceLock<Vec<Manifest>> = OnceLock::new();
    PARSED.get_or_init(|| {
        SAMPLE_MANIFESTS.iter().map(|t| toml::from_str(t).expect("the sample manifests parse")).collect()
    })
}

/// A manifest signature by the fixed key over `manifest` (the `manifest.sig` bytes).
fn sign(key: &PublisherKey, manifest: &[u8]) -> Vec<u8> {
    let signature = key.sign(MODEL_MANIFEST_CONTEXT, manifest).to_bytes();
    ManifestSignature { key_id: key.id().0, signature }.to_bytes().to_vec()
}

/// An empty directory `dir` (whatever was there before is removed).
fn fresh_dir(dir: &Path) {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).expect("creating a bundle directory");
}

// ---------------------------------------------------------------------------------------------
// wire_frame

/// Target `wire_frame`: the input as a raw postcard body (`POST /v1/readings`) and as a COBS frame
/// (`warden ingest`). A reading that decodes must re-encode within `MAX_FRAME_LEN`, re-decode to
/// the same bytes, fit its signing message in `MAX_MESSAGE_LEN`, and go through
/// `reading_to_input` against the sample `motion` manifest (the step after verification).
pub fn wire_frame(data: &[u8]) -> [Result<(), FrameError>; 2] {
    let raw = SignedReading::decode(data);
    let mut frame = data.to_vec();
    let framed = SignedReading::decode_frame(&mut frame);
    for signed in [&raw, &framed].into_iter().flatten() {
        after_decode(signed);
    }
    [raw.map(|_| ()), framed.map(|_| ())]
}

fn after_decode(signed: &SignedReading) {
    let mut buf = [0u8; MAX_FRAME_LEN];
    let frame = signed.encode_frame(&mut buf).expect("a decoded reading re-encodes within MAX_FRAME_LEN");
    let frame = frame.to_vec();
    let mut again = frame.clone();
    let back = SignedReading::decode_frame(&mut again).expect("a re-encoded reading decodes");
    let mut buf2 = [0u8; MAX_FRAME_LEN];
    let frame2 = back.encode_frame(&mut buf2).expect("re-encodes");
    assert_eq!(&frame[..], &frame2[..], "decode/encode is stable");
    let mut msg = [0u8; MAX_MESSAGE_LEN];
    reading_message(signed.format, &signed.key_id, &signed.reading, &mut msg)
        .expect("a decoded reading's signing message fits MAX_MESSAGE_LEN");
    for manifest in sample_manifests() {
        let _ = reading_to_input(manifest, signed);
    }
}

// ---------------------------------------------------------------------------------------------
// manifest

/// Flags in the first byte of a `manifest` input.
pub mod manifest_flags {
    /// Replace `manifest.sig` by a valid signature of the fixed key over the manifest bytes, so the
    /// input reaches the parser and the checks after the signature.
    pub const RESIGN: u8 = 1;
    /// Lay the bundle out as `<repo>/<name>/<version>/` (name and version from the manifest, when
    /// it parses and the name is a plain path component), so the layout check runs.
    pub const REPO_LAYOUT: u8 = 2;
    /// Leave `manifest.sig` out.
    pub const NO_SIGNATURE: u8 = 4;
    /// Leave `model.onnx` out.
    pub const NO_MODEL: u8 = 8;
    /// Fill the test inputs from the model bytes instead of zeros.
    pub const INPUTS_FROM_MODEL: u8 = 16;
}

/// Splits `u16 little-endian length || bytes` off the front of `data` (clamped to what is there).
fn take(data: &[u8]) -> (&[u8], &[u8]) {
    let (len, rest) = match data {
        [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
        _ => (0, &[][..]),
    };
    rest.split_at(len.min(rest.len()))
}

/// Builds a `manifest` input: flags, then `manifest.toml` and `manifest.sig` each behind a u16 LE
/// length, then `model.onnx` (the rest): the layout `fuzz/seeds.py` writes.
pub fn manifest_input(flags: u8, manifest: &[u8], sig: &[u8], model: &[u8]) -> Vec<u8> {
    let mut out = vec![flags];
    for part in [manifest, sig] {
        let len = u16::try_from(part.len()).expect("a part of at most 64 KiB");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(part);
    }
    out.extend_from_slice(model);
    out
}

fn plain_component(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Target `manifest`: the manifest parser on its own (TOML -> `Manifest`, as `trust/bundle.rs`
/// runs it once the signature checks), then `verify_bundle` on a bundle directory written from the
/// input with a trust store holding one fixed key, then (for a verified bundle) the rollback
/// check and every consumer of a manifest: input facts, `reading_to_input`, `validate_inputs`,
/// `check_outputs` and `apply_output_policy`.
pub fn manifest(data: &[u8]) -> Result<(), Error> {
    let (flags, rest) = match data.split_first() {
        Some((f, rest)) => (*f, rest),
        None => (0, data),
    };
    let (manifest_bytes, rest) = take(rest);
    let (sig_bytes, model) = take(rest);

    let parsed: Option<Manifest> =
        std::str::from_utf8(manifest_bytes).ok().and_then(|text| toml::from_str(text).ok());

    let f = fixture();
    let _guard = one_at_a_time();
    let root = f.dir.join("bundles");
    let dir = match &parsed {
        Some(m) if flags & manifest_flags::REPO_LAYOUT != 0 => {
            let name = if plain_component(&m.name) { m.name.as_str() } else { "model" };
            root.join(name).join(m.version.to_string())
        }
        None if flags & manifest_flags::REPO_LAYOUT != 0 => root.join("model").join("1"),
        _ => root.join("standalone"),
    };
    let _ = fs::remove_dir_all(&root);
    fresh_dir(&dir);
    fs::write(dir.join(MANIFEST_FILE), manifest_bytes).expect("writing manifest.toml");
    if flags & manifest_flags::NO_SIGNATURE == 0 {
        let sig = if flags & manifest_flags::RESIGN != 0 {
            sign(&f.key, manifest_bytes)
        } else {
            sig_bytes.to_vec()
        };
        fs::write(dir.join(SIGNATURE_FILE), sig).expect("writing manifest.sig");
    }
    if flags & manifest_flags::NO_MODEL == 0 {
        fs::write(dir.join(MODEL_FILE), model).expect("writing model.onnx");
    }

    let bundle = verify_bundle(&dir, &f.trust)?;
    if let Some(m) = &parsed {
        assert_eq!(m, &bundle.manifest, "verify_bundle parses the manifest as toml does");
    }
    let _ = f.ledger.check(&bundle);
    exercise_manifest(&bundle.manifest, model, flags & manifest_flags::INPUTS_FROM_MODEL != 0);
    Ok(())
}

/// A reading with every sample set, from the accelerometer board of `wire/FORMAT.md`.
pub fn test_reading(manifest: &Manifest) -> SignedReading {
    let sensor = manifest.readings.as_ref().map_or(SensorKind::Accelerometer, |r| r.sensor);
    SignedReading {
        format: 1,
        key_id: [0x21; 8],
        reading: Reading {
            device_id: "board-7".try_into().expect("a short device id"),
            counter: 300,
            timestamp_ms: None,
            sensor,
            unit: Unit::MilliG,
            scale: 0.5,
            channels: 3,
            samples: (0..96).collect(),
        },
        signature: Signature64([0; 64]),
    }
}

/// Concrete dims of a manifest shape (named dims as 1) and the tensor's byte length, if it fits.
fn concrete(shape: &[DimSpec], dtype: DType) -> (Vec<u64>, Option<usize>) {
    let dims: Vec<u64> = shape
        .iter()
        .map(|d| match d {
            DimSpec::Fixed(n) => *n,
            DimSpec::Named(_) => 1,
        })
        .collect();
    let bytes = dims
        .iter()
        .try_fold(1u64, |a, d| a.checked_mul(*d))
        .and_then(|n| usize::try_from(n).ok())
        .and_then(|n| n.checked_mul(dtype.size()))
        .filter(|n| *n <= MAX_FILL_BYTES);
    (dims, bytes)
}

/// A tensor of this shape, filled from `fill` cyclically (zeros when `fill` is empty); without data
/// when the shape is too large to materialise (the checks must refuse it without allocating).
fn tensor(name: &str, dtype: DType, shape: &[DimSpec], fill: &[u8]) -> Tensor {
    let (dims, bytes) = concrete(shape, dtype);
    let data = match bytes {
        Some(n) if fill.is_empty() => vec![0; n],
        Some(n) => fill.iter().copied().cycle().take(n).collect(),
        None => Vec::new(),
    };
    let mut t = Tensor { name: name.to_owned(), dtype, shape: dims, data };
    if t.dtype == DType::Bool {
        t.data.iter_mut().for_each(|b| *b &= 1);
    }
    t
}

fn exercise_manifest(m: &Manifest, model: &[u8], inputs_from_model: bool) {
    let _ = m.input_facts();
    let _ = reading_to_input(m, &test_reading(m));
    let fill = if inputs_from_model { model } else { &[] };
    let inputs = m.inputs.iter().map(|s| tensor(&s.name, s.dtype, &s.shape, fill)).collect();
    let _ = validate_inputs(m, inputs, DEFAULT_MAX_INPUT_BYTES);
    let outputs = m.outputs.iter().map(|s| tensor(&s.name, s.dtype, &s.shape, model)).collect();
    if let Ok(mut outputs) = check_outputs(m, outputs) {
        apply_output_policy(&m.output_policy, &mut outputs);
    }
}

// ---------------------------------------------------------------------------------------------
// kserve_request

/// Target `kserve_request`: the whole input as a plain JSON body, and the input without its last
/// two bytes as a binary-data body whose JSON header length is those two bytes (u16 LE). Each body
/// that parses goes on to `tensors()`, `validate_inputs` against the sample manifests, and
/// encoding a response from its tensors (which must parse back).
pub fn kserve_request(data: &[u8]) -> [Result<(), Error>; 2] {
    let plain = kserve_body(data, None);
    let binary = match data.len().checked_sub(2) {
        Some(n) => kserve_body(&data[..n], Some(usize::from(u16::from_le_bytes([data[n], data[n + 1]])))),
        None => Ok(()),
    };
    [plain, binary]
}

fn kserve_body(body: &[u8], header_len: Option<usize>) -> Result<(), Error> {
    let request = InferRequest::from_body(body, header_len)?;
    let tensors = request.tensors()?;
    for manifest in sample_manifests() {
        let _ = validate_inputs(manifest, tensors.clone(), DEFAULT_MAX_INPUT_BYTES);
    }
    let response = InferResponse::encode("m".into(), "1".into(), request.id.clone(), &tensors, |n| {
        request.wants_binary(n)
    });
    let head = &response.bytes[..response.header_len.unwrap_or(response.bytes.len())];
    let back: InferResponse = serde_json::from_slice(head).expect("Warden's own response parses");
    assert_eq!(back.outputs.len(), tensors.len());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// onnx_sandbox

/// How far an ONNX input got.
#[derive(Debug)]
pub enum SandboxOutcome {
    /// Inspected in the sandbox; its interface was not runnable (unknown rank or dtype, no
    /// inputs or outputs, inputs above `MAX_RUN_INPUT_BYTES`), so it was not loaded.
    Inspected(ModelInfo),
    /// Loaded through a signed bundle and run once on zero inputs; this many outputs passed the
    /// manifest checks.
    Ran(usize),
}

struct SandboxFixture {
    runtime: Runtime,
    version: AtomicU64,
    counts: [AtomicU64; 4],
}

impl std::fmt::Debug for SandboxFixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxFixture").finish_non_exhaustive()
    }
}

fn sandbox() -> &'static SandboxFixture {
    static SANDBOX: OnceLock<SandboxFixture> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        let f = fixture();
        let cache =
            std::env::var_os("WARDEN_FUZZ_CACHE_DIR").map(PathBuf::from).or_else(warden::default_cache_dir);
        let mut builder = Runtime::builder()
            .trust_dir(f.dir.join("trust"))
            .state_dir(f.dir.join("sandbox-state"))
            .memory_limit(SANDBOX_MEMORY)
            .load_timeout(SANDBOX_LOAD_TIMEOUT)
            .timeout(SANDBOX_RUN_TIMEOUT)
            .instances_per_model(1);
        builder = match cache {
            Some(dir) => builder.cache_dir(dir),
            None => builder.no_cache(),
        };
        let runtime = builder.build().expect("building the fuzz runtime");
        SandboxFixture { runtime, version: AtomicU64::new(1), counts: Default::default() }
    })
}

/// Builds the `onnx_sandbox` runtime now (the first build compiles the guest: seconds, or tens
/// of seconds under ASan), so the first input is not timed with it.
pub fn onnx_sandbox_init() {
    let s = sandbox();
    eprintln!("onnx_sandbox: guest {:?}", s.runtime.guest_compile());
}

/// How many `onnx_sandbox` inputs ended where: `[inspect refused, inspected only, load or run
/// refused, ran]`.
pub fn onnx_sandbox_counts() -> [u64; 4] {
    let s = sandbox();
    std::array::from_fn(|i| s.counts[i].load(Ordering::Relaxed))
}

/// Target `onnx_sandbox`: ONNX bytes through the real sandbox (64 MiB memory cap, 500 ms load and
/// 200 ms run deadlines). `Runtime::inspect_onnx` parses them in a guest; if the declared inputs
/// have known dtypes and ranks and take at most `MAX_RUN_INPUT_BYTES` (symbolic or unknown dims
/// set to 1), the bytes become a bundle signed by the fixed key with a manifest drafted from that
/// interface, `Runtime::load_bundle` loads it into a guest and `Model::infer` runs it once on
/// zero inputs. (The public API has no way to load unsigned bytes, so signing is part of the
/// harness; it costs well under the guest load.) Traps, deadlines and the memory cap are
/// expected outcomes, as typed errors.
pub fn onnx_sandbox(data: &[u8]) -> Result<SandboxOutcome, Error> {
    let s = sandbox();
    let mut inspected = false;
    let result = onnx_inner(s, data, &mut inspected);
    let slot = match (&result, inspected) {
        (Err(_), false) => 0,
        (Ok(SandboxOutcome::Inspected(_)), _) => 1,
        (Err(_), true) => 2,
        (Ok(SandboxOutcome::Ran(_)), _) => 3,
    };
    s.counts[slot].fetch_add(1, Ordering::Relaxed);
    let n: u64 = onnx_sandbox_counts().iter().sum();
    if std::env::var_os("WARDEN_FUZZ_STATS").is_some() && (n.is_power_of_two() || n.is_multiple_of(1000)) {
        let [a, b, c, d] = onnx_sandbox_counts();
        eprintln!(
            "onnx_sandbox outcomes: {a} refused at inspect, {b} inspected only, {c} refused at load or run, {d} ran"
        );
    }
    result
}

fn onnx_inner(s: &SandboxFixture, data: &[u8], inspected: &mut bool) -> Result<SandboxOutcome, Error> {
    let info = s.runtime.inspect_onnx(data)?;
    *inspected = true;
    let Some((manifest, inputs)) = draft(&info, data) else {
        return Ok(SandboxOutcome::Inspected(info));
    };
    let f = fixture();
    let _guard = one_at_a_time();
    let version = s.version.fetch_add(1, Ordering::Relaxed);
    let manifest = Manifest { version, ..manifest };
    let Ok(text) = toml::to_string(&manifest) else { return Ok(SandboxOutcome::Inspected(info)) };
    let dir = f.dir.join("sandbox-bundle");
    fresh_dir(&dir);
    fs::write(dir.join(MODEL_FILE), data).expect("writing model.onnx");
    fs::write(dir.join(MANIFEST_FILE), &text).expect("writing manifest.toml");
    fs::write(dir.join(SIGNATURE_FILE), sign(&f.key, text.as_bytes())).expect("writing manifest.sig");
    let model = s.runtime.load_bundle(&dir)?;
    let outputs = model.infer(inputs)?;
    Ok(SandboxOutcome::Ran(outputs.len()))
}

fn dims(shape: &[Option<Dim>], prefix: &str, index: usize) -> (Vec<DimSpec>, Vec<u64>) {
    shape
        .iter()
        .enumerate()
        .map(|(axis, d)| match d {
            Some(Dim::Fixed(n)) => (DimSpec::Fixed(*n), *n),
            Some(Dim::Symbol(s))
                if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
            {
                (DimSpec::Named(s.clone()), 1)
            }
            _ => (DimSpec::Named(format!("{prefix}{index}_{axis}")), 1),
        })
        .unzip()
}

/// A manifest for the model's declared interface (as `warden model init` drafts one) and zero
/// inputs that fit it, or `None` if the interface cannot be run that way.
fn draft(info: &ModelInfo, model: &[u8]) -> Option<(Manifest, Vec<Tensor>)> {
    if info.inputs.is_empty() || info.outputs.is_empty() {
        return None;
    }
    let mut specs = Vec::new();
    let mut inputs = Vec::new();
    let mut total = 0usize;
    for (i, t) in info.inputs.iter().enumerate() {
        let DeclaredTensor { name, dtype: Some(dtype), shape: Some(shape) } = t else { return None };
        let (spec_shape, concrete) = dims(shape, "in", i);
        let bytes = concrete
            .iter()
            .try_fold(1u64, |a, d| a.checked_mul(*d))
            .and_then(|n| usize::try_from(n).ok())
            .and_then(|n| n.checked_mul(dtype.size()))?;
        total = total.checked_add(bytes).filter(|t| *t <= MAX_RUN_INPUT_BYTES)?;
        specs.push(InputSpec { name: name.clone(), dtype: *dtype, shape: spec_shape, min: None, max: None });
        inputs.push(Tensor { name: name.clone(), dtype: *dtype, shape: concrete, data: vec![0; bytes] });
    }
    let outputs = info
        .outputs
        .iter()
        .enumerate()
        .map(|(i, t)| OutputSpec {
            name: t.name.clone(),
            dtype: t.dtype.unwrap_or(DType::F32),
            shape: t.shape.as_deref().map(|s| dims(s, "out", i).0).unwrap_or_default(),
        })
        .collect();
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        name: "fuzz".into(),
        version: 1,
        model_sha256: hex::encode(Sha256::digest(model)),
        description: None,
        inputs: specs,
        outputs,
        output_policy: OutputPolicy { top_k: None, step: Some(1e-3), dangerous_full_precision: false },
        limits: Limits::default(),
        readings: None,
    };
    Some((manifest, inputs))
}

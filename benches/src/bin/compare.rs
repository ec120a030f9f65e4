//! The whole comparison in one run (issue 5): per-inference latency of Warden's sandbox (the
//! library path, `Model::infer`), native tract (the same engine code and tract version, in this
//! process, on its own thread) and ONNX Runtime from Python (`benches/ort_bench.py`, one thread),
//! on every model with a reference fixture. Engines are interleaved: each round loads the model
//! afresh into the sandbox and native tract (ONNX Runtime keeps one session) and runs every
//! engine for a time budget, in an order that rotates between rounds; every inference is timed
//! on its own and the reported figure is the median over all rounds. Round medians that differ
//! by more than 1.5x are listed under the table.
//!
//! Prints a markdown table and writes `benches/results/latest.{md,json,svg}` (a run limited with
//! `--models` or `--quick` writes files only where `--out DIR` says, so it never replaces the
//! full run's).
//!
//! `cargo run --release -p warden-benches --bin compare [-- --quick] [--models digits,bench_cnn]`
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use warden::Tensor;
use warden::guest::LoadRequest;
use warden_tests::{Fixture, TestPublisher, builder, root, tensors};

const USAGE: &str = "\
usage: compare [--quick] [--models NAME,NAME] [--rounds N] [--budget-ms MS] [--python PYTHON] [--out DIR]

  --quick          2 rounds of 100 ms per engine (a smoke run); default 5 rounds of 1000 ms
  --models a,b     only these models (names below)
  --rounds N       interleaved rounds
  --budget-ms MS   time per engine per round (at least 5 inferences, 3 with --quick)
  --out DIR        write latest.{md,json,svg} there (default: benches/results for a full run;
                   with --models or --quick, no files unless --out is given)
  --python PYTHON  the Python that has onnxruntime (default python3)";

/// A model of the suite: its name, its reference fixture, a description and how to make it.
struct Spec {
    name: &'static str,
    fixture: &'static str,
    label: &'static str,
    make: &'static str,
}

const SUITE: &[Spec] = &[
    Spec {
        name: "digits",
        fixture: "models/fixtures/digits.reference.json",
        label: "MLP 64-64-10 (sklearn digits)",
        make: "python3 models/make_samples.py",
    },
    Spec {
        name: "breast_cancer",
        fixture: "models/fixtures/breast_cancer.reference.json",
        label: "MLP 30-16-2 (sklearn breast cancer)",
        make: "python3 models/make_samples.py",
    },
    Spec {
        name: "motion",
        fixture: "models/fixtures/motion.reference.json",
        label: "signal features, 8x3 accel",
        make: "python3 models/make_motion_model.py",
    },
    Spec {
        name: "silero_vad",
        fixture: "models/public/silero_vad.reference.json",
        label: "silero VAD 16 kHz, 1x576 + state",
        make: "python3 models/fetch_public_models.py",
    },
    Spec {
        name: "ppocr_cls",
        fixture: "models/public/ppocr_cls.reference.json",
        label: "PP-OCR orientation, 1x3x48x192",
        make: "python3 models/fetch_public_models.py",
    },
    Spec {
        name: "ppocr_rec",
        fixture: "models/public/ppocr_rec.reference.json",
        label: "PP-OCR recognition, 1x3x48x320",
        make: "python3 models/fetch_public_models.py",
    },
    Spec {
        name: "bench_mlp",
        fixture: "models/bench/mlp.reference.json",
        label: "MLP 512-1024-1024-10 (generated)",
        make: "python3 models/make_bench_models.py",
    },
    Spec {
        name: "bench_cnn",
        fixture: "models/bench/cnn.reference.json",
        label: "CNN conv3x3 32+64, 1x1x28x28 (generated)",
        make: "python3 models/make_bench_models.py",
    },
];

const ENGINES: [&str; 4] = ["Warden sandbox", "native tract", "ONNX Runtime", "sandbox, wasm kernels only"];
const SANDBOX: usize = 0;
const NATIVE: usize = 1;
const ORT: usize = 2;
/// The sandbox with `native_kernels(false)`: every product in WebAssembly (the state before
/// host kernels), side by side with the default.
const WASM_ONLY: usize = 3;

/// Relative tolerance of the output check (as `tests/e2e/reference.rs`).
const TOLERANCE: f64 = 1e-4;

struct Options {
    quick: bool,
    models: Option<Vec<String>>,
    rounds: usize,
    budget: Duration,
    min_iters: usize,
    warmup: usize,
    python: String,
    out: Option<std::path::PathBuf>,
}

fn parse_args() -> Options {
    let mut o = Options {
        quick: false,
        models: None,
        rounds: 5,
        budget: Duration::from_millis(1000),
        min_iters: 5,
        warmup: 20,
        python: "python3".into(),
        out: None,
    };
    let (mut rounds, mut budget) = (None, None);
    let mut args = std::env::args().skip(1);
    let fail = |msg: String| -> ! {
        eprintln!("{msg}\n{USAGE}");
        std::process::exit(2)
    };
    while let Some(a) = args.next() {
        let mut value = |flag: &str| args.next().unwrap_or_else(|| fail(format!("{flag} needs a value")));
        match a.as_str() {
            "--quick" => o.quick = true,
            "--models" => {
                o.models = Some(value("--models").split(',').map(|s| s.trim().to_owned()).collect())
            }
            "--rounds" => {
                rounds = Some(value("--rounds").parse().unwrap_or_else(|e| fail(format!("--rounds: {e}"))))
            }
            "--budget-ms" => {
                budget = Some(Duration::from_millis(
                    value("--budget-ms").parse().unwrap_or_else(|e| fail(format!("--budget-ms: {e}"))),
                ))
            }
            "--python" => o.python = value("--python"),
            "--out" => o.out = Some(value("--out").into()),
            "-h" | "--help" => {
                println!(
                    "{USAGE}\n\nmodels: {}",
                    SUITE.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
                );
                std::process::exit(0)
            }
            _ => fail(format!("unknown argument {a:?}")),
        }
    }
    if o.quick {
        (o.rounds, o.budget, o.min_iters, o.warmup) = (2, Duration::from_millis(100), 3, 3);
    }
    o.rounds = rounds.unwrap_or(o.rounds).max(1);
    o.budget = budget.unwrap_or(o.budget);
    if let Some(names) = &o.models {
        for n in names {
            if !SUITE.iter().any(|s| s.name == n) {
                fail(format!(
                    "unknown model {n:?}; known: {}",
                    SUITE.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    o
}

/// Per-inference samples of one engine on one model, over all rounds.
#[derive(Default)]
struct Samples {
    all_us: Vec<f64>,
    round_medians_us: Vec<f64>,
}

impl Samples {
    fn add_round(&mut self, round: Vec<f64>) {
        self.round_medians_us.push(median(round.clone()));
        self.all_us.extend(round);
    }
    fn median(&self) -> Option<f64> {
        (!self.all_us.is_empty()).then(|| median(self.all_us.clone()))
    }
    fn p99(&self) -> Option<f64> {
        (!self.all_us.is_empty()).then(|| percentile(self.all_us.clone(), 0.99))
    }
    fn json(&self) -> Value {
        let r = |v: f64| (v * 1000.0).round() / 1000.0;
        json!({
            "median_us": self.median().map(r),
            "p99_us": self.p99().map(r),
            "iters": self.all_us.len(),
            "round_medians_us": self.round_medians_us.iter().map(|v| r(*v)).collect::<Vec<_>>(),
        })
    }
}

fn median(v: Vec<f64>) -> f64 {
    percentile(v, 0.5)
}

/// Nearest-rank percentile; the median of an even count is the mean of the middle two.
fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if p == 0.5 && v.len().is_multiple_of(2) {
        return (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0;
    }
    v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

fn geomean(v: impl IntoIterator<Item = f64>) -> Option<f64> {
    let (sum, n) = v.into_iter().fold((0.0, 0usize), |(s, n), x| (s + x.ln(), n + 1));
    (n > 0).then(|| (sum / n as f64).exp())
}

/// The result for one model.
struct Row {
    name: &'static str,
    label: &'static str,
    engines: [Samples; 4],
    /// Largest deviation of the sandbox's and native tract's outputs from ONNX Runtime's, in
    /// units of the tolerance (<= 1 is a match).
    mismatch: f64,
    ort_error: Option<String>,
}

impl Row {
    fn ratio(&self, a: usize, b: usize) -> Option<f64> {
        Some(self.engines[a].median()? / self.engines[b].median()?)
    }
}

/// Worst elementwise excess over `TOLERANCE * |e| + 1e-6`, as `warden_tests::assert_close`.
fn deviation(actual: &[Tensor], expected: &[Tensor]) -> f64 {
    if actual.len() != expected.len() {
        return f64::INFINITY;
    }
    let mut worst = 0.0f64;
    for (a, e) in actual.iter().zip(expected) {
        if a.name != e.name || a.dtype != e.dtype || a.shape != e.shape {
            return f64::INFINITY;
        }
        for i in 0..e.element_count().unwrap_or(0) {
            let (x, y) = (a.value_f64(i).unwrap(), e.value_f64(i).unwrap());
            let excess = if e.dtype.is_float() {
                (x - y).abs() / (TOLERANCE * y.abs() + warden_tests::ABS_TOLERANCE)
            } else if x == y {
                0.0
            } else {
                f64::INFINITY
            };
            worst = worst.max(excess);
        }
    }
    worst
}

/// Native tract on its own thread (its AVX-512 kernels would otherwise slow the sandbox's code
/// on this thread down; see benches/README.md). Each request is (budget, min iterations); the
/// answer is the per-inference times in microseconds.
struct Native {
    to: Option<mpsc::Sender<(Duration, usize)>>,
    from: mpsc::Receiver<Vec<f64>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Native {
    fn start(
        bytes: Vec<u8>,
        facts: Vec<warden::guest::InputFact>,
        inputs: Vec<Tensor>,
    ) -> (Native, Vec<Tensor>) {
        let (to, rx) = mpsc::channel::<(Duration, usize)>();
        let (tx, from) = mpsc::channel::<Vec<f64>>();
        let (out_tx, out_rx) = mpsc::channel::<Vec<Tensor>>();
        let thread = std::thread::spawn(move || {
            let mut engine =
                warden_guest::Engine::load(&LoadRequest { model: &bytes, inputs: facts }).unwrap();
            let request = Tensor::run_request(&inputs);
            let outputs = engine.run(&request).unwrap();
            out_tx
                .send(
                    outputs
                        .into_iter()
                        .map(|n| Tensor { name: n.name, dtype: n.dtype, shape: n.shape, data: n.data })
                        .collect(),
                )
                .unwrap();
            for (budget, min_iters) in rx {
                let mut samples = Vec::new();
                let start = Instant::now();
                while samples.len() < min_iters || start.elapsed() < budget {
                    let t = Instant::now();
                    let out = engine.run(&request).unwrap();
                    samples.push(t.elapsed().as_secs_f64() * 1e6);
                    drop(std::hint::black_box(out));
                }
                tx.send(samples).unwrap();
            }
        });
        let outputs = out_rx.recv().expect("native tract failed to load or run the model");
        (Native { to: Some(to), from, thread: Some(thread) }, outputs)
    }

    fn run(&self, budget: Duration, min_iters: usize) -> Vec<f64> {
        self.to.as_ref().unwrap().send((budget, min_iters)).unwrap();
        self.from.recv().unwrap()
    }
}

impl Drop for Native {
    fn drop(&mut self) {
        drop(self.to.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `benches/ort_bench.py --rounds`: one Python process per model, kept for all its rounds.
struct Ort {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Ort {
    fn start(python: &str, model: &Path, inputs: &Path, warmup: usize) -> Result<(Ort, String), String> {
        let mut child = Command::new(python)
            .arg(root().join("benches/ort_bench.py"))
            .arg(model)
            .arg(inputs)
            .args(["--rounds", "--warmup", &warmup.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot run {python}: {e}"))?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut ort = Ort { child, stdin, stdout };
        let ready = ort.read()?;
        let version = ready["onnxruntime"].as_str().unwrap_or("?").to_owned();
        Ok((ort, version))
    }

    fn read(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        self.stdout.read_line(&mut line).map_err(|e| e.to_string())?;
        if line.is_empty() {
            return Err("ort_bench.py exited (see its error above)".into());
        }
        serde_json::from_str(&line).map_err(|e| format!("ort_bench.py said {line:?}: {e}"))
    }

    fn run(&mut self, budget: Duration, min_iters: usize) -> Result<Vec<f64>, String> {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{} {min_iters}", budget.as_micros()).map_err(|e| e.to_string())?;
        stdin.flush().map_err(|e| e.to_string())?;
        let answer = self.read()?;
        Ok(answer["samples_us"].as_array().ok_or("no samples_us")?.iter().filter_map(Value::as_f64).collect())
    }
}

impl Drop for Ort {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

fn sandbox_round(model: &warden::Model, inputs: &[Tensor], budget: Duration, min_iters: usize) -> Vec<f64> {
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < min_iters || start.elapsed() < budget {
        let batch = inputs.to_vec();
        let t = Instant::now();
        let out = model.infer(batch).unwrap();
        samples.push(t.elapsed().as_secs_f64() * 1e6);
        drop(std::hint::black_box(out));
    }
    samples
}

fn fmt_us(us: Option<f64>) -> String {
    match us {
        None => "n/a".into(),
        Some(us) if us < 1000.0 => format!("{us:.1} us"),
        Some(us) => format!("{:.2} ms", us / 1000.0),
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or("n/a".into(), |r| format!("{r:.2}"))
}

fn lock_version(name: &str) -> String {
    let lock = std::fs::read_to_string(root().join("Cargo.lock")).unwrap_or_default();
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l == format!("name = \"{name}\"")
            && let Some(v) = lines.next().and_then(|v| v.strip_prefix("version = \""))
        {
            return v.trim_end_matches('"').to_owned();
        }
    }
    "?".into()
}

fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let name = info
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    let flags = info.lines().find(|l| l.starts_with("flags")).unwrap_or("");
    let simd = if flags.contains(" avx512f") {
        "AVX-512"
    } else if flags.contains(" avx2") {
        "AVX2"
    } else {
        "no AVX2"
    };
    format!("{name}, {} CPUs, {simd}", std::thread::available_parallelism().map_or(0, |n| n.get()))
}

/// Today's UTC date (days-from-civil inverse, Howard Hinnant's algorithm).
fn today() -> String {
    let days =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 / 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

fn main() {
    let opts = parse_args();
    let wall = Instant::now();
    // A partial run writes files only where asked, so it never replaces the full run's.
    let partial = opts.quick || opts.models.is_some();
    let out_dir = opts.out.clone().or_else(|| (!partial).then(|| root().join("benches/results")));
    let selected: Vec<&Spec> =
        SUITE.iter().filter(|s| opts.models.as_ref().is_none_or(|m| m.iter().any(|n| n == s.name))).collect();

    let mut skipped = Vec::new();
    let mut runnable = Vec::new();
    for spec in selected {
        let path = root().join(spec.fixture);
        let missing = if path.exists() {
            let onnx = Fixture::load(&path).onnx;
            (!root().join(&onnx).exists()).then_some(onnx)
        } else {
            Some(spec.fixture.to_owned())
        };
        match missing {
            None => runnable.push(spec),
            Some(missing) => {
                eprintln!("skipping {}: {missing} is missing; run `{}`", spec.name, spec.make);
                skipped.push(json!({"model": spec.name, "missing": missing, "make": spec.make}));
            }
        }
    }
    if runnable.is_empty() {
        eprintln!("nothing to run");
        std::process::exit(1);
    }

    eprintln!("preparing the sandbox (compiles the guest on first use, about 10 s) ...");
    let dir = tempfile::tempdir().unwrap();
    let publisher = TestPublisher::new(dir.path());
    let runtime =
        builder(&dir.path().join("state"), &publisher.trust).instances_per_model(1).build().unwrap();
    let wasm_only = builder(&dir.path().join("state-wasm"), &publisher.trust)
        .instances_per_model(1)
        .native_kernels(false)
        .build()
        .unwrap();
    eprintln!("native kernels offered to the guest: {}", runtime.native_kernels().join(", "));

    let mut ort_version = String::from("?");
    let mut rows = Vec::new();
    for (ix, spec) in runnable.iter().enumerate() {
        let tag = format!("[{}/{}] {}", ix + 1, runnable.len(), spec.name);
        let fixture_path = root().join(spec.fixture);
        let fixture = Fixture::load(&fixture_path);
        let manifest = fixture.manifest();
        let bytes = fixture.model_bytes();
        eprintln!("{tag}: loading (sandbox, native tract, ONNX Runtime)");
        let bundle = publisher.bundle(&dir.path().join("repo"), &manifest, &bytes);
        let mut model = runtime.load_bundle(&bundle).unwrap();
        let mut model_w = wasm_only.load_bundle(&bundle).unwrap();
        let inputs = tensors(&fixture.cases[0].inputs);
        let expected = tensors(&fixture.cases[0].outputs);

        let tiles = runtime.native_kernel_calls();
        let sandbox_out = model.infer(inputs.clone()).unwrap();
        eprintln!(
            "{tag}: {} host kernel calls per inference (matrix tiles, depthwise runs)",
            runtime.native_kernel_calls() - tiles
        );
        let wasm_out = model_w.infer(inputs.clone()).unwrap();
        let (mut native, native_out) = Native::start(bytes.clone(), manifest.input_facts(), inputs.clone());
        let mismatch = deviation(&sandbox_out, &expected)
            .max(deviation(&native_out, &expected))
            .max(deviation(&wasm_out, &expected));
        if mismatch > 1.0 {
            eprintln!("{tag}: WARNING: outputs differ from ONNX Runtime's ({mismatch:.1}x the tolerance)");
        }
        let mut ort_error = None;
        let mut ort = match Ort::start(&opts.python, &root().join(&fixture.onnx), &fixture_path, opts.warmup)
        {
            Ok((ort, v)) => {
                ort_version = v;
                Some(ort)
            }
            Err(e) => {
                eprintln!("{tag}: ONNX Runtime unavailable: {e}");
                ort_error = Some(e);
                None
            }
        };
        let mut engines: [Samples; 4] = Default::default();
        for round in 0..opts.rounds {
            // Every round loads the model afresh into a new sandbox instance and a new native
            // engine: the sandbox's speed varies from one load to the next on some models (see
            // benches/README.md), so one load would be a coin toss. ONNX Runtime keeps its session.
            if round > 0 {
                drop(model);
                model = runtime.load_bundle(&bundle).unwrap();
                drop(model_w);
                model_w = wasm_only.load_bundle(&bundle).unwrap();
                drop(native);
                native = Native::start(bytes.clone(), manifest.input_facts(), inputs.clone()).0;
            }
            // Warm-up (ort_bench.py warmed up before it said it was ready).
            sandbox_round(&model, &inputs, Duration::ZERO, opts.warmup);
            sandbox_round(&model_w, &inputs, Duration::ZERO, opts.warmup);
            native.run(Duration::ZERO, opts.warmup);
            let mut line = format!("{tag}: round {}/{}:", round + 1, opts.rounds);
            for k in 0..ENGINES.len() {
                let engine = (round + k) % ENGINES.len();
                let samples = match engine {
                    SANDBOX => sandbox_round(&model, &inputs, opts.budget, opts.min_iters),
                    WASM_ONLY => sandbox_round(&model_w, &inputs, opts.budget, opts.min_iters),
                    NATIVE => native.run(opts.budget, opts.min_iters),
                    _ => match ort.as_mut().map(|o| o.run(opts.budget, opts.min_iters)) {
                        Some(Ok(s)) => s,
                        Some(Err(e)) => {
                            eprintln!("{tag}: ONNX Runtime failed: {e}");
                            ort_error = Some(e);
                            ort = None;
                            continue;
                        }
                        None => continue,
                    },
                };
                line += &format!(
                    " {} {} (x{})",
                    ENGINES[engine],
                    fmt_us(Some(median(samples.clone()))),
                    samples.len()
                );
                engines[engine].add_round(samples);
            }
            eprintln!("{line}");
        }
        drop(ort);
        drop(native);
        drop(model_w);
        rows.push(Row { name: spec.name, label: spec.label, engines, mismatch, ort_error });
    }

    let geo = |a, b| geomean(rows.iter().filter_map(|r| r.ratio(a, b)));
    let (g_sn, g_so, g_no) = (geo(SANDBOX, NATIVE), geo(SANDBOX, ORT), geo(NATIVE, ORT));
    let (g_wn, g_sw) = (geo(WASM_ONLY, NATIVE), geo(SANDBOX, WASM_ONLY));
    let elapsed = wall.elapsed();
    let mut command = String::from("cargo run --release -p warden-benches --bin compare");
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.is_empty() {
        command += &format!(" -- {}", args.join(" "));
    }
    let versions = format!(
        "tract-onnx {} (sandbox: wasm32-wasip1 +simd128 in wasmtime {}; native: same crate), onnxruntime {ort_version} (Python, 1 thread)",
        lock_version("tract-onnx"),
        lock_version("wasmtime")
    );

    let mut md = String::new();
    md += &format!(
        "{}, `{command}` ({} rounds x {} ms per engine, medians of every inference; {:.0} s in all)  \n{}  \n{versions}\n\n",
        today(),
        opts.rounds,
        opts.budget.as_millis(),
        elapsed.as_secs_f64(),
        cpu_model()
    );
    md += "| model | what | Warden sandbox | native tract | ONNX Runtime | sandbox / native | sandbox / ORT | native / ORT | sandbox, wasm kernels only | wasm-only / native | sandbox / wasm-only |\n";
    md += "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";
    for r in &rows {
        let flag = if r.mismatch > 1.0 { " (outputs differ!)" } else { "" };
        md += &format!(
            "| {}{flag} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.name,
            r.label,
            fmt_us(r.engines[SANDBOX].median()),
            fmt_us(r.engines[NATIVE].median()),
            fmt_us(r.engines[ORT].median()),
            fmt_ratio(r.ratio(SANDBOX, NATIVE)),
            fmt_ratio(r.ratio(SANDBOX, ORT)),
            fmt_ratio(r.ratio(NATIVE, ORT)),
            fmt_us(r.engines[WASM_ONLY].median()),
            fmt_ratio(r.ratio(WASM_ONLY, NATIVE)),
            fmt_ratio(r.ratio(SANDBOX, WASM_ONLY)),
        );
    }
    md += &format!(
        "| **geometric mean** | | | | | **{}** | **{}** | **{}** | | **{}** | **{}** |\n",
        fmt_ratio(g_sn),
        fmt_ratio(g_so),
        fmt_ratio(g_no),
        fmt_ratio(g_wn),
        fmt_ratio(g_sw)
    );
    for r in &rows {
        for (e, samples) in r.engines.iter().enumerate() {
            let m = &samples.round_medians_us;
            let (lo, hi) = m.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
            if m.len() > 1 && hi > 1.5 * lo {
                md += &format!(
                    "\n{} on {}: round medians ranged {} to {} ({})",
                    ENGINES[e],
                    r.name,
                    fmt_us(Some(lo)),
                    fmt_us(Some(hi)),
                    m.iter().map(|v| fmt_us(Some(*v))).collect::<Vec<_>>().join(", ")
                );
            }
        }
    }
    for s in &skipped {
        let text = |k: &str| s[k].as_str().unwrap_or_default().to_owned();
        md += &format!(
            "\nskipped {}: `{}` is missing (run `{}`)",
            text("model"),
            text("missing"),
            text("make")
        );
    }
    if !md.ends_with("|\n") {
        md += "\n";
    }
    print!("{md}");
    let Some(out_dir) = out_dir else {
        eprintln!(
            "a partial run: no files written (--out DIR to keep them) ({:.0} s)",
            elapsed.as_secs_f64()
        );
        return;
    };

    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::write(out_dir.join("latest.md"), &md).unwrap();
    let report = json!({
        "date": today(),
        "command": command,
        "machine": cpu_model(),
        "versions": versions,
        "quick": opts.quick,
        "rounds": opts.rounds,
        "budget_ms": opts.budget.as_millis() as u64,
        "wall_s": elapsed.as_secs_f64(),
        "models": rows.iter().map(|r| json!({
            "model": r.name,
            "what": r.label,
            "outputs_match_onnxruntime": r.mismatch <= 1.0,
            "worst_deviation_in_tolerances": if r.mismatch.is_finite() { json!(r.mismatch) } else { json!(null) },
            "sandbox": r.engines[SANDBOX].json(),
            "native_tract": r.engines[NATIVE].json(),
            "onnxruntime": r.engines[ORT].json(),
            "onnxruntime_error": r.ort_error,
            "sandbox_over_native": r.ratio(SANDBOX, NATIVE),
            "sandbox_over_onnxruntime": r.ratio(SANDBOX, ORT),
            "native_over_onnxruntime": r.ratio(NATIVE, ORT),
            "sandbox_wasm_kernels_only": r.engines[WASM_ONLY].json(),
            "wasm_only_over_native": r.ratio(WASM_ONLY, NATIVE),
            "sandbox_over_wasm_only": r.ratio(SANDBOX, WASM_ONLY),
        })).collect::<Vec<_>>(),
        "geomean": {
            "sandbox_over_native": g_sn,
            "sandbox_over_onnxruntime": g_so,
            "native_over_onnxruntime": g_no,
            "wasm_only_over_native": g_wn,
            "sandbox_over_wasm_only": g_sw,
        },
        "native_kernels": runtime.native_kernels(),
        "skipped": skipped,
    });
    std::fs::write(out_dir.join("latest.json"), serde_json::to_string_pretty(&report).unwrap() + "\n")
        .unwrap();
    let svg = out_dir.join("latest.svg");
    if let Err(e) = chart(&svg, &rows, [g_sn, g_so], &format!("{} - {}", today(), cpu_model())) {
        eprintln!("chart: {e}");
    }
    let md_path = out_dir.join("latest.md");
    eprintln!(
        "wrote {}, latest.json, latest.svg ({:.0} s)",
        md_path.strip_prefix(root()).unwrap_or(&md_path).display(),
        elapsed.as_secs_f64()
    );
}

const COLORS: [plotters::style::RGBColor; 4] = [
    plotters::style::RGBColor(0xd6, 0x5f, 0x0e), // sandbox
    plotters::style::RGBColor(0x1f, 0x77, 0xb4), // native tract
    plotters::style::RGBColor(0x55, 0x55, 0x55), // ONNX Runtime
    plotters::style::RGBColor(0xf2, 0xb7, 0x7f), // sandbox, wasm kernels only
];

/// Two panels: median latency per engine (log scale), and the sandbox's ratios (log scale,
/// with 1.0 and the 1.10 target marked).
fn chart(
    path: &PathBuf,
    rows: &[Row],
    geo: [Option<f64>; 2],
    subtitle: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};

    // x is in hundredths of a group (f64 coordinates cannot take custom key points and still
    // format labels in plotters 0.3): group i spans [100 i, 100 i + 100).
    let x = |group: usize, frac: f64| (group as f64 * 100.0 + frac * 100.0).round() as i32;

    let n = rows.len();
    let width = (140 + 115 * (n as u32 + 1)).max(800);
    let area = SVGBackend::new(path, (width, 980)).into_drawing_area();
    area.fill(&WHITE)?;
    let (head, body) = area.split_vertically(50);
    head.draw(&Text::new(
        format!("Warden sandbox vs native tract vs ONNX Runtime - {subtitle}"),
        (20, 18),
        ("sans-serif", 17).into_font(),
    ))?;
    let (top, bottom) = body.split_vertically(480);
    let label_of = |rows: &[Row], v: i32| -> String {
        let i = (v / 100) as usize;
        rows.get(i).map_or_else(|| "geo. mean".into(), |r| r.name.to_owned())
    };

    // Latency.
    let lat: Vec<f64> = rows.iter().flat_map(|r| r.engines.iter().filter_map(Samples::median)).collect();
    let lo = lat.iter().copied().fold(f64::INFINITY, f64::min).max(0.1) / 2.0;
    let hi = lat.iter().copied().fold(0.0, f64::max).max(1.0) * 2.5;
    let keys: Vec<i32> = (0..n).map(|i| x(i, 0.5)).collect();
    let mut c = ChartBuilder::on(&top)
        .caption("median latency per inference (log scale)", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(80)
        .build_cartesian_2d((0..x(n, 0.0)).with_key_points(keys), (lo..hi).log_scale())?;
    c.configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&|v| label_of(rows, *v))
        .y_label_formatter(&|v| fmt_us(Some(*v)))
        .y_desc("latency")
        .light_line_style(RGBColor(238, 238, 238))
        .draw()?;
    for (e, name) in ENGINES.iter().enumerate() {
        let color = COLORS[e];
        c.draw_series(rows.iter().enumerate().filter_map(|(i, r)| {
            let v = r.engines[e].median()?;
            let x0 = 0.1 + 0.2 * e as f64;
            Some(Rectangle::new([(x(i, x0), lo), (x(i, x0 + 0.18), v)], color.filled()))
        }))?
        .label(*name)
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;

    // Ratios, with the geometric mean as a last group.
    let ratio_sets = [(SANDBOX, NATIVE, "sandbox / native tract"), (SANDBOX, ORT, "sandbox / ONNX Runtime")];
    let values: Vec<[Option<f64>; 2]> = rows
        .iter()
        .map(|r| [r.ratio(SANDBOX, NATIVE), r.ratio(SANDBOX, ORT)])
        .chain(std::iter::once(geo))
        .collect();
    let all: Vec<f64> = values.iter().flatten().flatten().copied().collect();
    let rlo = all.iter().copied().fold(1.0, f64::min) / 1.6;
    let rhi = all.iter().copied().fold(1.1, f64::max) * 1.6;
    let groups = n + 1;
    let keys: Vec<i32> = (0..groups).map(|i| x(i, 0.5)).collect();
    let mut c = ChartBuilder::on(&bottom)
        .caption(
            "sandbox latency ratios (log scale; below 1 = sandbox faster; dashed = 1.10 target)",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(80)
        .build_cartesian_2d((0..x(groups, 0.0)).with_key_points(keys), (rlo..rhi).log_scale().base(2.0))?;
    c.configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&|v| label_of(rows, *v))
        .y_labels(8)
        .y_label_formatter(&|v| format!("{v}x"))
        .y_desc("ratio")
        .light_line_style(RGBColor(238, 238, 238))
        .draw()?;
    let palette = [COLORS[NATIVE], COLORS[ORT]];
    for (k, (_, _, name)) in ratio_sets.iter().enumerate() {
        let color = palette[k];
        let bars = values.iter().enumerate().filter_map(|(i, v)| {
            let r = v[k]?;
            let x0 = 0.15 + 0.36 * k as f64;
            Some((x(i, x0), x(i, x0 + 0.33), r))
        });
        c.draw_series(bars.clone().map(|(x0, x1, r)| {
            let style = if k == 0 { color.filled() } else { color.mix(0.75).filled() };
            Rectangle::new([(x0, rlo), (x1, r)], style)
        }))?
        .label(*name)
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        c.draw_series(bars.map(|(x0, x1, r)| {
            let style =
                TextStyle::from(("sans-serif", 12).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
            Text::new(format!("{r:.2}"), ((x0 + x1) / 2, r), style)
        }))?;
    }
    c.draw_series(std::iter::once(PathElement::new(
        vec![(0, 1.0), (x(groups, 0.0), 1.0)],
        BLACK.stroke_width(1),
    )))?;
    let dashes = (0..groups * 10)
        .map(|j| PathElement::new(vec![(j as i32 * 10, 1.1), (j as i32 * 10 + 6, 1.1)], RED.stroke_width(1)));
    c.draw_series(dashes)?;
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    area.present()?;
    Ok(())
}

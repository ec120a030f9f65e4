//! Soak: the real daemon on loopback under a bounded mix of good requests, bad requests and
//! requests to hostile models, from several clients at once, for about 75 s (`WARDEN_SOAK_SECS`
//! to change it; at most `MAX_REQUESTS` requests).
//!
//! - good requests (inferences, signed readings, metadata, health, index): every one 200 (in
//!   particular zero 5xx);
//! - bad requests (malformed, out of bounds, wrong shape or type, unknown model or version, body
//!   too large, forged, replayed, stale, revoked or unknown-device readings, bad binary header,
//!   unknown endpoint): every one the expected 4xx with a reason in `{"error": "..."}`;
//! - requests to hostile models that are loaded (a memory bomb, an endless computation): 500 or
//!   504 with `{"error"}`; a model that crashes tract at load is refused at start (404 after);
//! - the daemon's RSS (VmRSS from /proc/PID/status, sampled every 0.5 s) is flat after the
//!   15 s warm-up: the floor it returns to in the last third of the run is within
//!   `RSS_TOLERANCE_MIB` (32 MiB) of the floor in the first third, and its peak stays under that
//!   floor plus one capped memory bomb (64 MiB) per client and the tolerance;
//! - at the end the audit log verifies and holds exactly one record per audited request.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Serve, agent, root};
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{Value, json};
use warden::trust::{DeviceRegistry, PublisherKey, generate_keypair, sign_bundle};
use warden::wire::provision::{KeyBlob, key_id};
use warden::wire::reading::{
    MAX_MESSAGE_LEN, READING_FORMAT, Reading, SensorKind, Signature64, SignedReading, Unit, reading_message,
};

const DEFAULT_SECS: u64 = 75;
const WARM_UP: Duration = Duration::from_secs(15);
const MAX_REQUESTS: u64 = 60_000;
const CLIENTS: usize = 4;
/// How much the floor of the daemon's resident memory may rise between the first and the last
/// third of the run after the warm-up (allocator noise; a leak per request would exceed it).
const RSS_TOLERANCE_MIB: u64 = 32;
const MAX_BODY: usize = 64 << 10;

/// A signed reading of the motion model's shape, with an optional timestamp.
fn reading(blob: &KeyBlob, counter: u64, timestamp_ms: Option<u64>) -> Vec<u8> {
    let key = SigningKey::from_bytes(&blob.seed);
    let kid = key_id(key.verifying_key().as_bytes());
    let samples: Vec<i32> = (0..24).map(|i| if i % 3 == 2 { 1000 } else { (i % 5) - 2 }).collect();
    let reading = Reading {
        device_id: blob.device_id.clone(),
        counter,
        timestamp_ms,
        sensor: SensorKind::Accelerometer,
        unit: Unit::MilliG,
        scale: 1.0,
        channels: 3,
        samples: heapless::Vec::from_slice(&samples).unwrap(),
    };
    let mut buf = [0u8; MAX_MESSAGE_LEN];
    let msg = reading_message(READING_FORMAT, &kid, &reading, &mut buf).unwrap();
    let signed = SignedReading {
        format: READING_FORMAT,
        key_id: kid,
        reading,
        signature: Signature64(key.sign(msg).to_bytes()),
    };
    postcard::to_allocvec(&signed).unwrap()
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A repository the test signs itself: the three samples with their per-client rate limits and
/// query budgets removed (so good traffic is never throttled), and three hostile models.
fn signed_repo(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let keys = dir.join("keys");
    let trust = dir.join("trust");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::create_dir_all(&trust).unwrap();
    generate_keypair(&keys.join("soak")).unwrap();
    std::fs::copy(keys.join("soak.pub"), trust.join("soak.pub")).unwrap();
    let key = PublisherKey::load(&keys.join("soak.key")).unwrap();
    let repo = dir.join("repo");
    common::copy_dir(&root().join("models/repo"), &repo);
    for name in ["digits", "breast_cancer", "motion"] {
        let bundle = repo.join(name).join("1");
        let text = std::fs::read_to_string(bundle.join("manifest.toml")).unwrap();
        let text: String = text
            .lines()
            .filter(|l| !["requests_per_minute", "burst", "total_queries"].iter().any(|k| l.starts_with(k)))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(bundle.join("manifest.toml"), text).unwrap();
        sign_bundle(&bundle, &key).unwrap();
    }
    for (name, file, limits) in [
        ("bomb", "memory_bomb_run.onnx", "timeout_ms = 2000\nmax_memory_mib = 64"),
        ("spin", "slow_matmul_chain.onnx", "timeout_ms = 100\nmax_memory_mib = 128"),
        ("trapload", "tract_1177_matmul_scalar.onnx", "timeout_ms = 1000"),
    ] {
        let bundle = repo.join(name).join("1");
        std::fs::create_dir_all(&bundle).unwrap();
        std::fs::copy(root().join("tests/fixtures/hostile").join(file), bundle.join("model.onnx")).unwrap();
        let shape = if name == "trapload" { "[1, 4]" } else { "[1, 1]" };
        std::fs::write(
            bundle.join("manifest.toml"),
            format!(
                "format = 1\nname = \"{name}\"\nversion = 1\nmodel_sha256 = \"{}\"\n\n\
                 [[inputs]]\nname = \"x\"\ndtype = \"f32\"\nshape = {shape}\nmin = -10.0\nmax = 10.0\n\n\
                 [[outputs]]\nname = \"y\"\ndtype = \"f32\"\nshape = {shape}\n\n\
                 [output_policy]\nstep = 0.01\n\n[limits]\n{limits}\n",
                "0".repeat(64)
            ),
        )
        .unwrap();
        sign_bundle(&bundle, &key).unwrap();
    }
    (repo, trust)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Good,
    Bad,
    Hostile,
}

/// One request of the mix.
struct Request {
    class: Class,
    kind: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    /// The statuses it may be answered with.
    expect: &'static [u16],
    /// Appended to the audit log (inference and reading requests).
    audited: bool,
}

struct Mix {
    digits: Vec<f64>,
    cancer: Vec<u8>,
    devices: Vec<KeyBlob>,
    revoked: KeyBlob,
    stranger: KeyBlob,
}

impl Mix {
    fn digits_body(&self, k: u64, tweak: impl FnOnce(&mut Vec<f64>)) -> Vec<u8> {
        let mut k = k;
        let mut px: Vec<f64> = self
            .digits
            .iter()
            .map(|p| {
                let d = (k % 17) as f64;
                k /= 17;
                (p + d) % 17.0
            })
            .collect();
        tweak(&mut px);
        json!({"inputs": [{"name": "input", "shape": [1, px.len()], "datatype": "FP32", "data": px}]})
            .to_string()
            .into_bytes()
    }

    /// Request number `k` of client `client`, whose device's next fresh counter is `*counter`.
    fn request(&self, client: usize, k: u64, roll: u64, counter: &mut u64) -> Request {
        let infer = "/v2/models/digits/infer".to_string();
        let post = |class, kind, path: String, body: Vec<u8>, expect, audited| Request {
            class,
            kind,
            method: "POST",
            path,
            headers: Vec::new(),
            body,
            expect,
            audited,
        };
        let get = |kind, path: &str| Request {
            class: Class::Good,
            kind,
            method: "GET",
            path: path.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            expect: &[200],
            audited: false,
        };
        let device = &self.devices[client];
        let mut fresh = || {
            *counter += 1;
            *counter - 1
        };
        use Class::{Bad, Good, Hostile};
        match roll % 100 {
            // Good: 60 %.
            0..=24 => post(Good, "digits", infer, self.digits_body(k, |_| {}), &[200], true),
            25..=32 => post(
                Good,
                "digits v1",
                "/v2/models/digits/versions/1/infer".into(),
                self.digits_body(k, |_| {}),
                &[200],
                true,
            ),
            33..=40 => post(Good, "breast_cancer", "/v2/models/breast_cancer/infer".into(), self.cancer.clone(), &[200], true),
            41..=50 => {
                post(Good, "reading", "/v1/readings".into(), reading(device, fresh(), Some(now_ms())), &[200], true)
            }
            51..=53 => get("metadata", "/v2/models/digits"),
            54..=56 => get("health", "/v2/health/ready"),
            57..=59 => post(Good, "index", "/v2/repository/index".into(), Vec::new(), &[200], false),
            // Bad: 37 %.
            60..=62 => post(Bad, "not json", infer, format!("{{not json {k}").into_bytes(), &[400], true),
            63..=65 => post(Bad, "out of bounds", infer, self.digits_body(k, |px| px[(k % 64) as usize] = 99.0), &[400], true),
            66..=67 => post(Bad, "wrong shape", infer, self.digits_body(k, |px| px.truncate(32)), &[400], true),
            68 => post(
                Bad,
                "wrong datatype",
                infer,
                json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "INT64", "data": vec![1; 64]}]})
                    .to_string()
                    .into_bytes(),
                &[400],
                true,
            ),
            69 => post(
                Bad,
                "unknown input",
                infer,
                json!({"inputs": [{"name": "nope", "shape": [1, 64], "datatype": "FP32", "data": vec![1.0; 64]}]})
                    .to_string()
                    .into_bytes(),
                &[400],
                true,
            ),
            70..=71 => post(Bad, "unknown model", "/v2/models/nope/infer".into(), self.digits_body(k, |_| {}), &[404], true),
            72 => post(
                Bad,
                "unknown version",
                "/v2/models/digits/versions/99/infer".into(),
                self.digits_body(k, |_| {}),
                &[404],
                true,
            ),
            73 => post(
                Bad,
                "bad version",
                "/v2/models/digits/versions/x/infer".into(),
                self.digits_body(k, |_| {}),
                &[400],
                true,
            ),
            74 => post(Bad, "crashed at load", "/v2/models/trapload/infer".into(), self.digits_body(k, |_| {}), &[404], true),
            75 => post(Bad, "too large", infer, vec![b' '; MAX_BODY + 4096], &[413], true),
            76 => {
                let mut r = post(Bad, "bad binary header", infer, self.digits_body(k, |_| {}), &[400], true);
                r.headers.push(("inference-header-content-length", "abc".into()));
                r
            }
            77 => {
                let body = self.digits_body(k, |_| {});
                let mut r = post(Bad, "binary header too long", infer, body.clone(), &[400], true);
                r.headers.push(("inference-header-content-length", (body.len() + 10).to_string()));
                r
            }
            78..=79 => post(Bad, "replayed reading", "/v1/readings".into(), reading(device, 1, None), &[409], true),
            80..=81 => {
                let mut bytes = reading(device, fresh(), None);
                let last = bytes.len() - 1;
                bytes[last] ^= 0x01; // inside the signature
                post(Bad, "forged reading", "/v1/readings".into(), bytes, &[401], true)
            }
            82 => post(Bad, "stale reading", "/v1/readings".into(), reading(device, fresh(), Some(now_ms() - 3_600_000)), &[400], true),
            83 => post(Bad, "revoked device", "/v1/readings".into(), reading(&self.revoked, k + 1, None), &[403], true),
            84 => post(Bad, "unknown device", "/v1/readings".into(), reading(&self.stranger, k + 1, None), &[401], true),
            85..=86 => post(Bad, "garbage reading", "/v1/readings".into(), format!("garbage {k}").into_bytes(), &[400], true),
            87 => {
                let mut r = post(
                    Bad,
                    "bad base64 reading",
                    "/v1/readings".into(),
                    json!({"reading": "!!!"}).to_string().into_bytes(),
                    &[400],
                    true,
                );
                r.headers.push(("content-type", "application/json".into()));
                r
            }
            88..=89 => post(Bad, "readings for a model without them", "/v1/readings?model=digits".into(), reading(device, fresh(), None), &[400], true),
            90..=92 => Request { class: Bad, expect: &[404], ..get("unknown endpoint", "/v2/nothing/here") },
            93..=96 => {
                let mut r = post(Bad, "unknown model metadata", "/v2/models/nope/ready".into(), Vec::new(), &[404], false);
                r.method = "GET";
                r
            }
            // Hostile models: 3 %.
            97..=98 => post(
                Hostile,
                "memory bomb",
                "/v2/models/bomb/infer".into(),
                json!({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}).to_string().into_bytes(),
                &[500],
                true,
            ),
            _ => post(
                Hostile,
                "endless compute",
                "/v2/models/spin/infer".into(),
                json!({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [0.5]}]}).to_string().into_bytes(),
                &[504],
                true,
            ),
        }
    }
}

#[derive(Default)]
struct Tally {
    /// (class, kind, status) -> count.
    seen: BTreeMap<(Class, &'static str, u16), u64>,
    failures: Vec<String>,
    audited: u64,
}

#[test]
fn soak_mixed_traffic_keeps_good_requests_whole_and_memory_flat() {
    let secs = std::env::var("WARDEN_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_SECS);
    let duration = Duration::from_secs(secs);
    let dir = tempfile::tempdir().unwrap();
    let (repo, trust) = signed_repo(dir.path());
    let state = dir.path().join("state");
    let (devices, revoked, stranger) = {
        let mut registry = DeviceRegistry::open(&state).unwrap();
        let devices: Vec<KeyBlob> =
            (0..CLIENTS).map(|i| registry.provision(&format!("soak-{i}")).unwrap()).collect();
        let revoked = registry.provision("soak-revoked").unwrap();
        registry.revoke("soak-revoked").unwrap();
        let stranger =
            KeyBlob { device_id: heapless::String::try_from("soak-stranger").unwrap(), seed: [9; 32] };
        (devices, revoked, stranger)
    };
    let sample: Value =
        serde_json::from_slice(&std::fs::read(root().join("models/requests/digits.json")).unwrap()).unwrap();
    let mix = Arc::new(Mix {
        digits: sample["inputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect(),
        cancer: std::fs::read(root().join("models/requests/breast_cancer.json")).unwrap(),
        devices,
        revoked,
        stranger,
    });

    let daemon = Serve::new(&state, &repo, &trust)
        .args(["--max-body-bytes", &MAX_BODY.to_string(), "--device-readings-per-minute", "1000000"])
        .start();
    let pid = daemon.pid();
    let index: Value = agent()
        .post(&daemon.url("/v2/repository/index"))
        .send_empty()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    let names: Vec<&str> = index.as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    for name in ["digits", "breast_cancer", "motion", "bomb", "spin"] {
        assert!(names.contains(&name), "{name} not served: {index}");
    }
    assert!(!names.contains(&"trapload"), "a model that crashes tract at load is served: {index}");
    let startup = daemon.stderr_tail();
    assert!(startup.contains("trapload"), "the refused bundle is not reported:\n{startup}");

    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let rss: Arc<Mutex<Vec<(Duration, u64)>>> = Arc::default();
    let sampler = {
        let (stop, rss) = (stop.clone(), rss.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    rss.lock().unwrap().push((started.elapsed(), kib));
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (mix, stop, sent, tally, base) =
                (mix.clone(), stop.clone(), sent.clone(), tally.clone(), daemon.base.clone());
            std::thread::spawn(move || {
                let agent = agent();
                let mut rng = 0x5eed_0000_u64 + client as u64 * 0x9e37_79b9;
                let mut counter = 1u64;
                // Counter 1 of this client's device first, so "replayed reading" replays it.
                let first = mix.request(client, 0, 41, &mut counter);
                let mut r = agent.post(&format!("{base}{}", first.path)).send(&first.body[..]).unwrap();
                assert_eq!(r.status().as_u16(), 200, "{}", r.body_mut().read_to_string().unwrap());
                tally.lock().unwrap().audited += 1;
                while !stop.load(Ordering::Relaxed) {
                    let k = sent.fetch_add(1, Ordering::Relaxed);
                    if k >= MAX_REQUESTS {
                        break;
                    }
                    rng ^= rng >> 12;
                    rng ^= rng << 25;
                    rng ^= rng >> 27;
                    let roll = rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
                    let req = mix.request(client, k, roll, &mut counter);
                    let url = format!("{base}{}", req.path);
                    let result = if req.method == "GET" {
                        agent.get(&url).call()
                    } else {
                        let mut builder = agent.post(&url);
                        for (h, v) in &req.headers {
                            builder = builder.header(*h, v);
                        }
                        builder.send(&req.body[..])
                    };
                    let (status, text) = match result {
                        Ok(mut r) => (r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default()),
                        Err(e) => {
                            tally.lock().unwrap().failures.push(format!("{}: transport error {e}", req.kind));
                            continue;
                        }
                    };
                    let mut t = tally.lock().unwrap();
                    *t.seen.entry((req.class, req.kind, status)).or_default() += 1;
                    if req.audited {
                        t.audited += 1;
                    }
                    let problem = if !req.expect.contains(&status) {
                        Some(format!("expected {:?}", req.expect))
                    } else if req.class != Class::Good {
                        match serde_json::from_str::<Value>(&text) {
                            Ok(v) if v["error"].as_str().is_some_and(|e| !e.is_empty()) => None,
                            _ => Some("no {\"error\": reason} body".into()),
                        }
                    } else {
                        None
                    };
                    if let Some(problem) = problem
                        && t.failures.len() < 50
                    {
                        let cut = text.char_indices().nth(200).map_or(text.len(), |(i, _)| i);
                        t.failures.push(format!(
                            "{:?} {} -> {status} ({problem}): {}",
                            req.class,
                            req.kind,
                            &text[..cut]
                        ));
                    }
                }
            })
        })
        .collect();
    while started.elapsed() < duration && sent.load(Ordering::Relaxed) < MAX_REQUESTS {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    sampler.join().unwrap();
    let elapsed = started.elapsed();
    let stderr = daemon.stderr.clone();
    let status = daemon.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{}", common::read_tail(&stderr));

    let tally = std::mem::take(&mut *tally.lock().unwrap());
    let mut by_class: BTreeMap<Class, u64> = BTreeMap::new();
    for ((class, kind, status), n) in &tally.seen {
        *by_class.entry(*class).or_default() += n;
        eprintln!("{class:?} {kind}: {status} x{n}");
    }
    let total: u64 = by_class.values().sum();
    eprintln!(
        "{total} requests in {elapsed:?} ({:.0}/s): {by_class:?}",
        total as f64 / elapsed.as_secs_f64()
    );
    let good_5xx: u64 =
        tally.seen.iter().filter(|((c, _, s), _)| *c == Class::Good && *s >= 500).map(|(_, n)| n).sum();
    assert_eq!(good_5xx, 0, "good requests answered 5xx");
    assert!(tally.failures.is_empty(), "{} failures:\n{}", tally.failures.len(), tally.failures.join("\n"));
    for class in [Class::Good, Class::Bad, Class::Hostile] {
        assert!(by_class.get(&class).copied().unwrap_or(0) > 0, "no {class:?} request was sent");
    }

    // Memory: flat after the warm-up. A memory bomb grows its instance to the 64 MiB cap before
    // it is stopped and discarded, so RSS swings by up to CLIENTS x 64 MiB with the mix; a leak
    // raises the floor it swings back to. Compare the floors (lowest sample) of the first and the
    // last third after the warm-up, and bound the peak by the floor plus the bombs.
    let samples = rss.lock().unwrap().clone();
    let after: Vec<u64> = samples.iter().filter(|(t, _)| *t >= WARM_UP).map(|(_, kib)| *kib).collect();
    assert!(after.len() >= 6, "too few RSS samples after the warm-up: {samples:?}");
    let third = after.len() / 3;
    let early = *after[..third].iter().min().unwrap();
    let late = *after[after.len() - third..].iter().min().unwrap();
    let peak = *after.iter().max().unwrap();
    let all: Vec<u64> = samples.iter().map(|(_, kib)| kib >> 10).collect();
    eprintln!("RSS MiB every 0.5 s: {all:?}");
    eprintln!(
        "RSS after warm-up: floor {} MiB in the first third, {} MiB in the last; peak {} MiB",
        early >> 10,
        late >> 10,
        peak >> 10
    );
    assert!(
        late <= early + (RSS_TOLERANCE_MIB << 10),
        "RSS floor rose from {} MiB to {} MiB after the warm-up (tolerance {RSS_TOLERANCE_MIB} MiB)",
        early >> 10,
        late >> 10
    );
    let ceiling = early + ((CLIENTS as u64 * 64 + RSS_TOLERANCE_MIB) << 10);
    assert!(peak <= ceiling, "RSS peaked at {} MiB, above {} MiB", peak >> 10, ceiling >> 10);

    // Every audited request, and only those, is in a log that verifies.
    let verified = common::ok(common::warden(&state).args(["audit", "verify"]));
    assert!(
        verified.starts_with(&format!("OK: {} records", tally.audited)),
        "{verified} (expected {})",
        tally.audited
    );
}

/// Every error is `{"error": "..."}` (README), including a request with the wrong method on a
/// known path (axum's default 405 has an empty body; the router's `method_not_allowed_fallback`
/// answers it as JSON).
#[test]
fn wrong_method_is_answered_with_a_json_error() {
    let dir = tempfile::tempdir().unwrap();
    let daemon =
        Serve::new(&dir.path().join("state"), &root().join("models/repo"), &root().join("models/dev-trust"))
            .start();
    let a = agent();
    for (method, path) in [
        ("GET", "/v2/models/digits/infer"),
        ("DELETE", "/v2/models/digits"),
        ("PUT", "/v1/readings"),
        ("POST", "/v2/health/live"),
    ] {
        let url = daemon.url(path);
        let mut r = match method {
            "GET" => a.get(&url).call(),
            "DELETE" => a.delete(&url).call(),
            "PUT" => a.put(&url).send_empty(),
            _ => a.post(&url).send_empty(),
        }
        .unwrap();
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap();
        assert_eq!(status, 405, "{method} {path}: {text}");
        let v: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{method} {path}: 405 with body {text:?}"));
        assert!(v["error"].is_string(), "{method} {path}: {text}");
    }
}

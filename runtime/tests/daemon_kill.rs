//! The audit log under a crashing daemon: the real `warden serve` takes inference requests from
//! several clients (accepted and refused ones) and is killed with SIGKILL at random moments,
//! then restarted on the same state directory, several times. Afterwards the log verifies, and
//! every request that got a complete HTTP response is in it with the outcome the client saw
//! ("acknowledged only once durable") and, for an accepted one, the digest of the response
//! bytes. Then one flipped byte makes `warden audit verify` fail and name that record.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Serve, ok, root, warden};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const ROUNDS: u64 = 5;
const CLIENTS: u64 = 3;
/// Per client per round, so a round stays bounded even if the kill comes late.
const MAX_REQUESTS_PER_CLIENT: u64 = 3000;
/// Responses the round must have seen before the kill timer starts.
const RESPONSES_BEFORE_KILL_TIMER: u64 = 6;

/// xorshift64*: a deterministic PRNG.
fn random(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The sample digit with the base-17 digits of `k` added (mod 17) to its pixels: every `k` gives
/// a different valid image (all pixels stay in 0..=16), so every body has its own digest.
fn pixels(base: &[f64], k: u64) -> Vec<f64> {
    let mut k = k;
    base.iter()
        .map(|p| {
            let d = (k % 17) as f64;
            k /= 17;
            (p + d) % 17.0
        })
        .collect()
}

/// Request `k`: mostly valid inferences; every fifth one is refused in one of four ways. Returns
/// the path and the body.
fn request(base: &[f64], k: u64) -> (&'static str, Vec<u8>) {
    let px = pixels(base, k);
    let infer = "/v2/models/digits/infer";
    let body = |px: &[f64], shape: [u64; 2], dtype: &str| {
        json!({"inputs": [{"name": "input", "shape": shape, "datatype": dtype, "data": px}]}).to_string()
    };
    match (k % 5, k / 5 % 4) {
        (0, 0) => {
            // A value outside the signed bounds.
            let mut px = px;
            px[(k % 64) as usize] = 99.0;
            (infer, body(&px, [1, 64], "FP32").into_bytes())
        }
        (0, 1) => (infer, body(&px[..32], [1, 32], "FP32").into_bytes()), // wrong shape
        (0, 2) => (infer, format!("{{not json {k}").into_bytes()),        // not JSON
        (0, _) => ("/v2/models/nope/infer", body(&px, [1, 64], "FP32").into_bytes()), // unknown model
        _ => (infer, body(&px, [1, 64], "FP32").into_bytes()),
    }
}

#[derive(Default)]
struct Tally {
    /// (input digest, status, response body digest) of every request that got a complete
    /// response.
    responded: Vec<(String, u16, String)>,
    /// Requests that got no complete response (cut by the kill).
    cut: u64,
}

#[test]
fn kill_9_daemon_keeps_every_answered_request_in_the_audit_log() {
    let test_started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let repo = dir.path().join("repo");
    common::copy_dir(&root().join("models/repo"), &repo);
    let trust = root().join("models/dev-trust");
    let sample: Value =
        serde_json::from_slice(&std::fs::read(root().join("models/requests/digits.json")).unwrap()).unwrap();
    let base: Arc<Vec<f64>> = Arc::new(
        sample["inputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect(),
    );
    assert_eq!(base.len(), 64);

    let next = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut rng = 0x5eed_0fda_e30d_u64;
    for round in 0..ROUNDS {
        let daemon = Serve::new(&state, &repo, &trust).start();
        let base_url = daemon.base.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (base_url, stop, answered, next, tally, base) = (
                    base_url.clone(),
                    stop.clone(),
                    answered.clone(),
                    next.clone(),
                    tally.clone(),
                    base.clone(),
                );
                std::thread::spawn(move || {
                    let agent = common::agent(); // one keep-alive connection per client
                    for _ in 0..MAX_REQUESTS_PER_CLIENT {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let (path, body) = request(&base, k);
                        let digest = sha256_hex(&body);
                        let sent = agent
                            .post(&format!("{base_url}{path}"))
                            .header("content-type", "application/json")
                            .send(&body[..]);
                        let complete = sent.and_then(|mut r| {
                            let status = r.status().as_u16();
                            let bytes = r.body_mut().read_to_vec()?;
                            Ok((status, bytes))
                        });
                        match complete {
                            Ok((status, bytes)) => {
                                let text = String::from_utf8_lossy(&bytes);
                                if status == 200 {
                                    let v: Value = serde_json::from_str(&text).unwrap();
                                    assert_eq!(v["model_name"], "digits", "{text}");
                                } else {
                                    let v: Value = serde_json::from_str(&text).unwrap();
                                    assert!(v["error"].is_string(), "{status} {text}");
                                }
                                tally.lock().unwrap().responded.push((digest, status, sha256_hex(&bytes)));
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => {
                                // Only the kill may cut a request.
                                tally.lock().unwrap().cut += 1;
                                break;
                            }
                        }
                    }
                })
            })
            .collect();

        // Let traffic start, then kill at a random moment.
        let waiting = Instant::now();
        while answered.load(Ordering::Relaxed) < RESPONSES_BEFORE_KILL_TIMER {
            assert!(
                waiting.elapsed() < Duration::from_secs(30),
                "round {round}: no traffic answered within 30 s; stderr:\n{}",
                daemon.stderr_tail()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let delay = Duration::from_millis(50 + random(&mut rng) % 1200);
        std::thread::sleep(delay);
        let status = daemon.kill9();
        assert!(!status.success(), "round {round}: the daemon exited on its own: {status:?}");
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().unwrap();
        }
        let t = tally.lock().unwrap();
        eprintln!(
            "round {round}: killed after {delay:?}; {} answered so far in total, {} cut",
            t.responded.len(),
            t.cut
        );
    }

    // A last start recovers the log (truncating a torn last record, if any), serves, and stops
    // cleanly on SIGTERM.
    let daemon = Serve::new(&state, &repo, &trust).start();
    let request_body = std::fs::read(root().join("models/requests/digits.json")).unwrap();
    let mut r = common::agent()
        .post(&daemon.url("/v2/models/digits/infer"))
        .header("content-type", "application/json")
        .send(&request_body[..])
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let answer = r.body_mut().read_to_vec().unwrap();
    let mut tally = std::mem::take(&mut *tally.lock().unwrap());
    tally.responded.push((sha256_hex(&request_body), 200, sha256_hex(&answer)));
    let stderr = daemon.stderr.clone();
    let status = daemon.terminate(Duration::from_secs(10));
    assert!(status.success(), "{status:?}; stderr:\n{}", common::read_tail(&stderr));

    // The chain verifies.
    let log = state.join("audit.log");
    let verified = ok(warden(&state).args(["audit", "verify"]).arg(&log));
    assert!(verified.starts_with("OK: "), "{verified}");
    let text = std::fs::read_to_string(&log).unwrap();
    let records: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();

    // Every answered request is in the log, with the outcome its client saw (and, when it was
    // answered 200, the digest of the very bytes the client received).
    let mut by_input: HashMap<&str, Vec<(&str, Option<&str>)>> = HashMap::new();
    for r in &records {
        if let Some(digest) = r["input_sha256"].as_str() {
            by_input
                .entry(digest)
                .or_default()
                .push((r["outcome"].as_str().unwrap(), r["output_sha256"].as_str()));
        }
    }
    let mut missing = Vec::new();
    for (digest, status, answer) in &tally.responded {
        let expect = format!("{status} ");
        let found = by_input.get(digest.as_str()).is_some_and(|recorded| {
            recorded.iter().any(|(outcome, output)| {
                if *status == 200 {
                    *outcome == "ok" && *output == Some(answer.as_str())
                } else {
                    outcome.starts_with(&expect)
                }
            })
        });
        if !found {
            missing.push(format!("{digest} {status} (log has {:?})", by_input.get(digest.as_str())));
        }
    }
    assert!(missing.is_empty(), "{} answered requests missing from the log: {missing:#?}", missing.len());
    // Each body was sent once, so no digest may appear twice.
    assert!(by_input.values().all(|o| o.len() == 1), "a request recorded twice");
    // Refusals were exercised, as well as acceptances.
    let statuses: std::collections::BTreeSet<u16> = tally.responded.iter().map(|(_, s, _)| *s).collect();
    assert!(statuses.contains(&200) && statuses.contains(&400), "{statuses:?}");
    assert!(records.len() >= tally.responded.len());
    eprintln!(
        "{} records, {} answered requests all found, {} cut by kills, statuses {statuses:?}",
        records.len(),
        tally.responded.len(),
        tally.cut
    );

    // One flipped byte in the middle is found, and the record named.
    let mut bytes = text.into_bytes();
    let mut at = bytes.len() / 2;
    if bytes[at] == b'\n' {
        at -= 1;
    }
    let line = bytes[..at].iter().filter(|b| **b == b'\n').count() + 1;
    let seq = records[line - 1]["seq"].as_u64().unwrap();
    assert_eq!(seq, line as u64);
    bytes[at] ^= 0x01;
    std::fs::write(&log, &bytes).unwrap();
    let out = warden(&state).args(["audit", "verify"]).arg(&log).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a tampered log verified: {}", String::from_utf8_lossy(&out.stdout));
    assert!(err.contains(&format!("bad record seq {seq} (line {line})")), "{err}");

    eprintln!("took {:?}", test_started.elapsed());
}

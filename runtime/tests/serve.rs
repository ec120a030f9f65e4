//! The daemon end to end: the real `warden serve` on a loopback port, driven by a real HTTP
//! client. KServe v2 metadata and inference (equal to `warden infer`), typed 4xx errors, the body
//! cap, a hostile model answered as an error while the others keep serving, signed readings
//! (devices provisioned or revoked while it runs included), and a clean shutdown on SIGTERM.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Serve, agent, copy_dir, ok, root, signed_reading, warden};
use serde_json::{Value, json};
use warden::wire::provision::KeyBlob;

fn get(base: &str, path: &str) -> (u16, Value) {
    let mut r = agent().get(&format!("{base}{path}")).call().unwrap();
    let status = r.status().as_u16();
    (status, r.body_mut().read_json().unwrap_or(Value::Null))
}

fn post(base: &str, path: &str, body: &[u8], content_type: &str) -> (u16, Value) {
    let mut r =
        agent().post(&format!("{base}{path}")).header("content-type", content_type).send(body).unwrap();
    let status = r.status().as_u16();
    (status, r.body_mut().read_json().unwrap_or(Value::Null))
}

#[test]
fn daemon_serves_kserve_v2_and_signed_readings() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let repo = dir.path().join("repo");
    copy_dir(&root().join("models/repo"), &repo);

    // A second publisher signs a hostile model; the trust directory holds both keys.
    let trust = dir.path().join("trust");
    copy_dir(&root().join("models/dev-trust"), &trust);
    let key = dir.path().join("mallory");
    ok(warden(&state).args(["keygen", "--out"]).arg(&key));
    std::fs::copy(key.with_extension("pub"), trust.join("mallory.pub")).unwrap();
    let bomb = repo.join("bomb/1");
    ok(warden(&state)
        .args(["model", "init", "--name", "bomb", "--version", "1", "--model"])
        .arg(root().join("tests/fixtures/hostile/memory_bomb_run.onnx"))
        .arg("--out")
        .arg(&bomb));
    ok(warden(&state)
        .args(["model", "sign", "--key"])
        .arg(key.with_extension("key"))
        .arg("--model-dir")
        .arg(&bomb));

    // A device, registered before the daemon starts.
    let blob_text =
        ok(warden(&state).args(["device", "provision", "--id", "board-9", "--out"]).arg(dir.path()));
    assert!(blob_text.contains("provisioned board-9"));
    let blob = KeyBlob::parse(&std::fs::read(dir.path().join("board-9.keyblob")).unwrap()).unwrap();

    let daemon = Serve::new(&state, &repo, &trust).args(["--max-body-bytes", "16384"]).start();
    let base = daemon.base.as_str();

    assert_eq!(get(base, "/v2/health/live"), (200, json!({"live": true})));
    assert_eq!(get(base, "/v2/health/ready").0, 200);
    let (status, meta) = get(base, "/v2/models/digits");
    assert_eq!(status, 200);
    assert_eq!(meta["platform"], "onnx_onnxv1");
    assert_eq!(meta["versions"], json!(["1"]));
    assert_eq!(meta["inputs"], json!([{"name": "input", "datatype": "FP32", "shape": [1, 64]}]));
    assert_eq!(meta["outputs"][1], json!({"name": "probabilities", "datatype": "FP32", "shape": [1, 10]}));
    assert_eq!(get(base, "/v2/models/digits/versions/1").1, meta);
    assert_eq!(get(base, "/v2/models/digits/ready").0, 200);
    let (status, err) = get(base, "/v2/models/nope");
    assert_eq!(status, 404);
    assert!(err["error"].as_str().unwrap().contains("unknown model"));
    assert_eq!(get(base, "/v2/models/digits/versions/9/ready").0, 404);

    let (status, index) = post(base, "/v2/repository/index", b"{}", "application/json");
    assert_eq!(status, 200);
    let names: Vec<&str> = index.as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["bomb", "breast_cancer", "digits", "motion"]);

    // Inference equals the CLI's, for the same bundle and request.
    let request = std::fs::read(root().join("models/requests/digits.json")).unwrap();
    let (status, served) = post(base, "/v2/models/digits/infer", &request, "application/json");
    assert_eq!(status, 200, "{served}");
    let cli: Value = serde_json::from_str(&ok(warden(&dir.path().join("cli-state"))
        .args(["infer", "--trust"])
        .arg(root().join("models/dev-trust"))
        .arg(root().join("models/repo/digits/1"))
        .arg("--input")
        .arg(root().join("models/requests/digits.json"))))
    .unwrap();
    assert_eq!(served, cli);
    let (status, v1) = post(base, "/v2/models/digits/versions/1/infer", &request, "application/json");
    assert_eq!((status, &v1), (200, &served));

    // Typed refusals, as {"error": ...}.
    let bad =
        |body: Value| post(base, "/v2/models/digits/infer", body.to_string().as_bytes(), "application/json");
    let (status, err) = bad(
        json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "INT64", "data": vec![1; 64]}]}),
    );
    assert_eq!(status, 400);
    assert!(err["error"].as_str().unwrap().contains("dtype"), "{err}");
    let (status, err) = bad(
        json!({"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": vec![1.0; 32]}]}),
    );
    assert_eq!(status, 400);
    assert!(err["error"].as_str().unwrap().contains("shape"), "{err}");
    let (status, err) = bad(
        json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": vec![99.0; 64]}]}),
    );
    assert_eq!(status, 400);
    assert!(err["error"].as_str().unwrap().contains("outside"), "{err}");
    assert_eq!(post(base, "/v2/models/digits/infer", b"{not json", "application/json").0, 400);
    let huge = json!({"inputs": [{"name": "input", "shape": [1, 4096], "datatype": "FP32", "data": vec![1.0; 4096]}]});
    let (status, err) =
        post(base, "/v2/models/digits/infer", huge.to_string().as_bytes(), "application/json");
    assert_eq!(status, 413, "{err}");
    assert!(err["error"].is_string());

    // The hostile model is stopped at its memory cap; the others keep serving.
    let x = json!({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]});
    let (status, err) = post(base, "/v2/models/bomb/infer", x.to_string().as_bytes(), "application/json");
    assert_eq!(status, 500, "{err}");
    assert!(err["error"].as_str().unwrap().contains("memory cap"), "{err}");
    assert_eq!(post(base, "/v2/models/digits/infer", &request, "application/json"), (200, served.clone()));

    // Signed readings: raw postcard, then JSON with base64; a replay is refused.
    let (status, out) = post(base, "/v1/readings", &signed_reading(&blob, 1), "application/octet-stream");
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["model_name"], "motion");
    assert_eq!(out["id"], "board-9:1");
    let (status, err) = post(base, "/v1/readings", &signed_reading(&blob, 1), "application/octet-stream");
    assert_eq!(status, 409, "{err}");
    assert!(err["error"].as_str().unwrap().contains("replay"));
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(signed_reading(&blob, 2));
    let (status, _) = post(
        base,
        "/v1/readings?model=motion",
        json!({"reading": b64}).to_string().as_bytes(),
        "application/json",
    );
    assert_eq!(status, 200);
    let mut forged = signed_reading(&blob, 3);
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert_eq!(post(base, "/v1/readings", &forged, "application/octet-stream").0, 401);

    // SIGTERM: drains and exits cleanly.
    let status = daemon.terminate(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");

    // Every inference and reading request, accepted or refused, is in the hash-chained log.
    let log = state.join("audit.log");
    let verified = ok(warden(&state).args(["audit", "verify"]).arg(&log));
    assert!(verified.starts_with("OK: 13 records"), "{verified}");
    let records: Vec<Value> =
        std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let outcomes: Vec<&str> = records.iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes.iter().filter(|o| **o == "ok").count(), 5, "{outcomes:?}");
    assert!(outcomes.iter().any(|o| o.starts_with("413 ")), "{outcomes:?}");
    assert!(outcomes.iter().any(|o| o.starts_with("409 ") && o.contains("replay")), "{outcomes:?}");
    assert!(outcomes.iter().any(|o| o.starts_with("500 ") && o.contains("memory cap")), "{outcomes:?}");
    let reading = records.iter().find(|r| r["device"] == "board-9").unwrap();
    assert_eq!(reading["model"], "motion");
    assert_eq!(reading["input_sha256"].as_str().unwrap().len(), 64);
}

/// `warden device provision` and `revoke` reach a running daemon: a device registered after the
/// start is accepted, and a revoked one refused, within a second or so, with no restart.
#[test]
fn devices_provisioned_or_revoked_while_the_daemon_runs_take_effect() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (repo, trust) = (dir.path().join("repo"), dir.path().join("trust"));
    copy_dir(&root().join("models/repo/motion"), &repo.join("motion"));
    copy_dir(&root().join("models/dev-trust"), &trust);
    let provision = |id: &str| {
        ok(warden(&state).args(["device", "provision", "--id", id, "--out"]).arg(dir.path()));
        KeyBlob::parse(&std::fs::read(dir.path().join(format!("{id}.keyblob"))).unwrap()).unwrap()
    };
    let send = |base: &str, blob: &KeyBlob, counter: u64| {
        post(base, "/v1/readings", &signed_reading(blob, counter), "application/octet-stream")
    };
    // Sends `blob`'s readings, a new counter each time, until one is answered `status`; returns
    // the next counter.
    let until = |base: &str, blob: &KeyBlob, mut counter: u64, status: u16| {
        let started = std::time::Instant::now();
        loop {
            let (got, body) = send(base, blob, counter);
            counter += 1;
            if got == status {
                return (counter, body);
            }
            assert!(started.elapsed() < Duration::from_secs(10), "still {got} {body}, not {status}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let first = provision("board-1");
    let daemon = Serve::new(&state, &repo, &trust).start();
    let base = daemon.base.as_str();
    assert_eq!(send(base, &first, 1).0, 200);

    let second = provision("board-2");
    let (status, err) = send(base, &second, 1);
    if status != 200 {
        // Not seen yet: refused as unknown, and the counter is not used up.
        assert_eq!(status, 401, "{err}");
        assert!(err["error"].as_str().unwrap().contains("unknown device"), "{err}");
        until(base, &second, 1, 200);
    }

    ok(warden(&state).args(["device", "revoke", "board-1"]));
    let (_, err) = until(base, &first, 2, 403);
    assert!(err["error"].as_str().unwrap().contains("revoked"), "{err}");
    assert_eq!(send(base, &second, 100).0, 200, "the other device is unaffected");
    assert!(daemon.stderr_tail().contains("device registry changed; reloaded"), "{}", daemon.stderr_tail());
    assert!(daemon.terminate(Duration::from_secs(10)).success());
}

/// The daemon writes device counters without a sync and makes each durable in the reading's
/// audit record (one fsync per reading instead of two). So when the counter log loses what was
/// not synced (a power cut; here the worst case, the whole file), every reading the daemon
/// answered is still a replay after a restart: the counters come back from the audit log.
#[test]
fn answered_readings_stay_replays_when_the_counter_log_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (repo, trust) = (dir.path().join("repo"), dir.path().join("trust"));
    copy_dir(&root().join("models/repo"), &repo);
    copy_dir(&root().join("models/dev-trust"), &trust);
    let mut blobs = Vec::new();
    for id in ["board-1", "board-2"] {
        ok(warden(&state).args(["device", "provision", "--id", id, "--out"]).arg(dir.path()));
        blobs
            .push(KeyBlob::parse(&std::fs::read(dir.path().join(format!("{id}.keyblob"))).unwrap()).unwrap());
    }
    let send = |base: &str, blob: &KeyBlob, counter: u64| {
        post(base, "/v1/readings", &signed_reading(blob, counter), "application/octet-stream")
    };

    let daemon = Serve::new(&state, &repo, &trust).start();
    for counter in 1..=5 {
        assert_eq!(send(&daemon.base, &blobs[0], counter).0, 200);
    }
    assert_eq!(send(&daemon.base, &blobs[1], 40).0, 200);
    assert_eq!(send(&daemon.base, &blobs[1], 40).0, 409, "a replay while running");
    assert!(daemon.kill9().code().is_none());

    let counters = state.join("device-counters.log");
    assert!(std::fs::read_to_string(&counters).unwrap().contains("board-1"));
    std::fs::remove_file(&counters).unwrap();

    let daemon = Serve::new(&state, &repo, &trust).start();
    for counter in 1..=5 {
        let (status, err) = send(&daemon.base, &blobs[0], counter);
        assert_eq!(status, 409, "board-1 counter {counter} after the restart: {err}");
        assert!(err["error"].as_str().unwrap().contains("replay"), "{err}");
    }
    assert_eq!(send(&daemon.base, &blobs[1], 40).0, 409);
    assert_eq!(send(&daemon.base, &blobs[1], 39).0, 409);
    assert_eq!(send(&daemon.base, &blobs[0], 6).0, 200, "a fresh counter is still accepted");
    assert_eq!(send(&daemon.base, &blobs[1], 41).0, 200);
    let status = daemon.terminate(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
}

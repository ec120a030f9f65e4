//! The daemon's access control and operations, end to end on a real `warden serve`: bearer
//! tokens (401 without or with a wrong token, 403 outside the token's scope, revocation on a
//! running daemon), the manifest's rate limit (429 + Retry-After) and query budget (kept across a
//! restart), NaN refused, Triton binary tensor data, Prometheus metrics, TLS from `warden cert
//! dev` with a config file, SIGHUP reload (a bad bundle refused while the old one keeps serving;
//! a revoked publisher key's models unloaded),
//! and refusing plain HTTP, or no tokens, on a network address (unless dangerously told to; the
//! first token created then turns tokens on in the running daemon).
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Daemon, Serve, agent, copy_dir, ok, root, warden};
use serde_json::{Value, json};

const DIGITS_LIMITS: &str = "[limits]
requests_per_minute = 600
burst = 60
total_queries = 100000";

/// Copies the digits bundle as `name` version `version` with other `[limits]`, signed by `key`.
fn limited_digits(state: &Path, repo: &Path, key: &Path, name: &str, version: u64, limits: &str) {
    let dir = repo.join(name).join(version.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    let src = root().join("models/repo/digits/1");
    std::fs::copy(src.join("model.onnx"), dir.join("model.onnx")).unwrap();
    let manifest = std::fs::read_to_string(src.join("manifest.toml")).unwrap();
    assert!(manifest.contains(DIGITS_LIMITS), "the sample manifest changed: update this test");
    let manifest = manifest
        .replace("name = \"digits\"", &format!("name = \"{name}\""))
        .replace("version = 1", &format!("version = {version}"))
        .replace(DIGITS_LIMITS, limits);
    std::fs::write(dir.join("manifest.toml"), manifest).unwrap();
    ok(warden(state).args(["model", "sign", "--key"]).arg(key).arg("--model-dir").arg(&dir));
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_string()
    }
}

fn call(
    daemon: &Daemon,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
    extra: &[(&str, &str)],
) -> Reply {
    let url = daemon.url(path);
    let mut response = match method {
        "GET" => {
            let mut r = agent().get(&url);
            if let Some(t) = token {
                r = r.header("authorization", &format!("Bearer {t}"));
            }
            r.call().unwrap()
        }
        _ => {
            let mut r = agent().post(&url);
            if !extra.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
                r = r.header("content-type", "application/json");
            }
            if let Some(t) = token {
                r = r.header("authorization", &format!("Bearer {t}"));
            }
            for (k, v) in extra {
                r = r.header(*k, *v);
            }
            r.send(body).unwrap()
        }
    };
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    let body = response.body_mut().read_to_vec().unwrap_or_default();
    Reply { status, headers, body }
}

fn digits_request() -> Vec<u8> {
    std::fs::read(root().join("models/requests/digits.json")).unwrap()
}

fn infer(daemon: &Daemon, model: &str, token: Option<&str>) -> Reply {
    call(daemon, "POST", &format!("/v2/models/{model}/infer"), token, &digits_request(), &[])
}

fn token(state: &Path, name: &str, models: &str) -> String {
    ok(warden(state).args(["token", "create", "--name", name, "--models", models])).trim().to_string()
}

#[test]
fn tokens_scopes_limits_budgets_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let repo = dir.path().join("repo");
    copy_dir(&root().join("models/repo"), &repo);
    let trust = dir.path().join("trust");
    copy_dir(&root().join("models/dev-trust"), &trust);
    let key = dir.path().join("acme");
    ok(warden(&state).args(["keygen", "--out"]).arg(&key));
    std::fs::copy(key.with_extension("pub"), trust.join("acme.pub")).unwrap();
    let key = key.with_extension("key");
    limited_digits(&state, &repo, &key, "rated", 1, "[limits]\nrequests_per_minute = 6\nburst = 3");
    limited_digits(&state, &repo, &key, "budgeted", 1, "[limits]\ntotal_queries = 4");

    let alice = token(&state, "alice", "digits,rated,budgeted");
    let bob = token(&state, "bob", "breast_cancer");
    assert!(alice.starts_with("wdn_") && alice.len() > 80, "{alice}");
    let listed = ok(warden(&state).args(["token", "list"]));
    assert!(listed.contains("alice") && listed.contains("digits,rated,budgeted"), "{listed}");
    assert!(!listed.contains(&alice[21..]), "token list shows no secrets");

    let daemon = Serve::new(&state, &repo, &trust).start();

    // Health needs no token; model calls do.
    assert_eq!(call(&daemon, "GET", "/v2/health/ready", None, b"", &[]).status, 200);
    let r = infer(&daemon, "digits", None);
    assert_eq!(r.status, 401, "{}", r.error());
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    let wrong = format!("{}0{}", &alice[..30], &alice[31..]);
    let wrong = if wrong == alice { format!("{}1{}", &alice[..30], &alice[31..]) } else { wrong };
    assert_eq!(infer(&daemon, "digits", Some(&wrong)).status, 401);
    let r = infer(&daemon, "digits", Some(&bob));
    assert_eq!(r.status, 403, "{}", r.error());
    assert!(r.error().contains("may not call"), "{}", r.error());
    assert_eq!(call(&daemon, "GET", "/v2/models/digits", Some(&bob), b"", &[]).status, 403);
    let index = call(&daemon, "POST", "/v2/repository/index", Some(&bob), b"{}", &[]).json();
    assert_eq!(index, json!([{"name": "breast_cancer", "version": "1", "state": "READY"}]));
    let ok_reply = infer(&daemon, "digits", Some(&alice));
    assert_eq!(ok_reply.status, 200, "{}", ok_reply.error());

    // The manifest's rate: a burst of 3, then 429 with Retry-After.
    for i in 0..3 {
        assert_eq!(infer(&daemon, "rated", Some(&alice)).status, 200, "request {i} of the burst");
    }
    let r = infer(&daemon, "rated", Some(&alice));
    assert_eq!(r.status, 429, "{}", r.error());
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=10).contains(&retry), "Retry-After {retry}");
    // Other models and clients are not affected.
    assert_eq!(infer(&daemon, "digits", Some(&alice)).status, 200);

    // The manifest's total query budget: 4 answered queries, then 429.
    for _ in 0..4 {
        assert_eq!(infer(&daemon, "budgeted", Some(&alice)).status, 200);
    }
    let r = infer(&daemon, "budgeted", Some(&alice));
    assert_eq!(r.status, 429);
    assert!(r.error().contains("budget"), "{}", r.error());

    // Refused inputs: NaN in binary tensor data, a wrong dtype, an oversized body.
    let mut nan = vec![0u8; 64 * 4];
    nan[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    let header = json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                    "parameters": {"binary_data_size": 256}}]})
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(&nan);
    let len = header.len().to_string();
    let r = call(
        &daemon,
        "POST",
        "/v2/models/digits/infer",
        Some(&alice),
        &body,
        &[("inference-header-content-length", &len)],
    );
    assert_eq!(r.status, 400, "{}", r.error());
    assert!(r.error().contains("finite") || r.error().contains("NaN"), "{}", r.error());

    // Binary tensor data both ways gives the same answer as JSON.
    let pixels: Vec<f32> = serde_json::from_slice::<Value>(&digits_request()).unwrap()["inputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let header = json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                    "parameters": {"binary_data_size": 256}}],
                        "outputs": [{"name": "probabilities", "parameters": {"binary_data": true}},
                                    {"name": "label"}]})
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend(pixels.iter().flat_map(|p| p.to_le_bytes()));
    let len = header.len().to_string();
    let r = call(
        &daemon,
        "POST",
        "/v2/models/digits/infer",
        Some(&alice),
        &body,
        &[("inference-header-content-length", &len)],
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let json_len: usize = r.header("inference-header-content-length").unwrap().parse().unwrap();
    let head: Value = serde_json::from_slice(&r.body[..json_len]).unwrap();
    let expected = ok_reply.json();
    let probs_out =
        head["outputs"].as_array().unwrap().iter().find(|o| o["name"] == "probabilities").unwrap();
    assert_eq!(probs_out["parameters"]["binary_data_size"], 40);
    let probs: Vec<f64> = r.body[json_len..]
        .chunks_exact(4)
        .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap())))
        .collect();
    let want: Vec<f64> = expected["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "probabilities")
        .unwrap()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(probs.len(), 10);
    for (got, want) in probs.iter().zip(&want) {
        assert!((got - want).abs() < 1e-6, "{probs:?} vs {want:?}");
    }

    // Metrics.
    assert_eq!(call(&daemon, "GET", "/metrics", None, b"", &[]).status, 401);
    let metrics = String::from_utf8(call(&daemon, "GET", "/metrics", Some(&alice), b"", &[]).body).unwrap();
    let value = |needle: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("no {needle} in\n{metrics}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(value("warden_requests_total{endpoint=\"infer\",model=\"rated\",code=\"200\"}"), 3.0);
    assert_eq!(value("warden_rate_limited_total"), 2.0);
    assert_eq!(value("warden_refusals_total{reason=\"unauthenticated\"}"), 2.0);
    assert_eq!(value("warden_refusals_total{reason=\"forbidden\"}"), 1.0);
    assert!(value("warden_request_duration_seconds_count{endpoint=\"infer\",model=\"digits\"}") >= 3.0);
    assert!(metrics.contains("warden_queue_depth{model=\"digits\"}"), "{metrics}");
    // Counts kept by the runtime and the audit log, brought up to date at the scrape: each of
    // rated's three answered requests ran once in the sandbox (the 429s never reach it).
    assert_eq!(value("warden_model_runs_total{model=\"rated\""), 3.0);
    assert!(value("warden_model_runs_total{model=\"digits\"") >= 3.0);
    let in_a_row = value("warden_model_runs_in_a_row_total{model=\"rated\"");
    assert!((0.0..=3.0).contains(&in_a_row), "{in_a_row}");
    let (records, syncs) = (value("warden_audit_records_total"), value("warden_audit_syncs_total"));
    assert!(syncs >= 1.0 && syncs <= records, "{syncs} audit syncs for {records} records");

    // Revocation reaches the running daemon.
    ok(warden(&state).args(["token", "revoke", "bob"]));
    let started = Instant::now();
    loop {
        let status = call(&daemon, "POST", "/v2/models/breast_cancer/infer", Some(&bob), b"{}", &[]).status;
        if status == 401 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "revoked token still accepted ({status})");
        std::thread::sleep(Duration::from_millis(200));
    }

    // The budget is charged from the audit log, so a restart does not reset it.
    assert!(daemon.terminate(Duration::from_secs(10)).success());
    let daemon = Serve::new(&state, &repo, &trust).start();
    let r = infer(&daemon, "budgeted", Some(&alice));
    assert_eq!(r.status, 429, "{}", r.error());
    assert_eq!(infer(&daemon, "digits", Some(&alice)).status, 200);
    drop(daemon);
    let verified = ok(warden(&state).args(["audit", "verify"]));
    assert!(verified.starts_with("OK"), "{verified}");
    let log = std::fs::read_to_string(state.join("audit.log")).unwrap();
    assert!(log.lines().any(|l| l.contains("\"client\":\"alice\"") && l.contains("\"outcome\":\"ok\"")));
    assert!(log.lines().any(|l| l.contains("\"outcome\":\"401 ")));
    assert!(log.lines().any(|l| l.contains("\"client\":\"bob\"") && l.contains("\"outcome\":\"403 ")));
}

type ClientIdentity = (Vec<rustls::pki_types::CertificateDer<'static>>, Vec<u8>);

/// A minimal HTTPS GET with rustls, trusting only `ca_pem`.
fn https_get(addr: &str, path: &str, ca_pem: &Path) -> Result<String, String> {
    https_get_as(addr, path, ca_pem, None)
}

/// [`https_get`] presenting a client certificate chain and its PKCS#8 key.
fn https_get_as(
    addr: &str,
    path: &str,
    ca_pem: &Path,
    identity: Option<&ClientIdentity>,
) -> Result<String, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
    let config = match identity {
        Some((chain, key)) => config
            .with_client_auth_cert(chain.clone(), rustls::pki_types::PrivateKeyDer::Pkcs8(key.clone().into()))
            .unwrap(),
        None => config.with_no_client_auth(),
    };
    let conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap()).unwrap();
    let tcp = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(tls, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    tls.read_to_string(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

#[test]
fn tls_config_file_and_sighup_reload() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    copy_dir(&root().join("models/repo/digits"), &repo.join("digits"));
    copy_dir(&root().join("models/repo/breast_cancer"), &repo.join("breast_cancer"));
    let trust = dir.path().join("trust");
    copy_dir(&root().join("models/dev-trust"), &trust);
    let key = dir.path().join("acme");
    ok(warden(&state).args(["keygen", "--out"]).arg(&key));
    std::fs::copy(key.with_extension("pub"), trust.join("acme.pub")).unwrap();
    let key = key.with_extension("key");

    let certs = dir.path().join("tls");
    let made = ok(warden(&state).args(["cert", "dev", "--out"]).arg(&certs));
    assert!(made.contains("cert.pem"), "{made}");
    let config = dir.path().join("warden.toml");
    std::fs::write(&config, "tls_cert = \"tls/cert.pem\"\ntls_key = \"tls/key.pem\"\nqueue_depth = 4\n")
        .unwrap();
    let daemon = Serve::new(&state, &repo, &trust).arg("--config").arg(&config).start();
    assert!(daemon.first_line.contains("https://"), "{}", daemon.first_line);

    let answer = https_get(&daemon.addr, "/v2/health/ready", &certs.join("cert.pem")).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Plain HTTP to the TLS port gets no HTTP answer; the daemon keeps serving.
    let mut plain = std::net::TcpStream::connect(&daemon.addr).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    plain.write_all(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut junk = Vec::new();
    let _ = plain.read_to_end(&mut junk);
    assert!(!junk.starts_with(b"HTTP/1.1 200"));
    // A client that does not trust the certificate is refused by its own side.
    let other = dir.path().join("other");
    ok(warden(&state).args(["cert", "dev", "--out"]).arg(&other));
    assert!(https_get(&daemon.addr, "/v2/health/ready", &other.join("cert.pem")).is_err());
    let index = |d: &Daemon| -> Vec<String> {
        let answer = https_get(&d.addr, "/v2/models/digits", &certs.join("cert.pem")).unwrap();
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        v["versions"]
            .as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    assert_eq!(index(&daemon), ["1"]);

    // SIGHUP: a new good version loads; a tampered one is refused; a served bundle replaced by a
    // bad one keeps serving as it was.
    limited_digits(&state, &repo, &key, "digits", 2, DIGITS_LIMITS);
    let bad = repo.join("breast_cancer/2");
    copy_dir(&repo.join("breast_cancer/1"), &bad);
    let manifest =
        std::fs::read_to_string(bad.join("manifest.toml")).unwrap().replace("version = 1", "version = 2");
    std::fs::write(bad.join("manifest.toml"), manifest).unwrap();
    ok(warden(&state).args(["model", "sign", "--key"]).arg(&key).arg("--model-dir").arg(&bad));
    let mut model = std::fs::read(bad.join("model.onnx")).unwrap();
    let mid = model.len() / 2;
    model[mid] ^= 0x40;
    std::fs::write(bad.join("model.onnx"), model).unwrap();
    let mut sig = std::fs::read(repo.join("breast_cancer/1/manifest.sig")).unwrap();
    let last = sig.len() - 1;
    sig[last] ^= 1;
    std::fs::write(repo.join("breast_cancer/1/manifest.sig"), sig).unwrap();

    assert!(Command::new("kill").args(["-HUP", &daemon.pid().to_string()]).status().unwrap().success());
    let started = Instant::now();
    while index(&daemon) != ["1", "2"] {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "reload did not load digits/2: {}",
            daemon.stderr_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let started = Instant::now();
    loop {
        let log = daemon.stderr_tail();
        if log.contains("breast_cancer/2") && log.contains("breast_cancer/1") && log.contains("reload done") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no refusals reported: {log}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let answer = https_get(&daemon.addr, "/v2/models/breast_cancer", &certs.join("cert.pem")).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("\"versions\":[\"1\"]"), "{answer}");
    assert!(daemon.terminate(Duration::from_secs(10)).success());
}

#[test]
fn plain_http_and_no_tokens_are_refused_on_network_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (repo, trust) = (root().join("models/repo"), root().join("models/dev-trust"));
    // The daemon's stderr once it has exited, as it must; one that serves instead fails the test.
    let refusal = |extra: &[&str]| {
        let stderr = dir.path().join("refused.stderr");
        let mut child = warden(&state)
            .args(["serve", "--listen", "0.0.0.0:0", "--repo"])
            .arg(&repo)
            .arg("--trust")
            .arg(&trust)
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > Duration::from_secs(60) {
                child.kill().unwrap();
                child.wait().unwrap();
                panic!("serve {extra:?} on 0.0.0.0 was not refused: {}", common::read_tail(&stderr));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(!status.success());
        std::fs::read_to_string(&stderr).unwrap()
    };
    let stderr = refusal(&[]);
    assert!(stderr.contains("refusing plain HTTP on 0.0.0.0:0"), "{stderr}");
    // Plain HTTP allowed, but no token exists yet: anyone on the network could call.
    let stderr = refusal(&["--dangerous-plain-http-on-network"]);
    assert!(stderr.contains("refusing to serve 0.0.0.0:0 without client tokens"), "{stderr}");

    // Both dangerously allowed: it serves without tokens...
    let mut daemon = Serve::new(&state, &repo, &trust)
        .listen("0.0.0.0:0")
        .args(["--dangerous-plain-http-on-network", "--dangerous-no-auth-on-network"])
        .start();
    assert!(daemon.addr.starts_with("0.0.0.0:"), "{}", daemon.first_line);
    daemon.base = daemon.base.replace("0.0.0.0", "127.0.0.1");
    assert_eq!(infer(&daemon, "digits", None).status, 200);
    // ...until the first token is created, which the running daemon notices within a second.
    let alice = token(&state, "alice", "digits");
    let started = Instant::now();
    while infer(&daemon, "digits", None).status != 401 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "tokens never turned on: {}",
            daemon.stderr_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(infer(&daemon, "digits", Some(&alice)).status, 200);
    assert!(
        daemon.stderr_tail().contains("client tokens are required from now on"),
        "{}",
        daemon.stderr_tail()
    );
    assert!(daemon.terminate(Duration::from_secs(10)).success());

    // With the token store in place, the network address is served without the opt-in.
    let daemon = Serve::new(&state, &repo, &trust)
        .listen("0.0.0.0:0")
        .args(["--dangerous-plain-http-on-network"])
        .start();
    let local = daemon.base.replace("0.0.0.0", "127.0.0.1");
    let url = format!("{local}/v2/models/digits/infer");
    let answer =
        agent().post(&url).header("content-type", "application/json").send(&digits_request()).unwrap();
    assert_eq!(answer.status().as_u16(), 401);
    assert!(daemon.terminate(Duration::from_secs(10)).success());
}

/// A publisher key revoked in the trust directory: SIGHUP reads the directory again, the models
/// that key signed stop serving, a new bundle it signs is refused, and the other publishers'
/// models serve on. A `revoked` file with a bad line beside the revocation fails closed: the
/// directory is refused, and the key it names is revoked all the same.
#[test]
fn a_publisher_key_revoked_then_sighup_unloads_what_it_signed() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (repo, trust) = (dir.path().join("repo"), dir.path().join("trust"));
    copy_dir(&root().join("models/repo/digits"), &repo.join("digits"));
    copy_dir(&root().join("models/dev-trust"), &trust);
    // Two more publishers, each with a model; returns the key's file stem and its id.
    let publisher = |name: &str| {
        let key = dir.path().join(name);
        let made = ok(warden(&state).args(["keygen", "--out"]).arg(&key));
        let key_id = made.split("key id ").nth(1).unwrap().trim_end_matches([')', '\n']).to_string();
        std::fs::copy(key.with_extension("pub"), trust.join(format!("{name}.pub"))).unwrap();
        limited_digits(&state, &repo, &key.with_extension("key"), &format!("{name}s"), 1, "[limits]");
        (key, key_id)
    };
    let (mallory, mallory_id) = publisher("mallory");
    let (_, eve_id) = publisher("eve");
    let daemon = Serve::new(&state, &repo, &trust).start();
    for name in ["mallorys", "eves", "digits"] {
        assert_eq!(infer(&daemon, name, None).status, 200, "{name}");
    }
    let sighup_until_gone = |name: &str| {
        assert!(Command::new("kill").args(["-HUP", &daemon.pid().to_string()]).status().unwrap().success());
        let started = Instant::now();
        while infer(&daemon, name, None).status != 404 {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{name} still served: {}",
                daemon.stderr_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    std::fs::write(trust.join("revoked"), format!("# mallory's key leaked\n{mallory_id}\n")).unwrap();
    limited_digits(&state, &repo, &mallory.with_extension("key"), "mallorys_new", 1, "[limits]");
    sighup_until_gone("mallorys");
    let log = daemon.stderr_tail();
    assert!(log.contains("no longer trusted"), "{log}");
    let r = infer(&daemon, "mallorys_new", None);
    assert_eq!(r.status, 404, "mallorys_new: {}", r.error());
    assert!(
        log.lines().any(|l| l.contains("mallorys_new/1") && l.contains("revoked")),
        "no refusal of mallorys_new for its revoked key: {log}"
    );
    assert_eq!(infer(&daemon, "eves", None).status, 200);

    // A line that is no key id beside eve's: the directory is refused, eve's key revoked anyway.
    let revoked = format!("# mallory's key leaked\n{mallory_id}\nnot a key id\n{eve_id}\n");
    std::fs::write(trust.join("revoked"), revoked).unwrap();
    sighup_until_gone("eves");
    assert!(daemon.stderr_tail().contains("trust directory refused"), "{}", daemon.stderr_tail());
    assert_eq!(infer(&daemon, "digits", None).status, 200, "the dev key's model serves on");
    assert!(daemon.terminate(Duration::from_secs(10)).success());
}

#[test]
fn full_queue_answers_503_and_device_rate_limit_keeps_the_counter() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let repo = dir.path().join("repo");
    copy_dir(&root().join("models/repo/motion"), &repo.join("motion"));
    let trust = dir.path().join("trust");
    copy_dir(&root().join("models/dev-trust"), &trust);
    let key = dir.path().join("acme");
    ok(warden(&state).args(["keygen", "--out"]).arg(&key));
    std::fs::copy(key.with_extension("pub"), trust.join("acme.pub")).unwrap();
    // A model that computes until its deadline (2 s, drafted by `model init`).
    let slow = repo.join("slow/1");
    ok(warden(&state)
        .args(["model", "init", "--name", "slow", "--version", "1", "--model"])
        .arg(root().join("tests/fixtures/hostile/slow_matmul_chain.onnx"))
        .arg("--out")
        .arg(&slow));
    ok(warden(&state)
        .args(["model", "sign", "--key"])
        .arg(key.with_extension("key"))
        .arg("--model-dir")
        .arg(&slow));
    ok(warden(&state).args(["device", "provision", "--id", "board-1", "--out"]).arg(dir.path()));
    let blob =
        warden::wire::provision::KeyBlob::parse(&std::fs::read(dir.path().join("board-1.keyblob")).unwrap())
            .unwrap();

    // One worker thread: the slow run on the idle instance runs in its request's task there,
    // and must leave the worker to the other requests at every epoch tick.
    let daemon = Serve::new(&state, &repo, &trust)
        .args(["--queue-depth", "0", "--device-readings-per-minute", "60", "--worker-threads", "1"])
        .start();
    let instances = std::thread::available_parallelism().map_or(1, |n| n.get());
    let sent = std::time::Instant::now();
    let x =
        json!({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [0.5]}]}).to_string();
    let busy: Vec<_> = (0..instances)
        .map(|_| {
            let (url, x) = (daemon.url("/v2/models/slow/infer"), x.clone());
            std::thread::spawn(move || agent().post(&url).send(x.as_bytes()).unwrap().status().as_u16())
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let r = call(&daemon, "POST", "/v2/models/slow/infer", None, x.as_bytes(), &[]);
    assert_eq!(r.status, 503, "{}", r.error());
    assert!(r.error().contains("queue is full"), "{}", r.error());
    assert_eq!(r.header("retry-after"), Some("1"));
    // Well before the slow runs' 2 s deadline: the worker was not held by them.
    assert!(sent.elapsed() < Duration::from_millis(1800), "answered only after {:?}", sent.elapsed());
    for t in busy {
        assert_eq!(t.join().unwrap(), 504, "the slow model ends at its deadline");
    }

    // 60 readings a minute per device, in a burst of 60: the 61st is refused, and since its
    // counter was not used up, the same reading is accepted once the rate allows it.
    let send = |counter: u64| {
        call(
            &daemon,
            "POST",
            "/v1/readings",
            None,
            &common::signed_reading(&blob, counter),
            &[("content-type", "application/octet-stream")],
        )
    };
    for counter in 1..=60 {
        let r = send(counter);
        assert_eq!(r.status, 200, "reading {counter}: {}", r.error());
    }
    let r = send(61);
    assert_eq!(r.status, 429, "{}", r.error());
    assert!(r.error().contains("per device"), "{}", r.error());
    std::thread::sleep(Duration::from_millis(1100));
    let r = send(61);
    assert_eq!(r.status, 200, "{}", r.error());
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(send(61).status, 409, "now it is a replay");
}

#[test]
fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let certs = dir.path().join("tls");
    ok(warden(&state).args(["cert", "dev", "--out"]).arg(&certs));
    let ca_for = |name: &str| {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    };
    let client_of = |ca: &CertifiedIssuer<'_, KeyPair>| -> ClientIdentity {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["client-1".to_owned()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, ca).unwrap();
        (vec![cert.der().clone()], key.serialize_der())
    };
    let ca = ca_for("warden test clients");
    std::fs::write(dir.path().join("clients-ca.pem"), ca.pem()).unwrap();
    let daemon = Serve::new(&state, &root().join("models/repo"), &root().join("models/dev-trust"))
        .arg("--tls-cert")
        .arg(certs.join("cert.pem"))
        .arg("--tls-key")
        .arg(certs.join("key.pem"))
        .arg("--tls-client-ca")
        .arg(dir.path().join("clients-ca.pem"))
        .start();

    let server_ca = certs.join("cert.pem");
    let answer = https_get_as(&daemon.addr, "/v2/health/ready", &server_ca, Some(&client_of(&ca))).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(https_get(&daemon.addr, "/v2/health/ready", &server_ca).is_err(), "no client certificate");
    let stranger = ca_for("someone else");
    let refused = https_get_as(&daemon.addr, "/v2/health/ready", &server_ca, Some(&client_of(&stranger)));
    assert!(refused.is_err(), "a certificate from another CA: {refused:?}");
    let answer = https_get_as(&daemon.addr, "/v2/health/ready", &server_ca, Some(&client_of(&ca))).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "still serving: {answer}");
}

#[test]
fn systemd_readiness_reload_and_stop_notifications_and_json_logs() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let daemon = Serve::new(&state, &root().join("models/repo"), &root().join("models/dev-trust"))
        .args(["--log-format", "json"])
        .env("NOTIFY_SOCKET", &socket_path)
        .start();
    let mut buf = [0u8; 256];
    let mut next = || {
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(next().trim(), "READY=1");
    assert!(Command::new("kill").args(["-HUP", &daemon.pid().to_string()]).status().unwrap().success());
    assert_eq!(next().trim(), "RELOADING=1");
    assert_eq!(next().trim(), "READY=1");
    let stderr = daemon.stderr.clone();
    assert!(daemon.terminate(Duration::from_secs(10)).success());
    assert_eq!(next().trim(), "STOPPING=1");
    let log = std::fs::read_to_string(stderr).unwrap();
    let json: Vec<Value> = log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(
        json.iter().any(|r| r["fields"]["message"] == "reload done" && r["level"] == "INFO"),
        "no JSON log record of the reload in:\n{log}"
    );
    assert!(
        json.iter().any(|r| r["fields"]["message"] == "loaded" && r["fields"]["model"] == "digits"),
        "{log}"
    );
}

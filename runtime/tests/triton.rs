//! Compatibility with NVIDIA's stock Python client: `tests/python/triton_client_check.py` drives
//! the real daemon with `tritonclient.http.InferenceServerClient` (health, repository index,
//! metadata, readiness, inference with JSON and binary tensors both ways, an error), and every
//! inference it decoded must equal what `warden infer` prints for the same request: digits (FP32
//! in; INT64 and FP32 out) and a model signed here with a test key whose inputs include INT64
//! (`tests/fixtures/dtypes/dtypes.onnx`: FP32, FP64, INT64, INT32, UINT8, INT8, BOOL).
//!
//! Needs python3 with the packages in models/requirements.txt (`bash scripts/test.sh` installs
//! them).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::{copy_dir, ok, root, warden};
use serde_json::Value;

/// `a` and `b` hold the same values for `datatype`: FP32 compared as f32 (the client decodes
/// binary FP32 exactly, JSON as the shortest decimal), the other types exactly.
fn same_values(datatype: &str, a: &[Value], b: &[Value]) -> Result<(), String> {
    if a.len() != b.len() {
        return Err(format!("{} values vs {}", a.len(), b.len()));
    }
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let equal = match datatype {
            "FP32" => x.as_f64().map(|v| v as f32) == y.as_f64().map(|v| v as f32) && !x.is_null(),
            "FP64" => x.as_f64() == y.as_f64() && !x.is_null(),
            "BOOL" => x.as_bool() == y.as_bool() && x.is_boolean(),
            _ => (x.is_i64() || x.is_u64()) && x == y,
        };
        if !equal {
            return Err(format!("value {i}: client {x} vs warden infer {y}"));
        }
    }
    Ok(())
}

#[test]
fn stock_tritonclient_gets_what_warden_infer_prints() {
    let probe = Command::new("python3").args(["-c", "import tritonclient.http, numpy"]).output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "python3 cannot import tritonclient.http: run `python3 -m pip install -r models/requirements.txt` \
             (scripts/test.sh does): {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("python3 not found: {e}"),
    }

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let repo = dir.path().join("repo");
    copy_dir(&root().join("models/repo"), &repo);

    // A test publisher signs the INT64-input model; the trust directory holds both keys.
    let trust = dir.path().join("trust");
    copy_dir(&root().join("models/dev-trust"), &trust);
    let key = dir.path().join("tester");
    ok(warden(&state).args(["keygen", "--out"]).arg(&key));
    std::fs::copy(key.with_extension("pub"), trust.join("tester.pub")).unwrap();
    let dtypes = repo.join("dtypes/1");
    ok(warden(&state)
        .args([
            "model",
            "init",
            "--name",
            "dtypes",
            "--version",
            "1",
            "--dangerous-full-precision",
            "--model",
        ])
        .arg(root().join("tests/fixtures/dtypes/dtypes.onnx"))
        .arg("--out")
        .arg(&dtypes));
    ok(warden(&state)
        .args(["model", "sign", "--key"])
        .arg(key.with_extension("key"))
        .arg("--model-dir")
        .arg(&dtypes));

    let daemon = common::start(&state, &repo, &trust);
    let script = root().join("tests/python/triton_client_check.py");
    let run = Command::new("python3")
        .arg(&script)
        .arg(&daemon.base)
        .args(["--int64-model", "dtypes"])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    let summary: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "the script printed no JSON summary ({e}); exit {:?}\nstderr:\n{stderr}\ndaemon stderr:\n{}",
            run.status,
            daemon.stderr_tail()
        )
    });

    // Every case the client decoded equals `warden infer` on the same request.
    let mut problems: Vec<String> = Vec::new();
    let mut cli_cache: BTreeMap<String, Value> = BTreeMap::new();
    let cases = summary["cases"].as_array().unwrap();
    let mut compared = Vec::new();
    for (n, case) in cases.iter().enumerate() {
        let name = case["name"].as_str().unwrap();
        let Some(outputs) = case["outputs"].as_object() else {
            continue; // the call failed; the script lists it among its failures
        };
        let model = case["model"].as_str().unwrap();
        let request = case["request"].to_string();
        let cli = cli_cache.entry(format!("{model} {request}")).or_insert_with(|| {
            let file = dir.path().join(format!("request-{n}.json"));
            std::fs::write(&file, &request).unwrap();
            let text = ok(warden(&dir.path().join("cli-state"))
                .args(["infer", "--trust"])
                .arg(&trust)
                .arg(repo.join(model).join("1"))
                .arg("--input")
                .arg(&file));
            serde_json::from_str(&text).unwrap()
        });
        let cli_outputs: BTreeMap<&str, &Value> =
            cli["outputs"].as_array().unwrap().iter().map(|o| (o["name"].as_str().unwrap(), o)).collect();
        let mut client_names: Vec<&str> = outputs.keys().map(String::as_str).collect();
        client_names.sort_unstable();
        let cli_names: Vec<&str> = cli_outputs.keys().copied().collect();
        if client_names != cli_names {
            problems.push(format!("{name}: outputs {client_names:?}, warden infer {cli_names:?}"));
        }
        for (out_name, got) in outputs {
            let Some(want) = cli_outputs.get(out_name.as_str()) else { continue };
            let datatype = want["datatype"].as_str().unwrap();
            if got["datatype"] != want["datatype"] || got["shape"] != want["shape"] {
                problems.push(format!(
                    "{name}: {out_name} is {} {}, warden infer {datatype} {}",
                    got["datatype"], got["shape"], want["shape"]
                ));
                continue;
            }
            if let Err(e) =
                same_values(datatype, got["data"].as_array().unwrap(), want["data"].as_array().unwrap())
            {
                problems.push(format!("{name}: {out_name}: {e}"));
            }
        }
        compared.push(name);
    }

    // The script's own checks (health, metadata, the error, the binary extension's forms).
    for f in summary["failures"].as_array().unwrap() {
        problems.push(format!("script: {}", f.as_str().unwrap_or_default()));
    }
    if !run.status.success() && summary["failures"].as_array().unwrap().is_empty() {
        problems.push(format!("script exited {:?} with no failure listed; stderr:\n{stderr}", run.status));
    }
    // Both models ran, through at least the JSON forms.
    assert!(compared.iter().any(|n| n.starts_with("digits")), "no digits case decoded: {problems:#?}");
    assert!(compared.iter().any(|n| n.starts_with("dtypes")), "no INT64-input case decoded: {problems:#?}");
    assert_eq!(summary["int64_model"], "dtypes");
    assert!(
        problems.is_empty(),
        "{} problems (cases compared with warden infer: {compared:?}):\n{}\nerror case: {}",
        problems.len(),
        problems.join("\n"),
        summary["error_case"]
    );
}

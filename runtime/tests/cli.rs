//! The `warden` binary end to end: key generation, bundle creation, signing, verification,
//! inference, and a one-line reason with a distinct exit code for every refusal.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

struct Cli {
    dir: tempfile::TempDir,
}

impl Cli {
    fn new() -> Cli {
        Cli { dir: tempfile::tempdir().unwrap() }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(args)
            .env("WARDEN_STATE_DIR", self.dir.path().join("state"))
            .env("WARDEN_CACHE_DIR", std::env::temp_dir().join("warden-test-guest-cache"))
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a command that must be refused: returns (exit code, the one stderr line).
    fn refused(&self, args: &[&str]) -> (i32, String) {
        let out = self.run(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8(out.stderr).unwrap();
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: expected one line, got {stderr:?}");
        assert!(lines[0].starts_with("warden: "), "{stderr}");
        (out.status.code().unwrap(), lines[0].to_string())
    }

    fn path(&self, p: &str) -> String {
        self.dir.path().join(p).to_str().unwrap().to_string()
    }
}

#[test]
fn publish_verify_and_infer_a_model_from_scratch() {
    let cli = Cli::new();
    let key = cli.path("keys/acme");
    std::fs::create_dir_all(cli.path("keys")).unwrap();
    cli.ok(&["keygen", "--out", &key]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(format!("{key}.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let (code, line) = cli.refused(&["keygen", "--out", &key]);
    assert_eq!(code, 1, "{line}");

    std::fs::create_dir_all(cli.path("trust")).unwrap();
    std::fs::copy(format!("{key}.pub"), cli.path("trust/acme.pub")).unwrap();
    let model = root().join("models/repo/digits/1/model.onnx");
    let bundle = cli.path("repo/digits/3");
    cli.ok(&[
        "model",
        "init",
        "--model",
        model.to_str().unwrap(),
        "--name",
        "digits",
        "--version",
        "3",
        "--out",
        &bundle,
    ]);
    let manifest = std::fs::read_to_string(format!("{bundle}/manifest.toml")).unwrap();
    assert!(manifest.contains("shape = [1, 64]") && manifest.contains("top_k = 3"), "{manifest}");
    assert!(!manifest.contains("dangerous_full_precision = true"));
    // Before signing, verification refuses it.
    let (code, line) = cli.refused(&["model", "verify", "--trust", &cli.path("trust"), &bundle]);
    assert_eq!(code, 3, "{line}");

    cli.ok(&["model", "sign", "--key", &format!("{key}.key"), "--model-dir", &bundle]);
    let verified = cli.ok(&["model", "verify", "--trust", &cli.path("trust"), &bundle]);
    assert!(verified.starts_with("OK digits version 3"), "{verified}");
    let inspected = cli.ok(&["model", "inspect", &bundle]);
    assert!(inspected.contains("model.onnx: matches the manifest"), "{inspected}");

    let request = root().join("models/requests/digits.json");
    let response =
        cli.ok(&["infer", "--trust", &cli.path("trust"), &bundle, "--input", request.to_str().unwrap()]);
    let response: serde_json::Value = serde_json::from_str(&response).unwrap();
    assert_eq!(response["model_name"], "digits");
    assert_eq!(response["model_version"], "3");
    assert_eq!(response["id"], "example");
    assert_eq!(response["outputs"][0]["name"], "label");
    assert_eq!(response["outputs"][0]["data"][0], 2, "the fixture's first digit is a 2");
    let scores = response["outputs"][1]["data"].as_array().unwrap();
    assert_eq!(scores.iter().filter(|v| v.as_f64().unwrap() != 0.0).count(), 3, "top 3 only: {scores:?}");

    // Tampering with the model after signing: refused, exit 3, one line.
    let mut bytes = std::fs::read(format!("{bundle}/model.onnx")).unwrap();
    bytes[100] ^= 1;
    std::fs::write(format!("{bundle}/model.onnx"), bytes).unwrap();
    let (code, line) =
        cli.refused(&["infer", "--trust", &cli.path("trust"), &bundle, "--input", request.to_str().unwrap()]);
    assert_eq!(code, 3);
    assert!(line.contains("digest mismatch"), "{line}");
}

#[test]
fn refusals_have_distinct_exit_codes_and_one_line_reasons() {
    let cli = Cli::new();
    let trust = root().join("models/dev-trust");
    let trust = trust.to_str().unwrap();
    let bundle = root().join("models/repo/digits/1");
    let bundle = bundle.to_str().unwrap();

    let write = |name: &str, body: &str| {
        let p = cli.path(name);
        std::fs::write(&p, body).unwrap();
        p
    };
    let out_of_bounds = write(
        "oob.json",
        &format!(
            r#"{{"inputs":[{{"name":"input","shape":[1,64],"datatype":"FP32","data":[{}99]}}]}}"#,
            "1,".repeat(63)
        ),
    );
    let (code, line) = cli.refused(&["infer", "--trust", trust, bundle, "--input", &out_of_bounds]);
    assert_eq!(code, 4, "{line}");
    assert!(line.contains("outside [0, 16]"), "{line}");

    let wrong_type =
        write("int.json", r#"{"inputs":[{"name":"input","shape":[1,2],"datatype":"INT64","data":[1,2.5]}]}"#);
    let (code, line) = cli.refused(&["infer", "--trust", trust, bundle, "--input", &wrong_type]);
    assert_eq!(code, 4, "{line}");

    let not_json = write("bad.json", "{inputs");
    assert_eq!(cli.refused(&["infer", "--trust", trust, bundle, "--input", &not_json]).0, 4);

    let empty_trust = cli.path("empty-trust");
    std::fs::create_dir_all(&empty_trust).unwrap();
    let (code, line) = cli.refused(&["model", "verify", "--trust", &empty_trust, bundle]);
    assert_eq!(code, 3);
    assert!(line.contains("holds no .pub keys"), "{line}");

    let (code, line) = cli.refused(&["infer", "--trust", trust, "/nonexistent/bundle", "--input", &not_json]);
    assert_eq!(code, 4, "the request is parsed first: {line}");
}

#[test]
fn keygen_with_a_bare_name_writes_both_files_in_the_current_directory() {
    let cli = Cli::new();
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["keygen", "--out", "acme"])
        .current_dir(cli.dir.path())
        .env("WARDEN_STATE_DIR", cli.dir.path().join("state"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(cli.dir.path().join("acme.key").exists() && cli.dir.path().join("acme.pub").exists());
}

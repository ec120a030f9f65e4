//! A reusable harness for tests that drive the real `warden serve` daemon: the `warden` command
//! with an isolated state directory and the shared compiled-guest cache, a daemon started on a
//! loopback port chosen by the OS (its address read from the first line it prints), killed when
//! dropped, with its stderr kept in a file for diagnosis.
//!
//! Use with `mod common;` from a test file; each test file uses only some of these helpers.
#![allow(dead_code, clippy::unwrap_used)]

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a daemon may take to print its address. The first start on a machine compiles the
/// guest (about 9 s on an idle machine, much more while a build shares the cores).
const START_TIMEOUT: Duration = Duration::from_secs(300);

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The compiled-guest cache shared by every test process of this user (as in `warden-tests`).
pub fn cache_dir() -> PathBuf {
    std::env::temp_dir().join("warden-test-guest-cache")
}

/// The `warden` binary with `state` as its state directory and the shared guest cache.
pub fn warden(state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_warden"));
    c.env("WARDEN_STATE_DIR", state).env("WARDEN_CACHE_DIR", cache_dir());
    c
}

/// Runs `cmd`, asserts it succeeded, returns its stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

/// A ureq agent that returns 4xx/5xx responses instead of errors, with a global timeout so a
/// hung daemon fails the test instead of hanging it.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// How to start a daemon: `warden serve --listen 127.0.0.1:0 --repo R --trust T` plus extra
/// arguments and environment variables.
#[derive(Debug)]
pub struct Serve {
    listen: String,
    state: PathBuf,
    repo: PathBuf,
    trust: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    stderr: PathBuf,
}

impl Serve {
    /// A daemon on `state`, serving `repo` with the keys in `trust`. Its stderr is appended to
    /// `daemon.stderr` next to the state directory (in the test's tempdir), so restarts on the
    /// same state directory keep one file.
    pub fn new(state: &Path, repo: &Path, trust: &Path) -> Serve {
        let stderr = state.parent().unwrap_or(state).join("daemon.stderr");
        Serve {
            listen: "127.0.0.1:0".into(),
            state: state.to_path_buf(),
            repo: repo.to_path_buf(),
            trust: trust.to_path_buf(),
            args: Vec::new(),
            envs: Vec::new(),
            stderr,
        }
    }

    /// Listen on `addr` instead of `127.0.0.1:0`.
    pub fn listen(mut self, addr: &str) -> Serve {
        self.listen = addr.into();
        self
    }

    /// One more command-line argument (after `serve ...`; global flags work there too).
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Serve {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// More command-line arguments.
    pub fn args<I, S>(mut self, args: I) -> Serve
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// An environment variable of the daemon.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Serve {
        self.envs.push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Where the daemon's stderr goes (appended).
    pub fn stderr_to(mut self, path: &Path) -> Serve {
        self.stderr = path.to_path_buf();
        self
    }

    /// Starts the daemon and waits for the line that names its address.
    pub fn start(self) -> Daemon {
        let log = OpenOptions::new().create(true).append(true).open(&self.stderr).unwrap();
        let mut cmd = warden(&self.state);
        cmd.args(["serve", "--listen", &self.listen, "--repo"])
            .arg(&self.repo)
            .arg("--trust")
            .arg(&self.trust)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        // Read stdout on a thread: the first line carries the address; the rest is drained so
        // the daemon never writes into a closed pipe.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            let mut line = String::new();
            let _ = stdout.read_line(&mut line);
            let _ = tx.send(line);
            let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        });
        let started = Instant::now();
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the daemon printed no address within {START_TIMEOUT:?}; stderr:\n{}",
                    read_tail(&self.stderr)
                );
            }
        };
        let scheme = if line.contains("https://") { "https" } else { "http" };
        let Some(addr) = line.split("://").nth(1).and_then(|s| s.split_whitespace().next()) else {
            let _ = child.kill();
            let status = child.wait();
            panic!("no address in {line:?} ({status:?}); stderr:\n{}", read_tail(&self.stderr));
        };
        Daemon {
            addr: addr.to_string(),
            base: format!("{scheme}://{addr}"),
            first_line: line.trim_end().to_string(),
            child,
            stderr: self.stderr,
            startup: started.elapsed(),
        }
    }
}

/// Starts a daemon with no extra arguments.
pub fn start(state: &Path, repo: &Path, trust: &Path) -> Daemon {
    Serve::new(state, repo, trust).start()
}

/// The last 8 KiB of a file, for failure messages.
pub fn read_tail(path: &Path) -> String {
    let mut text = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_end(&mut text);
    }
    let from = text.len().saturating_sub(8192);
    String::from_utf8_lossy(&text[from..]).into_owned()
}

/// A running daemon; killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct Daemon {
    /// The child process.
    pub child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The line it printed on start.
    pub first_line: String,
    /// Its stderr file.
    pub stderr: PathBuf,
    /// From spawn to the address line.
    pub startup: Duration,
}

impl Daemon {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The daemon's stderr so far (the tail).
    pub fn stderr_tail(&self) -> String {
        read_tail(&self.stderr)
    }

    /// `kill -9`, by pid (`Child::kill` sends SIGKILL on Unix), and reap it.
    pub fn kill9(mut self) -> ExitStatus {
        self.child.kill().unwrap();
        self.child.wait().unwrap()
    }

    /// SIGTERM (by pid), then waits up to `timeout` for the exit.
    pub fn terminate(mut self, timeout: Duration) -> ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < timeout,
                "the daemon did not stop within {timeout:?} of SIGTERM; stderr:\n{}",
                self.stderr_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A reading of the `motion` model's shape (24 accelerometer samples), signed with `blob`'s key,
/// as the postcard bytes `/v1/readings` takes.
pub fn signed_reading(blob: &warden::wire::provision::KeyBlob, counter: u64) -> Vec<u8> {
    use ed25519_dalek::{Signer, SigningKey};
    use warden::wire::provision::key_id;
    use warden::wire::reading::{
        MAX_MESSAGE_LEN, READING_FORMAT, Reading, SensorKind, Signature64, SignedReading, Unit,
        reading_message,
    };
    let key = SigningKey::from_bytes(&blob.seed);
    let kid = key_id(key.verifying_key().as_bytes());
    let samples: Vec<i32> = (0..24).map(|i| if i % 3 == 2 { 1000 } else { (i % 5) - 2 }).collect();
    let reading = Reading {
        device_id: blob.device_id.clone(),
        counter,
        timestamp_ms: None,
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

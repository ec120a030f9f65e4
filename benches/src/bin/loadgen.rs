//! A bounded loopback load generator for `warden serve`: a fixed number of KServe v2 inference
//! requests (or, with `--readings`, signed sensor readings to `/v1/readings`) over C concurrent
//! keep-alive HTTP/1.1 connections, then throughput, latency percentiles, status counts, the
//! CPU time the load generator and the daemon each used, and the machine's idle time and the time
//! its hypervisor stole from it.
//!
//! ```sh
//! cargo build --release -p warden --bin warden -p warden-benches --bin loadgen
//! $CARGO_TARGET_DIR/release/loadgen -n 20000 -c 4       # starts target/release/warden serve
//! loadgen --url http://127.0.0.1:8000 --pid PID -n 20000  # a daemon already running
//! ```
//!
//! With `--rate R` the load is open-loop instead: connection `i` sends its `k`-th request at
//! `(k * C + i) / R` seconds into the run (R requests/s in all, evenly spread), and a request's
//! latency counts from that scheduled time, so a request held back behind a slow answer on its
//! connection is charged for the wait (as `wrk2` does; a closed loop would hide it).
//!
//! Only loopback addresses are accepted. The client is a minimal HTTP/1.1 writer/reader over
//! `std::net::TcpStream` (one thread per connection), so it costs little CPU next to the daemon and
//! needs no dependency.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use warden::wire::provision::KeyBlob;

const USAGE: &str = "usage: loadgen [-n TOTAL] [-c CONNECTIONS] [--model NAME] [--request FILE] [--warmup N]
               [--max-seconds S] [--url http://127.0.0.1:PORT [--pid PID]] [--warden BIN]
               [--repo DIR] [--trust DIR] [--keep-limits] [--readings] [--rate R] [--json]
defaults: -n 20000 -c 4 --model digits --request models/requests/digits.json --warmup 200
          --max-seconds 120; without --url, starts BIN serve (default: the warden binary next to
          this one) on 127.0.0.1:0 with a fresh state dir, serving MODEL from --repo models/repo
          (trust models/dev-trust) re-signed with a throwaway key without the manifest's rate
          limits and query budget (requests_per_minute, burst, total_queries), which would
          otherwise answer most of the load 429, and with --queue-depth C (at least the default
          64) so that every connection's request may queue; --keep-limits serves the bundles as
          signed and the daemon with its default queue depth.
--readings: signed readings for --model (default motion), one provisioned device per connection,
          signed beforehand by the firmware crate's Signer (not timed), counters 1, 2, 3...;
          the daemon's per-device rate limit is lifted unless --keep-limits
--rate R: open loop: R requests/s in all, each connection sending its share on a fixed schedule
          (TOTAL / C each); latency counts from each request's scheduled send time, so a request
          held back behind a slow answer is charged for the wait";

/// A connection thread gives up (and the run stops) after this many failed connects in a row.
const MAX_FAILED_CONNECTS: u32 = 50;

#[derive(Debug)]
struct Opts {
    total: u64,
    connections: usize,
    model: String,
    request: PathBuf,
    warmup: u64,
    max_seconds: u64,
    url: Option<String>,
    pid: Option<u32>,
    warden: Option<PathBuf>,
    repo: PathBuf,
    trust: PathBuf,
    keep_limits: bool,
    readings: bool,
    /// Open loop: requests per second in all (`--rate`).
    rate: Option<f64>,
    json: bool,
}

fn parse_args() -> Result<Opts, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let mut o = Opts {
        total: 20_000,
        connections: 4,
        model: "digits".into(),
        request: root.join("models/requests/digits.json"),
        warmup: 200,
        max_seconds: 120,
        url: None,
        pid: None,
        warden: None,
        repo: root.join("models/repo"),
        trust: root.join("models/dev-trust"),
        keep_limits: false,
        readings: false,
        rate: None,
        json: false,
    };
    let mut model_given = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        let num = |v: String| v.parse::<u64>().map_err(|e| format!("{a} {v}: {e}"));
        match a.as_str() {
            "-n" | "--requests" => o.total = num(value()?)?,
            "-c" | "--connections" => o.connections = num(value()?)?.clamp(1, 256) as usize,
            "--model" => {
                o.model = value()?;
                model_given = true;
            }
            "--readings" => o.readings = true,
            "--request" => o.request = value()?.into(),
            "--warmup" => o.warmup = num(value()?)?,
            "--max-seconds" => o.max_seconds = num(value()?)?.max(1),
            "--url" => o.url = Some(value()?),
            "--pid" => o.pid = Some(num(value()?)? as u32),
            "--warden" => o.warden = Some(value()?.into()),
            "--repo" => o.repo = value()?.into(),
            "--trust" => o.trust = value()?.into(),
            "--keep-limits" => o.keep_limits = true,
            "--rate" => {
                let v = value()?;
                let rate = v.parse::<f64>().map_err(|e| format!("--rate {v}: {e}"))?;
                if !(rate.is_finite() && rate > 0.0) {
                    return Err(format!("--rate {v}: must be a positive number of requests per second"));
                }
                o.rate = Some(rate);
            }
            "--json" => o.json = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if o.total == 0 {
        return Err("-n must be at least 1".into());
    }
    if o.readings && !model_given {
        o.model = "motion".into();
    }
    if o.readings && o.url.is_some() {
        return Err("--readings starts its own daemon (it provisions the devices): drop --url".into());
    }
    Ok(o)
}

/// CPU time (user + system) of a process from `/proc/PID/stat`, all threads included.
fn cpu_seconds(pid: &str, ticks_per_second: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_second)
}

/// The whole machine's idle (idle + iowait) and stolen time so far, in seconds summed over its
/// CPUs, from the first line of `/proc/stat`. Steal is time the hypervisor ran something else
/// while a virtual CPU wanted to run.
fn machine_idle_and_steal(ticks_per_second: f64) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<f64> =
        stat.lines().next()?.split_whitespace().skip(1).map(|f| f.parse().unwrap_or(0.0)).collect();
    // user nice system idle iowait irq softirq steal ...
    let idle = fields.get(3)? + fields.get(4)?;
    Some((idle / ticks_per_second, fields.get(7)? / ticks_per_second))
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A daemon this program started; SIGKILLed and reaped on drop if still running.
struct Started {
    child: Child,
    _state: tempfile::TempDir,
    stderr: PathBuf,
    /// With `--readings`: one device per connection, then the warm-up device.
    devices: Vec<KeyBlob>,
}

/// `count` signed readings of `device` with counters 1..=count, as the postcard bytes
/// `/v1/readings` takes, signed by the firmware's own signer.
fn signed_readings(device: &KeyBlob, count: u64) -> Vec<Vec<u8>> {
    let signer = warden_firmware::signer::Signer::new(device);
    (1..=count)
        .map(|counter| {
            let reading = warden_tests::motion_reading(&device.device_id, counter);
            postcard::to_allocvec(&signer.sign(reading).unwrap()).unwrap()
        })
        .collect()
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A repository in `dir` holding only `o.model`'s bundles from `o.repo`, each with the rate
/// limits and query budget removed from its manifest and re-signed with a throwaway key, and a
/// trust directory holding only that key. (The bundles are first verified against `o.trust`.)
fn unlimited_copy(bin: &Path, o: &Opts, dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let run = |args: &[&std::ffi::OsStr]| -> Result<(), String> {
        let out = Command::new(bin)
            .args(args)
            .env("WARDEN_STATE_DIR", dir.join("sign-state"))
            .output()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("warden {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
        }
    };
    let (repo, trust, key) = (dir.join("repo"), dir.join("trust"), dir.join("bench-publisher"));
    std::fs::create_dir_all(&trust).map_err(|e| e.to_string())?;
    run(&["keygen".as_ref(), "--out".as_ref(), key.as_os_str()])?;
    std::fs::copy(key.with_extension("pub"), trust.join("bench-publisher.pub")).map_err(|e| e.to_string())?;
    let source = o.repo.join(&o.model);
    let versions = std::fs::read_dir(&source).map_err(|e| format!("{}: {e}", source.display()))?;
    for v in versions {
        let v = v.map_err(|e| e.to_string())?.path();
        if !v.is_dir() {
            continue;
        }
        run(&["model".as_ref(), "verify".as_ref(), "--trust".as_ref(), o.trust.as_os_str(), v.as_os_str()])?;
        let dest = repo.join(&o.model).join(v.file_name().unwrap_or_default());
        std::fs::create_dir_all(&dest).map_err(|e| e.to_string())?;
        std::fs::copy(v.join("model.onnx"), dest.join("model.onnx")).map_err(|e| e.to_string())?;
        let manifest = std::fs::read_to_string(v.join("manifest.toml")).map_err(|e| e.to_string())?;
        let unlimited: String = manifest
            .lines()
            .filter(|l| {
                let key = l.split('=').next().unwrap_or("").trim();
                !matches!(key, "requests_per_minute" | "burst" | "total_queries")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(dest.join("manifest.toml"), unlimited).map_err(|e| e.to_string())?;
        run(&[
            "model".as_ref(),
            "sign".as_ref(),
            "--key".as_ref(),
            key.with_extension("key").as_os_str(),
            "--model-dir".as_ref(),
            dest.as_os_str(),
        ])?;
    }
    Ok((repo, trust))
}

fn start_daemon(o: &Opts) -> Result<(Started, String), String> {
    let bin = match &o.warden {
        Some(b) => b.clone(),
        None => std::env::current_exe().map_err(|e| e.to_string())?.with_file_name("warden"),
    };
    if !bin.exists() {
        return Err(format!(
            "{} not found: build it first (cargo build --release -p warden --bin warden) or pass --warden/--url",
            bin.display()
        ));
    }
    let state = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (repo, trust) = if o.keep_limits {
        (o.repo.clone(), o.trust.clone())
    } else {
        unlimited_copy(&bin, o, state.path())?
    };
    let mut devices = Vec::new();
    if o.readings {
        for i in 0..=o.connections {
            let id = if i == o.connections { "load-warmup".to_string() } else { format!("load-{i}") };
            let out = Command::new(&bin)
                .args(["device", "provision", "--id", &id, "--out"])
                .arg(state.path())
                .env("WARDEN_STATE_DIR", state.path().join("state"))
                .output()
                .map_err(|e| format!("{}: {e}", bin.display()))?;
            if !out.status.success() {
                return Err(format!("provisioning {id}: {}", String::from_utf8_lossy(&out.stderr).trim()));
            }
            let blob =
                std::fs::read(state.path().join(format!("{id}.keyblob"))).map_err(|e| e.to_string())?;
            devices.push(KeyBlob::parse(&blob).map_err(|e| format!("{id}.keyblob: {e:?}"))?);
        }
    }
    let stderr = state.path().join("daemon.stderr");
    let log = std::fs::File::create(&stderr).map_err(|e| e.to_string())?;
    let mut serve = Command::new(&bin);
    serve.args(["serve", "--listen", "127.0.0.1:0", "--repo"]).arg(&repo).arg("--trust").arg(&trust);
    if o.readings && !o.keep_limits {
        serve.args(["--device-readings-per-minute", "4000000000"]);
    }
    if !o.keep_limits {
        // Room to queue every connection's request (the default, 64, answers the rest 503).
        serve.args(["--queue-depth", &o.connections.max(64).to_string()]);
    }
    let mut child = serve
        .env("WARDEN_STATE_DIR", state.path().join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        let _ = r.read_line(&mut line);
        let _ = tx.send(line);
        let _ = std::io::copy(&mut r, &mut std::io::sink());
    });
    let started = Started { child, _state: state, stderr, devices };
    let line = rx.recv_timeout(Duration::from_secs(300)).unwrap_or_default();
    let Some(addr) = line.split("http://").nth(1).and_then(|s| s.split_whitespace().next()) else {
        let err = std::fs::read_to_string(&started.stderr).unwrap_or_default();
        return Err(format!("the daemon printed no address ({line:?}); stderr:\n{err}"));
    };
    Ok((started, format!("http://{addr}")))
}

/// The bytes of one HTTP request.
type Request = Vec<u8>;

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    addr: SocketAddr,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Conn { addr, writer: s.try_clone()?, reader: BufReader::with_capacity(64 << 10, s) })
    }

    /// Sends `request` (a complete HTTP/1.1 request) and reads the response; returns the status.
    /// Reconnects when the server closes the connection.
    fn exchange(&mut self, request: &[u8], body: &mut Vec<u8>) -> std::io::Result<u16> {
        self.writer.write_all(request)?;
        let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(bad("connection closed"));
        }
        let status: u16 =
            line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad(&line))?;
        let (mut length, mut chunked, mut close) = (None, false, false);
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let h = line.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').ok_or_else(|| bad(h))?;
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            match k.as_str() {
                "content-length" => length = v.parse::<usize>().ok(),
                "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                "connection" => close = v.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        body.clear();
        if chunked {
            loop {
                line.clear();
                self.reader.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| bad("bad chunk size"))?;
                let at = body.len();
                body.resize(at + size, 0);
                self.reader.read_exact(&mut body[at..])?;
                line.clear();
                self.reader.read_line(&mut line)?;
                if size == 0 {
                    break;
                }
            }
        } else if let Some(n) = length {
            body.resize(n, 0);
            self.reader.read_exact(body)?;
        } else {
            self.reader.read_to_end(body)?;
            close = true;
        }
        if close {
            *self = Conn::open(self.addr)?;
        }
        Ok(status)
    }
}

#[derive(Default)]
struct Results {
    latencies_us: Vec<u32>,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
    first_error: Option<String>,
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)]) / 1000.0
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("loadgen: {e}");
            }
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    let body = std::fs::read(&o.request).unwrap_or_else(|e| {
        eprintln!("loadgen: {}: {e}", o.request.display());
        std::process::exit(2)
    });

    let (started, base, daemon_pid) = match &o.url {
        Some(u) => (None, u.trim_end_matches('/').to_string(), o.pid),
        None => match start_daemon(&o) {
            Ok((s, base)) => {
                let pid = s.child.id();
                (Some(s), base, Some(pid))
            }
            Err(e) => {
                eprintln!("loadgen: {e}");
                std::process::exit(1);
            }
        },
    };
    // Every exit from here on goes through `run` returning, so a daemon started here is
    // killed (on drop) whatever happens.
    let devices = started.as_ref().map(|s| s.devices.clone()).unwrap_or_default();
    let code = run(&o, &body, &base, daemon_pid, &devices);
    drop(started);
    std::process::exit(code);
}

/// The load run against `base`; returns the exit code.
fn run(o: &Opts, body: &[u8], base: &str, daemon_pid: Option<u32>, devices: &[KeyBlob]) -> i32 {
    let Some(hostport) = base.strip_prefix("http://") else {
        eprintln!("loadgen: only http:// URLs");
        return 2;
    };
    let Some(addr) = hostport.to_socket_addrs().ok().and_then(|mut a| a.next()) else {
        eprintln!("loadgen: cannot resolve {hostport}");
        return 2;
    };
    if !addr.ip().is_loopback() {
        eprintln!("loadgen: refusing to load {addr}: loopback addresses only");
        return 2;
    }
    let http = |path: &str, content_type: &str, body: &[u8]| {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        request
    };
    // Per connection, the requests it sends in turn: the same one again and again, or (readings)
    // its device's readings in counter order, each sent once.
    let (warmup_requests, per_thread): (Vec<Request>, Vec<Arc<Vec<Request>>>) = if o.readings {
        let path = format!("/v1/readings?model={}", o.model);
        let sign = |device: &KeyBlob, n: u64| -> Vec<Vec<u8>> {
            signed_readings(device, n).iter().map(|b| http(&path, "application/octet-stream", b)).collect()
        };
        eprintln!("loadgen: signing readings for {} devices ...", o.connections);
        let each = o.total.div_ceil(o.connections as u64) * 3 / 2 + 16;
        let per_thread = devices[..o.connections].iter().map(|d| Arc::new(sign(d, each))).collect();
        (sign(&devices[o.connections], o.warmup), per_thread)
    } else {
        let request =
            Arc::new(vec![http(&format!("/v2/models/{}/infer", o.model), "application/json", body)]);
        (vec![request[0].clone(); o.warmup as usize], vec![request; o.connections])
    };
    let cycle = !o.readings;

    // Warm-up on one connection (instance pools, caches), not timed.
    {
        let mut c = match Conn::open(addr) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("loadgen: connecting to {addr}: {e}");
                return 1;
            }
        };
        let mut buf = Vec::new();
        for request in &warmup_requests {
            match c.exchange(request, &mut buf) {
                Ok(200) => {}
                Ok(s) => {
                    eprintln!("loadgen: warm-up request answered {s}: {}", String::from_utf8_lossy(&buf));
                    return 1;
                }
                Err(e) => {
                    eprintln!("loadgen: warm-up request failed: {e}");
                    return 1;
                }
            }
        }
    }

    let ticks = clock_ticks();
    let daemon_pid_s = daemon_pid.map(|p| p.to_string());
    let daemon_cpu0 = daemon_pid_s.as_deref().and_then(|p| cpu_seconds(p, ticks));
    let self_cpu0 = cpu_seconds("self", ticks);
    let machine0 = machine_idle_and_steal(ticks);
    let remaining = Arc::new(AtomicU64::new(o.total));
    let deadline_hit = Arc::new(AtomicBool::new(false));
    let unreachable = Arc::new(AtomicBool::new(false));
    let results = Arc::new(Mutex::new(Results::default()));
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(o.max_seconds);
    let threads: Vec<_> = (0..o.connections)
        .map(|i| {
            let (requests, remaining, results, deadline_hit) =
                (per_thread[i].clone(), remaining.clone(), results.clone(), deadline_hit.clone());
            let unreachable = unreachable.clone();
            // Open loop: this connection's share and its schedule (see the module's doc).
            let connections = o.connections as u64;
            let open_loop = o.rate.map(|rate| {
                let share = o.total / connections + u64::from((i as u64) < o.total % connections);
                (share, rate)
            });
            std::thread::spawn(move || {
                let mut mine = Results::default();
                let mut conn = Conn::open(addr);
                let mut failed_connects = 0;
                let mut buf = Vec::with_capacity(4096);
                let mut next = 0usize;
                let mut sent = 0u64;
                while let Some(request) = requests.get(if cycle { next % requests.len() } else { next }) {
                    let scheduled = match open_loop {
                        Some((share, _)) if sent >= share => break,
                        Some((_, rate)) => {
                            let at =
                                t0 + Duration::from_secs_f64((sent * connections + i as u64) as f64 / rate);
                            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                                std::thread::sleep(wait);
                            }
                            Some(at)
                        }
                        None => {
                            if remaining
                                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| r.checked_sub(1))
                                .is_err()
                            {
                                break;
                            }
                            None
                        }
                    };
                    sent += 1;
                    if Instant::now() >= deadline {
                        deadline_hit.store(true, Ordering::Relaxed);
                        break;
                    }
                    if unreachable.load(Ordering::Relaxed) {
                        break;
                    }
                    let c = match &mut conn {
                        Ok(c) => {
                            failed_connects = 0;
                            c
                        }
                        Err(_) => {
                            conn = Conn::open(addr);
                            match &mut conn {
                                Ok(c) => c,
                                Err(e) => {
                                    mine.errors += 1;
                                    mine.first_error.get_or_insert_with(|| e.to_string());
                                    failed_connects += 1;
                                    if failed_connects >= MAX_FAILED_CONNECTS {
                                        unreachable.store(true, Ordering::Relaxed);
                                    }
                                    std::thread::sleep(Duration::from_millis(10));
                                    continue;
                                }
                            }
                        }
                    };
                    // Open loop: from the scheduled time, so a late send counts as waiting.
                    let t = scheduled.unwrap_or_else(Instant::now);
                    next += 1;
                    match c.exchange(request, &mut buf) {
                        Ok(status) => {
                            let us = t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                            mine.latencies_us.push(us);
                            *mine.statuses.entry(status).or_default() += 1;
                        }
                        Err(e) => {
                            mine.errors += 1;
                            mine.first_error.get_or_insert_with(|| e.to_string());
                            conn = Conn::open(addr);
                        }
                    }
                }
                let mut all = results.lock().unwrap();
                all.latencies_us.extend(mine.latencies_us);
                for (s, n) in mine.statuses {
                    *all.statuses.entry(s).or_default() += n;
                }
                all.errors += mine.errors;
                if all.first_error.is_none() {
                    all.first_error = mine.first_error;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let wall = t0.elapsed().as_secs_f64();
    let self_cpu = self_cpu0.and_then(|c0| cpu_seconds("self", ticks).map(|c| c - c0));
    let daemon_cpu = daemon_cpu0.and_then(|c0| cpu_seconds(daemon_pid_s.as_deref()?, ticks).map(|c| c - c0));
    let machine = machine0.and_then(|(i0, s0)| machine_idle_and_steal(ticks).map(|(i, s)| (i - i0, s - s0)));
    let (idle_cpu, steal_cpu) = (machine.map(|m| m.0), machine.map(|m| m.1));

    let mut r = std::mem::take(&mut *results.lock().unwrap());
    r.latencies_us.sort_unstable();
    let done = r.latencies_us.len() as f64;
    let rps = done / wall;
    let (p50, p90, p99) = (
        percentile(&r.latencies_us, 50.0),
        percentile(&r.latencies_us, 90.0),
        percentile(&r.latencies_us, 99.0),
    );
    let max = r.latencies_us.last().map_or(0.0, |m| f64::from(*m) / 1000.0);
    let mean = if r.latencies_us.is_empty() {
        0.0
    } else {
        r.latencies_us.iter().map(|l| f64::from(*l)).sum::<f64>() / done / 1000.0
    };
    let statuses: Vec<String> = r.statuses.iter().map(|(s, n)| format!("\"{s}\":{n}")).collect();
    let cores = |cpu: Option<f64>| cpu.map(|c| c / wall);
    let opt = |v: Option<f64>| v.map_or("null".to_string(), |v| format!("{v:.3}"));
    if o.json {
        println!(
            "{{\"target\":\"{base}\",\"model\":\"{}\",\"requests\":{},\"connections\":{},\"wall_s\":{wall:.3},\"requests_per_s\":{rps:.1},\
\"latency_ms\":{{\"mean\":{mean:.3},\"p50\":{p50:.3},\"p90\":{p90:.3},\"p99\":{p99:.3},\"max\":{max:.3}}},\
\"offered_per_s\":{},\"statuses\":{{{}}},\"errors\":{},\"loadgen_cpu_s\":{},\"loadgen_cores\":{},\"daemon_cpu_s\":{},\"daemon_cores\":{},\"idle_cores\":{},\"steal_cores\":{},\"deadline_hit\":{},\"unreachable\":{}}}",
            o.model,
            r.latencies_us.len(),
            o.connections,
            o.rate.map_or("null".to_string(), |r| format!("{r:.1}")),
            statuses.join(","),
            r.errors,
            opt(self_cpu),
            opt(cores(self_cpu)),
            opt(daemon_cpu),
            opt(cores(daemon_cpu)),
            opt(cores(idle_cpu)),
            opt(cores(steal_cpu)),
            deadline_hit.load(Ordering::Relaxed),
            unreachable.load(Ordering::Relaxed),
        );
    } else {
        println!("target      {base} model {} ({} bytes per request)", o.model, body.len());
        println!(
            "requests    {} answered over {} keep-alive connections in {wall:.2} s: {rps:.0} requests/s",
            r.latencies_us.len(),
            o.connections
        );
        if let Some(rate) = o.rate {
            println!(
                "offered     {rate:.0} requests/s, open loop (latency from each request's scheduled send time)"
            );
        }
        println!("latency ms  mean {mean:.3}  p50 {p50:.3}  p90 {p90:.3}  p99 {p99:.3}  max {max:.3}");
        println!("statuses    {{{}}}  transport errors {}", statuses.join(", "), r.errors);
        if let Some(e) = &r.first_error {
            println!("first error {e}");
        }
        println!(
            "cpu         loadgen {} s ({} cores)  daemon {} s ({} cores){}",
            opt(self_cpu),
            opt(cores(self_cpu)),
            opt(daemon_cpu),
            opt(cores(daemon_cpu)),
            if daemon_pid.is_none() { "  (pass --pid for the daemon's)" } else { "" }
        );
        println!(
            "machine     {} CPUs: idle {} cores, stolen by the hypervisor {} cores",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            opt(cores(idle_cpu)),
            opt(cores(steal_cpu)),
        );
        if unreachable.load(Ordering::Relaxed) {
            println!(
                "stopped: {MAX_FAILED_CONNECTS} connection attempts in a row failed (is the daemon gone?)"
            );
        }
        if deadline_hit.load(Ordering::Relaxed) {
            println!("stopped at --max-seconds {} before all {} requests were sent", o.max_seconds, o.total);
        }
    }
    let failed = r.errors > 0 || r.statuses.keys().any(|s| *s != 200);
    i32::from(failed)
}

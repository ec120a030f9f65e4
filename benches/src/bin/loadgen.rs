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
//! With `--rate R` the load is open-loop instead: request `k` is due `k / R` seconds into the run
//! (R requests/s, evenly spread), the next free connection sends it, and its latency counts
//! from when it was due, so a request held back because every connection was still waiting for
//! an answer is charged for the wait (as `wrk2` does; a closed loop would hide it).
//!
//! Only loopback addresses are accepted. The client is a minimal HTTP/1.1 writer/reader, every
//! connection a task on one thread's event loop (tokio's, current-thread), so under load one
//! wake-up serves many answers: it costs the shared CPUs far less than a thread per connection
//! did (benches/README.md, "An event-loop client"). An open loop's due times come from a
//! timerfd on that loop, since the loop's own timers tick in milliseconds.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::BufRead;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
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
          signed beforehand by the firmware crate's Signer (not timed), counters 1, 2, 3...
          (each device's first in the warm-up, where the daemon builds its key table); the
          daemon's per-device rate limit is lifted unless --keep-limits
--rate R: open loop: request k is due k / R seconds into the run and the next free connection
          sends it; latency counts from when it was due, so a wait for a free connection counts";

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
        let mut r = std::io::BufReader::new(stdout);
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

/// One keep-alive HTTP/1.1 connection on the client's event loop.
struct Conn {
    addr: SocketAddr,
    stream: BufReader<TcpStream>,
    line: String,
}

impl Conn {
    async fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
        s.set_nodelay(true)?;
        Ok(Conn { addr, stream: BufReader::with_capacity(64 << 10, s), line: String::new() })
    }

    /// Sends `request` (a complete HTTP/1.1 request) and reads the response, within 30 s;
    /// returns the status. Reconnects when the server closes the connection.
    async fn exchange(&mut self, request: &[u8], body: &mut Vec<u8>) -> std::io::Result<u16> {
        match tokio::time::timeout(Duration::from_secs(30), self.exchange_inner(request, body)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 30 s")),
        }
    }

    async fn exchange_inner(&mut self, request: &[u8], body: &mut Vec<u8>) -> std::io::Result<u16> {
        self.stream.get_mut().write_all(request).await?;
        let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
        let line = &mut self.line;
        line.clear();
        if self.stream.read_line(line).await? == 0 {
            return Err(bad("connection closed"));
        }
        let status: u16 =
            line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad(line))?;
        let (mut length, mut chunked, mut close) = (None, false, false);
        loop {
            line.clear();
            self.stream.read_line(line).await?;
            let h = line.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').ok_or_else(|| bad(h))?;
            let (k, v) = (k.trim(), v.trim());
            if k.eq_ignore_ascii_case("content-length") {
                length = v.parse::<usize>().ok();
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                chunked = v.eq_ignore_ascii_case("chunked");
            } else if k.eq_ignore_ascii_case("connection") {
                close = v.eq_ignore_ascii_case("close");
            }
        }
        body.clear();
        if chunked {
            loop {
                line.clear();
                self.stream.read_line(line).await?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| bad("bad chunk size"))?;
                let at = body.len();
                body.resize(at + size, 0);
                self.stream.read_exact(&mut body[at..]).await?;
                line.clear();
                self.stream.read_line(line).await?;
                if size == 0 {
                    break;
                }
            }
        } else if let Some(n) = length {
            body.resize(n, 0);
            self.stream.read_exact(body).await?;
        } else {
            self.stream.read_to_end(body).await?;
            close = true;
        }
        if close {
            *self = Conn::open(self.addr).await?;
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

/// What the connections share.
struct Shared {
    /// Closed loop: requests not yet taken by a connection.
    remaining: AtomicU64,
    deadline_hit: AtomicBool,
    unreachable: AtomicBool,
}

/// Sends request `k`'s due time, `k / rate` seconds after `t0`, when it comes, for every `k`
/// below `total` that falls before `deadline`; sleeps on a timerfd, whose wake-ups come through
/// the event loop itself.
async fn pace(
    total: u64,
    rate: f64,
    t0: Instant,
    deadline: Instant,
    tx: mpsc::UnboundedSender<Instant>,
    shared: Arc<Shared>,
) -> std::io::Result<()> {
    use rustix::time::{Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec};
    let fd = rustix::time::timerfd_create(
        TimerfdClockId::Monotonic,
        TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
    )?;
    // `AsyncFd::new` is deprecated since a `T: AsRawFd` could close its descriptor while it is
    // registered; an `OwnedFd` moved into the `AsyncFd` cannot, and `register`, the successor,
    // is unsafe code, which this file forbids.
    #[allow(deprecated)]
    let timer = tokio::io::unix::AsyncFd::new(fd)?;
    let due = |k: u64| t0 + Duration::from_secs_f64(k as f64 / rate);
    let mut k = 0;
    while k < total {
        if due(k) >= deadline {
            shared.deadline_hit.store(true, Ordering::Relaxed);
            break;
        }
        if let Some(wait) = due(k).checked_duration_since(Instant::now()).filter(|w| !w.is_zero()) {
            let zero = Timespec { tv_sec: 0, tv_nsec: 0 };
            let value = Timespec { tv_sec: wait.as_secs() as i64, tv_nsec: wait.subsec_nanos().into() };
            let spec = Itimerspec { it_interval: zero, it_value: value };
            rustix::time::timerfd_settime(timer.get_ref(), TimerfdTimerFlags::empty(), &spec)?;
            loop {
                let mut ready = timer.readable().await?;
                match rustix::io::read(ready.get_inner(), &mut [0u8; 8]) {
                    Ok(_) => break,
                    Err(rustix::io::Errno::AGAIN) => ready.clear_ready(),
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let now = Instant::now();
        while k < total && due(k) <= now && due(k) < deadline {
            if tx.send(due(k)).is_err() {
                return Ok(());
            }
            k += 1;
        }
    }
    Ok(())
}

/// One connection's part of the run: its requests in turn (the same one again and again with
/// `cycle`), each as soon as its last was answered (closed loop) or at the next scheduled time
/// it takes (open loop: latency from that time).
async fn connection(
    addr: SocketAddr,
    requests: Arc<Vec<Request>>,
    cycle: bool,
    shared: Arc<Shared>,
    schedule: Option<Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Instant>>>>,
    deadline: Instant,
) -> Results {
    let mut mine = Results::default();
    let mut conn = Conn::open(addr).await;
    let mut failed_connects = 0;
    let mut buf = Vec::with_capacity(4096);
    let mut next = 0usize;
    while let Some(request) = requests.get(if cycle { next % requests.len() } else { next }) {
        let scheduled = match &schedule {
            Some(schedule) => match schedule.lock().await.recv().await {
                Some(at) => Some(at),
                None => break,
            },
            None => {
                if shared
                    .remaining
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| r.checked_sub(1))
                    .is_err()
                {
                    break;
                }
                None
            }
        };
        if Instant::now() >= deadline {
            shared.deadline_hit.store(true, Ordering::Relaxed);
            break;
        }
        if shared.unreachable.load(Ordering::Relaxed) {
            break;
        }
        if conn.is_err() {
            conn = Conn::open(addr).await;
        }
        let c = match &mut conn {
            Ok(c) => {
                failed_connects = 0;
                c
            }
            Err(e) => {
                mine.errors += 1;
                mine.first_error.get_or_insert_with(|| e.to_string());
                failed_connects += 1;
                if failed_connects >= MAX_FAILED_CONNECTS {
                    shared.unreachable.store(true, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Open loop: from the scheduled time, so a wait for a free connection counts.
        let t = scheduled.unwrap_or_else(Instant::now);
        next += 1;
        match c.exchange(request, &mut buf).await {
            Ok(status) => {
                let us = t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                mine.latencies_us.push(us);
                *mine.statuses.entry(status).or_default() += 1;
            }
            Err(e) => {
                mine.errors += 1;
                mine.first_error.get_or_insert_with(|| e.to_string());
                conn = Err(e); // opened again before the next request
            }
        }
    }
    mine
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
    let (warmup_requests, per_connection): (Vec<Request>, Vec<Arc<Vec<Request>>>) = if o.readings {
        let path = format!("/v1/readings?model={}", o.model);
        let sign = |device: &KeyBlob, n: u64| -> Vec<Vec<u8>> {
            signed_readings(device, n).iter().map(|b| http(&path, "application/octet-stream", b)).collect()
        };
        eprintln!("loadgen: signing readings for {} devices ...", o.connections);
        let each = o.total.div_ceil(o.connections as u64) * 3 / 2 + 16;
        // Each connection's device sends its first reading in the warm-up: the daemon builds a
        // device's key table at its first reading (about 2 ms, once per device), which would
        // otherwise land on 1% of a 10,000-reading run over 128 connections.
        let mut warmup = sign(&devices[o.connections], o.warmup);
        let per_connection = devices[..o.connections]
            .iter()
            .map(|d| {
                let mut readings = sign(d, each + 1);
                warmup.push(readings.remove(0));
                Arc::new(readings)
            })
            .collect();
        (warmup, per_connection)
    } else {
        let request =
            Arc::new(vec![http(&format!("/v2/models/{}/infer", o.model), "application/json", body)]);
        (vec![request[0].clone(); o.warmup as usize], vec![request; o.connections])
    };
    let cycle = !o.readings;

    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen: the client's event loop: {e}");
            return 1;
        }
    };

    // Warm-up on one connection (instance pools, caches), not timed.
    let warm = runtime.block_on(async {
        let mut c = Conn::open(addr).await.map_err(|e| format!("connecting to {addr}: {e}"))?;
        let mut buf = Vec::new();
        for request in &warmup_requests {
            match c.exchange(request, &mut buf).await {
                Ok(200) => {}
                Ok(s) => {
                    return Err(format!("warm-up request answered {s}: {}", String::from_utf8_lossy(&buf)));
                }
                Err(e) => return Err(format!("warm-up request failed: {e}")),
            }
        }
        Ok(())
    });
    if let Err(e) = warm {
        eprintln!("loadgen: {e}");
        return 1;
    }

    let ticks = clock_ticks();
    let daemon_pid_s = daemon_pid.map(|p| p.to_string());
    let daemon_cpu0 = daemon_pid_s.as_deref().and_then(|p| cpu_seconds(p, ticks));
    let self_cpu0 = cpu_seconds("self", ticks);
    let machine0 = machine_idle_and_steal(ticks);
    let shared = Arc::new(Shared {
        remaining: AtomicU64::new(o.total),
        deadline_hit: AtomicBool::new(false),
        unreachable: AtomicBool::new(false),
    });
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(o.max_seconds);
    // Open loop: a pacer task hands each request's due time, when it comes, to the next free
    // connection (a timerfd for the wait: the event loop's own timers tick in milliseconds).
    let (schedule, pacer) = match o.rate {
        Some(rate) => {
            let (tx, rx) = mpsc::unbounded_channel();
            let pace = pace(o.total, rate, t0, deadline, tx, shared.clone());
            (Some(Arc::new(tokio::sync::Mutex::new(rx))), Some(pace))
        }
        None => (None, None),
    };
    let mut r = runtime.block_on(async {
        let pacer = pacer.map(tokio::spawn);
        let tasks: Vec<_> = per_connection
            .iter()
            .map(|requests| {
                let (requests, shared, schedule) = (requests.clone(), shared.clone(), schedule.clone());
                tokio::spawn(connection(addr, requests, cycle, shared, schedule, deadline))
            })
            .collect();
        let mut all = Results::default();
        for task in tasks {
            let mine = task.await.unwrap();
            all.latencies_us.extend(mine.latencies_us);
            for (s, n) in mine.statuses {
                *all.statuses.entry(s).or_default() += n;
            }
            all.errors += mine.errors;
            if all.first_error.is_none() {
                all.first_error = mine.first_error;
            }
        }
        // The pacer ends first unless every connection gave up early (then it is stopped).
        if let Some(pacer) = pacer {
            if !pacer.is_finished() {
                pacer.abort();
            } else if let Ok(Err(e)) = pacer.await {
                all.errors += 1;
                all.first_error.get_or_insert(format!("the open loop's timer: {e}"));
            }
        }
        all
    });
    let wall = t0.elapsed().as_secs_f64();
    let self_cpu = self_cpu0.and_then(|c0| cpu_seconds("self", ticks).map(|c| c - c0));
    let daemon_cpu = daemon_cpu0.and_then(|c0| cpu_seconds(daemon_pid_s.as_deref()?, ticks).map(|c| c - c0));
    let machine = machine0.and_then(|(i0, s0)| machine_idle_and_steal(ticks).map(|(i, s)| (i - i0, s - s0)));
    let (idle_cpu, steal_cpu) = (machine.map(|m| m.0), machine.map(|m| m.1));

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
            shared.deadline_hit.load(Ordering::Relaxed),
            shared.unreachable.load(Ordering::Relaxed),
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
        if shared.unreachable.load(Ordering::Relaxed) {
            println!(
                "stopped: {MAX_FAILED_CONNECTS} connection attempts in a row failed (is the daemon gone?)"
            );
        }
        if shared.deadline_hit.load(Ordering::Relaxed) {
            println!("stopped at --max-seconds {} before all {} requests were sent", o.max_seconds, o.total);
        }
    }
    let failed = r.errors > 0 || r.statuses.keys().any(|s| *s != 200);
    i32::from(failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// Reads one request (head and `Content-Length` body) from `s`; false at end of stream.
    async fn read_request(s: &mut BufReader<TcpStream>) -> bool {
        let (mut line, mut length) = (String::new(), 0);
        loop {
            line.clear();
            if s.read_line(&mut line).await.unwrap() == 0 {
                return false;
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        s.read_exact(&mut body).await.unwrap();
        true
    }

    /// The client against a real server on loopback: a `Content-Length` body, a chunked one, and
    /// `Connection: close`, after which the next exchange goes over a new connection.
    #[test]
    fn exchanges_read_each_framing_and_reconnect_after_close() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(async move {
                let answers: [&[u8]; 3] = [
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                    b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
                    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
                ];
                let (first, _) = listener.accept().await.unwrap();
                let mut first = BufReader::new(first);
                for answer in answers {
                    assert!(read_request(&mut first).await);
                    first.get_mut().write_all(answer).await.unwrap();
                }
                drop(first);
                let (second, _) = listener.accept().await.unwrap();
                let mut second = BufReader::new(second);
                assert!(read_request(&mut second).await);
                second.get_mut().write_all(b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 3\r\n\r\nnot").await.unwrap();
                assert!(!read_request(&mut second).await, "the client closes its connection when dropped");
            });
            let request = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc";
            let mut conn = Conn::open(addr).await.unwrap();
            let mut body = Vec::new();
            let mut answers = Vec::new();
            for _ in 0..4 {
                let status = conn.exchange(request, &mut body).await.unwrap();
                answers.push((status, String::from_utf8(body.clone()).unwrap()));
            }
            drop(conn);
            server.await.unwrap();
            let expected = [(200, "hello"), (503, "abcde"), (200, "ok"), (429, "not")];
            assert_eq!(answers, expected.map(|(s, b)| (s, b.to_string())));
        });
    }

    /// The open loop's pacer hands out every due time, in order, none before it is due, and
    /// stops at the deadline.
    #[test]
    fn the_pacer_hands_out_due_times_on_time_and_stops_at_the_deadline() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let shared = Arc::new(Shared {
                remaining: AtomicU64::new(0),
                deadline_hit: AtomicBool::new(false),
                unreachable: AtomicBool::new(false),
            });
            let (tx, mut rx) = mpsc::unbounded_channel();
            let t0 = Instant::now();
            let rate = 200.0;
            let pacer = tokio::spawn(pace(20, rate, t0, t0 + Duration::from_secs(60), tx, shared.clone()));
            let mut got = Vec::new();
            while let Some(at) = rx.recv().await {
                assert!(Instant::now() >= at, "handed out before it was due");
                got.push(at);
            }
            pacer.await.unwrap().unwrap();
            let expected: Vec<_> = (0..20).map(|k| t0 + Duration::from_secs_f64(k as f64 / rate)).collect();
            assert_eq!(got, expected);
            assert!(!shared.deadline_hit.load(Ordering::Relaxed));

            // A deadline 52 ms in: the due times at 0, 50 ms are handed out, 100 ms is not.
            let (tx, mut rx) = mpsc::unbounded_channel();
            let t0 = Instant::now();
            pace(1000, 20.0, t0, t0 + Duration::from_millis(52), tx, shared.clone()).await.unwrap();
            let mut got = 0;
            while rx.recv().await.is_some() {
                got += 1;
            }
            assert_eq!(got, 2);
            assert!(shared.deadline_hit.load(Ordering::Relaxed));
        });
    }
}

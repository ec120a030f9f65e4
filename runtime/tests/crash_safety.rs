//! Crash safety of the state Warden keeps on disk, against the real binary:
//!
//! - the device counters: `warden ingest` and the daemon's `/v1/readings` are killed with SIGKILL
//!   at random moments, round after round; after every restart each counter that was ever
//!   acknowledged is refused as a replay (and fresh counters are still accepted);
//! - the audit log: a log written by the real daemon, cut at every byte offset of its last record
//!   (and padded with zeros, as a file system may leave a file after a power loss), is recovered
//!   by `AuditLog::open` to the last whole record and the chain continues; the daemon itself
//!   recovers one at start (audit.rs's unit test does the cuts on synthetic records);
//! - an I/O error on fsync: the daemon's state directory sits on ext4 on a loop device whose
//!   backing file lives on a small tmpfs. Once the tmpfs is full, writes still land in the page
//!   cache but writeback fails, so `fsync` returns EIO: the daemon must stop acknowledging (503)
//!   rather than answer 200 for requests it could not record. After an unmount (what was not
//!   written back is lost, as in a power cut) every request that was answered 200 is on disk.
//!   Needs root and loop devices; skipped with a message otherwise.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime};

use common::{Serve, agent, root, signed_reading};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use warden::audit::{AuditEntry, AuditLog};
use warden::trust::{DeviceRegistry, ReadingError, ReadingVerifier};
use warden::wire::provision::KeyBlob;
use warden::wire::reading::{MAX_FRAME_LEN, SignedReading};

/// xorshift64*: a deterministic PRNG.
fn random(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

fn provision(state: &Path, ids: &[&str]) -> Vec<KeyBlob> {
    let mut registry = DeviceRegistry::open(state).unwrap();
    ids.iter().map(|id| registry.provision(id).unwrap()).collect()
}

/// After every process is gone: each acknowledged counter is a replay for the state on disk.
fn assert_all_replays(state: &Path, blobs: &[KeyBlob], acknowledged: &BTreeMap<String, Vec<u64>>) {
    let verifier = ReadingVerifier::open(state, Duration::from_secs(300)).unwrap();
    let mut checked = 0;
    for blob in blobs {
        let device = blob.device_id.to_string();
        for &counter in acknowledged.get(&device).map(Vec::as_slice).unwrap_or(&[]) {
            let signed = SignedReading::decode(&signed_reading(blob, counter)).unwrap();
            match verifier.verify(&signed, SystemTime::now()) {
                Err(ReadingError::Replay { .. }) => checked += 1,
                other => panic!("{device} counter {counter} was acknowledged, now: {other:?}"),
            }
        }
    }
    eprintln!("{checked} acknowledged counters, every one refused as a replay");
}

#[test]
fn kill_9_during_ingest_never_reopens_an_acknowledged_counter() {
    const ROUNDS: u64 = 12;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let blob = provision(&state, &["board-1"]).remove(0);
    let trust = root().join("models/dev-trust");
    let bundle = root().join("models/repo/motion/1");
    let mut acknowledged: Vec<u64> = Vec::new();
    let mut next = 1u64; // above every counter ever sent
    let mut rng = 0x1c0f_fee5_u64;
    for round in 0..ROUNDS {
        // Probes first: the highest acknowledged counter and a few random earlier ones.
        let mut probes: Vec<u64> = acknowledged.last().copied().into_iter().collect();
        for _ in 0..4 {
            if !acknowledged.is_empty() {
                probes.push(acknowledged[(random(&mut rng) % acknowledged.len() as u64) as usize]);
            }
        }
        let mut child = common::warden(&state)
            .args(["ingest", "--trust"])
            .arg(&trust)
            .arg(&bundle)
            .args(["--from", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let frames: Vec<u64> = probes.iter().copied().chain(next..next + 20_000).collect();
        let writer_blob = blob.clone();
        let writer_frames = frames.clone();
        let writer = std::thread::spawn(move || {
            let mut buf = [0u8; MAX_FRAME_LEN];
            for counter in writer_frames {
                let signed = SignedReading::decode(&signed_reading(&writer_blob, counter)).unwrap();
                let frame = signed.encode_frame(&mut buf).unwrap();
                if stdin.write_all(frame).is_err() {
                    return; // killed
                }
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            let mut stdout = BufReader::new(stdout);
            let mut line = Vec::new();
            loop {
                line.clear();
                match stdout.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return lines,
                    Ok(_) => {}
                }
                // A line cut by the kill was not acknowledged.
                let Some(text) = line.strip_suffix(b"\n") else { return lines };
                let v: Value = serde_json::from_slice(text).unwrap();
                if v["outcome"] == "ok" {
                    let _ = tx.send(());
                }
                lines.push(v);
            }
        });
        rx.recv_timeout(Duration::from_secs(120)).expect("ingest acknowledged nothing within 120 s");
        std::thread::sleep(Duration::from_millis(10 + random(&mut rng) % 300));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "round {round}: ingest finished before the kill");
        writer.join().unwrap();
        let lines = reader.join().unwrap();
        assert!(lines.len() > probes.len(), "round {round}: {lines:?}");
        for (line, counter) in lines.iter().zip(&frames) {
            assert_eq!(line["counter"], *counter, "round {round}: {line}");
        }
        // Every probe is a counter acknowledged in an earlier round: a replay now.
        for line in &lines[..probes.len()] {
            assert_eq!(
                line["outcome"], "refused",
                "round {round}: an acknowledged counter accepted again: {line}"
            );
            assert!(line["reason"].as_str().unwrap().contains("replay"), "{line}");
        }
        let fresh = &lines[probes.len()..];
        for line in fresh {
            assert_eq!(line["outcome"], "ok", "round {round}: a fresh counter was refused: {line}");
            acknowledged.push(line["counter"].as_u64().unwrap());
        }
        // The next round starts above everything sent, acknowledged or not.
        next = frames.last().unwrap() + 1;
        eprintln!(
            "round {round}: {} probes refused, {} fresh readings acknowledged",
            probes.len(),
            fresh.len()
        );
    }
    assert_all_replays(&state, &[blob], &BTreeMap::from([("board-1".to_string(), acknowledged)]));
}

#[test]
fn kill_9_daemon_never_reopens_an_acknowledged_counter() {
    const ROUNDS: u64 = 6;
    const DEVICES: [&str; 3] = ["board-a", "board-b", "board-c"];
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let repo = dir.path().join("repo");
    common::copy_dir(&root().join("models/repo"), &repo);
    let trust = root().join("models/dev-trust");
    let blobs = provision(&state, &DEVICES);
    let acknowledged: Arc<Mutex<BTreeMap<String, Vec<u64>>>> = Arc::default();
    // Per device: the next counter, above every counter ever sent to it.
    let next: Arc<Vec<AtomicU64>> = Arc::new(DEVICES.iter().map(|_| AtomicU64::new(1)).collect());
    let mut rng = 0xdead_10cc_u64;
    for round in 0..ROUNDS {
        let daemon =
            Serve::new(&state, &repo, &trust).args(["--device-readings-per-minute", "1000000"]).start();
        let url = daemon.url("/v1/readings");
        // After the restart: the highest acknowledged counter of each device is a replay.
        for blob in &blobs {
            let device = blob.device_id.to_string();
            let Some(&last) = acknowledged.lock().unwrap().get(&device).and_then(|c| c.last()) else {
                continue;
            };
            let mut r = agent().post(&url).send(&signed_reading(blob, last)[..]).unwrap();
            let body = r.body_mut().read_to_string().unwrap();
            assert_eq!(r.status().as_u16(), 409, "round {round}: {device} {last} replayed: {body}");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let clients: Vec<_> = blobs
            .iter()
            .enumerate()
            .map(|(i, blob)| {
                let (blob, url, stop, answered, next, acknowledged) = (
                    blob.clone(),
                    url.clone(),
                    stop.clone(),
                    answered.clone(),
                    next.clone(),
                    acknowledged.clone(),
                );
                std::thread::spawn(move || {
                    let agent = agent();
                    for _ in 0..5000 {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let counter = next[i].fetch_add(1, Ordering::Relaxed);
                        let sent = agent
                            .post(&url)
                            .header("content-type", "application/octet-stream")
                            .send(&signed_reading(&blob, counter)[..]);
                        let Ok((status, text)) = sent.and_then(|mut r| {
                            let status = r.status().as_u16();
                            Ok((status, r.body_mut().read_to_string()?))
                        }) else {
                            return; // cut by the kill
                        };
                        match status {
                            200 => acknowledged
                                .lock()
                                .unwrap()
                                .entry(blob.device_id.to_string())
                                .or_default()
                                .push(counter),
                            429 | 503 => {}
                            _ => panic!("counter {counter}: {status} {text}"),
                        }
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let waiting = Instant::now();
        while answered.load(Ordering::Relaxed) < 6 {
            assert!(
                waiting.elapsed() < Duration::from_secs(60),
                "no reading answered: {}",
                daemon.stderr_tail()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let delay = Duration::from_millis(20 + random(&mut rng) % 800);
        std::thread::sleep(delay);
        let status = daemon.kill9();
        assert!(!status.success());
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().unwrap();
        }
        let total: usize = acknowledged.lock().unwrap().values().map(Vec::len).sum();
        eprintln!("round {round}: killed after {delay:?}; {total} readings acknowledged so far");
    }
    assert_all_replays(&state, &blobs, &acknowledged.lock().unwrap());
}

/// The bytes of a short audit log the real daemon wrote: accepted and refused inferences and a
/// reading.
fn daemon_written_log(dir: &Path) -> Vec<u8> {
    let state = dir.join("state");
    let repo = dir.join("repo");
    common::copy_dir(&root().join("models/repo"), &repo);
    let blob = provision(&state, &["board-log"]).remove(0);
    let daemon = Serve::new(&state, &repo, &root().join("models/dev-trust")).start();
    let good = std::fs::read(root().join("models/requests/digits.json")).unwrap();
    let a = agent();
    for body in [&good[..], b"{not json", &good[..]] {
        let mut r = a.post(&daemon.url("/v2/models/digits/infer")).send(body).unwrap();
        r.body_mut().read_to_string().unwrap();
    }
    let mut r = a.post(&daemon.url("/v1/readings")).send(&signed_reading(&blob, 1)[..]).unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.body_mut().read_to_string().unwrap());
    let stderr = daemon.stderr.clone();
    assert!(daemon.terminate(Duration::from_secs(10)).success(), "{}", common::read_tail(&stderr));
    std::fs::read(state.join("audit.log")).unwrap()
}

#[test]
fn audit_log_torn_at_every_offset_of_its_last_record_recovers_to_the_last_whole_record() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = daemon_written_log(dir.path());
    let records = bytes.iter().filter(|b| **b == b'\n').count() as u64;
    assert!(records >= 4, "{}", String::from_utf8_lossy(&bytes));
    let whole = bytes[..bytes.len() - 1].iter().rposition(|b| *b == b'\n').unwrap() + 1;
    let last_len = bytes.len() - whole;
    let path = dir.path().join("cut/audit.log");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let prefix_hash = {
        std::fs::write(&path, &bytes[..whole]).unwrap();
        warden::audit::verify(&path).unwrap().last_hash
    };
    let mut tails: Vec<Vec<u8>> = (whole..bytes.len()).map(|cut| bytes[whole..cut].to_vec()).collect();
    // Power-loss shapes: the file grew but the data did not land (zeros), after a partial record
    // or after nothing.
    for zeros in [1, 7, 64, last_len, 4096] {
        tails.push(vec![0; zeros]);
        tails.push([&bytes[whole..whole + last_len / 2], &vec![0; zeros][..]].concat());
    }
    for (n, tail) in tails.iter().enumerate() {
        // A fresh file each time: a child that another test thread is spawning can briefly hold
        // a copy of the descriptor (and with it the flock) of a log just closed here.
        let path = dir.path().join(format!("cut/{n}.log"));
        std::fs::write(&path, [&bytes[..whole], &tail[..]].concat()).unwrap();
        let log = AuditLog::open(&path).unwrap();
        assert_eq!(log.records(), records - 1, "tail of {} bytes", tail.len());
        assert_eq!(std::fs::read(&path).unwrap(), &bytes[..whole], "tail of {} bytes", tail.len());
        let seq =
            log.append(&AuditEntry { outcome: "after recovery".into(), ..AuditEntry::default() }).unwrap();
        assert_eq!(seq, records);
        drop(log);
        assert_eq!(warden::audit::verify(&path).unwrap().records, records);
        let text = std::fs::read_to_string(&path).unwrap();
        let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(last["prev"], prefix_hash.as_str());
    }
    // The whole last record followed by zeros: the record stays, the zeros go.
    let path = dir.path().join("cut/whole.log");
    std::fs::write(&path, [&bytes[..], &[0; 100][..]].concat()).unwrap();
    assert_eq!(AuditLog::open(&path).unwrap().records(), records);
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    eprintln!("{} torn tails of a {last_len}-byte daemon record recovered", tails.len());

    // The daemon itself recovers one at start and continues the chain.
    let state = dir.path().join("state");
    let cut = whole + last_len / 3;
    std::fs::write(state.join("audit.log"), &bytes[..cut]).unwrap();
    let daemon = Serve::new(&state, &dir.path().join("repo"), &root().join("models/dev-trust")).start();
    let good = std::fs::read(root().join("models/requests/digits.json")).unwrap();
    let mut r = agent().post(&daemon.url("/v2/models/digits/infer")).send(&good[..]).unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.body_mut().read_to_string().unwrap());
    let stderr = daemon.stderr.clone();
    assert!(daemon.terminate(Duration::from_secs(10)).success());
    assert!(
        common::read_tail(&stderr).contains("truncating a torn last record"),
        "{}",
        common::read_tail(&stderr)
    );
    let out = common::ok(common::warden(&state).args(["audit", "verify"]));
    assert!(out.starts_with(&format!("OK: {records} records")), "{out}");
}

/// Runs a command, returning whether it succeeded (and its stderr).
fn run(cmd: &mut Command) -> (bool, String) {
    match cmd.output() {
        Ok(out) => (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned()),
        Err(e) => (false, e.to_string()),
    }
}

/// ext4 on a loop device whose backing file sits on a small tmpfs; unmounted and detached on drop.
struct FlakyDisk {
    backing: PathBuf,
    mount: PathBuf,
    loop_dev: Option<String>,
    mounted: bool,
    backing_mounted: bool,
}

impl FlakyDisk {
    /// Or why not (not root, no loop devices, no ext4).
    fn new(dir: &Path, tmpfs_mib: u32, disk_mib: u32) -> Result<FlakyDisk, String> {
        let mut disk = FlakyDisk {
            backing: dir.join("backing"),
            mount: dir.join("disk"),
            loop_dev: None,
            mounted: false,
            backing_mounted: false,
        };
        std::fs::create_dir_all(&disk.backing).unwrap();
        std::fs::create_dir_all(&disk.mount).unwrap();
        let size = format!("size={tmpfs_mib}m");
        let (ok, err) =
            run(Command::new("mount").args(["-t", "tmpfs", "-o", &size, "tmpfs"]).arg(&disk.backing));
        if !ok {
            return Err(format!("mount -t tmpfs: {err}"));
        }
        disk.backing_mounted = true;
        let image = disk.backing.join("disk.img");
        std::fs::File::create(&image).unwrap().set_len(u64::from(disk_mib) << 20).unwrap();
        let (ok, err) = run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image));
        if !ok {
            return Err(format!("mkfs.ext4: {err}"));
        }
        let out = Command::new("losetup").args(["-f", "--show"]).arg(&image).output();
        match out {
            Ok(out) if out.status.success() => {
                disk.loop_dev = Some(String::from_utf8_lossy(&out.stdout).trim().to_string());
            }
            Ok(out) => return Err(format!("losetup: {}", String::from_utf8_lossy(&out.stderr))),
            Err(e) => return Err(format!("losetup: {e}")),
        }
        disk.mount_fs()?;
        Ok(disk)
    }

    fn mount_fs(&mut self) -> Result<(), String> {
        let dev = self.loop_dev.clone().unwrap();
        let (ok, err) = run(Command::new("mount").arg(&dev).arg(&self.mount));
        if !ok {
            return Err(format!("mount {dev}: {err}"));
        }
        self.mounted = true;
        Ok(())
    }

    /// Fills the backing tmpfs: from now on the loop device cannot write a block it has not
    /// written before.
    fn fill_backing(&self) -> u64 {
        let mut f = std::fs::File::create(self.backing.join("filler")).unwrap();
        let chunk = vec![0xa5u8; 64 << 10];
        let mut written = 0u64;
        while let Ok(n) = f.write(&chunk) {
            if n == 0 {
                break;
            }
            written += n as u64;
        }
        written
    }

    /// Unmounts (what was not written back is lost), frees the backing space, repairs the file
    /// system and mounts it again.
    fn power_cycle(&mut self) {
        let (ok, err) = run(Command::new("umount").arg(&self.mount));
        assert!(ok, "umount: {err}");
        self.mounted = false;
        std::fs::remove_file(self.backing.join("filler")).unwrap();
        let dev = self.loop_dev.clone().unwrap();
        // e2fsck exits 1 or 2 after repairing; 4 and above are failures.
        let status = Command::new("e2fsck").args(["-f", "-y", &dev]).output().unwrap().status;
        assert!(status.code().is_some_and(|c| c < 4), "e2fsck: {status:?}");
        self.mount_fs().unwrap();
    }
}

impl Drop for FlakyDisk {
    fn drop(&mut self) {
        if self.mounted {
            let _ = run(Command::new("umount").arg(&self.mount));
        }
        if let Some(dev) = &self.loop_dev {
            let _ = run(Command::new("losetup").args(["-d", dev]));
        }
        if self.backing_mounted {
            let _ = run(Command::new("umount").arg(&self.backing));
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The sample digit with `k` spread over its pixels (every k gives a different, valid body).
fn digits_body(base: &[f64], k: u64) -> Vec<u8> {
    let mut k = k;
    let px: Vec<f64> = base
        .iter()
        .map(|p| {
            let d = (k % 17) as f64;
            k /= 17;
            (p + d) % 17.0
        })
        .collect();
    json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": px}]})
        .to_string()
        .into_bytes()
}

#[test]
fn fsync_errors_make_the_daemon_stop_acknowledging() {
    let dir = tempfile::tempdir().unwrap();
    let mut disk = match FlakyDisk::new(dir.path(), 24, 256) {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("SKIPPED: cannot set up a loop-mounted ext4 on tmpfs here ({why})");
            return;
        }
    };
    let state = disk.mount.join("state");
    let repo = dir.path().join("repo");
    common::copy_dir(&root().join("models/repo"), &repo);
    let trust = root().join("models/dev-trust");
    let blob = provision(&state, &["board-io"]).remove(0);
    let stderr = dir.path().join("daemon.stderr");
    let serve = || Serve::new(&state, &repo, &trust).stderr_to(&stderr).start();
    let sample: Value =
        serde_json::from_slice(&std::fs::read(root().join("models/requests/digits.json")).unwrap()).unwrap();
    let base: Vec<f64> =
        sample["inputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();

    let daemon = serve();
    let a = agent();
    let infer = daemon.url("/v2/models/digits/infer");
    let mut acknowledged: Vec<String> = Vec::new();
    let mut k = 0u64;
    let post = |k: &mut u64| {
        let body = digits_body(&base, *k);
        *k += 1;
        let mut r = a.post(&infer).send(&body[..]).unwrap();
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap();
        (sha256_hex(&body), status, text)
    };
    for _ in 0..20 {
        let (digest, status, text) = post(&mut k);
        assert_eq!(status, 200, "{text}");
        acknowledged.push(digest);
    }
    let readings = daemon.url("/v1/readings");
    for counter in 1..=3 {
        let mut r = a.post(&readings).send(&signed_reading(&blob, counter)[..]).unwrap();
        assert_eq!(r.status().as_u16(), 200, "{}", r.body_mut().read_to_string().unwrap());
    }

    let filled = disk.fill_backing();
    eprintln!("backing tmpfs filled ({} KiB more)", filled >> 10);
    let mut first_refusal = None;
    let mut after = 0;
    for i in 0..5000 {
        let (digest, status, text) = post(&mut k);
        match (status, first_refusal) {
            (200, None) => acknowledged.push(digest),
            (200, Some(at)) => panic!("request {i} acknowledged after request {at} was refused: {text}"),
            (503, _) => {
                let v: Value = serde_json::from_str(&text).unwrap();
                assert!(v["error"].as_str().unwrap().contains("audit log unavailable"), "{text}");
                first_refusal.get_or_insert(i);
                after += 1;
            }
            _ => panic!("request {i}: {status} {text}"),
        }
        if after >= 50 {
            break;
        }
    }
    let Some(at) = first_refusal else {
        panic!("5000 requests on a full disk and no refusal; stderr:\n{}", common::read_tail(&stderr))
    };
    // Readings are refused too (their counter or their audit record cannot be made durable).
    let mut r = a.post(&readings).send(&signed_reading(&blob, 100)[..]).unwrap();
    assert_eq!(r.status().as_u16(), 503, "{}", r.body_mut().read_to_string().unwrap());
    // The daemon is up, and says why.
    let mut live = a.get(&daemon.url("/v2/health/live")).call().unwrap();
    assert_eq!(live.status().as_u16(), 200, "{}", live.body_mut().read_to_string().unwrap());
    let log_text = std::fs::read_to_string(&stderr).unwrap();
    assert!(log_text.contains("audit append failed"), "{log_text}");
    // The first failure is the fsync's (ext4 took the write into its page cache; writeback to the
    // full backing store failed). The kernel reports it as EIO or, when the loop device passes
    // the backing file's error through, as ENOSPC; which one depends on whether the data
    // writeback or the journal commit fails first. Every later append is refused as poisoned.
    let first = log_text.lines().find(|l| l.contains("audit append failed")).unwrap();
    assert!(
        first.contains("fsync failed: Input/output error")
            || first.contains("fsync failed: No space left on device"),
        "{first}"
    );
    eprintln!(
        "{} acknowledged before the first refusal (request {at} after the fill); first failure: {first}",
        acknowledged.len()
    );
    daemon.kill9();

    // What reached the disk: every acknowledged request, in a chain that verifies once the torn
    // tail (if any) is gone; the next start recovers and serves.
    disk.power_cycle();
    let daemon = serve();
    let mut r =
        agent().post(&daemon.url("/v2/models/digits/infer")).send(&digits_body(&base, k)[..]).unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.body_mut().read_to_string().unwrap());
    for counter in 1..=3 {
        let mut r =
            agent().post(&daemon.url("/v1/readings")).send(&signed_reading(&blob, counter)[..]).unwrap();
        assert_eq!(r.status().as_u16(), 409, "{}", r.body_mut().read_to_string().unwrap());
    }
    assert!(daemon.terminate(Duration::from_secs(10)).success(), "{}", common::read_tail(&stderr));
    let verified = common::ok(common::warden(&state).args(["audit", "verify"]));
    assert!(verified.starts_with("OK: "), "{verified}");
    let text = std::fs::read_to_string(state.join("audit.log")).unwrap();
    let ok_inputs: std::collections::HashSet<String> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["outcome"] == "ok")
        .filter_map(|r| r["input_sha256"].as_str().map(str::to_owned))
        .collect();
    let missing: Vec<_> = acknowledged.iter().filter(|d| !ok_inputs.contains(*d)).collect();
    assert!(missing.is_empty(), "{} acknowledged requests not on disk: {missing:?}", missing.len());
    eprintln!("all {} acknowledged requests on disk after the power cycle", acknowledged.len());
}

//! The last accepted counter per device, kept durably: an append-only log of JSON lines
//! (`["board-7",1042]`) in the state directory, fsynced before a counter counts as accepted.
//! (The daemon instead takes counters in memory, writes their lines without a sync, in one write
//! per audit batch, and makes each one durable in the reading's audit record, restoring from the
//! audit log at start: one fsync per reading instead of two, and no write of its own; see
//! `take_unsynced`, `write_unsynced` and `restore`.)
//!
//! Appends from concurrent readings share one write and one `sync_data` (group commit), so the
//! cost per reading falls as load rises. A new counter is taken in memory first (so a concurrent
//! duplicate is a replay at once), then made durable; the caller accepts the reading only after
//! that. A failed write or sync poisons the store: every later reading is refused rather than
//! accepted without a durable counter. Opening the store truncates a torn last line and, when the
//! log has grown well past one line per device, rewrites it compactly (atomically).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

use super::fsutil::write_atomic;
use crate::error::{Error, Result};

/// The log's file name in the state directory.
pub const COUNTERS_LOG: &str = "device-counters.log";
/// The whole-file format of earlier versions, read once as a starting point if present.
const LEGACY_FILE: &str = "device-counters.json";
/// Compact at open once the log holds this many lines more than devices.
const COMPACT_SLACK: usize = 100_000;

/// Why a counter was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CounterError {
    /// Not above the last accepted one.
    Replay {
        /// The last accepted counter.
        last: u64,
    },
    /// It could not be made durable (or an earlier write failed).
    Storage(String),
}

#[derive(Debug)]
struct State {
    last: BTreeMap<String, u64>,
    /// Lines of counters taken with `take_unsynced`, not written yet.
    unwritten: Vec<u8>,
    queue: Vec<u8>,
    queued: u64,
    durable: u64,
    writing: bool,
    poisoned: Option<String>,
}

impl State {
    fn new(last: BTreeMap<String, u64>) -> State {
        State {
            last,
            unwritten: Vec::new(),
            queue: Vec::new(),
            queued: 0,
            durable: 0,
            writing: false,
            poisoned: None,
        }
    }

    /// Whether `counter` may be taken for `device`: the store is sound and it is above the last.
    fn admits(&self, device: &str, counter: u64) -> std::result::Result<(), CounterError> {
        if let Some(reason) = &self.poisoned {
            return Err(CounterError::Storage(reason.clone()));
        }
        match self.last.get(device) {
            Some(&last) if counter <= last => Err(CounterError::Replay { last }),
            _ => Ok(()),
        }
    }
}

/// The counter log of one state directory.
#[derive(Debug)]
pub(crate) struct CounterStore {
    path: PathBuf,
    file: File,
    state: Mutex<State>,
    wake: Condvar,
}

fn open_append(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

fn line(device: &str, counter: u64) -> Vec<u8> {
    let mut line = serde_json::to_vec(&(device, counter)).unwrap_or_default();
    line.push(b'\n');
    line
}

impl CounterStore {
    /// Opens (or starts) the log in `state_dir`.
    pub(crate) fn open(state_dir: &Path) -> Result<CounterStore> {
        CounterStore::open_compacting_past(state_dir, COMPACT_SLACK)
    }

    /// [`open`](Self::open), compacting once the log holds `slack` lines more than devices.
    fn open_compacting_past(state_dir: &Path, slack: usize) -> Result<CounterStore> {
        let path = state_dir.join(COUNTERS_LOG);
        let io = |e| Error::io(&path, e);
        let mut last: BTreeMap<String, u64> = match std::fs::read(state_dir.join(LEGACY_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::io(
                    state_dir.join(LEGACY_FILE),
                    std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                )
            })?,
            Err(_) => BTreeMap::new(),
        };
        let file = open_append(&path).map_err(io)?;
        let mut valid_len = 0u64;
        let mut lines = 0usize;
        let mut reader = BufReader::new(&file);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = reader.read_until(b'\n', &mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            let Some(text) = buf.strip_suffix(b"\n") else {
                tracing::warn!(path = %path.display(), "device counters: truncating a torn last line");
                break;
            };
            let (device, counter): (String, u64) = serde_json::from_slice(text).map_err(|e| {
                io(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("line {}: {e}", lines + 1)))
            })?;
            let entry = last.entry(device).or_insert(0);
            *entry = (*entry).max(counter);
            valid_len += n as u64;
            lines += 1;
        }
        if file.metadata().map_err(io)?.len() != valid_len {
            file.set_len(valid_len).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        let store = CounterStore { path, file, state: Mutex::new(State::new(last)), wake: Condvar::new() };
        if lines > store.lock().last.len() + slack {
            return store.compacted(state_dir);
        }
        Ok(store)
    }

    /// Rewrites the log with one line per device, atomically, and reopens it.
    fn compacted(self, state_dir: &Path) -> Result<CounterStore> {
        let bytes: Vec<u8> = self.lock().last.iter().flat_map(|(d, c)| line(d, *c)).collect();
        write_atomic(&self.path, &bytes, 0o600)?;
        drop(self);
        CounterStore::open(state_dir)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last accepted counter of `device`.
    #[cfg(test)]
    pub(crate) fn last(&self, device: &str) -> Option<u64> {
        self.lock().last.get(device).copied()
    }

    /// Takes `counter` for `device` if it is above the last one, in memory: its line is written
    /// by the next [`CounterStore::write_unsynced`] (or `restore`, `take`, or the store's drop),
    /// without a sync. For a caller that makes the counter durable elsewhere before it accepts
    /// the reading (the daemon puts it in the reading's audit record, writes these lines before
    /// each audit batch, and restores counters from the audit log with
    /// [`CounterStore::restore`] at start).
    pub(crate) fn take_unsynced(&self, device: &str, counter: u64) -> std::result::Result<(), CounterError> {
        let mut state = self.lock();
        state.admits(device, counter)?;
        state.unwritten.extend_from_slice(&line(device, counter));
        state.last.insert(device.to_owned(), counter);
        Ok(())
    }

    /// Writes the lines of the counters taken with [`CounterStore::take_unsynced`] since the last
    /// call, in one write, without a sync. A failed write poisons the store (every later counter
    /// is refused) and is returned once; the counters it held are durable wherever the caller
    /// made them so.
    pub(crate) fn write_unsynced(&self) -> std::result::Result<(), String> {
        let mut state = self.lock();
        if state.unwritten.is_empty() || state.poisoned.is_some() {
            return Ok(());
        }
        let result = (&self.file).write_all(&state.unwritten);
        state.unwritten.clear();
        result.map_err(|e| {
            let reason = format!("{}: {e}", self.path.display());
            state.poisoned = Some(reason.clone());
            reason
        })
    }

    /// Raises each device's last counter to at least the one given (counters taken with
    /// [`CounterStore::take_unsynced`] and made durable elsewhere), durably.
    /// Fails with the storage error, as [`CounterError::Storage`] carries it.
    pub(crate) fn restore(&self, counters: &BTreeMap<String, u64>) -> std::result::Result<usize, String> {
        let mut state = self.lock();
        if let Some(reason) = &state.poisoned {
            return Err(reason.clone());
        }
        let mut lines = std::mem::take(&mut state.unwritten);
        let mut raised = 0;
        for (device, &counter) in counters {
            if state.last.get(device).is_none_or(|&last| counter > last) {
                state.last.insert(device.clone(), counter);
                lines.extend_from_slice(&line(device, counter));
                raised += 1;
            }
        }
        if !lines.is_empty() {
            let result = (&self.file).write_all(&lines).and_then(|()| self.file.sync_data());
            if let Err(e) = result {
                let reason = format!("{}: {e}", self.path.display());
                state.poisoned = Some(reason.clone());
                return Err(reason);
            }
        }
        Ok(raised)
    }

    /// Takes `counter` for `device` if it is above the last one, and returns once it is durable.
    pub(crate) fn take(&self, device: &str, counter: u64) -> std::result::Result<(), CounterError> {
        let mut state = self.lock();
        state.admits(device, counter)?;
        state.last.insert(device.to_owned(), counter);
        state.queue.extend_from_slice(&line(device, counter));
        state.queued += 1;
        let ticket = state.queued;
        loop {
            if state.durable >= ticket {
                return Ok(());
            }
            if let Some(reason) = &state.poisoned {
                return Err(CounterError::Storage(reason.clone()));
            }
            if state.writing {
                state = self.wake.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            let mut batch = std::mem::take(&mut state.unwritten);
            batch.append(&mut state.queue);
            let upto = state.queued;
            state.writing = true;
            drop(state);
            let result = (&self.file).write_all(&batch).and_then(|()| self.file.sync_data());
            state = self.lock();
            state.writing = false;
            self.wake.notify_all();
            match result {
                Ok(()) => state.durable = upto,
                Err(e) => {
                    let reason = format!("{}: {e}", self.path.display());
                    state.poisoned = Some(reason.clone());
                    return Err(CounterError::Storage(reason));
                }
            }
        }
    }
}

impl Drop for CounterStore {
    /// Writes the counters' lines not written yet (a clean shutdown leaves the log complete).
    fn drop(&mut self) {
        if let Err(reason) = self.write_unsynced() {
            tracing::warn!(%reason, "device counters: the last lines could not be written");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn counters_survive_reopening_a_torn_tail_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = CounterStore::open(dir.path()).unwrap();
        store.take("a", 1).unwrap();
        store.take("a", 5).unwrap();
        assert_eq!(store.take("a", 5), Err(CounterError::Replay { last: 5 }));
        store.take("b", 2).unwrap();
        drop(store);
        let path = dir.path().join(COUNTERS_LOG);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"[\"a\",9").unwrap();
        drop(f);
        let store = CounterStore::open(dir.path()).unwrap();
        assert_eq!((store.last("a"), store.last("b")), (Some(5), Some(2)), "the torn line is not a counter");
        store.take("a", 6).unwrap();
        drop(store);
        assert!(std::fs::read_to_string(&path).unwrap().ends_with("[\"a\",6]\n"));

        let store = CounterStore::open(dir.path()).unwrap();
        for c in 7..40 {
            store.take("a", c).unwrap();
        }
        drop(store);
        assert!(std::fs::read_to_string(&path).unwrap().lines().count() > 30);
        let store = CounterStore::open_compacting_past(dir.path(), 10).unwrap();
        assert_eq!(store.last("a"), Some(39));
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2, "compacted");
    }

    #[test]
    fn unsynced_takes_refuse_replays_and_restore_raises_counters() {
        let dir = tempfile::tempdir().unwrap();
        let store = CounterStore::open(dir.path()).unwrap();
        store.take_unsynced("a", 5).unwrap();
        assert_eq!(store.take_unsynced("a", 5), Err(CounterError::Replay { last: 5 }));
        assert_eq!(store.take("a", 4), Err(CounterError::Replay { last: 5 }));
        // A restore only raises: "a" stays at 5, "b" and "c" come in.
        let from_audit: BTreeMap<String, u64> =
            [("a".to_owned(), 3), ("b".to_owned(), 9), ("c".to_owned(), 1)].into();
        assert_eq!(store.restore(&from_audit).unwrap(), 2);
        assert_eq!(store.last("a"), Some(5));
        assert_eq!(store.take_unsynced("b", 9), Err(CounterError::Replay { last: 9 }));
        drop(store);
        let reopened = CounterStore::open(dir.path()).unwrap();
        assert_eq!((reopened.last("a"), reopened.last("b"), reopened.last("c")), (Some(5), Some(9), Some(1)));
    }

    #[test]
    fn unsynced_lines_are_written_in_one_write_and_at_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(COUNTERS_LOG);
        let store = CounterStore::open(dir.path()).unwrap();
        store.take_unsynced("a", 1).unwrap();
        store.take_unsynced("b", 7).unwrap();
        store.take_unsynced("a", 2).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "", "taken in memory only");
        store.write_unsynced().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "[\"a\",1]\n[\"b\",7]\n[\"a\",2]\n");
        store.write_unsynced().unwrap();
        store.take_unsynced("c", 3).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 3, "each line written once");
        drop(store);
        assert!(std::fs::read_to_string(&path).unwrap().ends_with("[\"c\",3]\n"), "written at drop");
        let reopened = CounterStore::open(dir.path()).unwrap();
        assert_eq!((reopened.last("a"), reopened.last("b"), reopened.last("c")), (Some(2), Some(7), Some(3)));
    }

    /// A store whose every write fails: /dev/full accepts opens and fails writes with ENOSPC.
    #[cfg(target_os = "linux")]
    fn store_on_dev_full() -> CounterStore {
        CounterStore {
            path: PathBuf::from("/dev/full"),
            file: OpenOptions::new().write(true).open("/dev/full").unwrap(),
            state: Mutex::new(State::new(BTreeMap::new())),
            wake: Condvar::new(),
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_failed_unsynced_write_refuses_every_later_counter() {
        let store = store_on_dev_full();
        store.take_unsynced("a", 1).unwrap();
        assert!(store.write_unsynced().unwrap_err().contains("/dev/full"));
        assert!(matches!(store.take_unsynced("b", 1), Err(CounterError::Storage(_))));
        assert_eq!(store.write_unsynced(), Ok(()), "the failure is reported once");
    }

    #[test]
    fn concurrent_takes_of_one_counter_accept_exactly_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(CounterStore::open(dir.path()).unwrap());
        for counter in 1..=50u64 {
            let oks: usize = (0..4)
                .map(|_| {
                    let store = store.clone();
                    std::thread::spawn(move || store.take("dev", counter).is_ok())
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|t| usize::from(t.join().unwrap()))
                .sum();
            assert_eq!(oks, 1, "counter {counter}");
        }
        drop(store);
        assert_eq!(CounterStore::open(dir.path()).unwrap().last("dev"), Some(50));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_failed_write_refuses_this_and_every_later_counter() {
        let store = store_on_dev_full();
        assert!(matches!(store.take("a", 1), Err(CounterError::Storage(_))));
        assert!(matches!(store.take("b", 1), Err(CounterError::Storage(_))));
    }
}

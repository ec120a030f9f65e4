//! Sensor devices: the registry of device keys (with revocation), the persisted last-accepted
//! counter per device, and the verifier that refuses forged, replayed, stale or revoked readings.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use warden_wire::provision::{KeyBlob, key_id};
use warden_wire::reading::{MAX_DEVICE_ID, MAX_MESSAGE_LEN, READING_FORMAT, SignedReading, reading_message};

use super::counters::{CounterError, CounterStore};
use super::device_key::{DeviceKey, MAX_KEY_TABLES, TableBudget};
use super::fsutil::{FileStamp, FileWatch, create_private_dir, file_stamp, read_json, write_atomic};
use crate::error::{Error, Result};

const REGISTRY_FILE: &str = "devices.json";

/// Why a reading was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadingError {
    /// Not a decodable frame.
    #[error("malformed frame")]
    Malformed,
    /// A reading format this host does not read.
    #[error("unknown reading format {0}")]
    UnknownFormat(u8),
    /// The device id is not registered.
    #[error("unknown device {0:?}")]
    UnknownDevice(String),
    /// The device was revoked.
    #[error("device {0:?} is revoked")]
    RevokedDevice(String),
    /// Signed with a key that is not the device's registered key.
    #[error("device {0:?}: signed by an unknown key")]
    UnknownKey(String),
    /// The signature does not verify (strictly).
    #[error("device {0:?}: bad signature")]
    BadSignature(String),
    /// The counter is not above the last accepted one.
    #[error("device {device:?}: replay (counter {counter}, last accepted {last})")]
    Replay {
        /// Device.
        device: String,
        /// The reading's counter.
        counter: u64,
        /// The last accepted counter.
        last: u64,
    },
    /// The timestamp is outside the freshness window.
    #[error("device {device:?}: stale or future timestamp ({skew_ms} ms from now)")]
    Stale {
        /// Device.
        device: String,
        /// Reading time minus host time.
        skew_ms: i64,
    },
    /// The accepted counter could not be recorded durably, so the reading is not accepted.
    #[error("cannot record the counter durably: {0}")]
    Storage(String),
    /// The reading does not fit the model's input.
    #[error("reading does not fit the model: {0}")]
    Shape(String),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct DeviceRecord {
    public_key: String,
    key_id: String,
    revoked: bool,
}

/// A registered device, as `warden device list` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Device id.
    pub id: String,
    /// Hex key id.
    pub key_id: String,
    /// Revoked?
    pub revoked: bool,
}

/// The devices this host accepts readings from, kept in the state directory.
#[derive(Debug)]
pub struct DeviceRegistry {
    path: PathBuf,
    /// The file as it was just before it was read.
    stamp: FileStamp,
    devices: BTreeMap<String, DeviceRecord>,
    /// Each device's key as a curve point, decompressed once here rather than per reading
    /// (about a tenth of a strict check), with its table of multiples once it has been used. A
    /// record whose key does not parse has none. Shared with the registry read after a change,
    /// for the keys that stayed the same.
    keys: HashMap<String, Arc<DeviceKey>>,
    /// Bounds the memory the keys' tables take (30 KiB each); shared the same way.
    tables: Arc<TableBudget>,
}

/// The verifying key of every record whose hex key parses into a curve point; `reuse` gives the
/// already parsed key (and its table) of a device whose record names the same key.
fn parse_keys(
    devices: &BTreeMap<String, DeviceRecord>,
    reuse: impl Fn(&str, &DeviceRecord) -> Option<Arc<DeviceKey>>,
) -> HashMap<String, Arc<DeviceKey>> {
    devices
        .iter()
        .filter_map(|(id, record)| {
            if let Some(key) = reuse(id, record) {
                return Some((id.clone(), key));
            }
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(&record.public_key, &mut bytes).ok()?;
            Some((id.clone(), Arc::new(DeviceKey::new(VerifyingKey::from_bytes(&bytes).ok()?))))
        })
        .collect()
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| Error::io(path, std::io::Error::other(e)))?;
    write_atomic(path, &bytes, 0o600)
}

impl DeviceRegistry {
    /// Opens the registry in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<DeviceRegistry> {
        create_private_dir(state_dir)?;
        let path = state_dir.join(REGISTRY_FILE);
        let stamp = file_stamp(&path);
        let devices = read_json(&path)?;
        let tables = Arc::new(TableBudget::new(MAX_KEY_TABLES));
        Ok(DeviceRegistry { keys: parse_keys(&devices, |_, _| None), devices, path, stamp, tables })
    }

    /// The registry as its file is now (stamped `stamp` just before), keeping the parsed keys
    /// (and their tables) of the devices whose key did not change.
    fn reread(&self, stamp: FileStamp) -> Result<DeviceRegistry> {
        let devices = read_json(&self.path)?;
        let keys = parse_keys(&devices, |id, record| {
            self.devices.get(id).filter(|old| old.public_key == record.public_key)?;
            self.keys.get(id).cloned()
        });
        Ok(DeviceRegistry { path: self.path.clone(), stamp, devices, keys, tables: Arc::clone(&self.tables) })
    }

    /// Makes a key pair for a new device, registers its public key, and returns the key blob to
    /// flash into the device (the only copy of its secret key).
    pub fn provision(&mut self, id: &str) -> Result<KeyBlob> {
        let bad = |msg: String| Error::Request(msg);
        let device_id = heapless::String::<MAX_DEVICE_ID>::try_from(id)
            .map_err(|_| bad(format!("device id must be 1-{MAX_DEVICE_ID} bytes")))?;
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            return Err(bad(format!("device id {id:?} must be [A-Za-z0-9._-]+")));
        }
        if self.devices.contains_key(id) {
            return Err(bad(format!("device {id:?} is already registered")));
        }
        let key = SigningKey::generate(&mut rand_core::OsRng);
        let public = key.verifying_key();
        let mut next = self.devices.clone();
        next.insert(
            id.to_string(),
            DeviceRecord {
                public_key: hex::encode(public.as_bytes()),
                key_id: hex::encode(key_id(public.as_bytes())),
                revoked: false,
            },
        );
        write_json(&self.path, &next)?;
        self.devices = next;
        self.keys.insert(id.to_string(), Arc::new(DeviceKey::new(public)));
        Ok(KeyBlob { device_id, seed: key.to_bytes() })
    }

    /// Revokes a device: its readings are refused from now on (by a running daemon's verifier
    /// within a second).
    pub fn revoke(&mut self, id: &str) -> Result<()> {
        let mut next = self.devices.clone();
        let record = next.get_mut(id).ok_or_else(|| Error::Request(format!("unknown device {id:?}")))?;
        record.revoked = true;
        write_json(&self.path, &next)?;
        self.devices = next;
        Ok(())
    }

    /// Every registered device.
    pub fn list(&self) -> Vec<DeviceInfo> {
        self.devices
            .iter()
            .map(|(id, r)| DeviceInfo { id: id.clone(), key_id: r.key_id.clone(), revoked: r.revoked })
            .collect()
    }

    fn key_of(&self, id: &str) -> std::result::Result<&DeviceKey, ReadingError> {
        let record = self.devices.get(id).ok_or_else(|| ReadingError::UnknownDevice(id.to_string()))?;
        if record.revoked {
            return Err(ReadingError::RevokedDevice(id.to_string()));
        }
        self.keys.get(id).map(|k| &**k).ok_or_else(|| ReadingError::UnknownKey(id.to_string()))
    }
}

/// Verifies signed readings and records each device's last accepted counter, durably, before a
/// reading is accepted: a restart does not reopen replays.
///
/// A long-lived verifier (the daemon's, `warden ingest`'s) follows the device registry's file:
/// it looks for a change at most once a second, so `warden device revoke` and `provision` take
/// effect within a second, without a restart.
#[derive(Debug)]
pub struct ReadingVerifier {
    registry: RwLock<Arc<DeviceRegistry>>,
    watch: FileWatch,
    counters: Arc<CounterStore>,
    freshness: Duration,
}

impl ReadingVerifier {
    /// The device registry, as of the last look at its file.
    pub fn registry(&self) -> Arc<DeviceRegistry> {
        Arc::clone(&self.registry.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The registry to check a reading against: read again first if its file changed since
    /// (looked at no more than once a second). A file that cannot be read keeps the last good
    /// registry, and says so in the log.
    fn current(&self) -> Arc<DeviceRegistry> {
        let registry = self.registry();
        let Some(stamp) = self.watch.changed(&registry.path, &registry.stamp) else {
            return registry;
        };
        match registry.reread(stamp) {
            Ok(next) => {
                let revoked = next.devices.values().filter(|r| r.revoked).count();
                tracing::info!(devices = next.devices.len(), revoked, "device registry changed; reloaded");
                let mut slot = self.registry.write().unwrap_or_else(|p| p.into_inner());
                // Only over the registry this read started from: a read that stalled must not
                // put back an older file over a newer one (a revocation, say).
                if Arc::ptr_eq(&slot, &registry) {
                    *slot = Arc::new(next);
                }
                Arc::clone(&slot)
            }
            Err(e) => {
                tracing::error!(error = %e, "device registry unreadable; keeping the previous one");
                registry
            }
        }
    }

    /// Opens the registry and counters in `state_dir`. Readings that carry a timestamp must be
    /// within `freshness` of the host's clock (either way).
    pub fn open(state_dir: &Path, freshness: Duration) -> Result<ReadingVerifier> {
        let registry = DeviceRegistry::open(state_dir)?;
        let counters = CounterStore::open(state_dir)?;
        DeviceKey::prepare();
        Ok(ReadingVerifier {
            registry: RwLock::new(Arc::new(registry)),
            watch: FileWatch::new(),
            counters: Arc::new(counters),
            freshness,
        })
    }

    /// Checks a reading: format, registered and unrevoked device, its key, the strict signature,
    /// freshness, and a counter above the last accepted one (then recorded before returning).
    pub fn verify(&self, signed: &SignedReading, now: SystemTime) -> std::result::Result<(), ReadingError> {
        self.authenticate(signed, now)?;
        self.record(signed)
    }

    /// The checks of [`verify`](Self::verify) that change no state: format, device, key, strict
    /// signature, freshness. Call [`record`](Self::record) to accept the reading.
    pub fn authenticate(
        &self,
        signed: &SignedReading,
        now: SystemTime,
    ) -> std::result::Result<(), ReadingError> {
        if signed.format != READING_FORMAT {
            return Err(ReadingError::UnknownFormat(signed.format));
        }
        let r = &signed.reading;
        let device = r.device_id.as_str().to_string();
        let registry = self.current();
        let key = registry.key_of(&device)?;
        if key_id(key.verifying_key().as_bytes()) != signed.key_id {
            return Err(ReadingError::UnknownKey(device));
        }
        let mut buf = [0u8; MAX_MESSAGE_LEN];
        let message = reading_message(signed.format, &signed.key_id, r, &mut buf)
            .map_err(|_| ReadingError::Malformed)?;
        key.verify_strict(message, &Signature::from_bytes(&signed.signature.0), &registry.tables)
            .map_err(|_| ReadingError::BadSignature(device.clone()))?;
        if let Some(ts) = r.timestamp_ms {
            let now_ms = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
            let skew_ms = (ts as i64).saturating_sub(now_ms);
            if skew_ms.unsigned_abs() > self.freshness.as_millis() as u64 {
                return Err(ReadingError::Stale { device, skew_ms });
            }
        }
        Ok(())
    }

    /// As [`ReadingVerifier::record`], but without waiting for the counter to be durable, nor
    /// writing it: the caller must make it durable itself before accepting the reading (the
    /// daemon does so in the reading's audit record), hand such counters back to
    /// [`ReadingVerifier::restore_counters`] when it starts, and call [`ReadingVerifier::counter_writer`]'s
    /// function now and then to write their lines to the counter log (the daemon's audit log
    /// calls it before each batch it writes).
    pub fn record_unsynced(&self, signed: &SignedReading) -> std::result::Result<(), ReadingError> {
        let r = &signed.reading;
        let device = r.device_id.as_str();
        self.counters.take_unsynced(device, r.counter).map_err(|e| counter_error(device, r.counter, e))
    }

    /// A function that writes the lines of the counters taken by
    /// [`ReadingVerifier::record_unsynced`] since its last call, in one write, without a sync.
    /// After a failed write every later reading is refused (the failure is logged once).
    pub fn counter_writer(&self) -> impl Fn() + Send + Sync + 'static {
        let counters = Arc::clone(&self.counters);
        move || {
            if let Err(reason) = counters.write_unsynced() {
                tracing::error!(%reason, "device counters: writing the log failed; refusing every later reading");
            }
        }
    }

    /// Raises the devices' last counters to at least these (from the audit log), durably.
    /// Returns how many were raised.
    pub fn restore_counters(
        &self,
        counters: &std::collections::BTreeMap<String, u64>,
    ) -> std::result::Result<usize, ReadingError> {
        self.counters.restore(counters).map_err(ReadingError::Storage)
    }

    /// Accepts an authenticated reading: refuses a counter not above the device's last one, and
    /// records the new counter durably before returning.
    pub fn record(&self, signed: &SignedReading) -> std::result::Result<(), ReadingError> {
        let r = &signed.reading;
        let device = r.device_id.as_str();
        self.counters.take(device, r.counter).map_err(|e| counter_error(device, r.counter, e))
    }
}

fn counter_error(device: &str, counter: u64, e: CounterError) -> ReadingError {
    match e {
        CounterError::Replay { last } => ReadingError::Replay { device: device.to_owned(), counter, last },
        CounterError::Storage(reason) => ReadingError::Storage(reason),
    }
}

/// Turns a verified reading into the model input its manifest describes.
pub fn reading_to_input(
    manifest: &warden_wire::manifest::Manifest,
    signed: &SignedReading,
) -> std::result::Result<crate::Tensor, ReadingError> {
    let spec = manifest
        .readings
        .as_ref()
        .ok_or_else(|| ReadingError::Shape("the model takes no readings".into()))?;
    let r = &signed.reading;
    if r.sensor != spec.sensor {
        return Err(ReadingError::Shape(format!("sensor {:?}, the model takes {:?}", r.sensor, spec.sensor)));
    }
    let input = manifest
        .inputs
        .iter()
        .find(|i| i.name == spec.input)
        .ok_or_else(|| ReadingError::Shape("no input".into()))?;
    let shape: Vec<u64> = input
        .shape
        .iter()
        .map(|d| match d {
            warden_wire::manifest::DimSpec::Fixed(n) => *n,
            warden_wire::manifest::DimSpec::Named(_) => 0,
        })
        .collect();
    let n = crate::tensor::element_count(&shape).unwrap_or(0);
    let start = spec.offset as usize;
    let samples = start.checked_add(n).and_then(|end| r.samples.get(start..end)).ok_or_else(|| {
        ReadingError::Shape(format!("{} samples, the model needs {n} from offset {start}", r.samples.len()))
    })?;
    let scale = if spec.apply_scale { r.scale } else { 1.0 };
    let values: Vec<f32> = samples.iter().map(|s| *s as f32 * scale).collect();
    Ok(crate::Tensor::from_f32(spec.input.clone(), &shape, &values))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The keys decompressed at open and at provisioning are the records' keys; a record whose
    /// key is not a curve point has none, and is refused as an unknown key, as before.
    #[test]
    fn device_keys_are_parsed_once_and_refused_when_not_a_point() {
        let dir = tempfile::tempdir().unwrap();
        let good = SigningKey::from_bytes(&[7; 32]).verifying_key();
        let not_a_point = (2u8..)
            .map(|y| {
                let mut bytes = [0u8; 32];
                bytes[0] = y;
                bytes
            })
            .find(|b| VerifyingKey::from_bytes(b).is_err())
            .unwrap();
        let record = |key: &[u8; 32]| DeviceRecord {
            public_key: hex::encode(key),
            key_id: hex::encode(key_id(key)),
            revoked: false,
        };
        let devices = BTreeMap::from([
            ("good".to_string(), record(good.as_bytes())),
            ("bad".to_string(), record(&not_a_point)),
            ("short".to_string(), DeviceRecord { public_key: "00ff".into(), ..record(good.as_bytes()) }),
        ]);
        write_json(&dir.path().join(REGISTRY_FILE), &devices).unwrap();

        let mut registry = DeviceRegistry::open(dir.path()).unwrap();
        let key_of = |registry: &DeviceRegistry, id: &str| registry.key_of(id).map(|k| *k.verifying_key());
        assert_eq!(key_of(&registry, "good"), Ok(good));
        assert_eq!(key_of(&registry, "bad"), Err(ReadingError::UnknownKey("bad".into())));
        assert_eq!(key_of(&registry, "short"), Err(ReadingError::UnknownKey("short".into())));
        assert_eq!(key_of(&registry, "nobody"), Err(ReadingError::UnknownDevice("nobody".into())));

        let blob = registry.provision("new").unwrap();
        let new = SigningKey::from_bytes(&blob.seed).verifying_key();
        assert_eq!(key_of(&registry, "new"), Ok(new));
        assert_eq!(key_of(&DeviceRegistry::open(dir.path()).unwrap(), "new"), Ok(new));
        registry.revoke("good").unwrap();
        assert_eq!(key_of(&registry, "good"), Err(ReadingError::RevokedDevice("good".into())));
    }
}

//! Trust: publisher keys, signed model bundles, and the persisted record of accepted versions.

mod bundle;
mod counters;
mod device_key;
mod devices;
mod edwards;
pub(crate) mod fsutil;
mod keys;
mod ledger;

pub use bundle::{MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE, VerifiedBundle, sign_bundle, verify_bundle};
pub use device_key::{BadSignature, DeviceKey, MAX_KEY_TABLES, TableBudget};
pub use devices::{DeviceInfo, DeviceRegistry, ReadingError, ReadingVerifier, reading_to_input};
pub use keys::{KeyId, PublisherKey, TrustStore, generate_keypair, key_id};
pub use ledger::VersionLedger;

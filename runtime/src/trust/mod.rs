//! Trust: publisher keys, signed model bundles, and the persisted record of accepted versions.

mod bundle;
mod keys;
mod ledger;
pub(crate) mod fsutil;

pub use bundle::{MODEL_FILE, MANIFEST_FILE, SIGNATURE_FILE, VerifiedBundle, sign_bundle, verify_bundle};
pub use keys::{KeyId, PublisherKey, TrustStore, generate_keypair, key_id};
pub use ledger::VersionLedger;

//! End-to-end tests: signed bundles through the real wasmtime sandbox running the real guest.
#![allow(clippy::unwrap_used)]

mod bundles;
mod dtypes;
mod hostile;
mod hostile_corpus;
mod policy;
mod products;
mod readings;
mod reference;
mod sandbox;
mod signatures;

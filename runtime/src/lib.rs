//! Warden: signed ONNX models, run by tract inside a wasmtime sandbox, with the policy around
//! them enforced in the host.
//!
//! The one entry point is [`Runtime`], built with [`Runtime::builder`]:
//!
//! 1. it loads a trust directory of publisher keys and opens the state directory;
//! 2. [`Runtime::load_bundle`] verifies a signed bundle (strict ed25519 over the manifest, the
//!    model's SHA-256, rollback) and loads the model into the sandbox;
//! 3. [`Model::infer`] validates inputs against the signed manifest, runs the model in the
//!    sandbox under its memory cap and deadline, checks the outputs and applies the output policy.
//!
//! See `examples/embed.rs` for a complete program.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod audit;
mod error;
pub mod kserve;
pub mod policy;
mod runtime;
pub mod sandbox;
pub mod server;
mod tensor;
pub mod trust;

pub use error::{BundleError, Error, InputError, KeyError, Result, SandboxError};
pub use runtime::{Model, Progress, Runtime, RuntimeBuilder, default_cache_dir, default_state_dir};
pub use tensor::Tensor;
/// The shared formats crate, re-exported.
pub use warden_wire as wire;
/// The host <-> guest contract types.
pub use warden_wire::guest;
pub use warden_wire::{DType, guest::GuestErrorKind, manifest};

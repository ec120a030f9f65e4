//! Warden's sandboxed inference engine.
//!
//! Built for `wasm32-wasip1` with `+simd128`, this crate is the module the runtime runs inside
//! wasmtime: [`Engine`] wraps tract-onnx, and the `ffi` module exports it through the contract
//! documented in [`warden_wire::guest`]. It asks the host for nothing: no files, no network, no
//! environment, no arguments.
//!
//! The same [`Engine`] also compiles natively, so tests and benchmarks can compare the sandbox
//! with native tract running identical code.

mod engine;
#[cfg(target_family = "wasm")]
mod ffi;

pub use engine::{Engine, OwnedTensor, inspect};

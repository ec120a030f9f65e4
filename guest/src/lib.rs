//! Warden's sandboxed inference engine.
//!
//! [`Engine`] wraps tract-onnx. Built for `wasm32-wasip1` with `+simd128` and exported through
//! the contract documented in [`warden_wire::guest`] by the `warden-guest-wasm` cdylib
//! (`guest/wasm`), it is the module the runtime runs inside wasmtime. It asks the host for
//! nothing: no files, no network, no environment, no arguments.
//!
//! The same [`Engine`] also compiles natively, so tests and benchmarks can compare the sandbox
//! with native tract running identical code, except for three ops the WebAssembly build swaps
//! in: a vectorized 2x2 stride-2 max-pool (`maxpool`), where tract's own calls `fmaxf` per
//! element, f32 add/subtract/multiply by a repeated row (`rowbin`), where tract's own calls the
//! op through a function pointer per element, and the lazy im2col gather (`im2col`), where
//! tract's own loads and stores one value at a time. All three give tract's results bit for bit.
//!
//! Unsafe code is denied everywhere but in `im2col`, which writes into the panel buffer tract's
//! matrix product hands it as a raw pointer.
#![deny(unsafe_code)]

mod engine;
// Natively only its test: native tract stays tract's own.
#[cfg(any(target_arch = "wasm32", test))]
mod im2col;
#[cfg(any(target_arch = "wasm32", test))]
mod maxpool;
#[cfg(any(target_arch = "wasm32", test))]
mod rowbin;

pub use engine::{Engine, OwnedTensor, inspect};

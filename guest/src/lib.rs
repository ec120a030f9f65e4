//! Warden's sandboxed inference engine.
//!
//! [`Engine`] wraps tract-onnx. Built for `wasm32-wasip1` with `+simd128` and exported through
//! the contract documented in [`warden_wire::guest`] by the `warden-guest-wasm` cdylib
//! (`guest/wasm`), it is the module the runtime runs inside wasmtime. It asks the host for
//! nothing: no files, no network, no environment, no arguments.
//!
//! The same [`Engine`] also compiles natively, so tests and benchmarks can compare the sandbox
//! with native tract running identical code, except for two ops the WebAssembly build swaps in:
//! a vectorized 2x2 stride-2 max-pool (`maxpool`), where tract's own calls `fmaxf` per element,
//! and f32 add/subtract/multiply by a repeated row (`rowbin`), where tract's own calls the op
//! through a function pointer per element. Both give tract's results bit for bit.
#![forbid(unsafe_code)]

mod engine;
// Natively only its test: native tract stays tract's own.
#[cfg(any(target_arch = "wasm32", test))]
mod maxpool;
#[cfg(any(target_arch = "wasm32", test))]
mod rowbin;

pub use engine::{Engine, OwnedTensor, inspect};

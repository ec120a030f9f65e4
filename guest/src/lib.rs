//! Warden's sandboxed inference engine.
//!
//! [`Engine`] wraps tract-onnx. Built for `wasm32-wasip1` with `+simd128` and exported through
//! the contract documented in [`warden_wire::guest`] by the `warden-guest-wasm` cdylib
//! (`guest/wasm`), it is the module the runtime runs inside wasmtime. It asks the host for
//! nothing: no files, no network, no environment, no arguments.
//!
//! The same [`Engine`] also compiles natively, so tests and benchmarks can compare the sandbox with
//! native tract running identical code, except for nine ops the WebAssembly build swaps in and one
//! cast it drops (`label`: an int64 output tract casts to its `TDim` type and back, losing all but
//! 32 bits, is passed through as it is). The swaps: a hard-swish in one loop (`hardswish`), where
//! tract makes two chains of element-wise passes; a vectorized 2x2 stride-2 max-pool (`maxpool`),
//! where tract's own calls `fmaxf` per element, with a ReLU in front of it folded in; a pad by
//! whole rows and hyperplanes (`pad`: constant, reflect, edge), where tract's own fills one element
//! or one view at a time; f32 add/subtract/multiply by a repeated row (`rowbin`), where tract's own
//! calls the op through a function pointer per element; an f32 sum or mean of squares over middle
//! axes in one loop (`reducesum`), where tract's own adds one ndarray sub-view at a time; the lazy
//! im2col gather (`im2col`), where tract's own loads and stores one value at a time; the eager
//! im2col matrix through a table of sources (`eager`), where tract's own writes one value at a
//! time with bookkeeping per kernel row; the transposing pack of a matrix product's operand
//! (`pack`), where tract's own 4x4 tiles are scalar in WebAssembly; and a constant matrix by a
//! vector (`gemv`), run tile by tile through the same kernel without tract's driver, the pack of
//! the vector and the reshapes before it. All nine give tract's results bit for bit.
//!
//! Unsafe code is denied everywhere but in `im2col` and `pack`, which write packed panels
//! through raw pointers as tract's own packing code does, reading only what a probe of tract's
//! op proved in bounds, and in `gemv`, which hands a kernel its tiles' pointers as tract's
//! driver does.
#![deny(unsafe_code)]

mod engine;
// Natively only its test: native tract stays tract's own.
#[cfg(any(target_arch = "wasm32", test))]
mod eager;
#[cfg(any(target_arch = "wasm32", test))]
mod gemv;
#[cfg(any(target_arch = "wasm32", test))]
mod graph;
#[cfg(any(target_arch = "wasm32", test))]
mod hardswish;
#[cfg(any(target_arch = "wasm32", test))]
mod im2col;
#[cfg(any(target_arch = "wasm32", test))]
mod label;
#[cfg(any(target_arch = "wasm32", test))]
mod maxpool;
#[cfg(any(target_arch = "wasm32", test))]
mod pack;
#[cfg(any(target_arch = "wasm32", test))]
mod pad;
#[cfg(any(target_arch = "wasm32", test))]
mod probe;
#[cfg(any(target_arch = "wasm32", test))]
mod reducesum;
#[cfg(any(target_arch = "wasm32", test))]
mod rowbin;

pub use engine::{Engine, Outputs, OwnedTensor, inspect};
#[cfg(target_arch = "wasm32")]
pub use gemv::{ForeignKernels, TileKernel, register_foreign_kernels};

//! The host <-> guest contract, version [`ABI_VERSION`].
//!
//! The guest is a `wasm32-wasip1` core module that exports:
//!
//! | export | signature | meaning |
//! | --- | --- | --- |
//! | `_initialize` | `() -> ()` | optional; called once right after instantiation, before anything else (runs static constructors) |
//! | `warden_abi_version` | `() -> i32` | must equal [`ABI_VERSION`] |
//! | `warden_reserve` | `(len: i32) -> i32` | pointer to a guest-owned buffer of at least `len` bytes (0 if it cannot) |
//! | `warden_load` | `(len: i32) -> i64` | decodes a [`LoadRequest`] from the buffer, parses and optimizes the model |
//! | `warden_run` | `(len: i32) -> i64` | decodes a [`RunRequest`] from the buffer and runs the loaded model |
//! | `warden_inspect` | `(len: i32) -> i64` | decodes an [`InspectRequest`] and describes the model's declared inputs and outputs |
//!
//! The host writes the request's postcard bytes into the reserved buffer and calls `warden_load`
//! or `warden_run` with their length. `warden_load` frees the buffer; otherwise it stays the
//! guest's request buffer until the next `warden_reserve`, so the host may write a later request
//! of at most the reserved length into it without reserving again. Both return `(ptr << 32) | len` of a guest-owned reply
//! buffer holding a postcard-encoded [`Reply`]: `Reply<()>` for load, `Reply<RunResponse>` for run,
//! `Reply<ModelInfo>` for inspect.
//! The reply stays valid until the next call into the guest. Tensors cross as raw little-endian
//! bytes with their shape and [`DType`]: one copy into the guest, one copy out.
//!
//! Everything the guest returns is untrusted: the host bounds-checks the pointer and length
//! against the guest's memory and validates the decoded tensors before using them.
//!
//! The guest also imports three functions from the host, described in [`kernels`]: the host's
//! native matrix-multiply kernels, run on bounds-checked ranges of the guest's own memory.

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::DType;

/// Version of this contract; bumped on any change to the exports or the messages.
pub const ABI_VERSION: u32 = 3;

/// One dimension of an input fact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dim {
    /// A fixed size.
    Fixed(u64),
    /// A named symbolic size, fixed per call.
    Symbol(String),
}

/// What the model may assume about one input, from the signed manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFact {
    /// Input name as the ONNX graph declares it.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape; concrete wherever the manifest fixes it.
    pub shape: Vec<Dim>,
}

/// Serializes a byte slice as bytes (one length and a copy) rather than as a sequence of `u8`
/// values (one call per byte). postcard encodes both the same way, so the format is unchanged.
fn as_bytes<S: serde::Serializer>(bytes: &&[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(bytes)
}

/// Host -> guest: parse and optimize this ONNX model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadRequest<'a> {
    /// The ONNX protobuf bytes (already checked against the signed digest by the host).
    #[serde(borrow, serialize_with = "as_bytes")]
    pub model: &'a [u8],
    /// One fact per graph input.
    pub inputs: Vec<InputFact>,
}

/// A tensor crossing the boundary: raw little-endian bytes plus shape and dtype.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorRef<'a> {
    /// Input or output name.
    pub name: &'a str,
    /// Element type.
    pub dtype: DType,
    /// Row-major shape.
    pub shape: Vec<u64>,
    /// `product(shape) * dtype.size()` bytes.
    #[serde(serialize_with = "as_bytes")]
    pub data: &'a [u8],
}

/// A [`TensorRef`] to encode, with its shape as any sequence of dimensions: the same bytes, so
/// the host and the guest can encode straight from their own tensors (the host's `u64` shapes,
/// tract's `usize` ones through [`Dims`]) without building `TensorRef`s first.
#[derive(Clone, Debug, Serialize)]
pub struct TensorParts<'a, S: Serialize> {
    /// As [`TensorRef::name`].
    pub name: &'a str,
    /// As [`TensorRef::dtype`].
    pub dtype: DType,
    /// As [`TensorRef::shape`]: a sequence of `u64`.
    pub shape: S,
    /// As [`TensorRef::data`].
    #[serde(serialize_with = "as_bytes")]
    pub data: &'a [u8],
}

/// `usize` dimensions encoded as the `u64` sequence a [`TensorRef`]'s shape is.
#[derive(Clone, Copy, Debug)]
pub struct Dims<'a>(pub &'a [usize]);

impl Serialize for Dims<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|d| *d as u64))
    }
}

/// Host -> guest: run the loaded model on these inputs (every graph input, by name).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRequest<'a> {
    /// The inputs.
    #[serde(borrow)]
    pub inputs: Vec<TensorRef<'a>>,
}

/// Guest -> host: the model's outputs, in graph order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunResponse<'a> {
    /// The outputs.
    #[serde(borrow)]
    pub outputs: Vec<TensorRef<'a>>,
}

/// Host -> guest: parse this ONNX model (without optimizing it) and describe its interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InspectRequest<'a> {
    /// The ONNX protobuf bytes.
    #[serde(borrow, serialize_with = "as_bytes")]
    pub model: &'a [u8],
}

/// A graph input or output as the ONNX file declares it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeclaredTensor {
    /// Name.
    pub name: String,
    /// Element type, if declared and supported.
    pub dtype: Option<DType>,
    /// Shape, if declared; a dimension is `None` when unknown.
    pub shape: Option<Vec<Option<Dim>>>,
}

/// Guest -> host: the model's declared interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Graph inputs, in order.
    pub inputs: Vec<DeclaredTensor>,
    /// Graph outputs, in order.
    pub outputs: Vec<DeclaredTensor>,
}

/// Why the guest refused or failed a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GuestErrorKind {
    /// The request could not be decoded (a host bug or version skew).
    BadRequest,
    /// `warden_run` before a successful `warden_load`.
    NotLoaded,
    /// The model bytes could not be parsed or analysed, or are unsupported.
    Model,
    /// The inputs do not fit the model.
    Input,
    /// Running the model failed.
    Run,
    /// An output has a type the contract cannot carry.
    Output,
}

/// A refusal or failure reported by the guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestError {
    /// What kind of failure.
    pub kind: GuestErrorKind,
    /// Human-readable detail (from tract); bounded by the guest.
    pub message: String,
}

/// The reply to a call.
pub type Reply<T> = Result<T, GuestError>;

/// Longest error message a guest sends.
pub const MAX_ERROR_MESSAGE: usize = 4096;

/// Host-provided matrix-multiply kernels: the imports of module [`kernels::MODULE`].
///
/// | import | signature | meaning |
/// | --- | --- | --- |
/// | `mmm_kernels` | `(buf: i32, cap: i32) -> i32` | writes the postcard `Vec<`[`kernels::HostKernel`]`>` to `buf` if it fits in `cap` bytes; returns its length either way |
/// | `mmm_pick` | `(m: i64, k: i64, n: i64) -> i32` | index of the kernel the host chooses for this f32 product (`-1` for a dimension not known), or `-1` for none |
/// | `mmm_run` | `(kernel: i32, ops: i32, count: i32) -> i32` | runs one tile: `count` ops of [`kernels::WORDS_PER_OP`] `u32` words each at `ops` |
/// | `mmm_run_tiles` | `(kernel: i32, ops: i32, count: i32, tiles: i32, deltas: i32) -> i32` | runs `tiles` tiles: tile `t`'s ops are the `count` ops at `ops` plus `t` times the `count` ops' words at `deltas` (wrapping), each checked as `mmm_run` checks one; at most [`kernels::MAX_TILE_WORK`] multiply-adds in all. `0` when done, `-1` when the host runs no batches (nothing was touched) |
/// | `depthwise_c` | `(input, output, kernel, tap_indices, offsets, taps, bias, channels, k_stride, len: i32, in_stride, out_stride: i32) -> i32` | one channel-inner depthwise run (tract-linalg's `DepthwiseCF32` contract, with guest addresses and `taps` `u32` tap indices and `i32` offsets in guest memory); `0` when done, `-1` when the host offers no such kernel (nothing was touched) |
///
/// An op is an opcode word and four payload words, mirroring tract's `FusedKerSpec<f32>` with
/// guest addresses for pointers. The host checks every range an op touches against the guest's
/// memory (and the packed panels' alignment) before its native kernel reads or writes it, and
/// traps the guest on anything else. The list must not end with `Done`: the host adds it.
pub mod kernels {
    use alloc::string::String;

    use serde::{Deserialize, Serialize};

    /// The import module name.
    pub const MODULE: &str = "warden";
    /// `(buf: i32, cap: i32) -> i32`.
    pub const LIST: &str = "mmm_kernels";
    /// `(m: i64, k: i64, n: i64) -> i32`.
    pub const PICK: &str = "mmm_pick";
    /// `(kernel: i32, ops: i32, count: i32) -> i32`.
    pub const RUN: &str = "mmm_run";
    /// `(kernel: i32, ops: i32, count: i32, tiles: i32, deltas: i32) -> i32`.
    pub const RUN_TILES: &str = "mmm_run_tiles";
    /// Most multiply-adds in one `mmm_run_tiles` call (`mr * nr * k` per tile, a tile with no
    /// product counting as `mr * nr`): like a `depthwise_c` call, it is not interrupted by the
    /// deadline. About 1-2 ms of native work.
    pub const MAX_TILE_WORK: u64 = 1 << 24;
    /// `(input, output, kernel, tap_indices, offsets, taps, bias, channels, k_stride, len,
    /// in_stride, out_stride: i32) -> i32`.
    pub const DEPTHWISE_C: &str = "depthwise_c";
    /// Most taps in one `depthwise_c` call (a 9x9 kernel has 81).
    pub const MAX_TAPS: usize = 1024;
    /// Most multiply-adds in one `depthwise_c` call (`len * channels * taps`, a tap count of 0
    /// counting as 1): a host call is not interrupted by the deadline, so the guest splits
    /// longer runs. About 2-5 ms of native work.
    pub const MAX_DEPTHWISE_WORK: u64 = 1 << 24;
    /// Most ops in one `mmm_run` call.
    pub const MAX_OPS: usize = 32;
    /// `u32` words per op: the opcode and four payload words.
    pub const WORDS_PER_OP: usize = 5;

    /// How one operand is packed: tract's `PackedFormat` for f32 with `r` = the kernel's `mr`
    /// (operand A) or `nr` (operand B).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Packing {
        /// Alignment of every panel, in bytes.
        pub alignment: u32,
        /// Extra records of padding at the end of a panel.
        pub end_padding: u32,
    }

    /// One native kernel the host offers.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct HostKernel {
        /// The native kernel's name (unique in the list).
        pub name: String,
        /// Rows of a tile.
        pub mr: u32,
        /// Columns of a tile.
        pub nr: u32,
        /// Packing of operand A.
        pub a: Packing,
        /// Packing of operand B.
        pub b: Packing,
        /// Whether border tiles go through row-major scratch space.
        pub row_major_store: bool,
    }

    /// One piece of a depthwise run: positions `first..first + len`, channels `c0..c0 + channels`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct DepthwisePiece {
        pub first: usize,
        pub len: usize,
        pub c0: usize,
        pub channels: usize,
    }

    /// The work `mmm_run_tiles` counts for one tile of an `mr x nr` kernel whose op words are
    /// `words` (whole ops): `mr * nr` times the depth of its products, at least one record. The
    /// guest sizes its rows by it, the host refuses a call whose tiles add up to more than
    /// [`MAX_TILE_WORK`].
    pub fn tile_work(mr: u64, nr: u64, words: &[u32]) -> u64 {
        let depth: u64 = words
            .chunks_exact(WORDS_PER_OP)
            .filter(|w| w[0] == op::ADD_MAT_MUL)
            .map(|w| u64::from(w[1]))
            .sum();
        mr.saturating_mul(nr).saturating_mul(depth.max(1))
    }

    /// A run of `len` positions of `channels` channels with `taps` taps, cut into pieces of at
    /// most [`MAX_DEPTHWISE_WORK`] multiply-adds each (a tap count of 0 counting as 1): whole
    /// positions when one fits, else one position at a time in blocks of channels. The pieces
    /// cover the run exactly once, in order. A run with no positions or channels has none.
    pub fn depthwise_pieces(
        len: usize,
        channels: usize,
        taps: usize,
    ) -> impl Iterator<Item = DepthwisePiece> {
        let budget = MAX_DEPTHWISE_WORK as usize;
        let taps = taps.max(1);
        let per_position = channels.saturating_mul(taps);
        let (step, block) = if per_position <= budget {
            ((budget / per_position.max(1)).max(1), channels)
        } else {
            (1, (budget / taps).max(1))
        };
        let (mut first, mut c0) = (0, 0);
        core::iter::from_fn(move || {
            if first >= len || channels == 0 {
                return None;
            }
            let piece =
                DepthwisePiece { first, len: step.min(len - first), c0, channels: block.min(channels - c0) };
            c0 += piece.channels;
            if c0 == channels {
                c0 = 0;
                first += piece.len;
            }
            Some(piece)
        })
    }

    /// Opcodes. Payload words: `f32` bits for scalars; a guest address for per-row (`mr`
    /// values) and per-column (`nr` values) operands; see each constant otherwise.
    pub mod op {
        /// Zero the accumulator tile.
        pub const CLEAR: u32 = 1;
        /// Load the tile: column-major address, row-major address (`mr * nr` values each).
        pub const LOAD_TILE: u32 = 2;
        /// Elementwise min with a scalar.
        pub const SCALAR_MIN: u32 = 3;
        /// Elementwise max with a scalar.
        pub const SCALAR_MAX: u32 = 4;
        /// Add a scalar.
        pub const SCALAR_ADD: u32 = 5;
        /// Multiply by a scalar.
        pub const SCALAR_MUL: u32 = 6;
        /// Subtract a scalar.
        pub const SCALAR_SUB: u32 = 7;
        /// Subtract from a scalar.
        pub const SCALAR_SUB_F: u32 = 8;
        /// Leaky ReLU with this slope.
        pub const LEAKY_RELU: u32 = 9;
        /// Per-row min (`mr` values).
        pub const PER_ROW_MIN: u32 = 10;
        /// Per-row max.
        pub const PER_ROW_MAX: u32 = 11;
        /// Per-row add.
        pub const PER_ROW_ADD: u32 = 12;
        /// Per-row multiply.
        pub const PER_ROW_MUL: u32 = 13;
        /// Per-row subtract.
        pub const PER_ROW_SUB: u32 = 14;
        /// Per-row subtract from.
        pub const PER_ROW_SUB_F: u32 = 15;
        /// Per-column min (`nr` values).
        pub const PER_COL_MIN: u32 = 16;
        /// Per-column max.
        pub const PER_COL_MAX: u32 = 17;
        /// Per-column add.
        pub const PER_COL_ADD: u32 = 18;
        /// Per-column multiply.
        pub const PER_COL_MUL: u32 = 19;
        /// Per-column subtract.
        pub const PER_COL_SUB: u32 = 20;
        /// Per-column subtract from.
        pub const PER_COL_SUB_F: u32 = 21;
        /// Add a tile read with strides: address, row byte stride (i32), column byte stride
        /// (i32), item size (must be 4).
        pub const ADD_UNICAST: u32 = 22;
        /// Add `rows[i] * cols[j]`: rows address (`mr` values), columns address (`nr` values).
        pub const ADD_ROW_COL_PRODUCTS: u32 = 23;
        /// Store the tile with strides: as [`ADD_UNICAST`].
        pub const STORE: u32 = 24;
        /// Accumulate packed A times packed B: `k`, A panel address, B panel address, packing
        /// index (must be 0).
        pub const ADD_MAT_MUL: u32 = 25;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    /// A tile's work is its products' depth times its size, and a tile with no product still
    /// counts as one record.
    #[test]
    fn tile_work_counts_every_product_and_at_least_one_record() {
        use kernels::{op, tile_work};
        let product = |k| [op::ADD_MAT_MUL, k, 0, 0, 0];
        let store = [op::STORE, 0, 4, 64, 4];
        let words = |ops: &[[u32; 5]]| ops.iter().flatten().copied().collect::<vec::Vec<u32>>();
        assert_eq!(tile_work(16, 12, &words(&[product(288), store])), 16 * 12 * 288);
        assert_eq!(tile_work(16, 12, &words(&[product(9), product(7), store])), 16 * 12 * 16);
        assert_eq!(tile_work(16, 12, &words(&[store])), 16 * 12);
        assert_eq!(tile_work(16, 12, &words(&[product(0)])), 16 * 12);
    }

    /// Every run is covered once, in order, by pieces within the budget: runs that fit, runs
    /// split by positions, positions split by channels, and empty runs.
    #[test]
    fn depthwise_pieces_cover_the_run_within_the_budget() {
        use kernels::{MAX_DEPTHWISE_WORK, depthwise_pieces};
        let budget = MAX_DEPTHWISE_WORK as usize;
        for (len, channels, taps) in [
            (1, 1, 9),
            (160, 480, 25),
            (4096, 1024, 9),
            (3, 1 << 22, 1),
            (2, 70_000, 1024),
            (5, 8, 0),
            (0, 8, 9),
            (7, 0, 9),
            (budget + 3, 1, 1),
        ] {
            let mut covered = vec![0usize; len];
            let mut pieces = 0;
            for p in depthwise_pieces(len, channels, taps) {
                assert!(p.len >= 1 && p.channels >= 1, "{p:?}");
                assert!(p.len * p.channels * taps.max(1) <= budget, "{p:?} over the budget");
                assert!(p.c0 + p.channels <= channels && p.first + p.len <= len, "{p:?} outside the run");
                for c in &mut covered[p.first..p.first + p.len] {
                    assert_eq!(*c, p.c0, "{p:?}: positions out of order or twice");
                    *c += p.channels;
                }
                pieces += 1;
            }
            assert!(covered.iter().all(|c| *c == channels), "{len}x{channels}x{taps} not covered once");
            let fits = len * channels * taps.max(1) <= budget;
            assert_eq!(
                pieces == 1,
                fits && len > 0 && channels > 0,
                "{len}x{channels}x{taps}: {pieces} pieces"
            );
        }
    }

    #[test]
    fn run_request_round_trips_without_copying_data() {
        let data = [1u8, 0, 0, 0, 2, 0, 0, 0];
        let req = RunRequest {
            inputs: vec![TensorRef { name: "x", dtype: DType::I32, shape: vec![2], data: &data }],
        };
        let bytes = postcard::to_allocvec(&req).unwrap();
        let back: RunRequest<'_> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, req);
        let reply: Reply<()> = Err(GuestError { kind: GuestErrorKind::Model, message: "bad".to_string() });
        let bytes = postcard::to_allocvec(&reply).unwrap();
        assert_eq!(postcard::from_bytes::<Reply<()>>(&bytes).unwrap(), reply);
    }

    #[test]
    fn byte_fields_encode_as_a_sequence_of_u8_would() {
        #[derive(Serialize)]
        struct AsSequence<'a> {
            name: &'a str,
            dtype: DType,
            shape: Vec<u64>,
            data: &'a [u8],
        }
        let data: Vec<u8> = (0..=255).collect();
        let fast = TensorRef { name: "x", dtype: DType::U8, shape: vec![256], data: &data };
        let slow = AsSequence { name: "x", dtype: DType::U8, shape: vec![256], data: &data };
        assert_eq!(postcard::to_allocvec(&fast).unwrap(), postcard::to_allocvec(&slow).unwrap());
        let parts = TensorParts { name: "x", dtype: DType::U8, shape: Dims(&[256]), data: &data };
        assert_eq!(postcard::to_allocvec(&parts).unwrap(), postcard::to_allocvec(&fast).unwrap());
    }
}

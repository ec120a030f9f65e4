//! The host <-> guest contract, version [`ABI_VERSION`].
//!
//! The guest is a `wasm32-wasip1` core module that exports:
//!
//! | export | signature | meaning |
//! | --- | --- | --- |
//! | `warden_abi_version` | `() -> i32` | must equal [`ABI_VERSION`] |
//! | `warden_reserve` | `(len: i32) -> i32` | pointer to a guest-owned buffer of at least `len` bytes (0 if it cannot) |
//! | `warden_load` | `(len: i32) -> i64` | decodes a [`LoadRequest`] from the buffer, parses and optimizes the model |
//! | `warden_run` | `(len: i32) -> i64` | decodes a [`RunRequest`] from the buffer and runs the loaded model |
//! | `warden_inspect` | `(len: i32) -> i64` | decodes an [`InspectRequest`] and describes the model's declared inputs and outputs |
//!
//! The host writes the request's postcard bytes into the reserved buffer and calls `warden_load`
//! or `warden_run` with their length. Both return `(ptr << 32) | len` of a guest-owned reply
//! buffer holding a postcard-encoded [`Reply`]: `Reply<()>` for load, `Reply<RunResponse>` for run,
//! `Reply<ModelInfo>` for inspect.
//! The reply stays valid until the next call into the guest. Tensors cross as raw little-endian
//! bytes with their shape and [`DType`]: one copy into the guest, one copy out.
//!
//! Everything the guest returns is untrusted: the host bounds-checks the pointer and length
//! against the guest's memory and validates the decoded tensors before using them.

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::DType;

/// Version of this contract; bumped on any change to the exports or the messages.
pub const ABI_VERSION: u32 = 1;

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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

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
    }
}

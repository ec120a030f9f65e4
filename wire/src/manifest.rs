//! The model manifest: what a publisher signs together with the ONNX file.
//!
//! It is stored as `manifest.toml` in a bundle directory; the signature covers the file's exact
//! bytes (see [`crate::signing`]), and these types are what the host parses them into after the
//! signature has been checked.

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::DType;

/// The manifest format this crate reads and writes.
pub const MANIFEST_FORMAT: u32 = 1;

/// A signed model manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format; must be [`MANIFEST_FORMAT`].
    pub format: u32,
    /// Model name; must match the bundle's directory name in a repository.
    pub name: String,
    /// Model version (a positive integer, as Triton's repositories number them); must match the
    /// version directory. Versions only go up: a lower one than already accepted is refused.
    pub version: u64,
    /// Lowercase hex SHA-256 of `model.onnx`.
    pub model_sha256: String,
    /// Free text for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Every graph input, in graph order.
    pub inputs: Vec<InputSpec>,
    /// The graph outputs that may leave the host, in graph order.
    pub outputs: Vec<OutputSpec>,
    /// How outputs are coarsened before they leave the host.
    pub output_policy: OutputPolicy,
    /// Abuse and resource limits.
    #[serde(default)]
    pub limits: Limits,
    /// How signed sensor readings become this model's input, if devices may feed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readings: Option<ReadingsSpec>,
}

/// How a device's signed readings become the model's input: samples `offset..offset + n` of a
/// reading (n = the input's element count), times the reading's scale when `apply_scale` is set,
/// fill the input in row-major order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadingsSpec {
    /// The input readings feed: the manifest's only input, `f32`, with a fixed shape.
    pub input: String,
    /// The sensor kind readings must come from.
    pub sensor: crate::reading::SensorKind,
    /// First sample used.
    #[serde(default)]
    pub offset: u32,
    /// Convert samples to the reading's unit first (`sample * scale`). By default `true`.
    #[serde(default = "yes")]
    pub apply_scale: bool,
}

fn yes() -> bool {
    true
}

impl Manifest {
    /// What the guest may assume about each input: its dtype and shape, named dimensions as
    /// symbols.
    pub fn input_facts(&self) -> Vec<crate::guest::InputFact> {
        use crate::guest::{Dim, InputFact};
        self.inputs
            .iter()
            .map(|i| InputFact {
                name: i.name.clone(),
                dtype: i.dtype,
                shape: i
                    .shape
                    .iter()
                    .map(|d| match d {
                        DimSpec::Fixed(n) => Dim::Fixed(*n),
                        DimSpec::Named(s) => Dim::Symbol(s.clone()),
                    })
                    .collect(),
            })
            .collect()
    }
}

/// One dimension in a manifest shape: a fixed size or a named dynamic one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DimSpec {
    /// Fixed size.
    Fixed(u64),
    /// Dynamic, named (e.g. `"batch"`); any size up to the byte caps.
    Named(String),
}

/// A bound on input values: one for every feature, or one per feature (along the last axis).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Bound {
    /// The same bound for every element.
    All(f64),
    /// Element `i` of the last axis is bounded by entry `i`.
    PerFeature(Vec<f64>),
}

/// An input the model takes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Name as in the ONNX graph.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<DimSpec>,
    /// Inclusive lower bound on every value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<Bound>,
    /// Inclusive upper bound on every value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Bound>,
}

/// An output the model produces.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// Name as in the ONNX graph.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<DimSpec>,
}

/// How outputs are coarsened in the host, to make extraction and inversion harder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputPolicy {
    /// Keep only the `k` largest values along the last axis of every floating-point output;
    /// the others are reported as 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    /// Round every floating-point output to a multiple of `step`. Required unless
    /// `dangerous_full_precision` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<f64>,
    /// Let full-precision outputs leave the host. Makes model extraction far easier.
    #[serde(default)]
    pub dangerous_full_precision: bool,
}

/// Abuse and resource limits for one model.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Sustained requests per minute per client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// Requests a client may make in a burst above the sustained rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Total queries a client may ever make against this model version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_queries: Option<u64>,
    /// Largest total size of one request's input tensors, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_input_bytes: Option<u64>,
    /// Per-call deadline in the sandbox, in milliseconds (capped by the host's own limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Memory cap of one sandbox instance, in MiB (capped by the host's own limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_mib: Option<u64>,
}

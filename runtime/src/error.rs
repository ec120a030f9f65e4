use std::path::PathBuf;

use warden_wire::guest::GuestErrorKind;

/// Every way Warden can refuse or fail, for embedders to match on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A model bundle was refused.
    #[error("model bundle {}: {kind}", path.display())]
    Bundle {
        /// The bundle directory.
        path: PathBuf,
        /// Why.
        kind: BundleError,
    },
    /// A key or trust directory could not be used.
    #[error("{0}")]
    Key(#[from] KeyError),
    /// A request was refused before it reached the sandbox.
    #[error("invalid input: {0}")]
    Input(#[from] InputError),
    /// The sandbox stopped or refused a call.
    #[error("{0}")]
    Sandbox(#[from] SandboxError),
    /// The model's outputs did not match its manifest.
    #[error("model output refused: {0}")]
    Output(String),
    /// A request document (KServe JSON) could not be decoded.
    #[error("bad request: {0}")]
    Request(String),
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io { path: path.into(), source }
    }
}

/// Why a bundle was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum BundleError {
    /// A bundle file is missing or unreadable.
    #[error("cannot read {file}: {reason}")]
    Unreadable {
        /// Which file.
        file: &'static str,
        /// The I/O error text.
        reason: String,
    },
    /// `manifest.sig` does not have the signature file layout.
    #[error("manifest.sig is malformed")]
    MalformedSignature,
    /// The key id in `manifest.sig` is not in the trust directory.
    #[error("signed by an unknown key {0}")]
    UnknownKey(String),
    /// The signing key has been revoked.
    #[error("signed by revoked key {0}")]
    RevokedKey(String),
    /// The signature does not verify (strictly) over the manifest.
    #[error("bad signature over manifest.toml")]
    BadSignature,
    /// The manifest is not valid TOML of the manifest format, or breaks its rules.
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
    /// `model.onnx` does not have the digest the manifest signs.
    #[error("model.onnx digest mismatch: manifest says {expected}, file is {actual}")]
    DigestMismatch {
        /// From the manifest.
        expected: String,
        /// Of the file.
        actual: String,
    },
    /// The version is lower than one already accepted for this model name.
    #[error("rollback refused: version {offered} is below the accepted version {accepted}")]
    Rollback {
        /// The bundle's version.
        offered: u64,
        /// The highest version accepted before.
        accepted: u64,
    },
    /// Same name and version as an accepted bundle, but different model bytes.
    #[error("version {version} was accepted before with a different model digest")]
    VersionReused {
        /// The version.
        version: u64,
    },
    /// The bundle's directory names disagree with its manifest.
    #[error("bundle layout: {0}")]
    Layout(String),
}

/// Why a key file or trust directory was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key file is not in Warden's key format.
    #[error("{}: not a Warden {what} key file", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// "public" or "secret".
        what: &'static str,
    },
    /// A weak (small-order) public key.
    #[error("{}: weak public key refused", path.display())]
    Weak {
        /// The file.
        path: PathBuf,
    },
    /// The trust directory holds no public keys.
    #[error("trust directory {} holds no .pub keys", path.display())]
    EmptyTrust {
        /// The directory.
        path: PathBuf,
    },
    /// A secret key file is readable by other users.
    #[error("{}: secret key is readable by group or others (chmod 600 it)", path.display())]
    Permissions {
        /// The file.
        path: PathBuf,
    },
}

/// Why an inference request was refused before the sandbox ran.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum InputError {
    /// An input the manifest requires is missing.
    #[error("missing input {0:?}")]
    Missing(String),
    /// An input the manifest does not declare.
    #[error("unexpected input {0:?}")]
    Unexpected(String),
    /// The same input twice.
    #[error("input {0:?} given twice")]
    Duplicate(String),
    /// Wrong element type.
    #[error("input {name:?} has dtype {actual}, expected {expected}")]
    DType {
        /// Input.
        name: String,
        /// From the manifest.
        expected: warden_wire::DType,
        /// Given.
        actual: warden_wire::DType,
    },
    /// Wrong shape.
    #[error("input {name:?} has shape {actual:?}, expected {expected}")]
    Shape {
        /// Input.
        name: String,
        /// From the manifest, rendered.
        expected: String,
        /// Given.
        actual: Vec<u64>,
    },
    /// Data length does not match the shape.
    #[error("input {name:?} has {actual} bytes of data, its shape needs {expected}")]
    DataLength {
        /// Input.
        name: String,
        /// Needed.
        expected: usize,
        /// Given.
        actual: usize,
    },
    /// A NaN or infinity.
    #[error("input {name:?} has a non-finite value at index {index}")]
    NotFinite {
        /// Input.
        name: String,
        /// Flat index.
        index: usize,
    },
    /// A value outside the manifest's bounds.
    #[error("input {name:?} value {value} at index {index} is outside [{min}, {max}]")]
    OutOfBounds {
        /// Input.
        name: String,
        /// Flat index.
        index: usize,
        /// The value.
        value: f64,
        /// Lower bound.
        min: f64,
        /// Upper bound.
        max: f64,
    },
    /// A bool that is neither 0 nor 1.
    #[error("input {name:?} has a bool byte {value} at index {index}")]
    NotBool {
        /// Input.
        name: String,
        /// Flat index.
        index: usize,
        /// The byte.
        value: u8,
    },
    /// The request's tensors are larger than allowed.
    #[error("inputs total {actual} bytes, the limit is {limit}")]
    TooLarge {
        /// Given.
        actual: u64,
        /// Allowed.
        limit: u64,
    },
}

/// Why the sandbox stopped or refused a call. The runtime stays usable after each.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// The call ran past its deadline and was interrupted.
    #[error("deadline of {0:?} exceeded; the guest was interrupted")]
    Timeout(std::time::Duration),
    /// The guest tried to grow its memory past the cap.
    #[error("memory cap of {0} bytes reached; the guest was stopped")]
    MemoryCap(usize),
    /// The guest trapped (a tract panic aborts, a wasm fault, stack exhaustion).
    #[error("guest trapped: {0}")]
    Trap(String),
    /// The guest refused the call (bad model, bad input) without trapping.
    #[error("guest refused ({kind:?}): {message}")]
    Guest {
        /// Category from the guest.
        kind: GuestErrorKind,
        /// Detail from the guest (untrusted text, bounded).
        message: String,
    },
    /// The guest broke the contract (bad pointers, undecodable replies, wrong version).
    #[error("guest broke the contract: {0}")]
    Contract(String),
    /// The sandbox could not be set up (engine, compile, cache).
    #[error("sandbox setup: {0}")]
    Setup(String),
}

/// Shorthand.
pub type Result<T, E = Error> = std::result::Result<T, E>;

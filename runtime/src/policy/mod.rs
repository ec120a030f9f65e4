//! Host-side policy around the sandbox: inputs are checked against the signed manifest before
//! the guest sees them; outputs are checked against it and coarsened after.

mod output;
mod validate;

pub use output::{apply_output_policy, check_outputs};
pub use validate::{DEFAULT_MAX_INPUT_BYTES, validate_inputs};

//! Formats that Warden's host, its sandboxed guest and (later) its firmware share byte for byte.
//!
//! * [`DType`]: tensor element types, with their KServe v2 names.
//! * [`guest`]: the typed, versioned host <-> guest contract (postcard messages).
//! * [`manifest`]: the signed model manifest.
//! * [`reading`]: signed sensor readings and their COBS frames (no heap needed).
//! * [`provision`]: the device key blob written to a board's key flash page.
//! * [`signing`]: domain-separation contexts, so a signature made for one purpose never verifies
//!   for another.
//!
//! The crate is `no_std`; the `alloc` feature (on by default) adds the types that own strings
//! and vectors.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

#[cfg(feature = "alloc")]
extern crate alloc;

mod dtype;
#[cfg(feature = "alloc")]
pub mod guest;
#[cfg(feature = "alloc")]
pub mod manifest;
pub mod provision;
pub mod reading;
pub mod signing;

pub use dtype::DType;

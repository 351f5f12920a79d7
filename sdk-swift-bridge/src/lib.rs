//! The Swift bridge: the same UniFFI interface as `sdk-kotlin-bridge`,
//! re-exported so that the iOS library (a static library per target, packed
//! into an XCFramework) is built from the one Rust core every platform shares.
//!
//! Nothing is defined here: the exported tracker, client and error live in
//! `tally-kotlin-bridge`, whose scaffolding this crate links in whole.

pub use tally_kotlin_bridge::*;

tally_kotlin_bridge::uniffi_reexport_scaffolding!();

//! Process types, the one process-definition model, and the `ProcessControl` trait.
//!
//! The config loader produces [`ProcessDefinition`]s from either config form; nothing
//! below the loader knows which form the user wrote. This crate holds data and
//! interfaces only: it must never spawn, signal or wait on a process itself.

pub mod control;
pub mod definition;

pub use control::*;
pub use definition::*;

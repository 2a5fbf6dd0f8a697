//! Types shared by every layer of the HSU process manager.
//!
//! This crate sits at the bottom of the layer stack: it holds the vocabulary the other
//! crates speak (process states, stop signals, journal events and the sink they are sent
//! to). It must never depend on another `hsu-*` crate and never touch the operating system.

pub mod event;
pub mod signal;
pub mod state;

pub use event::{Event, EventKind, EventSink, NullSink};
pub use signal::StopSignal;
pub use state::ProcessState;

/// Checks a process id against the rule `1-64 of [A-Za-z0-9_-]`.
pub fn is_valid_process_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_id_rule() {
        assert!(is_valid_process_id("web-1_a"));
        assert!(!is_valid_process_id(""));
        assert!(!is_valid_process_id("a b"));
        assert!(!is_valid_process_id("x/y"));
        assert!(is_valid_process_id(&"a".repeat(64)));
        assert!(!is_valid_process_id(&"a".repeat(65)));
    }
}

//! config loader (arriving)
